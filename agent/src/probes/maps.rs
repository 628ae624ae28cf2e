//! Typed handles to the kernel's maps: opening them from the loaded object,
//! reading the per-CPU counters, and `ConnMaps`, the userspace edits of the
//! connection tables.
use aya::{
    maps::{HashMap, Map, MapData, MapError, PerCpuArray},
    Ebpf,
};
use waggle_common::{conn_flags, inet_sock, maps, ConnInfo, Counter, Pending, SockKey};

use super::error::ProbeError;

/// A waggle-common ABI struct as an aya map key or value.
///
/// aya needs its own `Pod` marker, and the orphan rule forbids implementing
/// it here for waggle-common's types, so they are wrapped.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub(super) struct Plain<T>(pub(super) T);

// SAFETY: aya::Pod asks that the type have no padding and that every bit
// pattern be a valid value, which is exactly what bytemuck::Pod guarantees;
// waggle-common derives bytemuck::Pod for its ABI structs, so the compiler
// has checked it. repr(transparent) gives Plain<T> the layout of T.
unsafe impl<T: bytemuck::Pod> aya::Pod for Plain<T> {}

pub(super) fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap { name })
}

fn open_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, ProbeError> {
    HashMap::try_from(take_map(ebpf, name)?).map_err(|source| ProbeError::OpenMap { name, source })
}

pub(super) fn open_counters(ebpf: &Ebpf) -> Result<PerCpuArray<&MapData, u64>, ProbeError> {
    let map = ebpf.map(maps::COUNTERS).ok_or(ProbeError::MissingMap { name: maps::COUNTERS })?;
    PerCpuArray::try_from(map).map_err(|source| ProbeError::OpenMap { name: maps::COUNTERS, source })
}

/// Sum over CPUs of each kernel counter; empty when COUNTERS is unreadable.
pub(super) fn kernel_counters(ebpf: &Ebpf) -> Vec<(Counter, u64)> {
    let counters = match open_counters(ebpf) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "reading kernel counters");
            return Vec::new();
        }
    };
    Counter::ALL
        .iter()
        .map(|&c| {
            let total = counters
                .get(&(c as u32), 0)
                .map(|per_cpu| per_cpu.iter().fold(0u64, |acc, v| acc.wrapping_add(*v)))
                .unwrap_or(0);
            (c, total)
        })
        .collect()
}

/// TRACE_VERDICT: the agent's trace-selection decision per process.
pub struct VerdictMap(HashMap<MapData, u32, u8>);

impl VerdictMap {
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<VerdictMap, ProbeError> {
        open_hash(ebpf, maps::TRACE_VERDICT).map(VerdictMap)
    }

    /// Err when the map is full (the process stays undecided: traced).
    /// `verdict`: a `waggle_common::verdict` byte.
    pub fn set(&mut self, tgid: u32, verdict: u8) -> Result<(), MapError> {
        self.0.insert(tgid, verdict, 0)
    }

    /// Undecided again (a decision for a process that has exited).
    pub fn remove(&mut self, tgid: u32) {
        let _ = self.0.remove(&tgid);
    }
}

/// Writes the start-up decisions into TRACE_VERDICT (the map stays in the
/// object until `Probes::take_verdict_map`); returns how many were written.
pub(super) fn write_initial_verdicts(ebpf: &mut Ebpf, verdicts: &[(u32, u8)]) -> Result<usize, ProbeError> {
    let name = maps::TRACE_VERDICT;
    let map = ebpf.map_mut(name).ok_or(ProbeError::MissingMap { name })?;
    let mut map: HashMap<&mut MapData, u32, u8> =
        HashMap::try_from(map).map_err(|source| ProbeError::OpenMap { name, source })?;
    let mut written = 0;
    for &(tgid, verdict) in verdicts {
        match map.insert(tgid, verdict, 0) {
            Ok(()) => written += 1,
            // Full: the rest stay undecided (traced); the worker retries
            // them at its next sweep and counts what does not fit.
            Err(e) => {
                tracing::warn!(error = %e, tgid, "trace-selection verdict map full at start-up");
                break;
            }
        }
    }
    Ok(written)
}

/// Userspace edits of the kernel's connection tables.
pub struct ConnMaps {
    conns: HashMap<MapData, Plain<SockKey>, Plain<ConnInfo>>,
    inet_socks: HashMap<MapData, Plain<SockKey>, u8>,
    tracked_tgids: HashMap<MapData, u32, u8>,
    pending: HashMap<MapData, u64, Plain<Pending>>,
}

/// BPF_EXIST: update only if the key is present.
const BPF_EXIST: u64 = 2;
/// BPF_NOEXIST: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

fn pid_tgid(pid: u32, tid: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(tid)
}

impl ConnMaps {
    /// Takes the connection tables out of the loaded object.
    pub(super) fn open(ebpf: &mut Ebpf) -> Result<ConnMaps, ProbeError> {
        Ok(ConnMaps {
            conns: open_hash(ebpf, maps::CONNS)?,
            inet_socks: open_hash(ebpf, maps::INET_STREAM_SOCKS)?,
            tracked_tgids: open_hash(ebpf, maps::TRACKED_TGIDS)?,
            pending: open_hash(ebpf, maps::PENDING)?,
        })
    }

    /// Tracks a connection the kernel did not open itself (seeded from /proc,
    /// verified after ConnUnverified); its process's forks and exit are then
    /// reported too.
    pub fn track_conn(&mut self, key: SockKey, info: ConnInfo) -> Result<(), ProbeError> {
        self.conns
            .insert(Plain(key), Plain(info), 0)
            .map_err(|source| update_error("tracking connection", key, source))?;
        self.tracked_tgids.insert(key.tgid, 1u8, 0).map_err(|source| update_error("tracking process", key, source))
    }

    /// Stands in for the enter handler of a read or accept the thread `tid`
    /// of `pid` was already blocked in when the probes attached, so its exit
    /// captures the payload (the next request on a connection that predates
    /// the agent) or opens the connection (a server's first one). Never
    /// replaces an entry the kernel wrote itself.
    pub fn stash_blocked_call(&mut self, pid: u32, tid: u32, pending: Pending) -> Result<(), ProbeError> {
        let key = SockKey { tgid: pid, fd: pending.fd };
        match self.pending.insert(pid_tgid(pid, tid), Plain(pending), BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(update_error("stashing a blocked call", key, source)),
        }
    }

    /// Takes back a stand-in entry whose call finished before it was written.
    pub fn unstash_blocked_call(&mut self, pid: u32, tid: u32) {
        let _ = self.pending.remove(&pid_tgid(pid, tid));
    }

    /// Marks a descriptor as a TCP socket (a listener that predates the agent),
    /// so connections accepted from it are recognised in the kernel.
    pub fn track_inet_socket(&mut self, key: SockKey) -> Result<(), ProbeError> {
        self.inet_socks
            .insert(Plain(key), inet_sock::STREAM, 0)
            .map_err(|source| update_error("tracking inet socket", key, source))
    }

    /// Keeps tracking connection `conn_id` but stops payload capture. A
    /// connection that is already gone is not an error, and neither is a
    /// descriptor that now holds another connection (closed and reused since
    /// the decision): that one is left alone.
    pub fn mute(&mut self, key: SockKey, conn_id: u64) -> Result<(), ProbeError> {
        self.set_mute(key, conn_id, |info| &mut info.flags, conn_flags::MUTED)
    }

    /// Like [`ConnMaps::mute`] for a TLS connection's plaintext (the TLS
    /// library probes obey this switch, not the ciphertext one).
    pub fn mute_tls(&mut self, key: SockKey, conn_id: u64) -> Result<(), ProbeError> {
        self.set_mute(key, conn_id, |info| &mut info.tls, waggle_common::tls::conn_tls::MUTED)
    }

    fn set_mute(
        &mut self,
        key: SockKey,
        conn_id: u64,
        field: impl Fn(&mut ConnInfo) -> &mut u8,
        bit: u8,
    ) -> Result<(), ProbeError> {
        let Plain(mut info) = match self.conns.get(&Plain(key), 0) {
            Ok(info) => info,
            Err(MapError::KeyNotFound) => return Ok(()),
            Err(source) => return Err(update_error("reading connection", key, source)),
        };
        if info.conn_id != conn_id || *field(&mut info) & bit != 0 {
            return Ok(());
        }
        *field(&mut info) |= bit;
        // BPF_EXIST: if close() removed the entry meanwhile, don't revive it.
        match self.conns.insert(Plain(key), Plain(info), BPF_EXIST) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(update_error("muting connection", key, source)),
        }
    }

    /// Stops tracking connection `conn_id`. A connection that is already
    /// gone is not an error; a descriptor now holding another connection is
    /// left alone.
    pub fn forget(&mut self, key: SockKey, conn_id: u64) -> Result<(), ProbeError> {
        if self.conn(key).is_none_or(|info| info.conn_id != conn_id) {
            return Ok(());
        }
        match self.conns.remove(&Plain(key)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(update_error("forgetting connection", key, source)),
        }
    }

    /// The kernel's view of a connection (tests, diagnostics).
    pub fn conn(&self, key: SockKey) -> Option<ConnInfo> {
        self.conns.get(&Plain(key), 0).ok().map(|Plain(info)| info)
    }
}

fn update_error(operation: &'static str, key: SockKey, source: MapError) -> ProbeError {
    ProbeError::MapUpdate { operation, tgid: key.tgid, fd: key.fd, source }
}
