#!/usr/bin/env bash
# POST /p under wrk against nginx `return 200`, builds side by side: the
# measurement of issue 13 (the request path at 80 % of nginx).
#
#   cargo build --release
#   loadtest/bench/request_path.sh
#   BUILDS="before=/tmp/hs-old after=target/release/haoshuo" STORES="embedded redis" \
#     ROUNDS=3 loadtest/bench/request_path.sh
#
# Each build runs on each store (a fresh server, its own data dir; for
# redis its own fresh redis-server, AOF everysec). Every round runs nginx
# `GET /ok` first, then every build/store pair in order, so drift in the
# machine's load spreads over all of them. The table gives the median of
# the rounds, every round's figure, p50 / p99 latency (medians) and the
# ratio to nginx's median of the same run (and the median of each round's
# ratio to nginx's figure in that round, which moves less when the
# machine's load drifts during the run); and the server's CPU time per
# request (its processes' user + system time over the run, nginx's master
# and workers) and context switches per request (all its threads): on a
# machine shared with other work these move less than requests/s does.
# wrk's own CPU per request is the last column: on 2 cores the client
# takes what the server leaves, so requests/s is set by both.
#
# Environment (defaults in brackets):
#   BUILDS    ["current=target/release/haoshuo"]: name=binary pairs; a
#             binary may carry flags after a colon, commas for spaces:
#             name=bin:--workers,2
#   STORES    ["embedded redis"]
#   ROUNDS [3] DURATION [8s] THREADS [2] CONNS [100] USERS [1000]
#   RESULTS   [loadtest/bench/results/request-path-<date>-<sha>]
#   REDIS_BENCH [1]: also redis-benchmark -t set -P 16 and -P 1 on a redis of its own
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
. "$here/lib.sh"
die() { log "FATAL: $*"; exit 1; }

sha=$(git rev-parse --short HEAD 2>/dev/null || echo nogit)
BUILDS=${BUILDS:-current=target/release/haoshuo}
STORES=${STORES:-embedded redis}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-100}
USERS=${USERS:-1000}
REDIS_BENCH=${REDIS_BENCH:-1}
RESULTS=${RESULTS:-$here/results/request-path-$(date +%Y%m%d-%H%M%S)-$sha}
NCHAN_MODULE=${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}
wrkdir=$root/loadtest/wrk

for t in wrk nginx redis-server redis-cli redis-benchmark curl python3 timeout; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install -y wrk nginx libnginx-mod-nchan redis-server curl python3)"
done
[ -x /usr/bin/time ] || die "/usr/bin/time not found (apt-get install -y time)"
mkdir -p "$RESULTS/logs" || die "cannot create $RESULTS"
tmp=$(mktemp -d /tmp/haoshuo-rp.XXXXXX)
trap 'stop_all; rm -rf "$tmp"' EXIT
trap 'log "interrupted"; exit 130' INT TERM

# nginx: the config the other benchmarks use (its /ok answers `return 200`).
dir=$tmp/nginx; mkdir -p "$dir/tmp"
p1=$(free_port); p2=$(free_port)
sed -e "s|127.0.0.1:18080|127.0.0.1:$p1|; s|127.0.0.1:18081|127.0.0.1:$p2|" \
    -e "s|^load_module .*|load_module $NCHAN_MODULE;|" \
    "$root/loadtest/nchan/nginx.conf" > "$dir/nginx.conf"
nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" > "$RESULTS/logs/nginx.out" 2>&1 &
PIDS+=("$!")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p1/ok" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$p1/ok" >/dev/null || die "nginx did not start"

# start_redis NAME: a redis-server of its own; sets RD_PORT.
start_redis() {
  RD_PORT=$(free_port)
  mkdir -p "$tmp/redis-$1"
  redis-server --port "$RD_PORT" --bind 127.0.0.1 --dir "$tmp/redis-$1" --save '' \
    --appendonly yes --appendfsync everysec --logfile "$RESULTS/logs/redis-$1.log" &
  PIDS+=("$!")
  for _ in $(seq 100); do
    [ "$(redis-cli -p "$RD_PORT" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  die "redis-server $1 did not start"
}

# Every target: name, address, users file.
NGINX_PID=${PIDS[-1]}
targets=("nginx|127.0.0.1:$p1||$NGINX_PID")
i=0
for build in $BUILDS; do
  name=${build%%=*}; spec=${build#*=}
  bin=${spec%%:*}; flags=""
  [ "$bin" != "$spec" ] && flags=${spec#*:} && flags=${flags//,/ }
  [ -x "$bin" ] || die "$bin: not an executable"
  i=$((i + 1))
  cp "$bin" "$tmp/haoshuo-$i" || die "cannot copy $bin"
  # The limits this bench turns off, for builds that have them (builds
  # from before the limits, like issue 13's baseline, have none).
  limits=()
  if "$bin" --help 2>/dev/null | grep -q -- --send-rate; then
    limits=(--auth-per-ip 0 --login-per-user 0 --send-rate 0)
  fi
  for store in $STORES; do
    tag=$name-$store
    extra=()
    if [ "$store" = redis ]; then
      start_redis "$tag"
      extra=(--redis "redis://127.0.0.1:$RD_PORT/0")
    fi
    logf=$RESULTS/logs/$tag.log
    # shellcheck disable=SC2086 # flags are words on purpose
    "$tmp/haoshuo-$i" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$tmp/data-$tag" \
      "${limits[@]}" "${extra[@]}" $flags > "$logf" 2>&1 &
    PIDS+=("$!")
    pid=$!
    addr=
    for _ in $(seq 100); do
      addr=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$logf" | head -1)
      [ -n "$addr" ] && break
      sleep 0.1
    done
    admin=$(sed -n 's/.*admin=\([0-9.:]*\).*/\1/p' "$logf" | head -1)
    [ -n "$addr" ] && [ -n "$admin" ] || { cat "$logf" >&2; die "$tag did not start"; }
    env TARGET="$addr" ADMIN="$admin" N="$USERS" LOGIN_N=0 OUT="$tmp/users-$tag.lua" \
      "$wrkdir/setup.sh" > "$RESULTS/logs/setup-$tag.txt" 2>&1 || die "users for $tag: see logs/setup-$tag.txt"
    targets+=("$tag|$addr|$tmp/users-$tag.lua|$pid")
    log "$tag on $addr ($bin $flags)"
  done
done

{
  echo "date: $(date -Is)"
  echo "git: $(git rev-parse HEAD 2>/dev/null)"
  echo "builds: $BUILDS"
  echo "stores: $STORES"
  echo "wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS rounds, $USERS users"
  echo "loadavg at start: $(cat /proc/loadavg)"
} > "$RESULTS/meta.txt"

# run_wrk NAME ADDR USERS OUT: wrk's output, then its own CPU time (the
# client shares the machine's cores with the server it measures).
run_wrk() {
  local clock=(/usr/bin/time -a -o "$4" -f 'CLIENT_CPU {"user": %U, "sys": %S}')
  if [ "$1" = nginx ]; then
    "${clock[@]}" timeout 60 wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$wrkdir/ok.lua" "http://$2/ok" > "$4" 2>&1
  else
    WRK_USERS=$3 "${clock[@]}" timeout 60 wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" -s "$wrkdir/p.lua" "http://$2" > "$4" 2>&1
  fi
}

# cpu PID: CPU ticks (user + system) of PID and its children's processes
# (nginx's workers), then context switches of all their threads.
cpu() {
  local p ticks=0 switches=0 f
  for p in "$1" $(pgrep -P "$1"); do
    read -r -a st < "/proc/$p/stat" 2>/dev/null || continue
    ticks=$(( ticks + st[13] + st[14] ))
    for f in /proc/"$p"/task/*/status; do
      switches=$(( switches + $(awk '/ctxt_switches/ {n += $2} END {print n + 0}' "$f" 2>/dev/null || echo 0) ))
    done
  done
  echo "$ticks $switches"
}

# Warm-up: every target once, 2 s.
for t in "${targets[@]}"; do
  IFS='|' read -r name addr users pid <<< "$t"
  DURATION=2s run_wrk "$name" "$addr" "$users" /dev/null
done

hz=$(getconf CLK_TCK)
for r in $(seq "$ROUNDS"); do
  for t in "${targets[@]}"; do
    IFS='|' read -r name addr users pid <<< "$t"
    log "round $r: $name (loadavg $(cut -d' ' -f1 /proc/loadavg))"
    read -r c0 s0 <<< "$(cpu "$pid")"
    run_wrk "$name" "$addr" "$users" "$RESULTS/$name.$r.txt" || log "  wrk on $name failed"
    read -r c1 s1 <<< "$(cpu "$pid")"
    echo "SERVER_CPU {\"ticks\": $(( c1 - c0 )), \"hz\": $hz, \"switches\": $(( s1 - s0 ))}" \
      >> "$RESULTS/$name.$r.txt"
  done
done

if [ "$REDIS_BENCH" = 1 ]; then
  start_redis bench
  for p in 16 1; do
    redis-benchmark -p "$RD_PORT" -t set -n 200000 -q -P "$p" > "$RESULTS/redis-benchmark-P$p.txt" 2>&1
  done
fi

python3 - "$RESULTS" "${targets[@]}" <<'EOF' | tee "$RESULTS/summary.md"
import json, statistics, sys, glob, os, re
res = sys.argv[1]
names = [t.split("|")[0] for t in sys.argv[2:]]
def runs(name):
    out = []
    files = glob.glob(os.path.join(res, name + ".*.txt"))
    for f in sorted(files, key=lambda f: int(f.rsplit(".", 2)[1])):
        run = {"round": int(f.rsplit(".", 2)[1])}
        for line in open(f, errors="replace"):
            if line.startswith("WRK_JSON "):
                run.update(json.loads(line[9:]))
            if line.startswith("SERVER_CPU "):
                c = json.loads(line[11:])
                run["cpu_us"] = c["ticks"] / c["hz"] * 1e6
                run["switches"] = c["switches"]
            if line.startswith("CLIENT_CPU "):
                c = json.loads(line[11:])
                run["client_us"] = (c["user"] + c["sys"]) * 1e6
        if "rps" in run:
            out.append(run)
    return out
rows = {n: runs(n) for n in names}
def med(xs): return statistics.median(xs) if xs else float("nan")
ref = med([r["rps"] for r in rows["nginx"]])
def per_req(r, key):
    return r[key] / r["requests"] if r.get("requests") and key in r else float("nan")
ref_cpu = med([per_req(r, "cpu_us") for r in rows["nginx"]])
# Each round's ratio to nginx in the same round: on a machine whose load
# drifts, the median of these moves less than the ratio of the medians.
nginx_by_round = {r["round"]: r["rps"] for r in rows["nginx"]}
def round_ratio(rs):
    return med([r["rps"] / nginx_by_round[r["round"]] for r in rs if nginx_by_round.get(r["round"])])
print("| target | req/s (median) | rounds | p50 ms | p99 ms | non-2xx | vs nginx | vs nginx, per round | server CPU µs / req | vs nginx | context switches / req | wrk CPU µs / req |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for n in names:
    rs = rows[n]
    rps = med([r["rps"] for r in rs])
    cpu = med([per_req(r, "cpu_us") for r in rs])
    print("| %s | %s | %s | %.2f | %.2f | %d | %.2f | %.2f | %.1f | %.2f | %.2f | %.1f |" % (
        n, format(round(rps), ","), " / ".join(format(round(r["rps"]), ",") for r in rs),
        med([r["lat_p50_us"] for r in rs]) / 1000, med([r["lat_p99_us"] for r in rs]) / 1000,
        sum(r.get("non2xx", 0) for r in rs), rps / ref if ref else float("nan"), round_ratio(rs),
        cpu, cpu / ref_cpu if ref_cpu else float("nan"),
        med([per_req(r, "switches") for r in rs]),
        med([per_req(r, "client_us") for r in rs])))
for p in (16, 1):
    f = os.path.join(res, "redis-benchmark-P%d.txt" % p)
    if os.path.exists(f):
        m = re.findall(r"SET: ([0-9.]+) requests per second", open(f, errors="replace").read())
        if m:
            print("\nredis-benchmark -t set -n 200000 -P %d: %s SET/s" % (p, format(round(float(m[-1])), ",")))
EOF
log "results in $RESULTS"
