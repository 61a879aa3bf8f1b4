//! The inbox of one reactor: what other threads send it, and how they wake it.
//!
//! A crossbeam channel plus the reactor's one `mio::Waker`. Senders
//! wake the poller only when the inbox goes from "nothing pending" to
//! "something pending" (as Pushpin does): a burst of ten thousand deliveries
//! costs one `eventfd` write, not ten thousand.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

use crate::bus::CoreMsg;

/// How many messages may wait in one reactor's inbox before live
/// deliveries are dropped, by default (`--mailbox-capacity`): past this
/// bound the reactor is told to catch its subscribers up from the store
/// (see [`Mailbox::deliver`]). 16 Ki entries absorb a fan-out burst of that
/// many connections per core. Replies are never dropped and never wait:
/// there is one per job a reactor queued, so the job queue's bound is
/// theirs too.
///
/// The inbox is a linked channel, which takes memory as messages arrive
/// (a block of 31 at a time) and gives it back as they are read: an array
/// channel of this many slots would take its whole size up front (2 MiB per
/// reactor, idle or not).
pub const INBOX_CAPACITY: usize = 16 * 1024;

pub struct Mailbox {
    tx: Sender<CoreMsg>,
    waker: Waker,
    /// Set by the first sender after the reactor last looked; cleared by the
    /// reactor before it drains the channel.
    notified: AtomicBool,
    /// Set when a delivery was dropped because the inbox was full.
    lagged: AtomicBool,
    /// Deliveries dropped because the inbox was full, ever (metrics).
    dropped: AtomicU64,
    /// Messages waiting past which live deliveries are dropped.
    capacity: usize,
}

impl Mailbox {
    pub fn new(waker: Waker) -> (Arc<Mailbox>, Receiver<CoreMsg>) {
        Mailbox::with_capacity(waker, INBOX_CAPACITY)
    }

    /// An inbox that drops live deliveries once `capacity` messages wait.
    pub fn with_capacity(waker: Waker, capacity: usize) -> (Arc<Mailbox>, Receiver<CoreMsg>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let mailbox = Mailbox {
            tx,
            waker,
            notified: AtomicBool::new(false),
            lagged: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            capacity,
        };
        (Arc::new(mailbox), rx)
    }

    /// Sends a message that must arrive (a reply, shutdown); it never
    /// waits and is never dropped. Fails only if the reactor has exited.
    pub fn send(&self, msg: CoreMsg) -> bool {
        let ok = self.post(msg);
        self.wake();
        ok
    }

    /// Sends a message that must arrive, as [`send`](Mailbox::send) does,
    /// without waking the reactor: the sender calls [`wake`](Mailbox::wake)
    /// once after a batch (a worker's answers to one reactor).
    pub fn post(&self, msg: CoreMsg) -> bool {
        self.tx.send(msg).is_ok()
    }

    /// Offers live messages without waiting. When the inbox is full the
    /// messages are dropped and the reactor is flagged as lagged: it then
    /// catches every subscriber up from the store, so nothing is lost.
    pub fn deliver(&self, msg: CoreMsg) {
        // Several senders may find room for one more at once and all send:
        // the bound is exceeded by at most one message per sending thread.
        if self.tx.len() >= self.capacity {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return self.flag_lagged();
        }
        if self.tx.send(msg).is_ok() {
            self.wake();
        }
    }

    /// Marks the reactor as lagged and wakes it: it will catch every
    /// subscriber up from the store.
    pub fn flag_lagged(&self) {
        self.lagged.store(true, Ordering::Release);
        self.wake();
    }

    /// Wakes the reactor unless it was woken since it last looked.
    pub fn wake(&self) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            // A failed wake means the poller is gone: the reactor has exited.
            let _ = self.waker.wake();
        }
    }

    /// Called by the reactor before draining its channel.
    pub fn clear_notified(&self) {
        self.notified.store(false, Ordering::Release);
    }

    /// Messages waiting in the inbox now.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// Whether no message waits in the inbox now.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }

    /// Live delivery batches dropped so far because the inbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Called by the reactor: whether deliveries were dropped since last time.
    pub fn take_lagged(&self) -> bool {
        self.lagged.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mio::{Events, Poll, Token};

    use super::*;

    const WAKER: Token = Token(1);

    /// Wake-ups the poller has pending (0 or 1: an eventfd coalesces).
    fn wakes(poll: &mut Poll) -> usize {
        let mut events = Events::with_capacity(8);
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        events.iter().filter(|e| e.token() == WAKER).count()
    }

    fn mailbox() -> (Poll, Arc<Mailbox>, Receiver<CoreMsg>) {
        let poll = Poll::new().unwrap();
        let waker = Waker::new(poll.registry(), WAKER).unwrap();
        let (mailbox, inbox) = Mailbox::new(waker);
        (poll, mailbox, inbox)
    }

    #[test]
    fn a_burst_wakes_the_reactor_once_until_it_looks() {
        let (mut poll, mailbox, inbox) = mailbox();
        assert_eq!(wakes(&mut poll), 0);
        assert!(mailbox.send(CoreMsg::Shutdown));
        assert_eq!(wakes(&mut poll), 1, "the first message wakes");
        for _ in 0..10 {
            assert!(mailbox.send(CoreMsg::Shutdown));
            mailbox.deliver(CoreMsg::Shutdown);
        }
        assert_eq!(wakes(&mut poll), 0, "the rest of the burst does not");
        assert_eq!(inbox.try_iter().count(), 21);
        // The reactor looked: the next message wakes it again.
        mailbox.clear_notified();
        mailbox.deliver(CoreMsg::Shutdown);
        assert_eq!(wakes(&mut poll), 1, "a delivery after the reactor looked");
        mailbox.clear_notified();
        mailbox.flag_lagged();
        assert_eq!(wakes(&mut poll), 1, "a lag flag after the reactor looked");
        assert!(mailbox.take_lagged());
        assert!(!mailbox.take_lagged(), "taking the flag clears it");
    }

    #[test]
    fn a_full_inbox_drops_deliveries_and_flags_lag_replies_still_go_in() {
        let (mut poll, mailbox, inbox) = mailbox();
        for _ in 0..INBOX_CAPACITY {
            mailbox.deliver(CoreMsg::Shutdown);
        }
        assert_eq!(wakes(&mut poll), 1);
        assert!(!mailbox.take_lagged(), "full, but nothing dropped yet");
        mailbox.clear_notified();
        mailbox.deliver(CoreMsg::Shutdown);
        assert!(mailbox.take_lagged(), "the delivery past the bound");
        assert_eq!(wakes(&mut poll), 1, "and the reactor is woken to catch up");
        assert_eq!(inbox.len(), INBOX_CAPACITY);
        // A reply is never dropped and does not wait for room.
        assert!(mailbox.send(CoreMsg::Shutdown));
        assert_eq!(inbox.len(), INBOX_CAPACITY + 1);
        // A reactor that has exited: sends fail, deliveries vanish.
        drop(inbox);
        assert!(!mailbox.send(CoreMsg::Shutdown));
        mailbox.deliver(CoreMsg::Shutdown);
        assert!(
            !mailbox.take_lagged(),
            "a dead reactor has nothing to catch up"
        );
    }
}
