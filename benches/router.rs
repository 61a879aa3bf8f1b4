//! Fan-out in the router (`Router::publish`): one group message to 10,000
//! subscribers spread over 2 reactors, sockets excluded. This is the work a
//! worker does after committing a message and before any reactor writes a
//! byte: a shard lock and hash lookup per receiver, grouping the deliveries
//! per core, one shared `LiveMsg`, and one bounded-channel send plus wake per
//! core. It bounds how fast a big group hears a message. The timed loop also
//! drains both inboxes (as the reactors would) so the channel never fills and
//! no delivery is dropped as "lagged". Throughput is deliveries.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_channel::Receiver;
use haoshuo::bus::{ConnRef, CoreMsg};
use haoshuo::net::mailbox::Mailbox;
use haoshuo::router::{Router, SubKey};
use haoshuo::store::{MsgId, NewMessage, Uid, DATATYPE_GROUP};

const SUBSCRIBERS: u64 = 10_000;
const CORES: usize = 2;

fn bench_publish(c: &mut Criterion) {
    // The polls own the wakers' registrations: keep them alive throughout.
    let mut polls = Vec::new();
    let mut boxes = Vec::new();
    let mut inboxes: Vec<Receiver<CoreMsg>> = Vec::new();
    for _ in 0..CORES {
        let poll = mio::Poll::new().expect("poll");
        let waker = mio::Waker::new(poll.registry(), mio::Token(1)).expect("waker");
        let (mailbox, inbox) = Mailbox::new(waker);
        polls.push(poll);
        boxes.push(mailbox);
        inboxes.push(inbox);
    }
    let router = Router::new(boxes, 16, 1_000_000);
    let app = router.app_key("bench");
    for uid in 1..=SUBSCRIBERS {
        let core = ((uid - 1) % CORES as u64) as u16;
        let sub = SubKey {
            core,
            conn: ConnRef {
                slot: uid as u32,
                gen: 1,
            },
        };
        router.subscribe(app, uid, sub, 1).expect("subscribe");
    }
    let receivers: Vec<(Uid, MsgId)> = (1..=SUBSCRIBERS).map(|uid| (uid, 1_000 + uid)).collect();
    let msg = NewMessage {
        fromid: 1,
        toid: 7,
        datatype: DATATYPE_GROUP,
        content: Arc::from("hello \"group\", 好说"),
    };

    // Sanity check: one publish reaches every subscriber, batched per core.
    router.publish(app, &receivers, &msg);
    let mut delivered = 0;
    for inbox in &inboxes {
        for m in inbox.try_iter() {
            if let CoreMsg::Deliver { to, .. } = m {
                delivered += to.len() as u64;
            }
        }
    }
    assert_eq!(delivered, SUBSCRIBERS);

    let mut g = c.benchmark_group("router");
    g.throughput(Throughput::Elements(SUBSCRIBERS));
    g.bench_function("publish_10k_subs_2_cores", |b| {
        b.iter(|| {
            router.publish(app, &receivers, &msg);
            for (core, inbox) in inboxes.iter().enumerate() {
                // What a reactor does before draining: the next publish
                // wakes it again, as in the server.
                router.mailbox(core as u16).clear_notified();
                for m in inbox.try_iter() {
                    drop(m);
                }
            }
        });
    });
    g.finish();
    assert!(!router.mailbox(0).take_lagged() && !router.mailbox(1).take_lagged());
    drop(polls);
}

criterion_group!(benches, bench_publish);
criterion_main!(benches);
