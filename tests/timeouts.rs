//! The reactor's connection timeouts, over real sockets: a request started
//! and not finished gets 408 after `--request-timeout`, an idle keep-alive
//! connection is closed after `--keepalive-timeout`, and a connection
//! closed after its answer drains its client for `--linger-timeout`, then
//! goes. Each is checked both ways: not before its time (a strict lower
//! bound), and not much after it (a generous upper bound).
//!
//! The three timeouts are set more than [`SLACK`] + 1 s apart, so a state
//! that took another state's timeout is caught by the bounds.

mod common;

use common::*;
use std::io::{ErrorKind, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

const REQUEST: u64 = 2;
const KEEPALIVE: u64 = 5;
const LINGER: u64 = 8;
/// Slack above a timeout: the wheel's ticks are whole seconds (a timeout
/// of N lasts at most N + 1), plus scheduling on a busy test machine.
const SLACK: Duration = Duration::from_secs(2);

fn server() -> Server {
    Server::start(
        Backend::Embedded,
        Opts::default()
            .flag("--request-timeout", REQUEST)
            .flag("--keepalive-timeout", KEEPALIVE)
            .flag("--linger-timeout", LINGER),
    )
}

/// `took` must lie in [secs, secs + SLACK].
fn assert_within(what: &str, took: Duration, secs: u64) {
    let least = Duration::from_secs(secs);
    assert!(took >= least, "{what} after {took:?}, before {least:?}");
    assert!(
        took <= least + SLACK,
        "{what} only after {took:?} (timeout {least:?})"
    );
}

#[test]
fn a_partial_request_gets_408_after_the_request_timeout() {
    let srv = server();
    // A head cut short, and a whole head whose body never comes.
    let partials: [&[u8]; 2] = [
        b"GET /nope HTTP/1.1\r\nHost: x\r\n",
        b"POST /pull HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhaos",
    ];
    for partial in partials {
        let mut conn = Conn::connect(srv.addr());
        let started = Instant::now();
        conn.send(partial);
        let r = conn
            .try_read_response(Duration::from_secs(REQUEST) + SLACK)
            .unwrap_or_else(|end| panic!("no 408 for a partial request: {end:?}"));
        assert_within("408", started.elapsed(), REQUEST);
        assert_eq!(r.status, 408);
        expect_error((r.status, r.json()), 408);
        assert!(conn.closed_within(WAIT), "the 408 did not close");
    }
}

#[test]
fn an_idle_keepalive_connection_is_closed_after_the_keepalive_timeout() {
    let srv = server();
    // Idle from the accept on...
    let mut fresh = Conn::connect(srv.addr());
    let started = Instant::now();
    assert!(
        fresh.closed_within(Duration::from_secs(KEEPALIVE) + SLACK),
        "a connection that never sent a byte was kept"
    );
    assert_within(
        "a fresh idle connection closed",
        started.elapsed(),
        KEEPALIVE,
    );

    // ...and idle after an answer.
    // (Timed from before the request: the server's clock starts when it
    // answers, which is later.)
    let mut conn = Conn::connect(srv.addr());
    let started = Instant::now();
    conn.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(conn.read_response(WAIT).status, 404);
    assert!(
        conn.closed_within(Duration::from_secs(KEEPALIVE) + SLACK),
        "an idle keep-alive connection was kept"
    );
    assert_within("an idle keep-alive closed", started.elapsed(), KEEPALIVE);
}

#[test]
fn a_closed_answer_lingers_for_the_linger_timeout_then_closes() {
    let srv = server();
    let mut conn = Conn::connect(srv.addr());
    // Timed from before the request, as the server's clock starts later.
    let started = Instant::now();
    conn.send(b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let r = conn.read_response(WAIT);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("connection"), Some("close"));
    // The server has shut its side for writing; the client never closes
    // and keeps sending. While the server lingers it drains those bytes;
    // once it has closed, the next byte is answered with a reset, which a
    // later write or read reports. Nothing but a write shows the close, so
    // the client writes a byte every PROBE (its own pace, not a wait for
    // the server).
    const PROBE: Duration = Duration::from_millis(100);
    let sock: TcpStream = conn.into_stream();
    let deadline = started + Duration::from_secs(LINGER) + SLACK;
    let closed_after = loop {
        assert!(
            Instant::now() < deadline,
            "still lingering {:?} after the answer",
            started.elapsed()
        );
        let failed = match (&sock).write_all(b"x") {
            Err(e) => Some(e),
            Ok(()) => sock.take_error().expect("SO_ERROR"),
        };
        if let Some(e) = failed {
            assert!(
                matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
                "{e}"
            );
            break started.elapsed();
        }
        thread::sleep(PROBE);
    };
    // A probe notices the close at most two probes late.
    assert_within("the lingering close", closed_after, LINGER);
}
