//! The store interface: everything haoshuo keeps between requests.
//!
//! A store owns users, groups, login tokens, every user's inbox with its msgid
//! counter, and each user's ack position. Worker threads call it
//! synchronously, and so does a reactor where the store never waits on I/O
//! ([`Store::waits_on_io`]). Backends (the embedded append-only log, Redis)
//! sit behind [`Store`] and pass the same test suite.
//!
//! What a store must guarantee:
//! - `append` gives each receiver the next msgid of *its own* inbox: msgids
//!   start at 1, grow by exactly one, and are never reused, even across restarts.
//! - Anything a call returned `Ok` for survives `kill -9` of the server (the
//!   write has reached the OS before the call returns).
//! - Readers never observe msgid N+1 in an inbox before N.

pub mod embedded;
pub mod redis;

use std::sync::Arc;

/// A user's id inside one appid. Starts at 1.
pub type Uid = u64;
/// A group's id inside one appid. Starts at 1.
pub type Gid = u64;
/// A message's position in its receiver's inbox. Starts at 1.
pub type MsgId = u64;

/// `datatype` of a single-chat message: `toid` is the receiver's uid.
pub const DATATYPE_SINGLE: u8 = 1;
/// `datatype` of a group-chat message: `toid` is the group id.
pub const DATATYPE_GROUP: u8 = 2;

/// A message to be appended to one or more inboxes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub fromid: Uid,
    /// The receiver's uid (single chat) or the group id (group chat).
    pub toid: u64,
    pub datatype: u8,
    /// Shared by every inbox the message lands in.
    pub content: Arc<str>,
}

/// A client's own id for one send (`cmsgid`), so that a retry of the same
/// send stores nothing new: sends are recognised by (appid, fromid, cmsgid),
/// in both stores, and the same key with another message is refused
/// ([`StoreError::CmsgidReused`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Once<'a> {
    pub cmsgid: &'a str,
    /// Unix seconds until which a retry is recognised.
    pub until: u64,
}

/// What makes two sends with one `cmsgid` the same message: where it goes,
/// its kind and its content, hashed (BLAKE2b, 128 bits: stable across
/// processes and versions, and no sender can make two messages collide).
pub fn fingerprint(msg: &NewMessage) -> Fingerprint {
    use blake2::digest::{Update, VariableOutput};
    let mut h = blake2::Blake2bVar::new(16).expect("16 is a valid BLAKE2b output size");
    h.update(&msg.toid.to_le_bytes());
    h.update(&[msg.datatype]);
    h.update(msg.content.as_bytes());
    let mut out = [0u8; 16];
    h.finalize_variable(&mut out)
        .expect("the buffer is the output size");
    let mut hex = [0u8; 32];
    crate::auth::hex_in(&out, &mut hex);
    Fingerprint(hex)
}

/// A message's [`fingerprint`] as the stores keep it: 32 lowercase hex
/// digits, held inline (a send with a `cmsgid` allocates none for it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl std::ops::Deref for Fingerprint {
    type Target = str;

    fn deref(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

/// A message as it sits in one receiver's inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub msgid: MsgId,
    pub fromid: Uid,
    pub toid: u64,
    pub datatype: u8,
    pub content: Arc<str>,
}

/// How much one read of an inbox may return.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Most messages.
    pub count: usize,
    /// Most bytes, counted as each message's stored size (its content plus
    /// a few dozen bytes of ids). The first message is returned whatever
    /// its size: one message larger than the cap goes alone.
    pub bytes: usize,
}

impl Limit {
    /// A limit on the count alone.
    pub fn count(count: usize) -> Limit {
        Limit {
            count,
            bytes: usize::MAX,
        }
    }
}

/// The largest msgid a store hands out or a client may name: Redis keeps
/// msgids as sorted-set scores (doubles), exact up to 2^53.
pub const MAX_MSGID: MsgId = 1 << 53;

/// One read of an inbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// Stored messages from the asked msgid on, in msgid order, within the
    /// [`Limit`].
    pub msgs: Vec<Message>,
    /// The inbox's last msgid (0 if it never got one), read together with
    /// `msgs`: anything in between that is not in `msgs` and not after the
    /// page's end is no longer stored.
    pub last: MsgId,
    /// Set when the read found the inbox's msgid counter behind what the
    /// reader had received, and moved the inbox to a new epoch.
    pub reset: Option<Reset>,
}

/// An inbox's msgid counter was found behind a msgid a reader had already
/// received: the store lost writes it had acknowledged (a Redis failover to
/// a lagging replica, an `appendfsync everysec` or `--fsync everysec`
/// crash). The store raised the counter to the reader's position, so no
/// msgid the reader holds is handed out again, and counted a new epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reset {
    /// The inbox's epoch now: how many times this has happened to it.
    pub epoch: u64,
    /// The last msgid the store still had.
    pub found: MsgId,
}

impl Page {
    /// Whether more is stored (or was once) after this page.
    pub fn more_after(&self, from: MsgId) -> bool {
        let end = self.msgs.last().map_or(from, |m| m.msgid + 1);
        end <= self.last
    }
}

/// The first messages of `msgs` (in msgid order) up to the first hole in
/// their msgids. Holes come only from a [`Reset`] (msgids the store lost);
/// a reader sends what is before one, then learns of the hole as a leading
/// gap (`trimmed`) on its next read.
pub fn leading_run(msgs: &[Message]) -> &[Message] {
    let end = msgs
        .windows(2)
        .position(|w| w[1].msgid != w[0].msgid + 1)
        .map_or(msgs.len(), |i| i + 1);
    &msgs[..end]
}

/// The size a message counts for in a [`Limit`]: what it adds to a frame,
/// roughly (content, ids, field names).
pub fn counted_size(content: &str) -> usize {
    content.len() + MSG_OVERHEAD
}

/// Bytes a message adds to a frame beyond its content (field names, ids).
const MSG_OVERHEAD: usize = 64;

/// What a login token stands for.
///
/// A token is `selector || verifier` (hex). The store is keyed by the
/// selector, and keeps the verifier, which the caller compares in constant
/// time: a lookup's timing then tells an attacker nothing about the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// The secret half of the token (hex), compared in constant time.
    pub verifier: String,
    pub appid: String,
    pub uid: Uid,
    /// Unix seconds after which the token is no longer valid.
    pub expires_at: u64,
}

impl TokenInfo {
    /// The token as a check sees it.
    pub fn view(&self) -> TokenRef<'_> {
        TokenRef {
            verifier: &self.verifier,
            appid: &self.appid,
            uid: self.uid,
            expires_at: self.expires_at,
        }
    }
}

/// A stored token as [`Store::check_token`]'s check sees it: borrowed from
/// where the store keeps it, so a check copies nothing.
#[derive(Clone, Copy, Debug)]
pub struct TokenRef<'a> {
    /// The secret half of the token (hex), compared in constant time.
    pub verifier: &'a str,
    pub appid: &'a str,
    pub uid: Uid,
    /// Unix seconds after which the token is no longer valid.
    pub expires_at: u64,
}

impl TokenRef<'_> {
    /// An owned copy.
    pub fn to_info(&self) -> TokenInfo {
        TokenInfo {
            verifier: self.verifier.to_owned(),
            appid: self.appid.to_owned(),
            uid: self.uid,
            expires_at: self.expires_at,
        }
    }
}

/// Failures of a store call. Each maps to one HTTP status in `api::error`.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("username taken")]
    UsernameTaken,
    #[error("no such user {0}")]
    NoSuchUser(Uid),
    #[error("no such group {0}")]
    NoSuchGroup(Gid),
    /// The owner already created the most groups one user may.
    #[error("a user may create at most {0} groups")]
    TooManyGroups(usize),
    /// A `cmsgid` already named another message from this sender.
    #[error("cmsgid reused for a different message")]
    CmsgidReused,
    /// The backend cannot be reached or cannot write; nothing was half written.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// [`Store::append`] or [`Store::append_once`] as `once` chooses, with
/// the outcome [`Store::append_then`] gives.
pub fn append_now<S: Store + ?Sized>(
    store: &S,
    appid: &str,
    to: &[Uid],
    msg: &NewMessage,
    once: Option<&Once>,
) -> Result<Vec<Option<MsgId>>> {
    match once {
        Some(once) => store.append_once(appid, to, msg, once),
        None => store
            .append(appid, to, msg)
            .map(|ids| ids.into_iter().map(Some).collect()),
    }
}

/// One send of a group ([`Store::append_group`]): what
/// [`Store::append`] or, with `once`, [`Store::append_once`] takes.
#[derive(Clone, Copy, Debug)]
pub struct Append<'a> {
    pub appid: &'a str,
    pub to: &'a [Uid],
    pub msg: &'a NewMessage,
    pub once: Option<Once<'a>>,
}

/// Each send's outcome in a group ([`Store::append_group`]), in order:
/// per receiver its msgid, or `None` where a `cmsgid` send had reached it
/// already, as [`append_now`] gives it; or why the send failed. The msgids
/// of all the sends are in one list, so a caller that keeps its
/// `Outcomes` from group to group allocates nothing for them once grown.
#[derive(Debug, Default)]
pub struct Outcomes {
    ids: Vec<Option<MsgId>>,
    each: Vec<Result<std::ops::Range<usize>>>,
}

impl Outcomes {
    /// Forgets every outcome, keeping the room.
    pub fn clear(&mut self) {
        self.ids.clear();
        self.each.clear();
    }

    /// How many sends have an outcome.
    pub fn len(&self) -> usize {
        self.each.len()
    }

    pub fn is_empty(&self) -> bool {
        self.each.is_empty()
    }

    /// Adds the next send's outcome: stored, its receivers getting `ids`.
    pub fn push_ok(&mut self, ids: impl IntoIterator<Item = Option<MsgId>>) {
        let start = self.ids.len();
        self.ids.extend(ids);
        self.each.push(Ok(start..self.ids.len()));
    }

    /// Adds the next send's outcome: it failed.
    pub fn push_err(&mut self, e: StoreError) {
        self.each.push(Err(e));
    }

    /// Adds the next send's outcome as [`append_now`] gives it.
    pub fn push(&mut self, outcome: Result<Vec<Option<MsgId>>>) {
        match outcome {
            Ok(ids) => self.push_ok(ids),
            Err(e) => self.push_err(e),
        }
    }

    /// How many msgids it has room for.
    pub fn capacity(&self) -> usize {
        self.ids.capacity()
    }

    /// The outcome of send `i` (counted from 0): its receivers' msgids,
    /// or why it failed. `None` past the last.
    pub fn get(&self, i: usize) -> Option<std::result::Result<&[Option<MsgId>], &StoreError>> {
        Some(match self.each.get(i)? {
            Ok(range) => Ok(&self.ids[range.clone()]),
            Err(e) => Err(e),
        })
    }
}

/// Where [`Store::append_then`] sends an append's outcome: per receiver,
/// its msgid, or `None` where a `cmsgid` send had reached it already.
pub type Then = Box<dyn FnOnce(Result<Vec<Option<MsgId>>>) + Send>;

/// The wall clock in unix seconds (token expiry, `cmsgid` windows).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The interface every backend implements. All methods are called from worker
/// threads, concurrently; implementations synchronise internally.
pub trait Store: Send + Sync + 'static {
    /// Creates a user; fails with `UsernameTaken` if `username` exists in `appid`.
    /// `pass_hash` is an opaque PHC string (argon2id); the store never sees a password.
    fn create_user(&self, appid: &str, username: &str, pass_hash: &str) -> Result<Uid>;

    /// Creates the users `names` (distinct) of `appid`, all with
    /// `pass_hash`, for bulk provisioning; returns their uids in the order
    /// of `names`. If a name is taken: `UsernameTaken`, and nothing is
    /// written unless the name was taken during the call (then the users
    /// made before the clash stay).
    fn create_users(&self, appid: &str, names: &[String], pass_hash: &str) -> Result<Vec<Uid>> {
        for name in names {
            if self.find_user(appid, name)?.is_some() {
                return Err(StoreError::UsernameTaken);
            }
        }
        names
            .iter()
            .map(|name| self.create_user(appid, name, pass_hash))
            .collect()
    }

    /// Looks a user up by name: `(uid, pass_hash)`.
    fn find_user(&self, appid: &str, username: &str) -> Result<Option<(Uid, String)>>;

    /// Whether `uid` exists in `appid`.
    fn user_exists(&self, appid: &str, uid: Uid) -> Result<bool>;

    /// Creates a group owned by `owner` whose members are `members` (the caller
    /// includes the owner and removes duplicates). Every member must exist:
    /// otherwise `NoSuchUser` and nothing is written. An owner who already
    /// created `max_owned` groups (0: no limit) gets `TooManyGroups`.
    fn create_group(
        &self,
        appid: &str,
        owner: Uid,
        gname: &str,
        members: &[Uid],
        max_owned: usize,
    ) -> Result<Gid>;

    /// The members of a group, in the order they were given, or `None`.
    fn group_members(&self, appid: &str, gid: Gid) -> Result<Option<Vec<Uid>>>;

    /// Stores a login token under its selector; its user must exist
    /// (`NoSuchUser` otherwise, nothing written). If the user then holds
    /// more than `keep` tokens (0: no limit), the oldest go as by
    /// [`Store::delete_token`], and their selectors are returned.
    fn put_token(&self, selector: &str, info: &TokenInfo, keep: usize) -> Result<Vec<String>>;

    /// Stores tokens (selector, token) of users that hold none yet, for
    /// bulk provisioning: no quota applies.
    fn put_new_tokens(&self, tokens: &[(String, TokenInfo)]) -> Result<()> {
        for (selector, info) in tokens {
            self.put_token(selector, info, 0)?;
        }
        Ok(())
    }

    /// Looks a token up by its selector. Expiry and the verifier are the
    /// caller's to check.
    fn get_token(&self, selector: &str) -> Result<Option<TokenInfo>>;

    /// What `check` says of the token `selector` names (false when there
    /// is none): the check of every authenticated call, which needs no copy
    /// of the token. By default, `check` of [`Store::get_token`]'s copy.
    fn check_token(
        &self,
        selector: &str,
        check: &mut dyn FnMut(TokenRef<'_>) -> bool,
    ) -> Result<bool> {
        Ok(self
            .get_token(selector)?
            .is_some_and(|info| check(info.view())))
    }

    /// [`Store::check_token`] when it needs no I/O now; `None` when it
    /// would wait (a token this process has not cached, on Redis). A
    /// reactor, which must never wait, then hands the call to a worker.
    /// By default: on a store that never waits, always answered.
    fn check_token_now(
        &self,
        selector: &str,
        check: &mut dyn FnMut(TokenRef<'_>) -> bool,
    ) -> Option<Result<bool>> {
        (!self.waits_on_io()).then(|| self.check_token(selector, check))
    }

    /// Forgets `uid`'s token (logout). Forgetting an unknown token is not an
    /// error. A store that [announces](Store::announces) also tells every
    /// node, whose router then ends the subscriptions held with it.
    fn delete_token(&self, appid: &str, uid: Uid, selector: &str) -> Result<()>;

    /// Appends `msg` to the inbox of every uid in `to`, atomically as a whole:
    /// either every receiver gets it or none does. Returns the msgid each
    /// receiver got, in the order of `to`. Every receiver must exist
    /// (`NoSuchUser` otherwise, nothing written).
    fn append(&self, appid: &str, to: &[Uid], msg: &NewMessage) -> Result<Vec<MsgId>>;

    /// Like [`Store::append`], but idempotent: a send with this (appid,
    /// fromid, `once.cmsgid`) recognised before `once.until` stores nothing
    /// new for a receiver that has it (its entry in the answer is `None`);
    /// the same key with a different message ([`fingerprint`]) fails with
    /// `CmsgidReused` and stores nothing. A retry after a
    /// send that failed part way (possible with Redis, see docs/redis.md)
    /// completes it without duplicating what was done.
    fn append_once(
        &self,
        appid: &str,
        to: &[Uid],
        msg: &NewMessage,
        once: &Once,
    ) -> Result<Vec<Option<MsgId>>>;

    /// Whether a call may wait on I/O before it returns: a server's round
    /// trip, or an fsync. A store whose calls never do (the embedded store
    /// unless it fsyncs every write) answers the quick calls on the
    /// reactor that read them ([`crate::api::Api::runs_inline`]).
    fn waits_on_io(&self) -> bool {
        true
    }

    /// Appends every send of `group`, in order, as one group where the
    /// store can: the embedded store validates each against the state the
    /// earlier ones leave and writes them all with one `write(2)` (and one
    /// fsync under `--fsync always`), as it does for calls that arrive
    /// together. Adds each send's outcome to `out`, in order; one that
    /// fails fails alone. By default, one after another.
    fn append_group(&self, group: &[Append<'_>], out: &mut Outcomes) {
        for a in group {
            out.push(append_now(self, a.appid, a.to, a.msg, a.once.as_ref()));
        }
    }

    /// Whether [`Store::append_then`] may answer on another thread, after
    /// it returned (a store that waits on a server); false: it answers
    /// at once, in the caller's thread.
    fn answers_later(&self) -> bool {
        false
    }

    /// [`Store::append`] (`once` None: every entry `Some`) or
    /// [`Store::append_once`], whose outcome goes to `then` instead of
    /// back to the caller. A store whose calls never wait (the default)
    /// calls it at once, in this thread; one that waits on a server
    /// (Redis) may queue the call and return, and `then` runs on the
    /// thread that reads the answer: the caller is free meanwhile. `then`
    /// must not wait on the store itself.
    fn append_then(
        &self,
        appid: &str,
        to: &[Uid],
        msg: &NewMessage,
        once: Option<&Once>,
        then: Then,
    ) {
        then(append_now(self, appid, to, msg, once))
    }

    /// Stored messages of `uid`'s inbox with msgid >= `from`, in msgid
    /// order, within `limit`, and the inbox's last msgid, read at one
    /// instant.
    ///
    /// The reader has received every msgid below `from` (at most
    /// [`MAX_MSGID`]). If the inbox's last msgid is below `from - 1`, the
    /// store lost writes: in the same instant it raises the counter to
    /// `from - 1` and starts a new epoch ([`Page::reset`]), so msgids the
    /// reader holds are never handed out again.
    fn page(&self, appid: &str, uid: Uid, from: MsgId, limit: Limit) -> Result<Page>;

    /// [`Store::page`] for a subscription that starts now on this process.
    /// A store shared by several processes first records that this process
    /// serves `uid`, so that every append after the page is read is
    /// announced here (one before it is in the page).
    fn subscribe_page(&self, appid: &str, uid: Uid, from: MsgId, limit: Limit) -> Result<Page> {
        self.page(appid, uid, from, limit)
    }

    /// Up to `limit` stored messages of `uid`'s inbox with msgid >= `from`, in
    /// msgid order.
    fn read(&self, appid: &str, uid: Uid, from: MsgId, limit: usize) -> Result<Vec<Message>> {
        Ok(self.page(appid, uid, from, Limit::count(limit))?.msgs)
    }

    /// The user's ack position: every msgid <= it has been received. 0 at first.
    fn acked(&self, appid: &str, uid: Uid) -> Result<MsgId>;

    /// Marks every msgid <= `endid` as received; acked messages may be dropped
    /// from storage. An `endid` below the current position is a no-op (never a
    /// rewind); one above the last msgid is clamped to it.
    fn ack(&self, appid: &str, uid: Uid, endid: MsgId) -> Result<()>;

    /// Makes everything written so far durable (fsync), e.g. at shutdown.
    fn flush(&self) -> Result<()>;

    /// Whether the store can serve now (`/readyz`): Redis answers, the
    /// embedded log still takes writes.
    fn ping(&self) -> Result<()>;

    /// Starts replacing what this process (`node`) told other processes
    /// about which users it has online: [`Store::presence_add`] pours the
    /// users in, a piece at a time (so no list of every user online is
    /// ever held), and [`Store::presence_commit`] makes them the
    /// presence. A store one process owns (embedded) has nobody to tell.
    fn presence_begin(&self, _node: &str) -> Result<()> {
        Ok(())
    }

    /// Adds `uids` of `appid` to the presence `node` is building.
    fn presence_add(&self, _node: &str, _appid: &str, _uids: &[Uid]) -> Result<()> {
        Ok(())
    }

    /// Makes the `added` users poured in since [`Store::presence_begin`]
    /// `node`'s presence for `ttl` seconds: a process that dies, even by
    /// SIGKILL, takes its users offline within that.
    fn presence_commit(&self, _node: &str, _added: usize, _ttl: u64) -> Result<()> {
        Ok(())
    }

    /// Which of `uids` of `appid` another live process has online (as it
    /// last published).
    fn online_elsewhere(&self, _node: &str, _appid: &str, uids: &[Uid]) -> Result<Vec<bool>> {
        Ok(vec![false; uids.len()])
    }

    /// Renews this process's routes of `uids` of `appid` (it still serves
    /// them), so that appends to them keep being announced here. A store
    /// one process owns has no routes.
    fn renew_routes(&self, _appid: &str, _uids: &[Uid]) -> Result<()> {
        Ok(())
    }

    /// Takes back what `node` published (it is stopping).
    fn withdraw_presence(&self, _node: &str) -> Result<()> {
        Ok(())
    }

    /// Whether the store announces appends itself (Redis pub/sub reaching
    /// every node); otherwise the worker that appended hands the message to
    /// its own router.
    fn announces(&self) -> bool {
        false
    }
}
