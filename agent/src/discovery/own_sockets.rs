//! The agent's own sockets and interface addresses: traffic between the
//! agent and a collector on the same node must never be traced.
use std::{
    collections::HashSet,
    fs, io,
    net::{IpAddr, SocketAddr},
    os::fd::{BorrowedFd, RawFd},
};

use super::socket_info::{is_tcp_socket, local_addr};

/// Local addresses of every TCP socket this process (the agent) holds, in
/// any state (an export connection may still be connecting). A collector on
/// this node sees these as the peer addresses of the agent's export traffic,
/// which must never be traced.
///
/// Asked of the sockets themselves (getsockname on our own descriptors):
/// this runs whenever a loopback connection opens, and a /proc/net/tcp walk
/// costs a scan of every socket on the node each time.
pub fn own_tcp_addrs() -> HashSet<SocketAddr> {
    let Ok(dir) = fs::read_dir("/proc/self/fd") else {
        return HashSet::new();
    };
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<RawFd>().ok())
        .filter_map(|fd| {
            // SAFETY: fd is one of this process's open descriptors (it may
            // have been closed since the listing: then the calls below fail
            // with EBADF and we skip it); it is borrowed only for these calls.
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            if !is_tcp_socket(fd) {
                return None;
            }
            local_addr(fd).filter(|a| a.port() != 0)
        })
        .collect()
}

/// Addresses of the network interfaces in the agent's network namespace
/// (getifaddrs). Only a peer with one of these addresses can be the agent.
pub fn local_interface_ips() -> HashSet<IpAddr> {
    let interfaces = match nix::ifaddrs::getifaddrs() {
        Ok(interfaces) => interfaces,
        Err(errno) => {
            tracing::warn!(error = %io::Error::from(errno), "listing local interface addresses");
            return HashSet::new();
        }
    };
    interfaces
        .filter_map(|interface| {
            let addr = interface.address?;
            match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
                (Some(v4), _) => Some(IpAddr::V4(v4.ip())),
                (_, Some(v6)) => Some(IpAddr::V6(v6.ip())),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, TcpListener, TcpStream};

    use super::*;

    #[test]
    fn own_tcp_addrs_lists_listeners_and_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_accepted, _) = listener.accept().unwrap();
        let addrs = own_tcp_addrs();
        assert!(addrs.contains(&listener.local_addr().unwrap()), "{addrs:?}");
        assert!(addrs.contains(&client.local_addr().unwrap()), "{addrs:?}");
        assert!(addrs.iter().all(|a| a.port() != 0));
    }

    #[test]
    fn local_interface_ips_include_loopback() {
        let ips = local_interface_ips();
        assert!(ips.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{ips:?}");
    }
}
