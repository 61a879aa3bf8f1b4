//! Durability: everything answered `ok` survives the process that holds
//! the data being killed with SIGKILL, and the server being stopped with
//! SIGTERM (exit status 0). On the embedded store the killed process is
//! haoshuo itself, with `--fsync always` and `--fsync everysec` (a killed
//! process leaves its written data in the OS page cache). On Redis it is
//! redis-server, with `appendfsync always` and `appendfsync everysec` (what
//! docs/redis.md promises for each); a second crash kills redis-server and
//! haoshuo together. After the restart, users, passwords, tokens, groups,
//! messages and acks are all there, and msgids and uids go on where they
//! stopped.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;

common::backend_tests!(
    sigkill_of_the_store_with_fsync_always_loses_nothing,
    sigkill_of_the_store_with_fsync_everysec_loses_nothing,
    sigterm_exits_0_and_loses_nothing,
);

/// Long enough for haoshuo to reconnect to a restarted Redis (its backoff
/// is at most 1 s) and for Redis to write a postponed AOF buffer (at most
/// 2 s).
const RECOVERY: Duration = Duration::from_secs(10);

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
    assert_eq!(dave.uid, 4, "uids go on after alice, bob and carol");
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
    if backend == Backend::Redis {
        let policy = match fsync {
            Fsync::Always => "always",
            Fsync::Everysec => "everysec",
        };
        let redis = srv.redis();
        assert_eq!(
            redis.command(&["CONFIG", "GET", "appendonly"]),
            "appendonly\nyes"
        );
        assert_eq!(
            redis.command(&["CONFIG", "GET", "appendfsync"]),
            format!("appendfsync\n{policy}")
        );
    }
    let world = build_world(&srv.api());

    crash_the_store(&mut srv, fsync, false, &world.alice);
    check_world(&srv.api(), &world);
    check_continues(&srv.api(), &world);

    // What was written after the first recovery survives a second crash,
    // of haoshuo too.
    crash_the_store(&mut srv, fsync, true, &world.alice);
    check_world_after_continue(&srv.api(), &world);
}

/// SIGKILLs the process that holds the data and starts it again: haoshuo
/// on the embedded store; redis-server on Redis, and haoshuo with it if
/// `with_haoshuo` (otherwise haoshuo stays up and reconnects: a `/pull` of
/// `probe` answering says it is back on Redis).
fn crash_the_store(srv: &mut Server, fsync: Fsync, with_haoshuo: bool, probe: &User) {
    match srv.backend() {
        Backend::Embedded => {
            srv.kill9();
            srv.restart_same_dir();
        }
        Backend::Redis | Backend::Cluster => {
            let nodes = match srv.backend() {
                Backend::Cluster => srv.cluster().len(),
                _ => 1,
            };
            for i in 0..nodes {
                let redis = node(srv, i);
                if fsync == Fsync::Everysec {
                    wait_until_redis_wrote_its_aof(redis);
                }
                redis.kill();
            }
            if with_haoshuo {
                srv.kill9();
            }
            for i in 0..nodes {
                node(srv, i).start_again();
            }
            if srv.backend() == Backend::Cluster {
                srv.cluster().wait_ok();
            }
            if with_haoshuo {
                srv.restart_same_dir();
            }
            let api = srv.api();
            let deadline = Instant::now() + RECOVERY;
            loop {
                let (status, answer) = api.post("/pull", &pull_body(probe));
                if status != 503 {
                    assert_eq!(status, 200, "{answer}");
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "haoshuo not back on Redis within {RECOVERY:?}"
                );
                // Waiting out haoshuo's reconnect backoff: nothing to watch.
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Node `i` of the server's Redis: its redis-server, or its cluster's
/// node `i`.
fn node(srv: &mut Server, i: usize) -> &mut RedisServer {
    match srv.backend() {
        Backend::Cluster => srv.cluster().node(i),
        _ => srv.redis(),
    }
}

/// Waits until redis-server holds no AOF write back (docs/redis.md: under
/// `everysec` it postpones writes, though not replies, while the previous
/// second's fsync runs; a kill then loses them, which is not what this
/// test is about).
fn wait_until_redis_wrote_its_aof(redis: &RedisServer) {
    let deadline = Instant::now() + RECOVERY;
    loop {
        let info = redis.command(&["INFO", "persistence"]);
        let buffered = info
            .lines()
            .find_map(|l| l.strip_prefix("aof_buffer_length:"))
            .unwrap_or_else(|| panic!("no aof_buffer_length in INFO: {info}"));
        if buffered.trim() == "0" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis-server held {buffered} AOF bytes back for {RECOVERY:?}"
        );
        // Redis writes them at its next event-loop pass after the fsync:
        // nothing to block on.
        thread::sleep(Duration::from_millis(10));
    }
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

fn sigkill_of_the_store_with_fsync_always_loses_nothing(backend: Backend) {
    sigkill_loses_nothing(backend, Fsync::Always);
}

fn sigkill_of_the_store_with_fsync_everysec_loses_nothing(backend: Backend) {
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
