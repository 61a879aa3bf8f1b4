//! Decoding API request bodies into typed field lookups. Every POST endpoint
//! takes one JSON object, sent either as the URL-encoded value of the form
//! field `haoshuo` or as a raw `application/json` body; this module owns
//! turning either shape into [`Fields`] and the lenient typing rules (numbers
//! may be JSON numbers or numeric strings, and vice versa). It must not know
//! endpoints, check permissions, or touch sockets; every error is a 400.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::http::query;
use crate::http::request::Body;

/// Name of the form field carrying the URL-encoded JSON object.
pub const FORM_FIELD: &str = "haoshuo";

/// The top-level fields some endpoint reads (docs/API.md). Every other key
/// of a body is still parsed, so a malformed body is refused as before, but
/// not kept: a name outside this list always reads as absent, so an
/// endpoint that reads a new field adds it here.
pub const KEYS: [&str; 16] = [
    "appid", "cmsgid", "content", "count", "datatype", "endid", "fromid", "gname", "ownerid",
    "pass", "prefix", "toid", "token", "uid", "uids", "username",
];

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

/// The [`KEYS`] of a request's top-level JSON object, as the body gave
/// them: strings borrow from the body (or from the decoded form field)
/// unless they hold JSON escapes. JSON `null` is absent; of a key given
/// twice, the last counts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fields<'a>([Option<Val<'a>>; KEYS.len()]);

/// A kept value: what the accessors need of it, without a `serde_json::Value`.
#[derive(Clone, Debug, PartialEq)]
enum Val<'a> {
    Str(Cow<'a, str>),
    Num(Number),
    /// An array whose items are all integers ([`value_u64`]'s rules).
    List(Vec<u64>),
    Bool(bool),
    /// An array holding anything else: no accessor reads it.
    Array,
    Object,
}

/// Largest decoded form field whose buffer a thread keeps for the next
/// request (a bigger one is decoded into a buffer of its own, then freed).
const KEEP_SCRATCH: usize = 64 * 1024;

thread_local! {
    /// Where this thread percent-decodes form bodies: grown once, reused.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// Decodes a request body and runs `f` on its fields; a form body is
/// percent-decoded into a buffer this thread reuses, JSON is borrowed.
pub fn with_fields<T>(
    body: &[u8],
    kind: Body,
    f: impl FnOnce(&Fields<'_>) -> T,
) -> Result<T, CodecError> {
    // Taken out, not borrowed: nothing here can call back in, but a panic
    // in `f` then only costs the buffer.
    let mut scratch = SCRATCH.with(Cell::take);
    let out = decode_body_in(body, kind, &mut scratch).map(|fields| f(&fields));
    if scratch.capacity() <= KEEP_SCRATCH {
        SCRATCH.with(|s| s.set(scratch));
    }
    out
}

/// Decodes a request body of the given kind into its fields, owned (for
/// tests and tools; the server uses [`with_fields`]).
pub fn decode_body(body: &[u8], kind: Body) -> Result<Fields<'static>, CodecError> {
    let mut scratch = Vec::new();
    decode_body_in(body, kind, &mut scratch).map(Fields::into_owned)
}

/// Decodes a request body of the given kind into its fields, borrowing
/// `body` or, where the form field had escapes, `scratch` (cleared first).
///
/// `Body::Other` (missing or unexpected `Content-Type`) is sniffed: JSON if
/// the first non-whitespace byte is `{`, otherwise a form with `haoshuo`.
pub fn decode_body_in<'a>(
    body: &'a [u8],
    kind: Body,
    scratch: &'a mut Vec<u8>,
) -> Result<Fields<'a>, CodecError> {
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err(CodecError::EmptyBody);
    }
    match kind {
        // `curl -d '{...}'` says form but sends JSON: name the fix.
        Body::Form => decode_form(trimmed, scratch).map_err(|e| match e {
            CodecError::MissingFormField if trimmed.starts_with(b"{") => CodecError::JsonAsForm,
            e => e,
        }),
        Body::Json => decode_json(trimmed),
        Body::Other if trimmed.starts_with(b"{") => decode_json(trimmed),
        Body::Other => decode_form(trimmed, scratch).map_err(|e| match e {
            CodecError::MissingFormField => CodecError::UnknownBody,
            e => e,
        }),
    }
}

fn decode_form<'a>(body: &'a [u8], scratch: &'a mut Vec<u8>) -> Result<Fields<'a>, CodecError> {
    let json = query::field_in(body, FORM_FIELD, scratch)
        .map_err(|_| CodecError::BadEscape)?
        .ok_or(CodecError::MissingFormField)?;
    decode_json(json)
}

/// Parses `body` as `serde_json::from_slice::<Value>` would (the same
/// errors, nesting limit and trailing-bytes check), keeping only [`KEYS`].
fn decode_json(body: &[u8]) -> Result<Fields<'_>, CodecError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let top = de
        .deserialize_any(TopVisitor)
        .map_err(CodecError::BadJson)?;
    de.end().map_err(CodecError::BadJson)?;
    top.ok_or(CodecError::NotObject)
}

/// Keeps what a map-typed `Value` would hold: the known keys, null dropped.
impl From<Map<String, Value>> for Fields<'static> {
    fn from(map: Map<String, Value>) -> Self {
        let mut fields = Fields::default();
        for (key, value) in map {
            if let Some(i) = key_index(&key) {
                fields.0[i] = Val::from_value(value);
            }
        }
        fields
    }
}

fn key_index(name: &str) -> Option<usize> {
    KEYS.iter().position(|&k| k == name)
}

impl Val<'_> {
    fn from_value(v: Value) -> Option<Val<'static>> {
        Some(match v {
            Value::Null => return None,
            Value::Bool(b) => Val::Bool(b),
            Value::Number(n) => Val::Num(n),
            Value::String(s) => Val::Str(Cow::Owned(s)),
            Value::Array(items) => items
                .iter()
                .map(value_u64)
                .collect::<Option<Vec<u64>>>()
                .map_or(Val::Array, Val::List),
            Value::Object(_) => Val::Object,
        })
    }

    fn into_owned(self) -> Val<'static> {
        match self {
            Val::Str(s) => Val::Str(Cow::Owned(s.into_owned())),
            Val::Num(n) => Val::Num(n),
            Val::List(l) => Val::List(l),
            Val::Bool(b) => Val::Bool(b),
            Val::Array => Val::Array,
            Val::Object => Val::Object,
        }
    }
}

impl<'a> Fields<'a> {
    /// The same fields, owning their strings.
    pub fn into_owned(self) -> Fields<'static> {
        Fields(self.0.map(|v| v.map(Val::into_owned)))
    }

    fn val(&self, name: &str) -> Option<&Val<'a>> {
        self.0[key_index(name)?].as_ref()
    }

    /// The value as JSON, treating `null` (and a name outside [`KEYS`]) as
    /// absent. Strings, numbers and lists of integers are as sent; a value
    /// no accessor reads is a stand-in of its JSON type (an array holding
    /// other things is `[]`, an object `{}`). Allocates: not for handlers.
    pub fn get(&self, name: &str) -> Option<Value> {
        Some(match self.val(name)? {
            Val::Str(s) => Value::String(s.to_string()),
            Val::Num(n) => Value::Number(n.clone()),
            Val::List(l) => l.iter().map(|&n| Value::from(n)).collect(),
            Val::Bool(b) => Value::Bool(*b),
            Val::Array => Value::Array(Vec::new()),
            Val::Object => Value::Object(Map::new()),
        })
    }

    /// Required string; a JSON number is accepted and rendered in decimal, so
    /// `"username":"2"` and `"username":2` both give `"2"`.
    pub fn str(&self, name: &str) -> Result<Cow<'_, str>, CodecError> {
        self.opt_str(name)?
            .ok_or_else(|| CodecError::Missing(name.to_owned()))
    }

    /// Like [`Fields::str`], but absent or `null` is `None`.
    pub fn opt_str(&self, name: &str) -> Result<Option<Cow<'_, str>>, CodecError> {
        match self.val(name) {
            None => Ok(None),
            Some(Val::Str(s)) => Ok(Some(Cow::Borrowed(s))),
            Some(Val::Num(n)) => Ok(Some(Cow::Owned(n.to_string()))),
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
        let n = match self.val(name) {
            None => return Ok(None),
            Some(Val::Num(n)) => num_u64(n),
            Some(Val::Str(s)) => str_u64(s),
            Some(_) => None,
        };
        n.map(Some)
            .ok_or_else(|| CodecError::NotU64(name.to_owned()))
    }

    /// Required list of non-negative integers: a JSON array of numbers or
    /// numeric strings, or one string of comma-separated integers
    /// (`"1, 2,3"`; `""` is the empty list). A single integer is a list of one.
    pub fn u64_list(&self, name: &str) -> Result<Vec<u64>, CodecError> {
        let bad = || CodecError::NotU64List(name.to_owned());
        match self.val(name) {
            None => Err(CodecError::Missing(name.to_owned())),
            Some(Val::List(items)) => Ok(items.clone()),
            Some(Val::Str(s)) if s.trim().is_empty() => Ok(Vec::new()),
            Some(Val::Str(s)) => s
                .split(',')
                .map(|part| str_u64(part.trim()).ok_or_else(bad))
                .collect(),
            Some(Val::Num(n)) => num_u64(n).map(|n| vec![n]).ok_or_else(bad),
            Some(_) => Err(bad()),
        }
    }
}

fn value_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => num_u64(n),
        Value::String(s) => str_u64(s),
        _ => None,
    }
}

fn num_u64(n: &Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        // Integral floats such as 12.0; 2^64 itself is out of range.
        let f = n.as_f64()?;
        (f >= 0.0 && f.fract() == 0.0 && f < 18_446_744_073_709_551_616.0).then_some(f as u64)
    })
}

/// ASCII digits only (no sign, spaces or `0x`); overflow is `None`.
fn str_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

// The visitors below take every JSON value through `deserialize_any`, as
// `Value`'s own does, so serde_json parses (and refuses, with the same
// messages and nesting limit) exactly what it would for a `Value`; none of
// them ever fails by itself.

/// The top level: `Some` fields for an object, `None` for any other value.
struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Option<Fields<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key {
                Some(i) => fields.0[i] = map.next_value_seed(ValSeed)?,
                None => map.next_value_seed(Skip)?,
            }
        }
        Ok(Some(fields))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Skip.visit_seq(seq).map(|()| None)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A map key: the index of a known one, `None` for the rest.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        // What `Value` asks of a key (serde_json reads it as a string).
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        Ok(key_index(key))
    }
}

/// A known key's value (`None`: null).
struct ValSeed;

impl<'de> DeserializeSeed<'de> for ValSeed {
    type Value = Option<Val<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValSeed {
    type Value = Option<Val<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(Some(Val::Bool(b)))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(Some(Val::Num(n.into())))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Some(Val::Num(n.into())))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
        // As `Value` does: a float JSON cannot hold is null.
        Ok(Number::from_f64(n).map(Val::Num))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Val::Str(Cow::Borrowed(s))))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Some(Val::Str(Cow::Owned(s.to_owned()))))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(Some(Val::Str(Cow::Owned(s))))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Some(Vec::new());
        while let Some(item) = seq.next_element_seed(ItemSeed)? {
            match (&mut items, item) {
                (Some(list), Some(n)) => list.push(n),
                _ => items = None,
            }
        }
        Ok(Some(items.map_or(Val::Array, Val::List)))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Skip.visit_map(map).map(|()| Some(Val::Object))
    }
}

/// An item of an array under a known key: the integer it is, if any.
struct ItemSeed;

impl<'de> DeserializeSeed<'de> for ItemSeed {
    type Value = Option<u64>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ItemSeed {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
        Ok(num_u64(&n.into()))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
        Ok(Some(n))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Self::Value, E> {
        Ok(Number::from_f64(n).and_then(|n| num_u64(&n)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(str_u64(s))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Skip.visit_seq(seq).map(|()| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Skip.visit_map(map).map(|()| None)
    }
}

/// Any value, parsed and dropped. Not `IgnoredAny`: serde_json skips that
/// without its nesting limit or UTF-8 check, and a body it would take is
/// one `Value` refuses.
struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Skip {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Keys as `Value` reads them: serde_json's key is always a string.
        while map.next_key_seed(KeySeed)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &[u8], kind: Body) -> Fields<'static> {
        decode_body(body, kind)
            .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(body)))
    }

    #[test]
    fn decodes_bodies() {
        let cases: &[(&[u8], Body, &str, &str)] = &[
            // (body, kind, field, expected string value)
            (
                b"haoshuo=%7B%22content%22%3A%22a+b%22%7D",
                Body::Form,
                "content",
                "a b",
            ),
            (
                b"haoshuo=%7B%22content%22%3A%22a%2Bb%22%7D",
                Body::Form,
                "content",
                "a+b",
            ),
            (
                b"haoshuo={\"content\":\"x%20y\"}",
                Body::Form,
                "content",
                "x y",
            ),
            (
                "haoshuo=%7B%22content%22%3A%22%E4%BD%A0%E5%A5%BD%22%7D".as_bytes(),
                Body::Form,
                "content",
                "你好",
            ),
            (
                b"appid=1&t=2&haoshuo=%7B%22appid%22%3A5%7D",
                Body::Form,
                "appid",
                "5",
            ),
            (
                b"haoshuo=%7B%22token%22%3A%221%22%7D&haoshuo=x",
                Body::Form,
                "token",
                "1",
            ),
            (
                b"haoshuo=%7B%22token%22%3A%22v%22%7D\r\n",
                Body::Form,
                "token",
                "v",
            ),
            (b"{\"username\":\"2\"}", Body::Json, "username", "2"),
            (b" \n{\"username\":2}", Body::Json, "username", "2"),
            (b"{\"token\":\"+%20\"}", Body::Json, "token", "+%20"),
            (b"  {\"token\":\"j\"}", Body::Other, "token", "j"),
            (
                b"haoshuo=%7B%22token%22%3A%22f%22%7D",
                Body::Other,
                "token",
                "f",
            ),
            (
                b"x=1&haoshuo=%7B%22token%22%3A%22f%22%7D",
                Body::Other,
                "token",
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

    /// A body holding `value` as its `uid`, decoded.
    fn uid(value: &str) -> Fields<'static> {
        ok(format!(r#"{{"uid":{value}}}"#).as_bytes(), Body::Json)
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

    /// What the body decoded into before (`serde_json::from_slice` into a
    /// `Value`): its error message, or its object.
    fn as_value(body: &[u8]) -> Result<Fields<'static>, String> {
        match serde_json::from_slice(body) {
            Ok(Value::Object(map)) => Ok(Fields::from(map)),
            Ok(_) => Err(CodecError::NotObject.msg()),
            Err(e) => Err(CodecError::BadJson(e).msg()),
        }
    }

    /// Parsing only the known keys takes and refuses what parsing the
    /// whole `Value` did, with the same messages (positions included):
    /// nesting beyond serde_json's limit, bad UTF-8 and escapes, trailing
    /// bytes, duplicates (the last wins), in known keys and in others.
    #[test]
    fn decodes_as_a_value_did() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let deep_obj = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        let mut bodies: Vec<Vec<u8>> = [
            r#"{}"#,
            r#"{"uid":1,"uid":"2"}"#,
            r#"{"uid":1,"uid":null}"#,
            r#"{"uid":null,"uid":3}"#,
            r#"{"uids":[1,"2",3.0],"x":[{"y":[1,{"z":null}]}],"token":"t"}"#,
            r#"{"uids":[1,[2]],"toid":{"a":1},"datatype":true,"cmsgid":false}"#,
            r#"{"uids":[1,-2,1.5,"3",null,18446744073709551616]}"#,
            r#"{"content":"a\"b\\c\u00e9\ud83d\ude00\n","appid":"\u0041"}"#,
            r#"{"content":"\ud800"}"#,
            r#"{"x":"\ud800"}"#,
            r#"{"x":"\q"}"#,
            r#"{"uid":1e400}"#,
            r#"{"x":1e400}"#,
            r#"{"uid":-0,"toid":-0.0,"fromid":1E2,"endid":0.1e1}"#,
            r#"{"uid":1,}"#,
            r#"{"uid":[1,]}"#,
            r#"{"x":[1,]}"#,
            r#"{"uid":1} x"#,
            r#"{"uid":1}{}"#,
            r#"{"uid" 1}"#,
            r#"{1:1}"#,
            r#"{"uid":01}"#,
            r#"{"uid":tru}"#,
            r#"{"uid":"#,
            r#"{"x":{"y":"#,
            r#"[1,2]"#,
            r#"[1,2"#,
            r#"[1,2] x"#,
            r#""str""#,
            r#"12"#,
            r#"null"#,
            r#"{"a\u0070pid":"k","\u0075id":5}"#,
            r#"{"uid":5,"UID":6,"uid ":7}"#,
        ]
        .iter()
        .map(|b| b.as_bytes().to_vec())
        .collect();
        for n in [127, 128, 129, 300] {
            bodies.push(format!(r#"{{"x":{}}}"#, deep(n)).into_bytes());
            bodies.push(format!(r#"{{"uids":{}}}"#, deep(n)).into_bytes());
            bodies.push(format!(r#"{{"uids":[{}]}}"#, deep(n)).into_bytes());
            bodies.push(format!(r#"{{"toid":{}}}"#, deep_obj(n)).into_bytes());
            bodies.push(deep(n).into_bytes());
        }
        bodies.push(b"{\"x\":\"\xff\"}".to_vec());
        bodies.push(b"{\"content\":\"\xc3\"}".to_vec());
        bodies.push(b"{\"\xff\":1}".to_vec());
        for body in &bodies {
            let text = String::from_utf8_lossy(body);
            let got = decode_json(body)
                .map(Fields::into_owned)
                .map_err(|e| e.msg());
            assert_eq!(got, as_value(body), "{text}");
        }
    }

    /// Keys no endpoint reads are parsed but not kept.
    #[test]
    fn only_known_keys_are_kept() {
        let f = ok(br#"{"uid":1,"nope":2,"appid":"a"}"#, Body::Json);
        assert_eq!(f.opt_u64("nope").unwrap(), None);
        assert!(f.get("nope").is_none());
        assert_eq!(f.str("nope").unwrap_err().msg(), "missing field 'nope'");
        assert_eq!(f.u64("uid").unwrap(), 1);
        for key in KEYS {
            let f = ok(format!(r#"{{"{key}":"7"}}"#).as_bytes(), Body::Json);
            assert_eq!(f.u64(key).unwrap(), 7, "{key}");
        }
    }

    /// Strings without escapes borrow the body, or the buffer a form's
    /// field was decoded into (a thread's, reused).
    #[test]
    fn strings_borrow() {
        let body = br#"{"token":"ab","content":"x\ny"}"#;
        let mut scratch = Vec::new();
        let f = decode_body_in(body, Body::Json, &mut scratch).unwrap();
        assert!(matches!(f.str("token").unwrap(), Cow::Borrowed("ab")));
        assert_eq!(f.str("content").unwrap(), "x\ny");
        let form = b"haoshuo=%7B%22token%22%3A%22a+b%22%7D";
        let f = decode_body_in(form, Body::Form, &mut scratch).unwrap();
        assert!(matches!(f.str("token").unwrap(), Cow::Borrowed("a b")));
        let at = with_fields(form, Body::Form, |f| f.str("token").unwrap().as_ptr()).unwrap();
        let again = with_fields(form, Body::Form, |f| f.str("token").unwrap().as_ptr()).unwrap();
        assert_eq!(at, again, "the thread's buffer is reused");
        let err = with_fields(b"haoshuo=%ZZ", Body::Form, |_| ()).unwrap_err();
        assert_eq!(err.msg(), "bad percent escape in form body");
    }

    #[test]
    fn u64_table() {
        let cases: &[(&str, Result<Option<u64>, &str>)] = &[
            (r#""12""#, Ok(Some(12))),
            ("7", Ok(Some(7))),
            ("12.0", Ok(Some(12))),
            ("18446744073709551615", Ok(Some(u64::MAX))),
            ("null", Ok(None)),
            ("-1", Err("field 'uid' must be a non-negative integer")),
            ("1.5", Err("field 'uid' must be a non-negative integer")),
            (
                r#""18446744073709551616""#,
                Err("field 'uid' must be a non-negative integer"),
            ),
            (
                "18446744073709551616",
                Err("field 'uid' must be a non-negative integer"),
            ),
            (
                r#""abc""#,
                Err("field 'uid' must be a non-negative integer"),
            ),
            (r#"" 1""#, Err("field 'uid' must be a non-negative integer")),
            (r#""+1""#, Err("field 'uid' must be a non-negative integer")),
            (r#""""#, Err("field 'uid' must be a non-negative integer")),
            ("true", Err("field 'uid' must be a non-negative integer")),
            ("{}", Err("field 'uid' must be a non-negative integer")),
            ("[1]", Err("field 'uid' must be a non-negative integer")),
        ];
        for (value, want) in cases {
            let got = uid(value).opt_u64("uid").map_err(|e| e.msg());
            assert_eq!(got, want.map_err(str::to_owned), "{value}");
        }
        assert_eq!(uid("7").u64("uid").unwrap(), 7);
        let f = ok(b"{}", Body::Json);
        assert_eq!(f.opt_u64("toid").unwrap(), None);
        assert_eq!(f.u64("toid").unwrap_err().msg(), "missing field 'toid'");
        assert_eq!(
            uid("null").u64("uid").unwrap_err().msg(),
            "missing field 'uid'"
        );
    }

    #[test]
    fn str_table() {
        let cases: &[(&str, Result<Option<&str>, &str>)] = &[
            (r#""li""#, Ok(Some("li"))),
            (r#""12""#, Ok(Some("12"))),
            ("7", Ok(Some("7"))),
            ("2.5", Ok(Some("2.5"))),
            ("12.0", Ok(Some("12.0"))),
            ("-3", Ok(Some("-3"))),
            (r#""""#, Ok(Some(""))),
            ("null", Ok(None)),
            ("true", Err("field 'uid' must be a string or number")),
            ("{}", Err("field 'uid' must be a string or number")),
            ("[1,2,3]", Err("field 'uid' must be a string or number")),
            ("[[1]]", Err("field 'uid' must be a string or number")),
        ];
        for (value, want) in cases {
            let f = uid(value);
            let got = f.opt_str("uid").map_err(|e| e.msg());
            let got = got.as_ref().map(|o| o.as_deref()).map_err(String::as_str);
            assert_eq!(got, *want, "{value}");
        }
        assert_eq!(uid("12").str("uid").unwrap(), "12");
        let f = ok(b"{}", Body::Json);
        assert_eq!(f.str("token").unwrap_err().msg(), "missing field 'token'");
    }

    #[test]
    fn u64_list_table() {
        const BAD: &str = "field 'uid' must be a list of non-negative integers";
        let cases: &[(&str, Result<&[u64], &str>)] = &[
            (r#"[1,"2",3]"#, Ok(&[1, 2, 3])),
            (r#"[1,2.0]"#, Ok(&[1, 2])),
            ("[]", Ok(&[])),
            (r#""4, 5,6""#, Ok(&[4, 5, 6])),
            (r#""""#, Ok(&[])),
            (r#""  ""#, Ok(&[])),
            ("9", Ok(&[9])),
            (r#""12""#, Ok(&[12])),
            ("[1,-2]", Err(BAD)),
            ("[1,null]", Err(BAD)),
            ("[1,true]", Err(BAD)),
            (r#""1,,2""#, Err(BAD)),
            (r#""1,+2""#, Err(BAD)),
            ("[[1]]", Err(BAD)),
            (r#"[{"a":1}]"#, Err(BAD)),
            ("{}", Err(BAD)),
            ("true", Err(BAD)),
            ("-1", Err(BAD)),
            ("null", Err("missing field 'uid'")),
        ];
        for (value, want) in cases {
            let got = uid(value).u64_list("uid").map_err(|e| e.msg());
            assert_eq!(
                got,
                want.map(<[u64]>::to_vec).map_err(str::to_owned),
                "{value}"
            );
        }
        let f = ok(b"{}", Body::Json);
        assert_eq!(
            f.u64_list("uids").unwrap_err().msg(),
            "missing field 'uids'"
        );
    }
}
