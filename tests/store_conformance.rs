//! The [`Store`] contract, checked on both backends at the store level.
//!
//! Every case is one function over `&dyn Store`; [`conformance!`] turns it
//! into `embedded::<case>` and `redis::<case>`, so a failure names its
//! backend. The embedded store runs in a temporary dir, the Redis store
//! against a real `redis-server` of its own (tests/common/redis.rs) with
//! AOF and `appendfsync always`. "Reopen" is a new store on the same data:
//! the same dir, or a new `RedisStore` on the same server, and for Redis
//! also after the server was killed and started again on its AOF.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{RedisCluster, RedisServer};
use haoshuo::store::embedded::{self as embedded_store, EmbeddedStore};
use haoshuo::store::redis::{self as redis_store, RedisStore};
use haoshuo::store::{
    unix_now, Append, Limit, Message, MsgId, NewMessage, Once, Outcomes, Page, Reset, Store,
    StoreError, TokenInfo, Uid, DATATYPE_GROUP, DATATYPE_SINGLE,
};

const APP: &str = "app";
const OTHER_APP: &str = "other";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Embedded,
    Redis,
    /// A Redis Cluster of three masters.
    Cluster,
}

/// A store and what it runs on; reopens and restarts keep the data.
struct Backend {
    kind: Kind,
    inbox_cap: usize,
    dir: Option<tempfile::TempDir>,
    redis: Option<RedisServer>,
    cluster: Option<RedisCluster>,
    store: Option<Box<dyn Store>>,
}

impl Backend {
    fn new(kind: Kind) -> Backend {
        Backend::with_cap(kind, 0)
    }

    fn with_cap(kind: Kind, inbox_cap: usize) -> Backend {
        let mut b = Backend {
            kind,
            inbox_cap,
            dir: None,
            redis: None,
            cluster: None,
            store: None,
        };
        match kind {
            Kind::Embedded => b.dir = Some(tempfile::tempdir().expect("a temporary data dir")),
            Kind::Redis => b.redis = Some(RedisServer::start()),
            Kind::Cluster => b.cluster = Some(RedisCluster::start(3, 0)),
        }
        b.store = Some(b.open());
        b
    }

    fn open(&self) -> Box<dyn Store> {
        match self.kind {
            Kind::Embedded => {
                let mut opts = embedded_store::Options::new(self.dir.as_ref().unwrap().path());
                opts.fsync = embedded_store::Fsync::Always;
                opts.inbox_cap = self.inbox_cap;
                // The dir's lock is an flock on an open file: a process
                // another test of this binary is spawning at that moment
                // holds a copy of every descriptor until it execs, so the
                // lock a closed store released may still be held for a
                // moment.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                loop {
                    match EmbeddedStore::open(opts.clone()) {
                        Ok(store) => break Box::new(store),
                        Err(e)
                            if e.to_string().contains("already in use")
                                && std::time::Instant::now() < deadline =>
                        {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        Err(e) => panic!("open the embedded store: {e}"),
                    }
                }
            }
            Kind::Redis | Kind::Cluster => Box::new(
                RedisStore::open(&redis_store::Options {
                    url: match &self.cluster {
                        Some(c) => c.url(),
                        None => self.redis.as_ref().unwrap().url(),
                    },
                    pool: 2,
                    timeout: Duration::from_secs(5),
                    inbox_cap: self.inbox_cap,
                    // Every get_token asks Redis: the tests see what is stored.
                    token_cache: Duration::ZERO,
                    node: "conformance".into(),
                    route_ttl: Duration::from_secs(300),
                    wait_replicas: 0,
                })
                .expect("open the Redis store"),
            ),
        }
    }

    fn store(&self) -> &dyn Store {
        self.store.as_deref().unwrap()
    }

    /// Closes the store and opens a new one on the same data.
    fn reopen(&mut self) {
        self.store = None; // the embedded store releases its dir's lock
        self.store = Some(self.open());
    }

    /// Like [`Backend::reopen`], and Redis is killed (SIGKILL) and started
    /// again on its AOF in between.
    fn restart(&mut self) {
        self.store = None;
        if let Some(redis) = &mut self.redis {
            redis.restart();
        }
        if let Some(cluster) = &mut self.cluster {
            for i in 0..cluster.len() {
                cluster.node(i).restart();
            }
            cluster.wait_ok();
        }
        self.store = Some(self.open());
    }
}

/// `conformance!(a, b);` makes `embedded::a`, `redis::a`, `cluster::a`,
/// `embedded::b`, ...
macro_rules! conformance {
    ($($name:ident),+ $(,)?) => {
        mod embedded {
            $( #[test] fn $name() { super::$name(super::Kind::Embedded); } )+
        }
        mod redis {
            $( #[test] fn $name() { super::$name(super::Kind::Redis); } )+
        }
        mod cluster {
            $( #[test] fn $name() { super::$name(super::Kind::Cluster); } )+
        }
    };
}

conformance!(
    uids_and_gids_are_dense_per_appid,
    group_creation_checks_every_member_first,
    msgids_count_per_receiver_and_per_appid,
    append_to_an_unknown_receiver_stores_nothing,
    a_group_of_sends_answers_each_as_alone,
    a_group_across_apps_keeps_each_apps_msgids,
    append_once_recognises_a_send_by_app_sender_and_cmsgid,
    append_once_refuses_a_cmsgid_reused_for_another_message,
    a_group_append_once_retry_stores_nothing_twice,
    a_failed_append_once_claims_no_cmsgid,
    ack_moves_forward_only_and_trims,
    ack_and_acked_of_an_unknown_user,
    the_inbox_cap_keeps_the_newest,
    pages_are_cut_by_count,
    pages_are_cut_by_bytes,
    tokens_put_get_delete,
    everything_survives_a_reopen,
    names_that_join_alike_stay_apart,
    cmsgids_that_join_alike_stay_apart,
    only_redis_announces,
    the_token_quota_revokes_the_oldest,
    the_group_quota_counts_per_owner,
    a_reader_ahead_of_the_counter_moves_the_inbox_to_a_new_epoch,
    bulk_users_are_all_or_nothing,
    a_live_store_answers_ping,
    append_then_answers_what_append_would,
);

// ---- helpers ----

fn single(from: Uid, to: Uid, c: &str) -> NewMessage {
    NewMessage {
        fromid: from,
        toid: to,
        datatype: DATATYPE_SINGLE,
        content: Arc::from(c),
    }
}

fn group_msg(from: Uid, gid: u64, c: &str) -> NewMessage {
    NewMessage {
        fromid: from,
        toid: gid,
        datatype: DATATYPE_GROUP,
        content: Arc::from(c),
    }
}

fn once(cmsgid: &str) -> Once<'_> {
    Once {
        cmsgid,
        until: unix_now() + 3600,
    }
}

/// Creates users `name0`, `name1`, ... in `appid`; returns their uids.
fn users(s: &dyn Store, appid: &str, n: usize) -> Vec<Uid> {
    (0..n)
        .map(|i| {
            s.create_user(appid, &format!("name{i}"), &format!("hash{i}"))
                .unwrap()
        })
        .collect()
}

/// The whole inbox: (msgid, content) of every stored message, and its last msgid.
fn inbox(s: &dyn Store, appid: &str, uid: Uid) -> (Vec<(MsgId, String)>, MsgId) {
    let page = s.page(appid, uid, 0, Limit::count(1000)).unwrap();
    (contents(&page), page.last)
}

fn contents(page: &Page) -> Vec<(MsgId, String)> {
    page.msgs
        .iter()
        .map(|m| (m.msgid, m.content.to_string()))
        .collect()
}

fn msgids(page: &Page) -> Vec<MsgId> {
    page.msgs.iter().map(|m| m.msgid).collect()
}

fn assert_no_such_user<T: std::fmt::Debug>(r: Result<T, StoreError>, uid: Uid) {
    match r {
        Err(StoreError::NoSuchUser(u)) => assert_eq!(u, uid, "NoSuchUser names the uid"),
        other => panic!("expected NoSuchUser({uid}), got {other:?}"),
    }
}

fn assert_reused<T: std::fmt::Debug>(r: Result<T, StoreError>) {
    assert!(
        matches!(r, Err(StoreError::CmsgidReused)),
        "expected CmsgidReused, got {r:?}"
    );
}

// ---- users and groups ----

fn uids_and_gids_are_dense_per_appid(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    assert_eq!(users(s, APP, 3), [1, 2, 3]);
    assert_eq!(users(s, OTHER_APP, 2), [1, 2]);
    assert!(matches!(
        s.create_user(APP, "name1", "h"),
        Err(StoreError::UsernameTaken)
    ));
    // A refused name uses up no uid.
    assert_eq!(s.create_user(APP, "name3", "hash3").unwrap(), 4);
    assert_eq!(
        s.find_user(APP, "name1").unwrap(),
        Some((2, "hash1".to_string()))
    );
    assert_eq!(s.find_user(APP, "nobody").unwrap(), None);
    assert_eq!(s.find_user("nowhere", "name1").unwrap(), None);
    let exists: Vec<bool> = (0..=5).map(|u| s.user_exists(APP, u).unwrap()).collect();
    assert_eq!(exists, [false, true, true, true, true, false]);
    assert!(!s.user_exists("nowhere", 1).unwrap());

    assert_eq!(s.create_group(APP, 1, "g1", &[1, 2], 0).unwrap(), 1);
    assert_eq!(s.create_group(APP, 3, "g2", &[3, 1, 4], 0).unwrap(), 2);
    assert_eq!(s.create_group(OTHER_APP, 2, "g", &[2], 0).unwrap(), 1);
    assert_eq!(s.group_members(APP, 1).unwrap(), Some(vec![1, 2]));
    assert_eq!(
        s.group_members(APP, 2).unwrap(),
        Some(vec![3, 1, 4]),
        "in the order given"
    );
    assert_eq!(s.group_members(OTHER_APP, 1).unwrap(), Some(vec![2]));
    assert_eq!(s.group_members(APP, 0).unwrap(), None);
    assert_eq!(s.group_members(APP, 3).unwrap(), None);
    assert_eq!(s.group_members(OTHER_APP, 2).unwrap(), None);
}

fn group_creation_checks_every_member_first(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 2);
    assert_no_such_user(s.create_group(APP, 1, "g", &[1, 99, 2], 0), 99);
    assert_no_such_user(s.create_group(APP, 1, "g", &[1, 2, 3], 0), 3);
    assert_eq!(s.group_members(APP, 1).unwrap(), None, "nothing created");
    assert_eq!(
        s.create_group(APP, 1, "g", &[1, 2], 0).unwrap(),
        1,
        "the refused groups used up no gid"
    );
}

// ---- appends and msgids ----

fn msgids_count_per_receiver_and_per_appid(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 3);
    users(s, OTHER_APP, 1);
    assert_eq!(inbox(s, APP, 1), (vec![], 0), "an inbox starts empty");
    assert_eq!(s.append(APP, &[1], &single(2, 1, "a")).unwrap(), [1]);
    assert_eq!(s.append(APP, &[1], &single(2, 1, "b")).unwrap(), [2]);
    assert_eq!(s.append(APP, &[2], &single(1, 2, "c")).unwrap(), [1]);
    assert_eq!(
        s.append(OTHER_APP, &[1], &single(1, 1, "d")).unwrap(),
        [1],
        "uid 1 of another appid is another inbox"
    );
    let g = s.create_group(APP, 1, "g", &[1, 2, 3], 0).unwrap();
    assert_eq!(
        s.append(APP, &[1, 2, 3], &group_msg(1, g, "e")).unwrap(),
        [3, 2, 1]
    );
    assert_eq!(
        s.append(APP, &[], &single(1, 2, "none")).unwrap(),
        [0u64; 0]
    );
    // A receiver listed twice gets two consecutive msgids.
    assert_eq!(
        s.append(APP, &[3, 3], &group_msg(1, g, "f")).unwrap(),
        [2, 3]
    );

    let expect = |c: &[(MsgId, &str)]| -> Vec<(MsgId, String)> {
        c.iter().map(|&(i, c)| (i, c.to_string())).collect()
    };
    assert_eq!(
        inbox(s, APP, 1),
        (expect(&[(1, "a"), (2, "b"), (3, "e")]), 3)
    );
    assert_eq!(inbox(s, APP, 2), (expect(&[(1, "c"), (2, "e")]), 2));
    assert_eq!(
        inbox(s, APP, 3),
        (expect(&[(1, "e"), (2, "f"), (3, "f")]), 3)
    );
    assert_eq!(inbox(s, OTHER_APP, 1), (expect(&[(1, "d")]), 1));
    // Every field comes back as appended.
    let page = s.page(APP, 1, 3, Limit::count(10)).unwrap();
    assert_eq!(
        page.msgs,
        [Message {
            msgid: 3,
            fromid: 1,
            toid: g,
            datatype: DATATYPE_GROUP,
            content: Arc::from("e"),
        }]
    );
    assert_eq!(
        s.read(APP, 1, 1, 2)
            .unwrap()
            .iter()
            .map(|m| (m.msgid, m.fromid, m.toid, m.datatype))
            .collect::<Vec<_>>(),
        [(1, 2, 1, DATATYPE_SINGLE), (2, 2, 1, DATATYPE_SINGLE)]
    );
}

fn append_to_an_unknown_receiver_stores_nothing(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 2);
    assert_no_such_user(s.append(APP, &[3], &single(1, 3, "x")), 3);
    assert_no_such_user(s.append(APP, &[1, 99, 2], &group_msg(1, 1, "x")), 99);
    assert_no_such_user(s.append(OTHER_APP, &[1], &single(1, 1, "x")), 1);
    assert_no_such_user(
        s.append_once(APP, &[2, 99], &group_msg(1, 1, "x"), &once("k")),
        99,
    );
    assert_eq!(inbox(s, APP, 1), (vec![], 0), "nothing stored for 1");
    assert_eq!(inbox(s, APP, 2), (vec![], 0), "nothing stored for 2");
    assert_eq!(
        s.append(APP, &[1, 2], &group_msg(1, 1, "y")).unwrap(),
        [1, 1]
    );
    assert_no_such_user(s.page(APP, 3, 1, Limit::count(1)), 3);
}

// ---- append_once ----

fn append_once_recognises_a_send_by_app_sender_and_cmsgid(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 3);
    users(s, OTHER_APP, 3);
    let m = single(1, 3, "hi");
    assert_eq!(s.append_once(APP, &[3], &m, &once("k")).unwrap(), [Some(1)]);
    // A retry: nothing new.
    assert_eq!(s.append_once(APP, &[3], &m, &once("k")).unwrap(), [None]);
    assert_eq!(s.append_once(APP, &[3], &m, &once("k")).unwrap(), [None]);
    assert_eq!(inbox(s, APP, 3), (vec![(1, "hi".into())], 1));
    // The same cmsgid from another sender is another send.
    let from2 = single(2, 3, "hi");
    assert_eq!(
        s.append_once(APP, &[3], &from2, &once("k")).unwrap(),
        [Some(2)]
    );
    assert_eq!(
        s.append_once(APP, &[3], &from2, &once("k")).unwrap(),
        [None]
    );
    // ... and in another appid too.
    assert_eq!(
        s.append_once(OTHER_APP, &[3], &m, &once("k")).unwrap(),
        [Some(1)]
    );
    // Another cmsgid of the same sender, same message: another send.
    assert_eq!(
        s.append_once(APP, &[3], &m, &once("k2")).unwrap(),
        [Some(3)]
    );
    // A plain append is never deduplicated.
    assert_eq!(s.append(APP, &[3], &m).unwrap(), [4]);
    assert_eq!(inbox(s, APP, 3).1, 4);
    assert_eq!(inbox(s, OTHER_APP, 3).1, 1);
}

fn append_once_refuses_a_cmsgid_reused_for_another_message(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 3);
    let m = single(1, 2, "hi");
    assert_eq!(s.append_once(APP, &[2], &m, &once("k")).unwrap(), [Some(1)]);
    let other_to = single(1, 3, "hi");
    assert_reused(s.append_once(APP, &[3], &other_to, &once("k")));
    let other_kind = NewMessage {
        datatype: DATATYPE_GROUP,
        ..m.clone()
    };
    assert_reused(s.append_once(APP, &[2], &other_kind, &once("k")));
    let other_content = single(1, 2, "hi!");
    assert_reused(s.append_once(APP, &[2], &other_content, &once("k")));
    assert_eq!(inbox(s, APP, 2), (vec![(1, "hi".into())], 1));
    assert_eq!(inbox(s, APP, 3), (vec![], 0));
    // The refusals changed nothing: the original is still recognised.
    assert_eq!(s.append_once(APP, &[2], &m, &once("k")).unwrap(), [None]);
}

fn a_group_append_once_retry_stores_nothing_twice(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 4);
    let g = s.create_group(APP, 1, "g", &[1, 2, 3, 4], 0).unwrap();
    s.append(APP, &[3], &single(1, 3, "before")).unwrap();
    let m = group_msg(1, g, "all");
    let to = [1, 2, 3, 4];
    assert_eq!(
        s.append_once(APP, &to, &m, &once("g1")).unwrap(),
        [Some(1), Some(1), Some(2), Some(1)]
    );
    assert_eq!(
        s.append_once(APP, &to, &m, &once("g1")).unwrap(),
        [None, None, None, None]
    );
    assert_eq!(inbox(s, APP, 1).1, 1);
    assert_eq!(
        inbox(s, APP, 3),
        (vec![(1, "before".into()), (2, "all".into())], 2)
    );
    // A different message under the same cmsgid stores nothing anywhere.
    assert_reused(s.append_once(APP, &to, &group_msg(1, g, "other"), &once("g1")));
    let lasts: Vec<MsgId> = to.iter().map(|&u| inbox(s, APP, u).1).collect();
    assert_eq!(lasts, [1, 1, 2, 1]);
}

/// A send refused for an unknown receiver is not a send: its cmsgid names
/// nothing afterwards.
fn a_failed_append_once_claims_no_cmsgid(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 2);
    assert_no_such_user(
        s.append_once(APP, &[9], &single(1, 9, "lost"), &once("k")),
        9,
    );
    assert_no_such_user(
        s.append_once(APP, &[2, 9], &group_msg(1, 1, "lost"), &once("k2")),
        9,
    );
    assert_eq!(
        s.append_once(APP, &[2], &single(1, 2, "new"), &once("k"))
            .unwrap(),
        [Some(1)]
    );
    assert_eq!(
        s.append_once(APP, &[2], &single(1, 2, "new2"), &once("k2"))
            .unwrap(),
        [Some(2)]
    );
}

// ---- acks ----

fn ack_moves_forward_only_and_trims(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 2);
    assert_eq!(s.acked(APP, 1).unwrap(), 0);
    // An ack of an empty inbox is clamped to 0: later messages still show.
    s.ack(APP, 1, 100).unwrap();
    assert_eq!(s.acked(APP, 1).unwrap(), 0);
    for i in 1..=6 {
        assert_eq!(
            s.append(APP, &[1], &single(2, 1, &format!("m{i}")))
                .unwrap(),
            [i]
        );
    }
    s.ack(APP, 1, 5).unwrap();
    assert_eq!(s.acked(APP, 1).unwrap(), 5);
    s.ack(APP, 1, 3).unwrap();
    assert_eq!(s.acked(APP, 1).unwrap(), 5, "an ack never rewinds");
    s.ack(APP, 1, 0).unwrap();
    assert_eq!(s.acked(APP, 1).unwrap(), 5);
    let page = s.page(APP, 1, 1, Limit::count(10)).unwrap();
    assert_eq!(
        (msgids(&page), page.last),
        (vec![6], 6),
        "acked ones are gone"
    );
    s.ack(APP, 1, 1000).unwrap();
    assert_eq!(s.acked(APP, 1).unwrap(), 6, "clamped to the last msgid");
    assert_eq!(inbox(s, APP, 1), (vec![], 6));
    // The clamp leaves the next message unacked.
    assert_eq!(s.append(APP, &[1], &single(2, 1, "m7")).unwrap(), [7]);
    assert_eq!(inbox(s, APP, 1), (vec![(7, "m7".into())], 7));
    assert_eq!(s.acked(APP, 2).unwrap(), 0, "acks are per user");
}

fn ack_and_acked_of_an_unknown_user(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 1);
    assert_no_such_user(s.acked(APP, 2), 2);
    assert_no_such_user(s.acked(APP, 0), 0);
    assert_no_such_user(s.acked(OTHER_APP, 1), 1);
    assert_no_such_user(s.ack(APP, 2, 1), 2);
    assert_no_such_user(s.ack(OTHER_APP, 1, 1), 1);
    assert!(
        !s.user_exists(APP, 2).unwrap(),
        "a refused ack made no user"
    );
}

// ---- retention and pages ----

fn the_inbox_cap_keeps_the_newest(kind: Kind) {
    let mut b = Backend::with_cap(kind, 3);
    let s = b.store();
    users(s, APP, 3);
    for i in 1..=5 {
        s.append(APP, &[1], &single(2, 1, &format!("m{i}")))
            .unwrap();
    }
    // A group append trims every receiver on its own.
    s.append(APP, &[1, 2], &group_msg(3, 1, "g")).unwrap();
    let kept = |s: &dyn Store, uid| {
        let page = s.page(APP, uid, 1, Limit::count(10)).unwrap();
        (contents(&page), page.last)
    };
    let want = (vec![(4, "m4".into()), (5, "m5".into()), (6, "g".into())], 6);
    assert_eq!(kept(s, 1), want, "the newest 3, and the real last msgid");
    assert_eq!(kept(s, 2), (vec![(1, "g".into())], 1));
    // The trimmed gap shows: asked from 1, the page starts at 4.
    let page = s.page(APP, 1, 1, Limit::count(1)).unwrap();
    assert_eq!((msgids(&page), page.last), (vec![4], 6));
    assert!(page.more_after(1));
    b.reopen();
    assert_eq!(kept(b.store(), 1), want, "after a reopen");
    b.restart();
    assert_eq!(kept(b.store(), 1), want, "after a restart");
    b.store().ack(APP, 1, 5).unwrap();
    assert_eq!(kept(b.store(), 1), (vec![(6, "g".into())], 6));
}

fn pages_are_cut_by_count(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 1);
    for i in 1..=5 {
        s.append(APP, &[1], &single(1, 1, &format!("m{i}")))
            .unwrap();
    }
    let ids = |from, count| {
        let p = s.page(APP, 1, from, Limit::count(count)).unwrap();
        (msgids(&p), p.last)
    };
    assert_eq!(ids(1, 2), (vec![1, 2], 5));
    assert_eq!(ids(3, 2), (vec![3, 4], 5));
    assert_eq!(ids(4, 10), (vec![4, 5], 5));
    assert_eq!(ids(0, 10), (vec![1, 2, 3, 4, 5], 5));
    assert_eq!(
        ids(6, 10),
        (vec![], 5),
        "past the end: empty, last still read"
    );
    assert_eq!(ids(1, 0), (vec![], 5));
    assert_eq!(
        ids(1, usize::MAX),
        (vec![1, 2, 3, 4, 5], 5),
        "no cap at all"
    );
    assert_eq!(
        s.read(APP, 1, 2, 3)
            .unwrap()
            .iter()
            .map(|m| m.msgid)
            .collect::<Vec<_>>(),
        [2, 3, 4]
    );
}

fn pages_are_cut_by_bytes(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 1);
    // 1000-byte contents: "a few dozen bytes of ids" per message cannot
    // move a cap of 2500 across a message boundary on any backend.
    for c in ['a', 'b', 'c', 'd'] {
        s.append(APP, &[1], &single(1, 1, &c.to_string().repeat(1000)))
            .unwrap();
    }
    let ids = |from, limit| {
        let p = s.page(APP, 1, from, limit).unwrap();
        (msgids(&p), p.last)
    };
    let bytes = |bytes| Limit { count: 100, bytes };
    assert_eq!(ids(1, bytes(2500)), (vec![1, 2], 4));
    assert_eq!(ids(3, bytes(2500)), (vec![3, 4], 4));
    assert_eq!(ids(2, bytes(4000)), (vec![2, 3, 4], 4));
    assert_eq!(ids(1, bytes(100_000)), (vec![1, 2, 3, 4], 4));
    // The first message goes whatever its size.
    assert_eq!(ids(2, bytes(10)), (vec![2], 4));
    assert_eq!(ids(1, bytes(0)), (vec![1], 4));
    // Whichever cap is hit first.
    assert_eq!(
        ids(
            1,
            Limit {
                count: 1,
                bytes: 100_000
            }
        ),
        (vec![1], 4)
    );
    let page = s.page(APP, 1, 2, bytes(10)).unwrap();
    assert_eq!(&*page.msgs[0].content, "b".repeat(1000));
    assert!(page.more_after(2));
}

// ---- tokens ----

fn token(appid: &str, uid: Uid, verifier: &str) -> TokenInfo {
    TokenInfo {
        verifier: verifier.into(),
        appid: appid.into(),
        uid,
        expires_at: unix_now() + 3600,
    }
}

/// Every token operation the suite needs, so a change of `put_token`'s
/// signature is adapted here once.
fn put_token(s: &dyn Store, selector: &str, info: &TokenInfo) {
    assert!(s.put_token(selector, info, 0).unwrap().is_empty());
}

fn tokens_put_get_delete(kind: Kind) {
    let mut b = Backend::new(kind);
    let s = b.store();
    let t1 = token(APP, 1, "v1");
    let t2 = token("a:b", 2, "v2");
    // A token names a user: none for one that does not exist.
    assert!(matches!(
        s.put_token("aa01", &t1, 0),
        Err(StoreError::NoSuchUser(1))
    ));
    users(s, APP, 1);
    users(s, "a:b", 2);
    assert_eq!(s.get_token("aa01").unwrap(), None);
    put_token(s, "aa01", &t1);
    put_token(s, "bb02", &t2);
    assert_eq!(s.get_token("aa01").unwrap(), Some(t1.clone()));
    assert_eq!(s.get_token("bb02").unwrap(), Some(t2.clone()));
    // Put again under one selector: the new one stands.
    let t1b = token(APP, 1, "v1b");
    put_token(s, "aa01", &t1b);
    assert_eq!(s.get_token("aa01").unwrap(), Some(t1b.clone()));
    s.delete_token(APP, 1, "aa01").unwrap();
    assert_eq!(s.get_token("aa01").unwrap(), None);
    s.delete_token(APP, 1, "aa01").unwrap();
    s.delete_token(APP, 7, "never").unwrap();
    assert_eq!(s.get_token("bb02").unwrap(), Some(t2.clone()));
    b.reopen();
    assert_eq!(b.store().get_token("bb02").unwrap(), Some(t2.clone()));
    assert_eq!(b.store().get_token("aa01").unwrap(), None);
    b.restart();
    assert_eq!(b.store().get_token("bb02").unwrap(), Some(t2));
    assert_eq!(b.store().get_token("aa01").unwrap(), None);
}

// ---- reopen ----

/// Writes a bit of everything.
fn populate(s: &dyn Store) {
    users(s, APP, 3);
    users(s, OTHER_APP, 1);
    let g = s.create_group(APP, 1, "g", &[1, 2, 3], 0).unwrap();
    s.append(APP, &[2], &single(1, 2, "one")).unwrap();
    s.append(APP, &[2], &single(3, 2, "two")).unwrap();
    s.append_once(APP, &[1, 2, 3], &group_msg(1, g, "grp"), &once("c1"))
        .unwrap();
    s.append(OTHER_APP, &[1], &single(1, 1, "elsewhere"))
        .unwrap();
    s.ack(APP, 2, 2).unwrap();
    s.ack(APP, 1, 1).unwrap();
    put_token(s, "5e1ec7", &token(APP, 2, "ver"));
    put_token(s, "de1e7e", &token(APP, 3, "gone"));
    s.delete_token(APP, 3, "de1e7e").unwrap();
}

/// Everything [`populate`] wrote, as the store shows it.
fn observe(s: &dyn Store) -> String {
    let mut out = String::new();
    for appid in [APP, OTHER_APP] {
        for uid in 1..=4 {
            if !s.user_exists(appid, uid).unwrap() {
                out += &format!("{appid}/{uid}: none\n");
                continue;
            }
            let (msgs, last) = inbox(s, appid, uid);
            out += &format!(
                "{appid}/{uid}: {:?} acked {} last {last} {msgs:?}\n",
                s.find_user(appid, &format!("name{}", uid - 1)).unwrap(),
                s.acked(appid, uid).unwrap(),
            );
        }
        for gid in 1..=2 {
            out += &format!(
                "{appid} group {gid}: {:?}\n",
                s.group_members(appid, gid).unwrap()
            );
        }
    }
    for sel in ["5e1ec7", "de1e7e"] {
        out += &format!("token {sel}: {:?}\n", s.get_token(sel).unwrap());
    }
    out
}

fn everything_survives_a_reopen(kind: Kind) {
    let mut b = Backend::new(kind);
    populate(b.store());
    let before = observe(b.store());
    // What `populate` left, spelled out once.
    let expires = b.store().get_token("5e1ec7").unwrap().unwrap().expires_at;
    let want = format!(
        "app/1: Some((1, \"hash0\")) acked 1 last 1 []\n\
         app/2: Some((2, \"hash1\")) acked 2 last 3 [(3, \"grp\")]\n\
         app/3: Some((3, \"hash2\")) acked 0 last 1 [(1, \"grp\")]\n\
         app/4: none\n\
         app group 1: Some([1, 2, 3])\n\
         app group 2: None\n\
         other/1: Some((1, \"hash0\")) acked 0 last 1 [(1, \"elsewhere\")]\n\
         other/2: none\n\
         other/3: none\n\
         other/4: none\n\
         other group 1: None\n\
         other group 2: None\n\
         token 5e1ec7: Some(TokenInfo {{ verifier: \"ver\", appid: \"app\", uid: 2, expires_at: {expires} }})\n\
         token de1e7e: None\n"
    );
    assert_eq!(before, want);
    b.reopen();
    assert_eq!(observe(b.store()), want, "after a reopen");
    b.restart();
    assert_eq!(observe(b.store()), want, "after a restart");

    // Counters go on where they were, and sends are still recognised.
    let s = b.store();
    assert_eq!(s.create_user(APP, "name3", "hash3").unwrap(), 4);
    assert!(matches!(
        s.create_user(APP, "name0", "h"),
        Err(StoreError::UsernameTaken)
    ));
    assert_eq!(s.create_group(APP, 4, "g2", &[4, 1], 0).unwrap(), 2);
    assert_eq!(
        s.append(APP, &[2, 1], &group_msg(4, 2, "next")).unwrap(),
        [4, 2]
    );
    assert_eq!(
        s.append_once(APP, &[1, 2, 3], &group_msg(1, 1, "grp"), &once("c1"))
            .unwrap(),
        [None, None, None]
    );
    assert_reused(s.append_once(APP, &[1, 2, 3], &group_msg(1, 1, "grp2"), &once("c1")));
    s.ack(APP, 2, 1).unwrap();
    assert_eq!(s.acked(APP, 2).unwrap(), 2, "no rewind after a reopen");
    assert_eq!(
        inbox(s, APP, 2),
        (vec![(3, "grp".into()), (4, "next".into())], 4)
    );
}

// ---- tenants ----

fn names_that_join_alike_stay_apart(kind: Kind) {
    let mut b = Backend::new(kind);
    // Joined naively with ':' (or with the escapes themselves), each pair
    // is one name.
    let pairs = [
        ("a", "b:c"),
        ("a:b", "c"),
        ("a%3Ab", "c"),
        ("a}", "{b"),
        ("a", "}:{b"),
        ("{a", "b"),
        ("a%", "b"),
        ("a%25", "b"),
    ];
    for (i, (appid, name)) in pairs.iter().enumerate() {
        let uid = b
            .store()
            .create_user(appid, name, &format!("h{i}"))
            .unwrap();
        let want = if *appid == "a" && i > 0 { 2 } else { 1 };
        assert_eq!(uid, want, "{appid:?}/{name:?}: uids count per appid");
        let g = b.store().create_group(appid, uid, name, &[uid], 0).unwrap();
        assert_eq!(g, want, "{appid:?}: gids count per appid");
        b.store()
            .append(appid, &[uid], &single(uid, uid, &format!("to {i}")))
            .unwrap();
    }
    let check = |s: &dyn Store| {
        for (i, (appid, name)) in pairs.iter().enumerate() {
            let (uid, hash) = s.find_user(appid, name).unwrap().unwrap();
            assert_eq!(hash, format!("h{i}"), "{appid:?}/{name:?}");
            assert_eq!(
                inbox(s, appid, uid),
                (vec![(1, format!("to {i}"))], 1),
                "{appid:?}/{name:?}: its own inbox only"
            );
            assert_eq!(s.group_members(appid, uid).unwrap(), Some(vec![uid]));
        }
        assert_eq!(s.find_user("a", "b").unwrap(), None);
        assert_eq!(s.find_user("a:b", "b:c").unwrap(), None);
    };
    check(b.store());
    b.restart();
    check(b.store());
}

fn cmsgids_that_join_alike_stay_apart(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 2);
    users(s, "a:1", 2);
    let m = single(1, 2, "x");
    let ids: Vec<Vec<Option<MsgId>>> = ["k:1", "k%3A1", "k", "k}", "{k"]
        .iter()
        .map(|k| s.append_once(APP, &[2], &m, &once(k)).unwrap())
        .collect();
    assert_eq!(ids, [[Some(1)], [Some(2)], [Some(3)], [Some(4)], [Some(5)]]);
    // appid "a", sender 1, cmsgid "1:k" against appid "a:1", sender 1, "k".
    users(s, "a", 2);
    assert_eq!(
        s.append_once("a", &[2], &m, &once("1:k")).unwrap(),
        [Some(1)]
    );
    assert_eq!(
        s.append_once("a:1", &[2], &m, &once("k")).unwrap(),
        [Some(1)]
    );
    assert_eq!(s.append_once("a", &[2], &m, &once("1:k")).unwrap(), [None]);
}

/// Redis publishes every append to every node itself; with the embedded
/// store the appending worker hands it to its own router (a Redis store
/// saying `false` would have each message delivered twice).
fn only_redis_announces(kind: Kind) {
    let b = Backend::new(kind);
    assert_eq!(b.store().announces(), kind != Kind::Embedded);
}

/// `append_group` (a reactor's sends of one loop turn) answers each send
/// what it would have been answered alone, in order, each against what the
/// earlier ones stored: msgids follow on, one to an unknown user fails
/// alone, a `cmsgid` sent earlier in the group is a retry (nothing stored
/// twice) or, for another message, refused; and it stores what it answers.
fn a_group_of_sends_answers_each_as_alone(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 3);
    let (a, b2, c) = (single(1, 2, "a"), single(1, 2, "b"), group_msg(1, 1, "c"));
    let (retry, other) = (single(3, 2, "once"), single(3, 2, "not the same"));
    let k = once("k");
    let send = |to, msg, once| Append {
        appid: APP,
        to,
        msg,
        once,
    };
    let mut out = Outcomes::default();
    s.append_group(
        &[
            send(&[2], &a, None),
            send(&[2, 99], &c, None),
            send(&[1, 2, 3], &c, None),
            send(&[2], &b2, None),
            send(&[2], &retry, Some(k)),
            send(&[2], &retry, Some(k)),
            send(&[2], &other, Some(k)),
        ],
        &mut out,
    );
    // A second group's outcomes follow the first's.
    s.append_group(&[send(&[1, 3], &b2, None)], &mut out);
    assert_eq!(out.len(), 8);
    let mut i = 0;
    let mut next = || {
        i += 1;
        let outcome = out.get(i - 1).expect("an outcome per send");
        outcome.map(<[_]>::to_vec).map_err(StoreError::clone)
    };
    assert_eq!(next().unwrap(), [Some(1)]);
    assert_no_such_user(next(), 99);
    assert_eq!(next().unwrap(), [Some(1), Some(2), Some(1)]);
    assert_eq!(next().unwrap(), [Some(3)]);
    assert_eq!(next().unwrap(), [Some(4)]);
    assert_eq!(next().unwrap(), [None], "a retry stored again");
    assert_reused(next());
    assert_eq!(next().unwrap(), [Some(2), Some(2)]);
    assert!(out.get(8).is_none(), "an outcome past the last send");
    assert_eq!(
        inbox(s, APP, 2),
        (
            vec![
                (1, "a".into()),
                (2, "c".into()),
                (3, "b".into()),
                (4, "once".into())
            ],
            4
        )
    );
    assert_eq!(
        inbox(s, APP, 1),
        (vec![(1, "c".into()), (2, "b".into())], 2)
    );
    assert_eq!(
        inbox(s, APP, 3),
        (vec![(1, "c".into()), (2, "b".into())], 2)
    );
}

/// A group of sends to two apps, their users with the same uids: each
/// app's receivers get msgids that follow on in that app alone, and a
/// `cmsgid` sent in one app is not a retry in the other.
fn a_group_across_apps_keeps_each_apps_msgids(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    let (one, two, three) = ("app1", "app2", "app3");
    for app in [one, two, three] {
        users(s, app, 2);
    }
    let m = single(1, 2, "m");
    let k = once("k");
    let send = |appid, once| Append {
        appid,
        to: &[2],
        msg: &m,
        once,
    };
    let mut out = Outcomes::default();
    s.append_group(
        &[
            send(one, None),
            send(two, None),
            send(one, Some(k)),
            send(three, None),
            send(two, Some(k)),
            send(three, None),
            send(two, Some(k)),
        ],
        &mut out,
    );
    let got: Vec<_> = (0..out.len())
        .map(|i| out.get(i).unwrap().map(<[_]>::to_vec).unwrap())
        .collect();
    assert_eq!(
        got,
        [
            [Some(1)],
            [Some(1)],
            [Some(2)],
            [Some(1)],
            [Some(2)],
            [Some(2)],
            [None]
        ]
    );
    assert_eq!(inbox(s, one, 2).1, 2);
    assert_eq!(inbox(s, two, 2).1, 2);
    assert_eq!(inbox(s, three, 2).1, 2);
}

// ---- Redis only ----

/// `append_then`'s function gets what `append` / `append_once` would
/// answer, once (on Redis the common send is answered from the lane's
/// thread), and the store holds the same; on Redis also after the append
/// script was flushed (NOSCRIPT: loaded again and the call sent again).
fn append_then_answers_what_append_would(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 3);
    let then = |to: &[Uid], msg: NewMessage, once: Option<&Once>| {
        let (tx, rx) = std::sync::mpsc::channel();
        s.append_then(
            APP,
            to,
            &msg,
            once,
            Box::new(move |r| {
                let thread = std::thread::current().name().map(str::to_owned);
                tx.send((r, thread)).expect("the test listens")
            }),
        );
        let (r, thread) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("no outcome");
        assert!(rx.try_recv().is_err(), "an outcome given twice");
        if once.is_none() && matches!(kind, Kind::Redis) {
            let thread = thread.unwrap_or_default();
            assert!(
                thread.starts_with("haoshuo-redis-"),
                "answered on {thread:?}, not by the lane: the caller waited"
            );
        }
        r
    };
    assert_eq!(then(&[2], single(1, 2, "a"), None).unwrap(), [Some(1)]);
    assert_eq!(
        then(&[1, 2, 3], group_msg(1, 1, "b"), None).unwrap(),
        [Some(1), Some(2), Some(1)]
    );
    assert_no_such_user(then(&[1, 99], group_msg(1, 1, "x"), None), 99);
    let k = once("k");
    assert_eq!(then(&[3], single(1, 3, "c"), Some(&k)).unwrap(), [Some(2)]);
    assert_eq!(then(&[3], single(1, 3, "c"), Some(&k)).unwrap(), [None]);
    if let Some(redis) = &b.redis {
        assert_eq!(redis.command(&["SCRIPT", "FLUSH"]), "+OK");
        assert_eq!(then(&[2], single(3, 2, "d"), None).unwrap(), [Some(3)]);
        assert_eq!(then(&[2], single(3, 2, "e"), None).unwrap(), [Some(4)]);
    }
    let last = if b.redis.is_some() { 4 } else { 2 };
    let (msgs, at) = inbox(s, APP, 2);
    assert_eq!(at, last);
    assert_eq!(&msgs[..2], [(1, "a".into()), (2, "b".into())]);
    assert_eq!(inbox(s, APP, 1), (vec![(1, "b".into())], 1), "nothing of x");
    assert_eq!(
        inbox(s, APP, 3),
        (vec![(1, "b".into()), (2, "c".into())], 2)
    );
}

/// An append pipeline that fails for another reason than a script Redis
/// does not know (NOSCRIPT, after a restart) is not run again: the
/// receivers it already reached would get the message twice. Here the
/// second receiver's inbox key holds a string, behind the store's back.
#[test]
fn redis_a_failed_append_pipeline_is_not_run_again() {
    let b = Backend::new(Kind::Redis);
    let s = b.store();
    users(s, APP, 2);
    // Redis knows the script now: the failure below is not NOSCRIPT's.
    assert_eq!(s.append(APP, &[1], &single(2, 1, "first")).unwrap(), [1]);
    let redis = b.redis.as_ref().unwrap();
    assert_eq!(redis.command(&["SET", "hs:{u:app:2}:box", "x"]), "+OK");
    let r = s.append(APP, &[1, 2], &group_msg(1, 1, "once"));
    match r {
        Err(StoreError::Unavailable(e)) => assert!(e.contains("WRONGTYPE"), "{e}"),
        other => panic!("expected WRONGTYPE, got {other:?}"),
    }
    assert_eq!(
        inbox(s, APP, 1),
        (vec![(1, "first".into()), (2, "once".into())], 2)
    );
}

/// An inbox a server before the list wrote (a sorted set at
/// `...:inbox`) is read on: the first page merges it, in msgid order, with
/// what was appended to the list since, and deletes it; acks trim across
/// both.
#[test]
fn redis_an_inbox_of_the_old_format_is_merged_on_first_read() {
    let b = Backend::new(Kind::Redis);
    let s = b.store();
    users(s, APP, 2);
    let redis = b.redis.as_ref().unwrap();
    let member = |id: u64, c: &str| format!(r#"{id}:{{"f":2,"t":1,"d":1,"c":"{c}"}}"#);
    let old = "hs:{u:app:1}:inbox";
    for (id, c) in [(1, "old one"), (2, "old two")] {
        let stored = redis.command(&["ZADD", old, &id.to_string(), &member(id, c)]);
        assert_eq!(stored, ":1");
    }
    redis.command(&["HSET", "hs:{u:app:1}", "seq", "2"]);
    assert_eq!(s.append(APP, &[1], &single(2, 1, "new")).unwrap(), [3]);
    let all = vec![
        (1, "old one".into()),
        (2, "old two".into()),
        (3, "new".into()),
    ];
    assert_eq!(inbox(s, APP, 1), (all.clone(), 3));
    assert_eq!(redis.command(&["EXISTS", old]), ":0");
    assert_eq!(redis.command(&["TYPE", "hs:{u:app:1}:box"]), "+list");
    assert_eq!(inbox(s, APP, 1), (all.clone(), 3));
    s.ack(APP, 1, 2).unwrap();
    assert_eq!(inbox(s, APP, 1), (all[2..].to_vec(), 3));
    // An ack finds an old inbox too.
    redis.command(&["ZADD", "hs:{u:app:2}:inbox", "1", &member(1, "for two")]);
    redis.command(&["HSET", "hs:{u:app:2}", "seq", "1"]);
    s.ack(APP, 2, 1).unwrap();
    assert_eq!(inbox(s, APP, 2), (vec![], 1));
    assert_eq!(redis.command(&["EXISTS", "hs:{u:app:2}:inbox"]), ":0");
}

/// A process's presence is poured in a piece at a time (an app's users
/// per call) and replaces the last one whole at commit: another process
/// reads the new set, never a half-filled one nor the old one's leftovers,
/// and a commit with nobody added takes everyone offline.
#[test]
fn redis_presence_poured_in_pieces_replaces_the_last_whole() {
    let b = Backend::new(Kind::Redis);
    let s = b.store();
    let elsewhere = |app: &str, uids: &[Uid]| s.online_elsewhere("other", app, uids).unwrap();
    s.presence_begin("n1").unwrap();
    s.presence_add("n1", APP, &[1, 2]).unwrap();
    s.presence_add("n1", OTHER_APP, &[1]).unwrap();
    s.presence_add("n1", APP, &[]).unwrap();
    s.presence_add("n1", APP, &[3]).unwrap();
    s.presence_commit("n1", 4, 30).unwrap();
    assert_eq!(elsewhere(APP, &[1, 2, 3, 4]), [true, true, true, false]);
    assert_eq!(elsewhere(OTHER_APP, &[1, 2]), [true, false]);
    // Not its own: a process asks only about the others.
    assert_eq!(s.online_elsewhere("n1", APP, &[1]).unwrap(), [false]);
    // The next refresh: while it fills, readers see the last one.
    s.presence_begin("n1").unwrap();
    s.presence_add("n1", APP, &[4]).unwrap();
    assert_eq!(elsewhere(APP, &[1, 4]), [true, false]);
    s.presence_commit("n1", 1, 30).unwrap();
    assert_eq!(elsewhere(APP, &[1, 2, 3, 4]), [false, false, false, true]);
    assert_eq!(elsewhere(OTHER_APP, &[1]), [false]);
    s.presence_begin("n1").unwrap();
    s.presence_commit("n1", 0, 30).unwrap();
    assert_eq!(elsewhere(APP, &[4]), [false]);
}

/// A Redis group send is appended member by member; a send that died part
/// way left the sender's claim, and the message with the members it
/// reached. Here the first try reached members 1 and 2 of 4 (an
/// append_once to those two leaves exactly that state), and the retry
/// completes the other two only. An embedded group send is one log record,
/// so it is never half done.
#[test]
fn redis_a_retry_completes_a_group_send_that_died_part_way() {
    let b = Backend::new(Kind::Redis);
    let s = b.store();
    users(s, APP, 4);
    let g = s.create_group(APP, 1, "g", &[1, 2, 3, 4], 0).unwrap();
    s.append(APP, &[4], &single(2, 4, "before")).unwrap();
    let m = group_msg(1, g, "all");
    assert_eq!(
        s.append_once(APP, &[1, 2], &m, &once("g1")).unwrap(),
        [Some(1), Some(1)]
    );
    assert_eq!(
        s.append_once(APP, &[1, 2, 3, 4], &m, &once("g1")).unwrap(),
        [None, None, Some(1), Some(2)]
    );
    assert_eq!(
        s.append_once(APP, &[1, 2, 3, 4], &m, &once("g1")).unwrap(),
        [None, None, None, None]
    );
    let inboxes: Vec<_> = (1..=4).map(|u| inbox(s, APP, u)).collect();
    let all = |id| (vec![(id, "all".to_string())], id);
    assert_eq!(inboxes[..3], [all(1), all(1), all(1)]);
    assert_eq!(
        inboxes[3],
        (vec![(1, "before".into()), (2, "all".into())], 2)
    );
}

// ---- quotas, lost writes, bulk users ----

fn the_token_quota_revokes_the_oldest(kind: Kind) {
    let mut b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 2);
    // Made once: a token made again a second later expires a second later,
    // and would not equal the one stored.
    let tokens = [1, 2].map(|uid| token(APP, uid, "00112233445566778899aabbccddeeff"));
    let t = |uid: Uid| tokens[uid as usize - 1].clone();
    for sel in ["a1", "a2"] {
        assert!(s.put_token(sel, &t(1), 2).unwrap().is_empty());
    }
    assert!(s.put_token("b1", &t(2), 2).unwrap().is_empty());
    assert_eq!(s.put_token("a3", &t(1), 2).unwrap(), ["a1"]);
    assert_eq!(s.get_token("a1").unwrap(), None);
    assert_eq!(
        s.get_token("b1").unwrap(),
        Some(t(2)),
        "another user's quota"
    );
    // A deleted token no longer counts.
    s.delete_token(APP, 1, "a2").unwrap();
    assert!(s.put_token("a4", &t(1), 2).unwrap().is_empty());
    // The order survives a restart: a3 is the oldest left.
    b.restart();
    let s = b.store();
    assert_eq!(s.put_token("a5", &t(1), 2).unwrap(), ["a3"]);
    for (sel, live) in [("a3", false), ("a4", true), ("a5", true)] {
        assert_eq!(s.get_token(sel).unwrap().is_some(), live, "{sel}");
    }
    // 0: no limit.
    assert!(s.put_token("a6", &t(1), 0).unwrap().is_empty());
}

fn the_group_quota_counts_per_owner(kind: Kind) {
    let mut b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 2);
    assert_eq!(s.create_group(APP, 1, "g1", &[1, 2], 2).unwrap(), 1);
    assert_eq!(s.create_group(APP, 1, "g2", &[1], 2).unwrap(), 2);
    assert!(matches!(
        s.create_group(APP, 1, "g3", &[1], 2),
        Err(StoreError::TooManyGroups(2))
    ));
    assert_eq!(s.create_group(APP, 2, "h", &[2, 1], 2).unwrap(), 3);
    assert_eq!(s.group_members(APP, 4).unwrap(), None, "the refused group");
    b.restart();
    assert!(matches!(
        b.store().create_group(APP, 1, "g3", &[1], 2),
        Err(StoreError::TooManyGroups(2))
    ));
    assert_eq!(b.store().create_group(APP, 1, "g3", &[1], 3).unwrap(), 4);
}

fn a_reader_ahead_of_the_counter_moves_the_inbox_to_a_new_epoch(kind: Kind) {
    let mut b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 2);
    s.append(APP, &[2], &single(1, 2, "one")).unwrap();
    let all = Limit::count(10);
    // At or behind the counter: a plain read.
    for from in [1, 2] {
        assert_eq!(s.page(APP, 2, from, all).unwrap().reset, None);
    }
    // A reader that has msgid 4: the counter goes to 4, epoch 1, once.
    let page = s.page(APP, 2, 5, all).unwrap();
    assert_eq!(
        (page.last, page.reset),
        (4, Some(Reset { epoch: 1, found: 1 }))
    );
    assert_eq!(s.page(APP, 2, 5, all).unwrap().reset, None);
    assert_eq!(s.append(APP, &[2], &single(1, 2, "five")).unwrap(), [5]);
    // What is stored shows the hole as a hole.
    let ids: Vec<MsgId> = s
        .page(APP, 2, 1, all)
        .unwrap()
        .msgs
        .iter()
        .map(|m| m.msgid)
        .collect();
    assert_eq!(ids, [1, 5]);
    b.restart();
    let page = b.store().page(APP, 2, 8, all).unwrap();
    assert_eq!(
        (page.last, page.reset),
        (7, Some(Reset { epoch: 2, found: 5 }))
    );
    // Another user's counter is its own.
    assert_eq!(b.store().page(APP, 1, 1, all).unwrap().last, 0);
    // Reads and acks across the holes: msgids 1, 5, then 8.
    let s = b.store();
    assert_eq!(s.append(APP, &[2], &single(1, 2, "eight")).unwrap(), [8]);
    let from = |from| -> Vec<MsgId> {
        let page = s.page(APP, 2, from, all).unwrap();
        page.msgs.iter().map(|m| m.msgid).collect()
    };
    assert_eq!(from(1), [1, 5, 8]);
    assert_eq!(from(2), [5, 8]);
    assert_eq!(from(5), [5, 8]);
    assert_eq!(from(6), [8]);
    assert_eq!(from(8), [8]);
    assert!(from(9).is_empty());
    s.ack(APP, 2, 4).unwrap();
    assert_eq!(from(1), [5, 8]);
    s.ack(APP, 2, 7).unwrap();
    assert_eq!(from(1), [8]);
}

fn bulk_users_are_all_or_nothing(kind: Kind) {
    let b = Backend::new(kind);
    let s = b.store();
    users(s, APP, 1); // name0
    let names = |list: &[&str]| list.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    assert_eq!(
        s.create_users(APP, &names(&["x", "y", "z"]), "!").unwrap(),
        [2, 3, 4]
    );
    assert_eq!(s.find_user(APP, "y").unwrap(), Some((3, "!".into())));
    assert!(matches!(
        s.create_users(APP, &names(&["p", "name0", "q"]), "!"),
        Err(StoreError::UsernameTaken)
    ));
    assert_eq!(s.find_user(APP, "p").unwrap(), None, "nothing of the batch");
    let tokens: Vec<(String, TokenInfo)> = [2, 3]
        .iter()
        .map(|&u| (format!("b{u}"), token(APP, u, "v")))
        .collect();
    s.put_new_tokens(&tokens).unwrap();
    assert_eq!(s.get_token("b3").unwrap(), Some(tokens[1].1.clone()));
    // Listed under their users: the quota counts them.
    assert_eq!(s.put_token("c3", &tokens[1].1, 1).unwrap(), ["b3"]);
}

fn a_live_store_answers_ping(kind: Kind) {
    let b = Backend::new(kind);
    b.store().ping().unwrap();
}
