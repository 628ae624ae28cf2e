//! Recognising a FastCGI connection from the record the web server writes
//! first: `FCGI_BEGIN_REQUEST` (the rule the kernel applies too,
//! `waggle_common::fastcgi::is_begin_request`).
use waggle_common::{fastcgi::is_begin_request, Role};

use super::parser::FastCgiParser;
use crate::model::Protocol;
use crate::protocols::{sql::frontend_direction, Chunk, Confidence, ParserConfig, ProtocolDetector, ProtocolParser};

pub struct FastCgiDetector;

impl ProtocolDetector for FastCgiDetector {
    fn protocol(&self) -> Protocol {
        Protocol::FastCgi
    }

    fn detect(&self, role: Role, chunk: &Chunk<'_>) -> Confidence {
        if chunk.direction != frontend_direction(role) {
            return Confidence::No;
        }
        let b = chunk.bytes;
        if b.len() < 8 {
            // The first byte already says whether a header can follow.
            return if b.first().is_none_or(|&v| v == 1) && !chunk.is_truncated() {
                Confidence::NeedMore
            } else {
                Confidence::No
            };
        }
        let mut head = [0u8; 16];
        let n = b.len().min(16);
        head[..n].copy_from_slice(&b[..n]);
        if is_begin_request(&head, n as u64) {
            Confidence::Yes
        } else {
            Confidence::No
        }
    }

    fn new_parser(&self, role: Role, config: &ParserConfig) -> Box<dyn ProtocolParser> {
        Box::new(FastCgiParser::new(role, config))
    }
}
