//! What threads send each other: the one leaf module every layer may import.
//!
//! Reactors, workers, the router and the Redis feed talk through crossbeam
//! channels, each bounded by its sender; the types that travel on them live here, so no layer
//! has to import another's internals to name a message (the reactor's
//! mailbox used to import the API, which imported the router, which
//! imported the mailbox). This module depends only on the store's data
//! types and the delivery layer's frame encoding, never on `net`, `api`,
//! `router` or `worker`.

use std::sync::Arc;

use crate::delivery::frame::LiveMsg;
use crate::delivery::wire::Kind;
use crate::store::{MsgId, Page, Uid};

/// A small number naming an appid inside this process (interned once by the
/// router).
pub type AppKey = u32;

/// Names one connection of one reactor; `gen` tells a reused slab slot from
/// the connection a message was meant for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub slot: u32,
    pub gen: u32,
}

/// One subscription: a connection on a reactor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubKey {
    pub core: u16,
    pub conn: ConnRef,
}

/// One live message for one subscriber.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub conn: ConnRef,
    pub msgid: MsgId,
}

/// What a subscribing connection (stream or held poll) listens for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sub {
    pub app: AppKey,
    pub uid: Uid,
    /// The next msgid this connection owes its client.
    pub next: MsgId,
}

/// An accepted subscription, as a worker hands it to the reactor.
#[derive(Debug)]
pub struct Subscribed {
    pub sub: Sub,
    /// A stream (chunked, or close-delimited for HTTP/1.0; SSE; WebSocket)
    /// or a held poll.
    pub kind: Kind,
    /// The first page of what is stored from `sub.next` on.
    pub page: Page,
    /// Unix seconds when the token it was opened with expires: the
    /// subscription ends then with a `401` frame.
    pub expires_at: u64,
    /// Header lines its response heads carry: CORS lines (a page on an
    /// allowed origin subscribed), a WebSocket's `Sec-WebSocket-Accept`.
    pub head_lines: Option<Box<[u8]>>,
}

/// A worker's answer, carried back to the connection's reactor.
pub enum Reply {
    /// A complete HTTP response; the connection closes after it unless
    /// `keep_alive`.
    Http { bytes: Vec<u8>, keep_alive: bool },
    /// A stream or poll is subscribed: the reactor hands the connection to
    /// a subscriber, which writes the stream's head and the first page (a
    /// poll with nothing to answer is held until a message or its timeout).
    Subscribed(Subscribed),
    /// A stream that ends as soon as it starts with this frame (401, 429).
    StreamRefused {
        frame: &'static [u8],
        kind: Kind,
        keep_alive: bool,
        /// Header lines for its head (as [`Subscribed::head_lines`]).
        head_lines: Option<Box<[u8]>>,
    },
}

/// What other threads send a reactor.
pub enum CoreMsg {
    /// A worker's answer to a connection's request.
    Reply { conn: ConnRef, reply: Reply },
    /// A live message for some of this reactor's subscribers.
    Deliver { msg: Arc<LiveMsg>, to: Vec<Target> },
    /// A page of stored messages a subscriber asked for. `None`: the store
    /// could not be read; the subscription ends and the client resumes.
    Page { conn: ConnRef, page: Option<Page> },
    /// The token a subscription was opened with was logged out: it ends
    /// with a `401` frame. The router has already forgotten it.
    Revoke { conn: ConnRef },
    /// Stop accepting, answer everyone, drain, exit the loop.
    Shutdown,
}
