//! The JSON frames of streams and polls, and the message lists of `/pull`.
//!
//! Pure byte encoding, no I/O. A stream frame's `content` is a JSON *string*
//! holding `{"msgs":[...],"endid":"N","toid":U}`, so a message inside it is
//! escaped twice. For live delivery the part of a message that every receiver
//! shares (everything before its msgid) is escaped once per message into a
//! [`LiveMsg`] and reused for every receiver; only the small suffix with the
//! receiver's msgid and uid is formatted per delivery, on the stack.

use crate::store::{Message, MsgId, NewMessage, Uid};

/// Opens a data frame, up to the first message.
pub const DATA_OPEN: &[u8] = br#"{"type":"data","content":"{\"msgs\":["#;
/// The heartbeat frame.
pub const NOOP: &[u8] = b"{\"type\":\"noop\"}\n";
/// Sent before a stream ends on a bad token.
pub const TOKEN_ERROR: &[u8] = b"{\"type\":\"401\",\"content\":\"token error\"}\n";
/// Sent before a stream ends when a subscriber limit is reached.
pub const TOO_MANY: &[u8] = b"{\"type\":\"429\",\"content\":\"too many channels/subscribers\"}\n";

/// A message as every live receiver shares it: the frame text of the message
/// up to its msgid, escaped for the frame's `content` string.
#[derive(Debug)]
pub struct LiveMsg {
    prefix: Box<[u8]>,
}

impl LiveMsg {
    pub fn new(msg: &NewMessage) -> LiveMsg {
        let mut inner = Vec::with_capacity(msg.content.len() + 64);
        msg_json_prefix(&mut inner, msg.fromid, msg.toid, msg.datatype, &msg.content);
        let mut prefix = Vec::with_capacity(inner.len() + inner.len() / 4);
        escape_into(&mut prefix, &inner);
        LiveMsg {
            prefix: prefix.into_boxed_slice(),
        }
    }

    /// The shared, escaped text; goes between [`DATA_OPEN`] and a [`LiveSuffix`].
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
}

/// The per-receiver end of a live data frame, formatted on the stack:
/// `<msgid>\"}],\"endid\":\"<msgid>\",\"toid\":<uid>}"}` and a newline
/// ([`LiveSuffix::new`]), or the joint between two of its messages
/// ([`LiveSuffix::between`]). A frame of messages m1..mk is
/// [`DATA_OPEN`], m1's prefix, between(id1), m2's prefix, ..., mk's
/// prefix, new(idk, uid): the same bytes [`data_frame`] writes.
#[derive(Clone, Copy)]
pub struct LiveSuffix {
    buf: [u8; 112],
    len: u8,
}

impl LiveSuffix {
    /// Nothing yet: a placeholder in stack arrays.
    pub const EMPTY: LiveSuffix = LiveSuffix {
        buf: [0; 112],
        len: 0,
    };

    pub fn new(msgid: MsgId, toid: Uid) -> LiveSuffix {
        let mut s = LiveSuffix {
            buf: [0; 112],
            len: 0,
        };
        let mut id = itoa::Buffer::new();
        let id = id.format(msgid).as_bytes();
        s.push(id);
        s.push(br#"\"}],\"endid\":\""#);
        s.push(id);
        s.push(br#"\",\"toid\":"#);
        s.push(itoa::Buffer::new().format(toid).as_bytes());
        s.push(b"}\"}\n");
        s
    }

    /// What goes between two messages of one live frame: the earlier
    /// one's msgid and the end of its object, `<msgid>\"},`.
    pub fn between(msgid: MsgId) -> LiveSuffix {
        let mut s = LiveSuffix {
            buf: [0; 112],
            len: 0,
        };
        s.push(itoa::Buffer::new().format(msgid).as_bytes());
        s.push(br#"\"},"#);
        s
    }

    fn push(&mut self, bytes: &[u8]) {
        let at = usize::from(self.len);
        self.buf[at..at + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len() as u8;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// Appends a data frame (with its trailing newline) holding `msgs`, which
/// must not be empty, for subscriber `toid`.
pub fn data_frame(out: &mut Vec<u8>, msgs: &[Message], toid: Uid) {
    debug_assert!(!msgs.is_empty());
    let mut inner = Vec::with_capacity(128);
    inner.extend_from_slice(br#"{"msgs":["#);
    msg_list(&mut inner, msgs);
    inner.extend_from_slice(br#"],"endid":""#);
    inner.extend_from_slice(itoa::Buffer::new().format(last_id(msgs)).as_bytes());
    inner.extend_from_slice(br#"","toid":"#);
    inner.extend_from_slice(itoa::Buffer::new().format(toid).as_bytes());
    inner.push(b'}');
    out.extend_from_slice(br#"{"type":"data","content":""#);
    escape_into(out, &inner);
    out.extend_from_slice(b"\"}\n");
}

/// Appends a `trimmed` frame: msgids up to `endid` are no longer stored
/// (acked on another device, or dropped by the inbox cap), so a subscriber
/// that asked for them learns it instead of seeing a silent gap:
/// `{"type":"trimmed","content":"{\"endid\":\"N\",\"toid\":U}"}`.
pub fn trimmed_frame(out: &mut Vec<u8>, endid: MsgId, toid: Uid) {
    out.extend_from_slice(br#"{"type":"trimmed","content":"{\"endid\":\""#);
    out.extend_from_slice(itoa::Buffer::new().format(endid).as_bytes());
    out.extend_from_slice(br#"\",\"toid\":"#);
    out.extend_from_slice(itoa::Buffer::new().format(toid).as_bytes());
    out.extend_from_slice(b"}\"}\n");
}

/// Appends a `reset` frame: the store's msgid counter of this inbox was
/// found at `found`, behind `endid`, the last msgid the client had received
/// (the store lost writes it had acknowledged). The counter now continues
/// after `endid`, in a new `epoch`:
/// `{"type":"reset","content":"{\"epoch\":E,\"endid\":\"N\",\"found\":\"F\",\"toid\":U}"}`.
pub fn reset_frame(out: &mut Vec<u8>, epoch: u64, endid: MsgId, found: MsgId, toid: Uid) {
    let mut n = itoa::Buffer::new();
    out.extend_from_slice(br#"{"type":"reset","content":"{\"epoch\":"#);
    out.extend_from_slice(n.format(epoch).as_bytes());
    out.extend_from_slice(br#",\"endid\":\""#);
    out.extend_from_slice(n.format(endid).as_bytes());
    out.extend_from_slice(br#"\",\"found\":\""#);
    out.extend_from_slice(n.format(found).as_bytes());
    out.extend_from_slice(br#"\",\"toid\":"#);
    out.extend_from_slice(n.format(toid).as_bytes());
    out.extend_from_slice(b"}\"}\n");
}

/// The body of a `/pull` answer: `{"msgs":[...],"endid":"N","uid":U}`;
/// `endid` is the last msgid returned, or `acked` when there is none. When
/// the first message returned is not `acked + 1` (the inbox cap dropped
/// some un-acked ones) a `"trimmed":"N"` field says up to which msgid
/// messages are gone.
pub fn pull_body(msgs: &[Message], acked: MsgId, uid: Uid) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + msgs.len() * 96);
    out.extend_from_slice(br#"{"msgs":["#);
    msg_list(&mut out, msgs);
    out.extend_from_slice(br#"],"endid":""#);
    let endid = if msgs.is_empty() {
        acked
    } else {
        last_id(msgs)
    };
    out.extend_from_slice(itoa::Buffer::new().format(endid).as_bytes());
    out.extend_from_slice(br#"","uid":"#);
    out.extend_from_slice(itoa::Buffer::new().format(uid).as_bytes());
    if let Some(first) = msgs.first().filter(|m| m.msgid > acked + 1) {
        out.extend_from_slice(br#","trimmed":""#);
        out.extend_from_slice(itoa::Buffer::new().format(first.msgid - 1).as_bytes());
        out.push(b'"');
    }
    out.push(b'}');
    out
}

fn last_id(msgs: &[Message]) -> MsgId {
    msgs.last().map_or(0, |m| m.msgid)
}

/// `{"content":...,"fromid":"1","toid":"2","datatype":1,"msgid":"3"},...`
fn msg_list(out: &mut Vec<u8>, msgs: &[Message]) {
    for (i, m) in msgs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        msg_json_prefix(out, m.fromid, m.toid, m.datatype, &m.content);
        out.extend_from_slice(itoa::Buffer::new().format(m.msgid).as_bytes());
        out.extend_from_slice(b"\"}");
    }
}

/// One message's JSON up to (and including the opening quote of) its msgid.
fn msg_json_prefix(out: &mut Vec<u8>, fromid: Uid, toid: u64, datatype: u8, content: &str) {
    out.extend_from_slice(br#"{"content":"#);
    // Serialising a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, content);
    out.extend_from_slice(br#","fromid":""#);
    out.extend_from_slice(itoa::Buffer::new().format(fromid).as_bytes());
    out.extend_from_slice(br#"","toid":""#);
    out.extend_from_slice(itoa::Buffer::new().format(toid).as_bytes());
    out.extend_from_slice(br#"","datatype":"#);
    out.extend_from_slice(itoa::Buffer::new().format(datatype).as_bytes());
    out.extend_from_slice(br#","msgid":""#);
}

/// Escapes JSON text so it can sit inside a JSON string. The input is JSON
/// we wrote, so it holds no raw control characters: only `"` and `\` need it.
fn escape_into(out: &mut Vec<u8>, json: &[u8]) {
    let mut start = 0;
    for (i, &b) in json.iter().enumerate() {
        if b == b'"' || b == b'\\' {
            out.extend_from_slice(&json[start..i]);
            out.push(b'\\');
            out.push(b);
            start = i + 1;
        }
    }
    out.extend_from_slice(&json[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::Arc;

    fn msg(msgid: MsgId, content: &str) -> Message {
        Message {
            msgid,
            fromid: 1,
            toid: 2,
            datatype: 1,
            content: Arc::from(content),
        }
    }

    #[test]
    fn live_parts_make_the_same_frame_as_a_page() {
        let msgs: Vec<Message> = (7..10).map(|i| msg(i, &format!("m\"{i}\\"))).collect();
        for n in 1..=msgs.len() {
            let batch = &msgs[..n];
            let mut want = Vec::new();
            data_frame(&mut want, batch, 42);
            let lives: Vec<LiveMsg> = batch
                .iter()
                .map(|m| {
                    LiveMsg::new(&NewMessage {
                        fromid: m.fromid,
                        toid: m.toid,
                        datatype: m.datatype,
                        content: m.content.clone(),
                    })
                })
                .collect();
            let mut got = DATA_OPEN.to_vec();
            for (i, (live, m)) in lives.iter().zip(batch).enumerate() {
                got.extend_from_slice(live.prefix());
                let joint = if i + 1 < n {
                    LiveSuffix::between(m.msgid)
                } else {
                    LiveSuffix::new(m.msgid, 42)
                };
                got.extend_from_slice(joint.as_bytes());
            }
            assert_eq!(
                String::from_utf8(got).unwrap(),
                String::from_utf8(want).unwrap(),
                "{n} messages"
            );
        }
    }

    fn decode_frame(frame: &[u8]) -> (Value, Value) {
        assert_eq!(frame.last(), Some(&b'\n'));
        let outer: Value = serde_json::from_slice(frame).unwrap();
        let inner = serde_json::from_str(outer["content"].as_str().unwrap()).unwrap();
        (outer, inner)
    }

    const NASTY: &[&str] = &[
        "my test 66",
        "",
        "quote \" backslash \\ tab \t nl \n",
        "好说 ✓",
        "\u{1}",
    ];

    #[test]
    fn data_frame_decodes_to_the_documented_shape() {
        for content in NASTY {
            let mut out = Vec::new();
            data_frame(&mut out, &[msg(230, content), msg(231, "x")], 2);
            let (outer, inner) = decode_frame(&out);
            assert_eq!(outer["type"], "data");
            assert_eq!(
                inner,
                json!({"msgs":[
                    {"content":content,"fromid":"1","toid":"2","datatype":1,"msgid":"230"},
                    {"content":"x","fromid":"1","toid":"2","datatype":1,"msgid":"231"}],
                    "endid":"231","toid":2})
            );
        }
    }

    #[test]
    fn live_frame_equals_the_batch_frame() {
        for content in NASTY {
            let new = NewMessage {
                fromid: 1,
                toid: 2,
                datatype: 1,
                content: Arc::from(*content),
            };
            let live = LiveMsg::new(&new);
            let mut out = DATA_OPEN.to_vec();
            out.extend_from_slice(live.prefix());
            out.extend_from_slice(LiveSuffix::new(u64::MAX, u64::MAX).as_bytes());
            let m = Message {
                msgid: u64::MAX,
                ..msg(0, content)
            };
            let mut batch = Vec::new();
            data_frame(&mut batch, &[m], u64::MAX);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                String::from_utf8(batch).unwrap()
            );
        }
    }

    #[test]
    fn pull_body_shapes() {
        let v: Value = serde_json::from_slice(&pull_body(&[msg(7, "a")], 6, 9)).unwrap();
        assert_eq!(
            v,
            json!({"msgs":[{"content":"a","fromid":"1","toid":"2","datatype":1,"msgid":"7"}],"endid":"7","uid":9})
        );
        let v: Value = serde_json::from_slice(&pull_body(&[], 3, 9)).unwrap();
        assert_eq!(v, json!({"msgs":[],"endid":"3","uid":9}));
    }

    #[test]
    fn trimmed_signals_decode() {
        let mut out = Vec::new();
        trimmed_frame(&mut out, 120, 2);
        let (outer, inner) = decode_frame(&out);
        assert_eq!(outer["type"], "trimmed");
        assert_eq!(inner, json!({"endid":"120","toid":2}));
        let v: Value = serde_json::from_slice(&pull_body(&[msg(7, "a")], 3, 9)).unwrap();
        assert_eq!(v["trimmed"], "6");
    }

    #[test]
    fn fixed_frames_are_json_lines() {
        for f in [NOOP, TOKEN_ERROR, TOO_MANY] {
            let v: Value = serde_json::from_slice(f).unwrap();
            assert!(v["type"].is_string());
            assert_eq!(f.last(), Some(&b'\n'));
        }
    }
}
