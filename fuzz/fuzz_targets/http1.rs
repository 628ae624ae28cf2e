//! HTTP/1.x parser fuzz target: the input is a script of chunks (sizes,
//! directions, truncation, close/idle steps) fed to a parser of every role;
//! see `waggle::protocols::script` for the format. The harness
//! panics when a span ends before it starts or has impossible attributes.
//!
//!     cargo +nightly fuzz run http1
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    waggle::protocols::http1::fuzz_script(data);
});
