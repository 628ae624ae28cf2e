//! The connection tracker's view of the outside world: the kernel maps, the
//! sockets of traced processes, and which connections are the agent's own.
use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use waggle_common::{ConnInfo, SockKey};

use crate::{clock::Clock, conntrack::ConnEnvironment, discovery, metrics::Metrics, probes::ConnMaps};

/// Kernel maps + /proc, as the connection tracker sees them.
pub(super) struct LiveEnv {
    pub(super) maps: ConnMaps,
    /// Local addresses of the agent's own TCP sockets.
    own_addrs: HashSet<SocketAddr>,
    /// CLOCK_MONOTONIC ns when `own_addrs` was read.
    own_addrs_read_ns: u64,
    /// Addresses of the agent's network namespace.
    local_ips: HashSet<IpAddr>,
    metrics: Arc<Metrics>,
}

impl LiveEnv {
    pub(super) fn new(maps: ConnMaps, metrics: Arc<Metrics>) -> LiveEnv {
        LiveEnv {
            maps,
            own_addrs: HashSet::new(),
            own_addrs_read_ns: 0,
            local_ips: discovery::local_interface_ips(),
            metrics,
        }
    }
}

impl ConnEnvironment for LiveEnv {
    fn mute(&mut self, key: SockKey, conn_id: u64) {
        if let Err(e) = self.maps.mute(key, conn_id) {
            tracing::debug!(error = %e, tgid = key.tgid, fd = key.fd, "muting connection in kernel");
        }
    }

    fn mute_tls(&mut self, key: SockKey, conn_id: u64) {
        if let Err(e) = self.maps.mute_tls(key, conn_id) {
            tracing::debug!(error = %e, tgid = key.tgid, fd = key.fd, "muting TLS plaintext in kernel");
        }
    }

    fn track(&mut self, key: SockKey, info: ConnInfo) {
        if let Err(e) = self.maps.track_conn(key, info) {
            tracing::debug!(error = %e, tgid = key.tgid, fd = key.fd, "tracking connection in kernel");
        }
    }

    fn forget(&mut self, key: SockKey, conn_id: u64) {
        let _ = self.maps.forget(key, conn_id);
    }

    fn socket_addrs(&mut self, pid: u32, fd: u32) -> Option<(SocketAddr, SocketAddr)> {
        discovery::socket_info(pid, fd).map(|info| (info.local, info.peer))
    }

    fn is_own_socket(&mut self, peer: SocketAddr, opened_ns: u64) -> bool {
        if self.own_addrs.contains(&peer) {
            return true;
        }
        // Only a peer in the agent's own network namespace can be the agent
        // (a collector on this node sees the agent's loopback, pod or node
        // address); anything else is a different machine or pod.
        if !peer.ip().is_loopback() && !self.local_ips.contains(&peer.ip()) {
            return false;
        }
        // Re-read only when the cached set predates the connection: a set read
        // after it opened already holds our end of it, if it is ours.
        if self.own_addrs_read_ns <= opened_ns {
            Metrics::inc(&self.metrics.own_socket_scans);
            self.own_addrs_read_ns = Clock::now_monotonic_ns();
            self.own_addrs = discovery::own_tcp_addrs();
            self.local_ips = discovery::local_interface_ips();
        }
        self.own_addrs.contains(&peer)
    }
}
