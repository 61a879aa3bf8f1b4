//! What the server refuses at start: an address another process already
//! serves (unless `--reuseport` says the sharing is meant).

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;

/// Starts the binary with `args` on its own data dir; returns the child
/// and its first stdout line (or `None` if it exited or printed nothing
/// within WAIT).
fn start(args: &[&str]) -> (Child, Option<String>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_haoshuo"))
        .args(args)
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run haoshuo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(WAIT).ok().filter(|l| !l.is_empty());
    (child, line, dir)
}

#[test]
fn a_second_server_on_a_served_address_is_refused() {
    let first = Server::start(Backend::Embedded, Opts::default());
    let addr = first.addr().to_string();
    let (mut second, line, _dir) = start(&["--listen", &addr]);
    if line.is_some() {
        // Served: it would not exit by itself (and waiting would hang).
        let _ = second.kill();
        let _ = second.wait();
        panic!("a second server started: {line:?}");
    }
    let status = second.wait().expect("the second server exits");
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(
        err.contains("already served") && err.contains("--reuseport"),
        "{err}"
    );
    // The first one is undisturbed.
    first.api().user("a", "alice");
}

#[test]
fn reuseport_shares_the_address_on_purpose() {
    let (mut first, line, _d1) = start(&["--listen", "127.0.0.1:0", "--reuseport"]);
    let line = line.expect("the first server starts");
    let addr = line
        .split_whitespace()
        .skip_while(|w| *w != "on")
        .nth(1)
        .expect("its address")
        .to_string();
    let (mut second, line2, _d2) = start(&["--listen", &addr, "--reuseport"]);
    let started = line2.is_some_and(|l| l.contains(&addr));
    let _ = first.kill();
    let _ = second.kill();
    let _ = (first.wait(), second.wait());
    assert!(
        started,
        "--reuseport did not let a second server share {addr}"
    );
}

/// The port in a start line's `listening on ADDR[,ADDR]`.
fn listening(line: &str) -> Vec<std::net::SocketAddr> {
    let list = line
        .split_whitespace()
        .skip_while(|w| *w != "on")
        .nth(1)
        .expect("listening on ...");
    list.split(',')
        .map(|a| a.parse().expect("an address"))
        .collect()
}

#[test]
fn listen_takes_a_host_name() {
    let (mut srv, line, _dir) = start(&["--listen", "localhost:0"]);
    let line = line.expect("started on localhost");
    let addrs = listening(&line);
    assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{line}");
    for &a in &addrs {
        let mut c = Conn::connect(a);
        c.send(&request_bytes("GET", "/nope", &[], b""));
        assert_eq!(c.read_response(WAIT).status, 404, "{a}");
    }
    let _ = srv.kill();
    let _ = srv.wait();
    // A name that does not resolve is refused with the expected shape.
    let (mut bad, line, _d) = start(&["--listen", "no-such-host.invalid:2012"]);
    assert!(line.is_none());
    assert!(!bad.wait().unwrap().success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut bad.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("HOST:PORT"), "{err}");
}

#[test]
fn listen_takes_an_ipv6_literal() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback here");
        return;
    }
    let (mut srv, line, _dir) = start(&["--listen", "[::1]:0"]);
    let addrs = listening(&line.expect("started on [::1]"));
    assert!(addrs[0].is_ipv6());
    let mut c = Conn::connect(addrs[0]);
    c.send(&request_bytes("GET", "/nope", &[], b""));
    assert_eq!(c.read_response(WAIT).status, 404);
    let _ = srv.kill();
    let _ = srv.wait();
}
