//! The user-space cost of a `/p` on the embedded store, as a reactor runs
//! it: the form body decoded, the token checked, the send held, then
//! committed with the others of its loop turn (groups of 16, as
//! `HELD_MAX`), published and answered. No socket: what is left of a
//! `/p`'s server CPU under wrk (`loadtest/bench/request_path.sh`) is the
//! kernel's, so this is the part a change to the request path can move,
//! measured without the noise of two processes sharing two cores.
//!
//! The real [`Api`], router and [`EmbeddedStore`] (in a temporary dir,
//! `--fsync everysec`: its log is written, one `write(2)` per group, and
//! never compacted; metered, as the server runs it), 1000
//! users sending to the next one, each request a form body as wrk's
//! `p.lua` sends it. Throughput is requests.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use haoshuo::api::{Answering, Api, Handled, Held, Options, Request};
use haoshuo::bus::{ConnRef, Reply, SubKey};
use haoshuo::http::buffer;
use haoshuo::metrics::store::Metered;
use haoshuo::metrics::Metrics;
use haoshuo::net::mailbox::Mailbox;
use haoshuo::router::Router;
use haoshuo::store::embedded::{self, EmbeddedStore};
use mio::{Poll, Token, Waker};

/// Users, as request_path.sh provisions.
const USERS: usize = 1000;
/// Sends a reactor commits as one group (`HELD_MAX`).
const GROUP: usize = 16;

/// `POST path` with `body` as a reactor hands it on (from the admin
/// listener with `admin`).
fn request(path: &str, content_type: &str, body: &str, admin: bool) -> Request {
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    Request::parse(raw, admin).expect("a whole, valid request")
}

/// The JSON as the form field `haoshuo`, URL-encoded, as `p.lua` sends it.
fn form(json: &str) -> String {
    let mut body = String::from("haoshuo=");
    for b in json.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                body.push(b as char)
            }
            _ => body.push_str(&format!("%{b:02X}")),
        }
    }
    body
}

fn body_of(reply: &Reply) -> serde_json::Value {
    let Reply::Http { bytes, .. } = reply else {
        panic!("not an HTTP answer");
    };
    let text = String::from_utf8_lossy(bytes);
    let body = text.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn bench_held_p(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a data dir");
    let mut opts = embedded::Options::new(dir.path());
    opts.fsync = embedded::Fsync::EverySec;
    // No compaction beside the bench (it has its own thread and would only
    // add noise); the server's inbox cap bounds the memory the inboxes take.
    opts.compact_min_bytes = u64::MAX;
    opts.inbox_cap = 10_000;
    let store = Arc::new(EmbeddedStore::open(opts).expect("the store"));
    // Metered, as the server runs it: every store call is counted and timed.
    let metrics = Arc::new(Metrics::default());
    let store = Arc::new(Metered::new(store, metrics.clone()));
    let poll = Poll::new().expect("a poll");
    let waker = Waker::new(poll.registry(), Token(1)).expect("a waker");
    let (mailbox, _inbox) = Mailbox::new(waker);
    let router = Arc::new(Router::new(vec![mailbox], 16, 1000));
    let api = Api::new(store, router, Options::unlimited("bench")).with_metrics(metrics);
    let origin = SubKey {
        core: 0,
        conn: ConnRef { slot: 0, gen: 0 },
    };
    let made = api.handle(
        origin,
        &request(
            "/admin/users",
            "application/json",
            &format!(r#"{{"appid":"bench","prefix":"u","count":{USERS}}}"#),
            true,
        ),
    );
    let made = body_of(&made);
    let users = made["users"].as_array().expect("users");
    let sends: Vec<String> = (0..USERS)
        .map(|k| {
            let (from, to) = (&users[k], &users[(k + 1) % USERS]);
            form(
                &serde_json::json!({"appid": "bench", "fromid": from["uid"],
                    "datatype": 1, "toid": to["uid"], "content": "wrk bench message",
                    "token": from["token"], "restart": "all"})
                .to_string(),
            )
        })
        .collect();
    let reqs: Vec<Request> = (sends.iter())
        .map(|b| request("/p", "application/x-www-form-urlencoded", b, false))
        .collect();

    let held = Held::default();
    let mut replies: Vec<Reply> = Vec::with_capacity(GROUP);
    let mut next = 0;
    let mut group = |replies: &mut Vec<Reply>| {
        for _ in 0..GROUP {
            let req = &reqs[next];
            next = (next + 1) % reqs.len();
            let handled = api.handle_then(origin, req, Some(Answering::Held(&held)));
            assert!(matches!(handled, Handled::Later), "a send not held");
        }
        api.commit_held(&held, &mut |reply| replies.push(reply));
        for reply in replies.drain(..) {
            let Reply::Http { bytes, .. } = reply else {
                panic!("not an HTTP answer");
            };
            // As a reactor does once it wrote an answer.
            buffer::give_back(black_box(bytes));
        }
    };
    group(&mut replies);

    let mut g = c.benchmark_group("api");
    g.throughput(Throughput::Elements(GROUP as u64));
    g.bench_function("held_p_form_group_of_16", |b| {
        b.iter(|| group(&mut replies))
    });
    g.finish();
}

criterion_group!(benches, bench_held_p);
criterion_main!(benches);
