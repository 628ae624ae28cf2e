//! MySQL / MariaDB client/server protocol (classic, uncompressed).
//!
//! The client is the application's side (role Client: Egress); a traced DB
//! server (role Server) sees the same packets with directions mirrored.
//!
//! # Spans
//! * One span per `COM_QUERY` and per `COM_STMT_EXECUTE` (also MariaDB's
//!   `COM_STMT_BULK_EXECUTE`), from the write of the command to the last
//!   packet of its response (OK, ERR, or the end of the last result set).
//! * `COM_STMT_PREPARE` remembers the statement text under the id the server
//!   answers with ([`MAX_STATEMENTS`] entries / [`STATEMENT_BUDGET`] bytes per
//!   connection); it gives a span only when it fails, so a statement that
//!   never ran is still visible. Executing an id whose prepare was never seen
//!   gives a span without text. Parameter values are never read.
//! * `COM_INIT_DB` updates `db.namespace` once the server accepts it;
//!   `COM_PING`, `COM_STMT_CLOSE`, `COM_QUIT` and friends give no span.
//! * `db.system.name` is `mariadb` when the server greeting's version says
//!   MariaDB, else `mysql` (also when the greeting was not seen).
//! * OK packets give `waggle.db.response.affected_rows`; result sets give
//!   `db.response.returned_rows` (summed over multiple result sets).
//! * ERR packets: `db.response.status_code` = `error.type` = the error number
//!   (`1146`), status ERROR with description `MySQL error 1146 (SQLSTATE
//!   42S02)`; the message text is not exported (it may echo values).
//! * TLS (`CLIENT_SSL` handshake) and compression make the connection opaque.
//!
//! # Captured prefixes
//! Packets are framed by their 3-byte lengths; cut bodies are skipped by
//! count. A lost boundary in the client direction is
//! [`Feed::LostSync`](crate::protocols::Feed::LostSync). In the server
//! direction (a large result set) the parser waits for the next
//! command: the classic protocol is request/response, so the response ended
//! with the last server read before it. The span is emitted then, marked
//! `waggle.db.response.truncated`, without row counts.
mod command;
mod detect;
#[cfg(any(test, feature = "fuzz"))]
mod fuzz;
mod packets;
mod parser;
#[cfg(test)]
mod tests;

pub use detect::MysqlDetector;
#[cfg(any(test, feature = "fuzz"))]
pub use fuzz::fuzz_script;
pub use packets::Head;
pub use parser::{MysqlParser, MysqlWire, MAX_STATEMENTS, PROTOCOL, STATEMENT_BUDGET};
