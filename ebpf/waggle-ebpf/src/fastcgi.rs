//! FastCGI trace context (rules in `waggle_common::fastcgi`).
//!
//! - Responder side (php-fpm): a read that brings an `FCGI_BEGIN_REQUEST`
//!   header starts the thread's server context, as an HTTP request start
//!   does in trace.rs. Its parent is the same-host client request that sent
//!   it (LINKS, below), else a new trace, which the request's
//!   `HTTP_TRACEPARENT` param may replace (next point).
//! - Without a link, the thread's reads until the end of the request's
//!   params are walked record by record (`RecordWalk`, FCGI_WAIT) and the
//!   params' pairs scanned (`ParamScan`) by `params`, a program of its own
//!   attached to sys_exit_read after the data exit, which asks for it
//!   through FCGI_REQUEST (its DataEvent and bytes stay in SCRATCH).
//!   Inline, the scan grew each read exit from 17 to 28 KB and their
//!   verification no longer fitted the start-up budget of the 6.1/6.12
//!   checks under qemu; a tail call from the read exits makes the kernel
//!   refuse private stacks to them (6.18: "combined stack size ... too
//!   large" for readv/recvmsg). Every read(2) exit on the host now runs
//!   this program too: one per-CPU array load, and out. At the params' end, exactly one valid `HTTP_TRACEPARENT` from a
//!   trusted peer replaces the context's trace and parent (THREAD_CTX and
//!   a second ServerCtx under the begin's timestamp, which the agent takes
//!   over the first). Only the thread's bytes between its begin record and
//!   the end of that request's params are looked at: never a body, never
//!   another request's params.
//! - Web-server side (nginx): a send that starts with `FCGI_BEGIN_REQUEST`
//!   on a FastCGI connection gets the ids of a client request (ClientCtx,
//!   nothing injected: FastCGI records are never rewritten) and leaves them
//!   in LINKS under the connection's link key, which the responder's end of
//!   a same-host connection computes alike (`ConnEnds::link_key`).
use core::ffi::c_void;

use core::hint::black_box;

use aya_ebpf::helpers::{bpf_get_current_pid_tgid, generated::bpf_loop};
use waggle_common::{
    conn_flags, ctx_flags,
    fastcgi::{
        self, parse_traceparent_param, ParamScan, RecordWalk, WalkStep, HEADER_LEN, MAX_SCAN_PAIRS, MAX_WALK_READS,
        MAX_WALK_STEPS, PAIR_WINDOW,
    },
    http::VALUE_WINDOW,
    ConnInfo, Counter, DataEvent, EventKind, SockKey, TraceCtx, CAPTURE_MASK, MAX_CAPTURE,
};

use crate::{
    helpers::count,
    maps::{
        walk_outcome, ParamScanState, ParamsWait, WalkState, CONNS, DATA_AT, FCGI_REQUEST, FCGI_WAIT, HEADER, LINKS,
        PARAM_SCAN, SCRATCH, WAIT_BUILD, WALK_STATE,
    },
    trace::{emit, joined_flags, new_span_id, new_trace_id, root_flags, set_thread_ctx, thread_ctx},
};

const MASK: usize = CAPTURE_MASK;

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
/// only on this branch. A read that is part of a request whose params are
/// walked asks the params program (next on sys_exit_read) to walk it.
#[inline(never)]
pub(crate) fn server_recv(fd: u32, info: &ConnInfo, payload: *const u8, captured: u64, exit_ns: u64) -> i64 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: payload is the scratch payload area (>= 16 bytes).
    let head = unsafe { core::ptr::read_unaligned(payload.cast::<[u8; 16]>()) };
    if fastcgi::is_begin_request(&head, captured) {
        begin(pid_tgid, fd, info, exit_ns);
    } else if info.flags & conn_flags::FASTCGI != 0 && FCGI_WAIT.get_ptr(pid_tgid).is_some() {
        // Only connections that carried a begin record cost a lookup.
        ask_walk(exit_ns);
    }
    0
}

/// Asks the params program (next on sys_exit_read) to walk this read.
#[inline(always)]
fn ask_walk(exit_ns: u64) {
    if let Some(slot) = FCGI_REQUEST.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; tracepoint programs do not nest.
        unsafe { *slot = exit_ns };
    }
}

#[inline(always)]
/// Starts the thread's context; without a link, the params program starts
/// the walk (out of this stack).
fn begin(pid_tgid: u64, fd: u32, info: &ConnInfo, exit_ns: u64) {
    let mut ctx = TraceCtx { span_id: new_span_id(), conn_id: info.conn_id, ..TraceCtx::default() };
    let linked = if info.link != 0 { LINKS.get_ptr(info.link) } else { None };
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
            // The link wins over any param: no walk (nor an older one).
            if info.flags & conn_flags::FASTCGI != 0 {
                let _ = FCGI_WAIT.remove(pid_tgid);
            }
        }
        None => {
            ctx.trace_id = new_trace_id();
            ctx.flags = root_flags(&ctx.trace_id);
            ask_walk(exit_ns);
        }
    }
    set_thread_ctx(pid_tgid, &ctx);
    count(Counter::ServerCtxStarted);
    count(Counter::FastcgiServerCtx);
    emit(EventKind::ServerCtx, &ctx, ctx.flags, pid_tgid, fd, info.conn_id, exit_ns);
}

/// Params program, on the read that brought a begin record with no link
/// (`begin` said so): the request's params are walked from this read on.
/// Here, not in `begin`: the read exits' stack has no room for it on
/// kernels without private stacks.
// The insert borrows the map memory: `*wait` would copy it onto the stack.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn wait_for_params(pid_tgid: u64, ev: &DataEvent, head: &[u8; 16]) -> Option<()> {
    let tc = thread_ctx(pid_tgid)?;
    // SAFETY: tc points at a live THREAD_CTX value; copied out.
    let (span_id, conn_id) = unsafe { ((*tc).span_id, (*tc).conn_id) };
    if conn_id != ev.conn_id {
        return None;
    }
    let conn = CONNS.get_ptr_mut(SockKey { tgid: ev.tgid, fd: ev.fd })?;
    // SAFETY: conn points at a live CONNS value; flags are only ever or-ed
    // in. Later reads on this connection look FCGI_WAIT up; others never do.
    let flags = unsafe {
        (*conn).flags |= conn_flags::FASTCGI;
        (*conn).flags
    };
    // Built in per-CPU map memory, not on this program's stack.
    let wait = WAIT_BUILD.get_ptr_mut(0)?;
    // SAFETY: this CPU's WAIT_BUILD value; tracepoint programs do not nest.
    let wait = unsafe { &mut *wait };
    wait.conn_id = ev.conn_id;
    wait.begin_ns = ev.exit_ns;
    wait.span_id = span_id;
    wait.walk = RecordWalk::begun(head);
    wait.fd = ev.fd;
    wait.reads = 0;
    wait.found = 0;
    wait.valid = 0;
    wait.untrusted = u8::from(flags & conn_flags::UNTRUSTED_PEER != 0);
    if FCGI_WAIT.insert(pid_tgid, &*wait, 0).is_err() {
        count(Counter::MapInsertFailed);
        return None;
    }
    Some(())
}

/// One pair of the params content in SCRATCH (bpf_loop callback, state in
/// PARAM_SCAN as trace.rs's header scan keeps its own in SCAN).
extern "C" fn pair_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let (Some(buf), Some(st)) = (SCRATCH.get_ptr(0), PARAM_SCAN.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: st points at this CPU's PARAM_SCAN value, used by this
    // program only (tracepoint programs do not nest on a CPU).
    let st = unsafe { &mut *st };
    // SAFETY: HEADER + HEADER_LEN < size of Scratch.
    let payload = unsafe { buf.cast::<u8>().add(HEADER) };
    let done = st.scan.step(st.end, |at| {
        // SAFETY: (at & MASK) + PAIR_WINDOW lies inside the payload area
        // (twice MAX_CAPTURE).
        unsafe { core::ptr::read_unaligned(payload.add(black_box(at as usize) & MASK).cast::<[u8; PAIR_WINDOW]>()) }
    });
    i64::from(done)
}

/// Scans the params content at `[at, end)` of the payload into `w`; false
/// when its pairs could not all be walked.
#[inline(always)]
fn scan_params(w: &mut ParamsWait, payload: *const u8, at: u32, end: u32) -> bool {
    let Some(st) = PARAM_SCAN.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: st points at this CPU's PARAM_SCAN value.
    unsafe { *st = ParamScanState { scan: ParamScan { pos: at, ..ParamScan::default() }, end } };
    // SAFETY: the callback is a static function of the right signature;
    // it takes no context.
    unsafe { bpf_loop(MAX_SCAN_PAIRS, pair_step as *const () as *mut c_void, core::ptr::null_mut(), 0) };
    // SAFETY: as above; copied out.
    let sc = unsafe { (*st).scan };
    if sc.cut || sc.pos < end {
        return false;
    }
    w.found += sc.found;
    if let Some(v) = sc.value() {
        // SAFETY: (v & MASK) + VALUE_WINDOW lies inside the payload area.
        let window = unsafe {
            core::ptr::read_unaligned(payload.add(black_box(v as usize) & MASK).cast::<[u8; VALUE_WINDOW]>())
        };
        if let Some(inc) = parse_traceparent_param(&window) {
            w.trace_id = inc.trace_id;
            w.parent_span_id = inc.span_id;
            w.flags = inc.flags;
            w.valid = 1;
        }
    }
    true
}

/// The params program (`fastcgi_params`, on sys_exit_read after the data
/// exit): walks the read whose DataEvent the data exit left at the start
/// of SCRATCH, if it asked to. Runs on every read(2) exit: the first load
/// ends it for all others.
#[inline(always)]
pub(crate) fn params() -> Option<()> {
    let slot = FCGI_REQUEST.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot; tracepoint programs do not nest.
    let want = unsafe { *slot };
    if want == 0 {
        return None;
    }
    // SAFETY: as above. Taken once, whatever follows.
    unsafe { *slot = 0 };
    let base = SCRATCH.get_ptr(0)?.cast::<u8>();
    // SAFETY: the scratch buffer holds, at DATA_AT, the DataEvent the data
    // exit just wrote on this CPU; its timestamp says whether it is the
    // read that asked (and the thread, whether it is ours).
    let ev = unsafe { core::ptr::read_unaligned(base.add(DATA_AT).cast::<DataEvent>()) };
    let pid_tgid = (u64::from(ev.tgid) << 32) | u64::from(ev.tid);
    if ev.exit_ns != want || bpf_get_current_pid_tgid() != pid_tgid {
        return None;
    }
    // SAFETY: the payload follows the header; 16 bytes lie inside Scratch.
    let head = unsafe { core::ptr::read_unaligned(base.add(HEADER).cast::<[u8; 16]>()) };
    if fastcgi::is_begin_request(&head, u64::from(ev.captured_len)) {
        // A new request (a walk of an older one ends here).
        wait_for_params(pid_tgid, &ev, &head)?;
    }
    let wait = FCGI_WAIT.get_ptr_mut(pid_tgid)?;
    // SAFETY: wait points at a live FCGI_WAIT value, the calling thread's.
    let w = unsafe { &mut *wait };
    if w.conn_id != ev.conn_id {
        return None;
    }
    let len = if ev.captured_len > MAX_CAPTURE as u32 { MAX_CAPTURE as u32 } else { ev.captured_len };
    // Bytes past the copy are unseen: where the next read starts is unknown.
    let whole = ev.total_len == u64::from(len);
    // SAFETY: HEADER < size of Scratch.
    let payload = unsafe { base.add(HEADER) };
    let st = WALK_STATE.get_ptr_mut(0)?;
    // SAFETY: this CPU's WALK_STATE value, this program's only.
    unsafe { *st = WalkState { walk: w.walk, len, ..WalkState::default() } };
    // A read holds at most the begin record's rest, one params record and
    // the next header (php-fpm: one of them): a second round covers
    // responders that read more at once.
    let mut round = 0;
    while round < 2 {
        round += 1;
        // SAFETY: the callback is a static function of the right
        // signature; it takes no context.
        unsafe { bpf_loop(MAX_WALK_STEPS, walk_step as *const () as *mut c_void, core::ptr::null_mut(), 0) };
        // SAFETY: as above; copied out.
        let now = unsafe { *st };
        match now.outcome {
            walk_outcome::PARAMS => {
                if !scan_params(w, payload, now.at, now.end) {
                    return unread(pid_tgid);
                }
                // SAFETY: as above.
                unsafe { (*st).outcome = walk_outcome::NONE };
            }
            walk_outcome::MORE => {
                w.walk = now.walk;
                w.reads += 1;
                if !whole || w.reads >= MAX_WALK_READS {
                    return unread(pid_tgid);
                }
                return Some(());
            }
            walk_outcome::END => {
                finish(pid_tgid, w);
                let _ = FCGI_WAIT.remove(pid_tgid);
                return Some(());
            }
            _ => return unread(pid_tgid),
        }
    }
    unread(pid_tgid)
}

/// One step of the record walk over the read in SCRATCH (bpf_loop
/// callback, state in WALK_STATE): 0 to go on, 1 when it stopped and
/// `outcome` says why.
extern "C" fn walk_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let (Some(buf), Some(st)) = (SCRATCH.get_ptr(0), WALK_STATE.get_ptr_mut(0)) else {
        return 1;
    };
    // SAFETY: this CPU's WALK_STATE value; tracepoint programs do not nest.
    let st = unsafe { &mut *st };
    // SAFETY: HEADER < size of Scratch.
    let payload = unsafe { buf.cast::<u8>().add(HEADER) };
    let header = |at: u32| {
        // SAFETY: (at & MASK) + HEADER_LEN lies inside the payload area.
        unsafe { core::ptr::read_unaligned(payload.add(black_box(at as usize) & MASK).cast::<[u8; HEADER_LEN]>()) }
    };
    let mut pos = st.pos;
    let step = st.walk.next(&mut pos, st.len, header);
    st.pos = pos;
    st.outcome = match step {
        WalkStep::Record => return 0,
        WalkStep::Params { at, end } => {
            st.at = at;
            st.end = end;
            walk_outcome::PARAMS
        }
        WalkStep::More => walk_outcome::MORE,
        WalkStep::End => walk_outcome::END,
        WalkStep::Cut => walk_outcome::CUT,
    };
    1
}

#[inline(always)]
fn unread(pid_tgid: u64) -> Option<()> {
    count(Counter::FastcgiParamsUnread);
    let _ = FCGI_WAIT.remove(pid_tgid);
    None
}

/// The params are over: take the one valid HTTP_TRACEPARENT, if any.
#[inline(always)]
fn finish(pid_tgid: u64, w: &ParamsWait) {
    if w.found == 0 {
        return;
    }
    if w.found != 1 || w.valid == 0 {
        count(Counter::FastcgiTraceparentSkipped);
        return;
    }
    if w.untrusted != 0 {
        count(Counter::IncomingUntrusted);
        return;
    }
    let Some(tc) = thread_ctx(pid_tgid) else {
        count(Counter::FastcgiTraceparentSkipped);
        return;
    };
    // SAFETY: tc points at a live THREAD_CTX value, the calling thread's.
    let tc = unsafe { &mut *tc };
    if tc.span_id != w.span_id || tc.conn_id != w.conn_id {
        // Answered already, or another request began.
        count(Counter::FastcgiTraceparentSkipped);
        return;
    }
    tc.trace_id = w.trace_id;
    tc.parent_span_id = w.parent_span_id;
    tc.flags = joined_flags(w.flags, &w.trace_id);
    count(Counter::IncomingTraceparent);
    count(Counter::FastcgiTraceparent);
    let ctx = *tc;
    emit(EventKind::ServerCtx, &ctx, ctx.flags, pid_tgid, w.fd, w.conn_id, w.begin_ns);
}
