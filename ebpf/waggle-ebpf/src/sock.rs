//! Outgoing traceparent (and the response header).
//!
//! Which sockets: the sockops program on the cgroup-v2 root sees every TCP
//! connect of the node, but remembers only those made by a process the
//! syscall tracepoints trace (its connect() left a PENDING entry; the agent
//! and processes the trace-selection rules leave out leave none, and the
//! latter are counted as UntracedConnects), by socket cookie (unique across
//! network namespaces). When such a connection is established it enters
//! INJECT_SOCKS, whose sk_msg program then runs on its sends. On kernels
//! whose FIONREAD misreports sockets in a sockmap (`sockmap_mode`), it
//! leaves the map again at the first packet it transmits after the
//! handshake, before any byte it receives can be waiting unread.
//!
//! What is inserted: the sk_msg program runs in the sender's context on the
//! kernel's copy of the bytes. It acts only when the syscall tracepoint left
//! an undecided INJECT_PENDING entry for this very send: the tracepoint has
//! already scanned the request's whole header block (request boundary,
//! no traceparent, see trace.rs). sk_msg re-checks the facts that decide
//! the insertion point on the message itself (first bytes, the request
//! line's CRLF, the header block's end), which no other task can change,
//! checks that the socket can take the whole message without waiting for
//! memory (a partial send would cut the inserted line and make tcp_bpf
//! count it against the application), and inserts
//! `traceparent: ...\r\n` right after the request line.
//!
//! Responses (`--trace-response-header`, response.rs): accepted sockets on
//! a port in SERVER_PORTS enter INJECT_SOCKS at PASSIVE_ESTABLISHED and
//! stay (only on kernels whose FIONREAD the agent found right); the same
//! program inserts `traceresponse: ...` or `X-Trace-Id: ...` right after a
//! response's status line, under the same checks.
use core::{ffi::c_void, hint::black_box};

use aya_ebpf::{
    bindings::{
        bpf_sock, sk_action::SK_DROP, BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_HDR_OPT_LEN_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_SOCK_OPS_TCP_LISTEN_CB,
        BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG,
    },
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_get_socket_cookie, bpf_map_delete_elem, bpf_msg_pop_data, bpf_msg_pull_data, bpf_msg_push_data,
            bpf_probe_read_kernel,
        },
    },
    programs::{SkMsgContext, SockOpsContext},
};
use waggle_common::{
    ctx_flags,
    http::{self, response},
    runtime, skip_reason, sockmap_mode, Counter, InjectRequest, SyscallId, INJECT_TRACEPARENT, MAX_CAPTURE,
    TRACEPARENT_LINE_LEN,
};

use crate::{
    helpers::{agent, count, count_index, current},
    maps::{
        CONNECTING, INJECT_PENDING, INJECT_SOCKS, NOTSENT_LOWAT_DEFAULT, OFF_NOTSENT_LOWAT, OFF_SNDBUF, OFF_SND_NXT,
        OFF_WMEM_QUEUED, OFF_WRITE_SEQ, PENDING, PROPAGATION, RUNTIME,
    },
    response as response_path,
};

/// The longest line this program inserts: the room a send must have.
const LONGEST_LINE: u32 = response::TRACERESPONSE_LINE_LEN as u32;
/// Offsets into the message are masked with this for the verifier. Twice
/// the scan window, so no offset the tracepoint can report (<= MAX_CAPTURE)
/// ever wraps to another.
const OFF_MASK: u32 = (2 * MAX_CAPTURE - 1) as u32;
/// Send-buffer room the socket must have beyond twice the message: skb
/// heads and truesize overhead of the segments the message becomes.
const ROOM_SLACK: u64 = 16 * 1024;

const _: () = assert!(http::LINE_LEN == TRACEPARENT_LINE_LEN);
const _: () = assert!(TRACEPARENT_LINE_LEN <= LONGEST_LINE as usize);
const _: () = assert!(response::X_TRACE_ID_LINE_LEN <= LONGEST_LINE as usize);

pub(crate) fn sockops(ctx: &SockOpsContext) {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => connecting(ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => established(ctx),
        BPF_SOCK_OPS_HDR_OPT_LEN_CB => transmitting(ctx),
        BPF_SOCK_OPS_TCP_LISTEN_CB => listening(ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => accepted(ctx),
        _ => {}
    }
}

/// listen(), in the listening process: its port is noted when the process
/// has a response-header mode (response.rs).
#[inline(always)]
fn listening(ctx: &SockOpsContext) {
    if let Some((_, tgid)) = current() {
        response_path::note_port(tgid, ctx.local_port() as u16);
    }
}

/// A connection accepted on a noted port (softirq): its sends go through
/// sk_msg for as long as it lives. Only ever on kernels where the agent
/// found FIONREAD correct for sockets in a sockmap.
#[inline(always)]
fn accepted(ctx: &SockOpsContext) {
    if !response_path::wants_accepted(ctx.local_port()) {
        return;
    }
    let mut map_key = cookie(ctx);
    // SAFETY: ctx.ops is the live context pointer of this program.
    if INJECT_SOCKS.update(&mut map_key, unsafe { &mut *ctx.ops }, u64::from(BPF_NOEXIST)).is_err() {
        count(Counter::SockmapRefused);
        return;
    }
    count(Counter::ResponseSocksAdded);
}

#[inline(always)]
fn cookie(ctx: &SockOpsContext) -> u64 {
    // SAFETY: ctx.ops is this program's live context.
    unsafe { bpf_get_socket_cookie(ctx.ops.cast::<c_void>()) }
}

/// tcp_connect(), inside the connect() syscall of the connecting task.
#[inline(always)]
fn connecting(ctx: &SockOpsContext) {
    let Some((pid_tgid, _)) = current() else {
        // Counted so a test (and a user) can see the rules at work here:
        // an untraced process's connect never reaches CONNECTING.
        if agent().is_none() {
            count(Counter::UntracedConnects);
        }
        return;
    };
    let Some(p) = PENDING.get_ptr(pid_tgid) else {
        return;
    };
    // SAFETY: p points at a live PENDING value.
    if unsafe { (*p).syscall } != SyscallId::Connect as u8 {
        return;
    }
    if CONNECTING.insert(cookie(ctx), 1u8, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
}

#[inline(always)]
fn established(ctx: &SockOpsContext) {
    let key = cookie(ctx);
    if CONNECTING.get_ptr(key).is_none() {
        return;
    }
    let _ = CONNECTING.remove(key);
    let mode = match RUNTIME.get(runtime::SOCKMAP_MODE) {
        Some(mode) => *mode,
        None => sockmap_mode::UNSET,
    };
    if mode != sockmap_mode::KEEP && mode != sockmap_mode::LEAVE_AT_FIRST_TRANSMIT {
        return;
    }
    let mut map_key = key;
    // SAFETY: ctx.ops is the live context pointer of this program.
    if INJECT_SOCKS.update(&mut map_key, unsafe { &mut *ctx.ops }, u64::from(BPF_NOEXIST)).is_err() {
        // Full, or the socket belongs to another sk_msg program already:
        // it is left alone (its requests count as SkipNotInSockhash).
        count(Counter::SockmapRefused);
        return;
    }
    count(Counter::SockmapAdded);
    if mode == sockmap_mode::LEAVE_AT_FIRST_TRANSMIT {
        let flags = ctx.cb_flags() | BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
        if ctx.set_cb_flags(flags as i32).is_err() {
            // Cannot learn when to leave: do not stay.
            leave(key);
        }
    }
}

/// A packet is about to be sent (only for sockets whose flag `established`
/// set). The handshake's last ACK passes; anything after it (the first
/// request, or the ACK of the first bytes received, sent before the
/// receiving softirq wakes the reader) takes the socket out of the map.
#[inline(always)]
fn transmitting(ctx: &SockOpsContext) {
    // SAFETY: in-bounds fields of this program's context.
    let (payload, received) = unsafe { ((*ctx.ops).skb_len, (*ctx.ops).bytes_received) };
    if payload == 0 && received == 0 {
        return;
    }
    if leave(cookie(ctx)) {
        // Only the flag this program set, and only on its own sockets.
        let flags = ctx.cb_flags() & !BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG;
        let _ = ctx.set_cb_flags(flags as i32);
    }
}

#[inline(always)]
fn leave(key: u64) -> bool {
    let mut key = key;
    // SAFETY: INJECT_SOCKS is a map of this object; the key lives on the
    // stack for the call. sockops may delete from a sockhash.
    let removed = unsafe {
        bpf_map_delete_elem((&INJECT_SOCKS as *const _ as *mut c_void).cast(), (&mut key as *mut u64).cast())
    } == 0;
    if removed {
        count(Counter::SockmapLeft);
    }
    removed
}

/// Why a message was left alone, or that it must not go out.
enum Decision {
    Skip(u32),
    /// The header space was pushed but could not be filled or removed
    /// again: sending it would put uninitialised kernel memory on the wire.
    Drop,
}

/// The verdict for this message, or None for SK_PASS.
pub(crate) fn inject(ctx: &SkMsgContext) -> Option<u32> {
    if PROPAGATION.load() == 0 {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let req = INJECT_PENDING.get_ptr_mut(pid_tgid)?;
    // SAFETY: req points at a live INJECT_PENDING value; this thread is the
    // only writer while its send syscall runs.
    let decided = unsafe { (*req).injected != 0 || (*req).skipped != 0 };
    if decided {
        // Later chunks of a large send, a retry of a refused one, or a
        // request the tracepoint already declined.
        return None;
    }
    // SAFETY: as above; copied out.
    let request = unsafe { *req };
    let into_request = request.line == INJECT_TRACEPARENT;
    match decide(ctx, &request) {
        Ok(()) => {
            // SAFETY: as above.
            unsafe { (*req).injected = 1 };
            count(if into_request { Counter::Injected } else { Counter::ResponseHeaderInserted });
            None
        }
        Err(Decision::Skip(reason)) => {
            // SAFETY: as above.
            unsafe { (*req).skipped = reason as u8 + 1 };
            count_index(skip_counter(into_request, reason));
            None
        }
        Err(Decision::Drop) => {
            // SAFETY: as above.
            unsafe { (*req).skipped = skip_reason::PUSH_FAILED as u8 + 1 };
            count_index(skip_counter(into_request, skip_reason::PUSH_FAILED));
            Some(SK_DROP)
        }
    }
}

/// The counter of a `skip_reason` this program gives, for a request's
/// traceparent or (its `http::response::skip` twin) a response's line.
#[inline(always)]
fn skip_counter(into_request: bool, reason: u32) -> u32 {
    if into_request {
        return Counter::skip(reason);
    }
    Counter::response_skip(match reason {
        skip_reason::NOT_REQUEST_START => response::skip::NOT_RESPONSE_START,
        skip_reason::HEADERS_INCOMPLETE => response::skip::HEADERS_INCOMPLETE,
        skip_reason::SEND_BUFFER_LOW => response::skip::SEND_BUFFER_LOW,
        _ => response::skip::PUSH_FAILED,
    })
}

#[inline(always)]
fn skip(reason: u32) -> Result<(), Decision> {
    Err(Decision::Skip(reason))
}

/// A u32 field of the message's socket at `off` (from the kernel's BTF).
#[inline(always)]
fn sock_u32(sk: u64, off: u32) -> Option<u32> {
    if off == 0 {
        return None;
    }
    let mut v = 0u32;
    // SAFETY: fault-tolerant read of kernel memory inside the socket the
    // kernel handed this program; the offset comes from the running
    // kernel's BTF.
    let rc = unsafe { bpf_probe_read_kernel((&mut v as *mut u32).cast(), 4, (sk + u64::from(off)) as *const c_void) };
    (rc == 0).then_some(v)
}

/// The socket can queue `bytes` more without waiting for memory: then
/// tcp_bpf sends the whole message (the inserted line with it) in this call,
/// and the count it returns to the application is exactly its own bytes.
#[inline(always)]
fn has_room(ctx: &SkMsgContext, bytes: u32) -> bool {
    // The socket pointer as a plain address (the verifier forbids
    // arithmetic on it): read back through the stack.
    // SAFETY: in-bounds field of this program's context.
    let sk: *mut bpf_sock = unsafe { (*ctx.msg).__bindgen_anon_3.sk };
    let slot = [sk as u64];
    let mut addr = 0u64;
    // SAFETY: reads 8 bytes of this program's own stack.
    if unsafe { bpf_probe_read_kernel((&mut addr as *mut u64).cast(), 8, black_box(slot.as_ptr()).cast()) } != 0
        || addr == 0
    {
        return false;
    }
    let (Some(sndbuf), Some(queued), Some(write_seq), Some(snd_nxt), Some(lowat)) = (
        sock_u32(addr, OFF_SNDBUF.load()),
        sock_u32(addr, OFF_WMEM_QUEUED.load()),
        sock_u32(addr, OFF_WRITE_SEQ.load()),
        sock_u32(addr, OFF_SND_NXT.load()),
        sock_u32(addr, OFF_NOTSENT_LOWAT.load()),
    ) else {
        return false;
    };
    let (sndbuf, queued) = (sndbuf as i32, queued as i32);
    if sndbuf <= 0 || queued < 0 || queued >= sndbuf {
        return false;
    }
    let free = (sndbuf - queued) as u64;
    let need = 2 * u64::from(bytes) + ROOM_SLACK;
    if free < need {
        return false;
    }
    let lowat = if lowat != 0 { lowat } else { NOTSENT_LOWAT_DEFAULT.load() };
    let unsent = u64::from(write_seq.wrapping_sub(snd_nxt));
    unsent + u64::from(bytes) < u64::from(lowat)
}

/// Reads `N` bytes at `off` of the (pulled, linear) message data, or None
/// when they are not inside it.
#[inline(always)]
fn msg_bytes<const N: usize>(ctx: &SkMsgContext, off: u32) -> Option<[u8; N]> {
    let at = ctx.data() + (black_box(off) & OFF_MASK) as usize;
    if at + N > ctx.data_end() {
        return None;
    }
    // SAFETY: [at, at + N) was checked against data_end just above.
    Some(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
}

#[inline(always)]
fn decide(ctx: &SkMsgContext, request: &InjectRequest) -> Result<(), Decision> {
    let rle = u32::from(request.request_line_end);
    let headers_end = u32::from(request.headers_end);
    let min_first_line =
        if request.line == INJECT_TRACEPARENT { http::MIN_REQUEST_LINE } else { response::MIN_STATUS_LINE };
    if rle < min_first_line || headers_end < rle + 2 || headers_end > MAX_CAPTURE as u32 {
        return skip(skip_reason::NOT_REQUEST_START);
    }
    let msg = ctx.msg;
    let size = ctx.size();
    // The first part of a send larger than the socket layer takes at once
    // still holds the header block; anything less is not what was scanned.
    if size < headers_end {
        return skip(skip_reason::HEADERS_INCOMPLETE);
    }
    if !has_room(ctx, size + LONGEST_LINE) {
        return skip(skip_reason::SEND_BUFFER_LOW);
    }
    // SAFETY: msg is this program's context; the helper checks the range.
    if unsafe { bpf_msg_pull_data(msg, 0, headers_end, 0) } != 0 {
        return skip(skip_reason::PUSH_FAILED);
    }
    // The tracepoint scanned the application's buffer; these are the bytes
    // that are going out. They must agree where the decision depends on them.
    let same = msg_bytes::<8>(ctx, 0).map(u64::from_le_bytes) == Some(request.head)
        && msg_bytes::<2>(ctx, rle - 2) == Some(*b"\r\n")
        && msg_bytes::<4>(ctx, headers_end - 4) == Some(*b"\r\n\r\n");
    if !same {
        return skip(skip_reason::NOT_REQUEST_START);
    }

    let ids = &request.ctx;
    let sampled = ids.flags & ctx_flags::SAMPLED != 0;
    match request.line {
        INJECT_TRACEPARENT => insert(ctx, rle, &http::traceparent_line(&ids.trace_id, &ids.span_id, sampled)),
        response::mode::TRACERESPONSE => {
            insert(ctx, rle, &response::traceresponse_line(&ids.trace_id, &ids.span_id, sampled))
        }
        _ => insert(ctx, rle, &response::x_trace_id_line(&ids.trace_id)),
    }
}

/// Inserts `line` at offset `rle` of the message (after its first line).
#[inline(always)]
fn insert<const N: usize>(ctx: &SkMsgContext, rle: u32, line: &[u8; N]) -> Result<(), Decision> {
    const { assert!(N <= LONGEST_LINE as usize) };
    let msg = ctx.msg;
    let len = N as u32;
    // SAFETY: msg is this program's context; the helper checks the range.
    if unsafe { bpf_msg_push_data(msg, rle, len, 0) } != 0 {
        return skip(skip_reason::PUSH_FAILED);
    }
    // The pushed bytes are uninitialised until written: from here on every
    // failure must take them out again.
    //
    // The push split the message's first scatterlist element in three
    // (request line, new line, rest). tcp_bpf sends each element with its
    // own tcp_sendmsg call, and Nagle then holds everything after the short
    // request line until the peer's delayed ACK: ~40 ms per request. Pulling
    // across all three merges them into one element again (a copy of the
    // first element, at most a few pages). If that allocation fails, the
    // line alone is pulled: correct, only slower.
    let size = ctx.size();
    let merge_end = if rle + len < size { rle + len + 1 } else { rle + len };
    // SAFETY: as above.
    let merged = unsafe { bpf_msg_pull_data(msg, 0, merge_end, 0) } == 0;
    let (pulled, at) = if merged {
        (true, rle)
    } else {
        // SAFETY: as above.
        let line_only = unsafe { bpf_msg_pull_data(msg, rle, rle + len, 0) } == 0;
        (line_only, 0)
    };
    let dst = ctx.data() + (black_box(at) & OFF_MASK) as usize;
    if pulled && dst + N <= ctx.data_end() {
        // SAFETY: [dst, dst + N) is inside the message, checked above.
        unsafe { core::ptr::copy_nonoverlapping(line.as_ptr(), dst as *mut u8, N) };
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { bpf_msg_pop_data(msg, rle, len, 0) } == 0 {
        return skip(skip_reason::PUSH_FAILED);
    }
    Err(Decision::Drop)
}
