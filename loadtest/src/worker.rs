//! The worker process (`haoshuo-load --worker`): one mio event loop holding
//! thousands of subscription connections for the users the parent gave it.
//!
//! It connects at a bounded rate (at most `max_inflight` at once), tracks
//! each user's last msgid (so reopened streams resume at last + 1), records
//! latency (receive time - the send timestamp in the content) and feeds the
//! checker, churns streams when told, and reports progress every 200 ms and
//! a final summary on `stop` as JSON lines on stdout. It exits by itself at
//! its deadline or when its stdin closes.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::checker::{Receiver, RecvSummary};
use crate::clock::mono_ns;
use crate::conn::{start_connect, Conn, End, Kind, Sink};
use crate::ipc::{FromWorker, Progress, ToWorker, WorkerInit};
use crate::proto;

const WAKER: Token = Token(usize::MAX);
/// How often a user may be reconnected after failures or drops.
const MAX_RETRIES: u32 = 10;
/// The wait before a user's first retry; it doubles with each retry up to
/// [`RETRY_MAX`], jittered by up to half (a server that failed many
/// attempts at once is not hit by all of them again at once).
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(10);
const MAX_ERRORS_KEPT: usize = 8;

struct User {
    uid: u64,
    token: String,
    /// Next msgid wanted: last seen + 1.
    next_seq: u64,
    recv: Receiver,
    conn: Option<usize>,
    retries: u32,
    /// A subscription of this user's came up at least once.
    ever_up: bool,
}

/// The state deliveries update; split from the connection table so a
/// connection can borrow it while being borrowed itself.
struct State {
    users: Vec<User>,
    hist: Histogram<u64>,
    progress: Progress,
    errors: Vec<String>,
}

impl Sink for State {
    fn deliver(&mut self, user: usize, msgs: Vec<(u64, String)>) {
        let now = mono_ns();
        let u = &mut self.users[user];
        for (msgid, content) in msgs {
            u.recv.record(msgid);
            u.next_seq = u.next_seq.max(msgid + 1);
            self.progress.delivered += 1;
            if let Some(sent) = proto::content_timestamp(&content) {
                let us = now.saturating_sub(sent) / 1000;
                self.hist.saturating_record(us.max(1));
            }
        }
    }

    fn established(&mut self, user: usize) {
        self.progress.established += 1;
        self.progress.open += 1;
        self.users[user].retries = 0;
        self.users[user].ever_up = true;
    }

    fn poll_answered(&mut self) {
        self.progress.polls += 1;
    }

    fn resume(&self, user: usize) -> (u64, String, u64) {
        let u = &self.users[user];
        (u.uid, u.token.clone(), u.next_seq)
    }
}

impl State {
    fn note_error(&mut self, e: &str) {
        if self.errors.len() < MAX_ERRORS_KEPT && !self.errors.iter().any(|x| x == e) {
            self.errors.push(e.to_owned());
        }
    }
}

/// Runs a worker on this process's stdin/stdout; returns when done.
pub fn run() -> std::io::Result<()> {
    crate::clock::raise_nofile();
    let stdin = std::io::stdin();
    let mut first = String::new();
    stdin.lock().read_line(&mut first)?;
    let init = match serde_json::from_str::<ToWorker>(&first) {
        Ok(ToWorker::Init(init)) => init,
        _ => return Err(std::io::Error::other("worker: first line must be init")),
    };
    let mut poll = Poll::new()?;
    let waker = Waker::new(poll.registry(), WAKER)?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            let Ok(cmd) = serde_json::from_str::<ToWorker>(&line) else {
                continue;
            };
            if tx.send(cmd).is_err() {
                return;
            }
            let _ = waker.wake();
        }
        let _ = tx.send(ToWorker::Stop);
        let _ = waker.wake();
    });
    let mut w = Worker::new(init);
    w.run(&mut poll, &rx)
}

struct Worker {
    init: WorkerInit,
    host: String,
    st: State,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// Users waiting to connect now.
    queue: VecDeque<usize>,
    /// Users waiting to retry, with the earliest time they may.
    delayed: Vec<(usize, Instant)>,
    inflight: usize,
    churn_pct: f64,
    rng: u64,
}

impl Worker {
    fn new(mut init: WorkerInit) -> Worker {
        let users: Vec<User> = std::mem::take(&mut init.users)
            .into_iter()
            .map(|(uid, token)| User {
                uid,
                token,
                next_seq: 1,
                recv: Receiver::default(),
                conn: None,
                retries: 0,
                ever_up: false,
            })
            .collect();
        let queue = (0..users.len()).collect();
        Worker {
            host: init.target.to_string(),
            init,
            st: State {
                users,
                hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
                progress: Progress::default(),
                errors: Vec::new(),
            },
            conns: Vec::new(),
            free: Vec::new(),
            queue,
            delayed: Vec::new(),
            inflight: 0,
            churn_pct: 0.0,
            rng: 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id()),
        }
    }

    fn run(&mut self, poll: &mut Poll, rx: &mpsc::Receiver<ToWorker>) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(self.init.deadline_secs);
        let mut events = Events::with_capacity(4096);
        let mut scratch = vec![0u8; 64 * 1024];
        let mut last_report = Instant::now();
        let mut last_churn = Instant::now();
        let mut last_sweep = Instant::now();
        loop {
            self.start_connects(poll);
            poll.poll(&mut events, Some(Duration::from_millis(50)))?;
            for ev in events.iter() {
                if ev.token() == WAKER {
                    continue;
                }
                let slot = ev.token().0;
                let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
                    continue;
                };
                let mut res = Ok(());
                if ev.is_writable() || ev.is_error() {
                    res = conn.on_writable(&mut self.st);
                }
                if res.is_ok() && (ev.is_readable() || ev.is_read_closed()) {
                    res = conn.on_readable(&mut self.st, &mut scratch, &self.host);
                }
                if conn.up && !conn.released {
                    conn.released = true;
                    self.inflight -= 1;
                }
                if let Err(end) = res {
                    self.close(poll, slot, Some(end));
                }
            }
            while let Ok(cmd) = rx.try_recv() {
                match cmd {
                    ToWorker::Churn { pct } => self.churn_pct = pct,
                    ToWorker::Stop => return self.finish(poll),
                    ToWorker::Init(_) => {}
                }
            }
            let now = Instant::now();
            if now >= deadline {
                eprintln!("worker {}: deadline reached", std::process::id());
                return self.finish(poll);
            }
            if now - last_sweep >= Duration::from_millis(500) {
                last_sweep = now;
                self.sweep_timeouts(poll, now);
            }
            if self.churn_pct > 0.0 && now - last_churn >= Duration::from_secs(1) {
                last_churn = now;
                self.churn(poll);
            }
            if now - last_report >= Duration::from_millis(200) {
                last_report = now;
                report(&FromWorker::Progress(self.progress()))?;
            }
        }
    }

    /// Starts queued connections while fewer than `max_inflight` are being
    /// set up and their retry delay has passed.
    fn start_connects(&mut self, poll: &Poll) {
        if !self.delayed.is_empty() {
            let now = Instant::now();
            let queue = &mut self.queue;
            self.delayed.retain(|&(user, at)| {
                if at <= now {
                    queue.push_back(user);
                }
                at > now
            });
        }
        while self.inflight < self.init.max_inflight {
            let Some(user) = self.queue.pop_front() else {
                break;
            };
            let u = &self.st.users[user];
            let (kind, req) = match &self.init.nchan_channel {
                Some(ch) => (Kind::Nchan, proto::nchan_subscribe_request(&self.host, ch)),
                None if self.init.poll => (
                    Kind::Poll,
                    proto::subscribe_request(&self.host, false, u.uid, &u.token, u.next_seq),
                ),
                None => (
                    Kind::Stream,
                    proto::subscribe_request(&self.host, true, u.uid, &u.token, u.next_seq),
                ),
            };
            match start_connect(self.init.target, self.init.bind, None) {
                Ok(sock) => {
                    let slot = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    let mut conn = Conn::new(user, sock, kind, req);
                    if let Err(e) = poll.registry().register(
                        &mut conn.sock,
                        Token(slot),
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        self.free.push(slot);
                        self.failed(user, &format!("register: {e}"));
                        continue;
                    }
                    self.conns[slot] = Some(conn);
                    self.st.users[user].conn = Some(slot);
                    self.inflight += 1;
                }
                Err(e) => self.failed(user, &format!("socket/connect: {e}")),
            }
        }
    }

    /// An attempt failed before the subscription was up.
    fn failed(&mut self, user: usize, why: &str) {
        self.st.progress.failed += 1;
        self.st.note_error(why);
        self.retry(user);
    }

    fn retry(&mut self, user: usize) {
        let retries = self.st.users[user].retries;
        if self.init.retry && retries < MAX_RETRIES {
            self.st.users[user].retries += 1;
            let full = RETRY_FIRST
                .saturating_mul(1 << retries.min(16))
                .min(RETRY_MAX);
            let jitter = full.mul_f64((self.next_rand() % 1000) as f64 / 2000.0);
            self.delayed.push((user, Instant::now() + full - jitter));
        }
    }

    /// Closes the connection in `slot`; `end` says why (None: on purpose).
    fn close(&mut self, poll: &Poll, slot: usize, end: Option<End>) {
        let Some(mut conn) = self.conns[slot].take() else {
            return;
        };
        let _ = poll.registry().deregister(&mut conn.sock);
        self.free.push(slot);
        self.st.users[conn.user].conn = None;
        if !conn.released {
            self.inflight -= 1;
        }
        if conn.up {
            self.st.progress.open -= 1;
        }
        match end {
            None => {}
            Some(End::Failed(why)) => {
                if conn.up {
                    // A refusal after being up (e.g. 429 mid-stream).
                    self.st.progress.dropped += 1;
                    self.st.note_error(&why);
                    self.retry(conn.user);
                } else {
                    self.failed(conn.user, &why);
                }
            }
            Some(End::Dropped(why)) => {
                self.st.progress.dropped += 1;
                self.st.note_error(&why);
                self.retry(conn.user);
            }
        }
    }

    /// Fails connections that took too long to come up.
    fn sweep_timeouts(&mut self, poll: &Poll, now: Instant) {
        let limit = Duration::from_secs(self.init.connect_timeout);
        let late: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let c = c.as_ref()?;
                (!c.up && now - c.started > limit).then_some(i)
            })
            .collect();
        for slot in late {
            self.close(poll, slot, Some(End::Failed("connect/head timeout".into())));
        }
    }

    /// Closes `churn_pct` % of the open subscriptions and queues them to
    /// reopen at their last msgid + 1.
    fn churn(&mut self, poll: &Poll) {
        let open: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().filter(|c| c.up).map(|_| i))
            .collect();
        let n = ((open.len() as f64) * self.churn_pct / 100.0).round() as usize;
        let mut picked = open;
        for i in 0..n.min(picked.len()) {
            let j = i + (self.next_rand() as usize) % (picked.len() - i);
            picked.swap(i, j);
        }
        picked.truncate(n);
        for slot in picked {
            let user = self.conns[slot].as_ref().map(|c| c.user);
            self.close(poll, slot, None);
            if let Some(user) = user {
                self.st.progress.churned += 1;
                self.queue.push_back(user);
            }
        }
    }

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn progress(&self) -> Progress {
        let mut p = self.st.progress;
        p.inflight = self.inflight as u64;
        p.pending = (self.queue.len() + self.delayed.len()) as u64;
        p
    }

    /// Closes everything and sends the final report.
    fn finish(&mut self, poll: &Poll) -> std::io::Result<()> {
        let progress = self.progress();
        for slot in 0..self.conns.len() {
            self.close(poll, slot, None);
        }
        let hist = self
            .st
            .hist
            .iter_recorded()
            .map(|v| (v.value_iterated_to(), v.count_at_value()))
            .collect();
        let receivers = self
            .st
            .users
            .iter()
            .filter(|u| !u.ever_up || u.recv.distinct + u.recv.dups + u.recv.bogus > 0)
            .map(|u| RecvSummary {
                never_up: !u.ever_up,
                ..u.recv.summary(u.uid)
            })
            .collect();
        report(&FromWorker::Final {
            progress,
            hist,
            receivers,
            errors: std::mem::take(&mut self.st.errors),
        })
    }
}

fn report(ev: &FromWorker) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(ev)?;
    line.push(b'\n');
    let mut out = std::io::stdout().lock();
    out.write_all(&line)?;
    out.flush()
}
