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

-- User k sends to user k+1 (wrapping).
C.rotate("/p", users, function(from, k)
  local to = users[k % n + 1]
  return string.format(
    '{"appid":%s,"fromid":%d,"datatype":1,"toid":%d,"content":%s,"token":%s,"restart":"all"}',
    C.jstr(cfg.appid), from.uid, to.uid, C.jstr(content), C.jstr(from.token))
end)
