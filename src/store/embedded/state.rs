//! The in-memory state of the embedded store, and how records apply to it.
//!
//! Every mutation is split in two: a `check_*` method validates it against
//! the current state and computes the ids it will assign, without changing
//! anything; an infallible `add_*`/`set_*` method applies it. The store
//! writes the log record between the two, so a rejected or unwritable
//! mutation leaves the state untouched. Replay ([`State::apply`]) runs the
//! same checks against each record and then the same apply code.

use std::borrow::{Borrow, Cow};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::inbox::{Entry, Inbox};
use super::log::Record;
use crate::store::{
    counted_size, Gid, Limit, Message, MsgId, Page, Reset, StoreError, TokenInfo, TokenRef, Uid,
};

/// Tokens that expired more than this long ago are dropped by compaction.
const TOKEN_GRACE_SECS: u64 = 24 * 3600;

#[derive(Clone)]
pub(crate) struct User {
    name: String,
    pass_hash: String,
    /// Un-acked messages in msgid order; acked ones are trimmed.
    inbox: Inbox,
    next_msgid: MsgId,
    acked: MsgId,
    /// How many times the msgid counter was found behind what a client had
    /// seen (and raised past it): see [`State::rebase`].
    epoch: u64,
    /// Selectors of the user's tokens, oldest first (the quota revokes from
    /// the front).
    tokens: Vec<Box<str>>,
    /// Groups this user created.
    groups_owned: u32,
}

#[derive(Clone)]
pub(crate) struct Group {
    owner: Uid,
    name: String,
    members: Vec<Uid>,
}

/// One appid's users and groups. Uids and gids are dense from 1 and never
/// deleted, so they index these vectors (`uid - 1`).
///
/// Each user and group is shared with the [`Snapshot`] a compaction is
/// writing, if one is: taking one costs a reference count per user, not a
/// copy of every inbox under the store's lock. A user written while it is
/// shared is copied then, and alone ([`App::user_mut`]): of its inbox,
/// the list of its shared chunks and the newest messages, fewer than 64
/// (`inbox.rs`); a group never changes once made.
pub(crate) struct App {
    /// The appid, shared by the app's tokens.
    name: Arc<str>,
    by_name: HashMap<String, Uid>,
    users: Vec<Arc<User>>,
    groups: Vec<Arc<Group>>,
}

impl App {
    fn named(name: &str) -> App {
        App {
            name: Arc::from(name),
            by_name: HashMap::new(),
            users: Vec::new(),
            groups: Vec::new(),
        }
    }

    fn index(id: u64) -> Option<usize> {
        id.checked_sub(1).and_then(|i| usize::try_from(i).ok())
    }

    fn user(&self, uid: Uid) -> Option<&User> {
        Self::index(uid)
            .and_then(|i| self.users.get(i))
            .map(|u| &**u)
    }

    /// The user to change: copied first if a snapshot still holds it.
    fn user_mut(&mut self, uid: Uid) -> Option<&mut User> {
        Self::index(uid)
            .and_then(|i| self.users.get_mut(i))
            .map(Arc::make_mut)
    }
}

/// A stored token. Every authenticated call looks one up, and the state's
/// users' inboxes keep the caches busy, so what a check reads is close
/// together: the selector and the verifier in one allocation (the set
/// finds it by the selector in it), the appid the app's own shared name.
#[derive(Clone)]
pub(crate) struct Token {
    /// The selector, then the verifier.
    text: Box<str>,
    /// Where the selector ends in `text`.
    split: usize,
    appid: Arc<str>,
    uid: Uid,
    expires_at: u64,
}

impl Token {
    fn selector(&self) -> &str {
        &self.text[..self.split]
    }

    fn verifier(&self) -> &str {
        &self.text[self.split..]
    }

    /// The token as a check sees it.
    pub fn view(&self) -> TokenRef<'_> {
        TokenRef {
            verifier: self.verifier(),
            appid: &self.appid,
            uid: self.uid,
            expires_at: self.expires_at,
        }
    }
}

// A token is its selector, to the set: it is looked up by one.
impl Borrow<str> for Token {
    fn borrow(&self) -> &str {
        self.selector()
    }
}

impl PartialEq for Token {
    fn eq(&self, other: &Token) -> bool {
        self.selector() == other.selector()
    }
}

impl Eq for Token {}

impl Hash for Token {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.selector().hash(state);
    }
}

/// The stored tokens, behind a lock of their own, shared by the state
/// and the store: every authenticated call checks one, and under the
/// state's lock it would wait behind whatever holds that, a commit group
/// mid-write on a thread the scheduler may have put aside for a tick. They
/// change only under the state's lock too, so whoever holds that sees
/// them agree with the users' lists of their tokens.
#[derive(Clone, Default)]
pub(crate) struct Tokens(Arc<RwLock<HashSet<Token>>>);

impl Tokens {
    // Nothing panics while holding the lock with the set half changed
    // (an insert or a removal is whole), so a poisoned one is still sound.
    fn read(&self) -> RwLockReadGuard<'_, HashSet<Token>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashSet<Token>> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// What `check` says of the token `selector` names (false when there
    /// is none), checked in place.
    pub fn check(&self, selector: &str, check: &mut dyn FnMut(TokenRef<'_>) -> bool) -> bool {
        self.read().get(selector).is_some_and(|t| check(t.view()))
    }

    /// A copy of the token `selector` names.
    pub fn get(&self, selector: &str) -> Option<TokenInfo> {
        self.read().get(selector).map(|t| t.view().to_info())
    }

    pub fn contains(&self, selector: &str) -> bool {
        self.read().contains(selector)
    }
}

/// A send's `cmsgid` as the store knows it: (appid, fromid, cmsgid).
type OnceKey = (String, Uid, String);

/// What the store remembers of a send's `cmsgid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnceSeen {
    /// Not sent (or no longer recognised).
    New,
    /// Sent, with the same message: a retry.
    Same,
    /// Sent, with another message.
    Other,
}

impl OnceSeen {
    /// What a remembered send (until when it is recognised, its
    /// fingerprint if known) or none means for a send with `print` at `now`.
    pub fn judge(entry: Option<(u64, Option<&str>)>, print: &str, now: u64) -> OnceSeen {
        match entry {
            Some((until, _)) if until <= now => OnceSeen::New,
            None => OnceSeen::New,
            Some((_, Some(seen))) if seen != print => OnceSeen::Other,
            Some(_) => OnceSeen::Same,
        }
    }
}

#[derive(Default)]
pub(crate) struct State {
    apps: HashMap<String, App>,
    /// Tokens, by selector.
    tokens: Tokens,
    /// Sequence number of the next append.
    next_seq: u64,
    /// Sends with a `cmsgid`: (appid, fromid, cmsgid) -> until when a retry
    /// is recognised (unix seconds), and the message's fingerprint (`None`
    /// when replayed from a log written before fingerprints).
    once: HashMap<OnceKey, (u64, Option<Box<str>>)>,
    /// Most un-acked messages an inbox keeps (0: no limit); the oldest go.
    inbox_cap: usize,
}

impl State {
    pub fn with_inbox_cap(inbox_cap: usize) -> State {
        State {
            inbox_cap,
            ..State::default()
        }
    }

    fn user(&self, appid: &str, uid: Uid) -> Result<&User, StoreError> {
        self.apps
            .get(appid)
            .and_then(|a| a.user(uid))
            .ok_or(StoreError::NoSuchUser(uid))
    }

    fn user_mut(&mut self, appid: &str, uid: Uid) -> Option<&mut User> {
        self.apps.get_mut(appid).and_then(|a| a.user_mut(uid))
    }

    // ---- users ----

    /// The uid a new user `name` would get.
    pub fn check_user(&self, appid: &str, name: &str) -> Result<Uid, StoreError> {
        match self.apps.get(appid) {
            Some(app) if app.by_name.contains_key(name) => Err(StoreError::UsernameTaken),
            Some(app) => Ok(app.users.len() as Uid + 1),
            None => Ok(1),
        }
    }

    /// The app `appid`, made (empty) if it has no user or group yet.
    fn app_or_new(&mut self, appid: &str) -> &mut App {
        self.apps
            .entry(appid.to_owned())
            .or_insert_with(|| App::named(appid))
    }

    /// Adds a user; `uid` comes from [`State::check_user`].
    pub fn add_user(&mut self, appid: &str, uid: Uid, name: &str, pass_hash: &str) {
        let app = self.app_or_new(appid);
        debug_assert_eq!(uid, app.users.len() as Uid + 1);
        app.by_name.insert(name.to_owned(), uid);
        app.users.push(Arc::new(User {
            name: name.to_owned(),
            pass_hash: pass_hash.to_owned(),
            inbox: Inbox::default(),
            next_msgid: 1,
            acked: 0,
            epoch: 0,
            tokens: Vec::new(),
            groups_owned: 0,
        }));
    }

    pub fn find_user(&self, appid: &str, name: &str) -> Option<(Uid, String)> {
        let app = self.apps.get(appid)?;
        let uid = *app.by_name.get(name)?;
        Some((uid, app.user(uid)?.pass_hash.clone()))
    }

    pub fn user_exists(&self, appid: &str, uid: Uid) -> bool {
        self.user(appid, uid).is_ok()
    }

    // ---- groups ----

    /// The gid a new group would get; the owner and every member must
    /// exist, and the owner may have created fewer than `max_owned` (0: no
    /// limit). Replay passes 0: the limit is checked once, when a group is
    /// made.
    pub fn check_group(
        &self,
        appid: &str,
        owner: Uid,
        members: &[Uid],
        max_owned: usize,
    ) -> Result<Gid, StoreError> {
        let owned = self.user(appid, owner)?.groups_owned;
        if max_owned > 0 && owned as usize >= max_owned {
            return Err(StoreError::TooManyGroups(max_owned));
        }
        for &m in members {
            self.user(appid, m)?;
        }
        Ok(self.apps.get(appid).map_or(0, |a| a.groups.len()) as Gid + 1)
    }

    /// Adds a group; `gid` comes from [`State::check_group`].
    pub fn add_group(&mut self, appid: &str, gid: Gid, owner: Uid, name: &str, members: &[Uid]) {
        let app = self.app_or_new(appid);
        debug_assert_eq!(gid, app.groups.len() as Gid + 1);
        if let Some(user) = app.user_mut(owner) {
            user.groups_owned = user.groups_owned.saturating_add(1);
        }
        app.groups.push(Arc::new(Group {
            owner,
            name: name.to_owned(),
            members: members.to_vec(),
        }));
    }

    pub fn group_members(&self, appid: &str, gid: Gid) -> Option<Vec<Uid>> {
        let app = self.apps.get(appid)?;
        let group = App::index(gid).and_then(|i| app.groups.get(i))?;
        Some(group.members.clone())
    }

    // ---- tokens ----

    pub fn put_token(&mut self, selector: &str, info: &TokenInfo) {
        // A selector stored again (never, with random selectors) moves.
        self.delete_token(selector);
        if let Some(user) = self.user_mut(&info.appid, info.uid) {
            user.tokens.push(selector.into());
        }
        let appid = match self.apps.get(info.appid.as_str()) {
            Some(app) => Arc::clone(&app.name),
            None => Arc::from(info.appid.as_str()),
        };
        self.tokens.write().insert(Token {
            text: [selector, &info.verifier].concat().into(),
            split: selector.len(),
            appid,
            uid: info.uid,
            expires_at: info.expires_at,
        });
    }

    /// The oldest tokens of `uid` that go when it gets one more and may
    /// keep at most `keep` (0: no limit).
    pub fn tokens_beyond(&self, appid: &str, uid: Uid, keep: usize) -> Vec<String> {
        let Ok(user) = self.user(appid, uid) else {
            return Vec::new();
        };
        if keep == 0 || user.tokens.len() < keep {
            return Vec::new();
        }
        let over = user.tokens.len() + 1 - keep;
        user.tokens[..over].iter().map(|s| s.to_string()).collect()
    }

    /// The tokens, for the store to check without the state's lock.
    pub fn tokens(&self) -> Tokens {
        self.tokens.clone()
    }

    pub fn delete_token(&mut self, selector: &str) {
        let Some(token) = self.tokens.write().take(selector) else {
            return;
        };
        if let Some(user) = self.user_mut(&token.appid, token.uid) {
            user.tokens.retain(|s| &**s != selector);
        }
    }

    // ---- inboxes ----

    /// Adds to `ids` the msgid each receiver in `to` would get (a receiver
    /// listed twice gets two consecutive msgids). Every receiver must
    /// exist; if one does not, `ids` may hold some of them. `taken` holds,
    /// by uid of `appid`, the next msgid after those already handed out to
    /// earlier, not yet applied appends of the same commit group (see the
    /// module doc of [`super`]); `None` outside a group.
    pub fn check_append(
        &self,
        appid: &str,
        to: &[Uid],
        taken: Option<&HashMap<Uid, MsgId>>,
        ids: &mut Vec<MsgId>,
    ) -> Result<(), StoreError> {
        let next_of = |uid: Uid| -> Result<MsgId, StoreError> {
            let user = self.user(appid, uid)?;
            Ok(taken
                .and_then(|t| t.get(&uid).copied())
                .unwrap_or(user.next_msgid))
        };
        if let [uid] = to {
            ids.push(next_of(*uid)?);
            return Ok(());
        }
        let mut next: HashMap<Uid, MsgId> = HashMap::with_capacity(to.len());
        ids.reserve(to.len());
        for &uid in to {
            let n = match next.entry(uid) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(next_of(uid)?),
            };
            ids.push(*n);
            *n += 1;
        }
        Ok(())
    }

    /// Appends one message to every receiver, `ids[i]` being the msgid of
    /// `to[i]` (from [`State::check_append`], or a replayed record). All
    /// receivers share `content`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_message(
        &mut self,
        appid: &str,
        to: &[Uid],
        ids: &[MsgId],
        fromid: Uid,
        toid: u64,
        datatype: u8,
        content: &Arc<str>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let cap = self.inbox_cap;
        let Some(app) = self.apps.get_mut(appid) else {
            return;
        };
        for (&uid, &msgid) in to.iter().zip(ids) {
            if let Some(user) = app.user_mut(uid) {
                // Over the cap, the oldest un-acked message goes; a reader
                // asking for it is told (a `trimmed` frame), never a silent gap.
                if cap > 0 && user.inbox.len() >= cap {
                    user.inbox.pop_front();
                }
                user.inbox.push_back(Entry {
                    seq,
                    msg: Message {
                        msgid,
                        fromid,
                        toid,
                        datatype,
                        content: Arc::clone(content),
                    },
                });
                user.next_msgid = msgid + 1;
            }
        }
    }

    /// Whether a send from `fromid` with `cmsgid` is still recognised at
    /// `now`, and whether it was the message with fingerprint `print`.
    pub fn seen_once(
        &self,
        appid: &str,
        fromid: Uid,
        cmsgid: &str,
        print: &str,
        now: u64,
    ) -> OnceSeen {
        // The key is owned; a lookup by borrowed parts would need a custom
        // key type, and a send with cmsgid already costs an allocation.
        let key = (appid.to_owned(), fromid, cmsgid.to_owned());
        let entry = self.once.get(&key);
        OnceSeen::judge(
            entry.map(|(until, seen)| (*until, seen.as_deref())),
            print,
            now,
        )
    }

    pub fn add_once(
        &mut self,
        appid: &str,
        fromid: Uid,
        cmsgid: &str,
        until: u64,
        print: Option<&str>,
    ) {
        self.once.insert(
            (appid.to_owned(), fromid, cmsgid.to_owned()),
            (until, print.map(Box::from)),
        );
    }

    /// Forgets sends no longer recognised at `now`.
    pub fn purge_once(&mut self, now: u64) {
        self.once.retain(|_, (until, _)| *until > now);
    }

    pub fn once_len(&self) -> usize {
        self.once.len()
    }

    /// Stored messages with msgid >= `from`, in order, within `limit`, and
    /// the inbox's last msgid.
    pub fn page(
        &self,
        appid: &str,
        uid: Uid,
        from: MsgId,
        limit: Limit,
    ) -> Result<Page, StoreError> {
        let user = self.user(appid, uid)?;
        let mut msgs = Vec::new();
        let mut size = 0usize;
        for e in user.inbox.since(from).take(limit.count) {
            size = size.saturating_add(counted_size(&e.msg.content));
            // The first goes whatever its size.
            if !msgs.is_empty() && size > limit.bytes {
                break;
            }
            msgs.push(e.msg.clone());
        }
        Ok(Page {
            msgs,
            last: user.next_msgid - 1,
            reset: None,
        })
    }

    pub fn acked(&self, appid: &str, uid: Uid) -> Result<MsgId, StoreError> {
        Ok(self.user(appid, uid)?.acked)
    }

    /// The new ack position `ack(endid)` moves to (clamped to the last
    /// msgid), or `None` if it would not move forward.
    pub fn check_ack(
        &self,
        appid: &str,
        uid: Uid,
        endid: MsgId,
    ) -> Result<Option<MsgId>, StoreError> {
        let user = self.user(appid, uid)?;
        let target = endid.min(user.next_msgid - 1);
        Ok((target > user.acked).then_some(target))
    }

    /// Moves the ack position forward (never back, never past the last
    /// msgid) and trims the acked messages.
    pub fn set_ack(&mut self, appid: &str, uid: Uid, id: MsgId) {
        let Some(user) = self.user_mut(appid, uid) else {
            return;
        };
        user.acked = user.acked.max(id.min(user.next_msgid - 1));
        let acked = user.acked;
        user.inbox.pop_while(|e| e.msg.msgid <= acked);
    }

    /// What a reader who received every msgid below `from` finds wrong
    /// with the inbox: `Some` (the epoch to move to, and the last msgid
    /// stored) if its counter is behind `from - 1`.
    pub fn check_rebase(
        &self,
        appid: &str,
        uid: Uid,
        from: MsgId,
    ) -> Result<Option<Reset>, StoreError> {
        let user = self.user(appid, uid)?;
        Ok((from > user.next_msgid).then(|| Reset {
            epoch: user.epoch + 1,
            found: user.next_msgid - 1,
        }))
    }

    /// Makes the user's next msgid at least `n`, and its epoch at least
    /// `epoch`.
    pub fn set_seq(&mut self, appid: &str, uid: Uid, n: MsgId, epoch: u64) {
        if let Some(user) = self.user_mut(appid, uid) {
            user.next_msgid = user.next_msgid.max(n);
            user.epoch = user.epoch.max(epoch);
        }
    }

    // ---- replay and snapshot ----

    /// Applies a replayed record after checking it is consistent with the
    /// state so far; an inconsistent record is an error (the log is corrupt).
    pub fn apply(&mut self, rec: Record<'_>) -> Result<(), String> {
        match rec {
            Record::User { a, u, n, p } => {
                let uid = self.check_user(&a, &n).map_err(|e| e.to_string())?;
                if u != uid {
                    return Err(format!("user {n:?} has uid {u}, expected {uid}"));
                }
                self.add_user(&a, u, &n, &p);
            }
            Record::Group { a, g, o, n, m } => {
                let gid = self.check_group(&a, o, &m, 0).map_err(|e| e.to_string())?;
                if g != gid {
                    return Err(format!("group {n:?} has gid {g}, expected {gid}"));
                }
                self.add_group(&a, g, o, &n, &m);
            }
            Record::TokenPut { s, v, a, u, e } => self.put_token(
                &s,
                &TokenInfo {
                    verifier: v.into_owned(),
                    appid: a.into_owned(),
                    uid: u,
                    expires_at: e,
                },
            ),
            Record::TokenDel { s } => self.delete_token(&s),
            Record::Msg {
                a,
                to,
                ids,
                f,
                t,
                d,
                c,
                k,
                x,
                h,
            } => {
                if let (Some(k), Some(x)) = (&k, x) {
                    self.add_once(&a, f, k, x, h.as_deref());
                }
                if to.len() != ids.len() {
                    return Err(format!("{} receivers but {} msgids", to.len(), ids.len()));
                }
                let mut next: HashMap<Uid, MsgId> = HashMap::with_capacity(to.len());
                for (&uid, &id) in to.iter().zip(ids.iter()) {
                    let user = self.user(&a, uid).map_err(|e| e.to_string())?;
                    let n = next.entry(uid).or_insert(user.next_msgid);
                    if id < *n {
                        return Err(format!(
                            "msgid {id} of user {uid} reuses a msgid (next is {n})"
                        ));
                    }
                    *n = id + 1;
                }
                self.add_message(&a, &to, &ids, f, t, d, &Arc::from(c))
            }
            Record::Once { a, f, k, x, h } => self.add_once(&a, f, &k, x, h.as_deref()),
            Record::Ack { a, u, id } => {
                self.user(&a, u).map_err(|e| e.to_string())?;
                self.set_ack(&a, u, id);
            }
            Record::Seq { a, u, n, e } => {
                self.user(&a, u).map_err(|e| e.to_string())?;
                self.set_seq(&a, u, n, e.unwrap_or(0));
            }
        }
        Ok(())
    }

    /// Drops tokens that expired more than a day before `now` (unix
    /// seconds), and sends with a `cmsgid` no longer recognised.
    pub fn purge_tokens(&mut self, now: u64) {
        self.purge_once(now);
        let expired: Vec<String> = self
            .tokens
            .read()
            .iter()
            .filter(|t| t.expires_at.saturating_add(TOKEN_GRACE_SECS) < now)
            .map(|t| t.selector().to_owned())
            .collect();
        for s in expired {
            self.delete_token(&s);
        }
    }

    /// What a compaction writes of this state as it is now. Users and
    /// groups are shared, not copied (see [`App`]); tokens and remembered
    /// sends are copied.
    pub fn snapshot(&self) -> Snapshot {
        let mut apps: Vec<SnapshotApp> = (self.apps.iter())
            .map(|(name, app)| SnapshotApp {
                name: name.clone(),
                users: app.users.clone(),
                groups: app.groups.clone(),
            })
            .collect();
        apps.sort_unstable_by(|x, y| x.name.cmp(&y.name));
        Snapshot {
            apps,
            tokens: self.tokens.read().clone(),
            once: self.once.clone(),
        }
    }
}

/// One app in a [`Snapshot`].
struct SnapshotApp {
    name: String,
    users: Vec<Arc<User>>,
    groups: Vec<Arc<Group>>,
}

/// The state as it was in one instant ([`State::snapshot`]), for a
/// compaction to write while the store goes on.
pub(crate) struct Snapshot {
    /// In name order.
    apps: Vec<SnapshotApp>,
    tokens: HashSet<Token>,
    once: HashMap<OnceKey, (u64, Option<Box<str>>)>,
}

impl Snapshot {
    /// Emits records that rebuild this state when replayed into an empty
    /// one: users, groups, tokens, un-acked messages (one record per
    /// original append, in append order), then msgid counters of fully acked
    /// inboxes and ack positions.
    pub fn write(&self, emit: &mut dyn FnMut(&Record<'_>) -> io::Result<()>) -> io::Result<()> {
        for app in &self.apps {
            let a = &app.name;
            for (i, user) in app.users.iter().enumerate() {
                emit(&Record::User {
                    a: Cow::Borrowed(a),
                    u: i as Uid + 1,
                    n: Cow::Borrowed(&user.name),
                    p: Cow::Borrowed(&user.pass_hash),
                })?;
            }
            for (i, g) in app.groups.iter().enumerate() {
                emit(&Record::Group {
                    a: Cow::Borrowed(a),
                    g: i as Gid + 1,
                    o: g.owner,
                    n: Cow::Borrowed(&g.name),
                    m: Cow::Borrowed(&g.members),
                })?;
            }
        }
        // Tokens user by user, oldest first: the order the quota revokes in.
        for app in &self.apps {
            for user in &app.users {
                for s in &user.tokens {
                    let Some(t) = self.tokens.get(&**s) else {
                        continue;
                    };
                    emit(&Record::TokenPut {
                        s: Cow::Borrowed(s),
                        v: Cow::Borrowed(t.verifier()),
                        a: Cow::Borrowed(&t.appid),
                        u: t.uid,
                        e: t.expires_at,
                    })?;
                }
            }
        }
        // Un-acked messages, grouped back into their appends.
        let mut entries: Vec<(u64, &str, Uid, &Message)> = Vec::new();
        for app in &self.apps {
            let a = &app.name;
            for (i, user) in app.users.iter().enumerate() {
                entries.extend(
                    user.inbox
                        .iter()
                        .map(|e| (e.seq, a.as_str(), i as Uid + 1, &e.msg)),
                );
            }
        }
        entries.sort_unstable_by_key(|&(seq, _, uid, m)| (seq, uid, m.msgid));
        for chunk in entries.chunk_by(|x, y| x.0 == y.0) {
            let (_, a, _, m) = chunk[0];
            // A receiver listed twice in one append keeps its msgid order:
            // the chunk is sorted by (uid, msgid). A single chat's message
            // (one receiver) needs no list made.
            let (to, ids) = match chunk {
                [_] => (
                    Cow::Borrowed(std::slice::from_ref(&chunk[0].2)),
                    Cow::Borrowed(std::slice::from_ref(&m.msgid)),
                ),
                _ => (
                    chunk.iter().map(|e| e.2).collect(),
                    chunk.iter().map(|e| e.3.msgid).collect(),
                ),
            };
            emit(&Record::Msg {
                a: Cow::Borrowed(a),
                to,
                ids,
                f: m.fromid,
                t: m.toid,
                d: m.datatype,
                c: Cow::Borrowed(&m.content),
                k: None,
                x: None,
                h: None,
            })?;
        }
        for ((a, f, k), (x, h)) in &self.once {
            emit(&Record::Once {
                a: Cow::Borrowed(a),
                f: *f,
                k: Cow::Borrowed(k),
                x: *x,
                h: h.as_deref().map(Cow::Borrowed),
            })?;
        }
        for app in &self.apps {
            let a = &app.name;
            for (i, user) in app.users.iter().enumerate() {
                let u = i as Uid + 1;
                if (user.inbox.is_empty() && user.next_msgid > 1) || user.epoch > 0 {
                    emit(&Record::Seq {
                        a: Cow::Borrowed(a),
                        u,
                        n: user.next_msgid,
                        e: (user.epoch > 0).then_some(user.epoch),
                    })?;
                }
                if user.acked > 0 {
                    emit(&Record::Ack {
                        a: Cow::Borrowed(a),
                        u,
                        id: user.acked,
                    })?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(u: Uid) -> Record<'static> {
        Record::User {
            a: "t".into(),
            u,
            n: format!("user{u}").into(),
            p: "h".into(),
        }
    }

    fn msg(to: Uid, id: MsgId, c: &str) -> Record<'static> {
        Record::Msg {
            a: "t".into(),
            to: Cow::Owned(vec![to]),
            ids: Cow::Owned(vec![id]),
            f: 1,
            t: to,
            d: 1,
            c: c.to_owned().into(),
            k: None,
            x: None,
            h: None,
        }
    }

    /// A token is found by its selector, checked as it was put, keeps
    /// its app's one name, and goes with a logout.
    #[test]
    fn a_token_is_found_by_its_selector_and_shares_its_apps_name() {
        let mut state = State::default();
        state.apply(user(1)).unwrap();
        // The store's handle: the state changes them, the store reads them.
        let tokens = state.tokens();
        let info = TokenInfo {
            verifier: "v".repeat(32),
            appid: "t".into(),
            uid: 1,
            expires_at: 99,
        };
        state.put_token("s1", &info);
        state.put_token(
            "s12",
            &TokenInfo {
                uid: 2,
                ..info.clone()
            },
        );
        assert_eq!(tokens.get("s1"), Some(info.clone()));
        let mut seen = None;
        assert!(tokens.check("s1", &mut |t| {
            seen = Some(t.to_info());
            true
        }));
        assert_eq!(seen.as_ref(), Some(&info), "checked as it was put");
        assert!(!tokens.check("s1", &mut |_| false));
        let shared = tokens.read().get("s1").map(|t| Arc::clone(&t.appid));
        assert!(
            Arc::ptr_eq(&shared.expect("found"), &state.apps["t"].name),
            "a copy of the appid"
        );
        assert_eq!(
            tokens.get("s12").map(|t| t.uid),
            Some(2),
            "a selector is not a prefix"
        );
        assert!(!tokens.check("s", &mut |_| true));
        state.delete_token("s1");
        assert!(!tokens.contains("s1"));
        assert!(tokens.contains("s12"));
        // Many in one set: tokens whose hashes meet stay apart.
        for i in 0..1000 {
            state.put_token(&format!("{i:016x}"), &info);
        }
        assert!((0..1000).all(|i| tokens.contains(&format!("{i:016x}"))));
        assert_eq!(tokens.read().len(), 1001);
    }

    fn written(snapshot: &Snapshot) -> Vec<String> {
        let mut lines = Vec::new();
        snapshot
            .write(&mut |rec| {
                let mut buf = Vec::new();
                super::super::log::encode(rec, &mut buf);
                lines.push(String::from_utf8(buf).unwrap());
                Ok(())
            })
            .unwrap();
        lines
    }

    /// A compaction's snapshot is the state of the instant it was taken,
    /// whatever is written after; taking it copied no inbox, and a write
    /// copies only the user it changes.
    #[test]
    fn a_snapshot_shares_users_and_a_write_copies_only_its_own() {
        let mut state = State::default();
        for u in 1..=3 {
            state.apply(user(u)).unwrap();
        }
        state.apply(msg(2, 1, "before-2")).unwrap();
        state.apply(msg(3, 1, "before-3")).unwrap();
        let snapshot = state.snapshot();
        let then = written(&snapshot);
        let users = |s: &Snapshot| s.apps[0].users.clone();
        let live = &state.apps["t"].users;
        assert!((0..3).all(|i| Arc::ptr_eq(&users(&snapshot)[i], &live[i])));

        state.apply(msg(2, 2, "after")).unwrap();
        state.set_ack("t", 3, 1);
        assert_eq!(written(&snapshot), then, "the snapshot moved");
        let live = &state.apps["t"].users;
        let shared: Vec<bool> = (0..3)
            .map(|i| Arc::ptr_eq(&users(&snapshot)[i], &live[i]))
            .collect();
        assert_eq!(shared, [true, false, false]);
        assert!(written(&state.snapshot())
            .iter()
            .any(|l| l.contains("after")));
    }
}
