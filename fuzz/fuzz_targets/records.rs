//! Kernel/user ABI fuzz target: the input is a sequence of ring-buffer
//! records (`[len: u16 LE][bytes]`, a zero length ticks the clock), decoded
//! and routed to the connection tracker and the context linker as the
//! pipeline routes them; see `waggle::pipeline::fuzz_records`. Seeds live in
//! fuzz/corpus/records.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    waggle::pipeline::fuzz_records(data);
});
