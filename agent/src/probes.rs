//! Loading and attaching the eBPF programs; handles to their maps.
//!
//! CONTRACT (used by lib.rs / pipeline.rs) — implementation pending:
//! - `Probes::load(&ProbeConfig)` loads the embedded object, sets globals,
//!   attaches every program it can, logs attached/skipped (with reason) and
//!   returns the probes (detached on drop), the event source and map handles.
//! - `EventSource::readable().await` waits for ring-buffer data;
//!   `EventSource::drain(max, f)` hands each record's bytes to `f`.
//! - `ConnMaps` edits CONNS / INET_STREAM_SOCKS from userspace.
use waggle_common::{ConnInfo, Counter, SockKey};

#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub capture_bytes: u32,
    pub ring_buffer_bytes: u32,
    pub agent_tgid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("this waggle binary was built without its eBPF object; build it with `cargo xtask build`")]
    NotBuilt,
    #[error("{operation}: {message}")]
    Other { operation: &'static str, message: String },
}

pub struct Probes {}

pub struct EventSource {}

pub struct ConnMaps {}

impl Probes {
    pub fn load(_config: &ProbeConfig) -> Result<(Probes, EventSource, ConnMaps), ProbeError> {
        Err(ProbeError::NotBuilt)
    }

    /// Sum over CPUs of each kernel counter.
    pub fn kernel_counters(&self) -> Vec<(Counter, u64)> {
        Vec::new()
    }
}

impl EventSource {
    pub async fn readable(&mut self) -> std::io::Result<()> {
        std::future::pending().await
    }

    /// Calls `f` on up to `max` records; returns how many were handled.
    pub fn drain(&mut self, _max: usize, _f: impl FnMut(&[u8])) -> usize {
        0
    }
}

impl ConnMaps {
    pub fn track_conn(&mut self, _key: SockKey, _info: ConnInfo) -> Result<(), ProbeError> {
        Ok(())
    }
    pub fn track_inet_socket(&mut self, _key: SockKey) -> Result<(), ProbeError> {
        Ok(())
    }
    pub fn mute(&mut self, _key: SockKey) -> Result<(), ProbeError> {
        Ok(())
    }
    pub fn forget(&mut self, _key: SockKey) -> Result<(), ProbeError> {
        Ok(())
    }
}
