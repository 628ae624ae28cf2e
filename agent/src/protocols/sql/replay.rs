//! Replays captured traffic through parsers in tests.
//!
//! Capture files (`testdata/*/*.bin`) were recorded by a TCP proxy between
//! real clients and servers: one record per `recv()`, as a direction byte
//! (`>` client to server, `<` server to client), a big-endian u32 length and
//! the bytes.
use waggle_common::{Direction, Role};

use crate::model::ParsedSpan;
use crate::protocols::{Chunk, Feed, ProtocolParser};

/// (from the client?, bytes) per record.
pub fn records(bin: &[u8]) -> Vec<(bool, Vec<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 5 <= bin.len() {
        let len = u32::from_be_bytes([bin[i + 1], bin[i + 2], bin[i + 3], bin[i + 4]]) as usize;
        out.push((bin[i] == b'>', bin[i + 5..i + 5 + len].to_vec()));
        i += 5 + len;
    }
    assert_eq!(i, bin.len(), "malformed capture file");
    out
}

pub fn direction(from_client: bool, role: Role) -> Direction {
    match (from_client, role == Role::Server) {
        (true, false) | (false, true) => Direction::Egress,
        _ => Direction::Ingress,
    }
}

/// Record `k` becomes a syscall at t = 1000k..1000k+500 whose first
/// `capture` bytes were captured.
pub fn chunk(k: usize, from_client: bool, bytes: &[u8], capture: usize, role: Role) -> Chunk<'_> {
    Chunk {
        direction: direction(from_client, role),
        bytes: &bytes[..bytes.len().min(capture)],
        total_len: bytes.len() as u64,
        enter_ns: 1000 * k as u64,
        exit_ns: 1000 * k as u64 + 500,
        tid: 7,
    }
}

pub struct Replayed {
    pub spans: Vec<ParsedSpan>,
    /// Every non-Continue feed result, with the record index.
    pub feeds: Vec<(usize, Feed)>,
}

pub fn replay(parser: &mut dyn ProtocolParser, recs: &[(bool, Vec<u8>)], capture: usize, role: Role) -> Replayed {
    let mut spans = Vec::new();
    let mut feeds = Vec::new();
    for (k, (from_client, bytes)) in recs.iter().enumerate() {
        let feed = parser.on_data(&chunk(k, *from_client, bytes, capture, role), &mut spans);
        if feed != Feed::Continue {
            feeds.push((k, feed));
        }
    }
    Replayed { spans, feeds }
}

pub fn names(spans: &[ParsedSpan]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

pub fn attr_str<'a>(span: &'a ParsedSpan, key: &str) -> Option<&'a str> {
    match span.attr(key) {
        Some(crate::model::AttrValue::Str(s)) => Some(s.as_str()),
        _ => None,
    }
}

pub fn attr_int(span: &ParsedSpan, key: &str) -> Option<i64> {
    match span.attr(key) {
        Some(crate::model::AttrValue::Int(n)) => Some(*n),
        _ => None,
    }
}

/// No attribute value of any span contains `needle`.
pub fn assert_absent(spans: &[ParsedSpan], needle: &str) {
    for span in spans {
        assert!(!span.name.contains(needle), "{needle} leaked into name {}", span.name);
        for (k, v) in &span.attributes {
            if let crate::model::AttrValue::Str(s) = v {
                assert!(!s.contains(needle), "{needle} leaked into {k}={s}");
            }
        }
    }
}

/// A tiny deterministic PRNG for robustness tests.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// Each capture as a fuzz script, 40 random mutations of each, and random
/// noise, through a protocol's `fuzz_script`: nothing may panic, and the
/// unmutated captures must give at least `min_spans` spans (the harness
/// reaches the span paths).
pub fn fuzz_captures_and_mutations(captures: &[&[u8]], fuzz_script: fn(&[u8]) -> usize, min_spans: usize) {
    use crate::protocols::script::from_records;
    let mut rng = Lcg(11);
    let mut spans = 0;
    for bin in captures {
        let script = from_records(&records(bin));
        spans += fuzz_script(&script);
        for _ in 0..40 {
            let mut m = script.clone();
            for _ in 0..1 + rng.below(8) {
                let at = rng.below(m.len() as u64) as usize;
                m[at] = rng.next() as u8;
            }
            fuzz_script(&m);
        }
    }
    // Client and Unknown roles read these scripts the right way round
    // (Server sees them mirrored): the harness reaches the span paths.
    assert!(spans >= min_spans, "only {spans} spans");
    for _ in 0..300 {
        let noise: Vec<u8> = (0..rng.below(600)).map(|_| rng.next() as u8).collect();
        fuzz_script(&noise);
    }
}

/// Captures cut at each of `capture_sizes` must not leak `secrets`; random
/// re-chunking, bit flips and garbage must not panic (a parser that gives
/// up is replaced, as the connection layer does).
pub fn garbage_never_panics<P: ProtocolParser>(
    captures: &[&[u8]],
    seed: u64,
    capture_sizes: &[usize],
    secrets: &[&str],
    parser: impl Fn() -> P,
) {
    let mut rng = Lcg(seed);
    for bin in captures {
        let recs = records(bin);
        for &capture in capture_sizes {
            let r = replay(&mut parser(), &recs, capture, Role::Client);
            for secret in secrets {
                assert_absent(&r.spans, secret);
            }
        }
        // Random re-chunking and random bit flips.
        for _ in 0..30 {
            let mut p = parser();
            let mut out = Vec::new();
            for (k, (c, bytes)) in recs.iter().enumerate() {
                let mut bytes = bytes.clone();
                if rng.below(10) == 0 && !bytes.is_empty() {
                    let at = rng.below(bytes.len() as u64) as usize;
                    bytes[at] ^= 1 << rng.below(8);
                }
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let n = 1 + rng.below(rest.len() as u64) as usize;
                    let capture = 1 + rng.below(n as u64 + 8) as usize;
                    if p.on_data(&chunk(k, *c, &rest[..n], capture, Role::Client), &mut out) != Feed::Continue {
                        p = parser();
                    }
                    rest = &rest[n..];
                }
            }
        }
    }
    let mut p = parser();
    let mut out = Vec::new();
    for k in 0..5000 {
        let len = rng.below(300) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if p.on_data(&chunk(k, rng.below(2) == 0, &bytes, 4096, Role::Client), &mut out) != Feed::Continue {
            p = parser();
        }
    }
}
