//! Redis connections shared by every worker, pipelined across API calls.
//!
//! The pool is a few *lanes*, each one Redis connection owned by one I/O
//! thread. A worker hands its command (or pipeline) to a lane and waits for
//! the replies; the lane writes everything queued for it in one write and
//! reads the replies back in order. While it waits for Redis, more calls
//! queue up, so under load many API calls share each round trip (like
//! `redis-benchmark -P`), without an async runtime.
//!
//! Every connect, read and write has a timeout, so a call against a dead
//! Redis fails within a bounded time (503) instead of hanging a worker. After
//! a failure, calls fail at once until the backoff has passed, then one
//! reconnect is tried: a Redis restart costs a burst of 503s, not a storm of
//! connects.
//!
//! The lanes go to one server ([`Source`]: named once, or asked of Sentinels
//! at each connect), or, on a Redis Cluster, to each master (`cluster`).
//! With `--redis-wait-replicas` each batch ends with a WAIT.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{Client, Connection, ConnectionLike, RedisError, RedisResult, Value};

use super::cluster::{self, Cluster};
use crate::store::{Result, StoreError};
use crate::sync::{self, Answer, Promise, QueueRx, QueueTx};

/// First wait after Redis failed; doubles per failure up to the maximum.
const BACKOFF_START: Duration = Duration::from_millis(50);
/// Longest wait between reconnect attempts: a recovered Redis is used
/// again within this time.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Most calls one lane writes in one go: bounds the bytes in flight and
/// the wait of the last call in a batch.
const MAX_BATCH: usize = 512;
/// Calls that may wait for a lane; past it a call fails (503). A worker has
/// one call out at a time (one per master on a cluster), so this bound is
/// far above what waits: it only keeps a bug from queueing without end.
const LANE_QUEUE: usize = 4096;

pub struct Pool {
    mode: Mode,
    timeout: Duration,
    shared: Shared,
}

/// Where the calls go.
enum Mode {
    /// One Redis server.
    Single { source: Source, lanes: Lanes },
    /// A Redis Cluster: lanes to each master, calls routed by key slot.
    Cluster(Cluster),
}

/// What every lane of a pool shares.
#[derive(Clone, Default)]
pub(super) struct Shared {
    /// Counts the times Redis was found to have dropped every connection
    /// (the feed lost its own): a lane whose connection is from an earlier
    /// count makes a new one before its next write, rather than failing
    /// one batch on a socket the old Redis process took with it.
    generation: Arc<AtomicU64>,
    /// Connections made again after one was lost (metrics).
    reconnects: Arc<AtomicU64>,
    /// Replicas each write must reach before it is answered (WAIT).
    replicas: usize,
}

/// The lanes to one Redis server: a standalone one, or a cluster's master.
pub(super) struct Lanes {
    lanes: Vec<QueueTx<Call>>,
    threads: Vec<JoinHandle<()>>,
    next: AtomicUsize,
    health: Arc<Mutex<Health>>,
}

impl Lanes {
    /// Starts `count` lanes to the server `source` names.
    pub(super) fn start(
        source: &Source,
        count: usize,
        timeout: Duration,
        shared: &Shared,
    ) -> Result<Lanes> {
        let mut lanes = Lanes {
            lanes: Vec::new(),
            threads: Vec::new(),
            next: AtomicUsize::new(0),
            health: Arc::new(Mutex::new(Health::default())),
        };
        for i in 0..count.max(1) {
            let (tx, rx) = sync::queue(LANE_QUEUE);
            let lane = Lane {
                source: source.clone(),
                timeout,
                health: lanes.health.clone(),
                generation: shared.generation.clone(),
                con: None,
                reconnects: shared.reconnects.clone(),
                connected_before: false,
                replicas: shared.replicas,
            };
            let t = std::thread::Builder::new()
                .name(format!("haoshuo-redis-{i}"))
                .spawn(move || lane.run(&rx))
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            lanes.lanes.push(tx);
            lanes.threads.push(t);
        }
        Ok(lanes)
    }

    /// Whether calls fail at once for now (the server failed lately and
    /// its backoff has not passed).
    pub(super) fn down(&self) -> bool {
        lock(&self.health)
            .retry_at
            .is_some_and(|at| Instant::now() < at)
    }

    /// Queues `bytes` (`skip + count` replies, the first `skip` dropped)
    /// on the next lane; the replies come on the receiver.
    pub(super) fn submit(
        &self,
        bytes: Vec<u8>,
        skip: usize,
        count: usize,
    ) -> RedisResult<Answer<RedisResult<Vec<Value>>>> {
        let (done, answer) = sync::oneshot();
        self.queue(bytes, skip, count, Done::Wait(done))
            .map_err(|(e, _)| e)?;
        Ok(answer)
    }

    /// Queues `bytes` as [`submit`](Lanes::submit) does; the replies go to
    /// `then`, which the lane runs as soon as it has read them (or this
    /// thread at once, if the call cannot be queued).
    pub(super) fn submit_then(&self, bytes: Vec<u8>, skip: usize, count: usize, then: Reply) {
        if let Err((e, done)) = self.queue(bytes, skip, count, Done::Then(then)) {
            done.put(Err(e));
        }
    }

    fn queue(
        &self,
        bytes: Vec<u8>,
        skip: usize,
        count: usize,
        done: Done,
    ) -> std::result::Result<(), (RedisError, Done)> {
        let lane = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let call = Call {
            bytes,
            replies: skip + count,
            skip,
            done,
        };
        self.lanes[lane].try_send(call).map_err(|e| match e {
            sync::TrySendError::Full(c) => (closed("the Redis lane's queue is full"), c.done),
            sync::TrySendError::Disconnected(c) => (closed("the Redis lane stopped"), c.done),
        })
    }

    /// Ends the backoff: the next call tries at once.
    fn healthy(&self) {
        *lock(&self.health) = Health::default();
    }
}

impl Drop for Lanes {
    fn drop(&mut self) {
        self.lanes.clear(); // disconnects: each lane thread exits
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Pool {
    /// A pool for `url`: `redis://HOST:PORT/DB` (one server) or
    /// `redis+cluster://HOST:PORT,HOST:PORT` (a cluster, found from any of
    /// the nodes named), with `lanes` connections per server.
    /// Every write is answered only once `replicas` replicas have it.
    pub fn new(url: &str, lanes: usize, timeout: Duration, replicas: usize) -> Result<Pool> {
        let shared = Shared {
            replicas,
            ..Shared::default()
        };
        let mode = match cluster::seeds(url) {
            Some(seeds) => Mode::Cluster(Cluster::connect(seeds?, lanes, timeout, &shared)?),
            None => {
                let source = Source::of(url)?;
                let lanes = Lanes::start(&source, lanes, timeout, &shared)?;
                Mode::Single { source, lanes }
            }
        };
        Ok(Pool {
            mode,
            timeout,
            shared,
        })
    }

    /// Whether this is a Redis Cluster: calls are routed by slot, and
    /// announcements go by sharded pub/sub.
    pub fn is_cluster(&self) -> bool {
        matches!(self.mode, Mode::Cluster(_))
    }

    /// A fresh connection of its own, with this pool's timeouts, to the
    /// server that holds `channel`: the one server, or in a cluster the
    /// master of the channel's slot (for SSUBSCRIBE).
    pub fn connect_for(&self, channel: &str) -> RedisResult<Connection> {
        match &self.mode {
            Mode::Single { source, .. } => connect(&resp3(&source.client()?), self.timeout),
            Mode::Cluster(c) => c.connect_for(channel.as_bytes()),
        }
    }

    /// Runs `f` against a lane: every command it sends is queued with
    /// other workers' and answered in order. In a cluster each command goes
    /// to the master of its key's slot.
    pub fn with<T>(&self, f: impl FnOnce(&mut dyn ConnectionLike) -> RedisResult<T>) -> Result<T> {
        // The lane's own timeouts bound the wait; this is a backstop.
        let wait = self.timeout * 3;
        let result = match &self.mode {
            Mode::Single { lanes, .. } => {
                if lanes.down() {
                    return Err(StoreError::Unavailable("redis is down".into()));
                }
                f(&mut Handle { lanes, wait })
            }
            Mode::Cluster(c) => f(&mut c.handle(wait)),
        };
        result.map_err(|e| StoreError::Unavailable(format!("redis: {e}")))
    }

    /// Queues `bytes` (`count` replies) on a lane of a standalone Redis
    /// and returns: the replies go to `then` on the lane's thread. `then`
    /// is given back on a cluster, whose calls are routed by slot.
    pub fn submit_then(&self, bytes: Vec<u8>, count: usize, then: Reply) -> Option<Reply> {
        match &self.mode {
            Mode::Single { lanes, .. } => {
                if lanes.down() {
                    then(Err(closed("redis is down")));
                } else {
                    lanes.submit_then(bytes, 0, count, then);
                }
                None
            }
            Mode::Cluster(_) => Some(then),
        }
    }

    /// Redis is back after the feed lost its connection: ends the backoff
    /// early, and has every lane reconnect before its next write (its
    /// connection most likely went with the old Redis process). In a
    /// cluster the slot map is read again too.
    pub fn reconnected(&self) {
        self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        match &self.mode {
            Mode::Single { lanes, .. } => lanes.healthy(),
            Mode::Cluster(c) => c.reconnected(),
        }
    }

    /// Connections made again after one was lost: a lane's, or the feed's
    /// subscription (as [`Pool::reconnected`] reports it).
    pub fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct Health {
    /// While set, calls fail at once until this instant.
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// One caller's packed command(s) and where its replies go.
struct Call {
    bytes: Vec<u8>,
    /// Replies to read; the first `skip` are dropped (MULTI's, ASKING's).
    replies: usize,
    skip: usize,
    done: Done,
}

/// What a lane runs with a call's replies, on its own thread: it must not
/// wait on a lane (it may queue another call).
pub type Reply = Box<dyn FnOnce(RedisResult<Vec<Value>>) + Send>;

/// Where a call's replies go.
enum Done {
    /// To the thread waiting for them.
    Wait(Promise<RedisResult<Vec<Value>>>),
    /// To a function of the caller's.
    Then(Reply),
}

impl Done {
    fn put(self, replies: RedisResult<Vec<Value>>) {
        match self {
            Done::Wait(promise) => promise.put(replies),
            Done::Then(then) => {
                // A bug in it must not take the lane, and every call
                // queued behind it, down.
                if catch_unwind(AssertUnwindSafe(|| then(replies))).is_err() {
                    error!("redis lane: a reply's function panicked");
                }
            }
        }
    }
}

/// What a worker's commands see: a `ConnectionLike` that queues on a lane.
struct Handle<'a> {
    lanes: &'a Lanes,
    wait: Duration,
}

impl Handle<'_> {
    fn call(&mut self, bytes: &[u8], skip: usize, count: usize) -> RedisResult<Vec<Value>> {
        let answer = self.lanes.submit(bytes.to_vec(), skip, count)?;
        wait_for(&answer, self.wait)
    }
}

/// The replies to a call [`Lanes::submit`] queued, waiting at most `wait`.
pub(super) fn wait_for(
    answer: &Answer<RedisResult<Vec<Value>>>,
    wait: Duration,
) -> RedisResult<Vec<Value>> {
    answer
        .wait(wait)
        .ok_or_else(|| closed("no answer from the Redis lane"))?
}

impl ConnectionLike for Handle<'_> {
    fn req_packed_command(&mut self, cmd: &[u8]) -> RedisResult<Value> {
        let mut v = self.call(cmd, 0, 1)?;
        v.pop().ok_or_else(|| closed("no reply"))
    }

    fn req_packed_commands(
        &mut self,
        cmd: &[u8],
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        self.call(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        0
    }

    fn check_connection(&mut self) -> bool {
        redis::cmd("PING").query::<String>(self).is_ok()
    }

    fn is_open(&self) -> bool {
        true
    }
}

/// Where a lane's connections go: a server named once, or the master a
/// set of Sentinels names at each connect (so a lane follows a failover).
#[derive(Clone)]
pub(super) enum Source {
    Fixed(Client),
    Sentinel(Arc<Mutex<SentinelClient>>),
}

impl Source {
    /// The source `url` names: `redis://HOST:PORT/DB`, or
    /// `redis+sentinel://HOST:PORT,HOST:PORT/MASTER` (Sentinels, and the
    /// name they monitor the master under).
    fn of(url: &str) -> Result<Source> {
        let bad = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("bad Redis URL {url:?}: {e}"))
        };
        let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) else {
            return Client::open(url).map(Source::Fixed).map_err(|e| bad(&e));
        };
        let (hosts, name) = rest
            .split_once('/')
            .filter(|(h, n)| !h.is_empty() && !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| {
                bad(&format!(
                    "expected {SENTINEL_SCHEME}HOST:PORT[,HOST:PORT...]/MASTER"
                ))
            })?;
        let sentinels: Vec<String> = hosts.split(',').map(|h| format!("redis://{h}/")).collect();
        SentinelClient::build(sentinels, name.to_owned(), None, SentinelServerType::Master)
            .map(|s| Source::Sentinel(Arc::new(Mutex::new(s))))
            .map_err(|e| bad(&e))
    }

    /// A client for the server to connect to now.
    pub(super) fn client(&self) -> RedisResult<Client> {
        match self {
            Source::Fixed(c) => Ok(c.clone()),
            Source::Sentinel(s) => lock(s).get_client(),
        }
    }
}

/// The URL scheme that names a master by the Sentinels that monitor it.
pub const SENTINEL_SCHEME: &str = "redis+sentinel://";

/// One connection and the thread that owns it.
struct Lane {
    source: Source,
    timeout: Duration,
    health: Arc<Mutex<Health>>,
    generation: Arc<AtomicU64>,
    /// The connection and the pool generation it was made in.
    con: Option<(Connection, u64)>,
    /// Shared with the pool: counts this lane's connections after its first.
    reconnects: Arc<AtomicU64>,
    connected_before: bool,
    /// Replicas that must have every write of a batch before its calls
    /// are answered (WAIT); 0: none.
    replicas: usize,
}

impl Lane {
    fn run(mut self, calls: &QueueRx<Call>) {
        while let Some(first) = calls.next() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match calls.try_next() {
                    Some(c) => batch.push(c),
                    None => break,
                }
            }
            if let Err(e) = self.serve(&mut batch) {
                self.con = None;
                self.failed();
                for call in batch {
                    call.done.put(Err(clone_error(&e)));
                }
            }
        }
    }

    /// Writes the batch in one go and answers its calls in order; the calls
    /// not answered when an error struck are left in `batch`.
    fn serve(&mut self, batch: &mut Vec<Call>) -> RedisResult<()> {
        let generation = self.generation.load(Ordering::Acquire);
        if self.con.as_ref().is_some_and(|(_, g)| *g != generation) {
            self.con = None;
        }
        if self.con.is_none() {
            if let Some(at) = lock(&self.health).retry_at {
                if Instant::now() < at {
                    return Err(closed("redis is down"));
                }
            }
            self.con = Some((connect(&self.source.client()?, self.timeout)?, generation));
            *lock(&self.health) = Health::default();
            if std::mem::replace(&mut self.connected_before, true) {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
        let Some((con, _)) = self.con.as_mut() else {
            return Err(closed("no connection"));
        };
        let mut bytes: Vec<u8> = batch.iter().flat_map(|c| c.bytes.iter().copied()).collect();
        if self.replicas > 0 {
            // One WAIT for the whole batch, answered before the batch's
            // calls are: nothing is acknowledged that a failover to a
            // replica could lose. Its timeout leaves room in the read's.
            let wait_ms = (self.timeout.as_millis() / 2).max(1) as u64;
            redis::cmd("WAIT")
                .arg(self.replicas)
                .arg(wait_ms)
                .write_packed_command(&mut bytes);
        }
        con.send_packed_command(&bytes)?;
        let mut answers = Vec::with_capacity(batch.len());
        for call in batch.iter() {
            let mut replies = Vec::with_capacity(call.replies);
            for _ in 0..call.replies {
                replies.push(con.recv_response()?);
            }
            replies.drain(..call.skip);
            answers.push(replies);
        }
        // A master demoted by a failover refuses writes: the next batch
        // connects again, to whichever server the source names then.
        let demoted = answers.iter().flatten().any(|r| {
            matches!(r, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::ReadOnly))
        });
        if self.replicas > 0 {
            let acked = match con.recv_response()? {
                Value::Int(n) => n,
                _ => 0,
            };
            if acked < self.replicas as i64 {
                let why = format!(
                    "not replicated: {acked} of {} replicas acknowledged in time",
                    self.replicas
                );
                for call in batch.drain(..) {
                    call.done.put(Err(closed_owned(why.clone())));
                }
                return Ok(());
            }
        }
        for (call, replies) in batch.drain(..).zip(answers) {
            call.done.put(Ok(replies));
        }
        if demoted {
            self.con = None;
        }
        Ok(())
    }

    fn failed(&self) {
        let mut h = lock(&self.health);
        h.backoff = (h.backoff * 2).clamp(BACKOFF_START, BACKOFF_MAX);
        h.retry_at = Some(Instant::now() + h.backoff);
    }
}

/// `client` speaking RESP3, where pub/sub messages are pushes: a
/// subscriber reading with a timeout must not have a message taken for a
/// late reply (the crate skips one reply per timed-out read).
pub(super) fn resp3(client: &Client) -> Client {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    Client::open(info.set_redis_settings(settings)).unwrap_or_else(|_| client.clone())
}

pub(super) fn connect(client: &Client, timeout: Duration) -> RedisResult<Connection> {
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// The same, for a reason made at run time.
pub(super) fn closed_owned(why: String) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        why,
    ))
}

pub(super) fn closed(why: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        why,
    ))
}

/// A lane's failure, for every call of the batch it struck.
fn clone_error(e: &RedisError) -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        e.to_string(),
    ))
}

/// Poisoning means a thread panicked while holding the lock; the health
/// record is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
