//! Requests that cannot be served at once: a full job queue is answered
//! 503 at once (and stores nothing), and a request still at a worker when
//! SIGTERM lands gets its answer, with `Connection: close`, before the
//! server exits 0.
//!
//! A request is held at the one worker by freezing redis-server
//! (SIGSTOP): the worker's call waits on it (for up to
//! `--redis-timeout-ms`, long here) until it is resumed. With a queue of
//! one job, the third request in flight is refused: a 503 is also the
//! proof that the requests before it reached the worker pool.
//!
//! A reactor's inbox that is full drops live deliveries: with an inbox
//! that drops past one waiting message (`--mailbox-capacity 1`), kept
//! full by workers' answers, the dropped message still reaches its stream,
//! read from the store.

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

/// One worker, a job queue of one, one reactor, and a Redis timeout far
/// beyond any wait in these tests.
fn server() -> Server {
    Server::start(
        Backend::Redis,
        Opts::default()
            .threads(1)
            .workers(1)
            .flag("--job-queue", 1)
            .flag("--redis-timeout-ms", 30_000),
    )
}

/// A `/p` with a `cmsgid` (the content): the worker runs it against Redis
/// and waits for the answer (one without is handed to Redis's lane and
/// the worker goes on: see `sigterm_lets_sends_redis_has_answer_before_the_exit`).
fn send_request(from: &User, to: u64, content: &str) -> Vec<u8> {
    let mut body = send_body(from, to, content);
    body["cmsgid"] = content.into();
    form_request("/p", &body)
}

/// With Redis paused: sends `/p` requests, each on its own connection,
/// until one is refused. Returns the held ones (their contents and
/// connections), the refused connection and its answer.
fn fill_queue(addr: SocketAddr, from: &User, to: u64) -> (Vec<(String, Conn)>, Conn, Response) {
    let mut held = Vec::new();
    // At most two can be held: one at the worker, one in the queue.
    for i in 0..4 {
        let content = format!("m{i}");
        let mut conn = Conn::connect(addr);
        conn.send(&send_request(from, to, &content));
        match conn.try_read_response(QUIET) {
            Ok(r) => return (held, conn, r),
            Err(ReadEnd::Timeout) => held.push((content, conn)),
            Err(ReadEnd::Eof) => panic!("a request was closed unanswered"),
        }
    }
    panic!("four requests in flight with one worker and --job-queue 1, none refused");
}

fn check_busy(r: &Response) {
    expect_error((r.status, r.json()), 503);
    assert_eq!(r.json()["msg"], "server busy", "{:?}", r.json());
}

#[test]
fn a_full_job_queue_is_answered_503_at_once() {
    let mut srv = server();
    let api = srv.api();
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));
    srv.redis().pause();
    let (held, mut refused, r) = fill_queue(srv.addr(), &alice, bob.uid);
    check_busy(&r);
    assert!(
        (1..=2).contains(&held.len()),
        "{} requests held by one worker and a queue of one",
        held.len()
    );
    srv.redis().resume();
    for (content, mut conn) in held {
        let r = conn.read_response(WAIT);
        assert_eq!(r.status, 200, "{content}: {:?}", r.json());
        check_ok(&r.json());
    }
    // The refused connection stays usable, and what it was refused was
    // not stored: bob has exactly the held messages.
    let pulled = api.pull(&bob);
    refused.send(&send_request(&alice, bob.uid, "again"));
    assert_eq!(refused.read_response(WAIT).status, 200);
    let mut want: Vec<String> = (0..pulled.msgs.len()).map(|i| format!("m{i}")).collect();
    want.push("again".into());
    let got = api.pull(&bob);
    assert_eq!(
        got.contents(),
        want.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[test]
fn sigterm_lets_requests_at_a_worker_answer_before_the_exit() {
    let mut srv = server();
    let api = srv.api();
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));
    // A held poll shows when the signal has been handled: it answers noop.
    let mut poll = api.start_poll(&alice, 1);
    assert!(poll.wait(QUIET).is_none(), "alice's poll answered early");
    srv.redis().pause();
    let (held, _refused, r) = fill_queue(srv.addr(), &alice, bob.uid);
    check_busy(&r);
    term_then_resume(srv, poll, held);
}

/// SIGTERM with Redis paused and `held` requests waiting on it; once the
/// poll shows the signal was handled, Redis goes on: every held request
/// is answered `ok` with its connection closing, and the server exits 0.
fn term_then_resume(mut srv: Server, mut poll: PendingPoll, held: Vec<(String, Conn)>) {
    let redis = srv.redis().pid();
    // term() waits for the exit, and the exit for the held answers.
    let stopping = thread::spawn(move || (srv.term(), srv));
    assert_eq!(poll.wait(WAIT), Some(noop_frame()), "the poll got no noop");
    signal(redis, "CONT");
    for (content, mut conn) in held {
        let r = conn.read_response(WAIT);
        assert_eq!(r.status, 200, "{content}: {:?}", r.json());
        check_ok(&r.json());
        assert_eq!(r.header("connection"), Some("close"), "{content}");
        assert!(conn.closed_within(WAIT), "{content}: left open");
    }
    // The poll's client is done too (else the server lingers on it).
    drop(poll);
    let (status, _srv) = stopping.join().expect("term");
    assert!(status.success(), "exit status {status:?}");
}

/// A `/p` without a `cmsgid` is handed to Redis's lane and answered from
/// there: with Redis paused, more of them wait than one worker and a job
/// queue of one could hold, and after SIGTERM each still gets its answer
/// (`ok`, the connection closing) once Redis is back, before the exit.
#[test]
fn sigterm_lets_sends_redis_has_answer_before_the_exit() {
    let mut srv = server();
    let api = srv.api();
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));
    let mut poll = api.start_poll(&alice, 1);
    assert!(poll.wait(QUIET).is_none(), "alice's poll answered early");
    srv.redis().pause();
    let mut held = Vec::new();
    for i in 0..6 {
        let content = format!("m{i}");
        let mut conn = Conn::connect(srv.addr());
        conn.send(&form_request("/p", &send_body(&alice, bob.uid, &content)));
        // Each is queued behind the paused Redis, none refused: the one
        // worker is free again at once.
        match conn.try_read_response(QUIET) {
            Err(ReadEnd::Timeout) => held.push((content, conn)),
            Ok(r) => panic!("{content} answered while Redis is paused: {}", r.status),
            Err(ReadEnd::Eof) => panic!("{content} closed unanswered"),
        }
    }
    term_then_resume(srv, poll, held);
}

backend_tests!(a_delivery_dropped_by_a_full_inbox_is_read_from_the_store);

/// `haoshuo_mailbox_dropped`: live deliveries dropped by a full inbox.
fn dropped(srv: &Server) -> u64 {
    let r = request(srv.admin_addr(), "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let text = String::from_utf8_lossy(&r.body);
    let line = text
        .lines()
        .find(|l| l.starts_with("haoshuo_mailbox_dropped"))
        .expect("no haoshuo_mailbox_dropped in /metrics");
    let value = line.rsplit(' ').next().unwrap_or_default();
    value.parse::<f64>().expect("a counter's value") as u64
}

/// Connections asking carol's (empty) pull over and over until dropped:
/// their answers keep a one-message inbox full.
struct Busy {
    stop: Arc<AtomicBool>,
    pullers: Vec<thread::JoinHandle<()>>,
}

impl Busy {
    fn start(addr: SocketAddr, carol: &User) -> Busy {
        let pull = form_request("/pull", &pull_body(carol));
        let stop = Arc::new(AtomicBool::new(false));
        let pullers = (0..8)
            .map(|_| {
                let (pull, stop) = (pull.clone(), Arc::clone(&stop));
                thread::spawn(move || {
                    let mut conn = Conn::connect(addr);
                    while !stop.load(Ordering::Relaxed) {
                        conn.send(&pull);
                        assert_eq!(conn.read_response(WAIT).status, 200);
                    }
                })
            })
            .collect();
        Busy { stop, pullers }
    }
}

impl Drop for Busy {
    /// Before the server goes (a test that failed drops it first).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for p in self.pullers.drain(..) {
            if p.join().is_err() && !thread::panicking() {
                panic!("a pulling connection failed");
            }
        }
    }
}

/// One message at a time to bob's stream, each waited for, until the
/// delivery of one was dropped (the inbox was full when it came); then
/// nothing more is sent. Each must arrive: the dropped one from the store,
/// as the reactor has every subscriber catch up, since no later message
/// shows bob a gap.
fn a_delivery_dropped_by_a_full_inbox_is_read_from_the_store(backend: Backend) {
    let srv = Server::start(
        backend,
        Opts::default()
            .threads(1)
            .workers(4)
            .admin("")
            .flag("--mailbox-capacity", 1)
            // Every call goes to a worker, whose answers keep the inbox
            // full: a store that fsyncs each write is never called by a
            // reactor itself (the embedded store's calls are, otherwise).
            .fsync(Fsync::Always)
            .flag("--send-rate", 0)
            // Redis stalls on a loaded machine are not what this is about.
            .flag("--redis-timeout-ms", 30_000),
    );
    let api = srv.api();
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));
    let carol = api.user("a", "carol");
    let mut stream = api.stream(&bob, 1);
    let busy = Busy::start(srv.addr(), &carol);
    let mut sent = 0;
    while dropped(&srv) == 0 {
        assert!(sent < 2000, "{sent} messages sent, no delivery dropped");
        sent += 1;
        api.send(&alice, bob.uid, &format!("m{sent}"));
        let got = stream.next_msgs(WAIT);
        let got: Vec<String> = got.into_iter().flatten().map(|m| m.content).collect();
        assert_eq!(got, [format!("m{sent}")], "message {sent} (the last sent)");
    }
    drop(busy);
    eprintln!("the delivery of message {sent} was dropped");
}
