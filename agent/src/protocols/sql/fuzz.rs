//! The SQL parsers' fuzz harness: runs a parser on a fuzz script and checks
//! the invariants every DB span must hold.
use waggle_common::Role;

use super::{
    sanitize::MAX_QUERY_TEXT,
    summary::{MAX_COLLECTION, MAX_OPERATION},
};
use crate::{
    model::{AttrValue, ParsedSpan, SpanKind, SpanStatus},
    protocols::{script, ParserConfig, ProtocolDetector},
};

/// Drives a SQL parser with a fuzzer-chosen [`crate::protocols::script`]: every role is
/// run (the Unknown one with raw SQL text, so both text paths are fuzzed),
/// and every span is checked by [`check_db_span`] and `check`. Returns the
/// spans emitted.
pub fn fuzz_script(data: &[u8], detector: &dyn ProtocolDetector, check: fn(&ParsedSpan)) -> usize {
    let new_parser =
        |role| detector.new_parser(role, &ParserConfig { raw_sql: role == Role::Unknown, ..ParserConfig::default() });
    script::run(data, detector, new_parser, |span, role, _| {
        check_db_span(span, role);
        check(span);
    })
}

/// Invariants of every DB span, whatever the input.
pub fn check_db_span(span: &ParsedSpan, role: Role) {
    assert!(span.end_ns >= span.start_ns, "span ends before it starts: {span:?}");
    assert!(!span.name.is_empty());
    if role != Role::Unknown {
        let expected = if role == Role::Server { SpanKind::Server } else { SpanKind::Client };
        assert_eq!(span.kind, expected);
    }
    match span.attr("db.system.name") {
        Some(AttrValue::Str(s)) => assert!(["postgresql", "mysql", "mariadb"].contains(&s.as_str()), "{s}"),
        other => panic!("db.system.name is {other:?}"),
    }
    if let Some(AttrValue::Str(text)) = span.attr("db.query.text") {
        assert!(text.len() <= MAX_QUERY_TEXT + 3 * 16 + 8, "query text of {} bytes", text.len());
    }
    if let Some(AttrValue::Str(summary)) = span.attr("db.query.summary") {
        assert!(summary.len() <= 2 * MAX_OPERATION + MAX_COLLECTION + 8);
    }
    let error = matches!(span.status, SpanStatus::Error { .. });
    assert_eq!(error, span.attr("error.type").is_some());
    assert_eq!(error, span.attr("db.response.status_code").is_some());
    for key in ["db.response.returned_rows", "waggle.db.response.affected_rows"] {
        if let Some(v) = span.attr(key) {
            assert!(matches!(v, AttrValue::Int(n) if *n >= 0), "{key}: {v:?}");
        }
    }
}
