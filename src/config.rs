//! Command line and environment: every setting of the server in one struct.
//!
//! Each flag can also be set from an environment variable `HAOSHUO_<NAME>`;
//! a flag given on the command line wins.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// When the embedded store's log is fsynced (like Redis's `appendfsync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FsyncPolicy {
    /// Before every answer: nothing answered `ok` is lost even on power loss.
    Always,
    /// Once a second: a crash of the server loses nothing (the OS has the
    /// data); a crash of the machine loses at most the last second.
    Everysec,
}

#[derive(Clone, Debug, Parser)]
#[command(name = "haoshuo", version, about = "haoshuo IM push server")]
pub struct Config {
    /// Address to listen on (every reactor binds it with SO_REUSEPORT).
    /// Port 0 picks a free port; the start line names it.
    /// A host name (`localhost:2012`) listens on every address it
    /// resolves to.
    #[arg(long, env = "HAOSHUO_LISTEN", default_value = "0.0.0.0:2012")]
    pub listen: String,

    /// Directory of the embedded store.
    #[arg(long, env = "HAOSHUO_DATA_DIR", default_value = "./haoshuo-data")]
    pub data_dir: PathBuf,

    /// Keep everything in Redis instead of the embedded store
    /// (redis://HOST:PORT/DB); several servers may share one.
    #[arg(long, env = "HAOSHUO_REDIS")]
    pub redis: Option<String>,

    /// Redis connections; each pipelines the calls of every worker waiting
    /// on it. Default: one per core.
    #[arg(long, env = "HAOSHUO_REDIS_POOL")]
    pub redis_pool: Option<usize>,

    /// Seconds a token read from Redis is trusted by this process without
    /// asking Redis again (logouts reach the cache sooner, by announcement;
    /// this bounds how long a missed announcement leaves a token usable).
    #[arg(long, env = "HAOSHUO_TOKEN_CACHE_SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub token_cache_secs: u64,

    /// Replicas every Redis write must reach before it is answered (Redis
    /// WAIT, once per pipelined batch), so that a failover to a replica
    /// loses nothing that was answered `ok`. 0: Redis's asynchronous
    /// replication, which may lose the last writes (docs/redis.md).
    #[arg(long, env = "HAOSHUO_REDIS_WAIT_REPLICAS", default_value_t = 0, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=16))]
    pub redis_wait_replicas: usize,

    /// Milliseconds a Redis connect, read or write may take before the API
    /// call answers 503.
    #[arg(long, env = "HAOSHUO_REDIS_TIMEOUT_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_timeout_ms: u64,

    /// Reactor (event loop) threads; default: one per core.
    #[arg(long, env = "HAOSHUO_THREADS")]
    pub threads: Option<usize>,

    /// Worker threads running API calls against the store; default: 2 per
    /// core, 16 per core with --redis.
    #[arg(long, env = "HAOSHUO_WORKERS")]
    pub workers: Option<usize>,

    /// API calls and page reads that may wait for a worker; beyond it a
    /// request is answered 503 at once (a client would wait longer for its
    /// answer than it would to retry).
    #[arg(long, env = "HAOSHUO_JOB_QUEUE", default_value_t = crate::worker::QUEUE_CAPACITY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16_777_216))]
    pub job_queue: usize,

    /// Messages waiting in one reactor's inbox past which a live delivery
    /// is dropped; the reactor's subscribers then read what they missed
    /// from the store. Workers' answers always go in (the job queue bounds
    /// them).
    #[arg(long, env = "HAOSHUO_MAILBOX_CAPACITY", default_value_t = crate::net::mailbox::INBOX_CAPACITY, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=16_777_216))]
    pub mailbox_capacity: usize,

    /// Seconds of quiet on a stream before a `noop` heartbeat frame.
    #[arg(long, env = "HAOSHUO_HEARTBEAT", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub heartbeat: u32,

    /// Seconds a long-poll is held before it answers `noop`.
    #[arg(long, env = "HAOSHUO_POLL_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub poll_timeout: u32,

    /// Most connections the server holds at once; accepting pauses at this
    /// number and resumes below 90 % of it.
    #[arg(long, env = "HAOSHUO_MAX_CONNS", default_value_t = 1_000_000)]
    pub max_conns: usize,

    /// Most streams and polls one user may have open at once.
    #[arg(long, env = "HAOSHUO_MAX_SUBS_PER_USER", default_value_t = 16)]
    pub max_subs_per_user: usize,

    /// Largest request body accepted, in bytes (413 above it).
    #[arg(long, env = "HAOSHUO_MAX_BODY", default_value_t = 64 * 1024)]
    pub max_body: usize,

    /// Most messages in one data frame, poll answer or pull answer.
    #[arg(long, env = "HAOSHUO_PAGE_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub page_size: u32,

    /// Most bytes of messages in one data frame, poll answer or pull answer
    /// (each message counts its content plus 64 bytes); one larger message
    /// goes alone. Bounds what one slow subscriber costs the server: a
    /// stream is sent its backlog a page at a time, as its socket drains.
    #[arg(long, env = "HAOSHUO_PAGE_BYTES", default_value_t = 256 * 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub page_bytes: u32,

    /// Seconds a client may take to send a whole request once it has
    /// started one (408 beyond).
    #[arg(long, env = "HAOSHUO_REQUEST_TIMEOUT", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub request_timeout: u32,

    /// Seconds an idle keep-alive connection is kept open.
    #[arg(long, env = "HAOSHUO_KEEPALIVE_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub keepalive_timeout: u32,

    /// Seconds a connection closed after its answer keeps draining what the
    /// client sends, so the client reads the answer rather than a reset
    /// (nginx's `lingering_timeout`).
    #[arg(long, env = "HAOSHUO_LINGER_TIMEOUT", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub linger_timeout: u32,

    /// Seconds a connection's queued output may make no progress at all
    /// before it is closed (a slow client is never closed for being slow).
    #[arg(long, env = "HAOSHUO_SEND_TIMEOUT", default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=3600))]
    pub send_timeout: u32,

    /// Most un-acked messages one user's inbox keeps (0: no limit). Beyond
    /// it the oldest are dropped, and a client asking for them is told with
    /// a `trimmed` frame.
    #[arg(long, env = "HAOSHUO_INBOX_CAP", default_value_t = 10_000)]
    pub inbox_cap: usize,

    /// Seconds a login token stays valid.
    #[arg(long, env = "HAOSHUO_TOKEN_TTL", default_value_t = 30 * 24 * 3600)]
    pub token_ttl: u64,

    /// Most password hashes (argon2id, tens of ms of CPU each) computed at
    /// once by `/re` and `/login`; beyond it they answer 429 at once, so
    /// the other endpoints never wait. Default: one per core.
    #[arg(long, env = "HAOSHUO_HASH_CONCURRENCY")]
    pub hash_concurrency: Option<usize>,

    /// `/re` and `/login` calls a minute from one client address (a
    /// burst of as many is allowed; 0: no limit). Behind a proxy every
    /// client has the proxy's address: raise it there.
    #[arg(long, env = "HAOSHUO_AUTH_PER_IP", default_value_t = 120)]
    pub auth_per_ip: u32,

    /// `/login` calls a minute for one (appid, username), wherever they
    /// come from: a bound on password guessing (0: no limit).
    #[arg(long, env = "HAOSHUO_LOGIN_PER_USER", default_value_t = 10)]
    pub login_per_user: u32,

    /// Messages a second one sender (appid, fromid) may send with `/p` and
    /// `/gp`, ten seconds' worth at once; beyond it 429 (0: no limit).
    #[arg(long, env = "HAOSHUO_SEND_RATE", default_value_t = 100)]
    pub send_rate: u32,

    /// Most members of one group (each group message is written once per
    /// member).
    #[arg(long, env = "HAOSHUO_MAX_GROUP_MEMBERS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_group_members: u32,

    /// Most groups one user may create (403 beyond; 0: no limit): each is
    /// kept for good, and its members did not ask to be in it.
    #[arg(long, env = "HAOSHUO_MAX_GROUPS_PER_USER", default_value_t = 1000)]
    pub max_groups_per_user: u32,

    /// Most login tokens one user holds (0: no limit): a new login beyond
    /// it revokes the oldest token (its streams and polls get the 401
    /// frame), so a user's tokens cannot pile up for --token-ttl.
    #[arg(long, env = "HAOSHUO_MAX_TOKENS_PER_USER", default_value_t = 100)]
    pub max_tokens_per_user: u32,

    /// Seconds between this process's reports of its online users to the
    /// store (Redis: what `/online` on other processes sees; a process
    /// that dies takes its users offline within three of these).
    #[arg(long, env = "HAOSHUO_PRESENCE_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub presence_secs: u64,

    /// Seconds between looks at whether to give freed heap back to the
    /// system (glibc's `malloc_trim`): done once what the heap freed since
    /// it last did is a 64th of the process (256 KiB at least). After a
    /// connect storm or a bulk provisioning that is most of what the
    /// burst left resident (docs/c1m.md). 0: never.
    #[arg(long, env = "HAOSHUO_HEAP_TRIM_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub heap_trim_secs: u64,

    /// Microseconds after which a busy event-loop turn ends by giving the
    /// core away once (`sched_yield`): a turn that ran sends itself (the
    /// embedded store, unless --fsync always) and answered them. Lets the
    /// clients, or a proxy, sharing the host's cores read the answers
    /// without waiting out the loop's time slice. `off`: never.
    #[arg(long, env = "HAOSHUO_YIELD_AFTER_US", default_value = "50", value_parser = parse_yield_after)]
    pub yield_after_us: YieldAfter,

    /// Milliseconds an event-loop turn may take before a warning names it
    /// (how long, what it did) and `haoshuo_reactor_slow_turns_total`
    /// counts it: every connection of that core waited meanwhile. `off`:
    /// never.
    #[arg(long, env = "HAOSHUO_SLOW_TURN_MS", default_value = "100", value_parser = parse_slow_turn)]
    pub slow_turn_ms: SlowTurn,

    /// A web origin (`https://app.example`) whose pages may call the API
    /// from a browser (CORS), repeatable or comma-separated; `*` for any.
    /// Without it, browsers on other origins are refused as before.
    #[arg(long, env = "HAOSHUO_ALLOW_ORIGIN", value_delimiter = ',')]
    pub allow_origin: Vec<String>,

    /// Serve a small chat page at `GET /demo` on the API listener: two
    /// users chatting over SSE or WebSocket, to try the server from a
    /// browser. Off: `/demo` is a 404 like any unknown path.
    #[arg(long, env = "HAOSHUO_DEMO")]
    pub demo: bool,

    /// Which events are logged to stderr: `error`, `warn`, `info` or
    /// `debug` (each includes the ones before it). Repeats of one error
    /// are written once a second with a count.
    #[arg(long, env = "HAOSHUO_LOG_LEVEL", value_enum, default_value = "info")]
    pub log_level: crate::log::Level,

    /// Log one line per answered request to stderr: time, client, method,
    /// path (the query's token left out), status, bytes, duration.
    #[arg(long, env = "HAOSHUO_ACCESS_LOG")]
    pub access_log: bool,

    /// A proxy's address (repeatable or comma-separated) whose
    /// `X-Forwarded-For` names the client in the access log.
    #[arg(long, env = "HAOSHUO_TRUST_PROXY", value_delimiter = ',')]
    pub trust_proxy: Vec<std::net::IpAddr>,

    /// Seconds a send's `cmsgid` is remembered: a retry of `/p` or `/gp`
    /// with the same (appid, fromid, cmsgid) within it stores nothing new.
    #[arg(long, env = "HAOSHUO_CMSGID_WINDOW", default_value_t = 600)]
    pub cmsgid_window: u64,

    /// Address of the admin listener (bulk user provisioning, probes,
    /// Prometheus metrics at /metrics; see README);
    /// off unless set. Must be a loopback address unless --admin-key is set.
    #[arg(long, env = "HAOSHUO_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,

    /// Key the admin listener requires in an `X-Admin-Key` header (at
    /// least 16 bytes).
    #[arg(long, env = "HAOSHUO_ADMIN_KEY")]
    pub admin_key: Option<String>,

    /// Share the listening port with other processes already bound to it
    /// (several nodes on one Redis). Without it the server refuses to start
    /// on an address another process serves.
    #[arg(long, env = "HAOSHUO_REUSEPORT")]
    pub reuseport: bool,

    /// Run N server processes sharing the listen address (Redis store
    /// only): one process holds as many connections as it may open files.
    /// `auto`: enough for --max-conns at the open-file limit. The
    /// supervisor restarts a process that dies and forwards SIGTERM.
    #[arg(long, env = "HAOSHUO_PROCESSES", value_parser = parse_processes)]
    pub processes: Option<Processes>,

    /// Start even if the embedded store's log is damaged in its middle:
    /// keep every record before the damage, drop the rest, and say what
    /// was dropped. Without it the server refuses to start and names the
    /// line.
    #[arg(long, env = "HAOSHUO_REPAIR")]
    pub repair: bool,

    /// When the embedded store's log reaches the disk.
    #[arg(long, env = "HAOSHUO_FSYNC", value_enum, default_value_t = FsyncPolicy::Everysec)]
    pub fsync: FsyncPolicy,
}

/// How many server processes `--processes` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Processes {
    Count(usize),
    /// Enough for `--max-conns` at the open-file limit.
    Auto,
}

fn parse_processes(s: &str) -> Result<Processes, String> {
    match s {
        "auto" => Ok(Processes::Auto),
        n => match n.parse::<usize>() {
            Ok(n @ 1..=1024) => Ok(Processes::Count(n)),
            _ => Err("expected a number of processes (1 to 1024) or auto".into()),
        },
    }
}

/// `--yield-after-us`: how long a loop turn that committed sends runs
/// before it ends by yielding the core; `None`: it never does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct YieldAfter(pub Option<Duration>);

fn parse_yield_after(s: &str) -> Result<YieldAfter, String> {
    duration_or_off(s, "microseconds", 1_000_000, Duration::from_micros).map(YieldAfter)
}

/// `--slow-turn-ms`: how long a loop turn may take before it is reported
/// as slow; `None`: never.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowTurn(pub Option<Duration>);

fn parse_slow_turn(s: &str) -> Result<SlowTurn, String> {
    duration_or_off(s, "milliseconds", 3_600_000, Duration::from_millis).map(SlowTurn)
}

/// `off`, or a count of `unit`s from 0 to `max` made a duration by `of`.
fn duration_or_off(
    s: &str,
    unit: &str,
    max: u64,
    of: fn(u64) -> Duration,
) -> Result<Option<Duration>, String> {
    match s {
        "off" => Ok(None),
        n => match n.parse::<u64>() {
            Ok(n) if n <= max => Ok(Some(of(n))),
            _ => Err(format!("expected {unit} (0 to {max}) or off")),
        },
    }
}

/// The addresses `spec` (`HOST:PORT`, `IP:PORT`, `[IPv6]:PORT`) names, in
/// the resolver's order, without repeats.
pub fn resolve(spec: &str, flag: &str) -> Result<Vec<SocketAddr>, String> {
    use std::net::ToSocketAddrs;
    let mut addrs: Vec<SocketAddr> = Vec::new();
    let found = spec
        .to_socket_addrs()
        .map_err(|e| format!("{flag} {spec}: {e} (expected HOST:PORT, e.g. localhost:2012)"))?;
    for a in found {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err(format!("{flag} {spec}: resolves to no address"));
    }
    Ok(addrs)
}

impl Config {
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or_else(cores).max(1)
    }

    /// Two per core on the embedded store (its calls never wait on I/O);
    /// sixteen per core on Redis, where a worker waits out each round trip
    /// and the calls waiting together are what fills each pipeline.
    pub fn workers(&self) -> usize {
        let per_core = if self.redis.is_some() { 16 } else { 2 };
        self.workers.unwrap_or_else(|| per_core * cores()).max(1)
    }

    /// Concurrent password hashes: one per core unless set; the workers
    /// (two per core at least) always keep some free for other calls.
    pub fn hash_concurrency(&self) -> usize {
        self.hash_concurrency.unwrap_or_else(cores).max(1)
    }

    /// Redis connections (pipelining lanes); default: one per core.
    pub fn redis_lanes(&self) -> usize {
        self.redis_pool.unwrap_or_else(cores).max(1)
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--yield-after-us` and `--slow-turn-ms`: a count of their unit up
    /// to their bound, or `off`; anything else is refused naming the unit.
    #[test]
    fn durations_take_their_unit_or_off() {
        type Parse = fn(&str) -> Result<Option<Duration>, String>;
        type Case = (Parse, fn(u64) -> Duration, u64, &'static str);
        let cases: [Case; 2] = [
            (
                |s| parse_yield_after(s).map(|y| y.0),
                Duration::from_micros,
                1_000_000,
                "microseconds",
            ),
            (
                |s| parse_slow_turn(s).map(|t| t.0),
                Duration::from_millis,
                3_600_000,
                "milliseconds",
            ),
        ];
        for (parse, unit, max, name) in cases {
            for n in [0, 50, max] {
                assert_eq!(parse(&n.to_string()), Ok(Some(unit(n))), "{name}");
            }
            assert_eq!(parse("off"), Ok(None), "{name}");
            for bad in [&(max + 1).to_string(), "-1", "", "5ms", "Off"] {
                let e = parse(bad).unwrap_err();
                assert!(e.contains(&format!("{name} (0 to {max})")), "{bad}: {e}");
            }
        }
    }
}
