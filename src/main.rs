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

fn main() -> ExitCode {
    let cfg = Config::parse();
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

fn fail(msg: &str) -> ExitCode {
    eprintln!("haoshuo: {msg}");
    ExitCode::FAILURE
}
