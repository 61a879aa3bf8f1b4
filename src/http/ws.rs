//! WebSocket (RFC 6455) on byte buffers: the opening handshake's checks and
//! its `Sec-WebSocket-Accept`, the header of a frame the server sends, and
//! the decoding of a frame a client sends. No socket and no connection
//! state, as the rest of this layer: what a client frame means for a
//! subscription is the subscriber's to say (`delivery/subscriber.rs`).
//!
//! The server only pushes: a client sends control frames (ping, pong,
//! close), and a message it sends anyway is read and dropped, up to
//! [`MAX_CLIENT_PAYLOAD`].

use base64ct::{Base64, Encoding};

/// What RFC 6455 appends to the client's key before hashing it.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The only protocol version there is (RFC 6455, section 4.1).
pub const VERSION: &[u8] = b"13";

/// Largest payload of a client frame. Control frames carry at most 125
/// bytes (RFC 6455, 5.5); clients have nothing else to say to a push
/// server, so a message of theirs is dropped, and one beyond this is closed
/// with 1009 before it is read (its bytes are never buffered).
pub const MAX_CLIENT_PAYLOAD: usize = 4096;

/// Longest frame header: two bytes, a 64-bit length, a 4-byte mask.
pub const MAX_HEADER: usize = 14;

/// Opcodes (RFC 6455, 5.2).
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Close codes (RFC 6455, 7.4.1).
pub const NORMAL: u16 = 1000;
pub const GOING_AWAY: u16 = 1001;
pub const PROTOCOL_ERROR: u16 = 1002;
pub const TOO_BIG: u16 = 1009;
pub const INTERNAL_ERROR: u16 = 1011;

/// Whether a close frame may carry `code` (RFC 6455, 7.4): the defined
/// codes an endpoint may send, and those for libraries (3000-3999) and
/// applications (4000-4999). 1005, 1006 and 1015 only ever stand for "no
/// code" locally.
pub fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// The value of `Sec-WebSocket-Accept`: base64 of 20 SHA-1 bytes.
pub type Accept = [u8; 28];

/// Why a request is not a WebSocket handshake we take (each a 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeError {
    NotGet,
    Http10,
    NoUpgrade,
    NoConnectionUpgrade,
    Version,
    Key,
}

impl HandshakeError {
    /// The `msg` of its JSON error body.
    pub fn reason(self) -> &'static str {
        match self {
            HandshakeError::NotGet => "a WebSocket handshake is a GET",
            HandshakeError::Http10 => "a WebSocket handshake needs HTTP/1.1",
            HandshakeError::NoUpgrade => "missing 'Upgrade: websocket'",
            HandshakeError::NoConnectionUpgrade => "missing 'Connection: Upgrade'",
            HandshakeError::Version => "unsupported 'Sec-WebSocket-Version': use 13",
            HandshakeError::Key => "missing or malformed 'Sec-WebSocket-Key'",
        }
    }
}

/// Checks a complete request head (`GET` is the method it was sent with)
/// as a WebSocket opening handshake (RFC 6455, 4.2.1) and returns the
/// `Sec-WebSocket-Accept` it is answered with.
pub fn check_handshake(head: &[u8], get: bool, http10: bool) -> Result<Accept, HandshakeError> {
    if !get {
        return Err(HandshakeError::NotGet);
    }
    if http10 {
        return Err(HandshakeError::Http10);
    }
    let mut headers = [httparse::EMPTY_HEADER; super::request::MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    // The reactor parsed this head already; a failure here cannot happen,
    // and reads as a head without the headers below.
    let _ = req.parse(head);
    let (mut upgrade, mut connection, mut version) = (false, false, None);
    let mut key = None;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade |= has_token(h.value, b"websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection |= has_token(h.value, b"upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = Some(h.value.trim_ascii());
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(h.value.trim_ascii());
        }
    }
    if !upgrade {
        return Err(HandshakeError::NoUpgrade);
    }
    if !connection {
        return Err(HandshakeError::NoConnectionUpgrade);
    }
    if version != Some(VERSION) {
        return Err(HandshakeError::Version);
    }
    // The key is 16 random bytes, base64: 24 characters.
    let key = key.ok_or(HandshakeError::Key)?;
    let mut raw = [0u8; 16];
    match Base64::decode(key, &mut raw) {
        Ok(bytes) if bytes.len() == 16 => Ok(accept(key)),
        _ => Err(HandshakeError::Key),
    }
}

/// Whether a comma-separated header value holds `token` (any case).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`:
/// base64(SHA-1(key + GUID)).
pub fn accept(key: &[u8]) -> Accept {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key);
    sha.update(GUID);
    let mut out = [0u8; 28];
    // 20 bytes are 28 characters of padded base64: the buffer fits.
    let _ = Base64::encode(&sha.digest().bytes(), &mut out);
    out
}

/// The head lines a `101 Switching Protocols` answer adds to
/// [`write_upgrade_head`]'s: its `Sec-WebSocket-Accept`.
pub fn accept_line(accept: &Accept) -> Vec<u8> {
    let mut line = Vec::with_capacity(56);
    line.extend_from_slice(b"Sec-WebSocket-Accept: ");
    line.extend_from_slice(accept);
    line.extend_from_slice(b"\r\n");
    line
}

/// The head of the handshake's answer, but for its `Sec-WebSocket-Accept`
/// line (which `accept_line` makes, and the reactor adds as it adds CORS
/// lines: a subscriber's kind is the same few bytes for every connection).
pub fn write_upgrade_head(out: &mut Vec<u8>) {
    super::response::write_status_line(out, 101);
    out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
}

/// The header of a frame the server sends: final, unmasked (RFC 6455,
/// 5.1: a server never masks), `len` payload bytes.
#[derive(Clone, Copy, Debug)]
pub struct FrameHeader {
    bytes: [u8; 10],
    len: u8,
}

impl FrameHeader {
    pub fn new(opcode: u8, len: usize) -> FrameHeader {
        let mut bytes = [0u8; 10];
        bytes[0] = 0x80 | opcode;
        let n = if len < 126 {
            bytes[1] = len as u8;
            2
        } else if len <= usize::from(u16::MAX) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        FrameHeader { bytes, len: n }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Appends a close frame with `code` and a short `reason` (at most 123
/// bytes: a control frame's payload is at most 125).
pub fn write_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    out.extend_from_slice(FrameHeader::new(CLOSE, 2 + reason.len()).as_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

/// A client frame whose header is complete (its payload may not be yet).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientFrame {
    pub fin: bool,
    pub opcode: u8,
    /// Bytes of the header, mask included.
    pub header_len: usize,
    pub payload_len: usize,
    mask: [u8; 4],
}

impl ClientFrame {
    /// Header and payload: where the next frame starts.
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }

    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// The payload of this frame, found at the start of `buf`, unmasked
    /// into `out` (at least `payload_len` long). Returns its length.
    pub fn unmask(&self, buf: &[u8], out: &mut [u8]) -> usize {
        let payload = &buf[self.header_len..self.total_len()];
        for (i, (o, b)) in out.iter_mut().zip(payload).enumerate() {
            *o = b ^ self.mask[i % 4];
        }
        payload.len()
    }
}

/// Why a client frame ends the connection; [`FrameError::close_code`]
/// says with which close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("client frames must be masked")]
    Unmasked,
    #[error("reserved bits set")]
    Reserved,
    #[error("unknown opcode")]
    Opcode,
    #[error("control frame too long or fragmented")]
    Control,
    #[error("frame too large")]
    TooBig,
}

impl FrameError {
    /// The close code it is answered with: 1009 for a frame too large,
    /// 1002 (protocol error) for the rest.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::TooBig => TOO_BIG,
            _ => PROTOCOL_ERROR,
        }
    }
}

/// Decodes the header of the client frame at the start of `buf`: `None`
/// until the header is complete; an error as soon as the header shows the
/// frame breaks the protocol or is larger than [`MAX_CLIENT_PAYLOAD`].
pub fn parse_frame(buf: &[u8]) -> Result<Option<ClientFrame>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
    if b0 & 0x70 != 0 {
        return Err(FrameError::Reserved); // no extension was negotiated
    }
    if !matches!(opcode, CONTINUATION | TEXT | BINARY | CLOSE | PING | PONG) {
        return Err(FrameError::Opcode);
    }
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode & 0x8 != 0 && (len > 125 || !fin) {
        return Err(FrameError::Control);
    }
    if len > MAX_CLIENT_PAYLOAD as u64 {
        return Err(FrameError::TooBig);
    }
    let Some(mask) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(ClientFrame {
        fin,
        opcode,
        header_len: at + 4,
        payload_len: len as usize,
        mask: mask.try_into().expect("4 bytes"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6455, 1.3: the example key and its accept value.
    #[test]
    fn the_accept_key_is_the_rfcs() {
        assert_eq!(
            &accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn handshake(lines: &[&str]) -> Result<Accept, HandshakeError> {
        let head = format!("GET /cget/ws HTTP/1.1\r\nHost: x\r\n{}\r\n", lines.concat());
        check_handshake(head.as_bytes(), true, false)
    }

    #[test]
    fn handshakes_are_checked_header_by_header() {
        const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        const UP: &str = "Upgrade: websocket\r\n";
        const CONN: &str = "Connection: keep-alive, Upgrade\r\n";
        const V13: &str = "Sec-WebSocket-Version: 13\r\n";
        let ok = Ok(*b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        // (header lines, expected)
        let cases: &[(&[&str], Result<Accept, HandshakeError>)] = &[
            (&[UP, CONN, V13, KEY], ok),
            // Names and tokens in any case, with spaces.
            (
                &[
                    "upgrade: WebSocket\r\n",
                    "connection: upgrade\r\n",
                    "sec-websocket-version:  13 \r\n",
                    "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ== \r\n",
                ],
                ok,
            ),
            // Connection said twice.
            (
                &[
                    UP,
                    "Connection: keep-alive\r\n",
                    "Connection: Upgrade\r\n",
                    V13,
                    KEY,
                ],
                ok,
            ),
            (&[CONN, V13, KEY], Err(HandshakeError::NoUpgrade)),
            (
                &["Upgrade: h2c\r\n", CONN, V13, KEY],
                Err(HandshakeError::NoUpgrade),
            ),
            (&[UP, V13, KEY], Err(HandshakeError::NoConnectionUpgrade)),
            (
                &[UP, "Connection: close\r\n", V13, KEY],
                Err(HandshakeError::NoConnectionUpgrade),
            ),
            (&[UP, CONN, KEY], Err(HandshakeError::Version)),
            (
                &[UP, CONN, "Sec-WebSocket-Version: 8\r\n", KEY],
                Err(HandshakeError::Version),
            ),
            (&[UP, CONN, V13], Err(HandshakeError::Key)),
            // Not base64, or not 16 bytes.
            (
                &[UP, CONN, V13, "Sec-WebSocket-Key: !!!!\r\n"],
                Err(HandshakeError::Key),
            ),
            (
                &[UP, CONN, V13, "Sec-WebSocket-Key: YWJj\r\n"],
                Err(HandshakeError::Key),
            ),
            (
                &[
                    UP,
                    CONN,
                    V13,
                    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==dGhl\r\n",
                ],
                Err(HandshakeError::Key),
            ),
        ];
        for (lines, want) in cases {
            assert_eq!(&handshake(lines), want, "{lines:?}");
        }
        let head = format!("GET / HTTP/1.1\r\n{UP}{CONN}{V13}{KEY}\r\n");
        let head = head.as_bytes();
        assert_eq!(
            check_handshake(head, false, false),
            Err(HandshakeError::NotGet)
        );
        assert_eq!(
            check_handshake(head, true, true),
            Err(HandshakeError::Http10)
        );
    }

    #[test]
    fn server_frames_take_the_shortest_length() {
        // (payload length, header)
        let cases: &[(usize, &[u8])] = &[
            (0, &[0x81, 0]),
            (125, &[0x81, 125]),
            (126, &[0x81, 126, 0, 126]),
            (65535, &[0x81, 126, 0xFF, 0xFF]),
            (65536, &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ];
        for &(len, want) in cases {
            assert_eq!(FrameHeader::new(TEXT, len).as_bytes(), want, "{len}");
        }
        let mut close = Vec::new();
        write_close(&mut close, GOING_AWAY, "bye");
        assert_eq!(close, [0x88, 5, 0x03, 0xE9, b'b', b'y', b'e']);
        let mut long = Vec::new();
        write_close(&mut long, NORMAL, &"x".repeat(300));
        assert_eq!(
            long.len(),
            2 + 125,
            "a control frame stays within 125 bytes"
        );
    }

    /// A masked client frame.
    fn client(b0: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut f = vec![b0];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 65535 => {
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

    #[test]
    fn client_frames_decode_or_name_their_fault() {
        let ping = client(0x89, b"hi");
        let f = parse_frame(&ping).unwrap().unwrap();
        assert_eq!(
            (f.fin, f.opcode, f.header_len, f.payload_len),
            (true, PING, 6, 2)
        );
        let mut payload = [0u8; 125];
        let n = f.unmask(&ping, &mut payload);
        assert_eq!(&payload[..n], b"hi");
        // Every prefix of a frame's header is "not yet".
        let big = client(0x82, &[7; 300]);
        for end in 0..8 {
            assert_eq!(parse_frame(&big[..end]), Ok(None), "{end} bytes");
        }
        let f = parse_frame(&big).unwrap().unwrap();
        assert_eq!((f.header_len, f.total_len()), (8, 308));

        let mut unmasked = client(0x81, b"x");
        unmasked[1] &= 0x7F;
        let mut too_big = client(0x82, &[]);
        too_big[1] = 0x80 | 127;
        too_big.splice(2..2, (MAX_CLIENT_PAYLOAD as u64 + 1).to_be_bytes());
        // (frame, fault, close code)
        let cases: Vec<(Vec<u8>, FrameError, u16)> = vec![
            (unmasked, FrameError::Unmasked, 1002),
            (client(0xC1, b"x"), FrameError::Reserved, 1002),
            (client(0x83, b"x"), FrameError::Opcode, 1002),
            (client(0x89, &[0; 126]), FrameError::Control, 1002),
            (client(0x09, b"x"), FrameError::Control, 1002),
            (too_big, FrameError::TooBig, 1009),
            (
                client(0x82, &vec![0; MAX_CLIENT_PAYLOAD + 1]),
                FrameError::TooBig,
                1009,
            ),
        ];
        for (frame, fault, code) in cases {
            assert_eq!(parse_frame(&frame), Err(fault), "{frame:02x?}");
            assert_eq!(fault.close_code(), code);
        }
        let most = client(0x82, &vec![0; MAX_CLIENT_PAYLOAD]);
        assert!(parse_frame(&most).unwrap().is_some(), "the largest taken");
    }
}
