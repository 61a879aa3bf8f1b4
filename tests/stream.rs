//! Real-time delivery: `/cget/stream` (replay of stored messages from `seq`,
//! then live ones, resuming, group fan-out, heartbeats, the `401` and `429`
//! frames, subscriber slots) and `/cget/poll` (answering at once, holding
//! until a message, `noop` after the poll timeout, `401`).

mod common;

use common::*;
use serde_json::json;
use std::thread;
use std::time::{Duration, Instant};

common::backend_tests!(
    stream_replays_stored_then_delivers_live,
    stream_resumes_from_seq,
    seq_defaults_to_1,
    group_message_reaches_every_members_stream,
    poll_answers_at_once_with_stored_messages,
    poll_holds_until_a_message_arrives,
    poll_times_out_with_noop,
    heartbeat_noop_on_a_quiet_stream,
    bad_tokens_get_the_401_frame,
    missing_or_bad_cname_is_400,
    too_many_streams_get_the_429_frame,
    held_poll_counts_as_a_subscriber,
    closed_stream_frees_its_slot,
    closed_held_poll_frees_its_slot,
);

/// A server and two users of app "a".
fn setup(backend: Backend, opts: Opts) -> (Server, Api, User, User) {
    let srv = Server::start(backend, opts);
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    (srv, api, alice, bob)
}

fn stream_replays_stored_then_delivers_live(backend: Backend) {
    let (_srv, api, alice, bob) = setup(backend, Opts::default());
    fill_inbox(&api, &bob, &alice, 3);
    let mut stream = api.stream(&alice, 1);
    assert_eq!(stream.collect(3, WAIT), filled(&bob, &alice, 1..=3));

    api.send(&bob, alice.uid, "live");
    assert_eq!(
        stream.collect(1, WAIT),
        [Msg::single(&bob, alice.uid, 4, "live")]
    );
    stream.expect_quiet(QUIET);
}

fn stream_resumes_from_seq(backend: Backend) {
    let (_srv, api, alice, bob) = setup(backend, Opts::default());
    fill_inbox(&api, &bob, &alice, 5);
    let mut stream = api.stream(&alice, 3);
    assert_eq!(stream.collect(3, WAIT), filled(&bob, &alice, 3..=5));

    api.send(&bob, alice.uid, "live");
    assert_eq!(
        stream.collect(1, WAIT),
        [Msg::single(&bob, alice.uid, 6, "live")]
    );
    stream.expect_quiet(QUIET);
}

fn seq_defaults_to_1(backend: Backend) {
    let (srv, api, alice, bob) = setup(backend, Opts::default());
    fill_inbox(&api, &bob, &alice, 2);
    let query = format!("cname={}&token={}", alice.uid, alice.token);
    let mut stream = StreamClient::connect(srv.addr(), &query)
        .unwrap_or_else(|r| panic!("stream without seq refused: {r:?}"));
    assert_eq!(stream.collect(2, WAIT), filled(&bob, &alice, 1..=2));
}

fn group_message_reaches_every_members_stream(backend: Backend) {
    let (_srv, api, owner, sender) = setup(backend, Opts::default());
    let other = api.user("a", "other");
    // `other` already has msgid 1, so the group message is its msgid 2.
    api.send(&owner, other.uid, "before");
    let gid = api.group(&owner, "g", &[sender.uid, other.uid]);
    let mut subscribers = [(&owner, 1), (&sender, 1), (&other, 2)]
        .map(|(user, msgid)| (user, msgid, api.stream(user, msgid)));

    api.gsend(&sender, gid, "to all");
    for (user, msgid, stream) in &mut subscribers {
        assert_eq!(
            stream.collect(1, WAIT),
            [Msg::group(&sender, gid, *msgid, "to all")],
            "stream of {}",
            user.name
        );
    }
}

fn poll_answers_at_once_with_stored_messages(backend: Backend) {
    let (_srv, api, alice, bob) = setup(backend, Opts::default().page_size(2));
    fill_inbox(&api, &bob, &alice, 3);
    for (seq, expected) in [(1, 1..=2), (3, 3..=3), (2, 2..=3)] {
        let frame = api.poll(&alice, seq);
        assert_eq!(
            check_data_frame(&frame, alice.uid),
            filled(&bob, &alice, expected),
            "poll from seq {seq}"
        );
    }
}

fn poll_holds_until_a_message_arrives(backend: Backend) {
    let (_srv, api, alice, bob) = setup(backend, Opts::default().poll_timeout(10));
    fill_inbox(&api, &bob, &alice, 1);
    // Nothing from msgid 2 on yet: the poll must be held.
    let mut pending = api.start_poll(&alice, 2);
    assert_eq!(pending.wait(QUIET), None, "the poll answered at once");

    api.send(&bob, alice.uid, "meanwhile");
    let frame = pending
        .wait(WAIT)
        .expect("the held poll was not answered with the new message");
    assert_eq!(
        check_data_frame(&frame, alice.uid),
        [Msg::single(&bob, alice.uid, 2, "meanwhile")]
    );
}

fn poll_times_out_with_noop(backend: Backend) {
    let (_srv, api, alice, bob) = setup(backend, Opts::default().poll_timeout(1));
    assert_eq!(api.poll(&alice, 1), noop_frame());
    // Polling again after the noop still delivers.
    fill_inbox(&api, &bob, &alice, 1);
    let frame = api.poll(&alice, 1);
    assert_eq!(
        check_data_frame(&frame, alice.uid),
        filled(&bob, &alice, 1..=1)
    );
}

fn heartbeat_noop_on_a_quiet_stream(backend: Backend) {
    let (_srv, api, alice, bob) = setup(backend, Opts::default().heartbeat(1));
    let mut stream = api.stream(&alice, 1);
    assert_eq!(stream.next_frame(WAIT), Some(noop_frame()));
    assert_eq!(stream.next_frame(WAIT), Some(noop_frame()));
    // Data in between, then heartbeats go on.
    fill_inbox(&api, &bob, &alice, 1);
    assert_eq!(stream.collect(1, WAIT), filled(&bob, &alice, 1..=1));
    assert_eq!(stream.next_frame(WAIT), Some(noop_frame()));
}

fn bad_tokens_get_the_401_frame(backend: Backend) {
    let (srv, api, alice, bob) = setup(backend, Opts::default());
    // Stored messages must not leak to a bad subscriber.
    fill_inbox(&api, &bob, &alice, 1);
    let addr = srv.addr();
    for token in [BAD_TOKEN, bob.token.as_str()] {
        StreamClient::open(addr, 1, alice.uid, token).expect_final_frame(&frame_401());
        assert_eq!(poll(addr, 1, alice.uid, token), frame_401());
    }
    // A logged-out token.
    api.logout(&bob);
    StreamClient::open(addr, 1, bob.uid, &bob.token).expect_final_frame(&frame_401());
    assert_eq!(poll(addr, 1, bob.uid, &bob.token), frame_401());
}

fn missing_or_bad_cname_is_400(backend: Backend) {
    let (srv, _api, alice, _bob) = setup(backend, Opts::default());
    let token = &alice.token;
    for query in [
        format!("seq=1&token={token}"),
        format!("seq=1&cname=&token={token}"),
        format!("seq=1&cname=alice&token={token}"),
    ] {
        match StreamClient::connect(srv.addr(), &query) {
            Ok(_) => panic!("stream with {query:?} was accepted"),
            Err(r) => expect_error((r.status, r.json()), 400),
        }
        let r = PendingPoll::start(srv.addr(), &query).response();
        expect_error((r.status, r.json()), 400);
    }
}

fn too_many_streams_get_the_429_frame(backend: Backend) {
    let (_srv, api, alice, bob) = setup(backend, Opts::default().max_subs_per_user(1));
    let mut first = api.stream(&alice, 1);
    // A live delivery proves the first stream is subscribed.
    fill_inbox(&api, &bob, &alice, 1);
    first.collect(1, WAIT);

    api.stream(&alice, 1).expect_final_frame(&frame_429());

    // The limit is per user, and the first stream still works.
    let mut bobs = api.stream(&bob, 1);
    api.send(&alice, bob.uid, "to bob");
    assert_eq!(
        bobs.collect(1, WAIT),
        [Msg::single(&alice, bob.uid, 1, "to bob")]
    );
    api.send(&bob, alice.uid, "still here");
    assert_eq!(
        first.collect(1, WAIT),
        [Msg::single(&bob, alice.uid, 2, "still here")]
    );
}

fn held_poll_counts_as_a_subscriber(backend: Backend) {
    let (_srv, api, alice, bob) = setup(backend, Opts::default().max_subs_per_user(1));
    // With msgids 1..=stored kept, a stream from 1 answers at once either
    // way: data if it got the one slot, the 429 frame if not; a poll from
    // stored + 1 is held once it has the slot.
    let mut stored = 1;
    fill_inbox(&api, &bob, &alice, stored);
    // Set once a stream got the slot: it may still be counted for a moment
    // after it was dropped (the server notices closes asynchronously).
    let mut dropped_a_stream = false;
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "no round within {WAIT:?} where the poll held the slot"
        );
        let mut pending = api.start_poll(&alice, stored + 1);
        let mut stream = api.stream(&alice, 1);
        let first = stream
            .next_frame(WAIT)
            .expect("a stream got no frame at all");
        if first != frame_429() {
            // The server took the stream before the poll. The slot is the
            // stream's, so the poll must be refused, not held beside it.
            assert_eq!(
                check_data_frame(&first, alice.uid),
                filled(&bob, &alice, 1..=stored)
            );
            assert_eq!(
                pending.wait(WAIT),
                Some(frame_429()),
                "a stream and a poll of one user were both let in with --max-subs-per-user 1"
            );
            dropped_a_stream = true;
            continue;
        }
        assert_eq!(stream.next_frame(WAIT), None, "a frame after the 429 frame");
        assert!(stream.ended(), "the stream did not end after the 429 frame");
        // The stream was refused: the poll holds the slot, still held, and
        // it gets the next message.
        stored += 1;
        api.send(&bob, alice.uid, &format!("m{stored}"));
        let answer = pending
            .wait(WAIT)
            .expect("the held poll was not answered with the new message");
        if answer == frame_429() && dropped_a_stream {
            // Both were refused by a stream of an earlier round the server
            // had not yet seen closed: try again.
            continue;
        }
        assert_eq!(
            check_data_frame(&answer, alice.uid),
            filled(&bob, &alice, stored..=stored)
        );
        return;
    }
}

fn closed_stream_frees_its_slot(backend: Backend) {
    let (_srv, api, alice, bob) = setup(backend, Opts::default().max_subs_per_user(1));
    // A stored message makes every accepted stream answer at once.
    fill_inbox(&api, &bob, &alice, 1);
    let mut first = api.stream(&alice, 1);
    first.collect(1, WAIT);
    drop(first);

    // The server notices the close asynchronously: retry until accepted.
    let deadline = Instant::now() + WAIT;
    loop {
        let mut stream = api.stream(&alice, 1);
        let frame = stream
            .next_frame(WAIT)
            .expect("a new stream got no frame at all");
        if frame != frame_429() {
            assert_eq!(
                check_data_frame(&frame, alice.uid),
                filled(&bob, &alice, 1..=1)
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's slot was not freed within {WAIT:?}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A client that gives up its held poll frees the slot at once, not when
/// the poll would have timed out (30 s): the reactor reads a held poll's
/// socket and sees the close.
fn closed_held_poll_frees_its_slot(backend: Backend) {
    let (_srv, api, alice, bob) = setup(backend, Opts::default().max_subs_per_user(1));
    fill_inbox(&api, &bob, &alice, 1);
    // Past the stored message: held.
    let poll = api.start_poll(&alice, 2);
    // Held once alice is online: nothing else of hers is open.
    let online =
        json!({"appid": bob.appid, "uid": bob.uid, "token": bob.token, "uids": [alice.uid]});
    let deadline = Instant::now() + WAIT;
    while api.ok("/online", &online)["uids"] != json!([alice.uid]) {
        assert!(
            Instant::now() < deadline,
            "the poll was not held within {WAIT:?}"
        );
    }
    drop(poll);
    wait_for_the_slot(&api, &alice, &bob);
    // Closed before its answer came back from a worker: the same.
    drop(api.start_poll(&alice, 2));
    wait_for_the_slot(&api, &alice, &bob);
}

/// Opens streams of alice's until one is let in (and gets bob's stored
/// message 1), for `WAIT` at most.
fn wait_for_the_slot(api: &Api, alice: &User, bob: &User) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut stream = api.stream(alice, 1);
        let frame = stream
            .next_frame(WAIT)
            .expect("a new stream got no frame at all");
        if frame != frame_429() {
            assert_eq!(
                check_data_frame(&frame, alice.uid),
                filled(bob, alice, 1..=1)
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the closed poll's slot was not freed within {WAIT:?}"
        );
    }
}
