//! Response encoding: appends complete HTTP/1.1 response heads (and bodies)
//! to a caller-owned output buffer. It owns status lines, the fixed header
//! set and `Content-Length`/`Connection` framing. It must not touch sockets,
//! decide statuses, or build bodies (callers pass finished bytes).

use std::io::Write;

use crate::http::date::write_date;

pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
pub const CONTENT_JSON: &str = "application/json";
/// Server-Sent Events (what a browser's `EventSource` reads).
pub const CONTENT_EVENT_STREAM: &str = "text/event-stream";

/// Standard reason phrase; a generic one per class for codes we never send.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => match status / 100 {
            1 => "Informational",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            _ => "Server Error",
        },
    }
}

/// Appends a full response with `Content-Length` and `Connection:
/// keep-alive` or `close`. For 204 and 304 the body must be empty and no
/// `Content-Length` is sent.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) {
    write_response_with(out, status, content_type, body, keep_alive, b"");
}

/// [`write_response`] with `extra` header lines (each ending in CRLF, e.g.
/// `Allow: POST\r\n`) after the fixed ones.
pub fn write_response_with(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra: &[u8],
) {
    write_head(out, status, content_type, body.len(), keep_alive, extra);
    debug_assert!(body.is_empty() || !no_body_status(status));
    if !no_body_status(status) {
        out.extend_from_slice(body);
    }
}

/// Appends only the head of a response whose body is `content_length` bytes.
/// Used for `HEAD` requests (same headers as `GET`, no body) and by
/// [`write_response`].
pub fn write_response_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    content_length: usize,
    keep_alive: bool,
) {
    write_head(out, status, content_type, content_length, keep_alive, b"");
}

fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: &str,
    content_length: usize,
    keep_alive: bool,
    extra: &[u8],
) {
    debug_assert!((100..=999).contains(&status));
    debug_assert!(!content_type.bytes().any(|b| b == b'\r' || b == b'\n'));
    write_status_line(out, status);
    if !content_type.is_empty() {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !no_body_status(status) {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(content_length).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra);
    // Said either way: HTTP/1.0 clients (ab -k) only keep a connection
    // whose response says so.
    out.extend_from_slice(if keep_alive {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
}

/// Head of a stream response (200, JSON, `Cache-Control: no-cache`):
/// `Transfer-Encoding: chunked` (chunks follow via `http::chunked`), or for
/// an HTTP/1.0 client, which knows no chunked coding, a body that the
/// close ends.
pub fn write_stream_head(out: &mut Vec<u8>, content_type: &str, chunked: bool) {
    write_status_line(out, 200);
    out.extend_from_slice(b"Content-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nCache-Control: no-cache\r\n");
    out.extend_from_slice(if chunked {
        b"Transfer-Encoding: chunked\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
}

/// An error response for any status, with the one JSON error body every
/// failure has: `{"type":"error","code":<status>,"msg":"..."}`. Used by the
/// API and by the HTTP layer (400, 408, 413, 431, ...).
pub fn error_response(status: u16, msg: &str, keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(200 + msg.len());
    write_error(&mut out, status, msg, keep_alive);
    out
}

/// Appends [`error_response`]'s bytes to `out`.
pub fn write_error(out: &mut Vec<u8>, status: u16, msg: &str, keep_alive: bool) {
    write_error_with(out, status, msg, keep_alive, b"");
}

/// [`write_error`] with `extra` header lines (e.g. `Allow` on a 405).
pub fn write_error_with(out: &mut Vec<u8>, status: u16, msg: &str, keep_alive: bool, extra: &[u8]) {
    let mut body = Vec::with_capacity(48 + msg.len());
    let _ = write!(body, r#"{{"type":"error","code":{status},"msg":"#);
    // Serialising a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut body, msg);
    body.push(b'}');
    write_response_with(out, status, CONTENT_JSON, &body, keep_alive, extra);
}

/// The head of a response (up to and including its blank line): what a
/// `HEAD` request gets of the response its `GET` would get.
pub fn head_only(response: &mut Vec<u8>) {
    if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
        response.truncate(end + 4);
    }
}

/// Appends the status line and the header lines every answer carries
/// (`Server`, `Date`).
pub fn write_status_line(out: &mut Vec<u8>, status: u16) {
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nServer: haoshuo\r\n",
        reason(status)
    );
    write_date(out);
}

fn no_body_status(status: u16) -> bool {
    status == 204 || status == 304 || (100..200).contains(&status)
}

/// The same response saying `Connection: close` instead of `keep-alive`,
/// for an answer that turns out to be its connection's last (the server
/// began stopping while the request was at a worker). `None` if `response`
/// does not end its head with `Connection: keep-alive`, as
/// [`write_response_head`] writes it.
pub fn closing(response: &[u8]) -> Option<Vec<u8>> {
    const KEEP: &[u8] = b"Connection: keep-alive\r\n\r\n";
    const CLOSE: &[u8] = b"Connection: close\r\n\r\n";
    let head_len = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let (head, body) = response.split_at(head_len);
    let kept = head.strip_suffix(KEEP)?;
    let mut out = Vec::with_capacity(response.len());
    out.extend_from_slice(kept);
    out.extend_from_slice(CLOSE);
    out.extend_from_slice(body);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The response without its `Date` line, which must be there once.
    fn dateless(out: &[u8]) -> Vec<u8> {
        let text = String::from_utf8(out.to_vec()).unwrap();
        let start = text.find("\r\nDate: ").expect("a Date header") + 2;
        let end = start + text[start..].find("\r\n").unwrap() + 2;
        assert_eq!(end - start, "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n".len());
        assert!(!text[end..].contains("\r\nDate: "), "one Date header");
        [&out[..start], &out[end..]].concat()
    }

    #[test]
    fn a_kept_alive_response_is_turned_into_a_closing_one() {
        let mut kept = Vec::new();
        write_response(&mut kept, 200, "application/json", b"{}", true);
        let mut closed = Vec::new();
        write_response(&mut closed, 200, "application/json", b"{}", false);
        assert_eq!(closing(&kept), Some(closed.clone()));
        assert_eq!(closing(&closed), None, "already closing");
        assert_eq!(closing(b"HTTP/1.1 200 OK\r\n"), None, "no whole head");
    }

    #[test]
    fn full_responses() {
        // (status, content type, body, keep-alive, expected bytes)
        type Case<'a> = (u16, &'a str, &'a [u8], bool, &'a [u8]);
        let cases: &[Case] = &[
            (
                200,
                CONTENT_JSON,
                b"{\"ok\":true}",
                true,
                b"HTTP/1.1 200 OK\r\nServer: haoshuo\r\nContent-Type: application/json\r\nContent-Length: 11\r\nConnection: keep-alive\r\n\r\n{\"ok\":true}",
            ),
            (
                404,
                CONTENT_JSON,
                b"{}",
                false,
                b"HTTP/1.1 404 Not Found\r\nServer: haoshuo\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            ),
            (
                431,
                "text/plain",
                b"",
                true,
                b"HTTP/1.1 431 Request Header Fields Too Large\r\nServer: haoshuo\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n",
            ),
            (
                204,
                "",
                b"",
                true,
                b"HTTP/1.1 204 No Content\r\nServer: haoshuo\r\nConnection: keep-alive\r\n\r\n",
            ),
            (
                599,
                CONTENT_JSON,
                b"x",
                true,
                b"HTTP/1.1 599 Server Error\r\nServer: haoshuo\r\nContent-Type: application/json\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\nx",
            ),
        ];
        for &(status, ct, body, ka, want) in cases {
            let mut out = b"prefix".to_vec();
            write_response(&mut out, status, ct, body, ka);
            assert_eq!(
                &dateless(&out)[6..],
                want,
                "{status}: {}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn response_head_alone() {
        let mut out = Vec::new();
        write_response_head(&mut out, 200, CONTENT_JSON, 1234, true);
        assert_eq!(
            dateless(&out),
            b"HTTP/1.1 200 OK\r\nServer: haoshuo\r\nContent-Type: application/json\r\nContent-Length: 1234\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn stream_head() {
        let mut out = Vec::new();
        write_stream_head(&mut out, CONTENT_JSON, true);
        assert_eq!(
            dateless(&out),
            b"HTTP/1.1 200 OK\r\nServer: haoshuo\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        out.clear();
        write_stream_head(&mut out, CONTENT_JSON, false);
        assert_eq!(
            dateless(&out),
            b"HTTP/1.1 200 OK\r\nServer: haoshuo\r\nContent-Type: application/json\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn extra_headers_and_head_only() {
        let mut out = Vec::new();
        write_error_with(
            &mut out,
            405,
            "method not allowed",
            true,
            b"Allow: POST\r\n",
        );
        let text = String::from_utf8(dateless(&out)).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(
            text.contains("\r\nAllow: POST\r\nConnection: keep-alive\r\n\r\n{"),
            "{text}"
        );
        let len = out.len();
        head_only(&mut out);
        assert!(out.ends_with(b"\r\n\r\n") && out.len() < len);
        assert!(String::from_utf8_lossy(&out).contains("Content-Length: "));
    }

    #[test]
    fn reasons() {
        for (status, want) in [
            (100, "Continue"),
            (200, "OK"),
            (400, "Bad Request"),
            (405, "Method Not Allowed"),
            (411, "Length Required"),
            (413, "Content Too Large"),
            (414, "URI Too Long"),
            (417, "Expectation Failed"),
            (431, "Request Header Fields Too Large"),
            (505, "HTTP Version Not Supported"),
            (418, "Client Error"),
        ] {
            assert_eq!(reason(status), want);
        }
        assert_eq!(CONTINUE, b"HTTP/1.1 100 Continue\r\n\r\n");
    }
}
