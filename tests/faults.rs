//! Redis going away under the Redis store: API calls answer 503 with the
//! JSON error body (no hang), the server reconnects by itself, live streams
//! resume delivery, and a Redis restart under load loses nothing answered
//! `ok` and duplicates nothing (senders retry with a `cmsgid`). Calls a lane
//! has written to a Redis that dies are answered at once, and the lane works
//! again after the restart; the feed's reconnect empties the token cache,
//! writes its routes again and has every open stream read what it missed.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Long enough for the pool's backoff (at most 1 s) and the feed's
/// reconnect to notice a restarted Redis.
const RECOVERY: Duration = Duration::from_secs(10);

/// Posts until the answer is 200; panics after `RECOVERY`. Every failed
/// try must be a proper 503 JSON error; each one is reported on `refused`
/// if given.
fn post_until_ok(
    api: &Api,
    path: &str,
    body: &serde_json::Value,
    refused: Option<&mpsc::Sender<()>>,
) {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let (status, answer) = api.post(path, body);
        if status == 200 {
            return;
        }
        assert_eq!(status, 503, "{path}: {answer}");
        assert_eq!(answer["code"], json!(503));
        if let Some(tx) = refused {
            let _ = tx.send(());
        }
        assert!(
            Instant::now() < deadline,
            "{path} still 503 after {RECOVERY:?}"
        );
        // Waiting on the server's own reconnect backoff: nothing to watch.
        thread::sleep(Duration::from_millis(50));
    }
}

fn with_cmsgid(mut body: serde_json::Value, cmsgid: String) -> serde_json::Value {
    body["cmsgid"] = json!(cmsgid);
    body
}

/// A server on Redis where alice sent bob "before" and bob's stream got it.
fn bob_streaming() -> (Server, Api, User, User, StreamClient) {
    let server = Server::start(Backend::Redis, Opts::default());
    let api = server.api();
    let (alice, bob) = (api.user("app", "alice"), api.user("app", "bob"));
    let mut stream = api.stream(&bob, 1);
    api.send(&alice, bob.uid, "before");
    assert_eq!(stream.collect(1, WAIT)[0].content, "before");
    (server, api, alice, bob, stream)
}

#[test]
fn redis_down_is_503_then_it_recovers_and_streams_resume() {
    let (mut server, api, alice, bob, mut stream) = bob_streaming();

    server.redis().kill();
    for path in ["/p", "/pull"] {
        let body = match path {
            "/p" => send_body(&alice, bob.uid, "while down"),
            _ => pull_body(&bob),
        };
        expect_error(api.post(path, &body), 503);
    }

    server.redis().restart();
    post_until_ok(&api, "/p", &send_body(&alice, bob.uid, "after"), None);
    // The stream opened before the outage gets what was sent after it.
    let got = stream.collect(1, RECOVERY);
    assert_eq!(got, vec![Msg::single(&alice, bob.uid, 2, "after")]);
}

#[test]
fn a_redis_restart_under_load_loses_and_duplicates_nothing() {
    const SENDERS: usize = 3;
    const EACH: usize = 300;
    let mut server = Server::start(Backend::Redis, Opts::default());
    let api = server.api();
    let receiver = api.user("app", "receiver");
    let senders: Vec<User> = (0..SENDERS)
        .map(|i| api.user("app", &format!("sender{i}")))
        .collect();

    // Every send answered 503 is reported here.
    let (refused_tx, refused) = mpsc::channel();
    let threads: Vec<_> = senders
        .iter()
        .cloned()
        .map(|from| {
            let to = receiver.uid;
            let refused_tx = refused_tx.clone();
            thread::spawn(move || {
                for k in 0..EACH {
                    let body = send_body(&from, to, &format!("{}:{k}", from.name));
                    let body = with_cmsgid(body, format!("{}-{k}", from.name));
                    post_until_ok(&api, "/p", &body, Some(&refused_tx));
                }
            })
        })
        .collect();
    // Restart Redis once the senders are under way.
    let deadline = Instant::now() + WAIT;
    // (A pull answers at most --page-size = 100 messages.)
    while api.pull(&receiver).msgids().len() < 50 {
        assert!(Instant::now() < deadline, "the senders made no progress");
    }
    assert!(
        refused.try_recv().is_err(),
        "a send failed before the outage"
    );
    server.redis().kill();
    // Redis stays down until a send has hit the outage: the retries below
    // are what this test is about.
    refused
        .recv_timeout(WAIT)
        .expect("no send was answered 503 while Redis was down");
    server.redis().start_again();
    for t in threads {
        t.join().expect("a sender failed");
    }

    let (mut all, mut ids) = (Vec::new(), Vec::new());
    loop {
        let page = api.pull(&receiver);
        let Some(&last) = page.msgids().last() else {
            break;
        };
        all.extend(page.contents().iter().map(|c| c.to_string()));
        ids.extend(page.msgids());
        api.ack(&receiver, last);
    }
    assert_eq!(all.len(), SENDERS * EACH, "lost or duplicated: {all:?}");
    let contiguous: Vec<u64> = (1..=ids.len() as u64).collect();
    assert_eq!(ids, contiguous);
    for s in &senders {
        let mine: Vec<&String> = all
            .iter()
            .filter(|c| c.starts_with(&format!("{}:", s.name)))
            .collect();
        let want: Vec<String> = (0..EACH).map(|k| format!("{}:{k}", s.name)).collect();
        assert_eq!(mine, want.iter().collect::<Vec<_>>(), "{}", s.name);
    }
}

#[test]
fn a_redis_that_lost_everything_ends_streams_with_a_clear_signal() {
    let mut server = Server::start(Backend::Redis, Opts::default());
    let api = server.api();
    let (alice, bob) = (api.user("app", "alice"), api.user("app", "bob"));
    let mut stream = api.stream(&bob, 1);
    api.send(&alice, bob.uid, "before");
    stream.collect(1, WAIT);

    server.redis().restart_empty();
    // The stream is not left silently open: once the server is back on
    // Redis it ends the chunked body...
    let deadline = Instant::now() + 2 * RECOVERY;
    while !stream.ended() {
        assert!(Instant::now() < deadline, "the stream was left open");
        if let Some(frame) = stream.next_frame(left_until(deadline)) {
            assert_eq!(frame, noop_frame(), "unexpected frame");
        }
    }
    // ...and coming back (503 while the server reconnects), the client
    // hears its token is gone.
    let query = sub_query(2, bob.uid, &bob.token);
    let mut again = loop {
        match StreamClient::connect(server.addr(), &query) {
            Ok(s) => break s,
            Err(r) => {
                assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
                assert!(Instant::now() < deadline, "still 503 after {RECOVERY:?}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    };
    again.expect_final_frame(&frame_401());
}

fn left_until(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

#[test]
fn the_feed_forgets_cached_tokens_when_it_reconnects() {
    // Trusted for an hour: only the feed's reconnect can drop it sooner.
    let mut server = Server::start(Backend::Redis, Opts::default().token_cache_secs(3600));
    let api = server.api();
    let alice = api.user("app", "alice");
    api.pull(&alice); // the token is in this node's cache now
                      // A logout whose announcement this node missed (as one published
                      // while its feed is disconnected): the token goes from Redis, and
                      // nothing tells the cache.
    let key = format!("hs:{{t:{}}}", &alice.token[..16]);
    assert_eq!(server.redis().command(&["DEL", &key]), ":1");
    assert_eq!(
        api.post("/pull", &pull_body(&alice)).0,
        200,
        "the cache should still trust the token: the test shows nothing"
    );

    server.redis().restart();
    // Once the feed is back, it must have forgotten every cached token:
    // it cannot know which logouts it missed.
    let deadline = Instant::now() + RECOVERY;
    loop {
        let (status, answer) = api.post("/pull", &pull_body(&alice));
        match status {
            401 => break,
            // 503: Redis is still coming back; 200: the feed is not
            // reconnected yet (or never clears the cache).
            503 | 200 => assert!(
                Instant::now() < deadline,
                "the logged-out token still answers {status} {RECOVERY:?} after the restart"
            ),
            _ => panic!("/pull answered {status} {answer}"),
        }
        // Waiting on the server's own reconnect: nothing to watch.
        thread::sleep(Duration::from_millis(50));
    }
}

/// A reactor never waits on Redis: a send it cannot queue on a lane at
/// once (its sender's token not cached on this node, a `cmsgid` to check)
/// goes to a worker. A frozen Redis then holds up those sends alone, not
/// the other connections of their reactor (the server has one).
#[test]
fn a_send_that_would_wait_holds_up_no_other_connection() {
    let mut server = Server::start(
        Backend::Redis,
        Opts::default()
            .threads(1)
            .admin("")
            .flag("--redis-timeout-ms", 30_000),
    );
    let api = server.api();
    let (alice, bob) = (api.user("app", "alice"), api.user("app", "bob"));
    api.pull(&bob); // bob's token is cached here now; alice's is not
    server.redis().pause();
    let sends = [send_body(&alice, bob.uid, "token not cached"), {
        let mut body = send_body(&bob, alice.uid, "a cmsgid");
        body["cmsgid"] = "c1".into();
        body
    }];
    let mut waiting: Vec<Conn> = (sends.iter())
        .map(|body| {
            let mut conn = Conn::connect(server.addr());
            conn.send(&form_request("/p", body));
            conn
        })
        .collect();
    let mut health = Conn::connect(server.admin_addr());
    health.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let answer = health.try_read_response(WAIT);
    server.redis().resume();
    assert_eq!(
        answer.map(|r| r.status).ok(),
        Some(200),
        "the reactor waited on Redis"
    );
    for conn in &mut waiting {
        assert_eq!(conn.read_response(WAIT).status, 200);
    }
}

#[test]
fn calls_at_a_lane_when_redis_dies_get_503_and_all_work_after_a_restart() {
    const CALLS: usize = 6;
    // One lane, so the calls share its batches, and a Redis timeout far
    // beyond the test's waits: an answer within WAIT is the lane failing
    // the batch, not a timeout.
    let mut server = Server::start(
        Backend::Redis,
        Opts::default()
            .workers(CALLS as u32)
            .flag("--redis-pool", 1)
            .flag("--redis-timeout-ms", 30_000),
    );
    let api = server.api();
    let (alice, bob) = (api.user("app", "alice"), api.user("app", "bob"));
    // Frozen, Redis takes the lane's writes and answers none of them.
    server.redis().pause();
    let mut conns: Vec<Conn> = (0..CALLS)
        .map(|i| {
            let mut conn = Conn::connect(server.addr());
            conn.send(&form_request(
                "/p",
                &send_body(&alice, bob.uid, &format!("lost {i}")),
            ));
            conn
        })
        .collect();
    assert!(
        conns[0].try_read_response(QUIET).is_err(),
        "a call was answered by a frozen Redis"
    );
    // Killed mid-batch: every call in flight is answered, promptly.
    server.redis().kill();
    for (i, conn) in conns.iter_mut().enumerate() {
        let r = conn
            .try_read_response(WAIT)
            .unwrap_or_else(|end| panic!("call {i} hangs after Redis died: {end:?}"));
        if r.status != 200 {
            expect_error((r.status, r.json()), 503);
        }
    }
    // After the restart every call works again, on the same lane.
    server.redis().start_again();
    for i in 0..CALLS {
        post_until_ok(
            &api,
            "/p",
            &send_body(&alice, bob.uid, &format!("after {i}")),
            None,
        );
    }
    let after: Vec<String> = (0..CALLS).map(|i| format!("after {i}")).collect();
    let pulled = api.pull(&bob);
    let got: Vec<&str> = pulled
        .contents()
        .into_iter()
        .filter(|c| c.starts_with("after "))
        .collect();
    assert_eq!(got, after.iter().map(String::as_str).collect::<Vec<_>>());
}

/// A Redis that comes back without this node's routes (a replica that took
/// over before they reached it): the feed writes them again when its
/// subscription is back, so a stream left open goes on getting what is
/// sent to it, not only what the catch-up reads.
#[test]
fn the_feed_writes_its_routes_again_when_it_reconnects() {
    let (mut server, api, alice, bob, mut stream) = bob_streaming();

    let routes = format!("hs:{{u:app:{}}}:at", bob.uid);
    assert_eq!(server.redis().command(&["EXISTS", &routes]), ":1");
    server.redis().command(&["DEL", &routes]);
    // The feed's subscription breaks, as in a failover.
    server
        .redis()
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    let deadline = Instant::now() + RECOVERY;
    while server.redis().command(&["EXISTS", &routes]) != ":1" {
        assert!(
            Instant::now() < deadline,
            "the route of bob was not written again within {RECOVERY:?}"
        );
        // Waiting on the feed's own reconnect: nothing to watch.
        thread::sleep(Duration::from_millis(20));
    }
    api.send(&alice, bob.uid, "after");
    assert_eq!(
        stream.collect(1, RECOVERY),
        vec![Msg::single(&alice, bob.uid, 2, "after")]
    );
}

/// A message this node was never told about (stored while its route for
/// bob was missing, as one announced while its feed is down): once the
/// feed's subscription is back, bob's open stream reads it from the store
/// without waiting for a next message, which never comes.
#[test]
fn a_message_the_feed_missed_reaches_an_open_stream_when_it_reconnects() {
    let (mut server, api, alice, bob, mut stream) = bob_streaming();

    let routes = format!("hs:{{u:app:{}}}:at", bob.uid);
    assert_eq!(server.redis().command(&["DEL", &routes]), ":1");
    api.send(&alice, bob.uid, "missed");
    // Announced to no node: the test shows something only if so.
    stream.expect_quiet(QUIET);
    // The feed's subscription breaks, as in a failover.
    server
        .redis()
        .command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(
        stream.collect(1, RECOVERY),
        vec![Msg::single(&alice, bob.uid, 2, "missed")]
    );
}
