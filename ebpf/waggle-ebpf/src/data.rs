//! The data path: read/write/recvfrom/sendto/readv/writev/recvmsg/sendmsg on
//! tracked connections become DataEvents carrying a bounded payload prefix.
use core::{hint::black_box, mem::MaybeUninit};

use aya_ebpf::programs::TracePointContext;
use waggle_common::{
    conn_flags, ConnInfo, Counter, DataEvent, Direction, EventKind, Pending, Role, SockKey, SyscallId, MAX_CAPTURE,
};

use crate::{
    fastcgi,
    helpers::{arg, count, current, now_ns, stash, take_pending, wakeup_flags, zeroed_in},
    maps::{CAPTURE_BYTES, CONNS, DATA_AT, EVENTS, HEADER, PAYLOAD_AREA, PROPAGATION, SCRATCH},
    response, tls_conn, trace,
    user_copy::{copy_user, shape, Shape},
};

/// Bounds the output length for the verifier: HEADER + (x & OUT_MASK) always
/// fits the scratch buffer.
const OUT_MASK: u64 = (PAYLOAD_AREA - 1) as u64;

/// `Pending::aux` bits of a send on a client connection.
/// The enter handler left an INJECT_PENDING entry for the exit to take.
pub(crate) const AUX_INJECT: u64 = 1;
/// The send starts a request (server side: a response) whose length the
/// enter handler stored in `ConnInfo::req_remaining`.
pub(crate) const AUX_REQUEST_START: u64 = 2;

/// Peeked bytes are read again by a later recv: capturing both would show
/// parsers the same bytes twice.
const MSG_PEEK: u64 = 2;

#[inline(always)]
fn is_send(id: SyscallId) -> bool {
    matches!(id, SyscallId::Write | SyscallId::Sendto | SyscallId::Writev | SyscallId::Sendmsg | SyscallId::Sendfile)
}

/// Enter: remember the buffer only for tracked, unmuted connections. This
/// runs on every read/write on the machine, so it is one lookup and out.
/// Sends on tracked connections also take part in trace context (trace.rs):
/// a client request start gets its ids, a server response ends the
/// thread's request. `BPF_LOOP`: false in the reduced mode's programs
/// (kernels without bpf_loop), whose sends are never scanned for injection.
#[inline(always)]
pub(crate) fn enter<const BPF_LOOP: bool>(ctx: &TracePointContext, id: SyscallId) {
    let Some((pid_tgid, tgid)) = current() else {
        return;
    };
    let fd = arg(ctx, 0) as u32;
    let Some(info) = CONNS.get_ptr_mut(SockKey { tgid, fd }) else {
        return;
    };
    // Its plaintext comes from the TLS library's probes (tls.rs).
    if tls_conn::ciphertext(ctx, id, pid_tgid, tgid, fd, info) {
        count(Counter::TlsCiphertextSkipped);
        return;
    }
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
    let mut slot = MaybeUninit::uninit();
    let p: &mut Pending = zeroed_in(&mut slot);
    p.enter_ns = now_ns();
    p.ptr = arg(ctx, 1);
    p.len = arg(ctx, 2);
    p.fd = fd;
    p.syscall = id as u8;
    if !is_send(id) {
        stash(pid_tgid, p);
        return;
    }
    // SAFETY: info points at a live CONNS value; copied out.
    let conn = unsafe { *info };
    let shape = shape(id);
    let send = match Role::from_u8(conn.role) {
        Role::Client => trace::client_send_enter::<BPF_LOOP>(pid_tgid, info, shape, p.ptr, p.len),
        Role::Server => {
            // With `--trace-response-header` on for the process (and
            // bpf_loop), a response start may get the line naming the
            // request it answers, read before the send ends that request.
            let mode = if BPF_LOOP { response::mode(tgid) } else { 0 };
            let send = if mode != 0 {
                response::send_enter(pid_tgid, info, mode, shape, p.ptr, p.len)
            } else {
                trace::ClientSend::default()
            };
            trace::end_request(pid_tgid, &conn, shape, p.ptr, p.len);
            send
        }
        Role::Unknown => trace::ClientSend::default(),
    };
    if send.request_start {
        p.aux |= AUX_REQUEST_START;
    }
    if send.fastcgi {
        if let Some(request) = &send.request {
            fastcgi::leave_link(conn.link, &request.ctx);
        }
    }
    let Some(request) = send.request else {
        if !stash(pid_tgid, p) && send.request_start {
            // No exit will account for this send: the boundary is lost.
            // SAFETY: as above.
            unsafe { (*info).flags |= conn_flags::BOUNDARY_LOST };
        }
        return;
    };
    // Only the exit, through PENDING, takes INJECT_PENDING back: without
    // the stash no request state may be left behind.
    p.aux |= AUX_INJECT;
    if stash(pid_tgid, p) {
        trace::client_send_arm(pid_tgid, &request);
    } else if send.request_start {
        // SAFETY: as above.
        unsafe { (*info).flags |= conn_flags::BOUNDARY_LOST };
    }
}

/// Keeps `req_remaining` equal to what the application has yet to send of
/// its current request (client side) or response (server side, with
/// `--trace-response-header`), from what each send returned.
#[inline(always)]
fn account_send(info: *mut ConnInfo, aux: u64, ret: i64) {
    // SAFETY: info points at a live CONNS value; only threads of its process
    // send on it.
    unsafe {
        if (*info).flags & (conn_flags::NOT_HTTP1 | conn_flags::BOUNDARY_LOST) != 0 {
            return;
        }
        if ret <= 0 {
            if aux & AUX_REQUEST_START != 0 {
                // Nothing went out (EAGAIN, EINTR...): the retry starts the
                // request again.
                (*info).req_remaining = 0;
            }
            return;
        }
        let sent = ret as u64;
        let remaining = (*info).req_remaining;
        if sent > remaining {
            // The send carried bytes past the request's end (the next
            // request, pipelined into the same write): that request's own
            // end is unknown.
            if remaining != 0 || aux & AUX_REQUEST_START != 0 {
                (*info).flags |= conn_flags::BOUNDARY_LOST;
            }
            (*info).req_remaining = 0;
        } else {
            (*info).req_remaining = remaining - sent;
        }
    }
}

/// Exit: copy min(ret, CAPTURE_BYTES) payload bytes after a DataEvent header
/// in the per-CPU scratch buffer and output exactly header + captured bytes.
/// `BPF_LOOP`: as for `enter`; the reduced mode scans a server request's
/// header block in a bounded loop.
#[inline(always)]
pub(crate) fn exit<const BPF_LOOP: bool>(ctx: &TracePointContext, id: SyscallId, direction: Direction) {
    let Some((pid_tgid, tgid)) = current() else {
        return;
    };
    let Some(p) = take_pending(pid_tgid, id) else {
        return;
    };
    let ret = arg(ctx, 0) as i64;
    // EAGAIN reads of event loops end here, as before.
    if ret <= 0 && p.aux == 0 {
        return;
    }
    // Looked up again: another thread may have closed or muted the
    // connection while this syscall ran.
    let Some(info_ptr) = CONNS.get_ptr_mut(SockKey { tgid, fd: p.fd }) else {
        if p.aux & AUX_INJECT != 0 {
            // Taken whatever happens next: a request left for this send
            // must not outlive it.
            trace::finish_inject(pid_tgid, None, &p, ret > 0, PROPAGATION.load() != 0, false);
        }
        // The enter found the connection tracked (it left PENDING); gone
        // now: evicted from CONNS, or closed by another thread meanwhile.
        count(Counter::ConnLost);
        return;
    };
    // SAFETY: info_ptr points at a live CONNS value; copied before any other
    // map operation can delete it.
    let info = unsafe { *info_ptr };
    let data_follows = ret > 0 && info.flags & conn_flags::MUTED == 0;
    // As above; its ids go out with this send's Data record when one follows.
    let staged = p.aux & AUX_INJECT != 0
        && trace::finish_inject(pid_tgid, Some(info_ptr), &p, ret > 0, PROPAGATION.load() != 0, data_follows);
    if direction == Direction::Egress
        && (Role::from_u8(info.role) == Role::Client || p.aux & AUX_REQUEST_START != 0 || info.req_remaining != 0)
    {
        account_send(info_ptr, p.aux, ret);
    }
    if ret <= 0 {
        return;
    }
    let total = ret as u64;
    if info.flags & conn_flags::MUTED != 0 {
        count(Counter::MutedEvents);
        return;
    }
    emit_with::<BPF_LOOP>(
        pid_tgid,
        &info,
        &Capture {
            fd: p.fd,
            syscall: id,
            direction,
            shape: shape(id),
            ptr: p.ptr,
            len: p.len,
            total,
            enter_ns: p.enter_ns,
            flags: 0,
        },
        staged,
    );
}

/// One capture for [`emit`]: where the bytes are and what moved them.
pub(crate) struct Capture {
    pub fd: u32,
    pub syscall: SyscallId,
    pub direction: Direction,
    pub shape: Shape,
    /// The buffer argument and its length (or iovec count), as the call got them.
    pub ptr: u64,
    pub len: u64,
    /// Bytes the call moved (> 0).
    pub total: u64,
    pub enter_ns: u64,
    /// `DataEvent::flags`.
    pub flags: u32,
}

/// Copies min(total, CAPTURE_BYTES) payload bytes after a DataEvent header
/// in the per-CPU scratch buffer and outputs exactly header + captured
/// bytes; a server's request start also starts its trace context. Shared
/// by the syscall exits and the TLS library's return probe (tls.rs).
#[inline(always)]
pub(crate) fn emit(pid_tgid: u64, info: &ConnInfo, c: &Capture) {
    emit_with::<true>(pid_tgid, info, c, false);
}

/// [`emit`], its server header scan with bpf_loop or (reduced mode) without;
/// `staged`: a client request's ids wait in the scratch's DataCtx prefix.
#[inline(always)]
fn emit_with<const BPF_LOOP: bool>(pid_tgid: u64, info: &ConnInfo, c: &Capture, staged: bool) {
    let tgid = (pid_tgid >> 32) as u32;
    let total = c.total;
    let direction = c.direction;
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
    let captured = copy_user(payload, c.shape, c.ptr, c.len, budget);

    // One timestamp for the DataEvent and the context that matches it.
    let exit_ns = now_ns();
    let mut with_ctx = staged;
    if direction == Direction::Ingress && captured > 0 && Role::from_u8(info.role) == Role::Server {
        with_ctx |= trace::server_recv_exit::<BPF_LOOP>(pid_tgid, info, payload, captured).is_some();
        // No HTTP request start is a FastCGI one (its own subprogram).
        fastcgi::server_recv(c.fd, info, payload, captured, exit_ns);
    }

    let header = DataEvent {
        kind: EventKind::Data as u8,
        direction: direction as u8,
        syscall: c.syscall as u8,
        role: info.role,
        captured_len: captured as u32,
        tgid,
        tid: pid_tgid as u32,
        fd: c.fd,
        flags: c.flags,
        conn_id: info.conn_id,
        total_len: total,
        enter_ns: c.enter_ns,
        exit_ns,
    };
    // SAFETY: DATA_AT + a DataEvent lies inside the scratch buffer;
    // write_unaligned needs no alignment.
    unsafe { core::ptr::write_unaligned(base.add(DATA_AT).cast::<DataEvent>(), header) };

    // Variable-size output straight from the scratch buffer: a 4 KiB ring
    // reservation per event would waste most of the ring on small payloads.
    // The staged context prefix goes with it, or the record starts at the
    // DataEvent.
    let skip = if with_ctx { 0 } else { DATA_AT };
    let len = HEADER - skip + (black_box(captured) & OUT_MASK) as usize;
    // SAFETY: base+skip..base+skip+len lies inside this CPU's Scratch value
    // (skip + len <= HEADER + PAYLOAD_AREA - 1), which stays valid for the
    // whole program.
    let record = unsafe { core::slice::from_raw_parts(base.add(skip).cast_const(), len) };
    if EVENTS.output::<[u8]>(record, wakeup_flags()).is_err() {
        count(Counter::EventsLost);
        return;
    }
    count(Counter::DataEvents);
    if total > captured {
        count(Counter::DataTruncated);
    }
}
