//! `--trace-response-header` on the syscall path: which sends on server
//! connections start an HTTP/1.x response, and whether the line naming the
//! request's server span goes in (the sk_msg program in sock.rs inserts it).
//!
//! - Which sockets: sockops PASSIVE_ESTABLISHED runs in softirq, where the
//!   accepting process is unknown, so the listening port decides: a traced
//!   process with a mode registers its ports in SERVER_PORTS at listen()
//!   (sockops TCP_LISTEN_CB, in the process) and at each accept() (servers
//!   that listened before the agent started: their next connections).
//! - Where a response starts: `ConnInfo::req_remaining` counts, on server
//!   connections, what the application has yet to send of its current
//!   response (header block + Content-Length, from what each send returned,
//!   `data::account_send`); only a send at zero whose first bytes are a
//!   status line starts one. A response whose end cannot be told (chunked,
//!   close-delimited, 101) sets BOUNDARY_LOST: nothing more goes into that
//!   connection.
//! - Whose ids: the thread's THREAD_CTX entry for this very connection (the
//!   server span the agent exports), read before the response ends it.
//!
//! Nothing here runs unless the agent set RUNTIME[RESPONSE_HEADER], which
//! it does only where its start-up FIONREAD check says server sockets may
//! stay in a sockmap.
use core::ffi::c_void;

use waggle_common::{
    conn_flags, ctx_flags,
    http::{
        self,
        response::{self, ResponseScan},
    },
    runtime, verdict, ConnInfo, Counter, InjectRequest, TraceCtx, MAX_CAPTURE,
};

use crate::{
    helpers::{count, count_index, repeat, zero},
    maps::{FILTER, RESP_SCAN, RUNTIME, SERVER_PORTS, TRACE_VERDICT},
    scan::step_scratch,
    trace::{agent_alive, copy_send_head, head_word, peek_user, ClientSend},
    user_copy::Shape,
};

/// The response-header mode of process `tgid`: 0 (off) unless the agent
/// turned the feature on.
#[inline(always)]
pub(crate) fn mode(tgid: u32) -> u8 {
    let Some(setting) = RUNTIME.get(runtime::RESPONSE_HEADER) else {
        return response::mode::OFF;
    };
    let setting = *setting;
    if setting == 0 {
        return response::mode::OFF;
    }
    if setting & runtime::RESPONSE_PER_PROCESS != 0 && FILTER.load() != 0 {
        // SAFETY: a u8 value of this map, copied out at once.
        if let Some(own) = unsafe { TRACE_VERDICT.get(tgid) }.and_then(|v| verdict::response_mode(*v)) {
            return own;
        }
    }
    setting as u8
}

/// The current process listens on (or accepted on) local `port`: its
/// connections are to enter the sockmap when it has a mode.
#[inline(always)]
pub(crate) fn note_port(tgid: u32, port: u16) {
    if port == 0 || mode(tgid) == response::mode::OFF {
        return;
    }
    let key = u32::from(port);
    if SERVER_PORTS.get_ptr(key).is_some() {
        return;
    }
    if SERVER_PORTS.insert(key, 1u8, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
}

/// A connection accepted on local `port` (sockops, softirq): whether it
/// enters the sockmap.
#[inline(always)]
pub(crate) fn wants_accepted(port: u32) -> bool {
    match RUNTIME.get(runtime::RESPONSE_HEADER) {
        Some(setting) if *setting != 0 => SERVER_PORTS.get_ptr(port).is_some(),
        _ => false,
    }
}

/// One step of the response header scan over this CPU's SCRATCH payload;
/// as `trace::scan_step`, its state in a per-CPU map.
extern "C" fn scan_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `scan` gave it: a u64 on the
    // caller's stack.
    let len = unsafe { *ctx.cast::<u64>() };
    let Some(st) = RESP_SCAN.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: st points at this CPU's RESP_SCAN value, used by this program only.
    let st = unsafe { &mut *st };
    step_scratch(&mut st.scan, &mut st.pos, len)
}

/// Scans the first `len` (<= MAX_CAPTURE) bytes of the SCRATCH payload.
#[inline(always)]
fn scan(len: u32) -> ResponseScan {
    let Some(st) = RESP_SCAN.get_ptr_mut(0) else {
        return ResponseScan::default();
    };
    // SAFETY: st points at this CPU's RESP_SCAN value (an 8-aligned map value).
    unsafe { zero(st) };
    let mut n = u64::from(if len > MAX_CAPTURE as u32 { MAX_CAPTURE as u32 } else { len });
    repeat::<true>(n as u32, scan_step, (&mut n as *mut u64).cast(), 0, |_| 0);
    // SAFETY: as above; copied out.
    unsafe { (*st).scan }
}

/// A send's syscall entry on a server connection of a process whose mode
/// is `mode` (not OFF), before the response (if it is one) ends the
/// thread's request: the line to insert, or nothing.
#[inline(always)]
pub(crate) fn send_enter(pid_tgid: u64, info: *mut ConnInfo, mode: u8, shape: Shape, ptr: u64, len: u64) -> ClientSend {
    let mut out = ClientSend::default();
    // SAFETY: info points at a live CONNS value; copied out. Only threads of
    // its process send on it.
    let conn = unsafe { *info };
    if conn.req_remaining != 0 {
        // The rest of the current response.
        return out;
    }
    let (raw, n) = peek_user(shape, ptr, len).unwrap_or_default();
    let status = response::status_code(&raw, n);
    if conn.flags & conn_flags::BOUNDARY_LOST != 0 {
        if status.is_some() {
            count_index(Counter::response_skip(response::skip::BOUNDARY_LOST));
        }
        return out;
    }
    let Some(status) = status else {
        // At a boundary, but no status line: not (or no longer) plain
        // HTTP/1.x responses.
        // SAFETY: as above.
        unsafe { (*info).flags |= conn_flags::BOUNDARY_LOST };
        return out;
    };
    let Some((_, copied)) = copy_send_head(shape, ptr, len) else {
        return out;
    };
    let sc = scan(copied);

    // The request this answers, if the kernel started its server span.
    let mut server: Option<TraceCtx> = None;
    if let Some(tc) = crate::trace::thread_ctx(pid_tgid) {
        // SAFETY: tc points at a live THREAD_CTX value; copied out.
        let tc = unsafe { *tc };
        if tc.conn_id == conn.conn_id {
            server = Some(tc);
        }
    }
    let head_request = matches!(&server, Some(tc) if tc.flags & ctx_flags::HEAD_REQUEST != 0);
    match response::response_len(status, head_request, &sc.head) {
        Some(total) => {
            // SAFETY: as above.
            unsafe { (*info).req_remaining = total };
            out.request_start = true;
        }
        // SAFETY: as above.
        None => unsafe { (*info).flags |= conn_flags::BOUNDARY_LOST },
    }
    let decided = match response::decide(status, &sc, server.is_some()) {
        Ok(()) if !agent_alive() => Err(response::skip::AGENT_STALLED),
        other => other,
    };
    if let Err(reason) = decided {
        count_index(Counter::response_skip(reason));
        return out;
    }
    let Some(tc) = server else {
        return out;
    };
    out.request = Some(InjectRequest {
        ctx: tc,
        head: head_word(&raw),
        request_line_end: sc.head.request_line_end as u16,
        headers_end: sc.head.headers_end as u16,
        injected: 0,
        skipped: 0,
        line: mode,
        _pad: 0,
    });
    out
}

const _: () = assert!(http::response::MIN_STATUS_LINE >= 14);
