//! `haoshuo --processes N`: one command starts N server processes on one
//! address (Redis store). Messages reach streams on every process; a
//! process killed with SIGKILL is started again and its clients resume
//! (nothing sent meanwhile is lost); SIGTERM to the supervisor stops them
//! all; the embedded store refuses it.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

use common::*;

/// How long the supervisor may take to start a replacement (its first
/// back-off is 100 ms, then the child's own start).
const REPLACED_WITHIN: Duration = Duration::from_secs(10);
/// Streams opened until every process holds some (the kernel spreads
/// connections over the processes by a hash of the client's port).
const MAX_STREAMS: usize = 64;

/// Slot -> pid of each child the supervisor has said it started (the
/// latest per slot).
fn children(srv: &Server) -> BTreeMap<usize, u32> {
    let mut out = BTreeMap::new();
    for line in srv.output().lines() {
        let Some(rest) = line.strip_prefix("haoshuo supervisor: process ") else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        if let [slot, "pid", pid, "started"] = words[..] {
            out.insert(slot.parse().unwrap(), pid.parse().unwrap());
        }
    }
    out
}

/// Waits until `n` children are up, all different from `not`, and the
/// server has said `listening on` `listening` times in all.
fn wait_children(srv: &Server, n: usize, not: &[u32], listening: usize) -> BTreeMap<usize, u32> {
    let deadline = Instant::now() + REPLACED_WITHIN;
    loop {
        let c = children(srv);
        let up = srv.output().matches("listening on").count();
        if c.len() == n && c.values().all(|p| !not.contains(p)) && up >= listening {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "children: {c:?}\n{}",
            srv.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sockets process `pid` holds.
fn sockets(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    fs::read_link(e.path())
                        .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Opens streams of `user` from `seq` until every pid holds at least one
/// more socket than it did: every process serves some of them.
fn streams_on_every_process(api: &Api, user: &User, seq: u64, pids: &[u32]) -> Vec<StreamClient> {
    let before: Vec<usize> = pids.iter().map(|&p| sockets(p)).collect();
    let mut streams = Vec::new();
    while streams.len() < MAX_STREAMS {
        streams.push(api.stream(user, seq));
        if streams.len() >= 8 && pids.iter().zip(&before).all(|(&p, &b)| sockets(p) > b) {
            return streams;
        }
    }
    panic!("{MAX_STREAMS} streams did not reach every process {pids:?}");
}

#[test]
fn processes_share_the_address_survive_a_kill_and_stop_together() {
    let mut srv = Server::start(Backend::Redis, Opts::default().flag("--processes", 2));
    let api = srv.api();
    let first = wait_children(&srv, 2, &[], 2);
    let pids: Vec<u32> = first.values().copied().collect();
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));

    // Across processes: every stream gets it, wherever it is.
    let mut streams = streams_on_every_process(&api, &bob, 1, &pids);
    api.send(&alice, bob.uid, "one");
    for s in &mut streams {
        assert_eq!(s.collect(1, WAIT), [Msg::single(&alice, bob.uid, 1, "one")]);
    }

    // A process killed: the other serves the next send; the supervisor
    // starts a replacement; clients come back from where they were.
    drop(streams);
    signal(pids[0], "KILL");
    // Gone (reaped by the supervisor), so no new connection reaches it.
    let deadline = Instant::now() + REPLACED_WITHIN;
    while fs::metadata(format!("/proc/{}", pids[0])).is_ok() {
        assert!(Instant::now() < deadline, "process {} still there", pids[0]);
        std::thread::sleep(Duration::from_millis(10));
    }
    api.send(&alice, bob.uid, "two");
    let now = wait_children(&srv, 2, &pids[..1], 3);
    assert_eq!(now[&1], pids[1], "the other process was left alone");
    assert!(
        srv.output().contains("process 0 exited"),
        "{}",
        srv.output()
    );
    let pids: Vec<u32> = now.values().copied().collect();
    let mut streams = streams_on_every_process(&api, &bob, 2, &pids);
    api.send(&alice, bob.uid, "three");
    for s in &mut streams {
        assert_eq!(
            s.collect(2, WAIT),
            [
                Msg::single(&alice, bob.uid, 2, "two"),
                Msg::single(&alice, bob.uid, 3, "three")
            ]
        );
    }

    // SIGTERM to the supervisor stops every process.
    drop(streams);
    let status = srv.term();
    assert!(status.success(), "{status:?}\n{}", srv.output());
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the supervisor"
        );
    }
}

#[test]
fn the_embedded_store_refuses_several_processes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_haoshuo"))
        .args(["--listen", "127.0.0.1:0", "--processes", "2", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .env_remove("HAOSHUO_REDIS")
        .output()
        .expect("run haoshuo");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--processes needs --redis"), "{err}");
}

#[test]
fn children_stop_when_the_supervisor_is_killed() {
    let mut srv = Server::start(Backend::Redis, Opts::default().flag("--processes", 2));
    let pids: Vec<u32> = wait_children(&srv, 2, &[], 2).values().copied().collect();
    srv.kill9();
    // Each child gets SIGTERM from the kernel and drains (at most 5 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    for pid in pids {
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(
                Instant::now() < deadline,
                "process {pid} outlived its supervisor"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
