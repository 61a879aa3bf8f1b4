//! The `haoshuo` binary: parse the configuration, start, wait for a signal,
//! stop cleanly.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use haoshuo::config::Config;
use haoshuo::net::listener::raise_nofile_limit;
use haoshuo::server::Server;
use haoshuo::supervisor;

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cfg = Config::parse();
    haoshuo::log::configure(cfg.log_level, cfg.access_log);
    haoshuo::log::start_flusher();
    if let Some(processes) = cfg.processes {
        let hard = raise_nofile_limit().map_or(1024, |(_, hard)| hard);
        return match supervisor::run(&cfg, processes, hard) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    let mut signals = match Signals::new([SIGTERM, SIGINT]) {
        Ok(s) => s,
        Err(e) => return fail(&format!("installing signal handlers: {e}")),
    };
    let nofile = match raise_nofile_limit() {
        Ok((soft, hard)) => format!("{soft}/{hard}"),
        Err(e) => format!("unknown ({e})"),
    };
    let server = match Server::start(&cfg) {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    let admin = server
        .admin_addr()
        .map_or_else(|| "off".to_owned(), |a| a.to_string());
    println!(
        "haoshuo {} listening on {} admin={} store={} threads={} workers={} nofile={}",
        env!("CARGO_PKG_VERSION"),
        server
            .addrs()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(","),
        admin,
        server.store_name(),
        cfg.threads(),
        cfg.workers(),
        nofile,
    );
    let _ = std::io::stdout().flush();
    signals.forever().next();
    haoshuo::info!("stopping: answering everyone, then flushing the store");
    match server.stop() {
        Ok(()) => {
            haoshuo::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// Caps glibc malloc's arenas at one per core (its default is eight per
/// core). Each worker thread that allocates gets an arena of its own up to
/// the cap, and memory freed into one is kept for that arena: with the
/// Redis store's 32 workers on two cores, idle streams cost 574-851 bytes
/// of RSS each instead of 146 (`haoshuo-load idle`, 10,000 streams, one
/// user each; docs/benchmarks.md). Small allocations go through each
/// thread's own cache first, so fewer arenas cost little contention. An
/// operator's `MALLOC_ARENA_MAX` wins.
///
/// And fixes the thresholds glibc otherwise moves by itself: after the
/// first free of a block it had mapped on its own, it raises the mmap
/// threshold to that block's size and the trim threshold to twice it
/// (here past 7 MiB during start: the 7 MiB job queue was put in the
/// main arena), so an arena then kept up to twice that free at its top:
/// what a burst of connects left behind stayed resident (docs/benchmarks.md, session
/// 4). Fixed at glibc's own starting values, blocks of 128 KiB and more
/// (slabs, queues, the token cache's tables, a full page of
/// `--page-bytes`) are mapped on their own and unmapped when freed, and
/// an arena gives back what is free at its top beyond 128 KiB.
/// `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` set by an operator
/// win.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let unset = |name: &str| std::env::var_os(name).is_none();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets tunables of the allocator; it is
        // called before this process starts any thread.
        unsafe {
            if unset("MALLOC_ARENA_MAX") {
                libc::mallopt(libc::M_ARENA_MAX, arenas);
            }
            if unset("MALLOC_MMAP_THRESHOLD_") && unset("MALLOC_TRIM_THRESHOLD_") {
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            }
        }
    }
}

/// Blocks this large or larger are mapped on their own (see
/// [`limit_malloc_arenas`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 * 1024;
/// Free memory beyond this at an arena's top goes back to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 128 * 1024;

fn fail(msg: &str) -> ExitCode {
    haoshuo::error!("{msg}");
    ExitCode::FAILURE
}
