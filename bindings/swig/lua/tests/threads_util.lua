-- Shared by the scripts sf_lua_threads runs: spin_until(what, cond) spins
-- until cond() is true, and fails the state after 20 s instead of hanging
-- (another state never doing its part is the bug it reports).  Load with
-- dofile from the script's own folder (these scripts are not on LUA_PATH).
local deadline = os.time() + 20
local M = {}

function M.spin_until(what, cond)
    while not cond() do
        if os.time() > deadline then error(what .. " never happened", 2) end
    end
end

-- Whether the 20 s have passed (for loops that do more than spin).
function M.expired()
    return os.time() > deadline
end

return M
