//! Getting users with tokens, and groups, before a scenario starts:
//! in bulk through the server's admin listener (`POST /admin/users`), or,
//! against a server without one, by `/re` + `/login` of each user
//! (`--provision login`, password `p`; slow: the server hashes passwords
//! with argon2 on purpose, and rate-limits `/re` and `/login` per address:
//! start it with `--auth-per-ip 0` for this).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use crate::client::Client;

/// Most users per `/admin/users` call (the server's limit).
const ADMIN_BATCH: usize = 10_000;
/// Parallel `/re` + `/login` callers in login mode.
const LOGIN_THREADS: usize = 8;

#[derive(Debug, Clone)]
pub struct User {
    pub uid: u64,
    pub token: String,
}

/// How users are made.
#[derive(Debug, Clone)]
pub enum Method {
    Admin {
        addr: SocketAddr,
        key: Option<String>,
    },
    Login {
        target: SocketAddr,
    },
}

/// Creates `n` fresh users named `<prefix>u<i>` (admin mode pages as
/// `<prefix>u<page>-<i>`). Fresh matters: the checker expects every inbox
/// to start at msgid 1.
pub fn users(method: &Method, appid: &str, prefix: &str, n: usize) -> Result<Vec<User>, String> {
    match method {
        Method::Admin { addr, key } => admin_users(*addr, key.as_deref(), appid, prefix, n),
        Method::Login { target } => login_users(*target, appid, prefix, n),
    }
}

fn admin_users(
    addr: SocketAddr,
    key: Option<&str>,
    appid: &str,
    prefix: &str,
    n: usize,
) -> Result<Vec<User>, String> {
    let mut c = Client::new(addr, Duration::from_secs(120));
    let header = key
        .map(|k| format!("X-Admin-Key: {k}\r\n"))
        .unwrap_or_default();
    let mut out = Vec::with_capacity(n);
    let mut page = 0;
    while out.len() < n {
        let count = (n - out.len()).min(ADMIN_BATCH);
        let body = json!({"appid": appid, "prefix": format!("{prefix}u{page}-"), "count": count});
        let (status, resp) = c
            .post("/admin/users", &body.to_string(), &header)
            .map_err(|e| format!("admin listener {addr}: {e}"))?;
        if status != 200 {
            return Err(format!(
                "POST /admin/users: HTTP {status}: {}",
                String::from_utf8_lossy(&resp)
            ));
        }
        let v: Value = serde_json::from_slice(&resp).map_err(|e| format!("admin answer: {e}"))?;
        for u in v["users"].as_array().ok_or("admin answer without users")? {
            out.push(User {
                uid: num(&u["uid"]).ok_or("user without uid")?,
                token: u["token"].as_str().ok_or("user without token")?.to_owned(),
            });
        }
        page += 1;
    }
    Ok(out)
}

fn login_users(
    target: SocketAddr,
    appid: &str,
    prefix: &str,
    n: usize,
) -> Result<Vec<User>, String> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<User>>> = Mutex::new(vec![None; n]);
    let err: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..LOGIN_THREADS.min(n) {
            s.spawn(|| {
                let mut c = Client::new(target, Duration::from_secs(30));
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n || err.lock().unwrap().is_some() {
                        return;
                    }
                    match login_one(&mut c, appid, &format!("{prefix}u{i}")) {
                        Ok(u) => out.lock().unwrap()[i] = Some(u),
                        Err(e) => *err.lock().unwrap() = Some(e),
                    }
                }
            });
        }
    });
    if let Some(e) = err.into_inner().unwrap() {
        return Err(e);
    }
    Ok(out.into_inner().unwrap().into_iter().flatten().collect())
}

fn login_one(c: &mut Client, appid: &str, name: &str) -> Result<User, String> {
    let cred = json!({"appid": appid, "username": name, "pass": "p"}).to_string();
    let (status, body) = c.post("/re", &cred, "").map_err(|e| format!("/re: {e}"))?;
    // 409: the user exists from an earlier run; logging in still works, but
    // its inbox is not fresh (use another --user-prefix for clean checks).
    if status != 200 && status != 409 {
        return Err(format!(
            "/re {name}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let (status, body) = c
        .post("/login", &cred, "")
        .map_err(|e| format!("/login: {e}"))?;
    if status != 200 {
        return Err(format!(
            "/login {name}: HTTP {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let v: Value = serde_json::from_slice(&body).map_err(|e| format!("/login answer: {e}"))?;
    Ok(User {
        uid: num(&v["uid"]).ok_or("/login answer without uid")?,
        token: v["token"]
            .as_str()
            .ok_or("/login answer without token")?
            .to_owned(),
    })
}

/// Creates a group owned by `owner` with `members`; returns its gid.
pub fn group(
    target: SocketAddr,
    appid: &str,
    owner: &User,
    members: &[u64],
) -> Result<u64, String> {
    let mut c = Client::new(target, Duration::from_secs(120));
    let body = json!({
        "appid": appid, "ownerid": owner.uid, "gname": "loadtest",
        "uids": members, "token": owner.token,
    });
    let (status, resp) = c
        .post("/gre", &body.to_string(), "")
        .map_err(|e| format!("/gre: {e}"))?;
    if status != 200 {
        return Err(format!(
            "/gre: HTTP {status}: {}",
            String::from_utf8_lossy(&resp)
        ));
    }
    let v: Value = serde_json::from_slice(&resp).map_err(|e| format!("/gre answer: {e}"))?;
    num(&v["gid"]).ok_or_else(|| "/gre answer without gid".into())
}

/// A JSON number or numeric string.
pub fn num(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.parse().ok())
}
