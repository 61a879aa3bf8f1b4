#!/usr/bin/env python3
"""Summary of one loadtest/bench/slow.sh results directory, as Markdown
(stdout): per store and run kind (many readers, single reader), the median
over runs of each figure, with every run's value beside it.

  python3 loadtest/bench/summarize_slow.py loadtest/bench/results/slow-<run>
"""
import glob
import os
import re
import statistics
import sys

from summarize import load_table, read

# (row in haoshuo-load's table, heading)
FIGURES = [
    ("drain_secs_median", "drain s, median reader"),
    ("drain_secs_p99", "drain s, p99"),
    ("drain_secs_max", "drain s, max"),
    ("floor_secs_owed", "floor s (owed / rate)"),
    ("floor_secs_wire", "floor s (wire bytes / rate)"),
    ("read_mib_per_sec_all", "MiB/s read, all readers"),
    ("stored_rss_growth_mib", "RSS growth storing, MiB"),
    ("drain_rss_growth_mib", "RSS growth draining, MiB"),
    ("drain_rss_growth_per_reader_kib", "draining, KiB per reader"),
    ("tcp_mem_growth_per_reader_kib", "kernel TCP memory, KiB per reader"),
    ("redis_used_memory_mib", "redis used_memory after, MiB"),
    ("streams_closed", "streams closed"),
    ("lost", "lost"),
    ("duplicated", "duplicated"),
    ("check", "check"),
]


def extra_rows(path):
    """Lines the script appends after the table (`name  value`)."""
    out = {}
    for line in (read(path) or "").splitlines():
        m = re.match(r"^(redis_used_memory_mib|loadavg_at_end)\s+(\S+)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def main(d):
    runs = {}
    for path in sorted(glob.glob(os.path.join(d, "*.txt"))):
        m = re.match(r"^(many|single)-(\w+)-(\d+)\.txt$", os.path.basename(path))
        if not m:
            continue
        t = load_table(path, "slow") or {}
        t.update(extra_rows(path))
        runs.setdefault((m.group(1), m.group(2)), []).append(t)
    print(f"# Slow readers: {os.path.basename(os.path.normpath(d))}\n")
    meta = read(os.path.join(d, "meta.txt")) or ""
    for line in meta.splitlines():
        if line.startswith(("git:", "loadavg", "RUNS=")):
            print(f"- {line}")
    print()
    for (kind, store), tables in sorted(runs.items()):
        first = next((t for t in tables if t), {})
        print(f"## {kind} readers, {store} store ({len(tables)} runs)\n")
        rate = first.get("rate_kib_per_sec", "?")
        rate = rate if rate == "unpaced" else f"{rate} KiB/s each"
        print(f"readers {first.get('readers', '?')}, owed {first.get('owed_mib_per_reader', '?')} MiB each "
              f"({first.get('msgs_per_reader', '?')} x {first.get('msg_bytes', '?')} B), "
              f"{rate}, rcvbuf {first.get('rcvbuf', '?')}\n")
        print("| figure | median | runs |")
        print("|---|---|---|")
        for key, head in FIGURES:
            vals = [t.get(key) for t in tables]
            if all(v is None for v in vals):
                continue
            nums = [number(v) for v in vals]
            if all(n is not None for n in nums):
                med = f"{statistics.median(nums):g}"
            else:
                med = "" if len(set(vals)) > 1 else str(vals[0])
            print(f"| {head} | {med} | {' / '.join(str(v) for v in vals)} |")
        loads = [t.get("loadavg_at_end", "?") for t in tables]
        print(f"\n1-min loadavg at the end of each run: {' / '.join(loads)}\n")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
