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
    shards: Box<[Shard]>,
    /// How long a cached token is trusted without asking Redis again.
    ttl: Duration,
}

impl TokenCache {
    pub fn new(ttl: Duration) -> TokenCache {
        TokenCache {
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

    pub fn put(&self, selector: &str, info: &TokenInfo) {
        let mut shard = lock(self.shard(selector));
        if shard.len() >= SHARD_LIMIT {
            shard.clear();
        }
        shard.insert(selector.to_owned(), (info.clone(), Instant::now()));
    }

    pub fn forget(&self, selector: &str) {
        lock(self.shard(selector)).remove(selector);
    }

    pub fn clear(&self) {
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
        c.put("ab12", &info(1));
        c.put("cd34", &info(2));
        assert_eq!(c.get("ab12").map(|i| i.uid), Some(1));
        c.forget("ab12");
        assert_eq!(c.get("ab12"), None);
        assert_eq!(c.get("cd34").map(|i| i.uid), Some(2));
        c.clear();
        assert_eq!(c.get("cd34"), None);
    }

    #[test]
    fn an_entry_lives_as_long_as_the_cache_was_told() {
        let long = TokenCache::new(Duration::from_secs(300));
        long.put("ab12", &info(1));
        assert_eq!(long.get("ab12").map(|i| i.uid), Some(1));
        let none = TokenCache::new(Duration::ZERO);
        none.put("ab12", &info(1));
        assert_eq!(none.get("ab12"), None);
    }
}
