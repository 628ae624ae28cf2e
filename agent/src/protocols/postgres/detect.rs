//! Recognising a PostgreSQL connection from its first frontend write: a
//! startup-phase request, or (joined mid-stream) a plausible `Q`/`P`/`B`.
use crate::model::Protocol;
use waggle_common::Role;

use super::{
    messages::{
        be16, be32, is_frontend_type, is_startup_code, CANCEL_REQUEST, GSSENC_REQUEST, MAX_MESSAGE_LEN, MAX_NAME,
        MAX_STARTUP_LEN, MIN_STARTUP_LEN, SSL_REQUEST,
    },
    parser::PostgresParser,
};
use crate::protocols::{
    sql::{cstr, frontend_direction, looks_textual, plausible_sql_start},
    Chunk, Confidence, ParserConfig, ProtocolDetector, ProtocolParser,
};

pub struct PostgresDetector;

/// Shape check of a frontend `Q`/`P`/`B` at the start of a chunk.
fn typed_request_plausible(chunk: &Chunk<'_>) -> Confidence {
    let b = chunk.bytes;
    if b.len() < 5 {
        return if chunk.is_truncated() { Confidence::No } else { Confidence::NeedMore };
    }
    let Some(len) = be32(b, 1) else {
        return Confidence::No;
    };
    if !(5..=MAX_MESSAGE_LEN).contains(&len) || u64::from(len) + 1 > chunk.total_len {
        return Confidence::No;
    }
    let end = (len as usize + 1).min(b.len());
    let complete = b.len() > len as usize;
    let body = &b[5..end];
    let ok = match b[0] {
        b'Q' => {
            let text =
                if complete { body.split_last().filter(|(nul, _)| **nul == 0).map(|(_, t)| t) } else { Some(body) };
            text.is_some_and(|t| looks_textual(t) && plausible_sql_start(t))
        }
        b'P' => parse_plausible(body, complete),
        b'B' => bind_plausible(body, complete),
        _ => false,
    };
    if !ok {
        return Confidence::No;
    }
    // What follows in the same write must be another frontend message.
    match b.get(len as usize + 1) {
        Some(next) if !is_frontend_type(*next) => Confidence::No,
        _ => Confidence::Yes,
    }
}

fn name_plausible(name: &[u8]) -> bool {
    name.len() <= MAX_NAME && looks_textual(name)
}

fn parse_plausible(body: &[u8], complete: bool) -> bool {
    let mut pos = 0;
    let Some(name) = cstr(body, &mut pos) else {
        return !complete && name_plausible(body);
    };
    if !name_plausible(name) {
        return false;
    }
    let Some(query) = cstr(body, &mut pos) else {
        let rest = body.get(pos..).unwrap_or(&[]);
        return !complete && looks_textual(rest) && (rest.is_empty() || plausible_sql_start(rest));
    };
    if !looks_textual(query) || !plausible_sql_start(query) {
        return false;
    }
    match be16(body, pos) {
        Some(n) => !complete || body.len() == pos + 2 + 4 * usize::from(n),
        None => !complete,
    }
}

fn bind_plausible(body: &[u8], complete: bool) -> bool {
    let mut pos = 0;
    for _ in 0..2 {
        match cstr(body, &mut pos) {
            Some(name) if name_plausible(name) => {}
            Some(_) => return false,
            None => return !complete,
        }
    }
    // Parameter formats, values, result formats: walk them to prove the length.
    let nfmt = match format_codes(body, &mut pos, complete) {
        Ok(n) => n,
        Err(verdict) => return verdict,
    };
    let Some(nparams) = be16(body, pos) else {
        return !complete;
    };
    if nfmt > 1 && nfmt != nparams {
        return false;
    }
    pos += 2;
    for _ in 0..nparams {
        match be32(body, pos) {
            Some(u32::MAX) => pos += 4,
            Some(n) if n <= MAX_MESSAGE_LEN => pos += 4 + n as usize,
            Some(_) => return false,
            None => return !complete,
        }
    }
    if let Err(verdict) = format_codes(body, &mut pos, complete) {
        return verdict;
    }
    !complete || pos == body.len()
}

/// Walks a count-prefixed list of format codes (0 text, 1 binary) at `pos`:
/// its count, or Err with the verdict on the message when the list is
/// invalid (false) or cut short (plausible unless the body is `complete`).
fn format_codes(body: &[u8], pos: &mut usize, complete: bool) -> Result<u16, bool> {
    let n = be16(body, *pos).ok_or(!complete)?;
    *pos += 2;
    for _ in 0..n {
        match be16(body, *pos) {
            Some(0 | 1) => *pos += 2,
            Some(_) => return Err(false),
            None => return Err(!complete),
        }
    }
    Ok(n)
}

impl ProtocolDetector for PostgresDetector {
    fn protocol(&self) -> Protocol {
        Protocol::Postgres
    }

    fn detect(&self, role: Role, chunk: &Chunk<'_>) -> Confidence {
        if chunk.direction != frontend_direction(role) {
            return Confidence::No;
        }
        let b = chunk.bytes;
        let Some(&first) = b.first() else {
            return Confidence::No;
        };
        if first == 0 {
            if b.len() < 8 {
                // A startup length is < 64 KiB: its second byte is 0 too.
                let plausible = b.get(1).is_none_or(|x| *x == 0);
                return if plausible && !chunk.is_truncated() { Confidence::NeedMore } else { Confidence::No };
            }
            let len = be32(b, 0).unwrap_or(0);
            let code = be32(b, 4).unwrap_or(0);
            if !(MIN_STARTUP_LEN..=MAX_STARTUP_LEN).contains(&len) || u64::from(len) > chunk.total_len {
                return Confidence::No;
            }
            let shape_ok = match code {
                SSL_REQUEST | GSSENC_REQUEST => len == 8,
                CANCEL_REQUEST => len >= 16,
                c if is_startup_code(c) => {
                    // Parameters are NUL-terminated text pairs ending in a NUL.
                    let params = &b[8..(len as usize).min(b.len())];
                    let complete = b.len() >= len as usize;
                    params.iter().all(|&c| c == 0 || looks_textual(&[c]))
                        && (!complete || params.last() == Some(&0))
                        && params.first().is_some_and(u8::is_ascii_alphabetic)
                }
                _ => false,
            };
            return if shape_ok { Confidence::Yes } else { Confidence::No };
        }
        if matches!(first, b'Q' | b'P' | b'B') {
            return typed_request_plausible(chunk);
        }
        Confidence::No
    }

    fn new_parser(&self, role: Role, config: &ParserConfig) -> Box<dyn ProtocolParser> {
        Box::new(PostgresParser::new(role, config))
    }
}
