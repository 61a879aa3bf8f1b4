//! The router: who is listening for which user, and on which reactor.
//!
//! A registry of live subscriptions (one per open stream or held poll),
//! sharded by user so publishers on different workers rarely meet on a lock.
//! When a worker has committed a message to an inbox it calls
//! [`Router::publish`], which groups the deliveries by reactor and hands each
//! reactor one batch through its [`Mailbox`]. The router never touches a
//! socket or the store; ordering and gap repair are the reactor's (a
//! subscriber tracks the next msgid it owes and backfills from the store).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::api::frame::LiveMsg;
use crate::net::mailbox::{ConnRef, CoreMsg, Mailbox, Target};
use crate::store::{MsgId, NewMessage, Uid};

/// A small number naming an appid inside this process (interned once).
pub type AppKey = u32;

/// Lock shards of the registry. A power of two well above the number of
/// worker threads, so two publishers rarely contend for one shard.
const SHARDS: usize = 64;

/// One lock's share of the registry: each user's subscriptions.
type Shard = Mutex<HashMap<(AppKey, Uid), Vec<SubKey>>>;

/// One subscription: a connection on a reactor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubKey {
    pub core: u16,
    pub conn: ConnRef,
}

/// Why a subscription was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum SubscribeError {
    /// The user already has the most subscriptions allowed.
    TooManyForUser,
    /// The server holds the most subscriptions allowed.
    TooMany,
}

pub struct Router {
    shards: Box<[Shard]>,
    apps: RwLock<Apps>,
    mailboxes: Box<[Arc<Mailbox>]>,
    per_user: usize,
    max_total: usize,
    total: AtomicUsize,
}

#[derive(Default)]
struct Apps {
    keys: HashMap<Arc<str>, AppKey>,
    names: Vec<Arc<str>>,
}

impl Router {
    pub fn new(mailboxes: Vec<Arc<Mailbox>>, per_user: usize, max_total: usize) -> Router {
        Router {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            apps: RwLock::default(),
            mailboxes: mailboxes.into_boxed_slice(),
            per_user,
            max_total,
            total: AtomicUsize::new(0),
        }
    }

    /// The reactors' mailboxes, by core index.
    pub fn mailbox(&self, core: u16) -> &Mailbox {
        &self.mailboxes[usize::from(core)]
    }

    pub fn cores(&self) -> usize {
        self.mailboxes.len()
    }

    /// The key of an appid, interning it on first sight.
    pub fn app_key(&self, appid: &str) -> AppKey {
        if let Some(&k) = read(&self.apps).keys.get(appid) {
            return k;
        }
        let mut apps = self.apps.write().unwrap_or_else(|e| e.into_inner());
        if let Some(&k) = apps.keys.get(appid) {
            return k;
        }
        let k = apps.names.len() as AppKey;
        let name: Arc<str> = Arc::from(appid);
        apps.names.push(name.clone());
        apps.keys.insert(name, k);
        k
    }

    /// The appid behind a key.
    pub fn app_name(&self, key: AppKey) -> Arc<str> {
        read(&self.apps).names[key as usize].clone()
    }

    pub fn subscribe(&self, app: AppKey, uid: Uid, sub: SubKey) -> Result<(), SubscribeError> {
        let mut shard = lock(self.shard(app, uid));
        let subs = shard.entry((app, uid)).or_default();
        if subs.len() >= self.per_user {
            return Err(SubscribeError::TooManyForUser);
        }
        if self.total.fetch_add(1, Ordering::Relaxed) >= self.max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(SubscribeError::TooMany);
        }
        subs.push(sub);
        Ok(())
    }

    pub fn unsubscribe(&self, app: AppKey, uid: Uid, sub: SubKey) {
        let mut shard = lock(self.shard(app, uid));
        if let Some(subs) = shard.get_mut(&(app, uid)) {
            if let Some(i) = subs.iter().position(|s| *s == sub) {
                subs.swap_remove(i);
                self.total.fetch_sub(1, Ordering::Relaxed);
            }
            if subs.is_empty() {
                shard.remove(&(app, uid));
            }
        }
    }

    /// Subscriptions held now, over all users.
    pub fn subscriptions(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Hands a committed message to every subscriber of its receivers:
    /// `receivers` pairs each receiving uid with the msgid it got. Each
    /// reactor gets one batch; nothing is sent where nobody listens.
    pub fn publish(&self, app: AppKey, receivers: &[(Uid, MsgId)], msg: &NewMessage) {
        let mut per_core: Vec<Vec<Target>> = vec![Vec::new(); self.mailboxes.len()];
        let mut any = false;
        for &(uid, msgid) in receivers {
            let shard = lock(self.shard(app, uid));
            if let Some(subs) = shard.get(&(app, uid)) {
                for s in subs {
                    per_core[usize::from(s.core)].push(Target {
                        conn: s.conn,
                        msgid,
                    });
                    any = true;
                }
            }
        }
        if !any {
            return;
        }
        let live = Arc::new(LiveMsg::new(msg));
        for (core, to) in per_core.into_iter().enumerate() {
            if !to.is_empty() {
                self.mailboxes[core].deliver(CoreMsg::Deliver {
                    msg: live.clone(),
                    to,
                });
            }
        }
    }

    fn shard(&self, app: AppKey, uid: Uid) -> &Shard {
        // Fibonacci hashing spreads consecutive uids over the shards.
        let h = (uid ^ (u64::from(app) << 48)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        &self.shards[(h >> 58) as usize % SHARDS]
    }
}

/// Poisoning only means another thread panicked mid-update of a map whose
/// every update is a single insert or remove: the data is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}
