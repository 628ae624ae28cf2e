//! Trace selection in the kernel: whether the current process is traced.
//!
//! The agent decides each process against its include/exclude rules and
//! writes the verdict into TRACE_VERDICT by tgid. Every program's first
//! step (`helpers::current`) asks `untraced`: with no rules configured
//! (FILTER 0, a read-only global the verifier knows) that is one load and
//! the lookup is pruned; with rules, one hash lookup, after which an
//! untraced process's syscall leaves.
//!
//! Forks copy the parent's verdict, so a worker of an untraced server is
//! decided at once. An exec makes the process undecided again (its
//! executable changed, and with it what the rules say): undecided means
//! traced, so a new process an include rule selects is traced from its
//! first connection; ProcessExec asks the agent to decide it.
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use waggle_common::{Counter, EventKind, ProcessEvent};

use crate::{
    helpers::{count, now_ns, wakeup_flags},
    maps::{EVENTS, FILTER, TRACE_VERDICT},
};

/// A new process (not a thread): it takes its parent's verdict, or none.
/// Setting both ways also clears what a reused pid's earlier owner left.
#[inline(always)]
pub(crate) fn fork(parent: u32, child: u32) {
    if FILTER.load() == 0 {
        return;
    }
    // SAFETY: a u8 value of this map, copied out at once.
    match unsafe { TRACE_VERDICT.get(parent) } {
        Some(v) => {
            let v = *v;
            if TRACE_VERDICT.insert(child, v, 0).is_err() {
                count(Counter::VerdictInheritFailed);
            }
        }
        None => {
            let _ = TRACE_VERDICT.remove(child);
        }
    }
}

/// sched_process_exec, in the exec'ing task: undecided again, and the agent
/// is asked to decide.
#[inline(always)]
pub(crate) fn exec() {
    if FILTER.load() == 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = TRACE_VERDICT.remove(tgid);
    let ev = ProcessEvent {
        kind: EventKind::ProcessExec as u8,
        _pad0: [0; 3],
        tgid,
        parent_tgid: 0,
        parent_tid: 0,
        tid: 0,
        _pad1: 0,
        ts_ns: now_ns(),
    };
    if EVENTS.output::<ProcessEvent>(&ev, wakeup_flags()).is_err() {
        count(Counter::EventsLost);
    }
}

/// The process `tgid` exited: its entry goes (its pid may be reused).
#[inline(always)]
pub(crate) fn exit(tgid: u32) {
    if FILTER.load() == 0 {
        return;
    }
    let _ = TRACE_VERDICT.remove(tgid);
}
