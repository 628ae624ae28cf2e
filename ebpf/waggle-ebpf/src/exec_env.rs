//! The OTEL_* environment of each exec, read before the process can write
//! over it (see `waggle_common::exec_env`). Its own program on
//! sched_process_exec: no data-path program grows, and the agent leaves it
//! unattached where the kernel's BTF does not give the offsets.
//!
//! The walk reads one environment string per bpf_loop step (a string longer
//! than a piece is stepped over piece by piece) into per-CPU map memory and
//! compares its start with the two prefixes; a match copies the value into
//! the record, cut to VALUE_CAP - 1 bytes (counted).
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel,
        generated::{bpf_ktime_get_boot_ns, bpf_loop, bpf_probe_read_user_str},
    },
    macros::map,
    maps::{Array, PerCpuArray},
};
use waggle_common::{
    exec_env::{flags, ExecEnvEvent, ExecEnvOffsets, MAX_ENV_STEPS, PIECE, VALUE_CAP},
    Counter, EventKind,
};

use crate::{
    helpers::{count, wakeup_flags},
    maps::{AGENT_TGID, EVENTS},
};

#[map]
pub(crate) static EXEC_ENV_WALK: Array<ExecEnvOffsets> = Array::with_max_entries(1, 0);

/// The walk's state, the record being built and the string just read: map
/// memory (the record alone is larger than the stack).
#[map]
static EXEC_ENV_SCAN: PerCpuArray<EnvScan> = PerCpuArray::with_max_entries(1, 0);

#[repr(C, align(8))]
struct EnvScan {
    /// Next string (or piece) to read, and the end of the environment.
    pos: u64,
    end: u64,
    /// Inside a string longer than a piece: its rest is stepped over.
    skipping: u32,
    /// The walk reached the end (or both values were found).
    done: u32,
    event: ExecEnvEvent,
    buf: [u8; PIECE],
}

const fn word(b: &[u8; 8]) -> u64 {
    u64::from_le_bytes(*b)
}
const W_OTEL_SER: u64 = word(b"OTEL_SER");
const W_VICE_NAM: u64 = word(b"VICE_NAM");
const W_OTEL_RES: u64 = word(b"OTEL_RES");
const W_OURCE_AT: u64 = word(b"OURCE_AT");
const W_TRIBUTES: u64 = word(b"TRIBUTES");

#[inline(always)]
fn read<T>(addr: u64) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address: a bad pointer
    // gives an error, never a fault.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// Which prefix the string in `buf` starts with (a flag), and its length.
/// The string ends with a NUL the comparison cannot pass, so bytes left
/// from an earlier, longer string never complete a match.
#[inline(always)]
fn prefix_of(buf: &[u8; PIECE]) -> (u8, u64) {
    let at = |i: usize| -> u64 {
        // SAFETY: i + 8 <= 32 < PIECE, and buf is 8-aligned (EnvScan is
        // align(8) and every field before it is a multiple of 8 bytes).
        unsafe { core::ptr::read(buf.as_ptr().add(i).cast::<u64>()) }
    };
    let w0 = at(0);
    if w0 == W_OTEL_SER && at(8) == W_VICE_NAM && buf[16] == b'E' && buf[17] == b'=' {
        return (flags::SERVICE_NAME, 18);
    }
    if w0 == W_OTEL_RES && at(8) == W_OURCE_AT && at(16) == W_TRIBUTES && buf[24] == b'=' {
        return (flags::RESOURCE_ATTRIBUTES, 25);
    }
    (0, 0)
}

extern "C" fn env_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = EXEC_ENV_SCAN.get_ptr_mut(0) else { return 1 };
    // SAFETY: this CPU's slot of a live per-CPU element; nothing else runs
    // on this CPU until the program returns.
    let s = unsafe { &mut *s };
    if s.pos >= s.end {
        s.done = 1;
        return 1;
    }
    // SAFETY: the helper writes at most PIECE bytes into buf and tolerates
    // any user address.
    let n = unsafe { bpf_probe_read_user_str(s.buf.as_mut_ptr().cast(), PIECE as u32, s.pos as *const c_void) };
    if n <= 0 {
        s.event.header.flags |= flags::UNREADABLE;
        s.done = 1;
        return 1;
    }
    let n = n as u64;
    // n counts the NUL; a full piece may be the start of a longer string:
    // the next step reads on from its last byte (the NUL, if it was not).
    let whole = n < PIECE as u64;
    let advance = if whole { n } else { n - 1 };
    if s.skipping != 0 {
        s.skipping = u32::from(!whole);
        s.pos += advance;
        return 0;
    }
    let (found, prefix) = prefix_of(&s.buf);
    if found != 0 && s.event.header.flags & found == 0 {
        // Like getenv, the first occurrence counts.
        let value_len = n - 1 - prefix;
        let dst = if found == flags::SERVICE_NAME {
            s.event.service_name.as_mut_ptr()
        } else {
            s.event.resource_attributes.as_mut_ptr()
        };
        // SAFETY: at most VALUE_CAP bytes into the record's own array.
        let copied =
            unsafe { bpf_probe_read_user_str(dst.cast(), VALUE_CAP as u32, (s.pos + prefix) as *const c_void) };
        if copied > 0 {
            let len = (copied - 1) as u8;
            if found == flags::SERVICE_NAME {
                s.event.header.service_name_len = len;
            } else {
                s.event.header.resource_attributes_len = len;
            }
            s.event.header.flags |= found;
            if !whole || value_len >= VALUE_CAP as u64 {
                s.event.header.flags |= flags::CUT;
            }
        }
    }
    s.skipping = u32::from(!whole);
    s.pos += advance;
    if s.event.header.flags & (flags::SERVICE_NAME | flags::RESOURCE_ATTRIBUTES)
        == flags::SERVICE_NAME | flags::RESOURCE_ATTRIBUTES
    {
        s.done = 1;
        return 1;
    }
    0
}

/// sched_process_exec, in the exec'ing task (its new image's environment
/// is in place). Every process's exec is reported but the agent's.
#[inline(always)]
pub(crate) fn exec() -> Option<()> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tgid == AGENT_TGID.load() {
        return None;
    }
    let off = EXEC_ENV_WALK.get(0).filter(|off| off.enabled != 0)?;
    // SAFETY: plain helper call without arguments.
    let task = unsafe { bpf_get_current_task() };
    let mm: u64 = read(task.wrapping_add(u64::from(off.task_mm)))?;
    if mm == 0 {
        return None;
    }
    let start: u64 = read(mm.wrapping_add(u64::from(off.mm_env_start)))?;
    let end: u64 = read(mm.wrapping_add(u64::from(off.mm_env_end)))?;
    let s = EXEC_ENV_SCAN.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot of a live per-CPU element.
    let s = unsafe { &mut *s };
    s.pos = start;
    s.end = end;
    s.skipping = 0;
    s.done = 0;
    s.event.header.kind = EventKind::ExecEnv as u8;
    s.event.header.flags = 0;
    s.event.header.service_name_len = 0;
    s.event.header.resource_attributes_len = 0;
    s.event.header.tgid = tgid;
    // SAFETY: plain helper call without arguments.
    s.event.header.boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: the callback is a static function of the right signature; it
    // takes its state from the per-CPU map, not from the context pointer.
    unsafe { bpf_loop(MAX_ENV_STEPS, env_step as *const () as *mut c_void, core::ptr::null_mut(), 0) };
    if s.done == 0 {
        s.event.header.flags |= flags::SCAN_CUT;
    }
    let f = s.event.header.flags;
    if f & (flags::SCAN_CUT | flags::UNREADABLE) != 0 {
        count(Counter::ExecEnvScanCut);
    }
    if f & flags::CUT != 0 {
        count(Counter::ExecEnvCut);
    }
    let sent = if f & (flags::SERVICE_NAME | flags::RESOURCE_ATTRIBUTES) != 0 {
        EVENTS.output::<ExecEnvEvent>(&s.event, wakeup_flags())
    } else {
        EVENTS.output::<waggle_common::exec_env::ExecEnvHeader>(&s.event.header, wakeup_flags())
    };
    if sent.is_err() {
        count(Counter::EventsLost);
    }
    Some(())
}
