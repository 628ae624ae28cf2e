//! Loading and attaching the eBPF programs; handles to their maps.
//!
//! CONTRACT (used by lib.rs / pipeline.rs):
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
mod btf;
mod sockmap;

use std::{
    fs, io,
    net::IpAddr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, RingBuf, SockHash},
    programs::{CgroupAttachMode, ProgramError, SkMsg, SockOps, TracePoint},
    Ebpf, EbpfError, EbpfLoader,
};
use tokio::io::unix::AsyncFd;
use waggle_common::{
    conn_flags, globals, inet_sock, maps, runtime, sockmap_mode, ConnInfo, Counter, Pending, SockKey,
    HEARTBEAT_INTERVAL_MS, MAX_CAPTURE,
};

pub use btf::{Btf, BtfError, SendRoomOffsets};
pub use sockmap::{check_fionread, FionreadCheck};

/// The object built by `cargo xtask build` (empty when it was not built).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/waggle.bpf.o"));

const TRACEFS: &str = "/sys/kernel/tracing";
/// Lines of verifier output kept in a skipped program's warning; the end of
/// the log is where the verifier says what it refused.
const VERIFIER_TAIL_LINES: usize = 40;
/// Largest ring buffer we ask for (the kernel caps ring buffers below 4 GiB).
const MAX_RING_BYTES: u32 = 1 << 30;

#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub capture_bytes: u32,
    pub ring_buffer_bytes: u32,
    pub agent_tgid: u32,
    /// Insert traceparent into outgoing HTTP/1.x requests (config.propagation).
    pub propagation: bool,
    /// Keep sockets in CLIENT_SOCKS even where FIONREAD misreports them
    /// (config.propagation_unsafe_keepalive).
    pub unsafe_keepalive: bool,
    /// Traces the kernel starts are sampled by this threshold
    /// (`waggle_common::ratio_threshold`), the same rule the agent applies.
    pub sample_threshold: u64,
    /// An incoming traceparent's sampled flag decides (parentbased_* samplers).
    pub parent_based: bool,
    /// Peers whose incoming traceparent is trusted; None: every peer.
    pub trusted_networks: Option<Vec<(IpAddr, u8)>>,
}

impl Default for ProbeConfig {
    fn default() -> ProbeConfig {
        ProbeConfig {
            capture_bytes: MAX_CAPTURE as u32,
            ring_buffer_bytes: waggle_common::EVENTS_RINGBUF_BYTES,
            agent_tgid: 0,
            propagation: true,
            unsafe_keepalive: false,
            sample_threshold: u64::MAX,
            parent_based: true,
            trusted_networks: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("this waggle binary was built without its eBPF object; build it with `cargo xtask build`")]
    NotBuilt,
    #[error("waggle needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN) to load eBPF programs")]
    NotPrivileged,
    #[error("loading the eBPF object: {0}")]
    Load(#[source] Box<EbpfError>),
    #[error("no data-path probe attached (read/write/recvfrom/sendto), nothing can be traced: {reasons}")]
    NoDataPath { reasons: String },
    #[error("map {name} is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("opening map {name}: {source}")]
    OpenMap {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("{operation} (tgid {tgid}, fd {fd}): {source}")]
    MapUpdate {
        operation: &'static str,
        tgid: u32,
        fd: u32,
        #[source]
        source: MapError,
    },
    #[error("{operation}: {message}")]
    Other { operation: &'static str, message: String },
}

/// How the loader finds a program in the object and where it attaches.
struct ProgramSpec {
    /// Program (function) name in the object, also the tracepoint name.
    name: &'static str,
    category: &'static str,
    /// Fields (name, offset) the program reads from a non-syscall record;
    /// checked against the tracepoint's format file before attaching.
    fields: &'static [(&'static str, usize)],
}

const fn syscall(name: &'static str) -> ProgramSpec {
    ProgramSpec { name, category: "syscalls", fields: &[] }
}

/// Exit programs come before enter programs: an enter handler stashes
/// arguments that only its exit handler removes, so once an enter is live its
/// exit must be too, or the stash outlives the syscall.
const PROGRAMS: &[ProgramSpec] = &[
    syscall("sys_exit_read"),
    syscall("sys_exit_write"),
    syscall("sys_exit_recvfrom"),
    syscall("sys_exit_sendto"),
    syscall("sys_exit_readv"),
    syscall("sys_exit_writev"),
    syscall("sys_exit_recvmsg"),
    syscall("sys_exit_sendmsg"),
    syscall("sys_exit_sendfile64"),
    syscall("sys_exit_socket"),
    syscall("sys_exit_accept"),
    syscall("sys_exit_accept4"),
    syscall("sys_exit_connect"),
    syscall("sys_enter_read"),
    syscall("sys_enter_write"),
    syscall("sys_enter_recvfrom"),
    syscall("sys_enter_sendto"),
    syscall("sys_enter_readv"),
    syscall("sys_enter_writev"),
    syscall("sys_enter_recvmsg"),
    syscall("sys_enter_sendmsg"),
    syscall("sys_enter_sendfile64"),
    syscall("sys_enter_socket"),
    syscall("sys_enter_accept"),
    syscall("sys_enter_accept4"),
    syscall("sys_enter_connect"),
    syscall("sys_enter_close"),
    ProgramSpec { name: "task_newtask", category: "task", fields: &[("pid", 8), ("clone_flags", 32)] },
    ProgramSpec { name: "sched_process_exit", category: "sched", fields: &[] },
];

/// The data path works if at least one of these syscalls has both halves.
const DATA_PATH: &[&str] = &["read", "write", "recvfrom", "sendto"];

/// Propagation programs (waggle-ebpf sock.rs).
const SK_MSG_PROGRAM: &str = "waggle_sk_msg";
const SOCKOPS_PROGRAM: &str = "waggle_sockops";
/// statfs f_type of a cgroup-v2 mount.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

pub struct Probes {
    /// Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    attached: Vec<&'static str>,
    skipped: Vec<(&'static str, String)>,
    /// sockops and sk_msg are attached: outgoing requests get traceparent.
    injecting: bool,
    /// How long sockets stay in CLIENT_SOCKS (when injecting).
    sockmap_mode: u64,
    client_socks: Option<SockHash<MapData, u64>>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("attached", &self.attached)
            .field("skipped", &self.skipped)
            .field("injecting", &self.injecting)
            .finish()
    }
}

impl Probes {
    pub fn load(config: &ProbeConfig) -> Result<(Probes, EventSource, ConnMaps), ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NotBuilt);
        }
        if !has_bpf_privileges() {
            return Err(ProbeError::NotPrivileged);
        }
        raise_memlock_limit();
        ensure_tracefs();

        let agent_tgid = if config.agent_tgid == 0 { std::process::id() } else { config.agent_tgid };
        let capture_bytes = capture_bytes(config.capture_bytes);
        let ring_bytes = ring_buffer_bytes(config.ring_buffer_bytes, page_size());
        if ring_bytes != config.ring_buffer_bytes {
            tracing::debug!(
                requested = config.ring_buffer_bytes,
                used = ring_bytes,
                "ring buffer size rounded to a power-of-two number of pages"
            );
        }
        // sk_msg must know whether a socket can take a whole message without
        // waiting (a partial send would cut the inserted line): without the
        // socket field offsets it cannot, and nothing may be inserted.
        let room = if config.propagation {
            match Btf::from_sys_fs().and_then(|btf| SendRoomOffsets::from_btf(&btf)) {
                Ok(room) => Some(room),
                Err(e) => {
                    tracing::warn!(reason = %e, "propagation off: the socket fields that show whether a send can complete at once are not in this kernel's BTF, so inserting a header could cut a request");
                    None
                }
            }
        } else {
            None
        };
        let room_offsets = room.unwrap_or_default();
        let propagation = u32::from(room.is_some());
        let parent_based = u32::from(config.parent_based);
        let trust_all = u32::from(config.trusted_networks.is_none());
        let notsent_lowat = notsent_lowat_default();
        let mut ebpf = EbpfLoader::new()
            .override_global(globals::AGENT_TGID, &agent_tgid, true)
            .override_global(globals::CAPTURE_BYTES, &capture_bytes, true)
            .override_global(globals::PROPAGATION, &propagation, true)
            .override_global(globals::SAMPLE_THRESHOLD, &config.sample_threshold, true)
            .override_global(globals::PARENT_BASED, &parent_based, true)
            .override_global(globals::TRUST_ALL_PEERS, &trust_all, true)
            .override_global(globals::OFF_SNDBUF, &room_offsets.sndbuf, true)
            .override_global(globals::OFF_WMEM_QUEUED, &room_offsets.wmem_queued, true)
            .override_global(globals::OFF_WRITE_SEQ, &room_offsets.write_seq, true)
            .override_global(globals::OFF_SND_NXT, &room_offsets.snd_nxt, true)
            .override_global(globals::OFF_NOTSENT_LOWAT, &room_offsets.notsent_lowat, true)
            .override_global(globals::NOTSENT_LOWAT_DEFAULT, &notsent_lowat, true)
            .map_max_entries(maps::EVENTS, ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| match &e {
                EbpfError::MapError(MapError::CreateError { io_error, .. }) if is_permission(io_error) => {
                    ProbeError::NotPrivileged
                }
                _ => ProbeError::Load(Box::new(e)),
            })?;

        let mut attached = Vec::new();
        let mut skipped = Vec::new();
        for spec in PROGRAMS {
            match attach(&mut ebpf, spec) {
                Ok(()) => attached.push(spec.name),
                // EACCES with a verifier log is the verifier refusing this
                // program, not missing privileges: skipped with its log.
                Err(AttachError::Program(ProgramError::LoadError { io_error, verifier_log }))
                    if is_permission(&io_error) && format!("{verifier_log}").trim().is_empty() =>
                {
                    return Err(ProbeError::NotPrivileged);
                }
                Err(e) => {
                    let reason = e.describe();
                    tracing::warn!(program = spec.name, reason = %reason, "probe skipped");
                    skipped.push((spec.name, reason));
                }
            }
        }
        let data_path_ok = DATA_PATH.iter().any(|sys| {
            let enter = format!("sys_enter_{sys}");
            let exit = format!("sys_exit_{sys}");
            attached.iter().any(|a| *a == enter) && attached.iter().any(|a| *a == exit)
        });
        if !data_path_ok {
            let reasons = skipped.iter().map(|(p, r)| format!("{p}: {r}")).collect::<Vec<_>>().join("; ");
            return Err(ProbeError::NoDataPath { reasons });
        }
        if let Some(nets) = &config.trusted_networks {
            fill_trusted_networks(&mut ebpf, nets)?;
        }
        let runtime = Array::<MapData, u64>::try_from(take_map(&mut ebpf, maps::RUNTIME)?)
            .map_err(|source| ProbeError::OpenMap { name: maps::RUNTIME, source })?;
        // Alive from the start: the first drain is still milliseconds away.
        let mut heartbeat = Heartbeat { runtime, last_ns: 0 };
        heartbeat.beat(crate::clock::Clock::now_monotonic_ns());
        let (client_socks, sockmap_mode) = attach_propagation(
            &mut ebpf,
            &mut heartbeat.runtime,
            propagation != 0,
            config.unsafe_keepalive,
            &mut attached,
            &mut skipped,
        );
        let injecting = sockmap_mode != sockmap_mode::UNSET;
        tracing::info!(count = attached.len(), programs = %attached.join(","), "probes attached");
        let skipped_names: Vec<&str> = skipped.iter().map(|(p, _)| *p).collect();
        tracing::info!(count = skipped.len(), programs = %skipped_names.join(","), "probes skipped");
        if ebpf.map("AYA_LOGS").is_some() {
            // The kernel side does not log (it would cost on every syscall);
            // if that changes, bridge it with aya_log::EbpfLogger here.
            tracing::debug!("eBPF object carries an aya-log map that is not read");
        }

        let ring = RingBuf::try_from(take_map(&mut ebpf, maps::EVENTS)?)
            .map_err(|source| ProbeError::OpenMap { name: maps::EVENTS, source })?;
        let conn_maps = ConnMaps {
            conns: open_hash(&mut ebpf, maps::CONNS)?,
            inet_socks: open_hash(&mut ebpf, maps::INET_STREAM_SOCKS)?,
            tracked_tgids: open_hash(&mut ebpf, maps::TRACKED_TGIDS)?,
            pending: open_hash(&mut ebpf, maps::PENDING)?,
        };
        // Fail now rather than on every tick if the counters are unreadable.
        open_counters(&ebpf)?;
        Ok((
            Probes { ebpf, attached, skipped, injecting, sockmap_mode, client_socks },
            EventSource { ring: Ring::Plain(Some(ring)), heartbeat: Some(heartbeat) },
            conn_maps,
        ))
    }

    /// Sum over CPUs of each kernel counter.
    pub fn kernel_counters(&self) -> Vec<(Counter, u64)> {
        let counters = match open_counters(&self.ebpf) {
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

    /// Names of the programs that attached.
    pub fn attached(&self) -> &[&'static str] {
        &self.attached
    }

    /// Programs that were skipped, with the reason.
    pub fn skipped(&self) -> &[(&'static str, String)] {
        &self.skipped
    }

    /// Outgoing HTTP/1.x requests get a traceparent header (propagation on
    /// and both socket programs attached).
    pub fn injecting(&self) -> bool {
        self.injecting
    }

    /// How long sockets stay in CLIENT_SOCKS (a `sockmap_mode` value).
    pub fn sockmap_mode(&self) -> u64 {
        self.sockmap_mode
    }

    /// Cookies of the sockets in CLIENT_SOCKS now (empty when not injecting).
    pub fn client_sock_cookies(&self) -> Vec<u64> {
        match &self.client_socks {
            Some(socks) => socks.keys().filter_map(Result::ok).collect(),
            None => Vec::new(),
        }
    }
}

/// Tells the kernel the agent is draining events: it stops inserting
/// traceparent headers when this goes stale (a stopped or hung agent would
/// otherwise send ids downstream for spans it never exports).
pub struct Heartbeat {
    runtime: Array<MapData, u64>,
    last_ns: u64,
}

impl Heartbeat {
    /// Refreshes the kernel's copy at most every HEARTBEAT_INTERVAL_MS.
    pub fn beat(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.last_ns) < HEARTBEAT_INTERVAL_MS * 1_000_000 {
            return;
        }
        self.last_ns = now_ns;
        if let Err(e) = self.runtime.set(runtime::HEARTBEAT, now_ns, 0) {
            tracing::debug!(error = %e, "updating the propagation heartbeat");
        }
    }
}

/// net.ipv4.tcp_notsent_lowat of the agent's network namespace (the kernel
/// default, "no limit", when unreadable).
fn notsent_lowat_default() -> u32 {
    fs::read_to_string("/proc/sys/net/ipv4/tcp_notsent_lowat")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(u32::MAX)
}

/// TRUSTED_NETS holds IPv6 prefixes; IPv4 networks are stored mapped into
/// ::ffff:0:0/96, as the kernel looks peers up.
fn trusted_key(addr: IpAddr, prefix: u8) -> Key<[u8; 16]> {
    match addr {
        IpAddr::V4(v4) => Key::new(96 + u32::from(prefix.min(32)), v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => Key::new(u32::from(prefix.min(128)), v6.octets()),
    }
}

fn fill_trusted_networks(ebpf: &mut Ebpf, nets: &[(IpAddr, u8)]) -> Result<(), ProbeError> {
    let map = ebpf.map_mut(maps::TRUSTED_NETS).ok_or(ProbeError::MissingMap { name: maps::TRUSTED_NETS })?;
    let mut trie: LpmTrie<&mut MapData, [u8; 16], u8> =
        LpmTrie::try_from(map).map_err(|source| ProbeError::OpenMap { name: maps::TRUSTED_NETS, source })?;
    for &(addr, prefix) in nets {
        trie.insert(&trusted_key(addr, prefix), 1, 0).map_err(|e| ProbeError::Other {
            operation: "adding a trusted network",
            message: format!("{addr}/{prefix}: {e}"),
        })?;
    }
    Ok(())
}

/// Attaches sk_msg to CLIENT_SOCKS, checks how this kernel answers FIONREAD
/// for sockets in it, sets the sockmap mode, then attaches sockops to the
/// cgroup-v2 root (in that order: a socket takes the map's programs when it
/// is added, so sockets added before sk_msg is attached would never see it,
/// and none is added before the mode is set). Failures are skipped with
/// their reason: propagation then degrades to linking spans within a
/// process. Returns the map and the mode when both are attached.
fn attach_propagation(
    ebpf: &mut Ebpf,
    runtime: &mut Array<MapData, u64>,
    enabled: bool,
    unsafe_keepalive: bool,
    attached: &mut Vec<&'static str>,
    skipped: &mut Vec<(&'static str, String)>,
) -> (Option<SockHash<MapData, u64>>, u64) {
    if !enabled {
        tracing::info!(
            "propagation off: no traceparent is inserted into outgoing requests (sockops/sk_msg not attached)"
        );
        return (None, sockmap_mode::UNSET);
    }
    let mut skip = |program: &'static str, reason: String| {
        tracing::warn!(
            program,
            reason = %reason,
            "propagation probe skipped: outgoing requests carry no traceparent, spans are linked within processes only"
        );
        skipped.push((program, reason));
    };
    // A socket takes the sk_msg program of the first socket map it enters:
    // sockets another program already claimed are refused by ours and left
    // alone (propagation_sockmap_refused).
    let others = other_sk_msg_programs();
    if !others.is_empty() {
        tracing::warn!(
            programs = ?others,
            "other sk_msg programs are loaded (another waggle, a CNI or a mesh): sockets they own are left alone and get no traceparent"
        );
    }
    let mut socks = match attach_sk_msg(ebpf) {
        Ok(socks) => socks,
        Err(e) => {
            skip(SK_MSG_PROGRAM, e.describe());
            skip(SOCKOPS_PROGRAM, format!("not attached without {SK_MSG_PROGRAM}"));
            return (None, sockmap_mode::UNSET);
        }
    };
    attached.push(SK_MSG_PROGRAM);
    // Sockets leave the map at their first packet unless asked otherwise:
    // for as long as a socket sits in a sockmap, the kernel's tcp_bpf code
    // serves its receive path too, which misreports FIONREAD on current
    // kernels and was seen here to miss a peer's FIN after an early
    // response (the application waits for EOF forever). FIONREAD is checked
    // either way, for the log.
    let fionread = check_fionread(&mut socks);
    let mode = if unsafe_keepalive {
        match &fionread {
            Ok(FionreadCheck::Correct) => tracing::warn!(
                "--propagation unsafe-keepalive: client sockets stay in the sockmap for their lifetime (their receive path runs through the kernel's tcp_bpf code)"
            ),
            Ok(FionreadCheck::Misreports { reported }) => tracing::warn!(
                reported,
                expected = 1000,
                "--propagation unsafe-keepalive: client sockets stay in the sockmap for their lifetime, and this kernel misreports FIONREAD for them"
            ),
            Err(e) => tracing::warn!(reason = %e, "--propagation unsafe-keepalive: FIONREAD on sockmap sockets could not be checked"),
        }
        sockmap_mode::KEEP
    } else {
        if let Ok(FionreadCheck::Misreports { reported }) = fionread {
            tracing::info!(
                reported,
                expected = 1000,
                "this kernel misreports FIONREAD for sockets in a sockmap; client sockets leave it at their first packet, before anything they receive can wait unread"
            );
        }
        sockmap_mode::LEAVE_AT_FIRST_TRANSMIT
    };
    if let Err(e) = runtime.set(runtime::SOCKMAP_MODE, mode, 0) {
        skip(SOCKOPS_PROGRAM, format!("setting the sockmap mode: {e}"));
        return (None, sockmap_mode::UNSET);
    }
    match attach_sockops(ebpf) {
        Ok(root) => {
            attached.push(SOCKOPS_PROGRAM);
            let keep = mode == sockmap_mode::KEEP;
            tracing::info!(
                cgroup = %root.display(),
                sockets = if keep { "for their lifetime" } else { "until their first packet" },
                requests = if keep { "every request" } else { "the first request of each connection" },
                "propagation on: traceparent inserted into outgoing HTTP/1.x requests of traced processes"
            );
            (Some(socks), mode)
        }
        Err(e) => {
            let reason = e.describe();
            if reason.contains("bpf_get_current_pid_tgid") {
                // Before Linux 6.10 sockops programs may not ask which task
                // is connecting: injection could not be kept to traced
                // processes, so there is none.
                skip(
                    SOCKOPS_PROGRAM,
                    "propagation off: this kernel does not let sockops programs see the connecting process (Linux 6.10+), so injection could not be limited to traced processes".to_owned(),
                );
            } else {
                skip(SOCKOPS_PROGRAM, reason);
            }
            (None, sockmap_mode::UNSET)
        }
    }
}

/// (id, name) of loaded sk_msg programs other than this agent's own (call
/// before loading ours).
pub fn other_sk_msg_programs() -> Vec<(u32, String)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        // bpf_prog_type is not re-exported by aya: compare by name.
        .filter(|p| format!("{:?}", p.program_type()) == "BPF_PROG_TYPE_SK_MSG")
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_owned()))
        .collect()
}

/// Ids of loaded sk_msg programs named like ours: other waggle agents.
pub fn other_injectors() -> Vec<u32> {
    other_sk_msg_programs().into_iter().filter(|(_, name)| name == SK_MSG_PROGRAM).map(|(id, _)| id).collect()
}

fn attach_sk_msg(ebpf: &mut Ebpf) -> Result<SockHash<MapData, u64>, AttachError> {
    let map = take_map(ebpf, maps::CLIENT_SOCKS).map_err(|e| AttachError::Other(e.to_string()))?;
    let socks: SockHash<MapData, u64> =
        SockHash::try_from(map).map_err(|e| AttachError::Other(format!("opening CLIENT_SOCKS: {e}")))?;
    let fd = socks
        .fd()
        .try_clone()
        .map_err(|e| AttachError::Other(format!("duplicating the CLIENT_SOCKS descriptor: {e}")))?;
    let program: &mut SkMsg = ebpf.program_mut(SK_MSG_PROGRAM).ok_or(AttachError::NotInObject)?.try_into()?;
    program.load()?;
    program.attach(&fd)?;
    Ok(socks)
}

fn attach_sockops(ebpf: &mut Ebpf) -> Result<PathBuf, AttachError> {
    let root = cgroup2_root().map_err(AttachError::Other)?;
    let cgroup = fs::File::open(&root).map_err(|e| AttachError::Other(format!("opening {}: {e}", root.display())))?;
    let program: &mut SockOps = ebpf.program_mut(SOCKOPS_PROGRAM).ok_or(AttachError::NotInObject)?.try_into()?;
    program.load()?;
    // Single is the flag-less mode: on kernels with BPF links (5.7+) aya
    // attaches through one, and cgroup links always coexist with other
    // programs on the cgroup (a CNI's, another agent's); BPF_F_ALLOW_MULTI
    // is refused for links.
    program.attach(cgroup, CgroupAttachMode::Single)?;
    Ok(root)
}

/// The cgroup-v2 hierarchy: /sys/fs/cgroup on unified systems,
/// /sys/fs/cgroup/unified on hybrid ones, else wherever /proc/mounts says.
/// sockops only sees sockets of processes at or below it.
fn cgroup2_root() -> Result<PathBuf, String> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let candidates = cgroup2_mounts(&mounts);
    let fallback = [PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/sys/fs/cgroup/unified")];
    for path in candidates.iter().chain(fallback.iter()) {
        if is_cgroup2(path) {
            return Ok(path.clone());
        }
    }
    Err("no cgroup-v2 hierarchy is mounted (looked in /proc/self/mounts, /sys/fs/cgroup, /sys/fs/cgroup/unified)"
        .to_owned())
}

/// cgroup2 mount points in a /proc/mounts text, shortest (outermost) first.
fn cgroup2_mounts(mounts: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_dev, dir, fstype) = (fields.next()?, fields.next()?, fields.next()?);
            // Mount points escape spaces as \040; cgroup roots never have any.
            (fstype == "cgroup2" && !dir.contains('\\')).then(|| PathBuf::from(dir))
        })
        .collect();
    found.sort_by_key(|p| p.as_os_str().len());
    found
}

fn is_cgroup2(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we own; the path is a
    // NUL-terminated string that outlives the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between libcs
    let magic = st.f_type as i64;
    rc == 0 && magic == CGROUP2_SUPER_MAGIC
}

#[derive(Debug, thiserror::Error)]
enum AttachError {
    #[error("program not found in the eBPF object")]
    NotInObject,
    #[error("tracepoint {category}:{name} is not available: {reason}")]
    Format { category: &'static str, name: &'static str, reason: String },
    #[error(transparent)]
    Program(#[from] ProgramError),
    #[error("{0}")]
    Other(String),
}

impl AttachError {
    /// One-line-ish reason; verifier logs are cut to their informative tail.
    fn describe(&self) -> String {
        match self {
            AttachError::Program(ProgramError::LoadError { io_error, verifier_log }) => {
                let log = format!("{verifier_log}");
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(VERIFIER_TAIL_LINES)..].join("\n");
                format!("BPF_PROG_LOAD failed: {io_error}; verifier log (tail):\n{tail}")
            }
            other => {
                // ProgramError::SyscallError's message omits the errno.
                let mut text = other.to_string();
                let mut source = std::error::Error::source(other);
                while let Some(e) = source {
                    text.push_str(": ");
                    text.push_str(&e.to_string());
                    source = e.source();
                }
                text
            }
        }
    }
}

fn attach(ebpf: &mut Ebpf, spec: &ProgramSpec) -> Result<(), AttachError> {
    if !spec.fields.is_empty() {
        check_format(spec)?;
    }
    let program: &mut TracePoint = ebpf.program_mut(spec.name).ok_or(AttachError::NotInObject)?.try_into()?;
    program.load()?;
    program.attach(spec.category, spec.name)?;
    Ok(())
}

/// Non-syscall tracepoint records are read at fixed offsets: refuse to
/// attach when this kernel lays the record out differently.
fn check_format(spec: &ProgramSpec) -> Result<(), AttachError> {
    let path = PathBuf::from(TRACEFS).join("events").join(spec.category).join(spec.name).join("format");
    let fail = |reason: String| AttachError::Format { category: spec.category, name: spec.name, reason };
    let text = fs::read_to_string(&path).map_err(|e| fail(format!("reading {}: {e}", path.display())))?;
    for &(field, want) in spec.fields {
        match field_offset(&text, field) {
            Some(got) if got == want => {}
            Some(got) => return Err(fail(format!("field {field} is at offset {got}, the program reads {want}"))),
            None => return Err(fail(format!("record has no field {field}"))),
        }
    }
    Ok(())
}

/// Offset of `field` in a tracefs format file
/// (`\tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;`).
fn field_offset(format: &str, field: &str) -> Option<usize> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let name = decl.split_whitespace().last()?;
        // Arrays are declared `char comm[16]`.
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        rest.trim().strip_prefix("offset:")?.split(';').next()?.trim().parse().ok()
    })
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map, ProbeError> {
    ebpf.take_map(name).ok_or(ProbeError::MissingMap { name })
}

fn open_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, ProbeError> {
    HashMap::try_from(take_map(ebpf, name)?).map_err(|source| ProbeError::OpenMap { name, source })
}

fn open_counters(ebpf: &Ebpf) -> Result<PerCpuArray<&MapData, u64>, ProbeError> {
    let map = ebpf.map(maps::COUNTERS).ok_or(ProbeError::MissingMap { name: maps::COUNTERS })?;
    PerCpuArray::try_from(map).map_err(|source| ProbeError::OpenMap { name: maps::COUNTERS, source })
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// 0 or anything above MAX_CAPTURE means MAX_CAPTURE.
fn capture_bytes(requested: u32) -> u32 {
    match requested {
        0 => MAX_CAPTURE as u32,
        n => n.min(MAX_CAPTURE as u32),
    }
}

/// The kernel wants a power-of-two multiple of the page size.
fn ring_buffer_bytes(requested: u32, page: u32) -> u32 {
    requested.max(page).checked_next_power_of_two().unwrap_or(MAX_RING_BYTES).min(MAX_RING_BYTES)
}

fn page_size() -> u32 {
    // SAFETY: sysconf only reads a configuration value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u32::try_from(size).ok().filter(|s| s.is_power_of_two()).unwrap_or(4096)
}

/// CAP_SYS_ADMIN alone, or CAP_BPF + CAP_PERFMON (tracepoints are attached
/// through perf events). Unknown (no /proc) counts as yes: loading will say.
fn has_bpf_privileges() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let Ok(status) = fs::read_to_string("/proc/self/status") else {
        return true;
    };
    let Some(caps) = effective_caps(&status) else {
        return true;
    };
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

fn effective_caps(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Maps are memcg-charged on current kernels; the limit only matters on old
/// ones, and a container without CAP_SYS_RESOURCE cannot raise it anyway.
fn raise_memlock_limit() {
    let limit = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: setrlimit reads the struct we pass and nothing else.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "raising RLIMIT_MEMLOCK failed; continuing");
    }
}

/// aya attaches tracepoints through tracefs; mount it where it belongs when
/// nobody has (common in containers). Failure is logged, attach will say more.
fn ensure_tracefs() {
    let mounted = |p: &Path| p.join("events").is_dir();
    if mounted(Path::new(TRACEFS)) || mounted(Path::new("/sys/kernel/debug/tracing")) {
        return;
    }
    let target = c"/sys/kernel/tracing";
    let fstype = c"tracefs";
    // SAFETY: all pointers are NUL-terminated static strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        tracing::warn!(path = TRACEFS, error = %io::Error::last_os_error(), "mounting tracefs failed");
    } else {
        tracing::info!(path = TRACEFS, "mounted tracefs");
    }
}

enum Ring {
    /// Not registered with the reactor yet: `load` may run outside a tokio
    /// runtime, and `drain` works without one.
    Plain(Option<RingBuf<MapData>>),
    Async(AsyncFd<RingBuf<MapData>>),
}

pub struct EventSource {
    ring: Ring,
    heartbeat: Option<Heartbeat>,
}

impl EventSource {
    /// Waits until the ring buffer has records.
    ///
    /// Readiness is cleared before the caller drains: a record written after
    /// the drain then raises a fresh wake-up instead of being lost between
    /// "drained" and "cleared".
    pub async fn readable(&mut self) -> io::Result<()> {
        if let Ring::Plain(ring) = &mut self.ring {
            if tokio::runtime::Handle::try_current().is_err() {
                return Err(io::Error::other("EventSource::readable needs a tokio runtime"));
            }
            let Some(inner) = ring.take() else {
                return Err(io::Error::other("ring buffer lost while registering it"));
            };
            // SAFETY: the RingBuf owns its map fd (MapData holds an OwnedFd)
            // and neither closes nor swaps it while the AsyncFd owns it, so
            // as_raw_fd stays the same open descriptor for its lifetime.
            match unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) } {
                Ok(fd) => self.ring = Ring::Async(fd),
                Err(e) => {
                    let (inner, cause) = e.into_parts();
                    *ring = Some(inner);
                    return Err(cause);
                }
            }
        }
        let Ring::Async(fd) = &mut self.ring else {
            return Err(io::Error::other("ring buffer not registered"));
        };
        let mut guard = fd.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Calls `f` on up to `max` records; returns how many were handled.
    pub fn drain(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let ring = match &mut self.ring {
            Ring::Plain(Some(ring)) => ring,
            Ring::Plain(None) => return 0,
            Ring::Async(fd) => fd.get_mut(),
        };
        let mut handled = 0;
        while handled < max {
            let Some(record) = ring.next() else {
                break;
            };
            f(&record);
            handled += 1;
        }
        if let Some(heartbeat) = &mut self.heartbeat {
            heartbeat.beat(crate::clock::Clock::now_monotonic_ns());
        }
        handled
    }
}

/// Userspace edits of the kernel's connection tables.
pub struct ConnMaps {
    conns: HashMap<MapData, SockKey, ConnInfo>,
    inet_socks: HashMap<MapData, SockKey, u8>,
    tracked_tgids: HashMap<MapData, u32, u8>,
    pending: HashMap<MapData, u64, Pending>,
}

/// BPF_EXIST: update only if the key is present.
const BPF_EXIST: u64 = 2;
/// BPF_NOEXIST: insert only if the key is absent.
const BPF_NOEXIST: u64 = 1;

fn pid_tgid(pid: u32, tid: u32) -> u64 {
    (u64::from(pid) << 32) | u64::from(tid)
}

impl ConnMaps {
    /// Tracks a connection the kernel did not open itself (seeded from /proc,
    /// verified after ConnUnverified); its process's forks and exit are then
    /// reported too.
    pub fn track_conn(&mut self, key: SockKey, info: ConnInfo) -> Result<(), ProbeError> {
        self.conns.insert(key, info, 0).map_err(|source| update_error("tracking connection", key, source))?;
        self.tracked_tgids.insert(key.tgid, 1u8, 0).map_err(|source| update_error("tracking process", key, source))
    }

    /// Stands in for the enter handler of a read the thread `tid` of `pid`
    /// was already blocked in when the probes attached, so its exit captures
    /// the payload (the first request on a connection that predates the
    /// agent). Never replaces an entry the kernel wrote itself.
    pub fn stash_blocked_read(&mut self, pid: u32, tid: u32, pending: Pending) -> Result<(), ProbeError> {
        let key = SockKey { tgid: pid, fd: pending.fd };
        match self.pending.insert(pid_tgid(pid, tid), pending, BPF_NOEXIST) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(source) => Err(update_error("stashing a blocked read", key, source)),
        }
    }

    /// Takes back a stand-in entry whose read finished before it was written.
    pub fn unstash_blocked_read(&mut self, pid: u32, tid: u32) {
        let _ = self.pending.remove(&pid_tgid(pid, tid));
    }

    /// Marks a descriptor as a TCP socket (a listener that predates the agent),
    /// so connections accepted from it are recognised in the kernel.
    pub fn track_inet_socket(&mut self, key: SockKey) -> Result<(), ProbeError> {
        self.inet_socks
            .insert(key, inet_sock::STREAM, 0)
            .map_err(|source| update_error("tracking inet socket", key, source))
    }

    /// Keeps tracking the connection but stops payload capture. A connection
    /// that is already gone is not an error.
    pub fn mute(&mut self, key: SockKey) -> Result<(), ProbeError> {
        let mut info = match self.conns.get(&key, 0) {
            Ok(info) => info,
            Err(MapError::KeyNotFound) => return Ok(()),
            Err(source) => return Err(update_error("reading connection", key, source)),
        };
        if info.flags & conn_flags::MUTED != 0 {
            return Ok(());
        }
        info.flags |= conn_flags::MUTED;
        // BPF_EXIST: if close() removed the entry meanwhile, don't revive it.
        match self.conns.insert(key, info, BPF_EXIST) {
            Ok(()) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(update_error("muting connection", key, source)),
        }
    }

    /// Stops tracking a connection. A connection that is already gone is not
    /// an error.
    pub fn forget(&mut self, key: SockKey) -> Result<(), ProbeError> {
        match self.conns.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            Err(source) => Err(update_error("forgetting connection", key, source)),
        }
    }

    /// The kernel's view of a connection (tests, diagnostics).
    pub fn conn(&self, key: SockKey) -> Option<ConnInfo> {
        self.conns.get(&key, 0).ok()
    }
}

fn update_error(operation: &'static str, key: SockKey, source: MapError) -> ProbeError {
    ProbeError::MapUpdate { operation, tgid: key.tgid, fd: key.fd, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_buffer_size_is_a_power_of_two_number_of_pages() {
        assert_eq!(ring_buffer_bytes(0, 4096), 4096);
        assert_eq!(ring_buffer_bytes(5000, 4096), 8192);
        assert_eq!(ring_buffer_bytes(16 << 20, 4096), 16 << 20);
        assert_eq!(ring_buffer_bytes((16 << 20) + 1, 4096), 32 << 20);
        assert_eq!(ring_buffer_bytes(u32::MAX, 4096), MAX_RING_BYTES);
        assert_eq!(ring_buffer_bytes(100, 65536), 65536);
    }

    #[test]
    fn capture_bytes_is_clamped() {
        assert_eq!(capture_bytes(0), MAX_CAPTURE as u32);
        assert_eq!(capture_bytes(100), 100);
        assert_eq!(capture_bytes(1 << 20), MAX_CAPTURE as u32);
    }

    #[test]
    fn reads_field_offsets_from_tracefs_format() {
        let format = "name: task_newtask\nID: 205\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:pid_t pid;\toffset:8;\tsize:4;\tsigned:1;\n\
            \tfield:char comm[16];\toffset:12;\tsize:16;\tsigned:0;\n\
            \tfield:u64 clone_flags;\toffset:32;\tsize:8;\tsigned:0;\n";
        assert_eq!(field_offset(format, "pid"), Some(8));
        assert_eq!(field_offset(format, "comm"), Some(12));
        assert_eq!(field_offset(format, "clone_flags"), Some(32));
        assert_eq!(field_offset(format, "common_type"), Some(0));
        assert_eq!(field_offset(format, "oom_score_adj"), None);
    }

    #[test]
    fn finds_cgroup2_mounts() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
            cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
            cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mounts(hybrid), vec![PathBuf::from("/sys/fs/cgroup/unified")]);
        let unified = "cgroup2 /sys/fs/cgroup/x cgroup2 rw 0 0\ncgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
        assert_eq!(cgroup2_mounts(unified), vec![PathBuf::from("/sys/fs/cgroup"), PathBuf::from("/sys/fs/cgroup/x")]);
        assert!(cgroup2_mounts("proc /proc proc rw 0 0\n").is_empty());
        assert!(!is_cgroup2(Path::new("/proc")));
    }

    #[test]
    fn effective_capabilities_are_parsed() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }

    #[test]
    fn every_program_and_map_is_in_the_object() {
        use object::{Object, ObjectSymbol};
        if EBPF_OBJECT.is_empty() {
            eprintln!("skipping: eBPF object not built (cargo xtask build)");
            return;
        }
        let file = object::File::parse(EBPF_OBJECT).unwrap();
        let symbols: Vec<String> = file.symbols().filter_map(|s| s.name().ok().map(str::to_owned)).collect();
        for spec in PROGRAMS {
            assert!(symbols.iter().any(|s| s == spec.name), "program {} missing", spec.name);
        }
        for name in [SK_MSG_PROGRAM, SOCKOPS_PROGRAM] {
            assert!(symbols.iter().any(|s| s == name), "program {name} missing");
        }
        for name in [
            maps::EVENTS,
            maps::CONNS,
            maps::INET_STREAM_SOCKS,
            maps::PENDING,
            maps::COUNTERS,
            maps::SCRATCH,
            maps::TRACKED_TGIDS,
            maps::CONN_SEQ,
            maps::THREAD_CTX,
            maps::INJECT_PENDING,
            maps::CLIENT_SOCKS,
            maps::CONNECTING,
            maps::RUNTIME,
            maps::TRUSTED_NETS,
            globals::AGENT_TGID,
            globals::CAPTURE_BYTES,
            globals::PROPAGATION,
        ] {
            assert!(symbols.iter().any(|s| s == name), "symbol {name} missing");
        }
    }
}
