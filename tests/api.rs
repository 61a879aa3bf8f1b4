//! The plain HTTP API of haoshuo (`/re`, `/gre`, `/login`, `/p`, `/gp`,
//! `/pull`, `/ack`, `/logout`): every success answer's exact shape, both
//! request encodings with numbers as numbers or numeric strings, every error
//! status of the contract with its `{"type":"error","code","msg"}` body,
//! appid isolation, ack semantics, logout, and HTTP/1.1 keep-alive,
//! pipelining and `Connection: close`.

mod common;

use common::*;
use serde_json::json;

common::backend_tests!(
    register_and_login_shapes,
    group_create_shape,
    send_pull_ack_shapes,
    group_message_reaches_every_member_including_sender,
    both_encodings_and_numeric_strings,
    form_encoding_round_trips_special_characters,
    malformed_requests_are_400,
    strings_up_to_their_limits,
    bad_tokens_are_401,
    non_member_is_403_and_unknowns_are_404,
    wrong_method_is_405,
    taken_username_is_409,
    oversized_body_is_413_before_the_body_is_sent,
    chunked_request_body_is_411,
    login_failures,
    appids_are_isolated,
    ack_then_pull_is_empty,
    ack_never_rewinds,
    pull_is_paged,
    logout_kills_the_token,
    keep_alive_pipelined_requests_answered_in_order,
    connection_close_is_honoured,
);

fn server(backend: Backend) -> Server {
    Server::start(backend, Opts::default())
}

fn register_and_login_shapes(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    let (status, v) = api.post("/re", &register_body("a", "alice", "secret"));
    assert_eq!(status, 200, "{v}");
    let alice = check_register(&v, "alice");
    let bob = api.register("a", "bob", "secret");
    assert_eq!((alice, bob), (1, 2), "uids of an app count from 1");

    let (status, v) = api.post("/login", &login_body("a", "alice", "secret"));
    assert_eq!(status, 200, "{v}");
    let (uid, token) = check_login(&v);
    assert_eq!(uid, alice);
    // The token works.
    let user = User {
        appid: "a".into(),
        name: "alice".into(),
        uid,
        token,
    };
    let empty = api.pull(&user);
    assert!(empty.msgs.is_empty());
    assert_eq!(empty.endid, 0, "a fresh inbox's endid is \"0\"");
}

fn group_create_shape(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    let owner = api.user("a", "owner");
    let m1 = api.user("a", "m1");
    let m2 = api.user("a", "m2");
    let (status, v) = api.post("/gre", &gre_body(&owner, "friends", &[m1.uid, m2.uid]));
    assert_eq!(status, 200, "{v}");
    let g1 = check_gre(&v, owner.uid, "friends");
    let g2 = api.group(&owner, "others", &[m1.uid]);
    assert_eq!((g1, g2), (1, 2), "gids of an app count from 1");
}

fn send_pull_ack_shapes(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");

    let (status, v) = api.post("/p", &send_body(&alice, bob.uid, "hello"));
    assert_eq!(status, 200, "{v}");
    check_ok(&v);
    api.send(&alice, bob.uid, "again");

    let (status, v) = api.post("/pull", &pull_body(&bob));
    assert_eq!(status, 200, "{v}");
    let pulled = check_pull(&v, bob.uid);
    assert_eq!(
        pulled.msgs,
        [
            Msg::single(&alice, bob.uid, 1, "hello"),
            Msg::single(&alice, bob.uid, 2, "again")
        ]
    );
    assert_eq!(pulled.endid, 2);

    let (status, v) = api.post("/ack", &ack_body(&bob, 2));
    assert_eq!(status, 200, "{v}");
    check_ok(&v);

    // The sender's own inbox is untouched by a single-chat message.
    assert!(api.pull(&alice).msgs.is_empty());
}

fn group_message_reaches_every_member_including_sender(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    let owner = api.user("a", "owner");
    let sender = api.user("a", "sender");
    let other = api.user("a", "other");
    // `other` already has one message, so its copy gets msgid 2.
    api.send(&owner, other.uid, "before");
    let gid = api.group(&owner, "g", &[sender.uid, other.uid]);

    let (status, v) = api.post("/gp", &gsend_body(&sender, gid, "to all"));
    assert_eq!(status, 200, "{v}");
    check_ok(&v);

    for (member, msgid) in [(&owner, 1), (&sender, 1), (&other, 2)] {
        let pulled = api.pull(member);
        let last = pulled.msgs.last().expect("a member got nothing");
        assert_eq!(
            *last,
            Msg::group(&sender, gid, msgid, "to all"),
            "copy of {}",
            member.name
        );
        assert_eq!(pulled.msgs.len() as u64, msgid);
    }
}

fn both_encodings_and_numeric_strings(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    let alice = api.user("a", "alice");

    let (status, v) = api.post_json("/re", &register_body("a", "bob", "pw"));
    assert_eq!(status, 200, "{v}");
    let bob_uid = check_register(&v, "bob");
    let (status, v) = api.post_json("/login", &login_body("a", "bob", "pw"));
    assert_eq!(status, 200, "{v}");
    let (uid, token) = check_login(&v);
    assert_eq!(uid, bob_uid);
    let bob = User {
        appid: "a".into(),
        name: "bob".into(),
        uid,
        token,
    };

    // Each encoding, with numbers as numbers and as numeric strings.
    let stringly = |v: &serde_json::Value| stringify_numbers(v);
    check_ok(&api.ok("/p", &stringly(&send_body(&alice, bob.uid, "form+strings"))));
    let sends = [
        send_body(&alice, bob.uid, "json+numbers"),
        stringly(&send_body(&alice, bob.uid, "json+strings")),
    ];
    for body in &sends {
        let (status, v) = api.post_json("/p", body);
        assert_eq!((status, v), (200, json!({"type": "ok"})));
    }

    let (status, v) = api.post_json("/pull", &stringly(&pull_body(&bob)));
    assert_eq!(status, 200, "{v}");
    let pulled = check_pull(&v, bob.uid);
    assert_eq!(
        pulled.msgs,
        ["form+strings", "json+numbers", "json+strings"]
            .iter()
            .zip(1..)
            .map(|(content, msgid)| Msg::single(&alice, bob.uid, msgid, content))
            .collect::<Vec<_>>()
    );

    check_ok(&api.ok("/ack", &stringly(&ack_body(&bob, 2))));
    let (status, v) = api.post_json("/ack", &stringly(&ack_body(&bob, 3)));
    assert_eq!((status, v), (200, json!({"type": "ok"})));
    let after = api.pull(&bob);
    assert!(after.msgs.is_empty());
    assert_eq!(after.endid, 3);

    let (status, v) = api.post_json("/gre", &stringly(&gre_body(&alice, "g", &[bob.uid])));
    assert_eq!(status, 200, "{v}");
    let gid = check_gre(&v, alice.uid, "g");
    check_ok(&api.ok("/gp", &stringly(&gsend_body(&bob, gid, "group"))));
    assert_eq!(api.pull(&alice).contents(), ["group"]);

    let (status, v) = api.post_json("/logout", &stringly(&logout_body(&bob)));
    assert_eq!(status, 200, "{v}");
    check_logout(&v, bob.uid);
}

fn form_encoding_round_trips_special_characters(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    let tricky = "a&b=c+d %25 \"q\" \\ / ? # \n\t 中文 😀";
    api.send(&alice, bob.uid, tricky);
    let (status, v) = api.post_json("/p", &send_body(&alice, bob.uid, tricky));
    assert_eq!((status, v), (200, json!({"type": "ok"})));

    // `+` is a space in application/x-www-form-urlencoded.
    let body = form_body(&send_body(&alice, bob.uid, "plus means space")).replace("%20", "+");
    let r = request(
        srv.addr(),
        "POST",
        "/p",
        &[("Content-Type", FORM)],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    check_ok(&r.json());

    assert_eq!(
        api.pull(&bob).contents(),
        [tricky, tricky, "plus means space"]
    );
}

fn malformed_requests_are_400(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    let raw = |content_type: &str, body: &str| {
        let r = request(
            srv.addr(),
            "POST",
            "/re",
            &[("Content-Type", content_type)],
            body.as_bytes(),
        );
        (r.status, r.json())
    };

    expect_error(raw(FORM, "haoshuo=not%20json"), 400);
    expect_error(raw(FORM, "other=%7B%7D"), 400);
    expect_error(raw(FORM, ""), 400);
    expect_error(raw("application/json", "{not json"), 400);
    expect_error(raw("application/json", "[1,2]"), 400);
    expect_error(raw("application/json", ""), 400);

    expect_error(
        api.post("/re", &json!({"appid": "a", "username": "carol"})),
        400,
    );
    let mut no_content = send_body(&alice, bob.uid, "x");
    no_content.as_object_mut().unwrap().remove("content");
    expect_error(api.post("/p", &no_content), 400);
    let mut bad_id = send_body(&alice, bob.uid, "x");
    bad_id["toid"] = json!("abc");
    expect_error(api.post("/p", &bad_id), 400);
    let mut no_token = pull_body(&bob);
    no_token.as_object_mut().unwrap().remove("token");
    expect_error(api.post_json("/pull", &no_token), 400);
    let mut bad_uids = gre_body(&alice, "g", &[bob.uid]);
    bad_uids["uids"] = json!("not an array");
    expect_error(api.post("/gre", &bad_uids), 400);
}

/// Each string field of the contract may be as long as its limit (appid
/// 64 bytes, username 128, pass 1024, gname 256), not a byte longer.
fn strings_up_to_their_limits(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    let (appid, name, pass) = ("a".repeat(64), "u".repeat(128), "p".repeat(1024));
    for (field, long) in [("appid", 65), ("username", 129), ("pass", 1025)] {
        let mut body = register_body(&appid, &name, &pass);
        body[field] = json!("x".repeat(long));
        expect_error(api.post("/re", &body), 400);
    }
    let uid = api.register(&appid, &name, &pass);
    let token = api.login(&appid, &name, &pass);
    let owner = User {
        appid: appid.clone(),
        name,
        uid,
        token,
    };
    expect_error(
        api.post("/gre", &gre_body(&owner, &"g".repeat(257), &[])),
        400,
    );
    assert_eq!(api.group(&owner, &"g".repeat(256), &[]), 1);
}

fn bad_tokens_are_401(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    let gid = api.group(&alice, "g", &[bob.uid]);
    let forged = User {
        token: BAD_TOKEN.into(),
        ..alice.clone()
    };
    // Bob's valid token presented for Alice's uid.
    let borrowed = User {
        token: bob.token.clone(),
        ..alice.clone()
    };
    for who in [&forged, &borrowed] {
        expect_error(api.post("/p", &send_body(who, bob.uid, "x")), 401);
        expect_error(api.post("/gp", &gsend_body(who, gid, "x")), 401);
        expect_error(api.post("/gre", &gre_body(who, "g2", &[bob.uid])), 401);
        expect_error(api.post("/pull", &pull_body(who)), 401);
        expect_error(api.post("/ack", &ack_body(who, 1)), 401);
        expect_error(api.post("/logout", &logout_body(who)), 401);
    }
    // Nothing was sent or logged out by the failures.
    assert!(api.pull(&bob).msgs.is_empty());
    api.send(&alice, bob.uid, "still logged in");
}

fn non_member_is_403_and_unknowns_are_404(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    let outsider = api.user("a", "outsider");
    let gid = api.group(&alice, "g", &[bob.uid]);
    const NOBODY: u64 = 987_654_321;

    expect_error(api.post("/gp", &gsend_body(&outsider, gid, "x")), 403);
    expect_error(api.post("/p", &send_body(&alice, NOBODY, "x")), 404);
    expect_error(
        api.post("/gre", &gre_body(&alice, "g2", &[bob.uid, NOBODY])),
        404,
    );
    expect_error(api.post("/gp", &gsend_body(&alice, NOBODY, "x")), 404);
    for method in ["GET", "POST"] {
        let r = request(srv.addr(), method, "/no/such/path", &[], b"");
        expect_error((r.status, r.json()), 404);
    }
    // The refused group send reached nobody.
    assert!(api.pull(&bob).msgs.is_empty());
}

fn wrong_method_is_405(backend: Backend) {
    let srv = server(backend);
    for (method, path) in [
        ("GET", "/p"),
        ("GET", "/re"),
        ("GET", "/login"),
        ("PUT", "/pull"),
        ("POST", "/cget/stream?seq=1&cname=1&token=x"),
        ("POST", "/cget/poll?seq=1&cname=1&token=x"),
    ] {
        let r = request(srv.addr(), method, path, &[], b"");
        assert_eq!(r.status, 405, "{method} {path}");
        expect_error((r.status, r.json()), 405);
    }
}

fn taken_username_is_409(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    api.register("a", "alice", "one");
    expect_error(api.post("/re", &register_body("a", "alice", "two")), 409);
    // The first password still holds.
    api.login("a", "alice", "one");
    expect_error(api.post("/login", &login_body("a", "alice", "two")), 401);
}

fn oversized_body_is_413_before_the_body_is_sent(backend: Backend) {
    let srv = Server::start(backend, Opts::default().max_body(1024));
    let api = srv.api();
    let alice = api.user("a", "alice");
    // A body just under the limit is fine.
    let near = "x".repeat(600);
    api.send(&alice, alice.uid, &near);

    // Only the head, announcing a body far over the limit: the answer must
    // come without the body ever being sent.
    let mut conn = Conn::connect(srv.addr());
    conn.send(b"POST /p HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n");
    let r = conn.read_response(WAIT);
    expect_error((r.status, r.json()), 413);
    assert_eq!(api.pull(&alice).contents(), [near.as_str()]);
}

fn chunked_request_body_is_411(backend: Backend) {
    let srv = server(backend);
    // Only the head: the server must decide from the headers (sending the
    // chunks too could race with the server closing and reset the answer).
    let mut conn = Conn::connect(srv.addr());
    conn.send(b"POST /re HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    let r = conn.read_response(WAIT);
    expect_error((r.status, r.json()), 411);
}

fn login_failures(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    api.register("a", "alice", "right");
    expect_error(api.post("/login", &login_body("a", "alice", "wrong")), 401);
    // A username that does not exist is refused like a wrong password
    // (the server does not tell which).
    expect_error(api.post("/login", &login_body("a", "nobody", "x")), 401);
}

fn appids_are_isolated(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    let a_alice = api.user("a", "alice");
    let a_bob = api.user("a", "bob");

    // Alice of app a does not exist in app b ...
    expect_error(
        api.post("/login", &login_body("b", "alice", &a_alice.pass())),
        401,
    );
    // ... so the name is free there.
    let b_alice = api.user("b", "alice");

    // App a's token means nothing for app b.
    let cross = User {
        appid: "b".into(),
        ..a_alice.clone()
    };
    expect_error(api.post("/pull", &pull_body(&cross)), 401);
    expect_error(api.post("/p", &send_body(&cross, b_alice.uid, "x")), 401);

    // Messages inside app a stay there.
    api.send(&a_alice, a_bob.uid, "private to a");
    assert!(api.pull(&b_alice).msgs.is_empty());
    assert_eq!(api.pull(&a_bob).contents(), ["private to a"]);
}

fn ack_then_pull_is_empty(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    for i in 1..=3 {
        api.send(&alice, bob.uid, &format!("m{i}"));
    }
    let pulled = api.pull(&bob);
    assert_eq!(pulled.msgids(), [1, 2, 3]);
    api.ack(&bob, pulled.endid);
    let after = api.pull(&bob);
    assert!(after.msgs.is_empty());
    assert_eq!(
        after.endid, 3,
        "an empty pull's endid is the acked position"
    );
    // msgids go on after the ack.
    api.send(&alice, bob.uid, "m4");
    assert_eq!(api.pull(&bob).msgids(), [4]);
}

fn ack_never_rewinds(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    for i in 1..=7 {
        api.send(&alice, bob.uid, &format!("m{i}"));
    }
    api.ack(&bob, 5);
    api.ack(&bob, 2);
    let pulled = api.pull(&bob);
    assert_eq!(pulled.msgids(), [6, 7]);
    assert_eq!(pulled.contents(), ["m6", "m7"]);
}

fn pull_is_paged(backend: Backend) {
    let srv = Server::start(backend, Opts::default().page_size(2));
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    for i in 1..=5 {
        api.send(&alice, bob.uid, &format!("m{i}"));
    }
    for page in [vec![1, 2], vec![3, 4], vec![5]] {
        let pulled = api.pull(&bob);
        assert_eq!(pulled.msgids(), page);
        api.ack(&bob, pulled.endid);
    }
    assert!(api.pull(&bob).msgs.is_empty());
}

fn logout_kills_the_token(backend: Backend) {
    let srv = server(backend);
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    let (status, v) = api.post("/logout", &logout_body(&alice));
    assert_eq!(status, 200, "{v}");
    check_logout(&v, alice.uid);

    expect_error(api.post("/p", &send_body(&alice, bob.uid, "x")), 401);
    expect_error(api.post("/pull", &pull_body(&alice)), 401);
    assert!(api.pull(&bob).msgs.is_empty());

    // Logging in again works, and other users' tokens were not touched.
    let again = User {
        token: api.login("a", "alice", &alice.pass()),
        ..alice.clone()
    };
    api.send(&again, bob.uid, "back");
    api.send(&bob, alice.uid, "welcome back");
    assert_eq!(api.pull(&bob).contents(), ["back"]);
}

fn keep_alive_pipelined_requests_answered_in_order(backend: Backend) {
    let srv = server(backend);
    let names = ["first", "second", "third"];
    let mut conn = Conn::connect(srv.addr());
    let mut burst = Vec::new();
    for name in names {
        burst.extend(form_request("/re", &register_body("a", name, "pw")));
    }
    conn.send(&burst);
    let mut uids = Vec::new();
    for name in names {
        let r = conn.read_response(WAIT);
        assert_eq!(r.status, 200);
        uids.push(check_register(&r.json(), name));
    }
    // The connection stays usable after the burst.
    let body = json!({"appid": "a", "username": "first", "pass": "pw"}).to_string();
    conn.send(&request_bytes(
        "POST",
        "/login",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    ));
    let r = conn.read_response(WAIT);
    assert_eq!(r.status, 200);
    assert_eq!(check_login(&r.json()).0, uids[0]);
}

fn connection_close_is_honoured(backend: Backend) {
    let srv = server(backend);
    let mut conn = Conn::connect(srv.addr());
    let body = form_body(&register_body("a", "alice", "pw"));
    conn.send(&request_bytes(
        "POST",
        "/re",
        &[("Content-Type", FORM), ("Connection", "close")],
        body.as_bytes(),
    ));
    let r = conn.read_response(WAIT);
    assert_eq!(r.status, 200);
    check_register(&r.json(), "alice");
    assert!(
        conn.closed_within(WAIT),
        "the server kept the connection open after `Connection: close`"
    );
}
