//! `POST /online`: which of some users have a stream, SSE stream or held
//! poll open, on any process. Online while subscribed, offline once the
//! last subscription closes; a poll counts for the heartbeat interval
//! after its answer; tenants apart; on Redis, processes see each other's
//! users, and a process killed with SIGKILL takes its users offline within
//! three presence refreshes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

common::backend_tests!(
    subscribed_users_are_online_and_leave_when_they_close,
    a_poll_counts_for_the_heartbeat_after_its_answer,
);

/// Long enough for a closed connection to be noticed, or a presence
/// refresh (`--presence-secs 1`) plus its expiry to pass.
const SETTLE: Duration = Duration::from_secs(10);

fn online_body(asker: &User, uids: &[u64]) -> Value {
    json!({"appid": asker.appid, "uid": asker.uid, "token": asker.token, "uids": uids})
}

fn online(api: &Api, asker: &User, uids: &[u64]) -> Vec<u64> {
    let v = api.ok("/online", &online_body(asker, uids));
    assert_keys(&v, &["uids"]);
    v["uids"]
        .as_array()
        .expect("uids is an array")
        .iter()
        .map(|u| u.as_u64().expect("a uid is a number"))
        .collect()
}

/// Waits until `/online` answers `want`.
fn wait_online(api: &Api, asker: &User, uids: &[u64], want: &[u64]) {
    let deadline = Instant::now() + SETTLE;
    loop {
        let got = online(api, asker, uids);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "online {got:?}, waited for {want:?}"
        );
        // The server notices a close, or a presence refresh, on its own
        // schedule: nothing here to watch.
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn subscribed_users_are_online_and_leave_when_they_close(backend: Backend) {
    let srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let (alice, bob, carol) = (
        api.user("a", "alice"),
        api.user("a", "bob"),
        api.user("a", "carol"),
    );
    // Another tenant's uid 2 is someone else.
    let other = api.user("b", "x");
    let _other_bob = api.user("b", "y");
    let everyone = [alice.uid, bob.uid, carol.uid, 99];
    assert_eq!(online(&api, &alice, &everyone), Vec::<u64>::new());

    let stream = api.stream(&bob, 1);
    let sse = SseClient::open(srv.addr(), &sub_query(1, carol.uid, &carol.token), None);
    assert_eq!(online(&api, &alice, &everyone), [bob.uid, carol.uid]);
    assert_eq!(
        online(&api, &other, &[1, 2, 3]),
        Vec::<u64>::new(),
        "tenants apart"
    );

    drop(stream);
    wait_online(&api, &alice, &everyone, &[carol.uid]);
    drop(sse);
    wait_online(&api, &alice, &everyone, &[]);

    // At most 1000 users a call; beyond, a clear error.
    let most: Vec<u64> = (1..=1000).collect();
    assert_eq!(online(&api, &alice, &most), Vec::<u64>::new());
    expect_error(api.post("/online", &online_body(&alice, &[1; 1001])), 400);
    let mut forged = online_body(&alice, &[1]);
    forged["token"] = json!(BAD_TOKEN);
    expect_error(api.post("/online", &forged), 401);
}

fn a_poll_counts_for_the_heartbeat_after_its_answer(backend: Backend) {
    let srv = Server::start(backend, Opts::default().heartbeat(2).poll_timeout(1));
    let api = srv.api();
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));
    // Answered (noop after a second), then between polls: still online.
    assert_eq!(api.poll(&bob, 1), noop_frame());
    assert_eq!(online(&api, &alice, &[bob.uid]), [bob.uid]);
    // No next poll within the heartbeat: offline.
    wait_online(&api, &alice, &[bob.uid], &[]);
}

#[test]
fn processes_on_one_redis_see_each_others_users() {
    let a = Server::start(Backend::Redis, Opts::default().flag("--presence-secs", 1));
    let mut b = a.another_node();
    let (api_a, api_b) = (a.api(), b.api());
    let (alice, bob) = (api_a.user("a", "alice"), api_a.user("a", "bob"));
    let _stream = api_b.stream(&bob, 1);
    // Node b reports it within a refresh; node a sees it.
    wait_online(&api_a, &alice, &[alice.uid, bob.uid], &[bob.uid]);
    // Killed: its users go offline within three refreshes.
    b.kill9();
    wait_online(&api_a, &alice, &[bob.uid], &[]);
}
