#!/usr/bin/env bash
# provision.sh BIN COUNT: bulk provisioning speed. Starts a redis-server
# (port 2213, AOF everysec, temp dir) and BIN on it (ports 2211/2212),
# creates COUNT users with tokens through POST /admin/users in batches of
# 10,000, and prints users/s; then the same with the embedded store. Every
# process it starts is stopped on exit.
set -euo pipefail
BIN=$1 COUNT=$2
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=lib.sh
. "$root/loadtest/bench/lib.sh"
d=$(mktemp -d)
trap 'stop_all; rm -rf "$d"' EXIT

run() { # STORE-FLAGS...: start BIN, provision, print the rate, stop it
  "$BIN" --listen 127.0.0.1:2211 --admin-listen 127.0.0.1:2212 "$@" > "$d/server.log" 2>&1 &
  local p=$!
  PIDS+=("$p")
  for _ in $(seq 50); do grep -q "listening on" "$d/server.log" 2>/dev/null && break; sleep 0.1; done
  local t0 t1 done=0 b=0
  t0=$(date +%s.%N)
  while [ "$done" -lt "$COUNT" ]; do
    local n=$((COUNT - done < 10000 ? COUNT - done : 10000))
    curl -sf -o /dev/null -H 'Content-Type: application/json' \
      -d "{\"appid\":\"bench\",\"prefix\":\"b$b-\",\"count\":$n}" \
      http://127.0.0.1:2212/admin/users
    done=$((done + n)) b=$((b + 1))
  done
  t1=$(date +%s.%N)
  awk -v n="$COUNT" -v a="$t0" -v b="$t1" -v s="$1 $2" \
    'BEGIN {printf "%-40s %d users in %.2f s: %.0f users/s\n", s, n, b - a, n / (b - a)}'
  stop "$p" || true
}

redis-server --bind 127.0.0.1 --port 2213 --save "" --appendonly yes \
  --appendfsync everysec --dir "$d" > "$d/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p 2213 ping > /dev/null 2>&1 && break; sleep 0.1; done
run --redis redis://127.0.0.1:2213/0
run --data-dir "$d/data"
