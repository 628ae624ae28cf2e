//! FastCGI: the web server's side (nginx `fastcgi_pass`, Apache
//! `mod_proxy_fcgi`) and the application's (php-fpm, any responder).
//!
//! # Spans
//! * One span per request, from its `FCGI_BEGIN_REQUEST` to its
//!   `FCGI_END_REQUEST`: SERVER in the responder, CLIENT in the web server.
//!   Requests are matched by request id, so multiplexed connections work;
//!   at most [`MAX_IN_FLIGHT`] wait at a time.
//! * Named like an HTTP span, `{REQUEST_METHOD} {route}`, the route
//!   inferred from the path of `REQUEST_URI` (else `SCRIPT_NAME`) by the
//!   HTTP parser's rule, after the same path redaction.
//! * `http.response.status_code` from the `Status:` header of the CGI
//!   response head in `FCGI_STDOUT`, 200 when it has none (RFC 3875).
//!   Errors as for HTTP: 5xx on the server side, 4xx and 5xx on the client.
//! * `network.protocol.name` = `fastcgi`: the span describes the HTTP
//!   request the web server forwarded (hence the `http.*` attributes), and
//!   this says it reached the process over FastCGI, not HTTP.
//! * Server side: `server.address`/`server.port` from `SERVER_NAME`/
//!   `SERVER_PORT` (where the user's request went), `client.address` from
//!   `REMOTE_ADDR`, and the incoming context from `HTTP_TRACEPARENT`/
//!   `HTTP_TRACESTATE` (what nginx passes for `traceparent`/`tracestate`
//!   headers), taken like the headers: exactly one valid traceparent.
//!   The kernel starts a context at every `FCGI_BEGIN_REQUEST` it sees a
//!   responder read (parent: a same-host traced web server's request), and
//!   its ids win in assembly, so this incoming context only counts for
//!   responders the kernel did not see start the request.
//! * Only those params, `REQUEST_METHOD`, `CONTENT_LENGTH`, `HTTPS`/
//!   `REQUEST_SCHEME` and `HTTP_USER_AGENT` are read; the rest
//!   (`HTTP_COOKIE`, `HTTP_AUTHORIZATION`, ...) are skipped unread.
//!
//! # Framing and captured prefixes
//! Records are framed by their 8-byte headers; content and padding are
//! skipped by count, so uncaptured bytes inside a record cost nothing. At
//! most [`MAX_PARAMS`] bytes of params and [`MAX_RESPONSE_HEAD`] of the
//! response head are kept per request. A header that falls into uncaptured
//! bytes loses framing:
//! * requests: [`crate::protocols::Feed::LostSync`] (re-detection at the
//!   next `FCGI_BEGIN_REQUEST`);
//! * responses (a response larger than the capture written in one
//!   syscall, its `FCGI_END_REQUEST` uncaptured): the request ends at the
//!   last response bytes before the next request or the close, with
//!   `waggle.fastcgi.response.truncated = true`; with several requests in
//!   flight they are dropped and counted.
mod detect;
#[cfg(any(test, feature = "fuzz"))]
mod fuzz;
mod params;
mod parser;
mod records;
#[cfg(test)]
mod tests;

pub use detect::FastCgiDetector;
#[cfg(any(test, feature = "fuzz"))]
pub use fuzz::fuzz_script;
pub use parser::{FastCgiParser, MAX_IN_FLIGHT, MAX_PARAMS, MAX_RESPONSE_HEAD};
