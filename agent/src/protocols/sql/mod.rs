//! What the SQL wire-protocol parsers ([`super::postgres`], [`super::mysql`])
//! share: the query-text sanitizer, operation / collection / summary
//! extraction, DB span assembly, a length-prefixed message framer that copes
//! with captured prefixes, a bounded statement cache, and the connection
//! shell both protocols' state machines plug into.
mod cache;
mod framer;
#[cfg(any(test, feature = "fuzz"))]
mod fuzz;
#[cfg(test)]
pub(crate) mod replay;
mod sanitize;
mod shape;
mod shell;
mod span;
mod summary;

pub use cache::BoundedMap;
pub use framer::{cstr, Frame, Framed, Framer, Framing, Timing};
#[cfg(any(test, feature = "fuzz"))]
pub use fuzz::{check_db_span, fuzz_script};
pub use sanitize::{sanitize, Backslash, Dialect, MAX_QUERY_TEXT};
pub use shape::{looks_textual, plausible_sql_start};
pub use shell::{frontend_direction, Conn, PendingQueue, Request, Shell, Wire};
pub use span::{DbError, DbSpan, Outcome};
pub use summary::{analyze_query, QueryInfo, SharedQuery};
