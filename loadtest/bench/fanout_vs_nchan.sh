#!/usr/bin/env bash
# fanout_vs_nchan.sh: the fan-out of haoshuo against nginx + nchan, both
# driven by the same client (haoshuo-load fanout), with the servers' CPU
# time per delivery.
#
#   loadtest/bench/fanout_vs_nchan.sh            # release builds in target/
#
# For each size MEMBERSxMSGSxRATE in SIZES (default "10000x200x100
# 2000x200x100") it runs REPS (3) rounds, each round one haoshuo run then
# one nchan run, every run against a fresh server on free loopback ports:
#
#   haoshuo  target/release/haoshuo, embedded store in a temp dir, with the
#            limits that would refuse the load lifted (LIFT); the fan-out is
#            ONE GROUP MESSAGE TO N MEMBERS: each member is its own user
#            with its own stored inbox and its own stream.
#   nchan    nginx with loadtest/nchan/nginx.conf (ports and module path
#            rewritten, its own temp prefix); the fan-out is ONE CHANNEL
#            WITH N SUBSCRIBERS (http-chunked), one message buffer.
#
# Both get the same SENDERS publishing connections (default 4, haoshuo-load's
# default): message i is due at start + i/RATE, each connection waits for
# the answer to its last post before the next, so a server slow to answer
# gets a lower rate; the achieved rate is shown. With SENDERS=1 every
# subscriber must see the messages in publish order; with several, nchan's
# subscribers must all see the one order the channel gave them (the
# publishers' requests race), and haoshuo's members their msgids ascending.
#
# Per run it prints deliveries/s, latency p50/p99, the check (every
# subscriber got every message once, in order), and the server's CPU time
# (utime + stime from /proc; nginx: summed over its worker processes):
#   cpu_run  over the whole client run, haoshuo's user provisioning and
#            group creation included (nchan has nothing to provision);
#   cpu_dlv  over sending + draining only (haoshuo-load --server-pid; for
#            nginx master + workers, the master idles),
# each also divided by the deliveries (µs per delivery). Then per size the
# medians and the ratios haoshuo / nchan of CPU per delivery. Raw outputs
# and runs.tsv stay in OUT (default: a new /tmp/fanout-vs-nchan.* dir).
#
# Environment: SIZES REPS OUT LIFT PROCS (client worker processes, 2) SENDERS
# HAOSHUO_BIN HAOSHUO_LOAD NCHAN_MODULE. Needs nginx, libnginx-mod-nchan,
# curl, python3. Every process it starts is stopped on exit.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${HAOSHUO_BIN:-$root/target/release/haoshuo}
LOAD=${HAOSHUO_LOAD:-$root/target/release/haoshuo-load}
NCHAN_MODULE=${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}
SIZES=${SIZES:-10000x200x100 2000x200x100}
REPS=${REPS:-3}
PROCS=${PROCS:-2}
SENDERS=${SENDERS:-4}
LIFT=${LIFT:---max-group-members 20000 --max-body 1048576 --send-rate 0 --auth-per-ip 0}
OUT=${OUT:-$(mktemp -d /tmp/fanout-vs-nchan.XXXXXX)}
HZ=$(getconf CLK_TCK)

die() { echo "fanout_vs_nchan.sh: $*" >&2; exit 1; }
for f in "$BIN" "$LOAD"; do [ -x "$f" ] || die "$f missing (cargo build --release --workspace)"; done
[ -f "$NCHAN_MODULE" ] || die "$NCHAN_MODULE missing (apt-get install libnginx-mod-nchan)"
for t in nginx curl python3; do command -v "$t" >/dev/null || die "$t not found"; done
mkdir -p "$OUT" || die "cannot create $OUT"
ulimit -n "$(ulimit -Hn)"

tmp=$(mktemp -d)
SERVER_PID=
# stop, free_port (SERVER_PID is the one process it tracks)
. "$root/loadtest/bench/lib.sh"
cleanup() { stop "$SERVER_PID" 10; SERVER_PID=; rm -rf "$tmp"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# utime + stime ticks of one process.
ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null || echo 0; }
# ... of nginx's workers (the master's children).
worker_ticks() {
  local sum=0 p
  for p in $(pgrep -P "$1"); do sum=$((sum + $(ticks "$p"))); done
  echo "$sum"
}

# start_haoshuo: sets SERVER_PID TARGET ADMIN.
start_haoshuo() {
  local d=$tmp/haoshuo p1 p2
  rm -rf "$d"; mkdir -p "$d"
  p1=$(free_port); p2=$(free_port)
  while [ "$p2" = "$p1" ]; do p2=$(free_port); done
  # shellcheck disable=SC2086 # LIFT is a list of flags
  "$BIN" --listen "127.0.0.1:$p1" --admin-listen "127.0.0.1:$p2" --data-dir "$d/data" $LIFT \
    > "$d/log" 2>&1 &
  SERVER_PID=$!
  TARGET=127.0.0.1:$p1 ADMIN=127.0.0.1:$p2
  for _ in $(seq 100); do grep -q "listening on" "$d/log" 2>/dev/null && return 0; sleep 0.1; done
  cat "$d/log" >&2; return 1
}

# start_nginx: sets SERVER_PID (master) TARGET (nchan pub/sub listener).
start_nginx() {
  local d=$tmp/nginx p1 p2
  rm -rf "$d"; mkdir -p "$d/tmp"
  p1=$(free_port); p2=$(free_port)
  while [ "$p2" = "$p1" ]; do p2=$(free_port); done
  sed -e "s|127.0.0.1:18080|127.0.0.1:$p1|; s|127.0.0.1:18081|127.0.0.1:$p2|" \
      -e "s|^load_module .*|load_module $NCHAN_MODULE;|" \
      "$root/loadtest/nchan/nginx.conf" > "$d/nginx.conf"
  nginx -p "$d/" -c "$d/nginx.conf" -e "$d/error.log" > "$d/out" 2>&1 &
  SERVER_PID=$!
  TARGET=127.0.0.1:$p2
  for _ in $(seq 100); do
    curl -sf "http://$TARGET/nchan_status" >/dev/null && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$d/out" "$d/error.log" >&2 2>/dev/null; return 1
}

row() { awk -v k="$1" '$1 == k {print $2; exit}' "$2"; }

TSV=$OUT/runs.tsv
printf 'size\tkind\trep\texit\tsend_rate\tdeliveries_per_sec\tp50_ms\tp99_ms\tcheck\tdelivered\tcpu_run_s\tcpu_run_us_per_dlv\tcpu_dlv_s\tcpu_dlv_us_per_dlv\tloadavg\n' > "$TSV"

# run_one KIND MEMBERS MSGS RATE REP
run_one() {
  local kind=$1 m=$2 n=$3 r=$4 rep=$5 size=$2x$3x$4 out err rc c0 c1 cpu load
  out=$OUT/$kind.$size.$rep.txt err=$OUT/$kind.$size.$rep.err
  load=$(cut -d' ' -f1 /proc/loadavg)
  if [ "$kind" = haoshuo ]; then
    start_haoshuo || die "haoshuo did not start"
    c0=$(ticks "$SERVER_PID")
    "$LOAD" fanout --members "$m" --msgs "$n" --rate "$r" --procs "$PROCS" \
      --senders "$SENDERS" --target "$TARGET" --admin "$ADMIN" --server-pid "$SERVER_PID" > "$out" 2> "$err"
    rc=$?
    c1=$(ticks "$SERVER_PID")
  else
    start_nginx || die "nginx did not start"
    c0=$(worker_ticks "$SERVER_PID")
    "$LOAD" fanout --server-kind nchan --members "$m" --msgs "$n" --rate "$r" --procs "$PROCS" \
      --senders "$SENDERS" --target "$TARGET" --server-pid "$SERVER_PID" > "$out" 2> "$err"
    rc=$?
    c1=$(worker_ticks "$SERVER_PID")
  fi
  stop "$SERVER_PID" 10; SERVER_PID=
  local rate dps p50 p99 check dlv cdlv cdlv_us
  rate=$(row send_rate_achieved "$out"); dps=$(row deliveries_per_sec "$out"); p50=$(row latency_p50_ms "$out"); p99=$(row latency_p99_ms "$out")
  check=$(row check "$out"); dlv=$(row delivered_distinct "$out")
  cdlv=$(row server_cpu_deliver_secs "$out"); cdlv_us=$(row server_cpu_us_per_delivery "$out")
  cpu=$(awk -v a="$c0" -v b="$c1" -v t="$HZ" 'BEGIN {printf "%.2f", (b - a) / t}')
  local cpu_us
  cpu_us=$(awk -v c="$cpu" -v d="${dlv:-0}" 'BEGIN {if (d > 0) printf "%.3f", c * 1e6 / d; else print "-"}')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$size" "$kind" "$rep" "$rc" \
    "${rate:--}" "${dps:--}" "${p50:--}" "${p99:--}" "${check:-none}" "${dlv:-0}" "$cpu" "$cpu_us" \
    "${cdlv:--}" "${cdlv_us:--}" "$load" >> "$TSV"
  printf '%-8s %-12s run %s: exit %s  sent %s msg/s  %s deliveries/s  p50 %s ms  p99 %s ms  check %s  server CPU %s s (%s µs/delivery), sending+draining %s s (%s µs/delivery)  [loadavg %s]\n' \
    "$kind" "$size" "$rep" "$rc" "${rate:--}" "${dps:--}" "${p50:--}" "${p99:--}" "${check:-none}" "$cpu" "$cpu_us" \
    "${cdlv:--}" "${cdlv_us:--}" "$load"
  [ "$rc" = 0 ] || tail -3 "$err" >&2
}

echo "commit $(git -C "$root" rev-parse --short HEAD 2>/dev/null)$(git -C "$root" diff --quiet 2>/dev/null || echo '+dirty'), $(nginx -v 2>&1), nchan $(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null), $(nproc) cores, results in $OUT"
echo "haoshuo: one group message to N members (N users, N stored inboxes, N streams); $SENDERS sender(s)"
echo "nchan:   one channel with N http-chunked subscribers; $SENDERS publisher(s)"
for size in $SIZES; do
  IFS=x read -r m n r <<< "$size"
  for rep in $(seq "$REPS"); do
    run_one haoshuo "$m" "$n" "$r" "$rep"
    run_one nchan "$m" "$n" "$r" "$rep"
  done
done

python3 - "$TSV" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def num(v):
    try:
        return float(v)
    except ValueError:
        return None
def med(rs, k):
    v = [num(r[k]) for r in rs if num(r[k]) is not None]
    return statistics.median(v) if v else None
fmt = lambda v, d=1: "-" if v is None else f"{v:,.{d}f}"
print()
print("medians (haoshuo: group message to N members' inboxes; nchan: one channel, N subscribers)")
for size in dict.fromkeys(r["size"] for r in rows):
    m = {}
    for kind in ("haoshuo", "nchan"):
        rs = [r for r in rows if r["size"] == size and r["kind"] == kind]
        m[kind] = {k: med(rs, k) for k in ("send_rate", "deliveries_per_sec", "p50_ms", "p99_ms",
                                            "cpu_run_us_per_dlv", "cpu_dlv_us_per_dlv")}
        checks = ",".join(r["check"] for r in rs)
        x = m[kind]
        print(f"{size:>14} {kind:8} sent {fmt(x['send_rate'])} msg/s  deliveries/s {fmt(x['deliveries_per_sec'], 0)}  p50 {fmt(x['p50_ms'])} ms"
              f"  p99 {fmt(x['p99_ms'])} ms  CPU/delivery whole run {fmt(x['cpu_run_us_per_dlv'], 3)} µs,"
              f" sending+draining {fmt(x['cpu_dlv_us_per_dlv'], 3)} µs  checks {checks}")
    for k, what in (("cpu_run_us_per_dlv", "whole run"), ("cpu_dlv_us_per_dlv", "sending+draining")):
        a, b = m["haoshuo"][k], m["nchan"][k]
        if a and b:
            print(f"{size:>14} ratio haoshuo/nchan CPU per delivery ({what}): {a / b:.2f} (goal <= 0.33)")
EOF
