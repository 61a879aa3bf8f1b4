//! How subscriptions end and what surrounds them: logout and token expiry
//! end them (on every node), timers never fire early, SIGTERM answers
//! everyone (also when a reactor's thread takes the signal), requests
//! pipelined behind a held poll are kept, and HTTP/1.0 clients get a
//! stream without chunked coding.

mod common;

use common::*;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

backend_tests!(
    logout_ends_the_streams_and_polls_of_that_token_only,
    an_expired_token_ends_its_stream,
    a_request_pipelined_behind_a_held_poll_is_answered_after_it,
    sigterm_answers_held_polls_and_ends_streams,
    an_http10_stream_is_close_delimited,
);

fn logout_ends_the_streams_and_polls_of_that_token_only(backend: Backend) {
    let srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    // A second device of Alice's, with a token of its own.
    let other = User {
        token: api.login("a", "alice", &alice.pass()),
        ..alice.clone()
    };
    let mut stream = api.stream(&alice, 1);
    let mut poll = api.start_poll(&alice, 1);
    let mut kept = api.stream(&other, 1);
    api.send(&bob, alice.uid, "before");
    assert_eq!(stream.collect(1, WAIT)[0].content, "before");
    assert_eq!(kept.collect(1, WAIT)[0].content, "before");
    assert_eq!(
        check_data_frame(&poll.wait(WAIT).expect("poll answer"), alice.uid)[0].content,
        "before"
    );
    // Held or not yet subscribed when the logout lands, a poll of the
    // token gets 401 (the stream above proves the revocation path).
    let mut poll = api.start_poll(&alice, 2);

    api.logout(&alice);
    stream.expect_final_frame(&frame_401());
    assert_eq!(
        poll.wait(WAIT),
        Some(frame_401()),
        "the held poll is answered 401"
    );
    // The other device's stream goes on.
    api.send(&bob, alice.uid, "after");
    assert_eq!(kept.collect(1, WAIT)[0].content, "after");
    // And the logged-out token opens nothing any more.
    StreamClient::open(srv.addr(), 1, alice.uid, &alice.token).expect_final_frame(&frame_401());
}

fn an_expired_token_ends_its_stream(backend: Backend) {
    let srv = Server::start(backend, Opts::default().flag("--token-ttl", 2));
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    let opened = Instant::now();
    let mut stream = api.stream(&alice, 1);
    api.send(&bob, alice.uid, "hi");
    assert_eq!(stream.collect(1, WAIT)[0].content, "hi");
    // No data or heartbeat frame ends it: the token's expiry does.
    let frame = stream.next_frame(Duration::from_secs(10));
    assert_eq!(frame, Some(frame_401()), "the stream outlived its token");
    assert!(stream.next_frame(WAIT).is_none() && stream.ended());
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_secs(1),
        "ended after {lived:?}, before the token expired"
    );
}

fn a_request_pipelined_behind_a_held_poll_is_answered_after_it(backend: Backend) {
    let srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    let mut conn = Conn::connect(srv.addr());
    let poll = request_bytes(
        "GET",
        &format!("/cget/poll?{}", sub_query(1, alice.uid, &alice.token)),
        &[],
        b"",
    );
    let pull = form_request("/pull", &pull_body(&alice));
    // The poll first; once it is held (it does not answer), the pull
    // arrives behind it on the same connection.
    conn.send(&poll);
    assert!(
        conn.try_read_response(QUIET).is_err(),
        "the held poll answered early"
    );
    conn.send(&pull);
    assert!(
        conn.try_read_response(QUIET).is_err(),
        "answered before the held poll"
    );
    api.send(&bob, alice.uid, "hello");
    let answer = conn.read_response(WAIT);
    assert_eq!(answer.status, 200);
    let msgs = check_data_frame(&answer.json(), alice.uid);
    assert_eq!(msgs, vec![Msg::single(&bob, alice.uid, 1, "hello")]);
    // Then the pull, parsed from where the poll ended.
    let pulled = conn.read_response(WAIT);
    assert_eq!(
        pulled.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&pulled.body)
    );
    assert_eq!(check_pull(&pulled.json(), alice.uid).msgids(), vec![1]);
}

/// Alice's stream, which got a message, and bob's poll, held (or still
/// at a worker: a signal then must answer it either way).
fn a_stream_and_a_held_poll(api: &Api) -> (StreamClient, PendingPoll) {
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));
    let mut stream = api.stream(&alice, 1);
    api.send(&bob, alice.uid, "x");
    assert_eq!(stream.collect(1, WAIT).len(), 1);
    let mut poll = api.start_poll(&bob, 1);
    assert!(poll.wait(QUIET).is_none(), "bob's poll answered early");
    (stream, poll)
}

/// What a stopping server owes them: the poll its `noop`, the stream its
/// last chunk.
fn assert_both_got_their_last_word(stream: &mut StreamClient, poll: &mut PendingPoll) {
    assert_eq!(
        poll.wait(WAIT),
        Some(noop_frame()),
        "the held poll got no noop"
    );
    assert!(stream.next_frame(WAIT).is_none());
    assert!(stream.ended(), "the stream did not end with its last chunk");
}

fn sigterm_answers_held_polls_and_ends_streams(backend: Backend) {
    let mut srv = Server::start(backend, Opts::default());
    let (mut stream, mut poll) = a_stream_and_a_held_poll(&srv.api());
    let status = srv.term();
    assert!(status.success(), "exit status {status:?}");
    assert_both_got_their_last_word(&mut stream, &mut poll);
}

/// A SIGTERM that lands on a reactor's thread (the kernel gives a signal
/// sent to the process to any thread that does not block it, usually the
/// main one) interrupts that reactor's `epoll_wait`, which it must take
/// as a wake-up, not a failure: its held poll and stream still get their
/// last word.
#[test]
fn sigterm_on_a_reactor_thread_stops_it_cleanly_too() {
    let mut srv = Server::start(Backend::Embedded, Opts::default().threads(1));
    // The poll held, and the reactor asleep in epoll_wait until its next tick.
    let (mut stream, mut poll) = a_stream_and_a_held_poll(&srv.api());
    // term_thread waits for the exit, and the exit for these clients.
    let stopping = thread::spawn(move || (srv.term_thread("haoshuo-core-0"), srv));
    assert_both_got_their_last_word(&mut stream, &mut poll);
    drop((poll, stream));
    let (status, srv) = stopping.join().expect("term");
    assert!(status.success(), "exit status {status:?}");
    let output = srv.output();
    assert!(!output.contains("ERROR"), "{output}");
}

/// Opens an HTTP/1.0 stream: returns the connection after the head.
fn http10_stream(addr: SocketAddr, user: &User) -> Conn {
    let mut conn = Conn::connect(addr);
    let query = sub_query(1, user.uid, &user.token);
    conn.send(format!("GET /cget/stream?{query} HTTP/1.0\r\n\r\n").as_bytes());
    let head = conn.read_head(WAIT).expect("a response head");
    assert_eq!(head.status, 200);
    assert!(
        head.header("transfer-encoding").is_none(),
        "chunked coding to an HTTP/1.0 client: {head:?}"
    );
    assert_eq!(head.header("connection"), Some("close"));
    conn
}

fn an_http10_stream_is_close_delimited(backend: Backend) {
    let srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    api.send(&bob, alice.uid, "stored");
    let mut conn = http10_stream(srv.addr(), &alice);
    let frame = conn.read_line(WAIT).expect("the stored message");
    assert_eq!(
        check_data_frame(&frame, alice.uid),
        vec![Msg::single(&bob, alice.uid, 1, "stored")]
    );
    api.send(&bob, alice.uid, "live");
    let frame = conn.read_line(WAIT).expect("the live message");
    assert_eq!(
        check_data_frame(&frame, alice.uid),
        vec![Msg::single(&bob, alice.uid, 2, "live")]
    );
    // Its end is the close, after the last frame.
    api.logout(&alice);
    assert_eq!(conn.read_line(WAIT), Some(frame_401()));
    assert!(conn.closed_within(WAIT), "the 1.0 stream did not close");
}

#[test]
fn timers_never_fire_early() {
    let srv = Server::start(
        Backend::Embedded,
        Opts::default().poll_timeout(2).heartbeat(1),
    );
    let api = srv.api();
    let alice = api.user("a", "alice");
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(api.poll(&alice, 1), noop_frame());
        let held = started.elapsed();
        assert!(
            held >= Duration::from_secs(2),
            "--poll-timeout 2 held only {held:?}"
        );
    }
    let mut stream = api.stream(&alice, 1);
    let mut last = Instant::now();
    for _ in 0..3 {
        assert_eq!(
            stream.next_frame(Duration::from_secs(5)),
            Some(noop_frame())
        );
        let quiet = last.elapsed();
        assert!(
            quiet >= Duration::from_secs(1),
            "--heartbeat 1 came after {quiet:?}"
        );
        last = Instant::now();
    }
}

#[test]
fn a_busy_stream_gets_no_heartbeat() {
    let srv = Server::start(Backend::Embedded, Opts::default().heartbeat(2));
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    let mut stream = api.stream(&alice, 1);
    // A message every half second for four seconds: never two quiet
    // seconds, so never a noop.
    for i in 1..=8 {
        api.send(&bob, alice.uid, &format!("m{i}"));
        let frame = stream.next_frame(WAIT).expect("a frame");
        assert_ne!(frame, noop_frame(), "a heartbeat on a busy stream");
        let quiet = stream.next_frame(Duration::from_millis(500));
        assert_eq!(
            quiet, None,
            "a frame nobody sent: a heartbeat on a busy stream?"
        );
    }
}

#[test]
fn a_logout_on_one_node_ends_a_stream_on_another() {
    let a = Server::start(Backend::Redis, Opts::default());
    let b = a.another_node();
    let (api_a, api_b) = (a.api(), b.api());
    let alice = api_a.user("a", "alice");
    let bob = api_a.user("a", "bob");
    let mut on_b = api_b.stream(&alice, 1);
    api_a.send(&bob, alice.uid, "hi");
    assert_eq!(on_b.collect(1, WAIT)[0].content, "hi");
    api_a.logout(&alice);
    on_b.expect_final_frame(&frame_401());
}
