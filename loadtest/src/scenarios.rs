//! The scenarios: idle (hold N streams, measure memory), fanout (one group,
//! many members; or one nchan channel, many subscribers, for the
//! comparison), chat / poll (random single chats, optional churn). Each
//! provisions fresh users, starts a worker fleet, drives senders, then
//! builds the report and the delivery verdict. Returns Ok(false) when the
//! checker or the senders found a problem. The helpers they share (users,
//! report rows, output) are also used by the slow-reader scenario
//! (`slow.rs`), which reads from this process instead of a fleet.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::checker::{self, Verdict};
use crate::client::Client;
use crate::clock::{cpu_secs_with_children, machine_cpu, rss_bytes, slab_bytes, tcp_mem};
use crate::fleet::{Collected, Fleet, FleetOpts};
use crate::ipc::ToWorker;
use crate::proto;
use crate::provision::{self, Method, User};
use crate::report::{self, Report};
use crate::sender::{self, Body, Post, SendStats};
use crate::{ChatArgs, Common, ProvisionMode};

fn check_targets(c: &Common) -> Result<(), String> {
    for a in [c.target, c.admin] {
        if !a.ip().is_loopback() {
            return Err(format!(
                "{a}: only loopback (127.0.0.0/8) targets are allowed"
            ));
        }
    }
    Ok(())
}

pub fn make_users(c: &Common, n: usize) -> Result<Vec<User>, String> {
    check_targets(c)?;
    let prefix = c.user_prefix.clone().unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        format!("r{}{:03}-", t.as_secs(), t.subsec_millis())
    });
    let method = match c.provision {
        ProvisionMode::Admin => Method::Admin {
            addr: c.admin,
            key: c.admin_key.clone(),
        },
        ProvisionMode::Login => Method::Login { target: c.target },
    };
    let t = Instant::now();
    eprintln!(
        "provisioning {n} users ({:?}, prefix {prefix:?}) ...",
        c.provision
    );
    let users = provision::users(&method, &c.appid, &prefix, n)?;
    if users.len() != n {
        return Err(format!("asked for {n} users, got {}", users.len()));
    }
    eprintln!("provisioned {n} users in {:.1}s", t.elapsed().as_secs_f64());
    Ok(users)
}

fn fleet_opts(c: &Common, poll: bool, retry: bool, run_secs: u64) -> FleetOpts {
    FleetOpts {
        target: c.target,
        procs: c.procs,
        poll,
        nchan_channel: None,
        max_inflight: c.max_inflight.max(1),
        connect_timeout: c.connect_timeout,
        retry,
        deadline_secs: c.connect_wait + run_secs + c.drain + 120,
    }
}

pub fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1048576.0)
}

/// Rows shared by every scenario about the subscriptions.
fn conn_rows(r: &mut Report, want: usize, procs: usize, col: &Collected, connect: Duration) {
    let p = &col.progress;
    r.add("subscriptions_wanted", want);
    r.add("worker_procs", procs);
    r.add("open_at_end", p.open);
    r.add("established_total", p.established);
    r.add("failed_attempts", p.failed);
    r.add("dropped_by_server", p.dropped);
    r.add("connect_secs", format!("{:.2}", connect.as_secs_f64()));
    r.add(
        "connects_per_sec",
        format!("{:.0}", want as f64 / connect.as_secs_f64().max(1e-3)),
    );
}

pub fn send_rows(r: &mut Report, s: &SendStats) {
    r.add("sent_ok", s.ok);
    r.add("send_errors", s.errors());
    r.add("send_secs", format!("{:.2}", s.elapsed.as_secs_f64()));
    r.add(
        "send_rate_achieved",
        format!("{:.1}", s.ok as f64 / s.elapsed.as_secs_f64().max(1e-3)),
    );
    if !s.answer_us.is_empty() {
        let ms = |q: f64| format!("{:.1}", s.answer_us.value_at_quantile(q) as f64 / 1000.0);
        r.add("send_answer_p50_ms", ms(0.5));
        r.add("send_answer_p99_ms", ms(0.99));
    }
    if let Some(e) = &s.first_error {
        r.add("first_send_error", e);
    }
}

/// The checker's verdict; the caller adds the `check` row (its pass may
/// need more than the verdict).
pub fn verdict_rows(r: &mut Report, v: &Verdict, deliver_secs: f64) {
    r.add("receivers", v.receivers);
    r.add("receivers_perfect", v.perfect);
    r.add("expected_deliveries", v.expected);
    r.add("delivered_distinct", v.delivered);
    r.add(
        "deliveries_per_sec",
        format!("{:.0}", v.delivered as f64 / deliver_secs.max(1e-3)),
    );
    r.add("lost", v.lost);
    r.add("sent_to_no_stream", v.no_stream);
    r.add("duplicated", v.duplicated);
    r.add("out_of_order", v.out_of_order);
    r.add("unexpected", v.unexpected);
}

pub fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// The table on stdout, and the CSV row if asked for.
pub fn output(c: &Common, r: &Report) -> Result<(), String> {
    print!("{}", r.table());
    if let Some(p) = &c.csv {
        r.write_csv(p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

fn finish(c: &Common, r: &Report, col: &Collected) -> Result<(), String> {
    output(c, r)?;
    for e in &col.errors {
        eprintln!("worker error seen: {e}");
    }
    if let Some(p) = &c.svg {
        let title = format!("haoshuo {} delivery latency", r.scenario);
        match report::write_svg(p, &title, &col.hist) {
            Ok(()) => eprintln!("wrote {}", p.display()),
            Err(e) => eprintln!("no chart: {e}"),
        }
    }
    Ok(())
}

pub fn idle(c: &Common, conns: usize, hold: u64) -> Result<bool, String> {
    let before = Mem::now(c);
    let users = make_users(c, conns)?;
    let provisioned = Mem::now(c);
    let mut fleet = Fleet::start(&fleet_opts(c, false, false, hold), &users)?;
    let procs = fleet.procs();
    let connect = fleet.wait_connected(conns as u64, Duration::from_secs(c.connect_wait));
    fleet.hold("hold", Duration::from_secs(hold));
    let open = fleet.progress().open;
    let held = Mem::now(c);
    let col = fleet.stop();
    let mut r = Report::new("idle");
    conn_rows(&mut r, conns, procs, &col, connect);
    r.add("open_after_hold", open);
    mem_rows(&mut r, [before, provisioned, held], open);
    let ok = open == conns as u64 && col.progress.dropped == 0;
    r.add("check", pass(ok));
    finish(c, &r, &col)?;
    Ok(ok)
}

/// Memory read at one moment: the server's RSS (with its child
/// processes), the kernel's TCP buffer pages and sockets, and its slab.
struct Mem {
    rss: Option<u64>,
    tcp: Option<(u64, u64)>,
    slab: Option<u64>,
}

impl Mem {
    fn now(c: &Common) -> Mem {
        Mem {
            rss: c.server_pid.and_then(rss_bytes),
            tcp: tcp_mem(),
            slab: slab_bytes(),
        }
    }
}

/// Memory rows: `[before provisioning, provisioned, held]`; per connection
/// is what holding `open` streams added after provisioning, and (from
/// start) what they and their users' provisioning added together.
fn mem_rows(r: &mut Report, [before, provisioned, held]: [Mem; 3], open: u64) {
    let per = |a: u64, b: u64| b.saturating_sub(a) / open.max(1);
    if let Some(a) = before.rss {
        r.add("server_rss_before_provision_mib", mib(a));
        if let Some(b) = held.rss {
            // The stricter figure: what provisioning left resident too.
            r.add("server_rss_per_conn_from_start_bytes", per(a, b));
        }
    }
    if let (Some(a), Some(b)) = (provisioned.rss, held.rss) {
        r.add("server_rss_before_mib", mib(a));
        r.add("server_rss_after_mib", mib(b));
        r.add("server_rss_per_conn_bytes", per(a, b));
    }
    if let (Some((a, sa)), Some((b, sb))) = (provisioned.tcp, held.tcp) {
        r.add("tcp_mem_before_mib", mib(a));
        r.add("tcp_mem_after_mib", mib(b));
        r.add("tcp_sockets_before", sa);
        r.add("tcp_sockets_after", sb);
        // Both ends of each connection live in this kernel.
        r.add("tcp_mem_per_conn_bytes", per(a, b));
    }
    if let (Some(a), Some(b)) = (provisioned.slab, held.slab) {
        r.add("kernel_slab_before_mib", mib(a));
        r.add("kernel_slab_after_mib", mib(b));
        // Both sockets of each connection (and their files, epoll items).
        r.add("kernel_slab_per_conn_bytes", per(a, b));
    }
}

/// The server's CPU seconds so far (with its child processes: nginx's
/// workers), if `--server-pid` was given.
fn server_cpu(c: &Common) -> Option<f64> {
    c.server_pid.and_then(cpu_secs_with_children)
}

/// The server's CPU over the fan-out's phases: `marks` are taken before the
/// subscriptions, once they are all up, and after the drain (before they
/// are closed). CPU per delivery counts the sending and draining only.
fn cpu_rows(r: &mut Report, marks: [Option<f64>; 3], delivered: u64) {
    let [Some(a), Some(b), Some(c)] = marks else {
        return;
    };
    r.add("server_cpu_connect_secs", format!("{:.2}", b - a));
    r.add("server_cpu_deliver_secs", format!("{:.2}", c - b));
    r.add(
        "server_cpu_us_per_delivery",
        format!("{:.3}", (c - b) * 1e6 / delivered.max(1) as f64),
    );
}

pub fn content(now_ns: u64, pad: usize) -> String {
    if pad == 0 {
        now_ns.to_string()
    } else {
        format!("{now_ns}:{}", "x".repeat(pad))
    }
}

pub fn fanout(c: &Common, members: usize, msgs: u64, rate: f64) -> Result<bool, String> {
    let members = members.max(1);
    // One extra user owns the group and sends; it does not stream.
    let mut users = make_users(c, members + 1)?;
    let owner = users.pop().expect("members + 1 users");
    let uids: Vec<u64> = users.iter().map(|u| u.uid).collect();
    let gid = provision::group(c.target, &c.appid, &owner, &uids)?;
    let send_secs = if rate > 0.0 {
        (msgs as f64 / rate).ceil() as u64
    } else {
        60
    };
    let cpu0 = server_cpu(c);
    let mut fleet = Fleet::start(&fleet_opts(c, false, true, send_secs * 2 + 60), &users)?;
    let procs = fleet.procs();
    let connect = fleet.wait_connected(members as u64, Duration::from_secs(c.connect_wait));
    let cpu1 = server_cpu(c);
    let t0 = Instant::now();
    let make = |_i: u64, now: u64| {
        Post::form(
            "/gp",
            json!({"appid": c.appid, "fromid": owner.uid, "datatype": 2, "toid": gid,
                "content": content(now, c.payload), "token": owner.token, "restart": "all"})
            .to_string(),
            gid,
        )
    };
    let target = c.target;
    let max = Duration::from_secs(send_secs * 2 + 60);
    let stats = fleet.while_running("send", || {
        sender::run(target, c.senders, msgs, rate, max, &make)
    });
    let per_member = stats.ok_by_key.get(&gid).copied().unwrap_or(0);
    let expected: HashMap<u64, u64> = uids.iter().map(|&u| (u, per_member)).collect();
    fleet.drain(per_member * members as u64, Duration::from_secs(c.drain));
    let secs = t0.elapsed().as_secs_f64();
    let cpu2 = server_cpu(c);
    let col = fleet.stop();
    let v = checker::judge(&col.receivers, &expected);
    let mut r = Report::new("fanout");
    r.add(
        "server_kind",
        "haoshuo (group message to N members' inboxes)",
    );
    r.add("members", members);
    r.add("msgs", msgs);
    r.add("rate", rate);
    conn_rows(&mut r, members, procs, &col, connect);
    send_rows(&mut r, &stats);
    verdict_rows(&mut r, &v, secs);
    r.add("check", pass(v.ok()));
    r.add_latency(&col.hist);
    cpu_rows(&mut r, [cpu0, cpu1, cpu2], v.delivered);
    finish(c, &r, &col)?;
    Ok(v.ok() && stats.errors() == 0)
}

/// How often the parent asks nchan how many subscribers it holds while
/// waiting for ours to be counted.
const NCHAN_STATUS_EVERY: Duration = Duration::from_millis(200);

/// nchan's subscriber total from `nchan_stub_status`.
fn nchan_subscribers(client: &mut Client) -> Result<u64, String> {
    match client.get("/nchan_status") {
        Ok((200, body)) => proto::nchan_status_subscribers(&body)
            .ok_or_else(|| "/nchan_status: no `subscribers:` line".into()),
        Ok((st, _)) => Err(format!(
            "/nchan_status: HTTP {st} (see loadtest/nchan/nginx.conf)"
        )),
        Err(e) => Err(format!("/nchan_status: {e}")),
    }
}

/// The fan-out against nginx + nchan (loadtest/nchan/nginx.conf on
/// `c.target`): `subs` http-chunked subscribers of one channel, `msgs`
/// messages `<seq> <ns>` published at `rate`/s over `--senders`
/// connections, as haoshuo's fan-out is sent. The same workers, checker
/// (seq plays the msgid: each subscriber must see 1..=M once; ascending
/// with one publisher, else in the one order the channel gave them, see
/// [`checker::judge_channel`]) and latency histogram as `fanout`. Unlike
/// haoshuo's fan-out (a group message stored in and delivered from N
/// members' inboxes), this is one channel with N subscribers.
pub fn fanout_nchan(
    c: &Common,
    subs: usize,
    msgs: u64,
    rate: f64,
    channel: Option<&str>,
) -> Result<bool, String> {
    check_targets(c)?;
    let subs = subs.max(1);
    let channel = match channel {
        // The project's nginx.conf routes /sub/(\w+) and /pub/(\w+).
        Some(ch)
            if !ch.is_empty() && ch.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') =>
        {
            ch.to_owned()
        }
        Some(ch) => return Err(format!("--channel {ch:?}: letters, digits and _ only")),
        None => {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            format!("fan{}", t.as_millis())
        }
    };
    let mut status = Client::new(c.target, Duration::from_secs(10));
    let base = nchan_subscribers(&mut status)?;
    // Subscribers are named 1..=subs for the checker; they have no token.
    let users: Vec<User> = (1..=subs as u64)
        .map(|uid| User {
            uid,
            token: String::new(),
        })
        .collect();
    let send_secs = if rate > 0.0 {
        (msgs as f64 / rate).ceil() as u64
    } else {
        60
    };
    let mut opts = fleet_opts(c, false, false, send_secs * 2 + 60);
    opts.nchan_channel = Some(channel.clone());
    let cpu0 = server_cpu(c);
    let mut fleet = Fleet::start(&opts, &users)?;
    let procs = fleet.procs();
    let mut connect = fleet.wait_connected(subs as u64, Duration::from_secs(c.connect_wait));
    // Our requests are out; wait until nchan counts them, or publishes
    // would reach only some.
    let started = Instant::now();
    let mut seen = 0;
    while started.elapsed() < Duration::from_secs(c.connect_wait) {
        seen = nchan_subscribers(&mut status)?.saturating_sub(base);
        if seen >= fleet.progress().open {
            break;
        }
        std::thread::sleep(NCHAN_STATUS_EVERY);
    }
    connect += started.elapsed();
    eprintln!("nchan counts {seen} new subscribers on channel {channel}");
    let cpu1 = server_cpu(c);
    let t0 = Instant::now();
    let path = format!("/pub/{channel}");
    let make = |i: u64, now: u64| Post {
        path: path.clone(),
        body: Body::Plain(proto::nchan_message(i + 1, &content(now, c.payload))),
        key: 0,
    };
    let target = c.target;
    let max = Duration::from_secs(send_secs * 2 + 60);
    let senders = c.senders.max(1);
    let stats = fleet.while_running("send", || {
        sender::run(target, senders, msgs, rate, max, &make)
    });
    let per_sub = stats.ok;
    let expected: HashMap<u64, u64> = users.iter().map(|u| (u.uid, per_sub)).collect();
    fleet.drain(per_sub * subs as u64, Duration::from_secs(c.drain));
    let secs = t0.elapsed().as_secs_f64();
    let cpu2 = server_cpu(c);
    let col = fleet.stop();
    let v = if senders == 1 {
        checker::judge(&col.receivers, &expected)
    } else {
        checker::judge_channel(&col.receivers, &expected)
    };
    let mut r = Report::new("fanout");
    r.add("server_kind", "nchan (one channel, N subscribers)");
    r.add("publishers", senders);
    r.add("members", subs);
    r.add("msgs", msgs);
    r.add("rate", rate);
    r.add("nchan_subscribers_seen", seen);
    conn_rows(&mut r, subs, procs, &col, connect);
    send_rows(&mut r, &stats);
    verdict_rows(&mut r, &v, secs);
    r.add("check", pass(v.ok()));
    r.add_latency(&col.hist);
    cpu_rows(&mut r, [cpu0, cpu1, cpu2], v.delivered);
    finish(c, &r, &col)?;
    Ok(v.ok() && stats.errors() == 0)
}

/// A small stateless hash: the i-th message's (from, to) pair.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

pub fn chat(c: &Common, a: &ChatArgs, poll: bool) -> Result<bool, String> {
    let n = a.users.max(2);
    let before = Mem::now(c);
    let users = make_users(c, n)?;
    let provisioned = Mem::now(c);
    let run_secs = a.idle_secs + a.secs * 2 + 60;
    let cpu_connect = server_cpu(c);
    let mut fleet = Fleet::start(&fleet_opts(c, poll, true, run_secs), &users)?;
    let procs = fleet.procs();
    let connect = fleet.wait_connected(n as u64, Duration::from_secs(c.connect_wait));
    // Held and quiet first: what holding them costs, before any traffic.
    let (cpu0, m0) = (server_cpu(c), machine_cpu());
    let idle_start = Instant::now();
    if a.idle_secs > 0 {
        fleet.hold("idle", Duration::from_secs(a.idle_secs));
    }
    let idle_wall = idle_start.elapsed().as_secs_f64();
    let (cpu1, m1) = (server_cpu(c), machine_cpu());
    let held = Mem::now(c);
    let open_idle = fleet.progress().open;
    if a.churn > 0.0 {
        fleet.broadcast(&ToWorker::Churn { pct: a.churn });
    }
    let total = (a.rate * a.secs as f64).round() as u64;
    let t0 = Instant::now();
    let pairs = Pairs::new(n);
    let make = |i: u64, now: u64| {
        let (from, to) = pairs.get(i);
        let (f, t) = (&users[from], &users[to]);
        Post::form(
            "/p",
            json!({"appid": c.appid, "fromid": f.uid, "datatype": 1, "toid": t.uid,
                "content": content(now, c.payload), "token": f.token, "restart": "all"})
            .to_string(),
            t.uid,
        )
    };
    let target: SocketAddr = c.target;
    let max = Duration::from_secs(a.secs * 2 + 30);
    let stats = fleet.while_running("send", || {
        sender::run(target, c.senders, total, a.rate, max, &make)
    });
    if a.churn > 0.0 {
        fleet.broadcast(&ToWorker::Churn { pct: 0.0 });
    }
    fleet.drain(stats.ok, Duration::from_secs(c.drain));
    let secs = t0.elapsed().as_secs_f64();
    let cpu2 = server_cpu(c);
    let col = fleet.stop();
    let v = checker::judge(&col.receivers, &stats.ok_by_key);
    let name = if poll { "poll" } else { "chat" };
    let mut r = Report::new(name);
    r.add("users", n);
    r.add("rate", a.rate);
    r.add("secs", a.secs);
    r.add("churn_pct", a.churn);
    conn_rows(&mut r, n, procs, &col, connect);
    if let (Some(x), Some(y)) = (cpu_connect, cpu0) {
        // Every attempt, the failed ones too, all server processes.
        r.add("server_cpu_connect_secs", format!("{:.2}", y - x));
        r.add(
            "server_cpu_us_per_connect",
            format!(
                "{:.1}",
                (y - x) * 1e6 / col.progress.established.max(1) as f64
            ),
        );
    }
    r.add("churned", col.progress.churned);
    if poll {
        r.add("poll_answers", col.progress.polls);
    }
    if a.idle_secs > 0 {
        r.add("idle_secs", format!("{idle_wall:.1}"));
        r.add("open_after_idle", open_idle);
        mem_rows(&mut r, [before, provisioned, held], open_idle);
        if let (Some(x), Some(y)) = (cpu0, cpu1) {
            // % of one core, all server processes together.
            r.add(
                "idle_server_cpu_pct",
                format!("{:.1}", (y - x) * 100.0 / idle_wall),
            );
        }
        if let (Some(x), Some(y)) = (m0, m1) {
            let busy = y.busy_share_since(&x);
            r.add(
                "idle_machine_busy_pct",
                format!("{:.1}", busy.total * 100.0),
            );
            r.add(
                "idle_machine_softirq_pct",
                format!("{:.1}", busy.softirq * 100.0),
            );
        }
    }
    r.add("receivers_reached", v.receivers);
    send_rows(&mut r, &stats);
    if let (Some(x), Some(y)) = (cpu1, cpu2) {
        // Sending and draining, all server processes together.
        r.add("server_cpu_send_secs", format!("{:.2}", y - x));
        r.add(
            "server_cpu_us_per_msg",
            format!("{:.1}", (y - x) * 1e6 / stats.ok.max(1) as f64),
        );
    }
    verdict_rows(&mut r, &v, secs);
    r.add("check", pass(v.ok()));
    r.add_latency(&col.hist);
    finish(c, &r, &col)?;
    Ok(v.ok() && stats.errors() == 0)
}

/// Who sends message `i` to whom: an affine permutation of the users, so
/// that any `n` messages in a row reach every user once (and are sent by
/// every user once), spread over the whole population rather than in uid
/// order.
struct Pairs {
    n: u64,
    mul: u64,
    add: u64,
}

impl Pairs {
    fn new(n: usize) -> Pairs {
        let n = n.max(2) as u64;
        // A multiplier coprime with n makes i -> (mul * i + add) mod n a
        // bijection of 0..n.
        let mut mul = (0x9e37_79b9_7f4a_7c15 % n).max(1);
        while gcd(mul, n) != 1 {
            mul += 1;
        }
        Pairs {
            n,
            mul,
            add: mix(n) % n,
        }
    }

    fn at(&self, i: u64) -> usize {
        let i = i % self.n;
        ((u128::from(self.mul) * u128::from(i) + u128::from(self.add)) % u128::from(self.n))
            as usize
    }

    /// (sender, receiver) of message `i`: never the same user.
    fn get(&self, i: u64) -> (usize, usize) {
        (self.at(i + 1), self.at(i))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_n_messages_reach_every_user_once_from_another() {
        for n in [2usize, 3, 10, 97, 1000, 1024] {
            let pairs = Pairs::new(n);
            for start in [0, 5, 1_000_003] {
                let mut got = vec![0u32; n];
                let mut sent = vec![0u32; n];
                for i in start..start + n as u64 {
                    let (from, to) = pairs.get(i);
                    assert_ne!(from, to, "n {n}, message {i}");
                    got[to] += 1;
                    sent[from] += 1;
                }
                assert!(got.iter().all(|&k| k == 1), "n {n}: {got:?}");
                assert!(sent.iter().all(|&k| k == 1), "n {n}: {sent:?}");
            }
        }
    }
}
