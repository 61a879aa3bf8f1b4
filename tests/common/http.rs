//! The HTTP/1.1 client side of the tests: [`Conn`], a small client over
//! `std::net::TcpStream` that keeps partial input across read timeouts (so
//! waiting never loses bytes) and can pace its reads like a slow link; the
//! decoding of responses ([`Head`], [`Response`], chunks); and the request
//! side: [`request_bytes`], [`request`], [`post`] / [`post_json`] for the two
//! body encodings, [`percent_encode`] / [`form_body`], [`stringify_numbers`].

use super::frames::parse_frame;
use super::{left, WAIT};
use haoshuo_loadtest::proto;
use serde_json::Value;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// `Content-Type` of the form encoding.
pub const FORM: &str = "application/x-www-form-urlencoded";

/// Why a read stopped before a complete item arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    Timeout,
    Eof,
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The first value of header `name` (any case) in `headers`.
fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Status line and headers of a response.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub(super) fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    }
}

/// One client connection. Input is buffered and only consumed once a whole
/// item (head, body, chunk) is there, so a read timeout loses nothing.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Reads are paced to this many bytes per second (a slow link).
    pace: Option<Pace>,
}

/// A reader's speed limit: it has read `read` bytes since `since`.
struct Pace {
    bytes_per_sec: u64,
    since: Instant,
    read: u64,
}

/// Most bytes a paced reader takes per read: small steps keep the pace even.
const PACED_READ: usize = 8 * 1024;

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, WAIT)
            .unwrap_or_else(|e| panic!("connect to haoshuo at {addr}: {e}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        Conn {
            stream,
            buf: Vec::new(),
            pace: None,
        }
    }

    /// A client on a slow link: a receive buffer of `rcvbuf` bytes (set
    /// before connecting, so the window is small from the start) and reads
    /// paced to `bytes_per_sec`. The server's socket fills up and its own
    /// flow control is what is tested.
    pub fn connect_slow(addr: SocketAddr, rcvbuf: usize, bytes_per_sec: u64) -> Conn {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
        sock.set_recv_buffer_size(rcvbuf).expect("set SO_RCVBUF");
        sock.connect_timeout(&addr.into(), WAIT)
            .unwrap_or_else(|e| panic!("connect to haoshuo at {addr}: {e}"));
        let stream: TcpStream = sock.into();
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        Conn {
            stream,
            buf: Vec::new(),
            pace: Some(Pace {
                bytes_per_sec,
                since: Instant::now(),
                read: 0,
            }),
        }
    }

    /// The socket itself, for tests that look below HTTP (what is still
    /// buffered is dropped).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Writes raw bytes (one request, several pipelined ones, or a part).
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to haoshuo");
    }

    /// Reads once more into the buffer, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), ReadEnd> {
        let wait = left(deadline);
        if wait.is_zero() {
            return Err(ReadEnd::Timeout);
        }
        self.stream
            .set_read_timeout(Some(wait))
            .expect("set read timeout");
        let mut chunk = [0u8; 16 * 1024];
        let mut want = chunk.len();
        if let Some(pace) = &self.pace {
            // The link's speed: not before the bytes so far are "due".
            let due =
                pace.since + Duration::from_secs_f64(pace.read as f64 / pace.bytes_per_sec as f64);
            thread::sleep(due.saturating_duration_since(Instant::now()));
            want = PACED_READ;
        }
        match self.stream.read(&mut chunk[..want]) {
            Ok(0) => Err(ReadEnd::Eof),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                if let Some(pace) = &mut self.pace {
                    pace.read += n as u64;
                }
                Ok(())
            }
            Err(e) => match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => Err(ReadEnd::Timeout),
                ErrorKind::Interrupted => Ok(()),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => Err(ReadEnd::Eof),
                _ => panic!("read from haoshuo: {e}"),
            },
        }
    }

    /// Waits until `parse` takes a complete item off the front of the buffer.
    pub(super) fn read_item<T>(
        &mut self,
        deadline: Instant,
        parse: impl Fn(&[u8]) -> Option<(usize, T)>,
    ) -> Result<T, ReadEnd> {
        loop {
            if let Some((used, item)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Ok(item);
            }
            self.fill(deadline)?;
        }
    }

    /// Waits for a response head without consuming it.
    pub fn peek_head(&mut self, timeout: Duration) -> Result<Head, ReadEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, head)) = parse_head(&self.buf) {
                return Ok(head);
            }
            self.fill(deadline)?;
        }
    }

    /// Reads a response head only (for streams).
    pub fn read_head(&mut self, timeout: Duration) -> Result<Head, ReadEnd> {
        self.read_item(Instant::now() + timeout, parse_head)
    }

    /// Reads one whole response (Content-Length or chunked body).
    pub fn try_read_response(&mut self, timeout: Duration) -> Result<Response, ReadEnd> {
        self.read_item(Instant::now() + timeout, parse_response)
    }

    /// Reads one whole response or fails the test.
    pub fn read_response(&mut self, timeout: Duration) -> Response {
        self.try_read_response(timeout)
            .unwrap_or_else(|end| panic!("no complete HTTP response from haoshuo: {end:?}"))
    }

    /// Reads one chunk of a chunked body; an empty payload is the last chunk.
    pub(super) fn read_chunk(&mut self, timeout: Duration) -> Result<Vec<u8>, ReadEnd> {
        self.read_item(Instant::now() + timeout, parse_chunk)
    }

    /// Reads one `\n`-terminated JSON frame of a close-delimited (HTTP/1.0)
    /// stream body; `None` if none came within `timeout` or the body ended.
    pub fn read_line(&mut self, timeout: Duration) -> Option<Value> {
        let line = self.read_item(Instant::now() + timeout, |buf| {
            let end = buf.iter().position(|&b| b == b'\n')?;
            Some((end + 1, buf[..=end].to_vec()))
        });
        line.ok().map(|l| parse_frame(&l))
    }

    /// True once the server closes the connection within `timeout`; bytes
    /// that arrive meanwhile fail the test.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let before = self.buf.len();
        loop {
            match self.fill(deadline) {
                Ok(()) if self.buf.len() == before => continue, // interrupted
                Ok(()) => panic!(
                    "unexpected bytes on a connection that should close: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Err(ReadEnd::Eof) => return true,
                Err(ReadEnd::Timeout) => return false,
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response head, read by the load client's decoder
/// (`haoshuo_loadtest::proto`): one decoder for both. The server must
/// speak HTTP/1.1.
fn parse_head(buf: &[u8]) -> Option<(usize, Head)> {
    let mut headers = Vec::new();
    let head = proto::parse_head_with(buf, &mut |name, value| {
        let value = std::str::from_utf8(value).expect("a header value is not UTF-8");
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(buf)))?;
    assert_eq!(
        head.version,
        1,
        "not an HTTP/1.1 answer: {:?}",
        String::from_utf8_lossy(buf)
    );
    Some((
        head.len,
        Head {
            status: head.status,
            headers,
        },
    ))
}

/// One whole chunk at the start of `buf` and its payload (empty: the last
/// chunk), by the load client's decoder.
fn parse_chunk(buf: &[u8]) -> Option<(usize, Vec<u8>)> {
    let (used, payload) = proto::parse_chunk(buf)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(buf)))?;
    Some((used, buf[payload].to_vec()))
}

fn parse_response(buf: &[u8]) -> Option<(usize, Response)> {
    let (mut used, head) = parse_head(buf)?;
    let body = if head.is_chunked() {
        let mut body = Vec::new();
        loop {
            let (n, payload) = parse_chunk(&buf[used..])?;
            used += n;
            if payload.is_empty() {
                break body;
            }
            body.extend_from_slice(&payload);
        }
    } else if let Some(len) = head.header("content-length") {
        let len: usize = len
            .parse()
            .unwrap_or_else(|_| panic!("bad Content-Length {len:?}"));
        if buf.len() < used + len {
            return None;
        }
        used += len;
        buf[used - len..used].to_vec()
    } else {
        assert!(
            head.status == 204 || head.status == 304 || head.status < 200,
            "response without Content-Length or chunked body: {head:?}"
        );
        Vec::new()
    };
    Some((
        used,
        Response {
            status: head.status,
            headers: head.headers,
            body,
        },
    ))
}

/// The bytes of one request; `Content-Length` is added for POST or a body.
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if method == "POST" || !body.is_empty() {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut conn = Conn::connect(addr);
    conn.send(&request_bytes(method, path, headers, body));
    conn.read_response(WAIT)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `haoshuo=<percent-encoded JSON>`.
pub fn form_body(json: &Value) -> String {
    format!("haoshuo={}", percent_encode(&json.to_string()))
}

/// The bytes of a POST of `json` form-encoded to `path`, to send as is.
pub fn form_request(path: &str, json: &Value) -> Vec<u8> {
    let body = form_body(json);
    request_bytes("POST", path, &[("Content-Type", FORM)], body.as_bytes())
}

/// POSTs `json` form-encoded; returns the status and the JSON body.
pub fn post(addr: SocketAddr, path: &str, json: &Value) -> (u16, Value) {
    let r = request(
        addr,
        "POST",
        path,
        &[("Content-Type", FORM)],
        form_body(json).as_bytes(),
    );
    (r.status, r.json())
}

/// POSTs `json` as a raw `application/json` body.
pub fn post_json(addr: SocketAddr, path: &str, json: &Value) -> (u16, Value) {
    let body = json.to_string();
    let r = request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    (r.status, r.json())
}

/// The same JSON with every number (also inside arrays) turned into a
/// numeric string, to check that both are accepted.
pub fn stringify_numbers(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Array(items) => Value::Array(items.iter().map(stringify_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), stringify_numbers(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}
