//! What keeps one hostile client from hurting everyone on the password
//! endpoints: a bound on concurrent password hashing, and token-bucket rate
//! limits on `/re` and `/login` per client address and per username.
//!
//! argon2id costs tens of milliseconds of CPU on purpose. Unbounded, sixty
//! concurrent logins for unknown users held every worker and an unrelated
//! `/pull` waited hundreds of milliseconds. With the gate, at most
//! `--hash-concurrency` workers hash at once and the rest answer the other
//! endpoints; a login over the bound is answered `429` at once.
//!
//! Time is passed in, so the buckets are tested without sleeping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lock shards of a limiter: workers check limits concurrently.
const SHARDS: usize = 16;

/// Keys one shard tracks before refilled ones are dropped: a flood of
/// distinct addresses or names costs bounded memory (a dropped key starts
/// full again).
const SHARD_KEYS: usize = 4096;

/// At most `n` password hashes at once.
pub struct HashGate {
    free: AtomicUsize,
}

/// A slot of the gate, given back when dropped.
pub struct HashPermit<'a>(&'a HashGate);

impl HashGate {
    pub fn new(n: usize) -> HashGate {
        HashGate {
            free: AtomicUsize::new(n.max(1)),
        }
    }

    /// A slot, or `None` if all are taken (the caller answers 429). The
    /// hash that follows is long work: the thread says so
    /// ([`crate::sync::blocking`]).
    pub fn enter(&self) -> Option<HashPermit<'_>> {
        crate::sync::blocking();
        self.free
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .ok()
            .map(|_| HashPermit(self))
    }
}

impl Drop for HashPermit<'_> {
    fn drop(&mut self) {
        self.0.free.fetch_add(1, Ordering::AcqRel);
    }
}

/// Token buckets by key: `per_sec` tokens a second, at most `cap` saved up.
pub struct RateLimit {
    per_sec: f64,
    cap: f64,
    shards: Box<[Mutex<HashMap<String, Bucket>>]>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `n` a minute, a minute's worth at once; 0 means no limit.
    pub fn per_minute(n: u32) -> RateLimit {
        RateLimit::new(f64::from(n) / 60.0, f64::from(n))
    }

    /// `n` a second, `burst` at once; 0 means no limit.
    pub fn per_second(n: u32, burst: u32) -> RateLimit {
        RateLimit::new(f64::from(n), f64::from(burst.max(n)))
    }

    fn new(per_sec: f64, cap: f64) -> RateLimit {
        RateLimit {
            per_sec,
            cap,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    /// Takes a token for `key` at `now`; if there is none, how long until
    /// there is.
    pub fn take(&self, key: &str, now: Instant) -> Result<(), Duration> {
        if self.per_sec == 0.0 {
            return Ok(());
        }
        let (cap, per_sec) = (self.cap, self.per_sec);
        let mut shard = self.shards[shard_of(key)]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if !shard.contains_key(key) {
            if shard.len() >= SHARD_KEYS {
                // Forget the buckets that have filled up again: they hold
                // no information a fresh bucket does not.
                shard.retain(|_, b| b.refilled(now, per_sec, cap) < cap);
                if shard.len() >= SHARD_KEYS {
                    // A flood of fresh keys: start the shard over rather
                    // than grow (forgiving its clients, never blocking them).
                    shard.clear();
                }
            }
            // Only a new key is copied: a known one (every send of a
            // sender but its first) allocates nothing.
            shard.insert(
                key.to_owned(),
                Bucket {
                    tokens: cap,
                    at: now,
                },
            );
        }
        let Some(bucket) = shard.get_mut(key) else {
            unreachable!("inserted above, under the same lock")
        };
        bucket.tokens = bucket.refilled(now, per_sec, cap);
        // Callers' clocks are their loop turns', a little apart: a bucket's
        // time never goes back, or the interval would be refilled twice.
        bucket.at = bucket.at.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_sec))
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, per_sec: f64, cap: f64) -> f64 {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + secs * per_sec).min(cap)
    }
}

fn shard_of(key: &str) -> usize {
    let h = key.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    h % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_holds_n_and_gives_back_on_drop() {
        let gate = HashGate::new(2);
        let a = gate.enter().expect("first");
        let b = gate.enter().expect("second");
        assert!(gate.enter().is_none(), "a third at once");
        drop(a);
        let c = gate.enter().expect("a slot came back");
        drop((b, c));
        assert_eq!(gate.free.load(Ordering::Acquire), 2);
    }

    #[test]
    fn buckets_allow_a_burst_then_a_steady_rate() {
        let limit = RateLimit::per_minute(6); // one every 10 s, six saved up
        let t0 = Instant::now();
        for i in 0..6 {
            assert_eq!(limit.take("alice", t0), Ok(()), "burst {i}");
        }
        let wait = limit.take("alice", t0).expect_err("the seventh");
        assert!((9.9..=10.0).contains(&wait.as_secs_f64()), "{wait:?}");
        // Others are not affected.
        assert_eq!(limit.take("bob", t0), Ok(()));
        // Ten seconds on, one more.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(limit.take("alice", t1), Ok(()));
        assert!(limit.take("alice", t1).is_err());
        // Half a token saved up: the wait is for the other half.
        let wait = limit
            .take("alice", t1 + Duration::from_secs(5))
            .expect_err("half a token");
        assert!((4.9..=5.0).contains(&wait.as_secs_f64()), "{wait:?}");
        // A long rest refills to the cap, not beyond.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..6 {
            assert_eq!(limit.take("alice", t2), Ok(()));
        }
        assert!(limit.take("alice", t2).is_err());
        // 0: no limit.
        let off = RateLimit::per_minute(0);
        for _ in 0..1000 {
            assert_eq!(off.take("x", t0), Ok(()));
        }
    }

    /// Two reactors take tokens at their own loop turn's time, which may
    /// be a little behind one another's: an earlier time neither refills
    /// nor makes the next take refill the same interval again.
    #[test]
    fn a_take_at_an_earlier_time_refills_nothing_twice() {
        let limit = RateLimit::per_minute(1); // one a minute, one saved up
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(limit.take("s", t0), Ok(()));
        assert_eq!(limit.take("s", t1), Ok(()), "refilled by t1");
        // Another reactor's turn began a little before: nothing saved up.
        assert!(limit.take("s", t1 - Duration::from_secs(36)).is_err());
        // 30 s after t1 is half a token, not the 66 s since that turn.
        let wait = limit
            .take("s", t1 + Duration::from_secs(30))
            .expect_err("half a token");
        assert!((29.9..=30.0).contains(&wait.as_secs_f64()), "{wait:?}");
    }

    #[test]
    fn per_second_buckets_burst_to_their_cap() {
        let limit = RateLimit::per_second(10, 50);
        let t0 = Instant::now();
        for i in 0..50 {
            assert_eq!(limit.take("s", t0), Ok(()), "burst {i}");
        }
        let wait = limit.take("s", t0).expect_err("past the burst");
        assert!((0.09..=0.1).contains(&wait.as_secs_f64()), "{wait:?}");
        assert_eq!(limit.take("s", t0 + Duration::from_millis(100)), Ok(()));
    }

    #[test]
    fn keys_spread_over_every_shard() {
        let used: std::collections::HashSet<usize> =
            (0..256).map(|i| shard_of(&format!("10.0.0.{i}"))).collect();
        assert_eq!(used.len(), SHARDS);
    }

    /// A full shard forgets the buckets that have filled up again, not
    /// a client that is being limited.
    #[test]
    fn a_full_shard_keeps_the_limited_clients() {
        let limit = RateLimit::per_minute(6);
        let t0 = Instant::now();
        let hot = "hot";
        let shard = shard_of(hot);
        let mut same_shard = (0..)
            .map(|i| format!("k{i}"))
            .filter(|k| shard_of(k) == shard);
        for _ in 0..6 {
            assert_eq!(limit.take(hot, t0), Ok(()));
        }
        for key in same_shard.by_ref().take(SHARD_KEYS - 1) {
            assert_eq!(limit.take(&key, t0), Ok(()));
        }
        // A minute on the others have refilled; `hot` took a token since.
        let t1 = t0 + Duration::from_secs(60);
        for _ in 0..6 {
            assert_eq!(limit.take(hot, t1), Ok(()));
        }
        assert_eq!(limit.take(&same_shard.next().unwrap(), t1), Ok(()));
        assert!(limit.take(hot, t1).is_err(), "still limited");
        assert!(limit.shards[shard].lock().unwrap().len() <= 2);
    }

    #[test]
    fn many_keys_cost_bounded_memory() {
        let limit = RateLimit::per_minute(60);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(120);
        for i in 0..SHARD_KEYS * SHARDS * 3 {
            let now = if i < SHARD_KEYS * SHARDS { t0 } else { later };
            let _ = limit.take(&format!("k{i}"), now);
        }
        let kept: usize = limit.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(kept <= SHARD_KEYS * SHARDS, "{kept} keys kept");
    }
}
