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
-- Giving up: a follower gives up when its timeout runs out, when its abort
-- function says so, or when its coroutine is closed while it waits; the
-- others are unaffected.  When every caller has given up while fn runs
-- (the leader's caller too, with flight:give_up()), the flight is abandoned:
-- fn, which receives the flight, can see it (flight:abandoned(),
-- flight:on_abandon(handler)) and stop, and the key's next caller starts
-- afresh.  A leader coroutine closed while fn runs (coroutine.close), or
-- dropped and collected, ends its flight: its followers raise "leader
-- exited" (SF_EGOEXIT) and the key is free.
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
    -- leading[co][key] is the Flight while coroutine co runs fn for key: a
    -- call for that key from inside fn would wait for itself, unless the
    -- flight was abandoned (then the key is free).  Weak keys: a coroutine
    -- abandoned mid-flight must not be kept alive by it.
    -- flights: the Flight of every fn running in this state (weak keys
    -- too), whose abandon handlers a caller here that gives up may run.
    return setmetatable({
        native = native,
        leading = setmetatable({}, { __mode = "k" }),
        flights = setmetatable({}, { __mode = "k" }),
    }, Group)
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

-- ---------------------------------------------------------------- the leader's flight

--- What fn receives: the leader's view of its flight, to stop the work when
-- nobody wants it any more.  Use it while fn runs, from any coroutine of
-- the state that runs fn.
local Flight = {}
Flight.__index = Flight
Flight.__name = "singleflight.Flight"

-- A Flight reaches its C call only weakly, through this table (weak keys
-- and values, one for the module): the call belongs to the leader's
-- coroutine (its guard and locals).  fn may keep its Flight past the call
-- (a server's abort handler); if the leader's coroutine is then dropped and
-- collected, its call must still be collected and release the followers
-- (SF_EGOEXIT) instead of being kept, unfinished, by the Flight.  One
-- shared table, not a weak table per Flight, which cost an uncontended
-- call about 4% more instructions.
local CALLS = setmetatable({}, { __mode = "kv" })

-- The leader's C call, or nil once it is gone: its call ended (unlead) or
-- was collected with a dropped leader coroutine.
local function native(flight)
    return CALLS[flight]
end

-- The Flight of a leader's call, recorded in keys (the leading coroutine's
-- table) under key.  It keeps no reference to that coroutine either: a
-- kept Flight must not keep it, or its call, alive.
local function new_flight(call, keys, key)
    local flight = setmetatable({ handlers = {}, keys = keys, key = key }, Flight)
    CALLS[flight] = call
    return flight
end

-- Runs the abandon handlers, once.  A handler's error reaches nobody (it
-- runs on whichever coroutine gave up last): it is reported through warn.
local function fire(flight)
    if flight.fired then return end
    flight.fired = true
    for _, handler in ipairs(flight.handlers) do
        local ok, err = pcall(handler, flight)
        if not ok then warn("singleflight: an on_abandon handler failed: ", tostring(err)) end
    end
end

--- True once every caller has given up while fn runs (the flight is
-- abandoned: nobody will get fn's result, and the key's next caller has
-- started afresh).  Cheap; poll it between steps of the work.  Runs the
-- abandon handlers first if they have not run yet (when the last caller
-- to leave was in another Lua state).
function Flight:abandoned()
    if self.fired then return true end
    local call = native(self)
    if call ~= nil and call:abandoned() then
        fire(self)
        return true
    end
    return false
end

--- Registers handler(flight) to run once when the flight is abandoned: at
-- once if it is, else on the coroutine of this state whose giving up
-- abandons it (a follower's timeout, abort or close, or give_up), or, when
-- the last caller to leave was in another Lua state, at fn's next
-- flight:abandoned().  Stop the work there: close a socket, post a
-- semaphore fn waits on.  Errors it raises are only warned about.
function Flight:on_abandon(handler)
    if not is_callable(handler) then
        error(("singleflight: on_abandon needs a function, got %s"):format(type(handler)), 2)
    end
    self.handlers[#self.handlers + 1] = handler
    if self.fired then
        local ok, err = pcall(handler, self)
        if not ok then warn("singleflight: an on_abandon handler failed: ", tostring(err)) end
    else
        self:abandoned()
    end
end

--- The leader's own caller gives up (a client that went away): fn keeps
-- running and must still return, for whoever else waits, but this caller
-- no longer wants the result: its call raises an SF_ECANCELED error once
-- fn returns.  Returns true when that abandoned the flight (nobody else was
-- waiting; the handlers have run), false otherwise.
function Flight:give_up()
    local call = native(self)
    if self.gave_up or self.finished or call == nil then return false end
    self.gave_up = true
    if call:cancel() == 1 then
        fire(self)
        return true
    end
    return false
end

-- Runs the handlers of any flight of this state that a give-up here has
-- just abandoned.  sf_call_cancel says whether it did, not which flight's
-- leader that was; each flight's own flag does.
local function abandoned_here(self)
    for flight in pairs(self.flights) do
        local call = native(flight)
        if not flight.fired and call ~= nil and call:abandoned() then fire(flight) end
    end
end

-- Runs fn as the leader and completes the flight.  fn runs in protected mode
-- so that an error, or a value that cannot cross states, still completes the
-- flight: the followers must always be woken.
local function lead(flight, fn, view)
    local ok, value = pcall(fn, view)
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

-- The timeout (seconds) and abort function of opts, or nil for none.
-- level as for error().
local function opts_of(opts, level)
    if opts == nil then return nil end
    if type(opts) ~= "table" then
        error(("singleflight: opts must be a table, got %s"):format(type(opts)), level + 1)
    end
    local timeout = opts.timeout
    if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
        error("singleflight: timeout must be a non-negative number of seconds", level + 1)
    end
    if opts.abort ~= nil and not is_callable(opts.abort) then
        error(("singleflight: abort must be a function, got %s"):format(type(opts.abort)), level + 1)
    end
    return timeout, opts.abort
end

-- Nanoseconds for a blocking wait: -1 (forever) for no timeout, and for one
-- too long to be told apart from forever.
local function timeout_ns(timeout)
    if timeout == nil or timeout >= 2 ^ 62 / 1e9 then return -1 end
    return math.floor(timeout * 1e9)
end

-- A follower giving up (why: core.ETIMEDOUT or core.ECANCELED): the C call
-- gives up its interest, and if it was the last one interested the flight
-- is abandoned and any abandon handlers of this state run here.  A timeout
-- found by polling first waits once more with a real (1 ns) timeout, so
-- the library counts it in stats().timeouts (polls do not count) and a
-- flight that completed just before still wins (its status is returned); a
-- library that refuses blocking waits on the leader's OS thread answers
-- SF_EDEADLK when the leader is another coroutine here: for a caller that
-- polls, that is still only a timeout.  waited: the caller's own blocking
-- wait timed out (and counted).  Once a wait has said "timed out", or abort
-- said to stop, the answer is why, even if the flight completes before the
-- cancel below: the caller has given up.
local function give_up(self, flight, why, waited)
    if why == core.ETIMEDOUT and not waited then
        local status = flight:wait_status(1)
        if status ~= core.ETIMEDOUT and status ~= core.EDEADLK then
            if status < 0 and status ~= core.EPANIC and status ~= core.EGOEXIT then
                error(("singleflight: waiting failed (status %d)"):format(status), 0)
            end
            return status
        end
    end
    if flight:cancel() == 1 then abandoned_here(self) end
    return why
end

local function aborted(abort)
    return abort ~= nil and abort()
end

-- The leader's bookkeeping ends: view's key is no longer led by its
-- coroutine with it (unless a call after a forget leads it now), and its
-- flight is no longer one whose handlers a give-up here may run.
-- Idempotent.  closing: the call is being unwound (coroutine.close), so
-- drop the coroutine's table if that was its last key, now rather than
-- when the coroutine is collected (a server may keep it a while); a call
-- that ends normally keeps it for the coroutine's next call.
local function unlead(self, view, closing)
    local keys = view.keys
    if keys[view.key] == view then keys[view.key] = nil end
    self.flights[view] = nil
    CALLS[view] = nil
    view.finished = true
    if closing and next(keys) == nil then
        for co, its in pairs(self.leading) do
            if its == keys then
                self.leading[co] = nil
                break
            end
        end
    end
end

-- Waits for the flight: a leader has finished already; a follower in a
-- yieldable coroutine polls and yields between polls, until timeout seconds
-- have passed or abort() returns true; any other follower blocks its
-- thread for up to timeout (which only holds up the other coroutines of
-- its own state, and it is not in one).  Returns the wait's status,
-- core.ETIMEDOUT and core.ECANCELED included.  guard: the call's
-- to-be-closed guard, which a leader tells what to undo if its coroutine
-- is closed while fn runs (then nothing after fn's yield runs here).
local function settle(self, key, flight, fn, timeout, abort, guard)
    if flight:is_leader() then
        local co = coroutine.running()
        local keys = self.leading[co]
        if not keys then
            keys = {}
            self.leading[co] = keys
        end
        local view = new_flight(flight, keys, key)
        guard.view = view
        keys[key] = view
        self.flights[view] = true
        local ok, err = pcall(lead, flight, fn, view)
        unlead(self, view)
        if not ok then error(err, 0) end
        if view.gave_up then return core.ECANCELED end
        return flight:wait(0)
    end
    if aborted(abort) then return give_up(self, flight, core.ECANCELED) end
    if coroutine.isyieldable() then
        local deadline = timeout and core.monotonic_seconds() + timeout
        while not flight:poll() do
            if deadline and core.monotonic_seconds() >= deadline then
                return give_up(self, flight, core.ETIMEDOUT)
            end
            coroutine.yield(M.WAITING)
            if aborted(abort) then return give_up(self, flight, core.ECANCELED) end
        end
        return flight:wait(0)
    end
    local status = flight:wait(timeout_ns(timeout))
    if status == core.ETIMEDOUT then return give_up(self, flight, core.ETIMEDOUT, true) end
    return status
end

-- Whether the flight a coroutine of this state leads (a Flight or nil) is
-- still the key's: not abandoned, and its call not collected with the
-- leader's coroutine (which the record, weak, does not keep either).
local function still_leads(view)
    if view == nil then return false end
    local call = native(view)
    return call ~= nil and not call:abandoned()
end

-- Whether a coroutine of this state is running fn for key in this group.
local function led_here(self, key)
    for _, keys in pairs(self.leading) do
        if still_leads(keys[key]) then return true end
    end
    return false
end

-- After a forget, key's next caller starts a new flight instead of joining
-- the one a coroutine here is running: that is no longer a deadlock.
local function forgotten(self, key)
    for _, keys in pairs(self.leading) do keys[key] = nil end
end

-- However a call ends, its handle is released, and not by the collector:
-- that drops our reference to the shared value and, for a leader that never
-- finished, releases its followers at once (they see SF_EGOEXIT).  A
-- follower whose call did not end normally (its coroutine was closed while
-- it waited, or an error) gives up first, so that abandon handlers of this
-- state run now.  A leader whose coroutine was closed inside fn no longer
-- leads its key here: else the key's next caller that cannot yield would
-- be refused (SF_EDEADLK) for a flight nobody runs.
local RELEASE_ON_CLOSE = {
    __close = function(guard)
        local flight = guard.flight
        if not guard.settled then
            if guard.view then
                unlead(guard.group, guard.view, true)
            elseif not flight:is_leader() and flight:cancel() == 1 then
                abandoned_here(guard.group)
            end
        end
        flight:release()
    end,
}

--- Runs fn(flight) once for all concurrent callers of key.
-- Returns the string fn returned (or nil) and whether it went to more than
-- one caller.  If fn raises an error, or returns something other than a
-- string or nil, every caller raises the error (as a string, level 0).
-- key must be a string.  Also available as g["do"].  fn receives the
-- leader's Flight (abandoned, on_abandon, give_up; fn may ignore it).
--
-- opts is an optional table:
--   timeout  seconds: a follower that has waited that long gives up and
--            raises an error containing "SF_ETIMEDOUT" (counted once in
--            stats().timeouts), while the flight goes on for everyone
--            else (0 gives up at once unless the flight is done)
--   abort    a function: a follower in a coroutine calls it before waiting
--            and after each yield, and gives up when it returns true,
--            raising an error containing "SF_ECANCELED" (a caller that
--            cannot yield calls it once, before blocking)
-- Giving up (also: closing the follower's coroutine while it waits) counts
-- in stats().cancels.  The leader ignores both options, since it is the one
-- running fn; it gives up with flight:give_up().
function Group:call(key, fn, opts)
    if not is_callable(fn) then
        error(("singleflight: fn must be callable, got %s"):format(type(fn)), 2)
    end
    local timeout, abort = opts_of(opts, 2)
    if type(key) == "string" then
        local mine = self.leading[coroutine.running()]
        if mine and still_leads(mine[key]) then
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
    -- view: set by a leader; named here so that the table is made big
    -- enough at once (growing it cost every call a rehash).
    local guard <close> = setmetatable({ flight = flight, group = self, view = false }, RELEASE_ON_CLOSE)
    local ok, status = pcall(settle, self, key, flight, fn, timeout, abort, guard)
    guard.settled = ok
    local value, shared, message
    if ok and status ~= core.ETIMEDOUT and status ~= core.ECANCELED then
        value, shared, message = flight:get_string(), flight:shared(), flight:panic_message()
    end
    flight:release()
    if not ok then error(status, 0) end
    if status == core.OK then return value, shared end
    if status == core.EPANIC then error(message or "singleflight: panic", 0) end
    if status == core.ETIMEDOUT then
        error(("singleflight: gave up waiting for key %q after %g s (SF_ETIMEDOUT)"):format(key, timeout), 0)
    end
    if status == core.ECANCELED then
        error(("singleflight: gave up on key %q (SF_ECANCELED)"):format(key), 0)
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
-- goexits, timeouts, forgets, in_flight, abandons (flights every caller
-- gave up on), cancels (callers who gave up).
function Group:stats()
    local s = self.native:stats()
    local int = math.tointeger
    return {
        calls = int(s.calls), leaders = int(s.leaders), followers = int(s.followers),
        panics = int(s.panics), goexits = int(s.goexits), timeouts = int(s.timeouts),
        forgets = int(s.forgets), in_flight = int(s.in_flight),
        abandons = int(s.abandons), cancels = int(s.cancels),
    }
end

return M
