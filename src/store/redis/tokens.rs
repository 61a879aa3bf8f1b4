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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::store::{TokenInfo, TokenRef};

/// Lock shards: token checks run on every worker at once.
const SHARDS: usize = 16;
/// Entries per shard before the shard is emptied: a bound on memory (a
/// burst of distinct tokens refills it from Redis; nothing is lost).
const SHARD_LIMIT: usize = 16 * 1024;
/// Bounds on how often expired tokens are swept out.
const MIN_SWEEP: Duration = Duration::from_secs(1);
const MAX_SWEEP: Duration = Duration::from_secs(60);
/// Distinct appids interned before the table starts over.
const APPS_LIMIT: usize = 4096;

/// A cached token, without a heap allocation of its own: every stream
/// that connects leaves one behind for the cache's lifetime, so at a
/// million streams its size is a figure per stream (72 bytes in the map,
/// against some 220 with the strings of a `TokenInfo`).
#[derive(Clone)]
struct Cached {
    /// The verifier, as the bytes its (lowercase) hex digits spell.
    verifier: [u8; VERIFIER_HEX / 2],
    /// Shared by every token of the app.
    appid: Arc<str>,
    uid: u64,
    expires_at: u64,
    read_at: Instant,
}

/// Hex digits of a verifier (src/auth.rs); other lengths are not cached.
const VERIFIER_HEX: usize = 32;

/// One lock's share of the cache: the selector's value -> token.
type Shard = Mutex<HashMap<u64, Cached>>;

pub struct TokenCache {
    /// Counts forgets (and clears): a lookup that began before one must not
    /// cache what it read, which may be the very token just logged out.
    forgets: AtomicU64,
    shards: Box<[Shard]>,
    /// Appids of cached tokens, each held once.
    apps: Mutex<HashMap<Box<str>, Arc<str>>>,
    /// How long a cached token is trusted without asking Redis again.
    ttl: Duration,
}

/// A verifier's bytes, if it is lowercase hex of the length logins hand
/// out (so that [`to_hex`](crate::auth::to_hex) gives it back exactly).
fn verifier_bytes(v: &str) -> Option<[u8; VERIFIER_HEX / 2]> {
    let mut out = [0u8; VERIFIER_HEX / 2];
    if v.len() != VERIFIER_HEX || v.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(v.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A selector (16 hex digits) as the number it spells; `None` for what no
/// login hands out.
fn key(selector: &str) -> Option<u64> {
    (selector.len() <= 16)
        .then(|| u64::from_str_radix(selector, 16).ok())
        .flatten()
}

impl TokenCache {
    pub fn new(ttl: Duration) -> TokenCache {
        TokenCache {
            forgets: AtomicU64::new(0),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            apps: Mutex::default(),
            ttl,
        }
    }

    pub fn get(&self, selector: &str) -> Option<TokenInfo> {
        let mut info = None;
        self.check(selector, &mut |t| {
            info = Some(t.to_info());
            true
        });
        info
    }

    /// What `check` says of the cached token, checked in place (its
    /// verifier spelled out on the stack); `None` if it is not cached, or
    /// no longer trusted.
    pub fn check(
        &self,
        selector: &str,
        check: &mut dyn FnMut(TokenRef<'_>) -> bool,
    ) -> Option<bool> {
        let key = key(selector)?;
        let shard = lock(self.shard(key));
        let c = shard.get(&key).filter(|c| c.read_at.elapsed() < self.ttl)?;
        let mut hex = [0; VERIFIER_HEX];
        Some(check(TokenRef {
            verifier: crate::auth::hex_in(&c.verifier, &mut hex),
            appid: &c.appid,
            uid: c.uid,
            expires_at: c.expires_at,
        }))
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
        let (Some(key), Some(verifier)) = (key(selector), verifier_bytes(&info.verifier)) else {
            return;
        };
        let cached = Cached {
            verifier,
            appid: self.intern(&info.appid),
            uid: info.uid,
            expires_at: info.expires_at,
            read_at: Instant::now(),
        };
        let mut shard = lock(self.shard(key));
        if self.forgets.load(Ordering::Acquire) != epoch {
            return;
        }
        if shard.len() >= SHARD_LIMIT {
            shard.clear();
        }
        shard.insert(key, cached);
    }

    pub fn forget(&self, selector: &str) {
        let Some(key) = key(selector) else { return };
        let mut shard = lock(self.shard(key));
        shard.remove(&key);
        // Under the shard's lock, so a put of this selector sees it.
        self.forgets.fetch_add(1, Ordering::AcqRel);
    }

    /// The one shared copy of `appid`.
    fn intern(&self, appid: &str) -> Arc<str> {
        let mut apps = lock(&self.apps);
        if let Some(a) = apps.get(appid) {
            return Arc::clone(a);
        }
        if apps.len() >= APPS_LIMIT {
            apps.clear();
        }
        let a: Arc<str> = Arc::from(appid);
        apps.insert(appid.into(), Arc::clone(&a));
        a
    }

    /// How often [`TokenCache::sweep`] should run: an entry then outlives
    /// its usefulness by at most this.
    pub fn sweep_every(&self) -> Duration {
        self.ttl.clamp(MIN_SWEEP, MAX_SWEEP)
    }

    /// Drops the entries no longer trusted, and gives a shard that emptied
    /// by three quarters the room back. Without it a token stays until its
    /// shard fills: every stream that connected in the last few minutes
    /// held its token here (a map entry of some 80-150 bytes) long after
    /// `--token-cache-secs` had made it useless.
    pub fn sweep(&self, now: Instant) {
        for s in self.shards.iter() {
            let mut shard = lock(s);
            shard.retain(|_, c| now.saturating_duration_since(c.read_at) < self.ttl);
            let len = shard.len();
            if shard.capacity() > 4 * len {
                shard.shrink_to(2 * len);
            }
        }
    }

    /// Entries cached now, over all shards.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    pub fn clear(&self) {
        self.forgets.fetch_add(1, Ordering::AcqRel);
        for s in self.shards.iter() {
            lock(s).clear();
        }
    }

    fn shard(&self, key: u64) -> &Shard {
        // Selectors are random: any of their bits spread evenly.
        &self.shards[(key % SHARDS as u64) as usize]
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
            verifier: "0123456789abcdef0123456789abcdef".into(),
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

    /// A check in place sees what a copy holds: the verifier spelled as
    /// it was put, the appid, uid and expiry.
    #[test]
    fn a_check_in_place_sees_the_token_as_put() {
        let c = TokenCache::new(Duration::from_secs(5));
        let put = info(7);
        c.put("ab12", &put, 0);
        let mut seen = None;
        let answer = c.check("ab12", &mut |t| {
            seen = Some(t.to_info());
            true
        });
        assert_eq!(answer, Some(true));
        assert_eq!(seen, Some(put));
        assert_eq!(c.check("ab12", &mut |_| false), Some(false));
        assert_eq!(c.check("cd34", &mut |_| true), None, "not cached");
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

    #[test]
    fn a_sweep_drops_what_is_no_longer_trusted_and_gives_the_room_back() {
        let ttl = Duration::from_secs(5);
        let c = TokenCache::new(ttl);
        assert_eq!(c.sweep_every(), ttl);
        for i in 0..2000u64 {
            c.put(&format!("{i:x}"), &info(i), 0);
        }
        let t0 = Instant::now();
        c.sweep(t0);
        assert_eq!(c.len(), 2000, "all still fresh");
        // Time is passed in: "later" is when all of them were read
        // longer ago than the cache trusts.
        let later = t0 + ttl + Duration::from_secs(1);
        let fresh = c
            .shards
            .iter()
            .position(|s| lock(s).contains_key(&0x7b1))
            .unwrap();
        lock(&c.shards[fresh]).get_mut(&0x7b1).unwrap().read_at = later;
        c.sweep(later);
        assert_eq!(c.len(), 1, "only the one read later is left");
        assert_eq!(lock(&c.shards[fresh])[&0x7b1].uid, 0x7b1);
        let room: usize = c.shards.iter().map(|s| lock(s).capacity()).sum();
        assert!(room <= 16 * 4, "the emptied shards kept room for {room}");
        assert_eq!(TokenCache::new(Duration::ZERO).sweep_every(), MIN_SWEEP);
        assert_eq!(
            TokenCache::new(Duration::from_secs(300)).sweep_every(),
            MAX_SWEEP
        );
    }

    #[test]
    fn an_entry_is_small_and_comes_back_whole() {
        // Key and value as the map holds them: no heap of their own.
        assert_eq!(std::mem::size_of::<(u64, Cached)>(), 72);
        let c = TokenCache::new(Duration::from_secs(300));
        let token = TokenInfo {
            verifier: "ffeeddccbbaa99887766554433221100".into(),
            appid: "app:1".into(),
            uid: 9,
            expires_at: 1_700_000_000,
        };
        c.put("00112233aabbccdd", &token, 0);
        assert_eq!(c.get("00112233aabbccdd"), Some(token.clone()));
        // What no login hands out is not cached (and not confused).
        let odd = TokenInfo {
            verifier: "short".into(),
            ..token.clone()
        };
        c.put("0011223344556677", &odd, 0);
        assert_eq!(c.get("0011223344556677"), None);
        let upper = TokenInfo {
            verifier: token.verifier.to_uppercase(),
            ..token.clone()
        };
        c.put("0011223344556677", &upper, 0);
        assert_eq!(c.get("0011223344556677"), None);
        c.put("not hex", &token, 0);
        assert_eq!(c.get("not hex"), None);
        c.put("00112233aabbccdd00", &token, 0);
        assert_eq!(c.get("00112233aabbccdd00"), None);
    }
}
