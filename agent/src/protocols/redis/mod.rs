//! Redis: RESP2 and RESP3, the client's side.
//!
//! # Spans
//! * One CLIENT span per command, from the write of its first byte to the
//!   read of the last byte of its reply. Replies come in order, so
//!   pipelined commands (N written before the first reply) give N spans
//!   matched first-in first-out.
//! * `db.operation.name` is the command, upper-cased (`GET`, `HGETALL`);
//!   for container commands the subcommand too (`CLIENT SETNAME`,
//!   `CONFIG GET`). A first word that is no command name is `_OTHER`.
//! * `db.query.text` is the operation followed by one `?` per argument
//!   (`SET ? ?`), at most [`crate::protocols::kv::MAX_TEXT`] bytes. Values are never
//!   exported. Keys are `?` too unless `--cache-keys` is on: then the
//!   arguments that are keys (first argument of most commands; every one of
//!   `MGET`/`DEL`/`EXISTS`...; every other one of `MSET`; the `numkeys`
//!   keys of `EVAL`/`FCALL`) are shown when they are printable ASCII of at
//!   most 64 bytes. Commands without keys (`AUTH`, `HELLO`, `PUBLISH`,
//!   `CONFIG SET`...) keep every argument hidden either way.
//! * `db.namespace` is the database index: `0`, then what each successful
//!   `SELECT n` (or `RESET`) set on the connection. A connection joined
//!   mid-stream that selected a database before the agent started reports
//!   `0` until its next `SELECT`.
//! * Error replies (`-ERR ...`, `-WRONGTYPE ...`, RESP3 `!` bulk errors):
//!   status ERROR, `error.type` = `db.response.status_code` = the error's
//!   first word (`ERR`, `WRONGTYPE`, `NOAUTH`, `MOVED`...; `_OTHER` when it
//!   is not an upper-case code). The message is not exported (Redis quotes
//!   arguments in it).
//! * `MULTI`/`EXEC`: every command is a span of its own. Commands queued
//!   inside a transaction end at their `+QUEUED` reply and carry
//!   `waggle.db.redis.queued = true`; the `EXEC` span covers running them.
//!   An aborted transaction is an `EXEC` span with `error.type` `EXECABORT`.
//! * Pub/sub: `(P|S)SUBSCRIBE`/`(P|S)UNSUBSCRIBE` give no span; neither do
//!   the pushes a subscribed connection receives (RESP3 `>` values, and on
//!   RESP2 every reply while subscribed, until an unsubscribe push reports
//!   no subscriptions left). Each is counted in
//!   `waggle_messages_skipped_total`, never matched to a command.
//! * Blocking commands (`BLPOP`, `XREAD`, `WAIT`...) may wait for their
//!   reply indefinitely; other commands unanswered for two minutes make the
//!   parser start over (counted), since later replies could not be matched.
//!
//! # Framing and captured prefixes
//! RESP values are framed by their lines and by the lengths of bulk
//! strings, which are skipped by count: a value larger than the capture is
//! framed without being seen. RESP3 attributes (`|`) are read and ignored;
//! streamed strings and aggregates (`$?`, `*?`) are not supported (lost
//! framing). A line that falls into uncaptured bytes loses framing:
//! * commands: [`crate::protocols::Feed::LostSync`] (re-detection at the next command);
//! * replies (e.g. a huge `LRANGE` read in one syscall): the reply ends at
//!   the last read before the next command; with one command in flight its
//!   span is emitted with `waggle.db.response.truncated = true`, with
//!   several (pipelining) they are dropped and counted.
//!
//! The server side (a traced `redis-server`) gives no spans: it would
//! duplicate every client span.
mod commands;
mod detect;
#[cfg(any(test, feature = "fuzz"))]
mod fuzz;
mod parser;
mod resp;
#[cfg(test)]
mod tests;

pub use detect::RedisDetector;
#[cfg(any(test, feature = "fuzz"))]
pub use fuzz::fuzz_script;
pub use parser::{RedisParser, SYSTEM};
