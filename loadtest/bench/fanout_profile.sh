#!/usr/bin/env bash
# fanout_profile.sh MEMBERS MSGS RATE [OUT]
#
# Where the server's CPU goes during a group fan-out: one fresh server
# (target/release/haoshuo, embedded store in a temp dir, free loopback
# ports), `perf record -g` attached to it for the whole `haoshuo-load
# fanout` run (a group of MEMBERS streaming members, MSGS group messages at
# RATE/s), then the top of `perf report` by symbol (self time, children
# folded in) into OUT (default a new /tmp/fanout-profile.* dir): perf.data,
# report.txt (flat, self), callers.txt (with children), load.txt (the
# client's table). Needs linux-perf (apt-get install linux-perf) and root
# or kernel.perf_event_paranoid <= 1. Set STORE=redis to run on a
# redis-server this script starts on a free port.
set -euo pipefail
M=$1 N=$2 R=$3
root=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=lib.sh
. "$root/loadtest/bench/lib.sh"
BIN=${HAOSHUO_BIN:-$root/target/release/haoshuo}
LOAD=${HAOSHUO_LOAD:-$root/target/release/haoshuo-load}
LIFT=${LIFT:---max-group-members 20000 --max-body 1048576 --send-rate 0 --auth-per-ip 0}
OUT=${4:-$(mktemp -d /tmp/fanout-profile.XXXXXX)}
STORE=${STORE:-embedded}
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"
d=$(mktemp -d)
trap 'stop_all; rm -rf "$d"' EXIT
# until CMD: waits up to 5 s for a shell command to succeed.
until_ok() { for _ in $(seq 50); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "timed out: $1" >&2; exit 1; }

port=$(free_port) admin=$(free_port)
store_flags=(--data-dir "$d/data")
if [ "$STORE" = redis ]; then
  rport=$(free_port)
  redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly yes \
    --appendfsync everysec --dir "$d" > "$d/redis.log" 2>&1 &
  PIDS+=($!)
  until_ok "redis-cli -p $rport ping"
  store_flags=(--redis "redis://127.0.0.1:$rport/0")
fi
# shellcheck disable=SC2086 # LIFT is a list of flags
"$BIN" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
  "${store_flags[@]}" $LIFT > "$d/server.log" 2>&1 &
P=$!
PIDS+=("$P")
until_ok "grep -q 'listening on' $d/server.log"

perf record -g -F 999 -o "$OUT/perf.data" -p "$P" > "$d/perf.log" 2>&1 &
PERF=$!
"$LOAD" fanout --members "$M" --msgs "$N" --rate "$R" \
  --target "127.0.0.1:$port" --admin "127.0.0.1:$admin" > "$OUT/load.txt"
kill -INT "$PERF"
wait "$PERF" || true
perf report -i "$OUT/perf.data" --no-children --sort symbol --stdio 2>/dev/null \
  | grep -v '^$' | grep -v '^#' | grep '%' | head -40 > "$OUT/report.txt"
perf report -i "$OUT/perf.data" --children --sort symbol --stdio -g none 2>/dev/null \
  | grep -v '^$' | grep -v '^#' | grep '%' | head -60 > "$OUT/callers.txt"
cat "$OUT/load.txt"
echo "--- self time, top 40 ($OUT/report.txt) ---"
cat "$OUT/report.txt"
