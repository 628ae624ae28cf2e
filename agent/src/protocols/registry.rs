//! Which parsers exist, and picking one for a connection.
use waggle_common::Role;

use super::{
    fastcgi, http1, memcached, mysql, postgres, redis, Chunk, Confidence, ParserConfig, ProtocolDetector,
    ProtocolParser,
};

/// Detectors in order of precedence.
pub static DETECTORS: &[&dyn ProtocolDetector] = &[
    &http1::Http1Detector,
    &postgres::PostgresDetector,
    &mysql::MysqlDetector,
    &redis::RedisDetector,
    &memcached::MemcachedDetector,
    &fastcgi::FastCgiDetector,
];

/// Picks the parser for a connection, or says to wait / give up.
pub enum Detection {
    Parser(Box<dyn ProtocolParser>),
    NeedMore,
    Unknown,
}

/// The first of `detectors` (in order: [`DETECTORS`], or a test's own list)
/// that recognises the chunk.
pub fn detect(detectors: &[&dyn ProtocolDetector], role: Role, chunk: &Chunk<'_>, config: &ParserConfig) -> Detection {
    let mut need_more = false;
    for detector in detectors {
        match detector.detect(role, chunk) {
            Confidence::Yes => return Detection::Parser(detector.new_parser(role, config)),
            Confidence::NeedMore => need_more = true,
            Confidence::No => {}
        }
    }
    if need_more {
        Detection::NeedMore
    } else {
        Detection::Unknown
    }
}
