//! haoshuo on a Redis Cluster: announcements by sharded pub/sub to the
//! node that serves the receiver, a master killed under load, a slot moved
//! under a stream. (Every backend test, and tests/nodes.rs, also run on a
//! cluster.)

mod common;

use std::time::Duration;

use common::*;

/// How long a send may keep answering 503 while a replica takes over from
/// a killed master (node timeout 1 s, then an election).
const FAILOVER: Duration = Duration::from_secs(30);

#[test]
fn a_master_killed_under_load_loses_nothing_answered_and_streams_resume() {
    // Two replicas a master: after one takes over, the other replicates
    // it, so `--redis-wait-replicas 1` can still be met.
    let cluster = RedisCluster::start(3, 2);
    let mut srv =
        Server::start_on_cluster(cluster, Opts::default().flag("--redis-wait-replicas", 1));
    let api = srv.api();
    let alice = api.user("app", "alice");
    let receivers: Vec<User> = (0..6).map(|i| api.user("app", &format!("r{i}"))).collect();
    let mut streams: Vec<StreamClient> = receivers.iter().map(|r| api.stream(r, 1)).collect();
    let victim = srv
        .cluster()
        .master_of(&format!("hs:{{u:app:{}}}", receivers[0].uid));

    const SENDS: usize = 120;
    send_round_robin_through(&api, &alice, &receivers, SENDS, FAILOVER, || {
        srv.cluster().node(victim).kill();
    });
    srv.cluster().wait_failover(victim);

    every_receiver_got_its_sends(&api, &receivers, &mut streams, SENDS, FAILOVER);
}

#[test]
fn a_cluster_without_the_replicas_to_wait_for_is_refused_at_start() {
    // Three masters, no replica: WAIT 1 can never be met, so nothing
    // could ever be answered; say so at once.
    let cluster = RedisCluster::start(3, 0);
    let dir = tempfile::tempdir().expect("a data dir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_haoshuo"))
        .args(["--listen", "127.0.0.1:0", "--redis", &cluster.url()])
        .args(["--redis-wait-replicas", "1", "--redis-timeout-ms", "200"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("run haoshuo");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not replicated: 0 of 1 replicas"), "{err}");
}

#[test]
fn announcements_go_by_sharded_pubsub_not_to_every_node() {
    let mut srv = Server::start(Backend::Cluster, Opts::default());
    let api = srv.api();
    let alice = api.user("app", "alice");
    let bob = api.user("app", "bob");
    let mut stream = api.stream(&bob, 1);
    // Plain pub/sub in a cluster reaches a subscriber on any node; these
    // watch every node.
    let mut spies: Vec<PubSubSpy> = (0..srv.cluster().len())
        .map(|i| srv.cluster().node(i).psubscribe("hs:*"))
        .collect();
    api.send(&alice, bob.uid, "sharded");
    assert_eq!(
        stream.collect(1, WAIT),
        [Msg::single(&alice, bob.uid, 1, "sharded")]
    );
    // A logout is announced by plain pub/sub: every spy hears it (they
    // work), and before it none heard the message's announcement.
    api.logout(&alice);
    for spy in &mut spies {
        let (channel, _) = spy.next(WAIT).expect("the logout announcement");
        assert_eq!(channel, "hs:untoken", "only the logout is broadcast");
    }
}

/// A server on a cluster, and bob streaming, who got alice's "before".
fn bob_streaming() -> (Server, Api, User, User, StreamClient) {
    let srv = Server::start(Backend::Cluster, Opts::default());
    let api = srv.api();
    let alice = api.user("app", "alice");
    let bob = api.user("app", "bob");
    let mut stream = api.stream(&bob, 1);
    api.send(&alice, bob.uid, "before");
    assert_eq!(
        stream.collect(1, WAIT),
        [Msg::single(&alice, bob.uid, 1, "before")]
    );
    (srv, api, alice, bob, stream)
}

/// Moves the slot of `key` from its master to the next node ([`move_slot`],
/// `then` run mid-migration); returns that node's index.
fn move_slot_of(cluster: &mut RedisCluster, key: &str, then: impl FnOnce()) -> usize {
    let slot = slot_of(cluster, key);
    let from = cluster.master_of(key);
    let to = (from + 1) % cluster.len();
    move_slot(cluster, slot, from, to, then);
    to
}

/// The hash slot of `key`, as the cluster computes it.
fn slot_of(cluster: &mut RedisCluster, key: &str) -> u16 {
    cluster
        .node(0)
        .command(&["CLUSTER", "KEYSLOT", key])
        .trim_start_matches(':')
        .parse()
        .expect("a slot")
}

/// Moves `slot` from master `from` to master `to` as `redis-cli --cluster
/// reshard` does, stopping after the keys moved and before the cluster is
/// told (`then` runs there: the source answers ASK for the slot's keys).
fn move_slot(cluster: &mut RedisCluster, slot: u16, from: usize, to: usize, then: impl FnOnce()) {
    let slot = slot.to_string();
    let from_id = cluster.node(from).command(&["CLUSTER", "MYID"]);
    let to_id = cluster.node(to).command(&["CLUSTER", "MYID"]);
    let to_port = cluster.node(to).port().to_string();
    assert_eq!(
        cluster
            .node(to)
            .command(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]),
        "+OK"
    );
    assert_eq!(
        cluster
            .node(from)
            .command(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]),
        "+OK"
    );
    let keys = cluster
        .node(from)
        .command(&["CLUSTER", "GETKEYSINSLOT", &slot, "1000"]);
    let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
    if !keys.is_empty() {
        let mut migrate = vec!["MIGRATE", "127.0.0.1", &to_port, "", "0", "5000", "KEYS"];
        migrate.extend(&keys);
        assert_eq!(cluster.node(from).command(&migrate), "+OK");
    }
    then();
    for i in 0..cluster.len() {
        let node = cluster.node(i);
        assert_eq!(
            node.command(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]),
            "+OK"
        );
    }
}

#[test]
fn a_slot_moved_to_another_master_is_followed_through_ask_and_moved() {
    let (mut srv, api, alice, bob, mut stream) = bob_streaming();
    let key = format!("hs:{{u:app:{}}}", bob.uid);
    let to = move_slot_of(srv.cluster(), &key, || {
        // Mid-migration: bob's keys are on `to`, the source answers ASK.
        api.send(&alice, bob.uid, "while moving");
    });
    // Now the source answers MOVED: the slot map is read again.
    api.send(&alice, bob.uid, "after");
    assert_eq!(
        stream.collect(2, WAIT),
        [
            Msg::single(&alice, bob.uid, 2, "while moving"),
            Msg::single(&alice, bob.uid, 3, "after")
        ]
    );
    let asked = srv.cluster().node(to).command(&["INFO", "commandstats"]);
    assert!(
        asked.contains("cmdstat_asking:calls="),
        "no ASK was followed:\n{asked}"
    );
    assert_eq!(api.pull(&bob).msgids(), [1, 2, 3]);
}

#[test]
fn the_feed_follows_its_channel_to_another_master() {
    let (mut srv, api, alice, bob, mut stream) = bob_streaming();
    // The serving node is the one route bob has; its channel's slot moves.
    let routes = format!("hs:{{u:app:{}}}:at", bob.uid);
    let owner = srv.cluster().master_of(&routes);
    let node = srv.cluster().node(owner).command(&["HKEYS", &routes]);
    let channel = format!("hs:deliver:{}", node.trim());
    // A slot with no key to move: only the sharded subscription is on it.
    let to = move_slot_of(srv.cluster(), &channel, || {});
    // Redis unsubscribed the feed from the old master; it subscribes on the
    // new one, and the next message comes live.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let on_new = srv
            .cluster()
            .node(to)
            .command(&["PUBSUB", "SHARDNUMSUB", &channel]);
        if on_new.lines().nth(1) == Some(":1") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the feed did not subscribe on the new master: {on_new:?}"
        );
        // Resubscribing is the feed's own doing: nothing to wait on.
        std::thread::sleep(Duration::from_millis(20));
    }
    api.send(&alice, bob.uid, "after");
    assert_eq!(
        stream.collect(1, WAIT),
        [Msg::single(&alice, bob.uid, 2, "after")]
    );
}
