//! Connection lifecycle: socket() remembers inet sockets, accept()/connect()
//! start tracking TCP connections (CONNS), close() ends them.
use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated::bpf_get_current_comm},
    maps::lpm_trie::Key,
    programs::TracePointContext,
};
use waggle_common::{
    conn_event_flags, conn_flags, inet_sock, mapped_v6, AddrBytes, ConnEvent, ConnInfo, Counter, EventKind, Pending,
    Role, SockKey, SyscallId,
};

use crate::{
    helpers::{agent, arg, count, current, mint_conn_id, now_ns, repeat, stash, take_pending, wakeup_flags, zeroed_in},
    maps::{CONNS, EVENTS, INET_STREAM_SOCKS, TRACKED_TGIDS, TRUSTED_NETS, TRUST_ALL_PEERS},
    own,
    socket_facts::{fd_is_open, fd_table_size, is_inet, read_peer, walk, Ends, Walk, AF_INET, AF_INET6},
    verdict,
};

const SOCK_STREAM: u64 = 1;
const SOCK_NONBLOCK: u64 = 0o4000;
const SOCK_CLOEXEC: u64 = 0o2000000;
const EINPROGRESS: i64 = 115;
/// Descriptors one close_range() or exec checks at most (a table this large
/// is rare; what lies past it is counted, FdSweepCut).
const MAX_FD_SWEEP: u64 = 4096;
/// The same bound in the reduced mode (no bpf_loop), where the verifier
/// walks each step: what lies past it is counted the same way.
const MAX_FD_SWEEP_BOUNDED: u32 = 256;

/// Written in place in the ring buffer: the record is too big to build on
/// the stack next to everything an accept() exit holds.
#[inline(always)]
fn emit_conn(kind: EventKind, role: Role, key: SockKey, tid: u32, conn_id: u64, ends: &Ends) {
    let flags = wakeup_flags();
    let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at the reserved, exclusively owned record; every
    // field is written before the submit.
    unsafe {
        (*ev).kind = kind as u8;
        (*ev).role = role as u8;
        (*ev).family = ends.family as u8;
        (*ev).flags = if ends.from_socket != 0 { conn_event_flags::FROM_SOCKET } else { 0 };
        (*ev).tgid = key.tgid;
        (*ev).tid = tid;
        (*ev).fd = key.fd;
        (*ev).conn_id = conn_id;
        (*ev).ts_ns = now_ns();
        (*ev).peer_addr = ends.peer_addr;
        (*ev).peer_port = ends.peer_port;
        (*ev).local_port = ends.local_port;
        (*ev)._pad1 = [0; 4];
        (*ev).local_addr = ends.local_addr;
        let comm = &mut (*ev).comm;
        if bpf_get_current_comm(comm.as_mut_ptr().cast(), comm.len() as u32) != 0 {
            *comm = [0; 16];
        }
    }
    entry.submit(flags);
}

/// A server connection's peer may set its trace context: every peer unless
/// trusted networks are configured, then only theirs (an unknown peer
/// address is not trusted).
#[inline(always)]
fn peer_trusted(ends: &Ends) -> bool {
    if TRUST_ALL_PEERS.load() != 0 {
        return true;
    }
    if ends.family != AF_INET && ends.family != AF_INET6 {
        return false;
    }
    // ::ffff:a.b.c.d, as userspace stores IPv4 networks.
    TRUSTED_NETS.get(Key::new(128, mapped_v6(&ends.peer_addr, ends.family == AF_INET))).is_some()
}

/// Starts tracking a TCP connection and reports it.
#[inline(always)]
fn open_conn(key: SockKey, tid: u32, role: Role, ends: &Ends) {
    let conn_id = mint_conn_id();
    let flags = if role == Role::Server && !peer_trusted(ends) { conn_flags::UNTRUSTED_PEER } else { 0 };
    let info = ConnInfo {
        conn_id,
        role: role as u8,
        family: ends.family as u8,
        flags,
        tls: 0,
        _pad: [0; 4],
        req_remaining: 0,
        link: ends.link_key(role == Role::Client),
    };
    if CONNS.insert(key, info, 0).is_err() {
        count(Counter::MapInsertFailed);
        return;
    }
    if TRACKED_TGIDS.insert(key.tgid, 1u8, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
    count(Counter::ConnsOpened);
    emit_conn(EventKind::ConnOpen, role, key, tid, conn_id, ends);
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
    let mut slot = MaybeUninit::uninit();
    let p: &mut Pending = zeroed_in(&mut slot);
    p.syscall = SyscallId::Socket as u8;
    p.family = family as u8;
    p.aux = u64::from(if ty == SOCK_STREAM { inet_sock::STREAM } else { inet_sock::OTHER });
    stash(pid_tgid, p);
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
    let mut slot = MaybeUninit::uninit();
    let p: &mut Pending = zeroed_in(&mut slot);
    p.fd = arg(ctx, 0) as u32;
    p.ptr = arg(ctx, 1);
    p.syscall = id as u8;
    stash(pid_tgid, p);
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
    match walk(key.fd) {
        Walk::InetStream(ends) => {
            if own::is_own(ends) {
                count(Counter::OwnConnsSkipped);
            } else {
                open_conn(key, tid, Role::Server, ends);
                // A listener older than the agent: its next connections.
                crate::response::note_port(tgid, ends.local_port);
            }
            return Some(());
        }
        Walk::Other => return Some(()),
        Walk::Unknown | Walk::Off => {}
    }
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
                    open_conn(key, tid, Role::Server, &Ends::default());
                }
                Some(_) => {}
                // Listener created before the agent: userspace checks /proc.
                None => emit_conn(EventKind::ConnUnverified, Role::Server, key, tid, 0, &Ends::default()),
            }
        }
    }
    Some(())
}

// connect(fd, uservaddr, addrlen)
#[inline(always)]
pub(crate) fn connect_enter(ctx: &TracePointContext) -> Option<()> {
    match current() {
        Some((pid_tgid, tgid)) => traced_connect_enter(ctx, pid_tgid, tgid),
        None => own::connect_enter(ctx, agent()?),
    }
}

// A subprogram, like the agent's own path beside it: kernels without
// private BPF stacks (Debian's 6.1 and 6.12 among them; the 6.18 hosts here
// have them) add a caller's stack to its callees', and the two halves
// together exceed the 512 bytes the verifier allows.
#[inline(never)]
fn traced_connect_enter(ctx: &TracePointContext, pid_tgid: u64, tgid: u32) -> Option<()> {
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
        port: peer.peer_port,
        addr: AddrBytes(peer.peer_addr),
        ..Pending::default()
    };
    stash(pid_tgid, &p);
    Some(())
}

#[inline(always)]
pub(crate) fn connect_exit(ctx: &TracePointContext) -> Option<()> {
    match current() {
        Some((pid_tgid, tgid)) => traced_connect_exit(ctx, pid_tgid, tgid),
        None => own::connect_exit(ctx, agent()?),
    }
}

// A subprogram for the same reason as `traced_connect_enter`.
#[inline(never)]
fn traced_connect_exit(ctx: &TracePointContext, pid_tgid: u64, tgid: u32) -> Option<()> {
    let p = take_pending(pid_tgid, SyscallId::Connect)?;
    let ret = arg(ctx, 0) as i64;
    if ret != 0 && ret != -EINPROGRESS {
        return None;
    }
    let key = SockKey { tgid, fd: p.fd };
    let tid = pid_tgid as u32;
    match walk(key.fd) {
        Walk::InetStream(ends) => {
            open_conn(key, tid, Role::Client, ends);
            return Some(());
        }
        Walk::Other => return Some(()),
        Walk::Unknown | Walk::Off => {}
    }
    let peer = Ends { family: u16::from(p.family), peer_port: p.port, peer_addr: p.addr.0, ..Ends::default() };
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
    let fd = arg(ctx, 0) as u32;
    if agent().is_some() {
        own::close_enter(fd);
        return None;
    }
    // Untraced processes too (one CONNS lookup): connections opened while
    // the process was still undecided end at their close all the same.
    let pid_tgid = bpf_get_current_pid_tgid();
    forget(pid_tgid, (pid_tgid >> 32) as u32, fd);
    Some(())
}

/// Ends what is tracked on descriptor `fd` of this process, as close() does.
#[inline(always)]
fn forget(pid_tgid: u64, tgid: u32, fd: u32) {
    let key = SockKey { tgid, fd };
    if let Some(info) = CONNS.get_ptr(key) {
        // SAFETY: points at a live CONNS value, copied before the delete.
        let info = unsafe { *info };
        let _ = CONNS.remove(key);
        let ends = Ends { family: u16::from(info.family), ..Ends::default() };
        emit_conn(EventKind::ConnClose, Role::from_u8(info.role), key, pid_tgid as u32, info.conn_id, &ends);
    }
    let _ = INET_STREAM_SOCKS.remove(key);
}

/// dup2(old, new) and dup3 close `new` first when it is open, without a
/// close() call: a connection there must end before the number carries
/// whatever `old` is (often a file).
#[inline(always)]
pub(crate) fn dup_enter(ctx: &TracePointContext) -> Option<()> {
    let (old, new) = (arg(ctx, 0) as u32, arg(ctx, 1) as u32);
    if old == new {
        // dup2(fd, fd) closes nothing.
        return None;
    }
    let (pid_tgid, tgid) = current()?;
    forget(pid_tgid, tgid, new);
    Some(())
}

/// splice(fd_in, off_in, fd_out, ...), recvmmsg(fd, ...), sendmmsg(fd, ...):
/// bytes a tracked connection moves without a buffer the agent reads. Not
/// followed, counted.
#[inline(always)]
pub(crate) fn unseen_io_enter(ctx: &TracePointContext, fds: &[usize]) -> Option<()> {
    let (_, tgid) = current()?;
    for &n in fds {
        if CONNS.get_ptr(SockKey { tgid, fd: arg(ctx, n) as u32 }).is_some() {
            count(Counter::UnseenIo);
            return Some(());
        }
    }
    Some(())
}

/// io_uring_setup by a process with tracked connections: what it submits
/// through the ring is not seen.
#[inline(always)]
pub(crate) fn io_uring_setup_enter(_ctx: &TracePointContext) -> Option<()> {
    let (_, tgid) = current()?;
    TRACKED_TGIDS.get_ptr(tgid)?;
    count(Counter::IoUringSetup);
    Some(())
}

/// close_range(2)'s flag for "mark close-on-exec" instead of closing.
const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;

/// close_range(first, last, flags) closes a whole range without close().
#[inline(always)]
pub(crate) fn close_range_enter<const BPF_LOOP: bool>(ctx: &TracePointContext) -> Option<()> {
    if arg(ctx, 2) & CLOSE_RANGE_CLOEXEC != 0 {
        // Closed at the next exec, which sweeps then.
        return None;
    }
    let (pid_tgid, tgid) = current()?;
    TRACKED_TGIDS.get_ptr(tgid)?;
    sweep::<BPF_LOOP>(pid_tgid, arg(ctx, 0) as u32, arg(ctx, 1) as u32, false);
    Some(())
}

/// exec closed the descriptors marked close-on-exec (sockets are, in most
/// runtimes) without close() calls, and the new program's files take their
/// numbers: connections whose descriptor is gone end here.
#[inline(always)]
pub(crate) fn exec<const BPF_LOOP: bool>(_ctx: &TracePointContext) -> Option<()> {
    verdict::exec();
    let (pid_tgid, tgid) = current()?;
    TRACKED_TGIDS.get_ptr(tgid)?;
    sweep::<BPF_LOOP>(pid_tgid, 0, u32::MAX, true);
    Some(())
}

/// What `sweep_step` works on; on the caller's stack.
#[repr(C)]
struct Sweep {
    pid_tgid: u64,
    first: u32,
    /// Keep descriptors that are still open (exec); else forget every one.
    only_closed: u32,
}

extern "C" fn sweep_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `sweep` gave it: a Sweep on
    // the caller's stack, alive for the whole loop.
    let sweep = unsafe { &*ctx.cast::<Sweep>() };
    sweep_fd(sweep.pid_tgid, sweep.first.wrapping_add(index as u32), sweep.only_closed != 0);
    0
}

/// `sweep_step` for the reduced mode's bounded loop (`repeat`): a global
/// function (scalars only), verified once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn waggle_sweep_fd(pid_tgid: u64, fd: u64, only_closed: u64) -> i64 {
    sweep_fd(pid_tgid, fd as u32, only_closed != 0);
    0
}

/// Forgets descriptor `fd` of the current process if it is tracked (and,
/// when `only_closed`, closed).
#[inline(always)]
fn sweep_fd(pid_tgid: u64, fd: u32, only_closed: bool) {
    let tgid = (pid_tgid >> 32) as u32;
    let key = SockKey { tgid, fd };
    if CONNS.get_ptr(key).is_none() && INET_STREAM_SOCKS.get_ptr(key).is_none() {
        return;
    }
    // Unknown (no BTF walk): forgotten, so a file never inherits the state.
    if only_closed && fd_is_open(fd) == Some(true) {
        return;
    }
    forget(pid_tgid, tgid, fd);
}

/// Forgets the descriptors in [first, last] of this process (those still
/// open are kept when `only_closed`), up to MAX_FD_SWEEP of them past the
/// end of the process's descriptor table (MAX_FD_SWEEP_BOUNDED without
/// bpf_loop).
#[inline(always)]
fn sweep<const BPF_LOOP: bool>(pid_tgid: u64, first: u32, last: u32, only_closed: bool) {
    // No descriptor at or past the table's size is open.
    let last = match fd_table_size() {
        Some(0) => return,
        Some(size) if size - 1 < last => size - 1,
        _ => last,
    };
    if first > last {
        return;
    }
    let mut n = u64::from(last - first) + 1;
    if n > MAX_FD_SWEEP {
        count(Counter::FdSweepCut);
        n = MAX_FD_SWEEP;
    }
    let mut state = Sweep { pid_tgid, first, only_closed: u32::from(only_closed) };
    let bounded = |i: u32| waggle_sweep_fd(pid_tgid, u64::from(first.wrapping_add(i)), u64::from(only_closed));
    if !repeat::<BPF_LOOP>(n as u32, sweep_step, (&mut state as *mut Sweep).cast(), MAX_FD_SWEEP_BOUNDED, bounded) {
        count(Counter::FdSweepCut);
    }
}

/// What `inherit_step` works on; on the caller's stack.
#[repr(C)]
struct Inherit {
    parent: u32,
    child: u32,
}

extern "C" fn inherit_step(fd: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `inherit` gave it: an Inherit
    // on the caller's stack, alive for the whole loop.
    let inherit = unsafe { &*ctx.cast::<Inherit>() };
    inherit_fd(inherit.parent, inherit.child, fd as u32);
    0
}

/// `inherit_step` for the reduced mode's bounded loop (`repeat`): a global
/// function (scalars only), verified once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn waggle_inherit_fd(parent: u64, child: u64, fd: u64) -> i64 {
    inherit_fd(parent as u32, child as u32, fd as u32);
    0
}

/// Copies the parent's descriptor `fd`, if tracked, to the child.
#[inline(always)]
fn inherit_fd(parent: u32, child: u32, fd: u32) {
    let Some(info) = CONNS.get_ptr(SockKey { tgid: parent, fd }) else {
        return;
    };
    // SAFETY: points at a live CONNS value, copied at once.
    let mut info = unsafe { *info };
    // The child's copy is a connection of its own to userspace: its bytes
    // must not be parsed into the parent's stream, nor end with the parent's
    // close().
    info.conn_id = mint_conn_id();
    info.req_remaining = 0;
    let key = SockKey { tgid: child, fd };
    if CONNS.insert(key, info, 0).is_err() {
        count(Counter::MapInsertFailed);
        return;
    }
    count(Counter::ConnsInherited);
    let ends = Ends { family: u16::from(info.family), ..Ends::default() };
    emit_conn(EventKind::ConnInherited, Role::from_u8(info.role), key, parent, info.conn_id, &ends);
}

/// A tracked process forked: the child gets its own copy of each tracked
/// connection before it runs, so an accept-then-fork server's child (inetd
/// style, busybox httpd, Perl/Python forking servers) is traced from its
/// first read, not from whenever userspace catches up. Runs in the parent,
/// whose descriptor table the child's is a copy of. Without the BTF walk
/// the table's size is unknown and userspace copies the table as before.
#[inline(always)]
pub(crate) fn inherit<const BPF_LOOP: bool>(parent: u32, child: u32) {
    let Some(size) = fd_table_size() else { return };
    let mut n = u64::from(size);
    if n > MAX_FD_SWEEP {
        count(Counter::FdSweepCut);
        n = MAX_FD_SWEEP;
    }
    let mut state = Inherit { parent, child };
    let bounded = |fd: u32| waggle_inherit_fd(u64::from(parent), u64::from(child), u64::from(fd));
    if !repeat::<BPF_LOOP>(n as u32, inherit_step, (&mut state as *mut Inherit).cast(), MAX_FD_SWEEP_BOUNDED, bounded) {
        count(Counter::FdSweepCut);
    }
}
