//! One event loop per core: accepts, reads, parses, writes, delivers.
//!
//! A reactor owns a `mio::Poll`, its own `SO_REUSEPORT` listener and a slab of
//! connections. Sockets are registered once, edge-triggered, for reading and
//! writing; readiness is remembered in the connection and reads drain until
//! `WouldBlock`, with a cap on work per connection per wake-up. Complete
//! requests go to the worker pool; answers and live messages come back
//! through the reactor's [`Mailbox`]. A reactor never blocks on storage.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::api::error::error_response;
use crate::api::frame::{self, LiveMsg, LiveSuffix};
use crate::api::{Reply, Request};
use crate::http::chunked::{push_chunk, ChunkHeader, CHUNK_TRAILER, LAST_CHUNK};
use crate::http::request::{parse_head, Head, HttpError};
use crate::http::response::{write_response, write_stream_head, CONTENT_JSON, CONTINUE};
use crate::net::conn::{Conn, Input, State, Subscriber};
use crate::net::mailbox::{ConnRef, CoreMsg, Mailbox, Target};
use crate::net::timer::{Secs, TimerWheel, NEVER};
use crate::router::{Router, SubKey};
use crate::store::{Message, MsgId};
use crate::worker::Job;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const ADMIN: Token = Token(2);
/// Connection tokens are slab keys shifted past the fixed tokens.
const FIRST_CONN: usize = 3;

/// Events taken from the kernel per `poll` call.
const EVENTS_CAPACITY: usize = 1024;
/// Reads per connection per wake-up: one busy client cannot starve the
/// others; the connection is visited again on the next loop turn.
const READS_PER_WAKE: usize = 8;
/// Accepts per wake-up, for the same reason.
const ACCEPTS_PER_WAKE: usize = 256;
/// Inbox messages handled per loop turn before sockets get a turn again.
const INBOX_PER_TURN: usize = 4096;
/// The per-core read buffer: one socket read lands here, and only a partial
/// request is copied out of it into the connection.
const SCRATCH: usize = 64 * 1024;
/// Spare request buffers kept per core for partial requests.
const SPARE_BUFFERS: usize = 256;
/// Capacity of a pooled request buffer.
const BUFFER_SIZE: usize = 4096;

/// Seconds a client may take to send a whole request once it has started.
const REQUEST_TIMEOUT: Secs = 30;
/// Seconds an idle keep-alive connection is kept.
const KEEPALIVE_TIMEOUT: Secs = 60;
/// Seconds a lingering close drains the client before giving up (nginx's
/// `lingering_timeout`).
const LINGER_TIMEOUT: Secs = 5;
/// Seconds accepting pauses after the process ran out of file descriptors.
const EMFILE_PAUSE: Secs = 1;

/// What a reactor is told at start.
#[derive(Clone, Debug)]
pub struct Settings {
    pub core: u16,
    /// Most connections on this reactor.
    pub max_conns: usize,
    pub max_body: usize,
    pub heartbeat: Secs,
    pub poll_timeout: Secs,
    pub page_size: usize,
}

/// The sockets a reactor accepts on.
pub struct Listeners {
    /// The API port, shared by every reactor.
    pub public: TcpListener,
    /// The admin port, on one reactor only.
    pub admin: Option<TcpListener>,
}

enum Accepting {
    Open,
    /// At the connection limit; resumes below 90 % of it.
    Full,
    /// Out of file descriptors; retries at this tick.
    Until(Secs),
    /// Shutting down.
    Closed,
}

pub struct Reactor {
    set: Settings,
    poll: Poll,
    listener: Option<TcpListener>,
    admin: Option<TcpListener>,
    accepting: Accepting,
    conns: Slab<Conn>,
    inbox: Receiver<CoreMsg>,
    mailbox: Arc<Mailbox>,
    router: Arc<Router>,
    jobs: Sender<Job>,
    timers: TimerWheel<ConnRef>,
    started: Instant,
    now: Secs,
    next_gen: u32,
    scratch: Box<[u8]>,
    spare: Vec<Vec<u8>>,
    /// Connections with work left after their per-wake-up cap.
    again: Vec<usize>,
    stopping: bool,
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
        jobs: Sender<Job>,
    ) -> io::Result<Reactor> {
        let Listeners {
            public: mut listener,
            mut admin,
        } = listeners;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        if let Some(admin) = &mut admin {
            poll.registry().register(admin, ADMIN, Interest::READABLE)?;
        }
        Ok(Reactor {
            set,
            poll,
            listener: Some(listener),
            admin,
            accepting: Accepting::Open,
            conns: Slab::new(),
            inbox,
            mailbox,
            router,
            jobs,
            timers: TimerWheel::new(0),
            started: Instant::now(),
            now: 0,
            next_gen: 0,
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            spare: Vec::new(),
            again: Vec::new(),
            stopping: false,
        })
    }

    /// Runs until a `Shutdown` message arrives.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut inbox_left = false;
        while !self.stopping {
            let accept_now = matches!(self.accepting, Accepting::Until(t) if t <= self.now);
            let timeout = if inbox_left || accept_now || !self.again.is_empty() {
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
            self.now = self.started.elapsed().as_secs() as Secs;
            let mut woken = inbox_left;
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    ADMIN => self.accept_admin(),
                    WAKER => woken = true,
                    Token(t) => {
                        let key = t - FIRST_CONN;
                        if let Some(conn) = self.conns.get_mut(key) {
                            if event.is_readable() || event.is_read_closed() || event.is_error() {
                                conn.readable = true;
                            }
                            self.drive(key);
                        }
                    }
                }
            }
            if woken {
                inbox_left = self.drain_inbox();
            }
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
        }
        self.shutdown();
        Ok(())
    }

    // ---- accepting ----

    fn accept(&mut self) {
        self.accept_from(false);
    }

    /// Admin connections are few and short: they are accepted regardless
    /// of the connection limit, which exists for client connections.
    fn accept_admin(&mut self) {
        self.accept_from(true);
    }

    fn accept_from(&mut self, admin: bool) {
        if !admin && !matches!(self.accepting, Accepting::Open) {
            return;
        }
        for _ in 0..ACCEPTS_PER_WAKE {
            if !admin && self.conns.len() >= self.set.max_conns {
                self.accepting = Accepting::Full;
                return;
            }
            let listener = if admin { &self.admin } else { &self.listener };
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
                        .register(&mut sock, Token(key + FIRST_CONN), interest)
                        .is_err()
                    {
                        continue;
                    }
                    self.next_gen = self.next_gen.wrapping_add(1);
                    let mut conn = Conn::new(sock, self.next_gen);
                    conn.admin = admin;
                    entry.insert(conn);
                    self.set_deadline(key, self.now + KEEPALIVE_TIMEOUT);
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
        let conn = &mut self.conns[key];
        if !conn.out_empty() && !conn.flush() {
            return self.close(key);
        }
        if conn.out_empty() && conn.close_after_flush {
            return self.linger(key);
        }
        if !conn.readable {
            return;
        }
        match conn.state {
            State::Reading => self.read_request(key),
            // The request's answer comes first; the rest waits in the kernel.
            State::Waiting { .. } => {}
            State::Stream(_) | State::Poll(_) | State::Linger => self.discard_input(key),
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
                        let raw = self.scratch[..len].to_vec();
                        if len < n {
                            let mut buf = take_buffer(&mut self.spare);
                            buf.extend_from_slice(&self.scratch[len..n]);
                            self.conns[key].inbuf = buf;
                        }
                        return self.dispatch(key, raw, head);
                    }
                    Examined::Bad(e) => return self.refuse(key, &e),
                    Examined::Partial(head) => {
                        let mut buf = take_buffer(&mut self.spare);
                        buf.extend_from_slice(&self.scratch[..n]);
                        self.conns[key].inbuf = buf;
                        self.set_deadline(key, self.now + REQUEST_TIMEOUT);
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
                let raw = conn.inbuf[..len].to_vec();
                conn.inbuf.drain(..len);
                if conn.inbuf.is_empty() {
                    give_buffer(&mut self.spare, std::mem::take(&mut conn.inbuf));
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
            if !conn.send(&[CONTINUE]) {
                self.close(key);
            }
        }
    }

    /// Hands a complete request to the worker pool.
    fn dispatch(&mut self, key: usize, raw: Vec<u8>, head: Head) {
        self.next_gen = self.next_gen.wrapping_add(1);
        let conn = &mut self.conns[key];
        conn.gen = self.next_gen;
        conn.armed_at = NEVER; // entries under the old gen are stale now
        conn.deadline = NEVER;
        conn.continue_sent = false;
        conn.state = State::Waiting { seen: 0 };
        let admin = conn.admin;
        let origin = self.sub_key(key);
        let job = Job::Request {
            origin,
            req: Request { raw, head, admin },
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.jobs.try_send(job)
        {
            let bytes = error_response(503, "server busy", head.keep_alive);
            self.answer(key, &bytes, head.keep_alive);
        }
    }

    /// Answers a request the HTTP layer refused, then closes lingering.
    fn refuse(&mut self, key: usize, e: &HttpError) {
        let bytes = error_response(e.status(), e.reason(), false);
        self.answer(key, &bytes, false);
    }

    /// Writes a whole response and moves on: next request, or close.
    fn answer(&mut self, key: usize, bytes: &[u8], keep_alive: bool) {
        if !self.conns[key].send(&[bytes]) {
            return self.close(key);
        }
        self.finish_request(key, keep_alive);
    }

    fn finish_request(&mut self, key: usize, keep_alive: bool) {
        let conn = &mut self.conns[key];
        if !keep_alive {
            conn.close_after_flush = true;
            if conn.out_empty() {
                self.linger(key);
            }
            return;
        }
        conn.state = State::Reading;
        let deadline = if conn.inbuf.is_empty() {
            KEEPALIVE_TIMEOUT
        } else {
            REQUEST_TIMEOUT
        };
        if conn.readable || !conn.inbuf.is_empty() {
            // Pipelined requests, or bytes left in the kernel.
            self.again.push(key);
        }
        self.set_deadline(key, self.now + deadline);
    }

    /// Shuts the write side and drains what the client still sends, so it
    /// reads our answer rather than a reset.
    fn linger(&mut self, key: usize) {
        self.unsubscribe(key);
        let conn = &mut self.conns[key];
        conn.state = State::Linger;
        conn.close_after_flush = false;
        let _ = conn.sock.shutdown(std::net::Shutdown::Write);
        give_buffer(&mut self.spare, std::mem::take(&mut conn.inbuf));
        self.set_deadline(key, self.now + LINGER_TIMEOUT);
        self.discard_input(key);
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
        let _ = self.poll.registry().deregister(&mut conn.sock);
        give_buffer(&mut self.spare, conn.inbuf);
        if let Accepting::Full = self.accepting {
            if self.conns.len() <= self.set.max_conns * 9 / 10 {
                self.accepting = Accepting::Open;
                self.accept();
            }
        }
    }

    /// Removes a stream's or held poll's subscription from the router.
    fn unsubscribe(&mut self, key: usize) {
        if let State::Stream(s) | State::Poll(s) = self.conns[key].state {
            self.router
                .unsubscribe(s.sub.app, s.sub.uid, self.sub_key(key));
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

    fn set_deadline(&mut self, key: usize, at: Secs) {
        let conn = &mut self.conns[key];
        conn.deadline = at;
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
        if conn.deadline > self.now {
            let at = conn.deadline;
            return self.set_deadline(key, at);
        }
        match conn.state {
            State::Reading if conn.inbuf.is_empty() => self.close(key),
            State::Reading => {
                let bytes = error_response(408, "request timeout", false);
                self.answer(key, &bytes, false);
            }
            State::Waiting { .. } => {}
            State::Stream(_) | State::Poll(_) => {
                self.send_frame(key, &[frame::NOOP]);
            }
            State::Linger => self.close(key),
        }
    }

    // ---- the inbox ----

    /// Handles what other threads sent; true if some was left for next turn.
    fn drain_inbox(&mut self) -> bool {
        self.mailbox.clear_notified();
        if self.mailbox.take_lagged() {
            self.catch_up_everyone();
        }
        for _ in 0..INBOX_PER_TURN {
            let Ok(msg) = self.inbox.try_recv() else {
                return false;
            };
            match msg {
                CoreMsg::Reply { conn, reply } => self.on_reply(conn, reply),
                CoreMsg::Deliver { msg, to } => {
                    for t in to {
                        self.deliver(&msg, t);
                    }
                }
                CoreMsg::Backfill { conn, upto, msgs } => self.on_backfill(conn, upto, msgs),
                CoreMsg::Shutdown => self.stopping = true,
            }
        }
        true
    }

    fn on_reply(&mut self, r: ConnRef, reply: Reply) {
        let Some(key) = self.lookup(r) else {
            // The connection went away while its request was at a worker;
            // a subscription made for it must not outlive it.
            if let Reply::Stream { sub, .. } | Reply::Poll { sub, .. } = reply {
                let origin = SubKey {
                    core: self.set.core,
                    conn: r,
                };
                self.router.unsubscribe(sub.app, sub.uid, origin);
            }
            return;
        };
        let seen = match self.conns[key].state {
            State::Waiting { seen } => seen,
            _ => 0,
        };
        match reply {
            Reply::Http { bytes, keep_alive } => self.answer(key, &bytes, keep_alive),
            Reply::StreamRefused { frame, keep_alive } => {
                let mut bytes = Vec::with_capacity(256);
                write_stream_head(&mut bytes);
                push_chunk(&mut bytes, frame);
                bytes.extend_from_slice(LAST_CHUNK);
                self.answer(key, &bytes, keep_alive);
            }
            Reply::Stream { sub, backlog, more } => {
                // The state first: closing a Stream drops its subscription.
                self.conns[key].state = State::Stream(Subscriber::new(sub, seen, true));
                let mut head = Vec::with_capacity(160);
                write_stream_head(&mut head);
                if !self.conns[key].send(&[&head]) {
                    return self.close(key);
                }
                self.set_deadline(key, self.now + self.set.heartbeat);
                if self.write_batch(key, backlog) {
                    self.catch_up(key, more);
                }
            }
            Reply::Poll {
                sub,
                backlog,
                keep_alive,
            } => {
                self.conns[key].state = State::Poll(Subscriber::new(sub, seen, keep_alive));
                self.set_deadline(key, self.now + self.set.poll_timeout);
                if self.write_batch(key, backlog) {
                    self.catch_up(key, false);
                }
            }
        }
    }

    /// A live message for one subscriber.
    fn deliver(&mut self, msg: &LiveMsg, t: Target) {
        let Some(key) = self.lookup(t.conn) else {
            return;
        };
        let s = match &mut self.conns[key].state {
            State::Waiting { seen } => {
                *seen = (*seen).max(t.msgid);
                return;
            }
            State::Stream(s) | State::Poll(s) => s,
            _ => return,
        };
        if t.msgid < s.sub.next {
            return; // already sent (by a backfill): never twice
        }
        if t.msgid > s.sub.next || s.backfilling {
            // A gap: messages before this one must come from the store first.
            s.seen = s.seen.max(t.msgid);
            return self.catch_up(key, false);
        }
        s.sub.next += 1;
        let suffix = LiveSuffix::new(t.msgid, s.sub.uid);
        self.send_frame(key, &[frame::DATA_OPEN, msg.prefix(), suffix.as_bytes()]);
    }

    /// Stored messages a worker read from `sub.next` on, for a subscriber
    /// that was behind; `upto` is what it knew existed when it asked.
    fn on_backfill(&mut self, r: ConnRef, upto: MsgId, msgs: Option<Vec<Message>>) {
        let Some(key) = self.lookup(r) else { return };
        let (State::Stream(s) | State::Poll(s)) = &mut self.conns[key].state else {
            return;
        };
        s.backfilling = false;
        let Some(msgs) = msgs else {
            // The store failed (or lost this user): end the subscription
            // cleanly; the client comes back by seq and hears why (503, or
            // a 401 frame if its token is gone too).
            return self.end_subscription(key);
        };
        let more = msgs.len() >= self.set.page_size;
        if !self.write_batch(key, msgs) {
            return;
        }
        if let State::Stream(s) | State::Poll(s) = &self.conns[key].state {
            // Everything up to `upto` was committed before the read, so what
            // the read did not find is no longer stored (acked elsewhere, or
            // dropped by the inbox cap): say so, and move past it.
            if !more && s.sub.next <= upto && !self.skip_to(key, upto) {
                return;
            }
        }
        self.catch_up(key, more);
    }

    /// Sends stored messages the client is owed to a stream or held poll.
    /// Returns false if that ended the subscription (a poll was answered or
    /// the connection closed).
    fn write_batch(&mut self, key: usize, mut msgs: Vec<Message>) -> bool {
        let (State::Stream(s) | State::Poll(s)) = &mut self.conns[key].state else {
            return false;
        };
        msgs.retain(|m| m.msgid >= s.sub.next);
        let Some(first) = msgs.first() else {
            return true;
        };
        if first.msgid > s.sub.next && !self.skip_to(key, first.msgid - 1) {
            return false;
        }
        let (State::Stream(s) | State::Poll(s)) = &mut self.conns[key].state else {
            return false;
        };
        s.sub.next = msgs.last().map_or(s.sub.next, |m| m.msgid + 1);
        let mut body = Vec::with_capacity(128 * msgs.len());
        frame::data_frame(&mut body, &msgs, s.sub.uid);
        self.send_frame(key, &[&body])
    }

    /// Sends one frame (made of `parts`) to a subscriber: a chunk on a
    /// stream, which goes on (true); the whole answer of a held poll, which
    /// ends it (false).
    fn send_frame(&mut self, key: usize, parts: &[&[u8]]) -> bool {
        let keep_alive = match self.conns[key].state {
            State::Stream(_) => return self.send_chunk(key, parts),
            State::Poll(s) => s.keep_alive,
            _ => return false,
        };
        self.unsubscribe(key);
        let body = parts.concat();
        let mut bytes = Vec::with_capacity(160 + body.len());
        write_response(&mut bytes, 200, CONTENT_JSON, &body, keep_alive);
        self.answer(key, &bytes, keep_alive);
        false
    }

    /// Tells a subscriber that msgids up to `endid` are gone (a `trimmed`
    /// frame) and moves it past them. A stream goes on (true); a held poll
    /// is answered with the frame and ends (false).
    fn skip_to(&mut self, key: usize, endid: MsgId) -> bool {
        let (State::Stream(s) | State::Poll(s)) = &mut self.conns[key].state else {
            return false;
        };
        s.sub.next = endid + 1;
        let mut body = Vec::with_capacity(64);
        frame::trimmed_frame(&mut body, endid, s.sub.uid);
        self.send_frame(key, &[&body])
    }

    /// Ends a stream with its last chunk, or answers a held poll with 503,
    /// then closes the connection lingering.
    fn end_subscription(&mut self, key: usize) {
        self.unsubscribe(key);
        let bytes = match self.conns[key].state {
            State::Stream(_) => LAST_CHUNK.to_vec(),
            _ => error_response(503, "store unavailable", false),
        };
        self.answer(key, &bytes, false);
    }

    /// Asks a worker for the stored messages a subscriber is owed: when
    /// `more` may be stored, or when a live message showed a gap. One
    /// backfill at a time; live messages meanwhile only raise `seen`.
    fn catch_up(&mut self, key: usize, more: bool) {
        let origin = self.sub_key(key);
        let (State::Stream(s) | State::Poll(s)) = &mut self.conns[key].state else {
            return;
        };
        if s.backfilling || !(more || s.behind()) {
            return;
        }
        s.backfilling = true;
        let job = Job::Backfill {
            origin,
            sub: s.sub,
            upto: s.seen,
        };
        if self.jobs.try_send(job).is_err() {
            // The workers are swamped: end it; the client resumes by seq.
            self.close(key);
        }
    }

    /// Deliveries were dropped (the inbox was full): every subscriber asks
    /// the store for what it may have missed.
    fn catch_up_everyone(&mut self) {
        let keys: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| matches!(c.state, State::Stream(_) | State::Poll(_)))
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.catch_up(key, true);
        }
    }

    /// Writes one chunk made of `parts` with one vectored write: the chunk
    /// header from the stack, the payload where it already is. Resets the
    /// heartbeat. Returns false if the connection was closed.
    fn send_chunk(&mut self, key: usize, parts: &[&[u8]]) -> bool {
        let len = parts.iter().map(|p| p.len()).sum();
        let header = ChunkHeader::new(len);
        let mut all: [&[u8]; 6] = [&[]; 6];
        all[0] = header.as_bytes();
        all[1..=parts.len()].copy_from_slice(parts);
        all[parts.len() + 1] = CHUNK_TRAILER;
        if !self.conns[key].send(&all[..parts.len() + 2]) {
            self.close(key);
            return false;
        }
        self.set_deadline(key, self.now + self.set.heartbeat);
        true
    }

    // ---- shutdown ----

    fn shutdown(&mut self) {
        for mut l in [self.listener.take(), self.admin.take()]
            .into_iter()
            .flatten()
        {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.accepting = Accepting::Closed;
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            if let State::Stream(_) = self.conns[key].state {
                // End the chunked body so the client sees a clean end.
                let _ = self.conns[key].send(&[LAST_CHUNK]);
                let _ = self.conns[key].flush();
            }
            self.close(key);
        }
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

fn take_buffer(spare: &mut Vec<Vec<u8>>) -> Vec<u8> {
    spare
        .pop()
        .unwrap_or_else(|| Vec::with_capacity(BUFFER_SIZE))
}

/// Keeps a buffer for the next partial request, unless it grew large or the
/// pool is full: memory held for idle connections stays bounded.
fn give_buffer(spare: &mut Vec<Vec<u8>>, mut buf: Vec<u8>) {
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
