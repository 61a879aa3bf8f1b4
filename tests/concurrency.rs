//! "Not lost, not duplicated, in order" under concurrency: several sender
//! threads send at once while the receiver's stream is repeatedly dropped
//! and resumed at `seq = last seen + 1`; and concurrent group senders
//! fanning out to several live members, also to a group wider than what a
//! reactor writes in one turn. Every receiver must see msgids 1..=N exactly
//! once, and each sender's messages in its send order.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

common::backend_tests!(
    senders_and_a_resuming_receiver,
    concurrent_group_senders,
    a_fan_out_wider_than_a_slice_is_whole_and_in_order,
);

/// Longest wait for the next frame while senders are busy.
const FRAME_WAIT: Duration = Duration::from_secs(15);
/// Longest the whole delivery may take.
const TOTAL_WAIT: Duration = Duration::from_secs(120);

/// Runs `per_sender` sends for each of `senders` on its own thread;
/// message `k` of sender `i` has content `"i:k"` and goes through `send`.
fn spawn_senders<F>(senders: &[User], per_sender: usize, send: F) -> Vec<thread::JoinHandle<()>>
where
    F: Fn(&User, &str) + Clone + Send + 'static,
{
    senders
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, user)| {
            let send = send.clone();
            thread::spawn(move || {
                for k in 0..per_sender {
                    send(&user, &format!("{i}:{k}"));
                }
            })
        })
        .collect()
}

fn join_all(handles: Vec<thread::JoinHandle<()>>) {
    for h in handles {
        h.join().expect("a sender thread failed");
    }
}

/// Checks an inbox seen in full: msgids exactly 1..=len, and for each
/// sender `i` the contents `"i:0"`, `"i:1"`, ... in order and from its uid.
fn check_inbox(msgs: &[Msg], senders: &[User], per_sender: usize) {
    let msgids: Vec<u64> = msgs.iter().map(|m| m.msgid).collect();
    let expected: Vec<u64> = (1..=(senders.len() * per_sender) as u64).collect();
    assert_eq!(msgids, expected, "msgids must be exactly 1..=N, once each");
    for (i, sender) in senders.iter().enumerate() {
        let seqs: Vec<usize> = msgs
            .iter()
            .filter(|m| m.fromid == sender.uid)
            .map(|m| {
                let (who, k) = m.content.split_once(':').expect("content i:k");
                assert_eq!(who, i.to_string(), "content {m:?} from the wrong uid");
                k.parse().expect("sequence number")
            })
            .collect();
        assert_eq!(
            seqs,
            (0..per_sender).collect::<Vec<_>>(),
            "sender {i}'s messages lost, repeated or out of order"
        );
    }
}

fn senders_and_a_resuming_receiver(backend: Backend) {
    const SENDERS: usize = 4;
    const PER_SENDER: usize = 200;
    const RESUME_EVERY: usize = 100;
    let total = SENDERS * PER_SENDER;

    let srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let receiver = api.user("a", "receiver");
    let senders: Vec<User> = (0..SENDERS)
        .map(|i| api.user("a", &format!("sender{i}")))
        .collect();

    let to = receiver.uid;
    let handles = spawn_senders(&senders, PER_SENDER, move |user, content| {
        api.send(user, to, content)
    });

    let deadline = Instant::now() + TOTAL_WAIT;
    let mut received: Vec<Msg> = Vec::with_capacity(total);
    let mut stream = api.stream(&receiver, 1);
    let mut on_this_stream = 0;
    let mut resumes = 0;
    while received.len() < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total} messages after {TOTAL_WAIT:?}",
            received.len()
        );
        let msgs = stream.next_msgs(FRAME_WAIT).unwrap_or_else(|| {
            panic!(
                "no message for {FRAME_WAIT:?} after {} of {total}",
                received.len()
            )
        });
        for m in msgs {
            assert_eq!(
                m.msgid,
                received.len() as u64 + 1,
                "a msgid was skipped or repeated across a resume"
            );
            received.push(m);
            on_this_stream += 1;
        }
        if on_this_stream >= RESUME_EVERY && received.len() < total {
            // Drop the connection and resume where we are.
            drop(stream);
            stream = api.stream(&receiver, received.len() as u64 + 1);
            on_this_stream = 0;
            resumes += 1;
        }
    }
    join_all(handles);
    assert!(resumes >= 3, "the receiver resumed only {resumes} times");
    check_inbox(&received, &senders, PER_SENDER);
    stream.expect_quiet(QUIET);

    // The stored inbox agrees with what was streamed.
    let mut pulled = Vec::new();
    loop {
        let page = api.pull(&receiver);
        if page.msgs.is_empty() {
            break;
        }
        api.ack(&receiver, page.endid);
        pulled.extend(page.msgs);
    }
    assert_eq!(pulled, received, "pull disagrees with the stream");
}

fn concurrent_group_senders(backend: Backend) {
    const SENDERS: usize = 3;
    const PER_SENDER: usize = 50;
    let total = SENDERS * PER_SENDER;

    let srv = Server::start(backend, Opts::default());
    let api = srv.api();
    let senders: Vec<User> = (0..SENDERS)
        .map(|i| api.user("a", &format!("sender{i}")))
        .collect();
    let listener = api.user("a", "listener");
    let uids: Vec<u64> = senders[1..]
        .iter()
        .chain([&listener])
        .map(|u| u.uid)
        .collect();
    let gid = api.group(&senders[0], "busy", &uids);

    // Every member (senders included) listens from the start.
    let members: Vec<User> = senders.iter().chain([&listener]).cloned().collect();
    let mut streams: Vec<StreamClient> = members.iter().map(|m| api.stream(m, 1)).collect();

    let handles = spawn_senders(&senders, PER_SENDER, move |user, content| {
        api.gsend(user, gid, content)
    });
    for (member, stream) in members.iter().zip(&mut streams) {
        let got = stream.collect(total, TOTAL_WAIT);
        assert!(
            got.iter().all(|m| m.datatype == 2 && m.toid == gid),
            "{}: a non-group message",
            member.name
        );
        check_inbox(&got, &senders, PER_SENDER);
    }
    join_all(handles);
}

/// A group of 3,000 streaming members: more than a reactor writes in one
/// loop turn (1,024 connections, src/net/reactor/deliver.rs) on each of the
/// two reactors, so messages that arrive while one is being written are
/// merged into the remaining turns. Three senders post back to back.
fn a_fan_out_wider_than_a_slice_is_whole_and_in_order(backend: Backend) {
    const MEMBERS: usize = 3000;
    const SENDERS: usize = 3;
    const PER_SENDER: usize = 10;
    const READERS: usize = 6;
    let total = SENDERS * PER_SENDER;
    let srv = Server::start(
        backend,
        Opts::default().threads(2).admin("").flag("--send-rate", 0),
    );
    let api = srv.api();
    // In batches: each is one request, answered within the tests' wait.
    let members: Vec<User> = (0..MEMBERS / 500)
        .flat_map(|b| {
            let body = serde_json::json!({"appid": "a", "prefix": format!("m{b}-"), "count": 500});
            provisioned_users(provision(&srv, None, &body), "a")
        })
        .collect();
    let uids: Vec<u64> = members[1..].iter().map(|u| u.uid).collect();
    let gid = api.group(&members[0], "wide", &uids);
    let streams: Vec<StreamClient> = members.iter().map(|m| api.stream(m, 1)).collect();

    let senders = members[..SENDERS].to_vec();
    let handles = spawn_senders(&senders, PER_SENDER, move |user, content| {
        api.gsend(user, gid, content)
    });
    let mut readers = Vec::new();
    let mut streams = streams.into_iter();
    for _ in 0..READERS {
        let mine: Vec<StreamClient> = streams.by_ref().take(MEMBERS / READERS).collect();
        let senders = senders.clone();
        readers.push(thread::spawn(move || {
            for mut stream in mine {
                check_inbox(&stream.collect(total, TOTAL_WAIT), &senders, PER_SENDER);
            }
        }));
    }
    join_all(handles);
    join_all(readers);
}
