#!/usr/bin/env python3
"""Summary of one loadtest/bench/run.sh results directory, as Markdown
(stdout): medians over rounds, and haoshuo/reference ratios.

  python3 loadtest/bench/summarize.py loadtest/bench/results/<run>
"""
import glob
import json
import os
import re
import statistics
import sys


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


def json_line(path, tag):
    s = read(path)
    if not s:
        return None
    for line in s.splitlines():
        if line.startswith(tag + " "):
            try:
                return json.loads(line[len(tag) + 1:])
            except ValueError:
                return None
    return None


def load_table(path, scenario):
    """The `== haoshuo-load <scenario> ==` table as a dict."""
    s = read(path)
    if not s:
        return None
    out, on = {}, False
    for line in s.splitlines():
        if line.startswith("== haoshuo-load "):
            on = scenario in line
            continue
        if on:
            m = re.match(r"^(\S+)\s{2,}(.*)$", line)
            if m:
                out[m.group(1)] = m.group(2).strip()
    return out or None


def idle_results(idd, n):
    """The idle step's three readings at size n: haoshuo-load's table, and
    idle.py's JSON against haoshuo and against nchan (None where missing)."""
    return (
        load_table(os.path.join(idd, f"haoshuo-load.{n}.txt"), "idle"),
        json_line(os.path.join(idd, f"idlepy-haoshuo.{n}.txt"), "IDLE_JSON"),
        json_line(os.path.join(idd, f"idlepy-nchan.{n}.txt"), "IDLE_JSON"),
    )


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, nd=0, unit=""):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if nd == 0:
        return f"{v:,.0f}{unit}"
    return f"{v:,.{nd}f}{unit}"


def ratio(a, b, nd=2):
    if a is None or b in (None, 0):
        return "n/a"
    return f"{a / b:.{nd}f}"


def num(d, k):
    if not d or k not in d:
        return None
    try:
        return float(d[k])
    except (TypeError, ValueError):
        return None


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    R = sys.argv[1]
    o = []
    p = o.append
    p(f"# haoshuo benchmarks: {os.path.basename(os.path.normpath(R))}\n")
    meta = read(os.path.join(R, "meta.txt")) or ""
    for k in ("date:", "git:", "cpus:", "haoshuo:", "nginx:", "nchan:", "redis:", "loadavg"):
        for line in meta.splitlines():
            if line.startswith(k):
                p(f"- {line}")
    p("")

    # ---- wrk
    wd = os.path.join(R, "wrk")
    if glob.glob(os.path.join(wd, "*.[0-9]*.txt")):
        p("## HTTP throughput (wrk, loopback)\n")
        p("| target | runs | req/s median | req/s runs | p50 ms | p99 ms | non-2xx | socket errors | vs nginx /ok |")
        p("|---|---|---|---|---|---|---|---|---|")
        res = {}
        names = [("nginx-ok", "nginx GET /ok"), ("haoshuo-p", "haoshuo POST /p (embedded)"),
                 ("haoshuo-redis-p", "haoshuo POST /p (--redis)"), ("haoshuo-pull", "haoshuo POST /pull (embedded)"),
                 ("haoshuo-redis-pull", "haoshuo POST /pull (--redis)"), ("haoshuo-login", "haoshuo POST /login (embedded, -c8)"),
                 ("haoshuo-redis-login", "haoshuo POST /login (--redis, -c8)")]
        for key, label in names:
            runs = [json_line(f, "WRK_JSON") for f in sorted(glob.glob(os.path.join(wd, f"{key}.*.txt")))]
            runs = [r for r in runs if r]
            if not runs:
                continue
            rps = med([r["rps"] for r in runs])
            res[key] = rps
            p50 = med([r["lat_p50_us"] for r in runs]) / 1000
            p99 = med([r["lat_p99_us"] for r in runs]) / 1000
            non2 = sum(r["non2xx"] for r in runs)
            errs = sum(r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"] for r in runs)
            vs = "1.00" if key == "nginx-ok" else ratio(rps, res.get("nginx-ok"))
            p(f"| {label} | {len(runs)} | {fmt(rps)} | {' / '.join(fmt(r['rps']) for r in runs)} | "
              f"{fmt(p50, 2)} | {fmt(p99, 2)} | {non2} | {errs} | {vs} |")
        if "haoshuo-p" in res and "haoshuo-redis-p" in res:
            p(f"\n/p on Redis vs embedded: {ratio(res['haoshuo-redis-p'], res['haoshuo-p'])}")
        p("")

    # ---- redis
    rd = os.path.join(R, "redis")
    if glob.glob(os.path.join(rd, "*.txt")) or glob.glob(os.path.join(rd, "*.json")):
        p("## Redis\n")
        rows = []
        for P in ("16", "1"):
            s = read(os.path.join(rd, f"benchmark-P{P}.txt")) or ""
            for piece in re.split(r"[\r\n]+", s):
                m = re.match(r"^\s*(SET|INCR): ([\d.]+) requests per second(?:, p50=([\d.]+) msec)?", piece)
                if m:
                    rows.append((m.group(1), P, float(m.group(2)), m.group(3)))
        if rows:
            p("| redis-benchmark -n 200000 | pipeline | req/s | p50 ms |")
            p("|---|---|---|---|")
            for t, P, rps, p50 in rows:
                p(f"| {t} | -P {P} | {fmt(rps)} | {p50 or 'n/a'} |")
            p("")

        def stats(name):
            s = read(os.path.join(rd, name))
            if s is None:
                return None
            d = {}
            for line in s.splitlines():
                m = re.match(r"^cmdstat_([^:]+):calls=(\d+)", line.strip())
                if m:
                    d[m.group(1)] = int(m.group(2))
            return d

        def diff(a, b):
            if a is None or b is None:
                return None
            return {k: b.get(k, 0) - a.get(k, 0) for k in b if k != "info" and b.get(k, 0) - a.get(k, 0)}

        idle = diff(stats("commandstats-idle-before.txt"), stats("commandstats-idle-after.txt"))
        sent = diff(stats("commandstats-before.txt"), stats("commandstats-after.txt"))
        sp = None
        try:
            sp = json.loads((read(os.path.join(rd, "send_p.json")) or "").strip().splitlines()[-1])
        except (ValueError, IndexError):
            pass
        if sent is not None and sp and sp.get("ok"):
            n = sp["ok"]
            tot = sum(sent.values())
            p(f"Redis commands per /p ({n} sequential /p, {sp.get('errors', 0)} errors, "
              f"{n / max(sp['secs'], 1e-9):,.0f} /p per s on one connection): "
              f"**{tot / n:.2f}** (commands run inside Lua scripts are counted too)\n")
            p("| command | calls | per /p |")
            p("|---|---|---|")
            for k, v in sorted(sent.items(), key=lambda kv: -kv[1]):
                p(f"| {k} | {v} | {v / n:.2f} |")
            if idle is not None:
                p(f"\nBackground (2 s idle, INFO excluded): {sum(idle.values())} commands {idle or ''}")
            p("")

    # ---- idle
    idd = os.path.join(R, "idle")
    if os.path.isdir(idd):
        sizes = sorted({int(m.group(1)) for f in os.listdir(idd) if (m := re.search(r"\.(\d+)\.txt$", f))})
        if sizes:
            p("## Idle streams: server memory per connection\n")
            p("haoshuo: VmRSS of the server; nchan: summed VmRSS of the 2 nginx workers "
              "(PSS of master+workers in brackets). Fresh server per size; kernel socket memory not included.\n")
            p("| conns | haoshuo-load: open | haoshuo-load: B/conn | idle.py haoshuo: open | idle.py haoshuo: B/conn | "
              "idle.py nchan: open | idle.py nchan: B/conn (PSS) | haoshuo/nchan (haoshuo-load) | haoshuo/nchan (same client) |")
            p("|---|---|---|---|---|---|---|---|---|")
            idle = [(n, idle_results(idd, n)) for n in sizes]
            for n, (hl, ph, pn) in idle:
                hb = num(hl, "server_rss_per_conn_bytes")
                hob = f"{hl.get('open_after_hold', '?')} {hl.get('check', '')}" if hl else "n/a"
                pb = ph["rss_per_conn_bytes"] if ph else None
                pob = f"{ph['open_after_hold']} {ph['check']}" if ph else "n/a"
                nb = pn["rss_per_conn_bytes"] if pn else None
                nob = f"{pn['open_after_hold']} {pn['check']}" if pn else "n/a"
                npss = f" ({fmt(pn['pss_per_conn_bytes'])})" if pn else ""
                p(f"| {n} | {hob} | {fmt(hb)} | {pob} | {fmt(pb)} | {nob} | {fmt(nb)}{npss} | "
                  f"{ratio(hb, nb)} | {ratio(pb, nb)} |")
            p("")
            p("| conns | haoshuo-load connect s | haoshuo-load connects/s | idle.py haoshuo connect s | idle.py nchan connect s | "
              "haoshuo RSS after MiB | nginx workers RSS after MiB |")
            p("|---|---|---|---|---|---|---|")
            for n, (hl, ph, pn) in idle:
                p(f"| {n} | {(hl or {}).get('connect_secs', 'n/a')} | {(hl or {}).get('connects_per_sec', 'n/a')} | "
                  f"{ph['connect_secs'] if ph else 'n/a'} | {pn['connect_secs'] if pn else 'n/a'} | "
                  f"{(hl or {}).get('server_rss_after_mib', 'n/a')} | {pn['rss_after_mib'] if pn else 'n/a'} |")
            p("")

    # ---- fanout
    fd = os.path.join(R, "fanout")
    if os.path.isdir(fd):
        tags = sorted({m.group(1) for f in os.listdir(fd) if (m := re.search(r"\.(r[\d.]+)\.txt$", f))},
                      key=lambda t: -float(t[1:]) if float(t[1:]) else 1e9)
        if tags:
            p("## Fan-out: one group / channel, every member streaming\n")
            p("| client -> server | rate | subs open | delivered / expected | lost | dup | deliveries/s | "
              "p50 ms | p99 ms | p99.9 ms | max ms | check |")
            p("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for tag in tags:
                hl = load_table(os.path.join(fd, f"haoshuo-load.{tag}.txt"), "fanout")
                rows = []
                if hl:
                    rows.append(("haoshuo-load -> haoshuo", hl.get("rate"), hl.get("open_at_end"),
                                 f"{hl.get('delivered_distinct')} / {hl.get('expected_deliveries')}",
                                 hl.get("lost"), hl.get("duplicated"), num(hl, "deliveries_per_sec"),
                                 num(hl, "latency_p50_ms"), num(hl, "latency_p99_ms"), num(hl, "latency_p999_ms"),
                                 num(hl, "latency_max_ms"), hl.get("check")))
                pys = {}
                for srv in ("haoshuo", "nchan"):
                    j = json_line(os.path.join(fd, f"fanoutpy-{srv}.{tag}.txt"), "FANOUT_JSON")
                    pys[srv] = j
                    if j:
                        rows.append((f"fanout.py -> {srv}", j["rate"], j["subs_open"],
                                     f"{j['delivered']} / {j['expected_deliveries']}", j["lost"], j["duplicated"],
                                     j["deliveries_per_sec"], j["latency_p50_ms"], j["latency_p99_ms"],
                                     j["latency_p999_ms"], j["latency_max_ms"], j["check"]))
                    else:
                        rows.append((f"fanout.py -> {srv}", tag[1:], "n/a", "n/a", "", "", None, None, None, None, None, "n/a"))
                for r_ in rows:
                    p(f"| {r_[0]} | {r_[1]} | {r_[2]} | {r_[3]} | {r_[4]} | {r_[5]} | {fmt(r_[6])} | "
                      f"{fmt(r_[7], 1)} | {fmt(r_[8], 1)} | {fmt(r_[9], 1)} | {fmt(r_[10], 1)} | {r_[11]} |")
                h, n = pys.get("haoshuo"), pys.get("nchan")
                if h and n:
                    p(f"| *haoshuo/nchan (fanout.py)* | {tag[1:]} | | | | | "
                      f"{ratio(h['deliveries_per_sec'], n['deliveries_per_sec'])} | "
                      f"{ratio(h['latency_p50_ms'], n['latency_p50_ms'])} | {ratio(h['latency_p99_ms'], n['latency_p99_ms'])} | "
                      f"{ratio(h['latency_p999_ms'], n['latency_p999_ms'])} | {ratio(h['latency_max_ms'], n['latency_max_ms'])} | |")
            p("\nrate 0 = back to back (the publisher waits for each answer). Latency = arrival at the client - "
              "publisher's send time; fanout.py is Python, so its numbers include its own parsing of every delivery.\n")

    # ---- steps
    st = read(os.path.join(R, "steps.tsv")) or ""
    rows = [l.split("\t") for l in st.splitlines() if l.strip()]
    bad = [r_ for r_ in rows if len(r_) >= 2 and r_[1] != "0"]
    total = sum(int(r_[2]) for r_ in rows if len(r_) >= 3 and r_[2].isdigit())
    p("## Steps\n")
    p(f"{len(rows)} steps, {len(bad)} failed, {total} s in steps.")
    loads = [float(r_[3]) for r_ in rows if len(r_) >= 4 and r_[3].replace(".", "").isdigit()]
    if loads:
        p(f"1-min loadavg at step starts: median {statistics.median(loads):.2f}, max {max(loads):.2f} "
          f"(2 cores; the benchmark itself contributes — compare runs, not absolutes).")
    for r_ in bad:
        why = {"124": "timeout", "2": "check failed", "1": "error"}.get(r_[1], "")
        p(f"- FAILED: {r_[0]} (exit {r_[1]}{', ' + why if why else ''})")
    print("\n".join(o))


if __name__ == "__main__":
    main()
