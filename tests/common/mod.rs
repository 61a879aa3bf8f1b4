//! Shared harness of the haoshuo integration tests.
//!
//! * [`Server`] runs the real `haoshuo` binary on `127.0.0.1:0` with a
//!   temporary data directory, learns the bound port from the start line it
//!   prints, keeps draining its output (shown when a test fails), and kills it
//!   when dropped. [`Server::kill9`], [`Server::term`] and
//!   [`Server::restart_same_dir`] drive the durability tests.
//! * [`Backend`] names the store the server runs on; [`backend_tests!`]
//!   generates one `#[test]` per backend for each test function.
//! * [`Conn`] is a small HTTP/1.1 client over `std::net::TcpStream` that keeps
//!   partial input across read timeouts, so waiting never loses bytes.
//! * [`post`] / [`post_json`] send the two request encodings, [`Api`] wraps
//!   every endpoint in a typed helper, [`StreamClient`] reads
//!   `/cget/stream`, [`poll`] / [`PendingPoll`] do `/cget/poll`.
//! * The `check_*` functions and [`Msg::parse`] check each answer's JSON shape
//!   exactly as `API.md` states it (field names and JSON types).
//!
//! Nothing here sleeps to let the server "catch up": every wait reads with a
//! deadline and fails with a clear message when it passes.
#![allow(dead_code)] // every test binary uses its own subset of the harness

mod redis;
#[allow(unused_imports)] // only tests/overload.rs signals a process by pid
pub use redis::signal;
pub use redis::RedisServer;
mod proxy;
#[allow(unused_imports)] // only tests/proxies.rs puts proxies in front
pub use proxy::{Proxy, ProxyKind};

use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long to wait for anything that should happen promptly (an answer, a
/// pushed message, a heartbeat due within a second or two).
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for something that must NOT happen (a held poll that
/// must not answer yet, a stream that must stay quiet).
pub const QUIET: Duration = Duration::from_millis(300);
/// How long the server may take to print its start line.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a single long-poll may take (tests that hold polls pass
/// `--poll-timeout` of a few seconds).
const POLL_WAIT: Duration = Duration::from_secs(15);
/// `Content-Type` of the form encoding.
pub const FORM: &str = "application/x-www-form-urlencoded";
/// A well-formed token (48 lowercase hex characters, so it passes the shape
/// check and is refused by the store lookup) that no login returns in
/// practice.
pub const BAD_TOKEN: &str = "000000000000000000000000000000000000000000000000";
/// Characters of a token: a 16-hex selector and a 32-hex verifier
/// (src/auth.rs), lowercase.
pub const TOKEN_LEN: usize = 48;

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// The store a server under test runs on.
///
/// Adding one: a variant here, its arm in [`Backend::args`], and its
/// `module Variant` pair in the list inside [`backend_tests!`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The built-in log-structured store in `--data-dir`.
    Embedded,
    /// A real `redis-server` the harness starts for each server under test.
    Redis,
}

impl Backend {
    /// Extra command-line arguments that select this backend.
    fn args(self, redis_url: Option<&str>) -> Vec<String> {
        match (self, redis_url) {
            (Backend::Embedded, _) => Vec::new(),
            (Backend::Redis, Some(url)) => vec!["--redis".into(), url.into()],
            (Backend::Redis, None) => unreachable!("a Redis backend runs with its redis-server"),
        }
    }
}

/// `backend_tests!(a, b, c);` generates, for every backend, a module (named
/// after the backend) holding `#[test] fn a()` calling `a(Backend::X)`, etc.
/// The list of backends is the bracketed list in the first arm.
// Not every test file runs on every backend (tests/faults.rs is Redis only).
#[allow(unused_macros)]
macro_rules! backend_tests {
    ($($name:ident),+ $(,)?) => {
        $crate::common::backend_tests!(@each [embedded Embedded, redis Redis] $($name),+);
    };
    (@each [] $($name:ident),+) => {};
    (@each [$module:ident $variant:ident $(, $rest_module:ident $rest_variant:ident)*]
        $($name:ident),+) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    super::$name($crate::common::Backend::$variant);
                }
            )+
        }
        $crate::common::backend_tests!(@each [$($rest_module $rest_variant),*] $($name),+);
    };
}
#[allow(unused_imports)]
pub(crate) use backend_tests;

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

/// When the store's log reaches the disk: `--fsync` of the embedded store;
/// on the Redis backend, the `appendfsync` the harness starts its
/// redis-server with (haoshuo's own `--fsync` does not apply to Redis).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    Always,
    Everysec,
}

impl Fsync {
    fn as_arg(self) -> &'static str {
        match self {
            Fsync::Always => "always",
            Fsync::Everysec => "everysec",
        }
    }
}

/// Command-line options of a server under test; unset ones keep the
/// server's defaults.
#[derive(Clone, Debug, Default)]
pub struct Opts {
    threads: Option<u32>,
    workers: Option<u32>,
    heartbeat: Option<u32>,
    poll_timeout: Option<u32>,
    max_subs_per_user: Option<u32>,
    max_body: Option<u64>,
    page_size: Option<u32>,
    inbox_cap: Option<u32>,
    max_conns: Option<u32>,
    fsync: Option<Fsync>,
    token_ttl: Option<u64>,
    token_cache_secs: Option<u64>,
    /// `Some(key)`: run the admin listener on a free loopback port, with
    /// `--admin-key` when the key is not empty.
    admin: Option<String>,
    /// Any other flags, as given to [`Opts::flag`].
    extra: Vec<String>,
    /// Runs the server under `prlimit --nofile=N:N` (util-linux): this many
    /// open files at most, soft and hard.
    nofile: Option<u64>,
}

impl Opts {
    pub fn threads(mut self, n: u32) -> Self {
        self.threads = Some(n);
        self
    }
    pub fn workers(mut self, n: u32) -> Self {
        self.workers = Some(n);
        self
    }
    pub fn heartbeat(mut self, secs: u32) -> Self {
        self.heartbeat = Some(secs);
        self
    }
    pub fn poll_timeout(mut self, secs: u32) -> Self {
        self.poll_timeout = Some(secs);
        self
    }
    pub fn max_subs_per_user(mut self, n: u32) -> Self {
        self.max_subs_per_user = Some(n);
        self
    }
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = Some(bytes);
        self
    }
    pub fn page_size(mut self, n: u32) -> Self {
        self.page_size = Some(n);
        self
    }
    pub fn inbox_cap(mut self, n: u32) -> Self {
        self.inbox_cap = Some(n);
        self
    }
    pub fn max_conns(mut self, n: u32) -> Self {
        self.max_conns = Some(n);
        self
    }
    pub fn fsync(mut self, policy: Fsync) -> Self {
        self.fsync = Some(policy);
        self
    }
    /// `--token-ttl`: seconds a login token stays valid.
    pub fn token_ttl(mut self, secs: u64) -> Self {
        self.token_ttl = Some(secs);
        self
    }
    /// `--token-cache-secs`: how long a Redis node trusts a cached token.
    pub fn token_cache_secs(mut self, secs: u64) -> Self {
        self.token_cache_secs = Some(secs);
        self
    }
    /// Turns the admin listener on; `key` may be empty for none.
    pub fn admin(mut self, key: &str) -> Self {
        self.admin = Some(key.to_string());
        self
    }
    /// Runs the server with an open-file limit of `n` (soft and hard), so
    /// a test can make it run out of descriptors.
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }
    /// Any other server flag, e.g. `.flag("--page-bytes", 4096)`.
    pub fn flag(mut self, name: &str, value: impl ToString) -> Self {
        self.extra.push(name.to_string());
        self.extra.push(value.to_string());
        self
    }

    fn args(&self) -> Vec<String> {
        let flags = [
            ("--threads", self.threads.map(|v| v.to_string())),
            ("--workers", self.workers.map(|v| v.to_string())),
            ("--heartbeat", self.heartbeat.map(|v| v.to_string())),
            ("--poll-timeout", self.poll_timeout.map(|v| v.to_string())),
            (
                "--max-subs-per-user",
                self.max_subs_per_user.map(|v| v.to_string()),
            ),
            ("--max-body", self.max_body.map(|v| v.to_string())),
            ("--page-size", self.page_size.map(|v| v.to_string())),
            ("--max-conns", self.max_conns.map(|v| v.to_string())),
            ("--inbox-cap", self.inbox_cap.map(|v| v.to_string())),
            ("--fsync", self.fsync.map(|v| v.as_arg().to_string())),
            ("--token-ttl", self.token_ttl.map(|v| v.to_string())),
            (
                "--token-cache-secs",
                self.token_cache_secs.map(|v| v.to_string()),
            ),
            (
                "--admin-listen",
                self.admin.as_ref().map(|_| "127.0.0.1:0".to_string()),
            ),
            (
                "--admin-key",
                self.admin.clone().filter(|key| !key.is_empty()),
            ),
        ];
        flags
            .into_iter()
            .filter_map(|(flag, value)| value.map(|v| [flag.to_string(), v]))
            .flatten()
            .chain(self.extra.iter().cloned())
            .collect()
    }
}

/// A running `haoshuo` process with its own temporary data directory.
pub struct Server {
    backend: Backend,
    opts: Opts,
    dir: tempfile::TempDir,
    child: Option<Child>,
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    /// The Redis backend's own redis-server (outlives restarts of haoshuo);
    /// `None` on a node started by [`Server::another_node`].
    redis: Option<RedisServer>,
    redis_url: Option<String>,
    /// Everything the server printed (stdout and stderr), across restarts.
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server and waits for its `listening on` line.
    pub fn start(backend: Backend, opts: Opts) -> Server {
        let dir = tempfile::tempdir().expect("create a temporary data dir");
        let log = Arc::new(Mutex::new(String::new()));
        let fsync = opts.fsync.unwrap_or(Fsync::Always);
        let redis = (backend == Backend::Redis).then(|| RedisServer::start_with(fsync));
        let redis_url = redis.as_ref().map(RedisServer::url);
        let (child, addr, admin_addr) =
            spawn(backend, redis_url.as_deref(), &opts, dir.path(), &log);
        Server {
            redis,
            redis_url,
            backend,
            opts,
            dir,
            child: Some(child),
            addr,
            admin_addr,
            log,
        }
    }

    /// A second haoshuo process on the same Redis (its own data dir and
    /// port): another node of one deployment.
    pub fn another_node(&self) -> Server {
        let url = self.redis_url.clone().expect("nodes share a Redis store");
        let dir = tempfile::tempdir().expect("create a temporary data dir");
        let log = Arc::new(Mutex::new(String::new()));
        let (child, addr, admin_addr) =
            spawn(self.backend, Some(&url), &self.opts, dir.path(), &log);
        Server {
            redis: None,
            redis_url: Some(url),
            backend: self.backend,
            opts: self.opts.clone(),
            dir,
            child: Some(child),
            addr,
            admin_addr,
            log,
        }
    }

    /// The address the server listens on (changes on restart).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address (the server must run with `Opts::admin`).
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
            .expect("the server runs without --admin-listen")
    }

    /// Typed endpoint helpers bound to this server's current address.
    pub fn api(&self) -> Api {
        Api { addr: self.addr }
    }

    /// The Redis backend's redis-server, to stop and restart it.
    pub fn redis(&mut self) -> &mut RedisServer {
        self.redis
            .as_mut()
            .expect("this server runs on the embedded store")
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Everything the server printed so far (its start line first).
    pub fn output(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The server's process id (for its memory use in /proc).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is not running").id()
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// SIGKILLs the server (no chance to flush anything) and reaps it.
    /// Does nothing if it is not running.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and returns the exit status (fails after 10 s).
    pub fn term(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is not running");
        let pid = child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run `kill -TERM`");
        assert!(sent.success(), "`kill -TERM {pid}` failed");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(status) => status.expect("wait for haoshuo"),
            Err(_) => {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
                panic!("haoshuo did not exit within 10 s of SIGTERM");
            }
        }
    }

    /// Starts the server again on the same data directory (SIGKILLing the
    /// current process first if it still runs). The port changes.
    pub fn restart_same_dir(&mut self) {
        self.kill9();
        self.log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_str("---- restart ----\n");
        let (child, addr, admin_addr) = spawn(
            self.backend,
            self.redis_url.as_deref(),
            &self.opts,
            self.dir.path(),
            &self.log,
        );
        self.admin_addr = admin_addr;
        self.child = Some(child);
        self.addr = addr;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            eprintln!("---- haoshuo output ({:?}) ----\n{log}", self.backend);
        }
    }
}

fn spawn(
    backend: Backend,
    redis_url: Option<&str>,
    opts: &Opts,
    dir: &Path,
    log: &Arc<Mutex<String>>,
) -> (Child, SocketAddr, Option<SocketAddr>) {
    let bin = env!("CARGO_BIN_EXE_haoshuo");
    let mut cmd = match opts.nofile {
        // prlimit sets the limit on itself and execs the server: same pid.
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    // Hermetic: the server also reads HAOSHUO_* variables.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HAOSHUO_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(opts.args())
        .args(backend.args(redis_url))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "spawn the haoshuo binary{}: {e}",
                if opts.nofile.is_some() {
                    " under prlimit (util-linux)"
                } else {
                    ""
                }
            )
        });
    let (tx, rx) = mpsc::channel();
    drain(child.stdout.take().expect("stdout"), log, Some(tx));
    drain(child.stderr.take().expect("stderr"), log, None);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match rx.recv_timeout(left(deadline)) {
            Ok(line) => {
                if let Some(addr) = parse_addr(&line, "listening on ") {
                    return (child, addr, parse_addr(&line, "admin="));
                }
            }
            Err(why) => {
                let _ = child.kill();
                let status = child.wait();
                let log = log.lock().unwrap_or_else(|e| e.into_inner());
                panic!(
                    "haoshuo printed no `listening on 127.0.0.1:PORT` line within {START_TIMEOUT:?} \
                     ({why:?}; exit status {status:?}); its output:\n{log}"
                );
            }
        }
    }
}

/// Copies a pipe into `log` line by line (and each line to `lines`) until
/// it closes, so the server never blocks on a full pipe.
fn drain(
    pipe: impl Read + Send + 'static,
    log: &Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<String>>,
) {
    let log = Arc::clone(log);
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&raw).into_owned();
                    log.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_str(&line);
                    if let Some(tx) = &lines {
                        let _ = tx.send(line);
                    }
                }
            }
        }
    });
}

/// The address after `mark` in the start line, e.g. `listening on 127.0.0.1:PORT`.
fn parse_addr(line: &str, mark: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(mark)? + mark.len()..];
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

// ---------------------------------------------------------------------------
// HTTP/1.1 client
// ---------------------------------------------------------------------------

/// Why a read stopped before a complete item arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    Timeout,
    Eof,
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, values trimmed, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Status line and headers of a response.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    }
}

/// One client connection. Input is buffered and only consumed once a whole
/// item (head, body, chunk) is there, so a read timeout loses nothing.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Reads are paced to this many bytes per second (a slow link).
    pace: Option<Pace>,
}

/// A reader's speed limit: it has read `read` bytes since `since`.
struct Pace {
    bytes_per_sec: u64,
    since: Instant,
    read: u64,
}

/// Most bytes a paced reader takes per read: small steps keep the pace even.
const PACED_READ: usize = 8 * 1024;

impl Conn {
    pub fn connect(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect_timeout(&addr, WAIT)
            .unwrap_or_else(|e| panic!("connect to haoshuo at {addr}: {e}"));
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        Conn {
            stream,
            buf: Vec::new(),
            pace: None,
        }
    }

    /// A client on a slow link: a receive buffer of `rcvbuf` bytes (set
    /// before connecting, so the window is small from the start) and reads
    /// paced to `bytes_per_sec`. The server's socket fills up and its own
    /// flow control is what is tested.
    pub fn connect_slow(addr: SocketAddr, rcvbuf: usize, bytes_per_sec: u64) -> Conn {
        use socket2::{Domain, Socket, Type};
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a socket");
        sock.set_recv_buffer_size(rcvbuf).expect("set SO_RCVBUF");
        sock.connect_timeout(&addr.into(), WAIT)
            .unwrap_or_else(|e| panic!("connect to haoshuo at {addr}: {e}"));
        let stream: TcpStream = sock.into();
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        Conn {
            stream,
            buf: Vec::new(),
            pace: Some(Pace {
                bytes_per_sec,
                since: Instant::now(),
                read: 0,
            }),
        }
    }

    /// The socket itself, for tests that look below HTTP (what is still
    /// buffered is dropped).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Writes raw bytes (one request, several pipelined ones, or a part).
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write to haoshuo");
    }

    /// Reads once more into the buffer, waiting at most until `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), ReadEnd> {
        let wait = left(deadline);
        if wait.is_zero() {
            return Err(ReadEnd::Timeout);
        }
        self.stream
            .set_read_timeout(Some(wait))
            .expect("set read timeout");
        let mut chunk = [0u8; 16 * 1024];
        let mut want = chunk.len();
        if let Some(pace) = &self.pace {
            // The link's speed: not before the bytes so far are "due".
            let due =
                pace.since + Duration::from_secs_f64(pace.read as f64 / pace.bytes_per_sec as f64);
            thread::sleep(due.saturating_duration_since(Instant::now()));
            want = PACED_READ;
        }
        match self.stream.read(&mut chunk[..want]) {
            Ok(0) => Err(ReadEnd::Eof),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                if let Some(pace) = &mut self.pace {
                    pace.read += n as u64;
                }
                Ok(())
            }
            Err(e) => match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => Err(ReadEnd::Timeout),
                ErrorKind::Interrupted => Ok(()),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => Err(ReadEnd::Eof),
                _ => panic!("read from haoshuo: {e}"),
            },
        }
    }

    /// Waits until `parse` takes a complete item off the front of the buffer.
    fn read_item<T>(
        &mut self,
        deadline: Instant,
        parse: impl Fn(&[u8]) -> Option<(usize, T)>,
    ) -> Result<T, ReadEnd> {
        loop {
            if let Some((used, item)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Ok(item);
            }
            self.fill(deadline)?;
        }
    }

    /// Waits for a response head without consuming it.
    pub fn peek_head(&mut self, timeout: Duration) -> Result<Head, ReadEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, head)) = parse_head(&self.buf) {
                return Ok(head);
            }
            self.fill(deadline)?;
        }
    }

    /// Reads a response head only (for streams).
    pub fn read_head(&mut self, timeout: Duration) -> Result<Head, ReadEnd> {
        self.read_item(Instant::now() + timeout, parse_head)
    }

    /// Reads one whole response (Content-Length or chunked body).
    pub fn try_read_response(&mut self, timeout: Duration) -> Result<Response, ReadEnd> {
        self.read_item(Instant::now() + timeout, parse_response)
    }

    /// Reads one whole response or fails the test.
    pub fn read_response(&mut self, timeout: Duration) -> Response {
        self.try_read_response(timeout)
            .unwrap_or_else(|end| panic!("no complete HTTP response from haoshuo: {end:?}"))
    }

    /// Reads one chunk of a chunked body; an empty payload is the last chunk.
    fn read_chunk(&mut self, timeout: Duration) -> Result<Vec<u8>, ReadEnd> {
        self.read_item(Instant::now() + timeout, parse_chunk)
    }

    /// Reads one `\n`-terminated JSON frame of a close-delimited (HTTP/1.0)
    /// stream body; `None` if none came within `timeout` or the body ended.
    pub fn read_line(&mut self, timeout: Duration) -> Option<Value> {
        let line = self.read_item(Instant::now() + timeout, |buf| {
            let end = buf.iter().position(|&b| b == b'\n')?;
            Some((end + 1, buf[..=end].to_vec()))
        });
        line.ok().map(|l| parse_frame(&l))
    }

    /// True once the server closes the connection within `timeout`; bytes
    /// that arrive meanwhile fail the test.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let before = self.buf.len();
        loop {
            match self.fill(deadline) {
                Ok(()) if self.buf.len() == before => continue, // interrupted
                Ok(()) => panic!(
                    "unexpected bytes on a connection that should close: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Err(ReadEnd::Eof) => return true,
                Err(ReadEnd::Timeout) => return false,
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(buf: &[u8]) -> Option<(usize, Head)> {
    let end = find(buf, b"\r\n\r\n")?;
    let text = std::str::from_utf8(&buf[..end]).expect("response head is not UTF-8");
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(
        parts.next(),
        Some("HTTP/1.1"),
        "status line {status_line:?}"
    );
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {line:?}"));
            (name.trim().to_ascii_lowercase(), value.trim().to_string())
        })
        .collect();
    Some((end + 4, Head { status, headers }))
}

fn parse_chunk(buf: &[u8]) -> Option<(usize, Vec<u8>)> {
    let line_end = find(buf, b"\r\n")?;
    let line = std::str::from_utf8(&buf[..line_end]).expect("chunk size line is not UTF-8");
    let hex = line.split(';').next().unwrap_or_default().trim();
    let size =
        usize::from_str_radix(hex, 16).unwrap_or_else(|_| panic!("bad chunk size line {line:?}"));
    let start = line_end + 2;
    if size == 0 {
        // The last chunk: optional trailers, then an empty line.
        let rest = &buf[start..];
        if rest.starts_with(b"\r\n") {
            return Some((start + 2, Vec::new()));
        }
        return find(rest, b"\r\n\r\n").map(|t| (start + t + 4, Vec::new()));
    }
    if buf.len() < start + size + 2 {
        return None;
    }
    assert_eq!(
        &buf[start + size..start + size + 2],
        b"\r\n",
        "chunk data not followed by CRLF"
    );
    Some((start + size + 2, buf[start..start + size].to_vec()))
}

fn parse_response(buf: &[u8]) -> Option<(usize, Response)> {
    let (mut used, head) = parse_head(buf)?;
    let body = if head.is_chunked() {
        let mut body = Vec::new();
        loop {
            let (n, payload) = parse_chunk(&buf[used..])?;
            used += n;
            if payload.is_empty() {
                break body;
            }
            body.extend_from_slice(&payload);
        }
    } else if let Some(len) = head.header("content-length") {
        let len: usize = len
            .parse()
            .unwrap_or_else(|_| panic!("bad Content-Length {len:?}"));
        if buf.len() < used + len {
            return None;
        }
        used += len;
        buf[used - len..used].to_vec()
    } else {
        assert!(
            head.status == 204 || head.status == 304 || head.status < 200,
            "response without Content-Length or chunked body: {head:?}"
        );
        Vec::new()
    };
    Some((
        used,
        Response {
            status: head.status,
            headers: head.headers,
            body,
        },
    ))
}

/// The bytes of one request; `Content-Length` is added for POST or a body.
pub fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if method == "POST" || !body.is_empty() {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut conn = Conn::connect(addr);
    conn.send(&request_bytes(method, path, headers, body));
    conn.read_response(WAIT)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `haoshuo=<percent-encoded JSON>`.
pub fn form_body(json: &Value) -> String {
    format!("haoshuo={}", percent_encode(&json.to_string()))
}

/// POSTs `json` form-encoded; returns the status and the JSON body.
pub fn post(addr: SocketAddr, path: &str, json: &Value) -> (u16, Value) {
    let r = request(
        addr,
        "POST",
        path,
        &[("Content-Type", FORM)],
        form_body(json).as_bytes(),
    );
    (r.status, r.json())
}

/// POSTs `json` as a raw `application/json` body.
pub fn post_json(addr: SocketAddr, path: &str, json: &Value) -> (u16, Value) {
    let body = json.to_string();
    let r = request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    (r.status, r.json())
}

/// The same JSON with every number (also inside arrays) turned into a
/// numeric string, to check that both are accepted.
pub fn stringify_numbers(v: &Value) -> Value {
    match v {
        Value::Number(n) => Value::String(n.to_string()),
        Value::Array(items) => Value::Array(items.iter().map(stringify_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), stringify_numbers(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

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
fn check_msgs(container: &Value) -> (Vec<Msg>, u64) {
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

/// A `data` frame: `{"type":"data","content":"<JSON string>"}` whose string
/// decodes to `{"msgs":[...],"endid":"N","toid":uid}`; at least one message.
pub fn check_data_frame(frame: &Value, uid: u64) -> Vec<Msg> {
    assert_keys(frame, &["type", "content"]);
    assert_eq!(frame["type"], "data", "{frame}");
    let content = str_field(frame, "content");
    let inner: Value = serde_json::from_str(content).unwrap_or_else(|e| {
        panic!("data frame content is not a JSON string of JSON ({e}): {frame}")
    });
    assert_keys(&inner, &["msgs", "endid", "toid"]);
    assert_eq!(
        num_field(&inner, "toid"),
        uid,
        "toid must be the subscriber: {inner}"
    );
    let (msgs, _) = check_msgs(&inner);
    assert!(!msgs.is_empty(), "a data frame without messages: {inner}");
    msgs
}

pub fn noop_frame() -> Value {
    json!({"type": "noop"})
}

pub fn frame_401() -> Value {
    json!({"type": "401", "content": "token error"})
}

pub fn frame_429() -> Value {
    json!({"type": "429", "content": "too many channels/subscribers"})
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
// /cget/stream
// ---------------------------------------------------------------------------

/// Parses a chunk payload: exactly one JSON frame followed by `\n`.
fn parse_frame(payload: &[u8]) -> Value {
    let text = std::str::from_utf8(payload).expect("frame is not UTF-8");
    let line = text
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("a frame chunk must end with \\n: {text:?}"));
    assert!(
        !line.contains('\n'),
        "one frame per chunk expected: {text:?}"
    );
    serde_json::from_str(line).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {line:?}"))
}

/// A client of `/cget/stream`: one chunk = one JSON frame + `\n`. Checks
/// that msgids on the stream never skip or repeat.
pub struct StreamClient {
    conn: Conn,
    uid: Option<u64>,
    seq: u64,
    next_msgid: Option<u64>,
    ended: bool,
}

impl StreamClient {
    /// Sends `GET /cget/stream?<query>` and reads the head: `Ok` for a
    /// `200` chunked stream, `Err` with the whole response otherwise.
    pub fn connect(addr: SocketAddr, query: &str) -> Result<StreamClient, Response> {
        Self::connect_on(Conn::connect(addr), query)
    }

    /// Like [`StreamClient::connect`], on a connection of the caller's
    /// (e.g. [`Conn::connect_slow`]).
    pub fn connect_on(mut conn: Conn, query: &str) -> Result<StreamClient, Response> {
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
        };
        conn.send(&request_bytes(
            "GET",
            &format!("/cget/stream?{query}"),
            &[],
            b"",
        ));
        let head = conn
            .peek_head(WAIT)
            .unwrap_or_else(|end| panic!("no response head for /cget/stream?{query}: {end:?}"));
        if head.status != 200 {
            return Err(conn.read_response(WAIT));
        }
        conn.read_head(WAIT).expect("the head is buffered");
        assert!(
            head.is_chunked(),
            "/cget/stream must answer Transfer-Encoding: chunked: {head:?}"
        );
        Ok(StreamClient {
            conn,
            uid: param("cname"),
            seq: param("seq").unwrap_or(1),
            next_msgid: None,
            ended: false,
        })
    }

    /// Opens a stream that must answer `200` chunked.
    pub fn open(addr: SocketAddr, seq: u64, uid: u64, token: &str) -> StreamClient {
        Self::connect(addr, &sub_query(seq, uid, token)).unwrap_or_else(|r| {
            panic!(
                "stream refused: HTTP {} {:?}",
                r.status,
                String::from_utf8_lossy(&r.body)
            )
        })
    }

    /// The next frame, or `None` if none came within `timeout` or the body
    /// ended (see [`StreamClient::ended`]).
    pub fn next_frame(&mut self, timeout: Duration) -> Option<Value> {
        if self.ended {
            return None;
        }
        match self.conn.read_chunk(timeout) {
            Ok(payload) if payload.is_empty() => {
                self.ended = true;
                None
            }
            Ok(payload) => Some(parse_frame(&payload)),
            Err(ReadEnd::Timeout) => None,
            Err(ReadEnd::Eof) => panic!("stream closed without the terminating 0-length chunk"),
        }
    }

    /// True once the terminating chunk was read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The messages of the next `data` frame (skipping heartbeats), or `None`
    /// after `timeout`. Fails on any other frame, or if the frame's first
    /// msgid does not follow the last one seen (or precedes `seq`).
    pub fn next_msgs(&mut self, timeout: Duration) -> Option<Vec<Msg>> {
        let deadline = Instant::now() + timeout;
        loop {
            let frame = self.next_frame(left(deadline))?;
            if frame == noop_frame() {
                continue;
            }
            let uid = self.uid.expect("stream opened without a numeric cname");
            let msgs = check_data_frame(&frame, uid);
            let first = msgs[0].msgid;
            match self.next_msgid {
                Some(next) => assert_eq!(first, next, "the stream skipped or repeated a msgid"),
                None => assert!(first >= self.seq, "msgid {first} < seq {}", self.seq),
            }
            self.next_msgid = Some(msgs[msgs.len() - 1].msgid + 1);
            return Some(msgs);
        }
    }

    /// Reads data frames until at least `n` messages came; fails after
    /// `timeout`.
    pub fn collect(&mut self, n: usize, timeout: Duration) -> Vec<Msg> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            match self.next_msgs(left(deadline)) {
                Some(msgs) => got.extend(msgs),
                None => panic!(
                    "stream got {} of {n} messages within {timeout:?} (ended: {}): {got:?}",
                    got.len(),
                    self.ended
                ),
            }
        }
        got
    }

    /// Fails unless nothing but heartbeats arrives for `how_long`.
    pub fn expect_quiet(&mut self, how_long: Duration) {
        if let Some(msgs) = self.next_msgs(how_long) {
            panic!("unexpected messages on the stream: {msgs:?}");
        }
        assert!(!self.ended, "the stream ended unexpectedly");
    }

    /// The next frame must be `expected` and then the body must end.
    pub fn expect_final_frame(&mut self, expected: &Value) {
        let frame = self.next_frame(WAIT);
        assert_eq!(frame.as_ref(), Some(expected), "stream frame");
        if let Some(extra) = self.next_frame(WAIT) {
            panic!("frame after {expected}: {extra}");
        }
        assert!(self.ended, "the stream did not end after {expected}");
    }
}

// ---------------------------------------------------------------------------
// /cget/poll
// ---------------------------------------------------------------------------

/// A `/cget/poll` request sent and not yet (fully) answered.
pub struct PendingPoll {
    conn: Conn,
}

impl PendingPoll {
    pub fn start(addr: SocketAddr, query: &str) -> PendingPoll {
        let mut conn = Conn::connect(addr);
        conn.send(&request_bytes(
            "GET",
            &format!("/cget/poll?{query}"),
            &[],
            b"",
        ));
        PendingPoll { conn }
    }

    /// The answer's frame, or `None` if it did not come within `timeout`
    /// (the poll stays pending). Checks HTTP 200, a `Content-Length`, and a
    /// body of one frame followed by `\n`.
    pub fn wait(&mut self, timeout: Duration) -> Option<Value> {
        let response = match self.conn.try_read_response(timeout) {
            Ok(r) => r,
            Err(ReadEnd::Timeout) => return None,
            Err(ReadEnd::Eof) => panic!("poll connection closed without an answer"),
        };
        Some(answer_frame(response))
    }

    /// The whole response (for the HTTP-level 400 cases).
    pub fn response(&mut self) -> Response {
        self.conn.read_response(WAIT)
    }
}

/// A poll answer: HTTP 200 with a `Content-Length` and one frame + `\n`.
fn answer_frame(r: Response) -> Value {
    assert_eq!(
        r.status,
        200,
        "poll answered {} {:?}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    assert!(
        r.header("content-length").is_some(),
        "poll answer without Content-Length: {r:?}"
    );
    parse_frame(&r.body)
}

/// One long-poll: the frame it answers (waits up to 15 s).
pub fn poll(addr: SocketAddr, seq: u64, uid: u64, token: &str) -> Value {
    PendingPoll::start(addr, &sub_query(seq, uid, token))
        .wait(POLL_WAIT)
        .unwrap_or_else(|| panic!("poll not answered within {POLL_WAIT:?}"))
}
