//! Recognising HTTP/1.x: the detector that claims a connection, and the
//! request-line and status-line checks the parser resynchronises with.

use crate::model::Protocol;
use waggle_common::{
    http::request_line::{self, LineCheck},
    Direction, Role,
};

use super::parser::{self, Http1Parser};
use crate::protocols::{Chunk, Confidence, ParserConfig, ProtocolDetector, ProtocolParser};

/// Bytes of a head inspected by the cheap request-line sanity check.
pub(super) const LINE_CHECK_BYTES: usize = 64;

/// An incomplete request line this long, valid so far, is accepted by the
/// detector: the connection layer buffers only a few dozen bytes while
/// detecting, and the parser validates the full head before trusting it.
pub(super) const DETECT_LINE_PATIENCE: usize = 48;

pub(super) fn request_direction(role: Role) -> Option<Direction> {
    match role {
        Role::Server => Some(Direction::Ingress),
        Role::Client => Some(Direction::Egress),
        Role::Unknown => None,
    }
}

/// Claims a connection whose first bytes are an HTTP/1.x request line (in
/// the request direction) or status line (in the response direction).
pub struct Http1Detector;

impl ProtocolDetector for Http1Detector {
    fn protocol(&self) -> Protocol {
        Protocol::Http1
    }

    fn detect(&self, role: Role, chunk: &Chunk<'_>) -> Confidence {
        let truncated = chunk.is_truncated();
        let request_side = match request_direction(role) {
            Some(dir) => dir == chunk.direction,
            // Unknown role: either direction may carry requests.
            None => true,
        };
        let response_side = request_direction(role).is_none_or(|dir| dir != chunk.direction);
        let mut best = Confidence::No;
        if request_side {
            best = best.max(check_request_line(chunk.bytes, truncated, DETECT_LINE_PATIENCE));
        }
        if response_side {
            best = best.max(check_status_line(chunk.bytes));
        }
        best
    }

    fn new_parser(&self, role: Role, config: &ParserConfig) -> Box<dyn ProtocolParser> {
        match parser::take_spare() {
            Some(mut spare) => {
                spare.start(role, config.url_redaction.clone());
                spare
            }
            None => Box::new(Http1Parser::new(role).with_redaction(config.url_redaction.clone())),
        }
    }
}

/// Does `b` start with a request line of a well-known method? See
/// [`request_line::check_request_line`].
pub(super) fn check_request_line(b: &[u8], truncated: bool, patience: usize) -> Confidence {
    check_request_line_with(b, truncated, patience, false)
}

/// `any_method`: on a connection already in sync any upper-case token is a
/// method (custom verbs become `_OTHER`).
pub(super) fn check_request_line_with(b: &[u8], truncated: bool, patience: usize, any_method: bool) -> Confidence {
    match request_line::check_request_line(b, truncated, patience, any_method) {
        LineCheck::No => Confidence::No,
        LineCheck::NeedMore => Confidence::NeedMore,
        LineCheck::Yes => Confidence::Yes,
    }
}

/// Does `b` start with `HTTP/1.x NNN`?
pub(super) fn check_status_line(b: &[u8]) -> Confidence {
    const PATTERN: &[u8] = b"HTTP/1.x NNN";
    for (i, &c) in b.iter().take(PATTERN.len()).enumerate() {
        let ok = match PATTERN[i] {
            b'x' => c == b'0' || c == b'1',
            b'N' => c.is_ascii_digit(),
            p => c == p,
        };
        if !ok {
            return Confidence::No;
        }
    }
    if b.len() < PATTERN.len() {
        Confidence::NeedMore
    } else {
        Confidence::Yes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(role: Role, direction: Direction, bytes: &[u8]) -> Confidence {
        let chunk = Chunk { direction, bytes, total_len: bytes.len() as u64, enter_ns: 0, exit_ns: 0, tid: 0 };
        Http1Detector.detect(role, &chunk)
    }

    #[test]
    fn detector_recognises_request_lines() {
        use Confidence::*;
        let ing = Direction::Ingress;
        assert_eq!(detect(Role::Server, ing, b"GET / HTTP/1.1\r\n"), Yes);
        assert_eq!(detect(Role::Server, ing, b"POST /api HTTP/1.0\r\nHost: x\r\n\r\n"), Yes);
        assert_eq!(detect(Role::Server, ing, b"OPTIONS * HTTP/1.1\r\n"), Yes);
        assert_eq!(detect(Role::Server, ing, b"GET http://example.com/x HTTP/1.1\r\n"), Yes);
        assert_eq!(detect(Role::Server, ing, b"CONNECT example.com:443 HTTP/1.1\r\n"), Yes);
        assert_eq!(detect(Role::Server, ing, b"PROPFIND /dav HTTP/1.1\r\n"), Yes);
        assert_eq!(detect(Role::Client, Direction::Egress, b"DELETE /x/1 HTTP/1.1\r\n"), Yes);
        // Strict prefixes need more bytes.
        assert_eq!(detect(Role::Server, ing, b"GE"), NeedMore);
        assert_eq!(detect(Role::Server, ing, b"GET"), NeedMore);
        assert_eq!(detect(Role::Server, ing, b"GET /index"), NeedMore);
        assert_eq!(detect(Role::Server, ing, b"GET /index HTTP/1."), NeedMore);
        assert_eq!(detect(Role::Server, ing, b"GET http:/"), NeedMore);
        // A long valid-so-far line is accepted: the parser validates it.
        let long = format!("GET /{}", "a".repeat(60));
        assert_eq!(detect(Role::Server, ing, long.as_bytes()), Yes);
    }

    #[test]
    fn detector_rejects_non_http() {
        use Confidence::*;
        let ing = Direction::Ingress;
        // TLS ClientHello.
        assert_eq!(detect(Role::Server, ing, &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), No);
        assert_eq!(detect(Role::Server, ing, b"\x00\x00\x00\x08\x04\xd2\x16\x2f"), No);
        assert_eq!(detect(Role::Server, ing, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"get / HTTP/1.1\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"GET foo HTTP/1.1\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"GET / HTTP/2\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"GET / FTP/1.1\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"GET / HTTP/1.1 trailing\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"OPTIONS *x HTTP/1.1\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"GET * HTTP/1.1\r\n"), No);
        assert_eq!(detect(Role::Server, ing, b"SELECT 1"), No);
        // A request line in the response direction is not a request.
        assert_eq!(detect(Role::Server, Direction::Egress, b"GET / HTTP/1.1\r\n"), No);
        // Body bytes that merely start like a request need the version.
        assert_eq!(detect(Role::Server, ing, b"GET / is what the user typed\r\n"), No);
    }

    #[test]
    fn detector_accepts_responses_mid_stream() {
        use Confidence::*;
        assert_eq!(detect(Role::Server, Direction::Egress, b"HTTP/1.1 200 OK\r\n"), Yes);
        assert_eq!(detect(Role::Client, Direction::Ingress, b"HTTP/1.0 404 Not Found\r\n"), Yes);
        assert_eq!(detect(Role::Client, Direction::Ingress, b"HTTP/1."), NeedMore);
        assert_eq!(detect(Role::Client, Direction::Ingress, b"HTTP/2 200"), No);
        assert_eq!(detect(Role::Server, Direction::Ingress, b"HTTP/1.1 200 OK\r\n"), No);
        // Unknown role: either direction.
        assert_eq!(detect(Role::Unknown, Direction::Ingress, b"GET / HTTP/1.1\r\n"), Yes);
        assert_eq!(detect(Role::Unknown, Direction::Egress, b"HTTP/1.1 200 OK\r\n"), Yes);
    }
}
