//! Decoding API request bodies into typed field lookups. Every POST endpoint
//! takes one JSON object, sent either as the URL-encoded value of the form
//! field `haoshuo` or as a raw `application/json` body; this module owns
//! turning either shape into [`Fields`] and the lenient typing rules (numbers
//! may be JSON numbers or numeric strings, and vice versa). It must not know
//! endpoints, check permissions, or touch sockets; every error is a 400.

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::http::query;
use crate::http::request::Body;

/// Name of the form field carrying the URL-encoded JSON object.
pub const FORM_FIELD: &str = "haoshuo";

/// Why a request body could not be decoded; `Display` is the client message.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty request body")]
    EmptyBody,
    #[error("missing form field 'haoshuo'")]
    MissingFormField,
    #[error("bad percent escape in form body")]
    BadEscape,
    #[error("body is not valid JSON: {0}")]
    BadJson(#[source] serde_json::Error),
    #[error("body is not a JSON object")]
    NotObject,
    #[error("body must be a form with field 'haoshuo' or a JSON object")]
    UnknownBody,
    #[error(
        "missing form field 'haoshuo': a raw JSON body needs \
         'Content-Type: application/json' (curl: -H 'Content-Type: application/json')"
    )]
    JsonAsForm,
    #[error("missing field '{0}'")]
    Missing(String),
    #[error("field '{0}' must be a string or number")]
    NotString(String),
    #[error("field '{0}' must be a non-negative integer")]
    NotU64(String),
    #[error("field '{0}' must be a list of non-negative integers")]
    NotU64List(String),
}

impl CodecError {
    /// The HTTP status to answer with: a body we cannot decode is always the
    /// client's fault.
    pub fn status(&self) -> u16 {
        400
    }

    /// Clear reason for the JSON error body, e.g. `missing field 'appid'`.
    pub fn msg(&self) -> String {
        self.to_string()
    }
}

/// The decoded top-level JSON object of a request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fields(Map<String, Value>);

/// Decodes a request body of the given kind into its JSON object.
///
/// `Body::Other` (missing or unexpected `Content-Type`) is sniffed: JSON if
/// the first non-whitespace byte is `{`, otherwise a form with `haoshuo`.
pub fn decode_body(body: &[u8], kind: Body) -> Result<Fields, CodecError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(CodecError::EmptyBody);
    }
    match kind {
        // `curl -d '{...}'` says form but sends JSON: name the fix.
        Body::Form => decode_form(trimmed).map_err(|e| match e {
            CodecError::MissingFormField if trimmed.starts_with(b"{") => CodecError::JsonAsForm,
            e => e,
        }),
        Body::Json => decode_json(trimmed),
        Body::Other if trimmed.starts_with(b"{") => decode_json(trimmed),
        Body::Other => decode_form(trimmed).map_err(|e| match e {
            CodecError::MissingFormField => CodecError::UnknownBody,
            e => e,
        }),
    }
}

fn decode_form(body: &[u8]) -> Result<Fields, CodecError> {
    let json = query::field(body, FORM_FIELD)
        .map_err(|_| CodecError::BadEscape)?
        .ok_or(CodecError::MissingFormField)?;
    decode_json(&json)
}

fn decode_json(body: &[u8]) -> Result<Fields, CodecError> {
    match serde_json::from_slice(body).map_err(CodecError::BadJson)? {
        Value::Object(map) => Ok(Fields(map)),
        _ => Err(CodecError::NotObject),
    }
}

impl From<Map<String, Value>> for Fields {
    fn from(map: Map<String, Value>) -> Self {
        Fields(map)
    }
}

impl Fields {
    /// The raw value, treating JSON `null` as absent.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// Required string; a JSON number is accepted and rendered in decimal, so
    /// `"username":"2"` and `"username":2` both give `"2"`.
    pub fn str(&self, name: &str) -> Result<Cow<'_, str>, CodecError> {
        self.opt_str(name)?
            .ok_or_else(|| CodecError::Missing(name.to_owned()))
    }

    /// Like [`Fields::str`], but absent or `null` is `None`.
    pub fn opt_str(&self, name: &str) -> Result<Option<Cow<'_, str>>, CodecError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(Cow::Borrowed(s))),
            Some(Value::Number(n)) => Ok(Some(Cow::Owned(n.to_string()))),
            Some(_) => Err(CodecError::NotString(name.to_owned())),
        }
    }

    /// Required non-negative integer: a JSON number (`12`, or `12.0`) or a
    /// string of ASCII digits (`"12"`). Negatives, fractions, other strings
    /// and values above `u64::MAX` are rejected.
    pub fn u64(&self, name: &str) -> Result<u64, CodecError> {
        self.opt_u64(name)?
            .ok_or_else(|| CodecError::Missing(name.to_owned()))
    }

    /// Like [`Fields::u64`], but absent or `null` is `None`.
    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>, CodecError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => value_u64(v)
                .map(Some)
                .ok_or_else(|| CodecError::NotU64(name.to_owned())),
        }
    }

    /// Required list of non-negative integers: a JSON array of numbers or
    /// numeric strings, or one string of comma-separated integers
    /// (`"1, 2,3"`; `""` is the empty list). A single integer is a list of one.
    pub fn u64_list(&self, name: &str) -> Result<Vec<u64>, CodecError> {
        let bad = || CodecError::NotU64List(name.to_owned());
        match self.get(name) {
            None => Err(CodecError::Missing(name.to_owned())),
            Some(Value::Array(items)) => {
                items.iter().map(|v| value_u64(v).ok_or_else(bad)).collect()
            }
            Some(Value::String(s)) if s.trim().is_empty() => Ok(Vec::new()),
            Some(Value::String(s)) => s
                .split(',')
                .map(|part| str_u64(part.trim()).ok_or_else(bad))
                .collect(),
            Some(v) => value_u64(v).map(|n| vec![n]).ok_or_else(bad),
        }
    }
}

fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            // Integral floats such as 12.0; 2^64 itself is out of range.
            let f = n.as_f64()?;
            (f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0).then_some(f as u64)
        }),
        Value::String(s) => str_u64(s),
        _ => None,
    }
}

/// ASCII digits only (no sign, spaces or `0x`); overflow is `None`.
fn str_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &[u8], kind: Body) -> Fields {
        decode_body(body, kind)
            .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(body)))
    }

    #[test]
    fn decodes_bodies() {
        let cases: &[(&[u8], Body, &str, &str)] = &[
            // (body, kind, field, expected string value)
            (
                b"haoshuo=%7B%22msg%22%3A%22a+b%22%7D",
                Body::Form,
                "msg",
                "a b",
            ),
            (
                b"haoshuo=%7B%22msg%22%3A%22a%2Bb%22%7D",
                Body::Form,
                "msg",
                "a+b",
            ),
            (b"haoshuo={\"msg\":\"x%20y\"}", Body::Form, "msg", "x y"),
            (
                "haoshuo=%7B%22msg%22%3A%22%E4%BD%A0%E5%A5%BD%22%7D".as_bytes(),
                Body::Form,
                "msg",
                "你好",
            ),
            (
                b"appid=1&t=2&haoshuo=%7B%22appid%22%3A5%7D",
                Body::Form,
                "appid",
                "5",
            ),
            (
                b"haoshuo=%7B%22a%22%3A%221%22%7D&haoshuo=x",
                Body::Form,
                "a",
                "1",
            ),
            (b"haoshuo=%7B%22a%22%3A%22v%22%7D\r\n", Body::Form, "a", "v"),
            (b"{\"username\":\"2\"}", Body::Json, "username", "2"),
            (b" \n{\"username\":2}", Body::Json, "username", "2"),
            (b"{\"a\":\"+%20\"}", Body::Json, "a", "+%20"),
            (b"  {\"a\":\"j\"}", Body::Other, "a", "j"),
            (b"haoshuo=%7B%22a%22%3A%22f%22%7D", Body::Other, "a", "f"),
            (
                b"x=1&haoshuo=%7B%22a%22%3A%22f%22%7D",
                Body::Other,
                "a",
                "f",
            ),
        ];
        for &(body, kind, name, want) in cases {
            let f = ok(body, kind);
            assert_eq!(
                f.str(name).unwrap(),
                want,
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn body_errors() {
        let cases: &[(&[u8], Body, &str)] = &[
            (b"", Body::Form, "empty request body"),
            (b"  \r\n", Body::Json, "empty request body"),
            (b"", Body::Other, "empty request body"),
            (b"appid=1", Body::Form, "missing form field 'haoshuo'"),
            (
                br#"{"appid":"a"}"#,
                Body::Form,
                "missing form field 'haoshuo': a raw JSON body needs 'Content-Type: application/json' (curl: -H 'Content-Type: application/json')",
            ),
            (
                b"haoshuo=%7B%ZZ",
                Body::Form,
                "bad percent escape in form body",
            ),
            (
                b"haoshuo=%7",
                Body::Other,
                "bad percent escape in form body",
            ),
            (b"haoshuo=", Body::Form, "body is not valid JSON"),
            (b"haoshuo=%5B1%5D", Body::Form, "body is not a JSON object"),
            (b"[1,2]", Body::Json, "body is not a JSON object"),
            (b"\"str\"", Body::Json, "body is not a JSON object"),
            (b"{\"a\":", Body::Json, "body is not valid JSON"),
            (b"haoshuo=%7B%7D", Body::Json, "body is not valid JSON"),
            (b"hello", Body::Other, "body must be a form"),
            (b"[1]", Body::Other, "body must be a form"),
        ];
        for &(body, kind, want) in cases {
            let err = decode_body(body, kind).expect_err(&String::from_utf8_lossy(body));
            assert!(
                err.msg().starts_with(want),
                "{:?}: {}",
                String::from_utf8_lossy(body),
                err
            );
            assert_eq!(err.status(), 400);
        }
        // Only a body that looks like JSON gets the hint about its type.
        assert_eq!(
            decode_body(b"appid=1", Body::Form).unwrap_err().msg(),
            "missing form field 'haoshuo'"
        );
    }

    fn fields() -> Fields {
        ok(
            br#"{"appid":"12","toid":7,"f":12.0,"neg":-1,"frac":1.5,"big":"18446744073709551616",
                "max":18446744073709551615,"huge":18446744073709551616,"word":"abc","sp":" 1",
                "plus":"+1","empty":"","nul":null,"b":true,"o":{},"name":"li","fl":2.5,
                "uids":[1,"2",3],"csv":"4, 5,6","one":9,"badl":[1,-2],"badcsv":"1,,2",
                "nested":[[1]],"csvsign":"1,+2"}"#,
            Body::Json,
        )
    }

    /// A map taken as `Fields` (as the fuzz target compares) is the same
    /// object the body decodes to.
    #[test]
    fn a_decoded_object_is_its_map() {
        let json = br#"{"appid":"1","uids":[1,2],"nul":null}"#;
        let Value::Object(map) = serde_json::from_slice(json).unwrap() else {
            unreachable!()
        };
        let f = Fields::from(map);
        assert_eq!(f, ok(json, Body::Json));
        assert_eq!(f.u64("appid").unwrap(), 1);
    }

    #[test]
    fn u64_table() {
        let f = fields();
        let cases: &[(&str, Result<Option<u64>, &str>)] = &[
            ("appid", Ok(Some(12))),
            ("toid", Ok(Some(7))),
            ("f", Ok(Some(12))),
            ("max", Ok(Some(u64::MAX))),
            ("missing", Ok(None)),
            ("nul", Ok(None)),
            ("neg", Err("field 'neg' must be a non-negative integer")),
            ("frac", Err("field 'frac' must be a non-negative integer")),
            ("big", Err("field 'big' must be a non-negative integer")),
            ("huge", Err("field 'huge' must be a non-negative integer")),
            ("word", Err("field 'word' must be a non-negative integer")),
            ("sp", Err("field 'sp' must be a non-negative integer")),
            ("plus", Err("field 'plus' must be a non-negative integer")),
            ("empty", Err("field 'empty' must be a non-negative integer")),
            ("b", Err("field 'b' must be a non-negative integer")),
            ("o", Err("field 'o' must be a non-negative integer")),
        ];
        for (name, want) in cases {
            let got = f.opt_u64(name).map_err(|e| e.msg());
            assert_eq!(got, want.map_err(str::to_owned), "{name}");
        }
        assert_eq!(f.u64("toid").unwrap(), 7);
        assert_eq!(
            f.u64("missing").unwrap_err().msg(),
            "missing field 'missing'"
        );
        assert_eq!(f.u64("nul").unwrap_err().msg(), "missing field 'nul'");
    }

    #[test]
    fn str_table() {
        let f = fields();
        let cases: &[(&str, Result<Option<&str>, &str>)] = &[
            ("name", Ok(Some("li"))),
            ("appid", Ok(Some("12"))),
            ("toid", Ok(Some("7"))),
            ("fl", Ok(Some("2.5"))),
            ("empty", Ok(Some(""))),
            ("missing", Ok(None)),
            ("nul", Ok(None)),
            ("b", Err("field 'b' must be a string or number")),
            ("o", Err("field 'o' must be a string or number")),
            ("uids", Err("field 'uids' must be a string or number")),
        ];
        for (name, want) in cases {
            let got = f.opt_str(name).map_err(|e| e.msg());
            let got = got.as_ref().map(|o| o.as_deref()).map_err(String::as_str);
            assert_eq!(got, *want, "{name}");
        }
        assert!(matches!(f.str("name").unwrap(), Cow::Borrowed("li")));
        assert_eq!(f.str("appid").unwrap(), "12");
        assert_eq!(f.str("nope").unwrap_err().msg(), "missing field 'nope'");
    }

    #[test]
    fn u64_list_table() {
        let f = fields();
        let cases: &[(&str, Result<&[u64], &str>)] = &[
            ("uids", Ok(&[1, 2, 3])),
            ("csv", Ok(&[4, 5, 6])),
            ("empty", Ok(&[])),
            ("one", Ok(&[9])),
            ("appid", Ok(&[12])),
            (
                "badl",
                Err("field 'badl' must be a list of non-negative integers"),
            ),
            (
                "badcsv",
                Err("field 'badcsv' must be a list of non-negative integers"),
            ),
            (
                "csvsign",
                Err("field 'csvsign' must be a list of non-negative integers"),
            ),
            (
                "nested",
                Err("field 'nested' must be a list of non-negative integers"),
            ),
            (
                "o",
                Err("field 'o' must be a list of non-negative integers"),
            ),
            ("missing", Err("missing field 'missing'")),
        ];
        for (name, want) in cases {
            let got = f.u64_list(name).map_err(|e| e.msg());
            assert_eq!(
                got,
                want.map(<[u64]>::to_vec).map_err(str::to_owned),
                "{name}"
            );
        }
    }
}
