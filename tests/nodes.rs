//! Several haoshuo processes on one Redis: a message sent through one node
//! reaches a stream on another, and a logout on one node kills the token on
//! every node at once (their token caches hear it).

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_message_sent_on_one_node_reaches_a_stream_on_another() {
    let a = Server::start(Backend::Redis, Opts::default());
    let b = a.another_node();
    let (api_a, api_b) = (a.api(), b.api());
    let alice = api_a.user("app", "alice");
    let bob = api_a.user("app", "bob");
    let carol = api_a.user("app", "carol");
    let gid = api_a.group(&alice, "team", &[bob.uid, carol.uid]);

    let mut bob_on_b = api_b.stream(&bob, 1);
    let mut carol_on_a = api_a.stream(&carol, 1);
    api_a.send(&alice, bob.uid, "direct");
    api_b.gsend(&alice, gid, "to the team");
    assert_eq!(
        bob_on_b.collect(2, WAIT),
        vec![
            Msg::single(&alice, bob.uid, 1, "direct"),
            Msg::group(&alice, gid, 2, "to the team"),
        ]
    );
    assert_eq!(
        carol_on_a.collect(1, WAIT),
        vec![Msg::group(&alice, gid, 1, "to the team")]
    );
}

/// Far longer than any wait here: while a token is in a node's cache, only
/// the logout announcement can make that node refuse it.
const LONG_CACHE_SECS: u64 = 300;

#[test]
fn a_logout_on_one_node_kills_the_token_on_every_node() {
    let a = Server::start(
        Backend::Redis,
        Opts::default().token_cache_secs(LONG_CACHE_SECS),
    );
    let b = a.another_node();
    let (api_a, api_b) = (a.api(), b.api());
    let alice = api_a.user("app", "alice");
    let bob = api_a.user("app", "bob");
    // Node b has the token in its cache now, for the next 300 s.
    assert!(api_b.pull(&alice).msgids().is_empty());
    api_a.logout(&alice);
    // The logout was answered after it was announced; b hears it within a
    // pub/sub hop. Its cache would go on taking the token for minutes.
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, answer) = api_b.post("/p", &send_body(&alice, bob.uid, "x"));
        if status == 401 {
            expect_error((status, answer), 401);
            break;
        }
        assert_eq!(status, 200, "{answer}");
        assert!(
            Instant::now() < deadline,
            "node b still takes the token {WAIT:?} after the logout on node a"
        );
    }
    // The other endpoints of node b refuse it too.
    expect_error(api_b.post("/pull", &pull_body(&alice)), 401);
    let query = sub_query(1, alice.uid, &alice.token);
    StreamClient::connect(b.addr(), &query)
        .unwrap_or_else(|r| panic!("stream answered HTTP {}", r.status))
        .expect_final_frame(&frame_401());
}

/// What bounds a logout whose announcement a node missed: the cache's
/// lifetime. The token is deleted in Redis behind the nodes' backs (no
/// announcement); a node that cached it may take it until its cache entry
/// is `--token-cache-secs` old, and never after.
#[test]
fn the_token_cache_lifetime_bounds_a_missed_logout() {
    const CACHE_SECS: u64 = 1;
    let mut a = Server::start(Backend::Redis, Opts::default().token_cache_secs(CACHE_SECS));
    let api = a.api();
    let alice = api.user("app", "alice");
    let bob = api.user("app", "bob");
    // Cached at the latest when this answer arrives.
    api.send(&alice, bob.uid, "cached");
    let cached_until = Instant::now() + Duration::from_secs(CACHE_SECS);
    // The selector: the token's first 16 hex characters (src/auth.rs).
    let selector = &alice.token[..16];
    assert_eq!(
        a.redis().command(&["DEL", &format!("hs:{{t:{selector}}}")]),
        ":1"
    );
    // Each 200 must have been asked for before the entry expired, so the
    // loop ends with a 401 or a failure soon after `cached_until`.
    loop {
        let sent_at = Instant::now();
        let (status, answer) = api.post("/pull", &pull_body(&alice));
        if status == 401 {
            expect_error((status, answer), 401);
            break;
        }
        assert_eq!(status, 200, "{answer}");
        assert!(
            sent_at < cached_until,
            "a token deleted in Redis was taken {:?} after its cache entry expired",
            sent_at - cached_until
        );
    }
}
