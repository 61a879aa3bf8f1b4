//! The subscriber protocol: what one stream or held poll owes its client,
//! as a sans-IO state machine.
//!
//! Events come in (a live message, a page read from the store, the socket
//! draining, a timer, the token revoked, shutdown, a WebSocket client's
//! frames); what the reactor must do
//! comes out (write these bytes, ask the store for a page from msgid N, end
//! the subscription). The subscriber never touches a socket, a channel or
//! the clock: the reactor passes in how many bytes are still queued on the
//! connection and what time it is, so every transition is a table test.
//!
//! The rules it keeps:
//! - msgids on one subscription never skip and never repeat: live messages
//!   below `next` are dropped, a gap is filled from the store first, and
//!   what the store no longer holds is announced with a `trimmed` frame,
//!   and a store found behind what the client holds with a `reset` frame;
//! - flow control by watermarks: above [`HIGH_WATER`] queued bytes, live
//!   messages are not written but only remembered (`seen`); the next page
//!   is asked for only when the queue is below [`LOW_WATER`]. The store is
//!   the buffer: a slow client is never cut off, and what a connection
//!   queues stays below the high-water mark plus one page;
//! - one page at a time (`fetching`), and live messages wait behind it.

use crate::bus::{AppKey, Sub};
use crate::delivery::frame;
use crate::delivery::wire::Kind;
use crate::http::ws;
use crate::net::timer::{Secs, NEVER};
use crate::store::{leading_run, MsgId, Page, Uid};

/// Queued bytes above which live messages are no longer written to a
/// connection but read back from the store once it drains. 64 KiB on top
/// of the kernel's send buffer is some 250 small frames: a client that far
/// behind gains nothing from more buffering, and a million connections
/// cannot each hold more.
pub const HIGH_WATER: usize = 64 * 1024;

/// Queued bytes below which the next page is asked for. Low enough that a
/// page never stacks on a full queue (memory stays bounded by high water
/// plus a page), high enough that the socket has bytes to send while the
/// page is read.
pub const LOW_WATER: usize = 16 * 1024;

/// One stream or held poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subscriber {
    pub app: AppKey,
    /// The reactor tick at which the token it was opened with expires.
    expires: Secs,
    pub uid: Uid,
    /// The next msgid the client must get; never goes back.
    next: MsgId,
    /// The highest msgid known to exist; at or above `next` means the
    /// client is owed messages that must come from the store.
    seen: MsgId,
    kind: Kind,
    /// A page request is at a worker; live messages wait for it.
    fetching: bool,
    /// Live messages may have been lost on their way here: the next page
    /// read must be one asked for after that happened.
    stale: bool,
}

/// What to do with a live message.
#[derive(Debug, PartialEq, Eq)]
pub enum Live {
    /// Already sent (by a page): never twice.
    Drop,
    /// Not now (a gap, a page in flight, or the queue above high water):
    /// it is remembered and will come from the store. Then ask
    /// [`Subscriber::next_page`].
    Hold,
    /// Write it now, wrapped as [`Kind::wire`] says.
    Send,
}

/// Whether the subscription goes on after what was just written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// It goes on.
    Continue,
    /// It is over once the bytes are written. A stream's connection then
    /// closes; a poll's answer is complete and the connection goes on to
    /// its next request if `keep_alive`.
    Done { keep_alive: bool },
}

impl Subscriber {
    /// A subscription that owes its client `sub.next` on, knowing msgids
    /// up to `seen` exist; its token expires at tick `expires`.
    pub fn new(sub: Sub, kind: Kind, seen: MsgId, expires: Secs) -> Subscriber {
        Subscriber {
            app: sub.app,
            expires,
            uid: sub.uid,
            next: sub.next,
            seen,
            kind,
            fetching: false,
            stale: false,
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// What a page request reads: from the next msgid owed.
    pub fn sub(&self) -> Sub {
        Sub {
            app: self.app,
            uid: self.uid,
            next: self.next,
        }
    }

    /// Whether messages are known to exist that the client has not got.
    pub fn behind(&self) -> bool {
        self.seen >= self.next
    }

    /// A live message `msgid` for this subscriber; `queued` bytes wait on
    /// its connection.
    pub fn on_live(&mut self, msgid: MsgId, queued: usize) -> Live {
        if msgid < self.next {
            return Live::Drop;
        }
        self.seen = self.seen.max(msgid);
        if msgid > self.next || self.fetching || queued > HIGH_WATER {
            return Live::Hold;
        }
        self.next += 1;
        Live::Send
    }

    /// Whether to ask the store for the next page now: when the client is
    /// owed messages, none is being read, and the connection's queue is
    /// below the low-water mark. Returns what to read; the answer must come
    /// back through [`Subscriber::on_page`].
    pub fn next_page(&mut self, queued: usize) -> Option<Sub> {
        if self.fetching || !(self.behind() || self.stale) || queued > LOW_WATER {
            return None;
        }
        self.fetching = true;
        self.stale = false;
        Some(self.sub())
    }

    /// Live messages may have been dropped on their way here (a full
    /// inbox, a feed that reconnected): read from the store to find out.
    pub fn on_lagged(&mut self) {
        self.stale = true;
    }

    /// The page request could not be queued (the workers are swamped).
    pub fn page_refused(&mut self) {
        self.fetching = false;
        self.stale = true;
    }

    /// A page read from `self.next` on (the first, which came with the
    /// subscription, or one [`Subscriber::next_page`] asked for). Appends
    /// what to write to `out`: a `trimmed` frame if the store no longer
    /// holds msgids the client is owed, then a data frame. A held poll
    /// answers with its first frame; with nothing to say it stays held.
    pub fn on_page(&mut self, page: &Page, out: &mut Vec<u8>) -> Step {
        self.on_page_counted(page, out).0
    }

    /// [`Subscriber::on_page`], and how many messages the data frame it
    /// wrote holds (0 without one).
    pub fn on_page_counted(&mut self, page: &Page, out: &mut Vec<u8>) -> (Step, usize) {
        self.fetching = false;
        self.seen = self.seen.max(page.last);
        if let Some(reset) = page.reset {
            // The store had lost msgids this client holds, and now counts on
            // from its position: say so, then go on as usual.
            let mut body = Vec::with_capacity(96);
            frame::reset_frame(&mut body, reset.epoch, self.next - 1, reset.found, self.uid);
            if let done @ Step::Done { .. } = self.emit(&body, Some(self.next - 1), out) {
                return (done, 0);
            }
        }
        let msgs = {
            let start = page.msgs.partition_point(|m| m.msgid < self.next);
            leading_run(&page.msgs[start..])
        };
        // Everything up to the inbox's last msgid was committed before the
        // read, so what the read did not find is no longer stored (acked
        // elsewhere, or dropped by the inbox cap): say so and move on.
        let gone_upto = match msgs.first() {
            Some(first) => first.msgid - 1,
            None => page.last,
        };
        if gone_upto >= self.next {
            self.next = gone_upto + 1;
            let mut body = Vec::with_capacity(64);
            frame::trimmed_frame(&mut body, gone_upto, self.uid);
            if let done @ Step::Done { .. } = self.emit(&body, Some(gone_upto), out) {
                return (done, 0);
            }
        }
        let Some(last) = msgs.last() else {
            return (Step::Continue, 0);
        };
        self.next = last.msgid + 1;
        let mut body = Vec::with_capacity(128 * msgs.len());
        frame::data_frame(&mut body, msgs, self.uid);
        (self.emit(&body, Some(last.msgid), out), msgs.len())
    }

    /// The store could not be read for this subscriber: a stream ends
    /// cleanly (the client resumes by seq and hears why), a held poll
    /// answers 503.
    pub fn on_store_failed(&mut self, out: &mut Vec<u8>) -> Step {
        self.fetching = false;
        self.kind.fail(503, "store unavailable", out)
    }

    /// The connection's timer fired at `now` (the reactor arms it at
    /// [`Subscriber::deadline`]); `queued` bytes wait on it. An expired
    /// token ends the subscription with a `401` frame; a held poll answers
    /// `noop`; a quiet stream gets a `noop` heartbeat, unless bytes are
    /// still queued (the client is receiving anyway).
    pub fn on_timer(&mut self, now: Secs, queued: usize, out: &mut Vec<u8>) -> Step {
        if now >= self.expires {
            return self.end(frame::TOKEN_ERROR, out);
        }
        if self.kind.is_poll() {
            return self.emit(frame::NOOP, None, out);
        }
        if queued == 0 {
            self.kind.heartbeat(frame::NOOP, out);
            return Step::Continue;
        }
        Step::Continue
    }

    /// When the timer should fire next, `period` (heartbeat or poll
    /// timeout) after tick `now`: never early, and never after the token
    /// expires.
    pub fn deadline(&self, now: Secs, period: Secs) -> Secs {
        crate::net::timer::after(now, period).min(self.expires)
    }

    /// The token was logged out: a `401` frame, then the end.
    pub fn on_revoked(&mut self, out: &mut Vec<u8>) -> Step {
        self.end(frame::TOKEN_ERROR, out)
    }

    /// The server is stopping: a stream ends with its last chunk (a
    /// WebSocket with a close frame saying 1001, going away), a held poll
    /// answers `noop` and its connection closes.
    pub fn on_shutdown(&mut self, out: &mut Vec<u8>) -> Step {
        match self.kind {
            Kind::Poll { .. } => {
                self.kind = Kind::Poll { keep_alive: false };
                self.emit(frame::NOOP, None, out)
            }
            _ => {
                self.kind.going_away(out);
                Step::Done { keep_alive: false }
            }
        }
    }

    /// What a WebSocket client sent: `input` holds its frames from the
    /// start of one. Each complete frame is answered: a ping with a pong
    /// (same payload), a close with a close (the client's code echoed),
    /// then the end; a message or a pong is dropped. A frame that breaks
    /// the protocol (unmasked, reserved bits, an unknown opcode, a long or
    /// fragmented control frame) ends it with close 1002, one larger than
    /// [`ws::MAX_CLIENT_PAYLOAD`] with 1009, as soon as its header shows
    /// it. Returns how many bytes it used: a partial frame waits for more.
    pub fn on_input(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, Step) {
        const DONE: Step = Step::Done { keep_alive: false };
        let mut used = 0;
        loop {
            let rest = &input[used..];
            let frame = match ws::parse_frame(rest) {
                Ok(Some(f)) if f.total_len() <= rest.len() => f,
                Ok(_) => return (used, Step::Continue),
                Err(e) => {
                    ws::write_close(out, e.close_code(), &e.to_string());
                    return (input.len(), DONE);
                }
            };
            used += frame.total_len();
            if !frame.is_control() {
                continue; // a client's message: nothing for a push server
            }
            let mut payload = [0u8; 125];
            let n = frame.unmask(rest, &mut payload);
            match frame.opcode {
                ws::PING => {
                    out.extend_from_slice(ws::FrameHeader::new(ws::PONG, n).as_bytes());
                    out.extend_from_slice(&payload[..n]);
                }
                ws::CLOSE => {
                    let code = match payload[..n] {
                        [] => ws::NORMAL,
                        [a, b, ..] if ws::valid_close_code(u16::from_be_bytes([a, b])) => {
                            u16::from_be_bytes([a, b])
                        }
                        _ => ws::PROTOCOL_ERROR,
                    };
                    ws::write_close(out, code, "");
                    return (input.len(), DONE);
                }
                _ => {} // a pong
            }
        }
    }

    /// Writes `frame` (if any) as the last thing this subscription says.
    fn end(&mut self, frame: &[u8], out: &mut Vec<u8>) -> Step {
        if !frame.is_empty() {
            if let done @ Step::Done { .. } = self.emit(frame, None, out) {
                return done;
            }
        }
        self.kind.finish(out);
        Step::Done { keep_alive: false }
    }

    /// Appends one frame as this subscriber's wire carries it; `id` is the
    /// last msgid it accounts for, if any.
    fn emit(&self, body: &[u8], id: Option<MsgId>, out: &mut Vec<u8>) -> Step {
        let wire = self.kind.wire(body.len(), id);
        wire.write(body, out);
        self.kind.step()
    }
}

/// A token's expiry as a reactor tick: `expires_at` (unix seconds) seen at
/// unix time `unix_now` and reactor tick `now`. Rounded up, never early.
pub fn expiry_tick(expires_at: u64, unix_now: u64, now: Secs) -> Secs {
    let left = expires_at.saturating_sub(unix_now);
    match Secs::try_from(left) {
        Ok(left) if left < NEVER - 1 - now => crate::net::timer::after(now, left),
        _ => NEVER - 1,
    }
}

#[cfg(test)]
mod tests;
