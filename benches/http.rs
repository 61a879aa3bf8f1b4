//! Request-head parsing (`http::request::parse_head`). Every API call and
//! every stream subscription goes through it, and a reactor re-parses a
//! partial head after each read, so its cost per byte bounds how many
//! requests one core can accept. Measured on what curl and wrk send for a
//! form `POST`, on the stream subscription `GET`, and on a worst case of 32
//! headers close to the 8 KiB head limit. Throughput is head bytes parsed.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use haoshuo::http::request::{parse_head, MAX_HEADERS, MAX_HEAD_BYTES};

/// The server's default `--max-body`.
const MAX_BODY: usize = 64 * 1024;

fn typical_post() -> Vec<u8> {
    let body = b"appid=test&token=0123456789abcdef&toid=2&content=hello";
    let mut req = format!(
        "POST /p HTTP/1.1\r\n\
         Host: 127.0.0.1:8080\r\n\
         User-Agent: curl/8.5.0\r\n\
         Accept: */*\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\
         \r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

fn stream_get() -> Vec<u8> {
    let token: String = (0..48)
        .map(|i| b"0123456789abcdef"[i % 16] as char)
        .collect();
    format!(
        "GET /cget/stream?seq=1&cname=42&token={token} HTTP/1.1\r\n\
         Host: 127.0.0.1:8080\r\n\
         User-Agent: curl/8.5.0\r\n\
         Accept: */*\r\n\
         \r\n"
    )
    .into_bytes()
}

/// A request line plus `MAX_HEADERS` headers, padded to just under
/// `MAX_HEAD_BYTES`.
fn worst_case() -> Vec<u8> {
    let line = "POST /p HTTP/1.1\r\n";
    let fixed = [
        "Host: 127.0.0.1:8080".to_string(),
        "Content-Type: application/x-www-form-urlencoded".to_string(),
        "Content-Length: 0".to_string(),
    ];
    let extra = MAX_HEADERS - fixed.len();
    // Each extra header is `X-Pad-NN: ` + value + CRLF; size the values so
    // the whole head ends 64 bytes short of the limit.
    let fixed_len: usize = line.len() + fixed.iter().map(|h| h.len() + 2).sum::<usize>() + 2;
    let budget = MAX_HEAD_BYTES - 64 - fixed_len;
    let per = budget / extra - "X-Pad-00: \r\n".len();
    let mut head = String::from(line);
    for h in &fixed {
        head.push_str(h);
        head.push_str("\r\n");
    }
    for i in 0..extra {
        let value: String = (0..per)
            .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
            .collect();
        head.push_str(&format!("X-Pad-{i:02}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head.into_bytes()
}

fn bench_parse_head(c: &mut Criterion) {
    let cases = [
        ("typical_post", typical_post()),
        ("stream_get", stream_get()),
        ("worst_32_headers", worst_case()),
    ];
    let mut g = c.benchmark_group("parse_head");
    for (name, req) in &cases {
        let head = parse_head(req, MAX_BODY)
            .expect("valid request")
            .expect("complete head");
        assert!(head.head_len <= MAX_HEAD_BYTES);
        g.throughput(Throughput::Bytes(head.head_len as u64));
        g.bench_function(*name, |b| {
            b.iter(|| parse_head(black_box(req), MAX_BODY));
        });
    }
    g.finish();
}

criterion_group!(benches, bench_parse_head);
criterion_main!(benches);
