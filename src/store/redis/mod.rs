//! The Redis store: everything in Redis, so several haoshuo processes can
//! share one data set, and an operator runs it as they already run Redis.
//!
//! Worker threads call Redis synchronously through a small [`pool::Pool`]
//! (no async runtime). Multi-step changes of one user are Lua scripts
//! ([`scripts`]), keyed within one hash tag, so they are atomic and ready for
//! Redis Cluster. Every append is announced on a pub/sub channel; each
//! server process listens there ([`feed`]) and hands what it hears to its
//! router, so a message reaches a subscriber whichever node it is on. The key
//! layout is in docs/redis.md.
//!
//! Not atomic across users: a group message is appended member by member
//! (pipelined). If the server dies part way, some members have it and the
//! others do not; each member's inbox stays contiguous.

pub mod feed;
mod keys;
mod pool;
mod scripts;
mod tokens;

use std::time::Duration;

use redis::{ConnectionLike, RedisResult, Script};

use crate::store::{
    fingerprint, unix_now, Gid, Limit, MsgId, NewMessage, Once, Page, Result, Store, StoreError,
    TokenInfo, Uid,
};

pub use keys::DELIVER_CHANNEL;

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
}

pub struct RedisStore {
    pool: pool::Pool,
    tokens: tokens::TokenCache,
    inbox_cap: usize,
    append: Script,
    ack: Script,
    page: Script,
    sent: Script,
}

impl RedisStore {
    /// Connects once to check that Redis answers.
    pub fn open(opts: &Options) -> Result<RedisStore> {
        let store = RedisStore {
            pool: pool::Pool::new(&opts.url, opts.pool, opts.timeout)?,
            inbox_cap: opts.inbox_cap,
            tokens: tokens::TokenCache::new(opts.token_cache),
            append: Script::new(scripts::APPEND),
            ack: Script::new(scripts::ACK),
            page: Script::new(scripts::PAGE),
            sent: Script::new(scripts::SENT),
        };
        store.pool.with(|c| redis::cmd("PING").query::<String>(c))?;
        Ok(store)
    }

    /// A connection for the pub/sub feed, with the store's timeouts.
    pub(crate) fn pool(&self) -> &pool::Pool {
        &self.pool
    }

    fn with<T>(&self, f: impl FnOnce(&mut dyn ConnectionLike) -> RedisResult<T>) -> Result<T> {
        self.pool.with(f)
    }

    /// The token cache, for the feed to drop logged-out tokens from.
    pub(crate) fn tokens(&self) -> &tokens::TokenCache {
        &self.tokens
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

    /// Runs the append script for every receiver in one pipeline; `None`
    /// for a receiver that already had this `cmsgid`. An unknown receiver
    /// is `NoSuchUser`, and nothing is written then: the scripts of a
    /// pipeline run one by one, each writing its own receiver, so several
    /// receivers are checked first (users are never deleted); a single
    /// receiver's script checks by itself, and its `cmsgid` claim is let go.
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
        if to.len() > 1 {
            if let Some(uid) = self.first_missing(appid, to)? {
                return Err(StoreError::NoSuchUser(uid));
            }
        }
        let stored = serde_json::to_string(&keys::Stored::of(msg))
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let ttl = once.map_or(0, |o| o.until.saturating_sub(unix_now()).max(1));
        let mut claimed = None;
        if let Some(o) = once {
            // The cmsgid is the sender's: claim it for this message first
            // (a retry of the same message goes on, and completes whatever
            // receivers a failed first try left out).
            let seen: i64 = self.with(|c| {
                self.sent
                    .key(keys::sent(appid, msg.fromid, o.cmsgid))
                    .arg(fingerprint(msg))
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
        let ids: Vec<i64> = self.with(|c| {
            let mut p = redis::pipe();
            for &uid in to {
                let cmd = p
                    .cmd("EVALSHA")
                    .arg(self.append.get_hash())
                    .arg(if once.is_some() { 3 } else { 2 })
                    .arg(keys::user(appid, uid))
                    .arg(keys::inbox(appid, uid));
                if let Some(o) = once {
                    cmd.arg(keys::once(appid, uid, msg.fromid, o.cmsgid));
                }
                cmd.arg(&stored)
                    .arg(keys::DELIVER_CHANNEL)
                    .arg(keys::announce_prefix(appid, uid, &stored))
                    .arg(ttl)
                    .arg(self.inbox_cap);
            }
            with_script(c, &self.append, |c| p.query(c))
        })?;
        let ids = to
            .iter()
            .zip(ids)
            .map(|(&uid, id)| match id {
                -2 => Ok(None),
                id => u64::try_from(id)
                    .map(Some)
                    .map_err(|_| StoreError::NoSuchUser(uid)),
            })
            .collect();
        if let (Err(StoreError::NoSuchUser(_)), Some(sent)) = (&ids, claimed) {
            // Nothing was sent, so the cmsgid names nothing yet.
            self.with(|c| redis::cmd("DEL").arg(sent).exec(c))?;
        }
        ids
    }
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

    fn create_group(&self, appid: &str, owner: Uid, gname: &str, members: &[Uid]) -> Result<Gid> {
        if let Some(uid) = self.first_missing(appid, members)? {
            return Err(StoreError::NoSuchUser(uid));
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
        Ok(Some(members))
    }

    fn put_token(&self, selector: &str, info: &TokenInfo) -> Result<()> {
        let key = keys::token(selector);
        self.with(|c| {
            redis::pipe()
                .cmd("HSET")
                .arg(&key)
                .arg(&[
                    ("v", info.verifier.as_str()),
                    ("a", info.appid.as_str()),
                    ("u", info.uid.to_string().as_str()),
                    ("e", info.expires_at.to_string().as_str()),
                ])
                .ignore()
                .cmd("EXPIREAT")
                .arg(&key)
                .arg(info.expires_at)
                .ignore()
                .exec(c)
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

    /// Deletes the token, then tells every process (this one at once) to
    /// drop it from its token cache.
    fn delete_token(&self, appid: &str, uid: Uid, selector: &str) -> Result<()> {
        let untoken = keys::untoken(appid, uid, selector);
        self.with(|c| {
            redis::pipe()
                .cmd("DEL")
                .arg(keys::token(selector))
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
        // Lua numbers are doubles: a cap past 2^53 means "no cap" anyway.
        let bytes = limit.bytes.min(1 << 53);
        // ZRANGEBYSCORE's LIMIT takes a signed 64-bit count.
        let count = limit.count.min(i64::MAX as usize);
        let answer: redis::Value = self.with(|c| {
            self.page
                .key(keys::user(appid, uid))
                .key(keys::inbox(appid, uid))
                .arg(from)
                .arg(count)
                .arg(bytes)
                .invoke(c)
        })?;
        let corrupt = || StoreError::Unavailable(format!("a corrupt page of the inbox of {uid}"));
        let (last, members): (MsgId, Vec<Vec<u8>>) = match answer {
            redis::Value::Int(-1) => return Err(StoreError::NoSuchUser(uid)),
            v => redis::from_redis_value(v).map_err(|_| corrupt())?,
        };
        let msgs = members
            .iter()
            .map(|m| keys::decode_member(m).ok_or_else(corrupt))
            .collect::<Result<_>>()?;
        Ok(Page { msgs, last })
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
}

/// Runs a pipeline of EVALSHAs of `script`, loading the script and
/// running it again if Redis does not know it (after a restart). A
/// NOSCRIPT answer means none of the pipeline's scripts ran.
fn with_script<T>(
    c: &mut dyn ConnectionLike,
    script: &Script,
    run: impl Fn(&mut dyn ConnectionLike) -> RedisResult<T>,
) -> RedisResult<T> {
    match run(c) {
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.prepare_invoke().load(c)?;
            run(c)
        }
        other => other,
    }
}
