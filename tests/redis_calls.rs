//! What a group message costs Redis, counted by Redis itself (`INFO
//! commandstats`): one append script per 512 members, one announcement per
//! script (not one per member), and the member list read once per process,
//! not on every `/gp`.

mod common;

use common::*;

/// `calls` of one command in `INFO commandstats` (0 if never run).
fn calls(redis: &RedisServer, command: &str) -> u64 {
    let stats = redis.command(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |rest| {
            rest.split(',')
                .next()
                .and_then(|n| n.parse().ok())
                .expect("a call count")
        })
}

#[test]
fn a_group_message_is_one_script_and_one_announcement_per_512_members() {
    let mut srv = Server::start(
        Backend::Redis,
        Opts::default().admin("").flag("--send-rate", 0),
    );
    let api = srv.api();
    let body = serde_json::json!({"appid": "a", "prefix": "m", "count": 600});
    let members = provisioned_users(provision(&srv, None, &body), "a");
    let uids: Vec<u64> = members[1..].iter().map(|u| u.uid).collect();
    let gid = api.group(&members[0], "big", &uids);
    let mut last = api.stream(&members[599], 1);

    api.gsend(&members[0], gid, "warm-up"); // reads the member list
    assert_eq!(last.collect(1, WAIT)[0].content, "warm-up");
    let redis = srv.redis();
    let before = ["evalsha", "publish", "hget"].map(|c| calls(redis, c));
    for i in 0..3 {
        api.gsend(&members[0], gid, &format!("m{i}"));
    }
    let got: Vec<String> = last
        .collect(3, WAIT)
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(got, ["m0", "m1", "m2"]);
    let after = ["evalsha", "publish", "hget"].map(|c| calls(srv.redis(), c));
    let spent: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    // 600 members: two scripts, two announcements per message; the member
    // list came from the cache.
    assert_eq!(spent, [6, 6, 0], "evalsha, publish, hget for 3 messages");
}

#[test]
fn bulk_provisioning_lists_each_token_under_its_user() {
    let mut srv = Server::start(Backend::Redis, Opts::default().admin(""));
    let api = srv.api();
    // The first use of the token script on a fresh Redis: loaded on
    // NOSCRIPT, and every user's token listed all the same.
    let body = serde_json::json!({"appid": "a", "prefix": "u", "count": 300});
    let users = provisioned_users(provision(&srv, None, &body), "a");
    let uids: Vec<u64> = users.iter().map(|u| u.uid).collect();
    assert_eq!(uids, (1..=300).collect::<Vec<u64>>());
    for u in [&users[0], &users[299]] {
        let listed =
            srv.redis()
                .command(&["ZRANGE", &format!("hs:{{u:a:{}}}:tokens", u.uid), "0", "-1"]);
        assert_eq!(listed, u.token[..16], "user {}", u.uid);
        assert_eq!(api.pull(u).msgids(), Vec::<u64>::new());
    }
    // A batch with one taken name creates none of it.
    let again = serde_json::json!({"appid": "a", "prefix": "v", "count": 3});
    provisioned_users(provision(&srv, None, &again), "a");
    let clash = serde_json::json!({"appid": "a", "prefix": "", "count": 2});
    api.register("a", "1", "pw");
    expect_error(provision(&srv, None, &clash), 409);
    assert_eq!(srv.redis().command(&["GET", "hs:{a:a}:uids"]), "304");
    expect_error(api.post("/login", &login_body("a", "0", "pw")), 401);
}
