//! The parent's view of its worker processes during a run: spreading users
//! over them (each with its own source address 127.0.0.N), the progress
//! line, waiting for streams to be up or messages to arrive, and collecting
//! and merging their final reports (histograms, checker summaries).

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::checker::RecvSummary;
use crate::ipc::{self, FromWorker, Progress, Reports, ToWorker, WorkerHandle, WorkerInit};
use crate::provision::User;

/// Sockets one worker process holds at most (the open-file cap is 20,000).
pub const PER_PROC: usize = 19_000;

/// How the fleet is set up.
pub struct FleetOpts {
    pub target: SocketAddr,
    pub procs: Option<usize>,
    pub poll: bool,
    /// Subscribe to this nchan channel instead of haoshuo inboxes.
    pub nchan_channel: Option<String>,
    pub max_inflight: usize,
    pub connect_timeout: u64,
    pub retry: bool,
    pub deadline_secs: u64,
}

/// What the workers said at the end, merged.
pub struct Collected {
    pub progress: Progress,
    pub hist: Histogram<u64>,
    pub receivers: Vec<RecvSummary>,
    pub errors: Vec<String>,
}

pub struct Fleet {
    workers: Vec<WorkerHandle>,
    rx: Reports,
    latest: Vec<Progress>,
    finals: Vec<Option<Collected>>,
    gone: Vec<bool>,
}

/// Worker processes for `users` connections: as asked, or one per
/// [`PER_PROC`]; each binds its own 127.0.0.x source address.
pub fn planned_procs(asked: Option<usize>, users: usize) -> usize {
    asked
        .unwrap_or_else(|| users.div_ceil(PER_PROC))
        .clamp(1, 250)
        .min(users.max(1))
}

impl Fleet {
    /// Starts the workers and hands each its share of `users`.
    pub fn start(o: &FleetOpts, users: &[User]) -> Result<Fleet, String> {
        let procs = planned_procs(o.procs, users.len());
        let (mut workers, rx) =
            ipc::spawn_workers(procs).map_err(|e| format!("spawning workers: {e}"))?;
        let per = users.len().div_ceil(procs);
        for (i, w) in workers.iter_mut().enumerate() {
            let share = users.iter().skip(i * per).take(per);
            let bind = o
                .target
                .ip()
                .is_loopback()
                .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8)));
            let init = WorkerInit {
                target: o.target,
                bind,
                poll: o.poll,
                nchan_channel: o.nchan_channel.clone(),
                max_inflight: o.max_inflight,
                connect_timeout: o.connect_timeout,
                retry: o.retry,
                deadline_secs: o.deadline_secs,
                users: share.map(|u| (u.uid, u.token.clone())).collect(),
            };
            w.send(&ToWorker::Init(init))
                .map_err(|e| format!("worker {i}: {e}"))?;
        }
        Ok(Fleet {
            latest: vec![Progress::default(); procs],
            finals: (0..procs).map(|_| None).collect(),
            gone: vec![false; procs],
            workers,
            rx,
        })
    }

    pub fn procs(&self) -> usize {
        self.workers.len()
    }

    /// The workers' latest counters, summed.
    pub fn progress(&self) -> Progress {
        let mut p = Progress::default();
        for l in &self.latest {
            p.add(l);
        }
        p
    }

    /// Takes in reports for up to `wait`.
    fn pump(&mut self, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((i, Some(FromWorker::Progress(p)))) => self.latest[i] = p,
                Ok((
                    i,
                    Some(FromWorker::Final {
                        progress,
                        hist,
                        receivers,
                        errors,
                    }),
                )) => {
                    self.latest[i] = progress;
                    let mut h = new_hist();
                    for (v, n) in hist {
                        let _ = h.record_n(v, n);
                    }
                    self.finals[i] = Some(Collected {
                        progress,
                        hist: h,
                        receivers,
                        errors,
                    });
                }
                Ok((i, None)) => self.gone[i] = true,
                Err(RecvTimeoutError::Timeout) => return,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn line(&self, what: &str, started: Instant) {
        let p = self.progress();
        eprint!(
            "\r[{what} {:>5.1}s] open {} established {} failed {} inflight {} pending {} delivered {} dropped {}   ",
            started.elapsed().as_secs_f64(),
            p.open, p.established, p.failed, p.inflight, p.pending, p.delivered, p.dropped
        );
        let _ = std::io::stderr().flush();
    }

    /// Waits (showing progress) until every subscription is up or given
    /// up on, or `timeout`; returns how long it took.
    pub fn wait_connected(&mut self, want: u64, timeout: Duration) -> Duration {
        let started = Instant::now();
        while started.elapsed() < timeout {
            self.pump(Duration::from_millis(200));
            self.line("connect", started);
            let p = self.progress();
            let settled = p.open >= want
                || (p.inflight == 0 && p.pending == 0 && p.established + p.failed > 0);
            if settled || self.gone.iter().all(|g| *g) {
                break;
            }
        }
        eprintln!();
        started.elapsed()
    }

    /// Shows progress while `f` runs on another thread; returns its result.
    pub fn while_running<T: Send>(&mut self, what: &str, f: impl FnOnce() -> T + Send) -> T {
        let started = Instant::now();
        std::thread::scope(|s| {
            let h = s.spawn(f);
            while !h.is_finished() {
                self.pump(Duration::from_millis(200));
                self.line(what, started);
            }
            eprintln!();
            h.join().expect("scenario thread panicked")
        })
    }

    /// Holds for `d`, showing progress.
    pub fn hold(&mut self, what: &str, d: Duration) {
        self.while_running(what, || std::thread::sleep(d));
    }

    /// Waits until `delivered` reaches `want` or nothing arrived for
    /// `quiet` (and at most ten minutes in any case).
    pub fn drain(&mut self, want: u64, quiet: Duration) -> Duration {
        let started = Instant::now();
        let mut last = (self.progress().delivered, Instant::now());
        while started.elapsed() < Duration::from_secs(600) {
            self.pump(Duration::from_millis(100));
            self.line("drain", started);
            let d = self.progress().delivered;
            if d >= want {
                break;
            }
            if d != last.0 {
                last = (d, Instant::now());
            } else if last.1.elapsed() >= quiet {
                break;
            }
        }
        eprintln!();
        started.elapsed()
    }

    pub fn broadcast(&mut self, cmd: &ToWorker) {
        for (i, w) in self.workers.iter_mut().enumerate() {
            if let Err(e) = w.send(cmd) {
                eprintln!("worker {i}: {e}");
            }
        }
    }

    /// Stops the workers and merges their final reports.
    pub fn stop(mut self) -> Collected {
        self.broadcast(&ToWorker::Stop);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline
            && self
                .finals
                .iter()
                .zip(&self.gone)
                .any(|(f, g)| f.is_none() && !g)
        {
            self.pump(Duration::from_millis(200));
        }
        let mut all = Collected {
            progress: Progress::default(),
            hist: new_hist(),
            receivers: Vec::new(),
            errors: Vec::new(),
        };
        for (i, f) in self.finals.iter_mut().enumerate() {
            match f.take() {
                Some(c) => {
                    all.progress.add(&c.progress);
                    let _ = all.hist.add(&c.hist);
                    all.receivers.extend(c.receivers);
                    for e in c.errors {
                        if !all.errors.contains(&e) {
                            all.errors.push(e);
                        }
                    }
                }
                None => all.errors.push(format!("worker {i} sent no final report")),
            }
        }
        for w in self.workers {
            w.reap();
        }
        all
    }
}

/// The latency histogram: µs, 1 µs to 1 h, 3 significant digits.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}
