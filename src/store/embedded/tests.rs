//! Behaviour tests of [`EmbeddedStore`] through the [`Store`] trait.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::store::{Message, Reset, DATATYPE_GROUP, DATATYPE_SINGLE};

const APP: &str = "test";

fn opts(dir: &Path) -> Options {
    Options::new(dir)
}

fn open(dir: &Path) -> EmbeddedStore {
    EmbeddedStore::open(opts(dir)).unwrap()
}

fn single(from: Uid, to: Uid, c: &str) -> NewMessage {
    NewMessage {
        fromid: from,
        toid: to,
        datatype: DATATYPE_SINGLE,
        content: Arc::from(c),
    }
}

fn group(from: Uid, gid: Gid, c: &str) -> NewMessage {
    NewMessage {
        fromid: from,
        toid: gid,
        datatype: DATATYPE_GROUP,
        content: Arc::from(c),
    }
}

fn token(uid: Uid, expires_at: u64) -> TokenInfo {
    TokenInfo {
        verifier: format!("v{uid}"),
        appid: APP.into(),
        uid,
        expires_at,
    }
}

fn log_size(dir: &Path) -> u64 {
    fs::metadata(dir.join("log")).unwrap().len()
}

/// Everything observable through the trait for the given apps, users
/// (by name) and token selectors, as text.
fn dump(s: &EmbeddedStore, apps: &[&str], names: &[&str], selectors: &[&str]) -> String {
    let mut out = String::new();
    for &a in apps {
        for uid in 1.. {
            if !s.user_exists(a, uid).unwrap() {
                break;
            }
            let msgs = s.read(a, uid, 0, usize::MAX).unwrap();
            out += &format!(
                "{a}/{uid} acked={} msgs={msgs:?}\n",
                s.acked(a, uid).unwrap()
            );
        }
        for gid in 1.. {
            let Some(m) = s.group_members(a, gid).unwrap() else {
                break;
            };
            out += &format!("{a} group {gid} {m:?}\n");
        }
        for &n in names {
            out += &format!("{a} find {n} {:?}\n", s.find_user(a, n).unwrap());
        }
    }
    for &sel in selectors {
        out += &format!("token {sel} {:?}\n", s.get_token(sel).unwrap());
    }
    out
}

/// Three users, a group of all three, a few messages, an ack and tokens.
fn populate(s: &EmbeddedStore) {
    for n in ["alice", "bob", "carol"] {
        s.create_user(APP, n, &format!("hash-{n}")).unwrap();
    }
    s.create_user("other", "alice", "h").unwrap();
    s.create_group(APP, 1, "g", &[1, 2, 3], 0).unwrap();
    s.append(APP, &[2], &single(1, 2, "hi bob")).unwrap();
    s.append(APP, &[1, 2, 3], &group(1, 1, "hi all")).unwrap();
    s.append(APP, &[3], &single(2, 3, "hi carol")).unwrap();
    s.ack(APP, 2, 1).unwrap();
    s.put_token("sel1", &token(1, 100), 0).unwrap();
    s.put_token("sel2", &token(2, 200), 0).unwrap();
    s.delete_token("app", 1, "sel2").unwrap();
}

const NAMES: &[&str] = &["alice", "bob", "carol", "nobody"];
const SELS: &[&str] = &["sel1", "sel2", "sel3"];

#[test]
fn users() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert_eq!(s.create_user(APP, "alice", "h1").unwrap(), 1);
    assert_eq!(s.create_user(APP, "bob", "h2").unwrap(), 2);
    assert_eq!(
        s.create_user("other", "alice", "h3").unwrap(),
        1,
        "uids are per appid"
    );
    let len = s.log_len().unwrap();
    assert!(matches!(
        s.create_user(APP, "alice", "x"),
        Err(StoreError::UsernameTaken)
    ));
    assert_eq!(s.log_len().unwrap(), len, "nothing written");
    assert_eq!(s.find_user(APP, "bob").unwrap(), Some((2, "h2".into())));
    assert_eq!(
        s.find_user("other", "alice").unwrap(),
        Some((1, "h3".into()))
    );
    assert_eq!(s.find_user(APP, "carol").unwrap(), None);
    assert_eq!(s.find_user("nope", "alice").unwrap(), None);
    assert!(s.user_exists(APP, 2).unwrap());
    assert!(!s.user_exists(APP, 0).unwrap());
    assert!(!s.user_exists(APP, 3).unwrap());
    assert!(!s.user_exists("nope", 1).unwrap());
    assert_eq!(s.create_user(APP, "carol", "h4").unwrap(), 3);
}

#[test]
fn groups() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for n in ["a", "b", "c"] {
        s.create_user(APP, n, "h").unwrap();
    }
    let len = s.log_len().unwrap();
    assert!(matches!(
        s.create_group(APP, 1, "g", &[1, 9], 0),
        Err(StoreError::NoSuchUser(9))
    ));
    assert!(matches!(
        s.create_group(APP, 7, "g", &[1], 0),
        Err(StoreError::NoSuchUser(7))
    ));
    assert!(matches!(
        s.create_group("nope", 1, "g", &[1], 0),
        Err(StoreError::NoSuchUser(1))
    ));
    assert_eq!(s.log_len().unwrap(), len, "nothing written");
    assert_eq!(s.create_group(APP, 3, "g", &[3, 1, 2], 0).unwrap(), 1);
    assert_eq!(s.create_group(APP, 1, "h", &[1], 0).unwrap(), 2);
    assert_eq!(s.group_members(APP, 1).unwrap(), Some(vec![3, 1, 2]));
    assert_eq!(s.group_members(APP, 2).unwrap(), Some(vec![1]));
    assert_eq!(s.group_members(APP, 0).unwrap(), None);
    assert_eq!(s.group_members(APP, 3).unwrap(), None);
    assert_eq!(s.group_members("nope", 1).unwrap(), None);
}

#[test]
fn tokens() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    assert_eq!(s.get_token("x").unwrap(), None);
    assert!(matches!(
        s.put_token("x", &token(1, 5), 0),
        Err(StoreError::NoSuchUser(1))
    ));
    s.create_user(APP, "a", "h").unwrap();
    s.create_user(APP, "b", "h").unwrap();
    s.put_token("x", &token(1, 5), 0).unwrap();
    assert_eq!(
        s.get_token("x").unwrap(),
        Some(token(1, 5)),
        "expired tokens are returned as stored"
    );
    s.put_token("x", &token(2, 50), 0).unwrap();
    assert_eq!(s.get_token("x").unwrap(), Some(token(2, 50)));
    s.delete_token("app", 1, "x").unwrap();
    assert_eq!(s.get_token("x").unwrap(), None);
    let len = s.log_len().unwrap();
    s.delete_token("app", 1, "x").unwrap();
    s.delete_token("app", 1, "never").unwrap();
    assert_eq!(
        s.log_len().unwrap(),
        len,
        "forgetting an unknown token writes nothing"
    );
}

/// A token is checked while the state's lock is held, as a commit group
/// holds it through its write: with two reactors, one's every `/p` waited
/// behind the other's commit, for a tick whenever the scheduler put that
/// one aside mid-write.
#[test]
fn a_token_check_does_not_wait_for_the_state_lock() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_user(APP, "a", "h").unwrap();
    s.put_token("x", &token(1, u64::MAX), 0).unwrap();
    let held = s.inner.lock().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = tx.send(s.check_token("x", &mut |t| t.uid == 1));
        });
        let checked = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(held);
        assert!(
            matches!(checked, Ok(Ok(true))),
            "the check waited for the state's lock: {checked:?}"
        );
    });
    assert_eq!(s.get_token("x").unwrap(), Some(token(1, u64::MAX)));
}

#[test]
fn append_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for n in ["a", "b", "c"] {
        s.create_user(APP, n, "h").unwrap();
    }
    for i in 1..=5 {
        assert_eq!(
            s.append(APP, &[2], &single(1, 2, &format!("m{i}")))
                .unwrap(),
            vec![i]
        );
    }
    // Group append: each member gets its own next msgid, one shared content.
    assert_eq!(
        s.append(APP, &[1, 2, 3], &group(1, 1, "g")).unwrap(),
        vec![1, 6, 1]
    );
    let a = s.read(APP, 1, 0, 10).unwrap();
    let b = s.read(APP, 2, 6, 10).unwrap();
    assert!(Arc::ptr_eq(&a[0].content, &b[0].content));
    assert_eq!(
        b[0],
        Message {
            msgid: 6,
            fromid: 1,
            toid: 1,
            datatype: DATATYPE_GROUP,
            content: "g".into()
        }
    );
    // A receiver listed twice gets two consecutive msgids.
    assert_eq!(
        s.append(APP, &[3, 3], &single(1, 3, "twice")).unwrap(),
        vec![2, 3]
    );
    assert_eq!(
        s.append(APP, &[], &single(1, 3, "nobody")).unwrap(),
        Vec::<MsgId>::new()
    );

    // Unknown receiver: error, nothing written, no msgid consumed.
    let len = s.log_len().unwrap();
    assert!(matches!(
        s.append(APP, &[1, 4], &group(1, 1, "x")),
        Err(StoreError::NoSuchUser(4))
    ));
    assert!(matches!(
        s.append("nope", &[1], &single(1, 1, "x")),
        Err(StoreError::NoSuchUser(1))
    ));
    assert_eq!(s.log_len().unwrap(), len);
    assert_eq!(s.append(APP, &[1], &single(2, 1, "next")).unwrap(), vec![2]);

    let ids = |v: Vec<Message>| v.iter().map(|m| m.msgid).collect::<Vec<_>>();
    assert_eq!(ids(s.read(APP, 2, 0, 100).unwrap()), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(ids(s.read(APP, 2, 3, 2).unwrap()), vec![3, 4]);
    assert_eq!(ids(s.read(APP, 2, 6, 100).unwrap()), vec![6]);
    assert_eq!(ids(s.read(APP, 2, 7, 100).unwrap()), Vec::<MsgId>::new());
    assert_eq!(ids(s.read(APP, 2, 1, 0).unwrap()), Vec::<MsgId>::new());
    assert_eq!(s.read(APP, 2, 2, 1).unwrap()[0].content.as_ref(), "m2");
    assert!(matches!(
        s.read(APP, 9, 0, 1),
        Err(StoreError::NoSuchUser(9))
    ));
    assert!(matches!(
        s.read("nope", 1, 0, 1),
        Err(StoreError::NoSuchUser(1))
    ));
}

#[test]
fn ack_never_rewinds_and_clamps() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_user(APP, "a", "h").unwrap();
    assert_eq!(s.acked(APP, 1).unwrap(), 0);
    s.ack(APP, 1, 5).unwrap();
    assert_eq!(
        s.acked(APP, 1).unwrap(),
        0,
        "clamped to the last msgid (none yet)"
    );
    for i in 0..5 {
        s.append(APP, &[1], &single(1, 1, &i.to_string())).unwrap();
    }
    s.ack(APP, 1, 2).unwrap();
    assert_eq!(s.acked(APP, 1).unwrap(), 2);
    let len = s.log_len().unwrap();
    s.ack(APP, 1, 1).unwrap();
    s.ack(APP, 1, 2).unwrap();
    assert_eq!(s.acked(APP, 1).unwrap(), 2, "never rewinds");
    assert_eq!(s.log_len().unwrap(), len, "a no-op ack writes nothing");
    // Acked messages are trimmed: reading from 0 starts after the ack.
    let got: Vec<_> = s
        .read(APP, 1, 0, 10)
        .unwrap()
        .iter()
        .map(|m| m.msgid)
        .collect();
    assert_eq!(got, vec![3, 4, 5]);
    s.ack(APP, 1, 1000).unwrap();
    assert_eq!(s.acked(APP, 1).unwrap(), 5, "clamped to the last msgid");
    assert!(s.read(APP, 1, 0, 10).unwrap().is_empty());
    assert_eq!(s.append(APP, &[1], &single(1, 1, "x")).unwrap(), vec![6]);
    assert!(matches!(s.ack(APP, 2, 1), Err(StoreError::NoSuchUser(2))));
    assert!(matches!(s.acked(APP, 2), Err(StoreError::NoSuchUser(2))));
}

#[test]
fn reopen_replays_to_identical_state() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let s = open(dir.path());
        populate(&s);
        s.flush().unwrap();
        dump(&s, &[APP, "other"], NAMES, SELS)
    };
    let s = open(dir.path());
    assert_eq!(dump(&s, &[APP, "other"], NAMES, SELS), before);
    // The group message's content is shared again after replay.
    let a = s.read(APP, 1, 0, 10).unwrap();
    let c = s.read(APP, 3, 0, 10).unwrap();
    assert!(Arc::ptr_eq(&a[0].content, &c[0].content));
    // Counters continue.
    assert_eq!(s.create_user(APP, "dave", "h").unwrap(), 4);
    assert_eq!(s.create_group(APP, 1, "g2", &[1], 0).unwrap(), 2);
    assert_eq!(
        s.append(APP, &[2], &single(1, 2, "again")).unwrap(),
        vec![3]
    );
    assert!(matches!(
        s.create_user(APP, "bob", "h"),
        Err(StoreError::UsernameTaken)
    ));
}

#[test]
fn fsync_always_and_flush() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.fsync = Fsync::Always;
    let before = {
        let s = EmbeddedStore::open(o.clone()).unwrap();
        populate(&s);
        s.flush().unwrap();
        dump(&s, &[APP], NAMES, SELS)
    };
    let s = EmbeddedStore::open(o).unwrap();
    assert_eq!(dump(&s, &[APP], NAMES, SELS), before);
}

#[test]
fn torn_tail_is_cut_away() {
    let dir = tempfile::tempdir().unwrap();
    let (before, len) = {
        let s = open(dir.path());
        populate(&s);
        (dump(&s, &[APP, "other"], NAMES, SELS), s.log_len().unwrap())
    };
    assert_eq!(log_size(dir.path()), len);
    for garbage in [
        "{\"op\":\"msg\",\"a\":\"te",
        "\0\0\0\0\0\0",
        "not json at all\n",
    ] {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("log"))
            .unwrap();
        f.write_all(garbage.as_bytes()).unwrap();
        drop(f);
        let s = open(dir.path());
        assert_eq!(log_size(dir.path()), len, "garbage {garbage:?} is gone");
        assert_eq!(dump(&s, &[APP, "other"], NAMES, SELS), before);
    }
    // Later writes land after the cut and replay fine.
    let after = {
        let s = open(dir.path());
        assert_eq!(
            s.append(APP, &[2], &single(1, 2, "later")).unwrap(),
            vec![3]
        );
        dump(&s, &[APP, "other"], NAMES, SELS)
    };
    assert_eq!(dump(&open(dir.path()), &[APP, "other"], NAMES, SELS), after);
}

#[test]
fn mid_file_corruption_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    populate(&open(dir.path()));
    let path = dir.path().join("log");
    let good = fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = good.lines().collect();
    lines.insert(3, "{\"op\":\"user\",\"a\":"); // a torn record, not at the end
    fs::write(&path, lines.join("\n") + "\n").unwrap();
    match EmbeddedStore::open(opts(dir.path())) {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("line 4"), "{msg}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // A well-formed record inconsistent with the state before it.
    let bad = good.clone() + "{\"op\":\"msg\",\"a\":\"test\",\"to\":[99],\"ids\":[1],\"f\":1,\"t\":99,\"d\":1,\"c\":\"x\"}\n";
    fs::write(&path, bad).unwrap();
    match EmbeddedStore::open(opts(dir.path())) {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("no such user 99"), "{msg}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let reused = good.clone() + "{\"op\":\"msg\",\"a\":\"test\",\"to\":[2],\"ids\":[1],\"f\":1,\"t\":2,\"d\":1,\"c\":\"x\"}\n";
    fs::write(&path, reused).unwrap();
    assert!(matches!(
        EmbeddedStore::open(opts(dir.path())),
        Err(StoreError::Unavailable(_))
    ));
    // The untouched log still opens.
    fs::write(&path, good).unwrap();
    open(dir.path());
}

#[test]
fn compaction_keeps_state_and_shrinks_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let now = unix_now();
    let (before, grown) = {
        let s = open(dir.path());
        populate(&s);
        s.put_token("sel3", &token(3, now - 3 * 24 * 3600), 0)
            .unwrap(); // purged
                       // Expired two hours ago: within the day of grace, kept.
        s.put_token("sel1", &token(1, now - 2 * 3600), 0).unwrap();
        // Interleave single and group messages; fully ack alice's inbox.
        for i in 0..200 {
            s.append(APP, &[1], &single(2, 1, &format!("to alice {i}")))
                .unwrap();
            s.append(APP, &[3, 2], &group(1, 1, &format!("group {i}")))
                .unwrap();
            s.ack(APP, 1, u64::MAX).unwrap();
        }
        s.append(APP, &[2, 2], &single(1, 2, "dup")).unwrap();
        s.ack(APP, 3, 150).unwrap();
        let grown = s.log_len().unwrap();
        s.compact().unwrap();
        assert!(s.log_len().unwrap() < grown / 2);
        assert_eq!(log_size(dir.path()), s.log_len().unwrap());
        assert!(!dir.path().join("log.tmp").exists());
        assert_eq!(s.get_token("sel3").unwrap(), None);
        assert_eq!(s.get_token("sel1").unwrap(), Some(token(1, now - 2 * 3600)));
        // Writes after a compaction go to the new log.
        s.append(APP, &[3], &single(1, 3, "after")).unwrap();
        (dump(&s, &[APP, "other"], NAMES, SELS), grown)
    };
    let s = open(dir.path());
    assert_eq!(dump(&s, &[APP, "other"], NAMES, SELS), before);
    assert!(log_size(dir.path()) < grown / 2);
    assert_eq!(s.acked(APP, 1).unwrap(), 201);
    assert!(s.read(APP, 1, 0, 10).unwrap().is_empty());
    assert_eq!(
        s.append(APP, &[1], &single(2, 1, "x")).unwrap(),
        vec![202],
        "msgids continue"
    );
    let b = s.read(APP, 2, 0, 1000).unwrap();
    let c = s.read(APP, 3, 0, 1000).unwrap();
    let shared = |m: &Message| {
        b.iter()
            .filter(|x| Arc::ptr_eq(&x.content, &m.content))
            .count()
    };
    assert_eq!(
        c.iter()
            .filter(|m| m.datatype == DATATYPE_GROUP)
            .map(shared)
            .collect::<Vec<_>>(),
        vec![1; 52]
    );
}

#[test]
fn automatic_compaction_with_a_tiny_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.compact_min_bytes = 4096;
    let before = {
        let s = EmbeddedStore::open(o.clone()).unwrap();
        populate(&s);
        for i in 0..2000 {
            s.append(APP, &[1, 2], &group(1, 1, &format!("message number {i}")))
                .unwrap();
            s.ack(APP, 1, u64::MAX).unwrap();
            s.ack(APP, 2, u64::MAX).unwrap();
        }
        // Compaction runs in the background: wait for the last one. How
        // small the log is then depends on how far the writers outran it,
        // so the test asserts that it ran, not a size.
        s.wait_for_compaction().unwrap();
        assert_eq!(s.compaction_error().unwrap(), None);
        assert!(s.compactions().unwrap() > 0, "no automatic compaction ran");
        dump(&s, &[APP, "other"], NAMES, SELS)
    };
    let s = EmbeddedStore::open(o).unwrap();
    assert_eq!(dump(&s, &[APP, "other"], NAMES, SELS), before);
    assert_eq!(
        s.append(APP, &[1, 2, 3], &group(1, 1, "x")).unwrap(),
        vec![2002, 2003, 3]
    );
}

#[test]
fn concurrent_appends_get_contiguous_msgids() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    s.create_user(APP, "target", "h").unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                (0..1000)
                    .map(|i| {
                        s.append(APP, &[1], &single(t, 1, &format!("{t}:{i}")))
                            .unwrap()[0]
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in threads {
        let ids = h.join().unwrap();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "a thread's messages are in order"
        );
        all.extend(ids);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=4000).collect::<Vec<_>>());
    let msgs = s.read(APP, 1, 0, usize::MAX).unwrap();
    assert_eq!(
        msgs.iter().map(|m| m.msgid).collect::<Vec<_>>(),
        (1..=4000).collect::<Vec<_>>()
    );
    let before = dump(&s, &[APP], &[], &[]);
    drop(s);
    assert_eq!(dump(&open(dir.path()), &[APP], &[], &[]), before);
}

#[test]
fn second_open_of_the_same_dir_fails() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    match EmbeddedStore::open(opts(dir.path())) {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("already in use"), "{msg}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    drop(s);
    open(dir.path());
}

#[test]
fn open_creates_the_dir() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("a/b");
    let s = open(&sub);
    s.create_user(APP, "x", "h").unwrap();
    assert!(sub.join("log").exists());
    assert!(sub.join("LOCK").exists());
}

#[test]
fn failed_write_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    populate(&s);
    let before = dump(&s, &[APP, "other"], NAMES, SELS);
    let len = log_size(dir.path());
    // A read-only handle: the write fails, and so does cutting the log back.
    let ro = fs::File::open(dir.path().join("log")).unwrap();
    s.lock().unwrap().log.set_file_for_test(ro);
    assert!(matches!(
        s.create_user(APP, "dave", "h"),
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        s.append(APP, &[1], &single(2, 1, "x")),
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(s.ack(APP, 3, 2), Err(StoreError::Unavailable(_))));
    assert!(matches!(
        s.put_token("sel3", &token(3, 9), 0),
        Err(StoreError::Unavailable(_))
    ));
    // Validation errors still come first; reads still work.
    assert!(matches!(
        s.create_user(APP, "bob", "h"),
        Err(StoreError::UsernameTaken)
    ));
    assert_eq!(dump(&s, &[APP, "other"], NAMES, SELS), before);
    drop(s);
    assert_eq!(log_size(dir.path()), len);
    assert_eq!(
        dump(&open(dir.path()), &[APP, "other"], NAMES, SELS),
        before
    );
}

#[test]
fn a_send_with_a_cmsgid_is_stored_once_across_reopen_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for name in ["a", "b", "c"] {
        s.create_user(APP, name, "h").unwrap();
    }
    let now = unix_now();
    let once = |k| Once {
        cmsgid: k,
        until: now + 600,
    };
    let msg = single(1, 2, "hi");
    assert_eq!(
        s.append_once(APP, &[2], &msg, &once("k1")).unwrap(),
        [Some(1)]
    );
    assert_eq!(s.append_once(APP, &[2], &msg, &once("k1")).unwrap(), [None]);
    // Another cmsgid, or the same one from another sender, is a new send.
    assert_eq!(
        s.append_once(APP, &[2], &msg, &once("k2")).unwrap(),
        [Some(2)]
    );
    let from_c = single(3, 2, "hi");
    assert_eq!(
        s.append_once(APP, &[2], &from_c, &once("k1")).unwrap(),
        [Some(3)]
    );
    // A group send is all or nothing, so its retry is nothing for everyone.
    let g = group(1, 1, "all");
    assert_eq!(
        s.append_once(APP, &[1, 2, 3], &g, &once("g1")).unwrap(),
        [Some(1), Some(4), Some(1)]
    );
    assert_eq!(
        s.append_once(APP, &[1, 2, 3], &g, &once("g1")).unwrap(),
        [None, None, None]
    );
    // A window that has passed no longer recognises the send.
    let past = Once {
        cmsgid: "old",
        until: now - 1,
    };
    assert_eq!(s.append_once(APP, &[2], &msg, &past).unwrap(), [Some(5)]);
    assert_eq!(s.append_once(APP, &[2], &msg, &past).unwrap(), [Some(6)]);

    drop(s);
    let s = open(dir.path());
    assert_eq!(s.append_once(APP, &[2], &msg, &once("k1")).unwrap(), [None]);
    // Acked and trimmed messages still leave their cmsgid recognised after
    // compaction rewrote the log without them.
    s.ack(APP, 2, 6).unwrap();
    s.compact().unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.append_once(APP, &[2], &msg, &once("k1")).unwrap(), [None]);
    assert_eq!(
        s.append_once(APP, &[1, 2, 3], &g, &once("g1")).unwrap(),
        [None; 3]
    );
    assert_eq!(
        s.append_once(APP, &[2], &msg, &once("k3")).unwrap(),
        [Some(7)]
    );
}

#[test]
fn the_inbox_cap_keeps_the_newest_across_reopen_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let capped = |dir: &Path| {
        let mut o = opts(dir);
        o.inbox_cap = 2;
        EmbeddedStore::open(o).unwrap()
    };
    let ids = |s: &EmbeddedStore| -> Vec<MsgId> {
        s.read(APP, 2, 1, 100)
            .unwrap()
            .iter()
            .map(|m| m.msgid)
            .collect()
    };
    let s = capped(dir.path());
    s.create_user(APP, "a", "h").unwrap();
    s.create_user(APP, "b", "h").unwrap();
    for i in 0..4 {
        s.append(APP, &[2], &single(1, 2, &format!("m{i}")))
            .unwrap();
    }
    assert_eq!(ids(&s), [3, 4]);
    drop(s);
    let s = capped(dir.path());
    assert_eq!(ids(&s), [3, 4]);
    s.compact().unwrap();
    drop(s);
    let s = capped(dir.path());
    assert_eq!(ids(&s), [3, 4]);
    assert_eq!(s.append(APP, &[2], &single(1, 2, "m5")).unwrap(), [5]);
    assert_eq!(ids(&s), [4, 5]);
}

#[test]
fn the_token_quota_revokes_the_oldest_across_reopen_and_compaction() {
    // Valid long after any test run: compaction keeps them.
    const FAR: u64 = 4_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_user(APP, "a", "h").unwrap();
    s.create_user(APP, "b", "h").unwrap();
    for sel in ["t1", "t2", "t3"] {
        assert!(s.put_token(sel, &token(1, FAR), 3).unwrap().is_empty());
    }
    s.put_token("b1", &token(2, FAR), 3).unwrap();
    assert_eq!(s.put_token("t4", &token(1, FAR), 3).unwrap(), ["t1"]);
    assert_eq!(s.get_token("t1").unwrap(), None);
    s.delete_token(APP, 1, "t3").unwrap();
    // t2 t4 left: a fifth fits.
    assert!(s.put_token("t5", &token(1, FAR), 3).unwrap().is_empty());
    s.compact().unwrap();
    drop(s);
    let s = open(dir.path());
    // The order survived: t2 is the oldest, then t4.
    assert_eq!(s.put_token("t6", &token(1, FAR), 2).unwrap(), ["t2", "t4"]);
    assert_eq!(s.get_token("b1").unwrap(), Some(token(2, FAR)));
    // No limit: nothing goes.
    assert!(s.put_token("t7", &token(1, FAR), 0).unwrap().is_empty());
}

#[test]
fn a_reader_ahead_of_the_counter_moves_the_inbox_to_a_new_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_user(APP, "a", "h").unwrap();
    s.create_user(APP, "b", "h").unwrap();
    s.append(APP, &[2], &single(1, 2, "m1")).unwrap();
    let all = Limit::count(10);
    // Behind or at the counter: a plain read that writes nothing.
    let len = s.log_len().unwrap();
    for from in [1, 2] {
        assert_eq!(s.page(APP, 2, from, all).unwrap().reset, None);
    }
    assert_eq!(s.log_len().unwrap(), len);
    // A reader that has msgid 4: the counter goes to 4, epoch 1.
    let page = s.page(APP, 2, 5, all).unwrap();
    assert_eq!(
        (page.last, page.reset),
        (4, Some(Reset { epoch: 1, found: 1 }))
    );
    assert_eq!(s.page(APP, 2, 5, all).unwrap().reset, None, "once only");
    assert_eq!(s.append(APP, &[2], &single(1, 2, "m5")).unwrap(), [5]);
    // Again, from further on: epoch 2, kept across compaction and reopen.
    let page = s.page(APP, 2, 9, all).unwrap();
    assert_eq!(page.reset, Some(Reset { epoch: 2, found: 5 }));
    s.ack(APP, 2, 8).unwrap();
    s.compact().unwrap();
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.page(APP, 2, 9, all).unwrap().last, 8);
    let page = s.page(APP, 2, 11, all).unwrap();
    assert_eq!(page.reset, Some(Reset { epoch: 3, found: 8 }));
    assert_eq!(s.append(APP, &[2], &single(1, 2, "m11")).unwrap(), [11]);
}

#[test]
fn background_compaction_keeps_what_is_written_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.compact_min_bytes = 16 * 1024;
    let s = EmbeddedStore::open(o.clone()).unwrap();
    for name in ["a", "b"] {
        s.create_user(APP, name, "h").unwrap();
    }
    // Writers on two threads keep appending while compactions start and
    // finish underneath them.
    std::thread::scope(|scope| {
        for t in 0..2 {
            let s = &s;
            scope.spawn(move || {
                for i in 0..3000 {
                    s.append(APP, &[2], &single(1, 2, &format!("t{t}-{i}")))
                        .unwrap();
                    if i % 500 == 499 {
                        s.ack(APP, 2, (t * 3000 + i) as u64 / 2).unwrap();
                    }
                }
            });
        }
    });
    s.wait_for_compaction().unwrap();
    assert_eq!(s.compaction_error().unwrap(), None);
    assert!(
        s.compactions().unwrap() > 0,
        "no compaction ran under the writers"
    );
    let before: Vec<(MsgId, String)> = s
        .read(APP, 2, 1, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|m| (m.msgid, m.content.to_string()))
        .collect();
    let acked = s.acked(APP, 2).unwrap();
    drop(s);
    let s = EmbeddedStore::open(o).unwrap();
    let after: Vec<(MsgId, String)> = s
        .read(APP, 2, 1, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|m| (m.msgid, m.content.to_string()))
        .collect();
    assert_eq!(after, before);
    assert_eq!(s.acked(APP, 2).unwrap(), acked);
    assert_eq!(before.last().map(|m| m.0), Some(6000));
    assert_eq!(s.append(APP, &[2], &single(1, 2, "next")).unwrap(), [6001]);
}

/// Flips one bit inside the JSON of log line `n` (1-based): still valid
/// JSON and a valid record, so only the checksum can tell.
fn damage_line(dir: &Path, n: usize) -> (String, String) {
    let path = dir.join("log");
    let text = fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let before = lines[n - 1].clone();
    // "hash-bob" -> "hash-cob" style: change one letter of a string value.
    let at = before.rfind("\":\"").unwrap() + 3;
    let mut bytes = before.into_bytes();
    bytes[at] ^= 0x01;
    lines[n - 1] = String::from_utf8(bytes).unwrap();
    fs::write(&path, lines.join("\n") + "\n").unwrap();
    (text, lines[n - 1].clone())
}

#[test]
fn a_damaged_record_in_the_middle_stops_startup_until_repair() {
    let dir = tempfile::tempdir().unwrap();
    populate(&open(dir.path()));
    // What the store held after its first two records.
    let kept = {
        let d2 = tempfile::tempdir().unwrap();
        let s = open(d2.path());
        s.create_user(APP, "alice", "hash-alice").unwrap();
        s.create_user(APP, "bob", "hash-bob").unwrap();
        dump(&s, &[APP, "other"], NAMES, SELS)
    };
    damage_line(dir.path(), 3);
    let msg = match EmbeddedStore::open(opts(dir.path())) {
        Err(StoreError::Unavailable(msg)) => msg,
        other => panic!("a damaged record was accepted: {:?}", other.map(|_| ())),
    };
    assert!(
        msg.contains("line 3 is corrupt (checksum mismatch)"),
        "{msg}"
    );
    assert!(
        msg.contains("--repair") && msg.contains("2 lines before it are intact"),
        "{msg}"
    );
    let mut o = opts(dir.path());
    o.repair = true;
    let s = EmbeddedStore::open(o).expect("--repair opens it");
    assert_eq!(dump(&s, &[APP, "other"], NAMES, SELS), kept);
    drop(s);
    // Repaired for good: it opens plainly now, and takes writes.
    let s = open(dir.path());
    assert_eq!(s.create_user(APP, "carol", "h").unwrap(), 3);
}

#[test]
fn a_damaged_last_record_is_cut_away() {
    let dir = tempfile::tempdir().unwrap();
    let (before, len) = {
        let s = open(dir.path());
        populate(&s);
        (dump(&s, &[APP, "other"], NAMES, SELS), s.log_len().unwrap())
    };
    {
        let s = open(dir.path());
        s.create_user(APP, "dave", "hash-dave").unwrap();
    }
    let lines = fs::read_to_string(dir.path().join("log"))
        .unwrap()
        .lines()
        .count();
    damage_line(dir.path(), lines);
    let s = open(dir.path());
    assert_eq!(log_size(dir.path()), len, "the damaged record is gone");
    assert_eq!(dump(&s, &[APP, "other"], NAMES, SELS), before);
}

/// Appends `recs` to the log in `dir` as the store writes them
/// (checksummed): a record no store call would write, for replay to meet.
fn write_records(dir: &Path, recs: &[Record<'_>]) {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(dir.join("log"))
        .unwrap();
    let mut buf = Vec::new();
    for rec in recs {
        log::encode(rec, &mut buf);
        file.write_all(&buf).unwrap();
    }
}

fn user_with_three_messages(dir: &Path) {
    let s = open(dir);
    s.create_user(APP, "alice", "h").unwrap();
    for i in 1..=3 {
        s.append(APP, &[1], &single(1, 1, &format!("m{i}")))
            .unwrap();
    }
}

#[test]
fn an_ack_that_moves_nothing_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    user_with_three_messages(dir.path());
    let s = open(dir.path());
    s.ack(APP, 1, 3).unwrap();
    let len = s.log_len().unwrap();
    for endid in [3, 100, u64::MAX, 1, 0] {
        s.ack(APP, 1, endid).unwrap();
    }
    assert_eq!(s.log_len().unwrap(), len, "no record for a clamped no-op");
    assert_eq!(s.acked(APP, 1).unwrap(), 3);
}

#[test]
fn replay_clamps_an_ack_past_the_last_msgid() {
    let dir = tempfile::tempdir().unwrap();
    user_with_three_messages(dir.path());
    write_records(
        dir.path(),
        &[Record::Ack {
            a: APP.into(),
            u: 1,
            id: 100,
        }],
    );
    let s = open(dir.path());
    assert_eq!(s.acked(APP, 1).unwrap(), 3);
    assert_eq!(s.append(APP, &[1], &single(1, 1, "m4")).unwrap(), [4]);
    let page = s.page(APP, 1, 1, Limit::count(10)).unwrap();
    assert_eq!(
        page.msgs.iter().map(|m| m.msgid).collect::<Vec<_>>(),
        [4],
        "the next message is not acked already"
    );
}

#[test]
fn replay_refuses_a_record_that_gives_one_msgid_twice() {
    let dir = tempfile::tempdir().unwrap();
    user_with_three_messages(dir.path());
    let twice = |ids: &'static [MsgId]| Record::Msg {
        a: APP.into(),
        to: Cow::Borrowed(&[1, 1]),
        ids: Cow::Borrowed(ids),
        f: 1,
        t: 1,
        d: DATATYPE_SINGLE,
        c: "dup".into(),
        k: None,
        x: None,
        h: None,
    };
    write_records(dir.path(), &[twice(&[4, 5])]);
    assert_eq!(open(dir.path()).read(APP, 1, 4, 10).unwrap().len(), 2);
    write_records(dir.path(), &[twice(&[6, 6])]);
    match EmbeddedStore::open(opts(dir.path())) {
        Err(StoreError::Unavailable(msg)) => assert!(
            msg.contains("line 6") && msg.contains("msgid 6 of user 1 reuses a msgid (next is 7)"),
            "{msg}"
        ),
        other => panic!("msgid 6 given twice was accepted: {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_page_fills_its_byte_cap_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    s.create_user(APP, "alice", "h").unwrap();
    // Each counts 100 bytes: 36 of content and 64 of ids.
    let content = "x".repeat(100 - crate::store::counted_size(""));
    for _ in 0..3 {
        s.append(APP, &[1], &single(1, 1, &content)).unwrap();
    }
    let count = |bytes| {
        let limit = Limit { count: 10, bytes };
        s.page(APP, 1, 1, limit).unwrap().msgs.len()
    };
    assert_eq!(
        [count(199), count(200), count(299), count(300)],
        [1, 2, 2, 3]
    );
}

/// A compaction writes each fact once: the counter of a fully acked inbox
/// and an ack position only where they say something, and no `cmsgid` that
/// is no longer recognised.
#[test]
fn compaction_writes_each_fact_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    for n in ["alice", "bob", "carol"] {
        s.create_user(APP, n, "h").unwrap();
    }
    let now = unix_now();
    let gone = Once {
        cmsgid: "gone",
        until: now - 10,
    };
    let live = Once {
        cmsgid: "live",
        until: now + 3600,
    };
    s.append_once(APP, &[1], &single(2, 1, "a"), &gone).unwrap();
    s.append_once(APP, &[1], &single(2, 1, "b"), &live).unwrap();
    s.ack(APP, 1, 2).unwrap(); // alice: fully acked
    s.append(APP, &[2], &single(1, 2, "c")).unwrap(); // bob: un-acked
    s.compact().unwrap();
    let log = fs::read_to_string(dir.path().join("log")).unwrap();
    let ops: Vec<String> = log
        .lines()
        .map(|l| {
            let rec: serde_json::Value = serde_json::from_str(&l[9..]).unwrap();
            let op = rec["op"].as_str().unwrap();
            match op {
                "once" => format!("once {}", rec["k"].as_str().unwrap()),
                "user" | "seq" | "ack" => format!("{op} {}", rec["u"]),
                op => op.to_owned(),
            }
        })
        .collect();
    assert_eq!(
        ops,
        [
            "user 1",
            "user 2",
            "user 3",
            "msg",
            "once live",
            "seq 1",
            "ack 1"
        ]
    );
}

/// One background compaction, counted; and one that cannot write its
/// snapshot, reported, with the log left as it was.
#[test]
fn background_compactions_are_counted_and_failures_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.compact_min_bytes = 4096;
    let s = EmbeddedStore::open(o.clone()).unwrap();
    assert!(format!("{s:?}").contains(&*dir.path().to_string_lossy()));
    assert_eq!(s.compactions().unwrap(), 0);
    s.create_user(APP, "alice", "h").unwrap();
    let started = |s: &EmbeddedStore| s.inner.lock().unwrap().compaction.is_some();
    // About 40 writes cross 4 KiB; far more means none ever starts.
    const MOST: u64 = 1000;
    let mut i = 0;
    while !started(&s) {
        assert!(i < MOST, "no compaction started after {MOST} writes");
        s.append(APP, &[1], &single(1, 1, &format!("message {i}")))
            .unwrap();
        s.ack(APP, 1, u64::MAX).unwrap();
        i += 1;
    }
    s.wait_for_compaction().unwrap();
    assert_eq!(s.compactions().unwrap(), 1);
    assert_eq!(s.compaction_error().unwrap(), None);
    drop(s);

    // A directory where the snapshot would go: the compaction fails.
    let s = EmbeddedStore::open(o).unwrap();
    fs::create_dir(dir.path().join("log.tmp")).unwrap();
    let mut i = 0;
    while !started(&s) {
        assert!(i < MOST, "no compaction started after {MOST} writes");
        s.append(APP, &[1], &single(1, 1, &format!("again {i}")))
            .unwrap();
        i += 1;
    }
    s.wait_for_compaction().unwrap();
    assert_eq!(s.compactions().unwrap(), 0);
    assert!(s.compaction_error().unwrap().is_some());
    assert_eq!(log_size(dir.path()), s.log_len().unwrap());
    assert_eq!(
        s.append(APP, &[1], &single(1, 1, "after")).unwrap(),
        [1_u64 + s.acked(APP, 1).unwrap() + i],
        "the store goes on"
    );
}

// ---- group commit ----

type Call<R> = Box<dyn FnOnce(&EmbeddedStore) -> R + Send>;

/// Runs each call in a thread of its own, queued in this order while the
/// test holds the state lock, so all of them form ONE commit group once it
/// is released. Returns their results and how many log writes and fsyncs
/// committing them took.
fn one_group<R: Send + 'static>(s: &Arc<EmbeddedStore>, calls: Vec<Call<R>>) -> (Vec<R>, u64, u64) {
    let held = s.inner.lock().unwrap();
    let (writes, fsyncs) = held.log.counts();
    let mut threads = Vec::new();
    for (i, call) in calls.into_iter().enumerate() {
        let store = Arc::clone(s);
        threads.push(std::thread::spawn(move || call(&store)));
        let start = std::time::Instant::now();
        while s.commits.queued() < i + 1 {
            assert!(start.elapsed().as_secs() < 10, "call {i} never queued");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    drop(held);
    let results = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let inner = s.lock().unwrap();
    let (w, f) = inner.log.counts();
    (results, w - writes, f - fsyncs)
}

#[test]
fn appends_queued_together_are_one_write_and_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(
        EmbeddedStore::open(Options {
            fsync: Fsync::Always,
            ..opts(dir.path())
        })
        .unwrap(),
    );
    for name in ["a", "b", "c"] {
        s.create_user(APP, name, "h").unwrap();
    }
    let calls: Vec<Call<Result<Vec<MsgId>>>> = (0..8u64)
        .map(|t| -> Call<_> {
            Box::new(move |s| s.append(APP, &[1, 1 + t % 3], &single(t, 1, &format!("m{t}"))))
        })
        .collect();
    let (results, writes, fsyncs) = one_group(&s, calls);
    assert_eq!(
        (writes, fsyncs),
        (1, 1),
        "8 queued appends, one write, one fsync"
    );
    // In queue order: log order == apply order == msgid order.
    let results: Vec<Vec<MsgId>> = results.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(
        results,
        [
            vec![1, 2],
            vec![3, 1],
            vec![4, 1],
            vec![5, 6],
            vec![7, 2],
            vec![8, 2],
            vec![9, 10],
            vec![11, 3]
        ]
    );
    let before = dump(&s, &[APP], &[], &[]);
    let inbox: Vec<_> = s.read(APP, 1, 0, usize::MAX).unwrap();
    assert_eq!(inbox.len(), 11);
    drop(s);
    assert_eq!(dump(&open(dir.path()), &[APP], &[], &[]), before);
}

#[test]
fn concurrent_appends_share_writes_and_replay_to_the_same_messages() {
    const THREADS: u64 = 8;
    const EACH: u64 = 300;
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    // User 1 is everybody's receiver; user 2 + t is thread t's own.
    for t in 0..=THREADS {
        s.create_user(APP, &format!("u{t}"), "h").unwrap();
    }
    let writes = s.log_writes().unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(THREADS as usize + 1));
    // Held until every thread has queued its first append, so that at
    // least one group holds eight: the test does not depend on timing.
    let held = s.inner.lock().unwrap();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (s, barrier) = (Arc::clone(&s), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                (0..EACH)
                    .map(|i| {
                        let to = if i % 2 == 0 { vec![1] } else { vec![1, 2 + t] };
                        let ids = s.append(APP, &to, &single(t, 1, &format!("{t}:{i}")));
                        (to, ids.unwrap())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    barrier.wait();
    let start = std::time::Instant::now();
    while s.commits.queued() < THREADS as usize {
        assert!(start.elapsed().as_secs() < 10, "the threads never queued");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(held);
    let mut shared = Vec::new();
    for (t, h) in threads.into_iter().enumerate() {
        let calls = h.join().unwrap();
        let mut last = (0, 0);
        for (to, ids) in calls {
            assert_eq!(ids.len(), to.len());
            assert!(ids[0] > last.0, "thread {t}: inbox 1 goes forward");
            last.0 = ids[0];
            shared.push(ids[0]);
            if let [_, own] = ids[..] {
                assert!(own > last.1, "thread {t}: its own inbox goes forward");
                last.1 = own;
            }
        }
        assert_eq!(last.1, EACH / 2, "thread {t}: own inbox is dense");
    }
    shared.sort_unstable();
    assert_eq!(shared, (1..=THREADS * EACH).collect::<Vec<_>>());
    let appends = THREADS * EACH;
    let written = s.log_writes().unwrap() - writes;
    assert!(
        written <= appends - (THREADS - 1),
        "{written} writes for {appends} appends: not grouped"
    );
    let before = dump(&s, &[APP], &[], &[]);
    let inbox = s.read(APP, 1, 0, usize::MAX).unwrap();
    assert_eq!(inbox.len() as u64, appends);
    drop(s);
    let s = open(dir.path());
    assert_eq!(dump(&s, &[APP], &[], &[]), before);
    let replayed = s.read(APP, 1, 0, usize::MAX).unwrap();
    assert_eq!(replayed, inbox);
}

#[test]
fn a_request_that_fails_validation_fails_alone_in_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    for name in ["a", "b"] {
        s.create_user(APP, name, "h").unwrap();
    }
    let calls: Vec<Call<Result<Vec<MsgId>>>> = vec![
        Box::new(|s| s.append(APP, &[1], &single(2, 1, "one"))),
        Box::new(|s| s.append(APP, &[9], &single(2, 9, "nobody"))),
        Box::new(|s| s.append(APP, &[2, 1], &group(1, 1, "g"))),
        Box::new(|s| s.append(APP, &[1, 7], &group(1, 1, "half"))),
        Box::new(|s| s.append("no-such-app", &[1], &single(2, 1, "x"))),
        Box::new(|s| s.append(APP, &[1], &single(2, 1, "two"))),
    ];
    let (results, writes, _) = one_group(&s, calls);
    assert_eq!(writes, 1);
    assert!(
        matches!(results[1], Err(StoreError::NoSuchUser(9))),
        "{:?}",
        results[1]
    );
    assert!(
        matches!(results[3], Err(StoreError::NoSuchUser(7))),
        "{:?}",
        results[3]
    );
    assert!(results[4].is_err(), "{:?}", results[4]);
    assert_eq!(results[0].as_ref().unwrap(), &[1]);
    assert_eq!(results[2].as_ref().unwrap(), &[1, 2]);
    assert_eq!(results[5].as_ref().unwrap(), &[3]);
    let contents = |s: &EmbeddedStore| {
        s.read(APP, 1, 0, usize::MAX)
            .unwrap()
            .iter()
            .map(|m| (m.msgid, m.content.to_string()))
            .collect::<Vec<_>>()
    };
    let want = vec![(1, "one".into()), (2, "g".into()), (3, "two".into())];
    assert_eq!(contents(&s), want);
    drop(s);
    assert_eq!(contents(&open(dir.path())), want);
}

#[test]
fn a_cmsgid_sent_twice_in_one_group_is_a_retry_or_reused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    for name in ["a", "b"] {
        s.create_user(APP, name, "h").unwrap();
    }
    let until = unix_now() + 600;
    let send = |k: &'static str, c: &'static str| -> Call<Result<Vec<Option<MsgId>>>> {
        Box::new(move |s| s.append_once(APP, &[2], &single(1, 2, c), &Once { cmsgid: k, until }))
    };
    let calls = vec![
        send("k1", "hi"),
        send("k1", "hi"),         // a retry of the first
        send("k1", "other text"), // the same cmsgid, another message
        send("k2", "hi"),         // another cmsgid: a new send
        send("k2", "hi"),
    ];
    let (results, writes, _) = one_group(&s, calls);
    assert_eq!(writes, 1);
    assert_eq!(results[0].as_ref().unwrap(), &[Some(1)]);
    assert_eq!(results[1].as_ref().unwrap(), &[None]);
    assert!(
        matches!(results[2], Err(StoreError::CmsgidReused)),
        "{:?}",
        results[2]
    );
    assert_eq!(results[3].as_ref().unwrap(), &[Some(2)]);
    assert_eq!(results[4].as_ref().unwrap(), &[None]);
    assert_eq!(s.read(APP, 2, 0, usize::MAX).unwrap().len(), 2);
    drop(s);
    // Stored once each, and still recognised after replay.
    let s = open(dir.path());
    assert_eq!(s.read(APP, 2, 0, usize::MAX).unwrap().len(), 2);
    let retry = s.append_once(
        APP,
        &[2],
        &single(1, 2, "hi"),
        &Once {
            cmsgid: "k1",
            until,
        },
    );
    assert_eq!(retry.unwrap(), [None]);
}

#[test]
fn a_failed_write_fails_its_whole_group_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path()));
    populate(&s);
    let until = unix_now() + 600;
    s.append_once(
        APP,
        &[1],
        &single(2, 1, "old"),
        &Once {
            cmsgid: "old",
            until,
        },
    )
    .unwrap();
    let before = dump(&s, &[APP, "other"], NAMES, SELS);
    let len = log_size(dir.path());
    // A read-only handle: the write fails, and so does cutting the log back.
    let ro = fs::File::open(dir.path().join("log")).unwrap();
    s.lock().unwrap().log.set_file_for_test(ro);
    let send = |k: &'static str, to: Uid| -> Call<Result<Vec<Option<MsgId>>>> {
        Box::new(move |s| {
            s.append_once(APP, &[to], &single(2, to, "x"), &Once { cmsgid: k, until })
        })
    };
    let calls = vec![
        send("k1", 1),
        send("k1", 1), // a retry of a send that is not stored in the end
        send("k2", 3),
        send("k3", 99), // fails validation, as it would alone
        send("old", 1), // sent before the group, with another message
    ];
    let (results, writes, _) = one_group(&s, calls);
    assert_eq!(writes, 1);
    for i in [0, 1, 2] {
        assert!(
            matches!(results[i], Err(StoreError::Unavailable(_))),
            "{i}: {:?}",
            results[i]
        );
    }
    assert!(
        matches!(results[3], Err(StoreError::NoSuchUser(99))),
        "{:?}",
        results[3]
    );
    // "old" was sent with another message before the group: refused
    // without writing anything.
    assert!(
        matches!(results[4], Err(StoreError::CmsgidReused)),
        "{:?}",
        results[4]
    );
    assert_eq!(dump(&s, &[APP, "other"], NAMES, SELS), before);
    // The log could not be cut back: no more writes until reopened.
    assert!(matches!(
        s.append(APP, &[1], &single(2, 1, "y")),
        Err(StoreError::Unavailable(_))
    ));
    drop(s);
    assert_eq!(log_size(dir.path()), len);
    assert_eq!(
        dump(&open(dir.path()), &[APP, "other"], NAMES, SELS),
        before
    );
}

#[test]
fn readers_go_on_during_a_group_write_and_other_mutations_wait() {
    let dir = tempfile::tempdir().unwrap();
    // Under `Always` the write and its fsync run without the state lock.
    let s = Arc::new(
        EmbeddedStore::open(Options {
            fsync: Fsync::Always,
            ..opts(dir.path())
        })
        .unwrap(),
    );
    for name in ["a", "b"] {
        s.create_user(APP, name, "h").unwrap();
    }
    s.append(APP, &[1], &single(2, 1, "before")).unwrap();
    let (entered_tx, entered) = crossbeam_channel::bounded(1);
    let (go, go_rx) = crossbeam_channel::bounded::<()>(1);
    *s.inner.before_write.lock().unwrap() = Some(Box::new(move || {
        entered_tx.send(()).unwrap();
        go_rx.recv().unwrap();
    }));
    let writer = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || s.append(APP, &[1], &single(2, 1, "during")))
    };
    entered.recv().unwrap();
    // The write is under way without the state lock: reads answer, and do
    // not see the message before it is in the log.
    let seen = |s: &EmbeddedStore| s.read(APP, 1, 0, usize::MAX).unwrap().len();
    assert_eq!(seen(&s), 1);
    assert!(s.user_exists(APP, 2).unwrap());
    // Another mutation waits for the write to end.
    let creator = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || s.create_user(APP, "c", "h"))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !creator.is_finished(),
        "a mutation ran during a group write"
    );
    assert!(!s.user_exists(APP, 3).unwrap());
    go.send(()).unwrap();
    assert_eq!(writer.join().unwrap().unwrap(), [2]);
    assert_eq!(creator.join().unwrap().unwrap(), 3);
    assert_eq!(seen(&s), 2);
    *s.inner.before_write.lock().unwrap() = None;
    let before = dump(&s, &[APP], &["a", "b", "c"], &[]);
    drop(s);
    assert_eq!(
        dump(&open(dir.path()), &[APP], &["a", "b", "c"], &[]),
        before
    );
}
