//! Loading and attaching the eBPF programs; handles to their maps.
//!
//! What the pipeline (`pipeline/`) uses:
//! - `Probes::load(&ProbeConfig)` loads the embedded object, sets globals,
//!   attaches every program it can, logs attached/skipped (with reason) and
//!   returns the probes (detached on drop), the event source and map handles.
//! - `EventSource::readable().await` waits for ring-buffer data;
//!   `EventSource::drain(max, f)` hands each record's bytes to `f`.
//! - `ConnMaps` edits CONNS / INET_STREAM_SOCKS / TRACKED_TGIDS from userspace.
//! - `ProbeConfig::propagation`: insert traceparent headers into outgoing
//!   HTTP/1.x requests (sockops on the cgroup-v2 root + sk_msg). Off: those
//!   two programs are not even attached; trace contexts are still reported.
//!
//! Propagation is attached only when its safety can be verified on this
//! kernel: the socket fields sk_msg reads must be found in the kernel's BTF
//! (`btf.rs`), and how FIONREAD treats sockets in a sockmap decides how long
//! a socket may stay in one (`sockmap.rs`). Otherwise it is off, said once.
//!
//! Only the data path is essential: a node whose kernel lacks, say, the
//! task tracepoints still traces requests, it just misses forks. Every other
//! program that fails to load or attach is skipped and the reason logged;
//! without sockops/sk_msg, propagation degrades to in-process linking.
//!
//! Files: `load.rs` loads and attaches (and owns `Probes`), `propagation.rs`
//! attaches sockops/sk_msg, `ring.rs` reads the ring buffer, `maps.rs` holds
//! typed map handles, `error.rs` the errors; `btf.rs` and `sockmap.rs` are
//! the two kernel checks propagation depends on; `tls.rs` loads the TLS
//! library probes and attaches them once per library file; `exec_env.rs`
//! the program that reads each exec's OTEL_* environment;
//! `response_header.rs` says whether `--trace-response-header` may be on
//! (off where FIONREAD misreports sockmap sockets, and, until its kernel
//! program exists, everywhere); `floor.rs` the benchmark's floor (`waggle
//! floor`: an empty program on every tracepoint of the agent's).
mod btf;
mod error;
mod exec_env;
mod floor;
mod load;
mod maps;
mod propagation;
mod response_header;
mod ring;
mod sockmap;
mod tls;

pub use btf::{Btf, BtfError, SendRoomOffsets};
pub use error::ProbeError;
pub use floor::Floor;
pub use load::{ProbeConfig, Probes};
pub use maps::{ConnMaps, VerdictMap};
pub use propagation::{other_injectors, other_sk_msg_programs};
pub use ring::{EventSource, Heartbeat};
pub use sockmap::{check_fionread, FionreadCheck};
pub use tls::TlsProbes;
