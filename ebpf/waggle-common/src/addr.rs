//! Addresses of connections as the kernel programs learn them: the offsets
//! of the descriptor → socket walk, both ends of a connection, and the key
//! under which the agent's own connections are recognised from the other
//! end. Pure: tested here on the host.
use bytemuck::{Pod, Zeroable};

/// Byte offsets in the running kernel's structs (from its BTF) of the fields
/// on the way from a descriptor to its socket's addresses:
/// `task_struct.files -> files_struct.fdt -> fdtable.fd[fd] -> file
/// (f_inode -> i_mode says it is a socket; private_data) -> socket.sk ->
/// sock_common`. `enabled` is 0 when any is unknown: then the kernel reads
/// addresses from the syscall's sockaddr as before, and userspace looks up
/// what is missing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SockWalkOffsets {
    pub enabled: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    pub skc_family: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
}

/// One TCP connection as the agent's end sees it, addresses as IPv6
/// (IPv4 mapped to `::ffff:a.b.c.d`): the key of OWN_FLOWS. The server end
/// of the same connection builds it with local and peer swapped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
    pub local_port: u16,
    pub peer_port: u16,
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// Family and the ends of a connection, as the kernel learns them. Addresses
/// as in [`crate::ConnEvent`] (IPv4 in the first 4 bytes), ports in host byte
/// order. `from_socket` 1: read from the kernel's socket, so the local end
/// is set too (else only the peer, from the caller's sockaddr).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ConnEnds {
    pub family: u16,
    pub from_socket: u16,
    pub local_port: u16,
    pub peer_port: u16,
    pub local_addr: [u8; 16],
    pub peer_addr: [u8; 16],
}

impl ConnEnds {
    /// The connection as this end sees it (OWN_FLOWS' key).
    #[inline(always)]
    pub fn flow(&self) -> FlowKey {
        let v4 = self.family == AF_INET;
        FlowKey {
            local_addr: mapped_v6(&self.local_addr, v4),
            peer_addr: mapped_v6(&self.peer_addr, v4),
            local_port: self.local_port,
            peer_port: self.peer_port,
        }
    }

    /// The connection as the other end sees it.
    #[inline(always)]
    pub fn reversed_flow(&self) -> FlowKey {
        let v4 = self.family == AF_INET;
        FlowKey {
            local_addr: mapped_v6(&self.peer_addr, v4),
            peer_addr: mapped_v6(&self.local_addr, v4),
            local_port: self.peer_port,
            peer_port: self.local_port,
        }
    }

    /// Only the peer half: where a connect() goes.
    #[inline(always)]
    pub fn peer_only(&self) -> FlowKey {
        let peer_addr = mapped_v6(&self.peer_addr, self.family == AF_INET);
        FlowKey { peer_addr, peer_port: self.peer_port, ..FlowKey::default() }
    }

    /// Only the local half, as a peer: where the other end's connect() went.
    #[inline(always)]
    pub fn local_as_peer(&self) -> FlowKey {
        let peer_addr = mapped_v6(&self.local_addr, self.family == AF_INET);
        FlowKey { peer_addr, peer_port: self.local_port, ..FlowKey::default() }
    }
}

impl ConnEnds {
    /// A key the two ends of one connection compute alike, the client from
    /// its side and the server from its own (`client` says which this is):
    /// a hash of (client address, client port, server address, server
    /// port). 0 when the local end is unknown. The kernel links a same-host
    /// server request to the client request that opened it through it.
    #[inline(always)]
    pub fn link_key(&self, client: bool) -> u64 {
        if self.from_socket == 0 {
            return 0;
        }
        let v4 = self.family == AF_INET;
        let (local, peer) = (mapped_v6(&self.local_addr, v4), mapped_v6(&self.peer_addr, v4));
        if client {
            link_hash(&local, self.local_port, &peer, self.peer_port)
        } else {
            link_hash(&peer, self.peer_port, &local, self.local_port)
        }
    }
}

/// FNV-1a over both ends; never 0 (0 means "no key").
#[inline(always)]
pub fn link_hash(client: &[u8; 16], client_port: u16, server: &[u8; 16], server_port: u16) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < 16 {
        h = (h ^ u64::from(client[i])).wrapping_mul(PRIME);
        h = (h ^ u64::from(server[i])).wrapping_mul(PRIME);
        i += 1;
    }
    h = (h ^ u64::from(client_port)).wrapping_mul(PRIME);
    h = (h ^ u64::from(server_port)).wrapping_mul(PRIME);
    if h == 0 {
        1
    } else {
        h
    }
}

/// `addr` (IPv4 in the first 4 bytes when `is_v4`) as an IPv6 address.
#[inline(always)]
pub fn mapped_v6(addr: &[u8; 16], is_v4: bool) -> [u8; 16] {
    if is_v4 {
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3]]
    } else {
        *addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&a);
        out
    }

    #[test]
    fn the_two_ends_of_one_connection_key_it_alike() {
        // The agent connected from 127.0.0.1:41000 to 127.0.0.1:4318.
        let agent = ConnEnds {
            family: AF_INET,
            from_socket: 1,
            local_port: 41000,
            peer_port: 4318,
            local_addr: v4([127, 0, 0, 1]),
            peer_addr: v4([127, 0, 0, 1]),
        };
        // The collector accepted it on a dual-stack socket: IPv4-mapped.
        let mapped = mapped_v6(&v4([127, 0, 0, 1]), true);
        let collector = ConnEnds {
            family: AF_INET6,
            from_socket: 1,
            local_port: 4318,
            peer_port: 41000,
            local_addr: mapped,
            peer_addr: mapped,
        };
        assert_eq!(agent.flow(), collector.reversed_flow());
        assert_eq!(agent.peer_only(), collector.local_as_peer());
        assert_eq!(agent.flow().local_addr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]);
        // Another client of the collector is not the agent.
        let other = ConnEnds { peer_port: 41001, ..collector };
        assert_ne!(agent.flow(), other.reversed_flow());
        // ... though it goes where the agent goes.
        assert_eq!(agent.peer_only(), other.local_as_peer());
        // The link key: equal on both ends, different for another client,
        // none without the local end.
        assert_eq!(agent.link_key(true), collector.link_key(false));
        assert_ne!(agent.link_key(true), 0);
        assert_ne!(agent.link_key(true), other.link_key(false));
        assert_ne!(agent.link_key(true), collector.link_key(true), "the roles are not symmetric");
        assert_eq!(ConnEnds { from_socket: 0, ..agent }.link_key(true), 0);
    }

    #[test]
    fn ipv6_addresses_stay_as_they_are() {
        let addr = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(mapped_v6(&addr, false), addr);
    }
}
