//! `GET /metrics` on the admin listener: what it counts matches what the
//! clients saw (subscriptions open by kind, messages delivered, requests by
//! endpoint and status, online users), gauges fall when connections close,
//! its key rule is /admin's, and the output parses with a real Prometheus
//! parser (Python's `prometheus_client`, as Debian's
//! `python3-prometheus-client` installs it).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;
use serde_json::{json, Value};

common::backend_tests!(
    gauges_and_counters_follow_the_clients,
    metrics_take_the_admin_key_and_stay_off_the_public_port,
    a_turn_that_committed_sends_yields_the_core,
    a_slow_turn_is_counted_and_named,
);

mod redis_only {
    #[test]
    fn redis_reconnects_are_counted() {
        super::redis_reconnects_are_counted();
    }
}

// What the allocator keeps is the process's, whatever the store.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn heap_a_burst_left_behind_is_given_back() {
    heap_given_back();
}

const KEY: &str = "s3cret-admin-key";

/// What the parser made of one scrape: each family's type, and every
/// sample by name and labels.
struct Scrape {
    types: HashMap<String, String>,
    samples: Vec<(String, HashMap<String, String>, f64)>,
}

impl Scrape {
    /// The value of the one sample `name` whose labels include `labels`.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
        found.first().copied()
    }

    /// Like [`Scrape::get`], 0 when the series is absent (a label set not
    /// seen yet).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Asserts each `(family, type)` is in the scrape with that type.
    fn has_families(&self, families: &[(&str, &str)]) {
        for (family, kind) in families {
            assert_eq!(
                self.types.get(*family).map(String::as_str),
                Some(*kind),
                "{family}"
            );
        }
    }

    fn subscriptions(&self) -> [f64; 4] {
        ["stream", "poll", "sse", "ws"].map(|kind| {
            self.get("haoshuo_subscriptions", &[("kind", kind)])
                .unwrap_or_else(|| panic!("no haoshuo_subscriptions{{kind={kind:?}}}"))
        })
    }
}

/// A Python with `prometheus_client` (Debian's package serves the system
/// Python, which may not be the first `python3` on the PATH).
fn python() -> &'static str {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|py| {
            Command::new(py)
                .args(["-c", "import prometheus_client.parser"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("no python3 with prometheus_client: apt-get install python3-prometheus-client")
}

/// Parses Prometheus text with `prometheus_client.parser` and hands back
/// what it found as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type,
                "samples": [[s.name, s.labels, s.value] for s in f.samples]})
print(json.dumps(out))
"#;

fn parse(text: &str) -> Scrape {
    let mut child = Command::new(python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed the parser");
    let out = child.wait_with_output().expect("the parser ends");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let families: Vec<Value> = serde_json::from_slice(&out.stdout).expect("the parser's JSON");
    let mut scrape = Scrape {
        types: HashMap::new(),
        samples: Vec::new(),
    };
    for f in families {
        let name = f["name"].as_str().expect("a name").to_string();
        scrape
            .types
            .insert(name, f["type"].as_str().expect("a type").to_string());
        for s in f["samples"].as_array().expect("samples") {
            let labels = s[1]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().expect("a label value").to_string()))
                .collect();
            let value = s[2].as_f64().expect("a value");
            scrape.samples.push((
                s[0].as_str().expect("a sample name").to_string(),
                labels,
                value,
            ));
        }
    }
    scrape
}

/// `GET /metrics` on the admin port, with `key` as `X-Admin-Key`.
fn get_metrics(server: &Server, key: Option<&str>) -> Response {
    let headers: Vec<(&str, &str)> = key.map(|k| ("X-Admin-Key", k)).into_iter().collect();
    request(server.admin_addr(), "GET", "/metrics", &headers, b"")
}

fn scrape(server: &Server) -> Scrape {
    let r = get_metrics(server, None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    parse(std::str::from_utf8(&r.body).expect("metrics are UTF-8"))
}

/// Scrapes until `ok` holds for a scrape, and returns it; fails with the
/// last one after [`WAIT`].
fn scrape_until(server: &Server, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = scrape(server);
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {WAIT:?}; subscriptions {:?}, deliveries {:?}, online {:?}",
            s.subscriptions(),
            s.get("haoshuo_deliveries_total", &[]),
            s.get("haoshuo_online_users", &[]),
        );
    }
}

/// The data messages of SSE events until `n` came (heartbeats skipped).
fn sse_messages(sse: &mut SseClient, uid: u64, n: usize) -> Vec<Msg> {
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = sse
            .next_event(left)
            .unwrap_or_else(|| panic!("SSE got {} of {n} messages: {got:?}", got.len()));
        if event.data.is_some() {
            got.extend(check_data_frame(&event.frame(), uid));
        }
    }
    got
}

fn gauges_and_counters_follow_the_clients(backend: Backend) {
    // A one-second heartbeat: a user whose poll was answered counts as
    // online for that long, so the online gauge falls soon after.
    let server = Server::start(backend, Opts::default().admin("").heartbeat(1));
    let api = server.api();
    let users = provisioned_users(
        provision(&server, None, &json!({"appid":"m","prefix":"u","count":2})),
        "m",
    );
    let (alice, bob) = (&users[0], &users[1]);

    let before = scrape(&server);
    before.has_families(&[
        ("haoshuo_subscriptions", "gauge"),
        ("haoshuo_online_users", "gauge"),
        ("haoshuo_deliveries", "counter"),
        ("haoshuo_connections", "gauge"),
        ("haoshuo_connections_accepted", "counter"),
        ("haoshuo_bytes_out", "counter"),
        ("haoshuo_requests", "counter"),
        ("haoshuo_request_duration_seconds", "histogram"),
        ("haoshuo_store_call_duration_seconds", "histogram"),
        ("haoshuo_store_errors", "counter"),
        ("haoshuo_job_queue_depth", "gauge"),
        ("haoshuo_job_queue_capacity", "gauge"),
        ("haoshuo_mailbox_depth", "gauge"),
        ("haoshuo_mailbox_dropped", "counter"),
        ("haoshuo_mailbox_lag_events", "counter"),
    ]);
    let redis = before.types.get("haoshuo_redis_reconnects");
    match backend {
        Backend::Redis | Backend::Cluster => {
            assert_eq!(redis.map(String::as_str), Some("counter"))
        }
        _ => assert_eq!(redis, None, "Redis reconnects on the embedded store"),
    }
    assert_eq!(before.subscriptions(), [0.0; 4]);
    assert_eq!(before.value("haoshuo_online_users", &[]), 0.0);
    assert_eq!(
        before.value(
            "haoshuo_requests_total",
            &[("endpoint", "/admin/users"), ("status", "200")]
        ),
        1.0
    );
    let delivered_before = before.value("haoshuo_deliveries_total", &[]);

    // Two messages stored before anyone listens: the streams read them
    // from the store. Then 3 streams, 2 held polls (past what is stored),
    // an SSE stream and a WebSocket of bob's.
    const STORED: usize = 2;
    const STREAMS: usize = 3;
    const POLLS: usize = 2;
    const K: usize = 4;
    for i in 0..STORED {
        api.send(alice, bob.uid, &format!("stored{i}"));
    }
    let mut streams: Vec<StreamClient> = (0..STREAMS).map(|_| api.stream(bob, 1)).collect();
    let next = STORED as u64 + 1;
    let mut polls: Vec<PendingPoll> = (0..POLLS).map(|_| api.start_poll(bob, next)).collect();
    let mut sse = SseClient::open(server.addr(), &sub_query(1, bob.uid, &bob.token), None);
    let mut ws = RawWs::open(server.addr(), &sub_query(1, bob.uid, &bob.token));
    let open = scrape_until(&server, "every subscription counted", |s| {
        s.subscriptions() == [STREAMS as f64, POLLS as f64, 1.0, 1.0]
    });
    assert_eq!(
        open.value("haoshuo_online_users", &[]),
        1.0,
        "bob is online"
    );
    assert_eq!(
        open.value("haoshuo_connections", &[("state", "subscribed")]),
        (STREAMS + POLLS + 2) as f64
    );

    // K messages to bob: each stream and the SSE stream get all of them,
    // each poll is answered with what had come when it was.
    for i in 0..K {
        api.send(alice, bob.uid, &format!("m{i}"));
    }
    let mut delivered = 0;
    for s in &mut streams {
        delivered += s.collect(STORED + K, WAIT).len();
    }
    for p in &mut polls {
        let frame = p.wait(WAIT).expect("the poll is answered");
        let msgs = check_data_frame(&frame, bob.uid);
        assert_eq!(msgs[0].msgid, next);
        delivered += msgs.len();
    }
    delivered += sse_messages(&mut sse, bob.uid, STORED + K).len();
    let mut ws_msgs = Vec::new();
    while ws_msgs.len() < STORED + K {
        // A heartbeat, as the streams' and the SSE stream's are skipped:
        // a quiet second before the sends on a loaded machine.
        let frame = ws.next_frame(WAIT);
        if frame != noop_frame() {
            ws_msgs.extend(check_data_frame(&frame, bob.uid));
        }
    }
    delivered += ws_msgs.len();

    let after = scrape_until(&server, "the answered polls counted", |s| {
        s.subscriptions() == [STREAMS as f64, 0.0, 1.0, 1.0]
    });
    assert_eq!(
        after.value("haoshuo_deliveries_total", &[]) - delivered_before,
        delivered as f64,
        "deliveries counted against messages the clients read"
    );
    let requests = |s: &Scrape, endpoint: &str, status: &str| {
        s.value(
            "haoshuo_requests_total",
            &[("endpoint", endpoint), ("status", status)],
        )
    };
    assert_eq!(requests(&after, "/p", "200"), (STORED + K) as f64);
    assert_eq!(requests(&after, "/cget/stream", "200"), STREAMS as f64);
    assert_eq!(requests(&after, "/cget/poll", "200"), POLLS as f64);
    assert_eq!(requests(&after, "/cget/sse", "200"), 1.0);
    assert_eq!(requests(&after, "/cget/ws", "101"), 1.0);
    let p_latency = [("endpoint", "/p")];
    assert_eq!(
        after.value("haoshuo_request_duration_seconds_count", &p_latency),
        (STORED + K) as f64
    );
    assert_eq!(
        after.value(
            "haoshuo_request_duration_seconds_bucket",
            &[("endpoint", "/p"), ("le", "+Inf")]
        ),
        (STORED + K) as f64
    );
    assert!(after.value("haoshuo_request_duration_seconds_sum", &p_latency) > 0.0);
    // One append per send, each timed.
    assert_eq!(
        after.value(
            "haoshuo_store_call_duration_seconds_count",
            &[("op", "append")]
        ),
        (STORED + K) as f64
    );
    assert_eq!(
        after.value("haoshuo_store_errors_total", &[("op", "append")]),
        0.0
    );
    assert!(
        after.value("haoshuo_bytes_out_total", &[]) > before.value("haoshuo_bytes_out_total", &[])
    );

    // Refusals are counted under their endpoint and status, unknown paths
    // under `other`.
    let bad = json!({"appid":"m","uid":bob.uid,"token":"0".repeat(48)});
    expect_error(api.post("/pull", &bad), 401);
    expect_error(api.post("/nowhere", &bad), 404);
    let refused = scrape(&server);
    assert_eq!(requests(&refused, "/pull", "401"), 1.0);
    assert_eq!(requests(&refused, "other", "404"), 1.0);
    assert_eq!(
        requests(&refused, "/metrics", "200"),
        requests(&after, "/metrics", "200") + 1.0
    );

    // Everything closes: the gauges fall to nothing.
    drop(streams);
    drop(sse);
    drop(ws);
    drop(polls);
    let closed = scrape_until(&server, "every subscription gone, bob offline", |s| {
        s.subscriptions() == [0.0; 4] && s.value("haoshuo_online_users", &[]) == 0.0
    });
    assert_eq!(
        closed.value("haoshuo_connections", &[("state", "subscribed")]),
        0.0
    );
    assert_eq!(
        closed.value("haoshuo_deliveries_total", &[]),
        after.value("haoshuo_deliveries_total", &[]),
        "nothing delivered since"
    );
}

/// A loop turn that committed sends itself ends by yielding the core once
/// it ran `--yield-after-us`: with 0 every such turn does, so one send
/// shows a yield; with `off` none does. On a store whose sends the loop
/// does not commit (Redis, the embedded one under `--fsync always`: their
/// answers come back later) no turn does.
fn a_turn_that_committed_sends_yields_the_core(backend: Backend) {
    const YIELDS: &str = "haoshuo_reactor_yields_total";
    let mut cases = vec![
        ("0", None, backend == Backend::Embedded),
        ("off", None, false),
    ];
    if backend == Backend::Embedded {
        cases.push(("0", Some(Fsync::Always), false));
    }
    for (after, fsync, yields) in cases {
        let mut opts = Opts::default().admin("").flag("--yield-after-us", after);
        if let Some(policy) = fsync {
            opts = opts.fsync(policy);
        }
        let server = Server::start(backend, opts);
        let users = provisioned_users(
            provision(&server, None, &json!({"appid":"m","prefix":"u","count":2})),
            "m",
        );
        let before = scrape(&server);
        before.has_families(&[("haoshuo_reactor_yields", "counter")]);
        let before = before.value(YIELDS, &[]);
        server.api().send(&users[0], users[1].uid, "hi");
        let case = format!("--yield-after-us {after}, fsync {fsync:?}");
        if yields {
            scrape_until(&server, &format!("a yield counted ({case})"), |s| {
                s.value(YIELDS, &[]) > before
            });
        } else {
            assert_eq!(scrape(&server).value(YIELDS, &[]), before, "{case}");
        }
    }
}

/// A loop turn that took `--slow-turn-ms` or longer is counted and named
/// in a warning: at 0 every turn is, the one that ran a send included
/// (on the embedded store it committed it: one send in the line); `off`:
/// none, whatever the traffic.
fn a_slow_turn_is_counted_and_named(backend: Backend) {
    const SLOW: &str = "haoshuo_reactor_slow_turns_total";
    for slow in ["0", "off"] {
        let opts = Opts::default().admin("").flag("--slow-turn-ms", slow);
        let server = Server::start(backend, opts);
        let users = provisioned_users(
            provision(&server, None, &json!({"appid":"m","prefix":"u","count":2})),
            "m",
        );
        scrape(&server).has_families(&[("haoshuo_reactor_slow_turns", "counter")]);
        server.api().send(&users[0], users[1].uid, "hi");
        let line = "a loop turn took";
        if slow == "off" {
            let s = scrape(&server);
            assert_eq!(s.value(SLOW, &[]), 0.0, "--slow-turn-ms off");
            assert!(!server.output().contains(line), "{}", server.output());
            continue;
        }
        scrape_until(&server, "a slow turn counted", |s| s.value(SLOW, &[]) > 0.0);
        let committed = match backend {
            Backend::Embedded => "sends committed: 1,",
            _ => "sends committed: 0,",
        };
        server.wait_line(&format!("a slow turn's warning, {committed:?}"), |l| {
            l.contains(" WARN core ") && l.contains(line) && l.contains(committed)
        });
    }
}

fn metrics_take_the_admin_key_and_stay_off_the_public_port(backend: Backend) {
    let server = Server::start(backend, Opts::default().admin(KEY));
    for key in [None, Some("wrong"), Some(&KEY[..KEY.len() - 1])] {
        let r = get_metrics(&server, key);
        expect_error((r.status, r.json()), 401);
    }
    let r = get_metrics(&server, Some(KEY));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let s = parse(std::str::from_utf8(&r.body).expect("UTF-8"));
    assert_eq!(s.subscriptions(), [0.0; 4]);
    // The refused scrapes were requests too.
    assert_eq!(
        s.value(
            "haoshuo_requests_total",
            &[("endpoint", "/metrics"), ("status", "401")]
        ),
        3.0
    );
    // The probes stay keyless.
    let health = request(server.admin_addr(), "GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200);
    let public = request(server.addr(), "GET", "/metrics", &[], b"");
    expect_error((public.status, public.json()), 404);
}

fn redis_reconnects_are_counted() {
    let mut server = Server::start(Backend::Redis, Opts::default().admin(""));
    let api = server.api();
    let users = provisioned_users(
        provision(&server, None, &json!({"appid":"m","prefix":"u","count":1})),
        "m",
    );
    let reconnects = |s: &Scrape| s.value("haoshuo_redis_reconnects_total", &[]);
    assert_eq!(reconnects(&scrape(&server)), 0.0);
    server.redis().restart();
    // The feed notices at once; the lanes on their next call.
    let deadline = Instant::now() + WAIT;
    while api.post("/pull", &pull_body(&users[0])).0 != 200 {
        assert!(Instant::now() < deadline, "Redis did not come back");
    }
    scrape_until(&server, "a reconnect counted", |s| reconnects(s) >= 1.0);
}

/// Held partial request bodies fill the heap; half the connections close,
/// leaving their freed buffers as holes between the others', which the
/// allocator would keep resident for good; the trimmer gives them back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_given_back() {
    const CONNS: usize = 400;
    const BODY: usize = 48 * 1024;
    const MIB: f64 = (1 << 20) as f64;
    let server = Server::start(
        Backend::Embedded,
        Opts::default()
            .admin("")
            .max_body(1 << 20)
            .flag("--heap-trim-secs", 1),
    );
    let before = scrape(&server);
    before.has_families(&[
        ("process_resident_memory_bytes", "gauge"),
        ("haoshuo_heap_in_use_bytes", "gauge"),
        ("haoshuo_heap_free_bytes", "gauge"),
        ("haoshuo_heap_trims", "counter"),
        ("haoshuo_heap_returned_bytes", "counter"),
        ("haoshuo_heap_trim_seconds", "counter"),
    ]);
    let in_use = |s: &Scrape| s.value("haoshuo_heap_in_use_bytes", &[]);
    let resident = |s: &Scrape| s.value("process_resident_memory_bytes", &[]);
    let returned = |s: &Scrape| s.value("haoshuo_heap_returned_bytes_total", &[]);

    let head = format!(
        "POST /p HTTP/1.1\r\nHost: t\r\nContent-Type: {FORM}\r\nContent-Length: {}\r\n\r\n",
        2 * BODY
    );
    let body = vec![b'a'; BODY];
    let mut conns: Vec<std::net::TcpStream> = (0..CONNS)
        .map(|_| {
            let mut c = Conn::connect(server.addr()).into_stream();
            c.write_all(head.as_bytes()).expect("write a head");
            c.write_all(&body).expect("write half a body");
            c
        })
        .collect();
    let held = (CONNS * BODY) as f64;
    let full = scrape_until(&server, "the partial bodies held", |s| {
        in_use(s) >= in_use(&before) + 0.9 * held
    });

    // Every other one goes: its buffer is freed between two still held.
    let mut i = 0;
    conns.retain(|_| {
        i += 1;
        i % 2 == 0
    });
    // The reactors may still be reading the last bodies when `full` is
    // taken (on a loaded machine): what is in use at the end is checked
    // against what the bodies left held take at most (a buffer grows to
    // 64 KiB for a 48 KiB body; 200 of them still held take at least
    // `held` if none was freed), and the resident peak is the highest seen
    // before the trim gave memory back.
    let freed = held / 2.0;
    let peak = std::cell::Cell::new(resident(&full));
    let trimmed = scrape_until(&server, "the freed buffers given back", |s| {
        if returned(s) == returned(&full) {
            peak.set(peak.get().max(resident(s)));
        }
        in_use(s) <= in_use(&before) + 1.4 * freed && returned(s) >= returned(&full) + 0.5 * freed
    });
    assert!(
        resident(&trimmed) <= peak.get() - 0.5 * freed,
        "resident {:.1} MiB with the bodies held, {:.1} MiB after half were freed and trimmed",
        peak.get() / MIB,
        resident(&trimmed) / MIB,
    );
    drop(conns);
}
