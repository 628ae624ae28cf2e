//! HTTP/1.x: one span per request/response exchange.
//!
//! The parser follows both byte streams of a connection by byte counts: heads
//! are parsed with `httparse` (only head bytes are ever buffered, bounded by
//! [`MAX_HEAD_BYTES`]), bodies are skipped by `Content-Length`, by decoding
//! chunk-size lines, or until close. Requests whose heads are complete wait
//! in a FIFO (pipelining, bounded by [`MAX_PENDING`]) for their responses.
//!
//! Captured payload may be a prefix of what the syscall moved. Bodies are
//! counted by `total_len`, so truncation inside a body costs nothing. When a
//! message boundary falls in an uncaptured region the parser does not guess:
//! a response whose end it cannot see is ended at the last response chunk
//! before the next request / close / idle ("unframed"), and a request stream
//! it cannot follow resynchronises at the next chunk that starts with a full
//! request line.
//!
//! Privacy: only the headers needed for attributes are read (Host,
//! User-Agent, framing headers, traceparent/tracestate); credentials
//! (Authorization, Cookie, ...) are never copied, the query string is
//! dropped from `url.path`, and path segments that look like secrets (or
//! that `--redact-url-paths` names) become `REDACTED` (`redact`).
//!
//! Files, in dependency order: `chunked` and `head_buf` frame bytes, `head`
//! reads a complete head, `route` and `span` turn an exchange into a span,
//! `parser` holds the per-connection state, `detect` recognises request and
//! status lines (and claims connections), `request` and `response` follow
//! each direction, and `protocol` routes each chunk to its side.
mod chunked;
mod detect;
#[cfg(any(test, feature = "fuzz"))]
mod fuzz;
mod head;
mod head_buf;
mod parser;
mod protocol;
mod redact;
mod request;
mod response;
mod route;
mod span;
mod strings;
#[cfg(test)]
mod test_conn;

pub use detect::Http1Detector;
#[cfg(any(test, feature = "fuzz"))]
pub use fuzz::fuzz_script;
pub use head::MAX_HEADERS;
/// Shared with the FastCGI parser, whose params carry the same request
/// facts as an HTTP head.
pub(crate) use head::{bound_tracestate, parse_traceparent};
pub use head_buf::MAX_HEAD_BYTES;
pub use parser::{Http1Parser, MAX_PENDING};
pub use redact::PathRedaction;
pub(crate) use route::infer_route;
pub(crate) use span::span_status;
pub use strings::forgotten as strings_forgotten;
