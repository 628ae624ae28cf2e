//! Outgoing traceparent: a sockops program on the cgroup-v2 root puts every
//! actively established TCP socket into CLIENT_SOCKS, and the sk_msg program
//! attached to that map runs on each of their sends, in the sender's
//! context. It inserts `traceparent: ...\r\n` right after the request line
//! only when the syscall tracepoint left an undecided INJECT_PENDING entry
//! for this very send (a tracked client connection, request start, no
//! response pending), and only after re-checking the bytes themselves.
//! Every other message passes untouched after one hash lookup.
use core::{
    ffi::c_void,
    hint::black_box,
    ptr::{addr_of, read_volatile},
};

use aya_ebpf::{
    bindings::{sk_action::SK_DROP, BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB},
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{
            bpf_msg_pop_data, bpf_msg_pull_data, bpf_msg_push_data, bpf_probe_read_kernel,
        },
    },
    programs::{SkMsgContext, SockOpsContext},
};
use waggle_common::{
    ctx_flags, skip_reason, Counter, InjectRequest, SockTuple, SyscallId, MAX_CAPTURE,
    TRACEPARENT_LINE_LEN,
};

use crate::{
    count, count_index, http, trace, CLIENT_SOCKS, INJECT_PENDING, MSG_SCRATCH, PENDING,
    PROPAGATION,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
/// Bytes of a message scanned for the request line and an existing
/// traceparent: one page, so pulling them never needs more than an order-0
/// allocation.
const MSG_SCAN: u32 = MAX_CAPTURE as u32;
const LINE: u32 = TRACEPARENT_LINE_LEN as u32;
/// Shortest request line: "GET / HTTP/1.1\r\n".
const MIN_REQUEST_LINE: u32 = 16;

const _: () = assert!(http::LINE_LEN == TRACEPARENT_LINE_LEN);

pub(crate) fn sockops(ctx: &SockOpsContext) {
    if ctx.op() != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        return;
    }
    let family = ctx.family();
    let mut key = SockTuple {
        family,
        local_port: ctx.local_port(),
        remote_port: ctx.remote_port(),
        ..SockTuple::default()
    };
    if family == AF_INET {
        key.local_ip[0] = ctx.local_ip4();
        key.remote_ip[0] = ctx.remote_ip4();
    } else if family == AF_INET6 {
        let ops = ctx.ops;
        // Word by word: the verifier refuses loads through a ctx pointer
        // that was moved to the array first, which a whole-array copy does.
        // SAFETY: in-bounds fields of this program's context.
        unsafe {
            key.local_ip = [
                read_volatile(addr_of!((*ops).local_ip6[0])),
                read_volatile(addr_of!((*ops).local_ip6[1])),
                read_volatile(addr_of!((*ops).local_ip6[2])),
                read_volatile(addr_of!((*ops).local_ip6[3])),
            ];
            key.remote_ip = [
                read_volatile(addr_of!((*ops).remote_ip6[0])),
                read_volatile(addr_of!((*ops).remote_ip6[1])),
                read_volatile(addr_of!((*ops).remote_ip6[2])),
                read_volatile(addr_of!((*ops).remote_ip6[3])),
            ];
        }
    } else {
        return;
    }
    // SAFETY: ctx.ops is the live context pointer of this program.
    if CLIENT_SOCKS
        .update(key, unsafe { &mut *ctx.ops }, u64::from(BPF_ANY))
        .is_err()
    {
        // The map is full, or the socket already belongs to another sk_msg
        // program; its requests are counted as SkipNotInSockhash.
        count(Counter::MapInsertFailed);
    }
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
        // Later chunks of a large send, or a retry of a refused one.
        return None;
    }
    // SAFETY: as above; copied out.
    let request = unsafe { *req };
    match decide(ctx, pid_tgid, &request) {
        Ok(()) => {
            // SAFETY: as above.
            unsafe { (*req).injected = 1 };
            count(Counter::Injected);
            None
        }
        Err(Decision::Skip(reason)) => {
            // SAFETY: as above.
            unsafe { (*req).skipped = reason as u8 + 1 };
            count_index(Counter::skip(reason));
            None
        }
        Err(Decision::Drop) => {
            // SAFETY: as above.
            unsafe { (*req).skipped = skip_reason::PUSH_FAILED as u8 + 1 };
            count(Counter::SkipPushFailed);
            Some(SK_DROP)
        }
    }
}

#[inline(always)]
fn skip(reason: u32) -> Result<(), Decision> {
    Err(Decision::Skip(reason))
}

#[inline(always)]
fn decide(ctx: &SkMsgContext, pid_tgid: u64, request: &InjectRequest) -> Result<(), Decision> {
    // The entry must belong to the send this thread is in now: its syscall
    // entry left PENDING too (a stale entry never meets a later send).
    let Some(p) = PENDING.get_ptr(pid_tgid) else {
        return skip(skip_reason::NOT_REQUEST_START);
    };
    // SAFETY: p points at a live PENDING value.
    let (syscall, aux) = unsafe { ((*p).syscall, (*p).aux) };
    let is_send = syscall == SyscallId::Write as u8
        || syscall == SyscallId::Sendto as u8
        || syscall == SyscallId::Writev as u8
        || syscall == SyscallId::Sendmsg as u8;
    if !is_send || aux == 0 {
        return skip(skip_reason::NOT_REQUEST_START);
    }

    let msg = ctx.msg;
    let size = ctx.size();
    if size < MIN_REQUEST_LINE {
        return skip(skip_reason::NO_REQUEST_LINE_END);
    }
    let want = if size > MSG_SCAN { MSG_SCAN } else { size };
    // SAFETY: msg is this program's context; the helper checks the range.
    if unsafe { bpf_msg_pull_data(msg, 0, want, 0) } != 0 {
        return skip(skip_reason::PUSH_FAILED);
    }
    let data = ctx.data();
    let end = ctx.data_end();
    if data + MIN_REQUEST_LINE as usize > end {
        return skip(skip_reason::NO_REQUEST_LINE_END);
    }
    let avail = (end - data) as u32;
    let n = if avail > want { want } else { avail };
    let Some(buf) = MSG_SCRATCH.get_ptr_mut(0) else {
        return skip(skip_reason::PUSH_FAILED);
    };
    let buf = buf.cast::<u8>();
    // Masked for the verifier: 1..=MSG_SCAN.
    let n = ((n - 1) & (MSG_SCAN - 1)) + 1;
    // SAFETY: buf holds more than MSG_SCAN bytes; the source is the pulled, linear
    // message data [data, data + n).
    if unsafe { bpf_probe_read_kernel(buf.cast::<c_void>(), n, data as *const c_void) } != 0 {
        return skip(skip_reason::PUSH_FAILED);
    }
    // SAFETY: buf holds at least 8 bytes; n >= MIN_REQUEST_LINE of them are
    // this message's.
    let head = unsafe { core::ptr::read_unaligned(buf.cast::<u64>()) };
    if !http::is_request_start(head, u64::from(n)) {
        // TLS, another protocol, or bytes the tracepoint did not see.
        return skip(skip_reason::NOT_REQUEST_START);
    }
    let sc = trace::scan(trace::SOURCE_MSG, n);
    let rle = sc.request_line_end;
    if rle == 0 {
        return skip(skip_reason::NO_REQUEST_LINE_END);
    }
    if rle < MIN_REQUEST_LINE {
        return skip(skip_reason::NOT_REQUEST_START);
    }
    // Masked after the subtraction, where the verifier needs the bound
    // (rle >= MIN_REQUEST_LINE, so the masks change nothing).
    let tail_at = black_box(rle - 11) & (MSG_SCAN - 1);
    // SAFETY: tail_at + 10 < MSG_SCAN + 64, the size of MSG_SCRATCH's value.
    let tail = unsafe { core::ptr::read_unaligned(buf.add(tail_at as usize).cast::<[u8; 10]>()) };
    if !http::request_line_is_http1(&tail) {
        return skip(skip_reason::NOT_REQUEST_START);
    }
    if sc.traceparent_lines != 0 || sc.name_cut_off() {
        return skip(skip_reason::ALREADY_HAS_TRACEPARENT);
    }
    // MSG_SCRATCH is per CPU, not per task: confirm on the message itself
    // that the insertion point follows a CRLF.
    let at = ctx.data() + (black_box(rle - 2) & (MSG_SCAN - 1)) as usize;
    if at + 2 > ctx.data_end() {
        return skip(skip_reason::NO_REQUEST_LINE_END);
    }
    // SAFETY: [at, at + 2) was checked against data_end just above.
    let crlf = unsafe { (*(at as *const u8), *((at + 1) as *const u8)) };
    if crlf != (b'\r', b'\n') {
        return skip(skip_reason::NOT_REQUEST_START);
    }

    let sampled = request.ctx.flags & ctx_flags::SAMPLED != 0;
    let line = http::traceparent_line(&request.ctx.trace_id, &request.ctx.span_id, sampled);
    // SAFETY: msg is this program's context; the helper checks the range.
    if unsafe { bpf_msg_push_data(msg, rle, LINE, 0) } != 0 {
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
    let merge_end = if rle + LINE < size {
        rle + LINE + 1
    } else {
        rle + LINE
    };
    // SAFETY: as above.
    let merged = unsafe { bpf_msg_pull_data(msg, 0, merge_end, 0) } == 0;
    let (pulled, at) = if merged {
        (true, rle)
    } else {
        // SAFETY: as above.
        let line_only = unsafe { bpf_msg_pull_data(msg, rle, rle + LINE, 0) } == 0;
        (line_only, 0)
    };
    let dst = ctx.data() + (black_box(at) & (MSG_SCAN - 1)) as usize;
    if pulled && dst + LINE as usize <= ctx.data_end() {
        // SAFETY: [dst, dst + LINE) is inside the message, checked above.
        unsafe { core::ptr::copy_nonoverlapping(line.as_ptr(), dst as *mut u8, LINE as usize) };
        return Ok(());
    }
    // SAFETY: as above.
    if unsafe { bpf_msg_pop_data(msg, rle, LINE, 0) } == 0 {
        return skip(skip_reason::PUSH_FAILED);
    }
    Err(Decision::Drop)
}
