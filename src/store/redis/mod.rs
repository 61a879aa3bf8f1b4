//! The Redis store: everything in Redis, so several haoshuo processes can
//! share one data set, and an operator runs it as they already run Redis:
//! one server, a Redis Cluster (`cluster`: each command to its key's
//! master) or a master watched by Sentinels (`pool::Source`).
//!
//! Worker threads call Redis synchronously through a small [`pool::Pool`]
//! (no async runtime). Multi-step changes of one user are Lua scripts
//! ([`scripts`]), keyed within one hash tag, so they are atomic and stay in
//! one cluster slot. Every append is announced to the processes that serve
//! its receivers (their routes say which), each on its own channel; each
//! server process listens there ([`feed`]) and hands what it hears to its
//! router, so a message reaches a subscriber whichever node it is on. The
//! key layout is in docs/redis.md.
//!
//! Not atomic across users: a group message is appended member by member
//! (pipelined). If the server dies part way, some members have it and the
//! others do not; each member's inbox stays contiguous.

mod cluster;
pub mod feed;
mod groups;
mod keys;
mod pool;
mod scripts;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use redis::{ConnectionLike, RedisResult, Script};

use crate::store::{
    fingerprint, unix_now, Gid, Limit, MsgId, NewMessage, Once, Page, Reset, Result, Store,
    StoreError, Then, TokenInfo, TokenRef, Uid,
};

pub use keys::{deliver_channel, DELIVER_PREFIX};

/// Receivers appended to by one script call. Redis runs nothing else while
/// a script runs: 512 appends keep that under a millisecond or so, and a
/// 10,000-member group message is 20 calls in one pipeline, each announced
/// once.
const APPEND_BATCH: usize = 512;

/// How to reach Redis.
#[derive(Clone, Debug)]
pub struct Options {
    /// `redis://HOST:PORT/DB`
    pub url: String,
    /// Connections, each pipelining the calls of the workers using it.
    pub pool: usize,
    /// Longest wait for a connect, a read or a write.
    pub timeout: Duration,
    /// Most un-acked messages one inbox keeps (0: no limit).
    pub inbox_cap: usize,
    /// How long a token read from Redis is trusted without asking again.
    pub token_cache: Duration,
    /// This process's node id: appends for users subscribed here are
    /// announced on its channel (`hs:deliver:NODE`).
    pub node: String,
    /// How long a route (this node serves a user) holds once written; the
    /// presence thread renews each route within it (`presence::route_ttl`).
    pub route_ttl: Duration,
    /// Replicas every write must reach before it is answered (WAIT), so a
    /// failover loses nothing acknowledged; 0: Redis's asynchronous
    /// replication (docs/redis.md).
    pub wait_replicas: usize,
}

pub struct RedisStore {
    pool: Arc<pool::Pool>,
    node: String,
    /// Seconds a route holds once written.
    route_ttl: u64,
    tokens: tokens::TokenCache,
    groups: groups::GroupCache,
    inbox_cap: usize,
    append: Script,
    ack: Script,
    page: Script,
    sent: Script,
    tokens_list: Script,
    own_group: Script,
    online: Script,
}

impl RedisStore {
    /// Connects once to check that Redis answers.
    pub fn open(opts: &Options) -> Result<RedisStore> {
        let store = RedisStore {
            pool: Arc::new(pool::Pool::new(
                &opts.url,
                opts.pool,
                opts.timeout,
                opts.wait_replicas,
            )?),
            node: opts.node.clone(),
            route_ttl: opts.route_ttl.as_secs().max(1),
            inbox_cap: opts.inbox_cap,
            tokens: tokens::TokenCache::new(opts.token_cache),
            groups: groups::GroupCache::default(),
            append: Script::new(scripts::APPEND),
            ack: Script::new(&scripts::ack()),
            page: Script::new(&scripts::page()),
            sent: Script::new(scripts::SENT),
            tokens_list: Script::new(scripts::TOKENS),
            own_group: Script::new(scripts::OWN_GROUP),
            online: Script::new(scripts::ONLINE),
        };
        store.pool.with(|c| redis::cmd("PING").query::<String>(c))?;
        Ok(store)
    }

    /// A connection for the pub/sub feed, with the store's timeouts.
    pub(crate) fn pool(&self) -> &pool::Pool {
        &self.pool
    }

    /// Connections to Redis made again after one was lost (metrics).
    pub fn reconnects(&self) -> u64 {
        self.pool.reconnects()
    }

    fn with<T>(&self, f: impl FnOnce(&mut dyn ConnectionLike) -> RedisResult<T>) -> Result<T> {
        self.pool.with(f)
    }

    /// The token cache, for the feed to drop logged-out tokens from.
    pub(crate) fn tokens(&self) -> &tokens::TokenCache {
        &self.tokens
    }

    /// This process's node id (its announcement channel's suffix).
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// Adds to `p` the HSET that writes (or renews) this node's route of
    /// `uid` until `until` ([`RedisStore::route_until`]): appends to it are
    /// announced here until then.
    fn write_route(&self, p: &mut redis::Pipeline, appid: &str, uid: Uid, until: u64) {
        p.cmd("HSET")
            .arg(keys::routes(appid, uid))
            .arg(&self.node)
            .arg(until);
    }

    /// When a route written now runs out (unix seconds).
    fn route_until(&self) -> u64 {
        unix_now() + self.route_ttl
    }

    /// The group member cache, for the feed to clear on reconnect.
    pub(crate) fn groups(&self) -> &groups::GroupCache {
        &self.groups
    }

    /// The first of `uids` that is not a user of `appid`, if any.
    fn first_missing(&self, appid: &str, uids: &[Uid]) -> Result<Option<Uid>> {
        self.with(|c| {
            let mut p = redis::pipe();
            for &uid in uids {
                p.cmd("EXISTS").arg(keys::user(appid, uid));
            }
            let exists: Vec<bool> = p.query(c)?;
            Ok(uids.iter().zip(exists).find(|(_, e)| !e).map(|(&u, _)| u))
        })
    }

    /// [`Store::online_elsewhere`] in a cluster, where each process's
    /// presence set is in a slot of its own: the live processes, then
    /// every other one's set asked in one pipeline.
    fn online_in_cluster(&self, node: &str, members: &[String]) -> Result<Vec<bool>> {
        self.with(|c| {
            let nodes: Vec<String> = redis::cmd("ZRANGEBYSCORE")
                .arg(keys::NODES)
                .arg(unix_now())
                .arg("+inf")
                .query(c)?;
            let others: Vec<&String> = nodes.iter().filter(|n| *n != node).collect();
            let mut online = vec![false; members.len()];
            if others.is_empty() {
                return Ok(online);
            }
            let mut p = redis::pipe();
            for other in others {
                p.cmd("SMISMEMBER").arg(keys::presence(other)).arg(members);
            }
            let hits: Vec<Vec<bool>> = p.query(c)?;
            for set in hits {
                for (on, hit) in online.iter_mut().zip(set) {
                    *on |= hit;
                }
            }
            Ok(online)
        })
    }

    /// The receivers (indexes into `to`) of each append script call: at
    /// most [`APPEND_BATCH`] a call, and in a cluster all of one slot
    /// (each call's keys must be), in the order of `to` within a slot.
    fn append_calls(&self, appid: &str, to: &[Uid]) -> Vec<Vec<usize>> {
        let chunks = |all: Vec<usize>| -> Vec<Vec<usize>> {
            all.chunks(APPEND_BATCH).map(<[usize]>::to_vec).collect()
        };
        if !self.pool.is_cluster() {
            return chunks((0..to.len()).collect());
        }
        let mut slotted: Vec<(u16, usize)> = to
            .iter()
            .enumerate()
            .map(|(i, &uid)| (cluster::slot(keys::user(appid, uid).as_bytes()), i))
            .collect();
        slotted.sort_unstable();
        slotted
            .chunk_by(|a, b| a.0 == b.0)
            .flat_map(|same| chunks(same.iter().map(|&(_, i)| i).collect()))
            .collect()
    }

    /// Runs the append script over every receiver ([`Self::append_calls`])
    /// in one pipeline; `None` for a receiver that already had this
    /// `cmsgid`. An unknown receiver is `NoSuchUser`, and nothing is
    /// written then: one call checks all its receivers before it writes;
    /// receivers for several calls are checked first, in one pipeline
    /// (users are never deleted); and this call's `cmsgid` claim is let go.
    fn append_scripts(
        &self,
        appid: &str,
        to: &[Uid],
        msg: &NewMessage,
        once: Option<&Once>,
    ) -> Result<Vec<Option<MsgId>>> {
        if to.is_empty() {
            return Ok(Vec::new());
        }
        let calls = self.append_calls(appid, to);
        if calls.len() > 1 {
            if let Some(uid) = self.first_missing(appid, to)? {
                return Err(StoreError::NoSuchUser(uid));
            }
        }
        let ttl = once.map_or(0, |o| o.until.saturating_sub(unix_now()).max(1));
        let mut claimed = None;
        if let Some(o) = once {
            // The cmsgid is the sender's: claim it for this message first
            // (a retry of the same message goes on, and completes whatever
            // receivers a failed first try left out).
            let seen: i64 = self.with(|c| {
                self.sent
                    .key(keys::sent(appid, msg.fromid, o.cmsgid))
                    .arg(&*fingerprint(msg))
                    .arg(ttl)
                    .invoke(c)
            })?;
            if seen == 2 {
                return Err(StoreError::CmsgidReused);
            }
            if seen == 0 {
                claimed = Some(keys::sent(appid, msg.fromid, o.cmsgid));
            }
        }
        let args = AppendArgs::new(appid, msg, once, ttl)?;
        let answers = self.with(|c| {
            let mut p = redis::pipe();
            for call in &calls {
                p.add_command(args.cmd(self, to, call));
            }
            pipeline_with_script(c, &self.append, &p)
        })?;
        let mut ids: Vec<Option<i64>> = vec![None; to.len()];
        let mut announce: Vec<(String, String)> = Vec::new();
        for (call, answer) in calls.iter().zip(answers) {
            read_append(call, answer, &mut ids, &mut announce)?;
        }
        let ids = ids_of(to, ids);
        let prefix = args.prefix;
        if !announce.is_empty() {
            // Stored already: if announcing fails (the channel's master just
            // failed), the receivers get the message from the store at their
            // next message or when their node's feed reconnects.
            let _ = self.with(|c| {
                let mut p = redis::pipe();
                for (node, list) in &announce {
                    p.cmd("SPUBLISH")
                        .arg(deliver_channel(node))
                        .arg(format!("{prefix}[{list}]]"))
                        .ignore();
                }
                p.exec(c)
            });
        }
        if let (Err(StoreError::NoSuchUser(_)), Some(sent)) = (&ids, claimed) {
            // Nothing was sent, so the cmsgid names nothing yet.
            self.with(|c| redis::cmd("DEL").arg(sent).exec(c))?;
        }
        ids
    }
}

/// What every call of the append script for one message is given.
struct AppendArgs<'a> {
    appid: &'a str,
    fromid: Uid,
    once: Option<&'a Once<'a>>,
    /// The message as stored.
    stored: String,
    /// The announcement up to its receivers.
    prefix: String,
    /// Seconds a `cmsgid` is remembered (0 without one).
    ttl: u64,
    now: u64,
}

impl<'a> AppendArgs<'a> {
    fn new(
        appid: &'a str,
        msg: &NewMessage,
        once: Option<&'a Once<'a>>,
        ttl: u64,
    ) -> Result<AppendArgs<'a>> {
        let stored = serde_json::to_string(&keys::Stored::of(msg))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(AppendArgs {
            appid,
            fromid: msg.fromid,
            once,
            prefix: keys::announce_prefix(appid, &stored),
            stored,
            ttl,
            now: unix_now(),
        })
    }

    /// The script's call for the receivers `call` (indexes into `to`).
    fn cmd(&self, store: &RedisStore, to: &[Uid], call: &[usize]) -> redis::Cmd {
        let (appid, once) = (self.appid, self.once);
        let per = if once.is_some() { 4 } else { 3 };
        // In a cluster the script answers what to announce instead.
        let channels = if store.pool.is_cluster() {
            ""
        } else {
            keys::DELIVER_PREFIX
        };
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(store.append.get_hash()).arg(call.len() * per);
        for &i in call {
            let uid = to[i];
            cmd.arg(keys::user(appid, uid))
                .arg(keys::inbox(appid, uid))
                .arg(keys::routes(appid, uid));
            if let Some(o) = once {
                cmd.arg(keys::once(appid, uid, self.fromid, o.cmsgid));
            }
        }
        cmd.arg(&self.stored)
            .arg(channels)
            .arg(&self.prefix)
            .arg(self.ttl)
            .arg(store.inbox_cap)
            .arg(per)
            .arg(self.now);
        for &i in call {
            cmd.arg(to[i]);
        }
        cmd
    }
}

/// Reads one append script call's answer (for the receivers `call`,
/// indexes into the message's `to`) into `ids`, and on a cluster what it
/// asks to announce, by node, into `announce`.
fn read_append(
    call: &[usize],
    answer: redis::Value,
    ids: &mut [Option<i64>],
    announce: &mut Vec<(String, String)>,
) -> Result<()> {
    let answer: Vec<redis::Value> = redis::from_redis_value(answer)
        .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
    if answer.len() < call.len() {
        return Err(StoreError::Unavailable(
            "redis: an append answered for the wrong number of receivers".into(),
        ));
    }
    let (got, routed) = answer.split_at(call.len());
    for (&i, id) in call.iter().zip(got) {
        ids[i] = match id {
            redis::Value::Int(id) => Some(*id),
            _ => None,
        };
    }
    for pair in routed.chunks(2) {
        let [node, list] = pair else { continue };
        let (Ok(node), Ok(list)) = (
            redis::from_redis_value::<String>(node.clone()),
            redis::from_redis_value::<String>(list.clone()),
        ) else {
            continue;
        };
        match announce.iter_mut().find(|(n, _)| *n == node) {
            Some((_, all)) => {
                all.push(',');
                all.push_str(&list);
            }
            None => announce.push((node, list)),
        }
    }
    Ok(())
}

/// The append's outcome from the script's answers for each receiver of
/// `to`: its msgid, `None` where it had this `cmsgid` already (-2), and
/// `NoSuchUser` if one does not exist (-1: nothing was written).
fn ids_of(to: &[Uid], ids: Vec<Option<i64>>) -> Result<Vec<Option<MsgId>>> {
    to.iter()
        .zip(ids)
        .map(|(&uid, id)| match id {
            Some(-2) => Ok(None),
            Some(id) => u64::try_from(id)
                .map(Some)
                .map_err(|_| StoreError::NoSuchUser(uid)),
            None => Err(StoreError::Unavailable(
                "redis: an append answered for the wrong number of receivers".into(),
            )),
        })
        .collect()
}

/// An append queued on a lane: whom it was for (all of `to` in one call),
/// and where its outcome goes.
struct Answered {
    to: Vec<Uid>,
    /// Indexes into `to`: the script call's receivers.
    call: Vec<usize>,
    then: Then,
}

impl Answered {
    /// Reads the script's one reply and hands the outcome on.
    fn finish(self, replies: redis::RedisResult<Vec<redis::Value>>) {
        let outcome = replies
            .map_err(|e| StoreError::Unavailable(format!("redis: {e}")))
            .and_then(|mut replies| {
                let answer = match replies.pop() {
                    Some(redis::Value::ServerError(e)) => {
                        return Err(StoreError::Unavailable(format!("redis: {e:?}")))
                    }
                    Some(answer) => answer,
                    None => return Err(StoreError::Unavailable("redis: no reply".into())),
                };
                let mut ids = vec![None; self.to.len()];
                read_append(&self.call, answer, &mut ids, &mut Vec::new())?;
                ids_of(&self.to, ids)
            });
        (self.then)(outcome)
    }
}

/// Whether a call's one reply is NOSCRIPT.
fn is_noscript(replies: &redis::RedisResult<Vec<redis::Value>>) -> bool {
    matches!(replies, Ok(v) if matches!(v.last(), Some(redis::Value::ServerError(e)) if e.kind() == Some(redis::ServerErrorKind::NoScript)))
}

impl Store for RedisStore {
    fn create_user(&self, appid: &str, username: &str, pass_hash: &str) -> Result<Uid> {
        let name_key = keys::username(appid, username);
        self.with(|c| {
            // Cheap early refusal; SET NX below is what decides.
            if redis::cmd("EXISTS").arg(&name_key).query::<bool>(c)? {
                return Ok(None);
            }
            let uid: Uid = redis::cmd("INCR").arg(keys::uid_counter(appid)).query(c)?;
            let user = keys::user(appid, uid);
            redis::cmd("HSET")
                .arg(&user)
                .arg(&[
                    ("name", username),
                    ("pass", pass_hash),
                    ("seq", "0"),
                    ("ack", "0"),
                ])
                .exec(c)?;
            let won: bool = redis::cmd("SET")
                .arg(&name_key)
                .arg(uid)
                .arg("NX")
                .query::<Option<String>>(c)?
                .is_some();
            if !won {
                redis::cmd("DEL").arg(&user).exec(c)?;
                return Ok(None);
            }
            Ok(Some(uid))
        })?
        .ok_or(StoreError::UsernameTaken)
    }

    /// Four round trips for the whole batch: the names checked, the uids
    /// taken (one INCRBY), the users written with their names claimed (SET
    /// NX), and, only after a clash, the clashing users' hashes removed.
    fn create_users(&self, appid: &str, names: &[String], pass_hash: &str) -> Result<Vec<Uid>> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let taken: Vec<bool> = self.with(|c| {
            let mut p = redis::pipe();
            for name in names {
                p.cmd("EXISTS").arg(keys::username(appid, name));
            }
            p.query(c)
        })?;
        if taken.contains(&true) {
            return Err(StoreError::UsernameTaken);
        }
        let last: Uid = self.with(|c| {
            redis::cmd("INCRBY")
                .arg(keys::uid_counter(appid))
                .arg(names.len())
                .query(c)
        })?;
        let uids: Vec<Uid> = (last + 1 - names.len() as Uid..=last).collect();
        let claimed: Vec<Option<String>> = self.with(|c| {
            let mut p = redis::pipe();
            for (name, &uid) in names.iter().zip(&uids) {
                p.cmd("HSET")
                    .arg(keys::user(appid, uid))
                    .arg(&[("name", name.as_str()), ("pass", pass_hash)])
                    .arg(&[("seq", "0"), ("ack", "0")])
                    .ignore();
                p.cmd("SET")
                    .arg(keys::username(appid, name))
                    .arg(uid)
                    .arg("NX");
            }
            p.query(c)
        })?;
        let lost: Vec<Uid> = uids
            .iter()
            .zip(&claimed)
            .filter(|(_, won)| won.is_none())
            .map(|(&uid, _)| uid)
            .collect();
        if lost.is_empty() {
            return Ok(uids);
        }
        // A /re took a name meanwhile: its user stays, ours goes.
        self.with(|c| {
            let mut p = redis::pipe();
            for uid in &lost {
                p.cmd("DEL").arg(keys::user(appid, *uid)).ignore();
            }
            p.exec(c)
        })?;
        Err(StoreError::UsernameTaken)
    }

    fn find_user(&self, appid: &str, username: &str) -> Result<Option<(Uid, String)>> {
        self.with(|c| {
            let Some(uid) = redis::cmd("GET")
                .arg(keys::username(appid, username))
                .query::<Option<Uid>>(c)?
            else {
                return Ok(None);
            };
            let pass: Option<String> = redis::cmd("HGET")
                .arg(keys::user(appid, uid))
                .arg("pass")
                .query(c)?;
            Ok(pass.map(|p| (uid, p)))
        })
    }

    fn user_exists(&self, appid: &str, uid: Uid) -> Result<bool> {
        self.with(|c| redis::cmd("EXISTS").arg(keys::user(appid, uid)).query(c))
    }

    /// Checks the members, counts the group against its owner's quota, then
    /// writes it. A failure after the count leaves the owner one group
    /// short of the quota: never over it.
    fn create_group(
        &self,
        appid: &str,
        owner: Uid,
        gname: &str,
        members: &[Uid],
        max_owned: usize,
    ) -> Result<Gid> {
        if let Some(uid) = self.first_missing(appid, members)? {
            return Err(StoreError::NoSuchUser(uid));
        }
        let owned: i64 = self.with(|c| {
            self.own_group
                .key(keys::user(appid, owner))
                .arg(max_owned)
                .invoke(c)
        })?;
        match owned {
            -1 => return Err(StoreError::NoSuchUser(owner)),
            -2 => return Err(StoreError::TooManyGroups(max_owned)),
            _ => {}
        }
        let list = members
            .iter()
            .map(|u| u.to_string())
            .collect::<Vec<_>>()
            .join(",");
        self.with(|c| {
            let gid: Gid = redis::cmd("INCR").arg(keys::gid_counter(appid)).query(c)?;
            redis::cmd("HSET")
                .arg(keys::group(appid, gid))
                .arg(&[
                    ("owner", owner.to_string().as_str()),
                    ("name", gname),
                    ("members", &list),
                ])
                .exec(c)?;
            Ok(gid)
        })
    }

    fn group_members(&self, appid: &str, gid: Gid) -> Result<Option<Vec<Uid>>> {
        if let Some(members) = self.groups.get(appid, gid) {
            return Ok(Some(members.to_vec()));
        }
        let list: Option<String> = self.with(|c| {
            redis::cmd("HGET")
                .arg(keys::group(appid, gid))
                .arg("members")
                .query(c)
        })?;
        let Some(list) = list else { return Ok(None) };
        let members = list
            .split(',')
            .map(|u| u.parse())
            .collect::<std::result::Result<Vec<Uid>, _>>()
            .map_err(|_| {
                StoreError::Unavailable(format!("group {gid} has a corrupt member list"))
            })?;
        self.groups.put(appid, gid, Arc::from(members.as_slice()));
        Ok(Some(members))
    }

    /// Lists the token under its user (which checks the user exists), then
    /// stores it, then deletes (and announces) what the quota drops.
    fn put_token(&self, selector: &str, info: &TokenInfo, keep: usize) -> Result<Vec<String>> {
        let listed: redis::Value = self.with(|c| {
            self.tokens_list
                .key(keys::user(&info.appid, info.uid))
                .key(keys::tokens(&info.appid, info.uid))
                .arg(selector)
                .arg(info.expires_at)
                .arg(keep)
                .invoke(c)
        })?;
        let revoked: Vec<String> = match listed {
            redis::Value::Int(-1) => return Err(StoreError::NoSuchUser(info.uid)),
            v => redis::from_redis_value(v).map_err(|e| StoreError::Unavailable(e.to_string()))?,
        };
        self.with(|c| {
            let mut p = redis::pipe();
            write_token(&mut p, selector, info);
            p.exec(c)
        })?;
        for s in &revoked {
            self.delete_token(&info.appid, info.uid, s)?;
        }
        Ok(revoked)
    }

    /// One round trip for the whole batch: each token's hash, and its
    /// entry in its user's token list (the TOKENS script; nothing to
    /// revoke for a user without tokens).
    fn put_new_tokens(&self, tokens: &[(String, TokenInfo)]) -> Result<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let mut p = redis::pipe();
            for (selector, info) in tokens {
                write_token(&mut p, selector, info);
                p.cmd("EVALSHA")
                    .arg(self.tokens_list.get_hash())
                    .arg(2)
                    .arg(keys::user(&info.appid, info.uid))
                    .arg(keys::tokens(&info.appid, info.uid))
                    .arg(selector)
                    .arg(info.expires_at)
                    .arg(0)
                    .ignore();
            }
            pipeline_with_script(c, &self.tokens_list, &p).map(drop)
        })
    }

    fn get_token(&self, selector: &str) -> Result<Option<TokenInfo>> {
        if let Some(info) = self.tokens.get(selector) {
            return Ok(Some(info));
        }
        let epoch = self.tokens.epoch();
        let fields: Vec<Option<String>> = self.with(|c| {
            redis::cmd("HMGET")
                .arg(keys::token(selector))
                .arg(&["v", "a", "u", "e"])
                .query(c)
        })?;
        let [Some(verifier), Some(appid), Some(uid), Some(expires_at)] =
            <[Option<String>; 4]>::try_from(fields).unwrap_or_default()
        else {
            return Ok(None);
        };
        let (Ok(uid), Ok(expires_at)) = (uid.parse(), expires_at.parse()) else {
            return Ok(None);
        };
        let info = TokenInfo {
            verifier,
            appid,
            uid,
            expires_at,
        };
        self.tokens.put(selector, &info, epoch);
        Ok(Some(info))
    }

    /// Answered from this process's token cache only.
    fn check_token_now(
        &self,
        selector: &str,
        check: &mut dyn FnMut(TokenRef<'_>) -> bool,
    ) -> Option<Result<bool>> {
        self.tokens.check(selector, check).map(Ok)
    }

    /// Deletes the token, then tells every process (this one at once) to
    /// drop it from its token cache.
    fn delete_token(&self, appid: &str, uid: Uid, selector: &str) -> Result<()> {
        let untoken = keys::untoken(appid, uid, selector);
        self.with(|c| {
            redis::pipe()
                .cmd("DEL")
                .arg(keys::token(selector))
                .ignore()
                .cmd("ZREM")
                .arg(keys::tokens(appid, uid))
                .arg(selector)
                .ignore()
                .cmd("PUBLISH")
                .arg(keys::UNTOKEN_CHANNEL)
                .arg(&untoken)
                .ignore()
                .exec(c)
        })?;
        self.tokens.forget(selector);
        Ok(())
    }

    fn append(&self, appid: &str, to: &[Uid], msg: &NewMessage) -> Result<Vec<MsgId>> {
        let ids = self.append_scripts(appid, to, msg, None)?;
        to.iter()
            .zip(ids)
            .map(|(&uid, id)| id.ok_or(StoreError::NoSuchUser(uid)))
            .collect()
    }

    /// On one Redis server (not a cluster) the common send is answered
    /// from a lane's thread.
    fn answers_later(&self) -> bool {
        !self.pool.is_cluster()
    }

    /// The common send (no `cmsgid`, up to [`APPEND_BATCH`] receivers, one
    /// Redis server) is queued on a lane and answered from there: the
    /// worker that asked goes on with other jobs while Redis works. Other
    /// sends run as [`Store::append`] and [`Store::append_once`] do.
    fn append_then(
        &self,
        appid: &str,
        to: &[Uid],
        msg: &NewMessage,
        once: Option<&Once>,
        then: Then,
    ) {
        if once.is_some() || to.is_empty() || to.len() > APPEND_BATCH || self.pool.is_cluster() {
            return then(crate::store::append_now(self, appid, to, msg, once));
        }
        let args = match AppendArgs::new(appid, msg, None, 0) {
            Ok(args) => args,
            Err(e) => return then(Err(e)),
        };
        let call: Vec<usize> = (0..to.len()).collect();
        let bytes = args.cmd(self, to, &call).get_packed_command();
        let answered = Answered {
            to: to.to_vec(),
            call,
            then,
        };
        let pool = self.pool.clone();
        let retry = bytes.clone();
        let first: pool::Reply = Box::new(move |replies| {
            if !is_noscript(&replies) {
                return answered.finish(replies);
            }
            // A Redis that does not know the script (fresh, restarted,
            // flushed): load it, then the same call, in one write.
            let mut bytes = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(scripts::APPEND)
                .get_packed_command();
            bytes.extend_from_slice(&retry);
            let again: pool::Reply = Box::new(move |replies| answered.finish(replies));
            if let Some(again) = pool.submit_then(bytes, 2, again) {
                again(Err(pool::closed("the Redis lanes changed")));
            }
        });
        if let Some(first) = self.pool.submit_then(bytes, 1, first) {
            first(Err(pool::closed("a Redis Cluster")));
        }
    }

    fn append_once(
        &self,
        appid: &str,
        to: &[Uid],
        msg: &NewMessage,
        once: &Once,
    ) -> Result<Vec<Option<MsgId>>> {
        self.append_scripts(appid, to, msg, Some(once))
    }

    fn page(&self, appid: &str, uid: Uid, from: MsgId, limit: Limit) -> Result<Page> {
        let (count, bytes) = page_limits(limit);
        let answer: redis::Value = self.with(|c| {
            self.page
                .key(keys::user(appid, uid))
                .key(keys::inbox(appid, uid))
                .key(keys::old_inbox(appid, uid))
                .arg(from)
                .arg(count)
                .arg(bytes)
                .invoke(c)
        })?;
        parse_page(uid, answer)
    }

    /// Writes this node's route of `uid` before reading the page, in one
    /// round trip: an append after the route is announced here, one before
    /// it is in the page.
    fn subscribe_page(&self, appid: &str, uid: Uid, from: MsgId, limit: Limit) -> Result<Page> {
        let (count, bytes) = page_limits(limit);
        let mut replies = self.with(|c| {
            let mut p = redis::pipe();
            self.write_route(&mut p, appid, uid, self.route_until());
            p.cmd("EVALSHA")
                .arg(self.page.get_hash())
                .arg(3)
                .arg(keys::user(appid, uid))
                .arg(keys::inbox(appid, uid))
                .arg(keys::old_inbox(appid, uid))
                .arg(from)
                .arg(count)
                .arg(bytes);
            pipeline_with_script(c, &self.page, &p)
        })?;
        let answer = replies
            .pop()
            .ok_or_else(|| StoreError::Unavailable("redis: no page answer".into()))?;
        parse_page(uid, answer)
    }

    fn acked(&self, appid: &str, uid: Uid) -> Result<MsgId> {
        let (exists, ack): (bool, Option<MsgId>) = self.with(|c| {
            redis::pipe()
                .cmd("EXISTS")
                .arg(keys::user(appid, uid))
                .cmd("HGET")
                .arg(keys::user(appid, uid))
                .arg("ack")
                .query(c)
        })?;
        if !exists {
            return Err(StoreError::NoSuchUser(uid));
        }
        Ok(ack.unwrap_or(0))
    }

    fn ack(&self, appid: &str, uid: Uid, endid: MsgId) -> Result<()> {
        let r: i64 = self.with(|c| {
            self.ack
                .key(keys::user(appid, uid))
                .key(keys::inbox(appid, uid))
                .key(keys::old_inbox(appid, uid))
                .arg(endid)
                .invoke(c)
        })?;
        if r < 0 {
            return Err(StoreError::NoSuchUser(uid));
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        // Redis owns durability (appendfsync); nothing is buffered here.
        Ok(())
    }

    fn announces(&self) -> bool {
        true
    }

    /// Empties the set the refresh fills (readers never see it half full:
    /// [`Store::presence_commit`] renames it over the old one).
    fn presence_begin(&self, node: &str) -> Result<()> {
        let tmp = keys::presence_next(node);
        self.with(|c| redis::cmd("DEL").arg(&tmp).exec(c))
    }

    fn presence_add(&self, node: &str, appid: &str, uids: &[Uid]) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        let mut sadd = redis::cmd("SADD");
        sadd.arg(keys::presence_next(node));
        for &uid in uids {
            sadd.arg(keys::presence_member(appid, uid));
        }
        self.with(|c| sadd.exec(c))
    }

    /// Puts the filled set in place, registers this process until `ttl`
    /// from now and drops processes whose registration ran out.
    fn presence_commit(&self, node: &str, added: usize, ttl: u64) -> Result<()> {
        let key = keys::presence(node);
        let now = unix_now();
        self.with(|c| {
            let mut p = redis::pipe();
            if added == 0 {
                p.cmd("DEL").arg(&key).ignore();
            } else {
                let tmp = keys::presence_next(node);
                p.cmd("EXPIRE").arg(&tmp).arg(ttl).ignore();
                p.cmd("RENAME").arg(&tmp).arg(&key).ignore();
            }
            p.cmd("ZADD")
                .arg(keys::NODES)
                .arg(now + ttl)
                .arg(node)
                .ignore();
            p.cmd("ZREMRANGEBYSCORE")
                .arg(keys::NODES)
                .arg("-inf")
                .arg(format!("({now}"))
                .ignore();
            p.exec(c)
        })
    }

    fn online_elsewhere(&self, node: &str, appid: &str, uids: &[Uid]) -> Result<Vec<bool>> {
        if uids.is_empty() {
            return Ok(Vec::new());
        }
        let members: Vec<String> = uids
            .iter()
            .map(|&uid| keys::presence_member(appid, uid))
            .collect();
        if self.pool.is_cluster() {
            return self.online_in_cluster(node, &members);
        }
        let hits: Vec<i64> = self.with(|c| {
            let mut call = self.online.prepare_invoke();
            call.arg(unix_now())
                .arg(node)
                .arg(keys::NODES)
                .arg(keys::PRESENCE_PREFIX)
                .arg(keys::PRESENCE_SUFFIX)
                .arg(&members);
            call.invoke(c)
        })?;
        Ok(hits.into_iter().map(|h| h == 1).collect())
    }

    fn renew_routes(&self, appid: &str, uids: &[Uid]) -> Result<()> {
        if uids.is_empty() {
            return Ok(());
        }
        let until = self.route_until();
        self.with(|c| {
            let mut p = redis::pipe();
            for &uid in uids {
                self.write_route(&mut p, appid, uid, until);
            }
            p.exec(c)
        })
    }

    fn withdraw_presence(&self, node: &str) -> Result<()> {
        self.with(|c| {
            redis::pipe()
                .cmd("DEL")
                .arg(keys::presence(node))
                .ignore()
                .cmd("ZREM")
                .arg(keys::NODES)
                .arg(node)
                .ignore()
                .exec(c)
        })
    }

    fn ping(&self) -> Result<()> {
        self.with(|c| redis::cmd("PING").query::<String>(c))
            .map(drop)
    }
}

/// The PAGE script's count and byte caps for `limit`.
fn page_limits(limit: Limit) -> (usize, usize) {
    // Lua numbers are doubles: a cap past 2^53 means "no cap" anyway (the
    // script caps the count at the inbox's length).
    (limit.count.min(1 << 53), limit.bytes.min(1 << 53))
}

/// The PAGE script's answer for `uid`'s inbox.
fn parse_page(uid: Uid, answer: redis::Value) -> Result<Page> {
    let corrupt = || StoreError::Unavailable(format!("a corrupt page of the inbox of {uid}"));
    let (last, members, reset): (MsgId, Vec<Vec<u8>>, Option<Reset>) = match answer {
        redis::Value::Int(-1) => return Err(StoreError::NoSuchUser(uid)),
        redis::Value::Array(v) if v.len() == 4 => {
            let (last, members, epoch, found) =
                redis::from_redis_value(redis::Value::Array(v)).map_err(|_| corrupt())?;
            (last, members, Some(Reset { epoch, found }))
        }
        v => {
            let (last, members) = redis::from_redis_value(v).map_err(|_| corrupt())?;
            (last, members, None)
        }
    };
    let msgs = members
        .iter()
        .map(|m| keys::decode_member(m).ok_or_else(corrupt))
        .collect::<Result<_>>()?;
    Ok(Page { msgs, last, reset })
}

/// Adds to `p` the commands that store a token: its hash, expiring with it.
fn write_token(p: &mut redis::Pipeline, selector: &str, info: &TokenInfo) {
    let key = keys::token(selector);
    p.cmd("HSET")
        .arg(&key)
        .arg(&[
            ("v", info.verifier.as_str()),
            ("a", info.appid.as_str()),
            ("u", info.uid.to_string().as_str()),
            ("e", info.expires_at.to_string().as_str()),
        ])
        .ignore();
    p.cmd("EXPIREAT").arg(&key).arg(info.expires_at).ignore();
}

/// Runs pipeline `p`, some of whose commands are EVALSHAs of `script`,
/// and answers each command's reply in order.
///
/// A Redis that does not know the script (fresh, restarted or flushed)
/// answers NOSCRIPT, and not necessarily to all of them: Redis serves a
/// long pipeline in pieces between other clients' commands, and another
/// connection may load the script in between. So only the commands that
/// answered NOSCRIPT are sent again once the script is loaded; sending the
/// whole pipeline again would run the others twice (a group message
/// appended twice to the members of its later batches).
pub fn pipeline_with_script(
    c: &mut dyn ConnectionLike,
    script: &Script,
    p: &redis::Pipeline,
) -> RedisResult<Vec<redis::Value>> {
    let cmds: Vec<&redis::Cmd> = p.cmd_iter().collect();
    let mut replies = send_all(c, &cmds)?;
    let missing: Vec<usize> = (0..replies.len())
        .filter(|&i| matches!(&replies[i], redis::Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript)))
        .collect();
    if !missing.is_empty() {
        script.prepare_invoke().load(c)?;
        let again: Vec<&redis::Cmd> = missing.iter().map(|&i| cmds[i]).collect();
        for (i, reply) in missing.into_iter().zip(send_all(c, &again)?) {
            replies[i] = reply;
        }
    }
    replies
        .into_iter()
        .map(|r| match r {
            redis::Value::ServerError(e) => Err(e.into()),
            v => Ok(v),
        })
        .collect()
}

/// Sends `cmds` in one write and reads one reply for each.
fn send_all(c: &mut dyn ConnectionLike, cmds: &[&redis::Cmd]) -> RedisResult<Vec<redis::Value>> {
    let mut bytes = Vec::new();
    for cmd in cmds {
        cmd.write_packed_command(&mut bytes);
    }
    c.req_packed_commands(&bytes, 0, cmds.len())
}
