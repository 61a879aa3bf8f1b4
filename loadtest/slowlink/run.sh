#!/usr/bin/env bash
# Slow readers behind a link that is slow by itself: a network namespace
# whose loopback is rate-limited by tc (tbf), with haoshuo and
# `haoshuo-load slow` inside it and the readers unpaced (--rate-kbps 0), so
# the kernel's queues, not the client, set the pace. Runs
# loadtest/bench/slow.sh once in the namespace (embedded store), prints its
# result and the link's floor, and removes the namespace.
#
#   cargo build --release
#   loadtest/slowlink/run.sh          # root; iproute2 (ip, tc); ~1 minute
#
# Everything in the namespace shares the one shaped link: the fill's /p
# traffic too, and the readers divide it, so the floor is all readers'
# bytes over the link's rate.
#
# Knobs (environment, defaults in brackets):
#   RATE [4mbit] (tbf rate, Nmbit or Nkbit)  READERS [4]  OWED_MB [1]
#   RCVBUF [8192]  NS [haoshuo-slowlink-<pid>]
#   RESULTS [loadtest/bench/results/slowlink-<date>-<git short sha>]
#
# Where `ip netns` is not permitted (not root, a container without
# CAP_SYS_ADMIN) or ip/tc are missing, it says why on a `skipped:` line and
# exits 0. Otherwise it exits with slow.sh's status.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
RATE=${RATE:-4mbit}
READERS=${READERS:-4}
OWED_MB=${OWED_MB:-1}
RCVBUF=${RCVBUF:-8192}
NS=${NS:-haoshuo-slowlink-$$}
sha=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo nogit)
RESULTS=${RESULTS:-$root/loadtest/bench/results/slowlink-$(date +%Y%m%d-%H%M%S)-$sha}

skip() { echo "skipped: $*"; exit 0; }

command -v ip >/dev/null || skip "ip not found (apt-get install -y iproute2)"
command -v tc >/dev/null || skip "tc not found (apt-get install -y iproute2)"
case $RATE in
  *mbit) rate_bps=$(( ${RATE%mbit} * 1000000 / 8 ));;
  *kbit) rate_bps=$(( ${RATE%kbit} * 1000 / 8 ));;
  *) echo "RATE must be Nmbit or Nkbit, not $RATE" >&2; exit 1;;
esac
if ! err=$(ip netns add "$NS" 2>&1); then
  skip "ip netns not permitted here: $err"
fi
trap 'ip netns del "$NS" 2>/dev/null' EXIT
trap 'exit 130' INT TERM
in_ns() { ip netns exec "$NS" "$@"; }
# MTU 1500: tbf drops a packet larger than its burst (32 kbit = 4 KB), and
# loopback's default 64 KiB MTU sends such packets; 1500 is also what a
# real link carries, so the kernel's segment and buffer sizes are a real
# link's too.
in_ns ip link set lo mtu 1500 &&
  in_ns ip link set lo up &&
  in_ns tc qdisc add dev lo root tbf rate "$RATE" burst 32kbit latency 400ms ||
  skip "could not set up the shaped loopback in $NS"
echo "namespace $NS: lo mtu 1500, $(in_ns tc qdisc show dev lo)" >&2

in_ns env STORES=embedded RUNS=1 SINGLE=0 READERS="$READERS" OWED_MB="$OWED_MB" \
  RATE_KBPS=0 RCVBUF="$RCVBUF" RESULTS="$RESULTS" "$root/loadtest/bench/slow.sh"
rc=$?

table=$RESULTS/many-embedded-1.txt
if [ -f "$table" ]; then
  wire=$(sed -n 's/^wire_bytes_per_reader_median *//p' "$table")
  drain=$(sed -n 's/^drain_secs_max *//p' "$table")
  if [ -n "$wire" ] && [ -n "$drain" ]; then
    python3 - "$wire" "$READERS" "$rate_bps" "$drain" "$RATE" <<'PY'
import sys
wire, readers, rate, drain, name = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
floor = wire * readers / rate
print(f"link {name}: {readers} readers x {wire} bytes read = {wire * readers} bytes; "
      f"floor {floor:.1f} s at {rate} B/s (TCP/IP headers not counted); last reader drained in {drain} s")
PY
  fi
fi
exit "$rc"
