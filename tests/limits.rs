//! Limits that keep one hostile client from hurting everyone: password
//! hashing is bounded and answers 429 at once when busy, `/re` and `/login`
//! are rate-limited per client address and `/login` per username.

mod common;

use common::*;
use serde_json::json;
use std::thread;
use std::time::{Duration, Instant};

/// A 429 with `Retry-After` of at least a second, and this message.
fn expect_429(answer: (u16, serde_json::Value), msg: &str) {
    assert_eq!(answer.0, 429, "{}", answer.1);
    assert_eq!(answer.1["msg"], msg);
}

#[test]
fn logins_are_limited_per_username() {
    let srv = Server::start(
        Backend::Embedded,
        Opts::default().flag("--login-per-user", 3),
    );
    let api = srv.api();
    let alice = api.user("a", "alice"); // one login of alice's
    let bob = api.user("a", "bob");
    for _ in 0..2 {
        expect_error(api.post("/login", &login_body("a", "alice", "guess")), 401);
    }
    // The fourth within the minute, right password or not.
    expect_429(
        api.post("/login", &login_body("a", "alice", &alice.pass())),
        "too many logins for this user",
    );
    // Another user, and the same name in another appid, are not affected.
    api.login("a", "bob", &bob.pass());
    api.user("other", "alice");
    // The Retry-After header says when.
    let mut conn = Conn::connect(srv.addr());
    conn.send(&form_request("/login", &login_body("a", "alice", "guess")));
    let r = conn.read_response(WAIT);
    assert_eq!(r.status, 429);
    let secs: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=20).contains(&secs), "Retry-After {secs}");
}

#[test]
fn re_and_login_are_limited_per_address() {
    let srv = Server::start(Backend::Embedded, Opts::default().flag("--auth-per-ip", 4));
    let api = srv.api();
    let u1 = api.user("a", "u1"); // /re + /login
    api.register("a", "u2", "pw");
    expect_error(api.post("/login", &login_body("a", "u2", "bad")), 401);
    expect_429(
        api.post("/re", &register_body("a", "u3", "pw")),
        "too many requests from this address",
    );
    expect_429(
        api.post("/login", &login_body("a", "u2", "pw")),
        "too many requests from this address",
    );
    // Nothing else is limited.
    assert!(api.pull(&u1).msgids().is_empty());
}

#[test]
fn busy_hashing_answers_429_at_once_and_blocks_nothing_else() {
    let srv = Server::start(
        Backend::Embedded,
        Opts::default()
            .workers(4)
            .flag("--hash-concurrency", 1)
            .flag("--login-per-user", 0)
            .flag("--auth-per-ip", 0),
    );
    let api = srv.api();
    let alice = api.user("a", "alice");
    let deadline = Instant::now() + WAIT;
    let mut busy = 0;
    while busy == 0 && Instant::now() < deadline {
        // Eight logins for unknown users at once, on one hashing slot.
        let answers: Vec<(u16, serde_json::Value)> = thread::scope(|s| {
            let calls: Vec<_> = (0..8)
                .map(|i| {
                    s.spawn(move || {
                        api.post("/login", &login_body("a", &format!("nobody{i}"), "x"))
                    })
                })
                .collect();
            // Meanwhile other endpoints answer.
            assert!(api.pull(&alice).msgids().is_empty());
            calls.into_iter().map(|c| c.join().unwrap()).collect()
        });
        for (status, body) in answers {
            match status {
                401 => {}
                429 => {
                    assert_eq!(body["msg"], "password hashing is busy");
                    busy += 1;
                }
                other => panic!("login answered {other}: {body}"),
            }
        }
    }
    assert!(
        busy > 0,
        "eight concurrent logins never found the one slot taken"
    );
}

/// Logins queued behind one worker while a send is answered: the hashes
/// left when the send's answer comes are the test's margin. A login of an
/// unknown user is answered in about a millisecond here, and with 8 of
/// them, the first answer found by looking at each for 5 ms in turn, one
/// CI run in three saw every login answered before the send's answer.
/// With 64, and the send made as soon as the first is answered, some 60
/// are left waiting.
const LOGINS: usize = 64;

/// A send is run by the reactor that read it, not queued for a worker: on
/// the embedded store it is committed there, on Redis queued on a lane
/// there (its sender's token cached). A storm of logins, each hashing a
/// password on the one worker, does not hold it up. (Queued, it waited
/// behind every hash ahead of it.)
#[test]
fn a_send_does_not_wait_behind_password_hashing() {
    for backend in [Backend::Embedded, Backend::Redis] {
        let waiting = logins_waiting_when_a_send_is_answered(backend, Opts::default());
        assert!(
            waiting > 0,
            "{backend:?}: the send was answered only after every login queued before it"
        );
    }
}

/// With `--fsync always` a send waits for the disk, which a reactor must
/// never do: it goes to the worker, behind the logins queued before it.
#[test]
fn with_fsync_always_a_send_goes_to_a_worker() {
    let opts = Opts::default().fsync(Fsync::Always);
    let waiting = logins_waiting_when_a_send_is_answered(Backend::Embedded, opts);
    assert_eq!(waiting, 0, "a send that fsyncs was answered by a reactor");
}

/// Sends [`LOGINS`] logins (unknown users, a password hash each) to a
/// server with one reactor and one worker, waits until the first is
/// answered (the reactor has read the others by then: they wait for the
/// worker), sends a message, and returns how many logins were still
/// unanswered when its answer came. (A reactor that hashed passwords
/// itself would answer the message only after every login it read before
/// it.)
fn logins_waiting_when_a_send_is_answered(backend: Backend, opts: Opts) -> usize {
    let srv = Server::start(
        backend,
        opts.threads(1)
            .workers(1)
            .flag("--login-per-user", 0)
            .flag("--auth-per-ip", 0),
    );
    let api = srv.api();
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));
    // Alice's token checked once (by a worker), so Redis's node caches it.
    api.pull(&alice);
    let mut logins: Vec<Conn> = (0..LOGINS)
        .map(|i| {
            let mut conn = Conn::connect(srv.addr());
            conn.send(&form_request(
                "/login",
                &login_body("a", &format!("nobody{i}"), "x"),
            ));
            conn
        })
        .collect();
    // The first login sent is about the first the worker takes: the send
    // goes as soon as it is answered.
    assert_eq!(logins[0].read_response(WAIT).status, 401);
    let answered = [0];
    // A send now is answered while logins still wait for their hash.
    check_ok(&api.ok("/p", &send_body(&alice, bob.uid, "not behind the logins")));
    let mut waiting = 0;
    for (i, conn) in logins.iter_mut().enumerate() {
        if answered.contains(&i) {
            continue;
        }
        match conn.try_read_response(Duration::from_millis(1)) {
            Ok(r) => assert_eq!(r.status, 401),
            Err(ReadEnd::Timeout) => {
                waiting += 1;
                // Every login is answered in the end.
                assert_eq!(conn.read_response(WAIT * 4).status, 401);
            }
            Err(ReadEnd::Eof) => panic!("login {i} closed unanswered"),
        }
    }
    assert_eq!(api.pull(&bob).msgids(), vec![1]);
    waiting
}

common::backend_tests!(
    groups_per_owner_are_bounded,
    a_sender_is_limited_and_group_size_is_bounded
);

fn groups_per_owner_are_bounded(backend: Backend) {
    let mut srv = Server::start(backend, Opts::default().flag("--max-groups-per-user", 2));
    let api = srv.api();
    let (alice, bob) = (api.user("a", "alice"), api.user("a", "bob"));
    assert_eq!(api.group(&alice, "one", &[bob.uid]), 1);
    assert_eq!(api.group(&alice, "two", &[]), 2);
    let third = gre_body(&alice, "three", &[bob.uid]);
    let (status, answer) = api.post("/gre", &third);
    assert_eq!(
        (status, &answer["msg"]),
        (403, &json!("group quota reached"))
    );
    // Others have their own quota; the refused group does not exist.
    assert_eq!(api.group(&bob, "bob's", &[alice.uid]), 3);
    expect_error(api.post("/gp", &gsend_body(&alice, 4, "x")), 404);
    // The count survives a restart.
    srv.restart_same_dir();
    let api = srv.api();
    expect_error(api.post("/gre", &third), 403);
}

/// On Redis the first send is the one a reactor gives back to a worker
/// (the sender's token is not cached yet): it is counted once, not twice.
fn a_sender_is_limited_and_group_size_is_bounded(backend: Backend) {
    let srv = Server::start(
        backend,
        Opts::default()
            .flag("--send-rate", 2)
            .flag("--max-group-members", 3),
    );
    let api = srv.api();
    let (alice, bob, carol, dave) = (
        api.user("a", "alice"),
        api.user("a", "bob"),
        api.user("a", "carol"),
        api.user("a", "dave"),
    );
    // Two a second, twenty at once: the 21st in a row is refused.
    for i in 0..20 {
        api.send(&alice, bob.uid, &format!("m{i}"));
    }
    expect_429(
        api.post("/p", &send_body(&alice, bob.uid, "m20")),
        "sending too fast",
    );
    assert_eq!(
        api.pull(&bob).msgids().len(),
        20,
        "the refused one was stored"
    );
    // Other senders are not affected.
    api.send(&carol, bob.uid, "from carol");
    // Owner plus three is one too many.
    expect_error(
        api.post(
            "/gre",
            &gre_body(&carol, "big", &[bob.uid, dave.uid, alice.uid]),
        ),
        400,
    );
    api.group(&carol, "ok", &[bob.uid, dave.uid]);
}
