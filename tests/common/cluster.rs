//! A real Redis Cluster for the tests: `masters` masters, each with
//! `replicas` replicas, every node a `redis-server --cluster-enabled yes`
//! of its own (tests/common/redis.rs) on a free loopback port, with AOF
//! and `appendfsync always`.
//!
//! Built by hand rather than with `redis-cli --cluster create` (which
//! sleeps a second per check): each master takes an even share of the
//! slots and its own config epoch, the nodes meet, each replica replicates
//! its master, and the harness waits until every node says the cluster is
//! `ok` and sees every node.

use std::time::Duration;

use super::{poll_until, Fsync, RedisServer};

/// How long a cluster may take to form, or to fail over.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

pub struct RedisCluster {
    /// Masters first, then the replicas (replica `r` of master `m` at
    /// `masters + m * replicas + r`).
    nodes: Vec<RedisServer>,
    masters: usize,
}

impl RedisCluster {
    /// Starts and forms a cluster and waits until it serves every slot.
    pub fn start(masters: usize, replicas: usize) -> RedisCluster {
        RedisCluster::start_with(masters, replicas, Fsync::Always)
    }

    /// The same, its nodes with this `appendfsync` policy.
    pub fn start_with(masters: usize, replicas: usize, fsync: Fsync) -> RedisCluster {
        assert!(masters >= 1);
        let count = masters * (1 + replicas);
        let nodes: Vec<RedisServer> = (0..count)
            .map(|_| RedisServer::start_node(fsync, true))
            .collect();
        let per = 16384 / masters;
        for (m, node) in nodes.iter().take(masters).enumerate() {
            let first = m * per;
            let last = if m + 1 == masters {
                16383
            } else {
                first + per - 1
            };
            ok(node.command(&["CLUSTER", "SET-CONFIG-EPOCH", &(m + 1).to_string()]));
            ok(node.command(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &first.to_string(),
                &last.to_string(),
            ]));
        }
        for node in &nodes[1..] {
            ok(nodes[0].command(&["CLUSTER", "MEET", "127.0.0.1", &node.port().to_string()]));
        }
        let cluster = RedisCluster { nodes, masters };
        for m in 0..masters {
            let id = cluster.nodes[m].command(&["CLUSTER", "MYID"]);
            for r in 0..replicas {
                let replica = &cluster.nodes[masters + m * replicas + r];
                // It may not know the master yet: the nodes gossip.
                poll_until(
                    &format!("node {} to replicate {id}", replica.port()),
                    FORM_TIMEOUT,
                    || replica.command(&["CLUSTER", "REPLICATE", &id]) == "+OK",
                );
            }
        }
        cluster.wait_ok();
        for replica in &cluster.nodes[masters..] {
            poll_until("replicas to sync", FORM_TIMEOUT, || {
                replica
                    .command(&["INFO", "replication"])
                    .contains("master_link_status:up")
            });
        }
        cluster
    }

    /// How many nodes it has.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `redis+cluster://` naming every master.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self.nodes[..self.masters]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Node `i` (masters first).
    pub fn node(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The index of the node that is master of `key`'s slot now, as a
    /// running node's `CLUSTER NODES` says.
    pub fn master_of(&self, key: &str) -> usize {
        let live = self.live();
        let slot: u16 = self.nodes[live]
            .command(&["CLUSTER", "KEYSLOT", key])
            .trim_start_matches(':')
            .parse()
            .expect("a slot number");
        let table = self.nodes[live].command(&["CLUSTER", "NODES"]);
        let port = table
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| {
                f.len() > 8
                    && f[2].contains("master")
                    && !f[2].contains("fail")
                    && f[8..].iter().any(|range| {
                        let (a, b) = range.split_once('-').unwrap_or((range, range));
                        match (a.parse::<u16>(), b.parse::<u16>()) {
                            (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                            _ => false,
                        }
                    })
            })
            .and_then(|f| f[1].split(['@', ':']).nth(1)?.parse::<u16>().ok())
            .expect("a master owns the slot");
        (0..self.nodes.len())
            .find(|&i| self.nodes[i].port() == port)
            .expect("the master is one of ours")
    }

    /// Waits until some replica has taken over from the (killed) master
    /// `i` and the cluster is `ok` again on every running node.
    pub fn wait_failover(&self, i: usize) {
        let port = self.nodes[i].port().to_string();
        poll_until("a replica to take over", FORM_TIMEOUT, || {
            self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let info = n.command(&["CLUSTER", "INFO"]);
                let nodes = n.command(&["CLUSTER", "NODES"]);
                info.contains("cluster_state:ok")
                    && nodes
                        .lines()
                        .filter(|l| l.contains(&format!(":{port}@")))
                        .all(|l| l.contains("fail"))
            })
        });
    }

    /// A node that is running.
    fn live(&self) -> usize {
        (0..self.nodes.len())
            .find(|&i| self.nodes[i].is_running())
            .expect("a running node")
    }

    /// Waits until every node runs, sees every other and says the
    /// cluster is `ok` (after it formed, or all its nodes came back).
    pub fn wait_ok(&self) {
        let known = format!("cluster_known_nodes:{}", self.nodes.len());
        poll_until("the cluster to form", FORM_TIMEOUT, || {
            self.nodes.iter().all(|n| {
                let info = n.command(&["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains(&known)
            })
        });
    }
}

fn ok(reply: String) {
    assert_eq!(reply, "+OK", "a cluster command failed");
}
