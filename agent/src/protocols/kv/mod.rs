//! What the key-value cache protocols ([`super::redis`], [`super::memcached`])
//! share: a reader for CRLF-terminated lines followed by counted blocks,
//! and the rules for spans of request/response exchanges matched in order.
mod driver;
mod exchange;
#[cfg(any(test, feature = "fuzz"))]
mod fuzz;
mod reader;

pub use driver::KvParser;
pub use exchange::{
    error, error_code, printable_key, Exchanges, Pending, TextBuilder, KEY_KEEP, MAX_PENDING, MAX_TEXT,
};
#[cfg(any(test, feature = "fuzz"))]
pub use fuzz::{check_cache_span, fuzz_script};
pub use reader::{LineReader, Step};
