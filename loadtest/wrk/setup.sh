#!/usr/bin/env bash
# Creates the users the wrk scripts need and writes them to a Lua file.
#
#   loadtest/wrk/setup.sh                       # 1000 bulk users + 8 login users
#   N=5000 LOGIN_N=16 OUT=/tmp/users.lua loadtest/wrk/setup.sh
#
# Needs a haoshuo server started with an admin listener, e.g.
#   haoshuo --listen 127.0.0.1:2012 --admin-listen 127.0.0.1:2013
#
# Environment (all optional):
#   TARGET    public address            (127.0.0.1:2012)
#   ADMIN     admin listener address    (127.0.0.1:2013)
#   ADMIN_KEY X-Admin-Key, if the server wants one
#   APPID     tenant                    (bench)
#   N         bulk users via POST /admin/users (no password; token returned) (1000)
#   LOGIN_N   users via /re with a password, for login.lua (8; each /re and
#             /login costs an argon2id hash on the server, so keep it small)
#   PASS      their password            (pw)
#   PREFIX    username prefix; default unique per run (w<unix time>-), so
#             reruns against the same data never collide (409)
#   OUT       the Lua file to write     (users.lua beside this script)
#   JSON_OUT  also write the users as JSON here (for loadtest/bench/send_p.py)
#
# Output (OUT): a Lua chunk returning
#   { appid = "...", users = "uid token\n...", login = "uid username pass\n..." }
# which common.lua parses; wrk scripts pick it up from $WRK_USERS.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
TARGET=${TARGET:-127.0.0.1:2012}
ADMIN=${ADMIN:-127.0.0.1:2013}
APPID=${APPID:-bench}
N=${N:-1000}
LOGIN_N=${LOGIN_N:-8}
PASS=${PASS:-pw}
PREFIX=${PREFIX:-w$(date +%s%N | cut -c1-13)-}
OUT=${OUT:-$here/users.lua}
JSON_OUT=${JSON_OUT:-}
ADMIN_KEY=${ADMIN_KEY:-}

for t in curl python3; do
  command -v "$t" >/dev/null || { echo "setup.sh: $t is needed" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Bulk users, at most 10,000 per admin call.
hdr=(-H 'Content-Type: application/json')
[ -n "$ADMIN_KEY" ] && hdr+=(-H "X-Admin-Key: $ADMIN_KEY")
left=$N page=0
while [ "$left" -gt 0 ]; do
  count=$(( left < 10000 ? left : 10000 ))
  body=$(printf '{"appid":"%s","prefix":"%s%d-","count":%d}' "$APPID" "$PREFIX" "$page" "$count")
  code=$(curl -s -o "$tmp/admin.$page.json" -w '%{http_code}' --max-time 120 \
    "${hdr[@]}" -d "$body" "http://$ADMIN/admin/users") || code=000
  if [ "$code" != 200 ]; then
    echo "setup.sh: POST http://$ADMIN/admin/users -> HTTP $code: $(cat "$tmp/admin.$page.json" 2>/dev/null)" >&2
    exit 1
  fi
  left=$(( left - count )) page=$(( page + 1 ))
done

# Users with a password, for /login (slow on purpose: argon2id).
: > "$tmp/login.txt"
for i in $(seq 0 $(( LOGIN_N - 1 ))); do
  name="${PREFIX}l$i"
  resp=$(curl -s --max-time 30 "http://$TARGET/re" \
    --data-urlencode "haoshuo={\"appid\":\"$APPID\",\"username\":\"$name\",\"pass\":\"$PASS\"}")
  uid=$(printf '%s' "$resp" | python3 -c 'import json,sys; print(json.load(sys.stdin)["uid"])' 2>/dev/null) || {
    echo "setup.sh: /re $name -> $resp" >&2; exit 1; }
  echo "$uid $name $PASS" >> "$tmp/login.txt"
done

python3 - "$tmp" "$APPID" "$OUT" "$JSON_OUT" <<'PY'
import glob, json, os, sys
tmp, appid, out, json_out = sys.argv[1:5]
users = []
for f in sorted(glob.glob(os.path.join(tmp, "admin.*.json")),
                key=lambda p: int(p.rsplit(".", 2)[1])):
    users += json.load(open(f))["users"]
login = [l.split() for l in open(os.path.join(tmp, "login.txt")) if l.strip()]
for u in users:
    assert str(u["uid"]).isdigit() and all(c in "0123456789abcdef" for c in u["token"])
def long_string(s):
    return "[[\n" + s + "]]"
with open(out + ".tmp", "w") as f:
    f.write("-- written by loadtest/wrk/setup.sh: %d users, %d login users\n" % (len(users), len(login)))
    f.write("return {\n  appid = %s,\n" % json.dumps(appid))
    f.write("  users = " + long_string("".join("%s %s\n" % (u["uid"], u["token"]) for u in users)) + ",\n")
    f.write("  login = " + long_string("".join("%s %s %s\n" % tuple(l) for l in login)) + ",\n}\n")
os.replace(out + ".tmp", out)
if json_out:
    with open(json_out, "w") as f:
        json.dump({"appid": appid,
                   "users": [{"uid": int(u["uid"]), "username": u["username"], "token": u["token"]} for u in users],
                   "login": [{"uid": int(a), "username": b, "pass": c} for a, b, c in login]}, f)
print("setup.sh: wrote %s (%d users, %d login users)" % (out, len(users), len(login)), file=sys.stderr)
PY
