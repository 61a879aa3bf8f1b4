//! The haoshuo API: what each endpoint does, run on worker threads.
//!
//! A reactor hands a complete request ([`Request`]) to the worker pool; a
//! worker calls [`Api::handle`], which decodes the fields, checks the token,
//! talks to the store and the router, and returns a [`Reply`] for the reactor
//! that owns the connection. Nothing here touches a socket.

pub mod codec;
pub mod error;
pub mod frame;
mod handlers;

pub use handlers::{Api, Options};

use crate::http::request::Head;
use crate::router::AppKey;
use crate::store::{Message, MsgId, Uid};

/// One complete request, owned, on its way to a worker.
pub struct Request {
    /// The head and body bytes as they arrived.
    pub raw: Vec<u8>,
    /// Offsets into `raw`.
    pub head: Head,
    /// Came in on the admin listener: only `/admin/...` paths are served.
    pub admin: bool,
}

impl Request {
    pub fn body(&self) -> &[u8] {
        let start = self.head.head_len;
        &self.raw[start..start + self.head.content_length]
    }
}

/// What a subscribing connection (stream or held poll) listens for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sub {
    pub app: AppKey,
    pub uid: Uid,
    /// The next msgid this connection owes its client.
    pub next: MsgId,
}

/// A worker's answer, carried back to the connection's reactor.
pub enum Reply {
    /// A complete HTTP response; the connection closes after it unless
    /// `keep_alive`.
    Http { bytes: Vec<u8>, keep_alive: bool },
    /// A stream is open and subscribed: write the chunked head, then the
    /// stored messages from `backlog` (possibly empty); `more` says the
    /// backlog was cut at the page size and the reactor should ask again.
    Stream {
        sub: Sub,
        backlog: Vec<Message>,
        more: bool,
    },
    /// A stream that ends as soon as it starts with this frame (401, 429).
    StreamRefused {
        frame: &'static [u8],
        keep_alive: bool,
    },
    /// A long-poll is subscribed: the reactor answers at once from
    /// `backlog` (the stored messages from `sub.next` on) as a stream would
    /// send them, or holds the poll until a message arrives or the poll
    /// timeout passes.
    Poll {
        sub: Sub,
        backlog: Vec<Message>,
        keep_alive: bool,
    },
}
