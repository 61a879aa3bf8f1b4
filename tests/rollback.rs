//! A store that lost writes it had acknowledged (Redis failing over to a
//! lagging replica or restarting under `appendfsync everysec`; the embedded
//! log losing its tail to an OS crash under `--fsync everysec`) must not
//! hand out again a msgid a client already holds: that client would drop
//! the new message as a duplicate, silently. A client whose position is
//! ahead of the store gets a `reset` frame, the inbox's counter continues
//! after the client's position, and what the store lost shows as a
//! `trimmed` gap to a reader starting before it.
//!
//! The losses are real: Redis replays an AOF that stopped being written
//! (`CONFIG SET appendonly no`) and is killed with SIGKILL; the embedded
//! store restarts on a log whose last records are gone, as after a crash
//! that lost the page cache.

mod common;

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

common::backend_tests!(
    embedded_and_redis: a_client_ahead_of_the_store_gets_reset_and_no_msgid_is_reused
);

/// Long enough for the pool's backoff and the feed's reconnect to notice a
/// restarted Redis.
const RECOVERY: Duration = Duration::from_secs(10);

/// `{"type":"reset","content":"{\"epoch\":E,\"endid\":\"N\",\"found\":\"F\",\"toid\":U}"}`
fn reset_frame(epoch: u64, endid: u64, found: u64, uid: u64) -> Value {
    let content =
        format!(r#"{{"epoch":{epoch},"endid":"{endid}","found":"{found}","toid":{uid}}}"#);
    json!({"type": "reset", "content": content})
}

fn trimmed_frame(endid: u64, uid: u64) -> Value {
    json!({"type": "trimmed", "content": format!(r#"{{"endid":"{endid}","toid":{uid}}}"#)})
}

/// Stops recording writes: Redis stops its AOF; the embedded store's log
/// length is noted, to cut it back there.
enum Mark {
    Redis,
    LogLen(u64),
}

fn mark(srv: &mut Server) -> Mark {
    match srv.backend() {
        Backend::Redis => {
            let ok = srv.redis().command(&["CONFIG", "SET", "appendonly", "no"]);
            assert_eq!(ok, "+OK");
            Mark::Redis
        }
        Backend::Embedded => Mark::LogLen(log_len(srv.data_dir())),
        Backend::Cluster => unreachable!("a cluster rolls back by failover: tests/cluster.rs"),
    }
}

fn log_len(dir: &Path) -> u64 {
    fs::metadata(dir.join("log"))
        .expect("the embedded log")
        .len()
}

/// Loses every write since `mark`, as a crash would. Returns once the
/// server answers API calls again.
fn crash_back_to(srv: &mut Server, mark: Mark) -> Api {
    match mark {
        Mark::Redis => {
            srv.redis().kill();
            srv.redis().start_again();
        }
        Mark::LogLen(len) => {
            srv.kill9();
            let log = fs::OpenOptions::new()
                .write(true)
                .open(srv.data_dir().join("log"))
                .expect("open the log");
            log.set_len(len).expect("cut the log");
            srv.restart_same_dir();
        }
    }
    srv.api()
}

/// Polls until the store answers (Redis: the server reconnects by itself).
fn poll_when_back(api: &Api, user: &User, seq: u64) -> Value {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let mut poll = api.start_poll(user, seq);
        let r = poll.response();
        if r.status == 200 {
            return serde_json::from_slice(&r.body).expect("a JSON poll answer");
        }
        assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
        assert!(Instant::now() < deadline, "still 503 after {RECOVERY:?}");
        // Waiting on the server's own reconnect backoff: nothing to watch.
        thread::sleep(Duration::from_millis(50));
    }
}

fn a_client_ahead_of_the_store_gets_reset_and_no_msgid_is_reused(backend: Backend) {
    let mut srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));
    fill_inbox(&api, &bob, &alice, 3);
    let mark = mark(&mut srv);
    api.send(&bob, alice.uid, "m4");
    api.send(&bob, alice.uid, "m5");
    // Alice's client received all five.
    let got = check_data_frame(&api.poll(&alice, 1), alice.uid);
    assert_eq!(got, filled(&bob, &alice, 1..=5));

    let api = crash_back_to(&mut srv, mark);
    // Her client comes back from msgid 6: told at once, epoch 1.
    assert_eq!(
        poll_when_back(&api, &alice, 6),
        reset_frame(1, 5, 3, alice.uid)
    );
    assert_eq!(
        api.pull(&alice).msgids(),
        [1, 2, 3],
        "the store lost 4 and 5"
    );
    // The next message is 6, not a second 4 her client would drop.
    api.send(&bob, alice.uid, "after");
    let after = Msg::single(&bob, alice.uid, 6, "after");
    assert_eq!(
        check_data_frame(&api.poll(&alice, 6), alice.uid),
        std::slice::from_ref(&after)
    );
    // The counter moved for good: no second reset from the same position.
    let mut stream = api.stream(&alice, 6);
    assert_eq!(stream.collect(1, WAIT), std::slice::from_ref(&after));

    // A reader from the start sees the hole as a trimmed gap, never as a
    // frame whose msgids skip.
    let mut from_start = api.stream(&alice, 1);
    let frames: Vec<Value> = (0..3)
        .map(|_| from_start.next_frame(WAIT).expect("a frame"))
        .collect();
    assert_eq!(
        check_data_frame(&frames[0], alice.uid),
        filled(&bob, &alice, 1..=3)
    );
    assert_eq!(frames[1], trimmed_frame(5, alice.uid));
    assert_eq!(check_data_frame(&frames[2], alice.uid), [after]);
    // /pull stops before the hole too, then names it.
    let pulled = api.pull(&alice);
    assert_eq!(pulled.msgids(), [1, 2, 3]);
    api.ack(&alice, 3);
    let (status, mut answer) = api.post("/pull", &pull_body(&alice));
    assert_eq!(status, 200);
    let trimmed = answer.as_object_mut().and_then(|o| o.remove("trimmed"));
    assert_eq!(trimmed, Some(json!("5")), "{answer}");
    assert_eq!(check_pull(&answer, alice.uid).msgids(), [6]);
}

/// A stream open while Redis rolls back is told as soon as the server is
/// back on Redis, and then gets new messages under fresh msgids.
#[test]
fn a_stream_open_across_a_redis_rollback_gets_reset_then_new_messages() {
    let mut srv = Server::start(Backend::Redis, Opts::default());
    let api = srv.api();
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));
    let mut stream = api.stream(&alice, 1);
    fill_inbox(&api, &bob, &alice, 3);
    let mark = mark(&mut srv);
    api.send(&bob, alice.uid, "m4");
    api.send(&bob, alice.uid, "m5");
    assert_eq!(stream.collect(5, WAIT), filled(&bob, &alice, 1..=5));

    let api = crash_back_to(&mut srv, mark);
    let deadline = Instant::now() + RECOVERY;
    let frame = loop {
        let frame = stream
            .next_frame(deadline.saturating_duration_since(Instant::now()))
            .expect("a reset frame on the open stream");
        if frame != noop_frame() {
            break frame;
        }
    };
    assert_eq!(frame, reset_frame(1, 5, 3, alice.uid));
    api.send(&bob, alice.uid, "after");
    assert_eq!(
        stream.collect(1, WAIT),
        [Msg::single(&bob, alice.uid, 6, "after")]
    );
}

#[test]
fn a_seq_past_the_largest_msgid_is_refused() {
    let srv = Server::start(Backend::Embedded, Opts::default());
    let api = srv.api();
    let alice = api.user("a", "alice");
    let max = 1u64 << 53;
    let mut poll = api.start_poll(&alice, max + 1);
    let r = poll.response();
    assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(&r.body));
    // The largest is taken (the store counts on from it).
    assert_eq!(
        poll_when_back(&api, &alice, max),
        reset_frame(1, max - 1, 0, alice.uid)
    );
}
