//! HTTP/1.x parser. Implementation pending.
use waggle_common::Role;

use super::{Chunk, Confidence, ParserConfig, ProtocolDetector, ProtocolParser};

pub struct Http1Detector;

impl ProtocolDetector for Http1Detector {
    fn name(&self) -> &'static str {
        "http1"
    }
    fn detect(&self, _role: Role, _chunk: &Chunk<'_>) -> Confidence {
        Confidence::No
    }
    fn new_parser(&self, _role: Role, _config: &ParserConfig) -> Box<dyn ProtocolParser> {
        unreachable!("detect never says yes yet")
    }
}
