//! The reactor's side of delivery: feeding each connection's
//! [`Subscriber`] what happens (answers, live messages, pages, timers,
//! revocations, shutdown, the socket draining) and doing what it says:
//! write these bytes, ask a worker for a page, end the subscription.
//!
//! No delivery rule lives here; they are all in `crate::delivery`.

use crate::bus::{ConnRef, Reply, SubKey, Subscribed, Target};
use crate::delivery::frame::{LiveMsg, LiveSuffix, DATA_OPEN};
use crate::delivery::subscriber::{expiry_tick, Live, Step, Subscriber};
use crate::delivery::wire::Kind;
use crate::net::conn::State;
use crate::store::{unix_now, Page};
use crate::worker::Job;

use super::Reactor;

impl Reactor {
    pub(super) fn on_reply(&mut self, r: ConnRef, reply: Reply) {
        let Some(key) = self.lookup(r) else {
            // The connection went away while its request was at a worker;
            // a subscription made for it must not outlive it.
            if let Reply::Subscribed(s) = reply {
                let origin = SubKey {
                    core: self.set.core,
                    conn: r,
                };
                self.router.unsubscribe(s.sub.app, s.sub.uid, origin);
            }
            return;
        };
        let (seen, revoked) = match self.conns[key].state {
            State::Waiting { seen, revoked } => (seen, revoked),
            _ => (0, false),
        };
        match reply {
            Reply::Http { bytes, keep_alive } => self.answer(key, &bytes, keep_alive),
            Reply::StreamRefused {
                frame,
                kind,
                keep_alive,
            } => {
                let mut bytes = Vec::with_capacity(256);
                kind.write_head(&mut bytes);
                kind.wire(frame.len()).write(frame, &mut bytes);
                kind.finish(&mut bytes);
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
        let step = if revoked {
            sub.on_revoked(&mut out)
        } else if self.stopping.is_some() {
            // Answered while the server stops: said goodbye at once.
            sub.on_shutdown(&mut out)
        } else {
            sub.on_page(&s.page, &mut out)
        };
        // The state first: closing a subscribed connection unsubscribes it.
        self.conns[key].state = State::Subscribed(sub);
        let period = if s.kind.is_poll() {
            self.set.poll_timeout
        } else {
            self.set.heartbeat
        };
        self.set_deadline(key, sub.deadline(self.now, period));
        self.follow(key, &out, step);
    }

    /// A live message for one subscriber.
    pub(super) fn deliver(&mut self, msg: &LiveMsg, t: Target) {
        let Some(key) = self.lookup(t.conn) else {
            return;
        };
        let queued = self.conns[key].queued();
        let s = match &mut self.conns[key].state {
            State::Waiting { seen, .. } => {
                *seen = (*seen).max(t.msgid);
                return;
            }
            State::Subscribed(s) => s,
            _ => return,
        };
        match s.on_live(t.msgid, queued) {
            Live::Drop => {}
            Live::Hold => {
                self.pump(key);
            }
            Live::Send => {
                let kind = s.kind();
                let suffix = LiveSuffix::new(t.msgid, s.uid);
                let body = [DATA_OPEN, msg.prefix(), suffix.as_bytes()];
                let wire = kind.wire(body.iter().map(|p| p.len()).sum());
                let parts = [wire.head(), body[0], body[1], body[2], wire.tail()];
                if self.write(key, &parts) {
                    self.step(key, true, kind.step());
                }
            }
        }
    }

    /// A page a subscriber asked for (`None`: the store failed).
    pub(super) fn on_page(&mut self, r: ConnRef, page: Option<Page>) {
        let Some(key) = self.lookup(r) else { return };
        let State::Subscribed(s) = &mut self.conns[key].state else {
            return;
        };
        let mut out = Vec::new();
        let step = match &page {
            Some(page) => s.on_page(page, &mut out),
            None => s.on_store_failed(&mut out),
        };
        self.follow(key, &out, step);
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
    fn follow(&mut self, key: usize, bytes: &[u8], step: Step) -> bool {
        if !bytes.is_empty() && !self.write(key, &[bytes]) {
            return false;
        }
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
        if self.jobs.try_send(Job::Page { origin, sub }).is_ok() {
            return true;
        }
        // The workers are swamped: end it as a failed read would (the
        // client resumes by seq).
        s.page_refused();
        let mut out = Vec::new();
        let step = s.on_store_failed(&mut out);
        self.follow(key, &out, step)
    }
}
