-- wrk: POST /login with username + password, rotating over the users made
-- with /re by setup.sh. Passwords are argon2id hashes: each /login costs
-- tens of ms of CPU on purpose, so expect tens to a few hundred per second.
--   WRK_USERS=users.lua wrk -t2 -c8 -d10s -s login.lua http://127.0.0.1:2012
local C = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
local cfg = C.load_users()
local login = cfg.login
local n = #login
if n < 1 then error("login.lua needs login users (setup.sh LOGIN_N > 0)") end

local reqs = {}
local i = 0

setup = C.setup
done = C.done

function init(args)
  for k = 1, n do
    local u = login[k]
    reqs[k] = C.post("/login", string.format('{"appid":%s,"username":%s,"pass":%s}',
      C.jstr(cfg.appid), C.jstr(u.username), C.jstr(u.pass)))
  end
  i = (tid or 0) % n
end

function request()
  i = i % n + 1
  return reqs[i]
end
