//! The senders: a pool of threads in the parent, each with one keep-alive
//! connection, posting messages on a fixed schedule (message i is due at
//! start + i / rate) until the count or the time is used up. Each message's
//! content is stamped with the monotonic send time just before it is
//! written. Answers other than 200 `{"type":"ok"}` (haoshuo) or 200/201/202
//! (an nchan publish) are counted as errors.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::clock::mono_ns;
use hdrhistogram::Histogram;

/// One message to post: path, body, and the key its success is counted
/// under (the receiver uid for `/p`, the gid for `/gp`, 0 for nchan).
pub struct Post {
    pub path: String,
    pub body: Body,
    pub key: u64,
}

pub enum Body {
    /// A haoshuo call: JSON in a `haoshuo=` form; ok is 200 `{"type":"ok"...`.
    Form(String),
    /// An nchan publish: `text/plain`; ok is 200, 201 (had subscribers) or
    /// 202 (queued, none yet).
    Plain(String),
}

impl Post {
    /// A haoshuo call.
    pub fn form(path: &str, json: String, key: u64) -> Post {
        Post {
            path: path.to_owned(),
            body: Body::Form(json),
            key,
        }
    }
}

/// Sends one post; Ok(()) if the server took it, else (status, body).
fn post_one(c: &mut Client, post: &Post) -> std::io::Result<Result<(), (u16, Vec<u8>)>> {
    Ok(match &post.body {
        Body::Form(json) => match c.post(&post.path, json, "")? {
            (200, body) if body.starts_with(br#"{"type":"ok""#) => Ok(()),
            other => Err(other),
        },
        Body::Plain(text) => match c.post_plain(&post.path, text)? {
            (200..=202, _) => Ok(()),
            other => Err(other),
        },
    })
}

#[derive(Debug)]
pub struct SendStats {
    pub ok: u64,
    /// Non-200 answers by status.
    pub by_status: BTreeMap<u16, u64>,
    /// Connection errors and timeouts.
    pub io_errors: u64,
    pub first_error: Option<String>,
    /// Successful sends per key.
    pub ok_by_key: HashMap<u64, u64>,
    pub elapsed: Duration,
    /// Time from writing each post to its answer, in µs (every answer).
    pub answer_us: Histogram<u64>,
}

impl Default for SendStats {
    fn default() -> SendStats {
        SendStats {
            ok: 0,
            by_status: BTreeMap::new(),
            io_errors: 0,
            first_error: None,
            ok_by_key: HashMap::new(),
            elapsed: Duration::ZERO,
            answer_us: crate::fleet::new_hist(),
        }
    }
}

impl SendStats {
    pub fn errors(&self) -> u64 {
        self.io_errors + self.by_status.values().sum::<u64>()
    }
}

/// Sends `total` messages at `rate` per second (0: as fast as the pool
/// goes) over `threads` connections, stopping after `max` in any case.
/// `make(i, now_ns)` builds message `i` stamped with `now_ns`.
pub fn run(
    target: SocketAddr,
    threads: usize,
    total: u64,
    rate: f64,
    max: Duration,
    make: &(dyn Fn(u64, u64) -> Post + Sync),
) -> SendStats {
    let next = AtomicU64::new(0);
    let stats = Mutex::new(SendStats::default());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut c = Client::new(target, Duration::from_secs(10));
                let mut local = SendStats::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total || start.elapsed() >= max {
                        break;
                    }
                    if rate > 0.0 {
                        let due = start + Duration::from_secs_f64(i as f64 / rate);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                    let post = make(i, mono_ns());
                    let sent = Instant::now();
                    let answer = post_one(&mut c, &post);
                    let _ = local
                        .answer_us
                        .record(sent.elapsed().as_micros().max(1) as u64);
                    match answer {
                        Ok(Ok(())) => {
                            local.ok += 1;
                            *local.ok_by_key.entry(post.key).or_default() += 1;
                        }
                        Ok(Err((status, body))) => {
                            *local.by_status.entry(status).or_default() += 1;
                            local.first_error.get_or_insert_with(|| {
                                format!(
                                    "{} HTTP {status}: {}",
                                    post.path,
                                    String::from_utf8_lossy(&body)
                                )
                            });
                        }
                        Err(e) => {
                            local.io_errors += 1;
                            local
                                .first_error
                                .get_or_insert_with(|| format!("{}: {e}", post.path));
                        }
                    }
                }
                let mut all = stats.lock().unwrap();
                all.ok += local.ok;
                all.io_errors += local.io_errors;
                let _ = all.answer_us.add(&local.answer_us);
                for (k, v) in local.by_status {
                    *all.by_status.entry(k).or_default() += v;
                }
                for (k, v) in local.ok_by_key {
                    *all.ok_by_key.entry(k).or_default() += v;
                }
                if all.first_error.is_none() {
                    all.first_error = local.first_error;
                }
            });
        }
    });
    let mut st = stats.into_inner().unwrap();
    st.elapsed = start.elapsed();
    st
}
