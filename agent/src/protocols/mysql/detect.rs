//! Recognising a MySQL connection: the server's protocol-10 greeting, or
//! (joined mid-stream) a plausible command packet.
use crate::model::Protocol;
use waggle_common::Role;

use super::{
    packets::{
        query_text, COM_QUERY, COM_STMT_CLOSE, COM_STMT_EXECUTE, COM_STMT_FETCH, COM_STMT_PREPARE, COM_STMT_RESET,
    },
    parser::MysqlParser,
};
use crate::protocols::{
    sql::{cstr, frontend_direction, looks_textual, plausible_sql_start},
    Chunk, Confidence, ParserConfig, ProtocolDetector, ProtocolParser,
};

pub struct MysqlDetector;

impl ProtocolDetector for MysqlDetector {
    fn protocol(&self) -> Protocol {
        Protocol::Mysql
    }

    fn detect(&self, role: Role, chunk: &Chunk<'_>) -> Confidence {
        let b = chunk.bytes;
        if b.len() < 5 {
            let plausible = b.len() < 4 || b[3] == 0;
            return if plausible && !b.is_empty() && !chunk.is_truncated() {
                Confidence::NeedMore
            } else {
                Confidence::No
            };
        }
        let len = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
        if b[3] != 0 || len == 0 || u64::from(len) + 4 > chunk.total_len {
            return Confidence::No;
        }
        let end = (len as usize + 4).min(b.len());
        let payload = &b[4..end];
        let complete = end == len as usize + 4;
        let yes = if chunk.direction == frontend_direction(role) {
            command_plausible(payload, len, complete)
        } else {
            greeting_plausible(payload, len, complete)
        };
        if yes {
            Confidence::Yes
        } else {
            Confidence::No
        }
    }

    fn new_parser(&self, role: Role, config: &ParserConfig) -> Box<dyn ProtocolParser> {
        Box::new(MysqlParser::new(role, config))
    }
}

/// Protocol-10 greeting: version text, thread id, 8 scramble bytes, a zero.
fn greeting_plausible(p: &[u8], len: u32, complete: bool) -> bool {
    if p[0] != 10 || !(20..=1024).contains(&len) {
        return false;
    }
    let mut pos = 1;
    let Some(version) = cstr(p, &mut pos) else {
        return false;
    };
    if version.is_empty()
        || version.len() > 100
        || !version[0].is_ascii_digit()
        || !version.iter().all(|c| c.is_ascii_graphic())
    {
        return false;
    }
    match p.get(pos + 12) {
        Some(filler) => *filler == 0,
        None => !complete,
    }
}

fn command_plausible(p: &[u8], len: u32, complete: bool) -> bool {
    match p[0] {
        COM_QUERY | COM_STMT_PREPARE => {
            let text = match query_text(p, None) {
                Some(t) => t,
                None => return false,
            };
            let text = if complete { text } else { &text[..text.len().min(256)] };
            !text.is_empty() && looks_textual(text) && plausible_sql_start(text)
        }
        COM_STMT_EXECUTE => {
            len >= 10
                && p.get(5).is_some_and(|flags| flags & !0x0f == 0)
                && p.get(6..10).is_none_or(|it| it == [1, 0, 0, 0])
        }
        COM_STMT_CLOSE | COM_STMT_RESET => len == 5,
        COM_STMT_FETCH => len == 9,
        _ => false,
    }
}
