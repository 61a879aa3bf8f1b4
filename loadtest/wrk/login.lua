-- wrk: POST /login with username + password, rotating over the users made
-- with /re by setup.sh. Passwords are argon2id hashes: each /login costs
-- tens of ms of CPU on purpose, so expect tens to a few hundred per second.
--   WRK_USERS=users.lua wrk -t2 -c8 -d10s -s login.lua http://127.0.0.1:2012
local C = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
local cfg = C.load_users()
local login = cfg.login
if #login < 1 then error("login.lua needs login users (setup.sh LOGIN_N > 0)") end

C.rotate("/login", login, function(u)
  return string.format('{"appid":%s,"username":%s,"pass":%s}',
    C.jstr(cfg.appid), C.jstr(u.username), C.jstr(u.pass))
end)
