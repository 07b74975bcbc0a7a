--- singleflight: Go's singleflight (duplicate call suppression) for Lua 5.4.
--
--     local sf = require "singleflight"
--     local g = sf.new()
--     local value, shared = g:call("user:42", function() return load_user(42) end)
--
-- Concurrent callers of one key share one execution of fn and all receive
-- its value.  Callers are threads (Lua states on different OS threads
-- sharing a group made with sf.shared) or coroutines of one state: a
-- follower inside a yieldable coroutine yields sf.WAITING until the flight
-- is done instead of blocking its thread, so the coroutine that leads keeps
-- running.  A caller that cannot yield (the main coroutine) blocks, so a
-- key led by a coroutine of its own state is an SF_EDEADLK error for it.
-- Errors raised in fn are raised in every caller.
--
-- Keys and values are strings: values cross Lua states as bytes, so fn must
-- return a string or nil.  Error values reach the callers as strings too.
--
-- The work is done by libsingleflight, a C library; singleflight_core is its
-- SWIG-generated binding.

local core = require "singleflight_core"

local M = {}

--- What a follower coroutine yields while its flight is still running.  A
-- scheduler that sees it resumes the coroutine later (any time: the follower
-- just checks again).
M.WAITING = setmetatable({}, { __tostring = function() return "singleflight.WAITING" end })

--- The version of the loaded C library, e.g. "1.0.0".
M.version = core.version_string()

if not core.version_matches() then
    error(("singleflight: built against libsingleflight %s but loaded %s")
        :format(core.BUILT_VERSION, M.version))
end

local Group = {}
Group.__index = Group
Group.__name = "singleflight.Group"

local function wrap(native)
    -- leading[co][key] is set while coroutine co runs fn for key: a call
    -- for that key from inside fn would wait for itself.  Weak keys: a
    -- coroutine abandoned mid-flight must not be kept alive by it.
    return setmetatable({ native = native, leading = setmetatable({}, { __mode = "k" }) }, Group)
end

--- A new private group.  A group may be used by every coroutine of the
-- state that made it.
function M.new()
    return wrap(core.Group())
end

--- The process-wide group called name (a string), created on first use.
-- Every Lua state in the process that asks for the same name, on any
-- thread, gets the same group; it lives while any state holds it.
function M.shared(name)
    if type(name) ~= "string" then
        error(("singleflight.shared: name must be a string, got %s"):format(type(name)), 2)
    end
    return wrap(core.Group.named(name))
end

local function is_callable(fn)
    if type(fn) == "function" then return true end
    local mt = getmetatable(fn)
    return type(mt) == "table" and mt.__call ~= nil
end

local function describe(err)
    if type(err) == "string" then return err end
    local ok, text = pcall(tostring, err)
    return ok and text or ("(error object of type " .. type(err) .. ")")
end

-- Runs fn as the leader and completes the flight.  fn runs in protected mode
-- so that an error, or a value that cannot cross states, still completes the
-- flight: the followers must always be woken.
local function lead(flight, fn)
    local ok, value = pcall(fn)
    if ok and value ~= nil and type(value) ~= "string" then
        ok, value = false, ("singleflight: fn must return a string or nil, got %s"):format(type(value))
    end
    if ok then
        if value ~= nil then flight:set_string(value) end
        flight:finish(0)
    else
        flight:panic(describe(value))
    end
end

-- The timeout of opts (seconds), or nil for none.  level as for error().
local function timeout_of(opts, level)
    if opts == nil then return nil end
    if type(opts) ~= "table" then
        error(("singleflight: opts must be a table, got %s"):format(type(opts)), level + 1)
    end
    local timeout = opts.timeout
    if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
        error("singleflight: timeout must be a non-negative number of seconds", level + 1)
    end
    return timeout
end

-- Nanoseconds for a blocking wait: -1 (forever) for no timeout, and for one
-- too long to be told apart from forever.
local function timeout_ns(timeout)
    if timeout == nil or timeout >= 2 ^ 62 / 1e9 then return -1 end
    return math.floor(timeout * 1e9)
end

-- A follower coroutine giving up: one last wait with a real (1 ns) timeout,
-- so the library counts it in stats().timeouts (polls do not count) and a
-- just-finished flight still wins.  A library that refuses blocking waits
-- on the leader's OS thread answers SF_EDEADLK when the leader is another
-- coroutine here: for a caller that polls, that is still only a timeout.
local function give_up(flight)
    local status = flight:wait_status(1)
    if status == core.EDEADLK then return core.ETIMEDOUT end
    if status < 0 and status ~= core.ETIMEDOUT and status ~= core.EPANIC and status ~= core.EGOEXIT then
        error(("singleflight: waiting failed (status %d)"):format(status), 0)
    end
    return status
end

-- Waits for the flight: a leader has finished already; a follower in a
-- yieldable coroutine polls and yields between polls, until timeout seconds
-- have passed; any other follower blocks its thread for up to timeout
-- (which only holds up the other coroutines of its own state, and it is not
-- in one).  Returns the wait's status, core.ETIMEDOUT included.
local function settle(self, key, flight, fn, timeout)
    if flight:is_leader() then
        local co = coroutine.running()
        local keys = self.leading[co]
        if not keys then
            keys = {}
            self.leading[co] = keys
        end
        keys[key] = true
        local ok, err = pcall(lead, flight, fn)
        keys[key] = nil
        if not ok then error(err, 0) end
        return flight:wait(0)
    end
    if coroutine.isyieldable() then
        local deadline = timeout and core.monotonic_seconds() + timeout
        while not flight:poll() do
            if deadline and core.monotonic_seconds() >= deadline then return give_up(flight) end
            coroutine.yield(M.WAITING)
        end
        return flight:wait(0)
    end
    return flight:wait(timeout_ns(timeout))
end

-- Whether a coroutine of this state is running fn for key in this group.
local function led_here(self, key)
    for _, keys in pairs(self.leading) do
        if keys[key] then return true end
    end
    return false
end

-- After a forget, key's next caller starts a new flight instead of joining
-- the one a coroutine here is running: that is no longer a deadlock.
local function forgotten(self, key)
    for _, keys in pairs(self.leading) do keys[key] = nil end
end

local RELEASE_ON_CLOSE = { __close = function(guard) guard.flight:release() end }

--- Runs fn() once for all concurrent callers of key.
-- Returns the string fn returned (or nil) and whether it went to more than
-- one caller.  If fn raises an error, or returns something other than a
-- string or nil, every caller raises the error (as a string, level 0).
-- key must be a string.  Also available as g["do"].
--
-- opts is an optional table { timeout = seconds }: a follower that has
-- waited that long raises an error containing "SF_ETIMEDOUT" and counts
-- once in stats().timeouts, while the flight goes on for everyone else
-- (0 gives up at once unless the flight is done).  The leader ignores it,
-- since it is the one running fn.
function Group:call(key, fn, opts)
    if not is_callable(fn) then
        error(("singleflight: fn must be callable, got %s"):format(type(fn)), 2)
    end
    local timeout = timeout_of(opts, 2)
    if type(key) == "string" then
        local mine = self.leading[coroutine.running()]
        if mine and mine[key] then
            error("singleflight: a call inside fn asked for its own key (SF_EDEADLK)", 2)
        end
        -- A caller that cannot yield blocks its thread while it waits, and
        -- the leader, a coroutine of this state, could never run to finish.
        if not coroutine.isyieldable() and led_here(self, key) then
            error("singleflight: this caller cannot yield and the key's leader is a coroutine "
                .. "of this state, which could not finish while it waits (SF_EDEADLK)", 2)
        end
    end
    local flight = self.native:begin(key)
    -- Released however this call ends: normally, by an error, or by
    -- coroutine.close() on a coroutine suspended in here.  Not waiting for
    -- the collector matters: it drops our reference to the shared value and,
    -- for a leader that never finished, releases its followers at once.
    local guard <close> = setmetatable({ flight = flight }, RELEASE_ON_CLOSE)
    local ok, status = pcall(settle, self, key, flight, fn, timeout)
    local value, shared, message
    if ok and status ~= core.ETIMEDOUT then
        value, shared, message = flight:get_string(), flight:shared(), flight:panic_message()
    end
    flight:release()
    if not ok then error(status, 0) end
    if status == core.OK then return value, shared end
    if status == core.EPANIC then error(message or "singleflight: panic", 0) end
    if status == core.ETIMEDOUT then
        error(("singleflight: gave up waiting for key %q after %g s (SF_ETIMEDOUT)"):format(key, timeout), 0)
    end
    error("singleflight: the leader exited without producing a result", 0)
end

Group["do"] = Group.call

--- Makes the next call for key run fn again instead of joining the flight
-- in progress, which still delivers to its own callers.  Returns whether a
-- flight was in progress.
function Group:forget(key)
    local found = self.native:forget(key)
    if found then forgotten(self, key) end
    return found
end

--- Like forget, but only when no follower has joined the flight.
function Group:forget_unshared(key)
    local found = self.native:forget_unshared(key)
    if found then forgotten(self, key) end
    return found
end

--- A table of the group's counters: calls, leaders, followers, panics,
-- goexits, timeouts, forgets, in_flight.
function Group:stats()
    local s = self.native:stats()
    local int = math.tointeger
    return {
        calls = int(s.calls), leaders = int(s.leaders), followers = int(s.followers),
        panics = int(s.panics), goexits = int(s.goexits), timeouts = int(s.timeouts),
        forgets = int(s.forgets), in_flight = int(s.in_flight),
    }
end

return M
