//! `http::query::field` (and `percent_decode` under it) on arbitrary bytes.
//!
//! Input: byte 0 gives the length of the field name (low 3 bits), which
//! follows (names with `%` or `+` are skipped); the rest is the query. Beyond "no panic" it checks the answer
//! against a plain reference decoder written here from the rules; that a
//! value never decodes to more bytes than it had, and is borrowed from the
//! input when nothing needed decoding; and that encoding any bytes and
//! decoding them gives them back.
#![no_main]

use std::borrow::Cow;

use haoshuo::http::query::{field, percent_decode, BadEscape};
use haoshuo_fuzz::form_encode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [n, ref rest @ ..] = *data else {
        return;
    };
    let n = usize::from(n & 7).min(rest.len());
    let (name, input) = rest.split_at(n);
    // Callers look up plain names ("haoshuo", "uid"); a name holding `%` or
    // `+` is also compared undecoded, which the reference does not model.
    let Ok(name) = std::str::from_utf8(name) else {
        return;
    };
    if name.contains(['%', '+']) {
        return;
    }

    let got = field(input, name);
    assert_eq!(
        got.as_ref().map(|v| v.as_deref()),
        reference_field(input, name.as_bytes())
            .as_ref()
            .map(|v| v.as_deref()),
        "field {name:?} in {:?}",
        String::from_utf8_lossy(input)
    );
    if let Ok(Some(value)) = &got {
        assert!(value.len() <= input.len());
        if let Cow::Borrowed(b) = value {
            let (lo, hi) = (
                input.as_ptr() as usize,
                input.as_ptr() as usize + input.len(),
            );
            let p = b.as_ptr() as usize;
            assert!(
                b.is_empty() || (p >= lo && p + b.len() <= hi),
                "borrowed from elsewhere"
            );
        }
    }

    for plus in [false, true] {
        match percent_decode(input, plus) {
            Some(out) => {
                let escapes = input.iter().filter(|&&b| b == b'%').count();
                assert_eq!(out.len(), input.len() - 2 * escapes, "one byte per escape");
                if matches!(out, Cow::Borrowed(_)) {
                    assert_eq!(&*out, input);
                }
            }
            None => assert!(input.contains(&b'%')),
        }
    }

    // Whatever bytes, escaped any way, come back as they were.
    let encoded = form_encode(input, rest);
    assert_eq!(percent_decode(&encoded, true).as_deref(), Some(input));
    let mut q = b"x=1&".to_vec();
    q.extend_from_slice(&form_encode(name.as_bytes(), &[]));
    q.push(b'=');
    q.extend_from_slice(&encoded);
    q.extend_from_slice(b"&");
    q.extend_from_slice(&q.clone());
    if !name.is_empty() && name != "x" {
        assert_eq!(
            field(&q, name).map(|v| v.map(Cow::into_owned)),
            Ok(Some(input.to_vec()))
        );
    }
});

/// The rules, written out plainly: `&`-separated segments, empty ones
/// skipped; name up to the first `=`; `+` is a space; `%XX` is a byte; the
/// first segment whose decoded name matches wins, and only its value's
/// escapes are checked.
fn reference_field(input: &[u8], name: &[u8]) -> Result<Option<Vec<u8>>, BadEscape> {
    for seg in input.split(|&b| b == b'&') {
        if seg.is_empty() {
            continue;
        }
        let (raw_name, raw_value) = match seg.iter().position(|&b| b == b'=') {
            Some(eq) => (&seg[..eq], &seg[eq + 1..]),
            None => (seg, &seg[seg.len()..]),
        };
        if reference_decode(raw_name).as_deref() == Some(name) {
            return reference_decode(raw_value).map(Some).ok_or(BadEscape);
        }
    }
    Ok(None)
}

fn reference_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}
