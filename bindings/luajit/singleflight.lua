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
-- Giving up (libsingleflight 1.1): a follower gives up when its timeout runs
-- out or its abort function says so (sf_call_cancel: the others are
-- unaffected).  When every caller has given up while fn runs, the flight is
-- abandoned: fn receives the flight and can see it (flight:abandoned(),
-- flight:on_abandon(handler)) and stop; the key's next caller starts afresh.
--
-- Shared groups (libsingleflight 1.2): singleflight.open_shared(name)
-- attaches to a group in shared memory that every process opening the same
-- name uses, so a key runs once across the processes of a host (every
-- nginx worker, say).  Its values cross processes as bytes; a follower
-- inside an OpenResty request waits on its process's doorbell through a
-- cosocket, so the worker neither blocks nor polls.
--
-- Thread rules: a group belongs to the Lua state that created it.  Every
-- method is safe to call from any coroutine of that state.

local ffi = require("ffi")

local M = { _VERSION = "1.2.0" }

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
-- Since 1.1 (SF_1.1).  Apart, and allowed to fail, because a copy of this
-- module (or another one) may have declared them already.
pcall(ffi.cdef, [[
int sf_call_cancel(sf_call *call);
int sf_call_abandoned(const sf_call *call);
]])
-- Since 1.2 (SF_1.2): shared groups, values as bytes, the doorbell.  The
-- options struct gets this module's own name, as the stats do, so that
-- another module's declaration of sf_shared_options cannot clash.
if not pcall(ffi.typeof, "sf_luajit_shared_options") then
    ffi.cdef [[
typedef struct sf_luajit_shared_options {
    unsigned int version;
    unsigned int flags;
    const char  *path;
    unsigned int table_slots;
    unsigned int max_processes;
    uint64_t     arena_bytes;
    uint64_t     max_value_bytes;
    unsigned int mode;
} sf_luajit_shared_options;
typedef struct sf_luajit_stats3 {
    unsigned int version;
    uint64_t calls, leaders, followers, panics, goexits, timeouts, forgets, in_flight;
    uint64_t abandons, cancels;
    uint64_t in_flight_high, arena_used, arena_high, processes;
} sf_luajit_stats3;
]]
end
pcall(ffi.cdef, [[
int sf_shared_options_init(sf_luajit_shared_options *opts, unsigned int version);
int sf_group_open_shared(const char *name, const sf_luajit_shared_options *opts, sf_group **out);
int sf_call_set_bytes(sf_call *call, const void *data, size_t len);
const void *sf_result_bytes(const sf_result *r, size_t *len);
int sf_call_doorbell(sf_call *call, char *address, size_t len, uint64_t *token);
]])
if not pcall(ffi.typeof, "sf_luajit_blob") then
    -- A string value as the leader stores it.  magic tells this binding's
    -- values apart from values other bindings stored in the same group.
    -- The libc functions get private names (redirected to the real
    -- symbols) because another module may have declared them with other
    -- parameter types, e.g. struct timespec *, which ours would not match.
    ffi.cdef [[
typedef struct sf_luajit_blob { uint64_t magic; size_t len; char data[1]; } sf_luajit_blob;
typedef struct sf_luajit_stats2 {
    unsigned int version;
    uint64_t calls, leaders, followers, panics, goexits, timeouts, forgets, in_flight;
    uint64_t abandons, cancels;
} sf_luajit_stats2;
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
M.ECANCELED = -9
M.EPERM, M.EINCOMPAT = -10, -11 -- shared groups (1.2)

local ABI_MAJOR = 1
local MIN_VERSION = 10100 -- 1.1: sf_call_cancel, sf_call_abandoned
local SHARED_VERSION = 10200 -- 1.2: shared groups, bytes, the doorbell
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
local size_out_t = ffi.typeof("size_t[1]")
local token_out_t = ffi.typeof("uint64_t[1]")
-- "unix:" and a socket path (at most 107 bytes on Linux), with room to spare.
local ADDRESS_BYTES = 256
local address_t = ffi.typeof("char[?]")
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

-- The error object for a status code: {code, name, message}.
local function status_error(code, detail)
    local message = lib and ffi.string(lib.sf_strerror(code)) or "error"
    if detail then message = message .. ": " .. detail end
    return setmetatable({
        code = code,
        name = lib and ffi.string(lib.sf_err_name(code)) or tostring(code),
        message = message,
    }, error_mt)
end

-- Raises a status code as an error object; level as for error().
local function raise(code, level, detail)
    error(status_error(code, detail), level + 1)
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
    -- The rock's own copy (libsingleflight-ffi): installed beside the
    -- module as a C module would be, so it is found on package.cpath.
    local bundled = package.searchpath("singleflight.libsingleflight", package.cpath)
    if bundled then list[#list + 1] = bundled end
    -- Searched on LD_LIBRARY_PATH and the system paths by the dynamic linker.
    list[#list + 1] = "libsingleflight.so." .. ABI_MAJOR
    list[#list + 1] = "singleflight"
    return list
end

-- Loads the C library, from path when given, else from $SF_LIBRARY,
-- $SF_PREFIX/lib, the rock's copy (singleflight/libsingleflight.so on
-- package.cpath) or the dynamic linker's search path.  Idempotent: the first
-- successful load wins.  Raises when no candidate loads or the library's ABI
-- major differs from the one this module was written for.
function M.load(path)
    if lib then return lib end
    local tried = {}
    for _, name in ipairs(path and { path } or candidates()) do
        local ok, l = pcall(ffi.load, name)
        if ok then
            local number = l.sf_version_number()
            local major = math.floor(number / 10000)
            if major ~= ABI_MAJOR then
                error(("singleflight: %s has ABI %d, this module needs %d")
                    :format(name, major, ABI_MAJOR), 2)
            end
            if number < MIN_VERSION then
                error(("singleflight: %s is %s, this module needs 1.1 or newer")
                    :format(name, ffi.string(l.sf_version_string())), 2)
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

-- Options both kinds of group take, checked before anything is made.
local function check_common(opts)
    if opts.sleep ~= nil and type(opts.sleep) ~= "function" then
        error("bad option 'sleep' (function expected)", 3)
    end
end

-- Wraps a new group handle (out[0]) in its Lua object; fields are what
-- differs between kinds of group.
local function wrap_group(out, opts, fields)
    live_groups = live_groups + 1
    local self = {
        ptr = ffi.gc(out[0], collect_group),
        sleep = opts.sleep or default_sleep(),
        -- key -> the flight a coroutine of this state runs fn for; weak so
        -- that an abandoned leader can still be collected.
        leading = setmetatable({}, { __mode = "v" }),
        -- every flight whose fn runs in this state, for abandoned_here
        flights = setmetatable({}, { __mode = "k" }),
    }
    for k, v in pairs(fields) do self[k] = v end
    return setmetatable(self, Group)
end

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
    check_common(opts)
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
    return wrap_group(out, opts, {})
end

-- The sizes open_shared passes on: option name -> its field.
local SHARED_SIZES = {
    table_slots = "table_slots", max_processes = "max_processes",
    arena_bytes = "arena_bytes", max_value_bytes = "max_value_bytes", mode = "mode",
}

-- Attaches to the shared group called name, creating it if no process has
-- it open (libsingleflight 1.2; see sf_group_open_shared(3)): every
-- process (every nginx worker) that opens the same name shares its
-- flights, so a key's fn runs once across them all.  name: 1 to 200 bytes
-- of letters, digits, '.', '_' and '-'; or nil with opts.path.  opts (all
-- optional):
--   path             a file to map instead of POSIX shared memory (name nil)
--   table_slots, max_processes, arena_bytes, max_value_bytes, mode
--                    the segment's sizes and permission bits (0 or absent:
--                    the library's defaults, or the existing segment's)
--   run_unshared     true: a full table or arena runs fn coalesced in this
--                    process only, instead of raising ENOMEM
--   doorbell         how a follower inside a coroutine waits: absent, on
--                    its process's doorbell through an OpenResty cosocket
--                    when ngx is present, else by polling as new's groups
--                    do; false, always poll; or a function(address, token,
--                    seconds) that connects a stream socket to address
--                    ("unix:<path>"), sends token (8 bytes) and returns
--                    true once the library answered or closed, false when
--                    seconds (nil: no limit) ran out, yielding meanwhile
--   sleep, library   as for new
-- Returns a group with new's methods: run returns the string (or nil) fn
-- returned, copied through the segment (at most max_value_bytes; a longer
-- one fails the flight); a leader process that dies inside fn raises
-- EGOEXIT in every follower, in every process.  Raises an error object on
-- failure: EINVAL (a bad name or option), EPERM (another user's segment, or
-- wider permissions), EINCOMPAT (another layout or other sizes), EBUSY
-- (max_processes attached), ENOMEM.  The attachment is dropped by close()
-- or when the group is collected; the last process to leave removes the
-- segment.  As new's, the group belongs to the Lua state that opened it
-- (its methods run on any coroutine of that state); every other state or
-- process opens its own attachment.  A process forked after opening may use
-- the group: it becomes a process of its own at its first call.  The
-- doorbell function runs on the follower's coroutine and must yield, not
-- block, while it waits.
function M.open_shared(name, opts)
    opts = opts or {}
    check_common(opts)
    if opts.path ~= nil then
        if type(opts.path) ~= "string" then error("bad option 'path' (string expected)", 2) end
        if name ~= nil then error("bad argument #1 to 'open_shared' (nil expected with option 'path')", 2) end
    elseif type(name) ~= "string" then
        error(("bad argument #1 to 'open_shared' (string expected, got %s)"):format(type(name)), 2)
    end
    for option in pairs(SHARED_SIZES) do
        local v = opts[option]
        if v ~= nil and (type(v) ~= "number" or v < 0 or v % 1 ~= 0) then
            error(("bad option '%s' (non-negative integer expected)"):format(option), 2)
        end
    end
    local knock = opts.doorbell
    if knock ~= nil and knock ~= false and type(knock) ~= "function" then
        error("bad option 'doorbell' (function or false expected)", 2)
    end
    local l = M.load(opts.library)
    if l.sf_version_number() < SHARED_VERSION then
        error(("singleflight: %s has no shared groups (1.2 or newer needed)")
            :format(ffi.string(l.sf_version_string())), 2)
    end
    local o = ffi.new("sf_luajit_shared_options")
    local rc = l.sf_shared_options_init(o, 1)
    if rc ~= 0 then raise(rc, 2) end
    for option, field in pairs(SHARED_SIZES) do
        if opts[option] then o[field] = opts[option] end
    end
    if opts.run_unshared then o.flags = 1 end -- SF_SHARED_RUN_UNSHARED
    o.path = opts.path -- copied by the library during the call
    local out = group_out_t()
    rc = l.sf_group_open_shared(name, o, out)
    if rc ~= 0 then raise(rc, 2, name or opts.path) end
    return wrap_group(out, opts, { shared = true, knock = knock })
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

-- The string value of a result: bytes on a shared group (sf_result_bytes;
-- NULL is nil), this module's blob on a local one.  Returns value, or nil
-- and true when the flight's value was stored by someone else in a way
-- this module cannot read.
local function value_of(r, bytes)
    if bytes then
        local len = size_out_t()
        local p = lib.sf_result_bytes(r, len)
        if p ~= nil then return ffi.string(p, len[0]) end
        return nil, lib.sf_result_value(r) ~= nil
    end
    local p = lib.sf_result_value(r)
    if p == nil then return nil end
    local blob = ffi.cast(blob_ptr_t, p)
    if blob.magic ~= BLOB_MAGIC then return nil, true end
    return ffi.string(blob.data, blob.len)
end

-- Reads this caller's outcome out of a completed wait and drops the result
-- reference.  Returns value, shared or raises.  bytes: the group is shared.
local function settle(rc, res, shared, bytes)
    local r = res[0]
    if rc == M.OK then
        local value, foreign = value_of(r, bytes)
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

-- ---------------------------------------------------------------- the leader's flight

-- What fn receives: the leader's view of its flight, to stop the work when
-- nobody wants it any more.  Valid while fn runs, from any coroutine of
-- this state.
local Flight = {}
Flight.__index = Flight

-- A flight reaches its call and its leader's coroutine only weakly,
-- through these tables (weak keys and values, one each for the module):
-- both belong to the leader's coroutine (run's and lead's locals).  fn may
-- keep its flight longer (ngx.ctx, a table of requests to give up on
-- abort); if the leader's coroutine is then dropped, the flight must not
-- keep it, nor its call, alive: collected, the call's finalizer releases
-- it (followers see EGOEXIT) and the key is free.  Shared tables, not a
-- weak table per flight: that cost an uncontended run about 14% more
-- instructions, these about 3%.
local CALLS = setmetatable({}, { __mode = "kv" })
local LEADERS = setmetatable({}, { __mode = "kv" })

-- The leader's call, or nil once it ended or was collected.
local function call_of(flight)
    return CALLS[flight]
end

-- A handler's error reaches nobody (it runs on whichever coroutine gave up
-- last); it is logged.
local function report(err)
    local message = "singleflight: an on_abandon handler failed: " .. tostring(err)
    local ngx = rawget(_G, "ngx")
    if type(ngx) == "table" and type(ngx.log) == "function" then
        pcall(ngx.log, ngx.ERR, message)
    else
        io.stderr:write(message, "\n")
    end
end

-- Runs the abandon handlers, once.
local function fire(flight)
    if flight.fired then return end
    flight.fired = true
    for _, handler in ipairs(flight.handlers) do
        local ok, err = pcall(handler, flight)
        if not ok then report(err) end
    end
end

-- True once every caller has given up while fn runs: nobody will get fn's
-- result, and the key's next caller has started a new flight.  Cheap; poll
-- it between steps of the work.  Runs the abandon handlers first if they
-- have not run yet (when the last caller left without this module seeing
-- it: a follower coroutine that was collected).
function Flight:abandoned()
    if self.fired then return true end
    local call = call_of(self)
    if call ~= nil and lib.sf_call_abandoned(call) == 1 then
        fire(self)
        return true
    end
    return false
end

-- Registers handler(flight) to run once when the flight is abandoned: at
-- once if it is, else on the coroutine whose giving up abandons it (a
-- follower's timeout or abort, or give_up), or at fn's next abandoned().
-- Under OpenResty that coroutine may belong to another request: do not
-- touch this request's cosockets there, wake it (an ngx.semaphore post)
-- or set a flag fn checks.  Errors it raises are logged.
function Flight:on_abandon(handler)
    if type(handler) ~= "function" then
        error(("bad argument #1 to 'on_abandon' (function expected, got %s)"):format(type(handler)), 2)
    end
    self.handlers[#self.handlers + 1] = handler
    if self.fired then
        local ok, err = pcall(handler, self)
        if not ok then report(err) end
    else
        self:abandoned()
    end
end

-- The leader's own caller gives up (its client went away): fn keeps
-- running and must still return, for whoever else waits, but this caller's
-- run raises an ECANCELED error once fn returns.  Returns true when that
-- abandoned the flight (nobody else was waiting; the handlers have run).
function Flight:give_up()
    local call = call_of(self)
    if self.gave_up or call == nil then return false end
    self.gave_up = true
    if lib.sf_call_cancel(call) == 1 then
        fire(self)
        return true
    end
    return false
end

-- Runs the handlers of any flight of this group that a give-up here has
-- just abandoned.  sf_call_cancel says whether it did, not which flight's
-- leader that was; each flight's own flag does.
local function abandoned_here(self)
    for flight in pairs(self.flights) do
        local call = call_of(flight)
        if not flight.fired and call ~= nil and lib.sf_call_abandoned(call) == 1 then
            fire(flight)
        end
    end
end

-- The flight a coroutine of this state leads for a key (see run), unless
-- it was abandoned, or its call collected with a dropped leader coroutine:
-- then the key is free.
local function leading(self, key)
    local flight = self.leading[key]
    local call = flight and call_of(flight)
    if call ~= nil and lib.sf_call_abandoned(call) == 0 then
        return flight
    end
    return nil
end

-- Gives the leader's string to the flight: as bytes in the segment on a
-- shared group (the only value other processes can read), else as a blob
-- the library frees after the last reader.  Returns true, value or false
-- and the message the flight then panics with.
local function store(self, call, value)
    if self.shared then
        local rc = lib.sf_call_set_bytes(call, value, #value)
        if rc == M.OK then return true, value end
        return false, ("singleflight: a value of %d bytes cannot be stored: %s (the group's max_value_bytes bounds it)")
            :format(#value, ffi.string(lib.sf_strerror(rc)))
    end
    local p = C_lib.sf_luajit_malloc(BLOB_HEADER + #value)
    if p == nil then return false, "singleflight: out of memory for the value" end
    local blob = ffi.cast(blob_ptr_t, p)
    blob.magic = BLOB_MAGIC
    blob.len = #value
    ffi.copy(blob.data, value, #value)
    lib.sf_call_set_value(call, p, free_fn)
    return true, value
end

local function lead(self, call, key, fn)
    local flight = setmetatable({ handlers = {} }, Flight)
    CALLS[flight] = call
    LEADERS[flight] = current_thread()
    self.leading[key] = flight
    self.flights[flight] = true
    local ok, value = pcall(fn, flight)
    if self.leading[key] == flight then self.leading[key] = nil end
    self.flights[flight] = nil

    if ok and value ~= nil and type(value) ~= "string" then
        ok, value = false, "singleflight: fn must return a string or nil, got " .. type(value)
    end
    local rc
    if ok then
        if value ~= nil then ok, value = store(self, call, value) end
        if ok then rc = lib.sf_call_finish(call, 0) end
    end
    if not ok then
        local sok, message = pcall(tostring, value)
        rc = lib.sf_call_panic(call, sok and message or "panic")
    end
    -- The leader learns whether anyone joined (Go's shared) from its own
    -- completed flight; a leader whose caller gave up learns nothing.
    local shared = int_out_t()
    local wrc = rc
    if rc == M.OK and not flight.gave_up then wrc = lib.sf_call_wait(call, 0, nil, shared) end
    CALLS[flight] = nil
    LEADERS[flight] = nil
    done_with_call(call)
    if flight.gave_up then raise(M.ECANCELED, 3, "this caller gave up (flight:give_up)") end
    if not ok then error(value, 0) end
    if wrc ~= M.OK then raise(wrc, 3) end
    return value, shared[0] ~= 0
end

-- A follower gives up (why: ETIMEDOUT or ECANCELED): its call's interest
-- goes (sf_call_cancel), and if it was the last one interested the flight
-- is abandoned and the handlers of this state run here.  A timeout found by
-- polling (not waited for in C) first waits once more with a real (1 ns)
-- timeout, so the library counts it in stats().timeouts (polls do not
-- count) and a flight that completed just before still wins (the wait's
-- status is returned).  A library that refuses any blocking wait on the
-- leader's OS thread says EDEADLK when the leader is another coroutine
-- here; for a follower that polls, giving up is still just a timeout.
-- Once a wait has said "timed out", or abort said to stop, the answer is
-- why, even if the flight completes before the cancel: the caller gave up.
local function give_up(self, call, res, shared, why, waited)
    if why == M.ETIMEDOUT and not waited then
        res[0] = nil
        local rc = lib.sf_call_wait(call, 1, res, shared)
        if rc ~= M.ETIMEDOUT and rc ~= M.EDEADLK then return rc end
    end
    if lib.sf_call_cancel(call) == 1 then abandoned_here(self) end
    return why
end

-- A follower that cannot wait in this context (a sleep hook or a doorbell
-- that raised: a phase of OpenResty that cannot yield) gives up and the
-- handle back now, not at collection, and raises err.
local function cannot_wait(self, call, err)
    if lib.sf_call_cancel(call) == 1 then abandoned_here(self) end
    done_with_call(call)
    error(err, 0)
end

-- ---------------------------------------------------------------- doorbells

-- Cosocket timeouts are milliseconds below 2^31 (0 would mean nginx's
-- default); a wait with no deadline re-arms this one when it runs out.
local FOREVER_MS = 2 ^ 31 - 1
-- How often a doorbell wait with an abort function asks it again.
local ABORT_EVERY = 0.1
-- Connects refused at once, before the doorbell is given up on: the
-- library's helper thread accepts a burst of them (its queue holds 128)
-- a moment later.
local CONNECT_TRIES = 8

-- The 8 bytes of a doorbell token, least significant first.
local function token_bytes(t)
    local b = {}
    for i = 1, 8 do
        b[i] = string.char(tonumber(t % 256))
        t = t / 256 -- a uint64_t: integer division
    end
    return table.concat(b)
end

-- The doorbell knock of OpenResty: a cosocket connects to the process's
-- doorbell, sends the token and reads the answer, yielding to nginx's
-- event loop meanwhile (no thread blocks, nothing polls).  Returns true once
-- the library answered or closed, false when seconds ran out; raises when
-- no cosocket can be used here.
local function ngx_knock(address, token, seconds)
    local ngx = rawget(_G, "ngx")
    local ms = FOREVER_MS
    if seconds then ms = math.min(FOREVER_MS, math.max(1, math.ceil(seconds * 1000))) end
    local sock, ok, err
    for _ = 1, CONNECT_TRIES do
        sock = ngx.socket.tcp()
        sock:settimeout(ms)
        ok, err = sock:connect(address)
        if ok then break end
        -- Linux refuses a unix socket's connect at once when its queue is
        -- full: give the helper thread a turn of the event loop.
        ngx.sleep(0)
    end
    if not ok then error("singleflight: cannot reach the doorbell " .. address .. ": " .. tostring(err), 0) end
    ok, err = sock:send(token)
    local answer
    if ok then answer, err = sock:receive(1) end
    sock:close()
    if answer or err == "closed" then return true end
    if err == "timeout" then return false end
    error("singleflight: the doorbell " .. address .. " failed: " .. tostring(err), 0)
end

-- The knock this group's followers use inside a coroutine, or nil to poll:
-- the group's own (open_shared's doorbell option), else OpenResty's when
-- cosockets exist.  Only shared groups have doorbells.
local function knock_of(self)
    if not self.shared or self.knock == false then return nil end
    if self.knock then return self.knock end
    local ngx = rawget(_G, "ngx")
    if type(ngx) == "table" and type(ngx.socket) == "table" and type(ngx.socket.tcp) == "function" then
        return ngx_knock
    end
    return nil
end

-- A shared group's follower inside a coroutine waits on its process's
-- doorbell (sf_call_doorbell): knock returns when the library answers, which
-- it does once the flight completed, in whichever process.  Each turn
-- polls the call once (sf_call_wait with 0) and gives up as follow does.
-- Returns the status of the wait.
local function wait_doorbell(self, call, knock, timeout, abort, res, shared)
    local address = address_t(ADDRESS_BYTES)
    local token = token_out_t()
    local rc = lib.sf_call_doorbell(call, address, ADDRESS_BYTES, token)
    if rc ~= M.OK then cannot_wait(self, call, status_error(rc, "no doorbell for this call")) end
    local where, tok = ffi.string(address), token_bytes(token[0])
    local deadline = timeout and monotonic() + timeout
    local early = 0
    while true do
        res[0] = nil
        rc = lib.sf_call_wait(call, 0, res, shared)
        if rc ~= M.ETIMEDOUT then return rc end
        if abort and abort() then return give_up(self, call, res, shared, M.ECANCELED) end
        local left = deadline and deadline - monotonic()
        if left and left <= 0 then return give_up(self, call, res, shared, M.ETIMEDOUT) end
        if abort and (left == nil or left > ABORT_EVERY) then left = ABORT_EVERY end
        local ok, answered = pcall(knock, where, tok, left)
        if not ok then cannot_wait(self, call, answered) end
        -- The library answers only completed flights; a bell that rings
        -- again and again on a running one would spin this loop.
        early = answered and early + 1 or 0
        if early > 2 then
            cannot_wait(self, call, status_error(M.ESTATE, "the doorbell answered a flight still running"))
        end
    end
end

local function follow(self, call, timeout, abort)
    local res, shared = result_out_t(), int_out_t()
    local sleep = self.sleep
    local rc
    local knock = knock_of(self)
    if current_thread() == MAIN then
        if abort and abort() then
            rc = give_up(self, call, res, shared, M.ECANCELED)
        else
            local ns = timeout and math.floor(timeout * 1e9) or -1
            rc = lib.sf_call_wait(call, ns, res, shared)
            if rc == M.ETIMEDOUT then rc = give_up(self, call, res, shared, M.ETIMEDOUT, true) end
        end
    elseif knock then
        rc = wait_doorbell(self, call, knock, timeout, abort, res, shared)
    else
        local deadline = timeout and monotonic() + timeout
        local polls = 0
        while true do
            res[0] = nil
            rc = lib.sf_call_wait(call, 0, res, shared)
            if rc ~= M.ETIMEDOUT then break end
            if abort and abort() then
                rc = give_up(self, call, res, shared, M.ECANCELED)
                break
            end
            if deadline and monotonic() >= deadline then
                rc = give_up(self, call, res, shared, M.ETIMEDOUT)
                break
            end
            polls = polls + 1
            if sleep then
                -- A hook may refuse (ngx.sleep in a phase that cannot
                -- yield): give up and the handle back now, not at
                -- collection.
                local ok, err = pcall(sleep, polls)
                if not ok then cannot_wait(self, call, err) end
            else
                coroutine.yield()
            end
        end
    end
    done_with_call(call)
    return settle(rc, res, shared, self.shared)
end

-- Go's Do.  Runs fn(flight) once for all concurrent callers of key in this
-- group; the others wait and receive the same value.  Returns value, shared:
-- value is the string (or nil) fn returned, shared is true for every
-- follower and for a leader that anyone joined.  fn receives the leader's
-- flight (abandoned, on_abandon, give_up; it may ignore it).
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
--   ECANCELED opts.abort() said to give up (a follower), or the leader's
--             caller gave up with flight:give_up()
--
-- Waiting: inside a coroutine a follower polls and yields between polls
-- (see new's sleep); in the main coroutine it blocks the OS thread, so the
-- leader must then be on another thread or state (else EDEADLK, above).  A
-- follower that gives up after opts.timeout counts once in stats().timeouts;
-- every give-up counts in stats().cancels.
--
-- key must be a string (any bytes); fn a function; opts an optional table
-- { timeout = seconds, abort = function }: abort is called before each
-- wait (in the main coroutine: once, before blocking) and the follower gives
-- up when it returns true.  The leader ignores both.
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
    local abort = opts and opts.abort
    if abort ~= nil and type(abort) ~= "function" then
        error("bad option 'abort' (function expected)", 2)
    end
    -- Joining a flight whose leader can only progress after this caller
    -- returns would wait forever.  Known here, before the library is asked:
    -- leading(self, key) is the flight a coroutine of this state runs fn for.
    local led = leading(self, key)
    if led ~= nil then
        local me = current_thread()
        if LEADERS[led] == me then
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
    return follow(self, call, timeout, abort)
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
-- followers, panics, goexits, timeouts, forgets, in_flight, abandons
-- (flights every caller gave up on), cancels (callers who gave up).  A
-- shared group's count every process's calls, and add in_flight_high,
-- arena_used, arena_high and processes (attached now).
function Group:stats()
    check_group(self, "stats")
    -- Version 2 (3 for a shared group, which needs 1.2 anyway), in structs
    -- of this module's own: another module may have declared
    -- sf_group_stats as version 1.
    local s = ffi.new(self.shared and "sf_luajit_stats3" or "sf_luajit_stats2")
    s.version = self.shared and 3 or 2
    local rc = lib.sf_group_stats_get(self.ptr, ffi.cast("sf_group_stats *", s))
    if rc ~= 0 then raise(rc, 2) end
    local t = {
        calls = tonumber(s.calls), leaders = tonumber(s.leaders),
        followers = tonumber(s.followers), panics = tonumber(s.panics),
        goexits = tonumber(s.goexits), timeouts = tonumber(s.timeouts),
        forgets = tonumber(s.forgets), in_flight = tonumber(s.in_flight),
        abandons = tonumber(s.abandons), cancels = tonumber(s.cancels),
    }
    if self.shared then
        t.in_flight_high, t.processes = tonumber(s.in_flight_high), tonumber(s.processes)
        t.arena_used, t.arena_high = tonumber(s.arena_used), tonumber(s.arena_high)
    end
    return t
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
