-- wrk: single-chat sends, POST /p. User i sends to user i+1 (wrapping), the
-- sender rotating on every request; each thread starts at a different user.
--   WRK_USERS=users.lua wrk -t2 -c100 -d10s -s p.lua http://127.0.0.1:2012
-- Optional: WRK_CONTENT (message text, default "wrk bench message").
local C = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
local cfg = C.load_users()
local users = cfg.users
local n = #users
if n < 2 then error("p.lua needs at least 2 users in the users file") end
local content = os.getenv("WRK_CONTENT") or "wrk bench message"

local reqs = {}
local i = 0

setup = C.setup
done = C.done

function init(args)
  for k = 1, n do
    local from, to = users[k], users[k % n + 1]
    reqs[k] = C.post("/p", string.format(
      '{"appid":%s,"fromid":%d,"datatype":1,"toid":%d,"content":%s,"token":%s,"restart":"all"}',
      C.jstr(cfg.appid), from.uid, to.uid, C.jstr(content), C.jstr(from.token)))
  end
  -- spread the threads' starting points over the users
  i = math.floor((tid or 0) * n / (tonumber(os.getenv("WRK_THREADS")) or 2)) % n
end

function request()
  i = i % n + 1
  return reqs[i]
end
