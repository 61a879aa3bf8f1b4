#!/usr/bin/env bash
# c1m.sh [CONNS]: a million streams on this box with one command, and what
# holding and serving them costs. Bounded: every step has a timeout, and
# everything it started is stopped on exit (also on Ctrl-C).
#
#   cargo build --release --workspace
#   loadtest/c1m.sh              # 1,000,000 streams; ~6 minutes here
#   loadtest/c1m.sh 100000       # a smaller point of the same curve
#
# 1. A redis-server of its own (free port, temp dir, AOF everysec).
# 2. `haoshuo --processes auto --max-conns CONNS+1000 --redis ...` (room for
#    the senders' connections beside the streams): the supervisor
#    starts as many server processes as the open-file limit asks for (one
#    holds ~19,500 streams here), sharing one listen address; per process
#    THREADS reactors, WORKERS workers and REDIS_POOL Redis connections.
# 3. `haoshuo-load chat --users CONNS --idle-secs IDLE --rate RATE --secs
#    SECS`: CONNS fresh users (bulk /admin/users), one stream each, spread
#    over enough client worker processes with their own 127.0.0.x source
#    addresses; held IDLE seconds with no traffic (the server's and the
#    machine's CPU, server RSS, TCP buffers and kernel slab per stream),
#    then RATE single-chat messages per second for SECS seconds between
#    them (any CONNS in a row reach every user once), with latency
#    percentiles, /p answer times and the delivery check (nothing lost,
#    duplicated or out of order).
#
# Before a big run it raises the kernel settings the load client names as
# short (somaxconn, tcp_max_syn_backlog, ip_local_port_range from 10000, above
# the fixed ports of the bench scripts) when run as
# root and RAISE_SYSCTLS=1 (the default); otherwise it only prints them.
#
# Also in OUT: redis.tsv, Redis's commands, CPU and RSS every 5 s.
#
# NETNS=1 (as root) runs the whole thing in a network namespace of its own,
# made and removed by this script: its own loopback, socket table and
# per-namespace sysctls, so the box's other sockets and settings are left
# alone (it did not change what this VM's own agent costs: docs/c1m.md).
#
# Environment: IDLE (60) RATE (10000) SECS (60) THREADS (1) WORKERS (2)
# EXTRA (more haoshuo flags, e.g. "--heartbeat 60") NETNS (0) CONNECT_WAIT
# (seconds the streams get to come up, 600)
# REDIS_POOL (1) PROCESSES (server processes, default auto) INFLIGHT (new
# streams in flight over all client workers, 25000) PROCS (client
# worker processes; default: as many as the
# open-file limit needs) SENDERS (keep-alive connections posting the
# messages, closed loop each: 4) RAISE_SYSCTLS (1) OUT (default: a new
# /tmp/c1m.* dir, which keeps the logs and the table) HAOSHUO_BIN
# HAOSHUO_LOAD. Exit status: haoshuo-load's (0 all good, 2 the check failed).
set -uo pipefail
CONNS=${1:-1000000}
root=$(cd "$(dirname "$0")/.." && pwd)
if [ "${NETNS:-0}" = 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "c1m.sh: NETNS=1 needs root (ip netns add)" >&2; exit 1; }
  ns=haoshuo-c1m-$$
  ip netns add "$ns" || exit 1
  trap 'ip netns del "$ns"' EXIT
  ip netns exec "$ns" ip link set lo up
  echo "c1m.sh: in network namespace $ns"
  NETNS=0 ip netns exec "$ns" "$0" "$@"
  exit $?
fi
BIN=${HAOSHUO_BIN:-$root/target/release/haoshuo}
LOAD=${HAOSHUO_LOAD:-$root/target/release/haoshuo-load}
IDLE=${IDLE:-60} RATE=${RATE:-10000} SECS=${SECS:-60}
THREADS=${THREADS:-1} WORKERS=${WORKERS:-2} REDIS_POOL=${REDIS_POOL:-1}
RAISE_SYSCTLS=${RAISE_SYSCTLS:-1}
OUT=${OUT:-$(mktemp -d /tmp/c1m.XXXXXX)}
# shellcheck source=bench/lib.sh
. "$root/loadtest/bench/lib.sh"
trap 'stop_all' EXIT
trap 'exit 130' INT TERM

for f in "$BIN" "$LOAD"; do
  [ -x "$f" ] || { echo "c1m.sh: $f missing (cargo build --release --workspace)" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "c1m.sh: redis-server not found (apt-get install redis-server)" >&2; exit 1; }
mkdir -p "$OUT"
ulimit -n "$(ulimit -Hn)"

if [ "$RAISE_SYSCTLS" = 1 ] && [ "$(id -u)" = 0 ]; then
  for kv in net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 \
            "net.ipv4.ip_local_port_range=10000 65535"; do
    k=${kv%%=*} want=${kv#*=}
    have=$(sysctl -n "$k" | tr -s '\t ' ' ')
    if [ "$have" != "$want" ]; then
      log "sysctl $k: $have -> $want"
      sysctl -qw "$k=$want"
    fi
  done
fi

# wait_for CMD SECS: polls a shell command until it succeeds.
wait_for() {
  local i
  for i in $(seq $(($2 * 10))); do eval "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "c1m.sh: timed out: $1" >&2; exit 1
}

rport=$(free_port) port=$(free_port) admin=$(free_port)
redis-server --bind 127.0.0.1 --port "$rport" --save "" --appendonly yes \
  --appendfsync everysec --dir "$OUT" > "$OUT/redis.log" 2>&1 &
RP=$!
PIDS+=("$RP")
wait_for "redis-cli -p $rport ping" 10

# shellcheck disable=SC2086 # EXTRA is split into flags on purpose
"$BIN" --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
  --redis "redis://127.0.0.1:$rport/0" --processes "${PROCESSES:-auto}" --max-conns "$((CONNS + 1000))" \
  --threads "$THREADS" --workers "$WORKERS" --redis-pool "$REDIS_POOL" \
  --auth-per-ip 0 ${EXTRA:-} > "$OUT/server.log" 2>&1 &
SUP=$!
PIDS+=("$SUP")
wait_for "grep -q 'processes serving' '$OUT/server.log'" 10
head -1 "$OUT/server.log"
n=$(sed -n 's/.*: \([0-9]*\) processes serving.*/\1/p' "$OUT/server.log")
wait_for "[ \$(grep -c 'listening on' '$OUT/server.log') -ge $n ]" 60

log "redis-server on $rport, $n server processes on $port (admin $admin); logs and the table in $OUT"
# Redis's own account every 5 s (unix time, commands processed so far, its
# CPU seconds so far, its RSS): redis.tsv shows what each phase costs it.
(
  while redis-cli -p "$rport" ping >/dev/null 2>&1; do
    redis-cli -p "$rport" info all 2>/dev/null | tr -d '\r' | awk -F: -v t="$(date +%s)" '
      /^total_commands_processed:/ {c = $2} /^used_cpu_sys:/ {s = $2}
      /^used_cpu_user:/ {u = $2} /^used_memory_rss:/ {m = $2}
      END {printf "%s\t%s\t%.2f\t%.1f\n", t, c, s + u, m / 1048576}'
    sleep 5
  done
) > "$OUT/redis.tsv" 2>/dev/null &
PIDS+=($!)
procs=()
[ -n "${PROCS:-}" ] && procs=(--procs "$PROCS")
# New streams in flight over all client workers: each costs the server a
# token read and a route + page round trip to Redis, and a million at
# once (2,000 per worker x 53) drove subscribes past the client's connect
# timeout, whose retries kept the storm going. INFLIGHT in all, shared.
workers=$(( (CONNS + 18999) / 19000 ))  # haoshuo-load's PER_PROC
per_worker=$(( ${INFLIGHT:-25000} / workers ))
[ "$per_worker" -ge 50 ] || per_worker=50
timeout $((IDLE + SECS * 3 + ${CONNECT_WAIT:-600} + 600)) "$LOAD" chat --users "$CONNS" --idle-secs "$IDLE" \
  --rate "$RATE" --secs "$SECS" --target "127.0.0.1:$port" --admin "127.0.0.1:$admin" \
  --server-pid "$SUP" "${procs[@]}" --senders "${SENDERS:-4}" --max-inflight "$per_worker" --connect-wait "${CONNECT_WAIT:-600}" > "$OUT/table.txt" 2> "$OUT/load.log"
rc=$?
echo "redis_cpu_secs               $(awk -v t="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / t}' "/proc/$RP/stat")" >> "$OUT/table.txt"
echo "redis_rss_mib                $(awk -F: '/^used_memory_rss:/ {printf "%.1f", $2 / 1048576}' <(redis-cli -p "$rport" info memory | tr -d '\r'))" >> "$OUT/table.txt"
cat "$OUT/table.txt"
[ "$rc" = 0 ] || tail -5 "$OUT/load.log" >&2
exit "$rc"
