//! The inbox of one reactor: what other threads send it, and how they wake it.
//!
//! A bounded crossbeam channel plus the reactor's one `mio::Waker`. Senders
//! wake the poller only when the inbox goes from "nothing pending" to
//! "something pending" (as Pushpin does): a burst of ten thousand deliveries
//! costs one `eventfd` write, not ten thousand.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use mio::Waker;

use crate::bus::CoreMsg;

/// How many messages may wait in one reactor's inbox, by default
/// (`--mailbox-capacity`). Replies block their worker when it is full
/// (back-pressure on the API); live deliveries never block: past this
/// bound they are dropped and the reactor is told to catch its subscribers
/// up from the store (see [`Mailbox::deliver`]). 16 Ki entries absorb a
/// fan-out burst of that many connections per core.
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
}

impl Mailbox {
    pub fn new(waker: Waker) -> (Arc<Mailbox>, Receiver<CoreMsg>) {
        Mailbox::with_capacity(waker, INBOX_CAPACITY)
    }

    /// An inbox holding at most `capacity` messages, which must be at
    /// least one: with none, a reply would wait for a reactor that is
    /// asleep until it is woken after the reply.
    pub fn with_capacity(waker: Waker, capacity: usize) -> (Arc<Mailbox>, Receiver<CoreMsg>) {
        debug_assert!(capacity > 0);
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let mailbox = Mailbox {
            tx,
            waker,
            notified: AtomicBool::new(false),
            lagged: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        };
        (Arc::new(mailbox), rx)
    }

    /// Sends a message that must arrive (a reply, shutdown), waiting for
    /// room if the inbox is full. Fails only if the reactor has exited.
    pub fn send(&self, msg: CoreMsg) -> bool {
        let ok = self.tx.send(msg).is_ok();
        self.wake();
        ok
    }

    /// Offers live messages without waiting. When the inbox is full the
    /// messages are dropped and the reactor is flagged as lagged: it then
    /// catches every subscriber up from the store, so nothing is lost.
    pub fn deliver(&self, msg: CoreMsg) {
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return self.flag_lagged();
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
        self.wake();
    }

    /// Marks the reactor as lagged and wakes it: it will catch every
    /// subscriber up from the store.
    pub fn flag_lagged(&self) {
        self.lagged.store(true, Ordering::Release);
        self.wake();
    }

    fn wake(&self) {
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
    fn a_full_inbox_drops_deliveries_and_flags_lag_replies_wait() {
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
        // A reply waits for room instead of being dropped.
        let sender = {
            let mailbox = Arc::clone(&mailbox);
            std::thread::spawn(move || mailbox.send(CoreMsg::Shutdown))
        };
        inbox.recv().unwrap();
        assert!(sender.join().unwrap(), "sent once there was room");
        assert_eq!(inbox.len(), INBOX_CAPACITY);
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
