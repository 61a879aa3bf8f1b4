//! Passwords and login tokens.
//!
//! Passwords are kept only as argon2id PHC strings (salted, slow on purpose).
//! A token is `selector || verifier`, both from the OS's secure random
//! source: the store is keyed by the 64-bit selector and holds the 128-bit
//! verifier, compared in constant time, so lookup timing leaks nothing about
//! the secret.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use subtle::ConstantTimeEq;

/// Hex characters of the selector (64 bits).
pub const SELECTOR_HEX: usize = 16;
/// Hex characters of the verifier (128 bits: the token's secret strength).
pub const VERIFIER_HEX: usize = 32;
/// Hex characters of a whole token.
pub const TOKEN_HEX: usize = SELECTOR_HEX + VERIFIER_HEX;

/// The password hash of a user created without a password (in bulk, by the
/// admin listener): not a PHC string, so no password ever verifies against
/// it and the user can only act through the token it was given.
pub const NO_PASSWORD: &str = "!";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the random source failed: {0}")]
    Random(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Hashes a password with argon2id and a fresh random salt (PHC string).
pub fn hash_password(pass: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| AuthError::Random(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(pass.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Checks a password against a stored PHC string (constant time inside argon2).
pub fn verify_password(pass: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(pass.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A new token, split into (selector, verifier); the client gets both joined.
pub fn new_token() -> Result<(String, String), AuthError> {
    let mut raw = [0u8; TOKEN_HEX / 2];
    getrandom::getrandom(&mut raw).map_err(|e| AuthError::Random(e.to_string()))?;
    let hex = to_hex(&raw);
    let (selector, verifier) = hex.split_at(SELECTOR_HEX);
    Ok((selector.to_owned(), verifier.to_owned()))
}

/// Splits a token as a client sent it; `None` if it cannot be one of ours.
pub fn split_token(token: &str) -> Option<(&str, &str)> {
    if token.len() != TOKEN_HEX {
        return None;
    }
    // Every byte looked at, without a branch per byte: the check vectorizes
    // (an early exit per byte cost a `/p` some 130 ns, benches/api.rs).
    let hex = (token.bytes()).fold(true, |hex, b| hex & b.is_ascii_hexdigit());
    hex.then(|| token.split_at(SELECTOR_HEX))
}

/// A token's selector as a number: what the router keeps to find the
/// subscriptions a logout ends. `selector` is [`SELECTOR_HEX`] hex digits.
pub fn selector_tag(selector: &str) -> u64 {
    u64::from_str_radix(selector, 16).unwrap_or(0)
}

/// Compares a verifier the client sent with the stored one in constant time.
pub fn verifier_matches(sent: &str, stored: &str) -> bool {
    sent.len() == stored.len() && bool::from(sent.as_bytes().ct_eq(stored.as_bytes()))
}

/// `bytes` as lowercase hex digits.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = vec![0; bytes.len() * 2];
    hex_in(bytes, &mut s);
    String::from_utf8(s).expect("hex digits are ASCII")
}

/// `bytes` as lowercase hex digits, written to the start of `out` (at
/// least twice as long).
pub fn hex_in<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let out = &mut out[..bytes.len() * 2];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 15)];
    }
    // Hex digits are ASCII.
    std::str::from_utf8(out).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_round_trip() {
        let phc = hash_password("123").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_password("123", &phc));
        assert!(!verify_password("1234", &phc));
        assert!(!verify_password("123", "not a phc string"));
        assert!(!verify_password("", NO_PASSWORD));
        assert!(!verify_password("!", NO_PASSWORD));
    }

    #[test]
    fn tokens_are_fresh_and_split_back() {
        let (s1, v1) = new_token().unwrap();
        let (s2, v2) = new_token().unwrap();
        assert_ne!((&s1, &v1), (&s2, &v2));
        let joined = format!("{s1}{v1}");
        assert_eq!(joined.len(), TOKEN_HEX);
        assert_eq!(split_token(&joined), Some((s1.as_str(), v1.as_str())));
        assert!(verifier_matches(&v1, &v1));
        assert!(!verifier_matches(&v1, &v2));
    }

    /// The router ends the subscriptions of a logged-out token by this
    /// number: one token's must not match another's.
    #[test]
    fn selector_tags_are_the_selectors_value() {
        let cases: &[(&str, u64)] = &[
            ("0000000000000000", 0),
            ("0000000000000001", 1),
            ("00000000000000ff", 255),
            ("0123456789abcdef", 0x0123_4567_89ab_cdef),
            ("ffffffffffffffff", u64::MAX),
        ];
        for &(selector, want) in cases {
            assert_eq!(selector_tag(selector), want, "{selector}");
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "abc",
            &"g".repeat(TOKEN_HEX),
            &"a".repeat(TOKEN_HEX + 1),
            &format!("{}g", "a".repeat(TOKEN_HEX - 1)),
            // The right length in bytes, not hex (nor split on a char).
            &"é".repeat(TOKEN_HEX / 2),
        ] {
            assert_eq!(split_token(bad), None, "{bad:?}");
        }
    }
}
