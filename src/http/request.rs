//! Request head parsing: turns the bytes at the front of a connection's read
//! buffer into a small `Copy` [`Head`] of byte offsets and flags, or says that
//! more bytes are needed, or names the protocol error (each mapped to one HTTP
//! status). It owns the request-line and header rules (limits, framing,
//! keep-alive, `Expect`, body kind). It must not touch sockets, read or buffer
//! the body, allocate on the success path, or hold borrowed slices: everything
//! it returns is an offset into the buffer the caller passed in.

use std::ops::Range;

/// Largest request head (request line + headers + blank line) we accept.
/// API requests carry their payload in the body, so real heads are a few
/// hundred bytes; 8 KiB matches common server defaults and bounds the work of
/// re-parsing a partial head after every read.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// Most header lines we accept. Browsers and HTTP libraries send well under
/// 20; 32 leaves room for proxies while keeping httparse's header array small
/// enough to live on the stack.
pub const MAX_HEADERS: usize = 32;

/// Protocol errors found in a request head. Each maps to exactly one HTTP
/// status in [`HttpError::status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("request head too large")]
    HeadTooLarge,
    #[error("request line too long")]
    LineTooLong,
    #[error("too many headers")]
    TooManyHeaders,
    #[error("chunked request bodies are not supported")]
    LengthRequired,
    #[error("request body too large")]
    BodyTooLarge,
    #[error("unsupported Expect value")]
    ExpectationFailed,
    #[error("HTTP version not supported")]
    VersionNotSupported,
    #[error("{0}")]
    BadRequest(&'static str),
}

impl HttpError {
    /// The HTTP status to answer with. The only place errors meet statuses.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::LineTooLong => 414,
            HttpError::LengthRequired => 411,
            HttpError::BodyTooLarge => 413,
            HttpError::ExpectationFailed => 417,
            HttpError::VersionNotSupported => 505,
            HttpError::BadRequest(_) => 400,
        }
    }

    /// Short static message for the JSON error body.
    pub fn reason(&self) -> &'static str {
        match self {
            HttpError::HeadTooLarge => "request head too large",
            HttpError::LineTooLong => "request line too long",
            HttpError::TooManyHeaders => "too many headers",
            HttpError::LengthRequired => "chunked request bodies are not supported",
            HttpError::BodyTooLarge => "request body too large",
            HttpError::ExpectationFailed => "unsupported Expect value",
            HttpError::VersionNotSupported => "HTTP version not supported",
            HttpError::BadRequest(why) => why,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Head,
    /// A CORS preflight, when `--allow-origin` allows its origin; else 405.
    Options,
    /// Anything else; handlers answer 405.
    Other,
}

/// Body kind, from `Content-Type` (parameters ignored, case-insensitive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    /// `application/x-www-form-urlencoded`
    Form,
    /// `application/json`
    Json,
    /// Absent or anything else.
    Other,
}

/// A byte range `start..end` into the buffer given to [`parse_head`]. `u32`
/// instead of `Range<usize>` because `Range` is not `Copy` and heads are far
/// smaller than 4 GiB (see [`MAX_HEAD_BYTES`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    fn new(r: Range<usize>) -> Span {
        // Both ends are below MAX_HEAD_BYTES, so the casts cannot truncate.
        Span {
            start: r.start as u32,
            end: r.end as u32,
        }
    }

    pub fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }

    pub fn is_empty(self) -> bool {
        self.start == self.end
    }

    /// The bytes this span covers in `buf` (the buffer given to `parse_head`).
    pub fn get(self, buf: &[u8]) -> &[u8] {
        &buf[self.range()]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub method: Method,
    /// Request path without the query, e.g. `/api/send`.
    pub path: Span,
    /// Query without the `?`; empty if there is no `?`.
    pub query: Span,
    /// Bytes of the head including the final blank line; the body starts here.
    pub head_len: usize,
    /// 0 if `Content-Length` is absent.
    pub content_length: usize,
    /// HTTP/1.1: true unless `Connection: close`.
    /// HTTP/1.0: false unless `Connection: keep-alive`.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request (ignored for 1.0, as
    /// RFC 9110 requires).
    pub expect_continue: bool,
    /// An HTTP/1.0 request: its answers know no chunked coding.
    pub http10: bool,
    pub body: Body,
}

impl Head {
    pub fn path<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        self.path.get(buf)
    }

    pub fn query<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        self.query.get(buf)
    }

    /// Head plus body: where the next pipelined request starts.
    pub fn total_len(&self) -> usize {
        self.head_len + self.content_length
    }
}

/// Parses the request head at the start of `buf`.
///
/// `Ok(None)` means the head is incomplete and more bytes are needed.
/// `max_body` is the largest `Content-Length` accepted (413 beyond).
pub fn parse_head(buf: &[u8], max_body: usize) -> Result<Option<Head>, HttpError> {
    // Never look past the limit: a head that has not ended within it is too
    // large whatever follows, and this bounds the cost of each re-parse.
    let window = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            // Not even the request line ended within the limit: its target
            // is what is too long (414), not the headers (431).
            return Err(if window.contains(&b'\n') {
                HttpError::HeadTooLarge
            } else {
                HttpError::LineTooLong
            });
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(map_httparse(e, window)),
    };

    // Complete, so httparse filled in method, path and version.
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HttpError::BadRequest("bad request line"));
    };
    let method = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "HEAD" => Method::Head,
        "OPTIONS" => Method::Options,
        _ => Method::Other,
    };
    let target_start = offset_in(window, target.as_bytes());
    let target = target.as_bytes();
    if target.first() != Some(&b'/') {
        return Err(HttpError::BadRequest("request target must be a path"));
    }
    let (path, query) = match target.iter().position(|&b| b == b'?') {
        Some(q) => (
            target_start..target_start + q,
            target_start + q + 1..target_start + target.len(),
        ),
        None => {
            let end = target_start + target.len();
            (target_start..end, end..end)
        }
    };

    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut body: Option<Body> = None;
    let mut hosts = 0;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        let value = h.value;
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(HttpError::BadRequest("duplicate Content-Length"));
            }
            content_length = Some(parse_content_length(value)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            if !value.eq_ignore_ascii_case(b"100-continue") {
                return Err(HttpError::ExpectationFailed);
            }
            expect_continue = true;
        } else if name.eq_ignore_ascii_case(b"content-type") {
            if body.is_some() {
                return Err(HttpError::BadRequest("duplicate Content-Type"));
            }
            body = Some(body_kind(value));
        }
    }

    let content_length = match (chunked, content_length) {
        (true, Some(_)) => {
            return Err(HttpError::BadRequest(
                "both Transfer-Encoding and Content-Length",
            ))
        }
        (true, None) => return Err(HttpError::LengthRequired),
        (false, Some(n)) if n > max_body => return Err(HttpError::BodyTooLarge),
        (false, n) => n.unwrap_or(0),
    };
    let http11 = version == 1;
    // RFC 9112 §3.2: a 1.1 request has exactly one Host; a 1.0 one at most.
    if hosts > 1 || (http11 && hosts == 0) {
        return Err(HttpError::BadRequest(
            "a request needs exactly one Host header",
        ));
    }
    Ok(Some(Head {
        method,
        path: Span::new(path),
        query: Span::new(query),
        head_len,
        content_length,
        keep_alive: if http11 {
            !close
        } else {
            keep_alive_token && !close
        },
        expect_continue: expect_continue && http11,
        http10: !http11,
        body: body.unwrap_or(Body::Other),
    }))
}

/// Offset of `sub` inside `buf`. httparse hands back sub-slices of the input,
/// so this is plain address arithmetic (no `unsafe`).
fn offset_in(buf: &[u8], sub: &[u8]) -> usize {
    let off = (sub.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
    debug_assert!(off + sub.len() <= buf.len());
    off
}

/// Digits only, no sign or spaces. A numeric value too big for `usize`
/// saturates so that it is reported as 413 rather than 400.
fn parse_content_length(value: &[u8]) -> Result<usize, HttpError> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::BadRequest("bad Content-Length"));
    }
    Ok(value.iter().fold(0usize, |n, &d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    }))
}

fn body_kind(value: &[u8]) -> Body {
    let media = value
        .split(|&b| b == b';')
        .next()
        .unwrap_or(b"")
        .trim_ascii();
    if media.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") {
        Body::Form
    } else if media.eq_ignore_ascii_case(b"application/json") {
        Body::Json
    } else {
        Body::Other
    }
}

fn map_httparse(e: httparse::Error, buf: &[u8]) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        httparse::Error::Version if is_other_http_version(buf) => HttpError::VersionNotSupported,
        httparse::Error::Version => HttpError::BadRequest("bad HTTP version"),
        httparse::Error::HeaderName => HttpError::BadRequest("bad header name"),
        httparse::Error::HeaderValue => HttpError::BadRequest("bad header value"),
        httparse::Error::NewLine => HttpError::BadRequest("bad line ending"),
        _ => HttpError::BadRequest("bad request line"),
    }
}

/// httparse only knows 1.0 and 1.1 and reports everything else as a version
/// error. A well-formed `HTTP/<digit>[.<digit>]` as the third part of the
/// request line (`METHOD SP TARGET SP HTTP/...`) is a version we do not speak
/// (505); anything else, such as an extra word before a good version, is
/// garbage (400).
fn is_other_http_version(buf: &[u8]) -> bool {
    let line_start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(0);
    let line = &buf[line_start..];
    let line = &line[..line
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(line.len())];
    let Some(at) = line.windows(6).rposition(|w| w == b" HTTP/") else {
        return false;
    };
    if line[..at].iter().filter(|&&b| b == b' ').count() != 1 {
        return false;
    }
    match &line[at + 6..] {
        [major] | [major, b'.'] => major.is_ascii_digit(),
        [major, b'.', minor] => major.is_ascii_digit() && minor.is_ascii_digit(),
        _ => false,
    }
}

/// The value of header `name` in a complete head (case-insensitive name),
/// found by parsing it again: for the rare header only one endpoint reads,
/// rather than keeping every header of every request.
pub fn header_value<'a>(buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let window = &buf[..buf.len().min(MAX_HEAD_BYTES)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    req.parse(window).ok()?;
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX_BODY: usize = 64 * 1024;

    /// One-line summary of a parsed head, so expectations fit in a table:
    /// `METHOD path ?query cl=N ka|close [100] body`.
    fn summary(input: &[u8]) -> String {
        let ctx = String::from_utf8_lossy(input);
        let h = match parse_head(input, MAX_BODY) {
            Ok(Some(h)) => h,
            other => panic!("{ctx:?}: {other:?}"),
        };
        let end = input.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(h.head_len, end, "{ctx:?}");
        let http10 = input.windows(8).any(|w| w == b"HTTP/1.0");
        assert_eq!(h.http10, http10, "{ctx:?}");
        format!(
            "{:?} {} ?{} cl={} {}{} {:?}",
            h.method,
            String::from_utf8_lossy(h.path(input)),
            String::from_utf8_lossy(h.query(input)),
            h.content_length,
            if h.keep_alive { "ka" } else { "close" },
            if h.expect_continue { " 100" } else { "" },
            h.body,
        )
    }

    #[test]
    fn parses_valid_heads() {
        #[rustfmt::skip]
        let cases: &[(&[u8], &str)] = &[
            (b"GET /api/poll?uid=7&x=a%20b HTTP/1.1\r\nHost: h\r\n\r\n", "Get /api/poll ?uid=7&x=a%20b cl=0 ka Other"),
            (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", "Get / ? cl=0 ka Other"),
            (b"GET /a? HTTP/1.1\r\nHost: h\r\n\r\n", "Get /a ? cl=0 ka Other"),
            (b"POST /api/send HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded; charset=UTF-8\r\nContent-Length: 12\r\n\r\nhaoshuo=%7B}",
                "Post /api/send ? cl=12 ka Form"),
            (b"POST /j HTTP/1.1\r\nHost: h\r\ncontent-type: Application/JSON\r\ncontent-length: 2\r\n\r\n{}", "Post /j ? cl=2 ka Json"),
            (b"POST /j HTTP/1.1\r\nHost: h\r\nContent-Type:application/json;charset=utf-8\r\n\r\n", "Post /j ? cl=0 ka Json"),
            (b"POST /t HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n", "Post /t ? cl=0 ka Other"),
            (b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n", "Head /h ? cl=0 ka Other"),
            (b"DELETE /d HTTP/1.1\r\nHost: h\r\n\r\n", "Other /d ? cl=0 ka Other"),
            (b"get /d HTTP/1.1\r\nHost: h\r\n\r\n", "Other /d ? cl=0 ka Other"),
            // Leading blank lines are skipped; offsets still index the input.
            (b"\r\nGET /x?y HTTP/1.1\r\nHost: h\r\n\r\n", "Get /x ?y cl=0 ka Other"),
            // Keep-alive semantics.
            (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", "Get / ? cl=0 close Other"),
            (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, CLOSE\r\n\r\n", "Get / ? cl=0 close Other"),
            (b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\n\r\n", "Get / ? cl=0 ka Other"),
            (b"GET / HTTP/1.0\r\n\r\n", "Get / ? cl=0 close Other"),
            (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", "Get / ? cl=0 ka Other"),
            (b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", "Get / ? cl=0 close Other"),
            // Expect: honoured on 1.1, ignored on 1.0.
            (b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 5\r\n\r\n", "Post /e ? cl=5 ka 100 Other"),
            (b"POST /e HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n", "Post /e ? cl=5 close Other"),
            // Content-Length exactly at the limit is fine.
            (b"POST /m HTTP/1.1\r\nHost: h\r\nContent-Length: 65536\r\n\r\n", "Post /m ? cl=65536 ka Other"),
        ];
        for &(input, want) in cases {
            assert_eq!(summary(input), want);
        }
    }

    #[test]
    fn rejects_bad_heads() {
        let many_headers: Vec<u8> = {
            let mut v = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
            for i in 0..=MAX_HEADERS {
                v.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
            }
            v.extend_from_slice(b"\r\n");
            v
        };
        let oversize: Vec<u8> = {
            let mut v = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
            v.resize(MAX_HEAD_BYTES + 1, b'a');
            v
        };
        let long_line: Vec<u8> = {
            let mut v = b"GET /".to_vec();
            v.resize(MAX_HEAD_BYTES + 1, b'a');
            v
        };
        let oversize_complete: Vec<u8> = {
            let mut v = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ".to_vec();
            v.resize(MAX_HEAD_BYTES, b'a');
            v.extend_from_slice(b"\r\n\r\n");
            v
        };
        #[rustfmt::skip]
        let cases: &[(&[u8], u16)] = &[
            (&oversize, 431),
            (&long_line, 414),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            (b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n", 400),
            (&oversize_complete, 431),
            (&many_headers, 431),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 65537\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999999999\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
            (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1,2\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: h\r\nExpect: something\r\n\r\n", 417),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"GET / HTTP/1.2\r\n\r\n", 505),
            (b"GET / HTTP/2", 505),
            (b"\r\nGET / HTTP/2.0\r\n\r\n", 505),
            (b"GET / HTTP/2.x\r\n\r\n", 400),
            (b"GET / FTP/1.1\r\n\r\n", 400),
            (b"GET /\r\n\r\n", 400),
            (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
            (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
            (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", 400),
            (b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: h\r\nContent-Type: a\r\nContent-Type: b\r\n\r\n", 400),
        ];
        for &(input, status) in cases {
            let got = parse_head(input, MAX_BODY);
            let ctx = String::from_utf8_lossy(&input[..input.len().min(80)]);
            let err = got.expect_err(&ctx);
            assert_eq!(err.status(), status, "{ctx}: {err:?}");
            assert!(!err.reason().is_empty());
        }
    }

    /// The JSON error body names what was wrong, in the words of the
    /// error itself.
    #[test]
    fn refusals_name_their_reason() {
        #[rustfmt::skip]
        let cases: &[(&[u8], &str)] = &[
            (b"GET / FTP/1.1\r\n\r\n", "bad HTTP version"),
            (b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n", "bad header name"),
            (b"GET / HTTP/1.1\r\nHost: h\r\nX: a\x01b\r\n\r\n", "bad header value"),
            (b"GET / HTTP/1.1\rHost: h\r\n\r\n", "bad line ending"),
            (b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n", "bad request line"),
            (b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n", "request target must be a path"),
            (b"GET / HTTP/2.0\r\n\r\n", "HTTP version not supported"),
        ];
        for &(input, want) in cases {
            let err = parse_head(input, MAX_BODY).expect_err(want);
            assert_eq!(err.reason(), want, "{}", String::from_utf8_lossy(input));
        }
        for err in [
            HttpError::HeadTooLarge,
            HttpError::LineTooLong,
            HttpError::TooManyHeaders,
            HttpError::LengthRequired,
            HttpError::BodyTooLarge,
            HttpError::ExpectationFailed,
            HttpError::VersionNotSupported,
            HttpError::BadRequest("bad Content-Length"),
        ] {
            assert_eq!(err.reason(), err.to_string(), "{err:?}");
        }
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let reqs: [&[u8]; 3] = [
            b"GET /api/poll?uid=1 HTTP/1.1\r\nHost: example\r\nConnection: keep-alive\r\n\r\n",
            b"POST /api/send HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            b"GET / HTTP/1.0\n\n",
        ];
        for req in reqs {
            for cut in 0..req.len() {
                assert_eq!(parse_head(&req[..cut], MAX_BODY), Ok(None), "cut at {cut}");
            }
            let head = parse_head(req, MAX_BODY).unwrap().unwrap();
            assert_eq!(head.head_len, req.len());
        }
    }

    #[test]
    fn pipelined_requests() {
        let buf = b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /b?q=1 HTTP/1.1\r\nHost: h\r\n\r\n";
        let first = parse_head(buf, MAX_BODY).unwrap().unwrap();
        assert_eq!(first.path(buf), b"/a");
        assert_eq!(&buf[first.head_len..first.total_len()], b"hello");
        let rest = &buf[first.total_len()..];
        let second = parse_head(rest, MAX_BODY).unwrap().unwrap();
        assert_eq!(second.method, Method::Get);
        assert_eq!(second.path(rest), b"/b");
        assert_eq!(second.query(rest), b"q=1");
        assert_eq!(second.head_len, rest.len());
    }

    #[test]
    fn limit_boundaries() {
        // Partial head exactly at the limit: still waiting; one more byte: 431.
        let mut v = b"GET / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
        v.resize(MAX_HEAD_BYTES, b'a');
        assert_eq!(parse_head(&v, MAX_BODY), Ok(None));
        v.push(b'a');
        assert_eq!(parse_head(&v, MAX_BODY), Err(HttpError::HeadTooLarge));
        // Complete head of exactly MAX_HEAD_BYTES is accepted.
        let mut v = b"GET / HTTP/1.1\r\nHost: h\r\nX: ".to_vec();
        v.resize(MAX_HEAD_BYTES - 4, b'a');
        v.extend_from_slice(b"\r\n\r\n");
        assert_eq!(
            parse_head(&v, MAX_BODY).unwrap().unwrap().head_len,
            MAX_HEAD_BYTES
        );
        // A head of a few KiB (cookies, long tokens) is no reason to refuse.
        let mut v = b"GET / HTTP/1.1\r\nHost: h\r\nCookie: ".to_vec();
        v.resize(6 * 1024, b'a');
        v.extend_from_slice(b"\r\n\r\n");
        assert!(parse_head(&v, MAX_BODY).unwrap().is_some());
        // Exactly MAX_HEADERS headers are accepted (Host is one of them).
        let mut v = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 1..MAX_HEADERS {
            v.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        v.extend_from_slice(b"\r\n");
        assert!(parse_head(&v, MAX_BODY).unwrap().is_some());
    }

    /// Found by the `request_head` fuzz target: a request line with an
    /// extra word before a good version was answered 505 (the version
    /// check took the last ` HTTP/` of the line), and 400 when the same
    /// bytes came in two reads, the first ending before ` HTTP/`.
    #[test]
    fn extra_word_before_the_version_is_400_not_505() {
        let cases: &[&[u8]] = &[
            b"GET / x HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET / x HTTP/1.1\r\n",
            b"POST /api/p %POST /i/pap HTTP/1.1\r\nHost: h\r\n\r\n",
        ];
        for &input in cases {
            let ctx = String::from_utf8_lossy(input);
            assert_eq!(
                parse_head(input, MAX_BODY).map_err(|e| e.status()),
                Err(400),
                "{ctx}"
            );
            // The same bytes up to the version, as a first read would see them.
            let cut = input.windows(6).position(|w| w == b" HTTP/").unwrap();
            assert_eq!(
                parse_head(&input[..cut], MAX_BODY).map_err(|e| e.status()),
                Err(400),
                "{ctx}"
            );
        }
        // A well-formed line with a version we do not speak stays 505.
        assert_eq!(
            parse_head(b"GET /x HTTP/2.0\r\n\r\n", MAX_BODY),
            Err(HttpError::VersionNotSupported)
        );
    }

    #[test]
    fn head_is_small() {
        assert!(std::mem::size_of::<Head>() <= 40);
    }

    #[test]
    fn header_value_finds_a_header_by_any_case() {
        let req = b"POST /admin/users HTTP/1.1\r\nHost: h\r\nX-Admin-Key: k1\r\nContent-Length: 0\r\n\r\n";
        let cases: &[(&str, Option<&[u8]>)] = &[
            ("x-admin-key", Some(b"k1")),
            ("X-ADMIN-KEY", Some(b"k1")),
            ("content-length", Some(b"0")),
            ("missing", None),
        ];
        for (name, want) in cases {
            assert_eq!(header_value(req, name), *want, "{name}");
        }
        assert_eq!(header_value(b"GET / HTTP/1.1\r\n", "host"), None);
    }
}
