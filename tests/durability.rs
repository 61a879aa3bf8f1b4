//! Durability: everything answered `ok` survives the server being killed
//! with SIGKILL (with `--fsync always` and `--fsync everysec`: a killed
//! process leaves its written data in the OS page cache) or stopped with
//! SIGTERM (exit status 0). After the restart on the same data dir, users,
//! passwords, tokens, groups, messages and acks are all there, and msgids
//! and uids go on where they stopped.

mod common;

use common::*;

common::backend_tests!(
    sigkill_with_fsync_always_loses_nothing,
    sigkill_with_fsync_everysec_loses_nothing,
    sigterm_exits_0_and_loses_nothing,
);

/// The state the tests build before stopping the server.
struct World {
    alice: User,
    bob: User,
    carol: User,
    gid: u64,
}

/// Alice gets `m1..=m10` from Bob and a group message from Carol (msgid
/// 11) and acks up to 3; Bob and Carol get the group message as msgid 1.
fn build_world(api: &Api) -> World {
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    let carol = api.user("a", "carol");
    let gid = api.group(&alice, "g", &[bob.uid, carol.uid]);
    for i in 1..=10 {
        api.send(&bob, alice.uid, &format!("m{i}"));
    }
    api.gsend(&carol, gid, "g1");
    api.ack(&alice, 3);
    World {
        alice,
        bob,
        carol,
        gid,
    }
}

/// Checks, with the tokens from before the restart, that everything in
/// [`build_world`] is there.
fn check_world(api: &Api, w: &World) {
    let mut expected: Vec<Msg> = (4..=10)
        .map(|i| Msg::single(&w.bob, w.alice.uid, i, &format!("m{i}")))
        .collect();
    expected.push(Msg::group(&w.carol, w.gid, 11, "g1"));
    assert_eq!(
        api.pull(&w.alice).msgs,
        expected,
        "alice's inbox (acked up to 3)"
    );
    for member in [&w.bob, &w.carol] {
        assert_eq!(
            api.pull(member).msgs,
            [Msg::group(&w.carol, w.gid, 1, "g1")],
            "{}'s inbox",
            member.name
        );
    }
    // Passwords still work.
    api.login("a", "alice", &w.alice.pass());
}

/// Sends more after a restart: msgids go on, the group still exists, new
/// uids do not collide, and streams resume.
fn check_continues(api: &Api, w: &World) {
    api.send(&w.bob, w.alice.uid, "after");
    api.gsend(&w.bob, w.gid, "g2");
    let pulled = api.pull(&w.alice);
    assert_eq!(
        pulled.msgs[pulled.msgs.len() - 2..],
        [
            Msg::single(&w.bob, w.alice.uid, 12, "after"),
            Msg::group(&w.bob, w.gid, 13, "g2")
        ]
    );
    assert_eq!(api.pull(&w.carol).msgids(), [1, 2], "carol's group copies");
    let dave = api.user("a", "dave");
    assert!(
        ![w.alice.uid, w.bob.uid, w.carol.uid].contains(&dave.uid),
        "a uid was handed out twice"
    );
    let mut stream = api.stream(&w.alice, 12);
    assert_eq!(
        stream.collect(2, WAIT),
        [
            Msg::single(&w.bob, w.alice.uid, 12, "after"),
            Msg::group(&w.bob, w.gid, 13, "g2")
        ]
    );
}

fn sigkill_loses_nothing(backend: Backend, fsync: Fsync) {
    let mut srv = Server::start(backend, Opts::default().fsync(fsync));
    let world = build_world(&srv.api());

    srv.kill9();
    srv.restart_same_dir();
    check_world(&srv.api(), &world);
    check_continues(&srv.api(), &world);

    // What was written after the first recovery survives a second kill.
    srv.kill9();
    srv.restart_same_dir();
    check_world_after_continue(&srv.api(), &world);
}

/// After [`check_continues`] and another restart: its messages are there
/// and msgids still go on.
fn check_world_after_continue(api: &Api, w: &World) {
    let pulled = api.pull(&w.alice);
    assert_eq!(pulled.msgids(), (4..=13).collect::<Vec<_>>());
    api.send(&w.carol, w.alice.uid, "third life");
    assert_eq!(api.pull(&w.alice).endid, 14);
    api.login("a", "dave", &password_for("dave"));
}

fn sigkill_with_fsync_always_loses_nothing(backend: Backend) {
    sigkill_loses_nothing(backend, Fsync::Always);
}

fn sigkill_with_fsync_everysec_loses_nothing(backend: Backend) {
    sigkill_loses_nothing(backend, Fsync::Everysec);
}

fn sigterm_exits_0_and_loses_nothing(backend: Backend) {
    let mut srv = Server::start(backend, Opts::default());
    let world = build_world(&srv.api());
    let status = srv.term();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    srv.restart_same_dir();
    check_world(&srv.api(), &world);
    check_continues(&srv.api(), &world);
}
