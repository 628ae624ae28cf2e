//! Loading the object and attaching its programs: the checks before (object
//! built, privileges, tracefs, BTF offsets), the globals and map sizes set at
//! load, each tracepoint attached or skipped with its reason, and the
//! resulting attach report (`Probes`).
use std::{
    fs, io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, MapData, MapError, RingBuf, SockHash},
    programs::{ProgramError, ProgramType, TracePoint},
    sys::{is_helper_supported, BpfHelper},
    Ebpf, EbpfError, EbpfLoader,
};
use waggle_common::{globals, maps, runtime, sockmap_mode, Counter, SockWalkOffsets, FCGI_PARAMS_PROGRAM, MAX_CAPTURE};

use super::{
    btf::{sock_walk_offsets, Btf, BtfError, SendRoomOffsets},
    error::{is_permission, AttachError, ProbeError},
    maps::{kernel_counters, open_counters, take_map, write_initial_verdicts, ConnMaps, Plain, VerdictMap},
    propagation::{
        attach_fastcgi_params, attach_propagation, fill_trusted_networks, notsent_lowat_default, SK_MSG_PROGRAM,
        SOCKOPS_PROGRAM,
    },
    response_header,
    ring::{EventSource, Heartbeat},
    tls::TlsProbes,
};
use crate::discovery::TlsLibrary;

/// The object built by `cargo xtask build` (empty when it was not built).
pub(super) static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/waggle.bpf.o"));

const TRACEFS: &str = "/sys/kernel/tracing";
/// Largest ring buffer we ask for (the kernel caps ring buffers below 4 GiB).
const MAX_RING_BYTES: u32 = 1 << 30;

#[derive(Clone, Debug)]
pub struct ProbeConfig {
    pub capture_bytes: u32,
    pub ring_buffer_bytes: u32,
    pub agent_tgid: u32,
    /// Insert traceparent into outgoing HTTP/1.x requests (config.propagation).
    pub propagation: bool,
    /// Keep sockets in INJECT_SOCKS even where FIONREAD misreports them
    /// (config.propagation_unsafe_keepalive).
    pub unsafe_keepalive: bool,
    /// Traces the kernel starts are sampled by this threshold
    /// (`waggle_common::ratio_threshold`), the same rule the agent applies.
    pub sample_threshold: u64,
    /// An incoming traceparent's sampled flag decides (parentbased_* samplers).
    pub parent_based: bool,
    /// Peers whose incoming traceparent is trusted; None: every peer.
    pub trusted_networks: Option<Vec<(IpAddr, u8)>>,
    /// Trace-selection rules are configured: programs consult TRACE_VERDICT.
    pub filter: bool,
    /// (tgid, `waggle_common::verdict` byte) of every process decided
    /// before the probes attach: written into TRACE_VERDICT first, so no
    /// program ever sees a running process undecided.
    pub initial_verdicts: Vec<(u32, u8)>,
    /// Load the TLS library probes (config.tls).
    pub tls: bool,
    /// RUNTIME[RESPONSE_HEADER] once the gate passes (`waggle_common::
    /// runtime`): 0 when no traced process is set to get a trace id in its
    /// responses (`--trace-response-header` or an include rule).
    pub response_header: u64,
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
            filter: false,
            initial_verdicts: Vec::new(),
            tls: true,
            response_header: 0,
        }
    }
}

/// How the loader finds a program in the object and where it attaches.
pub(super) struct ProgramSpec {
    /// Program (function) name in the object, also the tracepoint name.
    pub(super) name: &'static str,
    pub(super) category: &'static str,
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
pub(super) const PROGRAMS: &[ProgramSpec] = &[
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
    // Closes without close(): the descriptor's connection ends there.
    syscall("sys_enter_dup2"),
    syscall("sys_enter_dup3"),
    syscall("sys_enter_close_range"),
    ProgramSpec { name: "sched_process_exec", category: "sched", fields: &[] },
    // Paths whose bytes are not read: counted on tracked connections.
    syscall("sys_enter_splice"),
    syscall("sys_enter_recvmmsg"),
    syscall("sys_enter_sendmmsg"),
    syscall("sys_enter_io_uring_setup"),
    ProgramSpec { name: "task_newtask", category: "task", fields: &[("pid", 8), ("clone_flags", 32)] },
    ProgramSpec { name: "sched_process_exit", category: "sched", fields: &[] },
];

/// Suffix of a program's reduced-mode variant in the object: the same code
/// with bounded loops instead of bpf_loop, for kernels before 5.17.
const NOLOOP_SUFFIX: &str = "_noloop";

/// What the reduced mode (no bpf_loop) lacks, said once at start-up.
const REDUCED_MODE: &str = "reduced mode: this kernel lacks bpf_loop (Linux 5.17+): HTTP and SQL spans are captured as usual, but the kernel reads at most 256 steps (a few hundred bytes) of a request's header block for its traceparent (kernel_header_scan_cut counts longer ones), injects no traceparent, ignores FastCGI HTTP_TRACEPARENT params, checks at most 256 descriptors at exec, fork and close_range (kernel_fd_sweep_cut), and TLS plaintext capture is off";

/// Why propagation is off in the reduced mode.
const NO_BPF_LOOP_PROPAGATION: &str =
    "propagation off: this kernel lacks bpf_loop (Linux 5.17+), which the header scan before an insertion needs";

/// The data path works if at least one of these syscalls has both halves.
const DATA_PATH: &[&str] = &["read", "write", "recvfrom", "sendto"];

/// The loaded programs and what became of each.
pub struct Probes {
    /// Owns the programs and their links: dropping it detaches everything.
    ebpf: Ebpf,
    attached: Vec<&'static str>,
    skipped: Vec<(&'static str, String)>,
    /// sockops and sk_msg are attached: outgoing requests get traceparent.
    injecting: bool,
    /// How long sockets stay in INJECT_SOCKS (when injecting).
    sockmap_mode: u64,
    client_socks: Option<SockHash<MapData, u64>>,
    /// The kernel reads each connection's addresses from its socket and
    /// skips the agent's own connections (SOCK_WALK is set).
    reads_sockets: bool,
    /// The TLS library probes, when on and verified.
    tls: Option<TlsProbes>,
    /// The kernel has bpf_loop; else the reduced mode's programs run.
    bpf_loop: bool,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes")
            .field("attached", &self.attached)
            .field("skipped", &self.skipped)
            .field("injecting", &self.injecting)
            .field("bpf_loop", &self.bpf_loop)
            .finish()
    }
}

impl Probes {
    pub fn load(config: &ProbeConfig) -> Result<(Probes, EventSource, ConnMaps), ProbeError> {
        prepare_to_load()?;

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
        // Decided by asking the kernel, not by its version: distributions
        // backport helpers.
        let bpf_loop = has_bpf_loop();
        if !bpf_loop {
            tracing::warn!("{REDUCED_MODE}");
        }
        // sk_msg must know whether a socket can take a whole message without
        // waiting (a partial send would cut the inserted line): without the
        // socket field offsets it cannot, and nothing may be inserted.
        let btf = Btf::from_sys_fs();
        // Why propagation is off although the configuration wants it: its
        // programs are then reported as skipped with this reason.
        let mut no_room = None;
        let room = if config.propagation && !bpf_loop {
            no_room = Some(NO_BPF_LOOP_PROPAGATION.to_owned());
            None
        } else if config.propagation {
            match from_btf(&btf, SendRoomOffsets::from_btf) {
                Ok(room) => Some(room),
                Err(e) => {
                    no_room = Some(format!("propagation off: the socket fields that show whether a send can complete at once are not in this kernel's BTF ({e}), so inserting a header could cut a request"));
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
        let filter = u32::from(config.filter);
        let tls_on = u32::from(config.tls);
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
            .override_global(globals::FILTER, &filter, true)
            .override_global(waggle_common::tls::GLOBAL_TLS, &tls_on, true)
            .map_max_entries(maps::EVENTS, ring_bytes)
            .load(EBPF_OBJECT)
            .map_err(|e| match &e {
                EbpfError::MapError(MapError::CreateError { io_error, .. }) if is_permission(io_error) => {
                    ProbeError::NotPrivileged
                }
                _ => ProbeError::Load(Box::new(e)),
            })?;

        let reads_sockets = set_sock_walk(&mut ebpf, &btf)?;
        if config.filter {
            let written = write_initial_verdicts(&mut ebpf, &config.initial_verdicts)?;
            tracing::info!(processes = written, "trace-selection verdicts written before attaching");
        }
        let mut attached = Vec::new();
        let mut skipped = Vec::new();
        // The reduced mode's loops are walked by the verifier: what that
        // costs at start-up is said once.
        let mut slow: Vec<(u128, &str)> = Vec::new();
        for spec in PROGRAMS {
            let started = std::time::Instant::now();
            let result = attach(&mut ebpf, spec, bpf_loop);
            slow.push((started.elapsed().as_millis(), spec.name));
            match result {
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
        if !bpf_loop {
            slow.sort_unstable_by(|a, b| b.cmp(a));
            let total: u128 = slow.iter().map(|(ms, _)| ms).sum();
            let top: Vec<String> = slow.iter().take(5).map(|(ms, p)| format!("{p}={ms}ms")).collect();
            tracing::info!(total_ms = total as u64, slowest = %top.join(","), "reduced mode: programs verified");
        }
        // After sys_exit_read, whose reads it walks (with bpf_loop).
        let fastcgi = if !bpf_loop {
            Err(AttachError::Other("this kernel lacks bpf_loop (Linux 5.17+), which the params walk needs".into()))
        } else if attached.contains(&"sys_exit_read") {
            attach_fastcgi_params(&mut ebpf)
        } else {
            Err(AttachError::Other("sys_exit_read is not attached".into()))
        };
        match fastcgi {
            Ok(()) => attached.push(FCGI_PARAMS_PROGRAM),
            Err(e) => {
                let reason = e.describe();
                tracing::warn!(program = FCGI_PARAMS_PROGRAM, reason = %reason, "probe skipped: FastCGI responders without a same-host link ignore the HTTP_TRACEPARENT param");
                skipped.push((FCGI_PARAMS_PROGRAM, reason));
            }
        }
        let exec_env = if bpf_loop {
            super::exec_env::attach_exec_env(&mut ebpf, &btf)
        } else {
            Err("this kernel lacks bpf_loop (Linux 5.17+), which the environment walk needs".to_owned())
        };
        match exec_env {
            Ok(()) => attached.push(waggle_common::exec_env::PROGRAM),
            Err(reason) => {
                tracing::warn!(program = waggle_common::exec_env::PROGRAM, reason = %reason, "probe skipped: OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES are read from /proc/<pid>/environ only (lost where a server writes its title over its environment)");
                skipped.push((waggle_common::exec_env::PROGRAM, reason));
            }
        }
        let data_path_ok = DATA_PATH.iter().any(|sys| {
            let enter = format!("sys_enter_{sys}");
            let exit = format!("sys_exit_{sys}");
            attached.iter().any(|a| *a == enter) && attached.iter().any(|a| *a == exit)
        });
        if !data_path_ok {
            let kernel = kernel_release();
            let why = no_data_path_reason(bpf_loop).to_owned();
            return Err(ProbeError::NoDataPath { kernel, why });
        }
        if let Some(nets) = &config.trusted_networks {
            fill_trusted_networks(&mut ebpf, nets)?;
        }
        let runtime = Array::<MapData, u64>::try_from(take_map(&mut ebpf, maps::RUNTIME)?)
            .map_err(|source| ProbeError::OpenMap { name: maps::RUNTIME, source })?;
        // Alive from the start: the first drain is still milliseconds away.
        let mut heartbeat = Heartbeat::new(runtime);
        let (client_socks, sockmap_mode, fionread) = attach_propagation(
            &mut ebpf,
            heartbeat.runtime_mut(),
            propagation != 0,
            config.unsafe_keepalive,
            &mut attached,
            &mut skipped,
        );
        if let Some(reason) = no_room {
            for program in [SK_MSG_PROGRAM, SOCKOPS_PROGRAM] {
                tracing::warn!(program, reason = %reason, "propagation probe skipped: outgoing requests carry no traceparent, spans are linked within processes only");
                skipped.push((program, reason.clone()));
            }
        }
        let injecting = sockmap_mode != sockmap_mode::UNSET;
        // Logs why it is off; on, server sockets on the noted ports join
        // INJECT_SOCKS from now on.
        // Without sockops (mode UNSET) no socket ever joins the map.
        let sockops = sockmap_mode != sockmap_mode::UNSET;
        if response_header::gate(config.response_header != 0, fionread.as_ref(), sockops) {
            match heartbeat.runtime_mut().set(runtime::RESPONSE_HEADER, config.response_header, 0) {
                Ok(()) => tracing::info!(
                    "trace-response-header on: HTTP/1.x responses of the processes set for it name their server span"
                ),
                Err(e) => tracing::warn!("trace-response-header off: setting it in the kernel failed ({e})"),
            }
        }
        let tls = if bpf_loop {
            load_tls(&mut ebpf, config.tls)
        } else {
            if config.tls {
                // Its return probe shares the data path's header scan, which
                // has no bounded variant there.
                tracing::warn!(
                    "TLS plaintext capture off: this kernel lacks bpf_loop (Linux 5.17+); TLS connections stay muted"
                );
            }
            None
        };
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
        let conn_maps = ConnMaps::open(&mut ebpf)?;
        // Fail now rather than on every tick if the counters are unreadable.
        open_counters(&ebpf)?;
        Ok((
            Probes { ebpf, attached, skipped, injecting, sockmap_mode, client_socks, reads_sockets, tls, bpf_loop },
            EventSource::new(ring, heartbeat),
            conn_maps,
        ))
    }

    /// Sum over CPUs of each kernel counter.
    pub fn kernel_counters(&self) -> Vec<(Counter, u64)> {
        kernel_counters(&self.ebpf)
    }

    /// The trace-selection verdict map, once (None after the first call, or
    /// when the object has none).
    pub fn take_verdict_map(&mut self) -> Option<VerdictMap> {
        VerdictMap::open(&mut self.ebpf).ok()
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

    /// The kernel reads each new connection's addresses from its socket and
    /// skips the agent's own connections: userspace looks nothing up.
    pub fn reads_sockets(&self) -> bool {
        self.reads_sockets
    }

    /// How long sockets stay in INJECT_SOCKS (a `sockmap_mode` value).
    pub fn sockmap_mode(&self) -> u64 {
        self.sockmap_mode
    }

    /// The kernel lacks bpf_loop and runs the reduced mode's programs.
    pub fn reduced_mode(&self) -> bool {
        !self.bpf_loop
    }

    /// The TLS library probes are loaded: library files may be attached.
    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// Attaches the TLS probes to `lib` (once per file; logged once).
    pub fn attach_tls_library(&mut self, lib: &TlsLibrary) {
        if let Some(tls) = &mut self.tls {
            tls.attach(&mut self.ebpf, lib);
        }
    }

    /// Cookies of the sockets in INJECT_SOCKS now (empty when not injecting).
    pub fn client_sock_cookies(&self) -> Vec<u64> {
        match &self.client_socks {
            Some(socks) => socks.keys().filter_map(Result::ok).collect(),
            None => Vec::new(),
        }
    }
}

/// The TLS probe set, verified now; None (said in one line) when off or
/// refused. Not part of the attach report: it attaches per library file,
/// later, and a kernel without uprobes still traces everything else.
fn load_tls(ebpf: &mut Ebpf, on: bool) -> Option<TlsProbes> {
    if !on {
        tracing::info!("TLS plaintext capture off (--tls off): TLS connections stay muted");
        return None;
    }
    match super::tls::load(ebpf) {
        Ok(probes) => Some(probes),
        Err(reason) => {
            tracing::warn!(reason = %reason, "TLS plaintext capture off: its programs did not load on this kernel; TLS connections stay muted");
            None
        }
    }
}

/// Offsets read from the kernel's BTF by `read`, or why they are not
/// there (no BTF at all, or a struct or member missing).
fn from_btf<T>(btf: &Result<Btf, BtfError>, read: impl Fn(&Btf) -> Result<T, BtfError>) -> Result<T, String> {
    match btf {
        Ok(btf) => read(btf).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Hands the kernel the descriptor → socket walk of this kernel (before any
/// program runs). Without BTF the programs fall back to the caller's
/// sockaddr, and userspace looks up what is missing, per connection.
fn set_sock_walk(ebpf: &mut Ebpf, btf: &Result<Btf, BtfError>) -> Result<bool, ProbeError> {
    let offsets = match from_btf(btf, sock_walk_offsets) {
        Ok(offsets) => offsets,
        Err(reason) => {
            tracing::warn!(reason = %reason, "socket addresses not readable in the kernel: each new connection costs the agent a lookup in /proc, and its own export traffic is recognised by scanning its sockets");
            return Ok(false);
        }
    };
    let map = ebpf.map_mut(maps::SOCK_WALK).ok_or(ProbeError::MissingMap { name: maps::SOCK_WALK })?;
    let mut array: Array<&mut MapData, Plain<SockWalkOffsets>> =
        Array::try_from(map).map_err(|source| ProbeError::OpenMap { name: maps::SOCK_WALK, source })?;
    array
        .set(0, Plain(offsets), 0)
        .map_err(|e| ProbeError::Other { operation: "setting the socket walk offsets", message: e.to_string() })?;
    tracing::debug!(?offsets, "socket addresses read in the kernel");
    Ok(true)
}

/// Attaches `spec`'s program, or without bpf_loop its reduced-mode variant
/// when the object has one (the programs that do not loop have none).
fn attach(ebpf: &mut Ebpf, spec: &ProgramSpec, bpf_loop: bool) -> Result<(), AttachError> {
    if !spec.fields.is_empty() {
        check_format(spec)?;
    }
    let reduced = format!("{}{NOLOOP_SUFFIX}", spec.name);
    let name = if !bpf_loop && ebpf.program(&reduced).is_some() { reduced.as_str() } else { spec.name };
    let program: &mut TracePoint = ebpf.program_mut(name).ok_or(AttachError::NotInObject)?.try_into()?;
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

/// The running kernel's release (`uname -r`), "unknown" without /proc.
fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_else(|_| "unknown".into())
}

/// Whether the kernel offers bpf_loop to tracepoint programs (Linux 5.17+,
/// or a backport), asked with a two-instruction program. Without it the
/// programs that call it fail to load with messages that do not name it
/// (5.10: "number of funcs in func_info doesn't match number of subprogs"),
/// so their reduced-mode variants are attached instead. A failed probe
/// counts as yes: the programs' own load then says what is wrong.
fn has_bpf_loop() -> bool {
    match is_helper_supported(ProgramType::TracePoint, BpfHelper::BPF_FUNC_loop) {
        Ok(has) => has,
        Err(e) => {
            tracing::debug!(error = %e, "probing for bpf_loop failed; assuming the kernel has it");
            true
        }
    }
}

/// Why no data-path program loaded, in words a user can act on.
fn no_data_path_reason(bpf_loop: bool) -> &'static str {
    if bpf_loop {
        "the kernel refused every one of them (each program's reason is logged above)"
    } else {
        "this kernel lacks bpf_loop (Linux 5.17+) and refused the reduced mode's programs too (each program's reason is logged above)"
    }
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

/// What loading the object needs first, for the agent's probes and for
/// `waggle floor` alike: the object built in and the privileges (or the
/// error saying which is missing), the memlock limit raised and tracefs
/// mounted.
pub(super) fn prepare_to_load() -> Result<(), ProbeError> {
    if EBPF_OBJECT.is_empty() {
        return Err(ProbeError::NotBuilt);
    }
    if !has_bpf_privileges() {
        return Err(ProbeError::NotPrivileged);
    }
    raise_memlock_limit();
    ensure_tracefs();
    Ok(())
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
    fn a_refusal_without_bpf_loop_names_it_and_the_reduced_mode() {
        assert!(no_data_path_reason(false).contains("lacks bpf_loop (Linux 5.17+)"));
        assert!(no_data_path_reason(false).contains("reduced mode"));
        assert!(no_data_path_reason(true).contains("refused every one"));
        assert!(!no_data_path_reason(true).contains("bpf_loop"));
    }

    #[test]
    fn effective_capabilities_are_parsed() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }

    #[test]
    #[ignore = "needs the eBPF object embedded at build time: cargo xtask test runs it"]
    fn every_program_and_map_is_in_the_object() {
        use object::{Object, ObjectSymbol};
        assert!(
            !EBPF_OBJECT.is_empty(),
            "the agent was built without its eBPF object: run `cargo xtask build`, or set WAGGLE_EBPF_OBJECT"
        );
        let file = object::File::parse(EBPF_OBJECT).unwrap();
        let symbols: Vec<String> = file.symbols().filter_map(|s| s.name().ok().map(str::to_owned)).collect();
        for spec in PROGRAMS {
            assert!(symbols.iter().any(|s| s == spec.name), "program {} missing", spec.name);
        }
        for name in [SK_MSG_PROGRAM, SOCKOPS_PROGRAM, FCGI_PARAMS_PROGRAM] {
            assert!(symbols.iter().any(|s| s == name), "program {name} missing");
        }
        // The reduced mode's variants of every program that calls bpf_loop.
        for name in [
            "sys_exit_read",
            "sys_exit_recvfrom",
            "sys_exit_readv",
            "sys_exit_recvmsg",
            "sys_enter_write",
            "sys_enter_sendto",
            "sys_enter_writev",
            "sys_enter_sendmsg",
            "sys_enter_close_range",
            "sched_process_exec",
            "task_newtask",
        ] {
            let reduced = format!("{name}{NOLOOP_SUFFIX}");
            assert!(PROGRAMS.iter().any(|p| p.name == name), "{name} is not a program the loader attaches");
            assert!(symbols.contains(&reduced), "program {reduced} missing");
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
            maps::INJECT_SOCKS,
            maps::CONNECTING,
            maps::RUNTIME,
            maps::TRUSTED_NETS,
            maps::FCGI_WAIT,
            maps::FCGI_REQUEST,
            globals::AGENT_TGID,
            globals::CAPTURE_BYTES,
            globals::PROPAGATION,
        ] {
            assert!(symbols.iter().any(|s| s == name), "symbol {name} missing");
        }
    }
}
