-- Run by sf_lua_threads in 2 OS threads, each with its own lua_State: the
-- leader's caller (state 1) gives up while a follower (state 2) still
-- waits; when the follower gives up too, the flight is abandoned, and fn,
-- still running in state 1, sees it at its next flight:abandoned(), where
-- its handler runs.  The follower gives up only once the leader has (its
-- abort function watches stats().cancels), so the order is fixed.
local sf = require "singleflight"

assert(NTHREADS == 2, "this script wants exactly 2 threads")
local g = sf.shared("cross-state-abandon")
local util = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "threads_util.lua")
local spin_until = util.spin_until

if THREAD_ID == 1 then
    local handled = 0
    local ok, err = pcall(g.call, g, "k", function(flight)
        flight:on_abandon(function() handled = handled + 1 end)
        spin_until("the follower", function() return g:stats().followers >= 1 end)
        assert(flight:give_up() == false, "the follower still waits: not abandoned yet")
        assert(not flight:abandoned() and handled == 0)
        spin_until("the abandonment", function() return flight:abandoned() end)
        assert(handled == 1, "the handler ran at the poll that saw it, once")
        return "nobody gets this"
    end)
    assert(not ok and tostring(err):find("SF_ECANCELED", 1, true), "leader: " .. tostring(err))
else
    spin_until("the leader's flight", function() return g:stats().in_flight >= 1 end)
    local err
    local co = coroutine.create(function()
        local ok, e = pcall(g.call, g, "k", function() return "never runs" end,
            { abort = function() return g:stats().cancels >= 1 end })
        assert(not ok, "the follower got a value")
        err = e
    end)
    while coroutine.status(co) ~= "dead" do
        local ok, e = coroutine.resume(co)
        if not ok then error(e) end
        if util.expired() then error("the follower never gave up") end
    end
    assert(tostring(err):find("SF_ECANCELED", 1, true), "follower: " .. tostring(err))
    spin_until("the leader's finish", function() return g:stats().in_flight == 0 end)
end
local s = g:stats()
assert(s.leaders == 1 and s.followers == 1 and s.cancels == 2 and s.abandons == 1,
    ("leaders %d followers %d cancels %d abandons %d"):format(s.leaders, s.followers, s.cancels, s.abandons))
return "abandoned across states, seen by fn"
