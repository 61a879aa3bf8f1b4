//! Chunked transfer-coding framing for stream responses. It owns the bytes
//! around each payload: a [`ChunkHeader`] kept in a small stack array so the
//! caller can send header, payload and [`CHUNK_TRAILER`] in one vectored write
//! without copying the payload, plus [`push_chunk`] for the copying path. It
//! must not touch sockets, decode chunked input (request bodies with
//! `Transfer-Encoding` are refused at the head), or own payload buffers.

/// Hex digits of `usize::MAX` on 64-bit (16) plus CRLF.
const HEADER_CAP: usize = 18;

/// Written after each chunk's payload.
pub const CHUNK_TRAILER: &[u8] = b"\r\n";
/// Ends the stream (zero-size chunk, no trailers).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// `"<hex len>\r\n"` for one chunk, stored inline.
#[derive(Clone, Copy, Debug)]
pub struct ChunkHeader {
    buf: [u8; HEADER_CAP],
    len: u8,
}

impl ChunkHeader {
    /// Header for a data chunk of `payload_len` bytes. `payload_len` must not
    /// be 0: a zero-size chunk ends the stream (use [`LAST_CHUNK`]).
    pub fn new(payload_len: usize) -> Self {
        debug_assert!(payload_len != 0, "zero-size data chunk ends the stream");
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digits = if payload_len == 0 {
            1
        } else {
            (usize::BITS - payload_len.leading_zeros()).div_ceil(4) as usize
        };
        let mut buf = [0u8; HEADER_CAP];
        let mut n = payload_len;
        for slot in buf[..digits].iter_mut().rev() {
            *slot = HEX[n & 0xf];
            n >>= 4;
        }
        buf[digits] = b'\r';
        buf[digits + 1] = b'\n';
        ChunkHeader {
            buf,
            len: (digits + 2) as u8,
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// Appends a whole chunk (header, payload, CRLF). Never panics in release; an
/// empty payload writes nothing there (it would otherwise end the stream) and
/// trips a `debug_assert` in debug builds.
pub fn push_chunk(out: &mut Vec<u8>, payload: &[u8]) {
    debug_assert!(!payload.is_empty(), "zero-size data chunk ends the stream");
    if payload.is_empty() {
        return;
    }
    let header = ChunkHeader::new(payload.len());
    out.reserve(header.as_bytes().len() + payload.len() + CHUNK_TRAILER.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(CHUNK_TRAILER);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal strict decoder: returns the concatenated payloads and the
    /// number of bytes consumed up to and including the last chunk.
    fn decode(mut input: &[u8]) -> Result<(Vec<u8>, usize), &'static str> {
        let total = input.len();
        let mut out = Vec::new();
        loop {
            let eol = input
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("no chunk header end")?;
            let hex = std::str::from_utf8(&input[..eol]).map_err(|_| "bad header")?;
            let len = usize::from_str_radix(hex, 16).map_err(|_| "bad hex")?;
            input = &input[eol + 2..];
            if len == 0 {
                if input.get(..2) != Some(b"\r\n") {
                    return Err("no final CRLF");
                }
                return Ok((out, total - input.len() + 2));
            }
            if input.len() < len + 2 || &input[len..len + 2] != b"\r\n" {
                return Err("bad chunk body");
            }
            out.extend_from_slice(&input[..len]);
            input = &input[len + 2..];
        }
    }

    #[test]
    fn headers() {
        let cases: &[(usize, &[u8])] = &[
            (1, b"1\r\n"),
            (15, b"f\r\n"),
            (16, b"10\r\n"),
            (255, b"ff\r\n"),
            (256, b"100\r\n"),
            (4096, b"1000\r\n"),
            (0xdead_beef, b"deadbeef\r\n"),
        ];
        for &(n, want) in cases {
            assert_eq!(ChunkHeader::new(n).as_bytes(), want, "{n}");
        }
        let max = ChunkHeader::new(usize::MAX);
        assert_eq!(max.as_bytes(), format!("{:x}\r\n", usize::MAX).as_bytes());
        assert!(max.as_bytes().len() <= HEADER_CAP);
    }

    #[test]
    fn round_trip() {
        for sizes in [&[1usize][..], &[15, 16], &[255, 4096, 1], &[70_000]] {
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for (i, &n) in sizes.iter().enumerate() {
                let payload: Vec<u8> = (0..n).map(|j| (i + j) as u8).collect();
                push_chunk(&mut wire, &payload);
                want.extend_from_slice(&payload);
            }
            wire.extend_from_slice(LAST_CHUNK);
            wire.extend_from_slice(b"trailing");
            let (got, used) = decode(&wire).unwrap();
            assert_eq!(got, want, "{sizes:?}");
            assert_eq!(used, wire.len() - b"trailing".len());
        }
    }

    #[test]
    fn vectored_parts_match_push_chunk() {
        let payload = b"{\"mid\":1}";
        let header = ChunkHeader::new(payload.len());
        let joined = [header.as_bytes(), payload, CHUNK_TRAILER].concat();
        let mut pushed = Vec::new();
        push_chunk(&mut pushed, payload);
        assert_eq!(joined, pushed);
        assert_eq!(joined, b"9\r\n{\"mid\":1}\r\n");
    }
}
