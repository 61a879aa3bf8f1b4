#!/usr/bin/env bash
# fanout_floor.sh: a group fan-out against the kernel's floor, side by side.
#
#   loadtest/bench/fanout_floor.sh        # release builds in target/; ~3 min
#
# For each size MEMBERSxMSGSxRATE in SIZES (default "9500x50x5 9500x20x1")
# it runs REPS (3) rounds, each round three runs back to back:
#
#   floor    `haoshuo-load floor --conns MEMBERS`: no server; MEMBERS loopback
#            pairs, 2 writer threads write each message to every socket in one
#            write() each, 2 reader threads read: the work no push server
#            avoids (9,500 pairs fit one process's 20,000 open files);
#   embedded `fanout_cpu.sh` on the embedded store: one group message to
#            MEMBERS streaming members, the same count, rate and readers
#            (2 client worker processes);
#   redis    the same on a redis-server the script starts (AOF everysec).
#
# Per run: all-members latency p50/p99 (from the message's send or fan-out
# start to each member's read), and CPU per delivery (floor: the writers'
# thread CPU per write; haoshuo: the server's CPU over sending + draining).
# Then medians per size and each store's ratio to the floor of the same
# round set. The floor is the reference: the machine's load moves both.
#
# Environment: SIZES REPS OUT HAOSHUO_BIN HAOSHUO_LOAD. Raw outputs stay in
# OUT (default: a new /tmp/fanout-floor.* dir).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${HAOSHUO_BIN:-$root/target/release/haoshuo}
LOAD=${HAOSHUO_LOAD:-$root/target/release/haoshuo-load}
SIZES=${SIZES:-9500x50x5 9500x20x1}
REPS=${REPS:-3}
OUT=${OUT:-$(mktemp -d /tmp/fanout-floor.XXXXXX)}
for f in "$BIN" "$LOAD"; do
  [ -x "$f" ] || { echo "fanout_floor.sh: $f missing (cargo build --release --workspace)" >&2; exit 1; }
done
mkdir -p "$OUT"
row() { awk -v k="$1" '$1 == k {print $2; exit}' "$2"; }
TSV=$OUT/runs.tsv
printf 'size\tkind\trep\tcheck\tp50_ms\tp99_ms\tus_per_delivery\tloadavg\n' > "$TSV"

echo "commit $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet || echo '+dirty'), $(nproc) cores, results in $OUT"
for size in $SIZES; do
  IFS=x read -r m n r <<< "$size"
  for rep in $(seq "$REPS"); do
    for kind in floor embedded redis; do
      out=$OUT/$kind.$size.$rep.txt load=$(cut -d' ' -f1 /proc/loadavg)
      case $kind in
        floor) "$LOAD" floor --conns "$m" --msgs "$n" --rate "$r" > "$out" 2> "$out.err"
               us=$(row writer_cpu_per_write_us "$out") ;;
        embedded) "$root/loadtest/bench/fanout_cpu.sh" "$BIN" "$m" "$n" "$r" > "$out" 2> "$out.err"
               us=$(row server_cpu_us_per_delivery "$out") ;;
        redis) STORE=redis "$root/loadtest/bench/fanout_cpu.sh" "$BIN" "$m" "$n" "$r" > "$out" 2> "$out.err"
               us=$(row server_cpu_us_per_delivery "$out") ;;
      esac
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$size" "$kind" "$rep" "$(row check "$out")" \
        "$(row latency_p50_ms "$out")" "$(row latency_p99_ms "$out")" "${us:--}" "$load" | tee -a "$TSV"
    done
  done
done

python3 - "$TSV" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def med(rs, k):
    v = [float(r[k]) for r in rs if r[k] not in ("", "-")]
    return statistics.median(v) if v else None
print("\nmedians; ratio = store / floor (same rounds)")
for size in dict.fromkeys(r["size"] for r in rows):
    m = {k: {c: med([r for r in rows if r["size"] == size and r["kind"] == k], c)
             for c in ("p50_ms", "p99_ms", "us_per_delivery")} for k in ("floor", "embedded", "redis")}
    for k in ("floor", "embedded", "redis"):
        x, f = m[k], m["floor"]
        ratio = lambda c: f" ({x[c] / f[c]:.2f}x)" if k != "floor" and x[c] and f[c] else ""
        checks = ",".join(r["check"] for r in rows if r["size"] == size and r["kind"] == k)
        print(f"{size:>10} {k:8} p50 {x['p50_ms']:.1f} ms{ratio('p50_ms')}  p99 {x['p99_ms']:.1f} ms{ratio('p99_ms')}"
              f"  CPU {x['us_per_delivery']:.2f} µs/delivery{ratio('us_per_delivery')}  checks {checks}")
EOF
