//! `haoshuo-load floor`: the kernel's share of a fan-out, with no server.
//!
//! A reference for the fan-out figures: the cost and latency of the work a
//! push server cannot avoid on this machine, so a server's figures can be
//! quoted as a ratio to it. One process, on loopback:
//!
//! - it opens `--conns` TCP connections to a listener of its own on
//!   127.0.0.1 (two file descriptors each, so the open-file limit bounds N);
//! - `--writers` threads (the server's reactors) each own an equal share of
//!   the accepted sockets, nonblocking with TCP_NODELAY; for each message,
//!   at `--rate` per second, each writes one frame of `--bytes` (chunked
//!   framing, like a live frame) to each of its sockets in one write() call.
//!   The frame carries the message's number and the monotonic time its
//!   fan-out started (the first write of the message, by any writer);
//! - `--readers` threads (the load client's workers), each with its own mio
//!   Poll over an equal share of the client sockets, read until WouldBlock
//!   and record, per delivery, the time from that stamp to the read (µs).
//!
//! Every socket must get every message exactly once, in order and intact.
//! CPU time is each thread's own (CLOCK_THREAD_CPUTIME_ID). On loopback the
//! writer's write() usually runs the receiving side's TCP input and the
//! reader's wakeup too (softirq in the writer's context, charged to it), so
//! "CPU per write" is the whole kernel path of one delivery, as it is for a
//! server measured on loopback. What is left out: parsing, routing, storage,
//! any user-space buffering; a write that would block counts as an error
//! (at the default sizes the socket buffers never fill).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};

use crate::clock::{mono_ns, raise_nofile};
use crate::fleet::new_hist;
use crate::report::Report;
use crate::scenarios::pass;

/// Smallest frame: chunk header, message number, stamp, chunk trailer.
pub const MIN_BYTES: usize = 48;
/// Largest frame: one write of it must fit an empty socket buffer.
pub const MAX_BYTES: usize = 16 * 1024;
/// File descriptors kept free beyond the sockets and the polls.
const FD_HEADROOM: u64 = 16;
/// Width of the message number and of the stamp in a frame's payload.
const SEQ_DIGITS: usize = 8;
const STAMP_DIGITS: usize = 20;

#[derive(Args, Debug, Clone)]
pub struct FloorArgs {
    /// Connections (each is two sockets of this process, so at most
    /// about half the open-file limit: 9,500 fits the 20,000 here).
    #[arg(long, default_value_t = 9_500)]
    pub conns: usize,
    /// Writer threads ("server side"), each owning an equal share.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Reader threads ("client side"), each with its own poll.
    #[arg(long, default_value_t = 2)]
    pub readers: usize,
    /// Messages to fan out.
    #[arg(long, default_value_t = 50)]
    pub msgs: u64,
    /// Messages per second (0: back to back).
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Bytes per frame, chunk framing included.
    #[arg(long, default_value_t = 180)]
    pub bytes: usize,
    /// Give up after this many seconds (connecting included).
    #[arg(long, default_value_t = 120)]
    pub max_secs: u64,
    /// Also append the results as a CSV row to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

impl FloorArgs {
    fn check(&self) -> Result<(), String> {
        let n = self.conns;
        if n == 0 || !(1..=n).contains(&self.writers) || !(1..=n).contains(&self.readers) {
            return Err("--conns must be at least 1 and at least --writers and --readers".into());
        }
        if self.msgs == 0 || !(MIN_BYTES..=MAX_BYTES).contains(&self.bytes) {
            return Err(format!(
                "--msgs must be >= 1, --bytes {MIN_BYTES}..={MAX_BYTES}"
            ));
        }
        if !(self.rate.is_finite() && self.rate >= 0.0) {
            return Err("--rate must be >= 0".into());
        }
        if self.rate > 0.0 && (self.msgs - 1) as f64 / self.rate >= self.max_secs as f64 {
            return Err("--max-secs is shorter than the sending alone".into());
        }
        Ok(())
    }
}

/// Runs it, prints the table (and CSV row); false if a delivery is missing.
pub fn floor(a: &FloorArgs) -> Result<bool, String> {
    let (r, ok) = measure(a)?;
    print!("{}", r.table());
    if let Some(p) = &a.csv {
        r.write_csv(p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(ok)
}

/// Runs it: the report and whether every delivery was made.
pub fn measure(a: &FloorArgs) -> Result<(Report, bool), String> {
    a.check()?;
    let limit = raise_nofile() as u64;
    let open = std::fs::read_dir("/proc/self/fd").map_or(3, |d| d.count() as u64);
    let need = 2 * a.conns as u64 + a.readers as u64 + 1 + open + FD_HEADROOM;
    if need > limit {
        return Err(format!(
            "{} connections need about {need} file descriptors in this one process; \
             the limit (RLIMIT_NOFILE, raised to its hard limit) is {limit}: use --conns {} or less",
            a.conns,
            limit.saturating_sub(need - 2 * a.conns as u64) / 2
        ));
    }
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let loadavg: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    let deadline = Instant::now() + Duration::from_secs(a.max_secs);

    let t = Instant::now();
    let (servers, clients) = connect(a.conns, deadline)?;
    let connect_secs = t.elapsed().as_secs_f64();
    eprintln!("floor: {} connections in {connect_secs:.2}s", a.conns);

    let m = a.msgs as usize;
    let starts: Vec<AtomicU64> = (0..m).map(|_| AtomicU64::new(0)).collect();
    let ends: Vec<AtomicU64> = (0..m).map(|_| AtomicU64::new(0)).collect();
    let t0 = Instant::now() + Duration::from_millis(50);
    let (w, rd) = std::thread::scope(|s| {
        let readers: Vec<_> = shares(clients, a.readers)
            .into_iter()
            .map(|socks| s.spawn(|| read(a, socks, deadline)))
            .collect();
        let writers: Vec<_> = shares(servers, a.writers)
            .into_iter()
            .map(|socks| s.spawn(|| write(a, socks, t0, deadline, &starts, &ends)))
            .collect();
        let w: Vec<Writer> = writers
            .into_iter()
            .map(|h| h.join().expect("writer"))
            .collect();
        let rd: Vec<Reader> = readers
            .into_iter()
            .map(|h| h.join().expect("reader"))
            .collect();
        (w, rd)
    });
    let rd = rd.into_iter().reduce(Reader::merge).expect("one reader");

    let expected = a.conns as u64 * a.msgs;
    let first = starts
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .filter(|&s| s > 0);
    let secs = rd.last_ns.saturating_sub(first.min().unwrap_or(0)) as f64 / 1e9;
    let mut fanout = new_hist();
    let mut write_cpu_ns = 0;
    let (mut writes, mut write_errors) = (0, 0);
    for w in &w {
        fanout.add(&w.fanout).expect("same bounds");
        write_cpu_ns += w.cpu_ns;
        writes += w.writes;
        write_errors += w.errors;
    }
    let mut span = new_hist();
    for (s, e) in starts.iter().zip(&ends) {
        let (s, e) = (s.load(Ordering::Relaxed), e.load(Ordering::Relaxed));
        if s > 0 {
            span.saturating_record((e.saturating_sub(s) / 1000).max(1));
        }
    }

    let mut r = Report::new("floor");
    r.add("loadavg", loadavg.join(" "));
    r.add("conns", a.conns);
    r.add("writers", a.writers);
    r.add("readers", a.readers);
    r.add("msgs", a.msgs);
    r.add("rate", a.rate);
    r.add("bytes", a.bytes);
    r.add("fd_limit", limit);
    r.add("connect_secs", format!("{connect_secs:.2}"));
    r.add("expected_deliveries", expected);
    r.add("deliveries", rd.deliveries);
    r.add(
        "deliveries_per_sec",
        format!("{:.0}", rd.deliveries as f64 / secs.max(1e-3)),
    );
    r.add("bad_frames", rd.bad);
    r.add("write_errors", write_errors);
    r.add_latency(&rd.hist);
    r.add("writes", writes);
    r.add(
        "writer_cpu_secs",
        format!("{:.3}", write_cpu_ns as f64 / 1e9),
    );
    r.add("writer_cpu_per_write_us", per(write_cpu_ns, writes));
    // Against the fan-out's wall time: how much of it the writer was on a CPU.
    let cpu_ms = write_cpu_ns as f64 / 1e6 / fanout.len().max(1) as f64;
    r.add("writer_cpu_per_fanout_ms", format!("{cpu_ms:.3}"));
    let ms = |h: &Histogram<u64>, q: f64| format!("{:.3}", h.value_at_quantile(q) as f64 / 1e3);
    r.add("fanout_per_writer_p50_ms", ms(&fanout, 0.5));
    r.add("fanout_per_writer_p99_ms", ms(&fanout, 0.99));
    r.add("fanout_per_writer_max_ms", ms(&fanout, 1.0));
    r.add("fanout_all_writers_p50_ms", ms(&span, 0.5));
    r.add("fanout_all_writers_p99_ms", ms(&span, 0.99));
    r.add("reads", rd.reads);
    r.add("reads_would_block", rd.empty_reads);
    r.add("reader_cpu_secs", format!("{:.3}", rd.cpu_ns as f64 / 1e9));
    r.add("reader_cpu_per_read_us", per(rd.cpu_ns, rd.reads));
    r.add("reader_cpu_per_delivery_us", per(rd.cpu_ns, rd.deliveries));
    let ok = rd.deliveries == expected && rd.bad == 0 && write_errors == 0 && rd.complete;
    r.add("check", pass(ok));
    if !ok {
        eprintln!(
            "floor: FAIL: {} of {expected} deliveries made ({} bad frames, {write_errors} \
             failed writes) within --max-secs {}",
            rd.deliveries, rd.bad, a.max_secs
        );
    }
    Ok((r, ok))
}

/// `ns` over `n` events, in µs.
fn per(ns: u64, n: u64) -> String {
    format!("{:.2}", ns as f64 / 1e3 / n.max(1) as f64)
}

/// N connected pairs (accepted side, connecting side), one at a time: each
/// connect() on loopback returns with the connection in the accept queue.
fn connect(n: usize, deadline: Instant) -> Result<(Vec<TcpStream>, Vec<TcpStream>), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("listen: {e}"))?;
    let addr: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let (mut servers, mut clients) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        if Instant::now() > deadline {
            return Err(format!("--max-secs passed with {i} of {n} connected"));
        }
        let c = TcpStream::connect(addr).map_err(|e| format!("connect {i}: {e}"))?;
        let (s, _) = listener.accept().map_err(|e| format!("accept {i}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        c.set_nonblocking(true).map_err(|e| e.to_string())?;
        servers.push(s);
        clients.push(c);
    }
    Ok((servers, clients))
}

/// `v` cut into `k` contiguous shares whose sizes differ by at most one.
fn shares<T>(v: Vec<T>, k: usize) -> Vec<Vec<T>> {
    let n = v.len();
    let mut it = v.into_iter();
    (0..k)
        .map(|i| it.by_ref().take((i + 1) * n / k - i * n / k).collect())
        .collect()
}

/// This thread's CPU time (user + system) in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The frame of message `seq` stamped `stamp`: `<hex len>\r\n`, the payload
/// `m=<seq> t=<stamp> ` padded with `x`, `\r\n`; `bytes` long in all.
pub fn frame(seq: u64, stamp: u64, bytes: usize) -> Vec<u8> {
    let mut len = bytes - 4;
    while len + format!("{len:x}").len() + 4 > bytes {
        len -= 1;
    }
    let mut f = format!("{len:x}\r\nm={seq:0SEQ_DIGITS$} t={stamp:0STAMP_DIGITS$} ").into_bytes();
    f.resize(bytes - 2, b'x');
    f.extend_from_slice(b"\r\n");
    debug_assert_eq!(f.len(), bytes);
    f
}

/// (seq, stamp) of a frame `frame()` made, or None if it is not one.
pub fn parse(f: &[u8]) -> Option<(u64, u64)> {
    let head = f.iter().position(|&b| b == b'\r')?;
    let len = usize::from_str_radix(std::str::from_utf8(&f[..head]).ok()?, 16).ok()?;
    if head + len + 4 != f.len() || !f.ends_with(b"\r\n") {
        return None;
    }
    let p = std::str::from_utf8(&f[head + 2..]).ok()?;
    let seq = p.strip_prefix("m=")?.get(..SEQ_DIGITS)?.parse().ok()?;
    let t = p.get(SEQ_DIGITS + 2..)?.strip_prefix(" t=")?;
    let stamp = t.get(..STAMP_DIGITS)?.parse().ok()?;
    Some((seq, stamp))
}

/// What one writer did.
struct Writer {
    /// Wall time of each of its fan-outs (µs).
    fanout: Histogram<u64>,
    /// CPU time spent in the fan-outs.
    cpu_ns: u64,
    writes: u64,
    errors: u64,
}

/// A writer: message `m` at `t0 + m / rate`, one write per socket.
fn write(
    a: &FloorArgs,
    socks: Vec<TcpStream>,
    t0: Instant,
    deadline: Instant,
    starts: &[AtomicU64],
    ends: &[AtomicU64],
) -> Writer {
    let mut w = Writer {
        fanout: new_hist(),
        cpu_ns: 0,
        writes: 0,
        errors: 0,
    };
    for (m, (start, end)) in starts.iter().zip(ends).enumerate() {
        if a.rate > 0.0 {
            let at = t0 + Duration::from_secs_f64(m as f64 / a.rate);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
        }
        if Instant::now() > deadline {
            break;
        }
        let (c0, now) = (thread_cpu_ns(), mono_ns());
        // The first writer to start this message stamps it for all.
        let stamp = match start.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => now,
            Err(first) => first,
        };
        let f = frame(m as u64, stamp, a.bytes);
        for mut s in &socks {
            match s.write(&f) {
                Ok(n) if n == f.len() => w.writes += 1,
                _ => w.errors += 1,
            }
        }
        let done = mono_ns();
        w.cpu_ns += thread_cpu_ns() - c0;
        w.fanout.saturating_record(((done - now) / 1000).max(1));
        end.fetch_max(done, Ordering::Relaxed);
    }
    w
}

/// What the readers saw.
struct Reader {
    /// Stamp-to-read latency of each delivery (µs).
    hist: Histogram<u64>,
    deliveries: u64,
    /// Frames that were malformed, out of order, or more than --msgs.
    bad: u64,
    /// Every socket got --msgs frames and no stray bytes.
    complete: bool,
    /// Reads that returned bytes, and those that would have blocked.
    reads: u64,
    empty_reads: u64,
    cpu_ns: u64,
    /// When the last delivery was read.
    last_ns: u64,
}

impl Reader {
    fn merge(mut self, o: Reader) -> Reader {
        self.hist.add(&o.hist).expect("same bounds");
        self.deliveries += o.deliveries;
        self.bad += o.bad;
        self.complete &= o.complete;
        self.reads += o.reads;
        self.empty_reads += o.empty_reads;
        self.cpu_ns += o.cpu_ns;
        self.last_ns = self.last_ns.max(o.last_ns);
        self
    }
}

/// One client socket: frames got so far, and a frame's bytes read so far.
struct Sock {
    stream: mio::net::TcpStream,
    got: u64,
    partial: Vec<u8>,
}

/// A reader: polls its sockets until each has every frame, or the deadline.
fn read(a: &FloorArgs, socks: Vec<TcpStream>, deadline: Instant) -> Reader {
    let c0 = thread_cpu_ns();
    let mut rd = Reader {
        hist: new_hist(),
        deliveries: 0,
        bad: 0,
        complete: false,
        reads: 0,
        empty_reads: 0,
        cpu_ns: 0,
        last_ns: 0,
    };
    let mut poll = Poll::new().expect("epoll");
    let mut socks: Vec<Sock> = socks
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let mut stream = mio::net::TcpStream::from_std(s);
            poll.registry()
                .register(&mut stream, Token(i), Interest::READABLE)
                .expect("register");
            Sock {
                stream,
                got: 0,
                partial: Vec::with_capacity(a.bytes),
            }
        })
        .collect();
    let mut left = socks.len() as u64 * a.msgs;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 && Instant::now() < deadline {
        let _ = poll.poll(&mut events, Some(Duration::from_millis(100)));
        for ev in &events {
            let sock = &mut socks[ev.token().0];
            loop {
                match sock.stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let now = mono_ns();
                        rd.reads += 1;
                        let before = rd.deliveries;
                        take_frames(&mut sock.partial, &buf[..n], a.bytes, |f| match parse(f) {
                            Some((seq, stamp)) if seq == sock.got && seq < a.msgs => {
                                sock.got += 1;
                                rd.deliveries += 1;
                                rd.hist
                                    .saturating_record((now.saturating_sub(stamp) / 1000).max(1));
                            }
                            _ => rd.bad += 1,
                        });
                        left = left.saturating_sub(rd.deliveries - before);
                        rd.last_ns = now;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        rd.empty_reads += 1;
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
    }
    rd.cpu_ns = thread_cpu_ns() - c0;
    rd.complete = socks
        .iter()
        .all(|s| s.got == a.msgs && s.partial.is_empty());
    rd
}

/// Cuts `data`, after the `partial` frame left by the last read, into
/// frames of `bytes` for `each`; keeps what is left in `partial`.
fn take_frames(partial: &mut Vec<u8>, mut data: &[u8], bytes: usize, mut each: impl FnMut(&[u8])) {
    if !partial.is_empty() {
        let take = (bytes - partial.len()).min(data.len());
        partial.extend_from_slice(&data[..take]);
        data = &data[take..];
        if partial.len() < bytes {
            return;
        }
        each(partial);
        partial.clear();
    }
    let mut chunks = data.chunks_exact(bytes);
    for f in &mut chunks {
        each(f);
    }
    partial.extend_from_slice(chunks.remainder());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(conns: usize, msgs: u64) -> FloorArgs {
        FloorArgs {
            conns,
            writers: 2,
            readers: 2,
            msgs,
            rate: 20.0,
            bytes: 180,
            max_secs: 30,
            csv: None,
        }
    }

    fn row<'a>(table: &'a str, name: &str) -> &'a str {
        let line = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name));
        line.and_then(|l| l.split_whitespace().nth(1)).unwrap_or("")
    }

    #[test]
    fn a_tiny_run_delivers_everything() {
        let (r, ok) = measure(&args(50, 3)).unwrap();
        let t = r.table();
        assert!(ok, "{t}");
        assert_eq!(row(&t, "check"), "PASS", "{t}");
        assert_eq!(row(&t, "deliveries"), "150", "{t}");
        assert_eq!(row(&t, "writes"), "150", "{t}");
        assert_eq!(row(&t, "latency_samples"), "150", "{t}");
        assert_eq!(row(&t, "bad_frames"), "0", "{t}");
    }

    #[test]
    fn too_many_connections_for_the_fd_limit_are_refused() {
        let limit = raise_nofile() as usize;
        let e = measure(&args(limit / 2, 1)).err().unwrap();
        assert!(e.contains("file descriptors"), "{e}");
        assert!(measure(&FloorArgs {
            writers: 0,
            ..args(5, 1)
        })
        .is_err());
        assert!(measure(&FloorArgs {
            bytes: 8,
            ..args(5, 1)
        })
        .is_err());
        assert!(measure(&FloorArgs {
            max_secs: 1,
            rate: 1.0,
            ..args(5, 9)
        })
        .is_err());
    }

    #[test]
    fn frames_round_trip_at_their_exact_size() {
        for bytes in [MIN_BYTES, 180, 300, MAX_BYTES] {
            let f = frame(42, 1_234_567_890_123, bytes);
            assert_eq!(f.len(), bytes);
            assert_eq!(parse(&f), Some((42, 1_234_567_890_123)));
        }
        let f = frame(7, 9, 180);
        assert!(
            f.starts_with(b"ae\r\nm=00000007 t="),
            "{:?}",
            String::from_utf8_lossy(&f)
        );
        let mut bad = f.clone();
        bad[179] = b'x';
        assert_eq!(parse(&bad), None);
        assert_eq!(parse(&f[..179]), None);
    }

    #[test]
    fn frames_are_cut_across_reads() {
        let stream: Vec<u8> = (0..3).flat_map(|m| frame(m, 5, 60)).collect();
        let mut seen = Vec::new();
        let mut partial = Vec::new();
        for piece in [
            &stream[..7],
            &stream[7..61],
            &stream[61..120],
            &stream[120..],
        ] {
            take_frames(&mut partial, piece, 60, |f| seen.push(parse(f)));
        }
        assert_eq!(seen, vec![Some((0, 5)), Some((1, 5)), Some((2, 5))]);
        assert!(partial.is_empty());
        take_frames(&mut partial, &stream[..10], 60, |_| {
            panic!("not a whole frame")
        });
        assert_eq!(partial.len(), 10);
    }

    #[test]
    fn shares_are_contiguous_and_even() {
        let s = shares((0..7).collect(), 3);
        assert_eq!(s, vec![vec![0, 1], vec![2, 3], vec![4, 5, 6]]);
        assert_eq!(shares(vec![1], 1), vec![vec![1]]);
    }
}
