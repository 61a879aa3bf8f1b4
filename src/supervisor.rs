//! `haoshuo --processes N`: several server processes on one box, started
//! with one command.
//!
//! One process holds as many connections as it may open files; past that,
//! more processes share the listen address (`SO_REUSEPORT`: the kernel
//! spreads new connections over them) and reach each other through Redis,
//! as nodes do. The supervisor only starts them, restarts one that dies
//! (with a back-off, logged), forwards SIGTERM/SIGINT, and exits once every
//! child has stopped. It serves nothing itself and holds no store.

use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::config::{resolve, Config, Processes};

/// How often children and signals are looked at.
const TICK: Duration = Duration::from_millis(50);
/// First wait before a dead child is started again; doubles per quick
/// death up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest wait between restarts of a child that keeps dying.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A child that ran this long died of something new: its back-off starts
/// over.
const HEALTHY_AFTER: Duration = Duration::from_secs(30);
/// How long stopping children get before they are killed: their own drain
/// (5 s) and then some.
const STOP_WAIT: Duration = Duration::from_secs(15);
/// Open files a process keeps for other things than client connections
/// (Redis connections, listeners, the log), when `auto` sizes the fleet.
const FILES_RESERVED: u64 = 500;
/// Most processes `auto` starts.
const AUTO_MAX: usize = 256;

/// One child slot.
struct Slot {
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    /// When a dead child is due to be started again.
    restart_at: Option<Instant>,
}

/// Runs the fleet until SIGTERM/SIGINT and every child has exited.
pub fn run(cfg: &Config, processes: Processes, nofile_hard: u64) -> Result<(), String> {
    if cfg.redis.is_none() {
        return Err(
            "--processes needs --redis: the embedded store belongs to one process \
             (its data dir is locked), so several processes cannot share it"
                .into(),
        );
    }
    let n = match processes {
        Processes::Count(n) => n,
        Processes::Auto => auto_count(cfg.max_conns as u64, nofile_hard),
    };
    let listen = concrete(&cfg.listen, "--listen")?;
    let admin = match &cfg.admin_listen {
        Some(a) => Some(concrete(a, "--admin-listen")?),
        None => None,
    };
    let args = child_args(std::env::args_os().skip(1), &listen, admin.as_deref());
    let exe = std::env::current_exe().map_err(|e| format!("finding my own binary: {e}"))?;
    let mut signals =
        Signals::new([SIGTERM, SIGINT]).map_err(|e| format!("installing signal handlers: {e}"))?;
    println!(
        "haoshuo supervisor pid {}: {n} processes serving {listen} admin={} capacity={} connections ({n} x {} open files)",
        std::process::id(),
        admin.as_deref().unwrap_or("off"),
        n as u64 * nofile_hard.saturating_sub(FILES_RESERVED),
        nofile_hard,
    );
    let spawn = |i: usize| -> Result<Child, String> {
        let mut cmd = Command::new(&exe);
        cmd.args(&args)
            .env_remove("HAOSHUO_PROCESSES")
            .stdin(Stdio::null());
        // A supervisor that dies without stopping its children (SIGKILL)
        // takes them with it: each gets SIGTERM and stops cleanly.
        // SAFETY: between fork and exec the closure only calls prctl and
        // getppid, which are async-signal-safe, and allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The supervisor died before the prctl took: stop now.
                if libc::getppid() == 1 {
                    return Err(std::io::Error::other("the supervisor is gone"));
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting process {i}: {e}"))?;
        println!("haoshuo supervisor: process {i} pid {} started", child.id());
        Ok(child)
    };
    let mut slots = Vec::with_capacity(n);
    for i in 0..n {
        slots.push(Slot {
            child: Some(spawn(i)?),
            started: Instant::now(),
            backoff: BACKOFF_START,
            restart_at: None,
        });
    }
    let mut stopping: Option<Instant> = None;
    loop {
        if stopping.is_none() && signals.pending().next().is_some() {
            println!("haoshuo supervisor: stopping {n} processes");
            for slot in &slots {
                if let Some(c) = &slot.child {
                    signal(c, libc::SIGTERM);
                }
            }
            stopping = Some(Instant::now() + STOP_WAIT);
        }
        let now = Instant::now();
        for (i, slot) in slots.iter_mut().enumerate() {
            if let Some(status) = exited(&mut slot.child) {
                if stopping.is_some() {
                    continue;
                }
                if now.duration_since(slot.started) >= HEALTHY_AFTER {
                    slot.backoff = BACKOFF_START;
                }
                warn!(
                    "haoshuo supervisor: process {i} exited ({status}); restarting in {} ms",
                    slot.backoff.as_millis()
                );
                slot.restart_at = Some(now + slot.backoff);
                slot.backoff = (slot.backoff * 2).min(BACKOFF_MAX);
            }
            if stopping.is_none() && slot.restart_at.is_some_and(|at| at <= now) {
                slot.restart_at = None;
                slot.started = now;
                match spawn(i) {
                    Ok(c) => slot.child = Some(c),
                    Err(e) => {
                        error!("haoshuo supervisor: {e}");
                        slot.restart_at = Some(now + slot.backoff);
                    }
                }
            }
        }
        if let Some(deadline) = stopping {
            if slots.iter().all(|s| s.child.is_none()) {
                return Ok(());
            }
            if now >= deadline {
                for slot in &mut slots {
                    if let Some(mut c) = slot.child.take() {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                }
                return Err("processes still running after SIGTERM were killed".into());
            }
        }
        std::thread::sleep(TICK);
    }
}

/// How many processes hold `max_conns` connections when each may open
/// `nofile` files.
pub fn auto_count(max_conns: u64, nofile: u64) -> usize {
    let per = nofile.saturating_sub(FILES_RESERVED).max(1);
    usize::try_from(max_conns.div_ceil(per))
        .unwrap_or(AUTO_MAX)
        .clamp(1, AUTO_MAX)
}

/// `spec` with a port the children can all bind: port 0 (any free port)
/// is chosen here, once, for all of them.
fn concrete(spec: &str, flag: &str) -> Result<String, String> {
    let addrs = resolve(spec, flag)?;
    if addrs.iter().all(|a| a.port() != 0) {
        return Ok(spec.to_owned());
    }
    let probe = TcpListener::bind(SocketAddr::new(addrs[0].ip(), 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("{flag} {spec}: finding a free port: {e}"))?;
    let host = spec.rsplit_once(':').map_or(spec, |(h, _)| h);
    Ok(format!("{host}:{}", probe.port()))
}

/// The supervisor's own arguments for a child: without `--processes`,
/// with the concrete listen addresses, and sharing them (`--reuseport`).
fn child_args(
    args: impl Iterator<Item = OsString>,
    listen: &str,
    admin: Option<&str>,
) -> Vec<OsString> {
    const REPLACED: [&str; 3] = ["--processes", "--listen", "--admin-listen"];
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        let text = arg.to_string_lossy();
        if REPLACED.contains(&text.as_ref()) {
            skip_value = true;
            continue;
        }
        if REPLACED.iter().any(|f| {
            text.strip_prefix(f)
                .is_some_and(|rest| rest.starts_with('='))
        }) {
            continue;
        }
        out.push(arg);
    }
    out.extend(["--listen".into(), listen.into()]);
    if let Some(a) = admin {
        out.extend(["--admin-listen".into(), a.into()]);
    }
    if !out.iter().any(|a| a == "--reuseport") {
        out.push("--reuseport".into());
    }
    out
}

/// The child's exit status once it has exited (the slot is then empty).
fn exited(child: &mut Option<Child>) -> Option<ExitStatus> {
    let status = child.as_mut()?.try_wait().ok().flatten()?;
    *child = None;
    Some(status)
}

fn signal(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) only sends a signal; the pid is our own child's,
        // not yet reaped, so it cannot name another process.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn children_get_the_concrete_addresses_and_share_them() {
        let given = args(&[
            "--processes",
            "4",
            "--redis",
            "redis://r/0",
            "--listen=0.0.0.0:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--threads",
            "1",
        ]);
        let out = child_args(given.into_iter(), "0.0.0.0:7000", Some("127.0.0.1:7001"));
        assert_eq!(
            out,
            args(&[
                "--redis",
                "redis://r/0",
                "--threads",
                "1",
                "--listen",
                "0.0.0.0:7000",
                "--admin-listen",
                "127.0.0.1:7001",
                "--reuseport",
            ])
        );
        let out = child_args(
            args(&["--reuseport", "--processes=auto"]).into_iter(),
            "h:1",
            None,
        );
        assert_eq!(out, args(&["--reuseport", "--listen", "h:1"]));
    }

    #[test]
    fn auto_holds_max_conns_at_the_file_limit() {
        assert_eq!(auto_count(1_000_000, 20_000), 52);
        assert_eq!(auto_count(19_500, 20_000), 1);
        assert_eq!(auto_count(19_501, 20_000), 2);
        assert_eq!(auto_count(1, 100), 1);
        assert_eq!(auto_count(u64::MAX, 1_000), AUTO_MAX);
    }

    #[test]
    fn port_zero_is_chosen_once() {
        let spec = concrete("127.0.0.1:0", "--listen").unwrap();
        let port: u16 = spec.rsplit_once(':').unwrap().1.parse().unwrap();
        assert_ne!(port, 0);
        assert_eq!(
            concrete("127.0.0.1:2012", "--listen").unwrap(),
            "127.0.0.1:2012"
        );
    }
}
