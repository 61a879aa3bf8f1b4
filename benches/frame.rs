//! Stream frame encoding. Each message a subscriber receives is written as a
//! JSON data frame (its content escaped twice) wrapped in a chunked-coding
//! chunk, so this is per-delivery CPU on the reactor's hot path: batch frames
//! of 1, 10 and 100 stored messages (backfill and polls), the live path that
//! escapes a message once and formats only a small per-receiver suffix, and
//! the chunk header and copying chunk framing around each payload.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use haoshuo::delivery::frame::{data_frame, LiveMsg, LiveSuffix, DATA_OPEN};
use haoshuo::http::chunked::{push_chunk, ChunkHeader, CHUNK_TRAILER};
use haoshuo::store::{Message, NewMessage, DATATYPE_SINGLE};

/// About 40 bytes, with a quote (escaped twice in a frame) and non-ASCII text.
const CONTENT: &str = "hello \"world\", see you at 8pm 好说 ok!";

fn messages(n: u64) -> Vec<Message> {
    let content: Arc<str> = Arc::from(CONTENT);
    (1..=n)
        .map(|i| Message {
            msgid: 1_000_000 + i,
            fromid: 12_345,
            toid: 67_890,
            datatype: DATATYPE_SINGLE,
            content: content.clone(),
        })
        .collect()
}

fn bench_data_frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("data_frame");
    let mut out = Vec::with_capacity(64 * 1024);
    for n in [1u64, 10, 100] {
        let msgs = messages(n);
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::from_parameter(n), &msgs, |b, msgs| {
            b.iter(|| {
                out.clear();
                data_frame(&mut out, black_box(msgs), 67_890);
                black_box(out.len())
            });
        });
    }
    g.finish();
}

fn bench_live(c: &mut Criterion) {
    let new = NewMessage {
        fromid: 12_345,
        toid: 67_890,
        datatype: DATATYPE_SINGLE,
        content: Arc::from(CONTENT),
    };
    let mut g = c.benchmark_group("live");
    g.throughput(Throughput::Elements(1));
    // Once per published message, shared by every receiver.
    g.bench_function("LiveMsg::new", |b| {
        b.iter(|| LiveMsg::new(black_box(&new)));
    });
    // Once per receiver: the suffix, and the whole frame assembled from the
    // shared parts (what a reactor writes for one subscriber).
    g.bench_function("LiveSuffix::new", |b| {
        b.iter(|| LiveSuffix::new(black_box(1_000_001), black_box(67_890)));
    });
    let live = LiveMsg::new(&new);
    let mut out = Vec::with_capacity(1024);
    g.bench_function("per_receiver_frame", |b| {
        b.iter(|| {
            out.clear();
            let suffix = LiveSuffix::new(black_box(1_000_001), black_box(67_890));
            out.extend_from_slice(DATA_OPEN);
            out.extend_from_slice(live.prefix());
            out.extend_from_slice(suffix.as_bytes());
            black_box(out.len())
        });
    });
    g.finish();
}

fn bench_chunk(c: &mut Criterion) {
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ChunkHeader", |b| {
        b.iter(|| {
            let h = ChunkHeader::new(black_box(4096));
            black_box(h.as_bytes().len())
        });
    });
    let mut out = Vec::with_capacity(8 * 1024);
    for size in [64usize, 4096] {
        let payload = vec![b'x'; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("push_chunk", size), &payload, |b, p| {
            b.iter(|| {
                out.clear();
                push_chunk(&mut out, black_box(p));
                black_box(out.len())
            });
        });
        debug_assert!(out.ends_with(CHUNK_TRAILER));
    }
    g.finish();
}

criterion_group!(benches, bench_data_frame, bench_live, bench_chunk);
criterion_main!(benches);
