//! Logs on stderr: one line per event, `<UTC time> <LEVEL> <message>`;
//! `--log-level` chooses the lines; repeats of one error are written once
//! a second with a count; `--access-log` writes a line per answered request
//! (client, method, path without the query's token, status, bytes,
//! duration), the client from `X-Forwarded-For` only behind a proxy named
//! with `--trust-proxy`.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Waits until the server's output holds a line `ok` accepts, and returns
/// the output then; fails with it after `WAIT`.
fn wait_for_line(srv: &Server, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = srv.output();
        if out.lines().any(&ok) {
            return out;
        }
        assert!(Instant::now() < deadline, "no {what} line in:\n{out}");
        // The output is read by another thread: nothing to block on.
        thread::sleep(Duration::from_millis(20));
    }
}

/// The fields of an access line: client, method, target, status, bytes,
/// duration (after the time and the `ACCESS` tag).
fn access_fields(line: &str) -> Option<Vec<&str>> {
    let mut words = line.split(' ');
    let time = words.next()?;
    if words.next()? != "ACCESS" {
        return None;
    }
    assert!(time.ends_with('Z') && time.contains('T'), "{line}");
    Some(words.collect())
}

#[test]
fn access_lines_name_each_request_without_its_token() {
    let srv = Server::start(Backend::Embedded, Opts::default().switch("--access-log"));
    let api = srv.api();
    let alice = api.user("a", "alice");
    let mut stream = StreamClient::open(srv.addr(), 1, alice.uid, &alice.token);
    assert!(stream.next_frame(QUIET).is_none(), "nothing stored");
    let r = request(
        srv.addr(),
        "GET",
        "/nowhere",
        &[("X-Forwarded-For", "203.0.113.7")],
        b"",
    );
    assert_eq!(r.status, 404);
    let out = wait_for_line(&srv, "/nowhere", |l| l.contains(" /nowhere "));
    assert!(!out.contains(&alice.token), "a token in the log:\n{out}");
    let lines: Vec<Vec<&str>> = out.lines().filter_map(access_fields).collect();
    let find = |target: &str| {
        lines
            .iter()
            .find(|f| f[2] == target)
            .unwrap_or_else(|| panic!("no access line for {target}:\n{out}"))
    };
    // (client, method, target, status, bytes), then the duration.
    let login = find("/login");
    assert_eq!(login[..4], ["127.0.0.1", "POST", "/login", "200"]);
    assert!(login[4].parse::<usize>().unwrap() > 0);
    assert!(login[5].ends_with("ms"), "{login:?}");
    // A stream's body is streamed: its line has no byte count.
    let query = format!("/cget/stream?seq=1&cname={}", alice.uid);
    assert_eq!(find(&query)[..5], ["127.0.0.1", "GET", &query, "200", "-"]);
    // Not behind a trusted proxy: X-Forwarded-For is not believed.
    let nowhere = find("/nowhere");
    assert_eq!(nowhere[..4], ["127.0.0.1", "GET", "/nowhere", "404"]);
    // The whole answer's bytes: its head and its body.
    assert!(
        nowhere[4].parse::<usize>().unwrap() > r.body.len(),
        "{nowhere:?}"
    );

    // Behind a trusted proxy, the client it names.
    let proxied = Server::start(
        Backend::Embedded,
        Opts::default()
            .switch("--access-log")
            .flag("--trust-proxy", "127.0.0.1"),
    );
    let r = request(
        proxied.addr(),
        "GET",
        "/nowhere",
        &[("X-Forwarded-For", "198.51.100.1, 203.0.113.7")],
        b"",
    );
    assert_eq!(r.status, 404);
    let out = wait_for_line(&proxied, "/nowhere", |l| l.contains(" /nowhere "));
    let line = out
        .lines()
        .filter_map(access_fields)
        .next()
        .expect("a line");
    assert_eq!(line[..4], ["203.0.113.7", "GET", "/nowhere", "404"]);
    // A request the reactor refuses itself is logged too.
    let mut c = Conn::connect(proxied.addr());
    c.send(b"BAD\r\n\r\n");
    assert_eq!(c.read_response(WAIT).status, 400);
    wait_for_line(&proxied, "refused", |l| {
        access_fields(l).is_some_and(|f| f[1..4] == ["-", "-", "400"])
    });
}

#[test]
fn the_level_chooses_the_lines() {
    // Info (the default): the stop is told. Warn: it is not.
    for (level, told) in [("info", true), ("warn", false)] {
        let mut srv = Server::start(
            Backend::Embedded,
            Opts::default().flag("--log-level", level),
        );
        assert_eq!(srv.term().code(), Some(0));
        let out = srv.output();
        let stopping = out.lines().any(|l| l.contains(" INFO stopping"));
        assert_eq!(stopping, told, "--log-level {level}:\n{out}");
        assert_eq!(out.contains(" INFO stopped"), told, "{out}");
    }
    // A level that does not exist is refused with the ones that do.
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_haoshuo"))
        .args(["--log-level", "loud", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run haoshuo");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("error, warn, info, debug"), "{err}");
}

/// `haoshuo_store_errors_total{op}` from the admin listener.
fn store_errors(srv: &Server, op: &str) -> u64 {
    let r = request(srv.admin_addr(), "GET", "/metrics", &[], b"");
    let text = String::from_utf8(r.body).expect("UTF-8");
    let prefix = format!("haoshuo_store_errors_total{{op=\"{op}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

/// How many failures the log accounts for with lines starting `prefix`
/// (after the level): one each, plus the counts of repeats.
fn accounted(out: &str, prefix: &str) -> (u64, u64) {
    let mut lines = 0;
    let mut total = 0;
    for line in out.lines() {
        let Some((_, rest)) = line.split_once(" ERROR ") else {
            continue;
        };
        if !rest.starts_with(prefix) {
            continue;
        }
        lines += 1;
        total += match rest.rsplit_once(" (") {
            Some((_, count)) if count.ends_with(" in the last second)") => {
                count.split(' ').next().unwrap().parse::<u64>().unwrap()
            }
            _ => 1,
        };
    }
    (lines, total)
}

#[test]
fn repeated_store_errors_are_counted_not_repeated() {
    const FAILURES: usize = 50;
    let mut srv = Server::start(Backend::Redis, Opts::default().admin(""));
    srv.redis().kill();
    let bad = json!({"appid": "a", "uid": 1, "token": "0".repeat(48)});
    for _ in 0..FAILURES {
        let (status, _) = srv.api().post("/pull", &bad);
        assert_eq!(status, 503);
    }
    let failed = store_errors(&srv, "get_token");
    assert!(failed >= FAILURES as u64, "{failed}");
    // Every failure is accounted for once its second is over.
    let prefix = "store: get_token failed";
    let what = format!("the {failed} failures accounted for");
    let out = srv.wait_output(&what, |out| accounted(out, prefix).1 >= failed);
    let (lines, total) = accounted(&out, prefix);
    assert_eq!(total, failed, "more logged than failed:\n{out}");
    // Far fewer lines than failures: the repeats were counted.
    assert!(lines < FAILURES as u64 / 2, "{lines} lines:\n{out}");
}
