-- Tests for the LuaJIT binding's groups of one process.  Run with: luajit
-- singleflight_test.lua (package.path must reach ../singleflight.lua and
-- harness.lua; test.sh sets it).
--
-- Concurrency here is coroutines in one Lua state, driven by the harness's
-- round-robin scheduler.

local singleflight = require("singleflight")

local T = require("harness")
local test, check, eq = T.test, T.check, T.eq
local schedule, await_followers, hold_until = T.schedule, T.await_followers, T.hold_until
local expect_error_code = T.expect_error_code

-- ------------------------------------------------------------------ tests

test("lone caller gets the value, not shared", function()
    local g = singleflight.new()
    local v, shared = g:run("k", function() return "v" end)
    eq(v, "v")
    eq(shared, false, "shared")
    local s = g:stats()
    eq(s.leaders, 1, "leaders")
    eq(s.followers, 0, "followers")
    eq(s.in_flight, 0, "in_flight")
end)

test("sequential callers each run fn", function()
    local g = singleflight.new()
    local executions = 0
    for i = 1, 3 do
        local v = g:run("k", function()
            executions = executions + 1
            return tostring(executions)
        end)
        eq(v, tostring(i))
    end
    eq(executions, 3, "executions")
end)

test("concurrent coroutines share one execution", function()
    local g = singleflight.new()
    local n, executions = 6, 0
    local values, shared = {}, {}
    local tasks = {}
    for i = 1, n do
        tasks[i] = function()
            values[i], shared[i] = g:run("hot", function()
                executions = executions + 1
                await_followers(g, n - 1)
                return "payload"
            end)
        end
    end
    schedule(tasks)
    eq(executions, 1, "executions")
    for i = 1, n do
        eq(values[i], "payload", "value of caller " .. i)
        eq(shared[i], true, "shared of caller " .. i)
    end
    local s = g:stats()
    eq(s.calls, n, "calls")
    eq(s.leaders, 1, "leaders")
    eq(s.followers, n - 1, "followers")
    eq(s.in_flight, 0, "in_flight")
end)

test("an error in fn is raised in every caller", function()
    local g = singleflight.new()
    local n, executions = 4, 0
    local messages = {}
    local tasks = {}
    for i = 1, n do
        tasks[i] = function()
            local ok, err = pcall(g.run, g, "k", function()
                executions = executions + 1
                await_followers(g, n - 1)
                error("boom")
            end)
            check(not ok, "caller " .. i .. " did not fail")
            messages[i] = err
        end
    end
    schedule(tasks)
    eq(executions, 1, "executions")
    for i = 1, n do
        check(type(messages[i]) == "string" and messages[i]:find("boom", 1, true),
            "caller " .. i .. " got " .. tostring(messages[i]))
        eq(messages[i], messages[1], "message of caller " .. i)
    end
    eq(g:stats().panics, 1, "panics")
    eq(g:stats().in_flight, 0, "in_flight")
end)

test("the leader re-raises the original error value, followers its text", function()
    local g = singleflight.new()
    local original = setmetatable({}, { __tostring = function() return "custom failure" end })
    local leader_err, follower_err
    schedule({
        function()
            local _, err = pcall(g.run, g, "k", function()
                await_followers(g, 1)
                error(original)
            end)
            leader_err = err
        end,
        function()
            local _, err = pcall(g.run, g, "k", function() return "unused" end)
            follower_err = err
        end,
    })
    check(rawequal(leader_err, original), "leader got " .. tostring(leader_err))
    eq(follower_err, "custom failure", "follower error")
end)

test("an error does not poison the key", function()
    local g = singleflight.new()
    check(not pcall(g.run, g, "k", function() error("once") end))
    eq(g:run("k", function() return "fine" end), "fine")
end)

test("values cross as exact bytes, nil and empty included", function()
    local g = singleflight.new()
    local big = string.rep("\0\1\255x", 256 * 1024)
    for _, want in ipairs({ "", "a\0b", big }) do
        local got = {}
        schedule({
            function()
                got[1] = g:run("k", function()
                    await_followers(g, g:stats().followers + 1)
                    return want
                end)
            end,
            function() got[2] = g:run("k", function() return "unused" end) end,
        })
        eq(got[1], want, "leader value (" .. #want .. " bytes)")
        eq(got[2], want, "follower value (" .. #want .. " bytes)")
    end
    local v, shared = g:run("nil", function() return nil end)
    eq(v, nil)
    eq(shared, false, "shared")
end)

test("a non-string value fails the flight for every caller", function()
    local g = singleflight.new()
    local errs = {}
    schedule({
        function()
            local _, e = pcall(g.run, g, "k", function()
                await_followers(g, 1)
                return { 1, 2 }
            end)
            errs[1] = e
        end,
        function()
            local _, e = pcall(g.run, g, "k", function() return "unused" end)
            errs[2] = e
        end,
    })
    for i = 1, 2 do
        check(type(errs[i]) == "string" and errs[i]:find("string or nil", 1, true),
            "caller " .. i .. " got " .. tostring(errs[i]))
    end
end)

test("forget starts a new flight while the old one delivers to its callers", function()
    local g = singleflight.new()
    local release, results, executions = false, {}, 0
    schedule({
        function()
            results.first = g:run("k", function()
                executions = executions + 1
                hold_until(function() return release end)
                return "first"
            end)
        end,
        function()
            -- Runs after the first task has begun its flight (round-robin).
            check(g:forget("k"), "forget found no flight")
            results.second = g:run("k", function()
                executions = executions + 1
                return "second"
            end)
            release = true
        end,
    })
    eq(results.first, "first", "old flight's value")
    eq(results.second, "second", "new flight's value")
    eq(executions, 2, "executions")
    eq(g:stats().forgets, 1, "forgets")
    eq(g:forget("k"), false, "forget with nothing in flight")
end)

test("forget_unshared refuses a joined flight and forgets a lone one", function()
    local g = singleflight.new()
    local release = false
    local verdicts = {}
    schedule({
        function()
            g:run("shared", function()
                await_followers(g, 1)
                hold_until(function() return release end)
                return "x"
            end)
        end,
        function() g:run("shared", function() return "unused" end) end,
        function()
            g:run("lone", function()
                hold_until(function() return release end)
                return "y"
            end)
        end,
        function()
            while g:stats().followers < 1 do coroutine.yield() end
            verdicts.shared = g:forget_unshared("shared")
            verdicts.lone = g:forget_unshared("lone")
            release = true
        end,
    })
    eq(verdicts.shared, false, "forget_unshared of a joined flight")
    eq(verdicts.lone, true, "forget_unshared of a lone flight")
end)

test("keys must be strings; any bytes are distinct keys", function()
    local g = singleflight.new()
    for _, bad in ipairs({ 1, true, {}, function() end }) do
        local ok, err = pcall(g.run, g, bad, function() return "x" end)
        check(not ok and tostring(err):find("string expected", 1, true),
            "bad key " .. type(bad) .. " accepted: " .. tostring(err))
    end
    check(not pcall(g.run, g, nil, function() return "x" end), "nil key accepted")
    check(not pcall(g.forget, g, 5), "forget accepted a number")
    check(not pcall(g.run, g, "k", "not a function"), "non-function fn accepted")
    check(not pcall(g.run, g, "k", function() end, { timeout = -1 }), "negative timeout accepted")
    eq(g:stats().calls, 0, "rejected calls must not count")

    local release, got, executions = false, {}, 0
    local function slow(v)
        return function()
            executions = executions + 1
            hold_until(function() return release end)
            return v
        end
    end
    schedule({
        function() got[1] = g:run("a\0b", slow("nul")) end,
        function() got[2] = g:run("a", slow("plain")) end,
        function() got[3] = g:run("", slow("empty")) end,
        function() got[4] = g:run("a\0b", slow("unused")) end,
        function()
            while g:stats().calls < 4 do coroutine.yield() end
            release = true
        end,
    })
    eq(executions, 3, "executions")
    eq(got[1], "nul"); eq(got[2], "plain"); eq(got[3], "empty"); eq(got[4], "nul")
end)

test("run on its own key inside fn is a deadlock error", function()
    local g = singleflight.new()
    local inner_ran = false
    local err = expect_error_code(singleflight.EDEADLK, g.run, g, "k", function()
        return g:run("k", function()
            inner_ran = true
            return "x"
        end)
    end)
    eq(err.name, "SF_EDEADLK", "name")
    eq(inner_ran, false, "inner fn ran")
    eq(g:run("other", function() return g:run("inner", function() return "ok" end) end), "ok")
    eq(g:stats().in_flight, 0, "in_flight")
end)

test("an abandoned leader coroutine releases its followers with EGOEXIT", function()
    local g = singleflight.new()
    local base = singleflight.live_calls()
    local leader = coroutine.create(function()
        g:run("k", function()
            while true do coroutine.yield() end
        end)
    end)
    assert(coroutine.resume(leader))
    local follower_err
    local follower = coroutine.create(function()
        local ok, err = pcall(g.run, g, "k", function() return "unused" end)
        check(not ok, "follower succeeded")
        follower_err = err
    end)
    assert(coroutine.resume(follower))
    eq(coroutine.status(follower), "suspended", "follower state")
    eq(singleflight.live_calls(), base + 2, "live calls while waiting")

    leader = nil -- luacheck: ignore (dropping the only reference is the point)
    collectgarbage()
    collectgarbage()
    eq(singleflight.live_calls(), base + 1, "the leader's call was not collected")
    assert(coroutine.resume(follower))
    eq(coroutine.status(follower), "dead", "follower state")
    check(singleflight.is_error(follower_err), "follower got " .. tostring(follower_err))
    eq(follower_err.code, singleflight.EGOEXIT, "follower error code")
    eq(g:stats().goexits, 1, "goexits")
    eq(g:stats().in_flight, 0, "in_flight")
    eq(singleflight.live_calls(), base, "live calls after")
    eq(g:run("k", function() return "again" end), "again", "key usable again")
end)

-- LuaJIT has no coroutine.close: a server ends an aborted
-- request's coroutine by dropping it (OpenResty finalizes the request and
-- unreferences its coroutines).  Once the leader's coroutine is collected,
-- its key must be free for every caller, the main coroutine included (it
-- is the one EDEADLK refuses while a suspended coroutine leads the key),
-- and its followers must see EGOEXIT.
local function dropped_leader_frees_the_key(keep_flight)
    local g = singleflight.new()
    local base = singleflight.live_calls()
    local kept = {}
    local leader = coroutine.create(function()
        return g:run("k", function(flight)
            if keep_flight then kept.flight = flight end
            while true do coroutine.yield() end
        end)
    end)
    assert(coroutine.resume(leader))
    local follower_err
    local follower = coroutine.create(function()
        local ok, err = pcall(g.run, g, "k", function() return "unused" end)
        check(not ok, "follower succeeded")
        follower_err = err
    end)
    assert(coroutine.resume(follower))
    eq(coroutine.status(follower), "suspended", "follower state")
    -- Still suspended, the leader could be resumed: the key is its.
    expect_error_code(singleflight.EDEADLK, g.run, g, "k", function() return "refused" end)

    leader = nil -- luacheck: ignore (dropping the only reference is the point)
    collectgarbage()
    collectgarbage()
    eq(singleflight.live_calls(), base + 1, "the leader's call was not collected")
    -- Before the follower runs again: a new flight, led by the main coroutine.
    local leaders = g:stats().leaders
    local v, shared = g:run("k", function() return "fresh" end)
    eq(v, "fresh", "the main coroutine's value")
    eq(shared, false, "shared")
    eq(g:stats().leaders, leaders + 1, "a new flight")
    assert(coroutine.resume(follower))
    eq(coroutine.status(follower), "dead", "follower state")
    check(singleflight.is_error(follower_err), "follower got " .. tostring(follower_err))
    eq(follower_err.code, singleflight.EGOEXIT, "follower error code")
    eq(g:stats().goexits, 1, "goexits")
    eq(g:stats().in_flight, 0, "in_flight")
    eq(singleflight.live_calls(), base, "live calls after")
    if keep_flight then
        eq(kept.flight:abandoned(), false, "the kept flight was not abandoned")
        eq(kept.flight:give_up(), false, "the kept flight cannot be given up")
    end
end

test("a dropped leader coroutine, once collected, frees its key for the main coroutine", function()
    dropped_leader_frees_the_key(false)
end)

test("a dropped leader coroutine whose flight is kept elsewhere is still collected", function()
    -- A request may keep fn's flight (ngx.ctx, a table of requests to give
    -- up on abort) longer than its coroutine lives.
    dropped_leader_frees_the_key(true)
end)

test("a waiting coroutine gives up after its timeout; the flight goes on", function()
    local g = singleflight.new()
    local err, leader_value
    local release = false
    schedule({
        function()
            leader_value = g:run("k", function()
                hold_until(function() return release end)
                return "late"
            end)
        end,
        function()
            err = select(2, pcall(g.run, g, "k", function() return "unused" end, { timeout = 0.01 }))
            release = true
        end,
    })
    check(singleflight.is_error(err), "follower got " .. tostring(err))
    eq(err.code, singleflight.ETIMEDOUT, "code")
    eq(leader_value, "late", "leader value")
    check(g:stats().timeouts >= 1, "timeouts not counted")
end)

test("a follower that gives up (abort) leaves the others their value", function()
    local g = singleflight.new()
    local got, quit = {}, nil
    schedule({
        function()
            got[1] = g:run("k", function()
                hold_until(function() return g:stats().cancels >= 1 end)
                return "v"
            end)
        end,
        function()
            quit = select(2, pcall(g.run, g, "k", function() return "unused" end,
                { abort = function() return g:stats().followers == 2 end }))
        end,
        function() got[3] = g:run("k", function() return "unused" end) end,
    })
    check(singleflight.is_error(quit), "the quitter got " .. tostring(quit))
    eq(quit.code, singleflight.ECANCELED, "code")
    eq(quit.name, "SF_ECANCELED", "name")
    eq(got[1], "v", "leader")
    eq(got[3], "v", "the follower who stayed")
    local s = g:stats()
    eq(s.cancels, 1, "cancels")
    eq(s.abandons, 0, "abandons")
end)

test("a follower that times out has given up (a cancel) too", function()
    local g = singleflight.new()
    local release = false
    schedule({
        function()
            g:run("k", function()
                hold_until(function() return release end)
                return "late"
            end)
        end,
        function()
            local err = select(2, pcall(g.run, g, "k", function() return "unused" end, { timeout = 0 }))
            eq(err.code, singleflight.ETIMEDOUT, "code")
            release = true
        end,
    })
    eq(g:stats().cancels, 1, "cancels")
    eq(g:stats().abandons, 0, "the leader still wanted it")
end)

test("the leader's caller giving up alone abandons the flight: fn sees it, the handler runs", function()
    local g = singleflight.new()
    local seen = {}
    local err = expect_error_code(singleflight.ECANCELED, g.run, g, "k", function(flight)
        flight:on_abandon(function(f) seen.handler_flight = f end)
        seen.flight = flight
        seen.gave_up = flight:give_up()
        seen.abandoned = flight:abandoned()
        seen.again = flight:give_up()
        return "nobody gets this"
    end)
    check(tostring(err):find("give_up", 1, true), tostring(err))
    eq(seen.gave_up, true, "give_up abandoned it")
    eq(seen.handler_flight, seen.flight, "the handler ran, with the flight")
    eq(seen.abandoned, true, "abandoned()")
    eq(seen.again, false, "a second give_up")
    local s = g:stats()
    eq(s.abandons, 1, "abandons")
    eq(s.in_flight, 0, "fn returned and finished the flight")
end)

test("a follower's give-up that abandons the flight runs the handler on its coroutine", function()
    local g = singleflight.new()
    local base = singleflight.live_calls()
    local hold, quit = true, false
    local seen = {}
    local leader = coroutine.create(function()
        seen.leader = { pcall(g.run, g, "k", function(flight)
            flight:on_abandon(function() seen.handler_on = coroutine.running() end)
            hold_until(function() return not hold end)
            seen.gave_up = flight:give_up()
            hold_until(function() return flight:abandoned() end)
            return "nobody gets this"
        end) }
    end)
    assert(coroutine.resume(leader))
    local follower = coroutine.create(function()
        seen.follower = { pcall(g.run, g, "k", function() return "unused" end,
            { abort = function() return quit end }) }
    end)
    assert(coroutine.resume(follower))
    hold = false
    assert(coroutine.resume(leader)) -- gives up; the follower still waits
    eq(seen.gave_up, false, "not abandoned while the follower waits")
    quit = true
    assert(coroutine.resume(follower)) -- gives up last
    eq(coroutine.status(follower), "dead")
    eq(seen.handler_on, follower, "the handler ran on the follower's coroutine")
    eq(seen.follower[2].code, singleflight.ECANCELED, "follower code")
    eq(g:stats().abandons, 1, "abandons")
    eq(g:stats().cancels, 2, "cancels")
    -- The key is free: even the main coroutine starts a new flight, though
    -- the old leader coroutine is still suspended in fn.
    eq(g:run("k", function() return "fresh" end), "fresh")
    eq(g:stats().leaders, 2, "a new flight")
    assert(coroutine.resume(leader))
    eq(coroutine.status(leader), "dead")
    eq(seen.leader[2].code, singleflight.ECANCELED, "leader code")
    eq(singleflight.live_calls(), base, "live calls")
end)

test("a collected follower coroutine leaves; fn's next abandoned() runs the handler", function()
    local g = singleflight.new()
    local base = singleflight.live_calls()
    local hold, handled = true, 0
    local saw_it
    local leader = coroutine.create(function()
        return pcall(g.run, g, "k", function(flight)
            flight:on_abandon(function() handled = handled + 1 end)
            hold_until(function() return not hold end)
            flight:give_up()
            hold_until(function() return flight:abandoned() end)
            saw_it = handled
            return "x"
        end)
    end)
    assert(coroutine.resume(leader))
    local follower = coroutine.create(function() g:run("k", function() return "unused" end) end)
    assert(coroutine.resume(follower))
    hold = false
    assert(coroutine.resume(leader))
    eq(g:stats().abandons, 0, "the follower still waits")
    follower = nil -- luacheck: ignore (an abandoned request's coroutine)
    collectgarbage(); collectgarbage()
    eq(g:stats().abandons, 1, "its collection left the flight")
    eq(handled, 0, "no Lua runs from a finalizer")
    assert(coroutine.resume(leader))
    eq(saw_it, 1, "the handler ran at fn's abandoned()")
    eq(singleflight.live_calls(), base, "live calls")
end)

test("a handler registered after the abandonment runs at once; handler errors are logged", function()
    local logged = {}
    rawset(_G, "ngx", { ERR = 4, log = function(level, msg) logged[#logged + 1] = { level, msg } end })
    local ok, err = pcall(function()
        local g = singleflight.new({ sleep = function() coroutine.yield() end })
        expect_error_code(singleflight.ECANCELED, g.run, g, "k", function(flight)
            flight:on_abandon(function() error("handler broke") end)
            eq(flight:give_up(), true, "alone: abandoned at once")
            local late = false
            flight:on_abandon(function() late = true end)
            eq(late, true, "ran at registration")
            return "x"
        end)
        check(not pcall(g.run, g, "k", function(flight) flight:on_abandon(42) end), "on_abandon(42) accepted")
        check(not pcall(g.run, g, "k", function() end, { abort = 5 }), "abort = 5 accepted")
    end)
    rawset(_G, "ngx", nil)
    assert(ok, err)
    eq(#logged, 1, "log lines")
    eq(logged[1][1], 4, "ngx.ERR")
    check(logged[1][2]:find("handler broke", 1, true), logged[1][2])
end)

-- The main coroutine cannot yield, so as a follower it blocks the OS thread
-- in C; a leader that is a suspended coroutine of the same state could then
-- never be resumed to finish.
local function main_follower_of_suspended_leader(opts)
    local g = singleflight.new()
    local base = singleflight.live_calls()
    local release = false
    local leader = coroutine.create(function()
        return g:run("k", function()
            hold_until(function() return release end)
            return "done"
        end)
    end)
    assert(coroutine.resume(leader))
    eq(coroutine.status(leader), "suspended", "leader state")
    local before = g:stats()
    local inner_ran = false
    local err = expect_error_code(singleflight.EDEADLK, g.run, g, "k", function()
        inner_ran = true
        return "x"
    end, opts)
    eq(err.name, "SF_EDEADLK", "name")
    eq(inner_ran, false, "the follower's fn ran")
    local after = g:stats()
    eq(after.calls, before.calls, "the refused call reached the library")
    eq(after.timeouts, before.timeouts, "timeouts")
    eq(singleflight.live_calls(), base + 1, "only the leader's call is alive")
    -- The leader is untouched and finishes normally.
    release = true
    local ok, v = coroutine.resume(leader)
    check(ok, tostring(v))
    eq(v, "done", "leader value")
    eq(g:stats().in_flight, 0, "in_flight")
    eq(singleflight.live_calls(), base, "live calls after")
    -- With the leader gone the key is free again, for the main coroutine too.
    eq(g:run("k", function() return "again" end), "again", "key usable again")
end

test("a main-coroutine follower of a suspended leader coroutine raises EDEADLK", function()
    main_follower_of_suspended_leader(nil)
end)

test("with a timeout it is still EDEADLK, at once, not a timeout", function()
    main_follower_of_suspended_leader({ timeout = 30 })
end)

test("a custom sleep hook is used between polls", function()
    local polls = 0
    local g = singleflight.new({
        sleep = function(n)
            polls = n
            coroutine.yield()
        end,
    })
    local leader, follower = T.lead_and_follow(g, "v")
    eq(leader, "v"); eq(follower, "v")
    check(polls >= 1, "sleep hook never called")
    local groups = singleflight.live_groups()
    check(not pcall(singleflight.new, { sleep = 5 }), "non-function sleep accepted")
    check(not pcall(singleflight.new, { shards = "many" }), "non-number shards accepted")
    eq(singleflight.live_groups(), groups, "a rejected new() left a group behind")
end)

test("a sleep hook that raises gives the handle back at once", function()
    local g = singleflight.new({ sleep = function() error("cannot yield here") end })
    local base = singleflight.live_calls()
    local err
    schedule({
        function()
            g:run("k", function()
                await_followers(g, 1)
                return "v"
            end)
        end,
        function()
            err = select(2, pcall(g.run, g, "k", function() return "unused" end))
            eq(singleflight.live_calls(), base + 1, "only the leader's call is left")
        end,
    })
    check(tostring(err):find("cannot yield here", 1, true), "follower got " .. tostring(err))
    eq(singleflight.live_calls(), base, "live calls")
end)

test("with OpenResty's ngx present, followers wait with ngx.sleep", function()
    local slept = {}
    rawset(_G, "ngx", {
        sleep = function(seconds)
            slept[#slept + 1] = seconds
            coroutine.yield()
        end,
    })
    local ok, g = pcall(singleflight.new)
    rawset(_G, "ngx", nil)
    assert(ok, g)
    local _, follower = T.lead_and_follow(g, "v")
    eq(follower, "v", "follower value")
    check(#slept >= 1, "ngx.sleep never called")
    eq(slept[1], 0, "first sleep yields without delay")
end)

test("a second copy of the module coexists with foreign declarations", function()
    local ffi = require("ffi")
    -- What another FFI module might already have declared, with types that
    -- differ from this module's own view of libc.
    pcall(ffi.cdef, [[
struct timespec { long tv_sec; long tv_nsec; };
int clock_gettime(int clk, struct timespec *tp);
]])
    local path = assert(package.searchpath("singleflight", package.path))
    local copy = dofile(path)
    check(copy ~= singleflight, "dofile returned the cached module")
    local g = copy.new()
    local ok, v = pcall(g.run, g, "k", function() return "x" end)
    check(ok, tostring(v))
    eq(v, "x")
    eq(g:close(), true, "close")
end)

test("close frees an idle group and refuses a busy one", function()
    local g = singleflight.new()
    local release = false
    local closed = {}
    schedule({
        function()
            g:run("k", function()
                hold_until(function() return release end)
                return "x"
            end)
        end,
        function()
            closed.ok, closed.err = g:close()
            release = true
        end,
    })
    eq(closed.ok, nil, "close of a busy group")
    eq(closed.err.code, singleflight.EBUSY, "close error")
    eq(g:close(), true, "close of an idle group")
    check(not pcall(g.run, g, "k", function() return "x" end), "run on a closed group")
    check(not pcall(g.stats, g), "stats on a closed group")
end)

test("many flights leave no handles and no growing memory", function()
    local g = singleflight.new()
    local base = singleflight.live_calls()
    local function burst()
        local tasks = {}
        for i = 1, 4 do
            tasks[i] = function()
                for j = 1, 50 do
                    local key = "k" .. (j % 3)
                    local ok, v = pcall(g.run, g, key, function()
                        coroutine.yield()
                        if j % 5 == 0 then error("fail " .. j) end
                        return string.rep("v", j)
                    end)
                    check(not ok or v:match("^v+$"), "bad value " .. tostring(v))
                end
            end
        end
        schedule(tasks)
    end
    burst()
    collectgarbage(); collectgarbage()
    local before = collectgarbage("count")
    for _ = 1, 20 do burst() end
    collectgarbage(); collectgarbage()
    local after = collectgarbage("count")
    eq(singleflight.live_calls(), base, "live calls")
    eq(g:stats().in_flight, 0, "in_flight")
    check(g:stats().followers > 0, "the bursts never overlapped")
    check(after - before < 64, ("Lua heap grew by %.1f KiB"):format(after - before))
end)

test("groups are collected, even with an abandoned call of theirs", function()
    collectgarbage(); collectgarbage()
    local base, base_groups = singleflight.live_calls(), singleflight.live_groups()
    do
        local g = singleflight.new()
        local co = coroutine.create(function()
            g:run("k", function() while true do coroutine.yield() end end)
        end)
        assert(coroutine.resume(co))
    end
    -- Group and call die in the same cycle, in whichever order the
    -- collector picks; the group must still end up freed.
    collectgarbage(); collectgarbage()
    eq(singleflight.live_calls(), base, "live calls")
    eq(singleflight.live_groups(), base_groups, "live groups")
    local g = singleflight.new()
    eq(g:close(), true, "a fresh group still works")
    eq(singleflight.live_groups(), base_groups, "live groups after close")
end)

test("the loaded library is the ABI this module expects", function()
    local v = singleflight.version()
    check(v:match("^1%.%d+%.%d+$"), "version " .. v)
end)

T.run()
