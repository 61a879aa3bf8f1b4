#!/usr/bin/env bash
# Slow readers: `haoshuo-load slow` on the embedded store and on Redis,
# RUNS rounds each, a fresh haoshuo (and a fresh redis-server in its own temp
# dir) per run, all on loopback, every run bounded by a timeout and every
# process this script started stopped on exit (also on Ctrl-C). Medians are
# printed at the end (summarize_slow.py) and written to summary.md.
#
#   cargo build --release
#   loadtest/bench/slow.sh                          # ~5 minutes on 2 cores
#   RATE_KBPS=512 STORES=embedded loadtest/bench/slow.sh
#
# Per run: `slow --readers READERS --owed-mb OWED_MB --rate-kbps RATE_KBPS
# --rcvbuf RCVBUF` (R readers each owed a backlog, read at a fixed rate:
# drain time against the rate's floor, server RSS growth while draining
# against the growth of storing the same volume), then, on another fresh
# server, `slow --single` (one reader owed 6 MiB at RATE_KBPS) if SINGLE=1.
#
# Knobs (environment, defaults in brackets):
#   RUNS [3]  STORES ["embedded redis"]  READERS [100]  OWED_MB [5]
#   RATE_KBPS [1024] (KiB/s per reader; 0: unpaced)  RCVBUF [8192]
#   SINGLE [1]  EXTRA [] (more haoshuo-load slow flags)
#   RESULTS [loadtest/bench/results/slow-<date>-<git short sha>]
#   HAOSHUO, HAOSHUO_LOAD  binaries [target/release/...]; copied to a temp
#            dir at start so a concurrent rebuild cannot swap them mid-run
#
# Exit status: 0 if every run passed its check, 1 otherwise.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

sha=$(git rev-parse --short HEAD 2>/dev/null || echo nogit)
RESULTS=${RESULTS:-$here/results/slow-$(date +%Y%m%d-%H%M%S)-$sha}
HAOSHUO=${HAOSHUO:-$root/target/release/haoshuo}
HAOSHUO_LOAD=${HAOSHUO_LOAD:-$root/target/release/haoshuo-load}
RUNS=${RUNS:-3}
STORES=${STORES:-embedded redis}
READERS=${READERS:-100}
OWED_MB=${OWED_MB:-5}
RATE_KBPS=${RATE_KBPS:-1024}
RCVBUF=${RCVBUF:-8192}
SINGLE=${SINGLE:-1}
EXTRA=${EXTRA:-}

# log, PIDS, untrack, stop, stop_all, free_port
. "$here/lib.sh"
die() { log "FATAL: $*"; exit 1; }

for t in python3 timeout; do command -v "$t" >/dev/null || die "$t not found"; done
case " $STORES " in *" redis "*)
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null ||
    die "redis-server not found (apt-get install -y redis-server, or STORES=embedded)";;
esac
[ -x "$HAOSHUO" ] && [ -x "$HAOSHUO_LOAD" ] || die "build first: cargo build --release (or set HAOSHUO / HAOSHUO_LOAD)"

mkdir -p "$RESULTS/logs" || die "cannot create $RESULTS"
tmp=$(mktemp -d /tmp/haoshuo-slow.XXXXXX)
mkdir -p "$tmp/bin"
cp "$HAOSHUO" "$tmp/bin/haoshuo" && cp "$HAOSHUO_LOAD" "$tmp/bin/haoshuo-load" || die "cannot copy binaries"
HS=$tmp/bin/haoshuo
HL=$tmp/bin/haoshuo-load

cleanup() {
  stop_all
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM


# start_haoshuo NAME [flags...]: sets HS_PID HS_ADDR HS_ADMIN.
start_haoshuo() {
  local name=$1; shift
  local logf=$RESULTS/logs/$name.log
  rm -rf "$tmp/$name-data"
  "$HS" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --data-dir "$tmp/$name-data" "$@" > "$logf" 2>&1 &
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
}

# start_redis NAME: sets RD_PID RD_PORT. A fresh temp dir, AOF everysec (as
# the reference runs), no RDB snapshots.
start_redis() {
  local dir=$tmp/redis-$1
  RD_PORT=$(free_port)
  rm -rf "$dir"; mkdir -p "$dir"
  redis-server --port "$RD_PORT" --bind 127.0.0.1 --dir "$dir" --save '' \
    --appendonly yes --appendfsync everysec --daemonize no --logfile "$RESULTS/logs/redis-$1.log" &
  RD_PID=$!
  PIDS+=("$RD_PID")
  for _ in $(seq 100); do
    [ "$(redis-cli -p "$RD_PORT" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  log "redis-server $1 did not start"; stop "$RD_PID"; return 1
}

FAILED=0
# run_slow NAME STORE flags...: one haoshuo-load slow run on a fresh server
# (and redis-server); its table and progress go to RESULTS/NAME.txt.
run_slow() {
  local name=$1 store=$2; shift 2
  local out=$RESULTS/$name.txt secs=900 rc flags=()
  RD_PID=
  if [ "$store" = redis ]; then
    start_redis "$name" || { FAILED=1; return 1; }
    flags=(--redis "redis://127.0.0.1:$RD_PORT/0")
  fi
  if ! start_haoshuo "$name" "${flags[@]}"; then
    FAILED=1; stop "$RD_PID"; return 1
  fi
  log "$name: loadavg $(cut -d' ' -f1 /proc/loadavg), haoshuo pid $HS_PID on $HS_ADDR ${flags[*]}"
  # shellcheck disable=SC2086  # EXTRA is a list of flags
  timeout -k 10 "$secs" "$HL" slow "$@" --target "$HS_ADDR" --admin "$HS_ADMIN" \
    --server-pid "$HS_PID" $EXTRA > "$out" 2>&1
  rc=$?
  if [ "$store" = redis ]; then
    { echo "redis_used_memory_mib  $(redis-cli -p "$RD_PORT" INFO memory | sed -n 's/^used_memory:\([0-9]*\).*/\1/p' |
        awk '{printf "%.1f", $1/1048576}')"; } >> "$out"
  fi
  stop "$HS_PID"
  stop "$RD_PID"
  echo "loadavg_at_end  $(cut -d' ' -f1 /proc/loadavg)" >> "$out"
  if [ "$rc" != 0 ]; then
    FAILED=1
    log "  $name exited $rc$([ "$rc" = 124 ] && echo ' (timeout)'); tail:"
    tail -n 5 "$out" | sed 's/^/    /' >&2
  fi
}

{
  echo "date: $(date -Is)"
  echo "git: $(git rev-parse HEAD 2>/dev/null) (short $sha)"
  echo "git status --short:"; git status --short 2>/dev/null | sed 's/^/  /'
  echo "uname: $(uname -srm)"
  echo "cpus: $(nproc)"
  echo "tcp_wmem: $(cat /proc/sys/net/ipv4/tcp_wmem)"
  echo "redis: $(redis-server --version 2>/dev/null)"
  echo "loadavg at start: $(cat /proc/loadavg)"
  echo "RUNS=$RUNS STORES=\"$STORES\" READERS=$READERS OWED_MB=$OWED_MB RATE_KBPS=$RATE_KBPS RCVBUF=$RCVBUF SINGLE=$SINGLE EXTRA=\"$EXTRA\""
} > "$RESULTS/meta.txt"
log "results in $RESULTS"

common=(--rate-kbps "$RATE_KBPS" --rcvbuf "$RCVBUF")
for r in $(seq "$RUNS"); do
  for store in $STORES; do
    run_slow "many-$store-$r" "$store" --readers "$READERS" --owed-mb "$OWED_MB" "${common[@]}"
    [ "$SINGLE" = 1 ] && run_slow "single-$store-$r" "$store" --single "${common[@]}"
  done
done

python3 "$here/summarize_slow.py" "$RESULTS" | tee "$RESULTS/summary.md"
log "raw outputs and summary.md in $RESULTS"
exit "$FAILED"
