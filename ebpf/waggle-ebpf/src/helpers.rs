//! Small helpers every program uses: the current task, syscall arguments,
//! the clock, counters, connection ids, the PENDING stash between a
//! syscall's enter and exit, and ring-buffer wake-ups.
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns, generated::bpf_loop},
    programs::TracePointContext,
    EbpfContext,
};
use waggle_common::{verdict, Counter, Pending, SyscallId, USERSPACE_CONN_ID_BIT};

use crate::maps::{AGENT_TGID, CONN_SEQ, COUNTERS, EVENTS, FILTER, PENDING, TRACE_VERDICT};

/// A loop callback: `step(index, ctx)`, non-zero to stop.
pub(crate) type Step = extern "C" fn(u64, *mut c_void) -> i64;

/// Calls `step(i, ctx)` for i in 0..n until it returns non-zero, with the
/// bpf_loop helper (Linux 5.17+), the verifier checking `step` once. Without
/// `BPF_LOOP` (the reduced mode of kernels without it: the `*_noloop`
/// programs) it calls `bounded(i)` instead, in a loop the verifier walks,
/// at most `bound` times. `bounded` must call a global function (a
/// `#[no_mangle]` one taking and returning scalars): the verifier checks
/// such a function once on its own, where a static one would be walked
/// again in every iteration. False when the bounded loop stopped short of n.
#[inline(always)]
pub(crate) fn repeat<const BPF_LOOP: bool>(
    n: u32,
    step: Step,
    ctx: *mut c_void,
    bound: u32,
    bounded: impl Fn(u32) -> i64,
) -> bool {
    if BPF_LOOP {
        // SAFETY: `step` is a static function of the callback signature;
        // `ctx` outlives the call (the caller's stack, or null).
        unsafe { bpf_loop(n, step as *const () as *mut c_void, ctx, 0) };
        return true;
    }
    let mut i = 0;
    while i < bound {
        if i >= n || bounded(i) != 0 {
            return true;
        }
        i += 1;
    }
    n <= bound
}

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

/// (pid_tgid, tgid) of the current task, or None for the agent itself and
/// for processes the trace-selection rules leave out (verdict.rs).
#[inline(always)]
pub(crate) fn current() -> Option<(u64, u32)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if tgid == AGENT_TGID.load() || untraced(tgid) {
        return None;
    }
    Some((pid_tgid, tgid))
}

/// The trace-selection rules leave process `tgid` out (verdict.rs).
#[inline(always)]
pub(crate) fn untraced(tgid: u32) -> bool {
    if FILTER.load() == 0 {
        return false;
    }
    // SAFETY: a u8 value of this map, copied out at once.
    matches!(unsafe { TRACE_VERDICT.get(tgid) }, Some(v) if *v == verdict::UNTRACED)
}

/// pid_tgid of the current task when it is the agent: the paths that keep
/// the agent's own connections apart (own.rs), which untraced processes
/// must not take.
#[inline(always)]
pub(crate) fn agent() -> Option<u64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32 == AGENT_TGID.load()).then_some(pid_tgid)
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

/// Zeroes `*p` with one 8-byte store per word. A struct's zero
/// initialisation otherwise compiles to a call of a byte-at-a-time memset
/// subprogram (the header scan's 88-byte state: some 450 instructions on
/// every request); volatile stores keep LLVM from folding the words back
/// into that call.
///
/// # Safety
/// `p` is valid for writes of a `T` and 8-byte aligned (map values and
/// stack slots of 8-aligned types are).
#[inline(always)]
pub(crate) unsafe fn zero<T: Copy>(p: *mut T) {
    const { assert!(core::mem::size_of::<T>() & 7 == 0 && core::mem::align_of::<T>() >= 8) };
    let words = p.cast::<u64>();
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: word i lies inside *p (the size is a multiple of 8).
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
}

/// `slot`, zeroed by [`zero`], to be filled in place: a zeroed value
/// returned or moved would be copied again, and LLVM copies the bytes it
/// knows are zero with the memset call `zero` avoids.
#[inline(always)]
pub(crate) fn zeroed_in<T: Copy>(slot: &mut core::mem::MaybeUninit<T>) -> &mut T {
    // SAFETY: the slot is aligned for T, zero() writes every byte of it, and
    // an all-zero T is valid for the plain-old-data types used here.
    unsafe {
        zero(slot.as_mut_ptr());
        &mut *slot.as_mut_ptr()
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

/// Take the PENDING entry of this thread, if `syscall` left it.
///
/// Taken in place: the entry is marked empty (`syscall` 0) rather than
/// deleted, and the thread's next `stash` overwrites it, so the steady state
/// of a busy thread costs two lookups per syscall and no element is ever
/// allocated or freed (deletes and inserts take the LRU map's locks).
#[inline(always)]
pub(crate) fn take_pending(pid_tgid: u64, syscall: SyscallId) -> Option<Pending> {
    let slot = PENDING.get_ptr_mut(pid_tgid)?;
    // SAFETY: slot points at a live map value of type Pending; only this
    // thread stashes or takes its own entry while it runs.
    let p = unsafe { *slot };
    if p.syscall == 0 {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*slot).syscall = 0 };
    count(Counter::PendingTaken);
    (p.syscall == syscall as u8).then_some(p)
}

/// Leaves `p` for the exit handler; false (counted) if the map refused it.
///
/// PENDING is an LRU map: when it is full the insert succeeds and evicts
/// another thread's entry, whose exit then finds nothing. No program can see
/// that happen, so stores and takes are both counted: their difference is
/// what is still waiting for its exit plus what was lost.
#[inline(always)]
pub(crate) fn stash(pid_tgid: u64, p: &Pending) -> bool {
    if let Some(slot) = PENDING.get_ptr_mut(pid_tgid) {
        // SAFETY: as in `take_pending`: this thread's own live entry.
        unsafe { *slot = *p };
    } else if PENDING.insert(pid_tgid, p, 0).is_err() {
        count(Counter::MapInsertFailed);
        return false;
    }
    count(Counter::PendingStored);
    true
}
