//! Hand-offs between threads that sleep instead of spinning.
//!
//! A crossbeam channel's blocking receive spins, then calls `sched_yield`
//! a few times, before it sleeps. With dozens of server processes on two
//! cores (`--processes`), each thread waiting a little while for a job or
//! a Redis reply, those yields kept a hundred threads runnable at once
//! (load average 150 with a million streams connecting) and the scheduler
//! busy switching between them. The two hand-offs here go to sleep on a
//! condition variable at once when there is nothing to take:
//!
//! - [`queue`]: many senders, many receivers, at most `capacity` items
//!   waiting (the worker pool's jobs, a Redis lane's calls). A linked
//!   crossbeam channel underneath, so it takes memory only for what waits
//!   in it, not for its capacity.
//! - [`oneshot`]: one value from one thread to another (a Redis lane's
//!   answer to the worker that called).

use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};

pub use crossbeam_channel::TrySendError;

/// How long a sleeping receiver waits before it looks at the queue anyway:
/// a backstop only, every item queued is followed by a wake-up. Long, so
/// that a sender that forgets to wake shows in the tests as a request not
/// answered, not as one answered a second late.
const SLEEP_MAX: Duration = Duration::from_secs(30);

/// The sending side of a [`queue`]; cloned for every sender.
pub struct QueueTx<T> {
    inner: Arc<SendSide<T>>,
}

impl<T> Clone for QueueTx<T> {
    fn clone(&self) -> Self {
        QueueTx {
            inner: self.inner.clone(),
        }
    }
}

/// The receiving side of a [`queue`], shared by the receiving threads.
pub struct QueueRx<T> {
    rx: Receiver<T>,
    count: Arc<Count>,
    sleep: Arc<Sleep>,
    /// How long a sleeping receiver waits before it looks anyway.
    backstop: Duration,
}

struct SendSide<T> {
    /// Taken when the last [`QueueTx`] goes: the receivers then see the
    /// channel disconnected, after they are woken.
    tx: Option<Sender<T>>,
    count: Arc<Count>,
    sleep: Arc<Sleep>,
}

/// Items queued and not yet taken, against the queue's capacity: a sender
/// reserves a place before it sends and a receiver frees it when it takes
/// the item, so the queue never holds more than `capacity`.
struct Count {
    queued: AtomicUsize,
    capacity: usize,
}

impl Count {
    fn reserve(&self) -> bool {
        if self.queued.fetch_add(1, Ordering::AcqRel) < self.capacity {
            return true;
        }
        self.queued.fetch_sub(1, Ordering::AcqRel);
        false
    }

    fn taken(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Items queued now (a reservation counts until its item is taken).
    fn len(&self) -> usize {
        self.queued.load(Ordering::Acquire).min(self.capacity)
    }
}

/// Where idle receivers sleep.
#[derive(Default)]
struct Sleep {
    /// Receivers asleep or about to be (counted before their last look at
    /// the queue, under `lock`).
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Sleep {
    /// Wakes up to `n` of the receivers asleep, after their items were
    /// queued.
    fn wake(&self, n: usize) {
        if n == 0 {
            return;
        }
        // Pairs with the fence in `QueueRx::next`: either this sees the
        // receiver counted, or the receiver's last look sees the item.
        fence(Ordering::SeqCst);
        let asleep = self.sleeping.load(Ordering::SeqCst);
        if asleep == 0 {
            return;
        }
        let _held = lock(&self.lock);
        if n >= asleep {
            self.wake.notify_all();
        } else {
            for _ in 0..n {
                self.wake.notify_one();
            }
        }
    }
}

/// A queue holding at most `capacity` items.
pub fn queue<T>(capacity: usize) -> (QueueTx<T>, QueueRx<T>) {
    queue_with_backstop(capacity, SLEEP_MAX)
}

/// The same, sleeping receivers looking at the queue anyway every
/// `backstop` (tests make it long, so that only a wake-up can hand an item
/// over).
pub fn queue_with_backstop<T>(capacity: usize, backstop: Duration) -> (QueueTx<T>, QueueRx<T>) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let count = Arc::new(Count {
        queued: AtomicUsize::new(0),
        capacity,
    });
    let sleep = Arc::new(Sleep::default());
    let send = QueueTx {
        inner: Arc::new(SendSide {
            tx: Some(tx),
            count: count.clone(),
            sleep: sleep.clone(),
        }),
    };
    let recv = QueueRx {
        rx,
        count,
        sleep,
        backstop,
    };
    (send, recv)
}

impl<T> QueueTx<T> {
    /// Queues `item` and wakes a sleeping receiver; gives it back if the
    /// queue is full (or the receivers are gone).
    // The item comes back by value, as from a channel's own `try_send`.
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.try_queue(item)?;
        self.inner.sleep.wake(1);
        Ok(())
    }

    /// Queues `item` without waking anyone: the sender calls [`wake`] once
    /// for everything it queued in a turn. A receiver that is awake takes
    /// the item meanwhile; a sleeping one only once woken.
    ///
    /// [`wake`]: QueueTx::wake
    #[allow(clippy::result_large_err)]
    pub fn try_queue(&self, item: T) -> Result<(), TrySendError<T>> {
        let Some(tx) = &self.inner.tx else {
            return Err(TrySendError::Disconnected(item));
        };
        if !self.inner.count.reserve() {
            return Err(TrySendError::Full(item));
        }
        if let Err(e) = tx.send(item) {
            self.inner.count.taken();
            return Err(TrySendError::Disconnected(e.into_inner()));
        }
        Ok(())
    }

    /// Wakes up to `n` sleeping receivers (for items queued with
    /// [`try_queue`](QueueTx::try_queue)); none if none sleeps.
    pub fn wake(&self, n: usize) {
        self.inner.sleep.wake(n);
    }

    /// Items waiting for a receiver.
    pub fn len(&self) -> usize {
        self.inner.count.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> Drop for SendSide<T> {
    fn drop(&mut self) {
        self.tx = None;
        let _held = lock(&self.sleep.lock);
        self.sleep.wake.notify_all();
    }
}

impl<T> QueueRx<T> {
    /// How many items wait, for whoever asks later (metrics); it keeps no
    /// sender alive, so the receivers still end with the last [`QueueTx`].
    pub fn depth(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let count = self.count.clone();
        move || count.len()
    }

    /// Wakes a sleeping receiver if items wait: called by one about to
    /// block with items queued behind the one it took ([`on_block`]).
    pub fn hand_on(&self) {
        if self.count.len() > 0 {
            self.sleep.wake(1);
        }
    }

    /// Takes a queued item without waiting.
    pub fn try_next(&self) -> Option<T> {
        self.try_take().ok()
    }

    fn try_take(&self) -> Result<T, TryRecvError> {
        let item = self.rx.try_recv()?;
        self.count.taken();
        Ok(item)
    }

    /// The next item, sleeping while there is none; `None` once every
    /// [`QueueTx`] is gone and the queue is empty.
    pub fn next(&self) -> Option<T> {
        loop {
            match self.try_take() {
                Ok(item) => return Some(item),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            let held = lock(&self.sleep.lock);
            self.sleep.sleeping.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let item = self.try_take();
            if let Err(TryRecvError::Empty) = item {
                // Released while asleep: an item queued now wakes this one.
                let _ = self
                    .sleep
                    .wake
                    .wait_timeout(held, self.backstop)
                    .unwrap_or_else(|e| e.into_inner());
            }
            self.sleep.sleeping.fetch_sub(1, Ordering::SeqCst);
            match item {
                Ok(item) => return Some(item),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
        }
    }

    /// Receivers asleep now (tests wait for them to be).
    #[cfg(test)]
    pub(crate) fn sleeping(&self) -> usize {
        self.sleep.sleeping.load(Ordering::SeqCst)
    }
}

/// One value from one thread to another: the sender [`Promise::put`]s it,
/// the receiver waits for it on the [`Answer`]. A promise dropped without
/// a value ends the wait at once.
pub fn oneshot<T>() -> (Promise<T>, Answer<T>) {
    let slot = Arc::new(Slot {
        state: Mutex::new(State::Empty),
        ready: Condvar::new(),
    });
    (Promise { slot: slot.clone() }, Answer { slot })
}

pub struct Promise<T> {
    slot: Arc<Slot<T>>,
}

pub struct Answer<T> {
    slot: Arc<Slot<T>>,
}

struct Slot<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

enum State<T> {
    Empty,
    Full(T),
    /// The promise went without a value, or the value was taken.
    Closed,
}

impl<T> Promise<T> {
    pub fn put(self, value: T) {
        *lock(&self.slot.state) = State::Full(value);
        self.slot.ready.notify_one();
        // Drop finds the slot full and leaves it so.
    }
}

impl<T> Drop for Promise<T> {
    fn drop(&mut self) {
        let mut state = lock(&self.slot.state);
        if matches!(*state, State::Empty) {
            *state = State::Closed;
            drop(state);
            self.slot.ready.notify_one();
        }
    }
}

impl<T> Answer<T> {
    /// The value, waiting at most `wait`; `None` if the promise was
    /// dropped without one or the time ran out.
    pub fn wait(&self, wait: Duration) -> Option<T> {
        let deadline = Instant::now() + wait;
        let mut state = lock(&self.slot.state);
        let mut first = true;
        loop {
            match std::mem::replace(&mut *state, State::Closed) {
                State::Full(value) => return Some(value),
                State::Closed => return None,
                State::Empty => *state = State::Empty,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            if std::mem::take(&mut first) {
                blocking();
            }
            state = self
                .slot
                .ready
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

thread_local! {
    /// What this thread runs before it blocks: see [`blocking`].
    static ON_BLOCK: std::cell::RefCell<Option<Box<dyn Fn()>>> = const {
        std::cell::RefCell::new(None)
    };
}

/// Sets what this thread runs whenever it is about to block ([`blocking`]).
/// A worker hands the job queue on: a sleeping worker is woken for the
/// jobs queued behind the one that blocks.
pub fn on_block(hook: impl Fn() + 'static) {
    ON_BLOCK.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
}

/// Called by a thread about to wait (a Redis round trip) or to work long
/// (a password hash): runs its [`on_block`] hook, if it has one.
pub fn blocking() {
    ON_BLOCK.with(|h| {
        if let Some(hook) = &*h.borrow() {
            hook();
        }
    });
}

/// Poisoning means a thread panicked while holding a lock that guards a
/// sleep or a slot, which a panic cannot leave half-written.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` threads taking items from `rx` until it ends; what they take
    /// comes out of the returned channel.
    fn receivers(
        rx: &Arc<QueueRx<u64>>,
        n: usize,
    ) -> (
        Vec<std::thread::JoinHandle<()>>,
        crossbeam_channel::Receiver<u64>,
    ) {
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let threads = (0..n)
            .map(|_| {
                let (rx, done) = (rx.clone(), done_tx.clone());
                std::thread::spawn(move || {
                    while let Some(item) = rx.next() {
                        done.send(item).expect("the test listens");
                    }
                })
            })
            .collect();
        (threads, done_rx)
    }

    /// Waits until `n` receivers are asleep (they count themselves first).
    fn until_asleep<T>(rx: &QueueRx<T>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while rx.sleeping() < n {
            assert!(Instant::now() < deadline, "the receivers never slept");
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_full_queue_gives_the_item_back_and_takes_again_once_one_is_taken() {
        let (tx, rx) = queue(2);
        tx.try_send(1).expect("room");
        tx.try_send(2).expect("room");
        assert_eq!(tx.len(), 2);
        match tx.try_send(3) {
            Err(TrySendError::Full(3)) => {}
            other => panic!("a third item fit a queue of two: {other:?}"),
        }
        assert_eq!(rx.next(), Some(1));
        tx.try_send(3).expect("room again");
        assert_eq!(rx.try_next(), Some(2));
        assert_eq!(rx.next(), Some(3));
        drop(tx);
        assert_eq!(rx.next(), None, "no senders, no items: done");
    }

    #[test]
    fn sleeping_receivers_are_woken_for_every_item_and_end_with_the_queue() {
        // Far past the test's waits: an item reaches a receiver only if it
        // wakes one.
        let (tx, rx) = queue_with_backstop(16, Duration::from_secs(3600));
        let rx = Arc::new(rx);
        let (receivers, done_rx) = receivers(&rx, 2);
        for round in 0..3u64 {
            until_asleep(&rx, 2);
            tx.try_send(round).expect("room");
            let got = done_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("no sleeping receiver was woken for the item");
            assert_eq!(got, round);
        }
        drop(tx);
        for r in receivers {
            r.join().expect("a receiver ends when the last sender goes");
        }
    }

    #[test]
    fn items_queued_quietly_wait_for_one_wake_and_the_woken_receiver_takes_them_all() {
        let (tx, rx) = queue_with_backstop(16, Duration::from_secs(3600));
        let rx = Arc::new(rx);
        let (receivers, done_rx) = receivers(&rx, 2);
        until_asleep(&rx, 2);
        tx.wake(0); // nothing queued: a no-op
        for item in 0..5u64 {
            tx.try_queue(item).expect("room");
        }
        assert_eq!(tx.len(), 5);
        // One of the two is woken; it takes the whole run.
        tx.wake(1);
        let mut got: Vec<u64> = (0..5)
            .map(|_| {
                done_rx
                    .recv_timeout(Duration::from_secs(10))
                    .expect("the woken receiver left items queued")
            })
            .collect();
        got.sort_unstable();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        match tx.try_queue(9) {
            Ok(()) => {}
            Err(e) => panic!("{e:?}"),
        }
        tx.wake(usize::MAX);
        assert_eq!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(9));
        drop(tx);
        for r in receivers {
            r.join().expect("a receiver ends when the last sender goes");
        }
    }

    #[test]
    fn a_receiver_about_to_block_hands_the_queue_to_a_sleeping_one() {
        let (tx, rx) = queue_with_backstop(16, Duration::from_secs(3600));
        let rx = Arc::new(rx);
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        // What the first item's receiver blocks on until the test ends.
        let (release, blocked) = oneshot::<()>();
        let blocked = Arc::new(Mutex::new(Some(blocked)));
        let receivers: Vec<_> = (0..2)
            .map(|_| {
                let (rx, done, blocked) = (rx.clone(), done_tx.clone(), blocked.clone());
                std::thread::spawn(move || {
                    let hand_on = rx.clone();
                    on_block(move || hand_on.hand_on());
                    while let Some(item) = rx.next() {
                        done.send(item).expect("the test listens");
                        if item == 0 {
                            let answer = lock(&blocked).take().expect("item 0 once");
                            // Blocks (its promise is put only at the end).
                            answer.wait(Duration::from_secs(3600));
                        }
                    }
                })
            })
            .collect();
        until_asleep(&rx, 2);
        tx.try_queue(0u64).expect("room");
        tx.try_queue(1).expect("room");
        tx.wake(1);
        let first = done_rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(first, Ok(0));
        // Only the blocking receiver's hand-on can wake the other one.
        let second = done_rx.recv_timeout(Duration::from_secs(10));
        assert_eq!(second, Ok(1), "item 1 waited behind a blocked receiver");
        release.put(());
        drop(tx);
        for r in receivers {
            r.join().expect("a receiver ends when the last sender goes");
        }
    }

    #[test]
    fn an_answer_is_the_value_put_or_none_when_the_promise_goes_without_one() {
        let (promise, answer) = oneshot();
        let putter = std::thread::spawn(move || promise.put(5));
        assert_eq!(answer.wait(Duration::from_secs(3600)), Some(5));
        putter.join().unwrap();
        assert_eq!(answer.wait(Duration::ZERO), None, "taken once");

        let (promise, answer) = oneshot::<u8>();
        let dropper = std::thread::spawn(move || drop(promise));
        // An hour's wait ends at once: the promise is gone.
        assert_eq!(answer.wait(Duration::from_secs(3600)), None);
        dropper.join().unwrap();

        let (_promise, answer) = oneshot::<u8>();
        assert_eq!(answer.wait(Duration::from_millis(1)), None, "time ran out");
    }
}
