//! What a group message costs Redis, counted by Redis itself (`INFO
//! commandstats`): one append script per 512 members, at most one
//! announcement per script and node (none where no member streams), and
//! the member list read once per process, not on every `/gp`; and a script Redis does not know yet is loaded and
//! run once for each command that asked for it, never twice.

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
fn a_group_message_is_one_script_per_512_members_announced_where_members_stream() {
    let mut srv = Server::start(
        Backend::Redis,
        Opts::default().admin("").flag("--send-rate", 0),
    );
    let api = srv.api();
    let body = serde_json::json!({"appid": "a", "prefix": "m", "count": 600});
    let members = provisioned_users(provision(&srv, None, &body), "a");
    let uids: Vec<u64> = members[1..].iter().map(|u| u.uid).collect();
    let gid = api.group(&members[0], "big", &uids);

    // Nobody streams: two scripts (600 members), nothing announced.
    api.gsend(&members[0], gid, "warm-up"); // reads the member list
    let counted = ["evalsha", "publish", "hget"];
    let before = counted.map(|c| calls(srv.redis(), c));
    api.gsend(&members[0], gid, "unheard");
    let after = counted.map(|c| calls(srv.redis(), c));
    let spent: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(
        spent,
        [2, 0, 0],
        "evalsha, publish, hget with no stream open"
    );

    // One member streams: one announcement per message (from the script
    // whose 512 members include it), to this node.
    let mut last = api.stream(&members[599], 1);
    assert_eq!(last.collect(2, WAIT).len(), 2, "the stored two, read back");
    let before = counted.map(|c| calls(srv.redis(), c));
    for i in 0..3 {
        api.gsend(&members[0], gid, &format!("m{i}"));
    }
    let got: Vec<String> = last
        .collect(3, WAIT)
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(got, ["m0", "m1", "m2"]);
    let after = counted.map(|c| calls(srv.redis(), c));
    let spent: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    // The member list came from the cache.
    assert_eq!(spent, [6, 3, 0], "evalsha, publish, hget for 3 messages");

    // A member of the first 512 streams too: each script announces.
    let mut first = api.stream(&members[1], 1);
    assert_eq!(first.collect(5, WAIT).len(), 5);
    let before = counted.map(|c| calls(srv.redis(), c));
    api.gsend(&members[0], gid, "both");
    assert_eq!(first.collect(1, WAIT)[0].content, "both");
    assert_eq!(last.collect(1, WAIT)[0].content, "both");
    let after = counted.map(|c| calls(srv.redis(), c));
    let spent: Vec<u64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(spent, [2, 2, 0], "evalsha, publish, hget for one message");
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

/// Redis serves a long pipeline in pieces between other clients' commands,
/// so another connection may load a script while a pipeline of its EVALSHAs
/// is half answered NOSCRIPT. Only those are run again: here the pipeline
/// itself loads the script half way, and a counter shows each EVALSHA ran
/// once (running the whole pipeline again appended a group message twice to
/// the members of its later batches).
#[test]
fn evalshas_answered_noscript_and_only_those_run_again() {
    const COUNT: &str = "return redis.call('INCR', KEYS[1])";
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).expect("a redis url");
    let mut c = client.get_connection().expect("a connection to redis");
    let script = redis::Script::new(COUNT);
    let mut p = redis::pipe();
    p.cmd("EVALSHA").arg(script.get_hash()).arg(1).arg("n");
    p.cmd("SCRIPT").arg("LOAD").arg(COUNT); // as if another client did
    p.cmd("EVALSHA").arg(script.get_hash()).arg(1).arg("n");
    let replies = haoshuo::store::redis::pipeline_with_script(&mut c, &script, &p)
        .expect("every command answered");
    assert_eq!(
        replies,
        [
            redis::Value::Int(2),
            redis::Value::BulkString(script.get_hash().as_bytes().to_vec()),
            redis::Value::Int(1),
        ],
        "the first EVALSHA ran after the script was loaded, the second once"
    );
    assert_eq!(redis.command(&["GET", "n"]), "2");
}
