//! One event loop per core: accepts, reads, parses, writes, delivers.
//!
//! A reactor owns a `mio::Poll`, its own `SO_REUSEPORT` listener and a slab of
//! connections. Sockets are registered once, edge-triggered, for reading and
//! writing; readiness is remembered in the connection and reads drain until
//! `WouldBlock` or a read that does not fill the buffer (which took all the
//! socket held: see [`Conn::read`]), with a cap on work per connection per
//! wake-up. Complete
//! requests go to the worker pool; answers and live messages come back
//! through the reactor's [`Mailbox`]. A reactor never waits on I/O: on a
//! store that never does (the embedded one, unless it fsyncs every write)
//! it runs the quick calls itself ([`Api::runs_inline`]), and commits the
//! sends of a loop turn as one group at its end.
//!
//! What a stream or held poll is owed is not decided here: each has a
//! [`Subscriber`](crate::delivery::subscriber::Subscriber), fed by
//! `deliver.rs` with what happens and obeyed for what to write. A
//! WebSocket's client frames are read here and handed to its subscriber
//! too, which says what to answer.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TrySendError};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

mod deliver;

use crate::api::{Api, Held, Request};
use crate::bus::{ConnRef, CoreMsg, Reply, SubKey};
use crate::delivery::subscriber::{Step, HIGH_WATER};
use crate::delivery::wire::Kind;
use crate::http::buffer;
use crate::http::request::{parse_head, Head, HttpError};
use crate::http::response::{closing, error_response, CONTINUE};
use crate::metrics::{self, CoreStats, Metrics};
use crate::net::conn::{Conn, Input, State};
use crate::net::mailbox::Mailbox;
use crate::net::timer::{after, Secs, TimerWheel, NEVER};
use crate::router::Router;
use crate::worker::{self, HeldAnswer, Job, Jobs, Ran, Work};

const WAKER: Token = Token(1);
const ADMIN: Token = Token(2);
/// The API listeners' tokens start here (one per address `--listen` names);
/// connection tokens are slab keys shifted past them.
const FIRST_LISTENER: usize = 3;

/// Events taken from the kernel per `poll` call.
const EVENTS_CAPACITY: usize = 1024;
/// Reads per connection per wake-up: one busy client cannot starve the
/// others; the connection is visited again on the next loop turn.
const READS_PER_WAKE: usize = 8;
/// Accepts per wake-up, for the same reason.
const ACCEPTS_PER_WAKE: usize = 256;
/// Inbox messages handled per loop turn before sockets get a turn again.
const INBOX_PER_TURN: usize = 4096;
/// Sends held before they are committed, even mid-turn: the first of a
/// group waits for the others to be read and run (a few microseconds
/// each), so a large turn commits in groups of this many.
const HELD_MAX: usize = 16;
/// The per-core read buffer: one socket read lands here, and only a partial
/// request is copied out of it into the connection.
const SCRATCH: usize = 64 * 1024;
/// Spare request buffers kept per core for partial requests.
const SPARE_BUFFERS: usize = 256;
/// Capacity of a pooled request buffer.
const BUFFER_SIZE: usize = 4096;

/// Seconds accepting pauses after the process ran out of file descriptors.
const EMFILE_PAUSE: Secs = 1;
/// Bytes a held poll reads ahead of its answer: requests pipelined behind
/// it are kept and answered in order after it. Beyond this the reactor
/// stops reading until the poll is answered (the kernel holds the rest).
const PIPELINE_AHEAD: usize = 16 * 1024;
/// Seconds a stopping server gives its connections to take their last
/// answers and frames before it exits anyway.
const SHUTDOWN_DRAIN: Secs = 5;

/// Connections the slab has room for from the start (at most; fewer with a
/// lower `--max-conns`): one allocation, whose pages the kernel maps only
/// as connections are written into them, so an idle reactor costs nothing
/// for it. Grown by doubling instead, the slab would keep a dead copy of
/// each smaller size in the allocator and up to twice the room it uses: at
/// 19,500 connections a process, 60 bytes a connection.
const SLAB_ROOM: usize = 64 * 1024;

/// What a reactor is told at start.
#[derive(Clone, Debug)]
pub struct Settings {
    pub core: u16,
    /// Most connections on this reactor.
    pub max_conns: usize,
    pub max_body: usize,
    pub heartbeat: Secs,
    pub poll_timeout: Secs,
    /// Seconds queued output may make no progress before the connection
    /// is closed.
    pub send_timeout: Secs,
    /// Seconds a client may take to send a whole request once it has
    /// started (408 beyond).
    pub request_timeout: Secs,
    /// Seconds an idle keep-alive connection is kept.
    pub keepalive_timeout: Secs,
    /// Seconds a lingering close drains the client before giving up
    /// (nginx's `lingering_timeout`).
    pub linger_timeout: Secs,
    /// Jobs queued in a loop turn per worker woken at its end
    /// ([`crate::worker::Batching`]).
    pub jobs_per_wake: usize,
    /// `--yield-after-us`: see [`Reactor::yield_if_busy`].
    pub yield_after: Option<Duration>,
    /// `--slow-turn-ms`: see [`Reactor::report_if_slow`].
    pub slow_turn: Option<Duration>,
}

/// The sockets a reactor accepts on.
pub struct Listeners {
    /// The API port on each address, shared by every reactor.
    pub public: Vec<TcpListener>,
    /// The admin port, on one reactor only.
    pub admin: Option<TcpListener>,
}

enum Accepting {
    Open,
    /// At the connection limit; resumes below 90 % of it.
    Full,
    /// Out of file descriptors; retries at this tick.
    Until(Secs),
    /// Shutting down: the listeners are gone.
    Closed,
}

pub struct Reactor {
    set: Settings,
    poll: Poll,
    listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    /// The token of slab key 0: past the listeners'.
    first_conn: usize,
    accepting: Accepting,
    conns: Slab<Conn>,
    inbox: Receiver<CoreMsg>,
    mailbox: Arc<Mailbox>,
    router: Arc<Router>,
    jobs: Jobs,
    /// The API this reactor runs quick calls with itself (see [`Work`]).
    inline: Option<Arc<Api>>,
    timers: TimerWheel<ConnRef>,
    started: Instant,
    /// When this loop turn began (its requests are read at it), and the
    /// same in whole seconds since `started` (the timers' tick).
    turn: Instant,
    now: Secs,
    next_gen: u32,
    scratch: Box<[u8]>,
    #[allow(clippy::vec_box)] // the boxes are what a connection's InBuf holds
    spare: Vec<Box<Vec<u8>>>,
    /// Buffers for the requests handed to workers, fed by their answers.
    bufs: buffer::Pool,
    /// Connections with work left after their per-wake-up cap.
    again: Vec<usize>,
    /// Set by `Shutdown`: the tick by which the loop exits, drained or not.
    stopping: Option<Secs>,
    /// Live deliveries taken from the inbox and not yet written, a slice
    /// per loop turn (see `deliver.rs`).
    due: deliver::Due,
    /// CORS header lines of held polls from an allowed origin, for their
    /// answer's head (a `Conn` has no room for them; few connections do).
    cors_held: std::collections::HashMap<usize, Box<[u8]>>,
    /// Jobs queued this loop turn: workers are woken for them at its end.
    queued: usize,
    /// Sends run here this loop turn, committed together at its end, and
    /// their requests, in the same order.
    held: Held,
    held_answers: Vec<HeldAnswer>,
    /// Their answers, once committed (kept for its room).
    held_replies: Vec<Reply>,
    /// Sends this loop turn committed (and answered), and the time that
    /// took.
    turn_sends: usize,
    turn_commit: Duration,
    /// This reactor's counters (only it writes them).
    stats: Arc<CoreStats>,
    /// Where requests it answers itself are counted.
    metrics: Arc<Metrics>,
}

impl Reactor {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        set: Settings,
        poll: Poll,
        listeners: Listeners,
        inbox: Receiver<CoreMsg>,
        mailbox: Arc<Mailbox>,
        router: Arc<Router>,
        work: Work,
        metrics: Arc<Metrics>,
    ) -> io::Result<Reactor> {
        let Listeners {
            public: mut listeners,
            mut admin,
        } = listeners;
        for (i, l) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(l, Token(FIRST_LISTENER + i), Interest::READABLE)?;
        }
        let first_conn = FIRST_LISTENER + listeners.len();
        let conns = Slab::with_capacity(set.max_conns.min(SLAB_ROOM));
        if let Some(admin) = &mut admin {
            poll.registry().register(admin, ADMIN, Interest::READABLE)?;
        }
        Ok(Reactor {
            stats: metrics.core(set.core),
            metrics,
            set,
            poll,
            listeners,
            admin,
            first_conn,
            accepting: Accepting::Open,
            conns,
            inbox,
            mailbox,
            router,
            jobs: work.jobs,
            inline: work.inline,
            timers: TimerWheel::new(0),
            started: Instant::now(),
            turn: Instant::now(),
            now: 0,
            next_gen: 0,
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            spare: Vec::new(),
            bufs: buffer::Pool::default(),
            again: Vec::new(),
            stopping: None,
            due: deliver::Due::default(),
            cors_held: std::collections::HashMap::new(),
            queued: 0,
            held: Held::default(),
            held_answers: Vec::new(),
            held_replies: Vec::new(),
            turn_sends: 0,
            turn_commit: Duration::ZERO,
        })
    }

    /// Runs until a `Shutdown` message arrives and every connection has had
    /// its last answer (or the drain time is up).
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut inbox_left = false;
        while !self.drained() {
            let accept_now = matches!(self.accepting, Accepting::Until(t) if t <= self.now);
            let busy = inbox_left || accept_now || !self.again.is_empty() || self.due.pending();
            let timeout = if busy {
                Duration::ZERO
            } else {
                // Wake for the next timer tick.
                let next = self.started + Duration::from_secs(u64::from(self.now) + 1);
                next.saturating_duration_since(Instant::now())
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            // The one clock read of the turn: its requests are read at it.
            self.turn = Instant::now();
            self.now = self.turn.duration_since(self.started).as_secs() as Secs;
            let mut woken = inbox_left;
            let mut n_events = 0;
            for event in events.iter() {
                n_events += 1;
                match event.token() {
                    ADMIN => self.accept_admin(),
                    WAKER => woken = true,
                    Token(t) if t < self.first_conn => self.accept(),
                    Token(t) => {
                        let key = t - self.first_conn;
                        if let Some(conn) = self.conns.get_mut(key) {
                            conn.on_event(
                                event.is_readable(),
                                event.is_read_closed() || event.is_error(),
                            );
                            self.drive(key);
                        }
                    }
                }
            }
            if woken {
                inbox_left = self.drain_inbox();
            }
            // After the sockets and the inbox had their turn: what arrived
            // meanwhile joins the due list, and connections not yet reached
            // get it in the same write.
            self.deliver_some();
            for key in std::mem::take(&mut self.again) {
                if self.conns.contains(key) {
                    self.drive(key);
                }
            }
            let mut due = Vec::new();
            self.timers
                .advance(self.now, |tick, conn| due.push((tick, conn)));
            for (tick, conn) in due {
                self.on_timer(tick, conn);
            }
            if let Accepting::Until(at) = self.accepting {
                if self.now >= at {
                    self.accepting = Accepting::Open;
                    self.accept();
                }
            }
            self.wake_workers();
            if !self.held.is_empty() {
                self.commit_held();
            }
            let took = self.turn.elapsed();
            let sends = std::mem::take(&mut self.turn_sends);
            let commit = std::mem::take(&mut self.turn_commit);
            self.report_if_slow(took, n_events, sends, commit);
            if sends > 0 {
                self.yield_if_busy(took);
            }
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key);
        }
        Ok(())
    }

    /// Whether a stopping reactor is done: every connection is gone, or
    /// the drain time is up.
    fn drained(&self) -> bool {
        self.stopping
            .is_some_and(|until| self.conns.is_empty() || self.now >= until)
    }

    // ---- accepting ----

    /// Accepts on every API listener (edge-triggered: each is drained).
    fn accept(&mut self) {
        for i in 0..self.listeners.len() {
            self.accept_from(Some(i));
        }
    }

    /// Admin connections are few and short: they are accepted regardless
    /// of the connection limit, which exists for client connections.
    fn accept_admin(&mut self) {
        self.accept_from(None);
    }

    /// Accepts on API listener `which`, or on the admin listener (`None`).
    fn accept_from(&mut self, which: Option<usize>) {
        let admin = which.is_none();
        if !admin && !matches!(self.accepting, Accepting::Open) {
            return;
        }
        for _ in 0..ACCEPTS_PER_WAKE {
            if !admin && self.conns.len() >= self.set.max_conns {
                self.accepting = Accepting::Full;
                return;
            }
            let listener = match which {
                Some(i) => self.listeners.get(i),
                None => self.admin.as_ref(),
            };
            let Some(listener) = listener else {
                return;
            };
            match listener.accept() {
                Ok((mut sock, _)) => {
                    let _ = sock.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let key = entry.key();
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if self
                        .poll
                        .registry()
                        .register(&mut sock, Token(key + self.first_conn), interest)
                        .is_err()
                    {
                        continue;
                    }
                    self.next_gen = self.next_gen.wrapping_add(1);
                    let mut conn = Conn::new(sock, self.next_gen);
                    conn.admin = admin;
                    entry.insert(conn);
                    self.stats.opened();
                    self.set_deadline(key, after(self.now, self.set.keepalive_timeout));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) if admin => return,
                Err(e) if is_out_of_descriptors(&e) => {
                    // Never spin on a listener we cannot serve: wait a tick.
                    self.accepting = Accepting::Until(self.now + EMFILE_PAUSE);
                    return;
                }
                // The peer gave up before we got to it (ECONNABORTED etc.).
                Err(_) => continue,
            }
        }
        // More may be waiting: edge-triggered, so look again next turn
        // rather than wait for an edge that already came.
        if !admin {
            self.accepting = Accepting::Until(self.now);
        }
    }

    // ---- connection I/O ----

    /// Does what a connection's readiness and state allow.
    fn drive(&mut self, key: usize) {
        if !self.flush(key) {
            return;
        }
        let conn = &self.conns[key];
        if conn.close_after_flush {
            if conn.out_empty() {
                self.linger(key);
            }
            return;
        }
        if let State::Subscribed(_) = conn.state {
            // The socket may have drained below the low-water mark.
            if !self.pump(key) {
                return;
            }
        }
        let conn = &self.conns[key];
        if !conn.readable() {
            // Requests read ahead (behind a held poll, or pipelined) are
            // parsed even when the socket has nothing new; so are a
            // WebSocket client's frames sent right behind its handshake.
            if !conn.inbuf.is_empty() {
                match &conn.state {
                    State::Reading => self.read_request(key),
                    State::Subscribed(s) if s.kind() == Kind::Ws => self.read_ws(key),
                    _ => {}
                }
            }
            return;
        }
        match &conn.state {
            State::Reading => self.read_request(key),
            // The request's answer comes first; the rest waits in the kernel.
            State::Waiting { .. } => {}
            State::Subscribed(s) if s.kind().is_poll() => self.read_ahead(key),
            State::Subscribed(s) if s.kind() == Kind::Ws => self.read_ws(key),
            State::Subscribed(_) | State::Linger => self.discard_input(key),
        }
    }

    /// Writes what is queued. Returns false if that closed the connection.
    fn flush(&mut self, key: usize) -> bool {
        let conn = &mut self.conns[key];
        if conn.out_empty() {
            return true;
        }
        match conn.flush() {
            None => {
                self.close(key);
                false
            }
            Some(n) => {
                if n > 0 {
                    conn.progress_at = self.now;
                    self.stats.wrote(n);
                }
                if conn.out_empty() {
                    // The state's own deadline applies again.
                    self.rearm(key);
                }
                true
            }
        }
    }

    /// Writes `parts` to a connection, queueing what the socket refuses.
    /// Returns false if the connection failed (and was closed).
    fn write(&mut self, key: usize, parts: &[&[u8]]) -> bool {
        let conn = &mut self.conns[key];
        let was_empty = conn.out_empty();
        match conn.send(parts) {
            None => {
                self.close(key);
                false
            }
            Some(n) => {
                self.stats.wrote(n);
                if n > 0 || was_empty {
                    conn.progress_at = self.now;
                }
                if was_empty && !conn.out_empty() {
                    // Watch that the queue makes progress.
                    self.rearm(key);
                }
                true
            }
        }
    }

    /// Reads and parses until one request is complete (and goes to a
    /// worker), the socket is drained, or this wake-up's cap is reached.
    fn read_request(&mut self, key: usize) {
        for _ in 0..READS_PER_WAKE {
            // Pipelined bytes already here may hold a whole request.
            if !self.conns[key].inbuf.is_empty() && self.parse_inbuf(key) {
                return;
            }
            let conn = &mut self.conns[key];
            let n = match conn.read(&mut self.scratch) {
                Input::Data(n) => n,
                Input::Drained => return,
                Input::Closed => return self.close(key),
            };
            if conn.inbuf.is_empty() {
                // The common case: the whole request came in one read and
                // is parsed straight from the scratch buffer.
                match examine(&self.scratch[..n], self.set.max_body) {
                    Examined::Complete(head, len) => {
                        let raw = self.bufs.copy(&self.scratch[..len]);
                        if len < n {
                            let mut buf = take_buffer(&mut self.spare);
                            buf.extend_from_slice(&self.scratch[len..n]);
                            self.conns[key].inbuf = buf.into();
                        }
                        return self.dispatch(key, raw, head);
                    }
                    Examined::Bad(e) => return self.refuse(key, &e),
                    Examined::Partial(head) => {
                        let mut buf = take_buffer(&mut self.spare);
                        buf.extend_from_slice(&self.scratch[..n]);
                        self.conns[key].inbuf = buf.into();
                        self.set_deadline(key, after(self.now, self.set.request_timeout));
                        self.maybe_continue(key, head);
                    }
                }
            } else {
                conn.inbuf.extend_from_slice(&self.scratch[..n]);
            }
        }
        self.again.push(key);
    }

    /// Parses the connection's buffered bytes; true if a request went to a
    /// worker or the connection was refused (stop reading either way).
    fn parse_inbuf(&mut self, key: usize) -> bool {
        let conn = &mut self.conns[key];
        match examine(&conn.inbuf, self.set.max_body) {
            Examined::Complete(head, len) => {
                let raw = self.bufs.copy(&conn.inbuf[..len]);
                conn.inbuf.drain(..len);
                if conn.inbuf.is_empty() {
                    give_buffer(&mut self.spare, conn.inbuf.take());
                }
                self.dispatch(key, raw, head);
                true
            }
            Examined::Bad(e) => {
                self.refuse(key, &e);
                true
            }
            Examined::Partial(head) => {
                self.maybe_continue(key, head);
                false
            }
        }
    }

    /// Answers `100 Continue` once to a head that asked for it.
    fn maybe_continue(&mut self, key: usize, head: Option<Head>) {
        let conn = &mut self.conns[key];
        if head.is_some_and(|h| h.expect_continue) && !conn.continue_sent {
            conn.continue_sent = true;
            self.write(key, &[CONTINUE]);
        }
    }

    /// Runs a complete request: a quick one here and now, when the store
    /// never waits, or a `/p` the store answers from a Redis lane
    /// ([`Api::runs_inline`]); any other, or one that would wait after
    /// all, on the worker pool.
    fn dispatch(&mut self, key: usize, raw: Vec<u8>, head: Head) {
        self.next_gen = self.next_gen.wrapping_add(1);
        let conn = &mut self.conns[key];
        conn.gen = self.next_gen;
        conn.armed_at = NEVER; // entries under the old gen are stale now
        conn.deadline = NEVER;
        conn.continue_sent = false;
        self.stats.moved(slot(&conn.state), metrics::WAITING);
        conn.state = State::Waiting {
            seen: 0,
            revoked: false,
        };
        let admin = conn.admin;
        let peer = if crate::api::needs_peer(head.path(&raw)) || crate::log::access_enabled() {
            conn.sock.peer_addr().ok().map(|a| a.ip())
        } else {
            None
        };
        let origin = self.sub_key(key);
        let req = Request {
            raw,
            head,
            admin,
            peer,
            at: self.turn,
        };
        let inline =
            (self.inline.as_deref()).filter(|api| api.runs_inline(req.head.path(&req.raw), admin));
        let req = match inline {
            // Answered as a worker would, then as its answer would be; a
            // send waits for the end of the turn, committed with the
            // others (or, on Redis, is queued on a lane, which answers it).
            Some(api) => match worker::run_request(api, origin, req, Some(&self.held)) {
                Ran::Answered(msg) => return self.on_msg(msg),
                Ran::Later => return,
                Ran::Held(answer) => {
                    self.held_answers.push(answer);
                    if self.held_answers.len() >= HELD_MAX {
                        self.commit_held();
                    }
                    return;
                }
                Ran::WouldWait(req) => req,
            },
            None => req,
        };
        let job = Job::Request { origin, req };
        if let Err(job) = self.queue_job(job) {
            let bytes = error_response(503, "server busy", head.keep_alive);
            if let Job::Request { req, .. } = job {
                let endpoint = crate::api::endpoint_index(req.head.path(&req.raw), admin);
                self.metrics.request(endpoint, 503, None);
                self.log_answer(key, Some((&req.raw, &req.head)), 503, bytes.len());
                self.bufs.keep(req.raw);
            }
            self.answer(key, &bytes, head.keep_alive);
        }
    }

    /// Puts a job on the workers' queue; they are woken for it at the end
    /// of this loop turn. Gives it back when the queue is full.
    fn queue_job(&mut self, job: Job) -> Result<(), Job> {
        match self.jobs.try_queue(job) {
            Ok(()) => {
                self.queued += 1;
                Ok(())
            }
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => Err(job),
        }
    }

    /// Commits the sends this turn held as one group (one log write), and
    /// answers them.
    fn commit_held(&mut self) {
        let mut replies = std::mem::take(&mut self.held_replies);
        let start = Instant::now();
        if let Some(api) = &self.inline {
            api.commit_held(&self.held, &mut |reply| replies.push(reply));
        }
        let now = Instant::now();
        self.turn_commit += now - start;
        let mut answers = std::mem::take(&mut self.held_answers);
        self.turn_sends += answers.len();
        if answers.len() != replies.len() {
            error!("{} sends held, {} answered", answers.len(), replies.len());
        }
        let mut given = replies.drain(..);
        for answer in answers.drain(..) {
            // One left unanswered (a bug) must not wait forever.
            let reply = given.next().unwrap_or_else(worker::internal_error);
            let msg = answer.answer(&self.metrics, reply, now);
            self.on_msg(msg);
        }
        drop(given);
        self.held_answers = answers;
        self.held_replies = replies;
    }

    /// Reports a loop turn that `took` `--slow-turn-ms` (100 ms) or longer,
    /// with `events` from `poll`, having committed `sends` in `commit`:
    /// every connection of this core waited for its end, so a warning
    /// says how long and what the turn did (a slow commit waited for the
    /// store's lock or a disk that stalled a write), and
    /// `haoshuo_reactor_slow_turns_total` counts it.
    fn report_if_slow(&self, took: Duration, events: usize, sends: usize, commit: Duration) {
        if self.set.slow_turn.is_none_or(|slow| took < slow) {
            return;
        }
        self.stats.slow_turn();
        warn!(
            "core {}: a loop turn took {} ms, {} connections waiting (events: {}; sends committed: {}, in {} ms)",
            self.set.core,
            took.as_millis(),
            self.conns.len(),
            events,
            sends,
            commit.as_millis()
        );
    }

    /// Ends a loop turn that committed sends (and answered them) by giving
    /// the core away once (`sched_yield`) if the turn ran
    /// `--yield-after-us` (50 µs) or longer: whoever waits for the core
    /// (on a shared host, the clients these answers are for, a proxy
    /// before them) runs now, not after the rest of this thread's time
    /// slice. A reactor that runs its connections' calls itself hardly
    /// ever blocks in `poll` under load, so on a host with more busy
    /// threads than cores every request it holds waited out the others'
    /// slices: on 2 cores under `wrk`, p99 of `/p` 3.9 ms, 2.7 ms with the
    /// yield (docs/benchmarks.md). With nothing else runnable on the core
    /// the call returns at once. Not after turns that commit nothing: on
    /// Redis, whose sends are answered later through the inbox, yielding
    /// after busy turns cost requests a second and raised p99.
    fn yield_if_busy(&self, took: Duration) {
        if self.set.yield_after.is_some_and(|after| took >= after) {
            self.stats.yielded();
            std::thread::yield_now();
        }
    }

    /// Wakes sleeping workers for the jobs queued this turn, one per
    /// `jobs_per_wake` of them: a burst of requests costs a few wake-ups.
    fn wake_workers(&mut self) {
        if self.queued > 0 {
            let per = self.set.jobs_per_wake.max(1);
            self.jobs.wake(self.queued.div_ceil(per));
            self.queued = 0;
        }
    }

    /// Answers a request the HTTP layer refused, then closes lingering.
    fn refuse(&mut self, key: usize, e: &HttpError) {
        self.metrics.request(UNROUTED, e.status(), None);
        let bytes = error_response(e.status(), e.reason(), false);
        self.log_answer(key, None, e.status(), bytes.len());
        self.answer(key, &bytes, false);
    }

    /// The access log's line for a request the reactor answers itself (a
    /// refusal before or instead of a worker; `req` when it was parsed).
    fn log_answer(&self, key: usize, req: Option<(&[u8], &Head)>, status: u16, bytes: usize) {
        if !crate::log::access_enabled() {
            return;
        }
        let client = self.conns[key].sock.peer_addr().ok().map(|a| a.ip());
        let (method, target) = match req {
            Some((raw, head)) => (
                raw.split(|&b| b == b' ').next().unwrap_or(b"-"),
                crate::log::access_target(head.path(raw), head.query(raw)),
            ),
            None => (b"-".as_slice(), "-".to_owned()),
        };
        crate::log::access(&crate::log::Access {
            client,
            method,
            target: &target,
            status,
            bytes: Some(bytes),
            took: std::time::Duration::ZERO,
        });
    }

    /// Writes a whole response and moves on: next request, or close.
    fn answer(&mut self, key: usize, bytes: &[u8], keep_alive: bool) {
        if keep_alive && self.stopping.is_some() {
            // Built before the server began stopping, it would promise a
            // connection that closes after it.
            if let Some(last) = closing(bytes) {
                if self.write(key, &[&last]) {
                    self.finish_request(key, false);
                }
                return;
            }
        }
        if self.write(key, &[bytes]) {
            self.finish_request(key, keep_alive);
        }
    }

    /// The request (or subscription) is answered: on to the next request,
    /// or close once the answer is out (always, when stopping).
    fn finish_request(&mut self, key: usize, keep_alive: bool) {
        let stopping = self.stopping.is_some();
        let conn = &mut self.conns[key];
        self.stats.moved(slot(&conn.state), metrics::READING);
        conn.state = State::Reading;
        if !keep_alive || stopping {
            conn.close_after_flush = true;
            if conn.out_empty() {
                self.linger(key);
            }
            return;
        }
        let deadline = if conn.inbuf.is_empty() {
            self.set.keepalive_timeout
        } else {
            self.set.request_timeout
        };
        if conn.readable() || !conn.inbuf.is_empty() {
            // Pipelined requests, or bytes left in the kernel.
            self.again.push(key);
        }
        self.set_deadline(key, after(self.now, deadline));
    }

    /// Shuts the write side and drains what the client still sends, so it
    /// reads our answer rather than a reset.
    fn linger(&mut self, key: usize) {
        self.unsubscribe(key);
        let conn = &mut self.conns[key];
        self.stats.moved(slot(&conn.state), metrics::LINGER);
        conn.state = State::Linger;
        conn.close_after_flush = false;
        let _ = conn.sock.shutdown(std::net::Shutdown::Write);
        give_buffer(&mut self.spare, conn.inbuf.take());
        self.set_deadline(key, after(self.now, self.set.linger_timeout));
        self.discard_input(key);
    }

    /// Reads what a client pipelines behind its held poll into the
    /// connection's buffer, up to [`PIPELINE_AHEAD`]; it is parsed once
    /// the poll is answered. EOF closes the connection (and the poll).
    fn read_ahead(&mut self, key: usize) {
        for _ in 0..READS_PER_WAKE {
            let conn = &mut self.conns[key];
            if conn.inbuf.len() >= PIPELINE_AHEAD {
                return; // the rest waits in the kernel
            }
            let n = match conn.read(&mut self.scratch) {
                Input::Data(n) => n,
                Input::Drained => return,
                Input::Closed => return self.close(key),
            };
            if conn.inbuf.is_empty() {
                conn.inbuf = take_buffer(&mut self.spare).into();
            }
            conn.inbuf.extend_from_slice(&self.scratch[..n]);
        }
        self.again.push(key);
    }

    /// Reads a WebSocket client's frames and has its subscriber answer
    /// them (pongs, the close). Only a partial frame stays in the
    /// connection's buffer: at most a header and
    /// [`crate::http::ws::MAX_CLIENT_PAYLOAD`], as the subscriber refuses larger ones
    /// from their header. While the connection's output is above the
    /// high-water mark (a client that pings and never reads), its input
    /// waits in the kernel: the writable event brings the reactor back.
    fn read_ws(&mut self, key: usize) {
        if !self.conns[key].inbuf.is_empty() && !self.ws_input(key, 0) {
            return;
        }
        for _ in 0..READS_PER_WAKE {
            let conn = &mut self.conns[key];
            if conn.queued() > HIGH_WATER {
                return;
            }
            let n = match conn.read(&mut self.scratch) {
                Input::Data(n) => n,
                Input::Drained => return,
                Input::Closed => return self.close(key),
            };
            if !self.ws_input(key, n) {
                return;
            }
        }
        self.again.push(key);
    }

    /// Hands a WebSocket's subscriber what its client sent: the bytes
    /// buffered, then the `n` just read into the scratch buffer. Returns
    /// false if the subscription is over.
    fn ws_input(&mut self, key: usize, n: usize) -> bool {
        let conn = &mut self.conns[key];
        let State::Subscribed(s) = &mut conn.state else {
            return false;
        };
        let mut out = Vec::new();
        let step = if conn.inbuf.is_empty() {
            // The common case: whole frames, straight from the scratch.
            let (used, step) = s.on_input(&self.scratch[..n], &mut out);
            if used < n && step == Step::Continue {
                conn.inbuf = take_buffer(&mut self.spare).into();
                conn.inbuf.extend_from_slice(&self.scratch[used..n]);
            }
            step
        } else {
            conn.inbuf.extend_from_slice(&self.scratch[..n]);
            let (used, step) = s.on_input(&conn.inbuf, &mut out);
            conn.inbuf.drain(..used);
            if conn.inbuf.is_empty() {
                give_buffer(&mut self.spare, conn.inbuf.take());
            }
            step
        };
        self.follow(key, &out, step)
    }

    /// Reads and drops input (streams, held polls, lingering closes); EOF
    /// closes the connection.
    fn discard_input(&mut self, key: usize) {
        for _ in 0..READS_PER_WAKE {
            match self.conns[key].read(&mut self.scratch) {
                Input::Data(_) => {}
                Input::Drained => return,
                Input::Closed => return self.close(key),
            }
        }
        self.again.push(key);
    }

    fn close(&mut self, key: usize) {
        self.unsubscribe(key);
        let mut conn = self.conns.remove(key);
        self.stats.closed(slot(&conn.state));
        let _ = self.poll.registry().deregister(&mut conn.sock);
        give_buffer(&mut self.spare, conn.inbuf.take());
        if let Accepting::Full = self.accepting {
            if self.conns.len() <= self.set.max_conns * 9 / 10 {
                self.accepting = Accepting::Open;
                self.accept();
            }
        }
    }

    /// Removes a stream's or held poll's subscription from the router.
    fn unsubscribe(&mut self, key: usize) {
        self.cors_held.remove(&key);
        if let State::Subscribed(s) = &self.conns[key].state {
            let (app, uid, poll) = (s.app, s.uid, s.kind().is_poll());
            self.router.unsubscribe(app, uid, self.sub_key(key));
            if poll {
                // Between two polls a client is still online.
                self.router.poll_answered(app, uid, Instant::now());
            }
        }
    }

    fn sub_key(&self, key: usize) -> SubKey {
        SubKey {
            core: self.set.core,
            conn: ConnRef {
                slot: key as u32,
                gen: self.conns[key].gen,
            },
        }
    }

    /// The connection a message names, if it is still that connection.
    fn lookup(&self, conn: ConnRef) -> Option<usize> {
        let key = conn.slot as usize;
        self.conns
            .get(key)
            .filter(|c| c.gen == conn.gen)
            .map(|_| key)
    }

    // ---- timers ----

    /// Sets the tick at which the connection's state times out.
    fn set_deadline(&mut self, key: usize, at: Secs) {
        self.conns[key].deadline = at;
        self.rearm(key);
    }

    /// Makes sure the wheel fires for this connection by its deadline, and
    /// while output is queued, by the tick its send timeout would pass.
    /// Moving a deadline later costs nothing: the entry fires early and is
    /// re-armed.
    fn rearm(&mut self, key: usize) {
        let send_timeout = self.set.send_timeout;
        let conn = &mut self.conns[key];
        let mut at = conn.deadline;
        if !conn.out_empty() {
            at = at.min(after(conn.progress_at, send_timeout));
        }
        if at < conn.armed_at {
            let r = ConnRef {
                slot: key as u32,
                gen: conn.gen,
            };
            conn.armed_at = self.timers.arm(at, r);
        }
    }

    fn on_timer(&mut self, tick: Secs, r: ConnRef) {
        let Some(key) = self.lookup(r) else { return };
        let conn = &mut self.conns[key];
        if conn.armed_at != tick {
            return; // a stale entry: a newer one is armed
        }
        conn.armed_at = NEVER;
        if !conn.out_empty() {
            // While output is queued only the send timeout applies: a
            // connection is never closed for being slow, only for being
            // stuck. The state's own deadline applies once it drains.
            if self.now >= after(conn.progress_at, self.set.send_timeout) {
                return self.close(key);
            }
            if !matches!(conn.state, State::Subscribed(_)) {
                return self.rearm(key);
            }
        }
        if conn.deadline > self.now {
            return self.rearm(key);
        }
        match conn.state {
            State::Reading if conn.inbuf.is_empty() => self.close(key),
            State::Reading => {
                self.metrics.request(UNROUTED, 408, None);
                let bytes = error_response(408, "request timeout", false);
                self.log_answer(key, None, 408, bytes.len());
                self.answer(key, &bytes, false);
            }
            State::Waiting { .. } => {}
            State::Subscribed(_) => self.subscriber_timer(key),
            State::Linger => self.close(key),
        }
    }

    // ---- the inbox ----

    /// Handles what other threads sent; true if some was left for next turn.
    fn drain_inbox(&mut self) -> bool {
        self.mailbox.clear_notified();
        if self.mailbox.take_lagged() {
            self.stats.caught_up();
            self.catch_up_everyone();
        }
        let mut left = true;
        for _ in 0..INBOX_PER_TURN {
            let Ok(msg) = self.inbox.try_recv() else {
                left = false;
                break;
            };
            self.on_msg(msg);
        }
        left
    }

    /// Handles one message from another thread (or an answer run here).
    fn on_msg(&mut self, msg: CoreMsg) {
        match msg {
            CoreMsg::Reply { conn, reply } => self.on_reply(conn, reply),
            CoreMsg::Deliver { msg, to } => self.take_live(msg, to),
            CoreMsg::Page { conn, page } => self.on_page(conn, page),
            CoreMsg::Revoke { conn } => self.on_revoke(conn),
            CoreMsg::Shutdown => self.begin_shutdown(),
        }
    }

    // ---- shutdown ----

    /// Stops accepting and gives everyone their last word: held polls
    /// answer `noop`, streams end with their last chunk, idle connections
    /// close, requests at a worker get their answer (then close). The loop
    /// then runs until every connection is gone or [`SHUTDOWN_DRAIN`]
    /// seconds have passed.
    fn begin_shutdown(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(after(self.now, SHUTDOWN_DRAIN));
        let listeners = std::mem::take(&mut self.listeners);
        for mut l in listeners.into_iter().chain(self.admin.take()) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.accepting = Accepting::Closed;
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let conn = &self.conns[key];
            match conn.state {
                State::Subscribed(_) => self.end_subscriber(key),
                State::Reading if conn.out_empty() => self.close(key),
                State::Reading => self.conns[key].close_after_flush = true,
                State::Waiting { .. } | State::Linger => {}
            }
        }
    }
}

/// The `endpoint` of requests refused before they were routed.
const UNROUTED: usize = crate::api::ENDPOINTS.len() - 1;

/// Which `haoshuo_connections` slot a connection in `state` counts under.
fn slot(state: &State) -> usize {
    match state {
        State::Reading => metrics::READING,
        State::Waiting { .. } => metrics::WAITING,
        State::Linger => metrics::LINGER,
        State::Subscribed(s) => metrics::SUBSCRIBED + metrics::kind_index(s.kind()),
    }
}

/// What a buffer holds.
enum Examined {
    /// A whole request: its head and total length.
    Complete(Head, usize),
    /// Not yet; the head, if it is complete.
    Partial(Option<Head>),
    /// Not a request we take.
    Bad(HttpError),
}

fn examine(buf: &[u8], max_body: usize) -> Examined {
    match parse_head(buf, max_body) {
        Err(e) => Examined::Bad(e),
        Ok(None) => Examined::Partial(None),
        Ok(Some(head)) => {
            let len = head.head_len + head.content_length;
            if buf.len() >= len {
                Examined::Complete(head, len)
            } else {
                Examined::Partial(Some(head))
            }
        }
    }
}

#[allow(clippy::vec_box, clippy::box_collection)] // pooled InBuf boxes
fn take_buffer(spare: &mut Vec<Box<Vec<u8>>>) -> Box<Vec<u8>> {
    spare
        .pop()
        .unwrap_or_else(|| Box::new(Vec::with_capacity(BUFFER_SIZE)))
}

/// Keeps a buffer for the next partial request, unless it grew large or the
/// pool is full: memory held for idle connections stays bounded.
#[allow(clippy::vec_box, clippy::box_collection)] // pooled InBuf boxes
fn give_buffer(spare: &mut Vec<Box<Vec<u8>>>, buf: Option<Box<Vec<u8>>>) {
    let Some(mut buf) = buf else {
        return;
    };
    if buf.capacity() == BUFFER_SIZE && spare.len() < SPARE_BUFFERS {
        buf.clear();
        spare.push(buf);
    }
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
