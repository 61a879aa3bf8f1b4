//! The worker pool: where API calls meet the store.
//!
//! Reactors never wait on I/O: they put a [`Job`] on one shared bounded
//! queue ([`Jobs`]) and go on. Each worker thread takes jobs, runs them
//! against the [`Api`], and sends the answer to the mailbox of the reactor
//! that owns the connection, which wakes it. (The quick calls on a store
//! that never waits, the embedded one, a reactor runs itself with
//! [`run_request`], as a worker would: see [`Work`].)
//!
//! The queue is a [`crate::sync::queue`]: a worker that finds it empty goes
//! to sleep at once on a condition variable (no spinning `sched_yield`
//! first, as a channel's blocking receive does), a job queued while workers
//! sleep wakes one of them, and it takes memory only for the jobs in it (as
//! an array channel of `--job-queue` slots it took 8 MiB in every process).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::api::{Answering, Api, Deliver, Handled, Held, Request};
use crate::bus::{ConnRef, CoreMsg, Reply, Sub, SubKey};
use crate::delivery::wire::Kind;
use crate::http::buffer;
use crate::http::response::error_response;
use crate::metrics::Metrics;
use crate::sync::{QueueRx, QueueTx};

/// Jobs that may wait for a worker, by default (`--job-queue`). When the
/// queue is full, reactors answer 503 at once instead of queueing without
/// bound: past this many, a client would wait longer for its answer than
/// it would to retry.
pub const QUEUE_CAPACITY: usize = 64 * 1024;

pub enum Job {
    /// A complete request from a connection.
    Request { origin: SubKey, req: Request },
    /// A subscriber asks for the page of stored messages from `sub.next` on.
    Page { origin: SubKey, sub: Sub },
}

/// The job queue's sending side (reactors). A full queue gives the job
/// back (the reactor answers its request 503 from it).
pub type Jobs = QueueTx<Job>;

/// What the workers take jobs from.
pub type JobsRx = QueueRx<Job>;

/// Where a reactor's requests are run: the workers' queue, and the API it
/// runs the quick ones with itself when the store never waits on I/O
/// ([`Api::runs_inline`]; `None`: every request goes to a worker).
#[derive(Clone)]
pub struct Work {
    pub jobs: Jobs,
    pub inline: Option<Arc<Api>>,
}

/// The job queue, holding at most `capacity` jobs.
pub fn queue(capacity: usize) -> (Jobs, JobsRx) {
    crate::sync::queue(capacity)
}

/// How the hand-offs between reactors and workers are batched: each
/// crossing may wake a sleeping thread (a futex call, and a context switch
/// on a busy core), so a burst of requests should cost a few wake-ups, not
/// one per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Batching {
    /// A reactor queues every job of its loop turn, then wakes one
    /// sleeping worker per this many jobs (rounded up).
    pub jobs_per_wake: usize,
    /// A worker that finds more jobs queued holds its answers back, up to
    /// this many and for `answer_hold` after the first, and gives each
    /// reactor its share with one wake-up.
    pub answers_held: usize,
    /// The longest a worker holds an answer back while it runs more jobs.
    pub answer_hold: Duration,
}

impl Batching {
    /// For a store whose calls never wait on I/O (the embedded store),
    /// jobs are a few microseconds each: a woken worker runs a run of them
    /// and answers them together. On Redis a `/p` takes the worker a few
    /// microseconds too (Redis answers it from its lane), but other calls
    /// wait out a round trip: answers go at once.
    pub fn for_store(waits_on_io: bool) -> Batching {
        if waits_on_io {
            // A worker that is about to wait wakes another for the jobs
            // behind it (`sync::blocking`); an answer never waits behind
            // another job's round trip.
            Batching {
                jobs_per_wake: 8,
                answers_held: 1,
                answer_hold: Duration::ZERO,
            }
        } else {
            // Measured with loadtest/bench/request_path.sh (docs/benchmarks.md,
            // session 7): 8 and 16 took the fewest context switches and CPU
            // per `/p`; 200 µs is 40 `/p` of a worker's time.
            Batching {
                jobs_per_wake: 8,
                answers_held: 16,
                answer_hold: Duration::from_micros(200),
            }
        }
    }
}

/// Starts `n` workers; they exit when every [`Jobs`] is dropped.
pub fn spawn(n: usize, api: Arc<Api>, jobs: JobsRx, batching: Batching) -> Vec<JoinHandle<()>> {
    let jobs = Arc::new(jobs);
    (0..n)
        .map(|i| {
            let api = api.clone();
            let jobs = jobs.clone();
            std::thread::Builder::new()
                .name(format!("haoshuo-worker-{i}"))
                .spawn(move || {
                    // A job that waits (a Redis round trip, a password
                    // hash) wakes another worker for the jobs behind it.
                    let queue = jobs.clone();
                    crate::sync::on_block(move || queue.hand_on());
                    run(&api, &jobs, batching)
                })
                .expect("spawning a worker thread")
        })
        .collect()
}

/// Takes jobs until the queue ends. Answers go out when no job is left
/// queued, or `answers_held` of them are waiting, or the first has waited
/// `answer_hold`: with `answers_held` 1, each at once.
fn run(api: &Api, jobs: &JobsRx, batching: Batching) {
    let mut out = Answers::new(api.router().cores(), batching);
    loop {
        let job = if out.is_empty() {
            jobs.next()
        } else {
            jobs.try_next()
        };
        let Some(job) = job else {
            if out.is_empty() {
                return; // no job and no sender left
            }
            out.send(api);
            continue;
        };
        let Some((origin, msg)) = run_job(api, job) else {
            continue; // answered later, from wherever the store answers
        };
        out.push(origin.core, msg);
        if out.is_due() {
            out.send(api);
        }
    }
}

/// A worker's answers not yet sent, and the reactors they go to.
struct Answers {
    msgs: Vec<(u16, CoreMsg)>,
    /// When the first of `msgs` was ready.
    since: Option<Instant>,
    /// Reactors with an answer in `msgs`.
    cores: Vec<bool>,
    held: usize,
    hold: Duration,
}

impl Answers {
    fn new(cores: usize, batching: Batching) -> Answers {
        let held = batching.answers_held.max(1);
        Answers {
            msgs: Vec::with_capacity(held),
            since: None,
            cores: vec![false; cores],
            held,
            hold: batching.answer_hold,
        }
    }

    fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    fn push(&mut self, core: u16, msg: CoreMsg) {
        if self.msgs.is_empty() && self.held > 1 {
            self.since = Some(Instant::now());
        }
        self.msgs.push((core, msg));
    }

    fn is_due(&self) -> bool {
        self.msgs.len() >= self.held || self.since.is_some_and(|t| t.elapsed() >= self.hold)
    }

    /// Puts every answer in its reactor's inbox, then wakes each of those
    /// reactors once.
    fn send(&mut self, api: &Api) {
        let router = api.router();
        for (core, msg) in self.msgs.drain(..) {
            router.mailbox(core).post(msg);
            self.cores[usize::from(core)] = true;
        }
        for (core, touched) in self.cores.iter_mut().enumerate() {
            if std::mem::take(touched) {
                router.mailbox(core as u16).wake();
            }
        }
        self.since = None;
    }
}

/// Runs one job: the answer and who it goes to; `None` when the answer
/// goes later, once the store has answered (see [`Api::handle_then`]).
fn run_job(api: &Api, job: Job) -> Option<(SubKey, CoreMsg)> {
    match job {
        Job::Request { origin, req } => {
            match run_request(api, origin, req, None) {
                Ran::Answered(msg) => Some((origin, msg)),
                // Not asked to hold, it held nothing; a worker may wait.
                Ran::Later | Ran::Held(_) | Ran::WouldWait(_) => None,
            }
        }
        Job::Page { origin, sub } => {
            let page = catch_unwind(AssertUnwindSafe(|| api.page(&sub))).unwrap_or_else(|_| {
                error!("worker: a page read panicked; the subscription ends");
                None
            });
            let conn = origin.conn;
            Some((origin, CoreMsg::Page { conn, page }))
        }
    }
}

/// Runs one request (read at `req.at`) from the connection `origin` names, on a
/// worker or on that connection's reactor ([`Api::runs_inline`]). With
/// `held` (a reactor's), a send waits there to be committed with others
/// ([`Api::commit_held`]) on a store that never waits; on one that may, a
/// call that would wait is given back, not run ([`Ran::WouldWait`]).
pub fn run_request(api: &Api, origin: SubKey, req: Request, held: Option<&Held>) -> Ran {
    let path = req.head.path(&req.raw);
    let endpoint = crate::api::endpoint_index(path, req.admin);
    let later = || -> Deliver {
        let done = Done::of(api, &req, origin, endpoint);
        let (router, metrics) = (api.router().clone(), api.metrics().clone());
        Box::new(move |reply| {
            let msg = done.account(&metrics, reply, Instant::now());
            router.mailbox(origin.core).send(msg);
        })
    };
    let answering = match held {
        // A reactor's: on a store that never waits a send is held, to be
        // committed with the turn's others; on one that may, nothing may.
        Some(held) if !api.waits_on_io() => Answering::Held(held),
        Some(_) => Answering::Queued(&later),
        None => Answering::Deliver(&later),
    };
    // A bug in one handler must not leave its client waiting forever, nor
    // take the thread down with it: answer 500.
    let handled = catch_unwind(AssertUnwindSafe(|| {
        api.handle_then(origin, &req, Some(answering))
    }))
    .unwrap_or_else(|_| {
        error!(
            "a request for {} panicked; answered 500",
            String::from_utf8_lossy(path)
        );
        Handled::Answer(internal_error())
    });
    let done = || Done::of(api, &req, origin, endpoint);
    let ran = match handled {
        Handled::Answer(reply) => {
            Ran::Answered(done().account(api.metrics(), reply, Instant::now()))
        }
        Handled::Later if matches!(answering, Answering::Held(_)) => {
            Ran::Held(HeldAnswer { done: done() })
        }
        Handled::Later => Ran::Later,
        Handled::WouldWait => return Ran::WouldWait(req),
    };
    // The next answer this thread builds goes out in it.
    buffer::give_back(req.raw);
    ran
}

/// The answer to a request whose handling failed (a bug): a 500, and the
/// connection closed after it.
pub fn internal_error() -> Reply {
    Reply::Http {
        bytes: error_response(500, "internal error", false),
        keep_alive: false,
    }
}

/// What became of a request [`run_request`] ran.
pub enum Ran {
    /// Its answer, counted and logged, for the connection's reactor.
    Answered(CoreMsg),
    /// It goes to that reactor later, once the store has answered.
    Later,
    /// A send held back: [`Api::commit_held`] gives its answer, in the
    /// order the sends were held, for this to count and log.
    Held(HeldAnswer),
    /// Not run: on a reactor it would have waited ([`Handled::WouldWait`]);
    /// it goes to a worker.
    WouldWait(Request),
}

/// A held send's request, waiting for its answer.
pub struct HeldAnswer {
    done: Done,
}

impl HeldAnswer {
    /// The answer, counted and logged, for the connection's reactor;
    /// `now` is when the group it was committed with was answered.
    pub fn answer(self, metrics: &Metrics, reply: Reply, now: Instant) -> CoreMsg {
        self.done.account(metrics, reply, now)
    }
}

/// What is counted and logged of a request once it is answered.
struct Done {
    conn: ConnRef,
    endpoint: usize,
    at: Instant,
    /// The access log's client, method and target, when it is on.
    access: Option<(Option<std::net::IpAddr>, Vec<u8>, String)>,
}

impl Done {
    fn of(api: &Api, req: &Request, origin: SubKey, endpoint: usize) -> Done {
        let access = crate::log::access_enabled().then(|| {
            let head = &req.head;
            let method = req.raw.split(|&b| b == b' ').next().unwrap_or(b"-");
            let target = crate::log::access_target(head.path(&req.raw), head.query(&req.raw));
            (api.client(req), method.to_vec(), target)
        });
        Done {
            conn: origin.conn,
            endpoint,
            at: req.at,
            access,
        }
    }

    /// Counts the answer given `now`, logs it, and makes it the reactor's
    /// message. (`metrics` is passed, not kept: an `Arc` cloned per request
    /// would have every worker write one shared count.)
    fn account(self, metrics: &Metrics, reply: Reply, now: Instant) -> CoreMsg {
        let status = status_of(&reply);
        let took = now.saturating_duration_since(self.at);
        metrics.request(self.endpoint, status, Some(took));
        if let Some((client, method, target)) = &self.access {
            crate::log::access(&crate::log::Access {
                client: *client,
                method,
                target,
                status,
                bytes: match &reply {
                    Reply::Http { bytes, .. } => Some(bytes.len()),
                    _ => None,
                },
                took,
            });
        }
        CoreMsg::Reply {
            conn: self.conn,
            reply,
        }
    }
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
        request(raw)
    }

    fn request(raw: Vec<u8>) -> Request {
        Request::parse(raw, false).expect("a whole, valid request")
    }

    /// The waker's wake-ups pending on `poll` (an eventfd: 0 or 1), waiting
    /// up to `wait` for one.
    fn wakes(poll: &mut Poll, wait: Duration) -> usize {
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(wait)).expect("polling");
        events.iter().count()
    }

    #[test]
    fn a_run_of_queued_jobs_is_answered_with_one_wake_up() {
        let mut poll = Poll::new().expect("a poll");
        let waker = Waker::new(poll.registry(), Token(1)).expect("a waker");
        let (mailbox, inbox) = Mailbox::new(waker);
        let router = Arc::new(Router::new(vec![mailbox], 16, 1000));
        // Unknown paths: answered 404 without the store.
        let api = Arc::new(Api::new(Arc::new(Broken), router, Options::unlimited("t")));
        let (jobs, rx) = crate::sync::queue_with_backstop(16, Duration::from_secs(3600));
        // Queued before the worker starts: it finds a run of five.
        for slot in 0..5 {
            let origin = SubKey {
                core: 0,
                conn: ConnRef { slot, gen: 1 },
            };
            let req = request(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".to_vec());
            assert!(jobs.try_queue(Job::Request { origin, req }).is_ok());
        }
        let batching = Batching {
            jobs_per_wake: 1,
            answers_held: 5,
            answer_hold: Duration::from_secs(3600),
        };
        let workers = spawn(1, api, rx, batching);
        assert_eq!(wakes(&mut poll, Duration::from_secs(10)), 1, "no answer");
        // The reactor's one wake-up came after all five were in its inbox.
        assert_eq!(inbox.len(), 5, "answers woke the reactor one by one");
        let slots: Vec<u32> = inbox
            .try_iter()
            .map(|m| match m {
                CoreMsg::Reply {
                    conn,
                    reply: Reply::Http { bytes, .. },
                } => {
                    assert!(bytes.starts_with(b"HTTP/1.1 404 "));
                    conn.slot
                }
                _ => panic!("not an HTTP answer"),
            })
            .collect();
        assert_eq!(slots, [0, 1, 2, 3, 4], "answered in order");
        drop(jobs);
        for w in workers {
            w.join().expect("the worker exits cleanly");
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
            Options::unlimited("test"),
        ));
        let (jobs, rx) = queue(4);
        let workers = spawn(1, api, rx, Batching::for_store(true));
        // One worker: the second answer proves it survived the first panic.
        for slot in 0..2 {
            let origin = SubKey {
                core: 0,
                conn: ConnRef { slot, gen: 7 },
            };
            let req = pull_request();
            assert!(jobs.try_send(Job::Request { origin, req }).is_ok());
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
