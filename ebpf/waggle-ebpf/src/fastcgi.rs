//! FastCGI trace context (rules in `waggle_common::fastcgi`).
//!
//! - Responder side (php-fpm): a read that brings an `FCGI_BEGIN_REQUEST`
//!   header starts the thread's server context, as an HTTP request start
//!   does in trace.rs. Its parent is the same-host client request that sent
//!   it (LINKS, below), else a new trace. php-fpm reads the params only
//!   after the header; finding `HTTP_TRACEPARENT` in them here
//!   (`waggle_common::fastcgi::ParamScan`, host-tested) is not done yet:
//!   the scan and the traceparent parse doubled the size of the read exit
//!   programs, and their verification no longer fitted the start-up
//!   budget of the 6.1/6.12 checks under qemu.
//! - Web-server side (nginx): a send that starts with `FCGI_BEGIN_REQUEST`
//!   on a FastCGI connection gets the ids of a client request (ClientCtx,
//!   nothing injected: FastCGI records are never rewritten) and leaves them
//!   in LINKS under the connection's link key, which the responder's end of
//!   a same-host connection computes alike (`ConnEnds::link_key`).
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use waggle_common::{ctx_flags, fastcgi, ConnInfo, Counter, EventKind, TraceCtx};

use crate::{
    helpers::count,
    maps::{LINKS, THREAD_CTX},
    trace::{emit, new_span_id, new_trace_id, root_flags},
};

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
    }
    0
}

#[inline(always)]
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
}
