-- The LuaJIT binding's test harness: test registration, checks, a tiny
-- round-robin coroutine scheduler and the runner, shared by the test files.
--
--   local T = require("harness")
--   T.test("name", function() T.eq(got, want, "what") end)
--   T.run()   -- runs every registered test, prints, exits 0 or 1
--
-- Leaders that must be joined wait until the group's own stats show the
-- followers, so every interleaving is forced, not hoped for.

local singleflight = require("singleflight")

local T = {}
local tests = {}

function T.test(name, fn)
    tests[#tests + 1] = { name = name, fn = fn }
end

function T.check(cond, message, level)
    if not cond then error(message or "check failed", (level or 1) + 1) end
end

function T.eq(got, want, what)
    if got ~= want then
        error(("%s: got %s, want %s"):format(what or "value", tostring(got), tostring(want)), 2)
    end
end

-- Loops are bounded by CPU time, not iterations: a timeout test spins the
-- scheduler for real milliseconds.  The bound only turns a hang into a
-- failure.
function T.before_deadline(start)
    return os.clock() - start < 20
end

-- Runs each function as a coroutine, round-robin, until all are dead.
-- A task that raises fails the test; expected errors are pcall'd inside.
function T.schedule(tasks, between_rounds)
    local cos = {}
    for i, f in ipairs(tasks) do cos[i] = coroutine.create(f) end
    local start = os.clock()
    while T.before_deadline(start) do
        local alive = false
        for _, co in ipairs(cos) do
            if coroutine.status(co) == "suspended" then
                local ok, err = coroutine.resume(co)
                if not ok then error(debug.traceback(co, tostring(err)), 0) end
                alive = alive or coroutine.status(co) ~= "dead"
            end
        end
        if not alive then return end
        if between_rounds then between_rounds() end
    end
    error("scheduler: tasks never finished", 2)
end

-- Yields (inside a leader's fn) until n followers have joined g.
function T.await_followers(g, n)
    local start = os.clock()
    while T.before_deadline(start) do
        if g:stats().followers >= n then return end
        coroutine.yield()
    end
    error("followers never joined")
end

-- Yields until flag() is true; for leaders held open by the test.
function T.hold_until(flag)
    local start = os.clock()
    while T.before_deadline(start) do
        if flag() then return end
        coroutine.yield()
    end
    error("never released")
end

-- One flight of key "k" in g: a leader coroutine that waits until a
-- follower joined and returns value, and that follower.  Returns what the
-- leader's run and the follower's returned.
function T.lead_and_follow(g, value)
    local got = {}
    T.schedule({
        function()
            got[1] = g:run("k", function()
                T.await_followers(g, 1)
                return value
            end)
        end,
        function() got[2] = g:run("k", function() return "unused" end) end,
    })
    return got[1], got[2]
end

function T.expect_error_code(code, f, ...)
    local ok, err = pcall(f, ...)
    T.check(not ok, "expected an error", 2)
    T.check(singleflight.is_error(err), "expected a status error, got " .. tostring(err), 2)
    T.eq(err.code, code, "error code")
    return err
end

-- Runs every registered test in order and exits: 0 when all passed.
function T.run()
    local failures = 0
    for _, t in ipairs(tests) do
        local ok, err = xpcall(t.fn, debug.traceback)
        if ok then
            io.write("ok   ", t.name, "\n")
        else
            failures = failures + 1
            io.write("FAIL ", t.name, "\n  ", tostring(err):gsub("\n", "\n  "), "\n")
        end
    end
    io.write(("%d tests, %d failed\n"):format(#tests, failures))
    os.exit(failures == 0 and 0 or 1)
end

return T
