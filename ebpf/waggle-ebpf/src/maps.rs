//! Every map and loader-patched global of the object, and the layout of the
//! per-CPU scratch buffer. Names must match `waggle_common::maps` and
//! `waggle_common::globals`: the agent finds them by name.
use core::mem::size_of;

use aya_ebpf::{
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, HashMap, LruHashMap, PerCpuArray, RingBuf, SockHash},
    Global,
};
use waggle_common::{
    fastcgi::{ParamScan, RecordWalk},
    ConnEnds, ConnInfo, DataCtxPrefix, DataEvent, FlowKey, InjectRequest, Pending, SockKey, SockWalkOffsets, TraceCtx,
    CONNECTING_MAX_ENTRIES, CONNS_MAX_ENTRIES, COUNTER_COUNT, EVENTS_RINGBUF_BYTES, FCGI_WAIT_MAX_ENTRIES,
    INET_STREAM_SOCKS_MAX_ENTRIES, INJECT_PENDING_MAX_ENTRIES, INJECT_SOCKS_MAX_ENTRIES, LINKS_MAX_ENTRIES,
    MAX_CAPTURE, OWN_FLOWS_MAX_ENTRIES, PENDING_MAX_ENTRIES, SERVER_PORTS_MAX_ENTRIES, THREAD_CTX_MAX_ENTRIES,
    TRACE_VERDICT_MAX_ENTRIES, TRACKED_TGIDS_MAX_ENTRIES, TRUSTED_NETS_MAX_ENTRIES,
};

// ---- globals (patched by the loader through EbpfLoader::override_global) ----

/// tgid of the agent: never captured.
#[unsafe(no_mangle)]
pub(crate) static AGENT_TGID: Global<u32> = Global::new(0);

/// 1: trace-selection rules are on (TRACE_VERDICT is consulted); 0: every
/// process but the agent is traced and no program looks the map up.
#[unsafe(no_mangle)]
pub(crate) static FILTER: Global<u32> = Global::new(0);

/// Payload bytes copied per data event; 0 or anything above MAX_CAPTURE means
/// MAX_CAPTURE.
#[unsafe(no_mangle)]
pub(crate) static CAPTURE_BYTES: Global<u32> = Global::new(MAX_CAPTURE as u32);

/// 1: the sk_msg program inserts traceparent headers; 0: it passes every
/// message untouched. Trace contexts are tracked (and reported) either way.
#[unsafe(no_mangle)]
pub(crate) static PROPAGATION: Global<u32> = Global::new(0);

/// Traces the kernel starts are sampled below this (waggle_common::
/// sampled_by_threshold); the default samples everything.
#[unsafe(no_mangle)]
pub(crate) static SAMPLE_THRESHOLD: Global<u64> = Global::new(u64::MAX);

/// 1: an incoming traceparent's sampled flag is followed.
#[unsafe(no_mangle)]
pub(crate) static PARENT_BASED: Global<u32> = Global::new(1);

/// 1: every peer's incoming traceparent is trusted; 0: only TRUSTED_NETS'.
#[unsafe(no_mangle)]
pub(crate) static TRUST_ALL_PEERS: Global<u32> = Global::new(1);

/// Field offsets in `struct tcp_sock` of the running kernel (0: unknown,
/// and then nothing is injected) and net.ipv4.tcp_notsent_lowat.
#[unsafe(no_mangle)]
pub(crate) static OFF_SNDBUF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static OFF_WMEM_QUEUED: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static OFF_WRITE_SEQ: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static OFF_SND_NXT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static OFF_NOTSENT_LOWAT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
pub(crate) static NOTSENT_LOWAT_DEFAULT: Global<u32> = Global::new(u32::MAX);

// ---- maps (names must match waggle_common::maps) ----

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RINGBUF_BYTES, 0);

/// Tracked connections. Like every LruHashMap here, a full map evicts an
/// entry silently to make room; what the programs can notice of that is
/// counted (Counter::ConnLost, PendingStored/PendingTaken,
/// InjectPendingLost).
#[map]
pub(crate) static CONNS: LruHashMap<SockKey, ConnInfo> = LruHashMap::with_max_entries(CONNS_MAX_ENTRIES, 0);

/// AF_INET/AF_INET6 descriptors seen at socket(), valued waggle_common::inet_sock.
#[map]
pub(crate) static INET_STREAM_SOCKS: LruHashMap<SockKey, u8> =
    LruHashMap::with_max_entries(INET_STREAM_SOCKS_MAX_ENTRIES, 0);

/// Syscall arguments between enter and exit, keyed by pid_tgid (a thread is
/// in one syscall at a time). LRU so entries whose exit we never saw (the
/// agent attached mid-syscall) age out.
#[map]
pub(crate) static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(PENDING_MAX_ENTRIES, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map]
pub(crate) static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// State of the header scan over SCRATCH (trace.rs).
#[map]
pub(crate) static SCAN: PerCpuArray<ScanState> = PerCpuArray::with_max_entries(1, 0);

/// The header scan and where it has got to: map memory, so the verifier
/// treats the cursor as an unknown number and the scan loop's states
/// converge (on the stack it would track every value it takes).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct ScanState {
    pub scan: waggle_common::http::HeaderScan,
    pub pos: u64,
}

/// State of the response header scan over SCRATCH (response.rs).
#[map]
pub(crate) static RESP_SCAN: PerCpuArray<RespScanState> = PerCpuArray::with_max_entries(1, 0);

/// As [`ScanState`], for a response's header block.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct RespScanState {
    pub scan: waggle_common::http::response::ResponseScan,
    pub pos: u64,
}

/// Local ports whose accepted connections enter INJECT_SOCKS
/// (`--trace-response-header`, response.rs). LRU: ports of servers long
/// gone age out.
#[map]
pub(crate) static SERVER_PORTS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(SERVER_PORTS_MAX_ENTRIES, 0);

/// Processes that own (or inherited) tracked connections: only their forks
/// and exits are reported.
#[map]
pub(crate) static TRACKED_TGIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(TRACKED_TGIDS_MAX_ENTRIES, 0);

#[map]
pub(crate) static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// pid_tgid -> the server request the thread is handling. LRU: a thread that
/// never answers (or dies unseen) ages out.
#[map]
pub(crate) static THREAD_CTX: LruHashMap<u64, TraceCtx> = LruHashMap::with_max_entries(THREAD_CTX_MAX_ENTRIES, 0);

/// Link key -> the ids of the FastCGI request a traced client just sent on
/// that connection, until the same-host responder reads it (fastcgi.rs).
/// LRU: a request whose server is not traced (or on another host) ages out.
#[map]
pub(crate) static LINKS: LruHashMap<u64, TraceCtx> = LruHashMap::with_max_entries(LINKS_MAX_ENTRIES, 0);

/// pid_tgid -> where a FastCGI responder's thread stands in the params of
/// a request no same-host link gave a parent (fastcgi.rs). LRU: a request
/// whose params never end ages out.
#[map]
pub(crate) static FCGI_WAIT: LruHashMap<u64, ParamsWait> = LruHashMap::with_max_entries(FCGI_WAIT_MAX_ENTRIES, 0);

/// The exit_ns of the read whose bytes the FastCGI params program (run
/// after the data exit on sys_exit_read) walks next; 0: none. Per CPU:
/// both programs run on the same CPU for the same syscall.
#[map]
pub(crate) static FCGI_REQUEST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The params pair scan and where it must stop (fastcgi.rs): map memory
/// for the bpf_loop callback, as SCAN.
#[map]
pub(crate) static PARAM_SCAN: PerCpuArray<ParamScanState> = PerCpuArray::with_max_entries(1, 0);

/// A record walk over one read and what it came to (fastcgi.rs): map
/// memory for the bpf_loop callback, so the verifier does not follow the
/// walk's values through every step.
#[map]
pub(crate) static WALK_STATE: PerCpuArray<WalkState> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct WalkState {
    pub walk: RecordWalk,
    pub pos: u32,
    pub len: u32,
    /// `walk_outcome` of the last step that stopped the loop.
    pub outcome: u32,
    /// The params content the walk stopped at.
    pub at: u32,
    pub end: u32,
}

/// WalkState::outcome values.
pub(crate) mod walk_outcome {
    pub const NONE: u32 = 0;
    pub const PARAMS: u32 = 1;
    pub const MORE: u32 = 2;
    pub const END: u32 = 3;
    pub const CUT: u32 = 4;
}

/// Where a new FCGI_WAIT value is put together (not on the read exits'
/// stack).
#[map]
pub(crate) static WAIT_BUILD: PerCpuArray<ParamsWait> = PerCpuArray::with_max_entries(1, 0);

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct ParamScanState {
    pub scan: ParamScan,
    /// End of the params content in the SCRATCH payload.
    pub end: u32,
}

/// A FCGI_WAIT value.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub(crate) struct ParamsWait {
    pub conn_id: u64,
    /// Timestamp of the begin record's read: the key of its ServerCtx.
    pub begin_ns: u64,
    /// The context the begin started (THREAD_CTX must still hold it).
    pub span_id: [u8; 8],
    pub walk: RecordWalk,
    pub fd: u32,
    /// Reads walked so far.
    pub reads: u32,
    /// HTTP_TRACEPARENT params seen.
    pub found: u32,
    /// The valid one's ids and flags (`valid` 1).
    pub trace_id: [u8; 16],
    pub parent_span_id: [u8; 8],
    pub flags: u8,
    pub valid: u8,
    /// The connection's peer is not trusted (conn_flags::UNTRUSTED_PEER).
    pub untrusted: u8,
    pub _pad: [u8; 5],
}

/// pid_tgid -> the traceparent the thread's current send should carry; lives
/// from the send's syscall entry to its exit.
#[map]
pub(crate) static INJECT_PENDING: LruHashMap<u64, InjectRequest> =
    LruHashMap::with_max_entries(INJECT_PENDING_MAX_ENTRIES, 0);

/// Established client sockets of traced processes and (response.rs)
/// accepted sockets on SERVER_PORTS, by socket cookie; the sk_msg program
/// runs on their sends.
#[map]
pub(crate) static INJECT_SOCKS: SockHash<u64> = SockHash::with_max_entries(INJECT_SOCKS_MAX_ENTRIES, 0);

/// Cookies of sockets a traced process is connecting (sock.rs).
#[map]
pub(crate) static CONNECTING: LruHashMap<u64, u8> = LruHashMap::with_max_entries(CONNECTING_MAX_ENTRIES, 0);

/// Values the agent sets while running (waggle_common::runtime).
#[map]
pub(crate) static RUNTIME: Array<u64> = Array::with_max_entries(waggle_common::runtime::COUNT, 0);

/// Peer networks (IPv6, IPv4 mapped into ::ffff:0:0/96) whose incoming
/// traceparent is trusted when TRUST_ALL_PEERS is 0.
#[map]
pub(crate) static TRUSTED_NETS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(TRUSTED_NETS_MAX_ENTRIES, 0);

/// One element: how to get from a descriptor to its socket's addresses on
/// this kernel (`enabled` 0: unknown, see socket_facts.rs). A map, not a
/// global, so programs read fields in place instead of copying the struct
/// onto their small stack.
#[map]
pub(crate) static SOCK_WALK: Array<SockWalkOffsets> = Array::with_max_entries(1, 0);

/// Per-CPU room for the addresses socket_facts.rs reads (the stack is too
/// small to hold them next to everything an accept() exit needs).
#[map]
pub(crate) static ENDS: PerCpuArray<ConnEnds> = PerCpuArray::with_max_entries(1, 0);

/// The agent's own connections, from its connect() until it closes them;
/// accept() skips connections from them (own.rs).
#[map]
pub(crate) static OWN_FLOWS: LruHashMap<FlowKey, u8> = LruHashMap::with_max_entries(OWN_FLOWS_MAX_ENTRIES, 0);

/// Addresses the agent is connecting to right now, and which of its
/// threads is (own.rs).
#[map]
pub(crate) static OWN_CONNECTING: LruHashMap<FlowKey, u64> = LruHashMap::with_max_entries(OWN_FLOWS_MAX_ENTRIES, 0);

/// tgid -> waggle_common::verdict (verdict.rs). A plain hash, not LRU: an
/// untraced process's entry must not be evicted by a burst of others (it
/// would become traced); the agent removes entries at process exit.
#[map]
pub(crate) static TRACE_VERDICT: HashMap<u32, u8> = HashMap::with_max_entries(TRACE_VERDICT_MAX_ENTRIES, 0);

// ---- the scratch buffer ----

/// Where the DataEvent header starts in the scratch buffer: after room for
/// the DataCtx prefix a request start's context is staged in, so a record
/// with it and one without are both one contiguous slice.
pub(crate) const DATA_AT: usize = size_of::<DataCtxPrefix>();
/// Where the payload starts in the scratch buffer: after the prefix's room
/// and the DataEvent header.
pub(crate) const HEADER: usize = DATA_AT + size_of::<DataEvent>();
/// The payload area after the header: twice MAX_CAPTURE (see [`Scratch`]).
pub(crate) const PAYLOAD_AREA: usize = 2 * MAX_CAPTURE;

/// Data events (and the header scan of client request starts) are assembled
/// here: context prefix (when staged), header, then payload. The payload
/// area is twice MAX_CAPTURE because the copy loops prove
/// `offset < MAX_CAPTURE` and `len <= MAX_CAPTURE` separately; the verifier only accepts the write when `offset + len` fits,
/// and it cannot know the sum is <= MAX_CAPTURE.
#[repr(C)]
pub(crate) struct Scratch {
    pub buf: [u8; HEADER + PAYLOAD_AREA],
}
