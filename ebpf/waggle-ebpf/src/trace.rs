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
//! - `ConnInfo::req_remaining` counts what the application has yet to send
//!   of its current request (header block + Content-Length, from what each
//!   send returned): only a send at zero can start a request, so bodies,
//!   header continuations and early-answered uploads are never touched.
//!
//! A context usually travels with the DataEvent of the same syscall, as the
//! prefix of one DataCtx record (`stage`); sent alone (a FastCGI begin, a
//! muted connection's request) it goes out before that event. Either way it
//! carries that event's timestamp (server: exit_ns, client: enter_ns).
use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_probe_read_user};
use waggle_common::{
    conn_flags, ctx_flags, fastcgi,
    http::{self, HeaderScan},
    runtime, sampled_by_threshold, skip_reason, sockmap_mode, ConnInfo, Counter, DataCtxPrefix, EventKind,
    InjectRequest, Pending, TraceCtx, TraceCtxEvent, CAPTURE_MASK, HEARTBEAT_STALE_NS, INJECT_TAKEN,
    INJECT_TRACEPARENT, MAX_CAPTURE,
};

use crate::{
    helpers::{count, count_index, now_ns, wakeup_flags},
    maps::{EVENTS, HEADER, INJECT_PENDING, PARENT_BASED, PROPAGATION, RUNTIME, SAMPLE_THRESHOLD, SCRATCH, THREAD_CTX},
    scan::scan,
    user_copy::{copy_user, Shape},
};

const MASK: usize = CAPTURE_MASK;
/// "HEAD " as the first five bytes of a little-endian head word.
const HEAD_METHOD: u64 = u64::from_le_bytes(*b"HEAD \0\0\0");
const HEAD_MASK: u64 = 0xff_ffff_ffff;

/// W3C flags of a trace the kernel starts (or, without parentbased_*
/// samplers, joins): the one sampling decision, shared with the agent.
#[inline(always)]
pub(crate) fn root_flags(trace_id: &[u8; 16]) -> u8 {
    if sampled_by_threshold(trace_id, SAMPLE_THRESHOLD.load()) {
        ctx_flags::SAMPLED
    } else {
        0
    }
}

/// W3C flags of a server context that joins an incoming traceparent of
/// W3C flags `flags`: the sampled decision follows it (parentbased_*
/// samplers) or is taken again.
#[inline(always)]
pub(crate) fn joined_flags(flags: u8, trace_id: &[u8; 16]) -> u8 {
    let sampled = if PARENT_BASED.load() != 0 { flags & ctx_flags::SAMPLED } else { root_flags(trace_id) };
    sampled | ctx_flags::HAS_PARENT
}

/// The agent drained the ring buffer recently: ids the kernel sends
/// downstream now will have spans.
#[inline(always)]
pub(crate) fn agent_alive() -> bool {
    match RUNTIME.get(runtime::HEARTBEAT) {
        Some(beat) => now_ns().saturating_sub(*beat) <= HEARTBEAT_STALE_NS,
        None => false,
    }
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
pub(crate) fn new_trace_id() -> [u8; 16] {
    let hi = rand_u64();
    let mut lo = rand_u64();
    if hi == 0 && lo == 0 {
        lo = 1;
    }
    let (a, b) = (hi.to_be_bytes(), lo.to_be_bytes());
    [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

#[inline(always)]
pub(crate) fn emit(kind: EventKind, ctx: &TraceCtx, flags: u8, pid_tgid: u64, fd: u32, conn_id: u64, ts_ns: u64) {
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

/// Writes the ids of `ctx` as the DataCtx prefix of this CPU's scratch
/// record, for the Data record this same program sends next (data.rs):
/// one ring record where a TraceCtxEvent and a DataEvent were two.
#[inline(always)]
pub(crate) fn stage(kind: EventKind, ctx: &TraceCtx, flags: u8) -> bool {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    let prefix = DataCtxPrefix {
        kind: EventKind::DataCtx as u8,
        ctx_kind: kind as u8,
        flags,
        _pad0: [0; 5],
        trace_id: ctx.trace_id,
        span_id: ctx.span_id,
        parent_span_id: ctx.parent_span_id,
    };
    // SAFETY: the scratch value starts with DATA_AT bytes of room for the
    // prefix, which no payload copy touches; write_unaligned needs no
    // alignment.
    unsafe { core::ptr::write_unaligned(scratch.cast::<DataCtxPrefix>(), prefix) };
    true
}

/// First bytes of the buffer a send/recv syscall was given (the first iovec
/// for the vector forms) and how many of them are real: 16, 8 or None when
/// the first segment is shorter than a method or unreadable.
#[inline(always)]
pub(crate) fn peek_user(shape: Shape, ptr: u64, len: u64) -> Option<([u8; 16], u64)> {
    let (base, seg) = match shape {
        Shape::Flat => (ptr, len),
        Shape::NoBuffer => return None,
        Shape::Iovec | Shape::Msghdr => {
            let (iov, cnt) = if shape == Shape::Msghdr {
                // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
                // SAFETY: fault-tolerant read of user memory.
                let [iov, cnt] = unsafe { bpf_probe_read_user((ptr + 16) as *const [u64; 2]) }.ok()?;
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
pub(crate) fn head_word(b: &[u8; 16]) -> u64 {
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Write-family syscall entry on a server connection: the thread's request
/// on this connection is being answered (unless this is a 1xx interim
/// response), so later client calls of the thread are not part of it.
#[inline(always)]
pub(crate) fn end_request(pid_tgid: u64, info: &ConnInfo, shape: Shape, ptr: u64, len: u64) {
    let Some(tc) = thread_ctx(pid_tgid) else {
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
    // SAFETY: as above; only this thread writes its own entry.
    unsafe { (*tc).flags |= ctx_flags::ENDED };
}

/// The request the thread is handling, if any (an answered one stays in
/// the map, flagged ENDED, for the next to overwrite).
#[inline(always)]
pub(crate) fn thread_ctx(pid_tgid: u64) -> Option<*mut TraceCtx> {
    let tc = THREAD_CTX.get_ptr_mut(pid_tgid)?;
    // SAFETY: tc points at a live THREAD_CTX value.
    if unsafe { (*tc).flags } & ctx_flags::ENDED != 0 {
        return None;
    }
    Some(tc)
}

/// The thread starts handling the request `ctx`: written over its entry
/// when it has one (answered or not), inserted otherwise.
#[inline(always)]
pub(crate) fn set_thread_ctx(pid_tgid: u64, ctx: &TraceCtx) -> bool {
    if let Some(tc) = THREAD_CTX.get_ptr_mut(pid_tgid) {
        // SAFETY: tc points at a live THREAD_CTX value; only this thread
        // (or, for a new child, its creator before it runs) writes it.
        unsafe { *tc = *ctx };
        return true;
    }
    if THREAD_CTX.insert(pid_tgid, ctx, 0).is_err() {
        count(Counter::MapInsertFailed);
        return false;
    }
    true
}

/// What a send on a client connection is, decided at its syscall entry.
#[derive(Default)]
pub(crate) struct ClientSend {
    /// The ids the request carries, to leave in INJECT_PENDING (once the
    /// PENDING stash succeeded, see `client_send_arm`); `skipped` already
    /// set when it must not be injected.
    pub request: Option<InjectRequest>,
    /// The send starts a request whose length went into `req_remaining`.
    pub request_start: bool,
    /// `request` is a FastCGI request: its ids go to LINKS too.
    pub fastcgi: bool,
}

/// Write-family syscall entry on a client connection.
///
/// A send can only start a request at a request boundary: the first send of
/// the connection, or one after the application has sent every byte of the
/// previous request (its header block plus its Content-Length; see
/// `account_client_send` in data.rs). There the first 4 KiB of the send are
/// copied and scanned; a request is injected into only when its whole header
/// block is among them and has no traceparent. Whatever says the request's
/// end cannot be known (chunked, an upgrade, CONNECT, an incomplete header
/// block) ends injection on the connection for good.
///
/// The first send seen on a connection classifies it: HTTP/1.x connections
/// begin with a request, so one that begins otherwise (TLS, SSH, ...) never
/// gets anything injected, whatever its later bytes look like.
#[inline(always)]
pub(crate) fn client_send_enter<const BPF_LOOP: bool>(
    pid_tgid: u64,
    info: *mut ConnInfo,
    shape: Shape,
    ptr: u64,
    len: u64,
) -> ClientSend {
    let mut out = ClientSend::default();
    // SAFETY: info points at a live CONNS value; copied out. Only threads
    // of its process send on it, and a lost race with userspace muting
    // only costs a skipped injection.
    let conn = unsafe { *info };
    // Not even a peek at user memory for TLS and the like.
    if conn.flags & (conn_flags::NOT_HTTP1 | conn_flags::FASTCGI) == conn_flags::NOT_HTTP1 {
        return out;
    }
    // Plain values, not the Option: a copy of an empty Option leaves LLVM
    // free to spill undefined registers, which the verifier refuses.
    let (start, head, fcgi) = match peek_user(shape, ptr, len) {
        Some((raw, n)) => {
            let head = head_word(&raw);
            (http::is_request_start(head, n), head, fastcgi::is_begin_request(&raw, n))
        }
        None => (false, 0, false),
    };
    if conn.flags & conn_flags::SENT == 0 {
        let mark = if start {
            conn_flags::SENT
        } else if fcgi {
            conn_flags::SENT | conn_flags::NOT_HTTP1 | conn_flags::FASTCGI
        } else {
            conn_flags::SENT | conn_flags::NOT_HTTP1
        };
        // SAFETY: as above.
        unsafe { (*info).flags |= mark };
        if !start && !fcgi {
            return out;
        }
    }
    if conn.flags & conn_flags::FASTCGI != 0 || (fcgi && !start) {
        // A FastCGI request: its ids, never an injection (records are
        // not rewritten), and a link for a same-host responder.
        if fcgi {
            out.fastcgi = true;
            out.request = Some(InjectRequest {
                ctx: request_ctx(pid_tgid, conn.conn_id),
                head,
                request_line_end: 0,
                headers_end: 0,
                injected: 0,
                skipped: skip_reason::NOT_REQUEST_START as u8 + 1,
                line: INJECT_TRACEPARENT,
                _pad: 0,
            });
        }
        return out;
    }
    let mode = match RUNTIME.get(runtime::SOCKMAP_MODE) {
        Some(mode) => *mode,
        None => sockmap_mode::UNSET,
    };
    // Without bpf_loop (the reduced mode) nothing is scanned for injection:
    // the agent turns propagation off there.
    let injectable = BPF_LOOP
        && PROPAGATION.load() != 0
        && (mode == sockmap_mode::KEEP
            || (mode == sockmap_mode::LEAVE_AT_FIRST_TRANSMIT && conn.flags & conn_flags::INJECTION_OVER == 0));
    if !injectable {
        // Nothing this send carries can be injected: its ids are all the
        // request needs, and a look at its first bytes says it starts one.
        if start {
            if PROPAGATION.load() != 0 {
                count(Counter::SkipNotInSockhash);
            }
            out.request = Some(InjectRequest {
                ctx: request_ctx(pid_tgid, conn.conn_id),
                head,
                request_line_end: 0,
                headers_end: 0,
                injected: 0,
                skipped: skip_reason::NOT_IN_SOCKHASH as u8 + 1,
                line: INJECT_TRACEPARENT,
                _pad: 0,
            });
        }
        return out;
    }
    if conn.req_remaining != 0 {
        // A body (or the rest of a header block) that looks like a request.
        if start {
            count(Counter::SkipInsideBody);
        }
        return out;
    }
    if conn.flags & conn_flags::BOUNDARY_LOST != 0 {
        if start && PROPAGATION.load() != 0 {
            count(Counter::SkipBoundaryLost);
        }
        return out;
    }
    if !start {
        // At a boundary, but no request: not (or no longer) plain HTTP/1.x.
        // SAFETY: as above.
        unsafe { (*info).flags |= conn_flags::BOUNDARY_LOST };
        return out;
    }

    let Some((payload, copied)) = copy_send_head(shape, ptr, len) else {
        return out;
    };
    let sc = scan::<BPF_LOOP>(copied);
    let rle = sc.request_line_end;
    if rle != 0 {
        // SAFETY: ((rle - 11) & MASK) + 10 stays inside the payload area.
        let tail = unsafe {
            core::ptr::read_unaligned(payload.add((rle.wrapping_sub(11) as usize) & MASK).cast::<[u8; 10]>())
        };
        if rle < u64::from(http::MIN_REQUEST_LINE) || !http::request_line_is_http1(&tail) {
            // Redis inline commands and other text protocols also start
            // with "GET ".
            // SAFETY: as above.
            unsafe { (*info).flags |= conn_flags::BOUNDARY_LOST };
            return out;
        }
    }
    match sc.request_len() {
        Some(total) if !http::is_connect(head) => {
            // SAFETY: as above.
            unsafe { (*info).req_remaining = total };
            out.request_start = true;
        }
        // SAFETY: as above.
        _ => unsafe { (*info).flags |= conn_flags::BOUNDARY_LOST },
    }

    let skip = if sc.headers_end == 0 {
        Some(skip_reason::HEADERS_INCOMPLETE)
    } else if sc.traceparent_lines != 0 {
        Some(skip_reason::ALREADY_HAS_TRACEPARENT)
    } else if !agent_alive() {
        Some(skip_reason::AGENT_STALLED)
    } else {
        None
    };
    if let Some(reason) = skip {
        if PROPAGATION.load() != 0 {
            count_index(Counter::skip(reason));
        }
    }

    if mode == sockmap_mode::LEAVE_AT_FIRST_TRANSMIT {
        // This send is the socket's first transmit: it leaves the sockmap.
        // SAFETY: as above.
        unsafe { (*info).flags |= conn_flags::INJECTION_OVER };
    }
    out.request = Some(InjectRequest {
        ctx: request_ctx(pid_tgid, conn.conn_id),
        head,
        request_line_end: rle as u16,
        headers_end: sc.headers_end as u16,
        injected: 0,
        skipped: match skip {
            Some(reason) => reason as u8 + 1,
            None => 0,
        },
        line: INJECT_TRACEPARENT,
        _pad: 0,
    });
    out
}

/// Copies the first MAX_CAPTURE bytes a send is given (never past a flat
/// buffer's end) to this CPU's SCRATCH payload, for a header scan: the
/// payload and how many bytes it holds.
#[inline(always)]
pub(crate) fn copy_send_head(shape: Shape, ptr: u64, len: u64) -> Option<(*mut u8, u32)> {
    let scratch = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: HEADER < size of Scratch.
    let payload = unsafe { scratch.cast::<u8>().add(HEADER) };
    let budget = match shape {
        // Never past the application's buffer.
        Shape::Flat if len < MAX_CAPTURE as u64 => len,
        _ => MAX_CAPTURE as u64,
    };
    Some((payload, copy_user(payload, shape, ptr, len, budget) as u32))
}

/// After the PENDING stash: leave the request for sk_msg and the exit
/// handler, over the thread's taken entry when it has one (as PENDING: no
/// element allocated or freed per request).
#[inline(always)]
pub(crate) fn client_send_arm(pid_tgid: u64, req: &InjectRequest) {
    if let Some(slot) = INJECT_PENDING.get_ptr_mut(pid_tgid) {
        // SAFETY: slot points at this thread's live entry; only this thread
        // writes it (sk_msg runs later in this same send).
        unsafe { *slot = *req };
        return;
    }
    if INJECT_PENDING.insert(pid_tgid, req, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
}

/// The send that armed `req` has returned: its entry stays for the next
/// request, decided so sk_msg leaves any later send of the thread alone.
#[inline(always)]
fn take_inject(req: *mut InjectRequest) {
    // SAFETY: req points at this thread's live INJECT_PENDING value.
    unsafe { (*req).skipped = INJECT_TAKEN };
}

/// Exit of a send that left an INJECT_PENDING entry: report the request's
/// ids (when something was sent on a connection still tracked) and take
/// the entry, so it never meets a later send. With `data_follows` the ids
/// are staged for the send's Data record (true returned), else sent alone.
/// Works on the map value in place: a copy of it in an Option leaves LLVM
/// free to read undefined registers on the empty path, which the verifier
/// refuses.
#[inline(always)]
pub(crate) fn finish_inject(
    pid_tgid: u64,
    info: Option<*mut ConnInfo>,
    p: &Pending,
    sent: bool,
    propagation: bool,
    data_follows: bool,
) -> bool {
    let Some(req) = INJECT_PENDING.get_ptr_mut(pid_tgid) else {
        // The enter left one (Pending::aux says so) and only this exit
        // takes it: evicted from the LRU map, or its insert failed.
        count(Counter::InjectPendingLost);
        return false;
    };
    // SAFETY: req points at a live INJECT_PENDING value; read in place.
    let (line, injected, skipped) = unsafe { ((*req).line, (*req).injected, (*req).skipped) };
    if skipped == INJECT_TAKEN {
        // An earlier request's entry, already reported: this send's arm
        // never wrote over it (defensive: AUX_INJECT is only set where the
        // arm follows), and its ids must not pass for this request's.
        count(Counter::InjectPendingLost);
        return false;
    }
    if line != INJECT_TRACEPARENT {
        // A response's line: its ids are the server span's, already
        // reported with the request.
        if sent && injected == 0 && skipped == 0 {
            count_index(Counter::response_skip(http::response::skip::NOT_IN_SOCKHASH));
        }
        take_inject(req);
        return false;
    }
    let mut staged = false;
    if let (true, Some(info)) = (sent, info) {
        // SAFETY: req and info point at live map values; read in place.
        let (flags, injected, skipped, conn_id) =
            unsafe { ((*req).ctx.flags, (*req).injected, (*req).skipped, (*info).conn_id) };
        let mut flags = flags;
        if injected != 0 {
            flags |= ctx_flags::INJECTED;
        } else if propagation && skipped == 0 {
            // sk_msg never saw the send: the socket is not in INJECT_SOCKS
            // (connected before the agent started, left it, or the map
            // was full).
            count(Counter::SkipNotInSockhash);
        }
        if data_follows {
            // SAFETY: as above.
            staged = stage(EventKind::ClientCtx, unsafe { &(*req).ctx }, flags);
        } else {
            // SAFETY: as above.
            emit(EventKind::ClientCtx, unsafe { &(*req).ctx }, flags, pid_tgid, p.fd, conn_id, p.enter_ns);
        }
    }
    take_inject(req);
    staged
}

/// The ids of a client request the thread sends now: a child of the
/// server request it is handling, else the root of a new trace.
#[inline(always)]
fn request_ctx(pid_tgid: u64, conn_id: u64) -> TraceCtx {
    let mut ctx = TraceCtx { span_id: new_span_id(), conn_id, ..TraceCtx::default() };
    match thread_ctx(pid_tgid) {
        Some(parent) => {
            // SAFETY: parent points at a live THREAD_CTX value; copied out.
            let parent = unsafe { *parent };
            ctx.trace_id = parent.trace_id;
            ctx.parent_span_id = parent.span_id;
            ctx.flags = (parent.flags & ctx_flags::SAMPLED) | ctx_flags::HAS_PARENT;
        }
        None => {
            ctx.trace_id = new_trace_id();
            ctx.flags = root_flags(&ctx.trace_id);
        }
    }
    ctx
}

/// Read-family exit on a server connection, payload already in SCRATCH: if
/// it starts an HTTP/1.x request, start the thread's server context, its
/// ids staged for the read's Data record (Some).
#[inline(always)]
pub(crate) fn server_recv_exit<const BPF_LOOP: bool>(
    pid_tgid: u64,
    info: &ConnInfo,
    payload: *const u8,
    captured: u64,
) -> Option<()> {
    // SAFETY: payload is the scratch payload area (>= 16 bytes).
    let head = unsafe { core::ptr::read_unaligned(payload.cast::<[u8; 16]>()) };
    if !http::is_request_start(head_word(&head), captured) {
        return None;
    }
    // The thread is still handling a request on this connection (no final
    // response written yet): these bytes are its body, even if they look
    // like a request.
    if let Some(tc) = thread_ctx(pid_tgid) {
        // SAFETY: tc points at a live THREAD_CTX value.
        if unsafe { (*tc).conn_id } == info.conn_id {
            return None;
        }
    }
    let len = captured as u32;
    let sc = scan::<BPF_LOOP>(len);
    let rle = sc.request_line_end as usize;
    if rle < 12 {
        return None;
    }
    // SAFETY: (rle - 11) & MASK + 10 stays inside the payload area.
    let tail = unsafe { core::ptr::read_unaligned(payload.add((rle - 11) & MASK).cast::<[u8; 10]>()) };
    if !http::request_line_is_http1(&tail) {
        return None;
    }

    let mut ctx = TraceCtx { span_id: new_span_id(), conn_id: info.conn_id, ..TraceCtx::default() };
    let incoming = match incoming(&sc, payload, len) {
        Some(_) if info.flags & conn_flags::UNTRUSTED_PEER != 0 => {
            count(Counter::IncomingUntrusted);
            None
        }
        other => other,
    };
    match incoming {
        Some(inc) => {
            ctx.trace_id = inc.trace_id;
            ctx.parent_span_id = inc.span_id;
            ctx.flags = joined_flags(inc.flags, &inc.trace_id);
            count(Counter::IncomingTraceparent);
        }
        None => {
            ctx.trace_id = new_trace_id();
            ctx.flags = root_flags(&ctx.trace_id);
        }
    }
    let sent_flags = ctx.flags;
    if head_word(&head) & HEAD_MASK == HEAD_METHOD {
        ctx.flags |= ctx_flags::HEAD_REQUEST;
    }
    set_thread_ctx(pid_tgid, &ctx);
    count(Counter::ServerCtxStarted);
    stage(EventKind::ServerCtx, &ctx, sent_flags).then_some(())
}

/// The request's traceparent, if it has exactly one header of that name
/// and its value is valid in full.
#[inline(always)]
fn incoming(sc: &HeaderScan, payload: *const u8, len: u32) -> Option<http::Incoming> {
    if sc.traceparent_lines != 1 || sc.traceparent_value == 0 {
        return None;
    }
    let at = sc.traceparent_value as u32;
    // SAFETY: (at & MASK) + 8 stays inside the payload area.
    let ows = unsafe { core::ptr::read_unaligned(payload.add(at as usize & MASK).cast::<[u8; http::MAX_OWS]>()) };
    let start = at + http::ows_len(&ows);
    if start >= len {
        return None;
    }
    // SAFETY: (start & MASK) + VALUE_WINDOW stays inside the payload area.
    let v = unsafe { core::ptr::read_unaligned(payload.add(start as usize & MASK).cast::<[u8; http::VALUE_WINDOW]>()) };
    http::parse_traceparent(&v, len - start)
}

/// task_newtask for a new thread or process: it inherits the request its
/// creator is handling (work handed to a thread or a process started for
/// it).
#[inline(always)]
pub(crate) fn inherit(parent_pid_tgid: u64, child_pid_tgid: u64) -> bool {
    let Some(tc) = thread_ctx(parent_pid_tgid) else { return false };
    // SAFETY: tc points at a live THREAD_CTX value; copied out.
    let tc = unsafe { *tc };
    set_thread_ctx(child_pid_tgid, &tc)
}

/// A thread exits: its context and any pending injection go with it.
#[inline(always)]
pub(crate) fn thread_exit(pid_tgid: u64) {
    let _ = THREAD_CTX.remove(pid_tgid);
    let _ = INJECT_PENDING.remove(pid_tgid);
}
