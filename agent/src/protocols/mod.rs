//! Protocol parsers: turn a connection's two byte streams into spans.
//!
//! A connection is handed to the first detector that recognises its opening
//! bytes; from then on that parser sees every chunk of the connection in
//! order. Adding a protocol means one new module implementing
//! [`ProtocolDetector`] and [`ProtocolParser`] plus one line in [`DETECTORS`].
//!
//! Parsers see *captured prefixes*: a syscall that moved `total_len` bytes
//! may deliver only the first `bytes.len()` of them (see
//! [`Chunk::is_truncated`]). Framing must therefore be tracked by byte counts,
//! and a parser that cannot follow the stream any more must say so
//! ([`Feed::LostSync`]) instead of guessing.
pub mod fastcgi;
pub mod http1;
pub mod kv;
pub mod memcached;
pub mod mysql;
mod parser;
pub mod postgres;
pub mod redis;
mod registry;
#[cfg(any(test, feature = "fuzz"))]
pub mod script;
pub mod sql;

pub use parser::{Chunk, Confidence, Feed, ParserConfig, ProtocolDetector, ProtocolParser};
pub use registry::{detect, Detection, DETECTORS};
