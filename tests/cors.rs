//! Cross-origin requests (CORS): with `--allow-origin`, a page on that
//! origin gets `Access-Control-Allow-Origin` (and `Vary: Origin`) on every
//! answer, streams, SSE and held polls included, and its preflight
//! (`OPTIONS`) a 204 saying what it may send; another origin gets none of
//! it, and without the flag nothing changes. The admin listener never
//! answers a page.

mod common;

use common::*;
use serde_json::json;

const APP_ORIGIN: &str = "https://app.example";

/// `method path` with `Origin: origin` (and a JSON body for a POST).
fn from_origin(srv: &Server, method: &str, path: &str, origin: &str, body: &str) -> Response {
    let mut headers = vec![("Origin", origin)];
    if !body.is_empty() {
        headers.push(("Content-Type", "application/json"));
    }
    request(srv.addr(), method, path, &headers, body.as_bytes())
}

fn preflight(srv: &Server, path: &str, origin: &str) -> Response {
    let headers = [
        ("Origin", origin),
        ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "content-type"),
    ];
    let mut conn = Conn::connect(srv.addr());
    conn.send(&request_bytes("OPTIONS", path, &headers, b""));
    let head = conn.read_head(WAIT).expect("an answer to OPTIONS");
    Response {
        status: head.status,
        headers: head.headers,
        body: Vec::new(),
    }
}

#[test]
fn an_allowed_origin_may_call_and_listen() {
    let srv = Server::start(
        Backend::Embedded,
        Opts::default().flag("--allow-origin", APP_ORIGIN),
    );
    let api = srv.api();
    // The preflight a browser sends before a JSON POST.
    let pre = preflight(&srv, "/re", APP_ORIGIN);
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some(APP_ORIGIN));
    assert_eq!(
        pre.header("access-control-allow-methods"),
        Some("POST, OPTIONS")
    );
    assert_eq!(
        pre.header("access-control-allow-headers"),
        Some("Content-Type, Last-Event-ID")
    );
    assert_eq!(pre.header("access-control-max-age"), Some("600"));
    assert_eq!(pre.header("vary"), Some("Origin"));
    let pre = preflight(&srv, "/cget/sse", APP_ORIGIN);
    assert_eq!(
        pre.header("access-control-allow-methods"),
        Some("GET, HEAD, OPTIONS")
    );

    // The calls themselves, errors included.
    let body = json!({"appid": "a", "username": "alice", "pass": "pw"}).to_string();
    let r = from_origin(&srv, "POST", "/re", APP_ORIGIN, &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP_ORIGIN));
    let r = from_origin(&srv, "POST", "/re", APP_ORIGIN, &body);
    assert_eq!(r.status, 409);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP_ORIGIN));

    // Streams, SSE and a held poll answered later.
    let (bob, carol) = (api.user("a", "bob"), api.user("a", "carol"));
    let query = sub_query(1, bob.uid, &bob.token);
    for path in ["/cget/stream", "/cget/sse"] {
        let mut conn = Conn::connect(srv.addr());
        conn.send(&request_bytes(
            "GET",
            &format!("{path}?{query}"),
            &[("Origin", APP_ORIGIN)],
            b"",
        ));
        let head = conn.read_head(WAIT).expect("a stream head");
        assert_eq!(head.status, 200, "{path}");
        assert_eq!(
            head.header("access-control-allow-origin"),
            Some(APP_ORIGIN),
            "{path}"
        );
    }
    let mut held = Conn::connect(srv.addr());
    held.send(&request_bytes(
        "GET",
        &format!("/cget/poll?{query}"),
        &[("Origin", APP_ORIGIN)],
        b"",
    ));
    api.send(&carol, bob.uid, "later");
    let answer = held.read_response(WAIT);
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some(APP_ORIGIN)
    );
    let frame: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(
        check_data_frame(&frame, bob.uid),
        [Msg::single(&carol, bob.uid, 1, "later")]
    );
}

#[test]
fn other_origins_and_servers_without_the_flag_get_nothing() {
    let allowing = Server::start(
        Backend::Embedded,
        Opts::default().flag("--allow-origin", APP_ORIGIN).admin(""),
    );
    // The admin listener is for servers: not even an allowed origin's page
    // may call it.
    let probe = request(
        allowing.admin_addr(),
        "GET",
        "/healthz",
        &[("Origin", APP_ORIGIN)],
        b"",
    );
    assert_eq!(probe.status, 200);
    assert_eq!(probe.header("access-control-allow-origin"), None);
    let mut conn = Conn::connect(allowing.admin_addr());
    conn.send(&request_bytes(
        "OPTIONS",
        "/admin/users",
        &[
            ("Origin", APP_ORIGIN),
            ("Access-Control-Request-Method", "POST"),
        ],
        b"",
    ));
    let head = conn.read_head(WAIT).expect("an answer to OPTIONS");
    assert_eq!(head.status, 405, "no preflight on the admin listener");
    assert_eq!(head.header("access-control-allow-origin"), None);
    let plain = Server::start(Backend::Embedded, Opts::default());
    for (srv, origin) in [(&allowing, "https://evil.example"), (&plain, APP_ORIGIN)] {
        let pre = preflight(srv, "/p", origin);
        assert_eq!(pre.status, 405, "{origin}");
        assert_eq!(pre.header("access-control-allow-origin"), None);
        let body = json!({"appid": "a", "username": "u", "pass": "pw"}).to_string();
        let r = from_origin(srv, "POST", "/re", origin, &body);
        assert_eq!(r.status, 200, "the call itself is served");
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
    }
    // `*` lets any page in.
    let any = Server::start(
        Backend::Embedded,
        Opts::default().flag("--allow-origin", "*"),
    );
    let pre = preflight(&any, "/p", "https://whoever.example");
    assert_eq!(pre.status, 204);
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some("https://whoever.example")
    );
}
