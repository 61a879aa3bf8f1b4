//! The wire: raw HTTP/1.1 requests and response heads, the chunked
//! transfer decoder, form encoding of the `haoshuo=<JSON>` body, the
//! parsing of haoshuo stream/poll frames into delivered messages, and the
//! nchan side of the fan-out comparison (subscriber GET, text/plain
//! publish, the `<seq> <ns>` message, `nchan_stub_status`).
//!
//! Everything here is pure (bytes in, values out) so it is unit-tested with
//! byte strings; the sockets live in `client.rs` and `conn.rs`.

use serde::Deserialize;

/// A GET request for `/cget/stream` or `/cget/poll`.
pub fn subscribe_request(host: &str, stream: bool, uid: u64, token: &str, seq: u64) -> Vec<u8> {
    let path = if stream { "/cget/stream" } else { "/cget/poll" };
    format!(
        "GET {path}?seq={seq}&cname={uid}&token={} HTTP/1.1\r\nHost: {host}\r\n\r\n",
        percent_encode(token)
    )
    .into_bytes()
}

/// A POST with the form body `haoshuo=<percent-encoded json>`; `extra` are
/// additional header lines, each ending in `\r\n`.
pub fn post_form(host: &str, path: &str, json: &str, extra: &str) -> Vec<u8> {
    let body = format!("haoshuo={}", percent_encode(json));
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n{extra}\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// nchan's http-chunked subscriber GET (`TE: chunked` selects it among the
/// subscriber types; see loadtest/nchan/nginx.conf).
pub fn nchan_subscribe_request(host: &str, channel: &str) -> Vec<u8> {
    format!(
        "GET /sub/{} HTTP/1.1\r\nHost: {host}\r\nTE: chunked\r\n\r\n",
        percent_encode(channel)
    )
    .into_bytes()
}

/// A POST with a `text/plain` body (an nchan publish).
pub fn post_plain(host: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A GET without a body.
pub fn get_request(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// The body of a load-test message published to nchan: sequence number
/// (1, 2, 3 ... per channel: it plays the msgid for the checker), then the
/// content (`<ns>` and optional padding, as for haoshuo), then a newline.
/// nchan's http-chunked subscriber sends each message as one chunk holding
/// exactly this body; the newline lets the client cut messages out of the
/// decoded body the same way it cuts haoshuo frames, whatever the chunking.
pub fn nchan_message(seq: u64, content: &str) -> String {
    format!("{seq} {content}\n")
}

/// Parses one nchan message (a line of the decoded body, without its
/// newline) into (seq, content).
pub fn parse_nchan_message(line: &[u8]) -> Result<(u64, String), String> {
    let s = std::str::from_utf8(line).map_err(|_| "nchan message not UTF-8")?;
    let (seq, content) = s
        .split_once(' ')
        .ok_or_else(|| format!("bad nchan message {:?}", truncate(s)))?;
    let seq = seq
        .parse()
        .map_err(|_| format!("bad nchan seq {:?}", truncate(seq)))?;
    Ok((seq, content.to_owned()))
}

fn truncate(s: &str) -> &str {
    s.get(..40).unwrap_or(s)
}

/// The `subscribers: N` line of an `nchan_stub_status` answer (a total
/// over all nginx workers, unlike `GET /pub/<ch>`, which answers for one).
pub fn nchan_status_subscribers(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("subscribers:"))?
        .trim()
        .parse()
        .ok()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How the body of a response is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    Chunked,
    Length(usize),
    /// Neither: the body runs until the server closes.
    UntilClose,
}

/// The parts of a response head the client needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RespHead {
    pub status: u16,
    /// The minor HTTP version: 1 for HTTP/1.1.
    pub version: u8,
    /// Bytes of the head, including the blank line.
    pub len: usize,
    pub body: BodyKind,
    /// The server said `Connection: close`.
    pub close: bool,
}

/// Parses a response head at the start of `buf`: `Ok(None)` until it is
/// complete, `Err` if it is not HTTP.
pub fn parse_head(buf: &[u8]) -> Result<Option<RespHead>, String> {
    parse_head_with(buf, &mut |_, _| {})
}

/// [`parse_head`], also handing every header to `each` (name, value), in
/// order: what the integration tests (tests/common/http.rs) read a head
/// with, so the load client and the tests decode responses one way.
pub fn parse_head_with(
    buf: &[u8],
    each: &mut dyn FnMut(&str, &[u8]),
) -> Result<Option<RespHead>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let mut body = BodyKind::UntilClose;
    let mut close = false;
    for h in resp.headers.iter() {
        each(h.name, h.value);
        let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
        if h.name.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
            body = BodyKind::Chunked;
        } else if h.name.eq_ignore_ascii_case("content-length") && body != BodyKind::Chunked {
            let n = v.trim().parse().map_err(|_| "bad content-length")?;
            body = BodyKind::Length(n);
        } else if h.name.eq_ignore_ascii_case("connection") && v.contains("close") {
            close = true;
        }
    }
    Ok(Some(RespHead {
        status,
        version: resp.version.unwrap_or(0),
        len,
        body,
        close,
    }))
}

/// Incremental decoder of a chunked body: feed it bytes, it appends the
/// payload to `out` and says when the terminating chunk was seen.
#[derive(Debug, Default)]
pub struct ChunkDecoder {
    /// Payload bytes still owed by the current chunk.
    remaining: usize,
    /// After a chunk's payload, the CRLF that closes it is still owed.
    want_crlf: bool,
    /// The zero-size chunk arrived (trailers are skipped).
    pub done: bool,
}

impl ChunkDecoder {
    /// Consumes what it can of `buf` and returns how many bytes it used;
    /// keep the rest and call again when more arrives.
    pub fn feed(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
        let mut pos = 0;
        while pos < buf.len() && !self.done {
            if self.remaining > 0 {
                let n = self.remaining.min(buf.len() - pos);
                out.extend_from_slice(&buf[pos..pos + n]);
                self.remaining -= n;
                pos += n;
                if self.remaining == 0 {
                    self.want_crlf = true;
                }
            } else if self.want_crlf {
                if buf.len() - pos < 2 {
                    break;
                }
                if &buf[pos..pos + 2] != b"\r\n" {
                    return Err("chunk not followed by CRLF".into());
                }
                pos += 2;
                self.want_crlf = false;
            } else {
                let Some(eol) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() - pos > 64 {
                        return Err("chunk size line too long".into());
                    }
                    break;
                };
                let size = chunk_size(&buf[pos..pos + eol])?;
                pos += eol + 2;
                if size == 0 {
                    self.done = true;
                } else {
                    self.remaining = size;
                }
            }
        }
        Ok(pos)
    }
}

/// The size a chunk's size line (without its CRLF) gives; extensions
/// after `;` are ignored.
fn chunk_size(line: &[u8]) -> Result<usize, String> {
    let line = std::str::from_utf8(line).map_err(|_| "chunk size line is not UTF-8")?;
    let hex = line.split(';').next().unwrap_or("").trim();
    usize::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size line {line:?}"))
}

/// One whole chunk at the start of `buf`: `Ok(None)` until it is all
/// there, else the bytes it takes and where its payload is. An empty
/// payload is the last chunk (its trailers, if any, taken too). For
/// readers that want chunk boundaries (the tests check one frame a chunk);
/// [`ChunkDecoder`] streams payload without them.
pub fn parse_chunk(buf: &[u8]) -> Result<Option<(usize, std::ops::Range<usize>)>, String> {
    let Some(eol) = find(buf, b"\r\n") else {
        return if buf.len() > 64 {
            Err("chunk size line too long".into())
        } else {
            Ok(None)
        };
    };
    let size = chunk_size(&buf[..eol])?;
    let start = eol + 2;
    if size == 0 {
        let rest = &buf[start..];
        if rest.starts_with(b"\r\n") {
            return Ok(Some((start + 2, start..start)));
        }
        return Ok(find(rest, b"\r\n\r\n").map(|t| (start + t + 4, start..start)));
    }
    if buf.len() < start + size + 2 {
        return Ok(None);
    }
    if &buf[start + size..start + size + 2] != b"\r\n" {
        return Err("chunk not followed by CRLF".into());
    }
    Ok(Some((start + size + 2, start..start + size)))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What one frame of the stream (or one poll answer) said.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Delivered messages: `(msgid, content)` in frame order.
    Data(Vec<(u64, String)>),
    Noop,
    /// `401`, `429`, or anything else: the type, then the stream ends.
    Refused(String),
}

#[derive(Deserialize)]
struct RawFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct RawData {
    msgs: Vec<RawMsg>,
}

#[derive(Deserialize)]
struct RawMsg {
    content: String,
    msgid: serde_json::Value,
}

/// Parses one frame (without its trailing newline).
pub fn parse_frame(line: &[u8]) -> Result<Frame, String> {
    let f: RawFrame = serde_json::from_slice(line).map_err(|e| format!("bad frame: {e}"))?;
    match f.kind.as_str() {
        "noop" => Ok(Frame::Noop),
        "data" => {
            let content = f.content.ok_or("data frame without content")?;
            let d: RawData =
                serde_json::from_str(&content).map_err(|e| format!("bad data content: {e}"))?;
            let mut msgs = Vec::with_capacity(d.msgs.len());
            for m in d.msgs {
                let id = match &m.msgid {
                    serde_json::Value::String(s) => s.parse().ok(),
                    serde_json::Value::Number(n) => n.as_u64(),
                    _ => None,
                }
                .ok_or("bad msgid")?;
                msgs.push((id, m.content));
            }
            Ok(Frame::Data(msgs))
        }
        other => Ok(Frame::Refused(other.to_owned())),
    }
}

/// The send timestamp (monotonic ns) a load-test message carries: the
/// content is `<ns>` optionally followed by `:` and padding.
pub fn content_timestamp(content: &str) -> Option<u64> {
    content.split(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_chunked_and_length() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.body, BodyKind::Chunked);
        assert_eq!(h.len, 47);
        let h = parse_head(b"HTTP/1.1 401 X\r\nContent-Length: 12\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.status, h.body, h.close),
            (401, BodyKind::Length(12), true)
        );
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn chunks_split_anywhere() {
        let wire = b"4\r\nabcd\r\na;x=1\r\n0123456789\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut d = ChunkDecoder::default();
            let mut out = Vec::new();
            let mut pending = wire[..split].to_vec();
            let used = d.feed(&pending, &mut out).unwrap();
            pending.drain(..used);
            pending.extend_from_slice(&wire[split..]);
            let used = d.feed(&pending, &mut out).unwrap();
            assert_eq!(out, b"abcd0123456789", "split at {split}");
            assert!(d.done);
            assert!(used <= pending.len());
        }
    }

    #[test]
    fn whole_chunks_one_at_a_time() {
        let wire = b"4\r\nabcd\r\na;x=1\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nnext";
        let mut got = Vec::new();
        let mut pos = 0;
        loop {
            let (used, payload) = parse_chunk(&wire[pos..]).unwrap().unwrap();
            let payload = &wire[pos..][payload];
            pos += used;
            if payload.is_empty() {
                break;
            }
            got.push(payload.to_vec());
        }
        assert_eq!(got, [b"abcd".to_vec(), b"0123456789".to_vec()]);
        assert_eq!(&wire[pos..], b"next", "the trailers were taken");
        // Every prefix of a chunk is incomplete, not an error.
        for end in 0..wire.len().min(9) {
            assert_eq!(parse_chunk(&wire[..end]).unwrap(), None, "prefix {end}");
        }
        assert!(parse_chunk(b"2\r\nabXY").is_err());
        assert!(parse_chunk(b"zz\r\n").is_err());
    }

    #[test]
    fn heads_give_every_header() {
        let head = b"HTTP/1.1 405 Method Not Allowed\r\nAllow: POST\r\nContent-Length: 0\r\n\r\n";
        let mut seen = Vec::new();
        let h = parse_head_with(head, &mut |n, v| seen.push((n.to_owned(), v.to_vec())))
            .unwrap()
            .unwrap();
        assert_eq!((h.status, h.version, h.len), (405, 1, head.len()));
        assert_eq!(
            seen,
            [
                ("Allow".to_owned(), b"POST".to_vec()),
                ("Content-Length".to_owned(), b"0".to_vec())
            ]
        );
    }

    #[test]
    fn chunk_errors() {
        let mut d = ChunkDecoder::default();
        assert!(d.feed(b"zz\r\n", &mut Vec::new()).is_err());
        let mut d = ChunkDecoder::default();
        assert!(d.feed(b"2\r\nabXY", &mut Vec::new()).is_err());
    }

    #[test]
    fn frames() {
        let data = br#"{"type":"data","content":"{\"msgs\":[{\"content\":\"123:xx\",\"fromid\":\"1\",\"toid\":\"2\",\"datatype\":1,\"msgid\":\"7\"},{\"content\":\"9\",\"fromid\":\"1\",\"toid\":\"2\",\"datatype\":1,\"msgid\":\"8\"}],\"endid\":\"8\",\"toid\":2}"}"#;
        assert_eq!(
            parse_frame(data).unwrap(),
            Frame::Data(vec![(7, "123:xx".into()), (8, "9".into())])
        );
        assert_eq!(parse_frame(br#"{"type":"noop"}"#).unwrap(), Frame::Noop);
        assert_eq!(
            parse_frame(br#"{"type":"401","content":"token error"}"#).unwrap(),
            Frame::Refused("401".into())
        );
        assert!(parse_frame(b"{").is_err());
        assert_eq!(content_timestamp("123:xx"), Some(123));
        assert_eq!(content_timestamp("55"), Some(55));
        assert_eq!(content_timestamp("hello"), None);
    }

    /// The bytes an nchan http-chunked subscriber gets for two messages
    /// (captured from nginx 1.22.1 + nchan 1.3.6 with loadtest/nchan/nginx.conf):
    /// the head comes with the first message, each message is one chunk.
    #[test]
    fn nchan_chunks_to_messages() {
        let wire = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 29 Nov 2026 13:00:40 GMT\r\n\
            Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n\
            e\r\n1 123456789:x\n\r\nc\r\n2 123456999\n\r\n";
        let head = parse_head(wire).unwrap().unwrap();
        assert_eq!((head.status, head.body), (200, BodyKind::Chunked));
        let mut d = ChunkDecoder::default();
        let mut out = Vec::new();
        let used = d.feed(&wire[head.len..], &mut out).unwrap();
        assert_eq!(used, wire.len() - head.len);
        assert!(!d.done);
        let msgs: Vec<_> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse_nchan_message(l).unwrap())
            .collect();
        assert_eq!(
            msgs,
            [(1, "123456789:x".to_owned()), (2, "123456999".to_owned())]
        );
        assert_eq!(content_timestamp(&msgs[0].1), Some(123456789));
    }

    #[test]
    fn nchan_messages() {
        let m = nchan_message(7, "55:xx");
        assert_eq!(m, "7 55:xx\n");
        assert_eq!(
            parse_nchan_message(m.trim_end().as_bytes()).unwrap(),
            (7, "55:xx".into())
        );
        assert!(parse_nchan_message(b"7").is_err());
        assert!(parse_nchan_message(b"x 55").is_err());
        assert!(parse_nchan_message(b"\xff 1").is_err());
        let r = String::from_utf8(nchan_subscribe_request("h:1", "fan1")).unwrap();
        assert_eq!(
            r,
            "GET /sub/fan1 HTTP/1.1\r\nHost: h:1\r\nTE: chunked\r\n\r\n"
        );
        let r = String::from_utf8(post_plain("h", "/pub/fan1", &m)).unwrap();
        assert!(r.starts_with("POST /pub/fan1 HTTP/1.1\r\n"));
        assert!(r.ends_with("Content-Length: 8\r\n\r\n7 55:xx\n"), "{r}");
        let status = b"total published messages: 3\nstored messages: 3\nshared memory used: 16K\n\
            shared memory limit: 262144K\nchannels: 1\nsubscribers: 2000\nredis pending commands: 0\n";
        assert_eq!(nchan_status_subscribers(status), Some(2000));
        assert_eq!(nchan_status_subscribers(b"channels: 1\n"), None);
    }

    #[test]
    fn requests() {
        assert_eq!(percent_encode("a b{\"}"), "a%20b%7B%22%7D");
        let r = String::from_utf8(subscribe_request("h", true, 5, "t/1", 9)).unwrap();
        assert!(r.starts_with("GET /cget/stream?seq=9&cname=5&token=t%2F1 HTTP/1.1\r\n"));
        let r = String::from_utf8(post_form("h", "/p", "{}", "X-A: 1\r\n")).unwrap();
        assert!(r.ends_with("Content-Length: 14\r\nX-A: 1\r\n\r\nhaoshuo=%7B%7D"));
    }
}
