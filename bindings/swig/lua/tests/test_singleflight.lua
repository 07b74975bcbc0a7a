-- Behaviour of the Lua binding, one behaviour per test.  Run with the built
-- modules on LUA_PATH / LUA_CPATH; exits non-zero when any test fails.
--
-- Coroutine tests drive a small round-robin scheduler with a step cap, so a
-- follower that blocked instead of yielding (or a flight that never ends)
-- fails the test instead of hanging it.
local sf = require "singleflight"
local core = require "singleflight_core"

local tests = {}
local function test(name, fn) tests[#tests + 1] = { name = name, fn = fn } end

local function eq(got, want, what)
    if got ~= want then
        error(("%s: expected %s, got %s"):format(what or "value", tostring(want), tostring(got)), 2)
    end
end

local function raises(pattern, fn, ...)
    local ok, err = pcall(fn, ...)
    if ok then error("expected an error matching " .. pattern, 2) end
    if not tostring(err):find(pattern) then
        error(("error %q does not match %q"):format(tostring(err), pattern), 2)
    end
    return err
end

-- Resumes every coroutine in turn until all are dead.  Returns how many
-- times a coroutine yielded sf.WAITING.  Errors inside coroutines fail.
local function run_all(cos, max_steps)
    local waits, steps = 0, 0
    repeat
        local alive = false
        for _, co in ipairs(cos) do
            if coroutine.status(co) == "suspended" then
                alive = true
                local ok, yielded = coroutine.resume(co)
                if not ok then error("coroutine failed: " .. tostring(yielded), 2) end
                if yielded == sf.WAITING then waits = waits + 1 end
            end
        end
        steps = steps + 1
        if steps > (max_steps or 10000) then error("coroutines never finished", 2) end
    until not alive
    return waits
end

test("a single caller gets the value, not shared", function()
    local g = sf.new()
    local v, shared = g:call("k", function() return "v" end)
    eq(v, "v")
    eq(shared, false, "shared")
end)

test("nil is a value and do is an alias of call", function()
    local g = sf.new()
    local v, shared = g["do"](g, "k", function() return nil end)
    eq(v, nil)
    eq(shared, false)
end)

test("coroutines calling one key share one execution and yield while waiting", function()
    local g = sf.new()
    local n, runs, got = 5, 0, {}
    local function fn()
        runs = runs + 1
        -- Hold the flight open (yielding to the scheduler) until every
        -- other coroutine has joined it.
        while g:stats().followers < n - 1 do coroutine.yield() end
        return "payload"
    end
    local cos = {}
    for i = 1, n do
        cos[i] = coroutine.create(function()
            local v, shared = g:call("k", fn)
            got[i] = { v, shared }
        end)
    end
    local waits = run_all(cos)
    eq(runs, 1, "executions")
    for i = 1, n do
        eq(got[i][1], "payload", "value of caller " .. i)
        eq(got[i][2], true, "shared of caller " .. i)
    end
    assert(waits >= n - 1, "followers yielded sf.WAITING (got " .. waits .. ")")
    local s = g:stats()
    eq(s.leaders, 1, "leaders")
    eq(s.followers, n - 1, "followers")
    eq(s.in_flight, 0, "in_flight")
    eq(s.timeouts, 0, "polling between yields is not a timeout")
end)

test("an error raised in fn is raised in every coroutine caller", function()
    local g = sf.new()
    local n, errs = 4, {}
    local function fn()
        while g:stats().followers < n - 1 do coroutine.yield() end
        error("db down")
    end
    local cos = {}
    for i = 1, n do
        cos[i] = coroutine.create(function()
            local ok, err = pcall(g.call, g, "k", fn)
            errs[i] = ok and "no error" or err
        end)
    end
    run_all(cos)
    for i = 1, n do
        assert(tostring(errs[i]):find("db down", 1, true), "caller " .. i .. " got " .. tostring(errs[i]))
        eq(errs[i], errs[1], "same message everywhere")
    end
    eq(g:stats().panics, 1, "panics")
end)

test("an error in a plain call is re-raised and the key runs again afterwards", function()
    local g = sf.new()
    raises("boom", g.call, g, "k", function() error("boom") end)
    raises("error object", g.call, g, "k", function() error(setmetatable({}, { __tostring = function() return "error object" end })) end)
    eq((g:call("k", function() return "fine" end)), "fine")
end)

test("fn must return a string or nil, and the error reaches every caller", function()
    local g = sf.new()
    raises("must return a string or nil, got table", g.call, g, "k", function() return {} end)
    raises("must return a string or nil, got number", g.call, g, "k", function() return 42 end)
end)

test("keys must be strings; fn must be callable", function()
    local g = sf.new()
    for _, bad in ipairs({ 1, true, {}, print }) do
        raises("key must be a string, got " .. type(bad), g.call, g, bad, function() return "x" end)
        raises("key must be a string", g.forget, g, bad)
        raises("key must be a string", g.forget_unshared, g, bad)
    end
    raises("key must be a string, got nil", g.call, g, nil, function() return "x" end)
    raises("fn must be callable", g.call, g, "k", "not a function")
    eq(g:stats().calls, 0, "rejected calls are not counted")
    local callable = setmetatable({}, { __call = function() return "called" end })
    eq((g:call("k", callable)), "called")
end)

test("empty keys and keys with NUL bytes are distinct keys", function()
    local g = sf.new()
    eq((g:call("", function() return "empty" end)), "empty")
    eq((g:call("a\0b", function() return "nul" end)), "nul")
    eq((g:call("a\0c", function() return "other" end)), "other")
    eq(g:stats().leaders, 3, "three flights")
end)

test("forget makes the next call run again while the old flight still delivers", function()
    local g = sf.new()
    local first
    local leader = coroutine.create(function()
        first = g:call("k", function() coroutine.yield(); return "first" end)
    end)
    assert(coroutine.resume(leader)) -- now suspended inside fn
    eq(g:forget("k"), true, "forget during the flight")
    eq((g:call("k", function() return "second" end)), "second")
    assert(coroutine.resume(leader))
    eq(coroutine.status(leader), "dead")
    eq(first, "first")
    eq(g:forget("k"), false, "nothing left to forget")
    eq(g:stats().forgets, 1, "forgets")
end)

test("forget_unshared forgets only a flight nobody joined", function()
    local g = sf.new()
    local function slow() coroutine.yield(); return "v" end
    local leader = coroutine.create(function() g:call("k", slow) end)
    local follower = coroutine.create(function() g:call("k", slow) end)
    assert(coroutine.resume(leader))
    local ok, yielded = coroutine.resume(follower)
    assert(ok and yielded == sf.WAITING, "the follower yields while waiting")
    eq(g:forget_unshared("k"), false, "shared flight")
    run_all({ leader, follower })

    local lone = coroutine.create(function() g:call("k2", slow) end)
    assert(coroutine.resume(lone))
    eq(g:forget_unshared("k2"), true, "unshared flight")
    run_all({ lone })
end)

test("calling the own key inside fn raises instead of waiting forever", function()
    local g = sf.new()
    raises("SF_EDEADLK", g.call, g, "k", function() return (g:call("k", function() return "x" end)) end)
    local co = coroutine.create(function()
        return g:call("k", function() return (g:call("k", function() return "x" end)) end)
    end)
    local ok, err = coroutine.resume(co)
    assert(not ok and err:find("SF_EDEADLK"), "inside a coroutine too: " .. tostring(err))
    -- Another key inside fn is fine.
    eq((g:call("k", function() return (g:call("other", function() return "7" end)) end)), "7")
end)

-- A leader coroutine that holds its flight open until released, and a
-- follower coroutine that calls with opts; returns the follower's error
-- once both are done.
local function follower_with_timeout(g, opts, max_steps)
    local release, leader_value, follower_err = false, nil, nil
    local leader = coroutine.create(function()
        leader_value = g:call("k", function()
            while not release do coroutine.yield() end
            return "late"
        end)
    end)
    local follower = coroutine.create(function()
        local ok, err = pcall(g.call, g, "k", function() return "never runs" end, opts)
        follower_err = ok and "no error" or err
        release = true
    end)
    assert(coroutine.resume(leader)) -- leads, suspended inside fn
    run_all({ follower, leader }, max_steps)
    eq(leader_value, "late", "the leader's value: the flight went on")
    return follower_err
end

test("a follower coroutine with timeout 0 gives up at once and the flight goes on", function()
    local g = sf.new()
    local err = follower_with_timeout(g, { timeout = 0 })
    assert(tostring(err):find("SF_ETIMEDOUT", 1, true), "follower got " .. tostring(err))
    local s = g:stats()
    eq(s.leaders, 1, "leaders")
    eq(s.followers, 1, "followers")
    eq(s.timeouts, 1, "the give-up counts as one timeout")
    eq(s.in_flight, 0, "in_flight")
end)

test("a follower coroutine yields until its timeout passes, then gives up", function()
    local g = sf.new()
    local start = core.monotonic_seconds()
    -- Bounded by steps, not time: the loop ends once 20 ms have passed.
    local err = follower_with_timeout(g, { timeout = 0.02 }, 1e8)
    local waited = core.monotonic_seconds() - start
    assert(tostring(err):find("SF_ETIMEDOUT", 1, true), "follower got " .. tostring(err))
    assert(waited >= 0.02, ("gave up after %.4f s, before its timeout"):format(waited))
    eq(g:stats().timeouts, 1, "timeouts")
end)

test("a timeout that does not run out changes nothing", function()
    local g = sf.new()
    local got = {}
    local cos = {}
    cos[1] = coroutine.create(function()
        got[1] = { g:call("k", function()
            while g:stats().followers < 1 do coroutine.yield() end
            return "v"
        end, { timeout = 0 }) } -- the leader ignores it: it runs fn
    end)
    cos[2] = coroutine.create(function()
        got[2] = { g:call("k", function() return "never runs" end, { timeout = 3600 }) }
    end)
    run_all(cos)
    eq(got[1][1], "v", "leader value"); eq(got[1][2], true, "leader shared")
    eq(got[2][1], "v", "follower value"); eq(got[2][2], true, "follower shared")
    eq(g:stats().timeouts, 0, "timeouts")
    eq((g:call("plain", function() return "x" end, { timeout = 1 })), "x", "a lone caller")
end)

test("a follower that gives up leaves the others their value", function()
    local g = sf.new()
    local got, quit = {}, nil
    local cos = {}
    cos[1] = coroutine.create(function()
        got[1] = g:call("k", function()
            while g:stats().cancels < 1 do coroutine.yield() end
            return "v"
        end)
    end)
    cos[2] = coroutine.create(function()
        local ok, err = pcall(g.call, g, "k", function() return "never runs" end,
            { abort = function() return g:stats().followers == 2 end })
        quit = ok and "no error" or err
    end)
    cos[3] = coroutine.create(function() got[3] = g:call("k", function() return "never runs" end) end)
    run_all(cos)
    assert(tostring(quit):find("SF_ECANCELED", 1, true), "the quitter got " .. tostring(quit))
    eq(got[1], "v", "leader")
    eq(got[3], "v", "the follower who stayed")
    local s = g:stats()
    eq(s.cancels, 1, "cancels")
    eq(s.abandons, 0, "abandons")
end)

test("abort is asked before waiting: a follower can give up without yielding", function()
    local g = sf.new()
    local leader = coroutine.create(function() return g:call("k", function() coroutine.yield(); return "v" end) end)
    assert(coroutine.resume(leader))
    local follower = coroutine.create(function()
        return pcall(g.call, g, "k", function() return "x" end, { abort = function() return true end })
    end)
    local ok, called, err = coroutine.resume(follower)
    assert(ok and not called and tostring(err):find("SF_ECANCELED", 1, true), tostring(err))
    eq(coroutine.status(follower), "dead", "it never yielded")
    local lok, v = coroutine.resume(leader)
    assert(lok and v == "v", "the flight went on")
end)

test("a follower coroutine that times out has given up (a cancel) too", function()
    local g = sf.new()
    local err = follower_with_timeout(g, { timeout = 0 })
    assert(tostring(err):find("SF_ETIMEDOUT", 1, true), tostring(err))
    eq(g:stats().cancels, 1, "cancels")
    eq(g:stats().abandons, 0, "the leader still wanted it")
end)

-- A leader coroutine whose fn registers an abandon handler, gives up its
-- own caller's interest, then yields until it sees the flight abandoned.
-- Returns the leader coroutine (suspended in fn) and a table the handler
-- and fn fill in.
local function giving_up_leader(g, key)
    local seen = {}
    local leader = coroutine.create(function()
        local ok, err = pcall(g.call, g, key, function(flight)
            flight:on_abandon(function(f)
                seen.handler_on = coroutine.running()
                seen.handler_flight = f
            end)
            seen.flight = flight
            seen.gave_up_abandoned = flight:give_up()
            while not flight:abandoned() do coroutine.yield() end
            seen.fn_saw_it = true
            return "nobody gets this"
        end)
        seen.leader_err = ok and "no error" or err
    end)
    assert(coroutine.resume(leader))
    return leader, seen
end

test("a leader's caller giving up alone abandons the flight: fn sees it, the handler runs", function()
    local g = sf.new()
    local leader, seen = giving_up_leader(g, "k")
    -- The leader's caller gave up with nobody else there: abandoned at once.
    eq(seen.gave_up_abandoned, true, "the leader's give_up abandoned the flight")
    eq(g:stats().abandons, 1, "abandons")
    eq(seen.handler_on, leader, "the handler ran inside give_up, on the leader's coroutine")
    eq(seen.handler_flight, seen.flight, "the handler gets the flight")
    eq(coroutine.status(leader), "dead", "fn saw it at once and returned")
    eq(seen.fn_saw_it, true, "fn saw flight:abandoned()")
    assert(tostring(seen.leader_err):find("SF_ECANCELED", 1, true), tostring(seen.leader_err))
    eq(g:stats().in_flight, 0, "fn returned and finished the flight")
end)

test("a follower's give-up that abandons the flight runs the leader's handler on its coroutine", function()
    local g = sf.new()
    -- The follower joins first, so the leader's give_up does not abandon.
    local hold = true
    local seen = {}
    local leader = coroutine.create(function()
        seen.leader = { pcall(g.call, g, "k", function(flight)
            flight:on_abandon(function() seen.handler_on = coroutine.running() end)
            while hold do coroutine.yield() end
            seen.gave_up_abandoned = flight:give_up()
            while not flight:abandoned() do coroutine.yield() end
            return "nobody gets this"
        end) }
    end)
    assert(coroutine.resume(leader))
    local quit = false
    local follower = coroutine.create(function()
        seen.follower = { pcall(g.call, g, "k", function() return "never runs" end,
            { abort = function() return quit end }) }
    end)
    assert(coroutine.resume(follower)) -- waiting
    hold = false
    assert(coroutine.resume(leader)) -- gives up; the follower still waits
    eq(seen.gave_up_abandoned, false, "not abandoned while the follower waits")
    eq(g:stats().abandons, 0)
    quit = true
    assert(coroutine.resume(follower)) -- gives up last
    eq(seen.handler_on, follower, "the handler ran on the follower's coroutine")
    eq(g:stats().abandons, 1, "abandons")
    eq(g:stats().cancels, 2, "cancels")
    assert(tostring(seen.follower[2]):find("SF_ECANCELED", 1, true), tostring(seen.follower[2]))
    -- A new caller does not join the abandoned flight.
    eq((g:call("k", function() return "fresh" end)), "fresh")
    eq(g:stats().leaders, 2, "a new flight")
    assert(coroutine.resume(leader))
    eq(coroutine.status(leader), "dead")
    assert(tostring(seen.leader[2]):find("SF_ECANCELED", 1, true), tostring(seen.leader[2]))
end)

test("closing a waiting follower's coroutine gives it up, and may abandon the flight", function()
    local g = sf.new()
    local hold = true
    local handled = 0
    local leader = coroutine.create(function()
        return pcall(g.call, g, "k", function(flight)
            flight:on_abandon(function() handled = handled + 1 end)
            while hold do coroutine.yield() end
            flight:give_up()
            while not flight:abandoned() do coroutine.yield() end
        end)
    end)
    assert(coroutine.resume(leader))
    local follower = coroutine.create(function() return g:call("k", function() return "x" end) end)
    assert(coroutine.resume(follower))
    hold = false
    assert(coroutine.resume(leader))
    eq(handled, 0)
    assert(coroutine.close(follower))
    eq(handled, 1, "the handler ran inside coroutine.close")
    eq(g:stats().abandons, 1)
    assert(coroutine.resume(leader))
end)

test("a handler registered after the abandonment runs at once; handler errors are warned about", function()
    local g = sf.new()
    local warned = {}
    local real_warn = warn
    warn = function(...) warned[#warned + 1] = table.concat({ ... }) end -- luacheck: ignore
    local ok, err = pcall(function()
        local v, e = pcall(g.call, g, "k", function(flight)
            flight:on_abandon(function() error("handler broke") end)
            eq(flight:give_up(), true, "alone: abandoned at once")
            local late = false
            flight:on_abandon(function() late = true end)
            eq(late, true, "ran at registration")
            eq(flight:give_up(), false, "a second give_up changes nothing")
            return "x"
        end)
        assert(not v and tostring(e):find("SF_ECANCELED", 1, true), tostring(e))
    end)
    warn = real_warn -- luacheck: ignore
    assert(ok, err)
    eq(#warned, 1, "warnings")
    assert(warned[1]:find("handler broke", 1, true), warned[1])
end)

test("on_abandon and abort want functions", function()
    local g = sf.new()
    raises("abort must be a function", g.call, g, "k", function() return "x" end, { abort = 5 })
    raises("on_abandon needs a function", g.call, g, "k", function(flight) flight:on_abandon(42) end)
end)

test("opts must be a table and timeout a non-negative number", function()
    local g = sf.new()
    local fn = function() return "x" end
    raises("opts must be a table", g.call, g, "k", fn, 5)
    raises("timeout must be a non%-negative number", g.call, g, "k", fn, { timeout = -1 })
    raises("timeout must be a non%-negative number", g.call, g, "k", fn, { timeout = "1" })
    raises("timeout must be a non%-negative number", g.call, g, "k", fn, { timeout = 0 / 0 })
    eq(g:stats().calls, 0, "rejected calls are not counted")
end)

test("a caller that cannot yield, on a key a suspended coroutine leads, raises SF_EDEADLK", function()
    -- The test runs in the main coroutine: as a follower it would block the
    -- thread, and the leader could never be resumed to finish.
    assert(not coroutine.isyieldable())
    local g = sf.new()
    local leader = coroutine.create(function()
        return g:call("k", function() coroutine.yield(); return "done" end)
    end)
    assert(coroutine.resume(leader))
    for _, opts in ipairs({ {}, { timeout = 30 } }) do
        raises("SF_EDEADLK", g.call, g, "k", function() return "never runs" end, opts)
    end
    eq(g:stats().calls, 1, "the refused calls reached the library")
    eq(g:stats().timeouts, 0, "timeouts")
    local ok, v = coroutine.resume(leader)
    assert(ok, v)
    eq(v, "done", "the leader finishes as usual")
    eq((g:call("k", function() return "again" end)), "again", "the key is free again")
end)

test("after forget, the key's next caller leads a new flight: no SF_EDEADLK", function()
    local g = sf.new()
    -- From inside fn: the forgotten flight is no longer the key's.
    eq((g:call("k", function()
        assert(g:forget("k"))
        return (g:call("k", function() return "inner" end))
    end)), "inner")
    -- From a caller that cannot yield, while a coroutine leads the old flight.
    local leader = coroutine.create(function()
        return g:call("k", function() coroutine.yield(); return "old" end)
    end)
    assert(coroutine.resume(leader))
    assert(g:forget("k"))
    eq((g:call("k", function() return "new" end)), "new")
    local ok, v = coroutine.resume(leader)
    assert(ok, v)
    eq(v, "old", "the forgotten flight still delivers to its leader")
end)

test("closing a suspended leader coroutine releases its followers at once", function()
    local g = sf.new()
    local leader = coroutine.create(function() g:call("k", function() coroutine.yield(); return "never" end) end)
    assert(coroutine.resume(leader))
    local follower_err
    local follower = coroutine.create(function()
        local ok, err = pcall(g.call, g, "k", function() return "x" end)
        follower_err = ok and "no error" or err
    end)
    local ok, yielded = coroutine.resume(follower)
    assert(ok and yielded == sf.WAITING)
    assert(coroutine.close(leader))
    -- No collection: the to-be-closed guard released the leader's flight.
    assert(coroutine.resume(follower))
    eq(coroutine.status(follower), "dead", "the follower finished on its next resume")
    assert(tostring(follower_err):find("leader exited"), tostring(follower_err))
    eq(g:stats().goexits, 1, "goexits")
    eq(g:stats().in_flight, 0, "in_flight")
end)

test("a leader coroutine that is abandoned and collected releases its followers", function()
    local g = sf.new()
    local leader = coroutine.create(function() g:call("k", function() coroutine.yield(); return "never" end) end)
    assert(coroutine.resume(leader))
    local follower_err
    local follower = coroutine.create(function()
        local ok, err = pcall(g.call, g, "k", function() return "x" end)
        follower_err = ok and "no error" or err
    end)
    local ok, yielded = coroutine.resume(follower)
    assert(ok and yielded == sf.WAITING)
    leader = nil -- luacheck: ignore
    collectgarbage()
    collectgarbage()
    run_all({ follower })
    assert(tostring(follower_err):find("leader exited"), tostring(follower_err))
    eq(g:stats().goexits, 1, "goexits")
end)

-- A leader coroutine that is closed (what a server does to an
-- aborted request) or dropped must not leave its key marked as led by a
-- coroutine of this state: the key's next caller that cannot yield would
-- get SF_EDEADLK for a flight that no longer exists.
local function suspended_leader(g, key, on_flight)
    local co = coroutine.create(function()
        return g:call(key, function(flight)
            if on_flight then on_flight(flight) end
            coroutine.yield()
            return "never"
        end)
    end)
    assert(coroutine.resume(co))
    eq(coroutine.status(co), "suspended", "the leader waits inside fn")
    return co
end

local function waiting_follower(g, key)
    local got = {}
    local co = coroutine.create(function()
        got.ok, got.err = pcall(g.call, g, key, function() return "follower led" end)
    end)
    local ok, yielded = coroutine.resume(co)
    assert(ok and yielded == sf.WAITING, "the follower joined the flight and waits")
    return co, got
end

-- The key's next caller, from the main coroutine (it cannot yield, so it
-- blocks and is the one SF_EDEADLK refuses), leads a fresh flight.
local function main_leads_fresh(g, key, what)
    assert(not coroutine.isyieldable())
    local leaders = g:stats().leaders
    local ok, v, shared = pcall(g.call, g, key, function() return "fresh" end)
    assert(ok, what .. ": " .. tostring(v))
    eq(v, "fresh", what .. ": value")
    eq(shared, false, what .. ": shared")
    eq(g:stats().leaders, leaders + 1, what .. ": a new flight")
    eq(g:stats().in_flight, 0, what .. ": in_flight")
end

test("a closed leader coroutine frees its key for a caller that cannot yield", function()
    local g = sf.new()
    local values = core.live_values()
    local leader = suspended_leader(g, "K")
    assert(coroutine.close(leader))
    eq(coroutine.status(leader), "dead")
    -- The leader is still referenced (a server's request table): nothing of
    -- its flight may stay behind in the group's bookkeeping.
    eq(g.leading[leader], nil, "the group's record of what the closed coroutine leads")
    eq(next(g.flights), nil, "the group's record of the flights running fn")
    main_leads_fresh(g, "K", "right after the close")
    main_leads_fresh(g, "K", "a second time")
    collectgarbage("collect")
    main_leads_fresh(g, "K", "after a full collection")
    eq(g:stats().goexits, 1, "the closed leader's flight ended as a goexit")
    eq(core.live_values(), values, "values still held by the library")
end)

test("a closed leader coroutine with a waiting follower: the follower sees it exit, the key is free", function()
    local g = sf.new()
    local leader = suspended_leader(g, "K")
    local follower, got = waiting_follower(g, "K")
    assert(coroutine.close(leader))
    -- Before the follower runs again: the key is no longer the closed
    -- leader's, whatever its follower still has to read.
    main_leads_fresh(g, "K", "with the follower still suspended")
    assert(coroutine.resume(follower))
    eq(coroutine.status(follower), "dead", "the follower finished on its next resume")
    eq(got.ok, false, "the follower's call failed")
    assert(tostring(got.err):find("leader exited", 1, true), tostring(got.err))
    eq(g:stats().goexits, 1, "goexits")
    collectgarbage("collect")
    main_leads_fresh(g, "K", "after a full collection")
end)

test("a closed leader coroutine frees its key after a follower left, and after collection", function()
    local g = sf.new()
    local leader = suspended_leader(g, "K")
    local follower, got = waiting_follower(g, "K")
    assert(coroutine.close(leader))
    assert(coroutine.resume(follower))
    assert(tostring(got.err):find("leader exited", 1, true), tostring(got.err))
    collectgarbage("collect")
    collectgarbage("collect")
    main_leads_fresh(g, "K", "after the follower left and a full collection")
    -- A coroutine caller leads afresh too, and the closed leader's Flight,
    -- kept by its fn, says nothing is wrong and refuses to give up.
    local kept
    leader = suspended_leader(g, "K", function(flight) kept = flight end)
    assert(coroutine.close(leader))
    eq(kept:abandoned(), false, "a closed leader's flight was not abandoned")
    eq(kept:give_up(), false, "a closed leader's flight cannot be given up")
    local co = coroutine.create(function() return g:call("K", function() return "again" end) end)
    local ok, v = coroutine.resume(co)
    assert(ok, v)
    eq(v, "again")
end)

test("closing a leader coroutine that leads two keys, one inside the other's fn, frees both", function()
    local g = sf.new()
    local leader = coroutine.create(function()
        return g:call("outer", function()
            return g:call("inner", function() coroutine.yield(); return "never" end)
        end)
    end)
    assert(coroutine.resume(leader))
    local fo, fo_got = waiting_follower(g, "outer")
    local fi, fi_got = waiting_follower(g, "inner")
    assert(coroutine.close(leader))
    main_leads_fresh(g, "inner", "inner")
    main_leads_fresh(g, "outer", "outer")
    run_all({ fo, fi })
    assert(tostring(fo_got.err):find("leader exited", 1, true), tostring(fo_got.err))
    assert(tostring(fi_got.err):find("leader exited", 1, true), tostring(fi_got.err))
    eq(g:stats().goexits, 2, "goexits")
end)

test("a dropped leader coroutine, once collected, frees its key and releases its followers", function()
    local g = sf.new()
    local values = core.live_values()
    local leader = suspended_leader(g, "K")
    local follower, got = waiting_follower(g, "K")
    -- Still suspended, it could be resumed: the key is its until collected.
    raises("SF_EDEADLK", g.call, g, "K", function() return "refused" end)
    leader = nil -- luacheck: ignore
    collectgarbage("collect")
    collectgarbage("collect")
    main_leads_fresh(g, "K", "after the leader was collected")
    run_all({ follower })
    assert(tostring(got.err):find("leader exited", 1, true), tostring(got.err))
    eq(g:stats().goexits, 1, "goexits")
    eq(core.live_values(), values, "values still held by the library")
end)

test("a dropped leader coroutine whose Flight is kept elsewhere is still collected and released", function()
    -- A server may keep fn's Flight past the request (to give_up from an
    -- abort handler): that must not keep the dropped leader's C call, so
    -- its followers would wait, and a caller that cannot yield would block,
    -- forever.
    local g = sf.new()
    local kept = {}
    local leader = suspended_leader(g, "K", function(flight) kept.flight = flight end)
    local follower, got = waiting_follower(g, "K")
    leader = nil -- luacheck: ignore
    collectgarbage("collect")
    collectgarbage("collect")
    run_all({ follower }, 100)
    assert(tostring(got.err):find("leader exited", 1, true), tostring(got.err))
    eq(g:stats().goexits, 1, "goexits")
    eq(g:stats().in_flight, 0, "in_flight")
    main_leads_fresh(g, "K", "after the leader was collected")
    eq(kept.flight:abandoned(), false, "the kept flight was not abandoned")
    eq(kept.flight:give_up(), false, "the kept flight cannot be given up")
end)

test("no values or memory leak over thousands of calls", function()
    local g = sf.new()
    local big = string.rep("x", 1000)
    for _ = 1, 100 do g:call("k", function() return big end) end
    collectgarbage()
    collectgarbage()
    local before = collectgarbage("count")
    for i = 1, 20000 do
        local v = g:call("k" .. (i % 7), function() return big end)
        assert(v == big)
        pcall(g.call, g, "e", function() error("x") end)
    end
    collectgarbage()
    collectgarbage()
    local grew = collectgarbage("count") - before
    assert(grew < 256, ("Lua heap grew by %.0f KiB"):format(grew))
    eq(core.live_values(), 0, "values still held by the library")
    eq(g:stats().in_flight, 0, "in_flight")
    eq(g:stats().calls, 40100, "calls")
end)

test("named groups are shared and distinct names are distinct groups", function()
    local a1, a2, b = sf.shared("lua-test-a"), sf.shared("lua-test-a"), sf.shared("lua-test-b")
    a1:call("k", function() return "x" end)
    eq(a2:stats().calls, a1:stats().calls, "same group")
    eq(b:stats().calls, 0, "other group")
    raises("name must be a string", sf.shared, 42)
end)

local failed = 0
for _, t in ipairs(tests) do
    local ok, err = xpcall(t.fn, debug.traceback)
    if ok then
        print("ok    " .. t.name)
    else
        failed = failed + 1
        print("FAIL  " .. t.name .. "\n" .. tostring(err))
    end
end
print(("%d passed, %d failed"):format(#tests - failed, failed))
os.exit(failed == 0 and 0 or 1, true) -- close the state: collectors run, leak checkers see a clean exit
