//! `api::codec::decode_body` for both body kinds (and the sniffed `Other`).
//!
//! Input: byte 0 steers how the form is built (which bytes are escaped,
//! whether other fields surround `haoshuo`), the rest is the body. Beyond
//! "no panic" it checks that the form and the JSON shapes of one object
//! decode to the same fields, both ways round; that sniffing an unlabelled
//! body agrees with the labelled kind; and that the typed accessors agree
//! with each other.
#![no_main]

use haoshuo::api::codec::{decode_body, Fields};
use haoshuo::http::query;
use haoshuo::http::request::Body;
use haoshuo_fuzz::form_encode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [how, ref body @ ..] = *data else {
        return;
    };
    let trimmed = body.trim_ascii();

    let as_json = decode_body(body, Body::Json);
    let as_form = decode_body(body, Body::Form);
    let sniffed = decode_body(body, Body::Other);

    // An unlabelled body is JSON if it starts with `{`, else a form.
    let labelled = if trimmed.starts_with(b"{") {
        &as_json
    } else {
        &as_form
    };
    match (&sniffed, labelled) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("sniffed {a:?} but labelled {b:?}"),
    }

    // The JSON object, sent as the form field instead, decodes the same.
    if let Ok(fields) = &as_json {
        let mut form = Vec::new();
        if how & 1 != 0 {
            form.extend_from_slice(b"appid=1&&x%3Dy=%41&");
        }
        form.extend_from_slice(b"haoshuo=");
        form.extend_from_slice(&form_encode(trimmed, &[how.rotate_left(3), how ^ 0x5a]));
        if how & 2 != 0 {
            form.extend_from_slice(b"&haoshuo=%7B%7D&b=%ZZ");
        }
        if how & 4 != 0 {
            form.extend_from_slice(b"\r\n");
        }
        let back = decode_body(&form, Body::Form);
        assert_eq!(
            back.as_ref().ok(),
            Some(fields),
            "form {:?}",
            String::from_utf8_lossy(&form)
        );
        assert_eq!(decode_body(&form, Body::Other).ok().as_ref(), Some(fields));
        check_accessors(fields, trimmed);
    }

    // A form's field, sent as the raw JSON body instead, decodes the same.
    if let Ok(fields) = &as_form {
        let json = query::field(trimmed, "haoshuo")
            .expect("decoded, so the escape is good")
            .expect("decoded, so the field is there");
        assert_eq!(decode_body(&json, Body::Json).ok().as_ref(), Some(fields));
        check_accessors(fields, &json);
    }
});

/// The typed views of one value agree: a field read as an integer is the
/// one-element list, absent means absent for every accessor, and a JSON
/// integer read as a string is its digits. `json` is the object's text.
fn check_accessors(fields: &Fields, json: &[u8]) {
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json.trim_ascii()).expect("it decoded once");
    assert_eq!(&Fields::from(map.clone()), fields);
    for key in map.keys().map(String::as_str).chain(["", "missing"]) {
        let list = fields.u64_list(key);
        let s = fields.opt_str(key);
        match fields.opt_u64(key) {
            Ok(Some(n)) => {
                assert_eq!(fields.u64(key).ok(), Some(n));
                assert_eq!(list.ok(), Some(vec![n]), "{key}");
            }
            Ok(None) => {
                assert!(fields.get(key).is_none());
                assert!(fields.u64(key).is_err() && list.is_err());
                assert!(matches!(s, Ok(None)));
            }
            Err(_) => assert!(fields.get(key).is_some()),
        }
        if let Some(serde_json::Value::Number(n)) = fields.get(key) {
            if let Some(u) = n.as_u64() {
                assert_eq!(fields.opt_u64(key).ok(), Some(Some(u)));
                assert_eq!(s.ok().flatten().as_deref(), Some(u.to_string().as_str()));
            }
        }
    }
}
