//! `/cget/sse`: the stream as Server-Sent Events, what a browser's
//! `EventSource` reads. The same frames as `/cget/stream`, one event each:
//! `data:` the JSON frame, `id:` the frame's last msgid; a `retry:` hint
//! first; heartbeats as comments; `Last-Event-ID` (sent by `EventSource`
//! when it reconnects) resumes after that msgid and wins over `seq`; the
//! `401` frame, then the end.

mod common;

use std::time::Duration;

use common::*;

common::backend_tests!(
    events_carry_frames_with_their_msgid,
    last_event_id_resumes_exactly_and_wins_over_seq,
    a_logout_ends_the_event_stream_with_the_401_frame,
);

fn events_carry_frames_with_their_msgid(backend: Backend) {
    let srv = Server::start(backend, Opts::default().heartbeat(1));
    let api = srv.api();
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));
    fill_inbox(&api, &bob, &alice, 2);
    let mut sse = SseClient::open(srv.addr(), &sub_query(1, alice.uid, &alice.token), None);

    let first = sse.next_event(WAIT).expect("the retry hint");
    assert_eq!(first.retry, Some(3000), "{first:?}");
    assert_eq!((first.data, first.id), (None, None));
    // The backlog: one data frame, its id the frame's endid.
    let backlog = sse.next_event(WAIT).expect("the backlog");
    assert_eq!(backlog.id.as_deref(), Some("2"));
    assert_eq!(
        check_data_frame(&backlog.frame(), alice.uid),
        filled(&bob, &alice, 1..=2)
    );
    // A live message.
    api.send(&bob, alice.uid, "m3");
    let live = sse.next_event(WAIT).expect("a live event");
    assert_eq!(live.id.as_deref(), Some("3"));
    assert_eq!(
        check_data_frame(&live.frame(), alice.uid),
        filled(&bob, &alice, 3..=3)
    );
    // Quiet: a heartbeat comment, not a data event.
    let beat = sse.next_event(Duration::from_secs(5)).expect("a heartbeat");
    assert_eq!(
        beat,
        SseEvent {
            comment: Some("noop".into()),
            ..SseEvent::default()
        }
    );
}

fn last_event_id_resumes_exactly_and_wins_over_seq(backend: Backend) {
    let srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));
    fill_inbox(&api, &bob, &alice, 5);
    // seq=1, but the browser had up to msgid 3.
    let query = sub_query(1, alice.uid, &alice.token);
    let mut sse = SseClient::open(srv.addr(), &query, Some("3"));
    sse.next_event(WAIT).expect("the retry hint");
    let resumed = sse.next_event(WAIT).expect("the backlog after 3");
    assert_eq!(resumed.id.as_deref(), Some("5"));
    assert_eq!(
        check_data_frame(&resumed.frame(), alice.uid),
        filled(&bob, &alice, 4..=5)
    );
    // A malformed Last-Event-ID is a clear 400, not a guess; so is 2^53,
    // the largest msgid, after which there is nothing to resume from.
    for bad in ["x1", "9007199254740992"] {
        let path = format!("/cget/sse?{query}");
        let r = request(srv.addr(), "GET", &path, &[("Last-Event-ID", bad)], b"");
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.json()["msg"], "'Last-Event-ID' must be a message id");
    }
}

fn a_logout_ends_the_event_stream_with_the_401_frame(backend: Backend) {
    let srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let alice = api.user("a", "alice");
    let mut sse = SseClient::open(srv.addr(), &sub_query(1, alice.uid, &alice.token), None);
    sse.next_event(WAIT).expect("the retry hint");
    api.logout(&alice);
    let last = sse.next_event(WAIT).expect("the 401 event");
    assert_eq!((last.frame(), last.id), (frame_401(), None));
    assert_eq!(sse.next_event(WAIT), None, "the body ends after it");
}
