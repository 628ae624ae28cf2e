//! The cache parsers' fuzz harness: runs a parser on a fuzz script and
//! checks the invariants every cache span must hold.
use waggle_common::Role;

use super::exchange::MAX_TEXT;
use crate::{
    model::{AttrValue, ParsedSpan, SpanKind, SpanStatus},
    protocols::{script, ParserConfig, ProtocolDetector},
};

/// Drives a cache parser with a fuzzer-chosen [`crate::protocols::script`]
/// in every role (the Unknown one with keys shown, so both text paths are
/// fuzzed); every span is checked by [`check_cache_span`]. Returns the
/// spans emitted.
pub fn fuzz_script(data: &[u8], detector: &dyn ProtocolDetector, system: &'static str) -> usize {
    let new_parser = |role| {
        detector.new_parser(role, &ParserConfig { cache_keys: role == Role::Unknown, ..ParserConfig::default() })
    };
    script::run(data, detector, new_parser, |span, role, _| check_cache_span(span, role, system))
}

/// Invariants of every cache span, whatever the input.
pub fn check_cache_span(span: &ParsedSpan, role: Role, system: &'static str) {
    assert!(span.end_ns >= span.start_ns, "span ends before it starts: {span:?}");
    assert!(!span.name.is_empty());
    if role != Role::Unknown {
        let expected = if role == Role::Server { SpanKind::Server } else { SpanKind::Client };
        assert_eq!(span.kind, expected);
    }
    assert_eq!(span.attr("db.system.name"), Some(&AttrValue::from(system)));
    let Some(AttrValue::Str(op)) = span.attr("db.operation.name") else {
        panic!("no db.operation.name: {span:?}");
    };
    assert_eq!(span.name, op.as_str());
    assert!(op.len() <= 2 * 32 + 1 && op.bytes().all(|b| b.is_ascii_graphic() || b == b' '), "{op}");
    match span.attr("db.query.text") {
        Some(AttrValue::Str(text)) => {
            assert!(text.len() <= MAX_TEXT, "query text of {} bytes", text.len());
            assert!(text.starts_with(op.as_str()), "{text} does not start with {op}");
            if role != Role::Unknown {
                // Without keys every argument is a placeholder.
                let args = &text[op.len()..];
                assert!(args.split(' ').all(|w| w.is_empty() || w == "?" || w == "..." || w == "noreply"), "{text}");
            }
        }
        other => panic!("db.query.text is {other:?}"),
    }
    let error = matches!(span.status, SpanStatus::Error { .. });
    assert_eq!(error, span.attr("error.type").is_some());
    assert_eq!(error, span.attr("db.response.status_code").is_some());
    if let Some(AttrValue::Str(code)) = span.attr("error.type") {
        assert!(code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'), "{code}");
    }
    if let Some(v) = span.attr("db.response.returned_rows") {
        assert!(matches!(v, AttrValue::Int(n) if *n >= 0), "{v:?}");
    }
}
