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
  kill -KILL "$p" 2>/dev/null
  wait "$p" 2>/dev/null
  untrack "$p"
}

# stop_all: every tracked process, all signalled at once, each given 5 s.
stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
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
