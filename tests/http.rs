//! The HTTP/1.1 layer as a client sees it: `Expect: 100-continue`, answers
//! to requests we refuse (each with the JSON error body, then a lingering
//! close), HTTP/1.0 semantics, and accept back-pressure at `--max-conns`.

mod common;

use common::*;
use serde_json::json;

common::backend_tests!(
    expect_continue_is_answered_before_the_body,
    refused_requests_get_a_json_error_then_close,
    http10_closes_unless_kept_alive,
    accepting_pauses_at_max_conns_and_resumes,
);

fn expect_continue_is_answered_before_the_body(backend: Backend) {
    let server = Server::start(backend, Opts::default());
    let body = form_body(&register_body("app", "carol", "pw"));
    let mut conn = Conn::connect(server.addr());
    conn.send(
        format!(
            "POST /re HTTP/1.1\r\nHost: x\r\nContent-Type: {FORM}\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let interim = conn.read_head(WAIT).expect("a 100 Continue");
    assert_eq!(interim.status, 100);
    conn.send(body.as_bytes());
    let r = conn.read_response(WAIT);
    assert_eq!(r.status, 200);
    check_register(&r.json(), "carol");
}

fn refused_requests_get_a_json_error_then_close(backend: Backend) {
    let server = Server::start(backend, Opts::default());
    let huge_header = format!("GET /x HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    let many_headers = format!(
        "GET /x HTTP/1.1\r\n{}\r\n",
        (0..40)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    let cases: [(&[u8], u16); 5] = [
        (b"NOT A REQUEST\r\n\r\n", 400),
        (b"GET /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n", 400),
        (huge_header.as_bytes(), 431),
        (many_headers.as_bytes(), 431),
        (b"GET /x HTTP/2.0\r\n\r\n", 505),
    ];
    for (raw, status) in cases {
        let mut conn = Conn::connect(server.addr());
        conn.send(raw);
        let r = conn.read_response(WAIT);
        let what = String::from_utf8_lossy(&raw[..raw.len().min(40)]).into_owned();
        assert_eq!(r.status, status, "{what}");
        let body = r.json();
        assert_keys(&body, &["type", "code", "msg"]);
        assert_eq!(body["type"], "error");
        assert_eq!(body["code"], json!(status));
        assert!(conn.closed_within(WAIT), "{what}: connection left open");
    }
}

fn http10_closes_unless_kept_alive(backend: Backend) {
    let server = Server::start(backend, Opts::default());
    let mut conn = Conn::connect(server.addr());
    conn.send(b"GET /nope HTTP/1.0\r\n\r\n");
    assert_eq!(conn.read_response(WAIT).status, 404);
    assert!(conn.closed_within(WAIT));

    let mut conn = Conn::connect(server.addr());
    for _ in 0..2 {
        conn.send(b"GET /nope HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(conn.read_response(WAIT).status, 404);
    }

    // A 1.0 stream's body ends with the close, so its head says
    // `Connection: close`, a HEAD's too: then the server closes, keep-alive
    // asked or not.
    let alice = server.api().user("a", "alice");
    let query = sub_query(1, alice.uid, &alice.token);
    for path in ["/cget/stream", "/cget/sse"] {
        let mut conn = Conn::connect(server.addr());
        conn.send(
            format!("HEAD {path}?{query} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes(),
        );
        let head = conn.read_head(WAIT).expect("the HEAD answer");
        assert_eq!(head.status, 200, "{path}");
        assert_eq!(head.header("connection"), Some("close"), "{path}");
        assert!(conn.closed_within(WAIT), "{path} stayed open");
    }

    // A refused stream (a wrong token: the 401 frame) is framed the same:
    // over HTTP/1.0 its body ends with the close, keep-alive asked or not;
    // over HTTP/1.1 its chunked body ends by itself and the connection
    // takes the next request.
    let last = if alice.token.ends_with('0') { "1" } else { "0" };
    let wrong = format!("{}{last}", &alice.token[..alice.token.len() - 1]);
    let refused = sub_query(1, alice.uid, &wrong);
    let mut conn = Conn::connect(server.addr());
    conn.send(
        format!("GET /cget/stream?{refused} HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").as_bytes(),
    );
    let head = conn.read_head(WAIT).expect("the refused stream's head");
    assert_eq!(head.header("connection"), Some("close"));
    assert!(conn.closed_within(WAIT), "a refused 1.0 stream stayed open");
    let mut conn = Conn::connect(server.addr());
    conn.send(format!("GET /cget/stream?{refused} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    let r = conn.read_response(WAIT);
    assert!(
        String::from_utf8_lossy(&r.body).contains("401"),
        "not the 401 frame: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    conn.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(conn.read_response(WAIT).status, 404);
}

fn accepting_pauses_at_max_conns_and_resumes(backend: Backend) {
    let server = Server::start(backend, Opts::default().threads(1).max_conns(3));
    let ask = |conn: &mut Conn| conn.send(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut held: Vec<Conn> = (0..3)
        .map(|_| {
            let mut c = Conn::connect(server.addr());
            ask(&mut c);
            assert_eq!(c.read_response(WAIT).status, 404);
            c
        })
        .collect();
    // The kernel completes the handshake, but the server does not take the
    // fourth connection while three are open.
    let mut fourth = Conn::connect(server.addr());
    ask(&mut fourth);
    assert!(fourth.try_read_response(QUIET).is_err());
    // Below 90 % of the limit it accepts again, and the request is answered.
    drop(held.pop());
    assert_eq!(fourth.read_response(WAIT).status, 404);
}

/// RFC 9110/9112 MUSTs: a `Date` on every response, `Allow` on 405, a HEAD
/// answered with the head alone (so a request pipelined behind it is
/// read correctly), exactly one `Host` in 1.1, 414 for a request line
/// longer than the head limit.
#[test]
fn http_musts() {
    let server = Server::start(Backend::Embedded, Opts::default());
    let api = server.api();
    let alice = api.user("a", "alice");
    let mut conn = Conn::connect(server.addr());

    conn.send(&request_bytes("GET", "/p", &[], b""));
    let r = conn.read_response(WAIT);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("POST"));
    // The message names the fix too, for whoever reads only the body.
    assert_eq!(r.json()["msg"], "method not allowed: use POST");
    let date = r.header("date").expect("a Date header");
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date:?}");

    conn.send(&request_bytes("POST", "/cget/poll", &[], b""));
    let r = conn.read_response(WAIT);
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(r.json()["msg"], "method not allowed: use GET");

    // HEAD of a POST endpoint: 405 without a body; of the stream: its head,
    // without subscribing. Then a pipelined GET on the same connection.
    let query = sub_query(1, alice.uid, &alice.token);
    let stream_path = format!("/cget/stream?{query}");
    let sse_path = format!("/cget/sse?{query}");
    let pipelined = [
        request_bytes("HEAD", "/p", &[], b""),
        request_bytes("HEAD", &stream_path, &[], b""),
        request_bytes("HEAD", &sse_path, &[], b""),
        request_bytes("GET", "/nope", &[], b""),
    ]
    .concat();
    conn.send(&pipelined);
    let head = conn.read_head(WAIT).expect("the HEAD /p answer");
    assert_eq!(head.status, 405);
    assert_eq!(head.header("allow"), Some("POST"));
    let head = conn.read_head(WAIT).expect("the HEAD stream answer");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("application/json"));
    let head = conn.read_head(WAIT).expect("the HEAD sse answer");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    // The next bytes are the GET's answer, not a body of the HEADs (an
    // SSE stream's first event, its retry hint, included).
    let r = conn.read_response(WAIT);
    assert_eq!(r.status, 404, "the answers desynchronised");

    for (raw, status) in [
        (&b"GET /nope HTTP/1.1\r\n\r\n"[..], 400),
        (b"GET /nope HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ] {
        let mut conn = Conn::connect(server.addr());
        conn.send(raw);
        let r = conn.read_response(WAIT);
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(raw));
        assert!(r.json()["msg"].as_str().unwrap().contains("Host"));
    }
    let mut conn = Conn::connect(server.addr());
    conn.send(format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000)).as_bytes());
    assert_eq!(conn.read_response(WAIT).status, 414);
}
