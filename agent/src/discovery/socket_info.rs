//! What one descriptor of another process is: asked of the socket itself
//! through a pidfd duplicate, else looked up in the /proc TCP tables.
use std::{
    fs,
    net::SocketAddr,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
};

use rustix::{
    io::Errno,
    net::{ipproto, sockopt, AddressFamily, SocketType},
    process::{pidfd_getfd, pidfd_open, Pid, PidfdFlags, PidfdGetfdFlags},
};

use super::{
    proc::DiscoveryError,
    sockets::{canonical, socket_inode, unspecified_like, SocketInfo, SocketState, TcpTable},
};

/// Is descriptor `fd` of process `pid` a TCP socket, and what are its
/// addresses?
///
/// Fast path: `pidfd_getfd` duplicates the descriptor into the agent and the
/// socket is asked directly (about ten syscalls, no table parsing). The
/// duplicate holds a reference to the socket for a few microseconds; if the
/// process closes its descriptor in that window the FIN (or RST) goes out that
/// much later and, if the process used epoll without EPOLL_CTL_DEL, one stale
/// readiness event could be reported for the old descriptor number. Both are
/// bounded by the microseconds between dup and close, far below network
/// jitter, which is why this is acceptable for a tracing agent. The duplicate
/// never appears in the target's descriptor table.
///
/// Fallback (pidfd_getfd refused: EPERM under Yama/LSM policies, ENOSYS on
/// kernels before 5.6): the socket inode from /proc/<pid>/fd and the
/// namespace's /proc TCP tables.
pub fn socket_info(pid: u32, fd: u32) -> Option<SocketInfo> {
    match socket_info_pidfd(pid, fd) {
        Ok(info) => info,
        Err(PidfdFailure::Gone) => None,
        Err(PidfdFailure::Unsupported(e)) => {
            tracing::trace!(pid, fd, error = %e, "pidfd_getfd unavailable; using /proc tables");
            socket_info_proc(pid, fd)
        }
    }
}

enum PidfdFailure {
    /// The process or the descriptor no longer exists: nothing to look up.
    Gone,
    /// The mechanism is not available: /proc may still answer.
    Unsupported(DiscoveryError),
}

fn classify(operation: &'static str, pid: u32, fd: u32, errno: Errno) -> PidfdFailure {
    if errno == Errno::SRCH || errno == Errno::BADF {
        PidfdFailure::Gone
    } else {
        PidfdFailure::Unsupported(DiscoveryError::Syscall { operation, pid, fd, source: errno.into() })
    }
}

fn duplicate_fd(pid: u32, fd: u32) -> Result<OwnedFd, PidfdFailure> {
    let target_fd = RawFd::try_from(fd).map_err(|_| PidfdFailure::Gone)?;
    let target_pid = i32::try_from(pid).map_err(|_| PidfdFailure::Gone)?;
    // Pid 0 names no process: the kernel's answer to pidfd_open(0) is EINVAL.
    let target_pid = Pid::from_raw(target_pid).ok_or_else(|| classify("pidfd_open", pid, fd, Errno::INVAL))?;
    let pidfd = pidfd_open(target_pid, PidfdFlags::empty()).map_err(|e| classify("pidfd_open", pid, fd, e))?;
    pidfd_getfd(&pidfd, target_fd, PidfdGetfdFlags::empty()).map_err(|e| classify("pidfd_getfd", pid, fd, e))
}

fn socket_info_pidfd(pid: u32, fd: u32) -> Result<Option<SocketInfo>, PidfdFailure> {
    let dup = duplicate_fd(pid, fd)?;
    // `dup` is closed when it goes out of scope, right after these queries.
    let sock = dup.as_fd();
    if !is_tcp_socket(sock) {
        // Not a socket (ENOTSOCK), or not TCP.
        return Ok(None);
    }
    let Some(local) = local_addr(sock) else { return Ok(None) };
    let state = tcp_state(sock).unwrap_or(SocketState::Closed);
    let peer = match state {
        SocketState::Listen | SocketState::Closed => unspecified_like(&local),
        _ => match peer_addr(sock) {
            Some(peer) => peer,
            // getpeername refuses during SYN_SENT although the kernel knows
            // the destination; /proc/net/tcp shows it.
            None => peer_from_proc(pid, sock).unwrap_or_else(|| unspecified_like(&local)),
        },
    };
    Ok(Some(SocketInfo { local, peer, state }))
}

/// An AF_INET/AF_INET6 stream socket speaking TCP.
pub(super) fn is_tcp_socket(sock: BorrowedFd<'_>) -> bool {
    sockopt::socket_domain(sock).is_ok_and(|d| d == AddressFamily::INET || d == AddressFamily::INET6)
        && sockopt::socket_type(sock).is_ok_and(|t| t == SocketType::STREAM)
        && sockopt::socket_protocol(sock).is_ok_and(|p| p == Some(ipproto::TCP))
}

/// The socket's TCP state: the first byte of `struct tcp_info` (the kernel
/// copies only as many bytes as asked for). Neither rustix nor socket2 wraps
/// TCP_INFO.
fn tcp_state(fd: BorrowedFd<'_>) -> Option<SocketState> {
    let mut buf = [0u8; 8];
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf/len describe a live 8-byte buffer; the kernel writes at most
    // len bytes and updates len.
    let rc = unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, buf.as_mut_ptr().cast(), &mut len)
    };
    (rc == 0 && len >= 1).then(|| SocketState::from_kernel(buf[0]))
}

/// getsockname, canonical (an IPv4-mapped IPv6 address as plain IPv4).
pub(super) fn local_addr(sock: BorrowedFd<'_>) -> Option<SocketAddr> {
    rustix::net::getsockname(sock).ok().and_then(|a| SocketAddr::try_from(a).ok()).map(canonical)
}

/// getpeername, canonical; None when not connected.
fn peer_addr(sock: BorrowedFd<'_>) -> Option<SocketAddr> {
    rustix::net::getpeername(sock).ok().flatten().and_then(|a| SocketAddr::try_from(a).ok()).map(canonical)
}

/// Peer of a duplicated socket from the /proc tables, keyed by its inode
/// (fstat of a socket descriptor reports the socket inode).
fn peer_from_proc(pid: u32, sock: BorrowedFd<'_>) -> Option<SocketAddr> {
    let inode = rustix::fs::fstat(sock).ok()?.st_ino;
    let table = TcpTable::read(pid).ok()?;
    let info = table.by_inode.get(&inode)?;
    (!info.peer.ip().is_unspecified()).then_some(info.peer)
}

/// `socket_info` without pidfd_getfd: /proc/<pid>/fd/<fd> -> socket inode ->
/// the namespace's TCP tables.
fn socket_info_proc(pid: u32, fd: u32) -> Option<SocketInfo> {
    let link = fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let inode = socket_inode(&link)?;
    match TcpTable::read(pid) {
        Ok(table) => table.by_inode.get(&inode).copied(),
        Err(e) => {
            tracing::debug!(pid, fd, error = %e, "cannot read TCP tables");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        net::{IpAddr, Ipv4Addr, TcpStream, UdpSocket},
        os::unix::net::UnixStream,
    };

    use rustix::net::{bind, connect, listen, socket, socket_with, SocketFlags};

    use super::{
        super::test_support::{socket_child, wait_for},
        *,
    };

    #[test]
    fn socket_info_answers_for_tcp_and_only_tcp() {
        let c = socket_child("4");
        let pid = c.guard.pid();
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let accepted = SocketInfo {
            local: SocketAddr::new(lo, c.port),
            peer: SocketAddr::new(lo, c.client_port),
            state: SocketState::Established,
        };
        let listening = SocketInfo {
            local: SocketAddr::new(lo, c.port),
            peer: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            state: SocketState::Listen,
        };
        // Both paths: pidfd_getfd, and the /proc fallback.
        assert!(matches!(socket_info_pidfd(pid, c.accepted_fd), Ok(Some(_))), "pidfd path must work as root");
        assert_eq!(socket_info(pid, c.accepted_fd), Some(accepted));
        assert_eq!(socket_info_proc(pid, c.accepted_fd), Some(accepted));
        assert_eq!(socket_info(pid, c.listen_fd), Some(listening));
        assert_eq!(socket_info_proc(pid, c.listen_fd), Some(listening));
        assert_eq!(socket_info(pid, c.client_fd).map(|i| i.peer.port()), Some(c.port));
        // Descriptors that do not exist.
        assert_eq!(socket_info(pid, 999), None);
        assert_eq!(socket_info_proc(pid, 999), None);

        // Not TCP: pipe, unix socket, UDP socket, a regular file.
        let me = std::process::id();
        let (r, w) = io::pipe().unwrap();
        let (u1, _u2) = UnixStream::pair().unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let file = fs::File::open("/proc/self/stat").unwrap();
        for fd in [r.as_raw_fd(), w.as_raw_fd(), u1.as_raw_fd(), udp.as_raw_fd(), file.as_raw_fd()] {
            assert_eq!(socket_info(me, fd as u32), None, "fd {fd}");
            assert_eq!(socket_info_proc(me, fd as u32), None, "fd {fd}");
        }
        // A process that does not exist.
        assert_eq!(socket_info(u32::MAX - 1, 0), None);
    }

    #[test]
    fn socket_info_reports_connecting_peer() {
        // A listener with a full accept queue drops SYNs, so a second client
        // stays in SYN_SENT. getpeername refuses then; the /proc table knows.
        let listener = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
        bind(&listener, &"127.0.0.1:0".parse::<SocketAddr>().unwrap()).unwrap();
        listen(&listener, 0).unwrap();
        let addr = local_addr(listener.as_fd()).unwrap();
        let _queued = TcpStream::connect(addr).unwrap();
        let pending = nonblocking_connect(addr);
        let info = wait_for("the SYN to be sent", || {
            socket_info(std::process::id(), pending.as_raw_fd() as u32).filter(|i| i.state == SocketState::Connecting)
        });
        assert_eq!(info.peer, addr);
        assert_ne!(info.local.port(), 0);
    }

    fn nonblocking_connect(addr: SocketAddr) -> OwnedFd {
        let fd = socket_with(AddressFamily::INET, SocketType::STREAM, SocketFlags::NONBLOCK, None).unwrap();
        let rc = connect(&fd, &addr);
        assert!(matches!(rc, Ok(()) | Err(Errno::INPROGRESS)), "{rc:?}");
        fd
    }
}
