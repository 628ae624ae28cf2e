//! Connection lifecycle: socket() remembers inet sockets, accept()/connect()
//! start tracking TCP connections (CONNS), close() ends them.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_probe_read_user},
    maps::lpm_trie::Key,
    programs::TracePointContext,
};
use waggle_common::{
    conn_flags, inet_sock, ConnEvent, ConnInfo, Counter, EventKind, Pending, Role, SockKey, SyscallId,
};

use crate::{
    helpers::{arg, count, current, mint_conn_id, now_ns, stash, take_pending, wakeup_flags},
    maps::{CONNS, EVENTS, INET_STREAM_SOCKS, TRACKED_TGIDS, TRUSTED_NETS, TRUST_ALL_PEERS},
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u64 = 1;
const SOCK_NONBLOCK: u64 = 0o4000;
const SOCK_CLOEXEC: u64 = 0o2000000;
const EINPROGRESS: i64 = 115;

/// First 8 bytes of sockaddr_in / sockaddr_in6 (ports are big-endian).
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrHead {
    family: u16,
    port_be: u16,
    /// sockaddr_in: the IPv4 address; sockaddr_in6: flowinfo.
    addr4: [u8; 4],
}

/// A peer address read from user memory.
#[derive(Clone, Copy, Default)]
struct Peer {
    family: u16,
    port: u16,
    addr: [u8; 16],
}

#[inline(always)]
fn is_inet(family: u16) -> bool {
    family == AF_INET || family == AF_INET6
}

/// Reads the family, port and address of a user sockaddr; None if unreadable.
#[inline(always)]
fn read_peer(ptr: u64, addrlen: u64) -> Option<Peer> {
    // SAFETY: reads user memory through the fault-tolerant helper.
    let head = unsafe { bpf_probe_read_user(ptr as *const SockaddrHead) }.ok()?;
    let mut peer = Peer { family: head.family, port: u16::from_be(head.port_be), addr: [0; 16] };
    if head.family == AF_INET {
        let [a, b, c, d] = head.addr4;
        peer.addr[0] = a;
        peer.addr[1] = b;
        peer.addr[2] = c;
        peer.addr[3] = d;
    } else if head.family == AF_INET6 && addrlen >= 24 {
        // sin6_addr follows sin6_flowinfo at offset 8.
        // SAFETY: as above.
        if let Ok(a) = unsafe { bpf_probe_read_user((ptr + 8) as *const [u8; 16]) } {
            peer.addr = a;
        }
    }
    Some(peer)
}

#[inline(always)]
fn emit_conn(kind: EventKind, role: Role, key: SockKey, tid: u32, conn_id: u64, peer: &Peer) {
    let ev = ConnEvent {
        kind: kind as u8,
        role: role as u8,
        family: peer.family as u8,
        _pad0: 0,
        tgid: key.tgid,
        tid,
        fd: key.fd,
        conn_id,
        ts_ns: now_ns(),
        peer_addr: peer.addr,
        peer_port: peer.port,
        _pad1: [0; 6],
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if EVENTS.output::<ConnEvent>(&ev, wakeup_flags()).is_err() {
        count(Counter::EventsLost);
    }
}

/// A server connection's peer may set its trace context: every peer unless
/// trusted networks are configured, then only theirs (an unknown peer
/// address is not trusted).
#[inline(always)]
fn peer_trusted(peer: &Peer) -> bool {
    if TRUST_ALL_PEERS.load() != 0 {
        return true;
    }
    let mut addr = peer.addr;
    if peer.family == AF_INET {
        // ::ffff:a.b.c.d, as userspace stores IPv4 networks.
        addr = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, addr[0], addr[1], addr[2], addr[3]];
    } else if peer.family != AF_INET6 {
        return false;
    }
    TRUSTED_NETS.get(Key::new(128, addr)).is_some()
}

/// Starts tracking a TCP connection and reports it.
#[inline(always)]
fn open_conn(key: SockKey, tid: u32, role: Role, peer: &Peer) {
    let conn_id = mint_conn_id();
    let flags = if role == Role::Server && !peer_trusted(peer) { conn_flags::UNTRUSTED_PEER } else { 0 };
    let info = ConnInfo { conn_id, role: role as u8, family: peer.family as u8, flags, _pad: [0; 5], req_remaining: 0 };
    if CONNS.insert(key, info, 0).is_err() {
        count(Counter::MapInsertFailed);
        return;
    }
    if TRACKED_TGIDS.insert(key.tgid, 1u8, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
    count(Counter::ConnsOpened);
    emit_conn(EventKind::ConnOpen, role, key, tid, conn_id, peer);
}

// socket(family, type, protocol)
#[inline(always)]
pub(crate) fn socket_enter(ctx: &TracePointContext) -> Option<()> {
    let (pid_tgid, _) = current()?;
    let family = arg(ctx, 0) as u16;
    if !is_inet(family) {
        return None;
    }
    let ty = arg(ctx, 1) & !(SOCK_NONBLOCK | SOCK_CLOEXEC);
    let p = Pending {
        syscall: SyscallId::Socket as u8,
        family: family as u8,
        aux: u64::from(if ty == SOCK_STREAM { inet_sock::STREAM } else { inet_sock::OTHER }),
        ..Pending::default()
    };
    stash(pid_tgid, &p);
    Some(())
}

#[inline(always)]
pub(crate) fn socket_exit(ctx: &TracePointContext) -> Option<()> {
    let (pid_tgid, tgid) = current()?;
    let p = take_pending(pid_tgid, SyscallId::Socket)?;
    let ret = arg(ctx, 0) as i64;
    if ret < 0 {
        return None;
    }
    if INET_STREAM_SOCKS.insert(SockKey { tgid, fd: ret as u32 }, p.aux as u8, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
    Some(())
}

// accept(fd, upeer_sockaddr, upeer_addrlen) / accept4(..., flags)
#[inline(always)]
pub(crate) fn accept_enter(ctx: &TracePointContext, id: SyscallId) -> Option<()> {
    let (pid_tgid, _) = current()?;
    let p = Pending { fd: arg(ctx, 0) as u32, ptr: arg(ctx, 1), syscall: id as u8, ..Pending::default() };
    stash(pid_tgid, &p);
    Some(())
}

#[inline(always)]
pub(crate) fn accept_exit(ctx: &TracePointContext, id: SyscallId) -> Option<()> {
    let (pid_tgid, tgid) = current()?;
    let p = take_pending(pid_tgid, id)?;
    let ret = arg(ctx, 0) as i64;
    if ret < 0 {
        return None;
    }
    let key = SockKey { tgid, fd: ret as u32 };
    let tid = pid_tgid as u32;
    // The kernel has filled the peer sockaddr by now; sockaddr_in6 is 28
    // bytes, and a caller that passed a shorter buffer still gets the family.
    let peer = if p.ptr != 0 { read_peer(p.ptr, 28) } else { None };
    match peer {
        Some(peer) if is_inet(peer.family) => {
            open_conn(key, tid, Role::Server, &peer);
        }
        Some(peer) if peer.family != 0 => {
            // AF_UNIX and friends.
        }
        _ => {
            // No address to go by (node/libuv pass NULL): ask the listener.
            let listener = SockKey { tgid, fd: p.fd };
            match INET_STREAM_SOCKS.get_ptr(listener) {
                // SAFETY: points at a live map value.
                Some(kind) if unsafe { *kind } == inet_sock::STREAM => {
                    open_conn(key, tid, Role::Server, &Peer::default());
                }
                Some(_) => {}
                // Listener created before the agent: userspace checks /proc.
                None => emit_conn(EventKind::ConnUnverified, Role::Server, key, tid, 0, &Peer::default()),
            }
        }
    }
    Some(())
}

// connect(fd, uservaddr, addrlen)
#[inline(always)]
pub(crate) fn connect_enter(ctx: &TracePointContext) -> Option<()> {
    let (pid_tgid, tgid) = current()?;
    let fd = arg(ctx, 0) as u32;
    let ptr = arg(ctx, 1);
    if ptr == 0 {
        return None;
    }
    let peer = read_peer(ptr, arg(ctx, 2))?;
    if !is_inet(peer.family) {
        return None;
    }
    // A second connect() on a non-blocking socket (EALREADY/EISCONN probing)
    // must not open the same connection twice.
    if CONNS.get_ptr(SockKey { tgid, fd }).is_some() {
        return None;
    }
    let p = Pending {
        fd,
        syscall: SyscallId::Connect as u8,
        family: peer.family as u8,
        port: peer.port,
        addr: peer.addr,
        ..Pending::default()
    };
    stash(pid_tgid, &p);
    Some(())
}

#[inline(always)]
pub(crate) fn connect_exit(ctx: &TracePointContext) -> Option<()> {
    let (pid_tgid, tgid) = current()?;
    let p = take_pending(pid_tgid, SyscallId::Connect)?;
    let ret = arg(ctx, 0) as i64;
    if ret != 0 && ret != -EINPROGRESS {
        return None;
    }
    let key = SockKey { tgid, fd: p.fd };
    let tid = pid_tgid as u32;
    let peer = Peer { family: u16::from(p.family), port: p.port, addr: p.addr };
    match INET_STREAM_SOCKS.get_ptr(key) {
        // SAFETY: points at a live map value.
        Some(kind) if unsafe { *kind } == inet_sock::STREAM => {
            open_conn(key, tid, Role::Client, &peer);
        }
        // UDP (every DNS lookup connects one) or raw: never tracked.
        Some(_) => {}
        None => emit_conn(EventKind::ConnUnverified, Role::Client, key, tid, 0, &peer),
    }
    Some(())
}

/// close() on enter, not exit: once the syscall returns the descriptor
/// number can be reused, and our ConnClose must be queued before anything
/// the next owner of the number does.
#[inline(always)]
pub(crate) fn close_enter(ctx: &TracePointContext) -> Option<()> {
    let (pid_tgid, tgid) = current()?;
    let key = SockKey { tgid, fd: arg(ctx, 0) as u32 };
    if let Some(info) = CONNS.get_ptr(key) {
        // SAFETY: points at a live CONNS value, copied before the delete.
        let info = unsafe { *info };
        let _ = CONNS.remove(key);
        let peer = Peer { family: u16::from(info.family), ..Peer::default() };
        emit_conn(EventKind::ConnClose, Role::from_u8(info.role), key, pid_tgid as u32, info.conn_id, &peer);
    }
    let _ = INET_STREAM_SOCKS.remove(key);
    Some(())
}
