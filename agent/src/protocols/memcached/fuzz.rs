//! The memcached parser's fuzz entry point.
use super::{detect::MemcachedDetector, parser::SYSTEM};
use crate::protocols::kv;

/// Fuzzing entry point (`fuzz/fuzz_targets/memcached.rs`): see [`kv::fuzz_script`].
/// Panics when an invariant breaks; returns the spans emitted.
pub fn fuzz_script(data: &[u8]) -> usize {
    kv::fuzz_script(data, &MemcachedDetector, SYSTEM)
}
