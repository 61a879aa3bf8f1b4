//! Listening sockets and the process's open-file limit.
//!
//! Every reactor binds its own listener on the same address with
//! `SO_REUSEPORT`, so the kernel spreads new connections over the reactors
//! and no thread hands sockets to another.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Pending connections the kernel may queue per listener (capped by
/// `net.core.somaxconn`): a burst of thousands of clients connecting at once
/// is what a push server sees after a network blip.
const BACKLOG: i32 = 4096;

/// A non-blocking listener on `addr` that other reactors can bind too.
pub fn bind(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// Fails with `AddrInUse` if another socket already listens on `addr`.
/// Our listeners share their port with `SO_REUSEPORT`, which would also let
/// a second server start on an address already served and silently take
/// half its connections; a plain bind first tells the two cases apart.
pub fn check_free(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // TIME_WAIT leftovers of an earlier run are no reason to refuse.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())
}

/// Raises the soft open-file limit to the hard limit; returns (soft, hard)
/// as they are afterwards.
pub fn raise_nofile_limit() -> io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nofile() -> libc::rlimit {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        lim
    }

    /// A soft limit below the hard one is raised to it, and the limits
    /// returned are the process's own afterwards. The soft limit is lowered
    /// by one first (harmless to the tests running beside this one).
    #[test]
    fn the_open_file_limit_is_raised_to_the_hard_limit() {
        let hard = nofile().rlim_max;
        let lowered = libc::rlimit {
            rlim_cur: hard - 1,
            rlim_max: hard,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        assert_eq!(raise_nofile_limit().unwrap(), (hard, hard));
        assert_eq!(nofile().rlim_cur, hard);
        // Already raised: nothing to do, the same answer.
        assert_eq!(raise_nofile_limit().unwrap(), (hard, hard));
    }
}
