//! Helpers shared by the fuzz targets: an independent URL-encoder, so that a
//! target can build the form body the server must decode back to what was
//! encoded.

/// Percent-encodes `input` as a form value. Each byte is escaped or left as
/// it is according to the next bit of `choice` (cycling), except the bytes
/// that must be escaped in a form value (`%`, `+`, `&`, and space, which
/// becomes `+` when left "as is").
pub fn form_encode(input: &[u8], choice: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() * 3);
    for (i, &b) in input.iter().enumerate() {
        let escape = choice.is_empty() || choice[(i / 8) % choice.len()] & (1 << (i % 8)) != 0;
        match b {
            b' ' if !escape => out.push(b'+'),
            b'%' | b'+' | b'&' | b' ' => push_escape(&mut out, b),
            _ if escape => push_escape(&mut out, b),
            _ => out.push(b),
        }
    }
    out
}

fn push_escape(out: &mut Vec<u8>, b: u8) {
    // Upper or lower case hex: the decoder must take both.
    let hex = if b & 1 == 0 {
        b"0123456789ABCDEF"
    } else {
        b"0123456789abcdef"
    };
    out.extend_from_slice(&[b'%', hex[usize::from(b >> 4)], hex[usize::from(b & 15)]]);
}
