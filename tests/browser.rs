//! A real browser against the real server: headless Chromium (Debian's
//! `chromium`, which .ci/run installs) driven over the DevTools protocol
//! (tests/common/browser.rs). The demo page (`--demo`) chats between two
//! users over Server-Sent Events and over a WebSocket; the browser's own
//! `EventSource` resumes after the server restarts with `Last-Event-ID`,
//! and the page's WebSocket with `seq`, neither losing nor repeating a
//! message; a page on another origin may call the API with `fetch` only
//! when `--allow-origin` names it. Everything is read from the page.

mod common;

use common::*;
use serde_json::{json, Value};

common::backend_tests!(
    embedded_and_redis:
    the_demo_page_chats_between_two_users,
    event_source_resumes_after_a_restart_without_loss_or_repeat,
    the_demo_websocket_resumes_after_a_restart_without_loss_or_repeat,
);

/// How long a browser-side wait may take: a reconnect after a restart
/// includes `EventSource`'s 3 s `retry` and the page's back-off.
const BROWSER_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// The msgids the demo page shows received in `side`'s pane, in order.
fn shown_msgids(side: &str) -> String {
    format!(
        "[...document.querySelectorAll('#log-{side} li.msg')].map(li => Number(li.dataset.msgid))"
    )
}

/// Waits until `side`'s pane shows exactly the msgids `ids`, in order.
fn wait_msgids(browser: &mut Browser, side: &str, ids: impl IntoIterator<Item = u64>) {
    let want = json!(ids.into_iter().collect::<Vec<_>>()).to_string();
    browser.wait_for(
        &format!("pane {side} to show msgids {want}"),
        &format!("JSON.stringify({}) === {}", shown_msgids(side), json!(want)),
        BROWSER_WAIT,
    );
}

/// The texts of `side`'s received messages.
fn shown_texts(browser: &mut Browser, side: &str) -> Value {
    browser.eval(&format!(
        "[...document.querySelectorAll('#log-{side} li.msg')].map(li => li.textContent)"
    ))
}

/// The notes (`trimmed`, `reset`, `401` frames) in `side`'s pane.
fn notes(browser: &mut Browser, side: &str) -> Value {
    browser.eval(&format!(
        "[...document.querySelectorAll('#log-{side} li.notice')].map(li => li.textContent)"
    ))
}

/// Opens the demo page, fills in the two users (`appid` app), picks the
/// transport, presses start and waits until both listen.
fn start_demo(browser: &mut Browser, srv: &Server, appid: &str, transport: &str) {
    browser.goto(&format!("http://{}/demo", srv.addr()));
    let fields = json!({
        "appid": appid,
        "name-a": "alice", "pass-a": password_for("alice"),
        "name-b": "bob", "pass-b": password_for("bob"),
    });
    browser.eval(&format!(
        "for (const [id, v] of Object.entries({fields})) document.getElementById(id).value = v;
         document.getElementById('t-{transport}').click();
         document.getElementById('start').click()"
    ));
    for side in ["a", "b"] {
        browser.wait_for(
            &format!("user {side} connected over {transport}"),
            &format!(
                "document.getElementById('status-{side}').textContent === 'connected ({transport})' \
                 || document.getElementById('error').textContent"
            ),
            BROWSER_WAIT,
        );
    }
    let error = browser.eval("document.getElementById('error').textContent");
    assert_eq!(error, "", "the page says");
}

/// Types `text` into `side`'s box and presses Send.
fn type_and_send(browser: &mut Browser, side: &str, text: &str) {
    browser.eval(&format!(
        "document.getElementById('text-{side}').value = {};
         document.getElementById('send-{side}').click()",
        json!(text)
    ));
}

/// The user the page registered on `side`, logged in again from here.
fn log_in(srv: &Server, appid: &str, name: &str) -> User {
    let api = srv.api();
    let pass = password_for(name);
    let (uid, token) = check_login(&api.ok("/login", &login_body(appid, name, &pass)));
    User {
        appid: appid.into(),
        name: name.into(),
        uid,
        token,
    }
}

fn the_demo_page_chats_between_two_users(backend: Backend) {
    let srv = Server::start(backend, Opts::default().switch("--demo"));
    let mut browser = Browser::start();
    start_demo(&mut browser, &srv, "demo", "sse");

    // Over EventSource: a message each way, shown as it arrives.
    type_and_send(&mut browser, "a", "hello bob");
    wait_msgids(&mut browser, "b", [1]);
    type_and_send(&mut browser, "b", "hi alice");
    wait_msgids(&mut browser, "a", [1]);
    assert_eq!(
        shown_texts(&mut browser, "b"),
        json!(["#1 alice: hello bob"])
    );
    assert_eq!(shown_texts(&mut browser, "a"), json!(["#1 bob: hi alice"]));

    // The toggle: both reconnect over WebSocket, from where they were.
    browser.eval("document.getElementById('t-ws').click()");
    for side in ["a", "b"] {
        browser.wait_for(
            &format!("user {side} on the WebSocket"),
            &format!("document.getElementById('status-{side}').textContent === 'connected (ws)'"),
            BROWSER_WAIT,
        );
    }
    type_and_send(&mut browser, "a", "now over a websocket");
    wait_msgids(&mut browser, "b", [1, 2]);
    assert_eq!(
        shown_texts(&mut browser, "b"),
        json!(["#1 alice: hello bob", "#2 alice: now over a websocket"])
    );
    // The sender's pane shows what it sent.
    let sent =
        browser.eval("[...document.querySelectorAll('#log-a li.sent')].map(li => li.textContent)");
    assert_eq!(
        sent,
        json!(["to bob: hello bob", "to bob: now over a websocket"])
    );

    // The page acked what it showed: nothing is left to pull.
    browser.wait_for(
        "bob's ack of msgid 2",
        "document.getElementById('acked-b').textContent === '2'",
        BROWSER_WAIT,
    );
    let bob = log_in(&srv, "demo", "bob");
    let pulled = srv.api().pull(&bob);
    assert_eq!(pulled.msgids(), Vec::<u64>::new());
    assert_eq!(notes(&mut browser, "a"), json!([]));
    assert_eq!(notes(&mut browser, "b"), json!([]));
}

/// Alice (from here) sends to Bob, whose pane listens over `transport`;
/// the server restarts between messages, on the same port; Bob's pane
/// must end with msgids 1..=6 exactly, and no `trimmed` note (which a
/// resume from the start, not from the last msgid, would bring: the page
/// acks what it showed).
fn resumes_after_a_restart(backend: Backend, transport: &str) {
    let mut srv = Server::start(backend, Opts::default().switch("--demo"));
    let mut browser = Browser::start();
    start_demo(&mut browser, &srv, "demo", transport);
    let alice = log_in(&srv, "demo", "alice");
    let bob_uid = log_in(&srv, "demo", "bob").uid;

    for i in 1..=3 {
        srv.api().send(&alice, bob_uid, &format!("m{i}"));
    }
    wait_msgids(&mut browser, "b", 1..=3);
    browser.wait_for(
        "bob's ack of msgid 3",
        "document.getElementById('acked-b').textContent === '3'",
        BROWSER_WAIT,
    );

    srv.restart_same_port();
    // Stored while the page is away: it gets them when it is back.
    for i in 4..=5 {
        srv.api().send(&alice, bob_uid, &format!("m{i}"));
    }
    wait_msgids(&mut browser, "b", 1..=5);
    browser.wait_for(
        "bob listening again",
        &format!("document.getElementById('status-b').textContent === 'connected ({transport})'"),
        BROWSER_WAIT,
    );
    // And live again.
    srv.api().send(&alice, bob_uid, "m6");
    wait_msgids(&mut browser, "b", 1..=6);
    let texts: Vec<String> = (1..=6).map(|i| format!("#{i} alice: m{i}")).collect();
    assert_eq!(shown_texts(&mut browser, "b"), json!(texts));
    assert_eq!(notes(&mut browser, "b"), json!([]));
}

fn event_source_resumes_after_a_restart_without_loss_or_repeat(backend: Backend) {
    resumes_after_a_restart(backend, "sse");
}

fn the_demo_websocket_resumes_after_a_restart_without_loss_or_repeat(backend: Backend) {
    resumes_after_a_restart(backend, "ws");
}

#[test]
fn without_the_flag_there_is_no_demo_page() {
    let srv = Server::start(Backend::Embedded, Opts::default());
    let r = request(srv.addr(), "GET", "/demo", &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["msg"], "no such path");
    let srv = Server::start(Backend::Embedded, Opts::default().switch("--demo"));
    let r = request(srv.addr(), "GET", "/demo", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
}

/// The page on the other origin: `chat(api)` registers and logs in two
/// users, sends one to the other and listens for it with `EventSource`,
/// all on `api`, another origin; what it got, or the error it met.
const OTHER_ORIGIN_PAGE: &str = r#"<!doctype html>
<title>another origin</title>
<script>
async function post(api, path, body) {
  const r = await fetch(api + path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}
async function chat(api) {
  try {
    const appid = "cors";
    const re = await post(api, "/re", { appid, username: "alice", pass: "pw-a" });
    await post(api, "/re", { appid, username: "bob", pass: "pw-b" });
    const a = await post(api, "/login", { appid, username: "alice", pass: "pw-a" });
    const b = await post(api, "/login", { appid, username: "bob", pass: "pw-b" });
    const p = await post(api, "/p", {
      appid, fromid: a.body.uid, datatype: 1, toid: b.body.uid,
      content: "from another origin", token: a.body.token, restart: "all",
    });
    const frame = await new Promise((resolve, reject) => {
      const es = new EventSource(`${api}/cget/sse?seq=1&cname=${b.body.uid}&token=${b.body.token}`);
      es.onmessage = (e) => { es.close(); resolve(JSON.parse(e.data)); };
      es.onerror = () => { es.close(); reject(new Error("EventSource failed")); };
    });
    return { re, login: [a.status, b.status], p, frame };
  } catch (e) {
    return { error: `${e.name}: ${e.message}` };
  }
}
</script>
"#;

fn chat_from_another_origin(allow: bool) -> (Server, Value) {
    let page = OnePage::serve(OTHER_ORIGIN_PAGE);
    let opts = match allow {
        true => Opts::default().flag("--allow-origin", page.origin()),
        false => Opts::default(),
    };
    let srv = Server::start(Backend::Embedded, opts);
    let mut browser = Browser::start();
    browser.goto(&format!("{}/", page.origin()));
    let got = browser.eval(&format!(
        "chat({})",
        json!(format!("http://{}", srv.addr()))
    ));
    (srv, got)
}

#[test]
fn a_page_on_an_allowed_origin_calls_the_api_with_fetch() {
    let (_srv, got) = chat_from_another_origin(true);
    assert_eq!(got.get("error"), None, "{got}");
    assert_eq!(
        got["re"],
        json!({"status": 200, "body": {"uid": 1, "username": "alice"}})
    );
    assert_eq!(got["login"], json!([200, 200]));
    assert_eq!(got["p"], json!({"status": 200, "body": {"type": "ok"}}));
    let frame = &got["frame"];
    let msgs = check_data_frame(frame, 2);
    assert_eq!(msgs.len(), 1, "{frame}");
    assert_eq!(msgs[0].content, "from another origin");
}

#[test]
fn without_allow_origin_the_browser_refuses_the_page() {
    let (srv, got) = chat_from_another_origin(false);
    assert_eq!(got, json!({"error": "TypeError: Failed to fetch"}));
    // The preflight was refused, so the browser never sent the `/re`.
    assert_eq!(srv.api().register("cors", "alice", "pw-a"), 1);
}
