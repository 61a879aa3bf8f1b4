#!/usr/bin/env python3
"""Hostile clients against one server: what an honest client feels.

Two measurements, each beside a reference run on the same machine:

  logins  N threads call /login for unknown users as fast as they can while
          one honest client calls /pull in a loop; reports the honest
          client's /pull latency (p50, p99, max) and what the logins got
          (401, 429). Run it against a server with the default limits and
          against one with the limits off (--hash-concurrency 1000
          --auth-per-ip 0 --login-per-user 0) for the reference.
  flood   one sender sends 64 KB messages to one user as fast as it can for
          S seconds; reports how many were accepted, refused (429), and the
          server's RSS growth. Run it with the defaults and with
          --send-rate 0 --inbox-cap 0 for the reference.

Usage:
  hostile.py logins --server 127.0.0.1:2012 --threads 200 --secs 10
  hostile.py flood  --server 127.0.0.1:2012 --pid PID --secs 10

Loopback only; every loop is bounded by --secs. Standard library only.
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse


def post(conn, path, obj):
    body = urllib.parse.urlencode({"haoshuo": json.dumps(obj)})
    conn.request("POST", path, body, {"Content-Type": "application/x-www-form-urlencoded"})
    r = conn.getresponse()
    data = r.read()
    return r.status, data


def connect(server):
    host, port = server.rsplit(":", 1)
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        sys.exit("loopback targets only")
    return http.client.HTTPConnection(host, int(port), timeout=30)


def user(server, appid, name):
    c = connect(server)
    status, _ = post(c, "/re", {"appid": appid, "username": name, "pass": "pw"})
    if status not in (200, 409):
        sys.exit(f"/re {name}: {status}")
    status, data = post(c, "/login", {"appid": appid, "username": name, "pass": "pw"})
    if status != 200:
        sys.exit(f"/login {name}: {status} {data!r}")
    return json.loads(data)


def pct(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def logins(a):
    appid = f"hostile{int(time.time())}"
    honest = user(a.server, appid, "honest")
    stop = time.monotonic() + a.secs
    counts = {}
    lock = threading.Lock()

    def attacker(i):
        c = connect(a.server)
        n = 0
        while time.monotonic() < stop:
            try:
                status, _ = post(c, "/login", {"appid": appid, "username": f"nobody{i}-{n}", "pass": "x"})
            except OSError:
                status = "error"
                c = connect(a.server)
            n += 1
            with lock:
                counts[status] = counts.get(status, 0) + 1

    threads = [threading.Thread(target=attacker, args=(i,), daemon=True) for i in range(a.threads)]
    for t in threads:
        t.start()
    c = connect(a.server)
    lat = []
    while time.monotonic() < stop:
        t0 = time.perf_counter()
        status, _ = post(c, "/pull", {"appid": appid, "uid": honest["uid"], "token": honest["token"]})
        lat.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            sys.exit(f"honest /pull answered {status}")
    for t in threads:
        t.join()
    print(f"logins: {a.threads} attackers, {a.secs}s; attackers got {dict(sorted(counts.items(), key=str))}")
    print(f"honest /pull: n={len(lat)} p50={statistics.median(lat):.1f}ms "
          f"p99={pct(lat, 99):.1f}ms max={max(lat):.1f}ms")


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def flood(a):
    appid = f"flood{int(time.time())}"
    attacker = user(a.server, appid, "attacker")
    victim = user(a.server, appid, "victim")
    before = rss(a.pid)
    content = "x" * 60000
    c = connect(a.server)
    stop = time.monotonic() + a.secs
    counts = {}
    while time.monotonic() < stop:
        status, _ = post(c, "/p", {"appid": appid, "fromid": attacker["uid"], "toid": victim["uid"],
                                   "datatype": 1, "content": content, "token": attacker["token"]})
        counts[status] = counts.get(status, 0) + 1
    after = rss(a.pid)
    print(f"flood: {a.secs}s of 60 KB sends; answers {dict(sorted(counts.items()))}; "
          f"server RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB (+{(after - before) / 2**20:.1f} MiB)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    lg = sub.add_parser("logins")
    lg.add_argument("--server", default="127.0.0.1:2012")
    lg.add_argument("--threads", type=int, default=200)
    lg.add_argument("--secs", type=float, default=10)
    fl = sub.add_parser("flood")
    fl.add_argument("--server", default="127.0.0.1:2012")
    fl.add_argument("--pid", type=int, required=True)
    fl.add_argument("--secs", type=float, default=10)
    a = ap.parse_args()
    {"logins": logins, "flood": flood}[a.cmd](a)


if __name__ == "__main__":
    main()
