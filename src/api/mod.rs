//! The haoshuo API: what each endpoint does, run on worker threads.
//!
//! A reactor hands a complete request ([`Request`]) to the worker pool; a
//! worker calls [`Api::handle`], which decodes the fields, checks the token,
//! talks to the store and the router, and returns a [`Reply`] for the reactor
//! that owns the connection. Nothing here touches a socket.

pub mod codec;
mod demo;
pub mod error;
mod handlers;
pub mod limits;

pub use handlers::{endpoint_index, Answering, Api, Deliver, Handled, Held, Options, ENDPOINTS};

use std::net::IpAddr;
use std::time::Instant;

use crate::http::request::Head;

/// Whether the endpoint at `path` needs the client's address (its rate
/// limits are per address): the reactor asks the socket only for these.
pub fn needs_peer(path: &[u8]) -> bool {
    matches!(path, b"/login" | b"/re")
}

/// One complete request, owned, on its way to a worker.
pub struct Request {
    /// The head and body bytes as they arrived.
    pub raw: Vec<u8>,
    /// Offsets into `raw`.
    pub head: Head,
    /// Came in on the admin listener: only `/admin/...` paths are served.
    pub admin: bool,
    /// The client's address, where [`needs_peer`] says it matters.
    pub peer: Option<IpAddr>,
    /// When it was read: the start of the reactor's loop turn that read
    /// it (one clock read a turn for all its requests). Its latency is
    /// counted from here, and its rate limits take their tokens at it.
    pub at: Instant,
}

impl Request {
    /// A request whose head and whole body are in `raw`, as a reactor
    /// hands it on; `None` if `raw` does not start with a whole, valid
    /// head. (A reactor parses the head as bytes arrive; this is for what
    /// builds requests whole: tests and benchmarks.)
    pub fn parse(raw: Vec<u8>, admin: bool) -> Option<Request> {
        let head = crate::http::request::parse_head(&raw, 1 << 16).ok()??;
        Some(Request {
            raw,
            head,
            admin,
            peer: None,
            at: Instant::now(),
        })
    }

    pub fn body(&self) -> &[u8] {
        let start = self.head.head_len;
        &self.raw[start..start + self.head.content_length]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reactor asks the socket for the client's address (a system call)
    /// only for the endpoints limited per address, not for every request.
    #[test]
    fn only_the_endpoints_limited_per_address_need_the_peer() {
        assert!(needs_peer(b"/login"));
        assert!(needs_peer(b"/re"));
        for path in [
            &b"/p"[..],
            b"/cget/stream",
            b"/healthz",
            b"/login/",
            b"/",
            b"",
        ] {
            assert!(!needs_peer(path), "{}", String::from_utf8_lossy(path));
        }
    }
}
