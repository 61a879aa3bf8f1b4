//! Login tokens as the server checks them. A token is 48 lowercase hex
//! characters: a 16-character selector the store is keyed by and a
//! 32-character verifier compared with the stored one (src/auth.rs). A real
//! selector with a wrong verifier, an expired token, and tokens of the wrong
//! shape are each refused with 401 by every endpoint that takes a token (the
//! `401` frame on `/cget/stream` and `/cget/poll`), and the refused calls
//! change nothing. A user holds at most `--max-tokens-per-user` tokens: a
//! login beyond it revokes the oldest, as a logout would.

mod common;

use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;

common::backend_tests!(
    a_wrong_verifier_is_refused_everywhere,
    tokens_of_the_wrong_shape_are_refused_everywhere,
    an_expired_token_is_refused_everywhere,
    beyond_the_quota_a_login_revokes_the_oldest_token,
);

/// `--token-ttl` of the expiry test: long enough that a token is certainly
/// still valid when it is first used (at least 2 s after it was issued,
/// minus the login itself), short enough to wait out.
const TTL_SECS: u64 = 3;

/// A server where Bob sent Alice one message (msgid 1, so a stream or poll
/// that wrongly let a forged token in would get it at once) and Alice owns
/// group 1 with Bob.
struct World {
    srv: Server,
    api: Api,
    alice: User,
    bob: User,
    gid: u64,
}

fn world(backend: Backend, opts: Opts) -> World {
    let srv = Server::start(backend, opts);
    let api = srv.api();
    let alice = api.user("a", "alice");
    let bob = api.user("a", "bob");
    api.send(&bob, alice.uid, "for alice");
    let gid = api.group(&alice, "g", &[bob.uid]);
    assert_eq!((alice.uid, bob.uid, gid), (1, 2, 1));
    World {
        srv,
        api,
        alice,
        bob,
        gid,
    }
}

/// Alice's uid and appid with `token` is refused by every endpoint that
/// takes a token.
fn refused_everywhere(w: &World, token: &str) {
    let who = User {
        token: token.to_string(),
        ..w.alice.clone()
    };
    let api = &w.api;
    let answers = [
        ("/p", api.post("/p", &send_body(&who, w.bob.uid, "forged"))),
        ("/gp", api.post("/gp", &gsend_body(&who, w.gid, "forged"))),
        (
            "/gre",
            api.post("/gre", &gre_body(&who, "forged", &[w.bob.uid])),
        ),
        ("/pull", api.post("/pull", &pull_body(&who))),
        ("/ack", api.post("/ack", &ack_body(&who, 1))),
        ("/logout", api.post("/logout", &logout_body(&who))),
    ];
    for (path, answer) in answers {
        assert_eq!(answer.0, 401, "{path} with token {token:?}: {}", answer.1);
        expect_error(answer, 401);
    }
    let addr = w.srv.addr();
    StreamClient::open(addr, 1, who.uid, token).expect_final_frame(&frame_401());
    assert_eq!(
        poll(addr, 1, who.uid, token),
        frame_401(),
        "/cget/poll with token {token:?}"
    );
}

/// None of the refused calls did anything: Bob got nothing, Alice's message
/// is still un-acked, no group was made, and (with `alice`'s valid token)
/// Alice is still logged in.
fn nothing_changed(w: &World, alice: &User, bob: &User) {
    let api = &w.api;
    assert_eq!(api.pull(bob).msgs, [], "bob's inbox");
    assert_eq!(
        api.pull(alice).msgs,
        [Msg::single(bob, alice.uid, 1, "for alice")],
        "alice's inbox"
    );
    assert_eq!(api.group(alice, "next", &[bob.uid]), w.gid + 1);
}

/// `token` with its last hex digit changed: the same selector, a verifier
/// that differs in one character.
fn last_digit_flipped(token: &str) -> String {
    let (head, last) = token.split_at(token.len() - 1);
    let digit = u8::from_str_radix(last, 16).expect("a hex token");
    format!("{head}{:x}", digit ^ 1)
}

fn a_wrong_verifier_is_refused_everywhere(backend: Backend) {
    let w = world(backend, Opts::default());
    let forged = last_digit_flipped(&w.alice.token);
    assert_eq!(forged.len(), w.alice.token.len());
    assert_ne!(forged, w.alice.token);
    refused_everywhere(&w, &forged);
    nothing_changed(&w, &w.alice, &w.bob);
}

fn tokens_of_the_wrong_shape_are_refused_everywhere(backend: Backend) {
    let w = world(backend, Opts::default());
    let real = w.alice.token.as_str();
    let upper = real.to_ascii_uppercase();
    // Only an all-digit token (about 1 in 10^10) has no letter to raise.
    assert_ne!(upper, real, "the token has no hex letter");
    let shapes = [
        String::new(),
        real[..TOKEN_LEN - 1].to_string(),
        format!("{real}0"),
        // Non-hex in the verifier, then in the selector.
        format!("{}g", &real[..TOKEN_LEN - 1]),
        format!("z{}", &real[1..]),
        upper,
    ];
    for token in &shapes {
        refused_everywhere(&w, token);
    }
    nothing_changed(&w, &w.alice, &w.bob);
}

/// Seconds since the Unix epoch on the clock the server reads (the same
/// machine).
fn unix_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs_f64()
}

fn an_expired_token_is_refused_everywhere(backend: Backend) {
    let w = world(backend, Opts::default().token_ttl(TTL_SECS));
    // The server stamps a token `expires_at = now + ttl` in whole seconds
    // and takes it while its clock is below that. Between these two
    // instants it issued Alice's next token.
    let before = unix_secs();
    let token = w.api.login("a", "alice", &w.alice.pass());
    let after = unix_secs();
    // Valid until at least here, expired from at most here.
    let valid_until = before.floor() + TTL_SECS as f64;
    let expired_from = after.floor() + TTL_SECS as f64;
    let alice = User {
        token,
        ..w.alice.clone()
    };

    // Accepted while valid.
    let (status, answer) = w.api.post("/pull", &pull_body(&alice));
    let answered = unix_secs();
    assert!(
        answered < valid_until,
        "the machine is too slow for this test: a pull took until {:.3} s after the login",
        answered - before
    );
    assert_eq!(status, 200, "a fresh token was refused: {answer}");
    assert_eq!(
        check_pull(&answer, alice.uid).contents(),
        ["for alice"],
        "{answer}"
    );

    // Refused once expired: every 200 must have been asked for before
    // `expired_from`, so this ends soon after it, with a 401 or a failure.
    loop {
        let sent = unix_secs();
        let (status, answer) = w.api.post("/pull", &pull_body(&alice));
        if status == 401 {
            expect_error((status, answer), 401);
            break;
        }
        assert_eq!(status, 200, "{answer}");
        assert!(
            sent < expired_from,
            "a token was taken {:.3} s after it expired",
            sent - expired_from
        );
        // Only the server's clock is awaited; nothing to block on. Pace
        // the polling.
        thread::sleep(Duration::from_millis(20));
    }
    refused_everywhere(&w, &alice.token);

    // A new login works again, and the refused calls changed nothing.
    let alice = User {
        token: w.api.login("a", "alice", &w.alice.pass()),
        ..w.alice.clone()
    };
    let bob = User {
        token: w.api.login("a", "bob", &w.bob.pass()),
        ..w.bob.clone()
    };
    nothing_changed(&w, &alice, &bob);
}

/// Whether `token` still acts for `user`: `/pull` answers 200, or 401.
fn token_works(api: &Api, user: &User, token: &str) -> bool {
    let who = User {
        token: token.to_string(),
        ..user.clone()
    };
    match api.post("/pull", &pull_body(&who)) {
        (200, _) => true,
        answer => {
            expect_error(answer, 401);
            false
        }
    }
}

fn beyond_the_quota_a_login_revokes_the_oldest_token(backend: Backend) {
    let mut srv = Server::start(
        backend,
        Opts::default()
            .flag("--max-tokens-per-user", 2)
            .flag("--login-per-user", 0),
    );
    let api = srv.api();
    let alice = api.user("a", "alice"); // token 1
    let bob = api.user("a", "bob");
    let login = |api: &Api| api.login("a", "alice", &alice.pass());
    let t1 = alice.token.clone();
    let mut stream = api.stream(&alice, 1);
    let t2 = login(&api);
    assert!(token_works(&api, &alice, &t1) && token_works(&api, &alice, &t2));

    // A third: the first goes, and the stream opened with it ends as a
    // logout would end it.
    let t3 = login(&api);
    stream.expect_final_frame(&frame_401());
    let works = |api: &Api, t: &str| token_works(api, &alice, t);
    assert_eq!(
        [works(&api, &t1), works(&api, &t2), works(&api, &t3)],
        [false, true, true]
    );
    // Bob's tokens are his own quota.
    assert!(token_works(&api, &bob, &bob.token));

    // A logged-out token no longer counts: two more fit.
    api.logout(&User {
        token: t2.clone(),
        ..alice.clone()
    });
    let t4 = login(&api);
    assert_eq!([works(&api, &t3), works(&api, &t4)], [true, true]);

    // The order survives a restart: the oldest left (t3) goes next.
    srv.restart_same_dir();
    let api = srv.api();
    let t5 = login(&api);
    assert_eq!(
        [works(&api, &t3), works(&api, &t4), works(&api, &t5)],
        [false, true, true]
    );
}
