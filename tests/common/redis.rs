//! A real `redis-server` for the tests: its own free loopback port, its own
//! temporary directory, AOF on (`appendfsync always` unless a test asks for
//! `everysec`; docs/redis.md says what a restart after SIGKILL keeps with
//! each), stopped when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::Fsync;

/// How long redis-server may take to answer PING after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Tries with a fresh port if another process took the chosen one.
const PORT_TRIES: usize = 5;

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Its `appendfsync`.
    fsync: Fsync,
    /// A node of a Redis Cluster (tests/common/cluster.rs).
    cluster: bool,
}

impl RedisServer {
    /// Starts one with `appendfsync always`.
    pub fn start() -> RedisServer {
        RedisServer::start_with(Fsync::Always)
    }

    /// Starts one with AOF on and this `appendfsync` policy.
    pub fn start_with(fsync: Fsync) -> RedisServer {
        RedisServer::start_node(fsync, false)
    }

    /// Starts one with AOF on and this `appendfsync` policy; with
    /// `cluster`, as a Redis Cluster node not yet in any cluster.
    pub fn start_node(fsync: Fsync, cluster: bool) -> RedisServer {
        let dir = tempfile::tempdir().expect("a temporary dir for redis-server");
        for _ in 0..PORT_TRIES {
            let port = free_port();
            let mut child = spawn(dir.path(), port, fsync, cluster);
            if wait_ready(port, &mut child) {
                return RedisServer {
                    child: Some(child),
                    port,
                    dir,
                    fsync,
                    cluster,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start (is it installed? .ci/run installs it)");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Whether it runs (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Its loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops redis-server at once (SIGKILL). With either `appendfsync`
    /// policy it wrote its AOF before answering and the OS keeps what a
    /// killed process wrote, so nothing it answered is lost (under
    /// `everysec`, unless a write was still postponed: docs/redis.md).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes redis-server (SIGSTOP): connections stay open and take
    /// commands, and nothing is answered until [`RedisServer::resume`].
    /// A haoshuo worker that sends a call waits on it for the whole
    /// `--redis-timeout-ms`: how a test holds a request at a worker.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Lets a paused redis-server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Its process id (to resume it from another thread: `kill -CONT`).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("redis-server is not running")
            .id()
    }

    fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    /// Starts it again on the same port and directory (replaying its AOF).
    pub fn restart(&mut self) {
        self.kill();
        self.start_again();
    }

    /// Starts it again with nothing: as a Redis without persistence comes
    /// back from a crash.
    pub fn restart_empty(&mut self) {
        self.kill();
        for entry in std::fs::read_dir(self.dir.path()).expect("read redis dir") {
            let path = entry.expect("redis dir entry").path();
            let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
        }
        self.start_again();
    }

    /// Starts it again after [`RedisServer::kill`], on the same port and
    /// directory (replaying its AOF).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "redis-server is still running");
        let mut child = spawn(self.dir.path(), self.port, self.fsync, self.cluster);
        assert!(
            wait_ready(self.port, &mut child),
            "redis-server did not come back on port {}",
            self.port
        );
        self.child = Some(child);
    }

    /// Runs one command on a fresh connection and returns its reply: a
    /// bulk string as its text, an array as its elements one per line,
    /// anything else as its line (`:1`, `+OK`, `-ERR ...`). For tests that
    /// look at or change Redis behind haoshuo's back.
    pub fn command(&self, args: &[&str]) -> String {
        command_at(self.port, args)
    }
}

/// [`RedisServer::command`] on the server (or Sentinel) at loopback `port`.
pub fn command_at(port: u16, args: &[&str]) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, START_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to redis-server at {addr}: {e}"));
    s.set_read_timeout(Some(START_TIMEOUT))
        .expect("set read timeout");
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).expect("write to redis-server");
    read_reply(&mut BufReader::new(s))
}

/// A pattern subscription of the test's own on a Redis: what the servers
/// publish, as Redis hands it out.
pub struct PubSubSpy {
    reader: BufReader<TcpStream>,
}

impl RedisServer {
    /// Subscribes to the channels matching `pattern` (PSUBSCRIBE).
    pub fn psubscribe(&self, pattern: &str) -> PubSubSpy {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let mut s = TcpStream::connect_timeout(&addr, START_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to redis-server at {addr}: {e}"));
        let req = format!(
            "*2\r\n$10\r\nPSUBSCRIBE\r\n${}\r\n{pattern}\r\n",
            pattern.len()
        );
        s.write_all(req.as_bytes()).expect("write to redis-server");
        let mut reader = BufReader::new(s);
        let ack = read_reply(&mut reader);
        assert!(
            ack.starts_with("psubscribe\n"),
            "PSUBSCRIBE answered {ack:?}"
        );
        PubSubSpy { reader }
    }
}

impl PubSubSpy {
    /// The next (channel, message) published, waiting up to `wait`.
    pub fn next(&mut self, wait: Duration) -> Option<(String, String)> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(wait))
            .expect("set read timeout");
        // Nothing arrived within the wait: a timeout before any byte.
        if self.reader.fill_buf().is_err() {
            return None;
        }
        let reply = read_reply(&mut self.reader);
        let mut parts = reply.splitn(4, '\n');
        assert_eq!(parts.next(), Some("pmessage"), "{reply:?}");
        let _pattern = parts.next();
        let channel = parts.next().expect("a channel").to_owned();
        let message = parts.next().expect("a message").to_owned();
        Some((channel, message))
    }
}

/// Sends signal `name` (`STOP`, `CONT`, ...) to process `pid`.
pub fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run `kill`");
    assert!(sent.success(), "`kill -{name} {pid}` failed");
}

/// One RESP reply, as [`RedisServer::command`] returns it.
fn read_reply(r: &mut impl BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("read from redis-server");
    let line = line
        .strip_suffix("\r\n")
        .unwrap_or_else(|| panic!("a redis reply line without CRLF: {line:?}"));
    let count = || -> i64 { line[1..].parse().expect("a RESP length") };
    match line.as_bytes().first() {
        Some(b'$') if count() >= 0 => {
            let mut bulk = vec![0u8; count() as usize + 2];
            r.read_exact(&mut bulk).expect("read a bulk reply");
            bulk.truncate(bulk.len() - 2);
            String::from_utf8(bulk).expect("a UTF-8 bulk reply")
        }
        Some(b'*') if count() >= 0 => (0..count())
            .map(|_| read_reply(r))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => line.to_string(),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub(super) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn spawn(dir: &Path, port: u16, fsync: Fsync, cluster: bool) -> Child {
    let mut cmd = Command::new("redis-server");
    if cluster {
        // A node is found failing after a second, so a failover takes a
        // few: tests wait for it.
        cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "1000"]);
        cmd.args(["--cluster-config-file", "nodes.conf"]);
    }
    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "yes", "--appendfsync"])
        .arg(fsync.as_arg())
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run redis-server (is it installed? .ci/run installs it)")
}

/// Waits until the server answers PING; false if it exited first.
pub(super) fn wait_ready(port: u16, child: &mut Child) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if ping(addr) {
            return true;
        }
        // Nothing to wait on but the port itself: poll it briefly.
        thread::sleep(Duration::from_millis(10));
    }
    false
}

fn ping(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}
