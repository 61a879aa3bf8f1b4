//! Cross-origin requests (CORS): which web origins may call the API from a
//! browser (`--allow-origin`), the headers that say so, and the answer to a
//! preflight. Bytes in, bytes out, as the rest of this layer.

/// How long a browser may keep a preflight's answer.
const MAX_AGE_SECS: u32 = 600;
/// Request headers a page may send: a JSON body's type, and what
/// `EventSource` sends when it reconnects.
const ALLOW_HEADERS: &str = "Content-Type, Last-Event-ID";

/// The origins `--allow-origin` named; `*` for any.
#[derive(Clone, Debug, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<Box<str>>,
}

impl Cors {
    pub fn new(allowed: &[String]) -> Cors {
        Cors {
            any: allowed.iter().any(|o| o == "*"),
            origins: allowed
                .iter()
                .filter(|o| *o != "*")
                .map(|o| o.trim_end_matches('/').into())
                .collect(),
        }
    }

    /// Whether any origin is allowed (`--allow-origin` was given): without
    /// it a request's `Origin` need not even be looked for.
    pub fn enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    /// The header lines (each ending in CRLF) a response to a request with
    /// this `Origin` carries, or `None` if the origin may not read it (or
    /// the request is not cross-origin).
    pub fn headers(&self, origin: Option<&[u8]>) -> Option<Box<[u8]>> {
        let origin = origin?;
        let allowed = self.any || self.origins.iter().any(|o| o.as_bytes() == origin);
        if !allowed || origin.iter().any(|&b| b == b'\r' || b == b'\n') {
            return None;
        }
        // Echo the origin even under `*`: the answer then varies by it.
        let mut out = Vec::with_capacity(64 + origin.len());
        out.extend_from_slice(b"Access-Control-Allow-Origin: ");
        out.extend_from_slice(origin);
        out.extend_from_slice(b"\r\nVary: Origin\r\n");
        Some(out.into_boxed_slice())
    }
}

/// A preflight's answer: 204 with `headers` (from [`Cors::headers`]) and
/// what may be sent to the path, `methods` (e.g. `POST`).
pub fn preflight(headers: &[u8], methods: &str, keep_alive: bool) -> Vec<u8> {
    let mut extra = headers.to_vec();
    extra.extend_from_slice(
        format!(
            "Access-Control-Allow-Methods: {methods}, OPTIONS\r\n\
             Access-Control-Allow-Headers: {ALLOW_HEADERS}\r\n\
             Access-Control-Max-Age: {MAX_AGE_SECS}\r\n"
        )
        .as_bytes(),
    );
    let mut out = Vec::with_capacity(256);
    super::response::write_response_with(&mut out, 204, "", b"", keep_alive, &extra);
    out
}

/// `response` (a whole response, or a head) with `lines` added after its
/// status line; unchanged if it does not start with one.
pub fn with_headers(response: &[u8], lines: &[u8]) -> Option<Vec<u8>> {
    if !response.starts_with(b"HTTP/1.") {
        return None;
    }
    let eol = response.windows(2).position(|w| w == b"\r\n")? + 2;
    let mut out = Vec::with_capacity(response.len() + lines.len());
    out.extend_from_slice(&response[..eol]);
    out.extend_from_slice(lines);
    out.extend_from_slice(&response[eol..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_named_origins_get_headers() {
        let cors = Cors::new(&["https://app.example".into(), "http://b.example/".into()]);
        let lines = cors.headers(Some(b"https://app.example")).unwrap();
        assert_eq!(
            &*lines,
            b"Access-Control-Allow-Origin: https://app.example\r\nVary: Origin\r\n"
        );
        assert!(
            cors.headers(Some(b"http://b.example")).is_some(),
            "a trailing / is ignored"
        );
        assert!(cors.headers(Some(b"https://evil.example")).is_none());
        assert!(cors.headers(None).is_none(), "same-origin or not a browser");
        let any = Cors::new(&["*".into()]);
        assert!(any.headers(Some(b"https://whoever.example")).is_some());
        assert!(
            any.headers(Some(b"x\r\nSet-Cookie: a")).is_none(),
            "no header injection"
        );
        assert!(Cors::default()
            .headers(Some(b"https://app.example"))
            .is_none());
        assert!(!Cors::default().enabled() && cors.enabled() && any.enabled());
    }

    #[test]
    fn headers_go_after_the_status_line() {
        let r = b"HTTP/1.1 200 OK\r\nServer: haoshuo\r\n\r\n{}";
        let out = with_headers(r, b"A: b\r\n").unwrap();
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nA: b\r\nServer: haoshuo\r\n\r\n{}");
        assert_eq!(with_headers(b"5\r\nhello\r\n", b"A: b\r\n"), None);
    }

    #[test]
    fn a_preflight_is_a_204_with_what_may_be_sent() {
        let out = preflight(
            b"Access-Control-Allow-Origin: o\r\nVary: Origin\r\n",
            "POST",
            true,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 "), "{text}");
        for line in [
            "Access-Control-Allow-Origin: o\r\n",
            "Access-Control-Allow-Methods: POST, OPTIONS\r\n",
            "Access-Control-Allow-Headers: Content-Type, Last-Event-ID\r\n",
            "Access-Control-Max-Age: 600\r\n",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
        assert!(text.ends_with("\r\n\r\n"), "no body: {text}");
    }
}
