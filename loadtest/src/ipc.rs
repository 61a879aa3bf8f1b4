//! Parent <-> worker protocol: JSON lines over the worker's stdin/stdout,
//! and the parent's handles on its worker processes (spawn, command, read).
//!
//! Workers are this same binary started as `haoshuo-load --worker`; each
//! holds up to ~19,000 sockets (the per-process open-file cap is 20,000).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::thread;

use serde::{Deserialize, Serialize};

use crate::checker::RecvSummary;

/// Everything a worker needs to know, sent once as its first line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerInit {
    pub target: SocketAddr,
    /// Source address to bind before connecting (127.0.0.N).
    pub bind: Option<IpAddr>,
    /// Long-poll (`/cget/poll`) instead of streams.
    pub poll: bool,
    /// Subscribe to this nchan channel (`/sub/<channel>`) instead of
    /// haoshuo inboxes; the users' uids then only name the subscribers.
    #[serde(default)]
    pub nchan_channel: Option<String>,
    /// Most connections being set up at once.
    pub max_inflight: usize,
    /// Seconds a connect plus response head may take.
    pub connect_timeout: u64,
    /// Reopen a failed subscription (a few times) instead of giving up.
    pub retry: bool,
    /// The worker exits by itself after this many seconds, whatever happens.
    pub deadline_secs: u64,
    /// (uid, token) of the users this worker subscribes for.
    pub users: Vec<(u64, String)>,
}

/// Commands after the init line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum ToWorker {
    Init(WorkerInit),
    /// Each second close and reopen this percentage of open streams.
    Churn {
        pct: f64,
    },
    /// Close everything, send `Final`, exit.
    Stop,
}

/// Counters a worker reports.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    /// Subscriptions open right now.
    pub open: u64,
    /// Subscriptions ever established (churn reopens included).
    pub established: u64,
    /// Attempts that failed: connect error, timeout, non-200, 401/429.
    pub failed: u64,
    /// Being connected right now.
    pub inflight: u64,
    /// Waiting for their turn to connect.
    pub pending: u64,
    /// Messages delivered (all, duplicates included).
    pub delivered: u64,
    /// Streams the server ended or broke while we wanted them.
    pub dropped: u64,
    /// Streams closed and reopened on purpose (`--churn`).
    pub churned: u64,
    /// Long-poll requests answered (poll mode).
    pub polls: u64,
}

impl Progress {
    pub fn add(&mut self, o: &Progress) {
        self.open += o.open;
        self.established += o.established;
        self.failed += o.failed;
        self.inflight += o.inflight;
        self.pending += o.pending;
        self.delivered += o.delivered;
        self.dropped += o.dropped;
        self.churned += o.churned;
        self.polls += o.polls;
    }
}

/// Reports from a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "lowercase")]
pub enum FromWorker {
    Progress(Progress),
    Final {
        progress: Progress,
        /// Latency histogram (µs) as (value, count) pairs.
        hist: Vec<(u64, u64)>,
        receivers: Vec<RecvSummary>,
        /// The first few distinct error messages, for the report.
        errors: Vec<String>,
    },
}

/// Reports from all workers, tagged with the worker's index; `None` means
/// that worker's stdout closed.
pub type Reports = Receiver<(usize, Option<FromWorker>)>;

/// The parent's end of one worker process.
pub struct WorkerHandle {
    child: Child,
    stdin: ChildStdin,
}

/// Starts `n` workers; their reports arrive on the returned channel tagged
/// with the worker's index (a `None` report means its stdout closed).
pub fn spawn_workers(n: usize) -> std::io::Result<(Vec<WorkerHandle>, Reports)> {
    let exe = std::env::current_exe()?;
    let (tx, rx) = channel();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut child = Command::new(&exe)
            .arg("--worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let tx: Sender<_> = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<FromWorker>(&line) {
                    Ok(ev) => {
                        if tx.send((i, Some(ev))).is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("worker {i}: bad report: {e}"),
                }
            }
            let _ = tx.send((i, None));
        });
        out.push(WorkerHandle { child, stdin });
    }
    Ok((out, rx))
}

impl WorkerHandle {
    pub fn send(&mut self, cmd: &ToWorker) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(cmd)?;
        line.push(b'\n');
        self.stdin.write_all(&line)?;
        self.stdin.flush()
    }

    /// Waits for the process to exit (it does once stopped or its stdin
    /// closes); kills it if it is still there after a grace period.
    pub fn reap(mut self) {
        drop(self.stdin);
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
