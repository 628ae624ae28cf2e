//! FastCGI trace context (rules in `waggle_common::fastcgi`).
//!
//! - Responder side (php-fpm): a read that brings an `FCGI_BEGIN_REQUEST`
//!   header starts the thread's server context, as an HTTP request start
//!   does in trace.rs. Its parent is the same-host client request that sent
//!   it (LINKS, below), else a new trace. php-fpm reads the params only
//!   after the header, so for a request without a linked parent the next
//!   few reads on the connection are scanned for `HTTP_TRACEPARENT`
//!   (FASTCGI_REQS); one that is found re-parents the context and its
//!   ServerCtx is emitted again with the first one's stamp, which the agent
//!   takes as the request's identity instead.
//! - Web-server side (nginx): a send that starts with `FCGI_BEGIN_REQUEST`
//!   on a FastCGI connection gets the ids of a client request (ClientCtx,
//!   nothing injected: FastCGI records are never rewritten) and leaves them
//!   in LINKS under the connection's link key, which the responder's end of
//!   a same-host connection computes alike (`ConnEnds::link_key`).
use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, generated::bpf_loop};
use waggle_common::{
    conn_flags, ctx_flags,
    fastcgi::{self, ParamScan, HEADER_LEN, MAX_SCAN_PAIRS, PAIR_WINDOW},
    http::VALUE_WINDOW,
    ConnInfo, Counter, EventKind, FastcgiReq, TraceCtx, CAPTURE_MASK, MAX_CAPTURE,
};

use crate::{
    helpers::count,
    maps::{FASTCGI_REQS, HEADER, LINKS, PARAM_SCAN, PARENT_BASED, SCRATCH, THREAD_CTX},
    trace::{emit, new_span_id, new_trace_id, root_flags},
};

const MASK: usize = CAPTURE_MASK;
/// Reads after the BEGIN_REQUEST header that may hold the params (its
/// body, the PARAMS header, the content, and a few more records).
const PARAM_READS: u32 = 6;

/// Web-server side: a client request on a FastCGI connection leaves its
/// ids for the responder. A subprogram: the send path's stack is full.
#[inline(never)]
pub(crate) fn leave_link(link: u64, ctx: &TraceCtx) {
    if link != 0 && LINKS.insert(link, ctx, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
}

/// Responder side, a read on a server connection that is no HTTP request
/// start, its bytes in the SCRATCH payload. A subprogram (five arguments at
/// most): kernels without private stacks add it to the data path's stack
/// only on this branch.
#[inline(never)]
pub(crate) fn server_recv(fd: u32, info: &ConnInfo, payload: *const u8, captured: u64, exit_ns: u64) -> i64 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: payload is the scratch payload area (>= 16 bytes).
    let head = unsafe { core::ptr::read_unaligned(payload.cast::<[u8; 16]>()) };
    if fastcgi::is_begin_request(&head, captured) {
        begin(pid_tgid, fd, info, exit_ns);
    } else if FASTCGI_REQS.get_ptr(pid_tgid).is_some() {
        params(pid_tgid, fd, info, payload, captured);
    }
    0
}

#[inline(always)]
fn begin(pid_tgid: u64, fd: u32, info: &ConnInfo, exit_ns: u64) {
    let mut ctx = TraceCtx { span_id: new_span_id(), conn_id: info.conn_id, ..TraceCtx::default() };
    let linked = if info.link != 0 { LINKS.get_ptr(info.link) } else { None };
    let has_link = linked.is_some();
    match linked {
        Some(parent) => {
            // SAFETY: parent points at a live LINKS value; copied out.
            let parent = unsafe { *parent };
            ctx.trace_id = parent.trace_id;
            ctx.parent_span_id = parent.span_id;
            // Our own client span decided sampling with the same sampler.
            ctx.flags = (parent.flags & ctx_flags::SAMPLED) | ctx_flags::HAS_PARENT;
            let _ = LINKS.remove(info.link);
            count(Counter::LinkedParent);
        }
        None => {
            ctx.trace_id = new_trace_id();
            ctx.flags = root_flags(&ctx.trace_id);
        }
    }
    if THREAD_CTX.insert(pid_tgid, ctx, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
    count(Counter::ServerCtxStarted);
    count(Counter::FastcgiServerCtx);
    emit(EventKind::ServerCtx, &ctx, ctx.flags, pid_tgid, fd, info.conn_id, exit_ns);
    if has_link {
        // The sender is known: no param may override it.
        let _ = FASTCGI_REQS.remove(pid_tgid);
        return;
    }
    let req = FastcgiReq { conn_id: info.conn_id, ts_ns: exit_ns, reads_left: PARAM_READS, _pad: 0 };
    if FASTCGI_REQS.insert(pid_tgid, req, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
}

/// One step of the params walk over this CPU's SCRATCH payload (the
/// cursor in PARAM_SCAN, map memory, as for the header scan in trace.rs).
extern "C" fn param_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `scan_params` gave it: a
    // u32 on the caller's stack.
    let len = unsafe { *ctx.cast::<u32>() };
    let (Some(buf), Some(st)) = (SCRATCH.get_ptr(0), PARAM_SCAN.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: st points at this CPU's PARAM_SCAN value, used by this
    // program only (tracepoint programs do not nest on a CPU).
    let st = unsafe { &mut *st };
    let payload = buf.cast::<u8>();
    let done = st.step(len, |at| {
        // SAFETY: HEADER + (at & MASK) + PAIR_WINDOW lies inside the
        // Scratch value (the payload area is twice MAX_CAPTURE).
        unsafe { core::ptr::read_unaligned(payload.add(HEADER + (at as usize & MASK)).cast::<[u8; PAIR_WINDOW]>()) }
    });
    if done {
        1
    } else {
        0
    }
}

#[inline(always)]
fn scan_params(payload: *const u8, len: u32) -> Option<u32> {
    let st = PARAM_SCAN.get_ptr_mut(0)?;
    // SAFETY: payload is the scratch payload area (>= 16 bytes).
    let first = unsafe { core::ptr::read_unaligned(payload.cast::<[u8; HEADER_LEN]>()) };
    // SAFETY: st points at this CPU's PARAM_SCAN value.
    unsafe { *st = ParamScan::new(&first) };
    let mut n = len;
    // SAFETY: the callback is a static function of the right signature;
    // the context pointer outlives the call.
    unsafe {
        bpf_loop(MAX_SCAN_PAIRS, param_step as *const () as *mut c_void, (&mut n as *mut u32).cast(), 0);
    }
    // SAFETY: as above; copied out.
    unsafe { (*st).value() }
}

#[inline(always)]
fn params(pid_tgid: u64, fd: u32, info: &ConnInfo, payload: *const u8, captured: u64) -> Option<()> {
    let req = FASTCGI_REQS.get_ptr_mut(pid_tgid)?;
    // SAFETY: req points at a live FASTCGI_REQS value; only this thread
    // uses its entry.
    let (conn_id, ts_ns, reads_left) = unsafe { ((*req).conn_id, (*req).ts_ns, (*req).reads_left) };
    if conn_id != info.conn_id || reads_left == 0 {
        let _ = FASTCGI_REQS.remove(pid_tgid);
        return None;
    }
    // SAFETY: as above.
    unsafe { (*req).reads_left = reads_left - 1 };
    let len = if captured > MAX_CAPTURE as u64 { MAX_CAPTURE as u32 } else { captured as u32 };
    let at = scan_params(payload, len)?;
    let _ = FASTCGI_REQS.remove(pid_tgid);
    if info.flags & conn_flags::UNTRUSTED_PEER != 0 {
        count(Counter::IncomingUntrusted);
        return None;
    }
    // SAFETY: (at & MASK) + VALUE_WINDOW stays inside the payload area;
    // the scan saw the whole 55-byte value inside `len`.
    let v = unsafe { core::ptr::read_unaligned(payload.add(at as usize & MASK).cast::<[u8; VALUE_WINDOW]>()) };
    let inc = fastcgi::parse_traceparent_param(&v)?;
    let tc = THREAD_CTX.get_ptr_mut(pid_tgid)?;
    // SAFETY: tc points at a live THREAD_CTX value of this thread.
    unsafe {
        if (*tc).conn_id != info.conn_id {
            return None;
        }
        (*tc).trace_id = inc.trace_id;
        (*tc).parent_span_id = inc.span_id;
        let sampled = if PARENT_BASED.load() != 0 { inc.flags & ctx_flags::SAMPLED } else { root_flags(&inc.trace_id) };
        (*tc).flags = sampled | ctx_flags::HAS_PARENT;
        count(Counter::IncomingTraceparent);
        emit(EventKind::ServerCtx, &*tc, (*tc).flags, pid_tgid, fd, info.conn_id, ts_ns);
    }
    Some(())
}
