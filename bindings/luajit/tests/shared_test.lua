-- Tests for the LuaJIT binding's shared groups (libsingleflight 1.2).  Run
-- with: luajit shared_test.lua (package.path as for singleflight_test.lua;
-- `luajit` must be on PATH: the other processes are shared_child.lua).
--
-- The other process of a flight is a child started with io.popen; it says
-- when its fn runs and waits, through the group's own stats, until the
-- followers joined.  A follower inside a coroutine waits on its process's
-- doorbell: through a knock of this file's own (a non-blocking unix socket
-- that yields to the scheduler while it waits, as a cosocket yields to
-- nginx) and through OpenResty's API, stood in for by the same socket.

local ffi = require("ffi")
local singleflight = require("singleflight")

local T = require("harness")
local test, check, eq = T.test, T.check, T.eq
local schedule, await_followers, hold_until = T.schedule, T.await_followers, T.hold_until
local expect_error_code = T.expect_error_code

ffi.cdef [[
int  sf_test_getpid(void) __asm__("getpid");
int  sf_test_socket(int domain, int type, int protocol) __asm__("socket");
int  sf_test_connect(int fd, const void *addr, unsigned int len) __asm__("connect");
long sf_test_send(int fd, const void *buf, size_t len, int flags) __asm__("send");
long sf_test_recv(int fd, void *buf, size_t len, int flags) __asm__("recv");
int  sf_test_close(int fd) __asm__("close");
int  sf_test_clock_gettime(int clock_id, void *tp) __asm__("clock_gettime");
typedef struct sf_test_sockaddr_un { unsigned short family; char path[108]; } sf_test_sockaddr_un;
]]
local C = ffi.C
local AF_UNIX, SOCK_STREAM, SOCK_NONBLOCK, MSG_NOSIGNAL = 1, 1, 0x800, 0x4000
local EAGAIN = 11

local HERE = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local PID = C.sf_test_getpid()

local function now()
    local ts = ffi.new("int64_t[2]")
    C.sf_test_clock_gettime(1, ts) -- CLOCK_MONOTONIC
    return tonumber(ts[0]) + tonumber(ts[1]) * 1e-9
end

-- A fresh group name per use: the counters of a new segment start at 0.
local names = 0
local function fresh_name()
    names = names + 1
    return ("sf-luajit-test-%d-%d"):format(PID, names)
end

local function hex(s)
    return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end))
end

local function exists(path)
    local f = io.open(path, "rb")
    if f then f:close() end
    return f ~= nil
end

-- ------------------------------------------------------------------ the other process

-- Starts shared_child.lua leading key of group name (see there for how)
-- and returns once its fn runs: { pid, pipe }.
local function spawn_leader(name, key, followers, how)
    -- exec: the pid the child prints is the one the shell started, and no
    -- shell is left to report a killed child.
    local cmd = ("exec luajit '%sshared_child.lua' '%s' '%s' %d '%s'"):format(HERE, name, key, followers, how)
    local pipe = assert(io.popen(cmd, "r"))
    local line = pipe:read("*l")
    local pid = line and tonumber(line:match("^leading (%d+)$"))
    check(pid, "the child said " .. tostring(line), 2)
    return { pid = pid, pipe = pipe }
end

-- The child's last line ("done ..."), once it exited.
local function finish(child)
    local rest = child.pipe:read("*a")
    child.pipe:close()
    return rest:match("(done[^\n]*)") or rest
end

-- ------------------------------------------------------------------ a socket that yields

-- The part of OpenResty's cosocket API the binding's doorbell uses
-- (settimeout, connect "unix:<path>", send, receive(1), close), on a
-- non-blocking socket whose waits yield to the test's scheduler.  Every
-- socket made appends its log to sockets.
local sockets = {}
local Sock = {}
Sock.__index = Sock

local function new_sock()
    local s = setmetatable({ fd = -1, ms = 60000, sent = {}, connected = nil }, Sock)
    sockets[#sockets + 1] = s
    return s
end

function Sock:settimeout(ms) self.ms = ms end

function Sock:connect(address)
    local path = address:match("^unix:(.+)$")
    if not path then return nil, "not a unix socket address: " .. address end
    self.fd = C.sf_test_socket(AF_UNIX, SOCK_STREAM + SOCK_NONBLOCK, 0)
    local a = ffi.new("sf_test_sockaddr_un")
    a.family = AF_UNIX
    ffi.copy(a.path, path)
    if C.sf_test_connect(self.fd, a, ffi.sizeof(a)) ~= 0 then
        return nil, "connect failed, errno " .. ffi.errno()
    end
    self.connected = address
    return true
end

function Sock:send(data)
    self.sent[#self.sent + 1] = data
    if C.sf_test_send(self.fd, data, #data, MSG_NOSIGNAL) ~= #data then return nil, "send failed" end
    return #data
end

function Sock:receive(n)
    assert(n == 1, "the doorbell reads one byte")
    local deadline = now() + self.ms / 1000
    local buf = ffi.new("char[1]")
    while true do
        local got = C.sf_test_recv(self.fd, buf, 1, 0)
        if got == 1 then return ffi.string(buf, 1) end
        if got == 0 then return nil, "closed" end
        if ffi.errno() ~= EAGAIN then return nil, "recv failed, errno " .. ffi.errno() end
        if now() >= deadline then return nil, "timeout" end
        coroutine.yield()
    end
end

function Sock:close()
    if self.fd >= 0 then C.sf_test_close(self.fd) end
    self.fd = -1
    return 1
end

-- A doorbell option for open_shared: the knock contract on Sock, logging
-- each knock's arguments into knocks.
local function knock_logged(knocks)
    return function(address, token, seconds)
        knocks[#knocks + 1] = { address = address, token = token, seconds = seconds }
        local s = new_sock()
        s:settimeout(seconds and math.max(1, seconds * 1000) or 60000)
        assert(s:connect(address))
        assert(s:send(token))
        local answer, err = s:receive(1)
        s:close()
        if answer or err == "closed" then return true end
        if err == "timeout" then return false end
        error(err)
    end
end

-- Runs f with a stand-in for OpenResty's ngx: cosockets are Sock, and
-- ngx.sleep raises (a follower must never poll).
local function with_ngx(f)
    local sleeps = 0
    rawset(_G, "ngx", {
        socket = { tcp = new_sock },
        sleep = function() sleeps = sleeps + 1; error("ngx.sleep called") end,
    })
    local ok, err = pcall(f)
    rawset(_G, "ngx", nil)
    assert(ok, err)
    return sleeps
end

-- ------------------------------------------------------------------ tests

test("a flight led in another process: a main-coroutine follower blocks until it ends", function()
    local name = fresh_name()
    local g = singleflight.open_shared(name)
    local child = spawn_leader(name, "k", 1, "hex:" .. hex("from the child"))
    eq(g:stats().processes, 2, "processes attached")
    local ran = false
    local v, shared = g:run("k", function() ran = true; return "here" end)
    eq(v, "from the child", "value")
    eq(shared, true, "shared")
    eq(ran, false, "fn ran here too")
    eq(finish(child), "done ok " .. hex("from the child"), "the child")
    local s = g:stats()
    eq(s.leaders, 1, "leaders in both processes")
    eq(s.followers, 1, "followers")
    eq(s.in_flight, 0, "in_flight")
    eq(s.processes, 1, "processes after the child left")
    eq(g:close(), true, "close")
end)

test("values cross processes as exact bytes: binary, empty and nil", function()
    local cases = {
        { how = "hex:" .. hex("a\0b\255\n"), want = "a\0b\255\n" },
        { how = "hex:", want = "" },
        { how = "none", want = nil },
        -- Past the 64 bytes kept in a slot: through the arena.
        { how = "hex:" .. hex(string.rep("x", 20000)), want = string.rep("x", 20000) },
    }
    for i, case in ipairs(cases) do
        local name = fresh_name()
        local g = singleflight.open_shared(name)
        local child = spawn_leader(name, "k", 1, case.how)
        local v = g:run("k", function() return "here" end)
        check(v == case.want, ("case %d: got %s"):format(i, v == nil and "nil" or ("%q"):format(v)))
        finish(child)
        g:close()
    end
end)

test("an error in the other process's fn reaches every follower as its message", function()
    local name = fresh_name()
    local g = singleflight.open_shared(name)
    local child = spawn_leader(name, "k", 1, "raise:no such user")
    local ok, err = pcall(g.run, g, "k", function() return "here" end)
    eq(ok, false, "the follower succeeded")
    eq(err, "no such user", "the follower's error")
    eq(finish(child), "done error no such user", "the leader's own error")
    eq(g:stats().panics, 1, "panics")
    g:close()
end)

test("coroutine followers wait on the doorbell of their process for a leader in another", function()
    local name = fresh_name()
    local knocks = {}
    local g = singleflight.open_shared(name, { doorbell = knock_logged(knocks) })
    local child = spawn_leader(name, "k", 2, "hex:" .. hex("rung"))
    local got = {}
    schedule({
        function() got[1] = { g:run("k", function() return "here" end) } end,
        function() got[2] = { g:run("k", function() return "here" end) } end,
    })
    for i = 1, 2 do
        eq(got[i][1], "rung", "value " .. i)
        eq(got[i][2], true, "shared " .. i)
    end
    check(#knocks >= 2, "the followers never knocked")
    for _, k in ipairs(knocks) do
        check(k.address:match("^unix:/"), "address " .. k.address)
        eq(#k.token, 8, "token length")
        eq(k.seconds, nil, "a wait with no timeout")
    end
    finish(child)
    eq(singleflight.live_calls(), 0, "live calls")
    g:close()
end)

test("the doorbell is answered when the leader is a coroutine of this process", function()
    local knocks = {}
    local g = singleflight.open_shared(fresh_name(), { doorbell = knock_logged(knocks) })
    local leader, follower = T.lead_and_follow(g, "local leader")
    eq(leader, "local leader", "leader")
    eq(follower, "local leader", "follower")
    eq(#knocks, 1, "knocks")
    g:close()
end)

test("under OpenResty a follower knocks through a cosocket and never calls ngx.sleep", function()
    local name = fresh_name()
    local before = #sockets
    local sleeps = with_ngx(function()
        local g = singleflight.open_shared(name)
        local child = spawn_leader(name, "k", 1, "hex:" .. hex("via cosocket"))
        local got
        schedule({ function() got = g:run("k", function() return "here" end) end })
        eq(got, "via cosocket", "value")
        finish(child)
        g:close()
    end)
    eq(sleeps, 0, "ngx.sleep calls")
    check(#sockets > before, "no cosocket was made")
    local s = sockets[#sockets]
    check(s.connected and s.connected:match("^unix:/"), "connected to " .. tostring(s.connected))
    eq(#s.sent, 1, "sends")
    eq(#s.sent[1], 8, "token length")
    eq(s.fd, -1, "the cosocket was closed")
end)

test("a leader process killed inside fn releases a doorbell follower with EGOEXIT; the key leads afresh", function()
    local name = fresh_name()
    local knocks = {}
    local child
    local knock = knock_logged(knocks)
    local g = singleflight.open_shared(name, {
        -- The follower has joined once it knocks: kill the leader then.
        doorbell = function(address, token, seconds)
            if #knocks == 0 then os.execute("kill -9 " .. child.pid) end
            return knock(address, token, seconds)
        end,
    })
    child = spawn_leader(name, "k", 0, "hang")
    local err
    schedule({ function() err = select(2, pcall(g.run, g, "k", function() return "here" end)) end })
    check(singleflight.is_error(err), "the follower got " .. tostring(err))
    eq(err.code, singleflight.EGOEXIT, "code")
    finish(child)
    eq(g:stats().goexits, 1, "goexits")
    local v, shared = g:run("k", function() return "fresh" end)
    eq(v, "fresh", "the next caller's value")
    eq(shared, false, "shared")
    eq(g:stats().leaders, 2, "leaders")
    eq(g:stats().in_flight, 0, "in_flight")
    g:close()
end)

test("a doorbell follower gives up after its timeout or when abort says so; the flight goes on", function()
    local knocks = {}
    local g = singleflight.open_shared(fresh_name(), { doorbell = knock_logged(knocks) })
    local release, aborting = false, false
    local leader_value, timed_out, aborted
    schedule({
        function()
            leader_value = g:run("k", function()
                await_followers(g, 2)
                hold_until(function() return release end)
                return "late"
            end)
        end,
        function()
            timed_out = select(2, pcall(g.run, g, "k", function() return "unused" end, { timeout = 0.05 }))
            aborting = true
        end,
        function()
            aborted = select(2, pcall(g.run, g, "k", function() return "unused" end,
                { abort = function() return aborting end }))
            release = true
        end,
    })
    check(singleflight.is_error(timed_out), "the timeout follower got " .. tostring(timed_out))
    eq(timed_out.code, singleflight.ETIMEDOUT, "timeout code")
    check(singleflight.is_error(aborted), "the abort follower got " .. tostring(aborted))
    eq(aborted.code, singleflight.ECANCELED, "abort code")
    eq(leader_value, "late", "leader")
    for _, k in ipairs(knocks) do
        check(k.seconds and k.seconds <= 0.1 + 1e-9, "a knock without a bound: " .. tostring(k.seconds))
    end
    local s = g:stats()
    eq(s.cancels, 2, "cancels")
    check(s.timeouts >= 1, "timeouts not counted")
    eq(singleflight.live_calls(), 0, "live calls")
    g:close()
end)

test("with doorbell = false a coroutine follower polls, as on a local group", function()
    local name = fresh_name()
    local polls = 0
    local g = singleflight.open_shared(name, {
        doorbell = false,
        sleep = function(n) polls = n; coroutine.yield() end,
    })
    local child = spawn_leader(name, "k", 1, "hex:" .. hex("polled"))
    local got
    schedule({ function() got = g:run("k", function() return "here" end) end })
    eq(got, "polled", "value")
    check(polls >= 1, "the sleep hook was never called")
    finish(child)
    g:close()
end)

test("a doorbell that raises gives the handle back and raises in the follower", function()
    local g = singleflight.open_shared(fresh_name(), {
        doorbell = function() error("no cosockets in this phase", 0) end,
    })
    local err
    schedule({
        function()
            g:run("k", function()
                await_followers(g, 1)
                hold_until(function() return err ~= nil end)
                return "v"
            end)
        end,
        function() err = select(2, pcall(g.run, g, "k", function() return "unused" end)) end,
    })
    eq(err, "no cosockets in this phase", "the follower's error")
    eq(g:stats().cancels, 1, "cancels")
    eq(singleflight.live_calls(), 0, "live calls")
    g:close()
end)

test("a value longer than max_value_bytes fails the flight for every caller", function()
    local g = singleflight.open_shared(fresh_name(), { arena_bytes = 65536, max_value_bytes = 1024, doorbell = false })
    local errs = {}
    schedule({
        function()
            errs[1] = select(2, pcall(g.run, g, "k", function()
                await_followers(g, 1)
                return string.rep("x", 1025)
            end))
        end,
        function() errs[2] = select(2, pcall(g.run, g, "k", function() return "unused" end)) end,
    })
    for i = 1, 2 do
        check(type(errs[i]) == "string" and errs[i]:find("1025 bytes", 1, true), "caller " .. i .. " got " .. tostring(errs[i]))
    end
    eq(g:run("k", function() return string.rep("y", 1024) end), string.rep("y", 1024), "the largest value")
    g:close()
end)

test("the main coroutine following a suspended leader coroutine of a shared group is EDEADLK", function()
    local g = singleflight.open_shared(fresh_name())
    local co = coroutine.create(function()
        return g:run("k", function() coroutine.yield(); return "v" end)
    end)
    assert(coroutine.resume(co))
    expect_error_code(singleflight.EDEADLK, g.run, g, "k", function() return "x" end)
    assert(coroutine.resume(co))
    eq(coroutine.status(co), "dead", "leader")
    g:close()
end)

test("open_shared refuses bad names and options with clear errors", function()
    local groups = singleflight.live_groups()
    local e = expect_error_code(singleflight.EINVAL, singleflight.open_shared, "a/b")
    check(e.message:find("a/b", 1, true), "the message does not name the group: " .. e.message)
    expect_error_code(singleflight.EINVAL, singleflight.open_shared, string.rep("n", 300))
    expect_error_code(singleflight.EINVAL, singleflight.open_shared, "")
    for _, bad in ipairs({
        { nil, nil }, { 42, nil }, { "x", { path = "/tmp/x" } }, { nil, { path = 5 } },
        { "x", { doorbell = 5 } }, { "x", { arena_bytes = -1 } }, { "x", { table_slots = 1.5 } },
        { "x", { sleep = "no" } },
    }) do
        local ok, err = pcall(singleflight.open_shared, bad[1], bad[2])
        check(not ok and type(err) == "string", "accepted, or not a message: " .. tostring(err))
    end
    eq(singleflight.live_groups(), groups, "a refused open left a group behind")
end)

test("a segment with other sizes is EINCOMPAT, one open to more than asked EPERM", function()
    local name = fresh_name()
    local mode = tonumber("644", 8)
    local g = singleflight.open_shared(name, { table_slots = 64, mode = mode })
    local same = singleflight.open_shared(name, { mode = mode }) -- sizes 0: the segment's
    expect_error_code(singleflight.EINCOMPAT, singleflight.open_shared, name, { table_slots = 128, mode = mode })
    -- The default mode is 0600: this segment is open to more than that.
    expect_error_code(singleflight.EPERM, singleflight.open_shared, name)
    eq(same:close(), true, "close")
    eq(g:close(), true, "close")
end)

test("a group by path; the last to leave removes the segment, also when collected", function()
    local path = os.tmpname()
    os.remove(path)
    local g = singleflight.open_shared(nil, { path = path })
    eq(g:run("k", function() return "by path" end), "by path", "value")
    check(exists(path), "no segment at " .. path)
    eq(g:close(), true, "close")
    check(not exists(path), "the segment outlived its last process")

    local name = fresh_name()
    local shm = "/dev/shm/libsingleflight." .. name
    collectgarbage(); collectgarbage()
    local groups = singleflight.live_groups()
    do
        local h = singleflight.open_shared(name)
        eq(h:run("k", function() return "v" end), "v", "value")
    end
    check(exists(shm), "no segment at " .. shm)
    collectgarbage(); collectgarbage()
    eq(singleflight.live_groups(), groups, "live groups")
    check(not exists(shm), "the collected group left its segment")
end)

T.run()
