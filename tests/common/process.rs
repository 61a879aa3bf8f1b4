//! The server under test as a process: [`Backend`] names the store it runs
//! on, [`Opts`] its command line, and [`Server`] runs the real `haoshuo`
//! binary on `127.0.0.1:0` with a temporary data directory, learns the bound
//! port from the start line it prints, keeps draining its output (shown when
//! a test fails), and kills it when dropped. [`Server::kill9`],
//! [`Server::term`] and [`Server::restart_same_dir`] drive the durability
//! tests; [`Server::another_node`] starts a second node on the same Redis.

use super::api::Api;
use super::left;
use super::{RedisCluster, RedisSentinels, RedisServer};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// How long the server may take to print its start line.
const START_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// A Redis Cluster of three masters the harness starts for each server
    /// under test (tests/common/cluster.rs).
    Cluster,
}

impl Backend {
    /// Extra command-line arguments that select this backend.
    fn args(self, redis_url: Option<&str>) -> Vec<String> {
        match (self, redis_url) {
            (Backend::Embedded, _) => Vec::new(),
            (Backend::Redis | Backend::Cluster, Some(url)) => vec!["--redis".into(), url.into()],
            (Backend::Redis | Backend::Cluster, None) => {
                unreachable!("a Redis backend runs with its redis-server")
            }
        }
    }
}

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
    pub(super) fn as_arg(self) -> &'static str {
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
    /// `--listen`; a free loopback port (`127.0.0.1:0`) when unset.
    listen: Option<String>,
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

    /// A server flag without a value, e.g. `.switch("--access-log")`.
    pub fn switch(mut self, name: &str) -> Self {
        self.extra.push(name.to_string());
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
    /// The Cluster backend's own cluster, the same way.
    cluster: Option<RedisCluster>,
    /// A Sentinel-managed Redis a test started it on.
    sentinels: Option<RedisSentinels>,
    redis_url: Option<String>,
    /// Everything the server printed (stdout and stderr), across restarts.
    log: Arc<Output>,
}

impl Server {
    /// Starts the server and waits for its `listening on` line.
    pub fn start(backend: Backend, opts: Opts) -> Server {
        let fsync = opts.fsync.unwrap_or(Fsync::Always);
        let redis = (backend == Backend::Redis).then(|| RedisServer::start_with(fsync));
        let cluster = (backend == Backend::Cluster).then(|| RedisCluster::start_with(3, 0, fsync));
        let url = redis
            .as_ref()
            .map(RedisServer::url)
            .or_else(|| cluster.as_ref().map(RedisCluster::url));
        let mut server = Server::start_on(backend, url.as_deref(), opts);
        server.redis = redis;
        server.cluster = cluster;
        server
    }

    /// Starts the server on a Redis Cluster the test made (with replicas,
    /// say), which it then owns.
    pub fn start_on_cluster(cluster: RedisCluster, opts: Opts) -> Server {
        let url = cluster.url();
        let mut server = Server::start_on(Backend::Cluster, Some(&url), opts);
        server.cluster = Some(cluster);
        server
    }

    /// Starts the server on a master that Sentinels watch, which it then
    /// owns.
    pub fn start_on_sentinels(sentinels: RedisSentinels, opts: Opts) -> Server {
        let url = sentinels.url();
        let mut server = Server::start_on(Backend::Redis, Some(&url), opts);
        server.sentinels = Some(sentinels);
        server
    }

    /// The server on `backend`, with the Redis at `url` (which it does not
    /// own) if any, its own data dir and log.
    fn start_on(backend: Backend, url: Option<&str>, opts: Opts) -> Server {
        let dir = tempfile::tempdir().expect("create a temporary data dir");
        let log = Arc::new(Output::default());
        let (child, addr, admin_addr) = spawn(backend, url, &opts, dir.path(), &log);
        Server {
            redis: None,
            cluster: None,
            sentinels: None,
            redis_url: url.map(str::to_owned),
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
        Server::start_on(self.backend, Some(&url), self.opts.clone())
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

    /// The Cluster backend's cluster, to fail its nodes.
    pub fn cluster(&mut self) -> &mut RedisCluster {
        self.cluster
            .as_mut()
            .expect("this server does not run on a Redis Cluster")
    }

    /// The Sentinel-managed Redis it runs on, to fail its master.
    pub fn sentinels(&mut self) -> &mut RedisSentinels {
        self.sentinels
            .as_mut()
            .expect("this server does not run on Sentinels")
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Everything the server printed so far (its start line first).
    pub fn output(&self) -> String {
        self.log.text()
    }

    /// Waits until the server has printed a line `ok` accepts (panics
    /// after [`WAIT`](super::WAIT), showing `what` and the output).
    pub fn wait_line(&self, what: &str, ok: impl Fn(&str) -> bool) {
        self.log.wait_until(what, |text| text.lines().any(&ok));
    }

    /// Waits until what the server printed is something `ok` accepts, and
    /// returns it (panics after [`WAIT`](super::WAIT), showing `what` and
    /// the output).
    pub fn wait_output(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        self.log.wait_until(what, ok)
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
        let pid = self.pid().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run `kill -TERM`");
        assert!(sent.success(), "`kill -TERM {pid}` failed");
        self.wait_exit()
    }

    /// [`Server::term`], the signal sent to the server's thread named
    /// `thread` (`haoshuo-core-0`): which thread takes a signal sent to
    /// the process is the kernel's choice, usually the main one.
    pub fn term_thread(&mut self, thread: &str) -> ExitStatus {
        let pid = self.pid();
        let tasks = format!("/proc/{pid}/task");
        let tid = std::fs::read_dir(&tasks)
            .unwrap_or_else(|e| panic!("{tasks}: {e}"))
            .filter_map(|task| {
                let task = task.ok()?;
                let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
                let tid = task.file_name().to_str()?.parse::<libc::pid_t>().ok()?;
                (comm.trim_end() == thread).then_some(tid)
            })
            .next()
            .unwrap_or_else(|| panic!("no thread {thread} in {tasks}"));
        // SAFETY: tgkill(2) only sends a signal, to a thread of our child.
        let sent =
            unsafe { libc::syscall(libc::SYS_tgkill, pid as libc::pid_t, tid, libc::SIGTERM) };
        assert_eq!(sent, 0, "tgkill {pid} {tid} SIGTERM failed");
        self.wait_exit()
    }

    /// Reaps the server once it exits by itself (fails after 10 s).
    fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is not running");
        let pid = child.id().to_string();
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

    /// [`Server::restart_same_dir`] on the same port too, as a browser
    /// page expects (its origin, and the URL its `EventSource` reconnects
    /// to, name the port); later restarts keep it as well.
    pub fn restart_same_port(&mut self) {
        self.opts.listen = Some(self.addr.to_string());
        self.restart_same_dir();
        assert_eq!(self.addr.to_string(), self.opts.listen.as_deref().unwrap());
    }

    /// Starts the server again on the same data directory (SIGKILLing the
    /// current process first if it still runs). The port changes, unless
    /// [`Server::restart_same_port`] fixed it.
    pub fn restart_same_dir(&mut self) {
        self.kill9();
        self.log.push("---- restart ----\n");
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
            let log = self.log.text();
            eprintln!("---- haoshuo output ({:?}) ----\n{log}", self.backend);
        }
    }
}

fn spawn(
    backend: Backend,
    redis_url: Option<&str>,
    opts: &Opts,
    dir: &Path,
    log: &Arc<Output>,
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
    hermetic(&mut cmd);
    let mut child = cmd
        .arg("--listen")
        .arg(opts.listen.as_deref().unwrap_or("127.0.0.1:0"))
        .arg("--data-dir")
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
                let log = log.text();
                panic!(
                    "haoshuo printed no `listening on 127.0.0.1:PORT` line within {START_TIMEOUT:?} \
                     ({why:?}; exit status {status:?}); its output:\n{log}"
                );
            }
        }
    }
}

/// Hermetic: the server also reads `HAOSHUO_*` variables; `cmd` gets none
/// of the test's own.
pub fn hermetic(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HAOSHUO_") {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// What a child process printed, as its lines came, and a way to wait
/// for one.
#[derive(Default)]
pub struct Output {
    text: Mutex<String>,
    /// Notified on every line.
    grew: Condvar,
}

impl Output {
    fn lock(&self) -> MutexGuard<'_, String> {
        self.text.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything printed so far.
    pub fn text(&self) -> String {
        self.lock().clone()
    }

    pub(super) fn push(&self, line: &str) {
        self.lock().push_str(line);
        self.grew.notify_all();
    }

    /// Waits until everything printed so far is something `ok` accepts,
    /// and returns it (panics after [`WAIT`](super::WAIT), showing `what`
    /// and the output).
    pub fn wait_until(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + super::WAIT;
        let mut text = self.lock();
        while !ok(&text) {
            assert!(
                Instant::now() < deadline,
                "{what}: not printed within {:?}; the output:\n{text}",
                super::WAIT
            );
            text = self
                .grew
                .wait_timeout(text, left(deadline))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        text.clone()
    }
}

/// Copies a pipe into `log` line by line (and each line to `lines`) until
/// it closes, so the server never blocks on a full pipe.
pub(super) fn drain(
    pipe: impl Read + Send + 'static,
    log: &Arc<Output>,
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
                    log.push(&line);
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
