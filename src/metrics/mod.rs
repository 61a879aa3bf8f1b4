//! Metrics: counted where things happen, summed when scraped.
//!
//! `GET /metrics` on the admin listener answers in the Prometheus text
//! format (docs/API.md lists every metric). Nothing on the delivery path
//! takes a lock or writes a cache line another thread writes:
//!
//! - each reactor owns a [`CoreStats`] (connections by state, deliveries,
//!   bytes out, catch-ups) that only it writes, with relaxed loads and
//!   stores of its own atomics;
//! - workers (and anything else that answers requests or calls the store)
//!   count into one of [`SHARDS`] cache-line-aligned shards, picked once per
//!   thread: requests by endpoint and status, their latency, store calls;
//! - the rest is read at scrape time where it already lives: the job
//!   queue's length, each mailbox's, the router's online users, the Redis
//!   pool's reconnects.
//!
//! A scrape sums these into a [`Snapshot`] and has `prometheus-client`
//! encode it (a [`Collector`] registered on a fresh [`Registry`]).

pub mod store;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::delivery::wire::Kind;
use crate::memory::{self, Heap, TrimStats};
use crate::router::Router;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
pub use store::{Metered, Op};

/// The `kind` label of `haoshuo_subscriptions`: one entry per way to
/// subscribe. Adding one (WebSocket: `"ws"`) is a line here and the arm
/// [`kind_index`] then needs for its [`Kind`].
pub const SUB_KINDS: [&str; 4] = ["stream", "poll", "sse", "ws"];

/// Which entry of [`SUB_KINDS`] a subscription of this kind counts under.
pub fn kind_index(kind: Kind) -> usize {
    match kind {
        Kind::Chunked | Kind::Raw => 0,
        Kind::Poll { .. } => 1,
        Kind::Sse { .. } => 2,
        Kind::Ws => 3,
    }
}

/// What a connection is doing, for `haoshuo_connections{state}`; a
/// subscribed connection counts under [`SUBSCRIBED`] plus its kind.
pub const READING: usize = 0;
pub const WAITING: usize = 1;
pub const LINGER: usize = 2;
pub const SUBSCRIBED: usize = 3;
const CONN_SLOTS: usize = SUBSCRIBED + SUB_KINDS.len();

/// Shards the workers' counters are spread over (a thread keeps one).
pub const SHARDS: usize = 16;

/// Upper bounds (seconds) of the latency histograms' buckets: from a
/// cached token check to a password hash, and store calls in between.
const BOUNDS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The `status` label values counted; anything else is `other`.
const STATUSES: [u16; 18] = [
    101, 200, 204, 400, 401, 403, 404, 405, 408, 409, 411, 413, 414, 429, 431, 500, 503, 505,
];
const STATUS_LABELS: [&str; STATUSES.len() + 1] = [
    "101", "200", "204", "400", "401", "403", "404", "405", "408", "409", "411", "413", "414",
    "429", "431", "500", "503", "505", "other",
];

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|&s| s == status)
        .unwrap_or(STATUSES.len())
}

/// The `endpoint` label values (the API's paths, by `api::endpoint_index`).
const ENDPOINTS: usize = crate::api::ENDPOINTS.len();

/// Adds `n` to a counter only this thread writes: a plain load and store,
/// no locked instruction.
#[inline]
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Relaxed).wrapping_add(n), Relaxed);
}

/// One reactor's counters. Only that reactor writes them; a scrape reads.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct CoreStats {
    /// Connections by slot ([`READING`] ...); wrapping, read as `i64`.
    conns: [AtomicU64; CONN_SLOTS],
    accepted: AtomicU64,
    deliveries: AtomicU64,
    bytes_out: AtomicU64,
    catch_ups: AtomicU64,
    yields: AtomicU64,
    slow_turns: AtomicU64,
}

impl CoreStats {
    /// A connection was accepted (it starts reading).
    #[inline]
    pub fn opened(&self) {
        bump(&self.accepted, 1);
        bump(&self.conns[READING], 1);
    }

    /// A connection went from slot `from` to slot `to`.
    #[inline]
    pub fn moved(&self, from: usize, to: usize) {
        if from != to {
            bump(&self.conns[from], u64::MAX); // -1
            bump(&self.conns[to], 1);
        }
    }

    /// A connection in slot `from` closed.
    #[inline]
    pub fn closed(&self, from: usize) {
        bump(&self.conns[from], u64::MAX);
    }

    /// `n` messages went to a subscriber's connection.
    #[inline]
    pub fn delivered(&self, n: usize) {
        bump(&self.deliveries, n as u64);
    }

    /// `n` bytes went to a socket.
    #[inline]
    pub fn wrote(&self, n: usize) {
        bump(&self.bytes_out, n as u64);
    }

    /// Deliveries were lost on their way to this reactor: every subscriber
    /// reads from the store.
    pub fn caught_up(&self) {
        bump(&self.catch_ups, 1);
    }

    /// The reactor gave its core away after a busy loop turn.
    pub fn yielded(&self) {
        bump(&self.yields, 1);
    }

    /// A loop turn of the reactor took `--slow-turn-ms` or longer.
    pub fn slow_turn(&self) {
        bump(&self.slow_turns, 1);
    }
}

/// A latency histogram's counts: one per bucket of [`BOUNDS`], then the
/// ones beyond, and the sum in nanoseconds.
#[derive(Debug)]
struct Hist {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

impl Default for Hist {
    fn default() -> Hist {
        Hist {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Hist {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = BOUNDS.partition_point(|&b| b < secs);
        // Shared with the other threads on this shard: rare, but possible.
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns
            .fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    fn add_to(&self, sum: &mut HistSum) {
        for (to, from) in sum.buckets.iter_mut().zip(&self.buckets) {
            *to += from.load(Relaxed);
        }
        sum.sum_ns += self.sum_ns.load(Relaxed);
    }
}

/// One shard of the counters threads share.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    /// By endpoint, then status.
    requests: [[AtomicU64; STATUSES.len() + 1]; ENDPOINTS],
    /// By endpoint: from the reactor's hand-off to the worker's answer.
    latency: [Hist; ENDPOINTS],
    /// By [`Op`].
    store: [Hist; store::OPS.len()],
    store_errors: [AtomicU64; store::OPS.len()],
}

impl Default for Shard {
    fn default() -> Shard {
        Shard {
            requests: std::array::from_fn(|_| std::array::from_fn(|_| AtomicU64::new(0))),
            latency: std::array::from_fn(|_| Hist::default()),
            store: std::array::from_fn(|_| Hist::default()),
            store_errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

/// Hands each thread its shard, round robin.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static MY_SHARD: usize = NEXT_SHARD.fetch_add(1, Relaxed) % SHARDS;
}

type ReadCount = Box<dyn Fn() -> u64 + Send + Sync>;

/// Every counter of one server process, and where to read the rest.
pub struct Metrics {
    cores: Box<[Arc<CoreStats>]>,
    shards: Box<[Shard]>,
    /// The job queue's length and capacity.
    queue: Option<(ReadCount, u64)>,
    /// Connections the Redis store made again after losing one.
    redis_reconnects: Option<ReadCount>,
    /// What the heap trimmer did.
    trims: Option<Arc<TrimStats>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("cores", &self.cores.len())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new(0)
    }
}

impl Metrics {
    /// Counters for `cores` reactors.
    pub fn new(cores: usize) -> Metrics {
        Metrics {
            cores: (0..cores).map(|_| Arc::default()).collect(),
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            queue: None,
            redis_reconnects: None,
            trims: None,
        }
    }

    /// Reports the heap trimmer's work.
    pub fn with_trims(mut self, trims: Arc<TrimStats>) -> Self {
        self.trims = Some(trims);
        self
    }

    /// Reports the job queue: `len` reads its length, out of `capacity`.
    pub fn with_queue(
        mut self,
        len: impl Fn() -> u64 + Send + Sync + 'static,
        capacity: usize,
    ) -> Self {
        self.queue = Some((Box::new(len), capacity as u64));
        self
    }

    /// Reports Redis reconnects, as `count` reads them.
    pub fn with_redis(mut self, count: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.redis_reconnects = Some(Box::new(count));
        self
    }

    /// The counters reactor `core` writes.
    pub fn core(&self, core: u16) -> Arc<CoreStats> {
        self.cores[usize::from(core)].clone()
    }

    fn shard(&self) -> &Shard {
        &self.shards[MY_SHARD.with(|s| *s)]
    }

    /// A request to `endpoint` (`api::endpoint_index`) was answered with
    /// `status`, `took` after the reactor handed it on (`None`: the
    /// reactor answered it itself).
    pub fn request(&self, endpoint: usize, status: u16, took: Option<Duration>) {
        let shard = self.shard();
        shard.requests[endpoint][status_index(status)].fetch_add(1, Relaxed);
        if let Some(took) = took {
            shard.latency[endpoint].observe(took);
        }
    }

    /// A store call `op` took `took`; `failed`: the store was unavailable.
    pub fn store_call(&self, op: Op, took: Duration, failed: bool) {
        let shard = self.shard();
        shard.store[op as usize].observe(took);
        if failed {
            shard.store_errors[op as usize].fetch_add(1, Relaxed);
        }
    }

    /// Sums every counter now; `router` knows the subscriptions and users.
    pub fn snapshot(&self, router: &Router) -> Snapshot {
        let mut s = Snapshot::default();
        for core in self.cores.iter() {
            for (to, from) in s.conns.iter_mut().zip(&core.conns) {
                *to = to.wrapping_add(from.load(Relaxed) as i64);
            }
            s.accepted += core.accepted.load(Relaxed);
            s.deliveries += core.deliveries.load(Relaxed);
            s.bytes_out += core.bytes_out.load(Relaxed);
            s.catch_ups += core.catch_ups.load(Relaxed);
            s.yields += core.yields.load(Relaxed);
            s.slow_turns += core.slow_turns.load(Relaxed);
        }
        s.requests = vec![[0; STATUSES.len() + 1]; ENDPOINTS];
        s.latency = vec![HistSum::default(); ENDPOINTS];
        s.store = vec![HistSum::default(); store::OPS.len()];
        s.store_errors = vec![0; store::OPS.len()];
        for shard in self.shards.iter() {
            for (to, from) in s.requests.iter_mut().zip(&shard.requests) {
                for (t, f) in to.iter_mut().zip(from) {
                    *t += f.load(Relaxed);
                }
            }
            for (to, from) in s.latency.iter_mut().zip(&shard.latency) {
                from.add_to(to);
            }
            for (to, from) in s.store.iter_mut().zip(&shard.store) {
                from.add_to(to);
            }
            for (to, from) in s.store_errors.iter_mut().zip(&shard.store_errors) {
                *to += from.load(Relaxed);
            }
        }
        s.mailboxes = (0..router.cores())
            .map(|c| {
                let m = router.mailbox(c as u16);
                (m.len() as u64, m.dropped())
            })
            .collect();
        s.queue = self.queue.as_ref().map(|(len, cap)| (len(), *cap));
        s.redis_reconnects = self.redis_reconnects.as_ref().map(|count| count());
        s.heap = memory::heap();
        s.resident = memory::resident();
        s.trims = self
            .trims
            .as_ref()
            .map(|t| (t.trims(), t.returned(), t.took()));
        let mut online = 0;
        router.for_each_online(Instant::now(), |users| online += users.len());
        s.online_users = online as u64;
        s
    }

    /// The answer to `GET /metrics`: every metric, in the Prometheus text
    /// format ([`CONTENT_TYPE`]).
    pub fn render(&self, router: &Router) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.snapshot(router)));
        let mut out = String::with_capacity(8 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// A histogram summed over shards.
#[derive(Clone, Debug, Default)]
pub struct HistSum {
    buckets: [u64; BOUNDS.len() + 1],
    sum_ns: u64,
}

impl HistSum {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    fn encode(&self, mut m: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Per bucket, not cumulative: the encoder adds them up, and the
        // overflow is the `+Inf` bucket it adds (the whole count).
        let buckets: Vec<(f64, u64)> = BOUNDS.iter().copied().zip(self.buckets).collect();
        m.encode_histogram::<NoLabelSet>(self.sum_ns as f64 / 1e9, self.count(), &buckets, None)
    }
}

/// Every metric's value at one scrape.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Connections by slot ([`READING`] ...).
    conns: [i64; CONN_SLOTS],
    pub accepted: u64,
    pub deliveries: u64,
    pub bytes_out: u64,
    pub catch_ups: u64,
    pub yields: u64,
    pub slow_turns: u64,
    requests: Vec<[u64; STATUSES.len() + 1]>,
    latency: Vec<HistSum>,
    store: Vec<HistSum>,
    store_errors: Vec<u64>,
    /// Each reactor's inbox: (messages waiting, deliveries dropped full).
    mailboxes: Vec<(u64, u64)>,
    queue: Option<(u64, u64)>,
    redis_reconnects: Option<u64>,
    pub online_users: u64,
    heap: Option<Heap>,
    resident: Option<u64>,
    /// Trims made, the resident bytes they gave back, the time they took.
    trims: Option<(u64, u64, Duration)>,
}

impl Snapshot {
    /// Open subscriptions of each kind, in [`SUB_KINDS`] order.
    pub fn subscriptions(&self) -> [i64; SUB_KINDS.len()] {
        std::array::from_fn(|k| self.conns[SUBSCRIBED + k])
    }

    /// Connections by state: reading, waiting, subscribed, linger.
    fn states(&self) -> [(&'static str, i64); 4] {
        let subscribed = self.subscriptions().iter().sum();
        [
            ("reading", self.conns[READING]),
            ("waiting", self.conns[WAITING]),
            ("subscribed", subscribed),
            ("linger", self.conns[LINGER]),
        ]
    }
}

/// Writes one metric's descriptor and hands its encoder to `body`.
fn family(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    body: impl FnOnce(&mut MetricEncoder) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    body(&mut m)
}

fn counter(m: &mut MetricEncoder, v: u64) -> Result<(), std::fmt::Error> {
    m.encode_counter::<NoLabelSet, u64, u64>(&v, None)
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge, Histogram};
        family(
            &mut e,
            "haoshuo_subscriptions",
            "Open subscriptions (streams, SSE streams, held polls), by kind.",
            Gauge,
            |m| {
                for (kind, n) in SUB_KINDS.iter().zip(self.subscriptions()) {
                    m.encode_family(&[("kind", *kind)])?.encode_gauge(&n)?;
                }
                Ok(())
            },
        )?;
        family(&mut e, "haoshuo_online_users", "Users online on this process: a stream or poll open, or a poll answered within the heartbeat interval.", Gauge, |m| {
            m.encode_gauge(&self.online_users)
        })?;
        family(
            &mut e,
            "haoshuo_deliveries",
            "Messages written to subscribers' connections (live or read from the store).",
            Counter,
            |m| counter(m, self.deliveries),
        )?;
        family(
            &mut e,
            "haoshuo_connections",
            "Open connections (the admin listener's included), by state.",
            Gauge,
            |m| {
                for (state, n) in self.states() {
                    m.encode_family(&[("state", state)])?.encode_gauge(&n)?;
                }
                Ok(())
            },
        )?;
        family(
            &mut e,
            "haoshuo_connections_accepted",
            "Connections accepted.",
            Counter,
            |m| counter(m, self.accepted),
        )?;
        family(
            &mut e,
            "haoshuo_bytes_out",
            "Bytes written to sockets.",
            Counter,
            |m| counter(m, self.bytes_out),
        )?;
        family(
            &mut e,
            "haoshuo_requests",
            "Requests answered, by endpoint and HTTP status.",
            Counter,
            |m| {
                for (endpoint, statuses) in self.requests.iter().enumerate() {
                    for (status, &n) in statuses.iter().enumerate().filter(|(_, &n)| n > 0) {
                        let labels = [
                            ("endpoint", crate::api::ENDPOINTS[endpoint]),
                            ("status", STATUS_LABELS[status]),
                        ];
                        counter(&mut m.encode_family(&labels)?, n)?;
                    }
                }
                Ok(())
            },
        )?;
        family(&mut e, "haoshuo_request_duration_seconds", "From a request's hand-off to a worker until its answer (a stream or poll: until subscribed with its first page), by endpoint.", Histogram, |m| {
            for (endpoint, h) in self.latency.iter().enumerate().filter(|(_, h)| h.count() > 0) {
                h.encode(m.encode_family(&[("endpoint", crate::api::ENDPOINTS[endpoint])])?)?;
            }
            Ok(())
        })?;
        family(
            &mut e,
            "haoshuo_store_call_duration_seconds",
            "Store calls, by operation.",
            Histogram,
            |m| {
                for (op, h) in self.store.iter().enumerate().filter(|(_, h)| h.count() > 0) {
                    h.encode(m.encode_family(&[("op", store::OPS[op])])?)?;
                }
                Ok(())
            },
        )?;
        family(
            &mut e,
            "haoshuo_store_errors",
            "Store calls that failed because the store was unavailable, by operation.",
            Counter,
            |m| {
                for (op, _) in self.store.iter().enumerate().filter(|(_, h)| h.count() > 0) {
                    counter(
                        &mut m.encode_family(&[("op", store::OPS[op])])?,
                        self.store_errors[op],
                    )?;
                }
                Ok(())
            },
        )?;
        if let Some((len, capacity)) = self.queue {
            family(
                &mut e,
                "haoshuo_job_queue_depth",
                "API calls and page reads waiting for a worker.",
                Gauge,
                |m| m.encode_gauge(&len),
            )?;
            family(
                &mut e,
                "haoshuo_job_queue_capacity",
                "Most jobs that may wait (--job-queue).",
                Gauge,
                |m| m.encode_gauge(&capacity),
            )?;
        }
        family(
            &mut e,
            "haoshuo_mailbox_depth",
            "Messages waiting in each reactor's inbox.",
            Gauge,
            |m| {
                for (core, (len, _)) in self.mailboxes.iter().enumerate() {
                    m.encode_family(&[("core", core.to_string())])?
                        .encode_gauge(len)?;
                }
                Ok(())
            },
        )?;
        family(&mut e, "haoshuo_mailbox_dropped", "Live delivery batches dropped because a reactor's inbox was full (its subscribers then read from the store).", Counter, |m| {
            counter(m, self.mailboxes.iter().map(|(_, d)| d).sum())
        })?;
        family(&mut e, "haoshuo_mailbox_lag_events", "Times a reactor caught every subscriber up from the store because deliveries were lost (a full inbox, a Redis feed reconnect).", Counter, |m| {
            counter(m, self.catch_ups)
        })?;
        family(&mut e, "haoshuo_reactor_yields", "Loop turns a reactor ended by giving its core away (sched_yield): turns that committed sends themselves and ran --yield-after-us or longer.", Counter, |m| {
            counter(m, self.yields)
        })?;
        family(&mut e, "haoshuo_reactor_slow_turns", "Loop turns of a reactor that took --slow-turn-ms or longer (each also a warning line): every connection of that core waited for them.", Counter, |m| {
            counter(m, self.slow_turns)
        })?;
        if let Some(n) = self.redis_reconnects {
            family(&mut e, "haoshuo_redis_reconnects", "Connections to Redis made again after one was lost (pool lanes and the announcement feed).", Counter, |m| {
                counter(m, n)
            })?;
        }
        if let Some(bytes) = self.resident {
            family(
                &mut e,
                "process_resident_memory_bytes",
                "Resident memory of this process (/proc/self/statm).",
                Gauge,
                |m| m.encode_gauge(&bytes),
            )?;
        }
        if let Some(heap) = self.heap {
            family(
                &mut e,
                "haoshuo_heap_in_use_bytes",
                "Heap handed out by the allocator and not freed (glibc's mallinfo2).",
                Gauge,
                |m| m.encode_gauge(&heap.in_use),
            )?;
            family(
                &mut e,
                "haoshuo_heap_free_bytes",
                "Heap freed and kept by the allocator for later, resident or given back.",
                Gauge,
                |m| m.encode_gauge(&heap.free),
            )?;
        }
        if let Some((trims, returned, took)) = self.trims {
            family(
                &mut e,
                "haoshuo_heap_trims",
                "Times freed heap was given back to the system (--heap-trim-secs).",
                Counter,
                |m| counter(m, trims),
            )?;
            family(
                &mut e,
                "haoshuo_heap_returned_bytes",
                "Resident bytes the heap trims gave back, summed.",
                Counter,
                |m| counter(m, returned),
            )?;
            family(
                &mut e,
                "haoshuo_heap_trim_seconds",
                "Time the heap trims took, summed (each holds an arena's lock while it walks it).",
                Counter,
                |m| m.encode_counter::<NoLabelSet, f64, u64>(&took.as_secs_f64(), None),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_lands_in_the_first_bucket_that_holds_it() {
        let h = Hist::default();
        for took in [
            Duration::from_micros(100), // on a bound: that bucket (`le`)
            Duration::from_micros(101),
            Duration::from_secs(6), // beyond the last: +Inf only
        ] {
            h.observe(took);
        }
        let mut sum = HistSum::default();
        h.add_to(&mut sum);
        assert_eq!(sum.buckets[0], 1);
        assert_eq!(sum.buckets[1], 1);
        assert_eq!(sum.buckets[BOUNDS.len()], 1);
        assert_eq!(sum.count(), 3);
        assert_eq!(sum.sum_ns, 6_000_201_000);
    }

    #[test]
    fn a_connection_counts_in_one_state_at_a_time() {
        let m = Metrics::new(1);
        let core = m.core(0);
        core.opened();
        core.moved(READING, WAITING);
        core.moved(WAITING, SUBSCRIBED + 2);
        core.moved(SUBSCRIBED + 2, SUBSCRIBED + 2);
        let now: Vec<i64> = core.conns.iter().map(|c| c.load(Relaxed) as i64).collect();
        assert_eq!(now, [0, 0, 0, 0, 0, 1, 0]);
        core.closed(SUBSCRIBED + 2);
        assert!(core.conns.iter().all(|c| c.load(Relaxed) == 0));
        assert_eq!(core.accepted.load(Relaxed), 1);
    }

    #[test]
    fn unknown_statuses_count_as_other() {
        assert_eq!(STATUS_LABELS[status_index(200)], "200");
        assert_eq!(STATUS_LABELS[status_index(503)], "503");
        assert_eq!(STATUS_LABELS[status_index(418)], "other");
    }
}
