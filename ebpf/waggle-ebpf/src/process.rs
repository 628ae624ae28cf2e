//! Process lifecycle of tracked processes: forks (children inherit the
//! descriptors; the kernel copies their connections, `conn::inherit`) and exits (the kernel closes the
//! descriptors without a close() syscall, so no ConnClose follows). Thread
//! creation and exit carry the per-thread trace context along.
use aya_ebpf::{helpers::bpf_get_current_pid_tgid, programs::TracePointContext, EbpfContext};
use waggle_common::{Counter, EventKind, ProcessEvent};

use crate::{
    conn,
    helpers::{count, current, now_ns, wakeup_flags},
    maps::{EVENTS, TRACKED_TGIDS},
    trace, verdict,
};

const CLONE_THREAD: u64 = 0x0001_0000;
/// task:task_newtask record: `pid_t pid` at 8, `u64 clone_flags` at 32 (the
/// loader checks both against the tracepoint's format file before attaching).
const NEWTASK_PID_OFFSET: usize = 8;
const NEWTASK_CLONE_FLAGS_OFFSET: usize = 32;

#[inline(always)]
fn emit(kind: EventKind, tgid: u32, parent_tgid: u32, parent_tid: u32, tid: u32) {
    let ev =
        ProcessEvent { kind: kind as u8, _pad0: [0; 3], tgid, parent_tgid, parent_tid, tid, _pad1: 0, ts_ns: now_ns() };
    if EVENTS.output::<ProcessEvent>(&ev, wakeup_flags()).is_err() {
        count(Counter::EventsLost);
    }
}

/// task:task_newtask rather than sched:sched_process_fork: both fire for
/// threads too, but only task_newtask carries clone_flags, and CLONE_THREAD
/// is the one reliable way to tell a thread from a process (the fork record
/// has the child's pid but not its tgid). Runs in the parent, after the
/// child's pid is assigned.
#[inline(always)]
pub(crate) fn task_newtask<const BPF_LOOP: bool>(ctx: &TracePointContext) -> Option<()> {
    let base = ctx.as_ptr().cast::<u8>();
    // SAFETY: constant in-bounds offsets into the tracepoint record (checked
    // by the verifier against the record size at attach time).
    let flags = unsafe { core::ptr::read_volatile(base.add(NEWTASK_CLONE_FLAGS_OFFSET).cast::<u64>()) };
    // SAFETY: as above.
    let child = unsafe { core::ptr::read_volatile(base.add(NEWTASK_PID_OFFSET).cast::<u32>()) };
    if flags & CLONE_THREAD == 0 {
        // Untraced parents too: their children are decided at once.
        verdict::fork((bpf_get_current_pid_tgid() >> 32) as u32, child);
    }
    let (pid_tgid, parent) = current()?;
    if flags & CLONE_THREAD != 0 {
        // A thread, not a process: it joins the request its creator handles
        // (its SQL and cache calls too, through userspace's linker).
        if trace::inherit(pid_tgid, (u64::from(parent) << 32) | u64::from(child)) {
            emit(EventKind::ThreadStart, parent, parent, pid_tgid as u32, child);
        }
        return None;
    }
    // A process forked by a thread handling a request works for that
    // request (a CGI script forked per request, a command run for it) until
    // it exits or serves a request of its own: its main thread inherits the
    // context, so its HTTP calls carry it.
    trace::inherit(pid_tgid, (u64::from(child) << 32) | u64::from(child));
    TRACKED_TGIDS.get_ptr(parent)?;
    // The child owns the inherited connections: its own forks matter too
    // (daemons double-fork before userspace has rescanned anything).
    if TRACKED_TGIDS.insert(child, 1u8, 0).is_err() {
        count(Counter::MapInsertFailed);
    }
    // Before the fork record: userspace copies what the kernel did not.
    conn::inherit::<BPF_LOOP>(parent, child);
    emit(EventKind::ProcessFork, child, parent, pid_tgid as u32, 0);
    Some(())
}

/// sched:sched_process_exit runs in the exiting task, once per thread; the
/// group leader (pid == tgid) stands for the process.
#[inline(always)]
pub(crate) fn sched_process_exit(_ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if pid_tgid as u32 == (pid_tgid >> 32) as u32 {
        verdict::exit((pid_tgid >> 32) as u32);
    }
    let (pid_tgid, tgid) = current()?;
    trace::thread_exit(pid_tgid);
    if pid_tgid as u32 != tgid {
        return None;
    }
    TRACKED_TGIDS.get_ptr(tgid)?;
    let _ = TRACKED_TGIDS.remove(tgid);
    emit(EventKind::ProcessExit, tgid, 0, 0, 0);
    Some(())
}
