//! A real browser for the tests: [`Browser`] runs headless Chromium
//! (Debian's `chromium`) with a fresh profile and drives its one page over
//! the Chrome DevTools Protocol through `cdp.py` (Python's `websockets`,
//! as `ws.rs` uses). A test navigates, runs JavaScript in the page and
//! waits on what the page shows; [`OnePage`] serves one HTML file from
//! another loopback port, a second web origin.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{left, python, WAIT};

/// Where Debian's package puts it (`apt-get install chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long Chromium may take to start and open its DevTools port.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Flags for a headless Chromium that runs as root in a container and
/// talks to nothing but the test's servers.
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
];

/// A headless Chromium and the DevTools pipe to its page. Dropping it
/// kills Chromium's whole process group and removes its profile.
pub struct Browser {
    chromium: Child,
    cdp: Child,
    stdin: ChildStdin,
    answers: Receiver<Value>,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Browser {
        assert!(
            Path::new(CHROMIUM).exists(),
            "no {CHROMIUM}: apt-get install chromium (.ci/run does)"
        );
        let profile = tempfile::tempdir().expect("a Chromium profile dir");
        let mut chromium = Command::new(CHROMIUM);
        chromium
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: its renderers and helpers go with it.
            .process_group(0);
        let chromium = chromium.spawn().expect("run chromium");
        // Chromium names the port it picked in its profile once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + START_TIMEOUT;
        let port = loop {
            let port = std::fs::read_to_string(&port_file)
                .ok()
                .and_then(|s| s.lines().next().and_then(|l| l.parse::<u16>().ok()));
            if let Some(port) = port {
                break port;
            }
            assert!(
                Instant::now() < deadline,
                "Chromium wrote no DevToolsActivePort within {START_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(20));
        };
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/cdp.py");
        let mut cdp = Command::new(python())
            .args([script, &port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run cdp.py");
        let stdout = cdp.stdout.take().expect("stdout");
        let (tx, answers) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("cdp.py said {line:?}: {e}"));
                if tx.send(v).is_err() {
                    return;
                }
            }
        });
        let stdin = cdp.stdin.take().expect("stdin");
        let browser = Browser {
            chromium,
            cdp,
            stdin,
            answers,
            _profile: profile,
        };
        let ready = browser.answers.recv_timeout(START_TIMEOUT);
        assert!(
            ready.as_ref().is_ok_and(|v| v["ready"] == true),
            "cdp.py did not attach to Chromium's page: {ready:?}"
        );
        browser
    }

    /// Sends one DevTools command; its result.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let cmd = json!({"method": method, "params": params});
        writeln!(self.stdin, "{cmd}").expect("write to cdp.py");
        self.stdin.flush().expect("flush to cdp.py");
        let answer = self
            .answers
            .recv_timeout(WAIT * 4)
            .unwrap_or_else(|e| panic!("no answer to {method} from cdp.py: {e}"));
        if let Some(error) = answer.get("error") {
            panic!("{method} failed: {error}");
        }
        answer["result"].clone()
    }

    /// Opens `url` and waits until it has loaded.
    pub fn goto(&mut self, url: &str) {
        let nav = self.call("Page.navigate", json!({"url": url}));
        assert!(nav.get("errorText").is_none(), "navigating to {url}: {nav}");
        self.wait_for(
            &format!("{url} loaded"),
            &format!(
                "location.href === {} && document.readyState === 'complete'",
                json!(url)
            ),
            WAIT,
        );
    }

    /// Evaluates `expr` in the page (awaiting it if it is a promise); its
    /// value. An exception thrown fails the test with its description.
    pub fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!(
                "{expr}\nthrew {}",
                ex["exception"]["description"].as_str().unwrap_or("?")
            );
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is truthy (fails after `timeout`, with
    /// what it last was); its value then.
    pub fn wait_for(&mut self, what: &str, expr: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(expr);
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(
                !left(deadline).is_zero(),
                "timed out after {timeout:?} waiting for {what} (`{expr}` is {v})"
            );
            thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.cdp.kill();
        let _ = self.cdp.wait();
        // The group Chromium leads (process_group(0) above), named by its
        // pid, negated.
        let group = -(self.chromium.id() as libc::pid_t);
        // SAFETY: kill(2) takes plain integers and touches no memory of ours.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.chromium.wait();
    }
}

/// A second web origin: a loopback port that answers every request with
/// one HTML page.
pub struct OnePage {
    addr: SocketAddr,
}

impl OnePage {
    pub fn serve(html: &str) -> OnePage {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("its address");
        let html: Arc<str> = Arc::from(html);
        // Lives as long as the test process; a test binary is short-lived.
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let html = html.clone();
                thread::spawn(move || {
                    // The request's head, then one answer, then close.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{html}",
                        html.len()
                    );
                    let _ = conn.write_all(answer.as_bytes());
                });
            }
        });
        OnePage { addr }
    }

    /// Its origin, `http://127.0.0.1:PORT`.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}
