#!/usr/bin/env python3
"""Draws memory against connections from c1m.sh runs, as an SVG (stdlib only).

    loadtest/c1m_chart.py OUT.svg RUN_DIR [RUN_DIR ...]

Each RUN_DIR is a c1m.sh OUT dir; its table.txt gives the streams held
(open_after_idle), the server's RSS after the hold (all processes) and
before the users were provisioned (before the streams, for runs that did
not record it: a heap trim after provisioning makes that base too high),
and the kernel slab after and before. Two panels: the
server's memory for the streams (MiB) and the kernel's slab (GiB, both ends
of every connection), each point labelled with its bytes per stream.
"""
import sys
from pathlib import Path


def read(run: Path) -> dict:
    rows = {}
    for line in (run / "table.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            rows[parts[0]] = parts[1]
    n = int(rows["open_after_idle"])
    base = rows.get("server_rss_before_provision_mib", rows["server_rss_before_mib"])
    server = float(rows["server_rss_after_mib"]) - float(base)
    slab = float(rows["kernel_slab_after_mib"]) - float(rows["kernel_slab_before_mib"])
    return {"n": n, "server_mib": server, "slab_gib": slab / 1024}


def panel(x0, title, points, key, unit, per_stream):
    w, h, left, bottom = 330, 220, 50, 30
    xmax = max(p["n"] for p in points) * 1.1
    ymax = max(p[key] for p in points) * 1.2
    sx = lambda n: x0 + left + n / xmax * (w - left - 10)
    sy = lambda v: 20 + (h - bottom - 20) * (1 - v / ymax)
    out = [f'<text x="{x0 + w / 2}" y="14" text-anchor="middle" font-size="12">{title}</text>']
    out.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(xmax)}" y2="{sy(0)}" stroke="black"/>')
    out.append(f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(0)}" y2="{sy(ymax)}" stroke="black"/>')
    for frac in (0.25, 0.5, 0.75, 1.0):
        v = ymax / 1.2 * frac
        out.append(f'<text x="{sx(0) - 4}" y="{sy(v) + 4}" text-anchor="end" font-size="9">{v:.3g}</text>')
    for n in (250_000, 500_000, 750_000, 1_000_000):
        if n <= xmax:
            out.append(f'<text x="{sx(n)}" y="{sy(0) + 12}" text-anchor="middle" font-size="9">{n // 1000}k</text>')
    out.append(f'<text x="{x0 + 12}" y="{sy(ymax / 2)}" font-size="9" transform="rotate(-90 {x0 + 12} {sy(ymax / 2)})" text-anchor="middle">{unit}</text>')
    pts = " ".join(f"{sx(p['n']):.1f},{sy(p[key]):.1f}" for p in points)
    out.append(f'<polyline points="{pts}" fill="none" stroke="#1f77b4" stroke-width="2"/>')
    for p in points:
        out.append(f'<circle cx="{sx(p["n"]):.1f}" cy="{sy(p[key]):.1f}" r="3" fill="#1f77b4"/>')
        out.append(f'<text x="{sx(p["n"]):.1f}" y="{sy(p[key]) - 7:.1f}" text-anchor="middle" font-size="9">{per_stream(p):.0f} B</text>')
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    points = sorted((read(Path(d)) for d in sys.argv[2:]), key=lambda p: p["n"])
    body = panel(0, "haoshuo servers' RSS for the users and streams", points, "server_mib", "MiB",
                 lambda p: p["server_mib"] * 2**20 / p["n"])
    body += panel(340, "kernel slab, both ends of each connection", points, "slab_gib", "GiB",
                  lambda p: p["slab_gib"] * 2**30 / p["n"])
    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="680" height="240" font-family="sans-serif">',
           '<rect width="100%" height="100%" fill="white"/>'] + body + ["</svg>"]
    Path(sys.argv[1]).write_text("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
