//! The ABI between waggle's eBPF programs and its userspace agent.
//!
//! Every map name, constant and event layout is defined here exactly once.
//! All structs are `#[repr(C)]`, fixed-width and laid out so that there is no
//! implicit padding (their `bytemuck::Pod` derive refuses to compile
//! otherwise): the kernel writes them byte for byte into the ring buffer and
//! maps, and the agent reads them back as plain bytes.
#![no_std]

use bytemuck::{Pod, Zeroable};

pub mod addr;
pub mod exec_env;
pub mod fastcgi;
pub mod http;
pub mod tls;

mod counters;
pub use counters::{Counter, COUNTER_COUNT};

pub use addr::{mapped_v6, ConnEnds, FlowKey, SockWalkOffsets, AF_INET, AF_INET6};

/// Bytes of payload copied per data event. A power of two so the kernel side
/// can bound copy lengths with a mask the verifier understands.
pub const MAX_CAPTURE: usize = 4096;
/// Mask for `MAX_CAPTURE` (len & CAPTURE_MASK is always < MAX_CAPTURE).
pub const CAPTURE_MASK: usize = MAX_CAPTURE - 1;
/// Most iovec entries walked per readv/writev/recvmsg/sendmsg (bounded loop).
pub const MAX_IOVECS: usize = 8;

/// Map names, for userspace lookups (`ebpf.map_mut(maps::CONNS)`).
pub mod maps {
    pub const EVENTS: &str = "EVENTS";
    pub const CONNS: &str = "CONNS";
    pub const INET_STREAM_SOCKS: &str = "INET_STREAM_SOCKS";
    pub const PENDING: &str = "PENDING";
    pub const COUNTERS: &str = "COUNTERS";
    pub const SCRATCH: &str = "SCRATCH";
    pub const TRACKED_TGIDS: &str = "TRACKED_TGIDS";
    /// Per-CPU sequence the kernel mints connection ids from (kernel-only).
    pub const CONN_SEQ: &str = "CONN_SEQ";
    /// pid_tgid -> TraceCtx: the server request a thread is handling now.
    pub const THREAD_CTX: &str = "THREAD_CTX";
    /// pid_tgid -> InjectRequest: a traceparent the current send should carry
    /// (set by the syscall tracepoint, consumed by the sk_msg program).
    pub const INJECT_PENDING: &str = "INJECT_PENDING";
    /// SockHash of the sockets the sk_msg program runs on, keyed by socket
    /// cookie (unique across network namespaces): established client
    /// sockets of traced processes, and (`--trace-response-header`)
    /// accepted sockets on ports in SERVER_PORTS.
    pub const INJECT_SOCKS: &str = "INJECT_SOCKS";
    /// Local TCP port (u32) -> 1: ports a process with a response-header
    /// mode listens on; connections accepted on them enter INJECT_SOCKS
    /// (sockops PASSIVE_ESTABLISHED runs in softirq, where the accepting
    /// process is not known). Filled by the kernel at listen() and at
    /// accept() (kernel-only).
    pub const SERVER_PORTS: &str = "SERVER_PORTS";
    /// Socket cookies of connects by traced processes, from the connect()
    /// call (sockops TCP_CONNECT_CB, process context) until the connection
    /// is established and may enter INJECT_SOCKS (kernel-only).
    pub const CONNECTING: &str = "CONNECTING";
    /// Array of u64 the agent sets while running, indexed by [`super::runtime`].
    pub const RUNTIME: &str = "RUNTIME";
    /// LPM trie of peer networks whose incoming traceparent is trusted
    /// (consulted only when the TRUST_ALL_PEERS global is 0).
    pub const TRUSTED_NETS: &str = "TRUSTED_NETS";
    /// FlowKey -> 1: the agent's own TCP connections (its export traffic), from
    /// its connect() until it closes the socket. A server whose accepted
    /// connection is one of these is not traced (kernel-only).
    pub const OWN_FLOWS: &str = "OWN_FLOWS";
    /// FlowKey (only the peer half set) -> number of the agent's connect()
    /// calls to that address still running: covers the moment before
    /// OWN_FLOWS knows the connection, when on loopback the whole handshake
    /// (and the collector's accept) can already have happened (kernel-only).
    pub const OWN_CONNECTING: &str = "OWN_CONNECTING";
    /// Array of one [`super::SockWalkOffsets`], set by the agent before it
    /// attaches anything: how a program gets from a descriptor to its
    /// socket's addresses on the running kernel.
    pub const SOCK_WALK: &str = "SOCK_WALK";
    /// Link key (`ConnEnds::link_key`) -> TraceCtx of the client request a
    /// traced process just sent on that connection (FastCGI): the
    /// same-host server reading it takes it as parent (kernel-only).
    pub const LINKS: &str = "LINKS";
    /// tgid -> a [`super::verdict`] value: whether the trace-selection rules
    /// want the process traced. Consulted only when the FILTER global is 1;
    /// a process without an entry is undecided and traced.
    pub const TRACE_VERDICT: &str = "TRACE_VERDICT";
    /// pid_tgid -> where a FastCGI responder's thread stands in the params
    /// of a request that has no same-host link (kernel-only).
    pub const FCGI_WAIT: &str = "FCGI_WAIT";
    /// Per-CPU exit_ns of the read the FastCGI params program walks next
    /// (kernel-only).
    pub const FCGI_REQUEST: &str = "FCGI_REQUEST";
}

/// The program that walks a FastCGI responder's params, attached to
/// `syscalls:sys_exit_read` after `sys_exit_read`.
pub const FCGI_PARAMS_PROGRAM: &str = "fastcgi_params";

/// An empty program, attached by `waggle floor` to every tracepoint the
/// agent uses: the benchmark's floor (what any tracepoint agent pays).
pub const FLOOR_PROGRAM: &str = "waggle_floor";

/// The kernel injects only while the agent drained within this long: a
/// stopped or hung agent would otherwise send ids downstream for spans it
/// never exports.
pub const HEARTBEAT_STALE_NS: u64 = 5_000_000_000;
/// How often the agent refreshes HEARTBEAT.
pub const HEARTBEAT_INTERVAL_MS: u64 = 500;

/// Values of the INET_STREAM_SOCKS map: what `socket()` said about an
/// AF_INET/AF_INET6 descriptor. Datagram sockets are remembered too, so a
/// `connect()` on one (every DNS lookup does that) is known not to be TCP
/// instead of being reported as unverified.
pub mod inet_sock {
    /// SOCK_STREAM: TCP (or MPTCP).
    pub const STREAM: u8 = 1;
    /// Any other inet socket type (UDP, raw, ...): never tracked.
    pub const OTHER: u8 = 2;
}

/// Globals patched by the loader (`EbpfLoader::set_global`).
pub mod globals {
    /// tgid of the agent itself: never captured.
    pub const AGENT_TGID: &str = "AGENT_TGID";
    /// Payload bytes copied per event, <= MAX_CAPTURE (0 means MAX_CAPTURE).
    pub const CAPTURE_BYTES: &str = "CAPTURE_BYTES";
    /// 1: insert traceparent into outgoing HTTP/1.x requests; 0: don't.
    pub const PROPAGATION: &str = "PROPAGATION";
    /// u64: a trace the kernel starts is sampled when
    /// [`super::sampled_by_threshold`] says so (0: never, u64::MAX: always).
    pub const SAMPLE_THRESHOLD: &str = "SAMPLE_THRESHOLD";
    /// 1: an incoming traceparent's sampled flag decides (parentbased_*).
    pub const PARENT_BASED: &str = "PARENT_BASED";
    /// 1: every peer's incoming traceparent is trusted (no TRUSTED_NETS lookup).
    pub const TRUST_ALL_PEERS: &str = "TRUST_ALL_PEERS";
    /// Byte offsets in the running kernel's `struct tcp_sock` (from its BTF)
    /// of the fields that decide whether a send can complete without
    /// waiting for memory; 0 = unknown, and then nothing is injected.
    pub const OFF_SNDBUF: &str = "OFF_SNDBUF";
    pub const OFF_WMEM_QUEUED: &str = "OFF_WMEM_QUEUED";
    pub const OFF_WRITE_SEQ: &str = "OFF_WRITE_SEQ";
    pub const OFF_SND_NXT: &str = "OFF_SND_NXT";
    pub const OFF_NOTSENT_LOWAT: &str = "OFF_NOTSENT_LOWAT";
    /// net.ipv4.tcp_notsent_lowat, for sockets that set none of their own.
    pub const NOTSENT_LOWAT_DEFAULT: &str = "NOTSENT_LOWAT_DEFAULT";
    /// 1: trace-selection rules are configured: every program looks up the
    /// current process in TRACE_VERDICT, forks copy their parent's verdict
    /// and an exec makes the process undecided again (ProcessExec). 0: no
    /// lookup (the verifier drops the branch on this read-only value).
    pub const FILTER: &str = "FILTER";
}

/// Values of the TRACE_VERDICT map.
pub mod verdict {
    /// The rules keep the process traced.
    pub const TRACED: u8 = 1;
    /// The rules leave it out: no program follows its syscalls, its sockets
    /// never enter CONNS or the propagation sockmap.
    pub const UNTRACED: u8 = 2;
    /// A traced process's `--trace-response-header` mode (an
    /// `http::response::mode` value) sits above these bits, plus one: 0
    /// there means the process was decided before the setting was known,
    /// and the global mode applies. Forks copy it with the verdict.
    pub const RESPONSE_SHIFT: u8 = 2;

    /// The verdict byte of a traced process with response-header `mode`.
    pub const fn traced_with(mode: u8) -> u8 {
        TRACED | ((mode + 1) << RESPONSE_SHIFT)
    }

    /// The response-header mode a verdict byte carries, if any.
    pub const fn response_mode(v: u8) -> Option<u8> {
        match v >> RESPONSE_SHIFT {
            0 => None,
            m => Some(m - 1),
        }
    }
}

/// Indexes of the RUNTIME array.
pub mod runtime {
    /// CLOCK_MONOTONIC ns of the agent's last drain. The kernel stops
    /// injecting when it is older than [`super::HEARTBEAT_STALE_NS`].
    pub const HEARTBEAT: u32 = 0;
    /// A [`super::sockmap_mode`] value, set once the agent has checked how
    /// the kernel treats sockets in a sockmap.
    pub const SOCKMAP_MODE: u32 = 1;
    /// `--trace-response-header`, set once its start-up gate passed: 0
    /// off for every process; else the global `http::response::mode` in
    /// the low byte, plus [`RESPONSE_PER_PROCESS`] when trace-selection
    /// rules give processes their own (in their TRACE_VERDICT byte).
    pub const RESPONSE_HEADER: u32 = 2;
    pub const RESPONSE_PER_PROCESS: u64 = 0x100;
    pub const COUNT: u32 = 3;
}

/// How long a client socket stays in INJECT_SOCKS.
pub mod sockmap_mode {
    /// Not decided yet: no socket enters the map.
    pub const UNSET: u64 = 0;
    /// For its lifetime (`--propagation unsafe-keepalive`): every request
    /// of a keep-alive connection can carry traceparent, but the socket's
    /// receive path runs through the kernel's tcp_bpf code all along
    /// (FIONREAD misreports on current kernels; a missed FIN was seen).
    pub const KEEP: u64 = 1;
    /// Until it first transmits a packet after the handshake (its first
    /// request, or the ACK of the first bytes it receives): no socket is in
    /// the map while it has received data waiting, so the application's
    /// receive path never meets tcp_bpf. Only the first request of a
    /// connection can carry a traceparent. The default.
    pub const LEAVE_AT_FIRST_TRANSMIT: u64 = 2;
}

/// `SAMPLE_THRESHOLD` for a trace-id ratio (as the OpenTelemetry SDKs
/// compute it: the low 8 bytes of the trace id, shifted right once, below
/// ratio * 2^63).
pub fn ratio_threshold(ratio: f64) -> u64 {
    if ratio.is_nan() || ratio <= 0.0 {
        0
    } else if ratio >= 1.0 {
        u64::MAX
    } else {
        (ratio * (1u64 << 63) as f64) as u64
    }
}

/// The one sampling rule for traces waggle starts, in the kernel and the agent.
#[inline(always)]
pub fn sampled_by_threshold(trace_id: &[u8; 16], threshold: u64) -> bool {
    let low = u64::from_be_bytes([
        trace_id[8],
        trace_id[9],
        trace_id[10],
        trace_id[11],
        trace_id[12],
        trace_id[13],
        trace_id[14],
        trace_id[15],
    ]);
    (low >> 1) < threshold
}

/// Length of the header line the sk_msg program inserts:
/// `traceparent: 00-<32 hex>-<16 hex>-01\r\n`.
pub const TRACEPARENT_LINE_LEN: usize = 70;
pub const THREAD_CTX_MAX_ENTRIES: u32 = 16384;
/// Client requests waiting for a same-host server to take their ids.
pub const LINKS_MAX_ENTRIES: u32 = 4096;
/// FastCGI responder threads between a request's begin and its params' end.
pub const FCGI_WAIT_MAX_ENTRIES: u32 = 4096;

pub const INJECT_PENDING_MAX_ENTRIES: u32 = 4096;
pub const INJECT_SOCKS_MAX_ENTRIES: u32 = 65536;
pub const CONNECTING_MAX_ENTRIES: u32 = 16384;
pub const SERVER_PORTS_MAX_ENTRIES: u32 = 1024;
pub const TRUSTED_NETS_MAX_ENTRIES: u32 = 1024;
/// The agent holds a handful of export connections at a time.
pub const OWN_FLOWS_MAX_ENTRIES: u32 = 1024;

/// The kernel wakes the agent only once this many bytes wait in the ring
/// buffer: at high request rates a wake-up per record costs more than the
/// record. The agent also drains every [`DRAIN_INTERVAL_MS`], so a quiet
/// node's few events are never stuck.
pub const WAKEUP_WATERMARK_BYTES: u64 = 64 * 1024;
pub const DRAIN_INTERVAL_MS: u64 = 10;

/// Default sizes; userspace may override max_entries at load time.
pub const EVENTS_RINGBUF_BYTES: u32 = 16 * 1024 * 1024;
pub const CONNS_MAX_ENTRIES: u32 = 65536;
pub const INET_STREAM_SOCKS_MAX_ENTRIES: u32 = 65536;
pub const PENDING_MAX_ENTRIES: u32 = 16384;
pub const TRACKED_TGIDS_MAX_ENTRIES: u32 = 16384;
/// Processes the trace-selection verdict map holds (a node's process count
/// stays well below; a full map leaves new processes undecided: traced).
pub const TRACE_VERDICT_MAX_ENTRIES: u32 = 65536;

/// Connection ids minted by userspace (seeded from /proc) have this bit set so
/// they never collide with kernel-minted ids.
pub const USERSPACE_CONN_ID_BIT: u64 = 1 << 63;

/// Key of every per-file-descriptor map: (process, descriptor). Ordered by
/// process first, so one process's keys form a range.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Pod, Zeroable)]
pub struct SockKey {
    pub tgid: u32,
    pub fd: u32,
}

/// Which side of a TCP connection the traced process is.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Unknown = 0,
    /// The process accepted the connection: it serves requests.
    Server = 1,
    /// The process connected: it sends requests.
    Client = 2,
}

impl Role {
    pub fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Server,
            2 => Role::Client,
            _ => Role::Unknown,
        }
    }
}

/// Flags in `ConnInfo::flags`.
/// Flags of a [`ConnEvent`].
pub mod conn_event_flags {
    /// Family and both addresses were read from the kernel's socket (not
    /// from the caller's sockaddr): userspace needs no lookup of its own.
    pub const FROM_SOCKET: u8 = 1;
}

pub mod conn_flags {
    /// Userspace decided this connection carries nothing it parses (TLS,
    /// unknown protocol, the agent's own export traffic): the kernel keeps
    /// tracking it but copies no payload.
    pub const MUTED: u8 = 1;
    /// Server side: the peer is outside the trusted networks; its incoming
    /// traceparent is ignored.
    pub const UNTRUSTED_PEER: u8 = 2;
    /// Client side: the kernel has seen a send on this connection (the
    /// first one decides NOT_HTTP1).
    pub const SENT: u8 = 4;
    /// Client side: the first send seen was not the start of an HTTP/1.x
    /// request (TLS, SSH, a binary protocol, a connection picked up
    /// mid-stream): nothing is ever injected into this connection.
    pub const NOT_HTTP1: u8 = 8;
    /// Client side: where a request ended could not be told from its header
    /// block (chunked or unknown length, an upgrade, a header block the
    /// kernel did not see whole): no later send is known to start a request,
    /// so nothing more is injected into this connection. Server side
    /// (`--trace-response-header`), the same for responses.
    pub const BOUNDARY_LOST: u8 = 16;
    /// Client side: no later send on this connection can be injected (its
    /// socket leaves the sockmap at its first request): request starts are
    /// told from their first bytes, for their ids, without copying and
    /// scanning their header block.
    pub const INJECTION_OVER: u8 = 32;
    /// Client side: the first send was a FastCGI `FCGI_BEGIN_REQUEST` (set
    /// with NOT_HTTP1): each later one starts a request whose ids go to
    /// `LINKS` for a same-host responder; nothing is ever injected.
    pub const FASTCGI: u8 = 64;
}

/// Flags of a [`TraceCtxEvent`] / [`TraceCtx`].
pub mod ctx_flags {
    /// W3C sampled flag.
    pub const SAMPLED: u8 = 1;
    /// `parent_span_id` is valid (a server request carried a traceparent, or
    /// a client request was sent while its thread handled a server request).
    pub const HAS_PARENT: u8 = 2;
    /// The sk_msg program inserted a traceparent carrying `span_id`.
    pub const INJECTED: u8 = 4;
    /// Kernel-only, never sent: the thread's request was answered. Its
    /// THREAD_CTX entry stays and the next request overwrites it in place,
    /// which costs a store instead of an LRU map delete and insert.
    pub const ENDED: u8 = 8;
    /// Kernel-only, never sent: the request is a HEAD (its response has no
    /// body whatever its Content-Length says).
    pub const HEAD_REQUEST: u8 = 16;
}

/// Why an injection was skipped (index into COUNTERS after the base counters).
pub mod skip_reason {
    /// The application's header block has its own traceparent.
    pub const ALREADY_HAS_TRACEPARENT: u32 = 0;
    /// The bytes the socket layer got are not those the syscall saw.
    pub const NOT_REQUEST_START: u32 = 1;
    /// Looks like a request start but lies inside the current request's
    /// body (counted by Content-Length).
    pub const INSIDE_BODY: u32 = 2;
    /// The request's header block was not whole in its first send's first
    /// 4 KiB.
    pub const HEADERS_INCOMPLETE: u32 = 3;
    pub const PUSH_FAILED: u32 = 4;
    pub const NOT_IN_SOCKHASH: u32 = 5;
    /// An earlier request's end was unknown (BOUNDARY_LOST).
    pub const BOUNDARY_LOST: u32 = 6;
    /// The socket might not take the whole message without waiting for
    /// memory: a partial send could cut the inserted line.
    pub const SEND_BUFFER_LOW: u32 = 7;
    /// The agent has not drained events for HEARTBEAT_STALE_NS.
    pub const AGENT_STALLED: u32 = 8;
    pub const COUNT: u32 = 9;
}

/// A trace context as the kernel keeps it per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TraceCtx {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: [u8; 8],
    pub flags: u8,
    pub _pad: [u8; 7],
    /// Connection of the server request (so its response write ends it).
    pub conn_id: u64,
}

/// Value of the CONNS map: one tracked TCP connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Pod, Zeroable)]
pub struct ConnInfo {
    pub conn_id: u64,
    pub role: u8,
    /// AF_INET (2) or AF_INET6 (10); 0 when unknown.
    pub family: u8,
    pub flags: u8,
    /// [`tls::conn_tls`] bits (TLS plaintext read at the library).
    pub tls: u8,
    pub _pad: [u8; 4],
    /// Client side: bytes of the current request the application has yet to
    /// send; the next send is a request boundary when 0. Server side
    /// (`--trace-response-header`): the same for the current response.
    pub req_remaining: u64,
    /// `ConnEnds::link_key` of the connection (0: its local end was not
    /// known): where a same-host client request leaves its ids for the
    /// server that accepted the connection (`LINKS`).
    pub link: u64,
}

/// Kind byte at offset 0 of every ring-buffer record.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Data = 1,
    ConnOpen = 2,
    ConnClose = 3,
    /// accept/connect succeeded on a descriptor the kernel could not prove to
    /// be an inet stream socket; userspace checks and may start tracking it.
    ConnUnverified = 4,
    /// A process that owns tracked sockets forked: its child inherited them.
    ProcessFork = 5,
    ProcessExit = 6,
    /// A server request started: the ids its span must carry (TraceCtxEvent).
    ServerCtx = 7,
    /// A client request started on a thread with a context, or had a
    /// traceparent injected: the ids its span must carry (TraceCtxEvent).
    ClientCtx = 8,
    /// A tracked process forked and the kernel copied one of its connections
    /// to the child (ConnEvent: `tgid` the child, `tid` the parent's tgid,
    /// `fd`, `conn_id` the child's own id; no addresses: they are the
    /// parent's connection's).
    ConnInherited = 9,
    /// A thread handling a request created a thread (ProcessEvent): the new
    /// thread works for that request, as the kernel decided for its HTTP
    /// calls.
    ThreadStart = 10,
    /// A process exec'ed while trace selection is on (ProcessEvent, tgid
    /// only): the kernel made it undecided (traced) until userspace decides.
    ProcessExec = 11,
    /// A process exec'ed: the OTEL_* variables of its new environment
    /// (`exec_env::ExecEnvEvent`, or its header alone when none was found).
    ExecEnv = 12,
    /// A Data record carrying the trace context its syscall started: a
    /// [`DataCtxPrefix`], then the DataEvent and its payload. Stands for a
    /// ServerCtx or ClientCtx record followed by that Data record, in one
    /// ring reservation instead of two.
    DataCtx = 13,
}

impl EventKind {
    pub fn from_u8(v: u8) -> Option<EventKind> {
        Some(match v {
            1 => EventKind::Data,
            2 => EventKind::ConnOpen,
            3 => EventKind::ConnClose,
            4 => EventKind::ConnUnverified,
            5 => EventKind::ProcessFork,
            6 => EventKind::ProcessExit,
            7 => EventKind::ServerCtx,
            8 => EventKind::ClientCtx,
            9 => EventKind::ConnInherited,
            10 => EventKind::ThreadStart,
            11 => EventKind::ProcessExec,
            12 => EventKind::ExecEnv,
            13 => EventKind::DataCtx,
            _ => return None,
        })
    }
}

/// Direction of a payload as seen by the traced process.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// read/recv*: bytes the process received.
    Ingress = 1,
    /// write/send*: bytes the process sent.
    Egress = 2,
}

impl Direction {
    pub fn from_u8(v: u8) -> Option<Direction> {
        match v {
            1 => Some(Direction::Ingress),
            2 => Some(Direction::Egress),
            _ => None,
        }
    }
}

/// Which syscall left a PENDING entry or produced a data event. Values are
/// not contiguous: ids of syscalls no program handles were dropped, the
/// others kept theirs.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallId {
    Read = 1,
    Write = 2,
    Recvfrom = 3,
    Sendto = 4,
    Readv = 5,
    Writev = 6,
    Recvmsg = 7,
    Sendmsg = 8,
    Accept = 11,
    Accept4 = 12,
    Connect = 13,
    /// socket(): only seen in PENDING, never in an event.
    Socket = 15,
    /// sendfile(): the kernel copies file pages, no user buffer to read; the
    /// event carries no payload, only `total_len` (a gap parsers skip).
    Sendfile = 16,
}

/// Header of a data record; `captured_len` payload bytes follow it directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct DataEvent {
    pub kind: u8,
    pub direction: u8,
    pub syscall: u8,
    pub role: u8,
    /// Payload bytes that follow this header (<= MAX_CAPTURE).
    pub captured_len: u32,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// [`tls::DATA_TLS`] when the payload is TLS plaintext.
    pub flags: u32,
    pub conn_id: u64,
    /// Bytes the syscall actually transferred (>= captured_len).
    pub total_len: u64,
    /// CLOCK_MONOTONIC ns at syscall entry.
    pub enter_ns: u64,
    /// CLOCK_MONOTONIC ns at syscall exit.
    pub exit_ns: u64,
}

/// Connection lifecycle record (ConnOpen, ConnClose, ConnUnverified).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConnEvent {
    pub kind: u8,
    pub role: u8,
    /// AF_INET / AF_INET6 of `peer_addr`, 0 when the kernel did not see it.
    pub family: u8,
    /// [`conn_event_flags`].
    pub flags: u8,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub conn_id: u64,
    pub ts_ns: u64,
    /// IPv4 in the first 4 bytes, or IPv6; network byte order.
    pub peer_addr: [u8; 16],
    /// Host byte order.
    pub peer_port: u16,
    /// Host byte order; 0 when the kernel did not read the socket.
    pub local_port: u16,
    pub _pad1: [u8; 4],
    /// Like `peer_addr`; valid when `flags` has [`conn_event_flags::FROM_SOCKET`].
    pub local_addr: [u8; 16],
    /// Thread name (task comm) of the process that opened the connection:
    /// names a short-lived client (curl) that is gone from /proc before its
    /// span is assembled.
    pub comm: [u8; 16],
}

/// Process lifecycle record (ProcessFork, ProcessExit, ThreadStart,
/// ProcessExec).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ProcessEvent {
    pub kind: u8,
    pub _pad0: [u8; 3],
    pub tgid: u32,
    /// Parent tgid for ProcessFork; the process itself for ThreadStart; 0
    /// otherwise.
    pub parent_tgid: u32,
    /// The thread that forked (ProcessFork) or created the thread
    /// (ThreadStart); 0 otherwise.
    pub parent_tid: u32,
    /// The new thread (ThreadStart); 0 otherwise.
    pub tid: u32,
    pub _pad1: u32,
    pub ts_ns: u64,
}

/// Trace identity of one request, emitted by the kernel so userspace builds
/// the span with exactly the ids the kernel used (and injected).
///
/// `ts_ns` equals the matching DataEvent's `exit_ns` (ServerCtx: the read
/// that brought the request's first bytes) or `enter_ns` (ClientCtx: the
/// send that carried them), so userspace matches ctx and span by
/// (conn_id, timestamp).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct TraceCtxEvent {
    pub kind: u8,
    pub flags: u8,
    pub _pad0: [u8; 2],
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub conn_id: u64,
    pub ts_ns: u64,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: [u8; 8],
}

/// Start of an [`EventKind::DataCtx`] record: what a TraceCtxEvent carries
/// beyond the DataEvent that follows it. Its tgid, tid, fd and conn_id are
/// that event's; its timestamp the event's `exit_ns` (ServerCtx) or
/// `enter_ns` (ClientCtx), as for the separate record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct DataCtxPrefix {
    /// [`EventKind::DataCtx`].
    pub kind: u8,
    /// [`EventKind::ServerCtx`] or [`EventKind::ClientCtx`].
    pub ctx_kind: u8,
    /// As `TraceCtxEvent::flags`.
    pub flags: u8,
    pub _pad0: [u8; 5],
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: [u8; 8],
}

/// Pending injection for the current send of a thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct InjectRequest {
    pub ctx: TraceCtx,
    /// First 8 bytes of the request as the syscall tracepoint read them; the
    /// sk_msg program injects only if the message starts with the same.
    pub head: u64,
    /// Where the request line and the header block end, as scanned by the
    /// tracepoint (both <= MAX_CAPTURE).
    pub request_line_end: u16,
    pub headers_end: u16,
    /// Set by the sk_msg program once the header is in.
    pub injected: u8,
    /// skip_reason (responses: `http::response::skip`) + 1 when sk_msg
    /// declined; 0 when not decided.
    pub skipped: u8,
    /// Which line goes in: [`INJECT_TRACEPARENT`] into a request, else an
    /// `http::response::mode` into a response (after its status line;
    /// `request_line_end` is then the status line's end).
    pub line: u8,
    pub _pad: u8,
}

/// `InjectRequest::line` of a request's traceparent.
pub const INJECT_TRACEPARENT: u8 = 0;

/// `InjectRequest::skipped` of an entry whose send has returned. The entry
/// stays in INJECT_PENDING for the thread's next request to overwrite: an
/// LRU insert and delete per request cost more than the rest of its map
/// work. Decided (never acted on by sk_msg) and never reported again.
pub const INJECT_TAKEN: u8 = 0xff;

/// 16 address bytes aligned to 8: the kernel zeroes or copies them with two
/// stores, where a byte array's alignment of 1 turns the same into a call of
/// a byte-at-a-time memset subprogram.
#[repr(C, align(8))]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct AddrBytes(pub [u8; 16]);

/// Value of the PENDING map: what a syscall's enter handler leaves for its
/// exit handler, keyed by pid_tgid. Shared so the agent can stand in for an
/// enter the kernel never saw: a thread already blocked in a read on a
/// connection when the probes attached.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, Pod, Zeroable)]
pub struct Pending {
    /// CLOCK_MONOTONIC ns at syscall entry.
    pub enter_ns: u64,
    /// User pointer: payload buffer, iovec array, msghdr or peer sockaddr.
    pub ptr: u64,
    /// Buffer length or iovec count.
    pub len: u64,
    /// connect(): peer address, network order.
    pub addr: AddrBytes,
    pub fd: u32,
    /// connect(): peer port, host order.
    pub port: u16,
    /// SyscallId of the enter handler; an exit handler ignores entries left
    /// by another syscall.
    pub syscall: u8,
    /// socket()/connect(): address family.
    pub family: u8,
    /// socket(): inet_sock value. Data syscalls: 1 when the enter handler
    /// left an INJECT_PENDING entry for the exit to take. Padded with whole
    /// aligned words so zero-initialising becomes a few stores, not a memset
    /// call.
    pub aux: u64,
}

#[cfg(test)]
mod tests;
