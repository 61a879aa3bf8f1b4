//! The README and docs/ as a new user follows them. Every shell command
//! they show (in ```sh blocks and indented code blocks) is run here against
//! a fresh server, or by CI, or is in [`EXCEPTIONS`] with the reason it is
//! not: `every_doc_command_is_run_or_excepted` fails on a command that is
//! none of these, so a command added to the docs needs a runner. [`RUN`]
//! says which test runs which command, and each of those tests takes its
//! commands from the docs through that table.
//!
//! Where a doc shows what a command prints, what it prints is compared:
//! placeholders for what differs per run are `"<48 hex>"` (a token),
//! `[...]` (any array), `"..."` (any string) and a trailing `,...` in an
//! array (more elements), also in JSON text inside a string (a frame's
//! `content`). Benchmark and load commands, minutes long at the
//! documented sizes, run at tiny sizes ([`TINY`]) and must print their
//! report and pass their own check.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// How long a server may take to print its start line (as the harness).
const START_WAIT: Duration = Duration::from_secs(10);

/// The repository: doc commands run from here, as the docs assume.
const REPO: &str = env!("CARGO_MANIFEST_DIR");

const README: &str = include_str!("../README.md");

/// The lines of the first ```sh block of the README that contains `marker`.
fn block(marker: &str) -> Vec<&'static str> {
    fenced(README, "sh", marker)
        .unwrap_or_else(|| panic!("no ```sh block with {marker:?} in README.md"))
}

/// The lines of the first fenced block of `doc` tagged `tag` (`""`: none)
/// that contains `marker`.
fn fenced<'d>(doc: &'d str, tag: &str, marker: &str) -> Option<Vec<&'d str>> {
    let mut lines = doc.lines();
    loop {
        let Some(this_tag) = lines.next()?.trim().strip_prefix("```") else {
            continue;
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        if this_tag == tag && body.iter().any(|l| l.contains(marker)) {
            return Some(body);
        }
    }
}

/// Runs `script` in bash in the repository with `vars` set, and with the
/// sbin directories on `PATH` (Debian keeps nginx and haproxy there).
fn sh(script: &str, vars: &[(&str, &str)]) -> Output {
    let path = format!(
        "{}:/usr/local/sbin:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new("bash")
        .args(["-c", script])
        .current_dir(REPO)
        .env("PATH", path)
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run bash")
}

/// Runs `script` as [`sh`] does; its standard output.
fn bash(script: &str, vars: &[(&str, &str)]) -> String {
    String::from_utf8(sh(script, vars).stdout).expect("UTF-8 output")
}

/// `expected` (README text, with its placeholders) against `actual`.
fn matches(expected: &str, actual: &Value) -> bool {
    let want: Value = serde_json::from_str(&placeholders(expected))
        .unwrap_or_else(|e| panic!("the doc shows no JSON here ({e}): {expected}"));
    same(&want, actual)
}

/// `expected` with the placeholders that are not JSON, `[...]` and a
/// trailing `,...]`, made strings [`same`] knows; only outside JSON
/// strings, so that the JSON text inside a frame's `content` keeps them
/// for its own turn.
fn placeholders(expected: &str) -> String {
    let mut out = String::with_capacity(expected.len());
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = expected;
    while let Some(c) = rest.chars().next() {
        if !in_string {
            if let Some(after) = rest.strip_prefix("[...]") {
                out.push_str(r#""...""#);
                rest = after;
                continue;
            }
            if let Some(after) = rest.strip_prefix(",...]") {
                out.push_str(r#","__REST__"]"#);
                rest = after;
                continue;
            }
        }
        if escaped {
            escaped = false;
        } else if in_string && c == '\\' {
            escaped = true;
        } else if c == '"' {
            in_string = !in_string;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn same(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(w), _) if w == "..." => true,
        (Value::String(w), Value::String(g)) if w == "<48 hex>" => {
            g.len() == 48
                && g.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }
        // JSON text in a string (a frame's `content`), placeholders and all.
        (Value::String(w), Value::String(g)) if w != g => {
            let inner = |text: &str| serde_json::from_str::<Value>(text).ok();
            match (inner(&placeholders(w)), inner(g)) {
                (Some(w), Some(g)) => w.is_object() && same(&w, &g),
                _ => false,
            }
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
    for cmd in claimed("the_quick_start_prints_what_the_readme_shows") {
        assert!(
            lines.contains(&cmd.text.as_str()),
            "{cmd} is not in the quick start"
        );
    }
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
    let claimed = claimed("the_admin_example_prints_what_the_readme_shows");
    assert!(
        claimed.iter().map(|c| &c.text).eq([&command]),
        "{claimed:?}\nvs the block's {command:?}"
    );
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

/// docs/API.md's Server-Sent Events example is what an SSE stream prints:
/// the user with two stored messages, a heartbeat after a quiet second.
#[test]
fn the_sse_example_is_what_an_sse_stream_prints() {
    let api_md = fs::read_to_string(Path::new(REPO).join("docs/API.md")).expect("read docs/API.md");
    let shown = fenced(&api_md, "", "retry: ").expect("the SSE example in docs/API.md");
    let srv = Server::start(Backend::Embedded, Opts::default().heartbeat(1));
    let api = srv.api();
    let alice = api.user("test", "alice");
    let bob = api.user("test", "bob");
    fill_inbox(&api, &alice, &bob, 2);
    // curl's lines until as many as the example shows have come.
    let shown: Vec<&str> = shown.iter().map(|l| l.trim_end()).collect();
    let got = first_lines(
        Command::new("curl").arg("-sN").arg(format!(
            "http://{}/cget/sse?seq=1&cname={}&token={}",
            srv.addr(),
            bob.uid,
            bob.token
        )),
        shown.len(),
        WAIT,
    );
    let out = got.join("\n");
    assert_eq!(
        got.len(),
        shown.len(),
        "printed {out:?}\nAPI.md shows {shown:?}"
    );
    for (want, got) in shown.iter().zip(&got) {
        let alike = match (want.strip_prefix("data: "), got.strip_prefix("data: ")) {
            (Some(w), Some(g)) => serde_json::from_str(g).is_ok_and(|g| matches(w, &g)),
            _ => want == got,
        };
        assert!(
            alike,
            "printed {got:?} where docs/API.md shows {want:?}\nall of it: {out:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// The inventory: every command the docs show, and who runs it.

/// Who runs which doc command: (doc, how the command starts, runner). The
/// runner is a test in this file, which takes its commands from
/// [`claimed`] (the quick start and admin tests read their README block
/// and check it is what this table gives them), or a CI script that holds
/// the command verbatim.
#[rustfmt::skip]
const RUN: &[(&str, &str, &str)] = &[
    ("README.md", "cargo run --release", "cargo_run_prints_the_readme_start_line"),
    // Output, not a command: what `cargo run` prints, compared there.
    ("README.md", "haoshuo 0.1.0 listening on", "cargo_run_prints_the_readme_start_line"),
    ("README.md", "cargo test", ".ci/run"),
    ("README.md", "H=http://", "the_quick_start_prints_what_the_readme_shows"),
    ("README.md", "post() {", "the_quick_start_prints_what_the_readme_shows"),
    ("README.md", "post /", "the_quick_start_prints_what_the_readme_shows"),
    ("README.md", "A=<alice's token>", "the_quick_start_prints_what_the_readme_shows"),
    ("README.md", "curl -N \"$H/cget/stream", "the_quick_start_prints_what_the_readme_shows"),
    ("README.md", "curl \"$H/cget/poll", "the_quick_start_prints_what_the_readme_shows"),
    ("README.md", "curl -s 127.0.0.1:2013/admin/users", "the_admin_example_prints_what_the_readme_shows"),
    ("README.md", "target/release/haoshuo --admin-listen", "the_load_commands_run_at_tiny_sizes"),
    ("README.md", "target/release/haoshuo --demo", "the_demo_command_serves_the_page"),
    ("README.md", "target/release/haoshuo-load ", "the_load_commands_run_at_tiny_sizes"),
    ("docs/benchmarks.md", "haoshuo-load slow ", "the_load_commands_run_at_tiny_sizes"),
    ("docs/benchmarks.md", "loadtest/bench/slow.sh", "slow_sh_runs_at_tiny_sizes"),
    ("docs/benchmarks.md", "RATE_KBPS=512 SINGLE=0 loadtest/bench/slow.sh", "slow_sh_runs_at_tiny_sizes"),
    ("docs/benchmarks.md", "loadtest/bench/fanout_cpu.sh", "fanout_cpu_sh_runs_at_tiny_sizes"),
    ("docs/benchmarks.md", "LIFT=\"--max-body 1048576\" loadtest/bench/fanout_cpu.sh", "fanout_cpu_sh_runs_at_tiny_sizes"),
    ("docs/benchmarks.md", "loadtest/bench/fanout_vs_nchan.sh", "fanout_vs_nchan_sh_runs_at_tiny_sizes"),
    ("docs/benchmarks.md", "target/release/haoshuo --listen 127.0.0.1:2101", "hostile_py_runs_briefly"),
    ("docs/benchmarks.md", "python3 loadtest/bench/hostile.py ", "hostile_py_runs_briefly"),
    ("docs/c1m.md", "loadtest/c1m.sh", "c1m_sh_runs_at_a_tiny_size"),
    ("docs/c1m.md", "NETNS=1 ", "c1m_sh_runs_at_a_tiny_size"),
    ("docs/c1m.md", "loadtest/c1m_chart.py", "c1m_sh_runs_at_a_tiny_size"),
    ("docs/benchmarks.md", "BUILDS=", "idle_stores_sh_runs_at_a_tiny_size"),
    ("docs/benchmarks.md", "loadtest/bench/cluster.sh", "cluster_sh_runs_at_tiny_sizes"),
    ("docs/deploy.md", "mkdir -p /srv/haoshuo-nginx", "the_deploy_commands_serve_through_each_proxy"),
    ("docs/deploy.md", "nginx -p /srv/haoshuo-nginx/", "the_deploy_commands_serve_through_each_proxy"),
    ("docs/deploy.md", "haproxy -f /path/to/loadtest/proxy/haproxy.cfg", "the_deploy_commands_serve_through_each_proxy"),
];

/// Commands no test runs, and why: (doc, how the command starts, reason).
/// Keep it short: a command that can run in seconds belongs in [`RUN`].
#[rustfmt::skip]
const EXCEPTIONS: &[(&str, &str, &str)] = &[
    ("docs/c1m.md", "cargo build --release",
     "a release build takes minutes; cargo test builds the same workspace (debug), which the runners here use"),
    ("docs/benchmarks.md", "cargo build --release",
     "a release build takes minutes; cargo test builds the same workspace (debug), which the runners here use"),
    ("docs/testing.md", "cargo +nightly fuzz ",
     "needs the nightly toolchain and cargo-fuzz; CI runs tests/fuzz/smoke.sh, the same `fuzz list` and `fuzz run -s none -a` for 5 s a target, where they are installed"),
    ("docs/testing.md", "cargo install cargo-mutants",
     "installs a tool (minutes of compiling)"),
    ("docs/testing.md", "cargo mutants ",
     "mutation testing: a build and a test run per mutant, tens of minutes"),
    ("docs/testing.md", "CARGO_TARGET_DIR=target/mutants cargo mutants ",
     "mutation testing: a build and a test run per mutant, tens of minutes"),
    ("docs/testing.md", "CARGO_TARGET_DIR=target/mutants nice -n 19 cargo mutants ",
     "mutation testing: a build and a test run per mutant, tens of minutes"),
];

/// A command a doc shows: its file, the line it starts on (1-based) and
/// its text (continuation lines kept, joined by newlines).
#[derive(Clone, Debug)]
struct DocCommand {
    doc: String,
    line: usize,
    text: String,
}

impl std::fmt::Display for DocCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.doc, self.line, self.text)
    }
}

/// README.md and every docs/*.md, as (path relative to the repository, text).
fn docs() -> Vec<(String, String)> {
    let mut names = vec!["README.md".to_string()];
    let mut more: Vec<String> = fs::read_dir(Path::new(REPO).join("docs"))
        .expect("read docs/")
        .map(|e| {
            e.expect("a docs/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    more.sort();
    names.extend(more);
    names
        .into_iter()
        .map(|n| {
            let text = fs::read_to_string(Path::new(REPO).join(&n)).expect("read a doc");
            (n, text)
        })
        .collect()
}

/// The commands of one doc: the lines of its ```sh (or bash, shell)
/// blocks and of its indented code blocks (four spaces, after a blank
/// line, as Markdown has them), without blank lines and `#` comments; a
/// line ending in `\` continues on the next.
fn commands_in(doc: &str, text: &str) -> Vec<DocCommand> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    let mut block = |body: &[&str], first: usize, indent: usize| {
        let mut current: Option<DocCommand> = None;
        for (k, raw) in body.iter().enumerate() {
            let line = raw.get(indent.min(raw.len())..).unwrap_or(raw).trim_end();
            if let Some(cmd) = current.as_mut() {
                cmd.text.push('\n');
                cmd.text.push_str(line);
            } else {
                let t = line.trim_start();
                if t.is_empty() || t.starts_with('#') {
                    continue;
                }
                current = Some(DocCommand {
                    doc: doc.to_string(),
                    line: first + k + 1,
                    text: t.to_string(),
                });
            }
            if !line.ends_with('\\') {
                found.extend(current.take());
            }
        }
        found.extend(current);
    };
    let mut i = 0;
    let mut after_blank = true;
    while i < lines.len() {
        let line = lines[i];
        if let Some(tag) = line.trim_start().strip_prefix("```") {
            let start = i + 1;
            i = start;
            while i < lines.len() && !lines[i].trim_start().starts_with("```") {
                i += 1;
            }
            if matches!(tag.trim(), "sh" | "bash" | "shell") {
                let indent = line.len() - line.trim_start().len();
                block(&lines[start..i], start, indent);
            }
            i += 1;
            after_blank = false;
        } else if after_blank && line.starts_with("    ") {
            let start = i;
            while i < lines.len() && (lines[i].starts_with("    ") || lines[i].trim().is_empty()) {
                i += 1;
            }
            block(&lines[start..i], start, 4);
            after_blank = true;
        } else {
            after_blank = line.trim().is_empty();
            i += 1;
        }
    }
    found
}

/// Every command of every doc.
fn all_commands() -> Vec<DocCommand> {
    docs()
        .iter()
        .flat_map(|(name, text)| commands_in(name, text))
        .collect()
}

/// The entries of `table` (doc, start, _) that `cmd` matches.
fn matching<'t>(
    table: &'t [(&str, &str, &str)],
    cmd: &DocCommand,
) -> Vec<&'t (&'t str, &'t str, &'t str)> {
    table
        .iter()
        .filter(|(doc, start, _)| cmd.doc == *doc && cmd.text.starts_with(start))
        .collect()
}

/// The doc commands [`RUN`] gives to the test `runner`, in doc order.
fn claimed(runner: &str) -> Vec<DocCommand> {
    let cmds: Vec<DocCommand> = all_commands()
        .into_iter()
        .filter(|c| matching(RUN, c).iter().any(|(_, _, r)| *r == runner))
        .collect();
    assert!(!cmds.is_empty(), "RUN gives {runner} no doc command");
    cmds
}

#[test]
fn every_doc_command_is_run_or_excepted() {
    let cmds = all_commands();
    let mut problems = Vec::new();
    for cmd in &cmds {
        let claims = matching(RUN, cmd).len() + matching(EXCEPTIONS, cmd).len();
        if claims != 1 {
            problems.push(format!(
                "{cmd}\n    {} in RUN and EXCEPTIONS (must be exactly one)",
                claims
            ));
        }
    }
    let this_file = include_str!("docs.rs");
    for (doc, start, runner) in RUN {
        let matched: Vec<&DocCommand> = cmds
            .iter()
            .filter(|c| c.doc == *doc && c.text.starts_with(start))
            .collect();
        if matched.is_empty() {
            problems.push(format!("RUN: no command in {doc} starts with {start:?}"));
        }
        if runner.contains('/') {
            // A CI script that runs the command as the doc shows it.
            let script =
                fs::read_to_string(Path::new(REPO).join(runner)).expect("read a CI script");
            for c in matched {
                if !script.lines().any(|l| l.trim() == c.text) {
                    problems.push(format!("RUN: {runner} does not run {c}"));
                }
            }
        } else if !this_file.contains(&format!("fn {runner}()")) {
            problems.push(format!("RUN: no test fn {runner} in tests/docs.rs"));
        }
    }
    for (doc, start, _) in EXCEPTIONS {
        if !cmds
            .iter()
            .any(|c| c.doc == *doc && c.text.starts_with(start))
        {
            problems.push(format!(
                "EXCEPTIONS: no command in {doc} starts with {start:?}"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "doc commands without a runner (run each from a test here and add it to RUN, \
         or add it to EXCEPTIONS with the reason it cannot run):\n{}",
        problems.join("\n")
    );
    // The parser found the blocks it must: a sanity floor, not a count to
    // keep in step.
    assert!(cmds.len() > 30, "only {} commands found", cmds.len());
}

// ---------------------------------------------------------------------------
// The runners of the commands beyond the quick start.

/// Tiny values for the size flags of the load and benchmark commands:
/// seconds, not the documented minutes.
const TINY: &[(&str, &str)] = &[
    ("--conns", "20"),
    ("--hold", "1"),
    ("--members", "20"),
    ("--msgs", "3"),
    ("--rate", "50"),
    ("--users", "10"),
    ("--secs", "1"),
    ("--readers", "3"),
    ("--owed-mb", "0.1"),
    ("--rate-kbps", "16384"),
    ("--threads", "4"),
];

/// loadtest/bench/slow.sh's knobs, tiny (a doc's own `VAR=` wins).
const SLOW_SH_TINY: &[(&str, &str)] = &[
    ("RUNS", "1"),
    ("READERS", "2"),
    ("OWED_MB", "0.05"),
    ("RATE_KBPS", "8192"),
];

/// loadtest/bench/fanout_vs_nchan.sh's knobs, tiny.
const FANOUT_VS_NCHAN_TINY: &[(&str, &str)] = &[("SIZES", "20x3x50"), ("REPS", "1")];

/// Where Debian's libnginx-mod-nchan puts the module (the script's default).
const NCHAN_MODULE: &str = "/usr/lib/nginx/modules/ngx_nchan_module.so";

/// loadtest/bench/fanout_cpu.sh's MEMBERS MSGS RATE, tiny.
const FANOUT_CPU_TINY: &str = "20 3 50";

fn server_bin() -> &'static str {
    env!("CARGO_BIN_EXE_haoshuo")
}

/// `haoshuo-load`, built beside the server binary: `cargo test` builds only
/// the binaries of the package whose tests it runs, so this asks cargo for
/// it (a no-op once it is built).
fn load_bin() -> &'static str {
    static BIN: OnceLock<String> = OnceLock::new();
    BIN.get_or_init(|| {
        let profile_dir = Path::new(server_bin()).parent().expect("target/<profile>");
        let target_dir = profile_dir.parent().expect("target");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
        let mut build = Command::new(cargo);
        build
            .args(["build", "-p", "haoshuo-loadtest", "--bin", "haoshuo-load"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(REPO);
        if profile_dir.ends_with("release") {
            build.arg("--release");
        }
        let out = build.output().expect("run cargo build");
        assert!(
            out.status.success(),
            "cargo build of haoshuo-load failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        profile_dir.join("haoshuo-load").display().to_string()
    })
}

/// A command's words (split at whitespace: the commands split here quote
/// nothing).
fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// The value after `flag` in `words`.
fn flag_value<'w>(words: &'w [String], flag: &str) -> Option<&'w str> {
    let at = words.iter().position(|w| w == flag)?;
    words.get(at + 1).map(String::as_str)
}

/// Sets `flag`'s value in `words`, appending the pair if it is absent.
fn set_flag(words: &mut Vec<String>, flag: &str, value: &str) {
    match words.iter().position(|w| w == flag) {
        Some(at) => words[at + 1] = value.to_string(),
        None => words.extend([flag.to_string(), value.to_string()]),
    }
}

/// Every flag of [`TINY`] that `words` has, set to its tiny value.
fn shrink(words: &mut Vec<String>) {
    for (flag, value) in TINY {
        if words.iter().any(|w| w == flag) {
            set_flag(words, flag, value);
        }
    }
}

/// A fresh server (embedded store) for a doc's `.../haoshuo FLAGS &`: the
/// harness gives `--listen` and `--admin-listen` free loopback ports and
/// `--data-dir` a temporary directory; `[flags]` (what a doc's table rows
/// vary) are the defaults here; any other flag is passed on, a switch
/// (`--demo`: no value follows) alone.
fn server_for(cmd: &DocCommand) -> Server {
    let w = words(&cmd.text.replace("$(mktemp -d)", "DIR"));
    assert!(w[0].ends_with("/haoshuo"), "not a server start: {cmd}");
    let mut opts = Opts::default();
    let mut rest = w[1..].iter().peekable();
    while let Some(word) = rest.next() {
        match word.as_str() {
            "&" | "[flags]" => {}
            "--admin-listen" => {
                rest.next();
                opts = opts.admin("");
            }
            "--listen" | "--data-dir" => {
                rest.next();
            }
            switch if rest.peek().is_none_or(|next| next.starts_with("--")) => {
                opts = opts.switch(switch);
            }
            flag => {
                let value = rest.next().expect("peeked");
                opts = opts.flag(flag, value);
            }
        }
    }
    Server::start(Backend::Embedded, opts)
}

/// A daemon the test started (nginx's master, by its pid file): SIGTERM
/// when dropped, so it never outlives the test.
struct StopOnDrop(u32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .status();
    }
}

/// A child process the test started: killed and reaped when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `cmd` until it has printed `n` lines, or ended, or `within`
/// passed; the lines it printed. It is killed then.
fn first_lines(cmd: &mut Command, n: usize, within: Duration) -> Vec<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let pipe = child.stdout.take().expect("its stdout");
    let _child = KillOnDrop(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(pipe)) {
            if line.map(|l| tx.send(l)).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + within;
    let mut lines = Vec::new();
    while lines.len() < n {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(_) => break,
        }
    }
    lines
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `== haoshuo-load SCENARIO ==` first, and its check passed.
fn load_report_passed(stdout: &str, scenario: &str) -> bool {
    stdout.starts_with(&format!("== haoshuo-load {scenario} =="))
        && stdout
            .lines()
            .any(|l| l.split_whitespace().eq(["check", "PASS"]))
}

#[test]
fn cargo_run_prints_the_readme_start_line() {
    let cmds = claimed("cargo_run_prints_the_readme_start_line");
    let [run, shown] = &cmds[..] else {
        panic!("`cargo run` and the line it prints: {cmds:?}")
    };
    assert_eq!(run.text, "cargo run --release");
    // What `cargo run` runs: the binary, no flags, in an empty directory;
    // only its port is a free one, not 2012 (set as a flag would be).
    let dir = tempfile::tempdir().expect("a temporary dir");
    let ours = first_lines(
        hermetic(&mut Command::new(server_bin()))
            .env("HAOSHUO_LISTEN", "127.0.0.1:0")
            .current_dir(dir.path())
            .stderr(Stdio::null()),
        1,
        START_WAIT,
    )
    .pop()
    .expect("haoshuo prints its start line");
    // Field by field: the README's words, except the address (a free port
    // here) and the counts, which depend on the machine.
    let digits = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect::<String>()
            .split('#')
            .filter(|p| !p.is_empty())
            .collect::<Vec<_>>()
            .join("#")
    };
    let got: Vec<&str> = ours.split_whitespace().collect();
    let want: Vec<&str> = shown.text.split_whitespace().collect();
    assert_eq!(got.len(), want.len(), "{ours}\nREADME: {}", shown.text);
    let mut counts = std::collections::HashMap::new();
    for (g, w) in got.iter().zip(&want) {
        match w.split_once('=') {
            Some((key @ ("threads" | "workers" | "nofile"), value)) => {
                let v = g
                    .strip_prefix(&format!("{key}="))
                    .unwrap_or_else(|| panic!("{g} where the README shows {w}"));
                assert_eq!(digits(v), digits(value), "{g} where the README shows {w}");
                counts.insert(key, v.to_string());
            }
            _ if *w == "0.0.0.0:2012" => {
                let addr: std::net::SocketAddr = g.parse().expect("an address");
                assert!(addr.ip().is_loopback(), "{g}");
            }
            _ => assert_eq!(g, w, "{ours}\nREADME: {}", shown.text),
        }
    }
    // README: --workers defaults to 2 × cores, --threads to cores.
    let n = |k: &str| counts[k].parse::<u32>().expect("a count");
    assert_eq!(n("workers"), 2 * n("threads"), "{ours}");
    assert!(
        dir.path().join("haoshuo-data").is_dir(),
        "no ./haoshuo-data"
    );
}

/// README's `haoshuo --demo`: the chat page is served at `/demo` (what it
/// does in a browser is tests/browser.rs's).
#[test]
fn the_demo_command_serves_the_page() {
    let cmds = claimed("the_demo_command_serves_the_page");
    let [cmd] = &cmds[..] else {
        panic!("one `haoshuo --demo`: {cmds:?}")
    };
    let srv = server_for(cmd);
    let r = request(srv.addr(), "GET", "/demo", &[], b"");
    assert_eq!(r.status, 200, "{cmd}");
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let page = String::from_utf8(r.body).expect("UTF-8");
    assert!(page.contains("<title>haoshuo demo</title>"), "{page}");
}

#[test]
fn the_load_commands_run_at_tiny_sizes() {
    let cmds = claimed("the_load_commands_run_at_tiny_sizes");
    let (starts, loads): (Vec<&DocCommand>, Vec<&DocCommand>) = cmds
        .iter()
        .partition(|c| !words(&c.text)[0].ends_with("haoshuo-load"));
    let [start] = &starts[..] else {
        panic!("one server start before the load commands: {starts:?}")
    };
    let srv = server_for(start);
    let pid = srv.pid().to_string();
    let dir = tempfile::tempdir().expect("a temporary dir");
    for cmd in loads {
        let mut w = words(&cmd.text.replace("$(pidof haoshuo)", &pid));
        w[0] = load_bin().to_string();
        for word in w.iter_mut().filter(|w| *w == "PID") {
            *word = pid.clone();
        }
        set_flag(&mut w, "--target", &srv.addr().to_string());
        set_flag(&mut w, "--admin", &srv.admin_addr().to_string());
        let scenario = w[1].clone();
        if scenario == "idle" {
            set_flag(&mut w, "--hold", "1");
        }
        shrink(&mut w);
        let out = Command::new(&w[0])
            .args(&w[1..])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run haoshuo-load");
        let stdout = text(&out.stdout);
        assert!(
            out.status.success() && load_report_passed(&stdout, &scenario),
            "{cmd}\nran {w:?}: {}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            text(&out.stderr)
        );
        if let Some(svg) = flag_value(&w, "--svg") {
            let chart = fs::read_to_string(dir.path().join(svg)).expect("the --svg chart");
            assert!(chart.contains("<svg"), "{cmd}: {svg} is no SVG");
        }
    }
}

#[test]
fn slow_sh_runs_at_tiny_sizes() {
    let results = tempfile::tempdir().expect("a temporary dir");
    for (i, cmd) in claimed("slow_sh_runs_at_tiny_sizes").iter().enumerate() {
        let dir = results.path().join(i.to_string());
        let dir = dir.to_str().expect("a UTF-8 path");
        let mut vars = SLOW_SH_TINY.to_vec();
        vars.extend([
            ("HAOSHUO", server_bin()),
            ("HAOSHUO_LOAD", load_bin()),
            ("RESULTS", dir),
        ]);
        let out = sh(&cmd.text, &vars);
        let summary = fs::read_to_string(Path::new(dir).join("summary.md")).unwrap_or_default();
        assert!(
            out.status.success() && !summary.is_empty(),
            "{cmd}: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// c1m.sh at 300 streams, a second of idling and a second of traffic:
/// Redis, the supervisor and its processes, the chat run and the check,
/// then everything stopped. Sysctls are left alone. A command's own
/// settings (`NETNS=1`, `EXTRA=...`) are kept, the sizes made tiny; a
/// network namespace needs root, so without it the run stays outside one.
/// Then the chart script draws the runs' memory.
const C1M_TINY: &str = "IDLE=1 RATE=100 SECS=1 CONNECT_WAIT=60 INFLIGHT=1000";

#[test]
fn c1m_sh_runs_at_a_tiny_size() {
    let root = bash("id -u", &[]).trim() == "0";
    let mut outs = Vec::new();
    for cmd in claimed("c1m_sh_runs_at_a_tiny_size") {
        let line = cmd.text.replace("\\\n", " ");
        let Some(at) = line.find("loadtest/c1m.sh") else {
            continue; // the chart, drawn below
        };
        let w = words(&line[at..]);
        assert_eq!(w.len(), 2, "[SETTINGS] loadtest/c1m.sh CONNS: {cmd}");
        let no_netns = if root { "" } else { "NETNS=0" };
        let script = format!("{} {C1M_TINY} {no_netns} {} 300", &line[..at], w[0]);
        let out_dir = tempfile::tempdir().expect("a temporary dir");
        let vars = [
            ("RAISE_SYSCTLS", "0"),
            ("HAOSHUO_BIN", server_bin()),
            ("HAOSHUO_LOAD", load_bin()),
            ("OUT", out_dir.path().to_str().expect("a UTF-8 path")),
        ];
        let out = sh(&script, &vars);
        let stdout = text(&out.stdout);
        let report = stdout
            .find("== haoshuo-load chat ==")
            .map_or("", |at| &stdout[at..]);
        assert!(
            out.status.success()
                && stdout.contains("haoshuo supervisor pid ")
                && load_report_passed(report, "chat")
                && report.contains("\nredis_cpu_secs "),
            "{cmd}\nran {script}: {}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            text(&out.stderr)
        );
        outs.push(out_dir);
    }
    let charts: Vec<DocCommand> = claimed("c1m_sh_runs_at_a_tiny_size")
        .into_iter()
        .filter(|c| c.text.starts_with("loadtest/c1m_chart.py"))
        .collect();
    assert!(
        !charts.is_empty() && !outs.is_empty(),
        "c1m.md draws no chart"
    );
    let svg_dir = tempfile::tempdir().expect("a temporary dir");
    for cmd in charts {
        let svg = svg_dir.path().join("c1m.svg");
        let runs: Vec<&str> = outs.iter().map(|d| d.path().to_str().unwrap()).collect();
        let script = format!(
            "{} {} {}",
            words(&cmd.text)[0],
            svg.display(),
            runs.join(" ")
        );
        let out = sh(&script, &[]);
        let drawn = std::fs::read_to_string(&svg).unwrap_or_default();
        assert!(
            out.status.success() && drawn.starts_with("<svg") && drawn.contains("<polyline"),
            "{cmd}\nran {script}: {}\nstderr:\n{}",
            out.status,
            text(&out.stderr)
        );
    }
}

/// Runs each doc command `runner` claims from where `script` starts in
/// it, with `vars` in the environment, and checks it succeeds and prints
/// every line of `expect`.
fn run_script_printing(runner: &str, script: &str, vars: &[(&str, &str)], expect: &[&str]) {
    for cmd in claimed(runner) {
        let at = cmd.text.find(script).expect("the script");
        let script = &cmd.text[at..];
        let out = sh(script, vars);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success() && expect.iter().all(|e| stdout.contains(e)),
            "{cmd}\nran {script}: {}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            text(&out.stderr)
        );
    }
}

/// idle_stores.sh with one build (this test's server), 50 streams held a
/// second, one round on each store: it prints its medians table.
#[test]
fn idle_stores_sh_runs_at_a_tiny_size() {
    let results = tempfile::tempdir().expect("a temporary dir");
    let build = format!("tiny={}", server_bin());
    let vars = [
        ("BUILDS", build.as_str()),
        ("STORES", "embedded redis"),
        ("ROUNDS", "1"),
        ("CONNS", "50"),
        ("HOLD", "1"),
        ("HAOSHUO_LOAD", load_bin()),
        ("RESULTS", results.path().to_str().expect("a UTF-8 path")),
    ];
    run_script_printing(
        "idle_stores_sh_runs_at_a_tiny_size",
        "loadtest/bench/idle_stores.sh",
        &vars,
        &["| store | tiny |", "| embedded | ", "| redis | "],
    );
}

#[test]
fn fanout_cpu_sh_runs_at_tiny_sizes() {
    for cmd in claimed("fanout_cpu_sh_runs_at_tiny_sizes") {
        let at = cmd
            .text
            .find("loadtest/bench/fanout_cpu.sh")
            .expect("the script");
        let (vars, call) = cmd.text.split_at(at);
        let w = words(call);
        assert_eq!(w.len(), 5, "fanout_cpu.sh BIN MEMBERS MSGS RATE: {cmd}");
        let script = format!("{vars}{} {} {FANOUT_CPU_TINY}", w[0], server_bin());
        let out = sh(&script, &[("HAOSHUO_LOAD", load_bin())]);
        let stdout = text(&out.stdout);
        let (first, report) = stdout.split_once('\n').unwrap_or((&stdout, ""));
        assert!(
            out.status.success()
                && first.starts_with("exit=0 server_cpu_s=")
                && load_report_passed(report, "fanout"),
            "{cmd}\nran {script}: {}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            text(&out.stderr)
        );
    }
}

/// cluster.sh with one round of everything, a second of wrk, 50 sends and
/// a 50-member group, this test's (debug) server on both stores.
#[test]
fn cluster_sh_runs_at_tiny_sizes() {
    let results = tempfile::tempdir().expect("a temporary dir");
    let vars = [
        ("ROUNDS", "1"),
        ("WRK_DURATION", "1s"),
        ("P_COUNT", "50"),
        ("FANOUT_MEMBERS", "50"),
        ("FANOUT_MSGS", "3"),
        ("HAOSHUO", server_bin()),
        ("HAOSHUO_LOAD", load_bin()),
        ("RESULTS", results.path().to_str().expect("a UTF-8 path")),
    ];
    run_script_printing(
        "cluster_sh_runs_at_tiny_sizes",
        "loadtest/bench/cluster.sh",
        &vars,
        &[
            "| `/p` requests/s",
            "| Redis commands per `/p` (all nodes) |",
            "fan-out checks: PASS PASS",
        ],
    );
}

#[test]
fn fanout_vs_nchan_sh_runs_at_tiny_sizes() {
    if ProxyKind::Nginx.installed().is_none() || !Path::new(NCHAN_MODULE).is_file() {
        eprintln!("skipped: nginx's nchan module is not installed (.ci/run installs it)");
        return;
    }
    let out_dir = tempfile::tempdir().expect("a temporary dir");
    for cmd in claimed("fanout_vs_nchan_sh_runs_at_tiny_sizes") {
        let mut vars = FANOUT_VS_NCHAN_TINY.to_vec();
        vars.extend([
            ("HAOSHUO_BIN", server_bin()),
            ("HAOSHUO_LOAD", load_bin()),
            ("OUT", out_dir.path().to_str().expect("a UTF-8 path")),
        ]);
        let out = sh(&cmd.text, &vars);
        let stdout = text(&out.stdout);
        // One line per run: `haoshuo  20x3x50  run 1: exit 0 ... check PASS ...`.
        let runs: Vec<&str> = stdout.lines().filter(|l| l.contains(" run 1: ")).collect();
        assert!(
            out.status.success()
                && runs.len() == 2
                && runs
                    .iter()
                    .all(|l| l.contains(": exit 0 ") && l.contains(" check PASS ")),
            "{cmd}: {}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            text(&out.stderr)
        );
    }
}

#[test]
fn hostile_py_runs_briefly() {
    let cmds = claimed("hostile_py_runs_briefly");
    let (starts, runs): (Vec<&DocCommand>, Vec<&DocCommand>) =
        cmds.iter().partition(|c| !c.text.starts_with("python3 "));
    let [start] = &starts[..] else {
        panic!("one server start before hostile.py: {starts:?}")
    };
    for cmd in runs {
        // A fresh server per measurement, as the doc has it (the logins
        // use up the address's /login budget).
        let srv = server_for(start);
        let mut w = words(&cmd.text.replace("$PID", &srv.pid().to_string()));
        set_flag(&mut w, "--server", &srv.addr().to_string());
        shrink(&mut w);
        let out = sh(&w.join(" "), &[]);
        let stdout = text(&out.stdout);
        // Its report starts with the measurement's name: `logins: ...`.
        assert!(
            out.status.success() && stdout.starts_with(&format!("{}:", w[2])),
            "{cmd}\nran {w:?}: {}\nstdout:\n{stdout}\nstderr:\n{}",
            out.status,
            text(&out.stderr)
        );
    }
}

#[test]
fn the_deploy_commands_serve_through_each_proxy() {
    let srv = Server::start(Backend::Embedded, Opts::default());
    let cmds = claimed("the_deploy_commands_serve_through_each_proxy");
    let dir = tempfile::tempdir().expect("a temporary dir");
    // nginx's workers drop root (to `nobody`) and must reach their prefix.
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
        .expect("make the dir readable");
    let mut served = 0;
    for kind in [ProxyKind::Nginx, ProxyKind::Haproxy] {
        if kind.installed().is_none() {
            continue;
        }
        let file = match kind {
            ProxyKind::Nginx => "nginx.conf",
            ProxyKind::Haproxy => "haproxy.cfg",
        };
        // The doc's commands with its placeholders filled in, and the config
        // with the two lines it says to change changed.
        let port = free_port();
        let config = dir.path().join(file);
        fs::write(&config, kind.config(port, srv.addr())).expect("write the config");
        let prefix = dir.path().join("haoshuo-nginx");
        let script: Vec<String> = cmds
            .iter()
            .filter(|c| c.text.contains(kind.name()))
            .map(|c| {
                c.text
                    .replace("/srv/haoshuo-nginx", &prefix.display().to_string())
                    .replace(
                        &format!("/path/to/loadtest/proxy/{file}"),
                        &config.display().to_string(),
                    )
            })
            .collect();
        assert!(
            !script.is_empty(),
            "no {} command in docs/deploy.md",
            kind.name()
        );
        let log = fs::File::create(dir.path().join(format!("{file}.log"))).expect("a log file");
        let mut child = Command::new("bash")
            .arg("-c")
            .arg(match kind {
                // It daemonizes: bash ends once nginx listens.
                ProxyKind::Nginx => script.join("\n"),
                // `-db`: the foreground; bash becomes haproxy.
                ProxyKind::Haproxy => format!("exec {}", script.join("\n")),
            })
            .env(
                "PATH",
                format!(
                    "{}:/usr/local/sbin:/usr/sbin:/sbin",
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .expect("run bash");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        // What stops the proxy at the end: nginx's master by its pid file,
        // haproxy as the child it is.
        let _stop: (Option<StopOnDrop>, Option<KillOnDrop>) = match kind {
            ProxyKind::Nginx => {
                let status = child.wait().expect("nginx starts");
                let pid = fs::read_to_string(prefix.join("nginx.pid")).unwrap_or_default();
                let master = pid.trim().parse().ok().map(StopOnDrop);
                let log = fs::read_to_string(dir.path().join("nginx.conf.log")).unwrap_or_default();
                assert!(
                    status.success() && master.is_some(),
                    "{script:?}: {status}\n{log}"
                );
                (master, None)
            }
            ProxyKind::Haproxy => {
                let mut haproxy = KillOnDrop(child);
                assert!(
                    wait_ready(addr, &mut haproxy.0),
                    "haproxy does not accept connections"
                );
                (None, Some(haproxy))
            }
        };
        let out = bash(
            &format!(
                r#"curl -s http://{addr}/re --data-urlencode 'haoshuo={{"appid":"deploy","username":"{}","pass":"123"}}'"#,
                kind.name()
            ),
            &[],
        );
        let answer: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("no JSON through {} ({e}): {out:?}", kind.name()));
        assert_eq!(answer["username"], kind.name(), "{answer}");
        assert!(answer["uid"].is_u64(), "{answer}");
        served += 1;
    }
    if served == 0 {
        eprintln!("skipped: neither nginx nor haproxy is installed");
    }
}
