//! Flow control: slow readers, big backlogs and bursts arrive whole and in
//! order, without a close, while the server's memory stays bounded.
//!
//! A slow reader here is a real socket with a small receive buffer whose
//! reads the test paces (see `Conn::connect_slow`): the server's send
//! buffer fills and its own flow control is what is exercised.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

backend_tests!(
    a_slow_reader_gets_a_6mb_backlog_whole,
    a_multi_megabyte_pull_answer_arrives_whole,
    pull_pages_are_capped_by_bytes,
    a_live_burst_reaches_a_slow_reader_whole_and_a_fast_one_promptly,
);

/// A 60 KB message: its number, then padding.
fn big(i: u64) -> String {
    let mut s = format!("{i:05}:");
    s.extend(std::iter::repeat_n('x', 60_000 - s.len()));
    s
}

/// How long a slow read of `bytes` at `rate` may take, with room to spare
/// on a loaded machine.
fn budget(bytes: u64, rate: u64) -> Duration {
    Duration::from_secs(bytes / rate * 4 + 30)
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status");
    kb * 1024
}

const SLOW_RCVBUF: usize = 8 * 1024;
const SLOW_RATE: u64 = 2 * 1024 * 1024;

/// A server with Bob's `n` big messages (see [`big`]) in Alice's inbox.
/// A `/pull` of `user`'s inbox sent on a connection that reads at `rate`
/// bytes a second; the answer is the caller's to read.
fn slow_pull(addr: SocketAddr, user: &User, rate: u64) -> Conn {
    let mut conn = Conn::connect_slow(addr, SLOW_RCVBUF, rate);
    conn.send(&form_request("/pull", &pull_body(user)));
    conn
}

fn backlog(backend: Backend, opts: Opts, n: u64) -> (Server, Api, User, User) {
    let srv = Server::start(backend, opts);
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    for i in 1..=n {
        api.send(&bob, alice.uid, &big(i));
    }
    (srv, api, alice, bob)
}

/// `user`'s stream from msgid 1, read through a small receive buffer at
/// `rate` bytes a second.
fn slow_stream(srv: &Server, user: &User, rate: u64) -> StreamClient {
    let conn = Conn::connect_slow(srv.addr(), SLOW_RCVBUF, rate);
    StreamClient::connect_on(conn, &sub_query(1, user.uid, &user.token))
        .unwrap_or_else(|r| panic!("stream refused: {}", r.status))
}

fn a_slow_reader_gets_a_6mb_backlog_whole(backend: Backend) {
    let (srv, api, alice, bob) = backlog(backend, Opts::default(), 100);
    let mut stream = slow_stream(&srv, &alice, SLOW_RATE);
    let deadline = Instant::now() + budget(6_000_000, SLOW_RATE);
    let mut got = Vec::new();
    let mut frames = 0;
    while got.len() < 100 {
        let wait = deadline.saturating_duration_since(Instant::now());
        let msgs = stream
            .next_msgs(wait)
            .unwrap_or_else(|| panic!("the slow stream stopped at {} of 100 messages", got.len()));
        frames += 1;
        let bytes: usize = msgs.iter().map(|m| m.content.len()).sum();
        assert!(
            msgs.len() == 1 || bytes <= 256 * 1024,
            "a frame of {} messages, {bytes} bytes: pages are capped by bytes",
            msgs.len()
        );
        got.extend(msgs);
    }
    let want: Vec<Msg> = (1..=100)
        .map(|i| Msg::single(&bob, alice.uid, i, &big(i)))
        .collect();
    assert!(got == want, "the backlog arrived out of order or altered");
    assert!(
        frames >= 100 / 5,
        "{frames} frames for 6 MB: not paged by bytes"
    );
    // Still open, and live again.
    api.send(&bob, alice.uid, "after");
    assert_eq!(
        stream.collect(1, WAIT),
        vec![Msg::single(&bob, alice.uid, 101, "after")]
    );
}

fn a_multi_megabyte_pull_answer_arrives_whole(backend: Backend) {
    // Pages as large as the whole backlog: one 6 MB answer.
    let opts = Opts::default().flag("--page-bytes", 8 * 1024 * 1024);
    let (srv, _api, alice, _bob) = backlog(backend, opts, 100);
    let mut conn = slow_pull(srv.addr(), &alice, SLOW_RATE);
    let r = conn.read_response(budget(6_000_000, SLOW_RATE));
    assert_eq!(r.status, 200);
    assert!(r.body.len() > 6_000_000, "{} bytes", r.body.len());
    let pulled = check_pull(&r.json(), alice.uid);
    assert_eq!(pulled.msgids(), (1..=100).collect::<Vec<_>>());
    let want: Vec<String> = (1..=100).map(big).collect();
    assert!(pulled.contents() == want, "contents altered");
}

fn pull_pages_are_capped_by_bytes(backend: Backend) {
    let (_srv, api, alice, _bob) = backlog(backend, Opts::default(), 10);
    // 60 KB each against the default 256 KiB: four fit, the fifth not.
    assert_eq!(api.pull(&alice).msgids(), vec![1, 2, 3, 4]);
    api.ack(&alice, 4);
    assert_eq!(api.pull(&alice).msgids(), vec![5, 6, 7, 8]);
    // One message larger than the cap still goes, alone.
    let (_srv, api, alice, _bob) = backlog(backend, Opts::default().flag("--page-bytes", 1000), 3);
    assert_eq!(api.pull(&alice).msgids(), vec![1]);
    let mut stream = api.stream(&alice, 1);
    let first = stream.next_msgs(WAIT).expect("a frame");
    assert_eq!(first.len(), 1, "one message a frame");
    assert_eq!(stream.collect(2, WAIT).len(), 2);
}

fn a_live_burst_reaches_a_slow_reader_whole_and_a_fast_one_promptly(backend: Backend) {
    const N: u64 = 1500;
    const SIZE: usize = 8 * 1024;
    // One sender floods on purpose: past the default send rate.
    let srv = Server::start(backend, Opts::default().flag("--send-rate", 0));
    let api = srv.api();
    let slow = api.user("a", "slow");
    let fast = api.user("a", "fast");
    let bob = api.user("a", "bob");
    let content = |i: u64| {
        let mut s = format!("{i:05}:");
        s.extend(std::iter::repeat_n('y', SIZE - s.len()));
        s
    };
    let rate = 4 * 1024 * 1024;
    let mut slow_stream = slow_stream(&srv, &slow, rate);
    let mut fast_stream = api.stream(&fast, 1);
    let before = rss(srv.pid());

    // The burst: 12 MB for the slow reader, which reads none of it yet;
    // every 100 messages one for the fast reader, which must come at once.
    let mut fast_worst = Duration::ZERO;
    let mut peak = before;
    for i in 1..=N {
        api.send(&bob, slow.uid, &content(i));
        if i % 100 == 0 {
            let sent = Instant::now();
            api.send(&bob, fast.uid, &format!("f{i}"));
            let got = fast_stream.collect(1, WAIT);
            fast_worst = fast_worst.max(sent.elapsed());
            assert_eq!(got[0].content, format!("f{i}"));
            peak = peak.max(rss(srv.pid()));
        }
    }
    let deadline = Instant::now() + budget(N * SIZE as u64, rate);
    let mut got = 0;
    while got < N {
        let wait = deadline.saturating_duration_since(Instant::now());
        let msgs = slow_stream
            .next_msgs(wait)
            .unwrap_or_else(|| panic!("the slow stream stopped at {got} of {N}"));
        for m in msgs {
            got += 1;
            assert_eq!(m.msgid, got);
            assert!(m.content == content(got), "message {got} altered");
        }
        peak = peak.max(rss(srv.pid()));
    }
    let growth = peak.saturating_sub(before);
    eprintln!(
        "{backend:?}: RSS grew {} KiB for a {} KiB burst; fast reader's worst wait {fast_worst:?}",
        growth / 1024,
        N * SIZE as u64 / 1024
    );
    // The embedded store keeps the burst itself in memory (12 MB); past
    // that, the slow connection holds at most its high-water mark and a
    // page, not the burst.
    let stored = if backend == Backend::Embedded {
        N * SIZE as u64
    } else {
        0
    };
    assert!(
        growth < stored + 8 * 1024 * 1024,
        "RSS grew {growth} bytes: the server buffered the burst for the slow reader"
    );
}

#[test]
fn only_a_connection_that_makes_no_progress_is_closed() {
    // 6 MB: more than the kernel's send buffer (up to 4 MB on loopback)
    // holds, so the rest waits in the server, where the timeout watches.
    let opts = Opts::default().flag("--send-timeout", 1);
    let (srv, _api, alice, _bob) = backlog(Backend::Embedded, opts, 100);
    // Slow but moving (6 MB at 2 MB/s, three times the timeout): kept.
    let mut slow = slow_stream(&srv, &alice, SLOW_RATE);
    assert_eq!(slow.collect(100, budget(6_000_000, SLOW_RATE)).len(), 100);
    // Not reading at all: closed once its output has not moved for the
    // timeout; the client then finds the stream cut short, without its
    // last chunk.
    let mut stuck = Conn::connect_slow(srv.addr(), SLOW_RCVBUF, SLOW_RATE);
    stuck.send(&request_bytes(
        "GET",
        &format!("/cget/stream?{}", sub_query(1, alice.uid, &alice.token)),
        &[],
        b"",
    ));
    // The timeout is what is tested: nothing to wait on but the clock.
    std::thread::sleep(Duration::from_secs(4));
    let mut stream = stuck.into_stream();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut all = Vec::new();
    match std::io::Read::read_to_end(&mut stream, &mut all) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "the stuck stream was not closed ({e}) after {} bytes",
            all.len()
        ),
    }
    assert!(all.len() < 6_000_000, "all {} bytes came", all.len());
    assert!(!all.ends_with(b"0\r\n\r\n"), "it ended cleanly instead");
}

/// One answer larger than the socket takes (a 12 MB pull: the kernel
/// holds up to 4 MB on loopback, the rest is queued in the server) moves
/// on only as its queue is flushed, with nothing more written: a reader
/// that keeps taking it is kept past the send timeout (8 MB queued at
/// 2 MB/s, four times the timeout), and past the keep-alive timeout that
/// starts once the answer is written; it gets the answer whole.
#[test]
fn a_slow_reader_of_one_big_answer_is_kept_while_it_moves() {
    const N: u64 = 200;
    let opts = Opts::default()
        .flag("--send-timeout", 1)
        .flag("--keepalive-timeout", 1)
        .page_size(N as u32)
        .flag("--page-bytes", 16 * 1024 * 1024);
    let (srv, _api, alice, _bob) = backlog(Backend::Embedded, opts, N);
    let mut conn = slow_pull(srv.addr(), &alice, SLOW_RATE);
    let r = conn.read_response(budget(12_000_000, SLOW_RATE));
    assert_eq!(r.status, 200);
    let pulled = check_pull(&r.json(), alice.uid);
    assert_eq!(pulled.msgids(), (1..=N).collect::<Vec<_>>());
}

/// SIGTERM while a big answer is still being written to a slow reader: the
/// answer is finished (the server drains for up to 5 s), then the
/// connection closes and the server exits 0.
#[test]
fn an_answer_being_written_at_sigterm_is_finished() {
    // Some 8.4 MB: more than the kernel takes into a socket's buffers
    // (up to 4 MB on loopback), so most of it waits in the server's queue,
    // read in about 1.4 s: well inside the 5 s the server drains.
    const N: u64 = 140;
    const RATE: u64 = 6 * 1024 * 1024;
    let opts = Opts::default()
        .page_size(N as u32)
        .flag("--page-bytes", 16 * 1024 * 1024);
    let (mut srv, _api, alice, _bob) = backlog(Backend::Embedded, opts, N);
    let mut conn = slow_pull(srv.addr(), &alice, RATE);
    // The answer has begun: the rest of it is queued at the server.
    let head = conn.peek_head(WAIT).expect("the answer's head");
    assert_eq!(head.status, 200);
    let stopping = std::thread::spawn(move || srv.term());
    let r = conn.read_response(budget(9_000_000, RATE));
    assert_eq!(r.status, 200);
    let pulled = check_pull(&r.json(), alice.uid);
    assert_eq!(pulled.msgids(), (1..=N).collect::<Vec<_>>());
    assert!(conn.closed_within(WAIT), "kept open after shutdown");
    let status = stopping.join().expect("the SIGTERM thread");
    assert!(status.success(), "{status:?}");
}
