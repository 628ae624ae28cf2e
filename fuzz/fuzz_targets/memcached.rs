//! memcached parser fuzz target: the input is a script of chunks (sizes,
//! directions, uncaptured tails, close/idle steps) fed to a parser of every
//! role; see `waggle::protocols::script` for the format. The harness
//! panics when a span ends before it starts, names an operation its text
//! does not start with, shows an argument without keys enabled, or errors
//! without error attributes.
//!
//!     cargo xtask fuzz --only memcached
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    waggle::protocols::memcached::fuzz_script(data);
});
