//! The TCP sockets that existed before the agent started, or that a forked
//! process inherited: found in /proc so they can be tracked from the start.
use std::{collections::HashMap, fs, net::SocketAddr, os::unix::fs::MetadataExt};

use super::{
    proc::DiscoveryError,
    sockets::{socket_fds, SocketInfo, SocketState, TcpTable},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedState {
    Listen,
    Established,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedSocket {
    pub pid: u32,
    pub fd: u32,
    pub state: SeedState,
    /// Addresses are canonical: an IPv4 peer on a dual-stack IPv6 socket
    /// (`::ffff:a.b.c.d`) is reported as plain IPv4.
    pub local: SocketAddr,
    /// Unspecified address, port 0, for listening sockets.
    pub peer: SocketAddr,
    /// For established sockets: true when the local port is one the same
    /// network namespace listens on (the process is the server side).
    pub is_server: bool,
}

/// Every numeric entry of /proc: the thread-group ids (threads are hidden from
/// the listing).
fn list_pids() -> Vec<u32> {
    let entries = match fs::read_dir("/proc") {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list /proc; no processes discovered");
            return Vec::new();
        }
    };
    entries.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok()).collect()
}

fn netns_inode(pid: u32) -> Result<u64, DiscoveryError> {
    fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino()).map_err(|source| DiscoveryError::ReadProcIo {
        pid,
        file: "ns/net",
        source,
    })
}

/// Every TCP socket descriptor of `pid` found in `table`, in any state.
fn tcp_fds(pid: u32, table: &TcpTable) -> Result<Vec<(u32, SocketInfo)>, DiscoveryError> {
    Ok(socket_fds(pid)?
        .into_iter()
        .filter_map(|(fd, inode)| table.by_inode.get(&inode).map(|info| (fd, *info)))
        .collect())
}

fn push_seeds(pid: u32, table: &TcpTable, out: &mut Vec<SeedSocket>) {
    let fds = match tcp_fds(pid, table) {
        Ok(fds) => fds,
        Err(e) => {
            tracing::debug!(pid, error = %e, "skipping process in socket scan");
            return;
        }
    };
    for (fd, info) in fds {
        let (state, is_server) = match info.state {
            SocketState::Listen => (SeedState::Listen, false),
            SocketState::Established => (SeedState::Established, table.is_listening_on(&info.local)),
            _ => continue,
        };
        out.push(SeedSocket { pid, fd, state, local: info.local, peer: info.peer, is_server });
    }
}

/// Every (pid, fd) on this host that is a listening or established TCP socket,
/// except the agent's own. Processes are grouped by network namespace so each
/// namespace's tables are read once, through any of its members.
pub fn scan_inet_sockets(agent_tgid: u32) -> Vec<SeedSocket> {
    let mut by_netns: HashMap<u64, Vec<u32>> = HashMap::new();
    for pid in list_pids() {
        if pid == agent_tgid {
            continue;
        }
        match netns_inode(pid) {
            Ok(ns) => by_netns.entry(ns).or_default().push(pid),
            Err(e) => tracing::debug!(pid, error = %e, "skipping process in socket scan"),
        }
    }
    let namespaces = by_netns.len();
    let mut out = Vec::new();
    for (netns, pids) in by_netns {
        // Any member shows the namespace's tables; the first may have exited.
        let Some(table) = pids.iter().find_map(|&pid| match TcpTable::read(pid) {
            Ok(table) => Some(table),
            Err(e) => {
                tracing::debug!(pid, netns, error = %e, "cannot read TCP table through this process");
                None
            }
        }) else {
            continue;
        };
        for pid in pids {
            push_seeds(pid, &table, &mut out);
        }
    }
    out.sort_by_key(|s| (s.pid, s.fd));
    tracing::debug!(namespaces, sockets = out.len(), "scanned /proc for TCP sockets");
    out
}

/// The listening and established TCP sockets of one process (for a fork: the
/// child inherited its parent's descriptors).
pub fn scan_process_sockets(pid: u32) -> Vec<SeedSocket> {
    let table = match TcpTable::read(pid) {
        Ok(table) => table,
        Err(e) => {
            tracing::debug!(pid, error = %e, "cannot scan process sockets");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    push_seeds(pid, &table, &mut out);
    out.sort_by_key(|s| s.fd);
    out
}

#[cfg(test)]
mod tests {
    use std::{
        net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream},
        os::fd::AsRawFd,
    };

    use super::{
        super::test_support::{read_line, socket_child, spawn_python, wait_for, SocketChild},
        *,
    };

    fn assert_three_sockets(seeds: &[SeedSocket], pid: u32, c: &SocketChild) {
        let mine: Vec<&SeedSocket> = seeds.iter().filter(|s| s.pid == pid).collect();
        assert_eq!(mine.len(), 3, "{mine:#?}");
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let listen = mine.iter().find(|s| s.fd == c.listen_fd).unwrap();
        assert_eq!(listen.state, SeedState::Listen);
        assert_eq!(listen.local.port(), c.port);
        assert!(listen.peer.ip().is_unspecified() && listen.peer.port() == 0);
        let accepted = mine.iter().find(|s| s.fd == c.accepted_fd).unwrap();
        assert_eq!(accepted.state, SeedState::Established);
        assert_eq!(accepted.local, SocketAddr::new(lo, c.port));
        assert_eq!(accepted.peer, SocketAddr::new(lo, c.client_port));
        assert!(accepted.is_server);
        let client = mine.iter().find(|s| s.fd == c.client_fd).unwrap();
        assert_eq!(client.state, SeedState::Established);
        assert_eq!(client.local, SocketAddr::new(lo, c.client_port));
        assert_eq!(client.peer, SocketAddr::new(lo, c.port));
        assert!(!client.is_server);
    }

    #[test]
    fn scan_finds_listener_and_both_ends_v4() {
        let c = socket_child("4");
        let seeds = scan_inet_sockets(std::process::id());
        assert_three_sockets(&seeds, c.guard.pid(), &c);
        // The forked child inherited the same descriptors.
        assert_three_sockets(&seeds, c.forked, &c);
        assert_three_sockets(&scan_process_sockets(c.forked), c.forked, &c);
        assert_three_sockets(&scan_process_sockets(c.guard.pid()), c.guard.pid(), &c);
    }

    #[test]
    fn scan_canonicalises_dual_stack_sockets() {
        // Listener on [::], IPv4 client: the kernel shows ::ffff:127.0.0.1.
        let c = socket_child("6");
        let seeds = scan_process_sockets(c.guard.pid());
        let listen = seeds.iter().find(|s| s.fd == c.listen_fd).unwrap();
        assert_eq!(listen.local, SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), c.port));
        assert_three_sockets(&seeds, c.guard.pid(), &c);
    }

    #[test]
    fn scan_sees_http_server_and_excludes_agent() {
        let mut server = spawn_python(&["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"], &[]);
        let line = read_line(&mut server);
        // "Serving HTTP on 127.0.0.1 port 40123 (http://127.0.0.1:40123/) ..."
        let port: u16 = line.split(" port ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let client_addr = client.local_addr().unwrap();
        let me = std::process::id();

        let seeds = wait_for("the server to accept", || {
            let seeds = scan_inet_sockets(me);
            seeds.iter().any(|s| s.pid == server.pid() && s.state == SeedState::Established).then_some(seeds)
        });
        assert!(seeds.iter().all(|s| s.pid != me), "the agent's own sockets must be skipped");
        let listen: Vec<_> = seeds.iter().filter(|s| s.pid == server.pid() && s.state == SeedState::Listen).collect();
        assert_eq!(listen.len(), 1);
        assert_eq!(listen[0].local.port(), port);
        let conn = seeds.iter().find(|s| s.pid == server.pid() && s.state == SeedState::Established).unwrap();
        assert_eq!(conn.peer, client_addr);
        assert_eq!(conn.local.port(), port);
        assert!(conn.is_server);

        // Without an agent pid to skip, our client end shows up, as a client.
        let all = scan_inet_sockets(0);
        let ours = all.iter().find(|s| s.pid == me && s.local == client_addr).unwrap();
        assert_eq!(ours.fd, client.as_raw_fd() as u32);
        assert!(!ours.is_server);
        assert_eq!(ours.peer, SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
}
