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
    match server.stop() {
        Ok(()) => ExitCode::SUCCESS,
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
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets a tunable of the allocator; it is
        // called before this process starts any thread.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("haoshuo: {msg}");
    ExitCode::FAILURE
}
