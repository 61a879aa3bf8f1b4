//! `/cget/ws`: the stream as a WebSocket (RFC 6455). The same query, auth,
//! limits and frames as `/cget/stream`, one text message each (heartbeats
//! too); pings answered with pongs, a client's close echoed, close 1001
//! when the server stops, 1002/1009 for frames that break the protocol or
//! are too large; a handshake that is not one is a 400 with the JSON error
//! body. A real client (Python's `websockets`) where one can be used; frames
//! by hand for what no client library sends.

mod common;

use common::*;
use serde_json::json;

common::backend_tests!(
    frames_arrive_as_text_messages,
    a_client_resumes_by_seq_across_a_restart,
    pings_are_answered_and_a_close_is_echoed,
    shutdown_closes_with_going_away,
    bad_handshakes_are_a_clear_400,
    refusals_and_logout_are_frames_then_a_close,
    protocol_faults_close_with_1002_or_1009,
);

fn frames_arrive_as_text_messages(backend: Backend) {
    let srv = Server::start(backend, Opts::default().heartbeat(1));
    let api = srv.api();
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));
    fill_inbox(&api, &bob, &alice, 2);
    let mut ws = WsClient::open(srv.addr(), &sub_query(1, alice.uid, &alice.token));
    // The backlog, then a live message, each a data frame.
    assert_eq!(
        check_data_frame(&ws.next_frame(WAIT), alice.uid),
        filled(&bob, &alice, 1..=2)
    );
    api.send(&bob, alice.uid, "m3");
    assert_eq!(
        check_data_frame(&ws.next_frame(WAIT), alice.uid),
        filled(&bob, &alice, 3..=3)
    );
    // Quiet: the heartbeat is the noop frame as a message.
    assert_eq!(ws.next_frame(WAIT), noop_frame());
}

/// The data messages of `ws` until msgid `last` came.
fn messages_until(ws: &mut WsClient, uid: u64, last: u64) -> Vec<Msg> {
    let mut got: Vec<Msg> = Vec::new();
    while got.last().is_none_or(|m| m.msgid < last) {
        got.extend(check_data_frame(&ws.next_frame(WAIT), uid));
    }
    got
}

fn a_client_resumes_by_seq_across_a_restart(backend: Backend) {
    let mut srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));
    fill_inbox(&api, &bob, &alice, 2);
    let mut ws = WsClient::open(srv.addr(), &sub_query(1, alice.uid, &alice.token));
    api.send(&bob, alice.uid, "m3");
    let mut got = messages_until(&mut ws, alice.uid, 3);
    assert_eq!(srv.term().code(), Some(0));
    assert_eq!(ws.event(WAIT).expect("the close")["closed"], 1001);

    srv.restart_same_dir();
    let api = srv.api();
    api.send(&bob, alice.uid, "m4");
    api.send(&bob, alice.uid, "m5");
    // Resume after the last msgid held; one more arrives live.
    let next = got.last().expect("messages").msgid + 1;
    let mut ws = WsClient::open(srv.addr(), &sub_query(next, alice.uid, &alice.token));
    let mut resumed = messages_until(&mut ws, alice.uid, 5);
    api.send(&bob, alice.uid, "m6");
    resumed.extend(messages_until(&mut ws, alice.uid, 6));
    got.extend(resumed);
    // Every message once, in order: none lost, none twice.
    assert_eq!(got, filled(&bob, &alice, 1..=6));
}

fn pings_are_answered_and_a_close_is_echoed(backend: Backend) {
    let srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let alice = api.user("a", "alice");
    let mut ws = WsClient::open(srv.addr(), &sub_query(1, alice.uid, &alice.token));
    ws.command("ping hello");
    assert_eq!(ws.event(WAIT), Some(json!({"pong": "hello"})));
    // The client's close comes back with its code, and the server ends the
    // connection (the library reports 1006 otherwise, after its timeout).
    ws.command("close 4000");
    assert_eq!(ws.event(WAIT), Some(json!({"closed": 4000, "reason": ""})));

    // By hand: the pong carries the ping's payload; a message the client
    // sends is dropped, not answered.
    let mut raw = RawWs::open(srv.addr(), &sub_query(1, alice.uid, &alice.token));
    raw.send(&client_frame(0x81, b"hi there"));
    raw.send(&client_frame(0x89, b"abc"));
    assert_eq!(raw.frame(WAIT), Ok((0xA, b"abc".to_vec())));
    raw.send(&client_frame(0x88, &1000u16.to_be_bytes()));
    raw.expect_close(1000);
}

fn shutdown_closes_with_going_away(backend: Backend) {
    let mut srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let alice = api.user("a", "alice");
    let mut ws = WsClient::open(srv.addr(), &sub_query(1, alice.uid, &alice.token));
    let mut raw = RawWs::open(srv.addr(), &sub_query(1, alice.uid, &alice.token));
    assert_eq!(srv.term().code(), Some(0));
    assert_eq!(
        ws.event(WAIT),
        Some(json!({"closed": 1001, "reason": "server stopping"}))
    );
    raw.expect_close(1001);
}

fn bad_handshakes_are_a_clear_400(backend: Backend) {
    let srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let alice = api.user("a", "alice");
    let path = format!("/cget/ws?{}", sub_query(1, alice.uid, &alice.token));
    let upgrade = ("Upgrade", "websocket");
    let connection = ("Connection", "Upgrade");
    let key = ("Sec-WebSocket-Key", WS_KEY);
    let v13 = ("Sec-WebSocket-Version", "13");
    // (headers, msg)
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[upgrade, connection, v13],
            "missing or malformed 'Sec-WebSocket-Key'",
        ),
        (
            &[upgrade, connection, v13, ("Sec-WebSocket-Key", "c2hvcnQ=")],
            "missing or malformed 'Sec-WebSocket-Key'",
        ),
        (
            &[upgrade, connection, key, ("Sec-WebSocket-Version", "8")],
            "unsupported 'Sec-WebSocket-Version': use 13",
        ),
        (
            &[upgrade, connection, key],
            "unsupported 'Sec-WebSocket-Version': use 13",
        ),
        (&[connection, key, v13], "missing 'Upgrade: websocket'"),
        (&[upgrade, key, v13], "missing 'Connection: Upgrade'"),
    ];
    for &(headers, msg) in cases {
        let r = request(srv.addr(), "GET", &path, headers, b"");
        assert_eq!(r.status, 400, "{headers:?}");
        assert_eq!(r.json(), json!({"type": "error", "code": 400, "msg": msg}));
        // The version this server speaks (RFC 6455, 4.2.2).
        assert_eq!(r.header("sec-websocket-version"), Some("13"));
    }
    // A good handshake with a bad query is refused as a stream is.
    let r = request(
        srv.addr(),
        "GET",
        "/cget/ws?seq=1",
        &[upgrade, connection, key, v13],
        b"",
    );
    assert_eq!(
        (r.status, r.json()["msg"].clone()),
        (400, json!("missing query parameter 'cname'"))
    );
    let r = request(
        srv.addr(),
        "POST",
        &path,
        &[upgrade, connection, key, v13],
        b"",
    );
    assert_eq!(r.status, 405);
    // The library's view of a refused handshake.
    let mut ws = WsClient::connect(srv.addr(), "seq=1");
    let event = ws.event(WAIT).expect("the handshake's outcome");
    assert!(
        event["error"].as_str().is_some_and(|e| e.contains("400")),
        "{event}"
    );
}

fn refusals_and_logout_are_frames_then_a_close(backend: Backend) {
    let srv = Server::start(backend, Opts::default().max_subs_per_user(1));
    let api = srv.api();
    let alice = api.user("a", "alice");
    let query = sub_query(1, alice.uid, &alice.token);
    // A bad token: switched, the 401 frame, close 1000.
    let mut bad = RawWs::open(srv.addr(), &sub_query(1, alice.uid, &"0".repeat(48)));
    assert_eq!(bad.next_frame(WAIT), frame_401());
    bad.expect_close(1000);
    // Over the per-user limit: the 429 frame.
    let mut first = RawWs::open(srv.addr(), &query);
    let mut second = RawWs::open(srv.addr(), &query);
    assert_eq!(second.next_frame(WAIT), frame_429());
    second.expect_close(1000);
    // A logout ends the open one with the 401 frame.
    api.logout(&alice);
    assert_eq!(first.next_frame(WAIT), frame_401());
    first.expect_close(1000);
}

fn protocol_faults_close_with_1002_or_1009(backend: Backend) {
    let srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let alice = api.user("a", "alice");
    let query = sub_query(1, alice.uid, &alice.token);
    let too_big = 4097usize;
    let mut header_only = vec![0x82, 0x80 | 127];
    header_only.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header_only.extend_from_slice(&[1, 2, 3, 4]);
    // (what the client sends, close code)
    let cases: Vec<(Vec<u8>, u16)> = vec![
        // Unmasked: a client frame must be masked.
        (vec![0x81, 0x02, b'h', b'i'], 1002),
        // A reserved bit, no extension negotiated.
        (client_frame(0xC1, b"x"), 1002),
        // A ping too long for a control frame.
        (client_frame(0x89, &[0; 126]), 1002),
        // Too large: refused from the header alone, or whole.
        (header_only, 1009),
        (client_frame(0x82, &vec![0; too_big]), 1009),
    ];
    for (bytes, code) in cases {
        let mut ws = RawWs::open(srv.addr(), &query);
        ws.send(&bytes);
        ws.expect_close(code);
    }
}
