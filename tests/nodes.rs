//! Several haoshuo processes on one Redis: a message sent through one node
//! reaches a stream on another, and a logout on one node kills the token on
//! every node at once (their token caches hear it).

mod common;

use common::*;

#[test]
fn a_message_sent_on_one_node_reaches_a_stream_on_another() {
    let a = Server::start(Backend::Redis, Opts::default());
    let b = a.another_node();
    let (api_a, api_b) = (a.api(), b.api());
    let alice = api_a.user("app", "alice");
    let bob = api_a.user("app", "bob");
    let carol = api_a.user("app", "carol");
    let gid = api_a.group(&alice, "team", &[bob.uid, carol.uid]);

    let mut bob_on_b = api_b.stream(&bob, 1);
    let mut carol_on_a = api_a.stream(&carol, 1);
    api_a.send(&alice, bob.uid, "direct");
    api_b.gsend(&alice, gid, "to the team");
    assert_eq!(
        bob_on_b.collect(2, WAIT),
        vec![
            Msg::single(&alice, bob.uid, 1, "direct"),
            Msg::group(&alice, gid, 2, "to the team"),
        ]
    );
    assert_eq!(
        carol_on_a.collect(1, WAIT),
        vec![Msg::group(&alice, gid, 1, "to the team")]
    );
}

#[test]
fn a_logout_on_one_node_kills_the_token_on_every_node() {
    let a = Server::start(Backend::Redis, Opts::default());
    let b = a.another_node();
    let (api_a, api_b) = (a.api(), b.api());
    let alice = api_a.user("app", "alice");
    let bob = api_a.user("app", "bob");
    // Node b has the token in its cache now.
    assert!(api_b.pull(&alice).msgids().is_empty());
    api_a.logout(&alice);
    // The logout was answered after it was announced; b hears it within a
    // pub/sub hop, far inside the cache's lifetime.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let (status, _) = api_b.post("/p", &send_body(&alice, bob.uid, "x"));
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            std::time::Instant::now() < deadline,
            "node b still takes the token"
        );
    }
}
