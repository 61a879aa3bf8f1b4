//! The server at its limits: `--max-conns` split over several reactors
//! never lets more connections in than the limit and resumes accepting as
//! they close; a process out of file descriptors pauses accepting without
//! spinning, keeps serving what it holds, and recovers once some close.

mod common;

use common::*;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

const REQUEST: &[u8] = b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n";

/// Connects `n` clients, each sending one request.
fn clients(addr: SocketAddr, n: usize) -> Vec<Conn> {
    (0..n)
        .map(|_| {
            let mut c = Conn::connect(addr);
            c.send(REQUEST);
            c
        })
        .collect()
}

/// Moves the clients whose request gets answered (404) out of `waiting`:
/// waits up to `WAIT` for the first answer (or for `want` of them), then
/// until none came for `QUIET`. The answered stay open.
fn answered(waiting: &mut Vec<Conn>, want: usize) -> Vec<Conn> {
    let mut got = Vec::new();
    let start = Instant::now();
    let mut last_new = start;
    loop {
        let mut i = 0;
        while i < waiting.len() {
            match waiting[i].try_read_response(Duration::from_millis(5)) {
                Ok(r) => {
                    assert_eq!(r.status, 404);
                    got.push(waiting.swap_remove(i));
                    last_new = Instant::now();
                }
                Err(ReadEnd::Timeout) => i += 1,
                Err(ReadEnd::Eof) => panic!("a waiting client was closed unanswered"),
            }
        }
        let settled = !got.is_empty() && got.len() >= want && last_new.elapsed() >= QUIET;
        if settled || waiting.is_empty() || start.elapsed() >= WAIT {
            return got;
        }
    }
}

#[test]
fn max_conns_holds_across_reactors_and_accepting_resumes() {
    const THREADS: usize = 2;
    const MAX: usize = 10;
    // The kernel spreads connections over the reactors' listeners by a
    // hash of the client's port: with 40, both get at least their share
    // of the limit (5) but with a chance of about 2e-7.
    const CLIENTS: usize = 40;
    let srv = Server::start(
        Backend::Embedded,
        Opts::default()
            .threads(THREADS as u32)
            .max_conns(MAX as u32),
    );
    let mut waiting = clients(srv.addr(), CLIENTS);
    // Each reactor takes max_conns.div_ceil(threads) = 5: exactly 10.
    let first = answered(&mut waiting, MAX);
    assert_eq!(
        first.len(),
        MAX,
        "{} of {CLIENTS} clients were served at once with --max-conns {MAX}",
        first.len()
    );
    // Closing them lets the waiting in, never more than the limit at once.
    let mut served = first.len();
    drop(first);
    while !waiting.is_empty() {
        let left = waiting.len();
        let next = answered(&mut waiting, 1);
        assert!(
            !next.is_empty(),
            "accepting did not resume: {left} clients still wait"
        );
        assert!(
            next.len() <= MAX,
            "{} clients served at once with --max-conns {MAX}",
            next.len()
        );
        served += next.len();
    }
    assert_eq!(served, CLIENTS);
}

/// CPU time (user + system) the process used so far, from /proc. The
/// kernel counts it in USER_HZ = 100 ticks per second on every Linux ABI.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[test]
fn out_of_descriptors_pauses_accepting_without_spinning_and_recovers() {
    const NOFILE: u64 = 64;
    // More clients than the server has descriptors.
    const CLIENTS: usize = 100;
    let srv = Server::start(Backend::Embedded, Opts::default().threads(1).nofile(NOFILE));
    assert!(
        srv.output().contains(&format!("nofile={NOFILE}/{NOFILE}")),
        "the server does not run with the limit: {}",
        srv.output()
    );
    let mut waiting = clients(srv.addr(), CLIENTS);
    let served = answered(&mut waiting, 1);
    assert!(
        !served.is_empty() && served.len() < CLIENTS,
        "{} of {CLIENTS} clients served with {NOFILE} descriptors",
        served.len()
    );
    // Out of descriptors, with clients waiting in the backlog: the server
    // must idle (retrying once a second), not spin on its listener.
    // Sleeping is the point here: this is the window the CPU is measured in.
    const WINDOW: Duration = Duration::from_secs(2);
    let before = cpu_time(srv.pid());
    thread::sleep(WINDOW);
    let used = cpu_time(srv.pid()) - before;
    assert!(
        used < WINDOW / 4,
        "the server burned {used:?} of CPU in {WINDOW:?} while out of descriptors"
    );
    // It still serves the connections it holds.
    let mut served = served;
    let mut kept = served.pop().expect("a served client");
    kept.send(REQUEST);
    assert_eq!(kept.read_response(WAIT).status, 404);
    // Once the extra clients are gone, a new one is served.
    drop(served);
    drop(waiting);
    let r = request(srv.addr(), "GET", "/nope", &[], b"");
    assert_eq!(r.status, 404);
}

/// Accepting stops at the limit and resumes only below 90 % of it, not at
/// the first close (hysteresis: a server at its limit does not flap
/// between accepting one connection and refusing the next).
#[test]
fn accepting_resumes_only_below_ninety_percent() {
    const MAX: usize = 20;
    let srv = Server::start(
        Backend::Embedded,
        Opts::default().threads(1).max_conns(MAX as u32),
    );
    let mut waiting = clients(srv.addr(), MAX + 5);
    let mut served = answered(&mut waiting, MAX);
    assert_eq!(served.len(), MAX, "served at once with --max-conns {MAX}");
    // 19 of 20 open: above 90 %, still full.
    drop(served.pop());
    let early = answered(&mut waiting, 1);
    assert!(
        early.is_empty(),
        "accepting resumed at {} of {MAX} connections",
        MAX - 1
    );
    // 18 of 20: accepting resumes, up to the limit again.
    drop(served.pop());
    let next = answered(&mut waiting, 2);
    assert_eq!(next.len(), 2, "accepting did not resume at 90 %");
}

/// A server with nothing to do sleeps between its timer ticks: after it
/// accepted and answered a client (its listener drained to `WouldBlock`)
/// and while that client stays connected, it burns next to no CPU.
#[test]
fn an_idle_server_sleeps() {
    let srv = Server::start(Backend::Embedded, Opts::default());
    let mut client = Conn::connect(srv.addr());
    client.send(REQUEST);
    assert_eq!(client.read_response(WAIT).status, 404);
    // Sleeping is the point here: this is the window the CPU is measured in.
    const WINDOW: Duration = Duration::from_secs(2);
    let before = cpu_time(srv.pid());
    thread::sleep(WINDOW);
    let used = cpu_time(srv.pid()) - before;
    assert!(
        used < WINDOW / 4,
        "the idle server burned {used:?} of CPU in {WINDOW:?}"
    );
    // Still serving.
    client.send(REQUEST);
    assert_eq!(client.read_response(WAIT).status, 404);
}

/// The admin listener is not counted against `--max-conns`: with the API
/// full, an operator's health probe is still answered.
#[test]
fn the_admin_listener_accepts_while_the_api_is_full() {
    const MAX: usize = 5;
    let srv = Server::start(
        Backend::Embedded,
        Opts::default().threads(1).max_conns(MAX as u32).admin(""),
    );
    let mut waiting = clients(srv.addr(), MAX + 2);
    let served = answered(&mut waiting, MAX);
    assert_eq!(served.len(), MAX, "the API is full");
    let mut probe = Conn::connect(srv.admin_addr());
    probe.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(probe.read_response(WAIT).status, 200);
}
