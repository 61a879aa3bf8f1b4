#!/usr/bin/env python3
"""Idle subscribers: open N streaming subscriptions, hold them, and report the
server's memory per connection. Python 3 stdlib only; one process (mind the
open-file limit: N + a few sockets).

  nchan:   N http-chunked subscribers, each on its own channel /sub/<prefix><i>
           python3 idle.py nchan --addr 127.0.0.1:18081 --nginx-pid DIR/nginx.pid --conns 10000
  haoshuo: N users from the admin listener, each streaming /cget/stream
           python3 idle.py haoshuo --addr 127.0.0.1:2012 --admin 127.0.0.1:2013 \\
               --server-pid $(pidof haoshuo) --conns 10000

Memory is read from /proc before the connections open (for haoshuo: after the
users were provisioned) and after the hold: nginx's workers' summed VmRSS
(plus the PSS of master + workers, which does not count nchan's shared
memory once per worker), or haoshuo's VmRSS. Kernel TCP buffer memory
(/proc/net/sockstat, both ends of each loopback connection) is reported too.

An nchan http-chunked subscriber gets no response head until the first
message, so nchan subscribers count as open once their request is written,
and are confirmed by nchan_stub_status (GET /nchan_status: "subscribers: N").
haoshuo streams count once their 200 head arrives.

Prints a table and one line `IDLE_JSON {...}`. Exit status 0 if all N were
open at the end of the hold, 2 if not, 1 on a setup error.
"""

import argparse
import re
import sys
import time

import streamlib as sl


def nchan_subscribers(h):
    try:
        st, body = h.request("GET", "/nchan_status")
    except OSError:
        return -1
    m = re.search(rb"subscribers: (\d+)", body)
    return int(m.group(1)) if st == 200 and m else -1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("server", choices=["nchan", "haoshuo"])
    ap.add_argument("--addr", required=True, help="the server's HTTP address (nchan: the pub/sub server)")
    ap.add_argument("--admin", default="127.0.0.1:2013", help="haoshuo admin listener")
    ap.add_argument("--admin-key")
    ap.add_argument("--appid", default="bench")
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--hold", type=float, default=10, help="seconds to hold once all are open")
    ap.add_argument("--server-pid", type=int, help="haoshuo: the server's pid")
    ap.add_argument("--nginx-pid", help="nchan: nginx master pid, or the path of its pid file")
    ap.add_argument("--max-inflight", type=int, default=1000)
    ap.add_argument("--connect-wait", type=float, default=120, help="seconds to wait for all to open")
    ap.add_argument("--src-ips", type=int, default=4, help="spread sockets over 127.0.0.2..(2+K-1)")
    a = ap.parse_args()

    addr = sl.parse_addr(a.addr)
    nofile = sl.raise_nofile()
    if a.conns + 50 > nofile:
        print(f"idle.py: {a.conns} connections need more than the open-file limit {nofile}", file=sys.stderr)
        return 1
    host = f"{addr[0]}:{addr[1]}"

    if a.server == "nchan":
        if not a.nginx_pid:
            print("idle.py: --nginx-pid is required for nchan", file=sys.stderr)
            return 1
        pid = int(open(a.nginx_pid).read()) if not a.nginx_pid.isdigit() else int(a.nginx_pid)
        mem = lambda: sl.nginx_mem(pid)
        prefix = "idle" + str(time.time_ns() // 1000000)
        reqs = [sl.get_request(host, f"/sub/{prefix}x{i}", "TE: chunked\r\n") for i in range(a.conns)]
    else:
        if not a.server_pid:
            print("idle.py: --server-pid is required for haoshuo", file=sys.stderr)
            return 1
        mem = lambda: sl.single_mem(a.server_pid)
        t = time.monotonic()
        users = sl.provision(sl.parse_addr(a.admin), a.appid, sl.unique_prefix("i"), a.conns, a.admin_key)
        print(f"provisioned {len(users)} users in {time.monotonic() - t:.1f}s", file=sys.stderr)
        reqs = [sl.get_request(host, f"/cget/stream?seq=1&cname={uid}&token={tok}") for uid, tok in users]

    time.sleep(0.5)
    m0, k0 = mem(), sl.tcp_mem()
    subs = sl.Subscribers(addr, src_ips=a.src_ips, max_inflight=a.max_inflight)
    for r in reqs:
        subs.add(r)
    status = sl.Http(addr, timeout=10)

    def ready():
        if not subs.started_all():
            return False
        if a.server == "nchan":
            return subs.n_open >= a.conns - subs.n_failed and nchan_subscribers(status) >= subs.n_open
        return subs.n_head + subs.n_failed + subs.n_closed >= a.conns

    t0 = time.monotonic()
    last_check = 0.0
    is_ready = False
    while time.monotonic() - t0 < a.connect_wait:
        subs.poll(0.05)
        now = time.monotonic()
        if subs.started_all() and now - last_check > 0.2:
            last_check = now
            if ready():
                is_ready = True
                break
    connect_secs = time.monotonic() - t0
    print(f"open {subs.n_open}/{a.conns} (failed {subs.n_failed}) in {connect_secs:.2f}s; holding {a.hold}s",
          file=sys.stderr)
    t1 = time.monotonic()
    while time.monotonic() - t1 < a.hold:
        subs.poll(0.2)
    open_after = subs.n_open
    server_count = nchan_subscribers(status) if a.server == "nchan" else subs.n_head - subs.n_closed
    m1, k1 = mem(), sl.tcp_mem()
    status.close()
    subs.close_all()

    per = max(open_after, 1)
    r = {
        "server": a.server,
        "conns": a.conns,
        "open_after_hold": open_after,
        "server_sees": server_count,
        "failed": subs.n_failed,
        "closed_by_server": subs.n_closed,
        "non_200": sum(1 for s in subs.subs if s.status not in (0, 200)),
        "connect_secs": round(connect_secs, 2),
        "all_open_in_time": is_ready,
        "procs": m1["workers"],
        "rss_before_mib": round(m0["rss"] / 1048576, 1),
        "rss_after_mib": round(m1["rss"] / 1048576, 1),
        "rss_per_conn_bytes": max(0, m1["rss"] - m0["rss"]) // per,
        "pss_before_mib": round(m0["pss"] / 1048576, 1),
        "pss_after_mib": round(m1["pss"] / 1048576, 1),
        "pss_per_conn_bytes": max(0, m1["pss"] - m0["pss"]) // per,
        "tcp_mem_per_conn_bytes": max(0, k1[0] - k0[0]) // per,
        "tcp_sockets_after": k1[1],
        "errors": subs.errors,
    }
    ok = open_after == a.conns and server_count >= a.conns
    return sl.report(f"idle.py {a.server}", "IDLE_JSON", r, ok)


if __name__ == "__main__":
    sys.exit(main())
