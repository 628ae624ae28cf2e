//! The ABI between waggle's eBPF programs and its userspace agent.
//!
//! Every map name, constant and event layout is defined here exactly once.
//! All structs are `#[repr(C)]`, fixed-width and laid out so that there is no
//! implicit padding: the kernel writes them byte for byte into the ring buffer
//! and the agent reads them back with `read_unaligned`.
#![no_std]

/// Bytes of payload copied per data event. A power of two so the kernel side
/// can bound copy lengths with a mask the verifier understands.
pub const MAX_CAPTURE: usize = 4096;
/// Mask for `MAX_CAPTURE` (len & CAPTURE_MASK is always < MAX_CAPTURE).
pub const CAPTURE_MASK: usize = MAX_CAPTURE - 1;
/// Most iovec entries walked per readv/writev/recvmsg/sendmsg (bounded loop).
pub const MAX_IOVECS: usize = 8;
/// Size of the per-CPU scratch buffer a data event is assembled in.
pub const SCRATCH_SIZE: usize = core::mem::size_of::<DataEvent>() + MAX_CAPTURE;

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
    /// SockHash of established client sockets the sk_msg program runs on.
    pub const CLIENT_SOCKS: &str = "CLIENT_SOCKS";
    /// Per-CPU copy of the first bytes of a message the sk_msg program scans
    /// (kernel-only).
    pub const MSG_SCRATCH: &str = "MSG_SCRATCH";
}

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
}

/// Length of the header line the sk_msg program inserts:
/// `traceparent: 00-<32 hex>-<16 hex>-01\r\n`.
pub const TRACEPARENT_LINE_LEN: usize = 70;
pub const THREAD_CTX_MAX_ENTRIES: u32 = 16384;
pub const INJECT_PENDING_MAX_ENTRIES: u32 = 4096;
pub const CLIENT_SOCKS_MAX_ENTRIES: u32 = 65536;

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

/// Connection ids minted by userspace (seeded from /proc) have this bit set so
/// they never collide with kernel-minted ids.
pub const USERSPACE_CONN_ID_BIT: u64 = 1 << 63;

/// Key of every per-file-descriptor map: (process, descriptor).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
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
pub mod conn_flags {
    /// Userspace decided this connection carries nothing it parses (TLS,
    /// unknown protocol, the agent's own export traffic): the kernel keeps
    /// tracking it but copies no payload.
    pub const MUTED: u8 = 1;
    /// Client side: an HTTP request was sent and its final (non-1xx)
    /// response has not been read yet. A send in this state is never a new
    /// request (it is a body, a header continuation or a pipelined request),
    /// so nothing is injected into it.
    pub const AWAITING_RESPONSE: u8 = 2;
    /// Client side: the kernel has seen a send on this connection (the
    /// first one decides NOT_HTTP1).
    pub const SENT: u8 = 4;
    /// Client side: the first send seen was not the start of an HTTP/1.x
    /// request (TLS, SSH, a binary protocol, a connection picked up
    /// mid-stream): nothing is ever injected into this connection.
    pub const NOT_HTTP1: u8 = 8;
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
}

/// Why an injection was skipped (index into COUNTERS after the base counters).
pub mod skip_reason {
    pub const ALREADY_HAS_TRACEPARENT: u32 = 0;
    pub const NOT_REQUEST_START: u32 = 1;
    pub const AWAITING_RESPONSE: u32 = 2;
    pub const NO_REQUEST_LINE_END: u32 = 3;
    pub const PUSH_FAILED: u32 = 4;
    pub const NOT_IN_SOCKHASH: u32 = 5;
    pub const COUNT: u32 = 6;
}

/// Key of CLIENT_SOCKS: a connection's addresses as the sockops program
/// sees them (ports as in `struct bpf_sock_ops`: local in host order, remote
/// in network order). IPv4 addresses sit in the first word.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockTuple {
    pub family: u32,
    pub local_port: u32,
    pub remote_port: u32,
    pub _pad: u32,
    pub local_ip: [u32; 4],
    pub remote_ip: [u32; 4],
}

/// A trace context as the kernel keeps it per thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ConnInfo {
    pub conn_id: u64,
    pub role: u8,
    /// AF_INET (2) or AF_INET6 (10); 0 when unknown.
    pub family: u8,
    pub flags: u8,
    pub _pad: [u8; 5],
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

/// Which syscall produced a data event (diagnostics only).
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
    Recvmmsg = 9,
    Sendmmsg = 10,
    Accept = 11,
    Accept4 = 12,
    Connect = 13,
    Close = 14,
    /// socket(): only seen in PENDING, never in an event.
    Socket = 15,
    /// sendfile(): the kernel copies file pages, no user buffer to read; the
    /// event carries no payload, only `total_len` (a gap parsers skip).
    Sendfile = 16,
}

/// Header of a data record; `captured_len` payload bytes follow it directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
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
    pub _pad: u32,
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
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnEvent {
    pub kind: u8,
    pub role: u8,
    /// AF_INET / AF_INET6 of `peer_addr`, 0 when the kernel did not see it.
    pub family: u8,
    pub _pad0: u8,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub conn_id: u64,
    pub ts_ns: u64,
    /// IPv4 in the first 4 bytes, or IPv6; network byte order.
    pub peer_addr: [u8; 16],
    /// Host byte order.
    pub peer_port: u16,
    pub _pad1: [u8; 6],
    /// Thread name (task comm) of the process that opened the connection:
    /// names a short-lived client (curl) that is gone from /proc before its
    /// span is assembled.
    pub comm: [u8; 16],
}

/// Process lifecycle record (ProcessFork, ProcessExit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEvent {
    pub kind: u8,
    pub _pad0: [u8; 3],
    pub tgid: u32,
    /// Parent tgid for ProcessFork; 0 otherwise.
    pub parent_tgid: u32,
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
#[derive(Clone, Copy, Debug, Default)]
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

/// Pending injection for the current send of a thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct InjectRequest {
    pub ctx: TraceCtx,
    /// Set by the sk_msg program once the header is in.
    pub injected: u8,
    /// skip_reason + 1 when sk_msg declined; 0 when not decided.
    pub skipped: u8,
    pub _pad: [u8; 6],
}

/// Value of the PENDING map: what a syscall's enter handler leaves for its
/// exit handler, keyed by pid_tgid. Shared so the agent can stand in for an
/// enter the kernel never saw: a thread already blocked in a read on a
/// connection when the probes attached.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Pending {
    /// CLOCK_MONOTONIC ns at syscall entry.
    pub enter_ns: u64,
    /// User pointer: payload buffer, iovec array, msghdr or peer sockaddr.
    pub ptr: u64,
    /// Buffer length or iovec count.
    pub len: u64,
    /// connect(): peer address, network order.
    pub addr: [u8; 16],
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

/// Per-CPU counters, indexes into the COUNTERS PerCpuArray.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// A ring-buffer write failed: the agent fell behind and an event was lost.
    EventsLost = 0,
    DataEvents = 1,
    /// Payload longer than the capture size (header + prefix were sent).
    DataTruncated = 2,
    ConnsOpened = 3,
    /// CONNS / INET_STREAM_SOCKS / PENDING insert failed.
    MapInsertFailed = 4,
    /// Failed bpf_probe_read_user of a payload or argument.
    ReadFailed = 5,
    /// Data on a muted connection (counted, not copied).
    MutedEvents = 6,
    /// traceparent headers inserted into outgoing requests.
    Injected = 7,
    /// Injection skipped, one counter per `skip_reason` (8..8+COUNT).
    SkipAlreadyHasTraceparent = 8,
    SkipNotRequestStart = 9,
    SkipAwaitingResponse = 10,
    SkipNoRequestLineEnd = 11,
    SkipPushFailed = 12,
    SkipNotInSockhash = 13,
    /// Server requests that arrived with a valid traceparent.
    IncomingTraceparent = 14,
    /// Server request contexts the kernel started.
    ServerCtxStarted = 15,
}

pub const COUNTER_COUNT: u32 = 16;

impl Counter {
    /// The skip counter for a `skip_reason` value.
    pub const fn skip(reason: u32) -> u32 {
        Counter::SkipAlreadyHasTraceparent as u32 + reason
    }

    pub const ALL: [Counter; 16] = [
        Counter::EventsLost,
        Counter::DataEvents,
        Counter::DataTruncated,
        Counter::ConnsOpened,
        Counter::MapInsertFailed,
        Counter::ReadFailed,
        Counter::MutedEvents,
        Counter::Injected,
        Counter::SkipAlreadyHasTraceparent,
        Counter::SkipNotRequestStart,
        Counter::SkipAwaitingResponse,
        Counter::SkipNoRequestLineEnd,
        Counter::SkipPushFailed,
        Counter::SkipNotInSockhash,
        Counter::IncomingTraceparent,
        Counter::ServerCtxStarted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::EventsLost => "kernel_events_lost",
            Counter::DataEvents => "kernel_data_events",
            Counter::DataTruncated => "kernel_data_truncated",
            Counter::ConnsOpened => "kernel_conns_opened",
            Counter::MapInsertFailed => "kernel_map_insert_failed",
            Counter::ReadFailed => "kernel_user_read_failed",
            Counter::MutedEvents => "kernel_muted_events",
            Counter::Injected => "propagation_injected",
            Counter::SkipAlreadyHasTraceparent => "propagation_skipped_has_traceparent",
            Counter::SkipNotRequestStart => "propagation_skipped_not_request_start",
            Counter::SkipAwaitingResponse => "propagation_skipped_awaiting_response",
            Counter::SkipNoRequestLineEnd => "propagation_skipped_no_request_line_end",
            Counter::SkipPushFailed => "propagation_skipped_push_failed",
            Counter::SkipNotInSockhash => "propagation_skipped_not_in_sockhash",
            Counter::IncomingTraceparent => "propagation_incoming_traceparent",
            Counter::ServerCtxStarted => "propagation_server_ctx_started",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain-old-data: #[repr(C)], fixed-width integer fields only, no
    // implicit padding (checked by the layout tests below), any bit pattern valid.
    unsafe impl aya::Pod for SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ConnInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TraceCtx {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Pending {}
    // SAFETY: as above.
    unsafe impl aya::Pod for InjectRequest {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockTuple {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<SockKey>(), 8);
        assert_eq!(size_of::<ConnInfo>(), 16);
        assert_eq!(size_of::<DataEvent>(), 56);
        assert_eq!(size_of::<ConnEvent>(), 72);
        assert_eq!(size_of::<ProcessEvent>(), 24);
        assert_eq!(size_of::<TraceCtx>(), 48);
        assert_eq!(size_of::<Pending>(), 56);
        assert_eq!(size_of::<TraceCtxEvent>(), 64);
        assert_eq!(size_of::<InjectRequest>(), 56);
        assert_eq!(size_of::<SockTuple>(), 48);
        assert_eq!(b"traceparent: 00-".len() + 32 + 1 + 16 + 1 + 2 + 2, TRACEPARENT_LINE_LEN);
    }

    #[test]
    fn capture_mask_bounds_capture() {
        assert!(MAX_CAPTURE.is_power_of_two());
        assert_eq!(CAPTURE_MASK + 1, MAX_CAPTURE);
    }
}
