//! Delivery: what a subscriber (stream or held poll) is owed and how it
//! goes on the wire, without any I/O.
//!
//! `subscriber` is the protocol as a state machine (live messages, pages
//! from the store, flow control, timers, revocation, shutdown); `frame`
//! encodes the JSON frames; `wire` wraps them for a chunked stream, an
//! HTTP/1.0 stream or a poll answer. The reactor (`crate::net`) feeds the
//! subscriber events and moves the bytes it hands back.

pub mod frame;
pub mod subscriber;
pub mod wire;
