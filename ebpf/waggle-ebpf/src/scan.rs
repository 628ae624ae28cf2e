//! The header scan over this CPU's SCRATCH payload, for trace.rs (a
//! request's `HeaderScan`) and response.rs (`ResponseScan`): with bpf_loop,
//! or in the reduced mode a bounded loop verified once.
use core::ffi::c_void;

use waggle_common::{
    http::{self, HeaderScan},
    Counter, CAPTURE_MASK, MAX_CAPTURE,
};

use crate::{
    helpers::{count, repeat, zero},
    maps::{HEADER, SCAN, SCRATCH},
};

const MASK: usize = CAPTURE_MASK;

/// One step of the header scan over this CPU's SCRATCH payload: eight
/// bytes at once where `HeaderScan::skip_word` allows (the middle of a
/// line), else one byte (host-tested to give exactly the byte-wise result).
/// The cursor and the scan state live in a per-CPU map and the bytes in
/// another, looked up on every call (a per-CPU array lookup is inlined by
/// the verifier): map memory is opaque to the verifier, so the callback's
/// states converge at once, where a state on the stack would be tracked
/// field by field through every iteration. Tracepoint programs do not nest
/// or get preempted on a CPU, so neither can change under the scan.
extern "C" fn scan_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the pointer `scan` gave it: a u64 on the
    // caller's stack.
    scan_step_at(unsafe { *ctx.cast::<u64>() })
}

/// `scan_step` for the reduced mode's bounded loop: a global function,
/// verified once.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn waggle_scan_step(len: u64) -> i64 {
    scan_step_at(len)
}

/// The reduced mode's scan of the first `len` payload bytes, at most
/// SCAN_BOUND steps: 1 when it ended, 0 when cut. The whole loop is a
/// global function, verified once per program: inline, the 5.10 verifier
/// walked it again on every path into the scan (the vector reads reach
/// it on many), some 16 s per program under TCG.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn waggle_scan_bounded(len: u64) -> i64 {
    let mut i = 0;
    while i < SCAN_BOUND {
        if waggle_scan_step(len) != 0 {
            return 1;
        }
        i += 1;
    }
    0
}

/// One step of the scan of the first `len` payload bytes.
#[inline(always)]
fn scan_step_at(len: u64) -> i64 {
    let Some(st) = SCAN.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: st points at this CPU's SCAN value, used by this program only.
    let st = unsafe { &mut *st };
    step_scratch(&mut st.scan, &mut st.pos, len)
}

/// A header scan the payload walk drives: a request's (`HeaderScan`) or
/// a response's (`http::response::ResponseScan`).
pub(crate) trait ScanStep {
    fn skip_word(&mut self, i: u32, word: u64) -> bool;
    fn step(&mut self, i: u32, b: u8, window: impl Fn(u64) -> [u64; 3]) -> bool;
}

impl ScanStep for HeaderScan {
    #[inline(always)]
    fn skip_word(&mut self, i: u32, word: u64) -> bool {
        HeaderScan::skip_word(self, i, word)
    }

    #[inline(always)]
    fn step(&mut self, i: u32, b: u8, window: impl Fn(u64) -> [u64; 3]) -> bool {
        HeaderScan::step(self, i, b, window)
    }
}

impl ScanStep for http::response::ResponseScan {
    #[inline(always)]
    fn skip_word(&mut self, i: u32, word: u64) -> bool {
        http::response::ResponseScan::skip_word(self, i, word)
    }

    #[inline(always)]
    fn step(&mut self, i: u32, b: u8, window: impl Fn(u64) -> [u64; 3]) -> bool {
        http::response::ResponseScan::step(self, i, b, window)
    }
}

/// One step of `scan`, at `*pos`, over the first `len` bytes of this CPU's
/// SCRATCH payload: eight bytes at once where `skip_word` allows (the
/// middle of a line), else one byte. 1 when the scan ended.
#[inline(always)]
pub(crate) fn step_scratch<S: ScanStep>(scan: &mut S, pos: &mut u64, len: u64) -> i64 {
    let Some(buf) = SCRATCH.get_ptr(0) else {
        return 1;
    };
    let at = *pos;
    if at >= len {
        return 1;
    }
    let payload = buf.cast::<u8>();
    // SAFETY: HEADER + (at & MASK) + 8 lies inside the Scratch value (the
    // payload area is twice MAX_CAPTURE).
    let word = unsafe { core::ptr::read_unaligned(payload.add(HEADER + (at as usize & MASK)).cast::<u64>()) };
    if at + 8 <= len && scan.skip_word(at as u32, word) {
        *pos = at + 8;
        return 0;
    }
    *pos = at + 1;
    let done = scan.step(at as u32, word as u8, |w| {
        // SAFETY: HEADER + (w & MASK) + NAME_WINDOW lies inside the
        // Scratch value (the payload area is twice MAX_CAPTURE).
        unsafe { core::ptr::read_unaligned(payload.add(HEADER + (w as usize & MASK)).cast::<[u64; 3]>()) }
    });
    i64::from(done)
}

/// Steps of the reduced mode's header scan (no bpf_loop): a step covers 8
/// bytes inside a line, 1 near its end, so this covers a header block of a
/// few hundred bytes (a curl or wget request); a longer one is counted
/// (`ScanCut`) and a traceparent past the cut is not seen. Each step costs
/// the 5.10 verifier one pass through the loop.
const SCAN_BOUND: u32 = 256;

/// Scans the first `len` (<= MAX_CAPTURE) bytes of the SCRATCH payload.
#[inline(always)]
pub(crate) fn scan<const BPF_LOOP: bool>(len: u32) -> HeaderScan {
    let Some(st) = SCAN.get_ptr_mut(0) else {
        return HeaderScan::default();
    };
    // SAFETY: st points at this CPU's SCAN value (an 8-aligned map value).
    unsafe { zero(st) };
    let mut n = u64::from(if len > MAX_CAPTURE as u32 { MAX_CAPTURE as u32 } else { len });
    // At most one call per byte; a skipped word ends the loop sooner.
    let whole = if BPF_LOOP {
        repeat::<true>(n as u32, scan_step, (&mut n as *mut u64).cast(), 0, |_| 0)
    } else {
        waggle_scan_bounded(n) != 0
    };
    if !whole {
        count(Counter::ScanCut);
    }
    // SAFETY: as above; copied out.
    unsafe { (*st).scan }
}
