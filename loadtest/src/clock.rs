//! Process-wide facts: the system-wide monotonic clock shared by the parent
//! and its workers (send timestamps in message contents are compared across
//! processes), the open-file limit, and the server-side numbers read from
//! /proc (the server's RSS and CPU time, the kernel's TCP memory).

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Raises the soft open-file limit to the hard one; returns the new limit.
pub fn raise_nofile() -> libc::rlim_t {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit read and write one rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
    r.rlim_cur
}

/// VmRSS in bytes of a process and its direct children, from
/// `/proc/PID/status`: for `haoshuo --processes`, the supervisor and every
/// server process; for nginx, the master and its workers (pages they share
/// count once per process, which a before/after difference cancels).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let one = |p: u32| -> Option<u64> {
        let s = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
        parse_rss(&s)
    };
    let own = one(pid)?;
    Some(own + children(pid).into_iter().filter_map(one).sum::<u64>())
}

/// The direct children of `pid`, from every `/proc/N/stat`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
                .is_some_and(|(_, ppid)| ppid == pid)
        })
        .collect()
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system, all threads) in seconds of a process and its
/// direct children, from `/proc/PID/stat`: for nginx, the master and its
/// workers; for haoshuo, the one process (with `--processes`, the
/// supervisor and every server process).
pub fn cpu_secs_with_children(pid: u32) -> Option<f64> {
    let ticks = |p: &str| -> Option<(u64, u32)> {
        let s = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        parse_stat(&s)
    };
    let (mut total, _) = ticks(&pid.to_string())?;
    for child in children(pid) {
        total += ticks(&child.to_string()).map_or(0, |(t, _)| t);
    }
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Some(total as f64 / hz as f64)
}

/// (utime + stime in clock ticks, ppid) from a `/proc/PID/stat` line. The
/// command name may hold spaces and parentheses, so fields are counted from
/// the last `)`.
fn parse_stat(s: &str) -> Option<(u64, u32)> {
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime, ppid))
}

/// Kernel TCP socket memory in bytes (`mem` pages of the TCP line of
/// `/proc/net/sockstat` x 4096) and sockets in use.
pub fn tcp_mem() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    parse_sockstat(&s)
}

fn parse_sockstat(s: &str) -> Option<(u64, u64)> {
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| -> Option<u64> {
        let i = words.iter().position(|w| *w == name)?;
        words.get(i + 1)?.parse().ok()
    };
    Some((field("mem")? * 4096, field("inuse")?))
}

/// The kernel's slab (`Slab:` in /proc/meminfo: sockets, files, epoll
/// items...), in bytes.
pub fn slab_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&s, "Slab:")
}

fn parse_meminfo(s: &str, key: &str) -> Option<u64> {
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024)
}

/// The whole machine's CPU time so far, from the first line of /proc/stat
/// (clock ticks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineCpu {
    pub busy: u64,
    pub softirq: u64,
    pub total: u64,
}

/// Shares of the machine's time between two readings.
pub struct Busy {
    pub total: f64,
    pub softirq: f64,
}

impl MachineCpu {
    pub fn busy_share_since(&self, before: &MachineCpu) -> Busy {
        let all = self.total.saturating_sub(before.total).max(1) as f64;
        Busy {
            total: self.busy.saturating_sub(before.busy) as f64 / all,
            softirq: self.softirq.saturating_sub(before.softirq) as f64 / all,
        }
    }
}

pub fn machine_cpu() -> Option<MachineCpu> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_proc_stat(s: &str) -> Option<MachineCpu> {
    let line = s.lines().next()?.strip_prefix("cpu ")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]:
    // guest time is already inside user and nice.
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3)? + f.get(4)?;
    Some(MachineCpu {
        busy: total - idle,
        softirq: *f.get(6)?,
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_counts_with_its_parent() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let me = std::process::id();
        assert!(children(me).contains(&child.id()));
        let alone = std::fs::read_to_string(format!("/proc/{me}/status"))
            .ok()
            .and_then(|s| parse_rss(&s))
            .unwrap();
        assert!(rss_bytes(me).unwrap() > alone, "the child's RSS is added");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn proc_parsing() {
        assert_eq!(
            parse_rss("Name:\tx\nVmRSS:\t  1234 kB\nVmSwap: 0 kB\n"),
            Some(1234 * 1024)
        );
        assert_eq!(parse_rss("Name: x\n"), None);
        let s = "sockets: used 10\nTCP: inuse 5 orphan 0 tw 2 alloc 7 mem 3\nUDP: inuse 1 mem 0\n";
        assert_eq!(parse_sockstat(s), Some((3 * 4096, 5)));
        assert!(mono_ns() > 0);
        let stat = "42 (nginx: a) b) S 7 42 42 0 -1 4194624 10 0 0 0 150 25 0 0 20 0 1 0";
        assert_eq!(parse_stat(stat), Some((175, 7)));
        assert_eq!(parse_stat("42 (x) S"), None);
        let me = cpu_secs_with_children(std::process::id()).unwrap();
        assert!(me >= 0.0);
    }

    #[test]
    fn meminfo_and_proc_stat() {
        let info =
            "MemTotal:       24000000 kB\nSlab:            1048576 kB\nSReclaimable:    1 kB\n";
        assert_eq!(parse_meminfo(info, "Slab:"), Some(1 << 30));
        assert_eq!(parse_meminfo(info, "Nope:"), None);
        let a = parse_proc_stat("cpu  100 10 50 800 40 0 20 0 0 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!((a.busy, a.softirq, a.total), (180, 20, 1020));
        let b = MachineCpu {
            busy: a.busy + 60,
            softirq: a.softirq + 30,
            total: a.total + 100,
        };
        let busy = b.busy_share_since(&a);
        assert_eq!((busy.total, busy.softirq), (0.6, 0.3));
        assert!(parse_proc_stat("intr 1 2 3\n").is_none());
    }
}
