//! memcached: the text protocol, the client's side.
//!
//! # Spans
//! * One CLIENT span per command (`get`, `gets`, `gat`, `gats`, `set`,
//!   `add`, `replace`, `append`, `prepend`, `cas`, `delete`, `incr`,
//!   `decr`, `touch`, `flush_all`, `version`, `verbosity`, `stats`), from
//!   the write of its line to the read of the end of its reply; pipelined
//!   commands are matched in order. `db.operation.name` is the command as
//!   the protocol spells it (lower case); another lower-case word gives
//!   `_OTHER` (the server answers it with `ERROR`).
//! * `noreply` commands get no reply: their span ends when the command
//!   (with its data block) is written.
//! * `db.query.text` is the command followed by one `?` per argument
//!   (`set ? ? ? ?`, `get ? ? ?`), `noreply` kept. With `--cache-keys` the
//!   keys are shown (printable, at most 64 bytes); flags, expiry times,
//!   lengths, deltas and data never are.
//! * Retrievals give `db.response.returned_rows` = the number of values
//!   returned (hits; a multi-key get of 3 keys returning 1 had 2 misses).
//! * `ERROR`, `CLIENT_ERROR ...`, `SERVER_ERROR ...`: status ERROR,
//!   `error.type` = `db.response.status_code` = that word (the message is
//!   not exported). `NOT_FOUND`, `NOT_STORED` and `EXISTS` are answers, not
//!   errors.
//! * No `db.namespace`: memcached has none.
//! * Not parsed: the meta commands (`mg`, `ms`, ...) and the binary
//!   protocol; a connection using them is not followed.
//!
//! # Captured prefixes
//! Data blocks (values) are skipped by count, so values larger than the
//! capture cost nothing. A line that falls into uncaptured bytes loses
//! framing: commands give LostSync; a reply ends at the last read before
//! the next command (with several commands in flight they are dropped and
//! counted), as for Redis.
mod detect;
#[cfg(any(test, feature = "fuzz"))]
mod fuzz;
mod parser;
#[cfg(test)]
mod tests;

pub use detect::MemcachedDetector;
#[cfg(any(test, feature = "fuzz"))]
pub use fuzz::fuzz_script;
pub use parser::{MemcachedParser, SYSTEM};
