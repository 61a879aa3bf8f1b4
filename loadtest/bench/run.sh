#!/usr/bin/env bash
# The reference benchmarks of haoshuo, side by side with nginx / nginx+nchan /
# Redis, all on loopback, every step bounded in time. Raw outputs go to a
# results directory; a summary table (medians, ratios) is printed at the end
# and written to summary.md there.
#
#   cargo build --release          # target/release/haoshuo, haoshuo-load
#   loadtest/bench/run.sh          # ~10-15 minutes on 2 cores
#   STEPS="wrk idle" IDLE_SIZES="1000 5000" loadtest/bench/run.sh
#
# Steps (STEPS, default all, in this order):
#   wrk     nginx GET /ok vs haoshuo POST /p (embedded store) vs haoshuo
#           POST /p --redis: wrk -t2 -c100 -d10s, WRK_RUNS rounds interleaved;
#           then /pull and /login once each (information only)
#   redis   on the same redis-server: Redis commands per /p (INFO
#           commandstats before/after P_COUNT sequential /p), and
#           redis-benchmark -t set,incr -n 200000 -q with -P 16 and -P 1
#   idle    per size in IDLE_SIZES, each on a fresh server: haoshuo-load idle
#           (server RSS per stream), idle.py on nginx+nchan (workers' RSS per
#           subscriber) and idle.py on haoshuo (same client, cross-check)
#   fanout  one group / channel of FANOUT_MEMBERS streaming subscribers,
#           FANOUT_MSGS messages at FANOUT_RATE/s: haoshuo-load fanout, and
#           fanout.py against haoshuo and nchan; with FANOUT_BURST=1 also
#           fanout.py at rate 0 (back to back) against both
#
# Environment knobs (defaults in brackets):
#   RESULTS  [loadtest/bench/results/<date>-<git short sha>]
#   HAOSHUO, HAOSHUO_LOAD  binaries [target/release/...]; copied to a temp dir
#            at start so a concurrent rebuild cannot swap them mid-run
#   WRK_RUNS [3] WRK_DURATION [10s] WRK_THREADS [2] WRK_CONNS [100] WRK_USERS_N [1000]
#   P_COUNT [2000]  IDLE_SIZES ["1000 5000 10000 19000"]  IDLE_HOLD [10]
#   FANOUT_MEMBERS [10000] FANOUT_MSGS [20] FANOUT_RATE [5] FANOUT_BURST [1]
#   NCHAN_MODULE [/usr/lib/nginx/modules/ngx_nchan_module.so]
#   KEEP_TMP [0]  keep the temp dir (server data, nginx prefix) for inspection
#
# Exit status: 0 if every step succeeded, 1 otherwise (the summary says which).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

sha=$(git rev-parse --short HEAD 2>/dev/null || echo nogit)
RESULTS=${RESULTS:-$here/results/$(date +%Y%m%d-%H%M%S)-$sha}
HAOSHUO=${HAOSHUO:-$root/target/release/haoshuo}
HAOSHUO_LOAD=${HAOSHUO_LOAD:-$root/target/release/haoshuo-load}
STEPS=${STEPS:-wrk redis idle fanout}
WRK_RUNS=${WRK_RUNS:-3}
WRK_DURATION=${WRK_DURATION:-10s}
WRK_THREADS=${WRK_THREADS:-2}
WRK_CONNS=${WRK_CONNS:-100}
WRK_USERS_N=${WRK_USERS_N:-1000}
P_COUNT=${P_COUNT:-2000}
IDLE_SIZES=${IDLE_SIZES:-1000 5000 10000 19000}
IDLE_HOLD=${IDLE_HOLD:-10}
FANOUT_MEMBERS=${FANOUT_MEMBERS:-10000}
FANOUT_MSGS=${FANOUT_MSGS:-20}
FANOUT_RATE=${FANOUT_RATE:-5}
FANOUT_BURST=${FANOUT_BURST:-1}
NCHAN_MODULE=${NCHAN_MODULE:-/usr/lib/nginx/modules/ngx_nchan_module.so}
KEEP_TMP=${KEEP_TMP:-0}

wrkdir=$root/loadtest/wrk
nchandir=$root/loadtest/nchan

# log, PIDS, untrack, stop, stop_all, free_port
. "$here/lib.sh"
die() { log "FATAL: $*"; exit 1; }

# ------------------------------------------------------------------ checks

for t in wrk nginx redis-server redis-cli redis-benchmark curl python3 timeout; do
  command -v "$t" >/dev/null || die "$t not found (apt-get install -y wrk nginx libnginx-mod-nchan redis-server curl python3)"
done
[ -f "$NCHAN_MODULE" ] || die "$NCHAN_MODULE missing (apt-get install -y libnginx-mod-nchan; dpkg -L libnginx-mod-nchan)"
[ -x "$HAOSHUO" ] && [ -x "$HAOSHUO_LOAD" ] || die "build first: cargo build --release (or set HAOSHUO / HAOSHUO_LOAD)"

mkdir -p "$RESULTS"/{wrk,redis,idle,fanout,logs} || die "cannot create $RESULTS"
tmp=$(mktemp -d /tmp/haoshuo-bench.XXXXXX)
mkdir -p "$tmp/bin"
cp "$HAOSHUO" "$tmp/bin/haoshuo" && cp "$HAOSHUO_LOAD" "$tmp/bin/haoshuo-load" || die "cannot copy binaries"
HS=$tmp/bin/haoshuo
HL=$tmp/bin/haoshuo-load

# ------------------------------------------------------------------ process bookkeeping

cleanup() {
  stop_all
  if [ "$KEEP_TMP" = 1 ]; then log "temp dir kept: $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM


# Step bookkeeping: name, exit status, seconds, 1-min loadavg at its start
# (the machine should be otherwise idle: anything else running skews it).
STATUS_FILE=$RESULTS/steps.tsv
: > "$STATUS_FILE"
FAILED=0
# run_step NAME TIMEOUT_SECS OUTFILE cmd...   (stdout+stderr -> OUTFILE)
run_step() {
  local name=$1 secs=$2 out=$3; shift 3
  local t0=$SECONDS rc load
  load=$(cut -d' ' -f1 /proc/loadavg)
  log "$name (<= ${secs}s, loadavg $load) -> ${out#$RESULTS/}"
  timeout -k 10 "$secs" "$@" > "$out" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - t0 ))" "$load" >> "$STATUS_FILE"
  if [ "$rc" != 0 ]; then
    FAILED=1
    log "  $name exited $rc$([ "$rc" = 124 ] && echo ' (timeout)'); tail:"
    tail -n 5 "$out" | sed 's/^/    /' >&2
  fi
  return "$rc"
}
note_fail() { printf '%s\t%s\t0\n' "$1" "${2:-1}" >> "$STATUS_FILE"; FAILED=1; log "FAILED: $1"; }

# ------------------------------------------------------------------ servers

# start_haoshuo NAME [extra flags...]: sets HS_PID HS_ADDR HS_ADMIN.
start_haoshuo() {
  local name=$1; shift
  local logf=$RESULTS/logs/$name.log
  rm -rf "$tmp/$name-data"
  # Every load client comes from one address and logs the same few users
  # in again and again: the /re and /login rate limits would measure 429s.
  "$HS" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$tmp/$name-data" \
    --auth-per-ip 0 --login-per-user 0 --send-rate 0 "$@" > "$logf" 2>&1 &
  HS_PID=$!
  PIDS+=("$HS_PID")
  HS_ADDR= HS_ADMIN=
  for _ in $(seq 100); do
    if grep -q 'listening on' "$logf" 2>/dev/null; then
      HS_ADDR=$(sed -n 's/.*listening on \([0-9.:]*\).*/\1/p' "$logf" | head -1)
      HS_ADMIN=$(sed -n 's/.*admin=\([0-9.:]*\).*/\1/p' "$logf" | head -1)
      break
    fi
    kill -0 "$HS_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$HS_ADDR" ] || [ -z "$HS_ADMIN" ]; then
    log "haoshuo $name did not start:"; cat "$logf" >&2; stop "$HS_PID"; return 1
  fi
  log "haoshuo $name pid $HS_PID on $HS_ADDR admin $HS_ADMIN $*"
}

# start_nginx NAME: sets NG_PID (master) NG_OK (addr of /ok) NG_NCHAN (pub/sub addr).
start_nginx() {
  local name=$1 dir=$tmp/nginx-$1 p1 p2
  rm -rf "$dir"; mkdir -p "$dir/tmp"
  p1=$(free_port); p2=$(free_port)
  while [ "$p2" = "$p1" ]; do p2=$(free_port); done
  sed -e "s|127.0.0.1:18080|127.0.0.1:$p1|; s|127.0.0.1:18081|127.0.0.1:$p2|" \
      -e "s|^load_module .*|load_module $NCHAN_MODULE;|" \
      "$nchandir/nginx.conf" > "$dir/nginx.conf"
  nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" > "$RESULTS/logs/nginx-$name.out" 2>&1 &
  NG_PID=$!
  PIDS+=("$NG_PID")
  NG_OK=127.0.0.1:$p1 NG_NCHAN=127.0.0.1:$p2
  for _ in $(seq 100); do
    if curl -sf "http://$NG_OK/ok" >/dev/null && curl -sf "http://$NG_NCHAN/nchan_status" >/dev/null; then
      log "nginx $name master $NG_PID: /ok on $NG_OK, nchan on $NG_NCHAN"
      return 0
    fi
    kill -0 "$NG_PID" 2>/dev/null || break
    sleep 0.1
  done
  log "nginx $name did not start:"; cat "$RESULTS/logs/nginx-$name.out" "$dir/error.log" >&2 2>/dev/null
  stop "$NG_PID"; return 1
}
stop_nginx() { cp "$tmp/nginx-$1/error.log" "$RESULTS/logs/nginx-$1.error.log" 2>/dev/null; stop "$NG_PID"; }

# start_redis: sets RD_PID RD_PORT. AOF with fsync everysec, like haoshuo's
# embedded store default (--fsync everysec); no RDB snapshots.
start_redis() {
  RD_PORT=$(free_port)
  mkdir -p "$tmp/redis"
  redis-server --port "$RD_PORT" --bind 127.0.0.1 --dir "$tmp/redis" --save '' \
    --appendonly yes --appendfsync everysec --daemonize no --logfile "$RESULTS/logs/redis.log" &
  RD_PID=$!
  PIDS+=("$RD_PID")
  for _ in $(seq 100); do
    [ "$(redis-cli -p "$RD_PORT" ping 2>/dev/null)" = PONG ] && { log "redis-server pid $RD_PID on 127.0.0.1:$RD_PORT"; return 0; }
    sleep 0.1
  done
  log "redis-server did not start"; stop "$RD_PID"; return 1
}

has_step() { case " $STEPS " in *" $1 "*) return 0;; *) return 1;; esac; }

# ------------------------------------------------------------------ meta

{
  echo "date: $(date -Is)"
  echo "git: $(git rev-parse HEAD 2>/dev/null) (short $sha)"
  echo "git status --short:"; git status --short 2>/dev/null | sed 's/^/  /'
  echo "uname: $(uname -srm)"
  echo "cpus: $(nproc)"
  echo "mem: $(free -m | awk '/Mem:/{print $2" MiB"}')"
  echo "nofile: $(ulimit -Sn)/$(ulimit -Hn)"
  echo "haoshuo: $("$HS" --version 2>/dev/null || echo '?') sha256 $(sha256sum "$HS" | cut -c1-16)"
  echo "nginx: $(nginx -v 2>&1)"
  echo "nchan: $(dpkg-query -W -f='${Version}' libnginx-mod-nchan 2>/dev/null)"
  echo "redis: $(redis-server --version)"
  echo "wrk: $(wrk -v 2>&1 | head -1)"
  echo "python: $(python3 --version)"
  echo "loadavg at start: $(cat /proc/loadavg)"
  echo "steps: $STEPS"
  echo "WRK_RUNS=$WRK_RUNS WRK_DURATION=$WRK_DURATION WRK_THREADS=$WRK_THREADS WRK_CONNS=$WRK_CONNS WRK_USERS_N=$WRK_USERS_N"
  echo "P_COUNT=$P_COUNT IDLE_SIZES=\"$IDLE_SIZES\" IDLE_HOLD=$IDLE_HOLD"
  echo "FANOUT_MEMBERS=$FANOUT_MEMBERS FANOUT_MSGS=$FANOUT_MSGS FANOUT_RATE=$FANOUT_RATE FANOUT_BURST=$FANOUT_BURST"
} > "$RESULTS/meta.txt"
log "results in $RESULTS"
T_START=$SECONDS

# ------------------------------------------------------------------ wrk + redis

if has_step wrk || has_step redis; then
  log "== wrk / redis =="
  if start_nginx ref && start_haoshuo emb && { E_PID=$HS_PID E_ADDR=$HS_ADDR E_ADMIN=$HS_ADMIN; start_redis; } &&
     start_haoshuo redis --redis "redis://127.0.0.1:$RD_PORT/0"; then
    R_PID=$HS_PID R_ADDR=$HS_ADDR R_ADMIN=$HS_ADMIN
    wd=$RESULTS/wrk
    ok_setup=1
    run_step setup-emb 120 "$wd/setup-emb.txt" env TARGET="$E_ADDR" ADMIN="$E_ADMIN" N="$WRK_USERS_N" LOGIN_N=8 \
      OUT="$tmp/users-emb.lua" JSON_OUT="$tmp/users-emb.json" "$wrkdir/setup.sh" || ok_setup=0
    run_step setup-redis 120 "$wd/setup-redis.txt" env TARGET="$R_ADDR" ADMIN="$R_ADMIN" N="$WRK_USERS_N" LOGIN_N=8 \
      OUT="$tmp/users-redis.lua" JSON_OUT="$tmp/users-redis.json" "$wrkdir/setup.sh" || ok_setup=0

    if has_step redis && [ "$ok_setup" = 1 ]; then
      rd=$RESULTS/redis
      # Background traffic (haoshuo idle, e.g. its pub/sub connection), then
      # the P_COUNT sends, both as INFO commandstats diffs.
      redis-cli -p "$RD_PORT" INFO commandstats > "$rd/commandstats-idle-before.txt"
      sleep 2
      redis-cli -p "$RD_PORT" INFO commandstats > "$rd/commandstats-idle-after.txt"
      redis-cli -p "$RD_PORT" INFO commandstats > "$rd/commandstats-before.txt"
      run_step redis-cmds-per-p 120 "$rd/send_p.json" python3 "$here/send_p.py" --addr "$R_ADDR" \
        --users "$tmp/users-redis.json" --count "$P_COUNT"
      redis-cli -p "$RD_PORT" INFO commandstats > "$rd/commandstats-after.txt"
    fi

    if has_step wrk && [ "$ok_setup" = 1 ]; then
      W="-t$WRK_THREADS -c$WRK_CONNS -d$WRK_DURATION"
      wt=$(( ${WRK_DURATION%s} + 30 ))
      export WRK_THREADS
      # warm-up (not recorded)
      timeout 20 wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d3s "http://$NG_OK/ok" >/dev/null 2>&1
      WRK_USERS="$tmp/users-emb.lua" timeout 20 wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d3s -s "$wrkdir/p.lua" "http://$E_ADDR" >/dev/null 2>&1
      WRK_USERS="$tmp/users-redis.lua" timeout 20 wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d3s -s "$wrkdir/p.lua" "http://$R_ADDR" >/dev/null 2>&1
      for r in $(seq "$WRK_RUNS"); do
        run_step "wrk-nginx-ok-$r" "$wt" "$wd/nginx-ok.$r.txt" wrk $W -s "$wrkdir/ok.lua" "http://$NG_OK/ok"
        run_step "wrk-haoshuo-p-$r" "$wt" "$wd/haoshuo-p.$r.txt" env WRK_USERS="$tmp/users-emb.lua" \
          wrk $W -s "$wrkdir/p.lua" "http://$E_ADDR"
        run_step "wrk-haoshuo-redis-p-$r" "$wt" "$wd/haoshuo-redis-p.$r.txt" env WRK_USERS="$tmp/users-redis.lua" \
          wrk $W -s "$wrkdir/p.lua" "http://$R_ADDR"
      done
      run_step wrk-haoshuo-pull "$wt" "$wd/haoshuo-pull.1.txt" env WRK_USERS="$tmp/users-emb.lua" \
        wrk $W -s "$wrkdir/pull.lua" "http://$E_ADDR"
      run_step wrk-haoshuo-redis-pull "$wt" "$wd/haoshuo-redis-pull.1.txt" env WRK_USERS="$tmp/users-redis.lua" \
        wrk $W -s "$wrkdir/pull.lua" "http://$R_ADDR"
      run_step wrk-haoshuo-login "$wt" "$wd/haoshuo-login.1.txt" env WRK_USERS="$tmp/users-emb.lua" \
        wrk -t"$WRK_THREADS" -c8 -d"$WRK_DURATION" -s "$wrkdir/login.lua" "http://$E_ADDR"
      run_step wrk-haoshuo-redis-login "$wt" "$wd/haoshuo-redis-login.1.txt" env WRK_USERS="$tmp/users-redis.lua" \
        wrk -t"$WRK_THREADS" -c8 -d"$WRK_DURATION" -s "$wrkdir/login.lua" "http://$R_ADDR"
      grep -h VmHWM /proc/"$E_PID"/status /proc/"$R_PID"/status > "$wd/haoshuo-hwm.txt" 2>/dev/null
    fi

    if has_step redis; then
      # haoshuo off Redis first, so redis-benchmark has it alone.
      stop "$R_PID"; R_PID=
      for P in 16 1; do
        run_step "redis-benchmark-P$P" 180 "$RESULTS/redis/benchmark-P$P.txt" \
          redis-benchmark -h 127.0.0.1 -p "$RD_PORT" -t set,incr -n 200000 -P "$P" -q
      done
    fi
  else
    note_fail wrk-redis-servers-start
  fi
  [ -n "${R_PID:-}" ] && stop "$R_PID"
  [ -n "${E_PID:-}" ] && stop "$E_PID"
  [ -n "${RD_PID:-}" ] && stop "$RD_PID"
  [ -n "${NG_PID:-}" ] && stop_nginx ref
  R_PID= E_PID= RD_PID= NG_PID=
fi

# ------------------------------------------------------------------ idle

if has_step idle; then
  log "== idle =="
  id=$RESULTS/idle
  for n in $IDLE_SIZES; do
    it=$(( IDLE_HOLD + 240 ))
    if start_haoshuo "idle-$n"; then
      sleep 0.5
      run_step "idle-haoshuo-load-$n" "$it" "$id/haoshuo-load.$n.txt" "$HL" idle --conns "$n" --hold "$IDLE_HOLD" \
        --target "$HS_ADDR" --admin "$HS_ADMIN" --server-pid "$HS_PID"
      stop "$HS_PID"
    else note_fail "idle-haoshuo-load-$n"; fi
    if start_nginx "idle-$n"; then
      sleep 0.5
      run_step "idle-nchan-$n" "$it" "$id/idlepy-nchan.$n.txt" python3 "$nchandir/idle.py" nchan \
        --addr "$NG_NCHAN" --nginx-pid "$NG_PID" --conns "$n" --hold "$IDLE_HOLD"
      stop_nginx "idle-$n"
    else note_fail "idle-nchan-$n"; fi
    if start_haoshuo "idlepy-$n"; then
      sleep 0.5
      run_step "idle-haoshuo-py-$n" "$it" "$id/idlepy-haoshuo.$n.txt" python3 "$nchandir/idle.py" haoshuo \
        --addr "$HS_ADDR" --admin "$HS_ADMIN" --server-pid "$HS_PID" --conns "$n" --hold "$IDLE_HOLD"
      stop "$HS_PID"
    else note_fail "idle-haoshuo-py-$n"; fi
  done
fi

# ------------------------------------------------------------------ fanout

if has_step fanout; then
  log "== fanout =="
  fd=$RESULTS/fanout
  m=$FANOUT_MEMBERS
  ft=$(( FANOUT_MSGS * 2 + 240 ))
  # --max-body: one /gre carries all member uids (10k members ~ 60 KB JSON).
  big=(--max-body 4194304)
  variants=("$FANOUT_RATE")
  [ "$FANOUT_BURST" = 1 ] && variants+=(0)
  for rate in "${variants[@]}"; do
    tag="r$rate"
    if start_haoshuo "fanout-load-$tag" "${big[@]}"; then
      sleep 0.5
      run_step "fanout-haoshuo-load-$tag" "$ft" "$fd/haoshuo-load.$tag.txt" "$HL" fanout --members "$m" \
        --msgs "$FANOUT_MSGS" --rate "$rate" --target "$HS_ADDR" --admin "$HS_ADMIN" --server-pid "$HS_PID"
      stop "$HS_PID"
    else note_fail "fanout-haoshuo-load-$tag"; fi
    if start_haoshuo "fanout-py-$tag" "${big[@]}"; then
      sleep 0.5
      run_step "fanout-haoshuo-py-$tag" "$ft" "$fd/fanoutpy-haoshuo.$tag.txt" python3 "$nchandir/fanout.py" haoshuo \
        --addr "$HS_ADDR" --admin "$HS_ADMIN" --subs "$m" --msgs "$FANOUT_MSGS" --rate "$rate"
      stop "$HS_PID"
    else note_fail "fanout-haoshuo-py-$tag"; fi
    if start_nginx "fanout-$tag"; then
      sleep 0.5
      run_step "fanout-nchan-py-$tag" "$ft" "$fd/fanoutpy-nchan.$tag.txt" python3 "$nchandir/fanout.py" nchan \
        --addr "$NG_NCHAN" --subs "$m" --msgs "$FANOUT_MSGS" --rate "$rate"
      stop_nginx "fanout-$tag"
    else note_fail "fanout-nchan-py-$tag"; fi
  done
fi

# ------------------------------------------------------------------ summary

log "all steps done in $(( SECONDS - T_START ))s"
echo "loadavg at end: $(cat /proc/loadavg)" >> "$RESULTS/meta.txt"
python3 "$here/summarize.py" "$RESULTS" | tee "$RESULTS/summary.md"
log "raw outputs and summary.md in $RESULTS"
exit "$FAILED"
