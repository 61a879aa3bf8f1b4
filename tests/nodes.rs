//! Several haoshuo processes on one Redis (or Redis Cluster): a message sent through one node
//! reaches a stream on another, and a logout on one node kills the token on
//! every node at once (their token caches hear it).

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_message_sent_on_one_node_reaches_a_stream_on_another() {
    across_nodes(Backend::Redis);
}

#[test]
fn on_a_cluster_a_message_sent_on_one_node_reaches_a_stream_on_another() {
    across_nodes(Backend::Cluster);
}

fn across_nodes(backend: Backend) {
    let a = Server::start(backend, Opts::default());
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

/// The announcement channels of the nodes on `redis`, sorted.
fn deliver_channels(redis: &RedisServer) -> Vec<String> {
    let listed = redis.command(&["PUBSUB", "CHANNELS", "hs:deliver:*"]);
    let mut channels: Vec<String> = listed
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    channels.sort();
    channels
}

/// Each node hears only of the users it serves: an append is announced on
/// the channel of the node that has its receiver subscribed, and to no
/// node when nobody has the receiver subscribed. (Every node hearing every
/// append cost each of N nodes a wakeup and a parse per message.)
#[test]
fn an_append_is_announced_only_to_the_node_serving_its_receiver() {
    let mut a = Server::start(Backend::Redis, Opts::default());
    let a_channel = deliver_channels(a.redis());
    assert_eq!(a_channel.len(), 1, "node a listens on its own channel");
    let b = a.another_node();
    let b_channel: Vec<String> = deliver_channels(a.redis())
        .into_iter()
        .filter(|c| !a_channel.contains(c))
        .collect();
    assert_eq!(b_channel.len(), 1, "node b listens on a channel of its own");
    let (api_a, api_b) = (a.api(), b.api());
    let alice = api_a.user("app", "alice");
    let bob = api_a.user("app", "bob");
    let carol = api_a.user("app", "carol");
    let mut spy = a.redis().psubscribe("hs:deliver:*");

    let mut bob_on_b = api_b.stream(&bob, 1);
    // Nobody has carol subscribed: nothing is announced for her.
    api_a.send(&alice, carol.uid, "stored, not announced");
    api_a.send(&alice, bob.uid, "to b only");
    assert_eq!(
        bob_on_b.collect(1, WAIT),
        vec![Msg::single(&alice, bob.uid, 1, "to b only")]
    );
    let (channel, announced) = spy.next(WAIT).expect("bob's message was announced");
    assert_eq!(
        channel, b_channel[0],
        "announced on b's channel: {announced}"
    );
    assert!(announced.contains("to b only"), "{announced}");
    assert!(
        announced.ends_with(&format!("[[{},1]]]", bob.uid)),
        "{announced}"
    );
    assert_eq!(
        spy.next(Duration::from_millis(300)),
        None,
        "one announcement only"
    );
    // Carol's message is in her inbox all the same.
    assert_eq!(api_a.pull(&carol).msgids(), vec![1]);
}

/// Routes run out (a node that went away stops being announced to), so a
/// node renews the routes of the users it keeps: the presence thread
/// renews one uid residue class of ten per refresh. Ten users with
/// consecutive uids cover every class: within two refreshes one of their
/// routes is pushed further out than its subscription wrote it.
#[test]
fn the_routes_of_users_a_node_keeps_are_renewed() {
    let mut a = Server::start(Backend::Redis, Opts::default().flag("--presence-secs", 1));
    let api = a.api();
    let users: Vec<User> = (0..10).map(|i| api.user("app", &format!("u{i}"))).collect();
    let _streams: Vec<StreamClient> = users.iter().map(|u| api.stream(u, 1)).collect();
    let until = |redis: &RedisServer, u: &User| -> u64 {
        let fields = redis.command(&["HGETALL", &format!("hs:{{u:app:{}}}:at", u.uid)]);
        // node, until: one node here.
        let lines: Vec<&str> = fields.lines().collect();
        assert_eq!(lines.len(), 2, "one route of user {}: {fields:?}", u.uid);
        lines[1].parse().expect("a unix time")
    };
    let written: Vec<u64> = users.iter().map(|u| until(a.redis(), u)).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now: Vec<u64> = users.iter().map(|u| until(a.redis(), u)).collect();
        if now.iter().zip(&written).any(|(n, w)| n > w) {
            break;
        }
        assert!(Instant::now() < deadline, "no route renewed: {now:?}");
        // Waiting on the presence thread's clock: nothing to watch.
        std::thread::sleep(Duration::from_millis(100));
    }
}
