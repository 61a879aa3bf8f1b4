//! A small pool of synchronous Redis connections, with bounded waits and
//! backoff while Redis is down.
//!
//! Workers borrow a connection for one call (or one pipeline) and give it
//! back. Every connect, read and write has a timeout, so an API call against
//! a dead Redis fails within a bounded time (503) instead of hanging a
//! worker. After a failure, calls fail at once until the backoff has passed,
//! then one reconnect is tried: a Redis restart costs a burst of 503s, not a
//! storm of connects.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::{Client, Connection, RedisError, RedisResult};

use crate::store::{Result, StoreError};

/// First wait after Redis failed; doubles per failure up to the maximum.
const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest wait between reconnect attempts: a recovered Redis is used
/// again within this time.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

pub struct Pool {
    client: Client,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
    timeout: Duration,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    /// While set, calls fail at once until this instant.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Pool {
    pub fn new(url: &str, max_idle: usize, timeout: Duration) -> Result<Pool> {
        let client = Client::open(url)
            .map_err(|e| StoreError::Unavailable(format!("bad Redis URL {url:?}: {e}")))?;
        Ok(Pool {
            client,
            idle: Mutex::new(Vec::with_capacity(max_idle)),
            max_idle,
            timeout,
            health: Mutex::default(),
        })
    }

    /// A fresh connection with this pool's timeouts (also for pub/sub).
    pub fn connect(&self) -> RedisResult<Connection> {
        let con = self.client.get_connection_with_timeout(self.timeout)?;
        con.set_read_timeout(Some(self.timeout))?;
        con.set_write_timeout(Some(self.timeout))?;
        Ok(con)
    }

    /// Runs `f` on a pooled connection. A failed call drops its connection
    /// (its state is unknown) and starts the backoff.
    pub fn with<T>(&self, f: impl FnOnce(&mut Connection) -> RedisResult<T>) -> Result<T> {
        let mut con = self.take()?;
        match f(&mut con) {
            Ok(v) => {
                self.give(con);
                Ok(v)
            }
            Err(e) => {
                if is_connection_error(&e) {
                    self.failed();
                } else {
                    self.give(con);
                }
                Err(StoreError::Unavailable(format!("redis: {e}")))
            }
        }
    }

    /// Ends the backoff early: a connection was just made (by the feed),
    /// so Redis is back.
    pub fn mark_healthy(&self) {
        *lock(&self.health) = Health::default();
    }

    fn take(&self) -> Result<Connection> {
        if let Some(con) = lock(&self.idle).pop() {
            return Ok(con);
        }
        if let Some(at) = lock(&self.health).retry_at {
            if Instant::now() < at {
                return Err(StoreError::Unavailable("redis is down".into()));
            }
        }
        match self.connect() {
            Ok(con) => {
                *lock(&self.health) = Health::default();
                Ok(con)
            }
            Err(e) => {
                self.failed();
                Err(StoreError::Unavailable(format!("redis: {e}")))
            }
        }
    }

    fn give(&self, con: Connection) {
        let mut idle = lock(&self.idle);
        if idle.len() < self.max_idle {
            idle.push(con);
        }
    }

    /// Forgets every pooled connection (they all went to the same dead
    /// server) and backs off.
    fn failed(&self) {
        lock(&self.idle).clear();
        let mut h = lock(&self.health);
        h.backoff = (h.backoff * 2).clamp(BACKOFF_START, BACKOFF_MAX);
        h.retry_at = Some(Instant::now() + h.backoff);
    }
}

/// Errors after which a connection cannot be trusted: I/O, timeouts, a
/// closed or refused connection. A script's or command's own error leaves
/// the connection usable.
fn is_connection_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// Poisoning means a thread panicked while holding a pool lock; the pool's
/// contents are still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
