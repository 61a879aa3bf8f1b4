//! A per-process cache of group member lists in front of Redis, so a `/gp`
//! to a large group does not read its member list (one comma-separated
//! string of every uid) from Redis each time.
//!
//! A group's members never change once it exists (no endpoint changes
//! them), so an entry is never stale while Redis keeps its data. Only a
//! Redis that lost data could give a gid to another group: the feed
//! clears the cache whenever it reconnects, which such a loss implies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::store::{Gid, Uid};

/// Member uids cached, over all groups, before the cache is emptied: a
/// bound on memory (8 MiB of uids); a cleared cache refills from Redis.
const MEMBERS_LIMIT: usize = 1 << 20;

#[derive(Default)]
pub struct GroupCache {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// (appid, gid) -> members.
    groups: HashMap<(String, Gid), Arc<[Uid]>>,
    /// Uids held over all entries.
    members: usize,
}

impl GroupCache {
    pub fn get(&self, appid: &str, gid: Gid) -> Option<Arc<[Uid]>> {
        // The key is owned; a borrowed lookup would need a custom key type,
        // and a `/gp` already allocates far more.
        lock(&self.inner)
            .groups
            .get(&(appid.to_owned(), gid))
            .cloned()
    }

    pub fn put(&self, appid: &str, gid: Gid, members: Arc<[Uid]>) {
        let mut inner = lock(&self.inner);
        if inner.members + members.len() > MEMBERS_LIMIT {
            inner.groups.clear();
            inner.members = 0;
        }
        inner.members += members.len();
        if let Some(old) = inner.groups.insert((appid.to_owned(), gid), members) {
            inner.members -= old.len();
        }
    }

    /// Forgets everything (the feed reconnected: Redis may have lost data).
    pub fn clear(&self) {
        let mut inner = lock(&self.inner);
        inner.groups.clear();
        inner.members = 0;
    }
}

/// Poisoning means a thread panicked while holding the lock; the map is
/// still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_per_app_and_memory_is_bounded() {
        let c = GroupCache::default();
        c.put("a", 1, Arc::from([1, 2, 3].as_slice()));
        c.put("b", 1, Arc::from([4].as_slice()));
        assert_eq!(c.get("a", 1).as_deref(), Some([1, 2, 3].as_slice()));
        assert_eq!(c.get("b", 1).as_deref(), Some([4].as_slice()));
        assert_eq!(c.get("a", 2), None);
        // Replacing an entry counts its members once.
        c.put("a", 1, Arc::from([1, 2, 3].as_slice()));
        assert_eq!(lock(&c.inner).members, 4);
        // Past the limit the cache starts over with the new entry.
        let big: Arc<[Uid]> = (0..MEMBERS_LIMIT as Uid).collect();
        c.put("a", 9, big);
        assert_eq!(c.get("a", 1), None);
        assert_eq!(c.get("a", 9).map(|m| m.len()), Some(MEMBERS_LIMIT));
        c.clear();
        assert_eq!((c.get("a", 9), lock(&c.inner).members), (None, 0));
    }
}
