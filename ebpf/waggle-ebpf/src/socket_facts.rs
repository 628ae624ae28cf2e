//! A connection's addresses: from a descriptor of the current task to its
//! socket's family and both ends, read from kernel memory along the offsets
//! the loader took from the running kernel's BTF (`SOCK_WALK`); or, where
//! that walk is off, the peer from the caller's sockaddr. The walk is what
//! lets a connection's open event carry both ends, so userspace makes no
//! lookup per connection, and lets the kernel tell a socket from a file
//! without having watched it being created.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user};
pub(crate) use waggle_common::ConnEnds as Ends;
use waggle_common::{Counter, SockWalkOffsets};

use crate::{
    helpers::count,
    maps::{ENDS, SOCK_WALK},
};

pub(crate) use waggle_common::{AF_INET, AF_INET6};
const SOCK_STREAM: u16 = 1;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

#[inline(always)]
pub(crate) fn is_inet(family: u16) -> bool {
    family == AF_INET || family == AF_INET6
}

/// First 8 bytes of sockaddr_in / sockaddr_in6 (ports are big-endian).
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrHead {
    family: u16,
    port_be: u16,
    /// sockaddr_in: the IPv4 address; sockaddr_in6: flowinfo.
    addr4: [u8; 4],
}

/// Reads the family, port and address of a user sockaddr as the peer;
/// None if unreadable.
#[inline(always)]
pub(crate) fn read_peer(ptr: u64, addrlen: u64) -> Option<Ends> {
    // SAFETY: reads user memory through the fault-tolerant helper.
    let head = unsafe { bpf_probe_read_user(ptr as *const SockaddrHead) }.ok()?;
    let mut ends = Ends { family: head.family, peer_port: u16::from_be(head.port_be), ..Ends::default() };
    if head.family == AF_INET {
        let [a, b, c, d] = head.addr4;
        ends.peer_addr[0] = a;
        ends.peer_addr[1] = b;
        ends.peer_addr[2] = c;
        ends.peer_addr[3] = d;
    } else if head.family == AF_INET6 && addrlen >= 24 {
        // sin6_addr follows sin6_flowinfo at offset 8.
        // SAFETY: as above.
        if let Ok(a) = unsafe { bpf_probe_read_user((ptr + 8) as *const [u8; 16]) } {
            ends.peer_addr = a;
        }
    }
    Some(ends)
}

/// What the walk found.
pub(crate) enum Walk {
    /// The addresses live in this CPU's ENDS slot: valid until the program
    /// returns (tracepoint programs neither nest nor migrate).
    InetStream(&'static Ends),
    /// A file, pipe, unix or UDP socket: never tracked.
    Other,
    /// A read failed: decide as without the walk (counted).
    Unknown,
    /// The walk is off on this kernel.
    Off,
}

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address: a bad pointer
    // gives an error, never a fault.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

#[inline(always)]
fn at(base: u64, off: u32) -> u64 {
    base.wrapping_add(u64::from(off))
}

/// The current task's descriptor table (`struct fdtable *`) and its size.
#[inline(always)]
fn fd_table(off: &SockWalkOffsets) -> Option<(u64, u32)> {
    // SAFETY: plain helper call without arguments.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = read(at(task, off.task_files))?;
    let fdt: u64 = read(at(files, off.files_fdt))?;
    let max_fds: u32 = read(at(fdt, off.fdt_max_fds))?;
    Some((fdt, max_fds))
}

/// The `struct file` at descriptor `fd` (0: not open), None if unreadable.
#[inline(always)]
fn file_of_fd(fd: u32, off: &SockWalkOffsets) -> Option<u64> {
    let (fdt, max_fds) = fd_table(off)?;
    if fd >= max_fds {
        return Some(0);
    }
    let fds: u64 = read(at(fdt, off.fdt_fd))?;
    read(fds.wrapping_add(u64::from(fd) * 8))
}

#[inline(always)]
fn walk_offsets() -> Option<&'static SockWalkOffsets> {
    SOCK_WALK.get(0).filter(|off| off.enabled != 0)
}

/// Size of the current task's descriptor table; None where the walk is off.
#[inline(always)]
pub(crate) fn fd_table_size() -> Option<u32> {
    fd_table(walk_offsets()?).map(|(_, size)| size)
}

/// Whether descriptor `fd` of the current task is open; None if unknown.
#[inline(always)]
pub(crate) fn fd_is_open(fd: u32) -> Option<bool> {
    file_of_fd(fd, walk_offsets()?).map(|file| file != 0)
}

/// The `struct socket` behind descriptor `fd` of the current task, None if
/// the descriptor is not a socket; Err(()) if the walk could not tell.
#[inline(always)]
fn socket_of_fd(fd: u32, off: &SockWalkOffsets) -> Result<Option<u64>, ()> {
    let file = file_of_fd(fd, off).ok_or(())?;
    if file == 0 {
        return Err(());
    }
    let inode: u64 = read(at(file, off.file_inode)).ok_or(())?;
    let mode: u16 = read(at(inode, off.inode_mode)).ok_or(())?;
    if mode & S_IFMT != S_IFSOCK {
        return Ok(None);
    }
    let socket: u64 = read(at(file, off.file_private_data)).ok_or(())?;
    Ok((socket != 0).then_some(socket))
}

/// Classifies descriptor `fd` of the current task and, for an inet stream
/// socket, reads its addresses.
#[inline(always)]
pub(crate) fn walk(fd: u32) -> Walk {
    let walk = walk_unchecked(fd);
    if matches!(walk, Walk::Unknown) {
        count(Counter::SocketUnreadable);
    }
    walk
}

#[inline(always)]
fn walk_unchecked(fd: u32) -> Walk {
    let Some(off) = SOCK_WALK.get(0) else { return Walk::Off };
    if off.enabled == 0 {
        return Walk::Off;
    }
    let socket = match socket_of_fd(fd, off) {
        Ok(Some(socket)) => socket,
        Ok(None) => return Walk::Other,
        Err(()) => return Walk::Unknown,
    };
    let Some(ty) = read::<i16>(at(socket, off.socket_type)) else { return Walk::Unknown };
    if ty as u16 != SOCK_STREAM {
        return Walk::Other;
    }
    let Some(sk) = read::<u64>(at(socket, off.socket_sk)).filter(|sk| *sk != 0) else { return Walk::Unknown };
    let Some(family) = read::<u16>(at(sk, off.skc_family)) else { return Walk::Unknown };
    let Some(facts) = ENDS.get_ptr_mut(0) else { return Walk::Unknown };
    // SAFETY: this CPU's slot of a live per-CPU element; nothing else runs
    // on this CPU until the program returns.
    let facts = unsafe { &mut *facts };
    facts.family = family;
    facts.from_socket = 1;
    if family == AF_INET {
        let (Some(local), Some(peer)) =
            (read::<[u8; 4]>(at(sk, off.skc_rcv_saddr)), read::<[u8; 4]>(at(sk, off.skc_daddr)))
        else {
            return Walk::Unknown;
        };
        let ([a, b, c, d], [e, f, g, h]) = (local, peer);
        facts.local_addr = [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        facts.peer_addr = [e, f, g, h, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    } else if family == AF_INET6 {
        let (Some(local), Some(peer)) =
            (read::<[u8; 16]>(at(sk, off.skc_v6_rcv_saddr)), read::<[u8; 16]>(at(sk, off.skc_v6_daddr)))
        else {
            return Walk::Unknown;
        };
        facts.local_addr = local;
        facts.peer_addr = peer;
    } else {
        return Walk::Other;
    }
    let (Some(num), Some(dport_be)) = (read::<u16>(at(sk, off.skc_num)), read::<u16>(at(sk, off.skc_dport))) else {
        return Walk::Unknown;
    };
    facts.local_port = num;
    facts.peer_port = u16::from_be(dport_be);
    Walk::InetStream(facts)
}
