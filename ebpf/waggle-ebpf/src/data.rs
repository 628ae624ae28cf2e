//! The data path: read/write/recvfrom/sendto/readv/writev/recvmsg/sendmsg on
//! tracked connections become DataEvents carrying a bounded payload prefix.
use core::{ffi::c_void, hint::black_box, mem::size_of};

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_probe_read_user as bpf_probe_read_user_raw},
    programs::TracePointContext,
};
use waggle_common::{
    conn_flags, Counter, DataEvent, Direction, EventKind, Role, SockKey, SyscallId, CAPTURE_MASK,
    MAX_CAPTURE, MAX_IOVECS,
};

use crate::{
    arg, count, current, now_ns, stash, take_pending, trace, wakeup_flags, Pending, CAPTURE_BYTES, CONNS,
    EVENTS,
    PROPAGATION, SCRATCH,
};

pub(crate) const HEADER: usize = size_of::<DataEvent>();
pub(crate) const PAYLOAD_AREA: usize = 2 * MAX_CAPTURE;
/// Bounds the output length for the verifier: HEADER + (x & OUT_MASK) always
/// fits the scratch buffer.
const OUT_MASK: u64 = (PAYLOAD_AREA - 1) as u64;
const MASK: u64 = CAPTURE_MASK as u64;

/// Layout of the user buffer argument.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// (fd, buf, len)
    Flat,
    /// (fd, const struct iovec *, iovcnt)
    Iovec,
    /// (fd, struct user_msghdr *, flags)
    Msghdr,
    /// sendfile(out_fd, in_fd, offset, count): nothing to copy.
    NoBuffer,
}

/// Peeked bytes are read again by a later recv: capturing both would show
/// parsers the same bytes twice.
const MSG_PEEK: u64 = 2;

#[inline(always)]
pub(crate) fn shape(id: SyscallId) -> Shape {
    match id {
        SyscallId::Readv | SyscallId::Writev => Shape::Iovec,
        SyscallId::Recvmsg | SyscallId::Sendmsg => Shape::Msghdr,
        SyscallId::Sendfile => Shape::NoBuffer,
        _ => Shape::Flat,
    }
}

#[inline(always)]
fn is_send(id: SyscallId) -> bool {
    matches!(
        id,
        SyscallId::Write
            | SyscallId::Sendto
            | SyscallId::Writev
            | SyscallId::Sendmsg
            | SyscallId::Sendfile
    )
}

/// Enter: remember the buffer only for tracked, unmuted connections. This
/// runs on every read/write on the machine, so it is one lookup and out.
/// Sends on tracked connections also take part in trace context (trace.rs):
/// a client request start gets its ids, a server response ends the
/// thread's request.
#[inline(always)]
pub(crate) fn enter(ctx: &TracePointContext, id: SyscallId) {
    let Some((pid_tgid, tgid)) = current() else {
        return;
    };
    let fd = arg(ctx, 0) as u32;
    let Some(info) = CONNS.get_ptr_mut(SockKey { tgid, fd }) else {
        return;
    };
    // Muted connections are counted here rather than at exit so the bulk of
    // their traffic (TLS, unknown protocols) costs no PENDING round trip.
    // SAFETY: info points at a live CONNS value.
    if unsafe { (*info).flags } & conn_flags::MUTED != 0 {
        count(Counter::MutedEvents);
        return;
    }
    let peek = match id {
        // recvfrom(fd, buf, len, flags, ...), recvmsg(fd, msg, flags)
        SyscallId::Recvfrom => arg(ctx, 3) & MSG_PEEK != 0,
        SyscallId::Recvmsg => arg(ctx, 2) & MSG_PEEK != 0,
        _ => false,
    };
    if peek {
        return;
    }
    let mut p = Pending {
        enter_ns: now_ns(),
        ptr: arg(ctx, 1),
        len: arg(ctx, 2),
        fd,
        syscall: id as u8,
        ..Pending::default()
    };
    if !is_send(id) {
        stash(pid_tgid, &p);
        return;
    }
    // SAFETY: info points at a live CONNS value; copied out.
    let conn = unsafe { *info };
    let shape = shape(id);
    let request = match Role::from_u8(conn.role) {
        Role::Client => trace::client_send_enter(pid_tgid, info, shape, p.ptr, p.len),
        Role::Server => {
            trace::server_send_enter(pid_tgid, &conn, shape, p.ptr, p.len);
            None
        }
        Role::Unknown => None,
    };
    let Some(request) = request else {
        stash(pid_tgid, &p);
        return;
    };
    // Only the exit, through PENDING, takes INJECT_PENDING back: without
    // the stash no request state may be left behind.
    p.aux = 1;
    if stash(pid_tgid, &p) {
        trace::client_send_arm(pid_tgid, info, &request);
    }
}

/// Exit: copy min(ret, CAPTURE_BYTES) payload bytes after a DataEvent header
/// in the per-CPU scratch buffer and output exactly header + captured bytes.
#[inline(always)]
pub(crate) fn exit(ctx: &TracePointContext, id: SyscallId, direction: Direction) {
    let Some((pid_tgid, tgid)) = current() else {
        return;
    };
    let Some(p) = take_pending(pid_tgid, id) else {
        return;
    };
    // Before any early return: a request left for this send must not
    // outlive it.
    let request = if p.aux != 0 {
        trace::take_inject(pid_tgid)
    } else {
        None
    };
    let ret = arg(ctx, 0) as i64;
    // EAGAIN reads of event loops end here, as before.
    if ret <= 0 && request.is_none() {
        return;
    }
    // Looked up again: another thread may have closed or muted the
    // connection while this syscall ran.
    let Some(info_ptr) = CONNS.get_ptr_mut(SockKey { tgid, fd: p.fd }) else {
        return;
    };
    if let Some(request) = request {
        let propagation = PROPAGATION.load() != 0;
        trace::client_send_exit(pid_tgid, &request, info_ptr, &p, ret > 0, propagation);
    }
    if ret <= 0 {
        return;
    }
    let total = ret as u64;
    // SAFETY: info_ptr points at a live CONNS value; copied before any other
    // map operation can delete it.
    let info = unsafe { *info_ptr };
    if info.flags & conn_flags::MUTED != 0 {
        count(Counter::MutedEvents);
        return;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let base = scratch.cast::<u8>();
    // SAFETY: HEADER < size of Scratch.
    let payload = unsafe { base.add(HEADER) };

    let mut budget = u64::from(CAPTURE_BYTES.load());
    if budget == 0 || budget > MAX_CAPTURE as u64 {
        budget = MAX_CAPTURE as u64;
    }
    if total < budget {
        budget = total;
    }
    let captured = match shape(id) {
        Shape::Flat => copy_flat(payload, p.ptr, budget),
        Shape::Iovec => copy_iovecs(payload, p.ptr, p.len, budget),
        Shape::NoBuffer => 0,
        Shape::Msghdr => {
            // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
            // SAFETY: reads user memory through the fault-tolerant helper.
            match unsafe { bpf_probe_read_user((p.ptr + 16) as *const [u64; 2]) } {
                Ok([iov, iovlen]) => copy_iovecs(payload, iov, iovlen, budget),
                Err(_) => {
                    count(Counter::ReadFailed);
                    0
                }
            }
        }
    };

    // One timestamp for the DataEvent and the ServerCtx that matches it.
    let exit_ns = now_ns();
    if direction == Direction::Ingress && captured > 0 {
        match Role::from_u8(info.role) {
            Role::Server => {
                let _ = trace::server_recv_exit(pid_tgid, p.fd, &info, payload, captured, exit_ns);
            }
            Role::Client if info.flags & conn_flags::AWAITING_RESPONSE != 0 => {
                trace::client_recv_exit(info_ptr, payload, captured);
            }
            _ => {}
        }
    }

    let header = DataEvent {
        kind: EventKind::Data as u8,
        direction: direction as u8,
        syscall: id as u8,
        role: info.role,
        captured_len: captured as u32,
        tgid,
        tid: pid_tgid as u32,
        fd: p.fd,
        _pad: 0,
        conn_id: info.conn_id,
        total_len: total,
        enter_ns: p.enter_ns,
        exit_ns,
    };
    // SAFETY: the scratch buffer is larger than a DataEvent; write_unaligned
    // needs no alignment.
    unsafe { core::ptr::write_unaligned(base.cast::<DataEvent>(), header) };

    // Variable-size output straight from the scratch buffer: a 4 KiB ring
    // reservation per event would waste most of the ring on small payloads.
    let len = HEADER + (black_box(captured) & OUT_MASK) as usize;
    // SAFETY: base..base+len lies inside this CPU's Scratch value (len <=
    // HEADER + PAYLOAD_AREA - 1), which stays valid for the whole program.
    let record = unsafe { core::slice::from_raw_parts(base.cast_const(), len) };
    if EVENTS.output::<[u8]>(record, wakeup_flags()).is_err() {
        count(Counter::EventsLost);
        return;
    }
    count(Counter::DataEvents);
    if total > captured {
        count(Counter::DataTruncated);
    }
}

/// Copies `len` (1..=MAX_CAPTURE) user bytes from `src` to `dst + off`
/// (off < MAX_CAPTURE). The masks are semantically no-ops; black_box keeps
/// LLVM from dropping them after proving the ranges itself, so the verifier
/// sees the bounds on the registers it checks.
#[inline(always)]
fn read_into(dst: *mut u8, off: u64, len: u64, src: u64) -> bool {
    let off = black_box(off) & MASK;
    let len = ((black_box(len) - 1) & MASK) + 1;
    // SAFETY: dst + off + len <= dst + 2 * MAX_CAPTURE - 1, inside the
    // payload area; the helper tolerates bad user pointers and returns < 0.
    let rc = unsafe {
        bpf_probe_read_user_raw(
            dst.add(off as usize).cast::<c_void>(),
            len as u32,
            src as *const c_void,
        )
    };
    if rc < 0 {
        count(Counter::ReadFailed);
        return false;
    }
    true
}

/// budget is in 1..=MAX_CAPTURE.
#[inline(always)]
fn copy_flat(dst: *mut u8, src: u64, budget: u64) -> u64 {
    if read_into(dst, 0, budget, src) {
        budget
    } else {
        0
    }
}

/// Copies sequentially from up to MAX_IOVECS iovecs until `budget` (1..=
/// MAX_CAPTURE) bytes are in; returns the bytes copied.
#[inline(always)]
fn copy_iovecs(dst: *mut u8, iov: u64, iovcnt: u64, budget: u64) -> u64 {
    let mut off: u64 = 0;
    for i in 0..MAX_IOVECS as u64 {
        if i >= iovcnt || off >= budget {
            break;
        }
        // struct iovec { void *iov_base; size_t iov_len; }
        // SAFETY: reads user memory through the fault-tolerant helper.
        let Ok([base, len]) = (unsafe { bpf_probe_read_user((iov + i * 16) as *const [u64; 2]) })
        else {
            count(Counter::ReadFailed);
            break;
        };
        let want = budget - off;
        let n = if len < want { len } else { want };
        if n == 0 {
            continue;
        }
        if !read_into(dst, off, n, base) {
            break;
        }
        off += n;
    }
    off
}
