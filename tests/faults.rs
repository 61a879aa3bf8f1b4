//! Redis going away under the Redis store: API calls answer 503 with the
//! JSON error body (no hang), the server reconnects by itself, live streams
//! resume delivery, and a Redis restart under load loses nothing answered
//! `ok` and duplicates nothing (senders retry with a `cmsgid`).

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

#[test]
fn redis_down_is_503_then_it_recovers_and_streams_resume() {
    let mut server = Server::start(Backend::Redis, Opts::default());
    let api = server.api();
    let (alice, bob) = (api.user("app", "alice"), api.user("app", "bob"));
    let mut stream = api.stream(&bob, 1);
    api.send(&alice, bob.uid, "before");
    assert_eq!(stream.collect(1, WAIT)[0].content, "before");

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
