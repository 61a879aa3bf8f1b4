//! Idempotent sends: `/p` and `/gp` with a `cmsgid` store a retry of the
//! same (appid, fromid, cmsgid) only once, also across a `kill -9` of the
//! server, so a client whose connection broke mid-send can retry blindly.

mod common;

use common::*;
use serde_json::{json, Value};

common::backend_tests!(
    a_retried_send_is_stored_once,
    a_retried_group_send_is_stored_once_per_member,
    a_cmsgid_names_one_message_of_its_sender,
    cmsgids_of_1_to_128_bytes,
    a_retry_after_kill_9_is_not_a_duplicate,
);

/// `body` with a `cmsgid` field.
fn with_cmsgid(mut body: Value, cmsgid: &str) -> Value {
    body["cmsgid"] = json!(cmsgid);
    body
}

fn a_retried_send_is_stored_once(backend: Backend) {
    let server = Server::start(backend, Opts::default());
    let api = server.api();
    let (alice, bob, carol) = (
        api.user("app", "alice"),
        api.user("app", "bob"),
        api.user("app", "carol"),
    );
    let mut stream = api.stream(&bob, 1);
    for _ in 0..3 {
        check_ok(&api.ok(
            "/p",
            &with_cmsgid(send_body(&alice, bob.uid, "once"), "c-1"),
        ));
    }
    // Another cmsgid is another send; so is the same cmsgid from another sender.
    check_ok(&api.ok(
        "/p",
        &with_cmsgid(send_body(&alice, bob.uid, "twice"), "c-2"),
    ));
    check_ok(&api.ok(
        "/p",
        &with_cmsgid(send_body(&carol, bob.uid, "carol"), "c-1"),
    ));
    let want = vec![
        Msg::single(&alice, bob.uid, 1, "once"),
        Msg::single(&alice, bob.uid, 2, "twice"),
        Msg::single(&carol, bob.uid, 3, "carol"),
    ];
    assert_eq!(stream.collect(3, WAIT), want);
    stream.expect_quiet(QUIET);
    assert_eq!(api.pull(&bob).msgids(), [1, 2, 3]);
}

fn a_retried_group_send_is_stored_once_per_member(backend: Backend) {
    let server = Server::start(backend, Opts::default());
    let api = server.api();
    let (alice, bob) = (api.user("app", "alice"), api.user("app", "bob"));
    let gid = api.group(&alice, "team", &[bob.uid]);
    for _ in 0..2 {
        check_ok(&api.ok("/gp", &with_cmsgid(gsend_body(&alice, gid, "hello"), "g-1")));
    }
    for member in [&alice, &bob] {
        assert_eq!(api.pull(member).contents(), ["hello"], "{}", member.name);
    }
}

/// The key is (appid, fromid, cmsgid) in both stores: the same cmsgid
/// with another receiver, kind or content is refused with 409 and stores
/// nothing, while a retry of the same message is still `ok`.
fn a_cmsgid_names_one_message_of_its_sender(backend: Backend) {
    let server = Server::start(backend, Opts::default());
    let api = server.api();
    let (alice, bob, carol) = (
        api.user("app", "alice"),
        api.user("app", "bob"),
        api.user("app", "carol"),
    );
    let gid = api.group(&alice, "team", &[bob.uid]);
    check_ok(&api.ok("/p", &with_cmsgid(send_body(&alice, bob.uid, "hi"), "k1")));
    let reused = [
        ("/p", send_body(&alice, carol.uid, "hi")),
        ("/p", send_body(&alice, bob.uid, "hi!")),
        ("/gp", gsend_body(&alice, gid, "hi")),
    ];
    for (path, body) in reused {
        let answer = api.post(path, &with_cmsgid(body.clone(), "k1"));
        expect_error(answer.clone(), 409);
        assert_eq!(
            answer.1["msg"], "cmsgid reused for a different message",
            "{path} {body}"
        );
    }
    // The retry of the first message is still recognised.
    check_ok(&api.ok("/p", &with_cmsgid(send_body(&alice, bob.uid, "hi"), "k1")));
    assert_eq!(api.pull(&bob).contents(), ["hi"]);
    assert!(
        api.pull(&carol).msgids().is_empty(),
        "carol got the reused cmsgid"
    );
    assert!(
        api.pull(&alice).msgids().is_empty(),
        "the group got the reused cmsgid"
    );
}

/// Empty, longer than 128 bytes or not a string: 400, nothing stored;
/// exactly 128 bytes (the longest) works.
fn cmsgids_of_1_to_128_bytes(backend: Backend) {
    let server = Server::start(backend, Opts::default());
    let api = server.api();
    let (alice, bob) = (api.user("app", "alice"), api.user("app", "bob"));
    for bad in [json!(""), json!("x".repeat(129)), json!([1])] {
        let mut body = send_body(&alice, bob.uid, "x");
        body["cmsgid"] = bad;
        expect_error(api.post("/p", &body), 400);
    }
    assert!(api.pull(&bob).msgids().is_empty());
    let longest = with_cmsgid(send_body(&alice, bob.uid, "y"), &"y".repeat(128));
    for _ in 0..2 {
        check_ok(&api.ok("/p", &longest));
    }
    assert_eq!(api.pull(&bob).contents(), ["y"]);
}

fn a_retry_after_kill_9_is_not_a_duplicate(backend: Backend) {
    let mut server = Server::start(backend, Opts::default());
    let api = server.api();
    let (alice, bob) = (api.user("app", "alice"), api.user("app", "bob"));
    let send = with_cmsgid(send_body(&alice, bob.uid, "survives"), "k-9");
    check_ok(&api.ok("/p", &send));
    server.kill9();
    server.restart_same_dir();
    let api = server.api();
    check_ok(&api.ok("/p", &send));
    // What the cmsgid names survives too.
    let other = with_cmsgid(send_body(&alice, bob.uid, "other"), "k-9");
    expect_error(api.post("/p", &other), 409);
    let pulled = api.pull(&bob);
    assert_eq!(pulled.msgids(), [1]);
    assert_eq!(pulled.contents(), ["survives"]);
}
