//! A [`Store`] that times every call of the store it wraps and counts the
//! ones that failed because the store was unavailable.
//!
//! Every method of the trait is forwarded, those with a default body too
//! (a backend may override them): a method added to [`Store`] must be
//! added here, or the wrapper would run the default instead of the
//! backend's own.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Metrics;
use crate::store::{
    Append, Gid, Limit, Message, MsgId, NewMessage, Once, Outcomes, Page, Result, Store,
    StoreError, Then, TokenInfo, TokenRef, Uid,
};

/// Store operations, the `op` label of the store metrics ([`OPS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    CreateUser,
    CreateUsers,
    FindUser,
    UserExists,
    CreateGroup,
    GroupMembers,
    PutToken,
    PutNewTokens,
    GetToken,
    DeleteToken,
    Append,
    AppendOnce,
    Page,
    Read,
    Acked,
    Ack,
    Flush,
    Ping,
    PresenceBegin,
    PresenceAdd,
    PresenceCommit,
    OnlineElsewhere,
    WithdrawPresence,
    RenewRoutes,
}

/// The label of each [`Op`], in its order.
pub const OPS: [&str; 24] = [
    "create_user",
    "create_users",
    "find_user",
    "user_exists",
    "create_group",
    "group_members",
    "put_token",
    "put_new_tokens",
    "get_token",
    "delete_token",
    "append",
    "append_once",
    "page",
    "read",
    "acked",
    "ack",
    "flush",
    "ping",
    "presence_begin",
    "presence_add",
    "presence_commit",
    "online_elsewhere",
    "withdraw_presence",
    "renew_routes",
];

/// The wrapper.
pub struct Metered {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Metered {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Metered {
        Metered { inner, metrics }
    }

    fn timed<T>(&self, op: Op, call: impl FnOnce(&dyn Store) -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let r = call(&*self.inner);
        record(&self.metrics, op, start, &r);
        r
    }
}

/// The op an append is counted as: with a `cmsgid` (`once`) or not.
fn append_op(once: bool) -> Op {
    match once {
        true => Op::AppendOnce,
        false => Op::Append,
    }
}

/// Counts a call that began at `start` and ended with `r`.
fn record<T>(metrics: &Metrics, op: Op, start: Instant, r: &Result<T>) {
    record_took(metrics, op, start.elapsed(), &r.as_ref());
}

/// Counts a call that took `took` and ended with `r`.
fn record_took<T>(
    metrics: &Metrics,
    op: Op,
    took: Duration,
    r: &std::result::Result<T, &StoreError>,
) {
    let failed = matches!(r, Err(StoreError::Unavailable(_)));
    metrics.store_call(op, took, failed);
    if let Err(StoreError::Unavailable(e)) = r {
        // Rate-limited: a store that went away is a line a second.
        error!("store: {} failed: {e}", OPS[op as usize]);
    }
}

impl Store for Metered {
    fn create_user(&self, appid: &str, username: &str, pass_hash: &str) -> Result<Uid> {
        self.timed(Op::CreateUser, |s| {
            s.create_user(appid, username, pass_hash)
        })
    }
    fn create_users(&self, appid: &str, names: &[String], pass_hash: &str) -> Result<Vec<Uid>> {
        self.timed(Op::CreateUsers, |s| s.create_users(appid, names, pass_hash))
    }
    fn find_user(&self, appid: &str, username: &str) -> Result<Option<(Uid, String)>> {
        self.timed(Op::FindUser, |s| s.find_user(appid, username))
    }
    fn user_exists(&self, appid: &str, uid: Uid) -> Result<bool> {
        self.timed(Op::UserExists, |s| s.user_exists(appid, uid))
    }
    fn create_group(
        &self,
        appid: &str,
        owner: Uid,
        gname: &str,
        members: &[Uid],
        max_owned: usize,
    ) -> Result<Gid> {
        self.timed(Op::CreateGroup, |s| {
            s.create_group(appid, owner, gname, members, max_owned)
        })
    }
    fn group_members(&self, appid: &str, gid: Gid) -> Result<Option<Vec<Uid>>> {
        self.timed(Op::GroupMembers, |s| s.group_members(appid, gid))
    }
    fn put_token(&self, selector: &str, info: &TokenInfo, keep: usize) -> Result<Vec<String>> {
        self.timed(Op::PutToken, |s| s.put_token(selector, info, keep))
    }
    fn put_new_tokens(&self, tokens: &[(String, TokenInfo)]) -> Result<()> {
        self.timed(Op::PutNewTokens, |s| s.put_new_tokens(tokens))
    }
    fn get_token(&self, selector: &str) -> Result<Option<TokenInfo>> {
        self.timed(Op::GetToken, |s| s.get_token(selector))
    }
    fn check_token(
        &self,
        selector: &str,
        check: &mut dyn FnMut(TokenRef<'_>) -> bool,
    ) -> Result<bool> {
        self.timed(Op::GetToken, |s| s.check_token(selector, check))
    }
    fn check_token_now(
        &self,
        selector: &str,
        check: &mut dyn FnMut(TokenRef<'_>) -> bool,
    ) -> Option<Result<bool>> {
        // Counted only when answered: one that would wait is counted by
        // the `check_token` the worker then makes.
        let start = Instant::now();
        let r = self.inner.check_token_now(selector, check)?;
        record(&self.metrics, Op::GetToken, start, &r);
        Some(r)
    }
    fn delete_token(&self, appid: &str, uid: Uid, selector: &str) -> Result<()> {
        self.timed(Op::DeleteToken, |s| s.delete_token(appid, uid, selector))
    }
    fn append(&self, appid: &str, to: &[Uid], msg: &NewMessage) -> Result<Vec<MsgId>> {
        self.timed(Op::Append, |s| s.append(appid, to, msg))
    }
    fn append_once(
        &self,
        appid: &str,
        to: &[Uid],
        msg: &NewMessage,
        once: &Once,
    ) -> Result<Vec<Option<MsgId>>> {
        self.timed(Op::AppendOnce, |s| s.append_once(appid, to, msg, once))
    }
    fn waits_on_io(&self) -> bool {
        self.inner.waits_on_io()
    }
    /// Each send is counted as a call that took the whole group's time.
    fn append_group(&self, group: &[Append<'_>], out: &mut Outcomes) {
        let start = Instant::now();
        let first = out.len();
        self.inner.append_group(group, out);
        let took = start.elapsed();
        for (i, a) in group.iter().enumerate() {
            if let Some(r) = out.get(first + i) {
                record_took(&self.metrics, append_op(a.once.is_some()), took, &r);
            }
        }
    }
    fn answers_later(&self) -> bool {
        self.inner.answers_later()
    }
    fn append_then(
        &self,
        appid: &str,
        to: &[Uid],
        msg: &NewMessage,
        once: Option<&Once>,
        then: Then,
    ) {
        let op = append_op(once.is_some());
        let start = Instant::now();
        let metrics = self.metrics.clone();
        let timed: Then = Box::new(move |r| {
            record(&metrics, op, start, &r);
            then(r)
        });
        self.inner.append_then(appid, to, msg, once, timed)
    }
    fn page(&self, appid: &str, uid: Uid, from: MsgId, limit: Limit) -> Result<Page> {
        self.timed(Op::Page, |s| s.page(appid, uid, from, limit))
    }
    fn subscribe_page(&self, appid: &str, uid: Uid, from: MsgId, limit: Limit) -> Result<Page> {
        self.timed(Op::Page, |s| s.subscribe_page(appid, uid, from, limit))
    }
    fn read(&self, appid: &str, uid: Uid, from: MsgId, limit: usize) -> Result<Vec<Message>> {
        self.timed(Op::Read, |s| s.read(appid, uid, from, limit))
    }
    fn acked(&self, appid: &str, uid: Uid) -> Result<MsgId> {
        self.timed(Op::Acked, |s| s.acked(appid, uid))
    }
    fn ack(&self, appid: &str, uid: Uid, endid: MsgId) -> Result<()> {
        self.timed(Op::Ack, |s| s.ack(appid, uid, endid))
    }
    fn flush(&self) -> Result<()> {
        self.timed(Op::Flush, |s| s.flush())
    }
    fn ping(&self) -> Result<()> {
        self.timed(Op::Ping, |s| s.ping())
    }
    fn presence_begin(&self, node: &str) -> Result<()> {
        self.timed(Op::PresenceBegin, |s| s.presence_begin(node))
    }
    fn presence_add(&self, node: &str, appid: &str, uids: &[Uid]) -> Result<()> {
        self.timed(Op::PresenceAdd, |s| s.presence_add(node, appid, uids))
    }
    fn presence_commit(&self, node: &str, added: usize, ttl: u64) -> Result<()> {
        self.timed(Op::PresenceCommit, |s| s.presence_commit(node, added, ttl))
    }
    fn online_elsewhere(&self, node: &str, appid: &str, uids: &[Uid]) -> Result<Vec<bool>> {
        self.timed(Op::OnlineElsewhere, |s| {
            s.online_elsewhere(node, appid, uids)
        })
    }
    fn withdraw_presence(&self, node: &str) -> Result<()> {
        self.timed(Op::WithdrawPresence, |s| s.withdraw_presence(node))
    }
    fn renew_routes(&self, appid: &str, uids: &[Uid]) -> Result<()> {
        self.timed(Op::RenewRoutes, |s| s.renew_routes(appid, uids))
    }
    fn announces(&self) -> bool {
        self.inner.announces()
    }
}

// Every operation has its label.
const _: () = assert!(Op::RenewRoutes as usize + 1 == OPS.len());
