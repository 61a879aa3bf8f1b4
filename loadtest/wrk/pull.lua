-- wrk: POST /pull, rotating over the users (each asks for its own inbox:
-- up to --page-size un-acked messages, so run p.lua first for full pages).
--   WRK_USERS=users.lua wrk -t2 -c100 -d10s -s pull.lua http://127.0.0.1:2012
local C = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
local cfg = C.load_users()
local users = cfg.users
if #users < 1 then error("pull.lua needs users in the users file") end

C.rotate("/pull", users, function(u)
  return string.format('{"appid":%s,"uid":%d,"token":%s}', C.jstr(cfg.appid), u.uid, C.jstr(u.token))
end)
