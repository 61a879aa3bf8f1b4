//! WebSocket clients for `/cget/ws`: [`WsClient`] is Python's `websockets`
//! library (a real client written by others) driven through
//! `ws_client.py`; [`RawWs`] speaks the frames by hand over a [`Conn`], for
//! what a well-behaved library never sends (unmasked or oversized frames)
//! and to read exactly what the server wrote.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{Conn, Head, ReadEnd};
use super::WAIT;

/// RFC 6455's example key, and the accept value it must get (section 1.3).
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A Python with the `websockets` library (`pip install websockets`, or
/// Debian's python3-websockets for the system Python).
pub(super) fn python() -> &'static str {
    static FOUND: OnceLock<&'static str> = OnceLock::new();
    FOUND.get_or_init(|| {
        ["python3", "/usr/bin/python3"]
            .into_iter()
            .find(|py| {
                Command::new(py)
                    .args(["-c", "import websockets"])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .expect("no python3 with websockets: pip install websockets")
    })
}

/// One connection of Python's `websockets` client; what it saw, a JSON
/// object a line (see `ws_client.py`).
pub struct WsClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<Value>,
}

impl WsClient {
    /// Connects to `/cget/ws?{query}`; the handshake's outcome is the first
    /// event ([`WsClient::open`] waits for success).
    pub fn connect(addr: SocketAddr, query: &str) -> WsClient {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/ws_client.py");
        let mut child = Command::new(python())
            .args([script, &format!("ws://{addr}/cget/ws?{query}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run ws_client.py");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("ws_client.py said {line:?}: {e}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        WsClient {
            child,
            stdin,
            lines,
        }
    }

    /// Connects and waits for the handshake to succeed.
    pub fn open(addr: SocketAddr, query: &str) -> WsClient {
        let mut ws = WsClient::connect(addr, query);
        let first = ws.event(WAIT).expect("the handshake's outcome");
        assert_eq!(first, serde_json::json!({"open": true}));
        ws
    }

    /// The client's next event, if one comes within `timeout`.
    pub fn event(&mut self, timeout: Duration) -> Option<Value> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// The next message, parsed as the JSON frame it carries; fails the
    /// test on anything else.
    pub fn next_frame(&mut self, timeout: Duration) -> Value {
        let event = self.event(timeout).expect("a message");
        let text = event["msg"]
            .as_str()
            .unwrap_or_else(|| panic!("not a text message: {event}"));
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    /// Sends a command to the client (`ping DATA`, `close CODE`).
    pub fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("the client takes commands");
        writeln!(stdin, "{line}").expect("write to ws_client.py");
    }
}

impl Drop for WsClient {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One frame the server sent: opcode and payload.
pub type WsFrame = (u8, Vec<u8>);

/// A server frame at the front of `buf` (never masked): its length and
/// itself.
fn parse_server_frame(buf: &[u8]) -> Option<(usize, WsFrame)> {
    let [b0, b1, ..] = *buf else { return None };
    assert_eq!(b1 & 0x80, 0, "a server frame is never masked: {buf:02x?}");
    assert_eq!(b0 & 0x80, 0x80, "the server sends whole frames: {buf:02x?}");
    let (len, at) = match b1 & 0x7F {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().unwrap()) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().unwrap()) as usize,
            10,
        ),
        n => (usize::from(n), 2),
    };
    let payload = buf.get(at..at + len)?;
    Some((at + len, (b0 & 0x0F, payload.to_vec())))
}

/// A masked client frame (`b0`: FIN, reserved bits and opcode).
pub fn client_frame(b0: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xFA, 0x21, 0x3D];
    let mut f = vec![b0];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A WebSocket spoken by hand.
pub struct RawWs {
    pub conn: Conn,
}

impl RawWs {
    /// The handshake for `/cget/ws?{query}`, with `headers` in place of
    /// the usual upgrade headers when given.
    pub fn handshake(query: &str, headers: Option<&[(&str, &str)]>) -> Vec<u8> {
        let usual = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", WS_KEY),
            ("Sec-WebSocket-Version", "13"),
        ];
        super::http::request_bytes(
            "GET",
            &format!("/cget/ws?{query}"),
            headers.unwrap_or(&usual),
            b"",
        )
    }

    /// Opens a WebSocket; fails the test unless the server switches
    /// protocols with the right accept value.
    pub fn open(addr: SocketAddr, query: &str) -> RawWs {
        let mut conn = Conn::connect(addr);
        conn.send(&RawWs::handshake(query, None));
        let head: Head = conn.read_head(WAIT).expect("the handshake's answer");
        assert_eq!(head.status, 101, "{head:?}");
        assert_eq!(head.header("upgrade"), Some("websocket"), "{head:?}");
        assert_eq!(head.header("connection"), Some("Upgrade"), "{head:?}");
        assert_eq!(head.header("sec-websocket-accept"), Some(WS_ACCEPT));
        RawWs { conn }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.conn.send(bytes);
    }

    /// The server's next frame; `Err(Eof)` once it closed the connection.
    pub fn frame(&mut self, timeout: Duration) -> Result<WsFrame, ReadEnd> {
        self.conn
            .read_item(Instant::now() + timeout, parse_server_frame)
    }

    /// The next frame as a JSON frame of a text message.
    pub fn next_frame(&mut self, timeout: Duration) -> Value {
        let (op, payload) = self.frame(timeout).expect("a frame");
        assert_eq!(op, 1, "a text message: {payload:?}");
        assert_eq!(payload.last(), Some(&b'\n'), "each frame ends with \\n");
        serde_json::from_slice(&payload).expect("JSON")
    }

    /// Expects a close frame with `code`, then the end of the connection.
    pub fn expect_close(&mut self, code: u16) {
        let (op, payload) = self.frame(WAIT).expect("a close frame");
        assert_eq!(op, 8, "a close frame: {payload:?}");
        assert_eq!(
            payload.get(..2),
            Some(&code.to_be_bytes()[..]),
            "close code: {:?}",
            String::from_utf8_lossy(&payload)
        );
        assert!(
            self.conn.closed_within(WAIT),
            "the connection ends after the close"
        );
    }
}
