//! haoshuo on a Redis Cluster: calls routed to each key's master, group
//! messages split per slot, announcements by sharded pub/sub to the node
//! that serves the receiver, and a master killed under load.

mod common;

use common::*;

#[test]
fn a_message_sent_on_one_node_reaches_a_stream_on_another() {
    let a = Server::start(Backend::Cluster, Opts::default());
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
