//! MySQL/MariaDB parser fuzz target: the input is a script of chunks (sizes,
//! directions, uncaptured tails, close/idle steps) fed to a parser of every
//! role; see `waggle::protocols::script` for the format. The
//! harness panics when a span ends before it starts, has an impossible status
//! code, row count or query text, or errors without error attributes.
//!
//!     cargo +nightly fuzz run mysql
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    waggle::protocols::mysql::fuzz_script(data);
});
