//! `http::request::parse_head` on arbitrary bytes.
//!
//! Input: byte 0 picks `max_body`, byte 1 picks a cut point, the rest is the
//! buffer. Beyond "no panic" it checks that every offset stays inside the
//! input, that the result depends only on the head's own bytes (appending or
//! dropping bytes after a complete head changes nothing), and that the answer
//! does not depend on how the bytes were split across reads: a prefix is
//! either "need more" or the same answer as the whole.
#![no_main]

use haoshuo::http::request::{parse_head, HttpError, MAX_HEAD_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [sel, cut, ref buf @ ..] = *data else {
        return;
    };
    let max_body = match sel % 4 {
        0 => 0,
        1 => 65536,
        2 => usize::MAX,
        _ => usize::from(sel) * 3,
    };
    let got = parse_head(buf, max_body);
    match got {
        Ok(Some(h)) => {
            assert!(h.head_len > 0 && h.head_len <= buf.len(), "head_len {h:?}");
            assert!(h.head_len <= MAX_HEAD_BYTES, "head over the limit {h:?}");
            assert_eq!(buf[h.head_len - 1], b'\n', "head ends in a newline");
            let (path, query) = (h.path.range(), h.query.range());
            assert!(path.start < path.end && path.end <= h.head_len, "{h:?}");
            assert!(query.start <= query.end && query.end <= h.head_len, "{h:?}");
            let p = h.path(buf);
            assert_eq!(p[0], b'/');
            assert!(!p.contains(&b'?'), "path holds the query");
            if query.start == path.end {
                assert!(query.is_empty(), "query without '?'");
            } else {
                assert_eq!(query.start, path.end + 1);
                assert_eq!(buf[path.end], b'?');
            }
            for &b in buf[path.start..query.end].iter() {
                assert!(!matches!(b, b' ' | b'\r' | b'\n'), "target byte {b:#x}");
            }
            assert!(h.content_length <= max_body);
            assert!(!(h.expect_continue && h.http10));
            // Only the head's bytes count: without what follows, or with
            // more appended, the answer is the same.
            assert_eq!(parse_head(&buf[..h.head_len], max_body), Ok(Some(h)));
            let mut more = buf.to_vec();
            more.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
            more.extend_from_slice(buf);
            assert_eq!(parse_head(&more, max_body), Ok(Some(h)));
            // Every strict prefix of the head is incomplete: a request split
            // across reads must not be refused halfway.
            let k = usize::from(cut) * h.head_len / 256;
            assert_eq!(parse_head(&buf[..k], max_body), Ok(None), "prefix {k}");
            assert_eq!(parse_head(&buf[..h.head_len - 1], max_body), Ok(None));
        }
        Ok(None) => {
            assert!(buf.len() <= MAX_HEAD_BYTES, "waiting beyond the limit");
            let k = usize::from(cut) * buf.len() / 256;
            assert_eq!(parse_head(&buf[..k], max_body), Ok(None), "prefix {k}");
        }
        Err(e) => {
            assert!(!e.reason().is_empty());
            assert!((400..=505).contains(&e.status()));
            // A prefix is "need more" or already a refusal, the same one
            // except that a version is judged on the bytes so far: `HTTP/2`
            // is 505 until more bytes show it is garbage (400).
            let k = usize::from(cut) * buf.len() / 256;
            match parse_head(&buf[..k], max_body) {
                Ok(None) => {}
                Err(e2) if [e2.status(), e.status()] == [505, 400] => {}
                Err(e2) => assert_eq!(e2.status(), e.status(), "prefix {k}: {e2:?} vs {e:?}"),
                Ok(Some(h)) => panic!("prefix {k} complete ({h:?}) but whole refused: {e:?}"),
            }
            if e == HttpError::VersionNotSupported {
                // 505 only for `METHOD SP TARGET SP HTTP/...`: a line with
                // more parts is malformed (400) whatever it ends with.
                let line = buf.iter().skip_while(|&&b| b == b'\r' || b == b'\n');
                let line = line.take_while(|&&b| b != b'\r' && b != b'\n');
                assert_eq!(
                    line.filter(|&&b| b == b' ').count(),
                    2,
                    "505 for a bad line"
                );
            }
            if matches!(e, HttpError::HeadTooLarge | HttpError::LineTooLong) {
                assert!(buf.len() > MAX_HEAD_BYTES, "{e:?} within the limit");
            }
        }
    }
});
