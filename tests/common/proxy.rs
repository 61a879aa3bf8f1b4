//! Real reverse proxies in front of a server under test: nginx and HAProxy,
//! each run from the very config file docs/deploy.md ships
//! (`loadtest/proxy/nginx.conf`, `loadtest/proxy/haproxy.cfg`) with only its
//! two addresses replaced, on a free loopback port, in its own temporary
//! directory, in the foreground, and stopped when dropped.
//!
//! A proxy is ready when its port accepts a connection, polled with a
//! deadline; a proxy that exits first (its port was taken meanwhile) is
//! started again on another port.

use super::{drain, Api, Output};
use std::fs;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

/// How long a proxy may take to accept connections after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a proxy may take to exit after SIGTERM before it is SIGKILLed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries with a fresh port if another process took the chosen one.
const PORT_TRIES: usize = 5;
/// Where Debian and most others install both proxies; a non-root `PATH`
/// often lacks these.
const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/usr/local/sbin", "/sbin"];

/// A reverse proxy the tests can put in front of haoshuo.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyKind {
    Nginx,
    Haproxy,
}

impl ProxyKind {
    /// The name of its binary (and of the proxy in messages).
    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Nginx => "nginx",
            ProxyKind::Haproxy => "haproxy",
        }
    }

    /// The installed binary, or `None` after printing
    /// `skipped: <name> not installed` to stderr (.ci/run installs both).
    pub fn installed(self) -> Option<PathBuf> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let found = std::env::split_paths(&path)
            .chain(SBIN_DIRS.map(PathBuf::from))
            .map(|dir| dir.join(self.name()))
            .find(|bin| bin.is_file());
        if found.is_none() {
            // Straight to stderr, not eprintln!: libtest captures that and
            // shows it only for failing tests.
            let _ = writeln!(io::stderr(), "skipped: {} not installed", self.name());
        }
        found
    }

    /// The shipped config file: its name and text.
    fn shipped(self) -> (&'static str, &'static str) {
        match self {
            ProxyKind::Nginx => (
                "nginx.conf",
                include_str!("../../loadtest/proxy/nginx.conf"),
            ),
            ProxyKind::Haproxy => (
                "haproxy.cfg",
                include_str!("../../loadtest/proxy/haproxy.cfg"),
            ),
        }
    }

    /// The shipped config listening on `port` of the loopback and proxying
    /// to `upstream` instead of its own `:80` and `127.0.0.1:2012` (the two
    /// lines docs/deploy.md says to change).
    pub fn config(self, port: u16, upstream: SocketAddr) -> String {
        let (name, text) = self.shipped();
        let replacements = match self {
            ProxyKind::Nginx => [
                ("listen 80;", format!("listen 127.0.0.1:{port};")),
                ("server 127.0.0.1:2012;", format!("server {upstream};")),
            ],
            ProxyKind::Haproxy => [
                ("bind :80\n", format!("bind 127.0.0.1:{port}\n")),
                (
                    "server haoshuo1 127.0.0.1:2012\n",
                    format!("server haoshuo1 {upstream}\n"),
                ),
            ],
        };
        let mut config = text.to_string();
        for (from, to) in replacements {
            assert_eq!(
                config.matches(from).count(),
                1,
                "loadtest/proxy/{name} must hold {from:?} exactly once (tests/common/proxy.rs replaces it)"
            );
            config = config.replace(from, &to);
        }
        config
    }

    /// The command that runs the proxy in the foreground with `config`.
    fn command(self, bin: &Path, dir: &Path, config: &Path) -> Command {
        let mut cmd = Command::new(bin);
        match self {
            // -p: the config's relative paths (pid, logs, temp dirs) land
            // in `dir`.
            ProxyKind::Nginx => cmd
                .arg("-p")
                .arg(format!("{}/", dir.display()))
                .arg("-c")
                .arg(config)
                .args(["-g", "daemon off;"]),
            ProxyKind::Haproxy => cmd.arg("-f").arg(config).arg("-db"),
        };
        cmd
    }
}

/// A running proxy in front of one server.
pub struct Proxy {
    kind: ProxyKind,
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    /// What the proxy printed (stdout and stderr).
    log: Arc<Output>,
}

impl Proxy {
    /// Starts `bin` (from [`ProxyKind::installed`]) in front of `upstream`
    /// and waits until it accepts connections.
    pub fn start(kind: ProxyKind, bin: &Path, upstream: SocketAddr) -> Proxy {
        let dir = tempfile::tempdir().expect("a temporary dir for the proxy");
        // nginx's workers drop root (to `nobody`) and must still reach
        // their temp dirs inside `dir`; a tempdir is 0700.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("make the proxy's dir readable");
        let log = Arc::new(Output::default());
        for _ in 0..PORT_TRIES {
            let port = free_port();
            let config = dir.path().join(kind.shipped().0);
            fs::write(&config, kind.config(port, upstream)).expect("write the proxy config");
            let mut child = kind
                .command(bin, dir.path(), &config)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
            drain(child.stdout.take().expect("stdout"), &log, None);
            drain(child.stderr.take().expect("stderr"), &log, None);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if wait_ready(addr, &mut child) {
                return Proxy {
                    kind,
                    child: Some(child),
                    addr,
                    dir,
                    log,
                };
            }
            stop(child);
        }
        let log = log.text();
        panic!(
            "{} did not accept connections in {PORT_TRIES} tries; its output:\n{log}",
            kind.name()
        );
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Typed endpoint helpers that go through the proxy.
    pub fn api(&self) -> Api {
        Api { addr: self.addr }
    }

    pub fn kind(&self) -> ProxyKind {
        self.kind
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop(child);
        }
        if thread::panicking() {
            let log = self.log.text();
            eprintln!("---- {} output ----\n{log}", self.kind.name());
            for name in ["error.log", "access.log"] {
                if let Ok(text) = fs::read_to_string(self.dir.path().join(name)) {
                    eprintln!("---- {} {name} ----\n{text}", self.kind.name());
                }
            }
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Waits until `addr` accepts a connection; false if the proxy exited
/// first or the deadline passed.
pub fn wait_ready(addr: SocketAddr, child: &mut Child) -> bool {
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        // Nothing to wait on but the port itself: poll it briefly.
        thread::sleep(Duration::from_millis(10));
    }
    false
}

/// SIGTERM, then SIGKILL if it has not exited within [`STOP_TIMEOUT`].
/// Not SIGKILL at once: a SIGKILLed nginx master leaves its workers running,
/// still holding the port.
fn stop(mut child: Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    if rx.recv_timeout(STOP_TIMEOUT).is_err() {
        let _ = Command::new("kill").args(["-KILL", &pid]).status();
    }
}
