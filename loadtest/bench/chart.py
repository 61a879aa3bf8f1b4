#!/usr/bin/env python3
"""Draws docs/img/rss-per-connection.svg from a results dir of run.sh.

Server memory per idle stream (bytes) against connection count, haoshuo
beside nginx+nchan, from the idle step's raw outputs. Needs matplotlib
(`pip install matplotlib`); used for docs/benchmarks.md only.

    loadtest/bench/chart.py loadtest/bench/results/<run> docs/img/rss-per-connection.svg
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("svg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import summarize  # noqa: E402


def idle_rows(run: Path) -> list:
    """Bytes per idle connection at each size of the idle step."""
    idle = run / "idle"
    sizes = sorted({int(p.name.split(".")[1]) for p in idle.glob("haoshuo-load.*.txt")})
    rows = []
    for n in sizes:
        hl, ph, pn = summarize.idle_results(str(idle), n)
        rows.append({
            "conns": n,
            "haoshuo_load": summarize.num(hl, "server_rss_per_conn_bytes"),
            "haoshuo_py": ph and ph.get("rss_per_conn_bytes"),
            "nchan": pn and pn.get("rss_per_conn_bytes"),
        })
    return rows


def main() -> None:
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    rows = idle_rows(run)
    sizes = [r["conns"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in [
        ("haoshuo_load", "haoshuo (haoshuo-load client)"),
        ("haoshuo_py", "haoshuo (idle.py client)"),
        ("nchan", "nginx + nchan (idle.py client)"),
    ]:
        ys = [r.get(key) for r in rows]
        if any(y is not None for y in ys):
            ax.plot(sizes, ys, marker="o", label=label)
    ax.set_xlabel("idle streaming connections")
    ax.set_ylabel("server RSS growth per connection (bytes)")
    ax.set_yscale("log")
    ax.set_xticks(sizes)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"Memory per idle subscriber ({run.name})")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
