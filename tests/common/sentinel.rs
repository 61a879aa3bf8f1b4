//! A Sentinel-managed Redis for the tests: a master, its replicas and
//! Sentinels watching it as `mymaster`, each a process of its own on a free
//! loopback port; the master and replicas are [`RedisServer`]s (AOF,
//! `appendfsync always`).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::redis::{command_at, free_port, wait_ready};
use super::{poll_until, RedisServer};

/// How long Sentinels may take to see the replicas, or to fail over.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(30);
/// The name the Sentinels know the master by.
pub const MASTER_NAME: &str = "mymaster";

pub struct RedisSentinels {
    /// The first master, then its replicas.
    servers: Vec<RedisServer>,
    sentinels: Vec<(Child, u16, tempfile::TempDir)>,
}

impl RedisSentinels {
    /// Starts a master with `replicas` replicas and `sentinels` Sentinels
    /// (quorum: a majority of them), and waits until every Sentinel knows
    /// every replica and every other Sentinel.
    pub fn start(replicas: usize, sentinels: usize) -> RedisSentinels {
        let master = RedisServer::start();
        let mport = master.port().to_string();
        let mut servers = vec![master];
        for _ in 0..replicas {
            let r = RedisServer::start();
            assert_eq!(r.command(&["REPLICAOF", "127.0.0.1", &mport]), "+OK");
            poll_until("a replica to sync", SENTINEL_TIMEOUT, || {
                r.command(&["INFO", "replication"])
                    .contains("master_link_status:up")
            });
            servers.push(r);
        }
        let quorum = sentinels / 2 + 1;
        let sentinels = (0..sentinels)
            .map(|_| start_sentinel(&mport, quorum))
            .collect();
        let set = RedisSentinels { servers, sentinels };
        for (_, port, _) in &set.sentinels {
            poll_until(
                "the Sentinels to see every replica and each other",
                SENTINEL_TIMEOUT,
                || {
                    let info = command_at(*port, &["INFO", "sentinel"]);
                    info.contains(&format!("slaves={replicas},"))
                        && info.contains(&format!("sentinels={}", set.sentinels.len()))
                },
            );
        }
        set
    }

    /// `redis+sentinel://` naming every Sentinel and the master's name.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(_, p, _)| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The port of the master the Sentinels name now.
    pub fn master_port(&self) -> u16 {
        let (_, port, _) = &self.sentinels[0];
        let reply = command_at(*port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]);
        reply
            .lines()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no master address: {reply:?}"))
    }

    /// The server at `port` (the master, or a replica).
    pub fn server(&mut self, port: u16) -> &mut RedisServer {
        self.servers
            .iter_mut()
            .find(|s| s.port() == port)
            .expect("one of ours")
    }

    /// Waits until every Sentinel names a master other than `old`.
    pub fn wait_failover(&self, old: u16) {
        poll_until("the Sentinels to fail over", SENTINEL_TIMEOUT, || {
            self.sentinels.iter().all(|(_, port, _)| {
                let reply =
                    command_at(*port, &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME]);
                reply.lines().nth(1) != Some(&old.to_string())
            })
        });
    }
}

impl Drop for RedisSentinels {
    fn drop(&mut self) {
        for (child, _, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A Sentinel watching the master on `mport`, which it finds failing after
/// a second without an answer.
fn start_sentinel(mport: &str, quorum: usize) -> (Child, u16, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary dir for a Sentinel");
    let port = free_port();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndir {}\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {mport} {quorum}\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 10000\n",
            dir.path().display()
        ),
    )
    .expect("write sentinel.conf");
    let mut child = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run redis-server --sentinel");
    assert!(wait_ready(port, &mut child), "a Sentinel did not start");
    (child, port, dir)
}
