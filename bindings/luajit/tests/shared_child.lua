-- Another process of a shared group, for shared_test.lua:
--
--   luajit shared_child.lua NAME KEY FOLLOWERS HOW
--
-- Opens the shared group NAME and runs KEY.  As its leader, fn prints
-- "leading <pid>", waits until FOLLOWERS callers have joined (the group's
-- stats count every process's), then ends the flight as HOW says:
--   hex:<hex>   returns those bytes       none   returns nil
--   raise:<msg> raises msg                hang   never returns (the test
--                                                kills this process)
-- At the end it prints "done ok <hex of the value, or nil>" or "done error
-- <message>".  The handshake through stats is the only wait: nothing here
-- sleeps for a time and hopes.

local ffi = require("ffi")
local singleflight = require("singleflight")

ffi.cdef [[
int sf_child_getpid(void) __asm__("getpid");
int sf_child_poll(void *fds, unsigned long n, int timeout_ms) __asm__("poll");
]]

local name, key, followers, how = arg[1], arg[2], tonumber(arg[3]), arg[4]

local function hex(s)
    return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function unhex(h)
    return (h:gsub("..", function(b) return string.char(tonumber(b, 16)) end))
end

local g = singleflight.open_shared(name, { doorbell = false })
local ok, v = pcall(g.run, g, key, function()
    io.stdout:write("leading ", ffi.C.sf_child_getpid(), "\n")
    io.stdout:flush()
    local start = os.time()
    while g:stats().followers < followers do
        -- A bound that only turns a lost follower into a failure.
        if os.time() - start > 60 then error("followers never joined") end
        ffi.C.sf_child_poll(nil, 0, 1)
    end
    if how == "hang" then
        while true do ffi.C.sf_child_poll(nil, 0, 1000) end
    elseif how == "none" then
        return nil
    elseif how:match("^raise:") then
        error(how:sub(7), 0)
    end
    return unhex(assert(how:match("^hex:(.*)$"), "bad HOW " .. how))
end)
if ok then
    io.stdout:write("done ok ", v == nil and "nil" or hex(v), "\n")
else
    io.stdout:write("done error ", tostring(v), "\n")
end
g:close()
