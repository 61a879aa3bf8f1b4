#!/usr/bin/env bash
# fanout_cpu.sh BIN MEMBERS MSGS RATE
#
# One fresh server (BIN, embedded store, temp dir, free loopback ports),
# one `haoshuo-load fanout` run against it (a group of MEMBERS streaming
# members, MSGS group messages at RATE/s), and the server's CPU time over the
# run from /proc (utime + stime): divide by the deliveries for CPU per
# delivery. The client's table also has the server's CPU while sending and
# draining alone (server_cpu_*), without provisioning and connecting. Limits that would refuse the load itself are lifted (group size,
# body size for /gre, send rate, login rate): LIFT holds those flags, for
# binaries older than them, e.g. LIFT="--max-body 1048576". Prints the CPU
# seconds, then the client's table. Run it for two binaries back to back to
# compare them. STORE=redis runs the server on a redis-server started on a
# free port in the temp dir (AOF, everysec), and also prints that
# redis-server's CPU seconds over the run; STORE=cluster on a Redis Cluster
# of three masters (AOF, everysec) and all their CPU seconds.
set -euo pipefail
BIN=$1 M=$2 N=$3 R=$4
root=$(cd "$(dirname "$0")/../.." && pwd)
LOAD=${HAOSHUO_LOAD:-$root/target/release/haoshuo-load}
LIFT=${LIFT:---max-group-members 20000 --max-body 1048576 --send-rate 0 --auth-per-ip 0}
STORE=${STORE:-embedded}
d=$(mktemp -d)
P='' RP=''
# log, PIDS, stop_all, free_port, start_cluster
. "$root/loadtest/bench/lib.sh"
trap 'kill $P $RP 2>/dev/null || true; stop_all; wait 2>/dev/null; rm -rf "$d"' EXIT
store=(--data-dir "$d")
if [ "$STORE" = redis ]; then
  rport=$(free_port)
  redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly yes \
    --appendfsync everysec --dir "$d" > "$d/redis.log" 2>&1 &
  RP=$!
  for _ in $(seq 50); do redis-cli -p "$rport" ping > /dev/null 2>&1 && break; sleep 0.1; done
  store=(--redis "redis://127.0.0.1:$rport/0")
elif [ "$STORE" = cluster ]; then
  start_cluster "$d/cluster" 3
  RP="${CLUSTER_PIDS[*]}"
  store=(--redis "$CLUSTER_URL")
fi
# Port 0: the server picks free ports and names them in its start line.
# shellcheck disable=SC2086 # LIFT is a list of flags
"$BIN" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 "${store[@]}" $LIFT \
  > "$d/log" 2>&1 &
P=$!
for _ in $(seq 50); do grep -q "listening on" "$d/log" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$d/log" | head -1)
admin=$(sed -n 's/.*admin=\([0-9.:]*\).*/\1/p' "$d/log" | head -1)
if [ -z "$addr" ] || [ -z "$admin" ]; then
  echo "fanout_cpu.sh: haoshuo did not start:" >&2
  cat "$d/log" >&2
  exit 1
fi
# cpu PID...: their user + system ticks, summed.
cpu() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
secs() { awk -v a="$1" -v b="$2" -v t="$(getconf CLK_TCK)" 'BEGIN {printf "%.2f", (b - a) / t}'; }
# shellcheck disable=SC2086 # RP: the store's pids, a list
t0=$(cpu $P) r0=$( [ -n "$RP" ] && cpu $RP || echo 0)
rc=0
"$LOAD" fanout --members "$M" --msgs "$N" --rate "$R" \
  --target "$addr" --admin "$admin" --server-pid "$P" \
  > "$d/out" 2> "$d/err" || rc=$?
# shellcheck disable=SC2086
t1=$(cpu $P) r1=$( [ -n "$RP" ] && cpu $RP || echo 0)
echo "exit=$rc server_cpu_s=$(secs "$t0" "$t1") redis_cpu_s=$(secs "$r0" "$r1")"
cat "$d/out"
[ "$rc" = 0 ] || tail -5 "$d/err" >&2
