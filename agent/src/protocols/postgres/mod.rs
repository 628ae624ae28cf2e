//! PostgreSQL frontend/backend protocol v3.
//!
//! The frontend is the application's side (role Client: Egress); a traced
//! DB server (role Server) sees the same messages with directions mirrored.
//!
//! # Spans
//! * Simple query `Q`: one span per message, from the write of the `Q` to the
//!   `ReadyForQuery` ending its response. Several statements in one `Q` are a
//!   batch (see [`super::sql`]): one span.
//! * Extended protocol: one span per `Execute`, with the text of the
//!   statement bound to its portal (`Parse` → named statements remembered per
//!   connection, [`MAX_STATEMENTS`] entries / [`STATEMENT_BUDGET`] bytes).
//!   It ends at the `CommandComplete` / `EmptyQueryResponse` /
//!   `PortalSuspended` / `ErrorResponse` answering it; responses come in
//!   order, so a FIFO of pending executes handles pipelined batches. An error
//!   in `Parse`/`Bind` is reported on the `Execute` that would have run
//!   (the server skips to `Sync`); executes skipped that way give no span.
//!   Prepare-only exchanges (`Parse`+`Sync`) give no span.
//! * A `Bind` of a statement whose `Parse` was never seen (prepared before
//!   the agent started) gives a span without text; the operation then comes
//!   from the CommandComplete tag (`UPDATE 1` → `UPDATE`), which is exact.
//!   Bind parameter values are never read.
//! * `CommandComplete` tags give `db.response.returned_rows` (SELECT, FETCH,
//!   COPY TO) or `waggle.db.response.affected_rows` (INSERT, UPDATE, DELETE,
//!   MERGE, COPY FROM); for a multi-statement `Q` neither is set.
//! * `ErrorResponse`: `db.response.status_code` = `error.type` = SQLSTATE,
//!   status ERROR with description `SQLSTATE 42P01`. The message text is not
//!   exported: it often quotes the offending values.
//! * `db.namespace` is the startup `database` parameter (default: `user`).
//!
//! # Captured prefixes
//! Messages are framed by length; bodies cut by the capture are skipped by
//! count (a cut query text is sanitized and marked truncated). When a message
//! boundary falls into uncaptured bytes:
//! * frontend: [`Feed::LostSync`](crate::protocols::Feed::LostSync)
//!   (re-detection at the next `Q`/`P`/`B`);
//! * backend (typically a large result set): the parser *hunts* for the end
//!   of the response instead of giving up: an untruncated chunk ending in
//!   `ReadyForQuery`, or, for a client not seen pipelining, its next request
//!   (it only writes after reading the whole response). The pending span is
//!   then emitted with `waggle.db.response.truncated = true` and whatever
//!   status was seen before the gap. Several requests in flight at that point
//!   cannot be told apart: they are dropped and the loss reported as
//!   LostSync.
mod detect;
#[cfg(any(test, feature = "fuzz"))]
mod fuzz;
mod messages;
mod parser;
#[cfg(test)]
mod tests;

pub use detect::PostgresDetector;
#[cfg(any(test, feature = "fuzz"))]
pub use fuzz::fuzz_script;
pub use messages::Head;
pub use parser::{PostgresParser, PostgresWire, MAX_STATEMENTS, STATEMENT_BUDGET, SYSTEM};
