//! The agent's own connections (its export traffic), known from its
//! connect() calls, so that a collector on this node accepting one of them
//! is not traced: tracing it would export spans of the export, forever.
//!
//! OWN_FLOWS holds each connection from the end of the agent's connect()
//! until it closes the socket. On loopback the whole handshake, and the
//! collector's accept(), can happen inside that connect() call, before
//! the connection is known: OWN_CONNECTING names, per destination, the
//! agent thread whose connect() to it is still running, and an accepted
//! connection to a destination the agent is connecting to right now counts
//! as the agent's. (Two agent threads connecting to the same destination at
//! the same instant can clear each other's mark; the cost is one span of
//! export traffic, not a loop.)
use aya_ebpf::programs::TracePointContext;
use waggle_common::{AddrBytes, Counter, Pending, SyscallId};

use crate::{
    helpers::{arg, count, stash, take_pending},
    maps::{OWN_CONNECTING, OWN_FLOWS},
    socket_facts::{is_inet, read_peer, walk, Ends, Walk},
};

const EINPROGRESS: i64 = 115;

/// connect() by the agent: count it as running until its exit.
// A subprogram: the agent-only path keeps its stack out of the callers'.
#[inline(never)]
pub(crate) fn connect_enter(ctx: &TracePointContext, pid_tgid: u64) -> Option<()> {
    let ptr = arg(ctx, 1);
    if ptr == 0 {
        return None;
    }
    let dest = read_peer(ptr, arg(ctx, 2))?;
    if !is_inet(dest.family) {
        return None;
    }
    let p = Pending {
        fd: arg(ctx, 0) as u32,
        syscall: SyscallId::Connect as u8,
        family: dest.family as u8,
        port: dest.peer_port,
        addr: AddrBytes(dest.peer_addr),
        ..Pending::default()
    };
    if stash(pid_tgid, &p) && OWN_CONNECTING.insert(dest.peer_only(), pid_tgid, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
    Some(())
}

/// The agent's connect() returned: remember the connection, then stop
/// counting the call (in that order, so an accept on another CPU always
/// finds one or the other).
// A subprogram: the agent-only path keeps its stack out of the callers'.
#[inline(never)]
pub(crate) fn connect_exit(ctx: &TracePointContext, pid_tgid: u64) -> Option<()> {
    let p = take_pending(pid_tgid, SyscallId::Connect)?;
    let ret = arg(ctx, 0) as i64;
    if ret == 0 || ret == -EINPROGRESS {
        if let Walk::InetStream(ends) = walk(p.fd) {
            if OWN_FLOWS.insert(ends.flow(), 1u8, 0).is_err() {
                count(Counter::MapInsertFailed);
            }
        }
    }
    let dest =
        Ends { family: u16::from(p.family), peer_port: p.port, peer_addr: p.addr.0, ..Ends::default() }.peer_only();
    if let Some(thread) = OWN_CONNECTING.get_ptr(dest) {
        // SAFETY: points at a live map value.
        if unsafe { *thread } == pid_tgid {
            let _ = OWN_CONNECTING.remove(dest);
        }
    }
    Some(())
}

/// close() by the agent: forget the connection if it was one.
// A subprogram: the agent-only path keeps its stack out of the callers'.
#[inline(never)]
pub(crate) fn close_enter(fd: u32) {
    if let Walk::InetStream(ends) = walk(fd) {
        let _ = OWN_FLOWS.remove(ends.flow());
    }
}

/// An accepted connection that comes from the agent.
#[inline(always)]
pub(crate) fn is_own(ends: &Ends) -> bool {
    if OWN_FLOWS.get_ptr(ends.reversed_flow()).is_some() {
        return true;
    }
    OWN_CONNECTING.get_ptr(ends.local_as_peer()).is_some()
}
