# Process bookkeeping shared by the benchmark scripts (run.sh, slow.sh,
# fanout_vs_nchan.sh): source it, push every background pid onto PIDS, and
# call stop_all from the EXIT trap. Nothing here starts anything.

# log MESSAGE...: a timestamped line on stderr.
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Processes started and not yet stopped.
PIDS=()

untrack() { local p=$1 q keep=(); for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done; PIDS=("${keep[@]}"); }

# stop PID [SECS]: SIGTERM, up to SECS (15) seconds, then SIGKILL.
stop() {
  local p=$1 secs=${2:-15}
  [ -n "$p" ] || return 0
  kill -TERM "$p" 2>/dev/null
  for _ in $(seq $((secs * 10))); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null
  untrack "$p"
}

# stop_all: every tracked process, all signalled at once, each given 5 s.
stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  PIDS=()
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# low_port: a free port below the ephemeral range (11000-31000), on every
# address: a load client's thousands of sockets on 127.0.0.x may take any
# port inside that range by the time a server binds the one free_port saw.
low_port() { python3 -c '
import random, socket
while True:
    p = random.randint(11000, 31000)
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", p)); print(p); break
    except OSError: pass'; }

# start_cluster DIR MASTERS: a Redis Cluster of MASTERS masters (no
# replicas), each a redis-server in DIR/PORT on a free low_port (the cluster
# bus takes PORT + 10000 too) with AOF
# (everysec) like the benchmarks' single redis-server; pids go onto PIDS and
# CLUSTER_PIDS. Sets CLUSTER_URL (redis+cluster://...) once every node says
# cluster_state:ok. Not in a $(...): the pids would be the subshell's.
start_cluster() {
  local dir=$1 n=$2 ports=() p i try
  CLUSTER_PIDS=()
  for i in $(seq "$n"); do
    # A port (or its bus port) taken meanwhile: another one.
    for try in 1 2 3; do
      p=$(cluster_port)
      mkdir -p "$dir/$p"
      redis-server --port "$p" --bind 127.0.0.1 --dir "$dir/$p" --save '' \
        --appendonly yes --appendfsync everysec --cluster-enabled yes \
        --cluster-config-file nodes.conf --logfile "$dir/$p/redis.log" &
      local pid=$!
      for _ in $(seq 100); do
        [ "$(redis-cli -p "$p" ping 2>/dev/null)" = PONG ] && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      if [ "$(redis-cli -p "$p" ping 2>/dev/null)" = PONG ]; then
        PIDS+=("$pid")
        CLUSTER_PIDS+=("$pid")
        ports+=("$p")
        break
      fi
      kill "$pid" 2>/dev/null || true
      log "cluster node on $p did not start (try $try): $(tail -1 "$dir/$p/redis.log")"
    done
  done
  [ "${#ports[@]}" = "$n" ] || return 1
  # shellcheck disable=SC2046 # one argument per node
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-yes \
    > "$dir/create.log" 2>&1 || { log "redis-cli --cluster create failed: $(tail -3 "$dir/create.log")"; return 1; }
  for p in "${ports[@]}"; do
    for _ in $(seq 200); do
      redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break
      sleep 0.1
    done
  done
  CLUSTER_URL="redis+cluster://$(printf '127.0.0.1:%s,' "${ports[@]}" | sed 's/,$//')"
}

# cluster_port: a free port P whose cluster bus port P + 10000 is free too,
# both below the default ephemeral range (from 32768), as low_port's are.
cluster_port() { python3 -c '
import random, socket
while True:
    p = random.randint(11000, 21000)
    a, b = socket.socket(), socket.socket()
    try:
        a.bind(("0.0.0.0", p)); b.bind(("0.0.0.0", p + 10000)); print(p); break
    except OSError: pass
    finally:
        a.close(); b.close()'; }

# cluster_ports URL: the ports a redis+cluster:// or redis:// URL names.
cluster_ports() { echo "$1" | sed -e 's|^[a-z+]*://||' -e 's|/.*||' | tr ',' '\n' | sed 's/.*://'; }
