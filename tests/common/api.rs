//! The JSON API as the tests see it: the exact shape checks of every
//! answer (`assert_keys`, the `*_field` readers, the `check_*` functions,
//! [`expect_error`], [`Msg::parse`], [`Pulled`]) as `API.md` states them
//! (field names and JSON types); the request bodies (`*_body`); [`User`];
//! and [`Api`], which wraps every endpoint in a typed helper.

use super::frames::{poll, PendingPoll, StreamClient};
use super::http::{percent_encode, post, post_json};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// A well-formed token (48 lowercase hex characters, so it passes the shape
/// check and is refused by the store lookup) that no login returns in
/// practice.
pub const BAD_TOKEN: &str = "000000000000000000000000000000000000000000000000";
/// Characters of a token: a 16-hex selector and a 32-hex verifier
/// (src/auth.rs), lowercase.
pub const TOKEN_LEN: usize = 48;

// ---------------------------------------------------------------------------
// Exact shape checks
// ---------------------------------------------------------------------------

/// `v` is an object with exactly these field names.
pub fn assert_keys(v: &Value, keys: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("expected a JSON object, got {v}"));
    let got: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = keys.iter().copied().collect();
    assert_eq!(got, want, "field names of {v}");
}

/// A field that must be a JSON number (non-negative integer).
pub fn num_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` must be a JSON number in {v}"))
}

/// A field that must be a JSON string of decimal digits (an id).
pub fn id_field(v: &Value, key: &str) -> u64 {
    let s = v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` must be a JSON string in {v}"));
    assert!(
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()),
        "`{key}` must be a numeric string in {v}"
    );
    s.parse()
        .unwrap_or_else(|_| panic!("`{key}` out of range in {v}"))
}

/// A field that must be a JSON string.
pub fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` must be a JSON string in {v}"))
}

/// `/re`: `{"uid":N,"username":"..."}`; returns the uid.
pub fn check_register(v: &Value, username: &str) -> u64 {
    assert_keys(v, &["uid", "username"]);
    assert_eq!(str_field(v, "username"), username, "{v}");
    num_field(v, "uid")
}

/// `/login`: `{"uid":N,"token":"<hex>"}`; returns (uid, token).
pub fn check_login(v: &Value) -> (u64, String) {
    assert_keys(v, &["uid", "token"]);
    let token = str_field(v, "token");
    check_token_shape(token);
    (num_field(v, "uid"), token.to_string())
}

/// A token as the server hands it out: opaque to clients, ours is exactly
/// 48 lowercase hex characters (a 64-bit selector and a 128-bit secret;
/// README "Tokens", src/auth.rs).
pub fn check_token_shape(token: &str) {
    assert!(
        token.len() == TOKEN_LEN
            && token
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "a token must be {TOKEN_LEN} lowercase hex characters: {token:?}"
    );
}

/// `/gre`: `{"uid":ownerid,"gname":"...","gid":N}`; returns the gid.
pub fn check_gre(v: &Value, ownerid: u64, gname: &str) -> u64 {
    assert_keys(v, &["uid", "gname", "gid"]);
    assert_eq!(num_field(v, "uid"), ownerid, "{v}");
    assert_eq!(str_field(v, "gname"), gname, "{v}");
    num_field(v, "gid")
}

/// `/p`, `/gp`, `/ack`: exactly `{"type":"ok"}`.
pub fn check_ok(v: &Value) {
    assert_eq!(*v, json!({"type": "ok"}));
}

/// `/logout`: exactly `{"uid":U,"msg":"ok"}`.
pub fn check_logout(v: &Value, uid: u64) {
    assert_eq!(*v, json!({"uid": uid, "msg": "ok"}));
}

/// An error answer: the status, and a body of exactly
/// `{"type":"error","code":<status>,"msg":"..."}`.
pub fn expect_error(answer: (u16, Value), code: u16) {
    expect_error_in(answer, &[code]);
}

/// Like [`expect_error`] where the contract allows several statuses;
/// returns the one given.
pub fn expect_error_in((status, body): (u16, Value), codes: &[u16]) -> u16 {
    assert!(
        codes.contains(&status),
        "expected HTTP {codes:?}, got {status} {body}"
    );
    assert_keys(&body, &["type", "code", "msg"]);
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(num_field(&body, "code"), u64::from(status), "{body}");
    str_field(&body, "msg");
    status
}

/// A message as it appears inside `msgs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    pub content: String,
    pub fromid: u64,
    pub toid: u64,
    pub datatype: u64,
    pub msgid: u64,
}

impl Msg {
    /// The single-chat message `from` -> `toid` expected at `msgid`.
    pub fn single(from: &User, toid: u64, msgid: u64, content: &str) -> Msg {
        Msg {
            content: content.to_string(),
            fromid: from.uid,
            toid,
            datatype: 1,
            msgid,
        }
    }

    /// The group message `from` -> `gid` expected at `msgid`.
    pub fn group(from: &User, gid: u64, msgid: u64, content: &str) -> Msg {
        Msg {
            content: content.to_string(),
            fromid: from.uid,
            toid: gid,
            datatype: 2,
            msgid,
        }
    }

    /// Checks `{"content":"..","fromid":"1","toid":"2","datatype":1,"msgid":"1"}`
    /// exactly (ids strings, datatype a number 1 or 2).
    pub fn parse(v: &Value) -> Msg {
        assert_keys(v, &["content", "fromid", "toid", "datatype", "msgid"]);
        let datatype = num_field(v, "datatype");
        assert!(
            datatype == 1 || datatype == 2,
            "datatype must be 1 or 2: {v}"
        );
        Msg {
            content: str_field(v, "content").to_string(),
            fromid: id_field(v, "fromid"),
            toid: id_field(v, "toid"),
            datatype,
            msgid: id_field(v, "msgid"),
        }
    }
}

/// Parses a `msgs` array: each message exact, msgids consecutive, and the
/// `endid` string equal to the last msgid when there is one.
pub(super) fn check_msgs(container: &Value) -> (Vec<Msg>, u64) {
    let msgs: Vec<Msg> = container["msgs"]
        .as_array()
        .unwrap_or_else(|| panic!("`msgs` must be an array in {container}"))
        .iter()
        .map(Msg::parse)
        .collect();
    for pair in msgs.windows(2) {
        assert_eq!(
            pair[1].msgid,
            pair[0].msgid + 1,
            "msgids must be consecutive: {container}"
        );
    }
    let endid = id_field(container, "endid");
    if let Some(last) = msgs.last() {
        assert_eq!(
            endid, last.msgid,
            "endid must be the last msgid: {container}"
        );
    }
    (msgs, endid)
}

/// A `/pull` answer.
#[derive(Debug)]
pub struct Pulled {
    pub msgs: Vec<Msg>,
    pub endid: u64,
}

impl Pulled {
    pub fn msgids(&self) -> Vec<u64> {
        self.msgs.iter().map(|m| m.msgid).collect()
    }
    pub fn contents(&self) -> Vec<&str> {
        self.msgs.iter().map(|m| m.content.as_str()).collect()
    }
}

/// `/pull`: `{"msgs":[...],"endid":"N","uid":U}`.
pub fn check_pull(v: &Value, uid: u64) -> Pulled {
    assert_keys(v, &["msgs", "endid", "uid"]);
    assert_eq!(num_field(v, "uid"), uid, "{v}");
    let (msgs, endid) = check_msgs(v);
    Pulled { msgs, endid }
}

// ---------------------------------------------------------------------------
// Typed endpoint helpers
// ---------------------------------------------------------------------------

/// A registered, logged-in user.
#[derive(Clone, Debug)]
pub struct User {
    pub appid: String,
    pub name: String,
    pub uid: u64,
    pub token: String,
}

impl User {
    pub fn pass(&self) -> String {
        password_for(&self.name)
    }
}

/// Bob sends `m1..=mN` to Alice.
pub fn fill_inbox(api: &Api, bob: &User, alice: &User, n: u64) {
    for i in 1..=n {
        api.send(bob, alice.uid, &format!("m{i}"));
    }
}

/// What [`fill_inbox`] stored at msgids `range`.
pub fn filled(bob: &User, alice: &User, range: std::ops::RangeInclusive<u64>) -> Vec<Msg> {
    range
        .map(|i| Msg::single(bob, alice.uid, i, &format!("m{i}")))
        .collect()
}

/// The password [`Api::user`] registers `name` with.
pub fn password_for(name: &str) -> String {
    format!("pw-{name}")
}

pub fn register_body(appid: &str, username: &str, pass: &str) -> Value {
    json!({"appid": appid, "username": username, "pass": pass})
}

pub fn login_body(appid: &str, username: &str, pass: &str) -> Value {
    register_body(appid, username, pass)
}

pub fn gre_body(owner: &User, gname: &str, uids: &[u64]) -> Value {
    json!({"appid": owner.appid, "ownerid": owner.uid, "gname": gname, "uids": uids, "token": owner.token})
}

pub fn send_body(from: &User, toid: u64, content: &str) -> Value {
    json!({"appid": from.appid, "fromid": from.uid, "datatype": 1, "toid": toid,
           "content": content, "token": from.token, "restart": "all"})
}

/// `/p` of `content` from `from` to `to` with `cmsgid`, sent again after
/// each 503 (a Redis master down, not yet replaced) until it is answered
/// `ok`; fails after `within`.
pub fn send_until_ok(
    api: &Api,
    from: &User,
    to: &User,
    content: &str,
    cmsgid: &str,
    within: std::time::Duration,
) {
    let mut body = send_body(from, to.uid, content);
    body["cmsgid"] = json!(cmsgid);
    let deadline = std::time::Instant::now() + within;
    loop {
        let (status, answer) = api.post("/p", &body);
        match status {
            200 => return check_ok(&answer),
            503 => assert!(
                std::time::Instant::now() < deadline,
                "{content} not stored within {within:?}: {answer}"
            ),
            _ => panic!("{content}: HTTP {status} {answer}"),
        }
        // Waiting out a failover: nothing to watch from here but the
        // answers themselves.
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Sends `m0`, `m1`, ... `m{sends-1}` from `from` round robin to
/// `receivers` (`mI` to receiver `I % len`, cmsgid `cI`), each until it is
/// answered `ok` ([`send_until_ok`]); runs `fail` once a third of them are
/// sent (a Redis master killed, say).
pub fn send_round_robin_through(
    api: &Api,
    from: &User,
    receivers: &[User],
    sends: usize,
    within: std::time::Duration,
    fail: impl FnOnce(),
) {
    let mut fail = Some(fail);
    for i in 0..sends {
        if i == sends / 3 {
            if let Some(f) = fail.take() {
                f();
            }
        }
        let to = &receivers[i % receivers.len()];
        send_until_ok(api, from, to, &format!("m{i}"), &format!("c{i}"), within);
    }
}

/// After `sends` messages `m0`, `m1`, ... were sent round robin to
/// `receivers` (`mI` to receiver `I % len`), answered `ok` (through a
/// failover, say): each receiver's stream got its share live, once, in
/// order (msgids contiguous as read), and its inbox holds the same, with
/// msgids from 1.
pub fn every_receiver_got_its_sends(
    api: &Api,
    receivers: &[User],
    streams: &mut [super::StreamClient],
    sends: usize,
    within: std::time::Duration,
) {
    for (j, (receiver, stream)) in receivers.iter().zip(streams).enumerate() {
        let sent: Vec<String> = (j..sends)
            .step_by(receivers.len())
            .map(|i| format!("m{i}"))
            .collect();
        let got: Vec<String> = stream
            .collect(sent.len(), within)
            .iter()
            .map(|m| m.content.clone())
            .collect();
        assert_eq!(got, sent, "stream of receiver {j}");
        let pulled = api.pull(receiver);
        assert_eq!(pulled.contents(), sent, "inbox of receiver {j}");
        assert_eq!(
            pulled.msgids(),
            (1..=sent.len() as u64).collect::<Vec<_>>(),
            "msgids of receiver {j}"
        );
    }
}

pub fn gsend_body(from: &User, gid: u64, content: &str) -> Value {
    json!({"appid": from.appid, "fromid": from.uid, "datatype": 2, "toid": gid,
           "content": content, "token": from.token, "restart": "all"})
}

pub fn pull_body(user: &User) -> Value {
    json!({"appid": user.appid, "uid": user.uid, "token": user.token})
}

pub fn ack_body(user: &User, endid: u64) -> Value {
    json!({"appid": user.appid, "uid": user.uid, "endid": endid, "token": user.token})
}

pub fn logout_body(user: &User) -> Value {
    pull_body(user)
}

/// The query string of `/cget/stream` and `/cget/poll`.
pub fn sub_query(seq: u64, uid: u64, token: &str) -> String {
    format!("seq={seq}&cname={uid}&token={}", percent_encode(token))
}

/// Typed helpers for every endpoint of one server; each checks the answer's
/// shape and fails the test on an error. `Copy`, so threads can share it.
#[derive(Clone, Copy, Debug)]
pub struct Api {
    pub addr: SocketAddr,
}

impl Api {
    /// Form-encoded POST (the original encoding).
    pub fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        post(self.addr, path, body)
    }

    /// Raw JSON POST.
    pub fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        post_json(self.addr, path, body)
    }

    /// Form-encoded POST that must answer 200.
    pub fn ok(&self, path: &str, body: &Value) -> Value {
        let (status, answer) = self.post(path, body);
        assert_eq!(status, 200, "POST {path} {body} answered {status} {answer}");
        answer
    }

    pub fn register(&self, appid: &str, username: &str, pass: &str) -> u64 {
        check_register(
            &self.ok("/re", &register_body(appid, username, pass)),
            username,
        )
    }

    pub fn login(&self, appid: &str, username: &str, pass: &str) -> String {
        check_login(&self.ok("/login", &login_body(appid, username, pass))).1
    }

    /// Registers `name` (password [`password_for`]) and logs it in.
    pub fn user(&self, appid: &str, name: &str) -> User {
        let pass = password_for(name);
        let uid = self.register(appid, name, &pass);
        let (login_uid, token) = check_login(&self.ok("/login", &login_body(appid, name, &pass)));
        assert_eq!(
            login_uid, uid,
            "/login and /re disagree on the uid of {name}"
        );
        User {
            appid: appid.to_string(),
            name: name.to_string(),
            uid,
            token,
        }
    }

    /// Creates a group of `owner` + `uids`; returns the gid.
    pub fn group(&self, owner: &User, gname: &str, uids: &[u64]) -> u64 {
        check_gre(
            &self.ok("/gre", &gre_body(owner, gname, uids)),
            owner.uid,
            gname,
        )
    }

    pub fn send(&self, from: &User, toid: u64, content: &str) {
        check_ok(&self.ok("/p", &send_body(from, toid, content)));
    }

    pub fn gsend(&self, from: &User, gid: u64, content: &str) {
        check_ok(&self.ok("/gp", &gsend_body(from, gid, content)));
    }

    pub fn pull(&self, user: &User) -> Pulled {
        check_pull(&self.ok("/pull", &pull_body(user)), user.uid)
    }

    pub fn ack(&self, user: &User, endid: u64) {
        check_ok(&self.ok("/ack", &ack_body(user, endid)));
    }

    pub fn logout(&self, user: &User) {
        check_logout(&self.ok("/logout", &logout_body(user)), user.uid);
    }

    pub fn stream(&self, user: &User, seq: u64) -> StreamClient {
        StreamClient::open(self.addr, seq, user.uid, &user.token)
    }

    pub fn poll(&self, user: &User, seq: u64) -> Value {
        poll(self.addr, seq, user.uid, &user.token)
    }

    pub fn start_poll(&self, user: &User, seq: u64) -> PendingPoll {
        PendingPoll::start(self.addr, &sub_query(seq, user.uid, &user.token))
    }
}

// ---------------------------------------------------------------------------
// The admin listener
// ---------------------------------------------------------------------------

/// `POST /admin/users` on the admin port, with `key` as `X-Admin-Key`.
pub fn provision(server: &super::Server, key: Option<&str>, body: &Value) -> (u16, Value) {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(k) = key {
        headers.push(("X-Admin-Key", k));
    }
    let r = super::http::request(
        server.admin_addr(),
        "POST",
        "/admin/users",
        &headers,
        body.to_string().as_bytes(),
    );
    (r.status, r.json())
}

/// The users of a successful `/admin/users` answer, checked for shape.
pub fn provisioned_users(answer: (u16, Value), appid: &str) -> Vec<User> {
    let (status, body) = answer;
    assert_eq!(status, 200, "{body}");
    assert_keys(&body, &["users"]);
    let list = body["users"].as_array().expect("users is an array");
    list.iter()
        .map(|u| {
            assert_keys(u, &["uid", "username", "token"]);
            check_token_shape(str_field(u, "token"));
            User {
                appid: appid.to_string(),
                name: str_field(u, "username").to_string(),
                uid: num_field(u, "uid"),
                token: str_field(u, "token").to_string(),
            }
        })
        .collect()
}
