//! haoshuo: an IM push engine.
//!
//! Thread-per-core mio reactors ([`net`]) speak our own HTTP/1.1 ([`http`]),
//! hand API calls to a worker pool ([`worker`]) that runs the endpoints
//! ([`api`]) against a [`store`], and the [`router`] carries each committed
//! message to the reactor that owns each subscriber's connection. See
//! `docs/architecture.md` for where data flows.

// First: its macros (`error!`, `warn!`, ...) are for every module below.
#[macro_use]
pub mod log;
pub mod api;
pub mod auth;
pub mod bus;
pub mod config;
pub mod delivery;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod presence;
pub mod router;
pub mod server;
pub mod store;
pub mod supervisor;
pub mod sync;
pub mod worker;
