//! TLS plaintext at the TLS library: uprobes on OpenSSL's `SSL_read`,
//! `SSL_write`, `SSL_read_ex` and `SSL_write_ex` (1.1 and 3 share their
//! ABI), attached by the agent once per library file.
//!
//! - An SSL call's entry leaves a `TlsCall` for its thread (TLS_CALLS).
//! - A read/write syscall on a tracked connection while that call runs
//!   (`tls_conn::ciphertext`, from data.rs's enter handler) names the connection: the
//!   call learns its descriptor, the SSL object is remembered on it
//!   (TLS_SSL_CONNS, for later calls OpenSSL serves from its buffer without
//!   a syscall), and the connection is marked `conn_tls::SEEN`: from then on
//!   its syscalls carry ciphertext and are dropped there (counted).
//! - The call's return copies the plaintext through the data path's own
//!   `data::emit` into an ordinary data record flagged `DATA_TLS`: same
//!   connection id, same parsers, same server trace context (an incoming
//!   `traceparent` in the plaintext joins the trace).
//!
//! - Executables that link OpenSSL statically over memory BIOs (node) do
//!   no syscall inside their calls: their return program
//!   (`waggle_ssl_return_bind`) leaves an object with no known connection
//!   pending for its thread, and the thread's next handshake-record write
//!   on a connection no object is bound to binds it (tls_conn.rs).
//!
//! The connection is found from the nested syscall rather than from
//! `SSL_set_fd`/`SSL_get_fd`: those miss objects created before the agent
//! started and BIOs set up without a descriptor call, and reading the
//! descriptor out of the SSL/BIO structs would depend on OpenSSL's private
//! layouts. Nothing here is injected: the kernel cannot rewrite plaintext
//! before the library encrypts it.
use aya_ebpf::{
    helpers::bpf_probe_read_user,
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use waggle_common::{
    tls::{conn_tls, kind, SslKey, TlsCall, DATA_TLS, NO_FD},
    Counter, Direction, Role, SockKey, SyscallId,
};

use crate::{
    data::{emit, Capture},
    helpers::{count, current, now_ns},
    maps::CONNS,
    tls_conn::{bound_live, pend, remember, TLS_CALLS, TLS_SSL_CONNS},
    trace,
    user_copy::Shape,
};

#[uprobe]
pub fn waggle_ssl_read(ctx: ProbeContext) -> u32 {
    call_enter(&ctx, 0);
    0
}

#[uprobe]
pub fn waggle_ssl_write(ctx: ProbeContext) -> u32 {
    call_enter(&ctx, kind::WRITE);
    0
}

#[uprobe]
pub fn waggle_ssl_read_ex(ctx: ProbeContext) -> u32 {
    call_enter(&ctx, kind::EX);
    0
}

#[uprobe]
pub fn waggle_ssl_write_ex(ctx: ProbeContext) -> u32 {
    call_enter(&ctx, kind::WRITE | kind::EX);
    0
}

/// Attached to the return of all four functions: the entry record says
/// which one returned.
#[uretprobe]
pub fn waggle_ssl_return(ctx: RetProbeContext) -> u32 {
    call_return::<false>(&ctx);
    0
}

/// The same return for executables that link OpenSSL statically over
/// memory BIOs (node): no syscall runs inside their calls, so an object
/// with no known connection is left pending for the thread's next
/// handshake write (tls_conn.rs's `TLS_PENDING`).
#[uretprobe]
pub fn waggle_ssl_return_bind(ctx: RetProbeContext) -> u32 {
    call_return::<true>(&ctx);
    0
}

/// `int SSL_set_fd(SSL *ssl, int fd)` on a tracked connection: the object
/// is bound to it before its first call (`BINDING_FUNCTIONS`).
#[uprobe]
pub fn waggle_ssl_set_fd(ctx: ProbeContext) -> u32 {
    set_fd(&ctx);
    0
}

#[inline(always)]
fn set_fd(ctx: &ProbeContext) {
    let Some((_, tgid)) = current() else {
        return;
    };
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    // An int: -1 (or any negative) is no descriptor.
    let Some(fd) = ctx.arg::<u64>(1).and_then(|fd| u32::try_from(fd as u32 as i32).ok()) else {
        return;
    };
    let Some(info) = CONNS.get_ptr(SockKey { tgid, fd }) else {
        return;
    };
    // SAFETY: info points at a live CONNS value; read in place.
    remember(tgid, ssl, fd, unsafe { (*info).conn_id });
    count(Counter::TlsFdBound);
}

/// `int SSL_read(SSL *ssl, void *buf, int num)`,
/// `int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes)`
/// (and the write twins).
#[inline(always)]
fn call_enter(ctx: &ProbeContext, kind: u8) {
    let Some((pid_tgid, tgid)) = current() else {
        return;
    };
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    let mut num: u64 = ctx.arg(2).unwrap_or(0);
    if kind & kind::EX == 0 {
        // An int: a negative count moves nothing.
        num = u64::from(num as u32);
    }
    let moved_ptr: u64 = if kind & kind::EX != 0 { ctx.arg(3).unwrap_or(0) } else { 0 };
    let call = TlsCall { ssl, buf, num, moved_ptr, enter_ns: now_ns(), fd: NO_FD, kind, _pad: [0; 3] };
    if TLS_CALLS.insert(pid_tgid, call, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
    if kind & kind::WRITE != 0 {
        response_start(pid_tgid, tgid, ssl, buf, num);
    }
}

/// A server writing on a known connection answers the thread's request:
/// its later client calls are not part of it (as `data::enter` does for
/// plaintext writes, whose ciphertext twin is dropped here).
#[inline(always)]
fn response_start(pid_tgid: u64, tgid: u32, ssl: u64, buf: u64, num: u64) {
    let Some(known) = TLS_SSL_CONNS.get_ptr(SslKey { tgid, _pad: 0, ssl }) else {
        return;
    };
    // SAFETY: known points at a live map value; copied out.
    let known = unsafe { *known };
    let Some(info) = CONNS.get_ptr(SockKey { tgid, fd: known.fd }) else {
        return;
    };
    // SAFETY: info points at a live CONNS value; copied out.
    let info = unsafe { *info };
    if info.conn_id == known.conn_id && Role::from_u8(info.role) == Role::Server {
        trace::end_request(pid_tgid, &info, Shape::Flat, buf, num);
    }
}

#[inline(always)]
fn call_return<const BIND: bool>(ctx: &RetProbeContext) {
    let Some((pid_tgid, tgid)) = current() else {
        return;
    };
    let Some(slot) = TLS_CALLS.get_ptr(pid_tgid) else {
        count(Counter::TlsCallLost);
        return;
    };
    // SAFETY: slot points at this thread's live TLS_CALLS value; copied out
    // before the delete.
    let call = unsafe { *slot };
    let _ = TLS_CALLS.remove(pid_tgid);
    // Whatever it returned (the handshake-driving first call fails with
    // "want read"): latest wins for the thread.
    if BIND && call.fd == NO_FD && !bound_live(tgid, call.ssl) {
        pend(pid_tgid, call.ssl);
    }
    let ret: u64 = ctx.ret();
    let moved = if call.kind & kind::EX != 0 {
        if ret as u32 != 1 {
            return;
        }
        // SAFETY: reads user memory through the fault-tolerant helper.
        match unsafe { bpf_probe_read_user(call.moved_ptr as *const u64) } {
            Ok(n) => n,
            Err(_) => {
                count(Counter::ReadFailed);
                return;
            }
        }
    } else {
        let n = ret as u32 as i32;
        if n <= 0 {
            return;
        }
        n as u64
    };
    // A library never reports more than it was given room for.
    if moved == 0 || moved > call.num {
        return;
    }
    let (fd, conn_id) = if call.fd != NO_FD {
        (call.fd, None)
    } else {
        match TLS_SSL_CONNS.get_ptr(SslKey { tgid, _pad: 0, ssl: call.ssl }) {
            // SAFETY: known points at a live map value; copied out.
            Some(known) => unsafe { ((*known).fd, Some((*known).conn_id)) },
            None => {
                count(Counter::TlsNoConn);
                return;
            }
        }
    };
    let Some(info) = CONNS.get_ptr(SockKey { tgid, fd }) else {
        count(Counter::TlsNoConn);
        return;
    };
    // SAFETY: info points at a live CONNS value; copied out.
    let info = unsafe { *info };
    if conn_id.is_some_and(|id| id != info.conn_id) {
        // The descriptor now belongs to a later connection.
        count(Counter::TlsNoConn);
        return;
    }
    if info.tls & conn_tls::MUTED != 0 {
        count(Counter::TlsPlaintextMuted);
        return;
    }
    let write = call.kind & kind::WRITE != 0;
    emit(
        pid_tgid,
        &info,
        &Capture {
            fd,
            syscall: if write { SyscallId::Write } else { SyscallId::Read },
            direction: if write { Direction::Egress } else { Direction::Ingress },
            shape: Shape::Flat,
            ptr: call.buf,
            len: call.num,
            total: moved,
            enter_ns: call.enter_ns,
            flags: DATA_TLS,
        },
    );
}
