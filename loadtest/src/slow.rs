//! The slow-reader scenario: R readers, each owed M MiB already stored,
//! read their streams at a fixed rate through a small receive buffer.
//!
//! It measures what flow control promises (docs/architecture.md, "A
//! message"): a slow reader is neither cut off nor buffered for by the
//! server; its backlog stays in the store and is read back a page at a time
//! as the socket drains. So: provision R readers and one sender; fill each
//! inbox (the server's RSS before and after is the cost of storing that
//! volume for users with no stream, the reference); open the R streams from
//! seq=1 with SO_RCVBUF set before connect, and read each at the rate
//! (`pace.rs`) in one mio loop in this process, sampling the server's RSS
//! and the kernel's TCP memory every 100 ms; then check that every reader
//! got msgids 1..=N once each, in order, on a stream that stayed open.
//!
//! R is at most [`MAX_READERS`]: they are one process's sockets, read by one
//! thread; the fleet of worker processes is for connection counts, not
//! needed here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use serde_json::json;

use crate::checker::{self, Receiver};
use crate::clock::{rss_bytes, tcp_mem};
use crate::conn::{start_connect, Conn, End, Kind, Sink};
use crate::pace::{floor_secs, Pacer};
use crate::provision::User;
use crate::report::{quantile, Report};
use crate::scenarios::{content, make_users, mib, output, pass, send_rows, verdict_rows};
use crate::sender::{self, Post};
use crate::{proto, Common, SlowArgs};

/// Readers one run may have: one thread reads them all, and the server's
/// backlog is R x M bytes of memory (embedded store) or of Redis.
pub const MAX_READERS: usize = 1000;
/// Most bytes stored for all readers together (R x M), in MiB.
pub const MAX_TOTAL_MIB: f64 = 4096.0;
/// Largest message: its `/p` body, form-encoded with the JSON around it,
/// must stay under the server's default `--max-body` (64 KiB).
pub const MAX_MSG_BYTES: usize = 60_000;
/// Smallest message: room for the send timestamp that starts it.
pub const MIN_MSG_BYTES: usize = 32;
/// The `--single` run: one reader owed this many MiB.
pub const SINGLE_OWED_MIB: f64 = 6.0;
/// How often paced readers are served: at 1 MiB/s, 5 KiB per read.
const TICK: Duration = Duration::from_millis(5);
/// How often the server's RSS and the kernel's TCP memory are read.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
/// Without `--max-secs`, an unpaced run gives up after this long.
const UNPACED_MAX: Duration = Duration::from_secs(600);
/// Longest the fill may take, however slow the store.
const FILL_MAX: Duration = Duration::from_secs(900);

/// A run's shape, checked and derived from the arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub readers: usize,
    pub msgs_per_reader: u64,
    pub msg_bytes: usize,
    /// Bytes of message content owed to each reader.
    pub owed_bytes: u64,
    /// Each reader's read rate in bytes/s; 0: unpaced.
    pub rate: u64,
    pub rcvbuf: Option<usize>,
    /// Longest the streams may take to drain.
    pub max_drain: Duration,
}

impl Plan {
    pub fn new(a: &SlowArgs) -> Result<Plan, String> {
        let (readers, owed_mib) = if a.single {
            (1, SINGLE_OWED_MIB)
        } else {
            (a.readers, a.owed_mb)
        };
        if readers == 0 || readers > MAX_READERS {
            return Err(format!("--readers must be 1..={MAX_READERS}"));
        }
        if !(owed_mib > 0.0 && owed_mib.is_finite()) {
            return Err("--owed-mb must be above 0".into());
        }
        if readers as f64 * owed_mib > MAX_TOTAL_MIB {
            return Err(format!(
                "--readers x --owed-mb is {} MiB, more than {MAX_TOTAL_MIB} MiB",
                readers as f64 * owed_mib
            ));
        }
        if !(MIN_MSG_BYTES..=MAX_MSG_BYTES).contains(&a.msg_bytes) {
            return Err(format!(
                "--msg-bytes must be {MIN_MSG_BYTES}..={MAX_MSG_BYTES}"
            ));
        }
        let want = (owed_mib * 1048576.0).ceil() as u64;
        let msgs_per_reader = want.div_ceil(a.msg_bytes as u64);
        let owed_bytes = msgs_per_reader * a.msg_bytes as u64;
        let rate = a.rate_kbps * 1024;
        let max_drain = match (a.max_secs, floor_secs(owed_bytes, rate)) {
            (0, Some(floor)) => Duration::from_secs_f64(3.0 * floor + 60.0),
            (0, None) => UNPACED_MAX,
            (secs, _) => Duration::from_secs(secs),
        };
        Ok(Plan {
            readers,
            msgs_per_reader,
            msg_bytes: a.msg_bytes,
            owed_bytes,
            rate,
            rcvbuf: (a.rcvbuf > 0).then_some(a.rcvbuf),
            max_drain,
        })
    }
}

/// A message's content of exactly `bytes` bytes: the send timestamp, `:`,
/// padding (the form the other scenarios use).
fn message(now_ns: u64, bytes: usize) -> String {
    let stamp = now_ns.to_string().len() + 1;
    content(now_ns, bytes.saturating_sub(stamp).max(1))
}

pub fn slow(c: &Common, a: &SlowArgs) -> Result<bool, String> {
    let plan = Plan::new(a)?;
    let pid = c.server_pid;
    let mut users = make_users(c, plan.readers + 1)?;
    let sender = users.pop().expect("readers + 1 users");
    let rss_before = pid.and_then(rss_bytes);
    let fill = fill(c, &plan, &sender, &users);
    let rss_filled = pid.and_then(settled_rss);
    if fill.ok == 0 {
        return Err(format!(
            "the fill stored nothing: {}",
            fill.first_error.as_deref().unwrap_or("?")
        ));
    }
    let want: Vec<u64> = users
        .iter()
        .map(|u| fill.ok_by_key.get(&u.uid).copied().unwrap_or(0))
        .collect();
    let d = drain(c.target, &plan, &users, &want, pid)?;

    let summaries: Vec<_> = users
        .iter()
        .zip(&d.recv)
        .map(|(u, r)| r.summary(u.uid))
        .collect();
    let expected: HashMap<u64, u64> = users.iter().map(|u| u.uid).zip(want).collect();
    let v = checker::judge(&summaries, &expected);
    let closed: Vec<&String> = d.closed.iter().flatten().collect();
    // Readers that got their last msgid (NaN: the stream ended first).
    let finished: Vec<f64> = d
        .drain_secs
        .iter()
        .flatten()
        .copied()
        .filter(|s| !s.is_nan())
        .collect();

    let mut r = Report::new("slow");
    r.add("readers", plan.readers);
    r.add("msg_bytes", plan.msg_bytes);
    r.add("msgs_per_reader", plan.msgs_per_reader);
    r.add("owed_mib_per_reader", mib(plan.owed_bytes));
    r.add("owed_mib_total", mib(plan.owed_bytes * plan.readers as u64));
    match plan.rate {
        0 => r.add("rate_kib_per_sec", "unpaced"),
        b => r.add("rate_kib_per_sec", b / 1024),
    }
    r.add(
        "rcvbuf",
        plan.rcvbuf.map_or("default".into(), |n| n.to_string()),
    );
    send_rows(&mut r, &fill);
    if let (Some(a), Some(b)) = (rss_before, rss_filled) {
        let grown = b.saturating_sub(a);
        r.add("server_rss_before_fill_mib", mib(a));
        r.add("server_rss_after_fill_mib", mib(b));
        r.add("stored_rss_growth_mib", mib(grown));
        r.add(
            "stored_rss_growth_per_reader_kib",
            grown / 1024 / plan.readers as u64,
        );
    }
    r.add("streams_established", d.established);
    r.add("streams_closed", closed.len());
    if let Some(why) = closed.first() {
        r.add("first_close", why);
    }
    r.add("readers_drained", finished.len());
    drain_time_rows(&mut r, &plan, &d, &finished);
    memory_rows(&mut r, &plan, &d, rss_filled);
    verdict_rows(&mut r, &v, d.secs);
    let ok = v.ok()
        && fill.errors() == 0
        && closed.is_empty()
        && finished.len() == plan.readers
        && d.established == plan.readers;
    r.add("check", pass(ok));
    output(c, &r)?;
    for (i, why) in d.closed.iter().enumerate() {
        if let Some(why) = why {
            eprintln!("reader {i} (uid {}): stream ended: {why}", users[i].uid);
        }
    }
    Ok(ok)
}

/// Stores `msgs_per_reader` messages of `msg_bytes` for every reader, from
/// the one sender, as fast as `--senders` connections go.
fn fill(c: &Common, plan: &Plan, sender: &User, readers: &[User]) -> sender::SendStats {
    let total = plan.msgs_per_reader * readers.len() as u64;
    eprintln!(
        "filling {} inboxes with {} messages of {} bytes ...",
        readers.len(),
        plan.msgs_per_reader,
        plan.msg_bytes
    );
    let make = |i: u64, now: u64| {
        let to = &readers[(i % readers.len() as u64) as usize];
        Post::form(
            "/p",
            json!({"appid": c.appid, "fromid": sender.uid, "datatype": 1, "toid": to.uid,
                "content": message(now, plan.msg_bytes), "token": sender.token,
                "restart": "all"})
            .to_string(),
            to.uid,
        )
    };
    let stats = sender::run(c.target, c.senders, total, 0.0, FILL_MAX, &make);
    eprintln!(
        "stored {} of {total} in {:.1}s",
        stats.ok,
        stats.elapsed.as_secs_f64()
    );
    stats
}

/// The server's RSS once it has stopped moving (two readings 500 ms apart
/// within 256 KiB; at most 10 s): the store may still be settling after the
/// fill (a background compaction, the log's fsync).
fn settled_rss(pid: u32) -> Option<u64> {
    let mut last = rss_bytes(pid)?;
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let now = rss_bytes(pid)?;
        if now.abs_diff(last) < 256 * 1024 {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}

/// What the readers learn; the sink every stream reports to.
struct Readers {
    recv: Vec<Receiver>,
    want: Vec<u64>,
    opened: Vec<Instant>,
    /// Seconds from opening the stream to its last owed msgid.
    drain_secs: Vec<Option<f64>>,
    established: usize,
    /// Readers still owed messages on an open stream.
    left: usize,
}

impl Readers {
    fn new(want: &[u64], opened: Instant) -> Readers {
        let n = want.len();
        Readers {
            recv: vec![Receiver::default(); n],
            want: want.to_vec(),
            opened: vec![opened; n],
            drain_secs: want.iter().map(|&w| (w == 0).then_some(0.0)).collect(),
            established: 0,
            left: want.iter().filter(|&&w| w > 0).count(),
        }
    }

    /// The reader's stream ended: it will get nothing more.
    fn gone(&mut self, user: usize) {
        if self.drain_secs[user].is_none() {
            self.drain_secs[user] = Some(f64::NAN);
            self.left -= 1;
        }
    }
}

impl Sink for Readers {
    fn deliver(&mut self, user: usize, msgs: Vec<(u64, String)>) {
        let r = &mut self.recv[user];
        for (msgid, _) in msgs {
            r.record(msgid);
        }
        if self.drain_secs[user].is_none() && r.max >= self.want[user] {
            self.drain_secs[user] = Some(self.opened[user].elapsed().as_secs_f64());
            self.left -= 1;
        }
    }

    fn established(&mut self, _user: usize) {
        self.established += 1;
    }

    fn poll_answered(&mut self) {}

    fn resume(&self, _user: usize) -> (u64, String, u64) {
        unreachable!("streams are never resumed; only long-polls ask")
    }
}

/// The server's RSS and the kernel's TCP memory at their highest.
struct Sampler {
    pid: Option<u32>,
    next: Instant,
    rss_peak: Option<u64>,
    rss_last: Option<u64>,
    tcp_before: Option<u64>,
    tcp_peak: Option<u64>,
}

impl Sampler {
    fn new(pid: Option<u32>, now: Instant) -> Sampler {
        let tcp = tcp_mem().map(|m| m.0);
        Sampler {
            pid,
            next: now,
            rss_peak: None,
            rss_last: None,
            tcp_before: tcp,
            tcp_peak: tcp,
        }
    }

    fn tick(&mut self, now: Instant) {
        if now < self.next {
            return;
        }
        self.next = now + SAMPLE_EVERY;
        if let Some(rss) = self.pid.and_then(rss_bytes) {
            self.rss_peak = self.rss_peak.max(Some(rss));
            self.rss_last = Some(rss);
        }
        if let Some((tcp, _)) = tcp_mem() {
            self.tcp_peak = self.tcp_peak.max(Some(tcp));
        }
    }
}

/// What the drain phase measured.
struct Drained {
    recv: Vec<Receiver>,
    /// Per reader: seconds to its last owed msgid; NaN if its stream ended
    /// first; None if it ran out of time.
    drain_secs: Vec<Option<f64>>,
    /// Bytes each reader took off its socket (HTTP head, chunk framing and
    /// JSON included).
    wire: Vec<u64>,
    closed: Vec<Option<String>>,
    established: usize,
    secs: f64,
    sampler: Sampler,
}

/// Opens the streams from seq=1 and reads them, paced, until every reader
/// has its last owed msgid, its stream ended, or the plan's time is up.
fn drain(
    target: SocketAddr,
    plan: &Plan,
    users: &[User],
    want: &[u64],
    pid: Option<u32>,
) -> Result<Drained, String> {
    let host = target.to_string();
    let mut poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
    let mut events = Events::with_capacity(1024);
    let start = Instant::now();
    let mut rd = Readers::new(want, start);
    let mut sampler = Sampler::new(pid, start);
    let mut conns = Vec::with_capacity(users.len());
    for (i, u) in users.iter().enumerate() {
        let sock = start_connect(target, None, plan.rcvbuf).map_err(|e| format!("connect: {e}"))?;
        let req = proto::subscribe_request(&host, true, u.uid, &u.token, 1);
        let mut conn = Conn::new(i, sock, Kind::Stream, req);
        poll.registry()
            .register(
                &mut conn.sock,
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("register: {e}"))?;
        rd.opened[i] = Instant::now();
        conns.push(Some(conn));
    }
    let n = users.len();
    let mut pacers = vec![Pacer::new(plan.rate, start); n];
    // Edge-triggered: a socket stays "readable" until a read would block.
    let mut readable = vec![false; n];
    let mut wire = vec![0u64; n];
    let mut closed: Vec<Option<String>> = vec![None; n];
    let mut scratch = vec![0u8; 64 * 1024];
    let deadline = start + plan.max_drain;
    let mut shown = start;
    eprintln!(
        "draining {n} streams (each owed {} MiB, {}) ...",
        mib(plan.owed_bytes),
        match plan.rate {
            0 => "unpaced".to_owned(),
            r => format!("{} KiB/s", r / 1024),
        }
    );
    while rd.left > 0 && Instant::now() < deadline {
        poll.poll(&mut events, Some(TICK))
            .map_err(|e| format!("poll: {e}"))?;
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(conn) = conns[i].as_mut() else {
                continue;
            };
            if ev.is_writable() || ev.is_error() {
                if let Err(end) = conn.on_writable(&mut rd) {
                    closed[i] = Some(why(end));
                    conns[i] = None;
                    rd.gone(i);
                    continue;
                }
            }
            if ev.is_readable() || ev.is_read_closed() {
                readable[i] = true;
            }
        }
        let now = Instant::now();
        for i in 0..n {
            let Some(conn) = conns[i].as_mut().filter(|_| readable[i]) else {
                continue;
            };
            let allowed = pacers[i].allowance(now);
            if allowed == 0 {
                continue;
            }
            match conn.read_upto(&mut rd, &mut scratch, &host, allowed) {
                Ok(got) => {
                    pacers[i].spend(got.bytes);
                    wire[i] += got.bytes as u64;
                    readable[i] = !got.drained;
                }
                Err(end) => {
                    closed[i] = Some(why(end));
                    conns[i] = None;
                    rd.gone(i);
                }
            }
        }
        sampler.tick(now);
        if now - shown >= Duration::from_secs(1) {
            shown = now;
            eprint!(
                "\r[drain {:>5.1}s] open {} drained {} closed {} read {} MiB   ",
                (now - start).as_secs_f64(),
                conns.iter().flatten().count(),
                rd.drain_secs
                    .iter()
                    .flatten()
                    .filter(|s| !s.is_nan())
                    .count(),
                closed.iter().flatten().count(),
                mib(wire.iter().sum())
            );
        }
    }
    eprintln!();
    let secs = start.elapsed().as_secs_f64();
    // The last reading with every stream still open.
    sampler.next = Instant::now();
    sampler.tick(Instant::now());
    drop(conns);
    Ok(Drained {
        recv: rd.recv,
        drain_secs: rd.drain_secs,
        wire,
        closed,
        established: rd.established,
        secs,
        sampler,
    })
}

fn why(end: End) -> String {
    match end {
        End::Failed(s) => format!("failed: {s}"),
        End::Dropped(s) => format!("dropped: {s}"),
    }
}

/// Drain time per reader against the floor its rate sets.
fn drain_time_rows(r: &mut Report, plan: &Plan, d: &Drained, finished: &[f64]) {
    let mut secs = finished.to_vec();
    secs.sort_by(f64::total_cmp);
    let mut wire = d.wire.clone();
    wire.sort_unstable();
    let wire_median = wire.get(wire.len().saturating_sub(1) / 2).copied();
    let s3 = |v: Option<f64>| v.map_or("n/a".into(), |v| format!("{v:.3}"));
    r.add("drain_secs_median", s3(quantile(&secs, 0.5)));
    r.add("drain_secs_p99", s3(quantile(&secs, 0.99)));
    r.add("drain_secs_max", s3(secs.last().copied()));
    if let Some(floor) = floor_secs(plan.owed_bytes, plan.rate) {
        r.add("floor_secs_owed", format!("{floor:.3}"));
    }
    if let Some(w) = wire_median {
        r.add("wire_bytes_per_reader_median", w);
        if let Some(floor) = floor_secs(w, plan.rate) {
            r.add("floor_secs_wire", format!("{floor:.3}"));
        }
        if let Some(s) = quantile(&secs, 0.5) {
            r.add(
                "read_kib_per_sec_median",
                format!("{:.0}", w as f64 / 1024.0 / s.max(1e-3)),
            );
        }
    }
    r.add(
        "read_mib_per_sec_all",
        format!(
            "{:.1}",
            wire.iter().sum::<u64>() as f64 / 1048576.0 / d.secs.max(1e-3)
        ),
    );
    r.add("drain_phase_secs", format!("{:.3}", d.secs));
}

/// What draining cost the server, against what storing cost it.
fn memory_rows(r: &mut Report, plan: &Plan, d: &Drained, rss_filled: Option<u64>) {
    let s = &d.sampler;
    if let (Some(filled), Some(peak)) = (rss_filled, s.rss_peak) {
        let grown = peak.saturating_sub(filled);
        r.add("server_rss_peak_drain_mib", mib(peak));
        r.add("drain_rss_growth_mib", mib(grown));
        r.add(
            "drain_rss_growth_per_reader_kib",
            grown / 1024 / plan.readers as u64,
        );
    }
    if let Some(last) = s.rss_last {
        r.add("server_rss_end_drain_mib", mib(last));
    }
    if let (Some(a), Some(b)) = (s.tcp_before, s.tcp_peak) {
        r.add("tcp_mem_before_mib", mib(a));
        r.add("tcp_mem_peak_mib", mib(b));
        // Both ends of each stream live in this kernel.
        r.add(
            "tcp_mem_growth_per_reader_kib",
            b.saturating_sub(a) / 1024 / plan.readers as u64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> SlowArgs {
        SlowArgs {
            readers: 100,
            owed_mb: 5.0,
            rate_kbps: 1024,
            rcvbuf: 8192,
            msg_bytes: 8192,
            single: false,
            max_secs: 0,
        }
    }

    #[test]
    fn plan_from_the_defaults() {
        let p = Plan::new(&args()).unwrap();
        assert_eq!(p.readers, 100);
        assert_eq!(p.msgs_per_reader, 640);
        assert_eq!(p.owed_bytes, 5 << 20);
        assert_eq!(p.rate, 1 << 20);
        assert_eq!(p.rcvbuf, Some(8192));
        // 3 x the 5 s floor + 60 s.
        assert_eq!(p.max_drain, Duration::from_secs(75));
    }

    #[test]
    fn single_is_one_reader_owed_6_mib() {
        let p = Plan::new(&SlowArgs {
            single: true,
            ..args()
        })
        .unwrap();
        assert_eq!((p.readers, p.msgs_per_reader), (1, 768));
        assert_eq!(floor_secs(p.owed_bytes, p.rate), Some(6.0));
    }

    #[test]
    fn owed_rounds_up_to_whole_messages() {
        let p = Plan::new(&SlowArgs {
            owed_mb: 0.01,
            msg_bytes: 1000,
            rcvbuf: 0,
            rate_kbps: 0,
            ..args()
        })
        .unwrap();
        // 10,486 bytes owed: 11 messages of 1000.
        assert_eq!((p.msgs_per_reader, p.owed_bytes), (11, 11_000));
        assert_eq!(p.rcvbuf, None);
        assert_eq!(p.max_drain, UNPACED_MAX);
        let p = Plan::new(&SlowArgs {
            max_secs: 9,
            ..args()
        })
        .unwrap();
        assert_eq!(p.max_drain, Duration::from_secs(9));
    }

    #[test]
    fn bad_arguments_are_refused() {
        let bad = [
            SlowArgs {
                readers: 0,
                ..args()
            },
            SlowArgs {
                readers: MAX_READERS + 1,
                ..args()
            },
            SlowArgs {
                owed_mb: 0.0,
                ..args()
            },
            SlowArgs {
                owed_mb: f64::NAN,
                ..args()
            },
            SlowArgs {
                owed_mb: 50.0,
                ..args()
            },
            SlowArgs {
                msg_bytes: MAX_MSG_BYTES + 1,
                ..args()
            },
            SlowArgs {
                msg_bytes: 8,
                ..args()
            },
        ];
        for a in bad {
            assert!(Plan::new(&a).is_err(), "{a:?}");
        }
    }

    #[test]
    fn messages_are_exactly_the_size_asked() {
        for bytes in [MIN_MSG_BYTES, 100, 8192, MAX_MSG_BYTES] {
            let m = message(1_234_567_890_123, bytes);
            assert_eq!(m.len(), bytes);
            assert_eq!(proto::content_timestamp(&m), Some(1_234_567_890_123));
        }
    }

    #[test]
    fn a_reader_is_done_at_its_last_msgid_or_when_its_stream_ends() {
        let mut rd = Readers::new(&[2, 3, 0], Instant::now());
        assert_eq!(rd.left, 2);
        assert_eq!(rd.drain_secs[2], Some(0.0));
        rd.deliver(0, vec![(1, String::new())]);
        assert!(rd.drain_secs[0].is_none());
        rd.deliver(0, vec![(2, String::new())]);
        assert!(rd.drain_secs[0].is_some_and(|s| s >= 0.0));
        assert_eq!(rd.left, 1);
        rd.gone(1);
        assert!(rd.drain_secs[1].is_some_and(f64::is_nan));
        assert_eq!(rd.left, 0);
        // Ending after being done changes nothing.
        rd.gone(0);
        assert_eq!(rd.left, 0);
        assert!(!rd.drain_secs[0].unwrap().is_nan());
    }
}
