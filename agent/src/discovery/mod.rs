//! Discovery through /proc (procfs crate): the resource (service name and
//! attributes) of every traced process, and the TCP sockets that existed
//! before the agent started or that a process inherited.
//!
//! Everything here reads other processes that may exit at any moment, so no
//! public function fails: an unreadable entry degrades to a safe fallback
//! (`pid-<pid>` names, `None`, fewer sockets) and is logged at debug level.
//!
//! Resource attribute precedence, lowest to highest:
//! 1. what the agent derives (`host.name`, `process.executable.path`,
//!    `process.command`, `process.runtime.name`, `container.id`);
//! 2. the agent-wide `extra_attributes` (the agent's own
//!    OTEL_RESOURCE_ATTRIBUTES / config), so an operator can e.g. replace
//!    `host.name` with the Kubernetes node name;
//! 3. the process's own OTEL_RESOURCE_ATTRIBUTES: the application describes
//!    itself better than a node-wide agent does, so it wins conflicts.
//!
//! `service.name` never appears in `attributes`; it is
//! [`ProcessResource::service_name`](crate::model::ProcessResource): the
//! process's OTEL_SERVICE_NAME, else `service.name` from its
//! OTEL_RESOURCE_ATTRIBUTES, else a derived name (see
//! [`derive_service_name`]). A `service.name` in the agent-wide attributes is
//! ignored: one name for every process on a node would merge unrelated
//! services.
//!
//! One file per job: `seed` finds the sockets to track at start-up,
//! `socket_info` tells what one descriptor is, `own_sockets` recognises
//! the agent's own traffic, `resource` builds process resources
//! (from `process_facts`, `environ`, `exec_env` (the OTEL_* variables the
//! kernel read at exec), `service_name` and, on Kubernetes,
//! `pod_resource`), `resource_cache`
//! caches them and builds them on a worker thread, and
//! `blocked_calls` finds reads and accepts already waiting when the probes attached,
//! `tls_libs` finds the TLS library files to probe.
mod blocked_calls;
mod environ;
mod exec_env;
mod own_sockets;
mod pod_resource;
mod proc;
mod process_facts;
mod resource;
mod resource_cache;
mod seed;
mod service_name;
mod socket_info;
mod sockets;
#[cfg(test)]
mod test_support;
mod tls_exe;
mod tls_files;
mod tls_libs;

pub use blocked_calls::{blocked_calls, parse_blocked_call, still_blocked, BlockedCall};
pub use exec_env::{ExecEnvTable, ExecRecord, SharedExecEnv, EXEC_BARE_CAPACITY, EXEC_ENV_CAPACITY};
pub use own_sockets::{local_interface_ips, own_tcp_addrs};
pub use pod_resource::{PodContext, ANNOTATION_SERVICE_NAME, LABEL_NAME, LABEL_VERSION};
pub use proc::DiscoveryError;
pub use process_facts::{container_id_from_cgroup, pod_uid_from_cgroup};
pub use resource::{
    ResourceBuilder, ATTR_COMMAND, ATTR_CONTAINER_ID, ATTR_EXECUTABLE_PATH, ATTR_HOST_NAME, ATTR_RUNTIME_NAME,
};
pub use resource_cache::{
    Lookup, ResourceReplies, ResourceReply, ResourceResolver, RESOLVE_QUEUE_CAPACITY, RESOURCE_CACHE_CAPACITY,
};
pub use seed::{scan_inet_sockets, scan_process_sockets, SeedSocket, SeedState};
pub use service_name::derive_service_name;
pub use socket_info::socket_info;
pub use sockets::{SocketInfo, SocketState};
pub use tls_libs::{
    installed_tls_libraries, is_tls_library, tls_kind, tls_libraries_of, tls_paths_in_maps, TlsKind, TlsLibrary,
    TlsScanner,
};
