#!/usr/bin/env bash
# fanout_cpu.sh BIN MEMBERS MSGS RATE
#
# One fresh server (BIN, embedded store, temp dir, loopback ports 2201/2202),
# one `haoshuo-load fanout` run against it (a group of MEMBERS streaming
# members, MSGS group messages at RATE/s), and the server's CPU time over the
# run from /proc (utime + stime): divide by the deliveries for CPU per
# delivery. Limits that would refuse the load itself are lifted (group size,
# body size for /gre, send rate, login rate): LIFT holds those flags, for
# binaries older than them, e.g. LIFT="--max-body 1048576". Prints the CPU
# seconds, then the client's table. Run it for two binaries back to back to
# compare them.
set -euo pipefail
BIN=$1 M=$2 N=$3 R=$4
root=$(cd "$(dirname "$0")/../.." && pwd)
LOAD=${HAOSHUO_LOAD:-$root/target/release/haoshuo-load}
LIFT=${LIFT:---max-group-members 20000 --max-body 1048576 --send-rate 0 --auth-per-ip 0}
d=$(mktemp -d)
trap 'kill $P 2>/dev/null || true; rm -rf "$d"' EXIT
# shellcheck disable=SC2086 # LIFT is a list of flags
"$BIN" --listen 127.0.0.1:2201 --admin-listen 127.0.0.1:2202 --data-dir "$d" $LIFT \
  > "$d/log" 2>&1 &
P=$!
for _ in $(seq 50); do grep -q "listening on" "$d/log" 2>/dev/null && break; sleep 0.1; done
cpu() { awk '{print $14 + $15}' "/proc/$P/stat"; }
t0=$(cpu)
rc=0
"$LOAD" fanout --members "$M" --msgs "$N" --rate "$R" \
  --target 127.0.0.1:2201 --admin 127.0.0.1:2202 > "$d/out" 2> "$d/err" || rc=$?
t1=$(cpu)
echo "exit=$rc server_cpu_s=$(awk -v a="$t0" -v b="$t1" -v t="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) / t}')"
cat "$d/out"
[ "$rc" = 0 ] || tail -5 "$d/err" >&2
