//! Tracking sockets that existed before the probes attached (found in /proc
//! at start-up, or inherited by a forked process), and the reads already
//! waiting on them.
use std::collections::{HashMap, HashSet};

use waggle_common::{Pending, Role, SockKey};

use super::env::LiveEnv;
use crate::{
    conntrack::ConnTracker,
    discovery::{self, ResourceResolver, SeedSocket, SeedState},
};

/// Start tracking sockets found in /proc: listeners so the kernel knows
/// accepts on them are TCP, established connections under fresh ids.
/// Returns (listeners, connections) seeded.
pub(super) fn seed_sockets(
    sockets: &[SeedSocket],
    now_ns: u64,
    tracker: &mut ConnTracker,
    env: &mut LiveEnv,
    resolver: &mut ResourceResolver,
) -> (usize, usize) {
    let (mut listeners, mut conns) = (0, 0);
    for s in sockets {
        // Name the process now, while it is alive: a client that exits
        // right after its next request would otherwise be gone from /proc
        // when that request's span is built (no open event names it).
        resolver.observe(s.pid, &[]);
        let key = SockKey { tgid: s.pid, fd: s.fd };
        match s.state {
            SeedState::Listen => {
                if let Err(e) = env.maps.track_inet_socket(key) {
                    tracing::debug!(error = %e, pid = s.pid, fd = s.fd, "seeding listener");
                } else {
                    listeners += 1;
                }
            }
            SeedState::Established => {
                let role = if s.is_server { Role::Server } else { Role::Client };
                tracker.seed(SockKey { tgid: s.pid, fd: s.fd }, role, s.local, s.peer, env, now_ns);
                conns += 1;
            }
        }
    }
    adopt_blocked_calls(sockets, now_ns, env);
    (listeners, conns)
}

/// A thread that was already waiting in a read on a seeded connection, or
/// in an accept on a seeded listener, when the probes attached has no enter
/// record, so its call would be lost (typically the next request on a
/// keep-alive connection, or a server's first connection). Write the record
/// the enter handler would have written, from /proc/<pid>/task/<tid>/syscall,
/// and take it back if the call ended meanwhile.
fn adopt_blocked_calls(sockets: &[SeedSocket], now_ns: u64, env: &mut LiveEnv) {
    let mut fds_by_pid: HashMap<u32, (HashSet<u32>, HashSet<u32>)> = HashMap::new();
    for s in sockets {
        let (connections, listeners) = fds_by_pid.entry(s.pid).or_default();
        match s.state {
            SeedState::Established => connections.insert(s.fd),
            SeedState::Listen => listeners.insert(s.fd),
        };
    }
    for (pid, (connections, listeners)) in fds_by_pid {
        for call in discovery::blocked_calls(pid, &connections, &listeners) {
            let pending = Pending {
                enter_ns: now_ns,
                ptr: call.ptr,
                len: call.len,
                fd: call.fd,
                syscall: call.syscall as u8,
                ..Pending::default()
            };
            if let Err(e) = env.maps.stash_blocked_call(pid, call.tid, pending) {
                tracing::debug!(error = %e, pid, tid = call.tid, "adopting a blocked call");
                continue;
            }
            if !discovery::still_blocked(pid, &call) {
                env.maps.unstash_blocked_call(pid, call.tid);
            }
        }
    }
}
