#!/usr/bin/env python3
"""Fan-out: N streaming subscribers of one channel (nchan) or one group
(haoshuo); publish M messages at R/s; measure deliveries/s and delivery
latency. The same client drives both servers, so they are measured alike.
Python 3 stdlib only.

  nchan:   N http-chunked subscribers of /sub/<ch>; POST /pub/<ch>
           python3 fanout.py nchan --addr 127.0.0.1:18081 --subs 10000 --msgs 20 --rate 5
  haoshuo: N+1 users from the admin listener; the extra one owns a group of
           the N (POST /gre) and posts with /gp; the N stream /cget/stream
           python3 fanout.py haoshuo --addr 127.0.0.1:2012 --admin 127.0.0.1:2013 \\
               --subs 10000 --msgs 20 --rate 5

Each message carries its number and the publisher's CLOCK_MONOTONIC send
time (taken just before the publish request is written); latency = arrival
time at the subscriber (read and parsed by this client) - send time.
Subscribers are spread over --procs forked processes (one selector each);
the parent publishes over one keep-alive connection, one request at a time
(--rate 0: back to back, as fast as the server answers).

Deliveries/s = distinct deliveries / (last delivery - first publish).
Every subscriber must get every published message exactly once
(haoshuo additionally: in msgid order); lost / duplicated are reported.

Prints a table and one line `FANOUT_JSON {...}`. Exit status 0 if nothing
was lost or duplicated and every subscriber was open, 2 otherwise, 1 on a
setup error.
"""

import argparse
import json
import multiprocessing as mp
import re
import sys
import time

import streamlib as sl


# haoshuo data frame: {"type":"data","content":"{\"msgs\":[{\"content\":\"<n> <ns>\",...,\"msgid\":\"<id>\"}],...}"}
DATA_PREFIX = b'{"type":"data"'
MSGID_KEY = b'\\"msgid\\"'
FAST = re.compile(rb'\\"content\\":\\"(\d+) (\d+)[^\\"]*\\".*?\\"msgid\\":\\"(\d+)\\"')


def pct(sorted_vals, q):
    if not sorted_vals:
        return 0
    i = min(len(sorted_vals) - 1, max(0, int(round(q * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[i]


# ------------------------------------------------------------------ child


def child(idx, addr, server, reqs, conn, connect_wait, drain, max_inflight, src_ips):
    """Holds its share of subscribers; reports readiness, then deliveries."""
    lat = []  # ns
    stats = {"frames": 0, "dup": 0, "bad": 0, "err_frames": 0, "order": 0,
             "first_ns": 0, "last_ns": 0}

    def seen(s, num, sent, now):
        d = s.data
        if d is None:
            d = s.data = set()
        if num in d:
            stats["dup"] += 1
            return
        d.add(num)
        lat.append(now - sent)
        if not stats["first_ns"] or now < stats["first_ns"]:
            stats["first_ns"] = now
        if now > stats["last_ns"]:
            stats["last_ns"] = now

    if server == "nchan":
        def on_line(s, line, now):
            stats["frames"] += 1
            try:
                num, sent = line.split()[:2]
                seen(s, int(num), int(sent), now)
            except ValueError:
                stats["bad"] += 1
    else:
        last_msgid = {}

        def msg(s, mid, num, sent, now):
            if mid <= last_msgid.get(s.idx, 0):
                stats["order"] += 1
            last_msgid[s.idx] = mid
            seen(s, num, sent, now)

        def on_line(s, line, now):
            stats["frames"] += 1
            # Fast path (a data frame costs ~3 us here instead of ~11 us for
            # two json.loads, so the client is less of the bottleneck): the
            # messages' content and msgid straight from the escaped JSON.
            # Used only when every msgid in the frame was matched.
            if line.startswith(DATA_PREFIX):
                found = FAST.findall(line)
                if found and len(found) == line.count(MSGID_KEY):
                    for num, sent, mid in found:
                        msg(s, int(mid), int(num), int(sent), now)
                    return
            try:
                f = json.loads(line)
            except ValueError:
                stats["bad"] += 1
                return
            t = f.get("type")
            if t == "noop":
                return
            if t != "data":
                stats["err_frames"] += 1
                return
            body = json.loads(f["content"])
            for m in body["msgs"]:
                try:
                    num, sent = m["content"].split()[:2]
                    msg(s, int(m["msgid"]), int(num), int(sent), now)
                except ValueError:
                    stats["bad"] += 1

    subs = sl.Subscribers(addr, on_line=on_line, src_ips=src_ips, max_inflight=max_inflight)
    for r in reqs:
        subs.add(r)
    want_head = server == "haoshuo"  # nchan sends its head with the first message
    t0 = time.monotonic()
    while time.monotonic() - t0 < connect_wait:
        subs.poll(0.05)
        if subs.started_all() and (not want_head or subs.n_head + subs.n_failed + subs.n_closed >= len(reqs)):
            break
    conn.send(("ready", subs.n_open, subs.n_failed, subs.n_head, time.monotonic() - t0))

    # Serve deliveries while the parent publishes; it then tells us what was
    # published, and we drain until everything arrived or `drain` quiet secs.
    expected = None
    cmd_ready = [False]
    rfd = conn.fileno()

    def on_cmd():
        cmd_ready[0] = True

    import selectors
    subs.sel.register(rfd, selectors.EVENT_READ, on_cmd)
    last_count = 0
    last_change = time.monotonic()
    hard_end = None
    last_check = 0.0
    while True:
        subs.poll(0.1)
        if cmd_ready[0]:
            cmd_ready[0] = False
            msg = conn.recv()
            if msg[0] == "published":
                expected = set(msg[1])
                subs.sel.unregister(rfd)
                hard_end = time.monotonic() + msg[2]
        n = len(lat)
        now = time.monotonic()
        if n != last_count:
            last_count, last_change = n, now
        if expected is not None and now - last_check >= 0.05:
            last_check = now
            done = all(s.data is not None and expected <= s.data for s in subs.subs if s.state != sl.CLOSED)
            if done or now - last_change > drain or now > hard_end:
                break
    lost = 0
    got = 0
    for s in subs.subs:
        have = s.data or set()
        got += len(have & expected)
        lost += len(expected - have)
    errors = dict(subs.errors)
    res = {"open": subs.n_open, "failed": subs.n_failed, "closed": subs.n_closed,
           "non_200": sum(1 for s in subs.subs if s.status not in (0, 200)),
           "delivered": got, "lost": lost, "errors": errors, **stats}
    subs.close_all()
    conn.send(("result", res, lat))
    conn.close()


# ------------------------------------------------------------------ parent


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("server", choices=["nchan", "haoshuo"])
    ap.add_argument("--addr", required=True)
    ap.add_argument("--admin", default="127.0.0.1:2013", help="haoshuo admin listener")
    ap.add_argument("--admin-key")
    ap.add_argument("--appid", default="bench")
    ap.add_argument("--subs", type=int, default=1000, help="subscribers (haoshuo: group members)")
    ap.add_argument("--msgs", type=int, default=20)
    ap.add_argument("--rate", type=float, default=5, help="messages/s (0: back to back)")
    ap.add_argument("--payload", type=int, default=0, help="padding bytes per message")
    ap.add_argument("--procs", type=int, default=2, help="subscriber processes")
    ap.add_argument("--connect-wait", type=float, default=120)
    ap.add_argument("--drain", type=float, default=5, help="quiet seconds before giving up on stragglers")
    ap.add_argument("--max-inflight", type=int, default=1000)
    ap.add_argument("--src-ips", type=int, default=4)
    ap.add_argument("--channel", help="nchan channel (default: unique per run)")
    a = ap.parse_args()

    addr = sl.parse_addr(a.addr)
    host = f"{addr[0]}:{addr[1]}"
    sl.raise_nofile()
    pub = sl.Http(addr, timeout=60)
    pad = " " + "x" * a.payload if a.payload else ""

    if a.server == "nchan":
        ch = a.channel or "fan" + str(time.time_ns() // 1000000)
        reqs = [sl.get_request(host, f"/sub/{ch}", "TE: chunked\r\n") for _ in range(a.subs)]

        def publish(i):
            body = f"{i} {sl.mono_ns()}{pad}\n".encode()
            return pub.request("POST", f"/pub/{ch}", body, {"Content-Type": "text/plain"})

        # nchan_stub_status counts subscribers over all workers (GET /pub/<ch>
        # answers for one worker only); count ours as the rise over a baseline.
        def total_subscribers():
            st, body = pub.request("GET", "/nchan_status")
            m = re.search(rb"subscribers: (\d+)", body)
            return int(m.group(1)) if st == 200 and m else -1

        base = total_subscribers()
        if base < 0:
            print("fanout.py: GET /nchan_status failed (see loadtest/nchan/nginx.conf)", file=sys.stderr)
            return 1

        def server_subscribers():
            return total_subscribers() - base
    else:
        t = time.monotonic()
        users = sl.provision(sl.parse_addr(a.admin), a.appid, sl.unique_prefix("f"), a.subs + 1, a.admin_key)
        owner_uid, owner_tok = users.pop()
        st, body = pub.post_json("/gre", {"appid": a.appid, "ownerid": owner_uid, "gname": "fanout",
                                          "uids": [u for u, _ in users], "token": owner_tok})
        if st != 200:
            print(f"fanout.py: /gre: HTTP {st}: {body[:300]!r}", file=sys.stderr)
            return 1
        gid = int(json.loads(body)["gid"])
        print(f"provisioned {len(users) + 1} users and group {gid} in {time.monotonic() - t:.1f}s",
              file=sys.stderr)
        reqs = [sl.get_request(host, f"/cget/stream?seq=1&cname={u}&token={tok}") for u, tok in users]

        def publish(i):
            body = {"appid": a.appid, "fromid": owner_uid, "datatype": 2, "toid": gid,
                    "content": f"{i} {sl.mono_ns()}{pad}", "token": owner_tok, "restart": "all"}
            return pub.post_json("/gp", body)

        server_subscribers = None

    ctx = mp.get_context("fork")
    procs, pipes = [], []
    nproc = max(1, min(a.procs, a.subs))
    for k in range(nproc):
        mine = reqs[k::nproc]
        here, there = ctx.Pipe()
        p = ctx.Process(target=child, args=(k, addr, a.server, mine, there, a.connect_wait, a.drain,
                                            a.max_inflight, a.src_ips), daemon=True)
        p.start()
        there.close()
        procs.append(p)
        pipes.append(here)
    del reqs

    ready = [p.recv() for p in pipes]
    n_open = sum(r[1] for r in ready)
    n_failed = sum(r[2] for r in ready)
    connect_secs = max(r[4] for r in ready)
    seen_by_server = None
    if server_subscribers is not None:  # nchan: wait until it counts them all
        t = time.monotonic()
        while time.monotonic() - t < a.connect_wait:
            seen_by_server = server_subscribers()
            if seen_by_server >= n_open:
                break
            time.sleep(0.2)
        connect_secs += time.monotonic() - t
    print(f"{n_open}/{a.subs} subscribers open (failed {n_failed}, server sees {seen_by_server}) "
          f"in {connect_secs:.2f}s; publishing {a.msgs} at {a.rate}/s", file=sys.stderr)

    ok_ids, pub_lat, pub_err = [], [], {}
    t_first = sl.mono_ns()
    for i in range(1, a.msgs + 1):
        if a.rate > 0:
            due = t_first + int((i - 1) * 1e9 / a.rate)
            wait = (due - sl.mono_ns()) / 1e9
            if wait > 0:
                time.sleep(wait)
        t = sl.mono_ns()
        try:
            st, body = publish(i)
        except OSError as e:
            st, body = 0, str(e).encode()
        pub_lat.append(sl.mono_ns() - t)
        if st in (200, 201, 202):
            ok_ids.append(i)
        else:
            key = f"HTTP {st}: {body[:80].decode('latin-1')}"
            pub_err[key] = pub_err.get(key, 0) + 1
    t_pub_end = sl.mono_ns()
    pub.close()
    for p in pipes:
        p.send(("published", ok_ids, a.drain + 120))

    results, lat = [], []
    for p in pipes:
        msg = p.recv()
        results.append(msg[1])
        lat.extend(msg[2])
    for p in procs:
        p.join(10)
    lat.sort()

    tot = lambda k: sum(r[k] for r in results)
    last = max((r["last_ns"] for r in results), default=0)
    span = (last - t_first) / 1e9 if last else 0
    expected = len(ok_ids) * a.subs
    ms = lambda ns: round(ns / 1e6, 3)
    pub_lat.sort()
    r = {
        "server": a.server,
        "subs": a.subs,
        "msgs": a.msgs,
        "rate": a.rate,
        "procs": nproc,
        "subs_open": n_open,
        "subs_failed": n_failed,
        "subs_closed_by_server": tot("closed"),
        "server_sees": seen_by_server if seen_by_server is not None else n_open - tot("closed"),
        "connect_secs": round(connect_secs, 2),
        "published_ok": len(ok_ids),
        "publish_errors": pub_err,
        "publish_secs": round((t_pub_end - t_first) / 1e9, 3),
        "publish_p50_ms": ms(pct(pub_lat, 0.5)),
        "publish_max_ms": ms(pub_lat[-1] if pub_lat else 0),
        "expected_deliveries": expected,
        "delivered": tot("delivered"),
        "lost": tot("lost"),
        "duplicated": tot("dup"),
        "out_of_order": tot("order"),
        "error_frames": tot("err_frames"),
        "unparsed": tot("bad"),
        "delivery_secs": round(span, 3),
        "deliveries_per_sec": round(tot("delivered") / span) if span > 0 else 0,
        "latency_samples": len(lat),
        "latency_p50_ms": ms(pct(lat, 0.5)),
        "latency_p90_ms": ms(pct(lat, 0.9)),
        "latency_p99_ms": ms(pct(lat, 0.99)),
        "latency_p999_ms": ms(pct(lat, 0.999)),
        "latency_max_ms": ms(lat[-1] if lat else 0),
        "sub_errors": {k: v for r_ in results for k, v in r_["errors"].items()},
    }
    ok = (n_open == a.subs and r["lost"] == 0 and r["duplicated"] == 0 and r["out_of_order"] == 0
          and not pub_err and r["delivered"] == expected and expected > 0)
    return sl.report(f"fanout.py {a.server}", "FANOUT_JSON", r, ok)


if __name__ == "__main__":
    sys.exit(main())
