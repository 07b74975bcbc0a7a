-- The application of the nginx test (test.py): one shared group for every
-- worker, opened in init_worker_by_lua, and these locations:
--
--   /hot    says "worker <pid>" at once (flushed: the client learns which
--           worker took it), then runs the key "hot" in the shared group;
--           the leader's fn counts its runs in a shared dict and holds the
--           flight until the client said how many requests it sent (/go)
--           and every other one has joined.  Then it says the value and
--           how this request waited.
--   /doomed as /hot on the key "doomed", but the first flight's fn never
--           returns: the test kills its worker with SIGKILL.  Later flights
--           return at once.  Says the value, or the error's name.
--   /ping   "worker <pid>": answered only by a worker whose event loop runs
--   /go     ?n=N: N requests of /hot were sent; the leader may finish
--   /count  fn's executions, the worker leading "doomed" and the group's
--           counters, as "name value" lines
--
-- How followers wait is counted per request: cosockets made (each doorbell
-- knock makes one) and ngx.sleep calls, through wrappers installed in each
-- worker.  A follower must knock and never sleep.

local singleflight = require("singleflight")

local M = {}
local group

-- Bounds the leader's handshake: a lost request fails the test instead of
-- hanging it.
local HANDSHAKE_SECONDS = 60

local function count(what)
    local ctx = ngx.ctx
    ctx[what] = (ctx[what] or 0) + 1
end

function M.init_worker(name, library)
    group = singleflight.open_shared(name, { library = library })
    local tcp, sleep = ngx.socket.tcp, ngx.sleep
    ngx.socket.tcp = function(...)
        count("sockets")
        return tcp(...)
    end
    ngx.sleep = function(...)
        count("sleeps")
        return sleep(...)
    end
end

function M.exit_worker()
    if group then group:close() end
end

function M.hot()
    local dict = ngx.shared.stampede
    ngx.say("worker ", ngx.worker.pid())
    ngx.flush(true)
    local value, shared = group:run("hot", function()
        ngx.ctx.led = true
        dict:incr("executions", 1, 0)
        local deadline = ngx.now() + HANDSHAKE_SECONDS
        while true do
            local n = dict:get("go")
            if n and group:stats().followers >= n - 1 then break end
            if ngx.now() > deadline then error("the handshake never completed") end
            -- The test's own wait, in the leader's request only (its
            -- sleeps are not a follower's).
            ngx.sleep(0.005)
            ngx.update_time()
        end
        return ("value of worker %d, flight %d"):format(ngx.worker.pid(), dict:get("executions"))
    end)
    local ctx = ngx.ctx
    ngx.say("value ", value)
    ngx.say("shared ", tostring(shared))
    ngx.say("led ", tostring(ctx.led == true))
    ngx.say("sockets ", ctx.sockets or 0)
    ngx.say("sleeps ", ctx.sleeps or 0)
end

function M.doomed()
    local dict = ngx.shared.stampede
    ngx.say("worker ", ngx.worker.pid())
    ngx.flush(true)
    local ok, value = pcall(group.run, group, "doomed", function()
        ngx.ctx.led = true
        local run = dict:incr("doomed", 1, 0)
        dict:set("doomed_leader", ngx.worker.pid())
        if run == 1 then
            local deadline = ngx.now() + HANDSHAKE_SECONDS
            while ngx.now() < deadline do
                ngx.sleep(0.05) -- the leader's own wait, for the kill
                ngx.update_time()
            end
            error("this worker was never killed")
        end
        return "flight " .. run
    end)
    if ok then
        ngx.say("value ", value)
    else
        ngx.say("error ", singleflight.is_error(value) and value.name or tostring(value))
    end
    ngx.say("led ", tostring(ngx.ctx.led == true))
end

function M.ping()
    ngx.say("worker ", ngx.worker.pid())
end

function M.go()
    local n = tonumber(ngx.var.arg_n)
    if not n then return ngx.exit(400) end
    ngx.shared.stampede:set("go", n)
    ngx.say("ok")
end

function M.count()
    local s = group:stats()
    local dict = ngx.shared.stampede
    ngx.say("executions ", dict:get("executions") or 0)
    ngx.say("doomed_leader ", dict:get("doomed_leader") or 0)
    for _, k in ipairs({ "leaders", "followers", "in_flight", "processes", "panics", "goexits", "cancels" }) do
        ngx.say(k, " ", s[k])
    end
end

return M
