//! The router: who is listening for which user, and on which reactor.
//!
//! A registry of live subscriptions (one per open stream or held poll),
//! sharded by user so publishers on different workers rarely meet on a lock.
//! When a worker has committed a message to an inbox it calls
//! [`Router::publish`], which groups the deliveries by reactor and hands each
//! reactor one batch through its [`Mailbox`]. The router never touches a
//! socket or the store; ordering and gap repair are the reactor's (a
//! subscriber tracks the next msgid it owes and reads pages from the store).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

pub use crate::bus::{AppKey, SubKey};
use crate::bus::{CoreMsg, Target};
use crate::delivery::frame::LiveMsg;
use crate::net::mailbox::Mailbox;
use crate::store::{MsgId, NewMessage, Uid};

/// Lock shards of the registry. A power of two well above the number of
/// worker threads, so two publishers rarely contend for one shard.
const SHARDS: usize = 64;

/// One lock's share of the registry: each user's subscriptions.
type Shard = Mutex<Users>;

/// One lock's share of when users' last held polls were answered.
type Polled = Mutex<HashMap<(AppKey, Uid), Instant>>;

/// A user, as a map key of 12 bytes instead of the tuple's 16 (packed to
/// 4-byte alignment, so a map slot holds no padding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(C, packed(4))]
struct UserKey {
    app: AppKey,
    uid: Uid,
}

impl UserKey {
    fn new(app: AppKey, uid: Uid) -> UserKey {
        UserKey { app, uid }
    }

    fn pair(self) -> (AppKey, Uid) {
        (self.app, self.uid)
    }
}

/// One subscription, and the token it was opened with (its selector as a
/// number), so that a logout ends exactly the subscriptions of that token.
/// 20 bytes: with its 12-byte key, a map slot of 32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C, packed(4))]
struct Entry {
    sub: SubKey,
    token: u64,
}

/// One lock's users and their subscriptions. Nearly every user online
/// holds one stream or poll: those are in `one`, a map slot of 32 bytes
/// and no heap allocation of their own (no small long-lived allocation
/// lands between a worker's short-lived ones to keep their pages
/// resident). A user with two or more is in `many` instead, never in both.
#[derive(Default)]
struct Users {
    one: HashMap<UserKey, Entry>,
    many: HashMap<UserKey, Vec<Entry>>,
}

impl Users {
    fn get(&self, user: UserKey) -> &[Entry] {
        match self.one.get(&user) {
            Some(e) => std::slice::from_ref(e),
            None => self.many.get(&user).map_or(&[], Vec::as_slice),
        }
    }

    fn contains(&self, user: UserKey) -> bool {
        self.one.contains_key(&user) || self.many.contains_key(&user)
    }

    fn push(&mut self, user: UserKey, e: Entry) {
        if let Some(first) = self.one.remove(&user) {
            self.many.insert(user, vec![first, e]);
        } else if let Some(v) = self.many.get_mut(&user) {
            v.push(e);
        } else {
            self.one.insert(user, e);
        }
    }

    /// Drops `user`'s entries that `drop` picks, adding their
    /// subscriptions to `gone`.
    fn remove(&mut self, user: UserKey, drop: impl Fn(&Entry) -> bool, gone: &mut Vec<SubKey>) {
        if let Some(e) = self.one.get(&user) {
            if drop(e) {
                gone.push(e.sub);
                self.one.remove(&user);
            }
            return;
        }
        let Some(v) = self.many.get_mut(&user) else {
            return;
        };
        v.retain(|e| {
            let d = drop(e);
            if d {
                gone.push(e.sub);
            }
            !d
        });
        match v[..] {
            [] => {
                self.many.remove(&user);
            }
            [only] => {
                self.many.remove(&user);
                self.one.insert(user, only);
            }
            _ => {}
        }
    }

    fn users(&self) -> impl Iterator<Item = (AppKey, Uid)> + '_ {
        self.one.keys().chain(self.many.keys()).map(|u| u.pair())
    }
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
    /// When each user's last held poll here was answered: a long-polling
    /// client is between polls, not gone, for [`Router::poll_grace`].
    polled: Box<[Polled]>,
    poll_grace: Duration,
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
            polled: (0..SHARDS).map(|_| Mutex::default()).collect(),
            poll_grace: Duration::from_secs(30),
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

    /// Registers a subscription of `uid` opened with the token whose
    /// selector is `token`.
    pub fn subscribe(
        &self,
        app: AppKey,
        uid: Uid,
        sub: SubKey,
        token: u64,
    ) -> Result<(), SubscribeError> {
        let mut shard = lock(self.shard(app, uid));
        let user = UserKey::new(app, uid);
        if shard.get(user).len() >= self.per_user {
            return Err(SubscribeError::TooManyForUser);
        }
        if self.total.fetch_add(1, Ordering::Relaxed) >= self.max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(SubscribeError::TooMany);
        }
        shard.push(user, Entry { sub, token });
        Ok(())
    }

    pub fn unsubscribe(&self, app: AppKey, uid: Uid, sub: SubKey) {
        let mut gone = Vec::new();
        self.drop_where(app, uid, |e| e.sub == sub, &mut gone);
    }

    /// Drops `uid`'s subscriptions that `drop` picks, adding them to `gone`.
    fn drop_where(
        &self,
        app: AppKey,
        uid: Uid,
        drop: impl Fn(&Entry) -> bool,
        gone: &mut Vec<SubKey>,
    ) {
        let before = gone.len();
        lock(self.shard(app, uid)).remove(UserKey::new(app, uid), drop, gone);
        self.total.fetch_sub(gone.len() - before, Ordering::Relaxed);
    }

    /// Ends every subscription of `uid` opened with the token whose selector
    /// is `token` (it was logged out): each is forgotten here and its
    /// reactor told to end it with a `401` frame.
    pub fn revoke(&self, app: AppKey, uid: Uid, token: u64) {
        let mut revoked = Vec::new();
        self.drop_where(app, uid, |e| e.token == token, &mut revoked);
        for s in revoked {
            self.mailboxes[usize::from(s.core)].send(CoreMsg::Revoke { conn: s.conn });
        }
    }

    /// How long a user whose held poll was answered still counts as
    /// online (the heartbeat interval).
    pub fn with_poll_grace(mut self, grace: Duration) -> Router {
        self.poll_grace = grace;
        self
    }

    /// A held poll of `uid` was answered (or ended) at `now`.
    pub fn poll_answered(&self, app: AppKey, uid: Uid, now: Instant) {
        let mut polled = lock(&self.polled[self.shard_index(app, uid)]);
        // Bounded by the users who polled within the grace: forget the
        // rest whenever the map has doubled since it was last swept.
        if polled.len() >= 1024 && polled.len().is_power_of_two() {
            let grace = self.poll_grace;
            polled.retain(|_, at| now.saturating_duration_since(*at) < grace);
        }
        polled.insert((app, uid), now);
    }

    /// Whether `uid` is online on this process at `now`: it holds a
    /// stream or a poll, or its last poll was answered within the grace.
    pub fn is_online(&self, app: AppKey, uid: Uid, now: Instant) -> bool {
        if lock(self.shard(app, uid)).contains(UserKey::new(app, uid)) {
            return true;
        }
        lock(&self.polled[self.shard_index(app, uid)])
            .get(&(app, uid))
            .is_some_and(|at| now.saturating_duration_since(*at) < self.poll_grace)
    }

    /// Every user online on this process at `now`, as [`Router::is_online`]
    /// says (for the presence other processes read through Redis), handed
    /// to `f` a shard at a time, each user once, in order within a shard:
    /// what is held at once is one shard's users, not everyone's. `f` runs
    /// with no lock held.
    pub fn for_each_online(&self, now: Instant, mut f: impl FnMut(&[(AppKey, Uid)])) {
        let mut users = Vec::new();
        for (shard, polled) in self.shards.iter().zip(self.polled.iter()) {
            users.clear();
            users.extend(lock(shard).users());
            {
                let mut polled = lock(polled);
                polled.retain(|_, at| now.saturating_duration_since(*at) < self.poll_grace);
                users.extend(polled.keys().copied());
            }
            // A user's streams and polls are in shards of the same index:
            // one shard's list holds all of its duplicates.
            users.sort_unstable();
            users.dedup();
            f(&users);
        }
    }

    /// Every user online on this process at `now`, sorted.
    #[cfg(test)]
    fn online_users(&self, now: Instant) -> Vec<(AppKey, Uid)> {
        let mut out = Vec::new();
        self.for_each_online(now, |users| out.extend_from_slice(users));
        out.sort_unstable();
        out
    }

    /// Subscriptions held now, over all users.
    pub fn subscriptions(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Hands a committed message to every subscriber of its receivers:
    /// `receivers` pairs each receiving uid with the msgid it got. Each
    /// reactor gets one batch; nothing is sent where nobody listens.
    pub fn publish(&self, app: AppKey, receivers: &[(Uid, MsgId)], msg: &NewMessage) {
        // Made at the first subscriber found: a message nobody streams
        // (most sends of a request/response client) allocates nothing here.
        let mut per_core: Vec<Vec<Target>> = Vec::new();
        for &(uid, msgid) in receivers {
            let shard = lock(self.shard(app, uid));
            for e in shard.get(UserKey::new(app, uid)) {
                if per_core.is_empty() {
                    per_core.resize_with(self.mailboxes.len(), Vec::new);
                }
                let sub = e.sub;
                per_core[usize::from(sub.core)].push(Target {
                    conn: sub.conn,
                    msgid,
                });
            }
        }
        if per_core.is_empty() {
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

    /// Tells every reactor that deliveries may have been lost (e.g. the
    /// Redis feed reconnected): each catches its subscribers up from the
    /// store.
    pub fn catch_up_everyone(&self) {
        for m in self.mailboxes.iter() {
            m.flag_lagged();
        }
    }

    fn shard(&self, app: AppKey, uid: Uid) -> &Shard {
        &self.shards[self.shard_index(app, uid)]
    }

    fn shard_index(&self, app: AppKey, uid: Uid) -> usize {
        // Fibonacci hashing spreads consecutive uids over the shards.
        let h = (uid ^ (u64::from(app) << 48)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (h >> 58) as usize % SHARDS
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::ConnRef;
    use crate::net::mailbox::INBOX_CAPACITY;
    use crossbeam_channel::Receiver;

    fn router(
        cores: usize,
        per_user: usize,
        max_total: usize,
    ) -> (Router, Vec<Receiver<CoreMsg>>, Vec<mio::Poll>) {
        let mut polls = Vec::new();
        let mut boxes = Vec::new();
        let mut inboxes = Vec::new();
        for _ in 0..cores {
            let poll = mio::Poll::new().unwrap();
            let waker = mio::Waker::new(poll.registry(), mio::Token(1)).unwrap();
            let (mailbox, inbox) = Mailbox::new(waker);
            polls.push(poll);
            boxes.push(mailbox);
            inboxes.push(inbox);
        }
        (Router::new(boxes, per_user, max_total), inboxes, polls)
    }

    fn sub(core: u16, slot: u32) -> SubKey {
        SubKey {
            core,
            conn: ConnRef { slot, gen: 1 },
        }
    }

    fn msg() -> NewMessage {
        NewMessage {
            fromid: 1,
            toid: 2,
            datatype: 1,
            content: Arc::from("hi"),
        }
    }

    /// (slot, msgid) of every target in one reactor's pending deliveries.
    fn delivered(inbox: &Receiver<CoreMsg>) -> Vec<(u32, MsgId)> {
        let mut out = Vec::new();
        for m in inbox.try_iter() {
            if let CoreMsg::Deliver { to, .. } = m {
                out.extend(to.iter().map(|t| (t.conn.slot, t.msgid)));
            }
        }
        out
    }

    #[test]
    fn publish_reaches_every_subscription_batched_per_core() {
        let (r, inboxes, _polls) = router(2, 16, 100);
        let app = r.app_key("test");
        r.subscribe(app, 2, sub(0, 10), 7).unwrap();
        r.subscribe(app, 2, sub(1, 11), 7).unwrap();
        r.subscribe(app, 3, sub(1, 12), 7).unwrap();
        r.publish(app, &[(2, 7), (3, 4), (9, 1)], &msg());
        assert_eq!(delivered(&inboxes[0]), vec![(10, 7)]);
        assert_eq!(delivered(&inboxes[1]), vec![(11, 7), (12, 4)]);
        // Another appid with the same uids hears nothing.
        let other = r.app_key("other");
        assert_ne!(other, app);
        r.publish(other, &[(2, 1)], &msg());
        assert!(delivered(&inboxes[0]).is_empty() && delivered(&inboxes[1]).is_empty());
        assert_eq!(&*r.app_name(app), "test");
    }

    #[test]
    fn unsubscribe_stops_delivery_and_frees_the_slot() {
        let (r, inboxes, _polls) = router(1, 1, 100);
        let app = r.app_key("test");
        r.subscribe(app, 2, sub(0, 1), 7).unwrap();
        assert_eq!(
            r.subscribe(app, 2, sub(0, 2), 7),
            Err(SubscribeError::TooManyForUser)
        );
        r.unsubscribe(app, 2, sub(0, 1));
        r.unsubscribe(app, 2, sub(0, 1)); // twice is harmless
        assert_eq!(r.subscriptions(), 0);
        r.publish(app, &[(2, 1)], &msg());
        assert!(delivered(&inboxes[0]).is_empty());
        r.subscribe(app, 2, sub(0, 2), 7).unwrap();
    }

    #[test]
    fn the_global_limit_holds() {
        let (r, _inboxes, _polls) = router(1, 16, 2);
        let app = r.app_key("test");
        r.subscribe(app, 1, sub(0, 1), 7).unwrap();
        r.subscribe(app, 2, sub(0, 2), 7).unwrap();
        assert_eq!(
            r.subscribe(app, 3, sub(0, 3), 7),
            Err(SubscribeError::TooMany)
        );
        assert_eq!(r.subscriptions(), 2);
    }

    #[test]
    fn a_full_inbox_flags_the_reactor_as_lagged() {
        let (r, inboxes, _polls) = router(1, 16, 100);
        let app = r.app_key("test");
        r.subscribe(app, 2, sub(0, 1), 7).unwrap();
        let mailbox = r.mailbox(0);
        for i in 0..INBOX_CAPACITY as u64 {
            r.publish(app, &[(2, i + 1)], &msg());
        }
        assert!(!mailbox.take_lagged());
        r.publish(app, &[(2, 0)], &msg());
        assert!(mailbox.take_lagged());
        assert!(!mailbox.take_lagged(), "taking the flag clears it");
        assert_eq!(inboxes[0].len(), INBOX_CAPACITY);
    }

    #[test]
    fn online_is_subscribed_or_polled_within_the_grace() {
        let (r, _inboxes, _polls) = router(1, 4, 100);
        let r = r.with_poll_grace(Duration::from_secs(2));
        let t0 = Instant::now();
        r.subscribe(1, 7, sub(0, 1), 0).unwrap();
        r.poll_answered(1, 8, t0);
        r.poll_answered(2, 7, t0 - Duration::from_secs(3)); // long ago
        assert!(r.is_online(1, 7, t0));
        assert!(r.is_online(1, 8, t0 + Duration::from_millis(1999)));
        assert!(!r.is_online(1, 8, t0 + Duration::from_secs(2)));
        assert!(!r.is_online(2, 7, t0), "another app's uid 7");
        assert_eq!(r.online_users(t0), [(1, 7), (1, 8)]);
        // Past the grace the poll is forgotten; a subscription ends too.
        r.unsubscribe(1, 7, sub(0, 1));
        assert_eq!(r.online_users(t0 + Duration::from_secs(5)), []);
        assert!(!r.is_online(1, 7, t0));
    }

    #[test]
    fn revoke_ends_only_that_tokens_subscriptions() {
        let (r, inboxes, _polls) = router(2, 8, 100);
        assert_eq!(r.cores(), 2);
        r.subscribe(1, 7, sub(0, 1), 0xaa).unwrap();
        r.subscribe(1, 7, sub(1, 2), 0xbb).unwrap();
        r.subscribe(1, 7, sub(1, 3), 0xaa).unwrap();
        r.subscribe(1, 8, sub(0, 4), 0xaa).unwrap(); // another user, same tag
        r.revoke(1, 7, 0xaa);
        assert_eq!(r.subscriptions(), 2, "two of the four ended");
        let revoked = |inbox: &Receiver<CoreMsg>| -> Vec<u32> {
            inbox
                .try_iter()
                .filter_map(|m| match m {
                    CoreMsg::Revoke { conn } => Some(conn.slot),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(revoked(&inboxes[0]), [1]);
        assert_eq!(revoked(&inboxes[1]), [3]);
        // What is left still gets messages; the revoked do not.
        r.publish(1, &[(7, 5), (8, 9)], &msg());
        assert_eq!(delivered(&inboxes[1]), [(2, 5)]);
        assert_eq!(delivered(&inboxes[0]), [(4, 9)]);
        // Revoking what is not there changes nothing.
        r.revoke(1, 7, 0xaa);
        r.revoke(3, 1, 0xaa);
        assert_eq!(r.subscriptions(), 2);
    }

    #[test]
    fn a_user_with_one_subscription_costs_one_map_slot() {
        // What the map holds per user online: no heap of its own for the
        // one stream nearly every user has.
        assert_eq!(std::mem::size_of::<Entry>(), 20);
        assert_eq!(std::mem::size_of::<(UserKey, Entry)>(), 32);
        let (r, inboxes, _polls) = router(1, 4, 100);
        r.subscribe(1, 7, sub(0, 1), 0xaa).unwrap();
        // (in `one`, subscriptions held), or None for a user not there.
        let slot = |r: &Router| {
            let shard = lock(r.shard(1, 7));
            let user = UserKey::new(1, 7);
            let held = shard.get(user).len();
            (held > 0).then(|| (shard.one.contains_key(&user), held))
        };
        assert_eq!(slot(&r), Some((true, 1)));
        // A second device spills to a Vec, and back inline when it goes.
        r.subscribe(1, 7, sub(0, 2), 0xbb).unwrap();
        r.subscribe(1, 7, sub(0, 3), 0xbb).unwrap();
        assert_eq!(slot(&r), Some((false, 3)));
        r.revoke(1, 7, 0xbb);
        assert_eq!(slot(&r), Some((true, 1)));
        r.publish(1, &[(7, 4)], &msg());
        assert_eq!(delivered(&inboxes[0]), [(1, 4)]);
        r.unsubscribe(1, 7, sub(0, 2)); // not there: nothing changes
        assert_eq!((slot(&r), r.subscriptions()), (Some((true, 1)), 1));
        r.unsubscribe(1, 7, sub(0, 1));
        assert_eq!((slot(&r), r.subscriptions()), (None, 0));
        // Two devices on one token, logged out together: the user is gone
        // from both maps, not left online with no subscription.
        r.subscribe(1, 7, sub(0, 5), 0xcc).unwrap();
        r.subscribe(1, 7, sub(0, 6), 0xcc).unwrap();
        assert_eq!(slot(&r), Some((false, 2)));
        r.revoke(1, 7, 0xcc);
        assert_eq!((slot(&r), r.subscriptions()), (None, 0));
        assert!(!r.is_online(1, 7, Instant::now()));
        assert!(r.online_users(Instant::now()).is_empty());
    }

    #[test]
    fn catching_up_flags_every_reactor() {
        let (r, _inboxes, _polls) = router(3, 8, 100);
        r.catch_up_everyone();
        for core in 0..3 {
            assert!(r.mailbox(core).take_lagged(), "core {core}");
        }
    }

    #[test]
    fn sweeping_old_polls_keeps_recent_ones() {
        let (r, _inboxes, _polls) = router(1, 4, 100);
        let r = r.with_poll_grace(Duration::from_secs(10));
        let t0 = Instant::now();
        // Enough users in one shard to make it sweep as it grows: some
        // stale (polled 20 s before), the rest recent.
        let mut uids = (1..).filter(|&u| r.shard_index(1, u) == r.shard_index(1, 1));
        let stale: Vec<Uid> = uids.by_ref().take(600).collect();
        let recent: Vec<Uid> = uids.by_ref().take(600).collect();
        for &u in &stale {
            r.poll_answered(1, u, t0);
        }
        let later = t0 + Duration::from_secs(20);
        for &u in &recent {
            r.poll_answered(1, u, later);
        }
        let shard = lock(&r.polled[r.shard_index(1, 1)]).len();
        assert!(shard < 1200, "the stale ones were swept: {shard} left");
        assert!(recent.iter().all(|&u| r.is_online(1, u, later)));
        assert!(stale.iter().all(|&u| !r.is_online(1, u, later)));
        // At the edge of the grace: still online one instant before.
        let edge = later + Duration::from_secs(10);
        assert!(r.is_online(1, recent[0], edge - Duration::from_millis(1)));
        assert!(!r.is_online(1, recent[0], edge));
        assert_eq!(r.online_users(edge - Duration::from_millis(1)).len(), 600);
        assert_eq!(r.online_users(edge), []);
    }
}
