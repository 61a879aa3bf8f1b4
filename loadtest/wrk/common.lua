-- Shared helpers for the haoshuo wrk scripts (loaded with dofile by p.lua,
-- pull.lua, login.lua, ok.lua).
--
-- Users come from the file named by $WRK_USERS (default users.lua beside
-- this file), written by setup.sh. That file returns
--   { appid = "bench", users = "uid token\n...", login = "uid username pass\n..." }
-- (newline-separated records in long strings rather than Lua tables, so
-- tens of thousands of users do not hit LuaJIT's constant limits).

local M = {}

M.dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"

function M.load_users()
  local path = os.getenv("WRK_USERS") or (M.dir .. "users.lua")
  local ok, cfg = pcall(dofile, path)
  if not ok then
    error("cannot load users from " .. path .. " (run setup.sh first): " .. tostring(cfg))
  end
  local users, login = {}, {}
  for uid, token in (cfg.users or ""):gmatch("(%d+) (%x+)") do
    users[#users + 1] = { uid = tonumber(uid), token = token }
  end
  for uid, name, pass in (cfg.login or ""):gmatch("(%d+) (%S+) (%S+)") do
    login[#login + 1] = { uid = tonumber(uid), username = name, pass = pass }
  end
  return { appid = cfg.appid or "bench", users = users, login = login }
end

-- application/x-www-form-urlencoded value encoding.
function M.urlencode(s)
  return (s:gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

-- A JSON string literal (enough for the ASCII values used here).
function M.jstr(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", string.byte(c))
  end) .. '"'
end

-- One POST with body haoshuo=<urlencoded json>, pre-formatted.
function M.post(path, json)
  return wrk.format("POST", path,
    { ["Content-Type"] = "application/x-www-form-urlencoded" },
    "haoshuo=" .. M.urlencode(json))
end

-- Thread numbering: setup() runs once per thread in the main Lua state and
-- hands each thread its index, so threads start at different users.
local nthreads = 0
function M.setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end

-- Installs wrk's hooks for a script that POSTs to `path` one prebuilt
-- request per entry of `list` (its JSON built by `body(entry, k)` once, in
-- init), rotating over them on every request; the threads start spread over
-- the list. wrk runs each thread in its own Lua state, so `reqs` and `i` are
-- per thread.
function M.rotate(path, list, body)
  local reqs, i, n = {}, 0, #list
  setup = M.setup
  done = M.done
  function init(args)
    for k = 1, n do
      reqs[k] = M.post(path, body(list[k], k))
    end
    i = math.floor((tid or 0) * n / (tonumber(os.getenv("WRK_THREADS")) or 2)) % n
  end
  function request()
    i = i % n + 1
    return reqs[i]
  end
end

-- done(): wrk's normal output, plus one machine-readable line for run.sh.
function M.done(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "WRK_JSON {\"requests\":%d,\"duration_s\":%.3f,\"rps\":%.1f,\"bytes\":%d," ..
    "\"non2xx\":%d,\"err_connect\":%d,\"err_read\":%d,\"err_write\":%d,\"err_timeout\":%d," ..
    "\"lat_mean_us\":%.1f,\"lat_p50_us\":%d,\"lat_p90_us\":%d,\"lat_p99_us\":%d," ..
    "\"lat_p999_us\":%d,\"lat_max_us\":%d}\n",
    summary.requests, secs, summary.requests / secs, summary.bytes,
    e.status, e.connect, e.read, e.write, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
end

return M
