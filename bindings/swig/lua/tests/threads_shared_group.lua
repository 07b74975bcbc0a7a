-- Run by sf_lua_threads in NTHREADS OS threads, each with its own lua_State.
-- Every state asks the process-wide group "cross-state" for one key; the
-- leader's fn holds the flight open until all the other states have joined,
-- so exactly one execution serves every thread.  The value crosses states as
-- a string; sf_lua_threads checks that every state returned the same one.
local sf = require "singleflight"

local g = sf.shared("cross-state")
local deadline = os.time() + 20

local value, shared = g:call("config", function()
    while g:stats().followers < NTHREADS - 1 do
        if os.time() > deadline then error("the other states never joined") end
    end
    return "built by state " .. THREAD_ID .. "\0with a NUL"
end)

assert(shared == true, "every caller of a joined flight is shared")
local s = g:stats()
assert(s.leaders == 1, "one execution, got " .. s.leaders)
assert(s.followers == NTHREADS - 1, "followers " .. s.followers)
assert(value:find("\0with a NUL", 1, true), "bytes survive the crossing")
return (value:gsub("%z", "\\0"))
