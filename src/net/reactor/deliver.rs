//! The reactor's side of delivery: feeding each connection's
//! [`Subscriber`] what happens (answers, live messages, pages, timers,
//! revocations, shutdown, the socket draining) and doing what it says:
//! write these bytes, ask a worker for a page, end the subscription.
//!
//! No delivery rule lives here; they are all in `crate::delivery`.

use std::sync::Arc;

use crate::bus::{ConnRef, Reply, SubKey, Subscribed, Target};
use crate::delivery::frame::{LiveMsg, LiveSuffix, DATA_OPEN};
use crate::delivery::subscriber::{expiry_tick, Live, Step, Subscriber};
use crate::delivery::wire::Kind;
use crate::http::cors;
use crate::net::conn::State;
use crate::store::{unix_now, MsgId, Page};
use crate::worker::Job;

use super::{slot, Reactor};

/// Live deliveries waiting beyond which they are all written at once,
/// without taking more from the inbox meanwhile: a bound on the memory a
/// reactor that cannot keep up holds (24 bytes each), and back-pressure.
const DUE_LIMIT: usize = 64 * 1024;

/// Connections written per loop turn: about 5 ms of loopback writes. A
/// request that arrives meanwhile (the next message of a fan-out) waits for
/// at most one slice, not the whole fan-out, and the connections not yet
/// reached then take both messages in one write.
const CONNS_PER_TURN: usize = 1024;

/// Most messages in one live frame: keeps one write's iovecs (two per
/// message) within what `Conn::send` passes in one call.
const FRAME_MESSAGES: usize = 24;

/// Live deliveries taken from the inbox and not yet written.
#[derive(Default)]
pub(super) struct Due {
    /// What to deliver to whom, grouped by connection slot once sorted.
    items: Vec<(Arc<LiveMsg>, Target)>,
    /// Items were added since the last sort.
    unsorted: bool,
    /// The slot the next slice starts from. Slices go round the slots, so
    /// connections in high slots are reached while messages keep coming.
    cursor: u32,
}

impl Due {
    /// Whether deliveries are waiting for the next turn.
    pub(super) fn pending(&self) -> bool {
        !self.items.is_empty()
    }
}

/// Live messages a subscriber said to send, not yet written: (position in
/// the connection's group of due items, msgid), and about how many bytes
/// they make.
#[derive(Default)]
struct Run {
    items: [(usize, MsgId); FRAME_MESSAGES],
    len: usize,
    bytes: usize,
}

impl Run {
    fn push(&mut self, pos: usize, msgid: MsgId, prefix_len: usize) {
        self.items[self.len] = (pos, msgid);
        self.len += 1;
        // The shared text plus a joint of ids.
        self.bytes += prefix_len + 32;
    }
}

impl Reactor {
    pub(super) fn on_reply(&mut self, r: ConnRef, reply: Reply) {
        let Some(key) = self.lookup(r) else {
            // The connection went away while its request was at a worker;
            // a subscription made for it must not outlive it.
            match reply {
                Reply::Subscribed(s) => {
                    let origin = SubKey {
                        core: self.set.core,
                        conn: r,
                    };
                    self.router.unsubscribe(s.sub.app, s.sub.uid, origin);
                }
                Reply::Http { bytes, .. } => self.bufs.keep(bytes),
                Reply::StreamRefused { .. } => {}
            }
            return;
        };
        let (seen, revoked) = match self.conns[key].state {
            State::Waiting { seen, revoked } => (seen, revoked),
            _ => (0, false),
        };
        match reply {
            Reply::Http { bytes, keep_alive } => {
                self.answer(key, &bytes, keep_alive);
                // Its buffer takes a later request to a worker.
                self.bufs.keep(bytes);
            }
            Reply::StreamRefused {
                frame,
                kind,
                keep_alive,
                head_lines,
            } => {
                let mut bytes = Vec::with_capacity(256);
                kind.write_head(&mut bytes);
                kind.wire(frame.len(), None).write(frame, &mut bytes);
                kind.finish(&mut bytes);
                if let Some(with) = head_lines.and_then(|lines| cors::with_headers(&bytes, &lines))
                {
                    bytes = with;
                }
                self.answer(key, &bytes, keep_alive && kind == Kind::Chunked);
            }
            Reply::Subscribed(s) => self.subscribed(key, s, seen, revoked),
        }
    }

    /// A stream or poll was accepted: its subscriber takes over the
    /// connection, starting from the page that came with it.
    fn subscribed(&mut self, key: usize, s: Subscribed, seen: u64, revoked: bool) {
        let expires = expiry_tick(s.expires_at, unix_now(), self.now);
        let mut sub = Subscriber::new(s.sub, s.kind, seen, expires);
        let mut out = Vec::new();
        s.kind.write_head(&mut out);
        let (step, msgs) = if revoked {
            (sub.on_revoked(&mut out), 0)
        } else if self.stopping.is_some() {
            // Answered while the server stops: said goodbye at once.
            (sub.on_shutdown(&mut out), 0)
        } else {
            sub.on_page_counted(&s.page, &mut out)
        };
        if let Some(lines) = s.head_lines {
            // On the stream's head, or on a poll answered at once; a held
            // poll's answer gets them when it is written.
            if let Some(with) = cors::with_headers(&out, &lines) {
                out = with;
            } else if s.kind.is_poll() {
                self.cors_held.insert(key, lines);
            }
        }
        // The state first: closing a subscribed connection unsubscribes it.
        let conn = &mut self.conns[key];
        self.stats
            .moved(slot(&conn.state), slot(&State::Subscribed(sub)));
        conn.state = State::Subscribed(sub);
        let period = if s.kind.is_poll() {
            self.set.poll_timeout
        } else {
            self.set.heartbeat
        };
        self.set_deadline(key, sub.deadline(self.now, period));
        if self.follow_counted(key, &out, step, msgs) && self.conns[key].readable() {
            // A waiting connection is not read: the client may have closed
            // (or sent more) meanwhile, and edge-triggered readiness will
            // not be told again. Unseen, a closed held poll would keep its
            // slot until it timed out.
            self.again.push(key);
        }
    }

    /// Takes a batch of live messages for the next slices of writes: a
    /// connection owed several of them by the time a slice reaches it gets
    /// them in one frame and one write. Nothing waits on purpose: a
    /// connection is written at its first turn.
    pub(super) fn take_live(&mut self, msg: Arc<LiveMsg>, to: Vec<Target>) {
        // One message names each connection once: only a second one needs
        // grouping with the first.
        self.due.unsorted |= !self.due.items.is_empty();
        self.due
            .items
            .extend(to.into_iter().map(|t| (Arc::clone(&msg), t)));
        while self.due.items.len() >= DUE_LIMIT {
            self.deliver_some();
        }
    }

    /// Writes the due deliveries of up to [`CONNS_PER_TURN`] connections,
    /// grouped by connection, each connection's in the order they came.
    pub(super) fn deliver_some(&mut self) {
        if self.due.items.is_empty() {
            return;
        }
        let mut due = std::mem::take(&mut self.due);
        if due.unsorted {
            // Stable: each connection's messages keep their order. Round
            // the slots from the cursor: fair under a steady stream.
            let c = due.cursor;
            due.items.sort_by_key(|(_, t)| t.conn.slot.wrapping_sub(c));
            due.unsorted = false;
        }
        let (mut pos, mut conns) = (0, 0);
        while pos < due.items.len() && conns < CONNS_PER_TURN {
            let slot = due.items[pos].1.conn.slot;
            let len = due.items[pos..]
                .iter()
                .take_while(|(_, t)| t.conn.slot == slot)
                .count();
            self.deliver_to(&due.items[pos..pos + len]);
            pos += len;
            conns += 1;
        }
        due.items.drain(..pos);
        if let Some((_, t)) = due.items.first() {
            due.cursor = t.conn.slot;
        }
        // Nothing above takes live messages: the list is whole again.
        debug_assert!(self.due.items.is_empty());
        self.due = due;
    }

    /// Live messages for one connection slot: each goes to the subscriber,
    /// and the run it says to send goes out as one data frame.
    fn deliver_to(&mut self, group: &[(Arc<LiveMsg>, Target)]) {
        // By slot, not by the first target: a slot reused within one drain
        // has targets for its old connection and its new one.
        let key = group[0].1.conn.slot as usize;
        let Some(gen) = self.conns.get(key).map(|c| c.gen) else {
            return;
        };
        let mut run = Run::default();
        for (pos, (msg, t)) in group.iter().enumerate() {
            if t.conn.gen != gen {
                continue; // meant for an earlier connection in this slot
            }
            let queued = self.conns[key].queued() + run.bytes;
            let s = match &mut self.conns[key].state {
                State::Waiting { seen, .. } => {
                    *seen = (*seen).max(t.msgid);
                    continue;
                }
                State::Subscribed(s) => s,
                _ => break,
            };
            match s.on_live(t.msgid, queued) {
                Live::Drop => {}
                Live::Hold => {
                    if !self.send_run(group, key, &mut run) || !self.pump(key) {
                        return;
                    }
                }
                Live::Send => {
                    run.push(pos, t.msgid, msg.prefix().len());
                    if run.len == FRAME_MESSAGES && !self.send_run(group, key, &mut run) {
                        return;
                    }
                }
            }
        }
        self.send_run(group, key, &mut run);
    }

    /// Writes consecutive live messages the subscriber said to send as one
    /// data frame, with one vectored write: the chunk header and joints
    /// from the stack, each message's shared text where it already is.
    /// Returns false if the subscription is over (or the connection closed).
    fn send_run(&mut self, group: &[(Arc<LiveMsg>, Target)], key: usize, run: &mut Run) -> bool {
        if run.len == 0 {
            return true;
        }
        let State::Subscribed(s) = &self.conns[key].state else {
            return false;
        };
        let (kind, uid) = (s.kind(), s.uid);
        let items = &run.items[..run.len];
        let mut joints = [LiveSuffix::EMPTY; FRAME_MESSAGES];
        for (i, &(_, id)) in items.iter().enumerate() {
            joints[i] = if i + 1 < items.len() {
                LiveSuffix::between(id)
            } else {
                LiveSuffix::new(id, uid)
            };
        }
        let mut parts: [&[u8]; 2 * FRAME_MESSAGES + 3] = [&[]; 2 * FRAME_MESSAGES + 3];
        parts[1] = DATA_OPEN;
        let mut n = 2;
        for (&(pos, _), joint) in items.iter().zip(&joints) {
            parts[n] = group[pos].0.prefix();
            parts[n + 1] = joint.as_bytes();
            n += 2;
        }
        let last = items.last().map(|&(_, id)| id);
        let wire = kind.wire(parts[1..n].iter().map(|p| p.len()).sum(), last);
        // A held poll's answer from an allowed origin carries CORS lines
        // (a stream's frames never have a head of their own).
        let head_with_cors = match kind.is_poll() {
            true => self
                .cors_held
                .get(&key)
                .and_then(|lines| cors::with_headers(wire.head(), lines)),
            false => None,
        };
        parts[0] = head_with_cors.as_deref().unwrap_or(wire.head());
        parts[n] = wire.tail();
        let sent = self.write(key, &parts[..=n]);
        if sent {
            self.stats.delivered(run.len);
        }
        *run = Run::default();
        sent && self.step(key, true, kind.step())
    }

    /// A page a subscriber asked for (`None`: the store failed).
    pub(super) fn on_page(&mut self, r: ConnRef, page: Option<Page>) {
        let Some(key) = self.lookup(r) else { return };
        let State::Subscribed(s) = &mut self.conns[key].state else {
            return;
        };
        let mut out = Vec::new();
        let (step, msgs) = match &page {
            Some(page) => s.on_page_counted(page, &mut out),
            None => (s.on_store_failed(&mut out), 0),
        };
        self.follow_counted(key, &out, step, msgs);
    }

    /// The token of a subscription was logged out.
    pub(super) fn on_revoke(&mut self, r: ConnRef) {
        let Some(key) = self.lookup(r) else { return };
        match &mut self.conns[key].state {
            // Its answer is still at a worker: it ends as soon as it opens.
            State::Waiting { revoked, .. } => *revoked = true,
            State::Subscribed(s) => {
                let mut out = Vec::new();
                let step = s.on_revoked(&mut out);
                self.follow(key, &out, step);
            }
            _ => {}
        }
    }

    /// The subscriber's deadline passed: heartbeat, poll timeout, or its
    /// token expired.
    pub(super) fn subscriber_timer(&mut self, key: usize) {
        let queued = self.conns[key].queued();
        let State::Subscribed(s) = &mut self.conns[key].state else {
            return;
        };
        let mut out = Vec::new();
        let step = s.on_timer(self.now, queued, &mut out);
        if out.is_empty() {
            // Nothing said (output still queued): look again a heartbeat on.
            let at = s.deadline(self.now, self.set.heartbeat);
            self.set_deadline(key, at);
        }
        self.follow(key, &out, step);
    }

    /// Ends a subscription at shutdown.
    pub(super) fn end_subscriber(&mut self, key: usize) {
        let State::Subscribed(s) = &mut self.conns[key].state else {
            return;
        };
        let mut out = Vec::new();
        let step = s.on_shutdown(&mut out);
        self.follow(key, &out, step);
    }

    /// Deliveries were dropped (the inbox was full, or the Redis feed
    /// reconnected): every subscriber reads what it may have missed.
    pub(super) fn catch_up_everyone(&mut self) {
        let keys: Vec<usize> = self
            .conns
            .iter_mut()
            .filter_map(|(k, c)| match &mut c.state {
                State::Subscribed(s) => {
                    s.on_lagged();
                    Some(k)
                }
                _ => None,
            })
            .collect();
        for key in keys {
            self.pump(key);
        }
    }

    /// Writes what a subscriber handed back and follows its step. Returns
    /// false if the subscription is over (or the connection closed).
    pub(super) fn follow(&mut self, key: usize, bytes: &[u8], step: Step) -> bool {
        self.follow_counted(key, bytes, step, 0)
    }

    /// [`Reactor::follow`], where the bytes hold `msgs` messages.
    fn follow_counted(&mut self, key: usize, bytes: &[u8], step: Step, msgs: usize) -> bool {
        let with_cors = self
            .cors_held
            .get(&key)
            .and_then(|lines| cors::with_headers(bytes, lines));
        let bytes = with_cors.as_deref().unwrap_or(bytes);
        if !bytes.is_empty() && !self.write(key, &[bytes]) {
            return false;
        }
        self.stats.delivered(msgs);
        self.step(key, !bytes.is_empty(), step)
    }

    /// Follows a subscriber's step once what it said (if anything: `wrote`)
    /// is written.
    fn step(&mut self, key: usize, wrote: bool, step: Step) -> bool {
        match step {
            Step::Continue => {
                let State::Subscribed(s) = &self.conns[key].state else {
                    return false;
                };
                if wrote && !s.kind().is_poll() {
                    // A frame went: the stream's heartbeat starts again.
                    let at = s.deadline(self.now, self.set.heartbeat);
                    self.set_deadline(key, at);
                }
                self.pump(key)
            }
            Step::Done { keep_alive } => {
                self.unsubscribe(key);
                self.finish_request(key, keep_alive);
                false
            }
        }
    }

    /// Asks a worker for the subscriber's next page if it is owed one and
    /// its connection has drained below the low-water mark. Returns false
    /// if the subscription is over.
    pub(super) fn pump(&mut self, key: usize) -> bool {
        let origin = self.sub_key(key);
        let queued = self.conns[key].queued();
        let State::Subscribed(s) = &mut self.conns[key].state else {
            return false;
        };
        let Some(sub) = s.next_page(queued) else {
            return true;
        };
        if self.queue_job(Job::Page { origin, sub }).is_ok() {
            return true;
        }
        // The workers are swamped: end it as a failed read would (the
        // client resumes by seq).
        let State::Subscribed(s) = &mut self.conns[key].state else {
            return false;
        };
        s.page_refused();
        let mut out = Vec::new();
        let step = s.on_store_failed(&mut out);
        self.follow(key, &out, step)
    }
}

#[cfg(test)]
mod tests {
    //! The delivery side of a reactor that never runs its loop: the test
    //! plays the inbox (answers, live messages, pages, logouts, in the
    //! order a race between a worker and a sender would bring them) and
    //! reads what the client's end of a loopback connection gets.

    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::ops::RangeInclusive;
    use std::time::Duration;

    use mio::{Poll, Token, Waker};

    use super::*;
    use crate::bus::Sub;
    use crate::delivery::frame::{data_frame, TOKEN_ERROR};
    use crate::metrics::Metrics;
    use crate::net::conn::Conn;
    use crate::net::mailbox::Mailbox;
    use crate::net::reactor::{Listeners, Settings};
    use crate::router::Router;
    use crate::store::{Message, NewMessage, DATATYPE_SINGLE};
    use crate::worker::{self, JobsRx};

    /// The subscriber's uid; every message is sent to it by uid 1.
    const UID: u64 = 7;

    /// A reactor, and the job queue it asks for pages on.
    struct Bench {
        reactor: Reactor,
        jobs: JobsRx,
    }

    fn bench() -> Bench {
        let poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), Token(1)).unwrap();
        let (mailbox, inbox) = Mailbox::new(waker);
        let router = Arc::new(Router::new(vec![mailbox.clone()], 8, 1024));
        let (jobs, rx) = worker::queue(16);
        let set = Settings {
            core: 0,
            max_conns: 64,
            max_body: 1 << 20,
            heartbeat: 30,
            poll_timeout: 30,
            send_timeout: 30,
            request_timeout: 30,
            keepalive_timeout: 30,
            linger_timeout: 5,
            jobs_per_wake: 1,
            yield_after: None,
            slow_turn: None,
        };
        let listeners = Listeners {
            public: Vec::new(),
            admin: None,
        };
        let metrics = Arc::new(Metrics::new(1));
        let work = worker::Work { jobs, inline: None };
        let reactor =
            Reactor::new(set, poll, listeners, inbox, mailbox, router, work, metrics).unwrap();
        Bench { reactor, jobs: rx }
    }

    impl Bench {
        /// A connection whose request (for a stream) is at a worker, and
        /// the client's end of it.
        fn waiting(&mut self) -> (ConnRef, TcpStream) {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            client
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let (sock, _) = listener.accept().unwrap();
            sock.set_nonblocking(true).unwrap();
            let r = &mut self.reactor;
            r.next_gen += 1;
            let mut conn = Conn::new(mio::net::TcpStream::from_std(sock), r.next_gen);
            conn.state = State::Waiting {
                seen: 0,
                revoked: false,
            };
            let slot = r.conns.insert(conn) as u32;
            let gen = r.next_gen;
            (ConnRef { slot, gen }, client)
        }

        /// The worker's answer: a chunked stream owed msgid 1 on, whose
        /// first page found the inbox empty.
        fn subscribe(&mut self, r: ConnRef) {
            let s = Subscribed {
                sub: sub(1),
                kind: Kind::Chunked,
                page: Page::default(),
                expires_at: u64::MAX,
                head_lines: None,
            };
            self.reactor.on_reply(r, Reply::Subscribed(s));
        }

        /// Live messages `ids` for the connection, all in one loop turn.
        fn live(&mut self, r: ConnRef, ids: RangeInclusive<MsgId>) {
            for msgid in ids {
                let msg = Arc::new(LiveMsg::new(&new_message(msgid)));
                self.reactor.take_live(msg, vec![Target { conn: r, msgid }]);
            }
            self.reactor.deliver_some();
        }
    }

    fn sub(next: MsgId) -> Sub {
        Sub {
            app: 0,
            uid: UID,
            next,
        }
    }

    fn new_message(msgid: MsgId) -> NewMessage {
        NewMessage {
            fromid: 1,
            toid: UID,
            datatype: DATATYPE_SINGLE,
            content: format!("message {msgid}").into(),
        }
    }

    fn message(msgid: MsgId) -> Message {
        let m = new_message(msgid);
        Message {
            msgid,
            fromid: m.fromid,
            toid: m.toid,
            datatype: m.datatype,
            content: m.content,
        }
    }

    /// The head a chunked stream starts with.
    fn head() -> Vec<u8> {
        let mut out = Vec::new();
        Kind::Chunked.write_head(&mut out);
        out
    }

    /// One data frame of messages `ids`, as a page would write it.
    fn frame(ids: RangeInclusive<MsgId>) -> Vec<u8> {
        let msgs: Vec<Message> = ids.map(message).collect();
        let mut body = Vec::new();
        data_frame(&mut body, &msgs, UID);
        let mut out = Vec::new();
        let last = msgs.last().map(|m| m.msgid);
        Kind::Chunked.wire(body.len(), last).write(&body, &mut out);
        out
    }

    /// What the client reads, until `n` bytes, the end, or 5 s of nothing.
    fn read(client: &mut TcpStream, n: usize) -> String {
        let mut got = vec![0; n];
        let mut len = 0;
        while len < n {
            match client.read(&mut got[len..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => len += k,
            }
        }
        String::from_utf8_lossy(&got[..len]).into_owned()
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    #[test]
    fn a_live_message_while_the_request_is_at_a_worker_is_read_once_subscribed() {
        let mut b = bench();
        let (r, mut client) = b.waiting();
        // Stored and announced after the worker read the first page (empty).
        b.live(r, 1..=1);
        b.subscribe(r);
        // The stream opens and asks for the page that holds it.
        match b.jobs.try_next() {
            Some(Job::Page { origin, sub: asked }) => {
                assert_eq!(origin.conn, r);
                assert_eq!(asked, sub(1));
            }
            Some(Job::Request { .. }) => panic!("a request, not a page"),
            None => panic!("no page asked for: message 1 was forgotten"),
        }
        let page = Page {
            msgs: vec![message(1)],
            last: 1,
            reset: None,
        };
        b.reactor.on_page(r, Some(page));
        let want = [head(), frame(1..=1)].concat();
        assert_eq!(read(&mut client, want.len()), text(&want));
    }

    #[test]
    fn a_logout_while_the_request_is_at_a_worker_ends_the_stream_as_it_opens() {
        let mut b = bench();
        let (r, mut client) = b.waiting();
        b.reactor.on_revoke(r);
        b.subscribe(r);
        let mut want = head();
        Kind::Chunked
            .wire(TOKEN_ERROR.len(), None)
            .write(TOKEN_ERROR, &mut want);
        Kind::Chunked.finish(&mut want);
        // One byte more than the answer: the read must end at the close.
        assert_eq!(read(&mut client, want.len() + 1), text(&want));
        assert!(b.jobs.try_next().is_none(), "a page for a revoked stream");
    }

    #[test]
    fn live_messages_of_one_turn_go_out_in_frames_of_up_to_24() {
        let mut b = bench();
        for n in [1, 2, 5, 6, 23, 24, 25, 30, 48, 49] {
            let (r, mut client) = b.waiting();
            b.subscribe(r);
            b.live(r, 1..=n);
            let mut want = head();
            for first in (1..=n).step_by(FRAME_MESSAGES) {
                let last = (first + FRAME_MESSAGES as MsgId - 1).min(n);
                want.extend(frame(first..=last));
            }
            assert_eq!(
                read(&mut client, want.len()),
                text(&want),
                "{n} messages in one turn"
            );
        }
        assert!(b.jobs.try_next().is_none(), "a page asked for: a gap?");
    }
}
