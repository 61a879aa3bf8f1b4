//! The endpoints of API.md, one function each.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::mem;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use crate::api::codec::{self, Fields};
use crate::api::error::ApiError;
use crate::api::limits::{HashGate, HashPermit, RateLimit};
use crate::api::Request;
use crate::auth;
use crate::bus::{Reply, Sub, SubKey, Subscribed};
use crate::delivery::frame;
use crate::delivery::wire::Kind;
use crate::http::buffer;
use crate::http::cors::{self, Cors};
use crate::http::query;
use crate::http::request::{header_value, Head, Method};
use crate::http::response::{head_only, write_response, write_response_head, CONTENT_JSON};
use crate::http::ws;
use crate::metrics::{self, Metrics};
use crate::router::Router;
use crate::store::{
    leading_run, unix_now, Append, Limit, MsgId, NewMessage, Once, Outcomes, Page, Store,
    StoreError, Then, TokenInfo, TokenRef, Uid, DATATYPE_GROUP, DATATYPE_SINGLE, MAX_MSGID,
};

/// Longest appid accepted, in bytes: it is a key prefix, not a document.
const MAX_APPID: usize = 64;
/// Longest username accepted, in bytes.
const MAX_USERNAME: usize = 128;
/// Longest password accepted, in bytes: argon2 hashes any length, but a
/// megabyte "password" is a way to burn our CPU, not a secret.
const MAX_PASS: usize = 1024;
/// Longest group name accepted, in bytes.
const MAX_GNAME: usize = 256;
/// Longest `cmsgid` accepted, in bytes: a client's id for a send (a UUID
/// is 36), kept for the window in every receiver's store.
const MAX_CMSGID: usize = 128;

/// The body of an endpoint's answer: built, or a constant.
type Answer = Cow<'static, [u8]>;

/// What `/p`, `/gp` and `/ack` answer.
const OK: &[u8] = br#"{"type":"ok"}"#;

/// A rate-limit key `{appid's length}:{appid}{uid}` fits in this many
/// bytes: 2 digits, 1, [`MAX_APPID`], 20 digits.
const SENDER_KEY: usize = 2 + 1 + MAX_APPID + 20;

/// Most receivers whose list a worker keeps for the next send (16 bytes
/// each): a bigger group's send builds its own.
const KEEP_RECEIVERS: usize = 4096;

thread_local! {
    /// The receivers of this thread's sends, with their msgids: one list,
    /// reused.
    static RECEIVERS: Cell<Vec<(Uid, MsgId)>> = const { Cell::new(Vec::new()) };
}

/// The msgids a send stored, one for each receiver (with a `cmsgid`,
/// `None` where a retry stored nothing).
enum Ids<'a> {
    Each(&'a [MsgId]),
    Once(&'a [Option<MsgId>]),
}

/// Most users one `/online` asks about: one Redis round trip carries them.
const MAX_ONLINE_QUERY: usize = 1000;

/// Most users one `/admin/users` call creates: its answer stays around a
/// megabyte, and a bigger batch is simply several calls.
const MAX_ADMIN_BATCH: u64 = 10_000;

/// Settings of the API that come from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    /// Most messages in one frame, poll answer or pull answer.
    pub page_size: usize,
    /// Most bytes of messages in one of them (one larger message goes alone).
    pub page_bytes: usize,
    /// Seconds a login token stays valid.
    pub token_ttl: u64,
    /// What the admin listener requires in `X-Admin-Key`, if anything.
    pub admin_key: Option<String>,
    /// Seconds a send's `cmsgid` is remembered, so a retry stores nothing.
    pub cmsgid_window: u64,
    /// Most password hashes computed at once (`/re`, `/login`).
    pub hash_concurrency: usize,
    /// `/re` and `/login` calls a minute per client address (0: no limit).
    pub auth_per_ip: u32,
    /// `/login` calls a minute per (appid, username) (0: no limit).
    pub login_per_user: u32,
    /// Messages a second one sender may send, ten seconds' worth at once
    /// (0: no limit).
    pub send_rate: u32,
    /// Most members of one group: every group message is written once per
    /// member.
    pub max_group_members: usize,
    /// Most groups one user may create (0: no limit).
    pub max_groups_per_user: usize,
    /// Most tokens one user holds; a login beyond it revokes the oldest (0:
    /// no limit).
    pub max_tokens_per_user: usize,
    /// Web origins whose pages may call the API (CORS); `*` for any.
    pub allow_origin: Vec<String>,
    /// Serve the demo chat page at `/demo` (`--demo`).
    pub demo: bool,
    /// This process's presence id (see `crate::presence`).
    pub node: String,
    /// Proxies whose `X-Forwarded-For` names the client in the access log.
    pub trust_proxy: Vec<std::net::IpAddr>,
}

impl Options {
    /// Pages of 100 messages and 256 KiB, hour-long tokens and `cmsgid`s,
    /// one hash at a time, groups of up to 100, and no other limit: an API
    /// built outside the server (tests, benchmarks) sets what it needs on
    /// top of this.
    pub fn unlimited(node: &str) -> Options {
        Options {
            page_size: 100,
            page_bytes: 256 * 1024,
            token_ttl: 3600,
            admin_key: None,
            cmsgid_window: 3600,
            hash_concurrency: 1,
            auth_per_ip: 0,
            login_per_user: 0,
            send_rate: 0,
            max_group_members: 100,
            max_groups_per_user: 0,
            max_tokens_per_user: 0,
            allow_origin: Vec::new(),
            demo: false,
            node: node.into(),
            trust_proxy: Vec::new(),
        }
    }
}

pub struct Api {
    store: Arc<dyn Store>,
    /// What the store says, once, of whether its calls may wait on I/O
    /// ([`Store::waits_on_io`]) and whether it answers a send later
    /// ([`Store::answers_later`]): asked of every request, never changing.
    waits_on_io: bool,
    answers_later: bool,
    router: Arc<Router>,
    limits: Options,
    /// A real argon2id hash to verify against when the username is unknown
    /// (or has no password), so a failed login takes as long whether or not
    /// the user exists.
    dummy_hash: String,
    hashing: HashGate,
    per_ip: RateLimit,
    per_user: RateLimit,
    per_sender: RateLimit,
    cors: Cors,
    metrics: Arc<Metrics>,
}

/// Endpoints and the one method each takes.
enum Endpoint {
    Re,
    Gre,
    Login,
    P,
    Gp,
    Pull,
    Ack,
    Logout,
    Online,
    Stream,
    Poll,
    Sse,
    Ws,
    Demo,
    AdminUsers,
    Healthz,
    Readyz,
    Metrics,
}

/// The `endpoint` label of request metrics, in [`Endpoint`]'s order, then
/// `other` (an unknown path, or a request refused before it was routed).
pub const ENDPOINTS: [&str; 19] = [
    "/re",
    "/gre",
    "/login",
    "/p",
    "/gp",
    "/pull",
    "/ack",
    "/logout",
    "/online",
    "/cget/stream",
    "/cget/poll",
    "/cget/sse",
    "/cget/ws",
    "/demo",
    "/admin/users",
    "/healthz",
    "/readyz",
    "/metrics",
    "other",
];
const _: () = assert!(Endpoint::Metrics as usize + 2 == ENDPOINTS.len());

/// Which of [`ENDPOINTS`] a request for `path` counts under.
pub fn endpoint_index(path: &[u8], admin: bool) -> usize {
    Endpoint::parse(path, admin).map_or(ENDPOINTS.len() - 1, |(e, _)| e as usize)
}

impl Endpoint {
    /// The endpoint at `path`; the admin listener serves only its own.
    fn parse(path: &[u8], admin: bool) -> Option<(Endpoint, Method)> {
        if admin {
            return match path {
                b"/admin/users" => Some((Endpoint::AdminUsers, Method::Post)),
                b"/healthz" => Some((Endpoint::Healthz, Method::Get)),
                b"/readyz" => Some((Endpoint::Readyz, Method::Get)),
                b"/metrics" => Some((Endpoint::Metrics, Method::Get)),
                _ => None,
            };
        }
        Some(match path {
            b"/re" => (Endpoint::Re, Method::Post),
            b"/gre" => (Endpoint::Gre, Method::Post),
            b"/login" => (Endpoint::Login, Method::Post),
            b"/p" => (Endpoint::P, Method::Post),
            b"/gp" => (Endpoint::Gp, Method::Post),
            b"/pull" => (Endpoint::Pull, Method::Post),
            b"/ack" => (Endpoint::Ack, Method::Post),
            b"/logout" => (Endpoint::Logout, Method::Post),
            b"/online" => (Endpoint::Online, Method::Post),
            b"/cget/stream" => (Endpoint::Stream, Method::Get),
            b"/cget/poll" => (Endpoint::Poll, Method::Get),
            b"/cget/sse" => (Endpoint::Sse, Method::Get),
            b"/cget/ws" => (Endpoint::Ws, Method::Get),
            b"/demo" => (Endpoint::Demo, Method::Get),
            _ => return None,
        })
    }
}

impl Endpoint {
    /// Whether a call is quick on a store that never waits on I/O: no
    /// password to hash (`/re`, `/login`), nothing in proportion to a
    /// whole app (`/gre`'s members, `/admin/users`, a `/metrics` scrape).
    fn is_quick(&self) -> bool {
        use Endpoint::*;
        matches!(
            self,
            P | Gp | Pull | Ack | Logout | Online | Stream | Poll | Sse | Ws | Healthz | Readyz
        )
    }
}

impl Api {
    pub fn new(store: Arc<dyn Store>, router: Arc<Router>, limits: Options) -> Api {
        let dummy_hash = auth::hash_password("haoshuo: no such user")
            .expect("the OS random source works at start-up");
        Api {
            waits_on_io: store.waits_on_io(),
            answers_later: store.answers_later(),
            store,
            router,
            hashing: HashGate::new(limits.hash_concurrency),
            per_ip: RateLimit::per_minute(limits.auth_per_ip),
            per_user: RateLimit::per_minute(limits.login_per_user),
            per_sender: RateLimit::per_second(
                limits.send_rate,
                limits.send_rate.saturating_mul(10),
            ),
            cors: Cors::new(&limits.allow_origin),
            limits,
            dummy_hash,
            metrics: Arc::default(),
        }
    }

    /// Serves `metrics` at `/metrics` (without, that answers nothing
    /// counted).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Api {
        self.metrics = metrics;
        self
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The client of a request for the access log: its peer, or the
    /// address a trusted proxy's `X-Forwarded-For` names.
    pub fn client(&self, req: &Request) -> Option<std::net::IpAddr> {
        let peer = req.peer?;
        if self.limits.trust_proxy.is_empty() {
            return Some(peer);
        }
        let xff = header_value(&req.raw[..req.head.head_len], "x-forwarded-for");
        Some(crate::log::client_addr(peer, xff, &self.limits.trust_proxy))
    }

    /// What the workers count requests into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether the reactor that read a request for `path` runs it itself
    /// instead of handing it to a worker: a quick call ([`Endpoint`]) on a
    /// store whose calls never wait on I/O ([`Store::waits_on_io`]). Such
    /// a call costs a few microseconds, less than the two crossings
    /// between threads (and the wake-ups) a worker would add to it.
    ///
    /// On a store that may wait, a `/p` runs there too when the store
    /// answers the send later (Redis, from a lane): the reactor queues it
    /// on the lane itself. One that would wait (its token not cached, a
    /// `cmsgid` to check) is given back before anything is done
    /// ([`Handled::WouldWait`]), for a worker.
    pub fn runs_inline(&self, path: &[u8], admin: bool) -> bool {
        let Some((endpoint, _)) = Endpoint::parse(path, admin) else {
            return false;
        };
        match self.waits_on_io {
            false => endpoint.is_quick(),
            true => matches!(endpoint, Endpoint::P) && self.answers_later,
        }
    }

    /// Whether a call may wait on I/O in the store ([`Store::waits_on_io`]).
    pub fn waits_on_io(&self) -> bool {
        self.waits_on_io
    }

    /// Commits the sends `held` holds as one group ([`Store::append_group`]),
    /// hands each to the router, and gives `answer` each one's answer, in
    /// the order they were held.
    pub fn commit_held(&self, held: &Held, answer: &mut dyn FnMut(Reply)) {
        // Out of the cell while the store and the router run; put back
        // after, for its buffers' room.
        let mut turn = held.turn.take();
        let HeldTurn {
            sends,
            text,
            to,
            group,
            outcomes,
        } = &mut turn;
        let mut appends = recycle(mem::take(group));
        appends.extend(sends.iter().map(|s| s.append(text, to)));
        outcomes.clear();
        // A bug in the store must not take the reactor down, nor leave the
        // senders waiting: each one it gave no outcome is answered as failed.
        if catch_unwind(AssertUnwindSafe(|| {
            self.store.append_group(&appends, outcomes)
        }))
        .is_err()
        {
            error!("a group of {} sends panicked in the store", appends.len());
        }
        *group = recycle(appends);
        for (i, send) in sends.drain(..).enumerate() {
            let body = match outcomes.get(i) {
                Some(Ok(ids)) => {
                    if !self.store.announces() {
                        let to = &to[send.to.clone()];
                        let appid = &text[send.appid.clone()];
                        publish(&self.router, appid, to, Ids::Once(ids), &send.msg);
                    }
                    Ok(Cow::Borrowed(OK))
                }
                Some(Err(e)) => Err(ApiError::from(e.clone())),
                None => Err(ApiError::from(StoreError::Unavailable(
                    "store failed".into(),
                ))),
            };
            answer(send.shape.reply(body));
        }
        turn.clear();
        let mut kept = held.turn.borrow_mut();
        if kept.sends.is_empty() {
            *kept = turn;
        }
    }

    /// Runs one request for the connection `origin` names.
    pub fn handle(&self, origin: SubKey, req: &Request) -> Reply {
        match self.handle_then(origin, req, None) {
            Handled::Answer(reply) => reply,
            Handled::Later | Handled::WouldWait => {
                unreachable!("answered later, with no way to answer later")
            }
        }
    }

    /// Runs one request for the connection `origin` names: its answer, or
    /// [`Handled::Later`] if it goes to the [`Deliver`] that `later` makes,
    /// once the store has answered. That is a message the store takes on
    /// another thread ([`Store::answers_later`]: Redis, from its lane):
    /// the worker goes on with other jobs meanwhile. With
    /// [`Answering::Held`], a send waits there, on any store, to be
    /// committed with others by [`Api::commit_held`], which gives its
    /// answer. With [`Answering::Queued`], a call that would wait is not
    /// run: [`Handled::WouldWait`].
    pub fn handle_then(
        &self,
        origin: SubKey,
        req: &Request,
        later: Option<Answering<'_>>,
    ) -> Handled {
        let keep_alive = req.head.keep_alive;
        // A page on an allowed origin may read the answer (CORS); the admin
        // listener is for servers, never for pages.
        let cors = match !req.admin && self.cors.enabled() {
            true => self
                .cors
                .headers(header_value(&req.raw[..req.head.head_len], "origin")),
            false => None,
        };
        let reply = match self.route(origin, req, cors.as_deref(), later) {
            Ok(Some(reply)) => reply,
            Ok(None) => return Handled::Later,
            Err(ApiError::WouldWait) => return Handled::WouldWait,
            Err(e) => refused(&e, keep_alive),
        };
        Handled::Answer(finish(reply, req.head.method, cors.as_deref()))
    }

    /// A subscriber's next page of stored messages, from `sub.next` on;
    /// `None` if the store cannot be read now.
    pub fn page(&self, sub: &Sub) -> Option<Page> {
        let appid = self.router.app_name(sub.app);
        self.store
            .page(&appid, sub.uid, sub.next, self.limit())
            .ok()
    }

    /// How much one frame, poll answer or pull answer holds.
    fn limit(&self) -> Limit {
        Limit {
            count: self.limits.page_size,
            bytes: self.limits.page_bytes,
        }
    }

    /// The request's answer; `None` when it goes to `later` instead.
    fn route(
        &self,
        origin: SubKey,
        req: &Request,
        cors: Option<&[u8]>,
        later: Option<Answering<'_>>,
    ) -> Result<Option<Reply>, ApiError> {
        let path = req.head.path(&req.raw);
        let (endpoint, method) = Endpoint::parse(path, req.admin)
            .filter(|(e, _)| self.limits.demo || !matches!(e, Endpoint::Demo))
            .ok_or_else(|| ApiError::NotFound("no such path".into()))?;
        let keep_alive = req.head.keep_alive;
        let subscribes = matches!(endpoint, Endpoint::Stream | Endpoint::Poll | Endpoint::Sse);
        if let (Method::Options, Some(_)) = (req.head.method, cors) {
            // A preflight from an allowed origin; `handle` adds its lines.
            let methods = match method {
                Method::Get => "GET, HEAD",
                _ => "POST",
            };
            let bytes = cors::preflight(b"", methods, keep_alive);
            return Ok(Some(Reply::Http { bytes, keep_alive }));
        }
        match (req.head.method, method) {
            (Method::Head, Method::Get) if subscribes => {
                return Ok(Some(head_of(&endpoint, &req.head)))
            }
            // Answered as a GET; `handle` keeps the head alone.
            (Method::Head, Method::Get) => {}
            (sent, wanted) if sent != wanted => return Err(ApiError::MethodNotAllowed(wanted)),
            _ => {}
        }
        if let Endpoint::Ws = endpoint {
            // The opening handshake first: a request that is not one gets
            // a 400 naming what is wrong, before anything else is looked at.
            let accept = ws::check_handshake(
                &req.raw[..req.head.head_len],
                req.head.method == Method::Get,
                req.head.http10,
            )
            .map_err(ApiError::BadHandshake)?;
            let mut lines = cors.map(<[u8]>::to_vec).unwrap_or_default();
            lines.extend_from_slice(&ws::accept_line(&accept));
            let query = req.head.query(&req.raw);
            return self
                .subscribe(origin, query, Kind::Ws, keep_alive, None, Some(&lines))
                .map(Some);
        }
        if let Endpoint::Stream | Endpoint::Poll | Endpoint::Sse = endpoint {
            let query = req.head.query(&req.raw);
            let kind = subscription_kind(&endpoint, &req.head);
            // What EventSource sends when it reconnects: the last event's
            // id, a msgid; it wins over `seq`.
            let resume = match endpoint {
                Endpoint::Sse => last_event_id(req)?,
                _ => None,
            };
            return self
                .subscribe(origin, query, kind, keep_alive, resume, cors)
                .map(Some);
        }
        let endpoint = match endpoint {
            Endpoint::Demo => {
                let bytes = super::demo::response(keep_alive);
                return Ok(Some(Reply::Http { bytes, keep_alive }));
            }
            // Probes for orchestrators: no body, no key (they reveal
            // nothing but whether the process and its store serve).
            Endpoint::Healthz => return Ok(Some(ok_json(br#"{"status":"ok"}"#, keep_alive))),
            Endpoint::Readyz => {
                self.store.ping()?;
                return Ok(Some(ok_json(br#"{"status":"ready"}"#, keep_alive)));
            }
            // What /admin reveals (users, traffic): the same key.
            Endpoint::Metrics => {
                self.check_admin_key(req)?;
                let body = self.metrics.render(&self.router);
                let mut bytes = Vec::with_capacity(160 + body.len());
                write_response(
                    &mut bytes,
                    200,
                    metrics::CONTENT_TYPE,
                    body.as_bytes(),
                    keep_alive,
                );
                return Ok(Some(Reply::Http { bytes, keep_alive }));
            }
            _ => endpoint,
        };
        let later = later.map(|answering| Later {
            answering,
            keep_alive,
            cors,
        });
        let body = codec::with_fields(req.body(), req.head.body, |f| {
            self.endpoint(req, f, endpoint, later)
        })??;
        Ok(body.map(|body| ok_json(&body, keep_alive)))
    }

    /// Runs a POST endpoint on the body's fields; its answer's body, or
    /// `None` when the answer goes to `later`.
    fn endpoint(
        &self,
        req: &Request,
        f: &Fields,
        endpoint: Endpoint,
        later: Option<Later<'_>>,
    ) -> Result<Option<Answer>, ApiError> {
        Ok(Some(match endpoint {
            Endpoint::Re => self.re(req, f)?.into(),
            Endpoint::Gre => self.gre(f)?.into(),
            Endpoint::Login => self.login(req, f)?.into(),
            Endpoint::P => return self.chat(f, DATATYPE_SINGLE, req.at, later),
            Endpoint::Gp => return self.chat(f, DATATYPE_GROUP, req.at, later),
            Endpoint::Pull => self.pull(f)?.into(),
            Endpoint::Ack => self.ack(f)?,
            Endpoint::Logout => self.logout(f)?.into(),
            Endpoint::Online => self.online(f)?.into(),
            Endpoint::AdminUsers => self.admin_users(req, f)?.into(),
            Endpoint::Healthz | Endpoint::Readyz | Endpoint::Metrics | Endpoint::Demo => {
                unreachable!("answered above")
            }
            Endpoint::Stream | Endpoint::Poll | Endpoint::Sse | Endpoint::Ws => {
                unreachable!("answered above")
            }
        }))
    }

    fn re(&self, req: &Request, f: &Fields) -> Result<Vec<u8>, ApiError> {
        self.limit_peer(req)?;
        let appid = appid(f)?;
        let username = bounded(f, "username", MAX_USERNAME)?;
        let pass = bounded(f, "pass", MAX_PASS)?;
        // A taken name costs no hashing (create_user checks again).
        if self.store.find_user(&appid, &username)?.is_some() {
            return Err(ApiError::Conflict("username taken"));
        }
        let hash = {
            let _slot = self.hash_slot()?;
            auth::hash_password(&pass)?
        };
        let uid = self.store.create_user(&appid, &username, &hash)?;
        Ok(object(&[("uid", Num(uid)), ("username", Str(&username))]))
    }

    fn login(&self, req: &Request, f: &Fields) -> Result<Vec<u8>, ApiError> {
        self.limit_peer(req)?;
        let appid = appid(f)?;
        let username = bounded(f, "username", MAX_USERNAME)?;
        let pass = bounded(f, "pass", MAX_PASS)?;
        let who = format!("{}:{appid}{username}", appid.len());
        if let Err(wait) = self.per_user.take(&who, req.at) {
            return Err(too_many("too many logins for this user", wait));
        }
        let user = self.store.find_user(&appid, &username)?;
        // An unknown user, or one made without a password (admin), is
        // checked against the dummy hash: as slow as a real one.
        let (uid, hash) = match &user {
            Some((uid, hash)) if hash != auth::NO_PASSWORD => (Some(*uid), hash.as_str()),
            _ => (None, self.dummy_hash.as_str()),
        };
        let ok = {
            let _slot = self.hash_slot()?;
            auth::verify_password(&pass, hash)
        };
        let Some(uid) = uid.filter(|_| ok) else {
            return Err(ApiError::Unauthorized("wrong username or password"));
        };
        let token = self.issue_token(&appid, uid)?;
        Ok(object(&[("uid", Num(uid)), ("token", Str(&token))]))
    }

    /// Takes a token of the client address's rate limit.
    fn limit_peer(&self, req: &Request) -> Result<(), ApiError> {
        let Some(ip) = req.peer else { return Ok(()) };
        self.per_ip
            .take(&ip.to_string(), req.at)
            .map_err(|wait| too_many("too many requests from this address", wait))
    }

    /// A slot to hash a password in, or 429 at once when all are taken:
    /// no other endpoint ever waits behind password hashing.
    fn hash_slot(&self) -> Result<HashPermit<'_>, ApiError> {
        self.hashing
            .enter()
            .ok_or(ApiError::TooMany("password hashing is busy", 1))
    }

    /// Makes and stores a new token for `uid`; returns it as clients see it.
    fn issue_token(&self, appid: &str, uid: Uid) -> Result<String, ApiError> {
        let (selector, verifier) = auth::new_token()?;
        let token = format!("{selector}{verifier}");
        let info = TokenInfo {
            verifier,
            appid: appid.to_owned(),
            uid,
            expires_at: unix_now().saturating_add(self.limits.token_ttl),
        };
        let revoked = self
            .store
            .put_token(&selector, &info, self.limits.max_tokens_per_user)?;
        for old in &revoked {
            self.revoked(appid, uid, old);
        }
        Ok(token)
    }

    /// Ends this node's subscriptions held with the token `selector` of
    /// `uid`, when the store does not tell every node itself.
    fn revoked(&self, appid: &str, uid: Uid, selector: &str) {
        if !self.store.announces() {
            let app = self.router.app_key(appid);
            self.router.revoke(app, uid, auth::selector_tag(selector));
        }
    }

    fn gre(&self, f: &Fields) -> Result<Vec<u8>, ApiError> {
        let appid = appid(f)?;
        let owner = f.u64("ownerid")?;
        self.check_token(f, &appid, owner)?;
        let gname = bounded(f, "gname", MAX_GNAME)?;
        let mut members = vec![owner];
        let mut seen = HashSet::from([owner]);
        for uid in f.u64_list("uids")? {
            if seen.insert(uid) {
                members.push(uid);
            }
        }
        let max = self.limits.max_group_members;
        if members.len() > max {
            return Err(ApiError::BadRequest(
                format!("a group has at most {max} members").into(),
            ));
        }
        let gid = self.store.create_group(
            &appid,
            owner,
            &gname,
            &members,
            self.limits.max_groups_per_user,
        )?;
        Ok(object(&[
            ("uid", Num(owner)),
            ("gname", Str(&gname)),
            ("gid", Num(gid)),
        ]))
    }

    /// `/p` (`datatype` single) and `/gp` (group), read `at`: the body of
    /// the answer, or `None` when it goes to `later`.
    fn chat(
        &self,
        f: &Fields,
        datatype: u8,
        at: Instant,
        later: Option<Later<'_>>,
    ) -> Result<Option<Answer>, ApiError> {
        let queued = later.as_ref().is_some_and(Later::must_not_wait);
        // A send that would wait must say so before anything is done (the
        // send rate taken): checking a `cmsgid` is a round trip, and so is
        // any append on a store that does not answer it later.
        if queued
            && (!self.answers_later
                || datatype != DATATYPE_SINGLE
                || f.opt_str("cmsgid")?.is_some())
        {
            return Err(ApiError::WouldWait);
        }
        let (appid, msg) = self.message(f, datatype, !queued, at)?;
        if datatype == DATATYPE_SINGLE {
            return self.send(f, &appid, &[msg.toid], &msg, later);
        }
        let members = self
            .store
            .group_members(&appid, msg.toid)?
            .ok_or_else(|| ApiError::NotFound(format!("no such group {}", msg.toid).into()))?;
        if !members.contains(&msg.fromid) {
            return Err(ApiError::Forbidden("not a member of this group"));
        }
        self.send(f, &appid, &members, &msg, later)
    }

    /// The fields shared by `/p` and `/gp`, checked, and the send rate
    /// taken `at`. Unless it may `wait`, a token the store cannot check at
    /// once is [`ApiError::WouldWait`].
    fn message<'f>(
        &self,
        f: &'f Fields,
        datatype: u8,
        wait: bool,
        at: Instant,
    ) -> Result<(Cow<'f, str>, NewMessage), ApiError> {
        let appid = appid(f)?;
        let fromid = f.u64("fromid")?;
        match wait {
            true => self.check_token(f, &appid, fromid).map(drop)?,
            false => self.check_token_now(f, &appid, fromid)?,
        }
        let mut key = [0; SENDER_KEY];
        let sender = sender_key(&mut key, &appid, fromid);
        if let Err(wait) = self.per_sender.take(sender, at) {
            return Err(too_many("sending too fast", wait));
        }
        if let Some(d) = f.opt_u64("datatype")? {
            if d != u64::from(datatype) {
                return Err(ApiError::BadRequest(
                    format!("datatype must be {datatype} here").into(),
                ));
            }
        }
        let msg = NewMessage {
            fromid,
            toid: f.u64("toid")?,
            datatype,
            content: Arc::from(f.str("content")?.as_ref()),
        };
        Ok((appid, msg))
    }

    /// Commits `msg` to every receiver's inbox, then hands it to the router.
    /// With a `cmsgid` the send is idempotent: a retry within the window
    /// stores (and delivers) nothing new and answers `ok` again. With
    /// `later`, on a store that [answers later](Store::answers_later), the
    /// answer goes there and this returns `None` at once.
    fn send(
        &self,
        f: &Fields,
        appid: &str,
        to: &[Uid],
        msg: &NewMessage,
        later: Option<Later<'_>>,
    ) -> Result<Option<Answer>, ApiError> {
        let cmsgid = f.opt_str("cmsgid")?;
        if let Some(cmsgid) = &cmsgid {
            if cmsgid.is_empty() || cmsgid.len() > MAX_CMSGID {
                return Err(ApiError::BadRequest(
                    format!("'cmsgid' must be 1 to {MAX_CMSGID} bytes").into(),
                ));
            }
        }
        let once = cmsgid.as_deref().map(|cmsgid| Once {
            cmsgid,
            until: unix_now().saturating_add(self.limits.cmsgid_window),
        });
        let later = match later {
            Some(later) => match later.answering {
                Answering::Held(held) => {
                    let shape = later.shape();
                    held.turn.borrow_mut().hold(appid, to, msg, once, shape);
                    return Ok(None);
                }
                Answering::Deliver(deliver) | Answering::Queued(deliver) if self.answers_later => {
                    Some((deliver, later.shape()))
                }
                Answering::Queued(_) => return Err(ApiError::WouldWait),
                Answering::Deliver(_) => None,
            },
            None => None,
        };
        let Some((deliver, shape)) = later else {
            let (each, once_ids);
            let ids = match &once {
                Some(once) => {
                    once_ids = self.store.append_once(appid, to, msg, once)?;
                    Ids::Once(&once_ids)
                }
                None => {
                    each = self.store.append(appid, to, msg)?;
                    Ids::Each(&each)
                }
            };
            if !self.store.announces() {
                // Routed here only by a store that does not announce.
                publish(&self.router, appid, to, ids, msg);
            }
            return Ok(Some(Cow::Borrowed(OK)));
        };
        let deliver = deliver();
        let routed = (!self.store.announces()).then(|| {
            (
                self.router.clone(),
                appid.to_owned(),
                to.to_vec(),
                msg.clone(),
            )
        });
        let then: Then = Box::new(move |ids| {
            let body = ids.map_err(ApiError::from).map(|ids| {
                if let Some((router, appid, to, msg)) = &routed {
                    publish(router, appid, to, Ids::Once(&ids), msg);
                }
                Cow::Borrowed(OK)
            });
            deliver(shape.reply(body));
        });
        self.store.append_then(appid, to, msg, once.as_ref(), then);
        Ok(None)
    }

    fn pull(&self, f: &Fields) -> Result<Vec<u8>, ApiError> {
        let appid = appid(f)?;
        let uid = f.u64("uid")?;
        self.check_token(f, &appid, uid)?;
        let acked = self.store.acked(&appid, uid)?;
        let page = self.store.page(&appid, uid, acked + 1, self.limit())?;
        Ok(frame::pull_body(leading_run(&page.msgs), acked, uid))
    }

    fn ack(&self, f: &Fields) -> Result<Answer, ApiError> {
        let appid = appid(f)?;
        let uid = f.u64("uid")?;
        self.check_token(f, &appid, uid)?;
        self.store.ack(&appid, uid, f.u64("endid")?)?;
        Ok(Cow::Borrowed(OK))
    }

    fn logout(&self, f: &Fields) -> Result<Vec<u8>, ApiError> {
        let appid = appid(f)?;
        let uid = f.u64("uid")?;
        let token = self.check_token(f, &appid, uid)?;
        let selector = &token[..auth::SELECTOR_HEX];
        self.store.delete_token(&appid, uid, selector)?;
        self.revoked(&appid, uid, selector);
        Ok(object(&[("uid", Num(uid)), ("msg", Str("ok"))]))
    }

    /// `/online`: which of `uids` have a stream, SSE stream or held poll
    /// open (or had a poll answered within the heartbeat interval), on
    /// this process or any other live one; in the order asked.
    fn online(&self, f: &Fields) -> Result<Vec<u8>, ApiError> {
        let appid = appid(f)?;
        let uid = f.u64("uid")?;
        self.check_token(f, &appid, uid)?;
        let uids = f.u64_list("uids")?;
        if uids.len() > MAX_ONLINE_QUERY {
            return Err(ApiError::BadRequest(
                format!("'uids' holds at most {MAX_ONLINE_QUERY} users").into(),
            ));
        }
        let app = self.router.app_key(&appid);
        let now = Instant::now();
        let here: Vec<bool> = uids
            .iter()
            .map(|&u| self.router.is_online(app, u, now))
            .collect();
        let elsewhere = if here.iter().all(|&h| h) {
            vec![true; uids.len()]
        } else {
            self.store
                .online_elsewhere(&self.limits.node, &appid, &uids)?
        };
        let mut out = Vec::with_capacity(16 + uids.len() * 8);
        out.extend_from_slice(br#"{"uids":["#);
        let mut first = true;
        for (i, &u) in uids.iter().enumerate() {
            if here[i] || elsewhere.get(i).copied().unwrap_or(false) {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(itoa::Buffer::new().format(u).as_bytes());
            }
        }
        out.extend_from_slice(b"]}");
        Ok(out)
    }

    /// `/admin/users` (admin listener only): creates `count` users named
    /// `prefix0`, `prefix1`, ... without a password, and a token for each.
    /// For provisioning load tests and app back ends; like icomet's `/sign`.
    fn admin_users(&self, req: &Request, f: &Fields) -> Result<Vec<u8>, ApiError> {
        self.check_admin_key(req)?;
        let appid = appid(f)?;
        let prefix = f.opt_str("prefix")?.unwrap_or_default();
        let count = f.u64("count")?;
        if !(1..=MAX_ADMIN_BATCH).contains(&count) {
            return Err(ApiError::BadRequest(
                format!("'count' must be 1 to {MAX_ADMIN_BATCH}").into(),
            ));
        }
        let names: Vec<String> = (0..count).map(|i| format!("{prefix}{i}")).collect();
        if names.last().is_some_and(|n| n.len() > MAX_USERNAME) {
            return Err(ApiError::BadRequest("'prefix' is too long".into()));
        }
        // The store refuses the batch before creating any of it.
        let uids = self.store.create_users(&appid, &names, auth::NO_PASSWORD)?;
        let expires_at = unix_now().saturating_add(self.limits.token_ttl);
        let mut tokens = Vec::with_capacity(uids.len());
        let mut shown = Vec::with_capacity(uids.len());
        for &uid in &uids {
            let (selector, verifier) = auth::new_token()?;
            shown.push(format!("{selector}{verifier}"));
            let info = TokenInfo {
                verifier,
                appid: appid.to_string(),
                uid,
                expires_at,
            };
            tokens.push((selector, info));
        }
        self.store.put_new_tokens(&tokens)?;
        let mut out = Vec::with_capacity(names.len() * 100);
        out.extend_from_slice(br#"{"users":["#);
        for (i, ((name, uid), token)) in names.iter().zip(uids).zip(&shown).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&object(&[
                ("uid", Num(uid)),
                ("username", Str(name)),
                ("token", Str(token)),
            ]));
        }
        out.extend_from_slice(b"]}");
        Ok(out)
    }

    /// With `--admin-key`: the request must carry it in `X-Admin-Key`.
    fn check_admin_key(&self, req: &Request) -> Result<(), ApiError> {
        if let Some(key) = &self.limits.admin_key {
            let sent = header_value(&req.raw[..req.head.head_len], "x-admin-key").unwrap_or(b"");
            if !(sent.len() == key.len() && bool::from(sent.ct_eq(key.as_bytes()))) {
                return Err(ApiError::Unauthorized("admin key required"));
            }
        }
        Ok(())
    }

    /// `/cget/stream`, `/cget/poll`, `/cget/sse` and `/cget/ws`:
    /// authenticate from the query,
    /// subscribe, then read what is stored (subscribing first means nothing
    /// committed in between can be missed: it is either read or delivered).
    fn subscribe(
        &self,
        origin: SubKey,
        query_str: &[u8],
        kind: Kind,
        keep_alive: bool,
        resume_after: Option<MsgId>,
        head_lines: Option<&[u8]>,
    ) -> Result<Reply, ApiError> {
        let param = |name: &str| -> Result<Option<String>, ApiError> {
            query::field(query_str, name)
                .map_err(|_| ApiError::BadRequest(format!("bad escape in '{name}'").into()))
                .map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned()))
        };
        let cname = param("cname")?
            .ok_or_else(|| ApiError::BadRequest("missing query parameter 'cname'".into()))?;
        let uid: Uid = cname
            .parse()
            .map_err(|_| ApiError::BadRequest("'cname' must be a user id".into()))?;
        let seq = match param("seq")? {
            _ if resume_after.is_some() => resume_after.map_or(1, |id| id + 1),
            None => 1,
            Some(s) => s
                .parse::<MsgId>()
                .ok()
                .filter(|&s| s <= MAX_MSGID)
                .ok_or_else(|| ApiError::BadRequest("'seq' must be a message id".into()))?
                .max(1),
        };
        let token = param("token")?.unwrap_or_default();
        let refuse = |frame: &'static [u8]| match kind {
            Kind::Poll { keep_alive } => {
                let mut bytes = Vec::with_capacity(200);
                write_response(&mut bytes, 200, CONTENT_JSON, frame, keep_alive);
                Reply::Http { bytes, keep_alive }
            }
            stream => Reply::StreamRefused {
                frame,
                kind: stream,
                keep_alive,
                head_lines: head_lines.map(Box::from),
            },
        };
        let info = match self.token_owner(&token)? {
            Some(info) if info.uid == uid => info,
            _ => return Ok(refuse(frame::TOKEN_ERROR)),
        };
        let sub = Sub {
            app: self.router.app_key(&info.appid),
            uid,
            next: seq,
        };
        let tag = auth::selector_tag(&token[..auth::SELECTOR_HEX]);
        if self.router.subscribe(sub.app, uid, origin, tag).is_err() {
            return Ok(refuse(frame::TOO_MANY));
        }
        let page = match self
            .store
            .subscribe_page(&info.appid, uid, seq, self.limit())
        {
            Ok(page) => page,
            Err(e) => {
                self.router.unsubscribe(sub.app, uid, origin);
                return Err(e.into());
            }
        };
        Ok(Reply::Subscribed(Subscribed {
            sub,
            kind,
            page,
            expires_at: info.expires_at,
            head_lines: head_lines.map(Box::from),
        }))
    }

    /// Checks the request's `token` acts for `uid` of `appid`; returns it
    /// (its selector is `[..auth::SELECTOR_HEX]`).
    fn check_token<'f>(
        &self,
        f: &'f Fields,
        appid: &str,
        uid: Uid,
    ) -> Result<Cow<'f, str>, ApiError> {
        let token = f.str("token")?;
        let acts_for = match token_check(&token, appid, uid) {
            Some((selector, mut check)) => self.store.check_token(selector, &mut check)?,
            None => false,
        };
        match acts_for {
            true => Ok(token),
            false => Err(TOKEN_ERROR),
        }
    }

    /// [`Api::check_token`] where nothing may wait: a token the store
    /// cannot check at once is [`ApiError::WouldWait`].
    fn check_token_now(&self, f: &Fields, appid: &str, uid: Uid) -> Result<(), ApiError> {
        let token = f.str("token")?;
        let Some((selector, mut check)) = token_check(&token, appid, uid) else {
            return Err(TOKEN_ERROR);
        };
        match self.store.check_token_now(selector, &mut check) {
            Some(Ok(true)) => Ok(()),
            Some(Ok(false)) => Err(TOKEN_ERROR),
            Some(Err(e)) => Err(e.into()),
            None => Err(ApiError::WouldWait),
        }
    }

    /// The live token's owner, if the token is valid.
    fn token_owner(&self, token: &str) -> Result<Option<TokenInfo>, ApiError> {
        let Some((selector, verifier)) = auth::split_token(token) else {
            return Ok(None);
        };
        let now = unix_now();
        Ok(self
            .store
            .get_token(selector)?
            .filter(|info| live(info.view(), verifier, now)))
    }
}

/// What every authenticated call is refused with when its token is bad,
/// expired or someone else's.
const TOKEN_ERROR: ApiError = ApiError::Unauthorized("token error");

/// The selector of `token`, and the check that the token it names is this
/// one, live, and acts for `uid` of `appid`; `None` for what no login
/// hands out.
fn token_check<'a>(
    token: &'a str,
    appid: &'a str,
    uid: Uid,
) -> Option<(&'a str, impl FnMut(TokenRef<'_>) -> bool + 'a)> {
    let (selector, verifier) = auth::split_token(token)?;
    let now = unix_now();
    let check = move |info: TokenRef<'_>| {
        live(info, verifier, now) && info.appid == appid && info.uid == uid
    };
    Some((selector, check))
}

/// Whether `info` is a token sent with `verifier` (compared in constant
/// time) and not expired at `now`.
fn live(info: TokenRef<'_>, verifier: &str, now: u64) -> bool {
    auth::verifier_matches(verifier, info.verifier) && info.expires_at > now
}

/// Hands a stored message to the router for the receivers that got it,
/// in a list this thread keeps: a send allocates none.
fn publish(router: &Router, appid: &str, to: &[Uid], ids: Ids, msg: &NewMessage) {
    let mut receivers = RECEIVERS.with(Cell::take);
    receivers.clear();
    match ids {
        Ids::Each(ids) => receivers.extend(to.iter().copied().zip(ids.iter().copied())),
        Ids::Once(ids) => receivers.extend(
            to.iter()
                .zip(ids)
                .filter_map(|(&uid, &id)| Some((uid, id?))),
        ),
    }
    router.publish(router.app_key(appid), &receivers, msg);
    if receivers.capacity() <= KEEP_RECEIVERS {
        RECEIVERS.with(|r| r.set(receivers));
    }
}

/// What every answer gets last: a `HEAD` is answered with the head alone
/// (a body would be read as the start of the next response), and an
/// allowed origin's CORS lines are added.
fn finish(mut reply: Reply, method: Method, cors: Option<&[u8]>) -> Reply {
    if let (Method::Head, Reply::Http { bytes, .. }) = (method, &mut reply) {
        head_only(bytes);
    }
    if let (Some(lines), Reply::Http { bytes, .. }) = (cors, &mut reply) {
        if let Some(with) = cors::with_headers(bytes, lines) {
            *bytes = with;
        }
    }
    reply
}

/// Where a request's answer goes when it is ready after the handler
/// returned (see [`Api::handle_then`]).
pub type Deliver = Box<dyn FnOnce(Reply) + Send>;

/// How the caller of [`Api::handle_then`] takes an answer that comes
/// after it returned.
#[derive(Clone, Copy)]
pub enum Answering<'a> {
    /// A worker's: on a store that answers later, the answer goes to the
    /// [`Deliver`] this makes.
    Deliver(&'a dyn Fn() -> Deliver),
    /// A reactor's, on a store that never waits: a send waits here to be
    /// committed with others; [`Api::commit_held`] gives its answer.
    Held(&'a Held),
    /// A reactor's, on a store that may wait: nothing may. A send the
    /// store answers later (from a Redis lane) is answered through the
    /// [`Deliver`] this makes; a call that would wait is not run
    /// ([`Handled::WouldWait`]), and nothing of it is done.
    Queued(&'a dyn Fn() -> Deliver),
}

/// What became of a request [`Api::handle_then`] ran.
pub enum Handled {
    /// Its answer.
    Answer(Reply),
    /// Its answer goes where [`Answering`] said, later.
    Later,
    /// Not run: it would wait, and [`Answering::Queued`] said nothing may.
    WouldWait,
}

/// Sends a reactor ran in one loop turn, held back to be committed
/// together at its end ([`Api::commit_held`]): one log write for all of
/// them instead of one each. Belongs to one thread.
#[derive(Default)]
pub struct Held {
    turn: RefCell<HeldTurn>,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.turn.borrow().sends.is_empty()
    }
}

/// The sends of one turn, in buffers kept from turn to turn: holding a
/// send copies what it borrows from its request into them, and allocates
/// nothing once they have grown to a turn's worth.
#[derive(Default)]
struct HeldTurn {
    sends: Vec<HeldSend>,
    /// The sends' appids and cmsgids, one after another.
    text: String,
    /// The sends' receivers, one list after another.
    to: Vec<Uid>,
    /// The group handed to the store: empty between turns, kept for its
    /// room ([`recycle`]).
    group: Vec<Append<'static>>,
    /// What the store answered the group.
    outcomes: Outcomes,
}

/// Most bytes of appids and cmsgids, and most receivers, a [`HeldTurn`]
/// keeps room for between turns (a turn of group sends to big groups
/// gives the room back).
const KEEP_HELD: usize = 64 << 10;

impl HeldTurn {
    /// Holds a send for the end of the turn.
    fn hold(
        &mut self,
        appid: &str,
        to: &[Uid],
        msg: &NewMessage,
        once: Option<Once>,
        shape: Shape,
    ) {
        let mut text = |s: &str| {
            let start = self.text.len();
            self.text.push_str(s);
            start..self.text.len()
        };
        let appid = text(appid);
        let once = once.map(|o| (text(o.cmsgid), o.until));
        let start = self.to.len();
        self.to.extend_from_slice(to);
        self.sends.push(HeldSend {
            appid,
            to: start..self.to.len(),
            msg: msg.clone(),
            once,
            shape,
        });
    }

    /// Empties it for the next turn, keeping its room unless a turn of
    /// big sends left too much.
    fn clear(&mut self) {
        self.sends.clear();
        self.text.clear();
        self.to.clear();
        self.outcomes.clear();
        if self.text.capacity() > KEEP_HELD {
            self.text = String::new();
        }
        if self.to.capacity() > KEEP_HELD {
            self.to = Vec::new();
        }
        if self.outcomes.capacity() > KEEP_HELD {
            self.outcomes = Outcomes::default();
        }
    }
}

/// A send waiting in [`Held`]: the append, its strings and receivers as
/// ranges of its [`HeldTurn`]'s buffers, and its answer's shape.
struct HeldSend {
    appid: Range<usize>,
    to: Range<usize>,
    msg: NewMessage,
    /// The `cmsgid` and the end of its window.
    once: Option<(Range<usize>, u64)>,
    shape: Shape,
}

impl HeldSend {
    /// The append, read from its turn's `text` and `to`.
    fn append<'a>(&'a self, text: &'a str, to: &'a [Uid]) -> Append<'a> {
        Append {
            appid: &text[self.appid.clone()],
            to: &to[self.to.clone()],
            msg: &self.msg,
            once: self.once.as_ref().map(|(cmsgid, until)| Once {
                cmsgid: &text[cmsgid.clone()],
                until: *until,
            }),
        }
    }
}

/// An empty `Vec` in the room of `v`, emptied, for appends that borrow
/// for another lifetime: the group of one turn's sends is built in the
/// room of the last turn's. (Std collects a `Vec`'s own iterator in place
/// when the element layout is the same, as here; if it did not, this
/// would allocate, not fail.)
fn recycle<'b>(mut v: Vec<Append<'_>>) -> Vec<Append<'b>> {
    v.clear();
    v.into_iter()
        .map(|_| -> Append<'b> { unreachable!("the vec is empty") })
        .collect()
}

/// A request that may be answered later: where its answer goes, and what
/// it needs to be shaped as [`Api::handle`] would.
struct Later<'a> {
    answering: Answering<'a>,
    keep_alive: bool,
    cors: Option<&'a [u8]>,
}

impl Later<'_> {
    /// Whether the call runs where nothing may wait.
    fn must_not_wait(&self) -> bool {
        matches!(self.answering, Answering::Queued(_))
    }

    fn shape(&self) -> Shape {
        Shape {
            keep_alive: self.keep_alive,
            cors: self.cors.map(Box::from),
            buf: buffer::answer_buffer(0),
        }
    }
}

/// What an answer given later is shaped with.
struct Shape {
    keep_alive: bool,
    cors: Option<Box<[u8]>>,
    /// What the answer is built in: taken from the worker's thread
    /// (`http::buffer`), so whichever thread answers allocates nothing.
    buf: Vec<u8>,
}

impl Shape {
    /// A POST's answer: `body` as JSON, or the error's.
    fn reply(self, body: Result<Answer, ApiError>) -> Reply {
        let reply = match body {
            Ok(body) => ok_json_in(self.buf, &body, self.keep_alive),
            Err(e) => refused(&e, self.keep_alive),
        };
        finish(reply, Method::Post, self.cors.as_deref())
    }
}

/// The answer to a request an endpoint refused.
fn refused(e: &ApiError, keep_alive: bool) -> Reply {
    Reply::Http {
        bytes: e.response(keep_alive),
        keep_alive,
    }
}

/// A 200 with a JSON body.
fn ok_json(body: &[u8], keep_alive: bool) -> Reply {
    ok_json_in(buffer::answer_buffer(0), body, keep_alive)
}

/// [`ok_json`] built in `bytes` (an empty buffer).
fn ok_json_in(mut bytes: Vec<u8>, body: &[u8], keep_alive: bool) -> Reply {
    bytes.reserve(160 + body.len());
    write_response(&mut bytes, 200, CONTENT_JSON, body, keep_alive);
    Reply::Http { bytes, keep_alive }
}

/// What a `HEAD` of `/cget/stream` or `/cget/poll` is answered: the head
/// its `GET` would start with, without subscribing (a poll's length is
/// not known before it is answered, so it says 0).
fn head_of(endpoint: &Endpoint, head: &Head) -> Reply {
    let kind = subscription_kind(endpoint, head);
    let mut bytes = Vec::with_capacity(200);
    match kind {
        Kind::Poll { keep_alive } => {
            write_response_head(&mut bytes, 200, CONTENT_JSON, 0, keep_alive);
        }
        stream => stream.write_head(&mut bytes),
    }
    // A stream framed for HTTP/1.0 ends with the close, and its head says
    // `Connection: close`: the answer to its HEAD closes too.
    let closes = matches!(kind, Kind::Raw | Kind::Sse { chunked: false });
    Reply::Http {
        bytes,
        keep_alive: head.keep_alive && !closes,
    }
}

/// A 429 that says to come back in `wait` (whole seconds, at least one).
fn too_many(msg: &'static str, wait: Duration) -> ApiError {
    ApiError::TooMany(msg, wait.as_secs_f64().ceil().max(1.0) as u64)
}

/// How a `/cget/...` request subscribes: a held poll, or a stream (chunked
/// JSON or Server-Sent Events) framed for its HTTP version.
fn subscription_kind(endpoint: &Endpoint, head: &Head) -> Kind {
    match endpoint {
        Endpoint::Poll => Kind::Poll {
            keep_alive: head.keep_alive,
        },
        Endpoint::Sse => Kind::sse(head.http10),
        _ => Kind::stream(head.http10),
    }
}

/// The `Last-Event-ID` header of an SSE request, if any: the msgid the
/// client last had (below [`MAX_MSGID`], as `seq` is).
fn last_event_id(req: &Request) -> Result<Option<MsgId>, ApiError> {
    let Some(v) = header_value(&req.raw[..req.head.head_len], "last-event-id") else {
        return Ok(None);
    };
    let text = std::str::from_utf8(v).unwrap_or("").trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<MsgId>()
        .ok()
        .filter(|&id| id < MAX_MSGID)
        .map(Some)
        .ok_or_else(|| ApiError::BadRequest("'Last-Event-ID' must be a message id".into()))
}

/// `{appid's length}:{appid}{uid}` (unambiguous: a rate-limit key), in
/// `buf`: no allocation per send.
fn sender_key<'b>(buf: &'b mut [u8; SENDER_KEY], appid: &str, uid: Uid) -> &'b str {
    use std::io::Write;
    let mut rest = &mut buf[..];
    // Cannot fail: `appid` was checked to be at most `MAX_APPID` bytes.
    let _ = write!(rest, "{}:{appid}{uid}", appid.len());
    let len = SENDER_KEY - rest.len();
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

fn appid<'a>(f: &'a Fields) -> Result<std::borrow::Cow<'a, str>, ApiError> {
    bounded(f, "appid", MAX_APPID)
}

/// A required, non-empty string field of at most `max` bytes.
fn bounded<'a>(
    f: &'a Fields<'_>,
    name: &str,
    max: usize,
) -> Result<std::borrow::Cow<'a, str>, ApiError> {
    let v = f.str(name)?;
    if v.is_empty() || v.len() > max {
        return Err(ApiError::BadRequest(
            format!("'{name}' must be 1 to {max} bytes").into(),
        ));
    }
    Ok(v)
}

/// A JSON value of an answer's field.
enum Val<'a> {
    Num(u64),
    Str(&'a str),
}
use Val::{Num, Str};

/// A JSON object with its fields in the order API.md shows them (clients
/// written against the original sometimes match on the text).
fn object(fields: &[(&str, Val)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(b'{');
    for (i, (name, val)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        match val {
            Num(n) => out.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
            // Serialising a str into a Vec cannot fail.
            Str(s) => drop(serde_json::to_writer(&mut out, s)),
        }
    }
    out.push(b'}');
    out
}
