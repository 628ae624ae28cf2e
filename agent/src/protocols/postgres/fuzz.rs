//! The PostgreSQL parser's fuzz entry point.
use super::{detect::PostgresDetector, parser::SYSTEM};
use crate::model::{AttrValue, ParsedSpan};
use crate::protocols::sql;

/// Fuzzing entry point (`fuzz/fuzz_targets/postgres.rs`): see [`sql::fuzz_script`].
/// Panics when an invariant breaks; returns the spans emitted.
pub fn fuzz_script(data: &[u8]) -> usize {
    sql::fuzz_script(data, &PostgresDetector, check_span)
}

fn check_span(span: &ParsedSpan) {
    if let Some(AttrValue::Str(code)) = span.attr("db.response.status_code") {
        assert!(code == "_OTHER" || (code.len() == 5 && code.bytes().all(|b| b.is_ascii_alphanumeric())), "{code}");
    }
    assert_eq!(span.attr("db.system.name"), Some(&AttrValue::from(SYSTEM)));
}
