-- singleflight.lua - LuaJIT FFI binding of libsingleflight.
--
--   local singleflight = require "singleflight"
--   local g = singleflight.new()
--   local body, shared = g:run("user:42", function() return fetch(42) end)
--
-- Built on the C library's two-phase API (sf_group_begin / sf_call_finish /
-- sf_call_wait), so C never calls back into Lua: the leader runs fn in Lua
-- itself, and followers either poll and yield (inside a coroutine, e.g. an
-- OpenResty request) or block the OS thread (outside one).
--
-- Values cross as Lua strings (or nil): the leader's string is copied into C
-- memory that the library frees after the last caller has read it.  Encode
-- tables (cjson, etc.) before returning them.
--
-- Thread rules: a group belongs to the Lua state that created it.  Every
-- method is safe to call from any coroutine of that state.

local ffi = require("ffi")

local M = { _VERSION = "1.1.0" }

-- Declarations copied from capi/include/singleflight.h (v1).  Guarded so
-- that a second module (or a second copy of this one) declaring the same
-- types does not fail.
if not pcall(ffi.typeof, "sf_group_stats") then
    ffi.cdef [[
typedef int64_t  sf_i64;
typedef uint64_t sf_u64;
typedef struct sf_group  sf_group;
typedef struct sf_call   sf_call;
typedef struct sf_result sf_result;
typedef void (*sf_destroy_fn)(void *value);
typedef void (*sf_task_fn)(void *arg);
typedef int  (*sf_executor_fn)(sf_task_fn task, void *arg, void *payload);
typedef struct sf_group_options {
    unsigned int   version;
    unsigned int   shards;
    sf_executor_fn executor;
    void          *executor_payload;
} sf_group_options;
typedef struct sf_group_stats {
    unsigned int version;
    sf_u64 calls, leaders, followers, panics, goexits, timeouts, forgets, in_flight;
} sf_group_stats;

int         sf_version_number(void);
const char *sf_version_string(void);
const char *sf_strerror(int code);
const char *sf_err_name(int code);
int  sf_group_options_init(sf_group_options *opts, unsigned int version);
int  sf_group_new(sf_group **out, const sf_group_options *opts);
int  sf_group_free(sf_group *g);
int  sf_group_begin(sf_group *g, const void *key, size_t key_len, sf_call **call);
void sf_call_set_value(sf_call *call, void *value, sf_destroy_fn destroy);
int  sf_call_finish(sf_call *call, int error);
int  sf_call_panic(sf_call *call, const char *message);
int  sf_call_wait(sf_call *call, sf_i64 timeout_ns, sf_result **result, int *shared);
void sf_call_release(sf_call *call);
int  sf_group_forget(sf_group *g, const void *key, size_t key_len);
int  sf_group_forget_unshared(sf_group *g, const void *key, size_t key_len);
void       *sf_result_value(const sf_result *r);
const char *sf_result_panic_message(const sf_result *r);
void        sf_result_release(sf_result *r);
int  sf_group_stats_get(const sf_group *g, sf_group_stats *out);
]]
end
if not pcall(ffi.typeof, "sf_luajit_blob") then
    -- A string value as the leader stores it.  magic tells this binding's
    -- values apart from values other bindings stored in the same group.
    -- The libc functions get private names (redirected to the real
    -- symbols) because another module may have declared them with other
    -- parameter types, e.g. struct timespec *, which ours would not match.
    ffi.cdef [[
typedef struct sf_luajit_blob { uint64_t magic; size_t len; char data[1]; } sf_luajit_blob;
void *sf_luajit_malloc(size_t size) __asm__("malloc");
void  sf_luajit_free(void *ptr) __asm__("free");
int   sf_luajit_clock_gettime(int clock_id, void *tp) __asm__("clock_gettime");
]]
end

local C_lib = ffi.C

-- Status codes, as in the header.  Values never change.
M.OK, M.LEADER, M.FOLLOWER = 0, 1, 2
M.EINVAL, M.ENOMEM, M.EPANIC, M.EGOEXIT = -1, -2, -3, -4
M.EDEADLK, M.ETIMEDOUT, M.EBUSY, M.ESTATE = -5, -6, -7, -8

local ABI_MAJOR = 1
local BLOB_MAGIC = 0x53464c4a424c4f42ULL -- "SFLJBLOB"
local BLOB_HEADER = ffi.offsetof("sf_luajit_blob", "data")
local CLOCK_MONOTONIC = 1
local MAIN = {} -- stands for the main coroutine, which has no object in Lua 5.1

local blob_ptr_t = ffi.typeof("sf_luajit_blob *")
local call_out_t = ffi.typeof("sf_call *[1]")
local result_out_t = ffi.typeof("sf_result *[1]")
local int_out_t = ffi.typeof("int[1]")
local group_out_t = ffi.typeof("sf_group *[1]")
local timespec_t = ffi.typeof("int64_t[2]") -- struct timespec on LP64 Linux
local free_fn = ffi.cast("sf_destroy_fn", C_lib.sf_luajit_free)

local lib        -- the loaded C library
local live_calls = 0
local live_groups = 0
local orphans = {} -- groups whose finalizer found calls still alive

-- ---------------------------------------------------------------- errors

local error_mt = {}
error_mt.__index = error_mt
error_mt.__tostring = function(e)
    return "singleflight: " .. e.name .. ": " .. e.message
end

-- Raises a status code as an error object {code, name, message}; level as
-- for error().
local function raise(code, level, detail)
    local message = lib and ffi.string(lib.sf_strerror(code)) or "error"
    if detail then message = message .. ": " .. detail end
    error(setmetatable({
        code = code,
        name = lib and ffi.string(lib.sf_err_name(code)) or tostring(code),
        message = message,
    }, error_mt), level + 1)
end

-- True when e is an error raised by this module for a status code.  Panics
-- reaching followers are raised as the leader's message string instead.
function M.is_error(e)
    return getmetatable(e) == error_mt
end

-- ---------------------------------------------------------------- loading

local function candidates()
    local list = {}
    local explicit = os.getenv("SF_LIBRARY")
    if explicit and explicit ~= "" then list[#list + 1] = explicit end
    local prefix = os.getenv("SF_PREFIX")
    if prefix and prefix ~= "" then
        list[#list + 1] = prefix .. "/lib/libsingleflight.so." .. ABI_MAJOR
        list[#list + 1] = prefix .. "/lib/libsingleflight.so"
    end
    -- Searched on LD_LIBRARY_PATH and the system paths by the dynamic linker.
    list[#list + 1] = "libsingleflight.so." .. ABI_MAJOR
    list[#list + 1] = "singleflight"
    return list
end

-- Loads the C library, from path when given, else from $SF_LIBRARY,
-- $SF_PREFIX/lib or the dynamic linker's search path.  Idempotent: the first
-- successful load wins.  Raises when no candidate loads or the library's ABI
-- major differs from the one this module was written for.
function M.load(path)
    if lib then return lib end
    local tried = {}
    for _, name in ipairs(path and { path } or candidates()) do
        local ok, l = pcall(ffi.load, name)
        if ok then
            local major = math.floor(l.sf_version_number() / 10000)
            if major ~= ABI_MAJOR then
                error(("singleflight: %s has ABI %d, this module needs %d")
                    :format(name, major, ABI_MAJOR), 2)
            end
            lib = l
            return lib
        end
        tried[#tried + 1] = name .. " (" .. tostring(l) .. ")"
    end
    error("singleflight: cannot load libsingleflight; tried " .. table.concat(tried, ", "), 2)
end

-- The loaded library's version string ("1.0.0").
function M.version()
    return ffi.string(M.load().sf_version_string())
end

-- Number of call handles this module holds unreleased, across all groups.
-- Zero whenever no run() is in progress: a diagnostic for leaks.
function M.live_calls()
    return live_calls
end

-- Number of groups created by this module and not yet freed (a group
-- collected while one of its calls was still unreleased is freed as soon as
-- that call is).  A diagnostic for leaks.
function M.live_groups()
    return live_groups
end

-- ---------------------------------------------------------------- handles

local function free_group(ptr)
    local rc = lib.sf_group_free(ptr)
    if rc == M.OK then live_groups = live_groups - 1 end
    return rc
end

local function free_orphans()
    for i = #orphans, 1, -1 do
        if free_group(orphans[i]) ~= M.EBUSY then
            table.remove(orphans, i)
        end
    end
end

local function release_call(call)
    live_calls = live_calls - 1
    lib.sf_call_release(call)
    if orphans[1] then free_orphans() end
end

-- Finalizer of a call nobody released: its coroutine was abandoned (an
-- aborted request).  A leader's release completes the flight as SF_EGOEXIT,
-- so its followers are not left waiting.
local function collect_call(call)
    release_call(call)
end

local function done_with_call(call)
    ffi.gc(call, nil)
    release_call(call)
end

local function collect_group(ptr)
    -- Finalizers run in no particular order; a call of this group may still
    -- be waiting for its own finalizer.  Keep the group until it is free.
    if free_group(ptr) == M.EBUSY then
        orphans[#orphans + 1] = ptr
    end
end

local function monotonic()
    local ts = timespec_t()
    C_lib.sf_luajit_clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts[0]) + tonumber(ts[1]) * 1e-9
end

local function current_thread()
    local co, is_main = coroutine.running()
    if co == nil or is_main then return MAIN end
    return co
end

-- The default way for a follower inside a coroutine to let the leader run:
-- OpenResty's ngx.sleep when present (it yields to the event loop), else a
-- plain coroutine.yield() for the caller's scheduler.
local function default_sleep()
    local ngx = rawget(_G, "ngx")
    if type(ngx) == "table" and type(ngx.sleep) == "function" then
        return function(polls)
            ngx.sleep(polls < 16 and 0 or 0.001)
        end
    end
    return nil
end

-- ---------------------------------------------------------------- groups

local Group = {}
Group.__index = Group

-- Creates a group.  opts (all optional):
--   shards  number of table shards (0: the library chooses)
--   sleep   function(polls) called by a waiting follower inside a coroutine
--           between polls; it must yield to whatever runs the leader
--           (OpenResty: ngx.sleep(0), the default when ngx is present;
--           otherwise coroutine.yield() is used)
--   library path of libsingleflight to load (see load())
-- The group is freed when it is garbage collected, or by close().
function M.new(opts)
    opts = opts or {}
    if opts.sleep ~= nil and type(opts.sleep) ~= "function" then
        error("bad option 'sleep' (function expected)", 2)
    end
    if opts.shards ~= nil and (type(opts.shards) ~= "number" or opts.shards < 0) then
        error("bad option 'shards' (non-negative number expected)", 2)
    end
    local l = M.load(opts.library)
    local o = ffi.new("sf_group_options")
    local rc = l.sf_group_options_init(o, 1)
    if rc ~= 0 then raise(rc, 2) end
    o.shards = opts.shards or 0
    local out = group_out_t()
    rc = l.sf_group_new(out, o)
    if rc ~= 0 then raise(rc, 2) end
    live_groups = live_groups + 1
    return setmetatable({
        ptr = ffi.gc(out[0], collect_group),
        sleep = opts.sleep or default_sleep(),
        -- key -> coroutine leading it in this state; weak so that an
        -- abandoned leader can still be collected.
        leading = setmetatable({}, { __mode = "v" }),
    }, Group)
end

local function check_group(self, fname)
    if getmetatable(self) ~= Group then
        error(("bad self to '%s' (group expected)"):format(fname), 3)
    end
    if self.ptr == nil then
        error(("'%s' on a closed group"):format(fname), 3)
    end
end

local function check_key(key, fname)
    if type(key) ~= "string" then
        error(("bad argument #1 to '%s' (string expected, got %s)"):format(fname, type(key)), 3)
    end
end

-- Reads this caller's outcome out of a completed wait and drops the result
-- reference.  Returns value, shared or raises.
local function settle(rc, res, shared)
    local r = res[0]
    if rc == M.OK then
        local p = lib.sf_result_value(r)
        local value
        local foreign = false
        if p ~= nil then
            local blob = ffi.cast(blob_ptr_t, p)
            if blob.magic == BLOB_MAGIC then
                value = ffi.string(blob.data, blob.len)
            else
                foreign = true
            end
        end
        lib.sf_result_release(r)
        if foreign then raise(M.EINVAL, 3, "the flight's value was not stored by this module") end
        return value, shared[0] ~= 0
    end
    if rc == M.EPANIC then
        local m = lib.sf_result_panic_message(r)
        local message = m ~= nil and ffi.string(m) or "panic"
        lib.sf_result_release(r)
        error(message, 0)
    end
    if r ~= nil then lib.sf_result_release(r) end
    raise(rc, 3)
end

local function lead(self, call, key, fn)
    local me = current_thread()
    self.leading[key] = me
    local ok, value = pcall(fn)
    if self.leading[key] == me then self.leading[key] = nil end

    if ok and value ~= nil and type(value) ~= "string" then
        ok, value = false, "singleflight: fn must return a string or nil, got " .. type(value)
    end
    local rc
    if ok then
        if value ~= nil then
            local p = C_lib.sf_luajit_malloc(BLOB_HEADER + #value)
            if p == nil then
                ok, value = false, "singleflight: out of memory for the value"
            else
                local blob = ffi.cast(blob_ptr_t, p)
                blob.magic = BLOB_MAGIC
                blob.len = #value
                ffi.copy(blob.data, value, #value)
                lib.sf_call_set_value(call, p, free_fn)
            end
        end
        if ok then rc = lib.sf_call_finish(call, 0) end
    end
    if not ok then
        local sok, message = pcall(tostring, value)
        rc = lib.sf_call_panic(call, sok and message or "panic")
    end
    -- The leader learns whether anyone joined (Go's shared) from its own
    -- completed flight.
    local shared = int_out_t()
    local wrc = rc == M.OK and lib.sf_call_wait(call, 0, nil, shared) or rc
    done_with_call(call)
    if not ok then error(value, 0) end
    if wrc ~= M.OK then raise(wrc, 3) end
    return value, shared[0] ~= 0
end

local function follow(self, call, timeout)
    local res, shared = result_out_t(), int_out_t()
    local sleep = self.sleep
    local rc
    if current_thread() == MAIN then
        local ns = timeout and math.floor(timeout * 1e9) or -1
        rc = lib.sf_call_wait(call, ns, res, shared)
    else
        local deadline = timeout and monotonic() + timeout
        local polls = 0
        while true do
            res[0] = nil
            rc = lib.sf_call_wait(call, 0, res, shared)
            if rc ~= M.ETIMEDOUT then break end
            if deadline and monotonic() >= deadline then
                -- Giving up: one last wait with a real (1 ns) timeout, so
                -- the library counts this follower in stats().timeouts
                -- (polls do not count) and a just-finished flight still wins.
                res[0] = nil
                rc = lib.sf_call_wait(call, 1, res, shared)
                -- A library that refuses any blocking wait on the leader's
                -- OS thread says EDEADLK when the leader is another
                -- coroutine here; for a follower that polls, giving up is
                -- still just a timeout (then not counted in stats).
                if rc == M.EDEADLK then rc = M.ETIMEDOUT end
                break
            end
            polls = polls + 1
            if sleep then
                -- A hook may refuse (ngx.sleep in a phase that cannot
                -- yield): give the handle back now, not at collection.
                local ok, err = pcall(sleep, polls)
                if not ok then
                    done_with_call(call)
                    error(err, 0)
                end
            else
                coroutine.yield()
            end
        end
    end
    done_with_call(call)
    return settle(rc, res, shared)
end

-- Go's Do.  Runs fn() once for all concurrent callers of key in this group;
-- the others wait and receive the same value.  Returns value, shared:
-- value is the string (or nil) fn returned, shared is true for every
-- follower and for a leader that anyone joined.
--
-- If fn raises, the leader re-raises fn's original error value and every
-- follower raises its tostring() (the message crossed C as text).  Other
-- outcomes raise an error object (see is_error) with .code:
--   EGOEXIT   the leader's coroutine was abandoned and collected
--   EDEADLK   fn itself runs its own key (directly or nested), or the main
--             coroutine asks for a key whose leader is a (necessarily
--             suspended) coroutine of this state: blocking would keep that
--             leader from ever finishing.  Raised at once, timeout or not.
--   ETIMEDOUT opts.timeout seconds passed; the flight itself goes on
--
-- Waiting: inside a coroutine a follower polls and yields between polls
-- (see new's sleep); in the main coroutine it blocks the OS thread, so the
-- leader must then be on another thread or state (else EDEADLK, above).  A
-- follower that gives up after opts.timeout counts once in stats().timeouts.
--
-- key must be a string (any bytes); fn a function; opts an optional table
-- { timeout = seconds }.
function Group:run(key, fn, opts)
    check_group(self, "run")
    check_key(key, "run")
    if type(fn) ~= "function" then
        error(("bad argument #2 to 'run' (function expected, got %s)"):format(type(fn)), 2)
    end
    local timeout = opts and opts.timeout
    if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
        error("bad option 'timeout' (non-negative number expected)", 2)
    end
    -- Joining a flight whose leader can only progress after this caller
    -- returns would wait forever.  Known here, before the library is asked:
    -- leading[key] is the coroutine of this state running key's fn.
    local leader = self.leading[key]
    if leader ~= nil then
        local me = current_thread()
        if leader == me then
            raise(M.EDEADLK, 2, "fn runs its own key")
        end
        -- While the main coroutine runs, every other coroutine is suspended,
        -- and a main-coroutine follower blocks the OS thread: the leader
        -- could never be resumed to finish.
        if me == MAIN then
            raise(M.EDEADLK, 2, "the main coroutine would block on a flight led by a suspended coroutine")
        end
    end
    local out = call_out_t()
    local rc = lib.sf_group_begin(self.ptr, key, #key, out)
    if rc < 0 then raise(rc, 2) end
    live_calls = live_calls + 1
    local call = ffi.gc(out[0], collect_call)
    if rc == M.LEADER then
        return lead(self, call, key, fn)
    end
    return follow(self, call, timeout)
end

-- Makes the next run of key start a new flight; the current flight still
-- delivers to its own callers.  Returns true when a flight was forgotten.
function Group:forget(key)
    check_group(self, "forget")
    check_key(key, "forget")
    local rc = lib.sf_group_forget(self.ptr, key, #key)
    if rc < 0 then raise(rc, 2) end
    if rc == 1 then self.leading[key] = nil end
    return rc == 1
end

-- As forget, but only while nobody has joined the flight.
function Group:forget_unshared(key)
    check_group(self, "forget_unshared")
    check_key(key, "forget_unshared")
    local rc = lib.sf_group_forget_unshared(self.ptr, key, #key)
    if rc < 0 then raise(rc, 2) end
    if rc == 1 then self.leading[key] = nil end
    return rc == 1
end

-- A snapshot of the group's counters as a table of numbers: calls, leaders,
-- followers, panics, goexits, timeouts, forgets, in_flight.
function Group:stats()
    check_group(self, "stats")
    local s = ffi.new("sf_group_stats")
    s.version = 1
    local rc = lib.sf_group_stats_get(self.ptr, s)
    if rc ~= 0 then raise(rc, 2) end
    return {
        calls = tonumber(s.calls), leaders = tonumber(s.leaders),
        followers = tonumber(s.followers), panics = tonumber(s.panics),
        goexits = tonumber(s.goexits), timeouts = tonumber(s.timeouts),
        forgets = tonumber(s.forgets), in_flight = tonumber(s.in_flight),
    }
end

-- Frees the group now instead of at garbage collection.  Returns true, or
-- nil and an error object (code EBUSY) while a run of it is in progress.
-- The group is unusable after a successful close.
function Group:close()
    check_group(self, "close")
    local rc = free_group(self.ptr)
    if rc ~= 0 then
        local ok, e = pcall(raise, rc, 1)
        return nil, e
    end
    ffi.gc(self.ptr, nil)
    self.ptr = nil
    return true
end

return M
