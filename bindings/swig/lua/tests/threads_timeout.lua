-- Run by sf_lua_threads in 2 OS threads, each with its own lua_State: a
-- follower that cannot yield (the main coroutine) waits inside the library
-- with its timeout, while the leader, in the other state, holds the flight
-- open until the library has counted that timeout.
local sf = require "singleflight"

assert(NTHREADS == 2, "this script wants exactly 2 threads")
local g = sf.shared("cross-state-timeout")
local util = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "threads_util.lua")
local spin_until = util.spin_until

if THREAD_ID == 1 then
    local value, shared = g:call("k", function()
        spin_until("the follower's timeout", function() return g:stats().timeouts >= 1 end)
        return "late"
    end)
    assert(value == "late" and shared == true, "leader: " .. tostring(value) .. " " .. tostring(shared))
else
    spin_until("the leader's flight", function() return g:stats().in_flight >= 1 end)
    local ok, err = pcall(g.call, g, "k", function() return "never runs" end, { timeout = 0.05 })
    assert(not ok, "the follower got a value while the leader held the flight")
    assert(tostring(err):find("SF_ETIMEDOUT", 1, true), "follower: " .. tostring(err))
    spin_until("the leader's finish", function() return g:stats().in_flight == 0 end)
end
local s = g:stats()
assert(s.leaders == 1 and s.followers == 1 and s.timeouts == 1,
    ("leaders %d followers %d timeouts %d"):format(s.leaders, s.followers, s.timeouts))
return "one timeout, the flight went on"
