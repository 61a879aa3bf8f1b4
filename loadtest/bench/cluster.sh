#!/usr/bin/env bash
# haoshuo on one Redis and on a Redis Cluster of three masters, side by
# side in one run, on loopback, every step bounded in time:
#
#   cargo build --release
#   loadtest/bench/cluster.sh            # ~4 minutes on 2 cores
#   ROUNDS=1 WRK_DURATION=3s FANOUT_MEMBERS=300 loadtest/bench/cluster.sh
#
# 1. /p: one haoshuo on each store (both running all the while), wrk -t2
#    -c100 -d WRK_DURATION with loadtest/wrk/p.lua, ROUNDS rounds
#    alternating; requests/s, medians.
# 2. What a /p costs Redis: P_COUNT sequential /p (send_p.py) on each, with
#    Redis's commands (INFO stats total_commands_processed) and network bytes
#    (total_net_input_bytes + total_net_output_bytes) summed over its nodes
#    before and after, per /p. Idle traffic (presence, feeds) is included:
#    it is small beside P_COUNT sends.
# 3. Group fan-out: fanout_cpu.sh with STORE=redis and STORE=cluster, a group
#    of FANOUT_MEMBERS streaming members, FANOUT_MSGS messages at
#    FANOUT_RATE/s, ROUNDS rounds alternating: deliveries/s, server CPU per
#    delivery, and the Redis processes' CPU seconds.
#
# Prints a table (medians) and writes it, with every raw output, under
# RESULTS (default loadtest/bench/results/cluster-<date>-<git short sha>).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
sha=$(git rev-parse --short HEAD 2>/dev/null || echo nogit)
RESULTS=${RESULTS:-$here/results/cluster-$(date +%Y%m%d-%H%M%S)-$sha}
HAOSHUO=${HAOSHUO:-$root/target/release/haoshuo}
HAOSHUO_LOAD=${HAOSHUO_LOAD:-$root/target/release/haoshuo-load}
ROUNDS=${ROUNDS:-3}
WRK_DURATION=${WRK_DURATION:-8s}
P_COUNT=${P_COUNT:-2000}
FANOUT_MEMBERS=${FANOUT_MEMBERS:-2000}
FANOUT_MSGS=${FANOUT_MSGS:-20}
FANOUT_RATE=${FANOUT_RATE:-5}

# log, PIDS, stop, stop_all, free_port, start_cluster, cluster_ports
. "$here/lib.sh"
die() { log "FATAL: $*"; exit 1; }
for t in wrk redis-server redis-cli python3 timeout; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install -y wrk redis-server python3)"
done
[ -x "$HAOSHUO" ] && [ -x "$HAOSHUO_LOAD" ] || die "build first: cargo build --release"

mkdir -p "$RESULTS" || die "cannot create $RESULTS"
tmp=$(mktemp -d /tmp/haoshuo-cluster.XXXXXX)
# Copies, so a rebuild during the run does not change what is measured.
cp "$HAOSHUO" "$tmp/haoshuo" && cp "$HAOSHUO_LOAD" "$tmp/haoshuo-load"
trap 'stop_all; [ "${KEEP_TMP:-0}" = 1 ] || rm -rf "$tmp"' EXIT

rport=$(free_port)
mkdir -p "$tmp/single"
redis-server --port "$rport" --bind 127.0.0.1 --dir "$tmp/single" --save '' \
  --appendonly yes --appendfsync everysec --logfile "$tmp/single/redis.log" &
PIDS+=("$!")
for _ in $(seq 100); do [ "$(redis-cli -p "$rport" ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
single_url="redis://127.0.0.1:$rport/0"
start_cluster "$tmp/cluster" 3 || die "the cluster did not form"
log "one Redis on $rport; cluster $CLUSTER_URL"

# start NAME URL: a haoshuo on that Redis; sets ADDR_<NAME> ADMIN_<NAME>.
start() {
  local name=$1 url=$2 logf=$RESULTS/haoshuo-$1.log a=
  "$tmp/haoshuo" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --redis "$url" \
    --auth-per-ip 0 --login-per-user 0 --send-rate 0 > "$logf" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 100); do grep -q 'listening on' "$logf" 2>/dev/null && break; sleep 0.1; done
  a=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$logf" | head -1)
  [ -n "$a" ] || die "haoshuo on $name did not start: $(cat "$logf")"
  printf -v "ADDR_$name" '%s' "$a"
  printf -v "ADMIN_$name" '%s' "$(sed -n 's/.*admin=\([0-9.:]*\).*/\1/p' "$logf" | head -1)"
}
start single "$single_url"
start cluster "$CLUSTER_URL"
for s in single cluster; do
  a=ADDR_$s m=ADMIN_$s
  timeout 120 env TARGET="${!a}" ADMIN="${!m}" N=1000 LOGIN_N=0 OUT="$tmp/users-$s.lua" \
    JSON_OUT="$tmp/users-$s.json" "$root/loadtest/wrk/setup.sh" > "$RESULTS/setup-$s.txt" 2>&1 \
    || die "setup on $s failed: $(tail -3 "$RESULTS/setup-$s.txt")"
done

echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$RESULTS/load.txt"

# 1. /p under wrk, alternating.
for r in $(seq "$ROUNDS"); do
  for s in single cluster; do
    a=ADDR_$s
    WRK_USERS="$tmp/users-$s.lua" timeout 60 wrk -t2 -c100 -d"$WRK_DURATION" \
      -s "$root/loadtest/wrk/p.lua" "http://${!a}" > "$RESULTS/wrk-$s.$r.txt" 2>&1
    log "wrk $s round $r: $(grep Requests/sec "$RESULTS/wrk-$s.$r.txt")"
  done
done

# 2. Commands and bytes per /p.
# redis_totals URL: commands, then bytes in + out, summed over its nodes.
redis_totals() {
  local c=0 b=0 p info
  for p in $(cluster_ports "$1"); do
    info=$(redis-cli -p "$p" INFO stats | tr -d '\r')
    c=$((c + $(echo "$info" | sed -n 's/^total_commands_processed://p')))
    b=$((b + $(echo "$info" | sed -n 's/^total_net_input_bytes://p') + $(echo "$info" | sed -n 's/^total_net_output_bytes://p')))
  done
  echo "$c $b"
}
for s in single cluster; do
  a=ADDR_$s
  url=$single_url
  [ "$s" = cluster ] && url=$CLUSTER_URL
  read -r c0 b0 <<< "$(redis_totals "$url")"
  timeout 300 python3 "$here/send_p.py" --addr "${!a}" --users "$tmp/users-$s.json" \
    --count "$P_COUNT" > "$RESULTS/send_p-$s.json" 2>&1 || die "send_p on $s failed"
  read -r c1 b1 <<< "$(redis_totals "$url")"
  echo "$s $(( (c1 - c0) * 100 / P_COUNT )) $(( (b1 - b0) / P_COUNT ))" >> "$RESULTS/per_p.txt"
done

# 3. Group fan-out, alternating.
for r in $(seq "$ROUNDS"); do
  for s in redis cluster; do
    out=$RESULTS/fanout-$s.$r.txt
    # A run that ended without its table (seen once in a while, with
    # nothing on stderr either) is run again, once; the first try is kept.
    for try in 1 2; do
      STORE=$s HAOSHUO_LOAD="$tmp/haoshuo-load" timeout 300 "$here/fanout_cpu.sh" "$tmp/haoshuo" \
        "$FANOUT_MEMBERS" "$FANOUT_MSGS" "$FANOUT_RATE" > "$out" 2>&1
      rc=$?
      grep -q '^check' "$out" && break
      log "fanout $s round $r try $try ended (exit $rc) without a table; $( [ $try = 1 ] && echo again)"
      cp "$out" "$out.try$try"
    done
    log "fanout $s round $r: $(grep -E '^(check|deliveries_per_sec)' "$out" | tr -s ' ' | tr '\n' ' ')"
  done
done

python3 - "$RESULTS" "$ROUNDS" <<'PY' | tee "$RESULTS/summary.md"
import re, statistics, sys
d, rounds = sys.argv[1], int(sys.argv[2])
def med(xs): return statistics.median(xs) if xs else float("nan")
def ratio(b, a): return f"{b / a:.2f}" if a else "-"
def rps(s):
    out = []
    for r in range(1, rounds + 1):
        m = re.search(r"Requests/sec:\s*([\d.]+)", open(f"{d}/wrk-{s}.{r}.txt").read())
        if m: out.append(float(m.group(1)))
    return out
def fan(s, key):
    out = []
    for r in range(1, rounds + 1):
        t = open(f"{d}/fanout-{s}.{r}.txt").read()
        m = re.search(rf"^{key}\s+(\S+)", t, re.M) or re.search(rf"{key}=(\S+)", t)
        if m: out.append(float(m.group(1)))
    return out
per = {l.split()[0]: l.split()[1:] for l in open(f"{d}/per_p.txt")}
one, clu = med(rps("single")), med(rps("cluster"))
print("| | one Redis | cluster of 3 masters | cluster / one |")
print("|---|---|---|---|")
print(f"| `/p` requests/s (wrk -t2 -c100, median of {rounds}) | {one:,.0f} | {clu:,.0f} | {ratio(clu, one)} |")
c1, c3 = int(per["single"][0]) / 100, int(per["cluster"][0]) / 100
print(f"| Redis commands per `/p` (all nodes) | {c1:.2f} | {c3:.2f} | {ratio(c3, c1)} |")
b1, b3 = int(per["single"][1]), int(per["cluster"][1])
print(f"| Redis bytes in + out per `/p` | {b1} | {b3} | {ratio(b3, b1)} |")
for key, label in [("deliveries_per_sec", "fan-out deliveries/s"),
                   ("server_cpu_us_per_delivery", "fan-out server CPU µs per delivery"),
                   ("redis_cpu_s", "fan-out Redis CPU s (all nodes)"),
                   ("latency_p99_ms", "fan-out delivery p99 ms")]:
    a, b = med(fan("redis", key)), med(fan("cluster", key))
    print(f"| {label} (median of {rounds}) | {a:,.2f} | {b:,.2f} | {ratio(b, a)} |")
checks = [l for s in ("redis", "cluster") for r in range(1, rounds + 1)
          for l in open(f"{d}/fanout-{s}.{r}.txt") if l.startswith("check")]
print(f"\nfan-out checks: {' '.join(l.split()[1] for l in checks)}")
PY
