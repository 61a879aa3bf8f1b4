//! `haoshuo-load`: the command line. Parses the subcommands (idle, fanout,
//! chat, poll, slow, floor) and their options, checks them, and runs the
//! scenario; the hidden `--worker` mode turns this process into a worker of
//! another `haoshuo-load` (see worker.rs).

mod checker;
mod client;
mod clock;
mod conn;
mod fleet;
mod floor;
mod ipc;
mod pace;
use haoshuo_loadtest::proto;
mod provision;
mod report;
mod scenarios;
mod sender;
mod slow;
mod sysctl;
mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Load client for the haoshuo IM push server.
///
/// Provisions fresh users, opens thousands of streaming (or long-polling)
/// subscriptions spread over worker processes, sends messages, and reports
/// connection counts, server memory, delivery latency and a delivery check
/// (every receiver must get msgids 1, 2, 3, ... each exactly once).
///
/// Start the server with an admin listener for bulk users, e.g.
///   haoshuo --listen 127.0.0.1:2012 --admin-listen 127.0.0.1:2013
/// then e.g.
///   haoshuo-load idle --conns 50000 --hold 30 --server-pid $(pidof haoshuo)
///   haoshuo-load fanout --members 1000 --msgs 100 --rate 50
///   haoshuo-load fanout --server-kind nchan --target 127.0.0.1:18081 --members 1000 --msgs 100 --rate 50
///   haoshuo-load chat --users 2000 --rate 500 --secs 20 --churn 5
///   haoshuo-load slow --readers 100 --owed-mb 5 --rate-kbps 1024 --server-pid $(pidof haoshuo)
///   haoshuo-load floor --conns 9500 --msgs 50 --rate 5   (no server: the kernel's floor)
/// Without an admin listener add `--provision login` (slow: one /re and
/// /login per user). Only loopback (127.0.0.0/8) targets are accepted.
///
/// Results go to stdout as a table (progress to stderr). Exit status: 0 all
/// good, 2 the check failed (messages lost, duplicated, out of order, send
/// errors, streams not all open, or a slow reader cut off), 1 the run could
/// not be done.
#[derive(Parser, Debug)]
#[command(name = "haoshuo-load", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Open N streams and hold them: connect rate, failures, server RSS
    /// per connection, kernel TCP memory.
    Idle {
        /// Streams to open (one fresh user each).
        #[arg(long, default_value_t = 1000)]
        conns: usize,
        /// Seconds to hold them open once connected.
        #[arg(long, default_value_t = 10)]
        hold: u64,
        #[command(flatten)]
        common: Common,
    },
    /// One group of N streaming members; post M group messages at R/s and
    /// measure fan-out delivery latency. With `--server-kind nchan`: N
    /// http-chunked subscribers of one channel of nginx + nchan
    /// (loadtest/nchan/nginx.conf; --target is its pub/sub listener), M
    /// messages published at R/s by one publisher, the same check.
    Fanout {
        /// Members of the group (each streams); nchan: subscribers.
        #[arg(long, default_value_t = 100)]
        members: usize,
        /// Group messages to post.
        #[arg(long, default_value_t = 100)]
        msgs: u64,
        /// Messages per second (0: as fast as the senders go).
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// The server under test.
        #[arg(long, value_enum, default_value_t = ServerKind::Haoshuo)]
        server_kind: ServerKind,
        /// nchan: the channel (default: unique per run, "fan<unix ms>").
        #[arg(long)]
        channel: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// U streaming users; single-chat messages (/p) between them at R/s
    /// for T seconds, any U in a row reaching every user once (and sent by
    /// every user once); optionally with stream churn, and an idle hold
    /// before the traffic (--idle-secs) that measures what holding costs.
    Chat {
        #[command(flatten)]
        chat: ChatArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Like chat, but receivers long-poll /cget/poll instead of streaming.
    Poll {
        #[command(flatten)]
        chat: ChatArgs,
        #[command(flatten)]
        common: Common,
    },
    /// R readers each owed M MiB of stored messages read their streams
    /// from seq=1 at a fixed rate through a small receive buffer: drain
    /// time per reader against the rate's floor, and the server's RSS
    /// growth while they drain against the growth of storing that volume.
    /// Every reader must get msgids 1..N once each, in order, on a stream
    /// the server never closed. The readers are this process's sockets
    /// (no worker fleet); --senders fill the inboxes; --procs,
    /// --max-inflight, --connect-*, --drain, --payload and --svg are not
    /// used.
    Slow {
        #[command(flatten)]
        slow: SlowArgs,
        #[command(flatten)]
        common: Common,
    },
    /// No server: the kernel's own share of a fan-out, as a reference.
    /// N loopback connections of this one process; --writers threads write
    /// each message (one --bytes frame) to their share of the accepted
    /// sockets, --readers threads poll the other ends. Delivery latency,
    /// CPU per write and per read, and each fan-out's wall time, with
    /// nothing but the kernel's work (floor.rs). Needs 2 file descriptors
    /// per connection.
    Floor {
        #[command(flatten)]
        floor: floor::FloorArgs,
    },
}

#[derive(Args, Debug, Clone)]
pub struct SlowArgs {
    /// Readers (one fresh user and one stream each; at most 1000).
    #[arg(long, default_value_t = 100)]
    pub readers: usize,
    /// MiB of messages stored for each reader before its stream opens
    /// (rounded up to whole messages).
    #[arg(long, default_value_t = 5.0)]
    pub owed_mb: f64,
    /// Each reader's read rate in KiB per second (1024: 1 MiB/s); 0 reads
    /// whatever arrives (for a link that is slow by itself).
    #[arg(long, default_value_t = 1024)]
    pub rate_kbps: u64,
    /// SO_RCVBUF of each stream socket, set before connect (the kernel
    /// doubles it); 0 leaves the kernel's default.
    #[arg(long, default_value_t = 8192)]
    pub rcvbuf: usize,
    /// Bytes of content per message.
    #[arg(long, default_value_t = 8192)]
    pub msg_bytes: usize,
    /// One reader owed 6 MiB (--readers 1 --owed-mb 6): its drain time
    /// against the link's floor (6 s at the default rate).
    #[arg(long, conflicts_with_all = ["readers", "owed_mb"])]
    pub single: bool,
    /// Give up draining after this many seconds (0: 3 x the rate's floor
    /// + 60 s; 600 s when unpaced).
    #[arg(long, default_value_t = 0)]
    pub max_secs: u64,
}

#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    /// Users (each receives and sends).
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Each second close this % of the subscriptions and reopen them at
    /// their last msgid + 1 (the check must still see each message once).
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Hold the subscriptions this many seconds with no traffic before
    /// sending, and report what holding them costs: the server's CPU (all
    /// its processes, with --server-pid), the machine's, server RSS, TCP
    /// buffers and kernel slab per connection.
    #[arg(long, default_value_t = 0)]
    pub idle_secs: u64,
}

/// Which server a fan-out drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ServerKind {
    /// haoshuo: a group message to N members, each streaming its inbox.
    Haoshuo,
    /// nginx + nchan: one channel, N http-chunked subscribers.
    Nchan,
}

/// How users are provisioned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProvisionMode {
    /// POST /admin/users on --admin (bulk, needs the server's admin listener).
    Admin,
    /// POST /re + /login per user, password "p" (any server; slow).
    Login,
}

#[derive(Args, Debug, Clone)]
pub struct Common {
    /// The server's public address.
    #[arg(long, default_value = "127.0.0.1:2012")]
    pub target: SocketAddr,
    /// The server's admin listener (haoshuo --admin-listen).
    #[arg(long, default_value = "127.0.0.1:2013")]
    pub admin: SocketAddr,
    /// X-Admin-Key for the admin listener, if the server wants one.
    #[arg(long)]
    pub admin_key: Option<String>,
    /// How to get users with tokens.
    #[arg(long, value_enum, default_value_t = ProvisionMode::Admin)]
    pub provision: ProvisionMode,
    /// The tenant to use.
    #[arg(long, default_value = "bench")]
    pub appid: String,
    /// Username prefix; default is unique per run ("r<unix time>-"), so
    /// every inbox starts empty as the checker requires.
    #[arg(long)]
    pub user_prefix: Option<String>,
    /// Worker processes (default: one per 19,000 connections).
    #[arg(long)]
    pub procs: Option<usize>,
    /// Most connections being set up at once, per worker.
    #[arg(long, default_value_t = 2000)]
    pub max_inflight: usize,
    /// Seconds one connection may take to come up before it counts failed.
    #[arg(long, default_value_t = 15)]
    pub connect_timeout: u64,
    /// Seconds to wait for all connections to come up.
    #[arg(long, default_value_t = 300)]
    pub connect_wait: u64,
    /// Sender threads (keep-alive connections posting messages).
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Bytes of padding added to each message's content.
    #[arg(long, default_value_t = 0)]
    pub payload: usize,
    /// After sending, wait until this many seconds pass without a delivery.
    #[arg(long, default_value_t = 5)]
    pub drain: u64,
    /// The server's pid, to report its RSS (VmRSS) before and after, and
    /// (fanout) its CPU time, with its child processes' (nginx: master and
    /// workers; `haoshuo --processes`: the supervisor's pid covers every
    /// server process), while connecting and while sending and draining.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Also append the results as a CSV row to this file.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Also write a latency distribution chart (SVG) to this file.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--worker") {
        if let Err(e) = worker::run() {
            eprintln!("haoshuo-load worker: {e}");
            std::process::exit(1);
        }
        return;
    }
    let cli = Cli::parse();
    clock::raise_nofile();
    let planned = match &cli.scenario {
        Scenario::Idle { conns, common, .. } => Some((*conns as u64, common)),
        Scenario::Fanout {
            members, common, ..
        } => Some((*members as u64, common)),
        _ => None,
    };
    if let Some((conns, common)) = planned {
        let sources = fleet::planned_procs(common.procs, conns as usize) as u64;
        for line in sysctl::advice(conns, sources) {
            eprintln!("haoshuo-load: note: {line}");
        }
    }
    let res = match cli.scenario {
        Scenario::Idle {
            conns,
            hold,
            common,
        } => scenarios::idle(&common, conns, hold),
        Scenario::Fanout {
            members,
            msgs,
            rate,
            server_kind: ServerKind::Haoshuo,
            common,
            ..
        } => scenarios::fanout(&common, members, msgs, rate),
        Scenario::Fanout {
            members,
            msgs,
            rate,
            server_kind: ServerKind::Nchan,
            channel,
            common,
        } => scenarios::fanout_nchan(&common, members, msgs, rate, channel.as_deref()),
        Scenario::Chat { chat, common } => scenarios::chat(&common, &chat, false),
        Scenario::Poll { chat, common } => scenarios::chat(&common, &chat, true),
        Scenario::Slow { slow, common } => slow::slow(&common, &slow),
        Scenario::Floor { floor } => floor::floor(&floor),
    };
    match res {
        Ok(true) => {}
        Ok(false) => std::process::exit(2),
        Err(e) => {
            eprintln!("haoshuo-load: {e}");
            std::process::exit(1);
        }
    }
}
