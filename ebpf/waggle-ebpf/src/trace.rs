//! Trace context on the syscall path.
//!
//! - A read that brings the start of an HTTP/1.x request into a server
//!   connection starts a server context: the incoming traceparent's trace
//!   (or a new one) and a new span id. The thread keeps it in THREAD_CTX
//!   until it writes the final response; threads it spawns inherit it.
//! - A send that starts an HTTP/1.x request on a client connection gets a
//!   new span id, and the thread's server context (if any) as parent. The
//!   ids wait in INJECT_PENDING for the sk_msg program to insert, and are
//!   reported at the send's exit either way.
//! - AWAITING_RESPONSE on a client connection, from such a send until the
//!   final response is read, marks every other send on it as not a request
//!   start (bodies, header continuations, pipelining).
//!
//! Every ctx record is emitted before the DataEvent of the same syscall and
//! carries that event's timestamp (server: exit_ns, client: enter_ns).
use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_probe_read_user, generated::bpf_loop};
use waggle_common::{
    conn_flags, ctx_flags, ConnInfo, Counter, EventKind, InjectRequest, TraceCtx, TraceCtxEvent,
    CAPTURE_MASK, MAX_CAPTURE,
};

use crate::{
    count,
    data::{Shape, HEADER},
    http::{self, HeaderScan},
    wakeup_flags, Pending, EVENTS, INJECT_PENDING, MSG_SCRATCH, SCRATCH, THREAD_CTX,
};

const MASK: usize = CAPTURE_MASK;

/// Which per-CPU buffer `scan_step` reads.
pub(crate) const SOURCE_SCRATCH: u32 = 0;
pub(crate) const SOURCE_MSG: u32 = 1;

/// bpf_loop state: the scan plus what the callback needs to find its bytes.
#[repr(C)]
pub(crate) struct ScanState {
    pub scan: HeaderScan,
    pub len: u32,
    pub source: u32,
}

/// One byte of the header scan. The buffer is looked up on every call
/// rather than passed in: a per-CPU array lookup is inlined by the verifier,
/// and it keeps map pointers out of the callback's context.
extern "C" fn scan_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `scan` gave it: a live
    // ScanState on the caller's stack, not aliased while the loop runs.
    let st = unsafe { &mut *ctx.cast::<ScanState>() };
    let i = index as u32;
    if i >= st.len {
        return 1;
    }
    let off = (i as usize) & MASK;
    let byte = if st.source == SOURCE_MSG {
        match MSG_SCRATCH.get_ptr(0) {
            // SAFETY: off < MAX_CAPTURE < MSG_SCRATCH_BYTES.
            Some(buf) => unsafe { *buf.cast::<u8>().add(off) },
            None => return 1,
        }
    } else {
        match SCRATCH.get_ptr(0) {
            // SAFETY: HEADER + off lies inside the Scratch value.
            Some(buf) => unsafe { *buf.cast::<u8>().add(HEADER + off) },
            None => return 1,
        }
    };
    if st.scan.step(i, byte) {
        1
    } else {
        0
    }
}

/// Scans the first `len` (<= MAX_CAPTURE) bytes of `source`.
#[inline(always)]
pub(crate) fn scan(source: u32, len: u32) -> HeaderScan {
    let mut st = ScanState {
        scan: HeaderScan::default(),
        len,
        source,
    };
    let n = if len > MAX_CAPTURE as u32 {
        MAX_CAPTURE as u32
    } else {
        len
    };
    // SAFETY: the callback is a static function of the right signature;
    // the context pointer outlives the call.
    unsafe {
        bpf_loop(
            n,
            scan_step as *const () as *mut c_void,
            (&mut st as *mut ScanState).cast(),
            0,
        );
    }
    st.scan
}

#[inline(always)]
fn rand_u64() -> u64 {
    // SAFETY: plain helper calls without arguments.
    let (hi, lo) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// A random, never all-zero span id.
#[inline(always)]
pub(crate) fn new_span_id() -> [u8; 8] {
    let v = rand_u64();
    (if v == 0 { 1 } else { v }).to_be_bytes()
}

/// A random, never all-zero trace id.
#[inline(always)]
fn new_trace_id() -> [u8; 16] {
    let hi = rand_u64();
    let mut lo = rand_u64();
    if hi == 0 && lo == 0 {
        lo = 1;
    }
    let (a, b) = (hi.to_be_bytes(), lo.to_be_bytes());
    [
        a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6],
        b[7],
    ]
}

#[inline(always)]
fn emit(
    kind: EventKind,
    ctx: &TraceCtx,
    flags: u8,
    pid_tgid: u64,
    fd: u32,
    conn_id: u64,
    ts_ns: u64,
) {
    let ev = TraceCtxEvent {
        kind: kind as u8,
        flags,
        _pad0: [0; 2],
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        fd,
        conn_id,
        ts_ns,
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent_span_id,
    };
    if EVENTS.output::<TraceCtxEvent>(&ev, wakeup_flags()).is_err() {
        count(Counter::EventsLost);
    }
}

/// First bytes of the buffer a send/recv syscall was given (the first iovec
/// for the vector forms) and how many of them are real: 16, 8 or None when
/// the first segment is shorter than a method or unreadable.
#[inline(always)]
fn peek_user(shape: Shape, ptr: u64, len: u64) -> Option<([u8; 16], u64)> {
    let (base, seg) = match shape {
        Shape::Flat => (ptr, len),
        Shape::NoBuffer => return None,
        Shape::Iovec | Shape::Msghdr => {
            let (iov, cnt) = if shape == Shape::Msghdr {
                // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
                // SAFETY: fault-tolerant read of user memory.
                let [iov, cnt] =
                    unsafe { bpf_probe_read_user((ptr + 16) as *const [u64; 2]) }.ok()?;
                (iov, cnt)
            } else {
                (ptr, len)
            };
            if cnt == 0 {
                return None;
            }
            // SAFETY: as above; struct iovec { void *base; size_t len; }.
            let [base, seg] = unsafe { bpf_probe_read_user(iov as *const [u64; 2]) }.ok()?;
            (base, seg)
        }
    };
    let mut out = [0u8; 16];
    if seg >= 16 {
        // SAFETY: as above.
        out = unsafe { bpf_probe_read_user(base as *const [u8; 16]) }.ok()?;
        Some((out, 16))
    } else if seg >= http::PEEK as u64 {
        // Never read past a short buffer: the next page may be unmapped.
        // SAFETY: as above.
        let h = unsafe { bpf_probe_read_user(base as *const [u8; 8]) }.ok()?;
        out[..8].copy_from_slice(&h);
        Some((out, seg))
    } else {
        None
    }
}

#[inline(always)]
fn head_word(b: &[u8; 16]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Write-family syscall entry on a server connection: the thread's request
/// on this connection is being answered (unless this is a 1xx interim
/// response), so later client calls of the thread are not part of it.
#[inline(always)]
pub(crate) fn server_send_enter(pid_tgid: u64, info: &ConnInfo, shape: Shape, ptr: u64, len: u64) {
    let Some(tc) = THREAD_CTX.get_ptr(pid_tgid) else {
        return;
    };
    // SAFETY: tc points at a live THREAD_CTX value.
    if unsafe { (*tc).conn_id } != info.conn_id {
        return;
    }
    if let Some((head, n)) = peek_user(shape, ptr, len) {
        if http::is_interim_response(&head, n) {
            return;
        }
    }
    let _ = THREAD_CTX.remove(pid_tgid);
}

/// Write-family syscall entry on a client connection: if the send starts an
/// HTTP/1.x request, decide its ids. Returns the request to leave in
/// INJECT_PENDING (once the PENDING stash succeeded, see `client_send_arm`).
///
/// The first send seen on a connection classifies it: HTTP/1.x connections
/// begin with a request, so one that begins otherwise (TLS, SSH, ...) never
/// gets anything injected, whatever its later bytes look like.
#[inline(always)]
pub(crate) fn client_send_enter(
    pid_tgid: u64,
    info: *mut ConnInfo,
    shape: Shape,
    ptr: u64,
    len: u64,
) -> Option<InjectRequest> {
    // SAFETY: info points at a live CONNS value; copied out.
    let conn = unsafe { *info };
    // Not even a peek at user memory for TLS and the like.
    if conn.flags & conn_flags::NOT_HTTP1 != 0 {
        return None;
    }
    let start = match peek_user(shape, ptr, len) {
        Some((head, n)) => http::is_request_start(head_word(&head), n),
        None => false,
    };
    if conn.flags & conn_flags::SENT == 0 {
        let mark = if start {
            conn_flags::SENT
        } else {
            conn_flags::SENT | conn_flags::NOT_HTTP1
        };
        // SAFETY: as above; see client_send_arm on races.
        unsafe { (*info).flags |= mark };
    }
    if !start {
        return None;
    }
    if conn.flags & conn_flags::AWAITING_RESPONSE != 0 {
        count(Counter::SkipAwaitingResponse);
        return None;
    }
    let info = &conn;
    let mut ctx = TraceCtx {
        span_id: new_span_id(),
        conn_id: info.conn_id,
        ..TraceCtx::default()
    };
    match THREAD_CTX.get_ptr(pid_tgid) {
        Some(parent) => {
            // SAFETY: parent points at a live THREAD_CTX value; copied out.
            let parent = unsafe { *parent };
            ctx.trace_id = parent.trace_id;
            ctx.parent_span_id = parent.span_id;
            ctx.flags = (parent.flags & ctx_flags::SAMPLED) | ctx_flags::HAS_PARENT;
        }
        None => {
            ctx.trace_id = new_trace_id();
            ctx.flags = ctx_flags::SAMPLED;
        }
    }
    Some(InjectRequest {
        ctx,
        injected: 0,
        skipped: 0,
        _pad: [0; 6],
    })
}

/// After the PENDING stash: mark the connection as awaiting its response
/// and leave the request for sk_msg and the exit handler.
#[inline(always)]
pub(crate) fn client_send_arm(pid_tgid: u64, info: *mut ConnInfo, req: &InjectRequest) {
    if INJECT_PENDING.insert(pid_tgid, req, 0).is_err() {
        count(Counter::MapInsertFailed);
        return;
    }
    // SAFETY: info points at a live CONNS value; only threads of its
    // process send on it, and a lost race with userspace muting only costs
    // a skipped injection.
    unsafe { (*info).flags |= conn_flags::AWAITING_RESPONSE };
}

/// Takes this thread's INJECT_PENDING entry (the exit of the send that left
/// it). Called before anything that could return early, so a stale entry
/// never meets a later send.
#[inline(always)]
pub(crate) fn take_inject(pid_tgid: u64) -> Option<InjectRequest> {
    let r = INJECT_PENDING.get_ptr(pid_tgid)?;
    // SAFETY: r points at a live map value; copied before the delete.
    let r = unsafe { *r };
    let _ = INJECT_PENDING.remove(pid_tgid);
    Some(r)
}

/// Exit of a send that started a request: report its ids (or undo the
/// request state when nothing was sent).
#[inline(always)]
pub(crate) fn client_send_exit(
    pid_tgid: u64,
    req: &InjectRequest,
    info: *mut ConnInfo,
    p: &Pending,
    sent: bool,
    propagation: bool,
) {
    if !sent {
        // Nothing went out (EAGAIN, EINTR...): the retry is the request start.
        // SAFETY: info points at a live CONNS value.
        unsafe { (*info).flags &= !conn_flags::AWAITING_RESPONSE };
        return;
    }
    let mut flags = req.ctx.flags;
    if req.injected != 0 {
        flags |= ctx_flags::INJECTED;
    } else if propagation && req.skipped == 0 {
        // sk_msg never saw the send: the socket is not in CLIENT_SOCKS
        // (connected before the agent started, or the map was full).
        count(Counter::SkipNotInSockhash);
    }
    // SAFETY: as above.
    let conn_id = unsafe { (*info).conn_id };
    emit(
        EventKind::ClientCtx,
        &req.ctx,
        flags,
        pid_tgid,
        p.fd,
        conn_id,
        p.enter_ns,
    );
}

/// Read-family exit on a client connection awaiting its response: the first
/// read of a final (non-1xx) response ends the exchange.
#[inline(always)]
pub(crate) fn client_recv_exit(info: *mut ConnInfo, payload: *const u8, captured: u64) {
    // SAFETY: payload is the scratch payload area, >= 16 bytes long; bytes
    // past `captured` are stale and is_interim_response only trusts
    // `captured` of them.
    let head = unsafe { core::ptr::read_unaligned(payload.cast::<[u8; 16]>()) };
    if http::is_interim_response(&head, captured) {
        return;
    }
    // SAFETY: info points at a live CONNS value.
    unsafe { (*info).flags &= !conn_flags::AWAITING_RESPONSE };
}

/// Read-family exit on a server connection, payload already in SCRATCH: if
/// it starts an HTTP/1.x request, start the thread's server context.
#[inline(always)]
pub(crate) fn server_recv_exit(
    pid_tgid: u64,
    fd: u32,
    info: &ConnInfo,
    payload: *const u8,
    captured: u64,
    exit_ns: u64,
) -> Option<()> {
    // SAFETY: payload is the scratch payload area (>= 16 bytes).
    let head = unsafe { core::ptr::read_unaligned(payload.cast::<[u8; 16]>()) };
    if !http::is_request_start(head_word(&head), captured) {
        return None;
    }
    // The thread is still handling a request on this connection (no final
    // response written yet): these bytes are its body, even if they look
    // like a request.
    if let Some(tc) = THREAD_CTX.get_ptr(pid_tgid) {
        // SAFETY: tc points at a live THREAD_CTX value.
        if unsafe { (*tc).conn_id } == info.conn_id {
            return None;
        }
    }
    let len = captured as u32;
    let sc = scan(SOURCE_SCRATCH, len);
    let rle = sc.request_line_end as usize;
    if rle < 12 {
        return None;
    }
    // SAFETY: (rle - 11) & MASK + 10 stays inside the payload area.
    let tail =
        unsafe { core::ptr::read_unaligned(payload.add((rle - 11) & MASK).cast::<[u8; 10]>()) };
    if !http::request_line_is_http1(&tail) {
        return None;
    }

    let mut ctx = TraceCtx {
        span_id: new_span_id(),
        conn_id: info.conn_id,
        ..TraceCtx::default()
    };
    match incoming(&sc, payload, len) {
        Some(inc) => {
            ctx.trace_id = inc.trace_id;
            ctx.parent_span_id = inc.span_id;
            ctx.flags = (inc.flags & ctx_flags::SAMPLED) | ctx_flags::HAS_PARENT;
            count(Counter::IncomingTraceparent);
        }
        None => {
            ctx.trace_id = new_trace_id();
            ctx.flags = ctx_flags::SAMPLED;
        }
    }
    if THREAD_CTX.insert(pid_tgid, &ctx, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
    count(Counter::ServerCtxStarted);
    emit(
        EventKind::ServerCtx,
        &ctx,
        ctx.flags,
        pid_tgid,
        fd,
        info.conn_id,
        exit_ns,
    );
    Some(())
}

/// The request's traceparent, if it has exactly one header of that name
/// and its value is valid in full.
#[inline(always)]
fn incoming(sc: &HeaderScan, payload: *const u8, len: u32) -> Option<http::Incoming> {
    if sc.traceparent_lines != 1 || sc.traceparent_value == 0 {
        return None;
    }
    let at = sc.traceparent_value;
    // SAFETY: (at & MASK) + 8 stays inside the payload area.
    let ows = unsafe {
        core::ptr::read_unaligned(
            payload
                .add(at as usize & MASK)
                .cast::<[u8; http::MAX_OWS]>(),
        )
    };
    let start = at + http::ows_len(&ows);
    if start >= len {
        return None;
    }
    // SAFETY: (start & MASK) + VALUE_WINDOW stays inside the payload area.
    let v = unsafe {
        core::ptr::read_unaligned(
            payload
                .add(start as usize & MASK)
                .cast::<[u8; http::VALUE_WINDOW]>(),
        )
    };
    http::parse_traceparent(&v, len - start)
}

/// task_newtask for a new thread: it inherits the request its creator is
/// handling (work handed to a thread spawned for it).
#[inline(always)]
pub(crate) fn inherit(parent_pid_tgid: u64, child_pid_tgid: u64) {
    if let Some(tc) = THREAD_CTX.get_ptr(parent_pid_tgid) {
        // SAFETY: tc points at a live THREAD_CTX value; copied out.
        let tc = unsafe { *tc };
        if THREAD_CTX.insert(child_pid_tgid, &tc, 0).is_err() {
            count(Counter::MapInsertFailed);
        }
    }
}

/// A thread exits: its context and any pending injection go with it.
#[inline(always)]
pub(crate) fn thread_exit(pid_tgid: u64) {
    let _ = THREAD_CTX.remove(pid_tgid);
    let _ = INJECT_PENDING.remove(pid_tgid);
}
