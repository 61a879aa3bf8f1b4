//! The admin listener: bulk provisioning of users with tokens
//! (`POST /admin/users`), its key check, its separation from the public
//! port, and the refusal to expose it off loopback without a key.

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::json;

common::backend_tests!(
    bulk_users_get_working_tokens,
    a_set_key_is_required,
    bad_batches_are_refused_whole,
    admin_and_public_ports_are_apart,
    health_and_readiness_probes,
);

const KEY: &str = "s3cret-admin-key";

fn bulk_users_get_working_tokens(backend: Backend) {
    let server = Server::start(backend, Opts::default().admin(""));
    let api = server.api();
    let made = provisioned_users(
        provision(
            &server,
            None,
            &json!({"appid":"bench","prefix":"u","count":3}),
        ),
        "bench",
    );
    let names: Vec<&str> = made.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["u0", "u1", "u2"]);
    let uids: Vec<u64> = made.iter().map(|u| u.uid).collect();
    assert_eq!(uids, [1, 2, 3]);

    // The tokens act for their users: send, stream, pull.
    let mut stream = api.stream(&made[1], 1);
    api.send(&made[0], made[1].uid, "hello");
    let got = stream.collect(1, WAIT);
    assert_eq!(got, vec![Msg::single(&made[0], made[1].uid, 1, "hello")]);
    assert_eq!(api.pull(&made[1]).msgids(), [1]);

    // A user made without a password cannot log in with any: an empty one
    // is a malformed request, any other is wrong.
    expect_error(api.post("/login", &login_body("bench", "u0", "")), 400);
    for pass in ["!", "u0"] {
        expect_error(api.post("/login", &login_body("bench", "u0", pass)), 401);
    }
    // A user registered later gets the next uid.
    assert_eq!(api.register("bench", "later", "pw"), 4);
}

fn a_set_key_is_required(backend: Backend) {
    let server = Server::start(backend, Opts::default().admin(KEY));
    let body = json!({"appid":"bench","prefix":"k","count":2});
    // A key of the right length with one character changed, too.
    let near = format!("{}X", &KEY[..KEY.len() - 1]);
    for key in [
        None,
        Some("wrong"),
        Some(""),
        Some(&KEY[..KEY.len() - 1]),
        Some(&near),
    ] {
        expect_error(provision(&server, key, &body), 401);
    }
    let made = provisioned_users(provision(&server, Some(KEY), &body), "bench");
    let made: Vec<(u64, &str)> = made.iter().map(|u| (u.uid, u.name.as_str())).collect();
    assert_eq!(
        made,
        [(1, "k0"), (2, "k1")],
        "the refused calls made nobody"
    );
}

fn bad_batches_are_refused_whole(backend: Backend) {
    let server = Server::start(backend, Opts::default().admin(""));
    for bad in [
        json!({"appid":"bench","prefix":"u","count":0}),
        json!({"appid":"bench","prefix":"u","count":10001}),
        json!({"appid":"bench","prefix":"u"}),
        json!({"prefix":"u","count":1}),
        json!({"appid":"bench","prefix":"u","count":"many"}),
        // Names are at most 128 bytes: "pp...p0" would be 129.
        json!({"appid":"bench","prefix":"p".repeat(128),"count":1}),
    ] {
        expect_error(provision(&server, None, &bad), 400);
    }
    // 127 bytes of prefix and one digit: the longest name there is.
    let longest = provisioned_users(
        provision(
            &server,
            None,
            &json!({"appid":"bench","prefix":"p".repeat(127),"count":1}),
        ),
        "bench",
    );
    assert_eq!(longest[0].name, format!("{}0", "p".repeat(127)));
    provisioned_users(
        provision(
            &server,
            None,
            &json!({"appid":"bench","prefix":"u","count":2}),
        ),
        "bench",
    );
    // "u1" is taken: the batch u0..u4 is refused and creates nobody...
    expect_error(
        provision(
            &server,
            None,
            &json!({"appid":"bench","prefix":"u","count":5}),
        ),
        409,
    );
    // ...so the next user is uid 4 (the longest name above is uid 1).
    let more = provisioned_users(
        provision(
            &server,
            None,
            &json!({"appid":"bench","prefix":"v","count":1}),
        ),
        "bench",
    );
    assert_eq!(more[0].uid, 4);
}

fn admin_and_public_ports_are_apart(backend: Backend) {
    let server = Server::start(backend, Opts::default().admin(""));
    let body = json!({"appid":"bench","prefix":"u","count":1});
    let public = request(
        server.addr(),
        "POST",
        "/admin/users",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    expect_error((public.status, public.json()), 404);
    expect_error(
        post(server.admin_addr(), "/re", &register_body("a", "x", "y")),
        404,
    );
}

#[test]
fn off_loopback_without_a_key_is_refused_at_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_haoshuo"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"])
        .arg("--data-dir")
        .arg(tempfile::tempdir().unwrap().path())
        .stdin(Stdio::null())
        .output()
        .expect("run haoshuo");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--admin-key"), "{err}");
}

#[test]
fn a_short_or_empty_admin_key_is_refused_at_start() {
    for key in ["", "short-key-15byt"] {
        let out = Command::new(env!("CARGO_BIN_EXE_haoshuo"))
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--admin-key", key])
            .arg("--data-dir")
            .arg(tempfile::tempdir().unwrap().path())
            .stdin(Stdio::null())
            .output()
            .expect("run haoshuo");
        assert!(!out.status.success(), "started with admin key {key:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("at least 16 bytes"), "{err}");
    }
}

/// `GET` on the admin listener, no key.
fn probe(server: &Server, path: &str) -> Response {
    request(server.admin_addr(), "GET", path, &[], b"")
}

fn health_and_readiness_probes(backend: Backend) {
    let mut server = Server::start(backend, Opts::default().admin(KEY));
    for (path, body) in [
        ("/healthz", json!({"status": "ok"})),
        ("/readyz", json!({"status": "ready"})),
    ] {
        let r = probe(&server, path);
        assert_eq!((r.status, r.json()), (200, body), "{path}");
        // Only on the admin listener.
        let (status, _) = post(server.addr(), path, &json!({}));
        assert_eq!(status, 404, "{path} on the public port");
        // HEAD: the GET's head alone, then the next answer on the connection.
        let mut conn = Conn::connect(server.admin_addr());
        conn.send(
            &[
                request_bytes("HEAD", path, &[], b""),
                request_bytes("GET", "/nope", &[], b""),
            ]
            .concat(),
        );
        let head = conn.read_head(WAIT).expect("HEAD answered");
        assert_eq!(head.status, 200, "HEAD {path}");
        for name in ["content-type", "content-length", "transfer-encoding"] {
            assert_eq!(head.header(name), r.header(name), "HEAD {path}: {name}");
        }
        assert_eq!(
            conn.read_response(WAIT).status,
            404,
            "HEAD {path} sent a body"
        );
    }
    if backend == Backend::Redis {
        // Not ready while the store is away; alive all the same.
        server.redis().kill();
        let r = probe(&server, "/readyz");
        assert_eq!(r.status, 503, "{:?}", r.json());
        assert_eq!(r.json()["msg"], "store unavailable");
        assert_eq!(probe(&server, "/healthz").status, 200);
        server.redis().start_again();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while probe(&server, "/readyz").status != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "not ready after Redis came back"
            );
            // The pool's reconnect back-off: nothing to watch.
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
