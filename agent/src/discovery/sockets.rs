//! What a TCP socket is (addresses, coarse state), and the TCP tables of a
//! network namespace as /proc/<pid>/net/tcp{,6} show them.
use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use super::proc::{open_process, DiscoveryError};

/// Coarse TCP state of a socket, from the kernel's `tcp_states.h` numbering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketState {
    Listen,
    /// SYN_SENT / SYN_RECV: a connect in progress (non-blocking connect
    /// returned EINPROGRESS).
    Connecting,
    Established,
    /// FIN_WAIT*, CLOSE_WAIT, LAST_ACK, CLOSING, TIME_WAIT: shutting down,
    /// possibly still carrying the last response.
    Closing,
    /// Not connected (fresh, or connect failed).
    Closed,
}

impl SocketState {
    pub(super) fn from_kernel(state: u8) -> SocketState {
        match state {
            1 => SocketState::Established,
            2 | 3 | 12 => SocketState::Connecting,
            10 => SocketState::Listen,
            7 => SocketState::Closed,
            _ => SocketState::Closing,
        }
    }
}

/// What a descriptor is, when it is a TCP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    pub local: SocketAddr,
    /// Unspecified address, port 0, when the socket has no peer (listening).
    pub peer: SocketAddr,
    pub state: SocketState,
}

pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

pub(super) fn unspecified_like(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// The TCP sockets of one network namespace, from /proc/<pid>/net/tcp{,6}.
#[derive(Debug, Default)]
pub(super) struct TcpTable {
    pub(super) by_inode: HashMap<u64, SocketInfo>,
    /// Listening port -> local addresses listening on it.
    listeners: HashMap<u16, Vec<IpAddr>>,
}

impl TcpTable {
    pub(super) fn read(pid: u32) -> Result<TcpTable, DiscoveryError> {
        let process = open_process(pid)?;
        let mut table = TcpTable::default();
        let v4 = process.tcp().map_err(|source| DiscoveryError::ReadProc { pid, file: "net/tcp", source })?;
        // A kernel without IPv6 has no tcp6 table; that is not an error.
        let v6 = match process.tcp6() {
            Ok(entries) => entries,
            Err(e) => {
                tracing::trace!(pid, error = %e, "no /proc/<pid>/net/tcp6");
                Vec::new()
            }
        };
        for entry in v4.into_iter().chain(v6) {
            // TIME_WAIT and request sockets have no inode: nobody owns them.
            if entry.inode == 0 {
                continue;
            }
            let local = canonical(entry.local_address);
            let state = SocketState::from_kernel(entry.state.to_u8());
            let peer =
                if state == SocketState::Listen { unspecified_like(&local) } else { canonical(entry.remote_address) };
            if state == SocketState::Listen {
                table.listeners.entry(local.port()).or_default().push(local.ip());
            }
            table.by_inode.insert(entry.inode, SocketInfo { local, peer, state });
        }
        Ok(table)
    }

    /// True when `local` is an address some socket in this namespace listens
    /// on: then a connection on it was accepted, and its owner is the server.
    /// The address is compared too, so a client whose ephemeral port happens
    /// to equal a port listened on by another IP is not mistaken for a server.
    pub(super) fn is_listening_on(&self, local: &SocketAddr) -> bool {
        self.listeners
            .get(&local.port())
            .is_some_and(|ips| ips.iter().any(|ip| ip.is_unspecified() || *ip == local.ip()))
    }
}

/// Parses the target of a /proc/<pid>/fd/<n> link: `socket:[12345]`.
pub(super) fn socket_inode(link: &Path) -> Option<u64> {
    link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// (fd, socket inode) of every socket descriptor of `pid`. One readlink per
/// descriptor (procfs's iterator costs three syscalls per fd, which adds up
/// on nodes with 100k descriptors).
pub(super) fn socket_fds(pid: u32) -> Result<Vec<(u32, u64)>, DiscoveryError> {
    let dir = format!("/proc/{pid}/fd");
    let entries = fs::read_dir(&dir).map_err(|source| DiscoveryError::ReadProcIo { pid, file: "fd", source })?;
    let mut out = Vec::new();
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        // A descriptor closed since the listing is simply gone.
        let Ok(link) = fs::read_link(entry.path()) else { continue };
        if let Some(inode) = socket_inode(&link) {
            out.push((fd, inode));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_inode_parsing() {
        assert_eq!(socket_inode(Path::new("socket:[12345]")), Some(12345));
        assert_eq!(socket_inode(Path::new("pipe:[12345]")), None);
        assert_eq!(socket_inode(Path::new("/dev/null")), None);
    }

    #[test]
    fn listener_matching_respects_addresses() {
        let mut t = TcpTable::default();
        t.listeners.insert(8080, vec![IpAddr::V4(Ipv4Addr::LOCALHOST)]);
        t.listeners.insert(9090, vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)]);
        assert!(t.is_listening_on(&"127.0.0.1:8080".parse().unwrap()));
        assert!(!t.is_listening_on(&"10.0.0.5:8080".parse().unwrap()));
        assert!(t.is_listening_on(&"10.0.0.5:9090".parse().unwrap()));
        assert!(!t.is_listening_on(&"127.0.0.1:9091".parse().unwrap()));
    }
}
