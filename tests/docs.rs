//! The README as a new user follows it: its quick-start commands and its
//! admin example are run as written (bash and curl, against a fresh
//! server), and what each prints is compared with what the README shows
//! beside it, so the README cannot drift from the server. Placeholders the
//! README uses for what differs per run: `"<48 hex>"` (a token), `[...]`
//! (any array), `"..."` (any string), a trailing `,...` in an array (more
//! elements). The start line is checked for the README's fields, in order.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

const README: &str = include_str!("../README.md");

/// The lines of the first ```sh block that contains `marker`.
fn block(marker: &str) -> Vec<&'static str> {
    let mut lines = README.lines();
    loop {
        let Some(line) = lines.next() else {
            panic!("no ```sh block with {marker:?} in README.md")
        };
        if line.trim() != "```sh" {
            continue;
        }
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        if body.iter().any(|l| l.contains(marker)) {
            return body;
        }
    }
}

/// Runs `script` in bash with `vars` set; its standard output.
fn bash(script: &str, vars: &[(&str, &str)]) -> String {
    let out = Command::new("bash")
        .args(["-c", script])
        .envs(vars.iter().copied())
        .output()
        .expect("run bash (and curl)");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `expected` (README text, with its placeholders) against `actual`.
fn matches(expected: &str, actual: &Value) -> bool {
    let text = expected
        .replace("[...]", r#""__ANY__""#)
        .replace(r#""...""#, r#""__ANY__""#)
        .replace("<48 hex>", "__HEX48__")
        .replace(",...]", r#","__REST__"]"#);
    let want: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("README shows no JSON here ({e}): {expected}"));
    same(&want, actual)
}

fn same(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(w), _) if w == "__ANY__" => true,
        (Value::String(w), Value::String(g)) if w == "__HEX48__" => {
            g.len() == 48
                && g.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        (Value::Array(w), Value::Array(g)) => match w.last() {
            Some(Value::String(r)) if r == "__REST__" => {
                g.len() >= w.len() - 1 && w[..w.len() - 1].iter().zip(g).all(|(w, g)| same(w, g))
            }
            _ => w.len() == g.len() && w.iter().zip(g).all(|(w, g)| same(w, g)),
        },
        (Value::Object(w), Value::Object(g)) => {
            w.len() == g.len() && w.iter().all(|(k, w)| g.get(k).is_some_and(|g| same(w, g)))
        }
        (w, g) => w == g,
    }
}

/// The JSON the README shows after a command's `#`: the last `{...}` of
/// the comment (prose may come before it).
fn shown(comment: &str) -> &str {
    let start = comment.find('{').expect("a JSON object in the comment");
    let end = comment.rfind('}').expect("a JSON object in the comment");
    &comment[start..=end]
}

fn token_of(output: &str) -> String {
    let v: Value = serde_json::from_str(output.trim()).expect("a /login answer");
    v["token"].as_str().expect("a token").to_owned()
}

#[test]
fn the_quick_start_prints_what_the_readme_shows() {
    // A poll held for a second, not thirty: the README's poll answers noop.
    let srv = Server::start(Backend::Embedded, Opts::default().poll_timeout(1));
    let lines = block("post()");
    let prelude_len = lines.iter().take_while(|l| !l.trim().is_empty()).count();
    let prelude: String = lines[..prelude_len]
        .iter()
        .map(|l| {
            if l.starts_with("H=") {
                format!("H=http://{}\n", srv.addr())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let mut vars: Vec<(&str, String)> = Vec::new();
    let mut logins: Vec<String> = Vec::new();
    let mut ran = 0;
    let mut i = prelude_len;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("A=<") {
            // The README's placeholder for "the tokens just printed".
            assert_eq!(
                logins.len(),
                2,
                "two logins (alice, bob) come before {line:?}"
            );
            vars = vec![("A", logins[0].clone()), ("B", logins[1].clone())];
            continue;
        }
        let (command, comment) = line.split_once(" #").unwrap_or((line, ""));
        // What the README shows: the comment, or for the stream the frame
        // lines below it (a heartbeat marked `<-` needs --heartbeat secs).
        let mut expected: Vec<&str> = Vec::new();
        if comment.is_empty() {
            while let Some(next) = lines.get(i).and_then(|l| l.strip_prefix("#   ")) {
                i += 1;
                if !next.contains("<-") {
                    expected.push(next);
                }
            }
        } else {
            expected.push(shown(comment));
        }
        assert!(!expected.is_empty(), "README shows no output for {line:?}");
        // A stream never ends: two seconds of it.
        let run = match command.strip_prefix("curl -N ") {
            Some(rest) => format!("timeout 2 curl -sN {rest}"),
            None => command.to_owned(),
        };
        let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let out = bash(&format!("{prelude}{run}"), &env);
        let got: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            got.len() >= expected.len(),
            "{command}\nprinted {out:?}\nREADME shows {expected:?}"
        );
        for (want, got) in expected.iter().zip(&got) {
            let value: Value = serde_json::from_str(got)
                .unwrap_or_else(|e| panic!("{command} printed no JSON ({e}): {got}"));
            assert!(
                matches(want, &value),
                "{command}\nprinted  {got}\nREADME shows {want}"
            );
        }
        if command.contains("/login") {
            logins.push(token_of(&out));
        }
        ran += 1;
    }
    assert_eq!(ran, 12, "commands run from the quick start");
}

#[test]
fn the_admin_example_prints_what_the_readme_shows() {
    let srv = Server::start(Backend::Embedded, Opts::default().admin(""));
    let lines = block("/admin/users");
    let (command, shown_line): (String, &str) = {
        let joined = lines[..2].join("\n");
        (joined, lines[2])
    };
    // Without a key here: the README shows the header as optional.
    let run = command
        .replace(" [-H \"X-Admin-Key: $KEY\"]", "")
        .replace("127.0.0.1:2013", &srv.admin_addr().to_string());
    assert!(!run.contains('['), "an optional part left in {run:?}");
    let out = bash(&run, &[]);
    let value: Value = serde_json::from_str(out.trim()).expect("JSON from /admin/users");
    let want = shown_line
        .strip_prefix("# ")
        .expect("the answer, commented");
    assert!(matches(want, &value), "printed  {out}\nREADME shows {want}");
}

#[test]
fn the_start_line_has_the_readme_fields() {
    let srv = Server::start(Backend::Embedded, Opts::default());
    let readme_line = README
        .lines()
        .find(|l| l.contains(" listening on "))
        .expect("the start line in README.md");
    let ours = srv.output().lines().next().unwrap_or_default().to_owned();
    // Field names in order: what precedes each `=`, and the fixed words.
    let shape = |line: &str| -> Vec<String> {
        line.split_whitespace()
            .map(|w| match w.split_once('=') {
                Some((k, _)) => format!("{k}="),
                None if w.contains(':') || w.chars().any(|c| c.is_ascii_digit()) => "_".into(),
                None => w.to_owned(),
            })
            .collect()
    };
    assert_eq!(
        shape(&ours),
        shape(readme_line),
        "{ours}\nvs README: {readme_line}"
    );
}
