//! The fuzz-script interpreter shared by every parser's fuzz target
//! (`fuzz/fuzz_targets/*.rs`, through each protocol's `fuzz_script`) and by
//! their seeded-random unit tests, so all protocols are fuzzed the same way.
//!
//! A script is a byte string of steps. Each step starts with a control byte:
//! its high 4 bits advance time by that many microseconds, its low 3 bits
//! pick the operation:
//! - 0..=5: a chunk. The next byte is its length, then that many payload
//!   bytes. Bit 0 set = egress (else ingress); bit 1 set = truncated: one more
//!   byte scales the uncaptured bytes that follow the captured ones.
//! - 6: the connection closes.
//! - 7: the connection idles (the parser's `on_idle` threshold lies behind
//!   the current time, by three times the step's advance).
//!
//! A script running out mid-step reads missing bytes as 0 (a truncation scale
//! as 1). The script is run once per role with a fresh parser; lost sync
//! restarts the parser as the connection layer would, and `Opaque` ends the
//! role's run. [`from_records`] turns captured traffic into a script.

use waggle_common::{Direction, Role};

use super::{Chunk, Feed, ProtocolDetector, ProtocolParser};
use crate::model::ParsedSpan;

/// Every role a script is run in, in order.
const ROLES: [Role; 3] = [Role::Client, Role::Server, Role::Unknown];

/// Where a span handed to [`run`]'s check came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emitted {
    /// A step of the script (a chunk, a close or an idle).
    Step,
    /// The close [`run`] adds after the last step, which flushes whatever
    /// the script left half-done.
    FinalClose,
}

/// Runs `data` as a script (see the module docs) against a parser from
/// `new_parser` for each role, probing `detector` on every chunk. Every span
/// must end no earlier than it starts, then goes to `check` with the role
/// and where it came from. Panics on a broken invariant; returns how many
/// spans were emitted (so tests can check the script reached the span paths).
pub fn run(
    data: &[u8],
    detector: &dyn ProtocolDetector,
    mut new_parser: impl FnMut(Role) -> Box<dyn ProtocolParser>,
    mut check: impl FnMut(&ParsedSpan, Role, Emitted),
) -> usize {
    let mut emitted = 0usize;
    for role in ROLES {
        let mut parser = new_parser(role);
        let mut out = Vec::new();
        let mut t: u64 = 1_000_000;
        let mut i = 0usize;
        let mut opaque = false;
        let mut spans = |out: &mut Vec<ParsedSpan>, from: Emitted| {
            for span in out.drain(..) {
                emitted += 1;
                assert!(span.end_ns >= span.start_ns, "span ends before it starts: {span:?}");
                check(&span, role, from);
            }
        };
        while i < data.len() && !opaque {
            let ctrl = data[i];
            i += 1;
            t += u64::from(ctrl >> 4) * 1_000;
            match ctrl & 7 {
                6 => parser.on_close(t, &mut out),
                7 => parser.on_idle(t.saturating_sub(u64::from(ctrl >> 4) * 3_000), &mut out),
                op => {
                    let len = usize::from(data.get(i).copied().unwrap_or(0));
                    i += 1;
                    let end = (i + len).min(data.len());
                    let bytes = &data[i.min(end)..end];
                    i = end;
                    let blind = if op & 2 != 0 {
                        let scale = u64::from(data.get(i).copied().unwrap_or(1));
                        i += 1;
                        1 + scale * 67
                    } else {
                        0
                    };
                    let direction = if op & 1 == 0 { Direction::Ingress } else { Direction::Egress };
                    let chunk = Chunk {
                        direction,
                        bytes,
                        total_len: bytes.len() as u64 + blind,
                        enter_ns: t,
                        exit_ns: t + 500,
                        tid: 7,
                    };
                    let _ = detector.detect(role, &chunk);
                    match parser.on_data(&chunk, &mut out) {
                        Feed::Continue => {}
                        Feed::LostSync(_) => {
                            spans(&mut out, Emitted::Step);
                            let _ = parser.take_dropped();
                            parser = new_parser(role);
                        }
                        Feed::Opaque(_) => opaque = true,
                    }
                }
            }
            spans(&mut out, Emitted::Step);
            let _ = parser.take_dropped();
        }
        parser.on_close(t + 1, &mut out);
        spans(&mut out, Emitted::FinalClose);
    }
    emitted
}

/// Turns capture records (`(from_client, bytes)`, as the SQL parsers' test
/// captures hold them) into a script of untruncated chunks, client bytes
/// egress: the traffic as the client role sees it (for tests and seed
/// corpora).
pub fn from_records(records: &[(bool, Vec<u8>)]) -> Vec<u8> {
    let mut script = Vec::new();
    for (from_client, bytes) in records {
        for piece in bytes.chunks(255) {
            script.push(0x10 | u8::from(*from_client));
            script.push(piece.len() as u8);
            script.extend_from_slice(piece);
        }
    }
    script
}
