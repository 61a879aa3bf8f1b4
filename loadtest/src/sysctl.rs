//! Before a big run: the kernel settings that cap how many loopback
//! connections one box can open, read from /proc/sys, and which to raise.
//! Advice only (on stderr): the run goes on either way.

/// What one setting allows, and what to do if it is short.
struct Check {
    path: &'static str,
    /// What the run needs of it, from the planned connections.
    need: u64,
    advice: &'static str,
}

/// Lines of advice for a run of `conns` connections spread over
/// `sources` client source addresses (127.0.0.x). Empty: nothing short.
pub fn advice(conns: u64, sources: u64) -> Vec<String> {
    let per_source = conns.div_ceil(sources.max(1));
    let checks = [
        Check {
            path: "net/core/somaxconn",
            need: 4096.min(conns),
            advice: "sysctl -w net.core.somaxconn=65535 (connect bursts overflow the accept queue)",
        },
        Check {
            path: "net/ipv4/tcp_max_syn_backlog",
            need: 4096.min(conns),
            advice: "sysctl -w net.ipv4.tcp_max_syn_backlog=65535",
        },
        Check {
            path: "fs/nr_open",
            need: 20_000.min(conns),
            advice: "sysctl -w fs.nr_open=2000000 (the per-process open-file ceiling)",
        },
        Check {
            path: "net/netfilter/nf_conntrack_max",
            need: 2 * conns,
            advice: "sysctl -w net.netfilter.nf_conntrack_max=4000000 (or unload nf_conntrack)",
        },
    ];
    let mut out = Vec::new();
    for c in &checks {
        // A setting that does not exist here (no conntrack) caps nothing.
        if let Some(have) = read(c.path).and_then(|v| first_number(&v)) {
            if have < c.need {
                out.push(format!(
                    "{} is {have}, this run needs {}: {}",
                    c.path, c.need, c.advice
                ));
            }
        }
    }
    if let Some(range) = read("net/ipv4/ip_local_port_range") {
        if let Some(ports) = port_count(&range) {
            if ports < per_source {
                out.push(format!(
                    "net/ipv4/ip_local_port_range gives {ports} ports per source address, this run needs {per_source}: sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\", or more --procs (each binds its own 127.0.0.x)"
                ));
            }
        }
    }
    out
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}")).ok()
}

fn first_number(v: &str) -> Option<u64> {
    v.split_whitespace().next()?.parse().ok()
}

/// Ports in an `ip_local_port_range` value (`low high`).
fn port_count(v: &str) -> Option<u64> {
    let mut it = v.split_whitespace().map(|n| n.parse::<u64>().ok());
    let (low, high) = (it.next()??, it.next()??);
    Some((high + 1).saturating_sub(low))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_numbers() {
        assert_eq!(port_count("32768\t60999\n"), Some(28232));
        assert_eq!(port_count("1024 65535"), Some(64512));
        assert_eq!(port_count("x"), None);
        assert_eq!(first_number("4096\n"), Some(4096));
        // A small run needs nothing raised on any usual box.
        assert!(advice(10, 4).is_empty(), "{:?}", advice(10, 4));
    }
}
