//! A short-lived, per-process cache of login tokens in front of Redis, so a
//! token check costs no Redis round trip on most calls.
//!
//! Logout deletes the token in Redis and announces the selector on
//! [`super::keys::UNTOKEN_CHANNEL`]; every process's feed drops it from its
//! cache. If an announcement is lost (the feed was reconnecting), the feed
//! clears the whole cache on reconnect, and the cache's lifetime
//! (`--token-cache-secs`) bounds what remains: a logged-out token works
//! nowhere for longer than that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::TokenInfo;

/// Lock shards: token checks run on every worker at once.
const SHARDS: usize = 16;
/// Entries per shard before the shard is emptied: a bound on memory (a
/// burst of distinct tokens refills it from Redis; nothing is lost).
const SHARD_LIMIT: usize = 16 * 1024;

/// One lock's share of the cache: selector -> (token, when it was read).
type Shard = Mutex<HashMap<String, (TokenInfo, Instant)>>;

pub struct TokenCache {
    /// Counts forgets (and clears): a lookup that began before one must not
    /// cache what it read, which may be the very token just logged out.
    forgets: AtomicU64,
    shards: Box<[Shard]>,
    /// How long a cached token is trusted without asking Redis again.
    ttl: Duration,
}

impl TokenCache {
    pub fn new(ttl: Duration) -> TokenCache {
        TokenCache {
            forgets: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            ttl,
        }
    }

    pub fn get(&self, selector: &str) -> Option<TokenInfo> {
        let shard = lock(self.shard(selector));
        shard
            .get(selector)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(info, _)| info.clone())
    }

    /// Where the count of forgets stands: read it before looking a token up
    /// in Redis, and hand it to [`TokenCache::put`].
    pub fn epoch(&self) -> u64 {
        self.forgets.load(Ordering::Acquire)
    }

    /// Caches what a lookup read, unless a token was forgotten since the
    /// lookup began (`epoch`): a logout's announcement that overtook the
    /// lookup's answer must not be undone for the cache's lifetime.
    pub fn put(&self, selector: &str, info: &TokenInfo, epoch: u64) {
        let mut shard = lock(self.shard(selector));
        if self.forgets.load(Ordering::Acquire) != epoch {
            return;
        }
        if shard.len() >= SHARD_LIMIT {
            shard.clear();
        }
        shard.insert(selector.to_owned(), (info.clone(), Instant::now()));
    }

    pub fn forget(&self, selector: &str) {
        let mut shard = lock(self.shard(selector));
        shard.remove(selector);
        // Under the shard's lock, so a put of this selector sees it.
        self.forgets.fetch_add(1, Ordering::AcqRel);
    }

    pub fn clear(&self) {
        self.forgets.fetch_add(1, Ordering::AcqRel);
        for s in self.shards.iter() {
            lock(s).clear();
        }
    }

    fn shard(&self, selector: &str) -> &Shard {
        // Selectors are random hex: their first bytes spread evenly.
        let h = selector.bytes().take(4).fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        &self.shards[h % SHARDS]
    }
}

/// Poisoning means a thread panicked mid-insert; the map is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(uid: u64) -> TokenInfo {
        TokenInfo {
            verifier: "v".into(),
            appid: "a".into(),
            uid,
            expires_at: u64::MAX,
        }
    }

    #[test]
    fn put_get_forget_clear() {
        let c = TokenCache::new(Duration::from_secs(5));
        assert_eq!(c.get("ab12"), None);
        c.put("ab12", &info(1), 0);
        c.put("cd34", &info(2), 0);
        assert_eq!(c.get("ab12").map(|i| i.uid), Some(1));
        c.forget("ab12");
        assert_eq!(c.get("ab12"), None);
        assert_eq!(c.get("cd34").map(|i| i.uid), Some(2));
        c.clear();
        assert_eq!(c.get("cd34"), None);
    }

    #[test]
    fn a_lookup_overtaken_by_a_logout_caches_nothing() {
        let c = TokenCache::new(Duration::from_secs(300));
        let before = c.epoch();
        // The lookup reads the token from Redis; meanwhile a logout is
        // announced and forgotten here; then the lookup would cache it.
        c.forget("ab12");
        c.put("ab12", &info(1), before);
        assert_eq!(c.get("ab12"), None, "the logged-out token came back");
        let before = c.epoch();
        c.clear();
        c.put("ab12", &info(1), before);
        assert_eq!(c.get("ab12"), None, "cached across a clear");
        c.put("ab12", &info(1), c.epoch());
        assert_eq!(c.get("ab12").map(|i| i.uid), Some(1));
    }

    #[test]
    fn an_entry_lives_as_long_as_the_cache_was_told() {
        let long = TokenCache::new(Duration::from_secs(300));
        long.put("ab12", &info(1), 0);
        assert_eq!(long.get("ab12").map(|i| i.uid), Some(1));
        let none = TokenCache::new(Duration::ZERO);
        none.put("ab12", &info(1), 0);
        assert_eq!(none.get("ab12"), None);
    }
}
