//! How a subscriber's frames go on the wire: one chunk each on an HTTP/1.1
//! stream, back to back on an HTTP/1.0 stream (whose body ends with the
//! connection, as RFC 9112 requires: a 1.0 client knows no chunked
//! coding), as a whole response for a held poll, and as one Server-Sent
//! Event each on an SSE stream (`text/event-stream`, what a browser's
//! `EventSource` reads), and as one text message each on a WebSocket
//! (after its `101 Switching Protocols`, closed with a close frame).
//!
//! Pure bytes: the reactor writes a frame as `head`, the frame's parts
//! where they already are, and `tail`, in one vectored write.

use crate::delivery::subscriber::Step;
use crate::http::chunked::{ChunkHeader, CHUNK_TRAILER, LAST_CHUNK};
use crate::http::response::{
    write_response_head, write_stream_head, CONTENT_EVENT_STREAM, CONTENT_JSON,
};
use crate::http::ws::{self, FrameHeader};
use crate::store::MsgId;

/// What an SSE stream starts with: how long `EventSource` waits before it
/// reconnects (it then sends `Last-Event-ID`, and resumes exactly).
const SSE_RETRY: &[u8] = b"retry: 3000\n\n";
/// An SSE heartbeat: a comment, which `EventSource` ignores.
const SSE_HEARTBEAT: &[u8] = b": noop\n\n";
/// Bytes before an SSE event's data at most: a chunk header, `id: ` and a
/// msgid, `data: `.
const SSE_HEAD_MAX: usize = 64;

/// The kind of subscription, and so its framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An HTTP/1.1 stream: `Transfer-Encoding: chunked`, a chunk a frame,
    /// the last chunk at the end.
    Chunked,
    /// An HTTP/1.0 stream: frames back to back; the close ends the body.
    Raw,
    /// A held long-poll: its first frame is the whole answer.
    Poll { keep_alive: bool },
    /// Server-Sent Events: a frame an event (`data:` the JSON frame, `id:`
    /// its last msgid when it has one), chunked on HTTP/1.1, ended by the
    /// close on 1.0.
    Sse { chunked: bool },
    /// A WebSocket: a frame a text message (the frame's JSON and its
    /// `\n`), heartbeats included; a close frame at the end (1001 when
    /// the server stops). Client frames are read (`Subscriber::on_input`).
    Ws,
}

/// What goes around one frame.
#[derive(Debug)]
pub struct Wire {
    head: Head,
    tail: &'static [u8],
}

#[derive(Debug)]
enum Head {
    Chunk(ChunkHeader),
    Nothing,
    /// A poll's response head (status line, `Content-Length`).
    Answer(Vec<u8>),
    /// An SSE event's start: chunk header, `id:` line, `data: `.
    Inline([u8; SSE_HEAD_MAX], u8),
    /// A WebSocket frame's header.
    Ws(FrameHeader),
}

impl Kind {
    /// A stream for a request of this HTTP version.
    pub fn stream(http10: bool) -> Kind {
        if http10 {
            Kind::Raw
        } else {
            Kind::Chunked
        }
    }

    /// An SSE stream for a request of this HTTP version.
    pub fn sse(http10: bool) -> Kind {
        Kind::Sse { chunked: !http10 }
    }

    pub fn is_poll(self) -> bool {
        matches!(self, Kind::Poll { .. })
    }

    /// Appends the response head a stream starts with (polls have none of
    /// their own: each answer carries its head), and an SSE stream's
    /// reconnect hint. A WebSocket's `101` lacks its `Sec-WebSocket-Accept`
    /// line, which differs per connection: the worker makes it
    /// ([`ws::accept_line`]) and the reactor adds it.
    pub fn write_head(self, out: &mut Vec<u8>) {
        match self {
            Kind::Ws => ws::write_upgrade_head(out),
            Kind::Chunked => write_stream_head(out, CONTENT_JSON, true),
            Kind::Raw => write_stream_head(out, CONTENT_JSON, false),
            Kind::Poll { .. } => {}
            Kind::Sse { chunked } => {
                write_stream_head(out, CONTENT_EVENT_STREAM, chunked);
                self.write_raw(SSE_RETRY, out);
            }
        }
    }

    /// Appends a heartbeat: a `noop` frame, or an SSE comment.
    pub fn heartbeat(self, noop: &[u8], out: &mut Vec<u8>) {
        match self {
            Kind::Sse { .. } => self.write_raw(SSE_HEARTBEAT, out),
            _ => self.wire(noop.len(), None).write(noop, out),
        }
    }

    /// Appends SSE text as it is, in a chunk of its own if chunked.
    fn write_raw(self, text: &[u8], out: &mut Vec<u8>) {
        if let Kind::Sse { chunked: true } | Kind::Chunked = self {
            out.extend_from_slice(ChunkHeader::new(text.len()).as_bytes());
            out.extend_from_slice(text);
            out.extend_from_slice(CHUNK_TRAILER);
        } else {
            out.extend_from_slice(text);
        }
    }

    /// What goes around a frame of `len` bytes (not 0). `id` is the last
    /// msgid the frame accounts for (data, trimmed, reset), which an SSE
    /// event carries as its `id:` (what `EventSource` sends back in
    /// `Last-Event-ID`); other kinds ignore it. A frame ends with `\n`.
    pub fn wire(self, len: usize, id: Option<MsgId>) -> Wire {
        match self {
            Kind::Sse { chunked } => {
                let mut event = [0u8; SSE_HEAD_MAX];
                let mut n = 0;
                let mut put = |bytes: &[u8]| {
                    event[n..n + bytes.len()].copy_from_slice(bytes);
                    n += bytes.len();
                };
                let mut fields = [0u8; 40];
                let mut f = 0;
                if let Some(id) = id {
                    for part in [
                        b"id: ".as_slice(),
                        itoa::Buffer::new().format(id).as_bytes(),
                        b"\n",
                    ] {
                        fields[f..f + part.len()].copy_from_slice(part);
                        f += part.len();
                    }
                }
                fields[f..f + 6].copy_from_slice(b"data: ");
                f += 6;
                if chunked {
                    // The event: fields, the frame (ending `\n`), a blank line.
                    put(ChunkHeader::new(f + len + 1).as_bytes());
                }
                put(&fields[..f]);
                Wire {
                    head: Head::Inline(event, n as u8),
                    tail: if chunked { b"\n\r\n" } else { b"\n" },
                }
            }
            Kind::Chunked => Wire {
                head: Head::Chunk(ChunkHeader::new(len)),
                tail: CHUNK_TRAILER,
            },
            Kind::Raw => Wire {
                head: Head::Nothing,
                tail: b"",
            },
            Kind::Ws => Wire {
                head: Head::Ws(FrameHeader::new(ws::TEXT, len)),
                tail: b"",
            },
            Kind::Poll { keep_alive } => {
                let mut head = Vec::with_capacity(160);
                write_response_head(&mut head, 200, CONTENT_JSON, len, keep_alive);
                Wire {
                    head: Head::Answer(head),
                    tail: b"",
                }
            }
        }
    }

    /// Whether the subscription goes on after a frame.
    pub fn step(self) -> Step {
        match self {
            Kind::Poll { keep_alive } => Step::Done { keep_alive },
            Kind::Chunked | Kind::Raw | Kind::Sse { .. } | Kind::Ws => Step::Continue,
        }
    }

    /// Appends what ends a stream's body: the last chunk of a chunked one,
    /// a WebSocket's close frame (1000). An HTTP/1.0 stream ends with the
    /// close; a poll with its answer.
    pub fn finish(self, out: &mut Vec<u8>) {
        match self {
            Kind::Chunked | Kind::Sse { chunked: true } => out.extend_from_slice(LAST_CHUNK),
            Kind::Ws => ws::write_close(out, ws::NORMAL, ""),
            _ => {}
        }
    }

    /// Appends how a stream ends when the server stops: as [`Kind::finish`]
    /// says, but a WebSocket's close frame says 1001 (going away).
    pub fn going_away(self, out: &mut Vec<u8>) {
        match self {
            Kind::Ws => ws::write_close(out, ws::GOING_AWAY, "server stopping"),
            _ => self.finish(out),
        }
    }

    /// Appends how the subscription ends when the server cannot serve it:
    /// a stream ends its body (the client resumes by seq), a poll answers
    /// with the error.
    pub fn fail(self, status: u16, msg: &str, out: &mut Vec<u8>) -> Step {
        match self {
            Kind::Poll { .. } => {
                crate::http::response::write_error(out, status, msg, false);
            }
            Kind::Ws => ws::write_close(out, ws::INTERNAL_ERROR, msg),
            _ => self.finish(out),
        }
        Step::Done { keep_alive: false }
    }
}

impl Wire {
    pub fn head(&self) -> &[u8] {
        match &self.head {
            Head::Chunk(c) => c.as_bytes(),
            Head::Nothing => b"",
            Head::Answer(h) => h,
            Head::Inline(bytes, n) => &bytes[..usize::from(*n)],
            Head::Ws(header) => header.as_bytes(),
        }
    }

    pub fn tail(&self) -> &'static [u8] {
        self.tail
    }

    /// Appends the whole frame, `body` wrapped.
    pub fn write(&self, body: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(self.head());
        out.extend_from_slice(body);
        out.extend_from_slice(self.tail);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_frames_its_way() {
        // (kind, frame, expected bytes, step after it)
        let cases: &[(Kind, &[u8], &[u8], Step)] = &[
            (Kind::Chunked, b"{}\n", b"3\r\n{}\n\r\n", Step::Continue),
            (Kind::Raw, b"{}\n", b"{}\n", Step::Continue),
            (
                Kind::Poll { keep_alive: true },
                b"{}\n",
                b"HTTP/1.1 200 OK\r\nServer: haoshuo\r\nContent-Type: application/json\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n{}\n",
                Step::Done { keep_alive: true },
            ),
            (
                Kind::Poll { keep_alive: false },
                b"x",
                b"HTTP/1.1 200 OK\r\nServer: haoshuo\r\nContent-Type: application/json\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
                Step::Done { keep_alive: false },
            ),
        ];
        for &(kind, body, want, step) in cases {
            let mut out = Vec::new();
            let wire = kind.wire(body.len(), None);
            wire.write(body, &mut out);
            // The reactor sends the same bytes as one vectored write.
            assert_eq!(
                [wire.head(), body, wire.tail()].concat(),
                out,
                "{kind:?}: parts"
            );
            // The Date line is the HTTP layer's (and tested there).
            let text = String::from_utf8(out).unwrap();
            let out: String = text
                .split_inclusive("\r\n")
                .filter(|l| !l.starts_with("Date: "))
                .collect();
            let out = out.into_bytes();
            assert_eq!(out, want, "{kind:?}: {}", String::from_utf8_lossy(&out));
            assert_eq!(kind.step(), step, "{kind:?}");
        }
    }

    #[test]
    fn heads_and_ends() {
        let mut chunked = Vec::new();
        Kind::stream(false).write_head(&mut chunked);
        assert!(chunked
            .windows(26)
            .any(|w| w == b"Transfer-Encoding: chunked"));
        Kind::Chunked.finish(&mut chunked);
        assert!(chunked.ends_with(LAST_CHUNK));

        let mut raw = Vec::new();
        Kind::stream(true).write_head(&mut raw);
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(!text.contains("Transfer-Encoding"), "{text}");
        assert!(text.contains("Connection: close\r\n"), "{text}");
        Kind::Raw.finish(&mut raw);
        assert_eq!(
            raw,
            text.as_bytes(),
            "a 1.0 stream ends with the close alone"
        );

        let mut poll = Vec::new();
        Kind::Poll { keep_alive: true }.write_head(&mut poll);
        assert!(poll.is_empty());
        let step = Kind::Poll { keep_alive: true }.fail(503, "store unavailable", &mut poll);
        assert!(poll.starts_with(b"HTTP/1.1 503 "), "{poll:?}");
        assert_eq!(step, Step::Done { keep_alive: false });
    }

    #[test]
    fn an_sse_frame_is_one_event_with_its_id() {
        // (kind, id, frame, expected bytes)
        type Case = (Kind, Option<MsgId>, &'static [u8], &'static [u8]);
        let cases: &[Case] = &[
            (
                Kind::sse(false),
                Some(7),
                b"{}\n",
                b"10\r\nid: 7\ndata: {}\n\n\r\n",
            ),
            (Kind::sse(false), None, b"{}\n", b"a\r\ndata: {}\n\n\r\n"),
            (Kind::sse(true), Some(12), b"{}\n", b"id: 12\ndata: {}\n\n"),
            (
                Kind::sse(false),
                Some(u64::MAX),
                b"{}\n",
                b"23\r\nid: 18446744073709551615\ndata: {}\n\n\r\n",
            ),
        ];
        for &(kind, id, body, want) in cases {
            let mut out = Vec::new();
            kind.wire(body.len(), id).write(body, &mut out);
            assert_eq!(
                out,
                want,
                "{kind:?} {id:?}: {}",
                String::from_utf8_lossy(&out)
            );
            assert_eq!(kind.step(), Step::Continue);
        }
        // The head, then the reconnect hint; heartbeats are comments.
        let mut head = Vec::new();
        Kind::sse(false).write_head(&mut head);
        let text = String::from_utf8(head).unwrap();
        assert!(
            text.contains("Content-Type: text/event-stream\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nd\r\nretry: 3000\n\n\r\n"), "{text}");
        let mut beat = Vec::new();
        Kind::sse(false).heartbeat(b"{\"type\":\"noop\"}\n", &mut beat);
        assert_eq!(beat, b"8\r\n: noop\n\n\r\n");
        let mut end = Vec::new();
        Kind::sse(false).finish(&mut end);
        assert_eq!(end, LAST_CHUNK);
    }

    #[test]
    fn a_websocket_frame_is_one_text_message_and_ends_with_a_close() {
        // A 101 without its per-connection accept line, and no body framing.
        let mut head = Vec::new();
        Kind::Ws.write_head(&mut head);
        let text = String::from_utf8(head).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
            "{text}"
        );
        assert!(!text.contains("Content-Length") && !text.contains("Transfer-Encoding"));
        // A frame is a text message: FIN + text, the length, no mask.
        let mut frame = Vec::new();
        Kind::Ws.wire(3, None).write(b"{}\n", &mut frame);
        assert_eq!(frame, b"\x81\x03{}\n");
        assert_eq!(Kind::Ws.step(), Step::Continue);
        // A heartbeat is the noop frame as a text message.
        let mut beat = Vec::new();
        Kind::Ws.heartbeat(b"{\"type\":\"noop\"}\n", &mut beat);
        assert_eq!(beat, b"\x81\x10{\"type\":\"noop\"}\n");
        // A 200-byte frame takes the 16-bit length; the id is not on the wire.
        let body = [b'x'; 200];
        let wire = Kind::Ws.wire(body.len(), Some(9));
        assert_eq!(wire.head(), [0x81, 126, 0, 200]);
        assert_eq!(wire.tail(), b"");
        // (how it ends, close frame)
        let mut end = Vec::new();
        Kind::Ws.finish(&mut end);
        assert_eq!(end, [0x88, 2, 0x03, 0xE8], "1000");
        let mut away = Vec::new();
        Kind::Ws.going_away(&mut away);
        assert_eq!(&away[..4], [0x88, 17, 0x03, 0xE9], "1001");
        assert_eq!(&away[4..], b"server stopping");
        let mut failed = Vec::new();
        let step = Kind::Ws.fail(503, "store unavailable", &mut failed);
        assert_eq!(&failed[2..4], 1011u16.to_be_bytes(), "{failed:?}");
        assert_eq!(step, Step::Done { keep_alive: false });
        // Other kinds go away as they finish.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        Kind::Chunked.going_away(&mut a);
        Kind::Chunked.finish(&mut b);
        assert_eq!(a, b);
    }
}
