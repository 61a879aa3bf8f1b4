//! The subscriber side: frames and the two ways to receive them.
//! [`StreamClient`] reads `/cget/stream` (one chunk = one JSON frame +
//! `\n`, msgids never skip or repeat), [`PendingPoll`] / [`poll`] do
//! `/cget/poll`; [`check_data_frame`] and the fixed frames ([`noop_frame`],
//! [`frame_401`], [`frame_429`]) say what a frame must look like.

use super::api::{assert_keys, check_msgs, num_field, str_field, sub_query, Msg};
use super::http::{request_bytes, Conn, ReadEnd, Response};
use super::{left, WAIT};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a single long-poll may take (tests that hold polls pass
/// `--poll-timeout` of a few seconds).
const POLL_WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// A `data` frame: `{"type":"data","content":"<JSON string>"}` whose string
/// decodes to `{"msgs":[...],"endid":"N","toid":uid}`; at least one message.
pub fn check_data_frame(frame: &Value, uid: u64) -> Vec<Msg> {
    assert_keys(frame, &["type", "content"]);
    assert_eq!(frame["type"], "data", "{frame}");
    let content = str_field(frame, "content");
    let inner: Value = serde_json::from_str(content).unwrap_or_else(|e| {
        panic!("data frame content is not a JSON string of JSON ({e}): {frame}")
    });
    assert_keys(&inner, &["msgs", "endid", "toid"]);
    assert_eq!(
        num_field(&inner, "toid"),
        uid,
        "toid must be the subscriber: {inner}"
    );
    let (msgs, _) = check_msgs(&inner);
    assert!(!msgs.is_empty(), "a data frame without messages: {inner}");
    msgs
}

pub fn noop_frame() -> Value {
    json!({"type": "noop"})
}

pub fn frame_401() -> Value {
    json!({"type": "401", "content": "token error"})
}

pub fn frame_429() -> Value {
    json!({"type": "429", "content": "too many channels/subscribers"})
}

// ---------------------------------------------------------------------------
// /cget/stream
// ---------------------------------------------------------------------------

/// Parses a chunk payload: exactly one JSON frame followed by `\n`.
pub(super) fn parse_frame(payload: &[u8]) -> Value {
    let text = std::str::from_utf8(payload).expect("frame is not UTF-8");
    let line = text
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("a frame chunk must end with \\n: {text:?}"));
    assert!(
        !line.contains('\n'),
        "one frame per chunk expected: {text:?}"
    );
    serde_json::from_str(line).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {line:?}"))
}

/// A client of `/cget/stream`: one chunk = one JSON frame + `\n`. Checks
/// that msgids on the stream never skip or repeat.
pub struct StreamClient {
    conn: Conn,
    uid: Option<u64>,
    seq: u64,
    next_msgid: Option<u64>,
    ended: bool,
}

impl StreamClient {
    /// Sends `GET /cget/stream?<query>` and reads the head: `Ok` for a
    /// `200` chunked stream, `Err` with the whole response otherwise.
    pub fn connect(addr: SocketAddr, query: &str) -> Result<StreamClient, Response> {
        Self::connect_on(Conn::connect(addr), query)
    }

    /// Like [`StreamClient::connect`], on a connection of the caller's
    /// (e.g. [`Conn::connect_slow`]).
    pub fn connect_on(mut conn: Conn, query: &str) -> Result<StreamClient, Response> {
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
        };
        conn.send(&request_bytes(
            "GET",
            &format!("/cget/stream?{query}"),
            &[],
            b"",
        ));
        let head = conn
            .peek_head(WAIT)
            .unwrap_or_else(|end| panic!("no response head for /cget/stream?{query}: {end:?}"));
        if head.status != 200 {
            return Err(conn.read_response(WAIT));
        }
        conn.read_head(WAIT).expect("the head is buffered");
        assert!(
            head.is_chunked(),
            "/cget/stream must answer Transfer-Encoding: chunked: {head:?}"
        );
        Ok(StreamClient {
            conn,
            uid: param("cname"),
            seq: param("seq").unwrap_or(1),
            next_msgid: None,
            ended: false,
        })
    }

    /// Opens a stream that must answer `200` chunked.
    pub fn open(addr: SocketAddr, seq: u64, uid: u64, token: &str) -> StreamClient {
        Self::connect(addr, &sub_query(seq, uid, token)).unwrap_or_else(|r| {
            panic!(
                "stream refused: HTTP {} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )
        })
    }

    /// The next frame, or `None` if none came within `timeout` or the body
    /// ended (see [`StreamClient::ended`]).
    pub fn next_frame(&mut self, timeout: Duration) -> Option<Value> {
        if self.ended {
            return None;
        }
        match self.conn.read_chunk(timeout) {
            Ok(payload) if payload.is_empty() => {
                self.ended = true;
                None
            }
            Ok(payload) => Some(parse_frame(&payload)),
            Err(ReadEnd::Timeout) => None,
            Err(ReadEnd::Eof) => panic!("stream closed without the terminating 0-length chunk"),
        }
    }

    /// True once the terminating chunk was read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The messages of the next `data` frame (skipping heartbeats), or `None`
    /// after `timeout`. Fails on any other frame, or if the frame's first
    /// msgid does not follow the last one seen (or precedes `seq`).
    pub fn next_msgs(&mut self, timeout: Duration) -> Option<Vec<Msg>> {
        let deadline = Instant::now() + timeout;
        loop {
            let frame = self.next_frame(left(deadline))?;
            if frame == noop_frame() {
                continue;
            }
            let uid = self.uid.expect("stream opened without a numeric cname");
            let msgs = check_data_frame(&frame, uid);
            let first = msgs[0].msgid;
            match self.next_msgid {
                Some(next) => assert_eq!(first, next, "the stream skipped or repeated a msgid"),
                None => assert!(first >= self.seq, "msgid {first} < seq {}", self.seq),
            }
            self.next_msgid = Some(msgs[msgs.len() - 1].msgid + 1);
            return Some(msgs);
        }
    }

    /// Reads data frames until at least `n` messages came; fails after
    /// `timeout`.
    pub fn collect(&mut self, n: usize, timeout: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            match self.next_msgs(left(deadline)) {
                Some(msgs) => got.extend(msgs),
                None => panic!(
                    "stream got {} of {n} messages within {timeout:?} (ended: {}): {got:?}",
                    got.len(),
                    self.ended
                ),
            }
        }
        got
    }

    /// Fails unless nothing but heartbeats arrives for `how_long`.
    pub fn expect_quiet(&mut self, how_long: Duration) {
        if let Some(msgs) = self.next_msgs(how_long) {
            panic!("unexpected messages on the stream: {msgs:?}");
        }
        assert!(!self.ended, "the stream ended unexpectedly");
    }

    /// The next frame must be `expected` and then the body must end.
    pub fn expect_final_frame(&mut self, expected: &Value) {
        let frame = self.next_frame(WAIT);
        assert_eq!(frame.as_ref(), Some(expected), "stream frame");
        if let Some(extra) = self.next_frame(WAIT) {
            panic!("frame after {expected}: {extra}");
        }
        assert!(self.ended, "the stream did not end after {expected}");
    }
}

// ---------------------------------------------------------------------------
// /cget/poll
// ---------------------------------------------------------------------------

/// A `/cget/poll` request sent and not yet (fully) answered.
pub struct PendingPoll {
    conn: Conn,
}

impl PendingPoll {
    pub fn start(addr: SocketAddr, query: &str) -> PendingPoll {
        let mut conn = Conn::connect(addr);
        conn.send(&request_bytes(
            "GET",
            &format!("/cget/poll?{query}"),
            &[],
            b"",
        ));
        PendingPoll { conn }
    }

    /// The answer's frame, or `None` if it did not come within `timeout`
    /// (the poll stays pending). Checks HTTP 200, a `Content-Length`, and a
    /// body of one frame followed by `\n`.
    pub fn wait(&mut self, timeout: Duration) -> Option<Value> {
        let response = match self.conn.try_read_response(timeout) {
            Ok(r) => r,
            Err(ReadEnd::Timeout) => return None,
            Err(ReadEnd::Eof) => panic!("poll connection closed without an answer"),
        };
        Some(answer_frame(response))
    }

    /// The whole response (for the HTTP-level 400 cases).
    pub fn response(&mut self) -> Response {
        self.conn.read_response(WAIT)
    }
}

/// A poll answer: HTTP 200 with a `Content-Length` and one frame + `\n`.
fn answer_frame(r: Response) -> Value {
    assert_eq!(
        r.status,
        200,
        "poll answered {} {:?}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        r.header("content-length").is_some(),
        "poll answer without Content-Length: {r:?}"
    );
    parse_frame(&r.body)
}

/// One long-poll: the frame it answers (waits up to 15 s).
pub fn poll(addr: SocketAddr, seq: u64, uid: u64, token: &str) -> Value {
    PendingPoll::start(addr, &sub_query(seq, uid, token))
        .wait(POLL_WAIT)
        .unwrap_or_else(|| panic!("poll not answered within {POLL_WAIT:?}"))
}

// ---------------------------------------------------------------------------
// /cget/sse
// ---------------------------------------------------------------------------

/// One Server-Sent Event as the server framed it: a chunk each.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    /// The `data:` field: one JSON frame.
    pub data: Option<String>,
    pub retry: Option<u64>,
    /// A comment line (`: noop` heartbeats).
    pub comment: Option<String>,
}

impl SseEvent {
    /// The `data:` field as JSON.
    pub fn frame(&self) -> Value {
        let data = self.data.as_deref().expect("an event with data");
        serde_json::from_str(data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}"))
    }
}

/// Parses one event (lines, then the blank line that ends it).
fn parse_event(payload: &[u8]) -> SseEvent {
    let text = std::str::from_utf8(payload).expect("an SSE event is UTF-8");
    let body = text
        .strip_suffix("\n\n")
        .unwrap_or_else(|| panic!("an SSE event must end with a blank line: {text:?}"));
    let mut e = SseEvent::default();
    for line in body.split('\n') {
        if let Some(c) = line.strip_prefix(':') {
            e.comment = Some(c.trim().to_owned());
        } else if let Some((field, value)) = line.split_once(": ") {
            match field {
                "id" => e.id = Some(value.to_owned()),
                "data" => e.data = Some(value.to_owned()),
                "retry" => e.retry = Some(value.parse().expect("retry is a number")),
                _ => panic!("unknown SSE field in {text:?}"),
            }
        } else {
            panic!("a malformed SSE line {line:?} in {text:?}");
        }
    }
    e
}

/// A `/cget/sse` subscription (`text/event-stream`, one event a chunk).
pub struct SseClient {
    conn: Conn,
}

impl SseClient {
    /// Subscribes with `query`, sending `Last-Event-ID` if given; the head
    /// must be 200 `text/event-stream`, chunked.
    pub fn open(addr: SocketAddr, query: &str, last_event_id: Option<&str>) -> SseClient {
        let mut conn = Conn::connect(addr);
        let headers: Vec<(&str, &str)> = last_event_id
            .map(|id| ("Last-Event-ID", id))
            .into_iter()
            .collect();
        conn.send(&request_bytes(
            "GET",
            &format!("/cget/sse?{query}"),
            &headers,
            b"",
        ));
        let head = conn.read_head(WAIT).expect("an SSE response head");
        assert_eq!(head.status, 200, "{head:?}");
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
        assert!(head.is_chunked(), "{head:?}");
        SseClient { conn }
    }

    /// The next event, or `None` at the end of the body or after `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        match self.conn.read_chunk(timeout) {
            Ok(payload) if payload.is_empty() => None,
            Ok(payload) => Some(parse_event(&payload)),
            Err(_) => None,
        }
    }
}
