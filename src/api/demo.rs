//! The demo chat page (`--demo`): one HTML file with its script inline,
//! built into the binary, served at `GET /demo` on the API listener. It
//! only calls the public API from the browser (same origin, so no CORS);
//! the server knows nothing about it beyond this answer.

use crate::http::response::write_response_with;

/// The page: no build step, no external script, style or font.
const PAGE: &str = include_str!("demo.html");

/// What the page may load and connect to: its own inline script and style,
/// and the API on its own origin (`'self'` covers `ws://` to it too).
const HEADERS: &[u8] = b"Content-Security-Policy: default-src 'none'; \
script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'\r\n\
Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n";

/// The whole `200` answer to `GET /demo`.
pub fn response(keep_alive: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(PAGE.len() + 512);
    write_response_with(
        &mut out,
        200,
        "text/html; charset=utf-8",
        PAGE.as_bytes(),
        keep_alive,
        HEADERS,
    );
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_is_self_contained() {
        let page = super::PAGE;
        assert!(page.starts_with("<!doctype html>"));
        // Nothing fetched from elsewhere: no src/href to another host.
        for needle in [
            "src=\"http",
            "href=\"http",
            "src=\"//",
            "href=\"//",
            "@import",
        ] {
            assert!(!page.contains(needle), "{needle} in demo.html");
        }
        let answer = String::from_utf8(super::response(true)).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("Content-Type: text/html; charset=utf-8\r\n"));
        assert!(answer.contains(&format!("Content-Length: {}\r\n", page.len())));
    }
}
