//! The MySQL parser's fuzz entry point.
use super::detect::MysqlDetector;
use crate::model::{AttrValue, ParsedSpan};
use crate::protocols::sql;

/// Fuzzing entry point (`fuzz/fuzz_targets/mysql.rs`): see [`sql::fuzz_script`].
/// Panics when an invariant breaks; returns the spans emitted.
pub fn fuzz_script(data: &[u8]) -> usize {
    sql::fuzz_script(data, &MysqlDetector, check_span)
}

fn check_span(span: &ParsedSpan) {
    if let Some(AttrValue::Str(code)) = span.attr("db.response.status_code") {
        assert!(code.parse::<u16>().is_ok(), "{code}");
    }
}
