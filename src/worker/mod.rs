//! The worker pool: where API calls meet the store.
//!
//! Reactors never block on storage: they put a [`Job`] on one shared
//! bounded queue ([`Jobs`]) and go on. Each worker thread takes jobs, runs
//! them against the [`Api`], and sends the answer to the mailbox of the
//! reactor that owns the connection, which wakes it.
//!
//! A worker that finds the queue empty goes to sleep at once on a condition
//! variable, and a job queued while workers sleep wakes one of them. It does
//! not spin first (as a channel's blocking receive does, with `sched_yield`
//! between tries): with many processes each serving a trickle of requests,
//! that spinning was a large share of the CPU they used.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use crate::api::{Api, Request};
use crate::bus::{CoreMsg, Reply, Sub, SubKey};
use crate::delivery::wire::Kind;
use crate::http::response::error_response;

/// Jobs that may wait for a worker, by default (`--job-queue`). When the
/// queue is full, reactors answer 503 at once instead of queueing without
/// bound: past this many, a client would wait longer for its answer than
/// it would to retry.
pub const QUEUE_CAPACITY: usize = 64 * 1024;

pub enum Job {
    /// A complete request from a connection, handed on `at`.
    Request {
        origin: SubKey,
        req: Request,
        at: Instant,
    },
    /// A subscriber asks for the page of stored messages from `sub.next` on.
    Page { origin: SubKey, sub: Sub },
}

/// The job queue's sending side (reactors): jobs go into a bounded
/// channel, and a sleeping worker is woken for each.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<SendSide>,
}

/// What the workers take jobs from.
pub struct JobsRx {
    rx: Receiver<Job>,
    sleep: Arc<Sleep>,
    /// How long a sleeping worker waits before it looks anyway.
    backstop: Duration,
}

struct SendSide {
    /// Taken when the last [`Jobs`] goes: the workers then see the channel
    /// disconnected, after they are woken.
    tx: Option<Sender<Job>>,
    sleep: Arc<Sleep>,
}

/// Where idle workers sleep.
#[derive(Default)]
struct Sleep {
    /// Workers asleep or about to be (counted before their last look at
    /// the queue, under `lock`).
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

/// How long a sleeping worker waits before it looks at the queue anyway: a
/// backstop only, every job wakes one.
const SLEEP_MAX: Duration = Duration::from_secs(1);

impl Sleep {
    fn wake_one(&self) {
        // Pairs with the fence in `JobsRx::next`: either this sees the
        // worker counted, or the worker's last look sees the job.
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) > 0 {
            let _held = lock(&self.lock);
            self.wake.notify_one();
        }
    }
}

/// The job queue, holding at most `capacity` jobs.
pub fn queue(capacity: usize) -> (Jobs, JobsRx) {
    queue_with_backstop(capacity, SLEEP_MAX)
}

/// The same, sleeping workers looking at the queue anyway every `backstop`
/// (tests make it long, so that only a wake-up can hand a job over).
fn queue_with_backstop(capacity: usize, backstop: Duration) -> (Jobs, JobsRx) {
    let (tx, rx) = crossbeam_channel::bounded(capacity);
    let sleep = Arc::new(Sleep::default());
    let jobs = Jobs {
        inner: Arc::new(SendSide {
            tx: Some(tx),
            sleep: sleep.clone(),
        }),
    };
    (
        jobs,
        JobsRx {
            rx,
            sleep,
            backstop,
        },
    )
}

impl Jobs {
    /// Queues `job` and wakes a sleeping worker; gives it back if the
    /// queue is full (or the workers are gone).
    // The job comes back by value, as from the channel's own `try_send`
    // (the reactor answers its request 503 from it): boxing it would cost
    // an allocation per job for the rare full queue.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, job: Job) -> Result<(), TrySendError<Job>> {
        match &self.inner.tx {
            Some(tx) => tx.try_send(job)?,
            None => return Err(TrySendError::Disconnected(job)),
        }
        self.inner.sleep.wake_one();
        Ok(())
    }

    /// Jobs waiting for a worker.
    pub fn len(&self) -> usize {
        self.inner.tx.as_ref().map_or(0, Sender::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for SendSide {
    fn drop(&mut self) {
        self.tx = None;
        let _held = lock(&self.sleep.lock);
        self.sleep.wake.notify_all();
    }
}

impl JobsRx {
    /// How many jobs wait, for whoever asks later (metrics); it keeps no
    /// sender alive, so the workers still end with the last [`Jobs`].
    pub fn depth(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let rx = self.rx.clone();
        move || rx.len()
    }

    /// The next job if one waits (tests that play a reactor look at what
    /// it asked the workers for).
    #[cfg(test)]
    pub(crate) fn try_next(&self) -> Option<Job> {
        self.rx.try_recv().ok()
    }

    /// The next job, sleeping while there is none; `None` once every
    /// [`Jobs`] is gone and the queue is empty.
    fn next(&self) -> Option<Job> {
        loop {
            match self.rx.try_recv() {
                Ok(job) => return Some(job),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            let held = lock(&self.sleep.lock);
            self.sleep.sleeping.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let job = self.rx.try_recv();
            if let Err(TryRecvError::Empty) = job {
                // Released while asleep: a job queued now wakes this one.
                let _ = self
                    .sleep
                    .wake
                    .wait_timeout(held, self.backstop)
                    .unwrap_or_else(|e| e.into_inner());
            }
            self.sleep.sleeping.fetch_sub(1, Ordering::SeqCst);
            match job {
                Ok(job) => return Some(job),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
        }
    }
}

/// Poisoning means a worker panicked outside a job's `catch_unwind`
/// while holding the lock, which guards nothing but the sleep itself.
fn lock(m: &Mutex<()>) -> std::sync::MutexGuard<'_, ()> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts `n` workers; they exit when every [`Jobs`] is dropped.
pub fn spawn(n: usize, api: Arc<Api>, jobs: JobsRx) -> Vec<JoinHandle<()>> {
    let jobs = Arc::new(jobs);
    (0..n)
        .map(|i| {
            let api = api.clone();
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("haoshuo-worker-{i}"))
                .spawn(move || run(&api, &jobs))
                .expect("spawning a worker thread")
        })
        .collect()
}

fn run(api: &Api, jobs: &JobsRx) {
    while let Some(job) = jobs.next() {
        let (origin, msg) = match job {
            Job::Request { origin, req, at } => {
                // A bug in one handler must not leave its client waiting
                // forever, nor take the worker down with it: answer 500.
                let reply = catch_unwind(AssertUnwindSafe(|| api.handle(origin, &req)))
                    .unwrap_or_else(|_| {
                        error!(
                            "worker: a request for {} panicked; answered 500",
                            String::from_utf8_lossy(req.head.path(&req.raw))
                        );
                        Reply::Http {
                            bytes: error_response(500, "internal error", false),
                            keep_alive: false,
                        }
                    });
                let endpoint = crate::api::endpoint_index(req.head.path(&req.raw), req.admin);
                let status = status_of(&reply);
                api.metrics().request(endpoint, status, Some(at.elapsed()));
                if crate::log::access_enabled() {
                    log_access(api, &req, &reply, status, at);
                }
                (
                    origin,
                    CoreMsg::Reply {
                        conn: origin.conn,
                        reply,
                    },
                )
            }
            Job::Page { origin, sub } => {
                let page = catch_unwind(AssertUnwindSafe(|| api.page(&sub))).unwrap_or_else(|_| {
                    error!("worker: a page read panicked; the subscription ends");
                    None
                });
                let conn = origin.conn;
                (origin, CoreMsg::Page { conn, page })
            }
        };
        api.router().mailbox(origin.core).send(msg);
    }
}

/// The access log's line for a request a worker answered.
fn log_access(api: &Api, req: &Request, reply: &Reply, status: u16, at: Instant) {
    let head = &req.head;
    let method = req.raw.split(|&b| b == b' ').next().unwrap_or(b"-");
    crate::log::access(&crate::log::Access {
        client: api.client(req),
        method,
        target: &crate::log::access_target(head.path(&req.raw), head.query(&req.raw)),
        status,
        bytes: match reply {
            Reply::Http { bytes, .. } => Some(bytes.len()),
            _ => None,
        },
        took: at.elapsed(),
    });
}

/// The HTTP status a reply answers with (a stream's or poll's is 200, a
/// WebSocket's 101, refusals included: they are frames).
fn status_of(reply: &Reply) -> u16 {
    match reply {
        Reply::Http { bytes, .. } => bytes
            .get(9..12)
            .and_then(|code| std::str::from_utf8(code).ok()?.parse().ok())
            .unwrap_or(0),
        Reply::Subscribed(s) if s.kind == Kind::Ws => 101,
        Reply::StreamRefused { kind: Kind::Ws, .. } => 101,
        Reply::Subscribed(_) | Reply::StreamRefused { .. } => 200,
    }
}

#[cfg(test)]
mod tests {
    //! The real pool (`spawn` and its loop, the real `Api`, router and
    //! mailbox) in front of a store whose every call panics: no input
    //! makes a handler panic on a sound store, so a broken store stands in
    //! for a bug in one.

    use std::time::Duration;

    use mio::{Poll, Token, Waker};

    use super::*;
    use crate::api::Options;
    use crate::bus::ConnRef;
    use crate::http::request::parse_head;
    use crate::net::mailbox::Mailbox;
    use crate::router::Router;
    use crate::store::{Gid, Limit, MsgId, NewMessage, Once, Page, Result, Store, TokenInfo, Uid};

    struct Broken;

    /// Every call: the bug.
    fn bug() -> ! {
        panic!("a bug in the store (on purpose, in a test)")
    }

    impl Store for Broken {
        fn create_user(&self, _: &str, _: &str, _: &str) -> Result<Uid> {
            bug()
        }
        fn find_user(&self, _: &str, _: &str) -> Result<Option<(Uid, String)>> {
            bug()
        }
        fn user_exists(&self, _: &str, _: Uid) -> Result<bool> {
            bug()
        }
        fn create_group(&self, _: &str, _: Uid, _: &str, _: &[Uid], _: usize) -> Result<Gid> {
            bug()
        }
        fn group_members(&self, _: &str, _: Gid) -> Result<Option<Vec<Uid>>> {
            bug()
        }
        fn put_token(&self, _: &str, _: &TokenInfo, _: usize) -> Result<Vec<String>> {
            bug()
        }
        fn ping(&self) -> Result<()> {
            bug()
        }
        fn get_token(&self, _: &str) -> Result<Option<TokenInfo>> {
            bug()
        }
        fn delete_token(&self, _: &str, _: Uid, _: &str) -> Result<()> {
            bug()
        }
        fn append(&self, _: &str, _: &[Uid], _: &NewMessage) -> Result<Vec<MsgId>> {
            bug()
        }
        fn append_once(
            &self,
            _: &str,
            _: &[Uid],
            _: &NewMessage,
            _: &Once,
        ) -> Result<Vec<Option<MsgId>>> {
            bug()
        }
        fn page(&self, _: &str, _: Uid, _: MsgId, _: Limit) -> Result<Page> {
            bug()
        }
        fn acked(&self, _: &str, _: Uid) -> Result<MsgId> {
            bug()
        }
        fn ack(&self, _: &str, _: Uid, _: MsgId) -> Result<()> {
            bug()
        }
        fn flush(&self) -> Result<()> {
            bug()
        }
    }

    fn pull_request() -> Request {
        let body =
            br#"{"appid":"a","uid":1,"token":"0123456789abcdef0123456789abcdef0123456789abcdef"}"#;
        let mut raw = format!(
            "POST /pull HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        let head = parse_head(&raw, 1 << 16)
            .expect("a valid request")
            .expect("a whole head");
        Request {
            raw,
            head,
            admin: false,
            peer: None,
        }
    }

    #[test]
    fn a_panicking_call_is_answered_500_and_the_worker_goes_on() {
        let poll = Poll::new().expect("a poll");
        let waker = Waker::new(poll.registry(), Token(1)).expect("a waker");
        let (mailbox, inbox) = Mailbox::new(waker);
        let router = Arc::new(Router::new(vec![mailbox], 16, 1000));
        let api = Arc::new(Api::new(
            Arc::new(Broken),
            router,
            Options {
                page_size: 100,
                page_bytes: 1 << 18,
                token_ttl: 3600,
                admin_key: None,
                cmsgid_window: 600,
                hash_concurrency: 1,
                auth_per_ip: 0,
                login_per_user: 0,
                send_rate: 0,
                max_group_members: 100,
                max_groups_per_user: 0,
                max_tokens_per_user: 0,
                allow_origin: Vec::new(),
                demo: false,
                trust_proxy: Vec::new(),
                node: "test".into(),
            },
        ));
        let (jobs, rx) = queue(4);
        let workers = spawn(1, api, rx);
        // One worker: the second answer proves it survived the first panic.
        for slot in 0..2 {
            let origin = SubKey {
                core: 0,
                conn: ConnRef { slot, gen: 7 },
            };
            let req = pull_request();
            let at = Instant::now();
            assert!(jobs.try_send(Job::Request { origin, req, at }).is_ok());
            let msg = inbox
                .recv_timeout(Duration::from_secs(5))
                .expect("no answer: the worker died with its job");
            let CoreMsg::Reply { conn, reply } = msg else {
                panic!("not a reply");
            };
            assert_eq!(conn, origin.conn);
            let Reply::Http { bytes, keep_alive } = reply else {
                panic!("not an HTTP answer");
            };
            let text = String::from_utf8_lossy(&bytes);
            assert!(text.starts_with("HTTP/1.1 500 "), "{text}");
            assert!(
                text.ends_with(r#"{"type":"error","code":500,"msg":"internal error"}"#),
                "{text}"
            );
            assert!(!keep_alive, "a connection whose call panicked is kept");
        }
        drop(jobs);
        for w in workers {
            w.join().expect("the worker exits cleanly");
        }
    }
}

#[cfg(test)]
mod queue_tests {
    use super::*;
    use crate::bus::{AppKey, ConnRef};

    fn page_job(uid: u64) -> Job {
        Job::Page {
            origin: SubKey {
                core: 0,
                conn: ConnRef { slot: 0, gen: 0 },
            },
            sub: Sub {
                app: AppKey::default(),
                uid,
                next: 1,
            },
        }
    }

    fn uid_of(job: &Job) -> u64 {
        match job {
            Job::Page { sub, .. } => sub.uid,
            Job::Request { .. } => unreachable!("only pages are queued here"),
        }
    }

    /// Waits until `n` workers sleep (they count themselves first).
    fn until_asleep(rx: &JobsRx, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while rx.sleep.sleeping.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "the workers never slept");
            std::thread::yield_now();
        }
    }

    #[test]
    fn sleeping_workers_are_woken_for_every_job_and_end_with_the_queue() {
        // Far past the test's waits: a job reaches a worker only if it
        // wakes one.
        let (jobs, rx) = queue_with_backstop(16, Duration::from_secs(3600));
        let rx = Arc::new(rx);
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (rx, done) = (rx.clone(), done_tx.clone());
                std::thread::spawn(move || {
                    while let Some(job) = rx.next() {
                        done.send(uid_of(&job)).expect("the test listens");
                    }
                })
            })
            .collect();
        for round in 0..3u64 {
            until_asleep(&rx, 2);
            jobs.try_send(page_job(round)).expect("room");
            let got = done_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("no sleeping worker was woken for the job");
            assert_eq!(got, round);
        }
        drop(jobs);
        for w in workers {
            w.join().expect("a worker ends when the last sender goes");
        }
    }

    #[test]
    fn a_full_queue_gives_the_job_back() {
        let (jobs, rx) = queue(2);
        jobs.try_send(page_job(1)).expect("room");
        jobs.try_send(page_job(2)).expect("room");
        assert_eq!(jobs.len(), 2);
        match jobs.try_send(page_job(3)) {
            Err(TrySendError::Full(job)) => assert_eq!(uid_of(&job), 3),
            _ => panic!("a third job fit a queue of two"),
        }
        assert_eq!(rx.next().map(|j| uid_of(&j)), Some(1));
        assert_eq!(rx.next().map(|j| uid_of(&j)), Some(2));
        drop(jobs);
        assert!(rx.next().is_none(), "no senders, no jobs: done");
    }
}
