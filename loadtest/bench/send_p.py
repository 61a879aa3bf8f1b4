#!/usr/bin/env python3
"""Sends exactly COUNT single-chat messages (POST /p, form body
haoshuo=<urlencoded JSON>, user i -> user i+1) over one keep-alive
connection, one at a time, using the users file written by
loadtest/wrk/setup.sh (JSON_OUT=...). Used by run.sh to count Redis
commands per /p (INFO commandstats before and after). Stdlib only.

  python3 send_p.py --addr 127.0.0.1:2012 --users users.json --count 2000
"""
import argparse
import http.client
import json
import sys
import time
import urllib.parse


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--users", required=True)
    ap.add_argument("--count", type=int, default=1000)
    a = ap.parse_args()
    host, _, port = a.addr.rpartition(":")
    cfg = json.load(open(a.users))
    users, appid = cfg["users"], cfg["appid"]
    n = len(users)
    if n < 2:
        sys.exit("send_p.py: need at least 2 users")
    c = http.client.HTTPConnection(host or "127.0.0.1", int(port), timeout=30)
    ok = bad = 0
    t = time.monotonic()
    for i in range(a.count):
        f, to = users[i % n], users[(i + 1) % n]
        j = json.dumps({"appid": appid, "fromid": f["uid"], "datatype": 1, "toid": to["uid"],
                        "content": "send_p %d" % i, "token": f["token"], "restart": "all"})
        c.request("POST", "/p", body="haoshuo=" + urllib.parse.quote(j, safe=""),
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
        r = c.getresponse()
        body = r.read()
        if r.status == 200 and b'"ok"' in body:
            ok += 1
        else:
            bad += 1
            if bad <= 3:
                print(f"send_p.py: HTTP {r.status}: {body[:200]!r}", file=sys.stderr)
    secs = time.monotonic() - t
    print(json.dumps({"count": a.count, "ok": ok, "errors": bad, "secs": round(secs, 3)}))
    return 0 if bad == 0 else 2


if __name__ == "__main__":
    sys.exit(main())
