//! HTTP/1.1 protocol layer: request-head parsing, response and chunk framing,
//! URL-encoded field decoding, and WebSocket's handshake and framing. Everything here takes and returns bytes
//! and status enums; it must not touch sockets, timers or connection state,
//! and it must not print or log.

pub mod buffer;
pub mod chunked;
pub mod cors;
pub mod date;
pub mod query;
pub mod request;
pub mod response;
pub mod ws;
