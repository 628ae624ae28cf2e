//! FastCGI parser fuzz target: the input is a script of chunks (sizes,
//! directions, uncaptured tails, close/idle steps) fed to a parser of every
//! role; see `waggle::protocols::script` for the format. The harness
//! panics when a span ends before it starts, has no method, names itself
//! otherwise than by its method, carries an impossible status, or errors
//! without `error.type`.
//!
//!     cargo xtask fuzz --only fastcgi
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    waggle::protocols::fastcgi::fuzz_script(data);
});
