//! haoshuo behind real reverse proxies: nginx and HAProxy, run from the
//! configs docs/deploy.md ships (`loadtest/proxy/`), in front of the real
//! server; clients talk to the proxy over real sockets. Checked through each
//! proxy: a stream gets stored then live messages as they are sent, a held
//! poll is answered when a message arrives, and a stream the client
//! abandons frees its subscriber slot (the proxy closes its upstream
//! connection and the server notices).
//!
//! Each test runs once per proxy and is skipped, with a `skipped: nginx not
//! installed` line on stderr, where that proxy is not installed (.ci/run
//! installs both). Embedded store only: what is under test is the HTTP path
//! through the proxy, not the store.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

/// `proxy_tests!(a, b);` generates, for every proxy, a module (named after
/// it) holding `#[test] fn a()` calling `a(ProxyKind::X)`, etc.
macro_rules! proxy_tests {
    ($($name:ident),+ $(,)?) => {
        proxy_tests!(@each [nginx Nginx, haproxy Haproxy] $($name),+);
    };
    (@each [] $($name:ident),+) => {};
    (@each [$module:ident $kind:ident $(, $rest_module:ident $rest_kind:ident)*]
        $($name:ident),+) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    super::$name(super::ProxyKind::$kind);
                }
            )+
        }
        proxy_tests!(@each [$($rest_module $rest_kind),*] $($name),+);
    };
}

proxy_tests!(
    stream_gets_stored_then_each_live_message,
    held_poll_is_answered_when_a_message_arrives,
    abandoned_stream_frees_its_slot,
);

/// The server with `opts`, `kind` in front of it, and two users of app "a"
/// registered through the proxy. Bind every field (`_srv`, not `..` or
/// `_`): an unbound one is dropped, and its process stopped, at once.
struct Setup {
    srv: Server,
    proxy: Proxy,
    /// Endpoint helpers that go through the proxy.
    api: Api,
    alice: User,
    bob: User,
}

/// `None` where `kind` is not installed.
fn setup(kind: ProxyKind, opts: Opts) -> Option<Setup> {
    let bin = kind.installed()?;
    let srv = Server::start(Backend::Embedded, opts);
    let proxy = Proxy::start(kind, &bin, srv.addr());
    let api = proxy.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    Some(Setup {
        srv,
        proxy,
        api,
        alice,
        bob,
    })
}

fn stream_gets_stored_then_each_live_message(kind: ProxyKind) {
    let Some(Setup {
        srv,
        proxy: _proxy,
        api,
        alice,
        bob,
    }) = setup(kind, Opts::default())
    else {
        return;
    };
    fill_inbox(&api, &bob, &alice, 3);
    let mut stream = api.stream(&alice, 1);
    assert_eq!(stream.collect(3, WAIT), filled(&bob, &alice, 1..=3));

    // Live messages one after another, sent through the proxy and straight
    // to the server alike: each must come through on its own, not wait in a
    // proxy buffer for the next one or for the stream to end.
    for (i, sender) in [api, srv.api(), api, srv.api()].iter().enumerate() {
        let msgid = 4 + i as u64;
        let content = format!("live{msgid}");
        sender.send(&bob, alice.uid, &content);
        assert_eq!(
            stream.collect(1, WAIT),
            [Msg::single(&bob, alice.uid, msgid, &content)],
            "live message {msgid} through {}",
            kind.name()
        );
    }
    stream.expect_quiet(QUIET);
}

fn held_poll_is_answered_when_a_message_arrives(kind: ProxyKind) {
    let Some(Setup {
        srv: _srv,
        proxy: _proxy,
        api,
        alice,
        bob,
    }) = setup(kind, Opts::default().poll_timeout(10))
    else {
        return;
    };
    fill_inbox(&api, &bob, &alice, 1);
    // Stored messages are answered at once through the proxy...
    let frame = api.poll(&alice, 1);
    assert_eq!(
        check_data_frame(&frame, alice.uid),
        filled(&bob, &alice, 1..=1)
    );
    // ...and with nothing from msgid 2 on yet, the poll is held.
    let mut pending = api.start_poll(&alice, 2);
    assert_eq!(pending.wait(QUIET), None, "the poll answered at once");

    api.send(&bob, alice.uid, "meanwhile");
    let frame = pending
        .wait(WAIT)
        .unwrap_or_else(|| panic!("the held poll through {} was not answered", kind.name()));
    assert_eq!(
        check_data_frame(&frame, alice.uid),
        [Msg::single(&bob, alice.uid, 2, "meanwhile")]
    );
}

fn abandoned_stream_frees_its_slot(kind: ProxyKind) {
    let Some(Setup {
        srv: _srv,
        proxy,
        api,
        alice,
        bob,
    }) = setup(kind, Opts::default().max_subs_per_user(1))
    else {
        return;
    };
    // A stored message makes every accepted stream answer at once.
    fill_inbox(&api, &bob, &alice, 1);
    let mut first = api.stream(&alice, 1);
    first.collect(1, WAIT);
    // The slot is taken while the first stream is open.
    api.stream(&alice, 1).expect_final_frame(&frame_429());

    // The client goes away; only the proxy can tell the server, by closing
    // its connection upstream. Retry until a new stream is accepted.
    drop(first);
    let deadline = Instant::now() + WAIT;
    let mut refused = 0;
    let mut stream = loop {
        let mut stream = StreamClient::open(proxy.addr(), 1, alice.uid, &alice.token);
        let frame = stream
            .next_frame(WAIT)
            .expect("a new stream got no frame at all");
        if frame != frame_429() {
            assert_eq!(
                check_data_frame(&frame, alice.uid),
                filled(&bob, &alice, 1..=1)
            );
            break stream;
        }
        refused += 1;
        assert!(
            Instant::now() < deadline,
            "{} kept the abandoned stream's upstream connection open: new streams \
             still refused with 429 after {WAIT:?} ({refused} tries)",
            kind.name()
        );
        // Nothing to wait on: the server frees the slot when it reads the
        // proxy's close. Pace the retries.
        thread::sleep(Duration::from_millis(20));
    };

    // The new stream is subscribed: it gets a live message.
    api.send(&bob, alice.uid, "after");
    assert_eq!(
        stream.collect(1, WAIT),
        [Msg::single(&bob, alice.uid, 2, "after")]
    );
}
