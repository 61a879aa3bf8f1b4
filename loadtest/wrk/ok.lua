-- wrk: plain GET of the URL given (e.g. nginx's /ok), only adding the
-- machine-readable WRK_JSON line at the end. No users needed.
--   wrk -t2 -c100 -d10s -s ok.lua http://127.0.0.1:18080/ok
local C = dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")
done = C.done
