//! Tenants never see each other: appids and usernames that contain the
//! characters a store joins keys with still name distinct things.

mod common;

use common::*;

backend_tests!(
    names_that_join_alike_stay_apart,
    braces_and_percents_are_plain_characters
);

fn names_that_join_alike_stay_apart(backend: Backend) {
    let srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let bc = api.user("a", "b:c");
    // Naively joined, ("a", "b:c") and ("a:b", "c") are one key.
    let c = api.user("a:b", "c");
    let victim = api.user("a:b", "victim");
    assert_eq!(
        (bc.uid, c.uid, victim.uid),
        (1, 1, 2),
        "uids count per appid"
    );
    // Neither password opens the other's account.
    expect_error(
        api.post("/login", &login_body("a:b", "c", &victim.pass())),
        401,
    );
    expect_error(api.post("/login", &login_body("a:b", "c", &bc.pass())), 401);
    expect_error(api.post("/login", &login_body("a", "b:c", &c.pass())), 401);
    // Each inbox is its own.
    api.send(&victim, c.uid, "to c in a:b");
    assert!(
        api.pull(&bc).msgids().is_empty(),
        "a's uid 1 got a:b's message"
    );
    assert_eq!(api.pull(&c).contents(), ["to c in a:b"]);
}

fn braces_and_percents_are_plain_characters(backend: Backend) {
    let srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let names = ["x}y", "{z", "p%3Aq", "p:q", "%"];
    let users: Vec<User> = names.iter().map(|n| api.user("t{1}", n)).collect();
    let uids: Vec<u64> = users.iter().map(|u| u.uid).collect();
    assert_eq!(uids, [1, 2, 3, 4, 5], "every name is a new user");
    // A group across them, and a message to all.
    let others: Vec<u64> = uids[1..].to_vec();
    let gid = api.group(&users[0], "g:{}", &others);
    api.gsend(&users[0], gid, "hello");
    for u in &users {
        assert_eq!(api.pull(u).contents(), ["hello"], "{}", u.name);
    }
    // The same names in another appid are other users.
    let again = api.user("t{1}:", "x}y");
    assert_eq!(again.uid, 1);
    assert!(api.pull(&again).msgids().is_empty());
}
