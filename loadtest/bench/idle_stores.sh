#!/usr/bin/env bash
# Idle streams, one user each: the server's RSS per stream on the embedded
# store and on Redis, for one or more builds side by side, ROUNDS rounds
# with the builds and stores alternating, a fresh server (and a fresh
# redis-server in its own temp dir) per run, every run bounded by a timeout
# and every process this script started stopped on exit. Prints one line
# per run and the medians (docs/benchmarks.md, session 4).
#
#   cargo build --release --workspace
#   loadtest/bench/idle_stores.sh                           # ~5 minutes
#   BUILDS="before=/tmp/old/haoshuo after=target/release/haoshuo" loadtest/bench/idle_stores.sh
#
# Stores:
#   embedded    users provisioned through the server's own admin listener
#               (what that leaves freed, the streams may reuse)
#   redis       users provisioned through a second server process on the
#               same Redis: the measured process's RSS is the streams' alone
#   redis-self  users provisioned through the measured process itself, as
#               with the embedded store
#
# Knobs (environment, defaults in brackets):
#   BUILDS ["head=target/release/haoshuo"]  name=path pairs
#   STORES ["embedded redis redis-self"]  ROUNDS [3]  CONNS [15000]
#   HOLD [14] seconds the streams are held: the figure is taken at its end
#         (past --token-cache-secs twice, so cached tokens have been swept)
#   EXTRA [] more haoshuo flags  HAOSHUO_LOAD [target/release/haoshuo-load]
#   RESULTS [loadtest/bench/results/idle-<date>-<git short sha>]
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"

sha=$(git rev-parse --short HEAD 2>/dev/null || echo nogit)
RESULTS=${RESULTS:-$here/results/idle-$(date +%Y%m%d-%H%M%S)-$sha}
BUILDS=${BUILDS:-head=$root/target/release/haoshuo}
HAOSHUO_LOAD=${HAOSHUO_LOAD:-$root/target/release/haoshuo-load}
STORES=${STORES:-embedded redis redis-self}
ROUNDS=${ROUNDS:-3}
CONNS=${CONNS:-15000}
HOLD=${HOLD:-14}
EXTRA=${EXTRA:-}

# log, PIDS, untrack, stop, stop_all, low_port
. "$here/lib.sh"
die() { log "FATAL: $*"; exit 1; }
trap stop_all EXIT

mkdir -p "$RESULTS" || die "cannot create $RESULTS"
tmp=$(mktemp -d /tmp/haoshuo-idle.XXXXXX)
# Copies, so a rebuild during the run does not change what is measured.
names=()
for b in $BUILDS; do
  n=${b%%=*}; p=${b#*=}
  [ -x "$p" ] || die "no binary $p (cargo build --release --workspace)"
  cp "$p" "$tmp/haoshuo-$n" || die "cannot copy $p"
  names+=("$n")
done
cp "$HAOSHUO_LOAD" "$tmp/haoshuo-load" || die "build haoshuo-load first"

# up FILE TEXT: wait (up to 30 s) until FILE says TEXT.
up() { for _ in $(seq 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; log "not up: $1"; return 1; }

# run BUILD STORE ROUND: one run; sets RESULT to the per-stream figure (or FAIL).
run() {
  local bin=$tmp/haoshuo-$1 store=$2 out=$RESULTS/$2-$1-$3 p a rp sp
  mkdir -p "$out"
  RESULT=FAIL
  p=$(low_port); a=$(low_port)
  case $store in
    embedded)
      $bin --listen 127.0.0.1:$p --admin-listen 127.0.0.1:$a --data-dir "$out/data" $EXTRA \
        >"$out/server.log" 2>&1 & sp=$!; PIDS+=($sp) ;;
    redis|redis-self)
      rp=$(low_port)
      redis-server --port $rp --bind 127.0.0.1 --dir "$out" --save '' --appendonly no \
        --daemonize no >"$out/redis.log" 2>&1 & PIDS+=($!)
      up "$out/redis.log" "Ready to accept" || return 1
      if [ $store = redis ]; then
        $bin --listen 127.0.0.1:$(low_port) --admin-listen 127.0.0.1:$a --redis redis://127.0.0.1:$rp/0 \
          --reuseport >"$out/admin.log" 2>&1 & PIDS+=($!)
        up "$out/admin.log" listening || return 1
        $bin --listen 127.0.0.1:$p --redis redis://127.0.0.1:$rp/0 --reuseport $EXTRA \
          >"$out/server.log" 2>&1 & sp=$!; PIDS+=($sp)
      else
        $bin --listen 127.0.0.1:$p --admin-listen 127.0.0.1:$a --redis redis://127.0.0.1:$rp/0 $EXTRA \
          >"$out/server.log" 2>&1 & sp=$!; PIDS+=($sp)
      fi ;;
  esac
  up "$out/server.log" listening || return 1
  timeout $((HOLD + 200)) "$tmp/haoshuo-load" idle --conns $CONNS --hold $HOLD \
    --target 127.0.0.1:$p --admin 127.0.0.1:$a --server-pid $sp >"$out/load.txt" 2>"$out/load.err"
  local rc=$?
  stop_all
  local per check
  per=$(awk '$1 == "server_rss_per_conn_bytes" { print $2 }' "$out/load.txt")
  check=$(awk '$1 == "check" { print $2 }' "$out/load.txt")
  if [ $rc = 0 ] && [ "$check" = PASS ] && [ -n "$per" ]; then RESULT=$per; fi
}

printf 'round\tstore\tbuild\trss_per_stream_bytes\n' >"$RESULTS/runs.tsv"
for r in $(seq "$ROUNDS"); do
  for store in $STORES; do
    for n in "${names[@]}"; do
      run "$n" "$store" "$r"; stop_all
      printf '%s\t%s\t%s\t%s\n' "$r" "$store" "$n" "$RESULT" | tee -a "$RESULTS/runs.tsv"
    done
  done
done

log "medians (bytes of server RSS per idle stream, $CONNS streams):"
python3 - "$RESULTS/runs.tsv" <<'EOF' | tee "$RESULTS/summary.md"
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
stores = list(dict.fromkeys(r[1] for r in rows))
builds = list(dict.fromkeys(r[2] for r in rows))
print("| store | " + " | ".join(builds) + " |")
print("|---|" + "---|" * len(builds))
for s in stores:
    cells = []
    for b in builds:
        v = [r[3] for r in rows if r[1] == s and r[2] == b]
        ok = [int(x) for x in v if x.isdigit()]
        m = f"{statistics.median(ok):.0f}" if ok else "-"
        cells.append(f"{m} ({' / '.join(v)})")
    print(f"| {s} | " + " | ".join(cells) + " |")
EOF
rm -rf "$tmp"
