//! Recognising a memcached connection from a command line the client
//! writes: a known command (`get`, `set`, `delete`, ...) with arguments of
//! the right shape, ending in CR LF.
use waggle_common::Role;

use super::parser::{known, MemcachedParser, Reply};
use crate::model::Protocol;
use crate::protocols::{sql::frontend_direction, Chunk, Confidence, ParserConfig, ProtocolDetector, ProtocolParser};

pub struct MemcachedDetector;

/// Longest command line checked (keys are at most 250 bytes).
const MAX_LINE: usize = 2048;

fn numeric(w: &[u8]) -> bool {
    !w.is_empty() && w.len() <= 20 && w.iter().all(u8::is_ascii_digit)
}

/// Keys: printable ASCII, no spaces or control characters, at most 250 bytes.
fn key(w: &[u8]) -> bool {
    !w.is_empty() && w.len() <= 250 && w.iter().all(u8::is_ascii_graphic)
}

fn line_plausible(line: &[u8]) -> bool {
    let words: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let Some((&name, args)) = words.split_first() else {
        return false;
    };
    let Some(reply) = known(name) else {
        return false;
    };
    let args: Vec<&[u8]> = match args.split_last() {
        Some((last, rest)) if *last == b"noreply" => rest.to_vec(),
        _ => args.to_vec(),
    };
    match name {
        b"set" | b"add" | b"replace" | b"append" | b"prepend" => {
            args.len() == 4 && key(args[0]) && args[1..].iter().all(|w| numeric(w))
        }
        b"cas" => args.len() == 5 && key(args[0]) && args[1..].iter().all(|w| numeric(w)),
        b"get" | b"gets" => !args.is_empty() && args.iter().all(|w| key(w)),
        b"gat" | b"gats" => args.len() >= 2 && numeric(args[0]) && args[1..].iter().all(|w| key(w)),
        b"delete" => (1..=2).contains(&args.len()) && key(args[0]) && args[1..].iter().all(|w| numeric(w)),
        b"incr" | b"decr" | b"touch" => args.len() == 2 && key(args[0]) && numeric(args[1]),
        b"flush_all" => args.len() <= 1 && args.iter().all(|w| numeric(w)),
        b"verbosity" => args.len() == 1 && numeric(args[0]),
        b"version" => args.is_empty(),
        _ => {
            reply == Reply::Stats
                && args.iter().all(|w| w.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_'))
        }
    }
}

impl ProtocolDetector for MemcachedDetector {
    fn protocol(&self) -> Protocol {
        Protocol::Memcached
    }

    fn detect(&self, role: Role, chunk: &Chunk<'_>) -> Confidence {
        if chunk.direction != frontend_direction(role) {
            return Confidence::No;
        }
        let b = chunk.bytes;
        let window = &b[..b.len().min(MAX_LINE)];
        match window.iter().position(|c| *c == b'\n') {
            Some(end) => {
                let Some(line) = window[..end].strip_suffix(b"\r") else {
                    return Confidence::No;
                };
                if line_plausible(line) {
                    Confidence::Yes
                } else {
                    Confidence::No
                }
            }
            None => {
                // The line so far must start like a known command.
                let name_end = window.iter().position(|c| *c == b' ' || *c == b'\r').unwrap_or(window.len());
                let name = &window[..name_end];
                let prefix_ok = if name_end == window.len() {
                    [
                        "get",
                        "gets",
                        "gat",
                        "gats",
                        "set",
                        "add",
                        "replace",
                        "append",
                        "prepend",
                        "cas",
                        "delete",
                        "incr",
                        "decr",
                        "touch",
                        "flush_all",
                        "version",
                        "verbosity",
                        "stats",
                    ]
                    .iter()
                    .any(|n| n.as_bytes().starts_with(name))
                } else {
                    known(name).is_some()
                };
                let printable = window.iter().all(|c| c.is_ascii_graphic() || *c == b' ' || *c == b'\r');
                if prefix_ok && printable && !window.is_empty() && !chunk.is_truncated() {
                    Confidence::NeedMore
                } else {
                    Confidence::No
                }
            }
        }
    }

    fn new_parser(&self, role: Role, config: &ParserConfig) -> Box<dyn ProtocolParser> {
        Box::new(MemcachedParser::new(role, config))
    }
}
