//! Discovery through /proc (procfs crate): process resources and the TCP
//! sockets that existed before the agent started.
//!
//! CONTRACT — implementation pending:
//! - `ResourceResolver::resource(pid) -> Arc<ProcessResource>` (cached per pid
//!   and start time; service.name from the process's OTEL_SERVICE_NAME /
//!   OTEL_RESOURCE_ATTRIBUTES, else script/jar name for interpreters, else the
//!   executable name).
//! - `scan_inet_sockets() -> Vec<SeedSocket>`: every (pid, fd) that refers to
//!   an established or listening TCP socket.
use std::{net::SocketAddr, sync::Arc};

use crate::spans::ProcessResource;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeedState {
    Listen,
    Established,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeedSocket {
    pub pid: u32,
    pub fd: u32,
    pub state: SeedState,
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// For established sockets: true when the local port is one the same
    /// network namespace listens on (the process is the server side).
    pub is_server: bool,
}

pub fn scan_inet_sockets() -> Vec<SeedSocket> {
    Vec::new()
}

pub struct ResourceResolver {
    pub host_name: String,
    pub extra_attributes: Vec<(String, String)>,
}

impl ResourceResolver {
    pub fn new(extra_attributes: Vec<(String, String)>) -> ResourceResolver {
        ResourceResolver { host_name: String::new(), extra_attributes }
    }

    pub fn resource(&mut self, pid: u32) -> Arc<ProcessResource> {
        Arc::new(ProcessResource {
            service_name: format!("pid-{pid}"),
            pid,
            executable_name: String::new(),
            attributes: self.extra_attributes.clone(),
        })
    }

    pub fn forget(&mut self, _pid: u32) {}
}
