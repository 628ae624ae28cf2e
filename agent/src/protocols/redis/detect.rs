//! Recognising a Redis connection from a command the client writes: a RESP
//! array whose first element is a bulk string that looks like a command
//! name (`*3\r\n$3\r\nSET\r\n...`). Inline commands (`PING\r\n`) are not
//! claimed: they look like any other line protocol.
use waggle_common::Role;

use super::parser::RedisParser;
use crate::model::Protocol;
use crate::protocols::{sql::frontend_direction, Chunk, Confidence, ParserConfig, ProtocolDetector, ProtocolParser};

pub struct RedisDetector;

/// Longest command name accepted (module commands like `FT.AGGREGATE`).
const MAX_NAME: usize = 32;

/// Reads `digits\r\n` at `b[*pos..]`: the number, or the verdict when the
/// bytes run out (`NeedMore`) or do not fit (`No`).
fn count(b: &[u8], pos: &mut usize, max_digits: usize) -> Result<usize, Confidence> {
    let mut n = 0usize;
    let mut digits = 0;
    loop {
        let Some(&c) = b.get(*pos) else {
            return Err(Confidence::NeedMore);
        };
        *pos += 1;
        match c {
            b'0'..=b'9' if digits < max_digits => {
                n = n * 10 + usize::from(c - b'0');
                digits += 1;
            }
            b'\r' if digits > 0 => break,
            _ => return Err(Confidence::No),
        }
    }
    match b.get(*pos) {
        None => Err(Confidence::NeedMore),
        Some(b'\n') => {
            *pos += 1;
            Ok(n)
        }
        Some(_) => Err(Confidence::No),
    }
}

fn shape(b: &[u8]) -> Confidence {
    if b.first() != Some(&b'*') {
        return Confidence::No;
    }
    let mut pos = 1;
    match count(b, &mut pos, 7) {
        Ok(n) if n >= 1 => {}
        Ok(_) => return Confidence::No,
        Err(verdict) => return verdict,
    }
    match b.get(pos) {
        None => return Confidence::NeedMore,
        Some(b'$') => pos += 1,
        Some(_) => return Confidence::No,
    }
    let len = match count(b, &mut pos, 2) {
        Ok(n) if (1..=MAX_NAME).contains(&n) => n,
        Ok(_) => return Confidence::No,
        Err(verdict) => return verdict,
    };
    for i in 0..len + 2 {
        let Some(&c) = b.get(pos + i) else {
            return Confidence::NeedMore;
        };
        let ok = match i {
            0 => c.is_ascii_alphabetic(),
            i if i < len => c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-' | b'|'),
            i if i == len => c == b'\r',
            _ => c == b'\n',
        };
        if !ok {
            return Confidence::No;
        }
    }
    Confidence::Yes
}

impl ProtocolDetector for RedisDetector {
    fn protocol(&self) -> Protocol {
        Protocol::Redis
    }

    fn detect(&self, role: Role, chunk: &Chunk<'_>) -> Confidence {
        if chunk.direction != frontend_direction(role) {
            return Confidence::No;
        }
        match shape(chunk.bytes) {
            // The capture ended before the name: nothing more will come.
            Confidence::NeedMore if chunk.is_truncated() => Confidence::No,
            verdict => verdict,
        }
    }

    fn new_parser(&self, role: Role, config: &ParserConfig) -> Box<dyn ProtocolParser> {
        Box::new(RedisParser::new(role, config))
    }
}
