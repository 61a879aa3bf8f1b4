//! Logs: one line per event on stderr, `<UTC time> <LEVEL> <message>`,
//! and the optional access log (`--access-log`), one `ACCESS` line per
//! answered request.
//!
//! A level (`--log-level error|warn|info|debug`, info by default) says
//! which lines are written; the macros format nothing for a level that is
//! off. Errors and warnings that repeat word for word are rate-limited: the
//! first is written, and the repeats of the next second are counted and
//! written as one line (`... (N more in the last second)`), so a store that
//! went away yields a line a second, not one per request. The limiter takes
//! the time as an argument and is tested without sleeping; a small thread
//! (`start_flusher`) writes the counts of repeats that stopped.
//!
//! Each line goes out with one `write` to stderr, so lines from several
//! threads never interleave. Nothing here is on the delivery path: the
//! reactors log only failures, and the access log is off by default.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How bad an event is; a line is written when its level is at most the
/// configured one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);
static ACCESS: AtomicBool = AtomicBool::new(false);

/// Sets the level (`--log-level`) and whether requests are logged
/// (`--access-log`).
pub fn configure(level: Level, access: bool) {
    LEVEL.store(level as u8, Relaxed);
    ACCESS.store(access, Relaxed);
}

/// Whether lines of `level` are written.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Relaxed)
}

/// Whether the access log is on.
pub fn access_enabled() -> bool {
    ACCESS.load(Relaxed)
}

/// Writes a line at a level: `log!(Level::Warn, "...", args)`.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        if $crate::log::enabled($level) {
            $crate::log::write($level, &format!($($arg)+));
        }
    };
}

#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Error, $($arg)+) };
}

#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Warn, $($arg)+) };
}

#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Info, $($arg)+) };
}

#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::log::Level::Debug, $($arg)+) };
}

/// The window in which repeats of one error are counted, not written.
const REPEAT_WINDOW: Duration = Duration::from_secs(1);
/// Distinct messages the limiter remembers; beyond it, messages it does
/// not know are written unlimited until the window lets it forget some
/// (a bound on memory, not a case that happens: errors are few kinds).
const REMEMBERED: usize = 1024;

fn limiter() -> &'static Mutex<Limiter> {
    static LIMITER: OnceLock<Mutex<Limiter>> = OnceLock::new();
    LIMITER.get_or_init(|| Mutex::new(Limiter::default()))
}

/// Writes `msg` at `level` (the macros check [`enabled`] first). Errors and
/// warnings go through the rate limit.
pub fn write(level: Level, msg: &str) {
    if level <= Level::Warn {
        let now = Instant::now();
        let mut lim = limiter().lock().unwrap_or_else(|e| e.into_inner());
        let due = lim.due(now);
        let fresh = lim.note(level, msg, now);
        drop(lim);
        write_repeats(&due);
        if !fresh {
            return;
        }
    }
    emit(level.name(), msg);
}

/// Writes the counts of repeats whose window passed; `start_flusher`'s
/// thread calls it once a second.
pub fn flush_repeats() {
    let due = limiter()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .due(Instant::now());
    write_repeats(&due);
}

fn write_repeats(due: &[Repeats]) {
    for r in due {
        let s = if r.count == 1 { "" } else { "s" };
        let msg = format!("{} ({} more time{s} in the last second)", r.msg, r.count);
        emit(r.level.name(), &msg);
    }
}

/// Starts the thread that writes the counts of repeats once their second
/// is over (without it they would wait for the next error).
pub fn start_flusher() {
    let _ = std::thread::Builder::new()
        .name("haoshuo-log".into())
        .spawn(|| loop {
            std::thread::sleep(REPEAT_WINDOW);
            flush_repeats();
        });
}

/// One line to stderr, with one write.
fn emit(tag: &str, msg: &str) {
    let mut line = String::with_capacity(40 + msg.len());
    write_time(&mut line, SystemTime::now());
    line.push(' ');
    line.push_str(tag);
    line.push(' ');
    // One event, one line: a message never breaks the line in two.
    line.extend(msg.chars().map(|c| if c == '\n' { ' ' } else { c }));
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Appends `t` as UTC, ISO 8601 with milliseconds: `2026-05-01T12:00:00.123Z`.
fn write_time(out: &mut String, t: SystemTime) {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// The (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// One answered request, for the access log.
pub struct Access<'a> {
    /// The client: the socket's peer, or the address a trusted proxy named.
    pub client: Option<std::net::IpAddr>,
    pub method: &'a [u8],
    /// Path and query, the query's `token` left out.
    pub target: &'a str,
    pub status: u16,
    /// Bytes of the answer; `None` for a stream, poll or WebSocket, whose
    /// body is streamed after this line.
    pub bytes: Option<usize>,
    pub took: Duration,
}

/// Writes an access line (when `--access-log` is on):
/// `<time> ACCESS <client> <method> <target> <status> <bytes> <ms>ms`.
pub fn access(a: &Access) {
    if !access_enabled() {
        return;
    }
    let mut msg = String::with_capacity(96 + a.target.len());
    match a.client {
        Some(ip) => write!(msg, "{ip} "),
        None => write!(msg, "- "),
    }
    .ok();
    msg.extend(a.method.iter().map(|&b| {
        if b.is_ascii_graphic() {
            char::from(b)
        } else {
            '?'
        }
    }));
    let _ = write!(msg, " {} {} ", a.target, a.status);
    match a.bytes {
        Some(n) => write!(msg, "{n} "),
        None => write!(msg, "- "),
    }
    .ok();
    let _ = write!(msg, "{:.3}ms", a.took.as_secs_f64() * 1000.0);
    emit("ACCESS", &msg);
}

/// `path` and `query` as the access log shows them: the `token`
/// parameter left out (a token is a credential), bytes that are not
/// printable ASCII escaped.
pub fn access_target(path: &[u8], query: &[u8]) -> String {
    let mut out = String::with_capacity(path.len() + query.len() + 1);
    push_printable(&mut out, path);
    let mut first = true;
    for param in query.split(|&b| b == b'&') {
        let name = param.split(|&b| b == b'=').next().unwrap_or(b"");
        if name == b"token" || param.is_empty() {
            continue;
        }
        out.push(if first { '?' } else { '&' });
        first = false;
        push_printable(&mut out, param);
    }
    out
}

fn push_printable(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_graphic() {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// The client of a request that came through `peer`: the address the
/// nearest untrusted hop of `X-Forwarded-For` names when `peer` is one of
/// the `trusted` proxies (`--trust-proxy`), else `peer` itself. The
/// header's entries are read from the right (the hop nearest us) past the
/// trusted proxies; one that is not an address ends the walk, and the last
/// trusted hop is the client then.
pub fn client_addr(
    peer: std::net::IpAddr,
    forwarded_for: Option<&[u8]>,
    trusted: &[std::net::IpAddr],
) -> std::net::IpAddr {
    let (Some(header), true) = (forwarded_for, trusted.contains(&peer)) else {
        return peer;
    };
    let mut client = peer;
    for hop in header.rsplit(|&b| b == b',') {
        let Some(ip) = std::str::from_utf8(hop)
            .ok()
            .and_then(|s| s.trim().parse::<std::net::IpAddr>().ok())
        else {
            break;
        };
        client = ip;
        if !trusted.contains(&ip) {
            break;
        }
    }
    client
}

/// Repeats of one message, counted in its window and now due.
#[derive(Debug, PartialEq, Eq)]
struct Repeats {
    level: Level,
    msg: String,
    count: u64,
}

/// The rate limit of repeated errors: per message, the window its first
/// line opened and the repeats counted in it.
#[derive(Default)]
struct Limiter {
    seen: HashMap<String, Window>,
}

struct Window {
    level: Level,
    opened: Instant,
    repeats: u64,
}

impl Limiter {
    /// A message at `now`: true if it is to be written (the first in its
    /// window), false if it was counted as a repeat.
    fn note(&mut self, level: Level, msg: &str, now: Instant) -> bool {
        if let Some(w) = self.seen.get_mut(msg) {
            if now.duration_since(w.opened) < REPEAT_WINDOW {
                w.repeats += 1;
                return false;
            }
            // `due` took the window's count: this opens a new one.
            w.opened = now;
            return true;
        }
        if self.seen.len() < REMEMBERED {
            let opened = now;
            self.seen.insert(
                msg.to_owned(),
                Window {
                    level,
                    opened,
                    repeats: 0,
                },
            );
        }
        true
    }

    /// The counts of windows that closed by `now` with repeats in them;
    /// windows that closed without any are forgotten.
    fn due(&mut self, now: Instant) -> Vec<Repeats> {
        let mut due = Vec::new();
        self.seen.retain(|msg, w| {
            if now.duration_since(w.opened) < REPEAT_WINDOW {
                return true;
            }
            if w.repeats == 0 {
                return false;
            }
            due.push(Repeats {
                level: w.level,
                msg: msg.clone(),
                count: std::mem::take(&mut w.repeats),
            });
            // Repeats go on: the next one opens a window of its own.
            w.opened = now;
            true
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_and_reported_once_a_second() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut lim = Limiter::default();
        // (time in ms, message, written?)
        let steps: &[(u64, &str, bool)] = &[
            (0, "store down", true),
            (10, "store down", false),
            (20, "other", true),
            (500, "store down", false),
            (999, "store down", false),
        ];
        for &(ms, msg, written) in steps {
            assert!(lim.due(at(ms)).is_empty(), "{ms}");
            assert_eq!(lim.note(Level::Error, msg, at(ms)), written, "{ms} {msg}");
        }
        // The second is over: one count for the three repeats; "other"
        // has none and is forgotten once its own second is over.
        let due = lim.due(at(1000));
        assert_eq!(
            due,
            [Repeats {
                level: Level::Error,
                msg: "store down".into(),
                count: 3
            }]
        );
        assert!(lim.seen.contains_key("other"));
        assert!(lim.due(at(1020)).is_empty());
        assert!(!lim.seen.contains_key("other"));
        // Still repeating: counted in the next window, reported after it.
        assert!(!lim.note(Level::Error, "store down", at(1500)));
        assert!(lim.due(at(1999)).is_empty());
        assert_eq!(lim.due(at(2000))[0].count, 1);
        // Quiet for a window: forgotten; the next is written again.
        assert!(lim.due(at(3000)).is_empty());
        assert!(lim.seen.is_empty());
        assert!(lim.note(Level::Error, "store down", at(3001)));
    }

    #[test]
    fn the_limiter_remembers_a_bounded_number_of_messages() {
        let now = Instant::now();
        let mut lim = Limiter::default();
        for i in 0..REMEMBERED + 10 {
            assert!(lim.note(Level::Warn, &format!("m{i}"), now));
        }
        assert_eq!(lim.seen.len(), REMEMBERED);
        // Beyond the bound, a message is written each time.
        assert!(lim.note(Level::Warn, "m1030", now));
    }

    #[test]
    fn times_are_utc_iso_8601() {
        // (unix seconds, millis, text)
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.005Z"),
            (1_777_636_800, 123, "2026-05-01T12:00:00.123Z"),
            (4_107_542_399, 999, "2100-02-28T23:59:59.999Z"),
        ];
        for (secs, ms, want) in cases {
            let t = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms);
            let mut out = String::new();
            write_time(&mut out, t);
            assert_eq!(out, want);
        }
    }

    #[test]
    fn the_access_target_leaves_the_token_out() {
        let cases: &[(&[u8], &[u8], &str)] = &[
            (b"/p", b"", "/p"),
            (
                b"/cget/stream",
                b"seq=1&cname=2&token=abc",
                "/cget/stream?seq=1&cname=2",
            ),
            (b"/cget/ws", b"token=abc&seq=3", "/cget/ws?seq=3"),
            (b"/x", b"tokens=1&token", "/x?tokens=1"),
            (b"/a b", b"q=\x01", "/a%20b?q=%01"),
        ];
        for &(path, query, want) in cases {
            assert_eq!(access_target(path, query), want);
        }
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let proxy = ip("10.0.0.1");
        let trusted = [proxy, ip("10.0.0.2")];
        // (peer, X-Forwarded-For, client)
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("10.0.0.1", Some("203.0.113.7"), "203.0.113.7"),
            ("10.0.0.1", None, "10.0.0.1"),
            // An untrusted peer's header is not believed.
            ("192.0.2.9", Some("203.0.113.7"), "192.0.2.9"),
            // From the right, past trusted hops; what the client claimed
            // to the left of the first untrusted hop is not believed.
            (
                "10.0.0.1",
                Some("1.1.1.1, 203.0.113.7, 10.0.0.2"),
                "203.0.113.7",
            ),
            ("10.0.0.1", Some("::1"), "::1"),
            // Garbage ends the walk.
            ("10.0.0.1", Some("nonsense, 10.0.0.2"), "10.0.0.2"),
            ("10.0.0.1", Some("nonsense"), "10.0.0.1"),
        ];
        for &(peer, xff, want) in cases {
            let got = client_addr(ip(peer), xff.map(str::as_bytes), &trusted);
            assert_eq!(got, ip(want), "{peer} {xff:?}");
        }
    }
}
