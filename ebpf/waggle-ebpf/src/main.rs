//! waggle's kernel programs.
//!
//! Syscall tracepoints follow the TCP connections of unmodified processes
//! (socket/accept/connect/close) and copy a bounded prefix of every payload
//! read or written on them into one ring buffer; two task tracepoints report
//! forks and exits of processes that own tracked connections.
//!
//! Trace context (W3C traceparent) rides on the same tracepoints (trace.rs):
//! a server request start gives its thread a context, client requests that
//! thread sends become its children. A sockops program puts client sockets
//! into a SockHash whose sk_msg program inserts the traceparent header into
//! the request bytes on their way out (sock.rs).
//!
//! Rules every program follows:
//! - the agent's own syscalls are dropped first, or its output would feed back
//!   into capture;
//! - the data-path enter handlers do one hash lookup and leave: they run for
//!   every read/write on the machine, and CONNS is what keeps file, pipe and
//!   tty I/O out;
//! - anything larger than a few dozen bytes lives in per-CPU maps (the BPF
//!   stack is 512 bytes), loops are bounded, and every drop bumps a counter.
#![no_std]
#![no_main]

mod conn;
mod data;
mod process;
mod sock;
mod trace;
mod user_copy;

use aya_ebpf::{
    bindings::sk_action::SK_PASS,
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{map, sk_msg, sock_ops, tracepoint},
    maps::{lpm_trie::LpmTrie, Array, LruHashMap, PerCpuArray, RingBuf, SockHash},
    programs::{SkMsgContext, SockOpsContext, TracePointContext},
    EbpfContext, Global,
};
use waggle_common::{
    ConnInfo, Counter, Direction, InjectRequest, SockKey, SyscallId, TraceCtx, CLIENT_SOCKS_MAX_ENTRIES,
    CONNECTING_MAX_ENTRIES, CONNS_MAX_ENTRIES, COUNTER_COUNT, EVENTS_RINGBUF_BYTES, INET_STREAM_SOCKS_MAX_ENTRIES,
    INJECT_PENDING_MAX_ENTRIES, MAX_CAPTURE, PENDING_MAX_ENTRIES, THREAD_CTX_MAX_ENTRIES, TRACKED_TGIDS_MAX_ENTRIES,
    TRUSTED_NETS_MAX_ENTRIES, USERSPACE_CONN_ID_BIT,
};

// ---- globals (patched by the loader through EbpfLoader::override_global) ----

/// tgid of the agent: never captured.
#[unsafe(no_mangle)]
static AGENT_TGID: Global<u32> = Global::new(0);

/// Payload bytes copied per data event; 0 or anything above MAX_CAPTURE means
/// MAX_CAPTURE.
#[unsafe(no_mangle)]
static CAPTURE_BYTES: Global<u32> = Global::new(MAX_CAPTURE as u32);

/// 1: the sk_msg program inserts traceparent headers; 0: it passes every
/// message untouched. Trace contexts are tracked (and reported) either way.
#[unsafe(no_mangle)]
static PROPAGATION: Global<u32> = Global::new(0);

/// Traces the kernel starts are sampled below this (waggle_common::
/// sampled_by_threshold); the default samples everything.
#[unsafe(no_mangle)]
static SAMPLE_THRESHOLD: Global<u64> = Global::new(u64::MAX);

/// 1: an incoming traceparent's sampled flag is followed.
#[unsafe(no_mangle)]
static PARENT_BASED: Global<u32> = Global::new(1);

/// 1: every peer's incoming traceparent is trusted; 0: only TRUSTED_NETS'.
#[unsafe(no_mangle)]
static TRUST_ALL_PEERS: Global<u32> = Global::new(1);

/// Field offsets in `struct tcp_sock` of the running kernel (0: unknown,
/// and then nothing is injected) and net.ipv4.tcp_notsent_lowat.
#[unsafe(no_mangle)]
static OFF_SNDBUF: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_WMEM_QUEUED: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_WRITE_SEQ: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_SND_NXT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static OFF_NOTSENT_LOWAT: Global<u32> = Global::new(0);
#[unsafe(no_mangle)]
static NOTSENT_LOWAT_DEFAULT: Global<u32> = Global::new(u32::MAX);

// ---- maps (names must match waggle_common::maps) ----

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RINGBUF_BYTES, 0);

#[map]
static CONNS: LruHashMap<SockKey, ConnInfo> = LruHashMap::with_max_entries(CONNS_MAX_ENTRIES, 0);

/// AF_INET/AF_INET6 descriptors seen at socket(), valued waggle_common::inet_sock.
#[map]
static INET_STREAM_SOCKS: LruHashMap<SockKey, u8> = LruHashMap::with_max_entries(INET_STREAM_SOCKS_MAX_ENTRIES, 0);

/// Syscall arguments between enter and exit, keyed by pid_tgid (a thread is
/// in one syscall at a time). LRU so entries whose exit we never saw (the
/// agent attached mid-syscall) age out.
#[map]
static PENDING: LruHashMap<u64, Pending> = LruHashMap::with_max_entries(PENDING_MAX_ENTRIES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// State of the header scan over SCRATCH (trace.rs).
#[map]
static SCAN: PerCpuArray<waggle_common::http::HeaderScan> = PerCpuArray::with_max_entries(1, 0);

/// Processes that own (or inherited) tracked connections: only their forks
/// and exits are reported.
#[map]
static TRACKED_TGIDS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(TRACKED_TGIDS_MAX_ENTRIES, 0);

#[map]
static CONN_SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// pid_tgid -> the server request the thread is handling. LRU: a thread that
/// never answers (or dies unseen) ages out.
#[map]
static THREAD_CTX: LruHashMap<u64, TraceCtx> = LruHashMap::with_max_entries(THREAD_CTX_MAX_ENTRIES, 0);

/// pid_tgid -> the traceparent the thread's current send should carry; lives
/// from the send's syscall entry to its exit.
#[map]
static INJECT_PENDING: LruHashMap<u64, InjectRequest> = LruHashMap::with_max_entries(INJECT_PENDING_MAX_ENTRIES, 0);

/// Established client sockets of traced processes, by socket cookie; the
/// sk_msg program runs on their sends.
#[map]
static CLIENT_SOCKS: SockHash<u64> = SockHash::with_max_entries(CLIENT_SOCKS_MAX_ENTRIES, 0);

/// Cookies of sockets a traced process is connecting (sock.rs).
#[map]
static CONNECTING: LruHashMap<u64, u8> = LruHashMap::with_max_entries(CONNECTING_MAX_ENTRIES, 0);

/// Values the agent sets while running (waggle_common::runtime).
#[map]
static RUNTIME: Array<u64> = Array::with_max_entries(waggle_common::runtime::COUNT, 0);

/// Peer networks (IPv6, IPv4 mapped into ::ffff:0:0/96) whose incoming
/// traceparent is trusted when TRUST_ALL_PEERS is 0.
#[map]
static TRUSTED_NETS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(TRUSTED_NETS_MAX_ENTRIES, 0);

// ---- kernel-private types ----

/// What an enter handler leaves for its exit handler (shared with the agent,
/// which writes it for threads blocked in a read when the probes attached).
pub(crate) use waggle_common::Pending;

/// Data events (and the header scan of client request starts) are assembled here: header, then payload. The payload area is
/// twice MAX_CAPTURE because the copy loops prove `offset < MAX_CAPTURE` and
/// `len <= MAX_CAPTURE` separately; the verifier only accepts the write when
/// `offset + len` fits, and it cannot know the sum is <= MAX_CAPTURE.
#[repr(C)]
pub(crate) struct Scratch {
    pub buf: [u8; user_copy::HEADER + user_copy::PAYLOAD_AREA],
}

// ---- helpers ----

/// Flags for every ring-buffer output: no wake-up until the agent has
/// WAKEUP_WATERMARK_BYTES to read (it polls on a short timer otherwise).
#[inline(always)]
pub(crate) fn wakeup_flags() -> u64 {
    const BPF_RB_AVAIL_DATA: u64 = 0;
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_FORCE_WAKEUP: u64 = 2;
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= waggle_common::WAKEUP_WATERMARK_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// (pid_tgid, tgid) of the current task, or None for the agent itself.
#[inline(always)]
pub(crate) fn current() -> Option<(u64, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == AGENT_TGID.load() {
        return None;
    }
    Some((pid_tgid, tgid))
}

/// Syscall argument `n` (or the return value for n = 0 on sys_exit_*).
/// Arguments start at offset 16: the first 8 bytes of the context are
/// clobbered and `__syscall_nr` sits at 8.
#[inline(always)]
pub(crate) fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: the verifier checks tracepoint context reads against the
    // event's record size at attach time; every syscall tracepoint we attach
    // has at least n + 1 eight-byte fields from offset 16.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u64>().add(2 + n)) }
}

#[inline(always)]
pub(crate) fn count(counter: Counter) {
    count_index(counter as u32);
}

/// `count` for computed indexes (`Counter::skip(reason)`).
#[inline(always)]
pub(crate) fn count_index(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: p points at this CPU's slot of a live map element; per-CPU
        // values are not shared with other CPUs, and tracepoint programs do
        // not nest on one CPU.
        unsafe { *p += 1 }
    }
}

#[inline(always)]
pub(crate) fn now_ns() -> u64 {
    // SAFETY: plain helper call without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// A new connection id: `(per-CPU sequence << 8) | cpu`, never 0 and never
/// with USERSPACE_CONN_ID_BIT set.
#[inline(always)]
pub(crate) fn mint_conn_id() -> u64 {
    // SAFETY: plain helper call without arguments.
    let cpu = u64::from(unsafe { bpf_get_smp_processor_id() }) & 0xff;
    let Some(seq) = CONN_SEQ.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as in `count`: this CPU's slot of a live per-CPU element.
    let next = unsafe {
        *seq += 1;
        *seq
    };
    ((next << 8) | cpu) & !USERSPACE_CONN_ID_BIT
}

/// Remove and return the PENDING entry of this thread if `syscall` left it.
#[inline(always)]
pub(crate) fn take_pending(pid_tgid: u64, syscall: SyscallId) -> Option<Pending> {
    let p = PENDING.get_ptr(pid_tgid)?;
    // SAFETY: p points at a live map value of type Pending; it is copied out
    // before the element is deleted.
    let p = unsafe { *p };
    let _ = PENDING.remove(pid_tgid);
    (p.syscall == syscall as u8).then_some(p)
}

/// Leaves `p` for the exit handler; false (counted) if the map refused it.
#[inline(always)]
pub(crate) fn stash(pid_tgid: u64, p: &Pending) -> bool {
    if PENDING.insert(pid_tgid, p, 0).is_err() {
        count(Counter::MapInsertFailed);
        return false;
    }
    true
}

// ---- programs ----
//
// Function names are the program names the loader looks up; each is named
// after the tracepoint it attaches to.

macro_rules! data_programs {
    ($($enter:ident, $exit:ident, $id:ident, $dir:ident;)*) => {$(
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            data::enter(&ctx, SyscallId::$id);
            0
        }

        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            data::exit(&ctx, SyscallId::$id, Direction::$dir);
            0
        }
    )*};
}

data_programs! {
    sys_enter_read, sys_exit_read, Read, Ingress;
    sys_enter_write, sys_exit_write, Write, Egress;
    sys_enter_recvfrom, sys_exit_recvfrom, Recvfrom, Ingress;
    sys_enter_sendto, sys_exit_sendto, Sendto, Egress;
    sys_enter_readv, sys_exit_readv, Readv, Ingress;
    sys_enter_writev, sys_exit_writev, Writev, Egress;
    sys_enter_recvmsg, sys_exit_recvmsg, Recvmsg, Ingress;
    sys_enter_sendmsg, sys_exit_sendmsg, Sendmsg, Egress;
    sys_enter_sendfile64, sys_exit_sendfile64, Sendfile, Egress;
}

#[tracepoint]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    let _ = conn::socket_enter(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_socket(ctx: TracePointContext) -> u32 {
    let _ = conn::socket_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    let _ = conn::accept_enter(&ctx, SyscallId::Accept);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let _ = conn::accept_exit(&ctx, SyscallId::Accept);
    0
}

#[tracepoint]
pub fn sys_enter_accept4(ctx: TracePointContext) -> u32 {
    let _ = conn::accept_enter(&ctx, SyscallId::Accept4);
    0
}

#[tracepoint]
pub fn sys_exit_accept4(ctx: TracePointContext) -> u32 {
    let _ = conn::accept_exit(&ctx, SyscallId::Accept4);
    0
}

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let _ = conn::connect_enter(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let _ = conn::connect_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let _ = conn::close_enter(&ctx);
    0
}

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let _ = process::task_newtask(&ctx);
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = process::sched_process_exit(&ctx);
    0
}

/// Not called `sockops`: that symbol would clash with the section name.
#[sock_ops]
pub fn waggle_sockops(ctx: SockOpsContext) -> u32 {
    sock::sockops(&ctx);
    1
}

#[sk_msg]
pub fn waggle_sk_msg(ctx: SkMsgContext) -> u32 {
    match sock::inject(&ctx) {
        Some(verdict) => verdict,
        None => SK_PASS,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // No code path may panic (the verifier would reject the loop below); this
    // only satisfies no_std.
    loop {}
}

// bpf_probe_read_user and the ring-buffer helpers are GPL-only; the kernel
// accepts "Dual MIT/GPL" as GPL-compatible.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
