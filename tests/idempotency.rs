//! Idempotent sends: `/p` and `/gp` with a `cmsgid` store a retry of the
//! same (appid, fromid, cmsgid) only once, also across a `kill -9` of the
//! server, so a client whose connection broke mid-send can retry blindly.

mod common;

use common::*;
use serde_json::{json, Value};

common::backend_tests!(
    a_retried_send_is_stored_once,
    a_retried_group_send_is_stored_once_per_member,
    bad_cmsgids_are_400,
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

fn bad_cmsgids_are_400(backend: Backend) {
    let server = Server::start(backend, Opts::default());
    let api = server.api();
    let (alice, bob) = (api.user("app", "alice"), api.user("app", "bob"));
    for bad in [json!(""), json!("x".repeat(129)), json!([1])] {
        let mut body = send_body(&alice, bob.uid, "x");
        body["cmsgid"] = bad;
        expect_error(api.post("/p", &body), 400);
    }
    assert!(api.pull(&bob).msgids().is_empty());
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
    let pulled = api.pull(&bob);
    assert_eq!(pulled.msgids(), [1]);
    assert_eq!(pulled.contents(), ["survives"]);
}
