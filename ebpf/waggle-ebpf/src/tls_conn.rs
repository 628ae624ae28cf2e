//! The TLS probes' state and the data path's side of them: which SSL call
//! a thread is in, which connection an SSL object runs on, and the check
//! data.rs's enter handler makes on every syscall of a tracked connection
//! (`ciphertext`). The probes themselves are in tls.rs.
use aya_ebpf::{macros::map, maps::LruHashMap, programs::TracePointContext, Global};
use waggle_common::{
    tls::{
        conn_tls, is_handshake_record, SslConn, SslKey, TlsCall, NO_FD, TLS_CALLS_MAX_ENTRIES, TLS_PENDING_MAX_ENTRIES,
        TLS_SSL_CONNS_MAX_ENTRIES,
    },
    ConnInfo, Counter, SockKey, SyscallId,
};

use crate::{
    helpers::{arg, count},
    maps::CONNS,
    trace::peek_user,
    user_copy::shape,
};

/// 1 when the agent runs with `--tls on`: only then does the syscall path
/// look for SSL calls.
#[unsafe(no_mangle)]
pub(crate) static TLS_PROBES: Global<u32> = Global::new(0);

/// pid_tgid -> the SSL call the thread is in. LRU: a call whose return
/// never comes (thread killed, probe detached mid-call) ages out.
#[map]
pub(crate) static TLS_CALLS: LruHashMap<u64, TlsCall> = LruHashMap::with_max_entries(TLS_CALLS_MAX_ENTRIES, 0);

/// (tgid, SSL *) -> the connection that object last did syscalls on.
#[map]
pub(crate) static TLS_SSL_CONNS: LruHashMap<SslKey, SslConn> =
    LruHashMap::with_max_entries(TLS_SSL_CONNS_MAX_ENTRIES, 0);

/// pid_tgid -> `SSL *` (tls.rs's `waggle_ssl_return_bind`): the latest SSL
/// object of a statically linked OpenSSL (node) that returned on this thread
/// with no known connection. Node's TLS runs over memory BIOs, so no syscall
/// happens inside its SSL calls; but a new object's first call drives the
/// handshake and the thread writes the resulting hello right after it
/// returns (client: ClientHello; server: ServerHello). That write binds the
/// object to its connection once; later calls find it in TLS_SSL_CONNS.
#[map]
pub(crate) static TLS_PENDING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(TLS_PENDING_MAX_ENTRIES, 0);

/// From data.rs's enter handler, for a read/write-family syscall `id` on the
/// tracked connection `fd`: true when the connection's plaintext comes from
/// the TLS probes, so this syscall's ciphertext must not be copied.
#[inline(always)]
pub(crate) fn ciphertext(
    ctx: &TracePointContext,
    id: SyscallId,
    pid_tgid: u64,
    tgid: u32,
    fd: u32,
    info: *mut ConnInfo,
) -> bool {
    if TLS_PROBES.load() == 0 {
        return false;
    }
    if let Some(call) = TLS_CALLS.get_ptr_mut(pid_tgid) {
        // SAFETY: call points at this thread's live TLS_CALLS value (only
        // this thread writes it); info at a live CONNS value.
        unsafe {
            if (*call).fd == NO_FD {
                (*call).fd = fd;
                remember(tgid, (*call).ssl, fd, (*info).conn_id);
                (*info).tls |= conn_tls::SEEN;
            }
        }
    } else if is_write(id) {
        // SAFETY: info points at a live CONNS value.
        if unsafe { (*info).tls } & conn_tls::SEEN == 0 {
            handshake_write(ctx, id, pid_tgid, tgid, fd, info);
        }
    }
    // SAFETY: info points at a live CONNS value.
    unsafe { (*info).tls & conn_tls::SEEN != 0 }
}

/// The send family whose buffer can carry a TLS record (sendfile cannot).
#[inline(always)]
fn is_write(id: SyscallId) -> bool {
    matches!(id, SyscallId::Write | SyscallId::Sendto | SyscallId::Writev | SyscallId::Sendmsg)
}

/// A send outside any SSL call on a connection no SSL object is bound to:
/// when the thread has a pending SSL object (one lookup, nothing else
/// otherwise) and the bytes start a TLS handshake record, this is that
/// object's hello: bind it here.
#[inline(always)]
fn handshake_write(ctx: &TracePointContext, id: SyscallId, pid_tgid: u64, tgid: u32, fd: u32, info: *mut ConnInfo) {
    let Some(ssl) = TLS_PENDING.get_ptr(pid_tgid) else {
        return;
    };
    // SAFETY: ssl points at this thread's live TLS_PENDING value; copied out.
    let ssl = unsafe { *ssl };
    let Some((head, _)) = peek_user(shape(id), arg(ctx, 1), arg(ctx, 2)) else {
        return;
    };
    if !is_handshake_record(&head) {
        return;
    }
    let _ = TLS_PENDING.remove(pid_tgid);
    // SAFETY: info points at a live CONNS value.
    unsafe {
        remember(tgid, ssl, fd, (*info).conn_id);
        (*info).tls |= conn_tls::SEEN;
    }
    count(Counter::TlsHandshakeBound);
}

/// True when the SSL object is remembered on a connection that is still
/// open: allocators reuse a freed object's address for the next one, whose
/// stale entry must not pass for a binding.
#[inline(always)]
pub(crate) fn bound_live(tgid: u32, ssl: u64) -> bool {
    let Some(known) = TLS_SSL_CONNS.get_ptr(SslKey { tgid, _pad: 0, ssl }) else {
        return false;
    };
    // SAFETY: known points at a live map value; copied out.
    let known = unsafe { *known };
    match CONNS.get_ptr(SockKey { tgid, fd: known.fd }) {
        // SAFETY: info points at a live CONNS value.
        Some(info) => unsafe { (*info).conn_id == known.conn_id },
        None => false,
    }
}

/// The thread's latest SSL object with no connection, for its handshake
/// write to bind.
#[inline(always)]
pub(crate) fn pend(pid_tgid: u64, ssl: u64) {
    if TLS_PENDING.insert(pid_tgid, ssl, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
}

/// SSL object -> connection, written only when it changed.
#[inline(always)]
pub(crate) fn remember(tgid: u32, ssl: u64, fd: u32, conn_id: u64) {
    let key = SslKey { tgid, _pad: 0, ssl };
    if let Some(known) = TLS_SSL_CONNS.get_ptr(key) {
        // SAFETY: known points at a live map value.
        let known = unsafe { *known };
        if known.fd == fd && known.conn_id == conn_id {
            return;
        }
    }
    if TLS_SSL_CONNS.insert(key, SslConn { fd, _pad: 0, conn_id }, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
}
