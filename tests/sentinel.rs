//! haoshuo on a master that Redis Sentinels watch
//! (`--redis redis+sentinel://...`): when the master is killed and the
//! Sentinels promote a replica, the lanes and the feed follow them there,
//! and nothing answered `ok` is lost.

mod common;

use std::time::Duration;

use common::*;

/// How long a send may keep answering 503 while the Sentinels fail over.
const FAILOVER: Duration = Duration::from_secs(30);

#[test]
fn a_killed_master_is_replaced_and_nothing_answered_is_lost() {
    // Two replicas: the one not promoted replicates the new master, so
    // `--redis-wait-replicas 1` can still be met.
    let set = RedisSentinels::start(2, 3);
    let mut srv = Server::start_on_sentinels(set, Opts::default().flag("--redis-wait-replicas", 1));
    let api = srv.api();
    let alice = api.user("app", "alice");
    let receivers: Vec<User> = (0..3).map(|i| api.user("app", &format!("r{i}"))).collect();
    let mut streams: Vec<StreamClient> = receivers.iter().map(|r| api.stream(r, 1)).collect();

    const SENDS: usize = 60;
    let old = srv.sentinels().master_port();
    send_round_robin_through(&api, &alice, &receivers, SENDS, FAILOVER, || {
        srv.sentinels().server(old).kill();
    });
    srv.sentinels().wait_failover(old);
    assert_ne!(srv.sentinels().master_port(), old);

    every_receiver_got_its_sends(&api, &receivers, &mut streams, SENDS, FAILOVER);
}
