//! Retention: acked messages are trimmed, `--inbox-cap` keeps the newest
//! un-acked ones, and a client asking for what is gone is told so (a
//! `trimmed` frame on streams and polls, a `trimmed` field on `/pull`):
//! never a silent gap.

mod common;

use common::*;
use serde_json::{json, Value};

common::backend_tests!(
    the_cap_keeps_the_newest_and_says_what_went,
    a_stream_from_before_an_ack_is_told_what_is_gone,
);

/// `{"type":"trimmed","content":"{\"endid\":\"N\",\"toid\":U}"}`
fn trimmed_frame(endid: u64, uid: u64) -> Value {
    let content = json!({"endid": endid.to_string(), "toid": uid}).to_string();
    json!({"type": "trimmed", "content": content})
}

/// The messages `m{i}` from `from` to `to` at msgids `range`.
fn sent(from: &User, to: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Msg> {
    range
        .map(|i| Msg::single(from, to, i, &format!("m{i}")))
        .collect()
}

fn the_cap_keeps_the_newest_and_says_what_went(backend: Backend) {
    let server = Server::start(backend, Opts::default().inbox_cap(3));
    let api = server.api();
    let (alice, bob) = (api.user("app", "alice"), api.user("app", "bob"));
    for i in 1..=5 {
        api.send(&alice, bob.uid, &format!("m{i}"));
    }
    let (status, mut pulled) = api.post("/pull", &pull_body(&bob));
    assert_eq!(status, 200);
    let trimmed = pulled.as_object_mut().and_then(|o| o.remove("trimmed"));
    assert_eq!(trimmed, Some(json!("2")));
    let kept = sent(&alice, bob.uid, 3..=5);
    assert_eq!(check_pull(&pulled, bob.uid).msgs, kept);

    // A stream from 1 hears that 1..=2 are gone, then gets 3..=5.
    let mut stream = api.stream(&bob, 1);
    assert_eq!(stream.next_frame(WAIT), Some(trimmed_frame(2, bob.uid)));
    assert_eq!(stream.collect(3, WAIT), kept);
    // From 3 there is nothing to tell.
    let mut stream = api.stream(&bob, 3);
    assert_eq!(stream.collect(3, WAIT), kept);

    // A poll from 1 is answered with the frame; from 3 with the data.
    assert_eq!(api.poll(&bob, 1), trimmed_frame(2, bob.uid));
    let frame = api.poll(&bob, 3);
    assert_eq!(check_data_frame(&frame, bob.uid), kept);
}

fn a_stream_from_before_an_ack_is_told_what_is_gone(backend: Backend) {
    let server = Server::start(backend, Opts::default());
    let api = server.api();
    let (alice, bob) = (api.user("app", "alice"), api.user("app", "bob"));
    for i in 1..=3 {
        api.send(&alice, bob.uid, &format!("m{i}"));
    }
    api.ack(&bob, 2);
    let mut stream = api.stream(&bob, 1);
    assert_eq!(stream.next_frame(WAIT), Some(trimmed_frame(2, bob.uid)));
    assert_eq!(stream.collect(1, WAIT), sent(&alice, bob.uid, 3..=3));
    // A live message after the ack needs no such frame.
    api.send(&alice, bob.uid, "m4");
    assert_eq!(stream.collect(1, WAIT), sent(&alice, bob.uid, 4..=4));
}
