"""Shared bits of idle.py and fanout.py (Python 3 standard library only).

Many HTTP/1.1 streaming subscribers in one process on one epoll selector:
non-blocking connects (a bounded number in flight), one GET each, the
response head, then a chunked body decoded incrementally and cut into lines
(nchan messages are published with a trailing newline; haoshuo frames end
with one). Plus: provisioning haoshuo users through the admin listener,
small blocking HTTP calls, and reading process memory from /proc.

Only loopback targets are accepted.
"""

import http.client
import ipaddress
import json
import os
import selectors
import socket
import time

IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h


def parse_addr(s):
    host, _, port = s.rpartition(":")
    host = host or "127.0.0.1"
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"{s}: only loopback (127.0.0.0/8) targets are allowed")
    return host, int(port)


def mono_ns():
    return time.monotonic_ns()


# ---------------------------------------------------------------- blocking HTTP


class Http:
    """A keep-alive HTTP/1.1 client connection (http.client), reconnecting."""

    def __init__(self, addr, timeout=30):
        self.addr, self.timeout = addr, timeout
        self.c = None

    def request(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            if self.c is None:
                self.c = http.client.HTTPConnection(*self.addr, timeout=self.timeout)
            try:
                self.c.request(method, path, body=body, headers=headers or {})
                r = self.c.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, data
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def post_json(self, path, obj, headers=None):
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        return self.request("POST", path, json.dumps(obj, separators=(",", ":")).encode(), h)

    def close(self):
        if self.c is not None:
            self.c.close()
            self.c = None


def provision(admin, appid, prefix, n, key=None):
    """n fresh haoshuo users via POST /admin/users: [(uid, token)]."""
    h = Http(admin, timeout=300)
    extra = {"X-Admin-Key": key} if key else {}
    out, page = [], 0
    while len(out) < n:
        count = min(10000, n - len(out))
        st, body = h.post_json(
            "/admin/users", {"appid": appid, "prefix": f"{prefix}{page}-", "count": count}, extra)
        if st != 200:
            raise SystemExit(f"POST /admin/users: HTTP {st}: {body[:200]!r}")
        out += [(int(u["uid"]), u["token"]) for u in json.loads(body)["users"]]
        page += 1
    h.close()
    return out


def unique_prefix(tag):
    return f"{tag}{time.time_ns() // 1000000}-"


# ---------------------------------------------------------------- /proc


def proc_status_kb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            ppid = int(s[s.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            continue
        if ppid == pid:
            out.append(int(d))
    return sorted(out)


def nginx_mem(master):
    """nginx memory in bytes: workers' summed VmRSS, and the PSS of master +
    workers (PSS splits shared pages, e.g. nchan's shared memory zone, among
    the processes touching them instead of counting them once per worker)."""
    workers = children(master)
    rss = sum(proc_status_kb(p, "VmRSS") for p in workers) * 1024
    pss = sum(proc_pss_kb(p) for p in workers + [master]) * 1024
    return {"workers": len(workers), "rss": rss, "pss": pss}


def single_mem(pid):
    return {"workers": 1, "rss": proc_status_kb(pid, "VmRSS") * 1024, "pss": proc_pss_kb(pid) * 1024}


def tcp_mem():
    """(kernel TCP buffer memory in bytes, TCP sockets in use) from sockstat."""
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                if line.startswith("TCP:"):
                    p = line.split()
                    d = dict(zip(p[1::2], p[2::2]))
                    return int(d.get("mem", 0)) * 4096, int(d.get("inuse", 0))
    except OSError:
        pass
    return 0, 0


def raise_nofile():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------- subscribers

CONNECTING, SENDING, HEAD, BODY, CLOSED = range(5)


class Sub:
    __slots__ = ("idx", "sock", "req", "state", "buf", "status", "chunk_left",
                 "line", "err", "t_start", "t_head", "data")

    def __init__(self, idx, req):
        self.idx, self.req = idx, req
        self.sock = None
        self.state = CONNECTING
        self.buf = b""
        self.status = 0
        self.chunk_left = -1  # -1: expecting a chunk-size line
        self.line = b""
        self.err = None
        self.t_start = self.t_head = 0
        self.data = None  # per-scenario state


class Subscribers:
    """Opens and services many streaming GETs on one selector.

    on_line(sub, line_bytes, now_ns) gets each newline-terminated piece of
    the decoded chunked body. A response head without chunked encoding is
    treated as a plain streamed body (cut into lines too).
    """

    def __init__(self, addr, on_line=None, src_ips=4, max_inflight=1000, connect_timeout=15.0):
        self.addr = addr
        self.on_line = on_line or (lambda s, l, t: None)
        self.sel = selectors.DefaultSelector()
        self.srcs = [str(ipaddress.ip_address(0x7F000000 + 2 + i)) for i in range(max(0, src_ips))]
        self.max_inflight = max_inflight
        self.connect_timeout = connect_timeout
        self.subs = []
        self.pending = []  # not started yet (LIFO popped from the end)
        self.inflight = 0
        self.n_open = 0  # request sent and not closed
        self.n_head = 0  # got a response head
        self.n_failed = 0
        self.n_closed = 0  # closed by the server after being open
        self.errors = {}
        self._last_scan = 0

    def add(self, req):
        s = Sub(len(self.subs), req)
        self.subs.append(s)
        self.pending.append(s)
        return s

    def _start(self, s):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.srcs:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self.srcs[s.idx % len(self.srcs)], 0))
        s.sock = sock
        s.t_start = mono_ns()
        s.state = CONNECTING
        self.inflight += 1
        err = sock.connect_ex(self.addr)
        if err not in (0, 115):  # EINPROGRESS
            self._fail(s, os.strerror(err))
            return
        self.sel.register(sock, selectors.EVENT_WRITE, s)

    def _fail(self, s, why):
        if s.state in (CONNECTING, SENDING):
            self.inflight -= 1
            self.n_failed += 1
        elif s.state != CLOSED:
            self.n_closed += 1
            self.n_open -= 1
        why = str(why)
        self.errors[why] = self.errors.get(why, 0) + 1
        s.err = why
        self._close(s)

    def _close(self, s):
        if s.sock is not None:
            try:
                self.sel.unregister(s.sock)
            except (KeyError, ValueError):
                pass
            s.sock.close()
            s.sock = None
        s.state = CLOSED

    def _write(self, s):
        if s.state == CONNECTING:
            err = s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(s, os.strerror(err))
                return
            s.state = SENDING
        try:
            n = s.sock.send(s.req)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(s, e.strerror or e)
            return
        s.req = s.req[n:]
        if not s.req:
            s.state = HEAD
            self.inflight -= 1
            self.n_open += 1
            self.sel.modify(s.sock, selectors.EVENT_READ, s)

    def _read(self, s, now):
        try:
            data = s.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError as e:
            self._fail(s, e.strerror or e)
            return
        if not data:
            self._fail(s, "closed by server" if s.state == BODY else "closed before response head")
            return
        if s.state == HEAD:
            s.buf += data
            i = s.buf.find(b"\r\n\r\n")
            if i < 0:
                if len(s.buf) > 65536:
                    self._fail(s, "response head too large")
                return
            head, data = s.buf[:i].decode("latin-1"), s.buf[i + 4:]
            s.buf = b""
            lines = head.split("\r\n")
            try:
                s.status = int(lines[0].split()[1])
            except (IndexError, ValueError):
                self._fail(s, "bad status line")
                return
            chunked = any(l.lower().replace(" ", "") == "transfer-encoding:chunked" for l in lines[1:])
            s.chunk_left = -1 if chunked else -2  # -2: not chunked
            s.state = BODY
            s.t_head = now
            self.n_head += 1
            if s.status != 200:
                self.errors[f"HTTP {s.status}"] = self.errors.get(f"HTTP {s.status}", 0) + 1
            if not data:
                return
        self._body(s, data, now)

    def _body(self, s, data, now):
        if s.chunk_left == -2:
            self._lines(s, data, now)
            return
        buf = s.buf + data if s.buf else data
        pos, n = 0, len(buf)
        out = []
        while pos < n:
            if s.chunk_left == -1:
                j = buf.find(b"\r\n", pos)
                if j < 0:
                    break
                size = int(buf[pos:j].split(b";")[0], 16)
                pos = j + 2
                if size == 0:
                    if out:
                        self._lines(s, b"".join(out), now)
                    self._fail(s, "stream ended by server")
                    return
                s.chunk_left = size
            elif s.chunk_left == 0:  # the CRLF after a chunk's data
                if n - pos < 2:
                    break
                pos += 2
                s.chunk_left = -1
            else:
                take = min(s.chunk_left, n - pos)
                out.append(buf[pos:pos + take])
                pos += take
                s.chunk_left -= take
        s.buf = buf[pos:]
        if out:
            self._lines(s, b"".join(out), now)

    def _lines(self, s, data, now):
        if s.line:
            data = s.line + data
        parts = data.split(b"\n")
        s.line = parts.pop()
        for p in parts:
            if p:
                self.on_line(s, p, now)

    def poll(self, timeout):
        """One round: start pending connects, service ready sockets."""
        while self.pending and self.inflight < self.max_inflight:
            self._start(self.pending.pop())
        now = mono_ns()
        if self.inflight and self.connect_timeout and now - self._last_scan > 500_000_000:
            self._last_scan = now
            # connects / requests stuck longer than connect_timeout fail
            limit = now - int(self.connect_timeout * 1e9)
            for key in list(self.sel.get_map().values()):
                s = key.data
                if isinstance(s, Sub) and s.state in (CONNECTING, SENDING) and s.t_start < limit:
                    self._fail(s, "connect timeout")
        for key, ev in self.sel.select(timeout):
            s = key.data
            if not isinstance(s, Sub):
                s()  # a callback registered by the caller
                continue
            if s.state == CLOSED:
                continue
            if ev & selectors.EVENT_WRITE:
                self._write(s)
            elif ev & selectors.EVENT_READ:
                self._read(s, mono_ns())

    def started_all(self):
        return not self.pending and self.inflight == 0

    def close_all(self):
        for s in self.subs:
            if s.sock is not None:
                self._close(s)


def report(title, tag, r, ok):
    """Prints a result: a check line, an aligned table, and one `TAG {json}`
    line for run.sh; returns the exit status (0 pass, 2 fail)."""
    r["check"] = "PASS" if ok else "FAIL"
    w = max(len(k) for k in r)
    print(f"== {title} ==")
    for k, v in r.items():
        print(f"{k:<{w}}  {v}")
    print(tag + " " + json.dumps(r, separators=(",", ":")))
    return 0 if ok else 2


def get_request(host, path, extra=""):
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n{extra}\r\n").encode()
