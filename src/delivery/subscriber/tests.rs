//! Every transition of the subscriber, as tables: events in, bytes and
//! steps out. No socket, no clock, no store.

use std::sync::Arc;

use super::*;
use crate::store::{Message, Reset};

const APP: AppKey = 3;
const UID: Uid = 7;
/// A token that does not expire within these tests.
const FAR: Secs = 1_000_000;

fn sub(next: MsgId) -> Sub {
    Sub {
        app: APP,
        uid: UID,
        next,
    }
}

fn stream(next: MsgId, seen: MsgId) -> Subscriber {
    Subscriber::new(sub(next), Kind::Chunked, seen, FAR)
}

fn poll(next: MsgId) -> Subscriber {
    Subscriber::new(sub(next), Kind::Poll { keep_alive: true }, 0, FAR)
}

fn msg(msgid: MsgId, content: &str) -> Message {
    Message {
        msgid,
        fromid: 1,
        toid: UID,
        datatype: 1,
        content: Arc::from(content),
    }
}

fn page(ids: &[MsgId], last: MsgId) -> Page {
    Page {
        reset: None,
        msgs: ids.iter().map(|&i| msg(i, &format!("m{i}"))).collect(),
        last,
    }
}

/// The JSON frames in what a chunked stream wrote (chunk framing removed).
fn frames(out: &[u8]) -> Vec<serde_json::Value> {
    let mut v = Vec::new();
    let mut rest = out;
    while !rest.is_empty() {
        let crlf = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let len = usize::from_str_radix(std::str::from_utf8(&rest[..crlf]).unwrap(), 16).unwrap();
        if len == 0 {
            break;
        }
        let body = &rest[crlf + 2..crlf + 2 + len];
        v.push(serde_json::from_slice(body).unwrap());
        rest = &rest[crlf + 2 + len + 2..];
    }
    v
}

/// (type, msgids or endid) of each frame, for compact expectations.
fn summary(out: &[u8]) -> Vec<(String, Vec<u64>)> {
    frames(out)
        .iter()
        .map(|f| {
            let ty = f["type"].as_str().unwrap().to_owned();
            let ids = match f["content"].as_str() {
                Some(c) if ty == "data" => {
                    let inner: serde_json::Value = serde_json::from_str(c).unwrap();
                    inner["msgs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|m| m["msgid"].as_str().unwrap().parse().unwrap())
                        .collect()
                }
                Some(c) if ty == "trimmed" => {
                    let inner: serde_json::Value = serde_json::from_str(c).unwrap();
                    vec![inner["endid"].as_str().unwrap().parse().unwrap()]
                }
                _ => vec![],
            };
            (ty, ids)
        })
        .collect()
}

fn data(ids: &[u64]) -> (String, Vec<u64>) {
    ("data".into(), ids.to_vec())
}

fn trimmed(endid: u64) -> (String, Vec<u64>) {
    ("trimmed".into(), vec![endid])
}

#[test]
fn live_messages_by_msgid_and_queue() {
    // (next, fetching, msgid, queued) -> (outcome, next after, seen after)
    let cases: &[(MsgId, bool, MsgId, usize, Live, MsgId, MsgId)] = &[
        // the one owed, with room: sent
        (5, false, 5, 0, Live::Send, 6, 5),
        (5, false, 5, HIGH_WATER, Live::Send, 6, 5),
        // a few frames still queued is not backed up: sent at once
        (5, false, 5, 32 * 1024, Live::Send, 6, 5),
        // already sent by a page: dropped, nothing learnt
        (5, false, 4, 0, Live::Drop, 5, 0),
        // a gap: held; the page read will carry it
        (5, false, 7, 0, Live::Hold, 5, 7),
        // a page in flight: held behind it
        (5, true, 5, 0, Live::Hold, 5, 5),
        // over high water: held, the store is the buffer
        (5, false, 5, HIGH_WATER + 1, Live::Hold, 5, 5),
    ];
    for &(next, fetching, msgid, queued, ref want, next_after, seen_after) in cases {
        let mut s = stream(next, 0);
        s.fetching = fetching;
        let got = s.on_live(msgid, queued);
        assert_eq!(
            &got, want,
            "next {next} fetching {fetching} msgid {msgid} queued {queued}"
        );
        assert_eq!((s.next, s.seen), (next_after, seen_after), "msgid {msgid}");
    }
}

#[test]
fn pages_are_asked_for_below_low_water_one_at_a_time() {
    // (next, seen, fetching, queued) -> asks for a page from
    let cases: &[(MsgId, MsgId, bool, usize, Option<MsgId>)] = &[
        (5, 4, false, 0, None),             // owed nothing
        (5, 5, false, 0, Some(5)),          // owed one
        (5, 9, false, LOW_WATER, Some(5)),  // at the mark
        (5, 9, false, 8 * 1024, Some(5)),   // draining: the next page is read meanwhile
        (5, 9, false, LOW_WATER + 1, None), // wait for the socket to drain
        (5, 9, true, 0, None),              // one in flight already
    ];
    for &(next, seen, fetching, queued, want) in cases {
        let mut s = stream(next, seen);
        s.fetching = fetching;
        let got = s.next_page(queued).map(|sub| sub.next);
        assert_eq!(
            got, want,
            "next {next} seen {seen} fetching {fetching} queued {queued}"
        );
        if want.is_some() {
            assert!(s.fetching && s.next_page(0).is_none(), "only one at a time");
            s.page_refused();
            assert_eq!(s.next_page(0).map(|p| p.next), want, "refused: ask again");
        }
    }
}

#[test]
fn a_page_writes_what_is_owed_and_names_what_is_gone() {
    // (next, page msgids, inbox last) -> (frames, next after, seen after)
    type Case = (
        MsgId,
        &'static [MsgId],
        MsgId,
        Vec<(String, Vec<u64>)>,
        MsgId,
        MsgId,
    );
    let cases: Vec<Case> = vec![
        // nothing stored, nothing sent
        (1, &[], 0, vec![], 1, 0),
        // the backlog
        (1, &[1, 2, 3], 3, vec![data(&[1, 2, 3])], 4, 3),
        // a page cut short: more after it is known
        (1, &[1, 2], 9, vec![data(&[1, 2])], 3, 9),
        // overlap with what live delivery already sent is skipped
        (3, &[1, 2, 3, 4], 4, vec![data(&[3, 4])], 5, 4),
        // all of it sent already
        (5, &[3, 4], 4, vec![], 5, 4),
        // the start was acked elsewhere / capped: trimmed, then data
        (1, &[4, 5], 5, vec![trimmed(3), data(&[4, 5])], 6, 5),
        // all that was owed is gone
        (2, &[], 6, vec![trimmed(6)], 7, 6),
        // a hole (msgids a store lost, see Reset): what comes before it
        // now, the hole as a trimmed frame on the next page
        (1, &[1, 2, 5, 6], 6, vec![data(&[1, 2])], 3, 6),
        (3, &[5, 6], 6, vec![trimmed(4), data(&[5, 6])], 7, 6),
    ];
    for (next, ids, last, want, next_after, seen_after) in cases {
        let mut s = stream(next, 0);
        s.fetching = true;
        let mut out = Vec::new();
        let step = s.on_page(&page(ids, last), &mut out);
        assert_eq!(step, Step::Continue, "a stream goes on");
        assert_eq!(summary(&out), want, "next {next} page {ids:?} last {last}");
        assert_eq!((s.next, s.seen), (next_after, seen_after), "page {ids:?}");
        assert!(!s.fetching);
        assert_eq!(s.behind(), next_after <= last, "page {ids:?}");
    }
}

#[test]
fn a_store_found_behind_the_client_is_a_reset_frame_then_business_as_usual() {
    // The client had msgids up to 5; the store had lost 4 and 5 and now
    // counts on from 5 in epoch 2.
    let behind = Page {
        msgs: vec![],
        last: 5,
        reset: Some(Reset { epoch: 2, found: 3 }),
    };
    let want = serde_json::json!({
        "type": "reset",
        "content": r#"{"epoch":2,"endid":"5","found":"3","toid":7}"#,
    });
    let mut s = stream(6, 0);
    let mut out = Vec::new();
    assert_eq!(s.on_page(&behind, &mut out), Step::Continue);
    assert_eq!(frames(&out), vec![want.clone()]);
    assert_eq!((s.next, s.seen, s.behind()), (6, 5, false));
    assert_eq!(s.on_live(6, 0), Live::Send, "msgid 6 is the next one owed");

    // A held poll is answered by the reset frame alone.
    let mut p = poll(6);
    let mut out = Vec::new();
    let step = p.on_page(&behind, &mut out);
    assert_eq!(step, Step::Done { keep_alive: true });
    let body = &out[out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(body).unwrap(),
        want
    );
}

#[test]
fn a_held_poll_answers_with_its_first_frame() {
    // (next, page msgids, last) -> answered with (frame), or held
    type Case = (
        MsgId,
        &'static [MsgId],
        MsgId,
        Option<(&'static str, MsgId)>,
    );
    let cases: &[Case] = &[
        (1, &[], 0, None),
        (1, &[1, 2], 2, Some(("data", 3))),
        (1, &[3], 3, Some(("trimmed", 3))), // the trimmed frame is the answer
        (3, &[], 2, None),
    ];
    for &(next, ids, last, want) in cases {
        let mut s = poll(next);
        let mut out = Vec::new();
        let step = s.on_page(&page(ids, last), &mut out);
        match want {
            None => {
                assert_eq!(step, Step::Continue, "held");
                assert!(out.is_empty());
            }
            Some((ty, next_after)) => {
                assert_eq!(step, Step::Done { keep_alive: true });
                let text = String::from_utf8(out).unwrap();
                assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
                let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
                let f: serde_json::Value = serde_json::from_str(body).unwrap();
                assert_eq!(f["type"], ty, "{body}");
                assert_eq!(s.next, next_after);
            }
        }
    }
    // A live message answers a held poll, and only one.
    let mut s = poll(4);
    assert_eq!(s.on_live(4, 0), Live::Send);
    assert_eq!(s.kind().step(), Step::Done { keep_alive: true });
}

#[test]
fn timers_heartbeat_expire_and_time_polls_out() {
    // (kind, expires, now, queued) -> (first frame type or none, step)
    let ka = Kind::Poll { keep_alive: true };
    type Case = (Kind, Secs, Secs, usize, Option<&'static str>, Step);
    let cases: &[Case] = &[
        (Kind::Chunked, FAR, 30, 0, Some("noop"), Step::Continue),
        // output still queued: the client is receiving, no heartbeat
        (Kind::Chunked, FAR, 30, 10, None, Step::Continue),
        (
            Kind::Chunked,
            30,
            30,
            0,
            Some("401"),
            Step::Done { keep_alive: false },
        ),
        (
            Kind::Chunked,
            30,
            30,
            10,
            Some("401"),
            Step::Done { keep_alive: false },
        ),
        (
            ka,
            FAR,
            30,
            0,
            Some("noop"),
            Step::Done { keep_alive: true },
        ),
        (ka, 30, 30, 0, Some("401"), Step::Done { keep_alive: true }),
        // a held poll times out whatever is queued before it
        (
            ka,
            FAR,
            30,
            10,
            Some("noop"),
            Step::Done { keep_alive: true },
        ),
    ];
    for &(kind, expires, now, queued, want, step) in cases {
        let mut s = Subscriber::new(sub(1), kind, 0, expires);
        let mut out = Vec::new();
        assert_eq!(
            s.on_timer(now, queued, &mut out),
            step,
            "{kind:?} {expires} {queued}"
        );
        let text = String::from_utf8_lossy(&out);
        match want {
            None => assert!(out.is_empty(), "{text}"),
            Some(ty) => assert!(text.contains(&format!("\"type\":\"{ty}\"")), "{text}"),
        }
        if kind == Kind::Chunked && step != Step::Continue {
            assert!(out.ends_with(b"0\r\n\r\n"), "the stream ends: {text}");
        }
    }
}

#[test]
fn deadlines_never_early_never_past_expiry() {
    let s = stream(1, 0);
    assert_eq!(s.deadline(100, 30), 131);
    let short = Subscriber::new(sub(1), Kind::Chunked, 0, 120);
    assert_eq!(short.deadline(100, 30), 120, "the token expires first");
    // expires_at in unix seconds, seen at unix 1000 and tick 50
    assert_eq!(expiry_tick(1010, 1000, 50), 61, "10 s left: at least 10 s");
    assert_eq!(expiry_tick(900, 1000, 50), 51, "already expired: next tick");
    assert_eq!(expiry_tick(u64::MAX, 1000, 50), NEVER - 1);
    // The reactor's first tick is 0.
    assert_eq!(expiry_tick(1010, 1000, 0), 11);
    // A token good for years still expires (NEVER is some 136 years).
    let years = 100_000_000;
    assert_eq!(expiry_tick(1000 + years, 1000, 50), 50 + years as Secs + 1);
}

#[test]
fn revocation_shutdown_and_failure_end_it() {
    // (kind, event) -> (bytes contain, step)
    type Event = fn(&mut Subscriber, &mut Vec<u8>) -> Step;
    let revoke: Event = |s, o| s.on_revoked(o);
    let shutdown: Event = |s, o| s.on_shutdown(o);
    let fail: Event = |s, o| s.on_store_failed(o);
    let ka = Kind::Poll { keep_alive: true };
    let closed = Step::Done { keep_alive: false };
    let cases: &[(Kind, Event, &str, Step)] = &[
        (Kind::Chunked, revoke, "\"type\":\"401\"", closed),
        (Kind::Raw, revoke, "\"type\":\"401\"", closed),
        (
            ka,
            revoke,
            "\"type\":\"401\"",
            Step::Done { keep_alive: true },
        ),
        (Kind::Chunked, shutdown, "0\r\n\r\n", closed),
        (ka, shutdown, "\"type\":\"noop\"", closed),
        (Kind::Chunked, fail, "0\r\n\r\n", closed),
        (ka, fail, "HTTP/1.1 503 ", closed),
        // A WebSocket: the 401 frame as a text message, then close 1000;
        // close 1001 when the server stops, 1011 when the store fails.
        (Kind::Ws, revoke, "\u{81}'{\"type\":\"401\"", closed),
        (Kind::Ws, revoke, "\u{88}\u{2}\u{3}\u{e8}", closed),
        (
            Kind::Ws,
            shutdown,
            "\u{88}\u{11}\u{3}\u{e9}server stopping",
            closed,
        ),
        (
            Kind::Ws,
            fail,
            "\u{88}\u{13}\u{3}\u{f3}store unavailable",
            closed,
        ),
    ];
    for &(kind, event, want, step) in cases {
        let mut s = Subscriber::new(sub(1), kind, 0, FAR);
        let mut out = Vec::new();
        assert_eq!(event(&mut s, &mut out), step, "{kind:?} {want}");
        // Latin-1, so a WebSocket frame's header bytes read as chars.
        let text: String = out.iter().map(|&b| char::from(b)).collect();
        assert!(text.contains(want), "{kind:?}: {text:?}");
        if kind == Kind::Raw {
            assert!(!text.contains("\r\n"), "no chunk framing on 1.0: {text}");
        }
    }
}

#[test]
fn lagging_forces_a_read_and_the_store_settles_it() {
    let mut s = stream(5, 4);
    assert!(s.next_page(0).is_none(), "owed nothing");
    s.on_lagged();
    assert_eq!(s.next_page(0).map(|p| p.next), Some(5));
    let mut out = Vec::new();
    // Nothing was lost after all: the page is empty and says last = 4.
    assert_eq!(s.on_page(&page(&[], 4), &mut out), Step::Continue);
    assert!(out.is_empty(), "{out:?}");
    assert!(!s.behind());
    assert!(s.next_page(0).is_none(), "settled");
    // A lag while a page is in flight needs a read asked for after it.
    s.on_lagged();
    assert!(s.next_page(0).is_some());
    s.on_lagged();
    s.on_page(&page(&[], 4), &mut out);
    assert_eq!(s.next_page(0).map(|p| p.next), Some(5), "read again");
}

#[test]
fn a_slow_reader_gets_everything_in_order_through_the_store() {
    // Live messages 1..=50 arrive while the queue is over high water,
    // then the socket drains and pages of 8 are read until caught up.
    let mut s = stream(1, 0);
    for id in 1..=50 {
        assert_eq!(s.on_live(id, HIGH_WATER + 1), Live::Hold);
    }
    assert!(s.next_page(HIGH_WATER).is_none(), "not until it drains");
    let mut got = Vec::new();
    while let Some(p) = s.next_page(0) {
        let ids: Vec<MsgId> = (p.next..=50).take(8).collect();
        let mut out = Vec::new();
        assert_eq!(s.on_page(&page(&ids, 50), &mut out), Step::Continue);
        for (_, ids) in summary(&out) {
            got.extend(ids);
        }
    }
    assert_eq!(got, (1..=50).collect::<Vec<_>>());
    // And live again once caught up.
    assert_eq!(s.on_live(51, 0), Live::Send);
}

/// A masked client frame (RFC 6455, 5.3).
fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [9, 8, 7, 6];
    assert!(payload.len() < 126);
    let mut f = vec![b0, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[test]
fn a_websocket_client_is_answered_frame_by_frame() {
    let ping = client_frame(0x89, b"abc");
    let close = |code: &[u8]| client_frame(0x88, code);
    let text = client_frame(0x81, b"hello");
    let pong = client_frame(0x8A, b"p");
    let mut unmasked = client_frame(0x89, b"");
    unmasked[1] = 0;
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(1u64 << 32).to_be_bytes());
    let go_on = Step::Continue;
    let done = Step::Done { keep_alive: false };
    // (input, bytes used, what is written, step)
    let cases: Vec<(Vec<u8>, usize, Vec<u8>, Step)> = vec![
        (ping.clone(), 9, b"\x8a\x03abc".to_vec(), go_on),
        // Messages and pongs from the client are dropped.
        ([text.clone(), pong.clone()].concat(), 18, vec![], go_on),
        // Two pings in one read: two pongs, in order.
        (
            [ping.clone(), client_frame(0x89, b"")].concat(),
            15,
            b"\x8a\x03abc\x8a\x00".to_vec(),
            go_on,
        ),
        // A partial frame waits (a whole one before it is answered).
        (
            [&ping[..], &ping[..4]].concat(),
            9,
            b"\x8a\x03abc".to_vec(),
            go_on,
        ),
        (ping[..1].to_vec(), 0, vec![], go_on),
        // A close is echoed, then the end; nothing after it is read.
        (
            [close(&[0x03, 0xE8]), ping.clone()].concat(),
            17,
            vec![0x88, 2, 0x03, 0xE8],
            done,
        ),
        (
            close(&[0x0F, 0xA0, b'x']),
            9,
            vec![0x88, 2, 0x0F, 0xA0],
            done,
        ),
        (close(&[]), 6, vec![0x88, 2, 0x03, 0xE8], done),
        // A code no endpoint may send (1005) is a protocol error.
        (close(&[0x03, 0xED]), 8, vec![0x88, 2, 0x03, 0xEA], done),
        // Faults: 1002, or 1009 for a frame too large, from its header.
        (
            unmasked,
            6,
            [&[0x88, 30, 0x03, 0xEA][..], b"client frames must be masked"].concat(),
            done,
        ),
        (
            huge,
            10,
            [&[0x88, 17, 0x03, 0xF1][..], b"frame too large"].concat(),
            done,
        ),
    ];
    for (input, used, want, step) in cases {
        let mut s = Subscriber::new(sub(1), Kind::Ws, 0, FAR);
        let mut out = Vec::new();
        assert_eq!(s.on_input(&input, &mut out), (used, step), "{input:02x?}");
        assert_eq!(out, want, "{input:02x?}");
    }
}
