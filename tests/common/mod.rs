//! Shared harness of the haoshuo integration tests, split by role:
//!
//! * `process.rs`: [`Server`] runs the real `haoshuo` binary on
//!   `127.0.0.1:0` with a temporary data directory, learns the bound port
//!   from the start line it prints, keeps draining its output (shown when a
//!   test fails), and kills it when dropped; [`Opts`] is its command line.
//!   [`Server::kill9`], [`Server::term`] and [`Server::restart_same_dir`]
//!   drive the durability tests. [`Backend`] names the store the server runs
//!   on; [`backend_tests!`] (here, for macro scoping) generates one `#[test]`
//!   per backend for each test function.
//! * `http.rs`: [`Conn`] is a small HTTP/1.1 client over
//!   `std::net::TcpStream` that keeps partial input across read timeouts, so
//!   waiting never loses bytes; response and chunk decoding; [`post`] /
//!   [`post_json`] send the two request encodings.
//! * `api.rs`: [`Api`] wraps every endpoint in a typed helper; the `*_body`
//!   builders; the `check_*` functions and [`Msg::parse`] check each
//!   answer's JSON shape exactly as `API.md` states it (field names and JSON
//!   types).
//! * `frames.rs`: [`StreamClient`] reads `/cget/stream`, [`poll`] /
//!   [`PendingPoll`] do `/cget/poll`; [`check_data_frame`] and the fixed
//!   frames.
//! * `ws.rs`: [`WsClient`] runs Python's `websockets` client
//!   (`ws_client.py`) against `/cget/ws`; [`RawWs`] speaks WebSocket frames
//!   by hand, for what no library sends.
//! * `redis.rs`: [`RedisServer`], a real `redis-server` per test server.
//! * `proxy.rs`: [`Proxy`], nginx or HAProxy in front of a server.
//! * `browser.rs`: [`Browser`], headless Chromium driven over the DevTools
//!   protocol (`cdp.py`); [`OnePage`], a second web origin serving one page.
//!
//! Everything is re-exported here, so a test file needs only
//! `use common::*;`.
//!
//! Nothing here sleeps to let the server "catch up": every wait reads with a
//! deadline and fails with a clear message when it passes.
#![allow(dead_code)] // every test binary uses its own subset of the harness

mod api;
mod frames;
mod http;
mod process;
// A test binary that uses nothing of a file would warn about its glob.
#[allow(unused_imports)]
pub use api::*;
#[allow(unused_imports)]
pub use frames::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use process::*;

mod cluster;
mod redis;
mod sentinel;
#[allow(unused_imports)] // the cluster tests only
pub use cluster::RedisCluster;
#[allow(unused_imports)] // only tests/overload.rs signals a process by pid
pub use redis::signal;
#[allow(unused_imports)] // only tests/cluster.rs names the spy's type
pub use redis::{PubSubSpy, RedisServer};
#[allow(unused_imports)] // the Sentinel tests only
pub use sentinel::RedisSentinels;
mod ws;
#[allow(unused_imports)]
pub use ws::*;
mod browser;
#[allow(unused_imports)] // only tests/browser.rs drives a browser
pub use browser::{Browser, OnePage, CHROMIUM};
mod proxy;
#[allow(unused_imports)] // only tests/proxies.rs and tests/docs.rs run proxies
pub use proxy::{free_port, wait_ready, Proxy, ProxyKind};

use std::time::{Duration, Instant};

/// How long to wait for anything that should happen promptly (an answer, a
/// pushed message, a heartbeat due within a second or two).
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for something that must NOT happen (a held poll that
/// must not answer yet, a stream that must stay quiet).
pub const QUIET: Duration = Duration::from_millis(300);

/// `backend_tests!(a, b, c);` generates, for every backend, a module (named
/// after the backend) holding `#[test] fn a()` calling `a(Backend::X)`, etc.
/// The list of backends is the bracketed list in the first arm;
/// `backend_tests!(embedded_and_redis: a, b)` leaves out the cluster.
// Not every test file runs on every backend (tests/faults.rs is Redis only).
#[allow(unused_macros)]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        $crate::common::backend_tests!(@each [embedded Embedded, redis Redis, cluster Cluster] $($name),+);
    };
    // Not on the Redis Cluster: tests that stop, pause or roll back their
    // one redis-server, and tests whose every run is costly (a browser
    // each) and check nothing a cluster does differently.
    (embedded_and_redis: $($name:ident),+ $(,)?) => {
        $crate::common::backend_tests!(@each [embedded Embedded, redis Redis] $($name),+);
    };
    (@each [] $($name:ident),+) => {};
    (@each [$module:ident $variant:ident $(, $rest_module:ident $rest_variant:ident)*]
        $($name:ident),+) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::common::Backend::$variant);
                }
            )+
        }
        $crate::common::backend_tests!(@each [$($rest_module $rest_variant),*] $($name),+);
    };
}
#[allow(unused_imports)]
pub(crate) use backend_tests;

/// Polls `done` until it holds, or fails the test after `timeout`: for
/// state that changes on another process's own timers (a Redis Cluster's
/// gossip, a Sentinel's checks), with nothing to block on.
pub fn poll_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long is left until `deadline` (zero once it passed).
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
