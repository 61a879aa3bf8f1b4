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
}
