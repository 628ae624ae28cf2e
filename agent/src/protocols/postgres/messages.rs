//! PostgreSQL v3 message formats: framing of both directions, the startup
//! request codes, and reading CommandComplete tags and ErrorResponses.
use crate::protocols::sql::{cstr, DbError, Framing, MAX_QUERY_TEXT};

pub(super) const PROTOCOL_MAJOR_3: u32 = 3;
pub(super) const SSL_REQUEST: u32 = 80_877_103;
pub(super) const CANCEL_REQUEST: u32 = 80_877_102;
pub(super) const GSSENC_REQUEST: u32 = 80_877_104;
pub(super) const MIN_STARTUP_LEN: u32 = 8;
pub(super) const MAX_STARTUP_LEN: u32 = 10_000;
/// The server refuses messages over 1 GiB.
pub(super) const MAX_MESSAGE_LEN: u32 = 0x3fff_ffff;
/// Longest statement/portal name honoured (NAMEDATALEN is 64 by default).
pub(super) const MAX_NAME: usize = 256;
/// Tail of every complete response batch: ReadyForQuery.
pub(super) const READY_FOR_QUERY: [u8; 5] = [b'Z', 0, 0, 0, 5];

pub(super) fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

pub(super) fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

pub(super) fn is_frontend_type(t: u8) -> bool {
    matches!(t, b'Q' | b'P' | b'B' | b'E' | b'S' | b'H' | b'D' | b'C' | b'd' | b'c' | b'f' | b'p' | b'X' | b'F')
}

pub(super) fn is_backend_type(t: u8) -> bool {
    matches!(
        t,
        b'R' | b'K'
            | b'S'
            | b'Z'
            | b'T'
            | b'D'
            | b'C'
            | b'E'
            | b'N'
            | b'A'
            | b'I'
            | b'1'
            | b'2'
            | b'3'
            | b'n'
            | b't'
            | b's'
            | b'G'
            | b'H'
            | b'W'
            | b'd'
            | b'c'
            | b'V'
            | b'v'
    )
}

pub(super) fn is_startup_code(code: u32) -> bool {
    code >> 16 == PROTOCOL_MAJOR_3 && code & 0xffff < 16
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    Typed(u8),
    /// Startup-phase message without a type byte, by request code.
    Untyped(u32),
}

pub struct FrontFraming {
    /// Untyped startup messages are possible (nothing typed seen yet).
    pub(super) allow_untyped: bool,
}

impl Framing for FrontFraming {
    type Head = Head;

    fn header_len(&self, first: u8) -> usize {
        if self.allow_untyped && first == 0 {
            8
        } else {
            5
        }
    }

    fn parse_header(&mut self, h: &[u8]) -> Result<(Head, u64, usize), &'static str> {
        if h.len() == 8 {
            let len = be32(h, 0).unwrap_or(0);
            let code = be32(h, 4).unwrap_or(0);
            if !(MIN_STARTUP_LEN..=MAX_STARTUP_LEN).contains(&len) {
                return Err("postgres: bad startup message length");
            }
            let keep = match code {
                SSL_REQUEST | GSSENC_REQUEST | CANCEL_REQUEST => 0,
                c if is_startup_code(c) => {
                    self.allow_untyped = false;
                    2048
                }
                _ => return Err("postgres: unknown startup request code"),
            };
            return Ok((Head::Untyped(code), u64::from(len - 8), keep));
        }
        let tag = h[0];
        let len = be32(h, 1).unwrap_or(0);
        if !is_frontend_type(tag) {
            return Err("postgres: unknown frontend message type");
        }
        if !(4..=MAX_MESSAGE_LEN).contains(&len) {
            return Err("postgres: bad frontend message length");
        }
        self.allow_untyped = false;
        let keep = match tag {
            b'Q' => MAX_QUERY_TEXT + 1,
            b'P' => MAX_NAME + MAX_QUERY_TEXT + 2,
            // Portal and statement names only: parameter values are never kept.
            b'B' => 2 * MAX_NAME + 2,
            b'E' | b'C' => MAX_NAME + 2,
            // Passwords ('p'), COPY data and the rest are skipped unread.
            _ => 0,
        };
        Ok((Head::Typed(tag), u64::from(len - 4), keep))
    }
}

pub struct BackFraming;

impl Framing for BackFraming {
    type Head = u8;

    fn header_len(&self, _first: u8) -> usize {
        5
    }

    fn parse_header(&mut self, h: &[u8]) -> Result<(u8, u64, usize), &'static str> {
        let tag = h[0];
        let len = be32(h, 1).unwrap_or(0);
        if !is_backend_type(tag) {
            return Err("postgres: unknown backend message type");
        }
        if !(4..=MAX_MESSAGE_LEN).contains(&len) {
            return Err("postgres: bad backend message length");
        }
        let keep = match tag {
            b'C' => 64,
            // Severity and SQLSTATE come first; the message text is not needed.
            b'E' => 256,
            // ParameterStatus: name and value (standard_conforming_strings
            // decides what a backslash means in later statements).
            b'S' => 64,
            _ => 0,
        };
        Ok((tag, u64::from(len - 4), keep))
    }
}

/// (command, returned rows, affected rows) from a CommandComplete tag.
pub(super) fn tag_counts(tag: &str, copy_out: bool) -> (Option<&str>, Option<u64>, Option<u64>) {
    let mut words = tag.split_ascii_whitespace();
    let command = words.next().filter(|w| w.bytes().all(|b| b.is_ascii_uppercase()));
    let count = if tag.contains(' ') { tag.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok()) } else { None };
    match command {
        Some("SELECT" | "FETCH") => (command, count, None),
        Some("INSERT" | "UPDATE" | "DELETE" | "MERGE") => (command, None, count),
        Some("COPY") if copy_out => (command, count, None),
        Some("COPY") => (command, None, count),
        _ => (command, None, None),
    }
}

/// SQLSTATE of an ErrorResponse body.
pub(super) fn parse_error(body: &[u8]) -> DbError {
    let mut pos = 0;
    let mut code = None;
    while let Some(&field) = body.get(pos) {
        if field == 0 {
            break;
        }
        pos += 1;
        let Some(value) = cstr(body, &mut pos) else {
            break;
        };
        if field == b'C' && value.len() == 5 && value.iter().all(u8::is_ascii_alphanumeric) {
            code = Some(String::from_utf8_lossy(value).into_owned());
        }
    }
    match code {
        Some(code) => DbError { description: format!("SQLSTATE {code}"), code },
        None => DbError { code: "_OTHER".to_owned(), description: "PostgreSQL error".to_owned() },
    }
}
