//! Heap allocations per request on the hot paths, counted and pinned.
//!
//! The real [`Api`] with its router, a reactor's mailbox and the embedded
//! store (in a temporary dir, `--fsync everysec`), called in this thread as
//! a worker calls it; this test binary's allocator counts what the calling
//! thread allocates. A `/p` that starts to allocate more fails here with
//! the count, so a new allocation on the request path is a decision, not
//! an accident. Where a count goes down, lower its pin.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::Arc;

use haoshuo::api::{Answering, Api, Handled, Held, Options, Request};
use haoshuo::bus::{ConnRef, Reply, SubKey};
use haoshuo::http::buffer;
use haoshuo::net::mailbox::Mailbox;
use haoshuo::router::Router;
use haoshuo::store::embedded::{self, EmbeddedStore};
use mio::{Poll, Token, Waker};

struct Counting;

thread_local! {
    /// Allocations made by this thread (reallocations count: each may move).
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    /// Bytes those allocations asked for (a reallocation: its new size).
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn count(size: usize) {
    // `try_with`: a thread being torn down may still free and allocate.
    let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
    let _ = BYTES.try_with(|n| n.set(n.get() + size as u64));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations `f` makes in this thread.
fn allocations<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = ALLOCS.with(Cell::get);
    let out = f();
    (ALLOCS.with(Cell::get) - before, out)
}

/// Bytes `f` allocates in this thread.
fn bytes_allocated<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = BYTES.with(Cell::get);
    let out = f();
    (BYTES.with(Cell::get) - before, out)
}

/// A request as a reactor hands it on: head parsed, body read, in a
/// buffer of the reactor's pool.
fn request(path: &str, body: &str, admin: bool) -> Request {
    typed_request(path, "application/json", body, admin)
}

/// The same JSON object as the form field `haoshuo`, URL-encoded (as the
/// original's clients and wrk's `p.lua` send it).
fn form_request(path: &str, json: &str) -> Request {
    let mut body = String::from("haoshuo=");
    for b in json.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => body.push(b as char),
            b' ' => body.push('+'),
            _ => body.push_str(&format!("%{b:02X}")),
        }
    }
    typed_request(path, "application/x-www-form-urlencoded", &body, false)
}

fn typed_request(path: &str, content_type: &str, body: &str, admin: bool) -> Request {
    let raw = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    // In a buffer of a reactor's pool, as a reactor hands it on.
    let raw = buffer::Pool::default().copy(&raw);
    Request::parse(raw, admin).expect("a whole, valid request")
}

fn ok_body(reply: &Reply) -> serde_json::Value {
    let Reply::Http { bytes, .. } = reply else {
        panic!("not an HTTP answer");
    };
    let text = String::from_utf8_lossy(bytes);
    let body = text.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The most allocations one `/p` (a single-chat message, JSON body, its
/// sender's token already seen, the default `--send-rate`; the same sent
/// as a URL-encoded form) may make, and one `/pull` (of four messages):
/// what they make now (`cargo test --test allocations -- --nocapture`).
/// Session 5 traced 22 and 12; session 7 decodes the body without a
/// `serde_json::Value` and drops the scratch around it; session 8 builds
/// the HTTP answer in the buffer of the request the worker ran before
/// (`http::buffer`); session 9 checks the token in the store, in place
/// (`Store::check_token`), instead of copying it out (2 each). What is
/// left, each for a reason:
///
/// `/p`, 2 (as JSON or as a form):
/// - 1 the content, an `Arc<str>` the store and every delivery share;
/// - 1 the msgids the store answers (`Store::append`'s `Vec`).
///
/// `/pull`, 2:
/// - 1 the page the store reads (`Page::msgs`);
/// - 1 the answer's body (`frame::pull_body`), copied into the HTTP answer.
const P_MAX: u64 = 2;
/// A `/p` run by a reactor (the embedded store): held, then committed as a
/// group of one at the end of the loop turn. 1, the content: the held
/// copy of its appid and receivers, the group, the msgids and the store's
/// outcomes all live in buffers kept from turn to turn (`api::Held`,
/// `store::Outcomes`, the store's own), grown by the warm-up send. (9
/// until session 13: on a machine shared with the clients, allocations
/// a turn's sends held until its end overflowed malloc's per-thread cache
/// and cost 7 % of the server's CPU per `/p`.)
const P_HELD_MAX: u64 = 1;
const PULL_MAX: u64 = 2;

#[test]
fn a_send_and_a_pull_allocate_no_more_than_pinned() {
    let dir = tempfile::tempdir().expect("a data dir");
    let mut opts = embedded::Options::new(dir.path());
    opts.fsync = embedded::Fsync::EverySec;
    let store = Arc::new(EmbeddedStore::open(opts).expect("the store"));
    let poll = Poll::new().expect("a poll");
    let waker = Waker::new(poll.registry(), Token(1)).expect("a waker");
    let (mailbox, _inbox) = Mailbox::new(waker);
    let router = Arc::new(Router::new(vec![mailbox], 16, 1000));
    // The default `--send-rate` (100): a sender's rate limit is on the
    // path of every send the server answers.
    let opts = Options {
        send_rate: 100,
        ..Options::unlimited("allocs")
    };
    let api = Api::new(store, router, opts);
    let origin = SubKey {
        core: 0,
        conn: ConnRef { slot: 0, gen: 0 },
    };
    // As a worker runs a job: once answered, the request's buffer is
    // given back to the thread for its next answer.
    let run = |req: Request| {
        let reply = api.handle(origin, &req);
        buffer::give_back(req.raw);
        reply
    };
    let made = ok_body(&run(request(
        "/admin/users",
        r#"{"appid":"a","prefix":"u","count":2}"#,
        true,
    )));
    let users = made["users"].as_array().expect("users");
    let (alice, bob) = (&users[0], &users[1]);
    let json = |content: &str| {
        serde_json::json!({"appid": "a", "fromid": alice["uid"], "token": alice["token"],
            "datatype": 1, "toid": bob["uid"], "content": content})
        .to_string()
    };
    // The first call of each kind fills caches and grows buffers for good.
    ok_body(&run(request("/p", &json("warm"), false)));
    let req = request("/p", &json("hello"), false);
    let (p, reply) = allocations(|| run(req));
    assert_eq!(ok_body(&reply)["type"], "ok");
    // A form's field is decoded into a buffer the thread keeps (grown by
    // a longer body first).
    ok_body(&run(form_request("/p", &json("form warm-up"))));
    let req = form_request("/p", &json("form hello"));
    let (p_form, reply) = allocations(|| run(req));
    assert_eq!(ok_body(&reply)["type"], "ok");

    let pull = request(
        "/pull",
        &serde_json::json!({"appid": "a", "uid": bob["uid"], "token": bob["token"]}).to_string(),
        false,
    );
    let (pulled, reply) = allocations(|| run(pull));
    let msgs = &ok_body(&reply)["msgs"];
    let contents: Vec<_> = msgs
        .as_array()
        .expect("msgs")
        .iter()
        .map(|m| m["content"].as_str().expect("a content"))
        .collect();
    assert_eq!(contents, ["warm", "hello", "form warm-up", "form hello"]);

    // As a reactor runs a send: held, then committed as a group (here of
    // one) at the end of its loop turn, which gives its answer.
    let held = Held::default();
    let mut replies = Vec::with_capacity(1);
    let mut run_held = |req: Request| {
        let later = Answering::Held(&held);
        let handled = api.handle_then(origin, &req, Some(later));
        assert!(matches!(handled, Handled::Later));
        api.commit_held(&held, &mut |reply| replies.push(reply));
        buffer::give_back(req.raw);
        replies.pop().expect("the held send's answer")
    };
    run_held(request("/p", &json("held warm-up"), false));
    let req = request("/p", &json("held hello"), false);
    let (p_held, reply) = allocations(|| run_held(req));
    assert_eq!(ok_body(&reply)["type"], "ok");

    println!(
        "allocations: /p {p} (a form's {p_form}; held and committed alone {p_held}), \
         /pull of four messages {pulled}"
    );
    assert!(
        p_held <= P_HELD_MAX,
        "a held /p allocated {p_held} times (pinned at {P_HELD_MAX}): what is new on its path?"
    );
    for (p, what) in [(p, "a /p"), (p_form, "a form's /p")] {
        assert!(
            p <= P_MAX,
            "{what} allocated {p} times (pinned at {P_MAX}): what is new on its path?"
        );
    }
    assert!(
        pulled <= PULL_MAX,
        "a /pull allocated {pulled} times (pinned at {PULL_MAX})"
    );
}

/// The job queue and a reactor's inbox take memory for what waits in them,
/// not for their capacity: a server process started for a few thousand
/// streams (`--processes`, dozens per box) must not pay megabytes up front.
/// As array channels they took 8 MiB (64 Ki jobs of 128 bytes) and 2 MiB
/// (16 Ki messages) in every process, idle or not.
#[test]
fn the_queues_take_no_memory_for_their_capacity() {
    let (queue_bytes, queue) =
        bytes_allocated(|| haoshuo::worker::queue(haoshuo::worker::QUEUE_CAPACITY));
    assert!(
        queue_bytes < 16 * 1024,
        "the job queue allocated {queue_bytes} bytes up front"
    );
    let poll = Poll::new().expect("a poller");
    let waker = Waker::new(poll.registry(), Token(0)).expect("a waker");
    let (inbox_bytes, inbox) = bytes_allocated(|| Mailbox::new(waker));
    assert!(
        inbox_bytes < 16 * 1024,
        "a reactor's inbox allocated {inbox_bytes} bytes up front"
    );
    drop((queue, inbox));
}
