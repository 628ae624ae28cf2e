//! DB span assembly: one exchange's query and outcome become a span with
//! the semantic-convention attributes.
use std::sync::Arc;

use super::summary::QueryInfo;
use crate::model::{AttrValue, Attribute, ParsedSpan, SpanKind, SpanStatus, Text};

/// A database error, already reduced to what is safe to export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbError {
    /// `db.response.status_code` (and `error.type`).
    pub code: String,
    /// Span status description: codes only, never the server's message text
    /// (messages often echo the offending values).
    pub description: String,
}

/// How a DB exchange ended.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    pub returned_rows: Option<u64>,
    pub affected_rows: Option<u64>,
    pub error: Option<DbError>,
    /// Part of the response was not captured: status and row counts may be
    /// missing (never wrong).
    pub response_truncated: bool,
}

impl Outcome {
    /// A response whose end was not framed (see the parsers' hunting): only
    /// an error seen before the gap is known.
    pub fn cut(error: Option<DbError>) -> Outcome {
        Outcome { error, response_truncated: true, ..Outcome::default() }
    }
}

/// Everything a DB span is made of.
pub struct DbSpan<'a> {
    pub kind: SpanKind,
    pub system: &'static str,
    pub namespace: Option<&'a str>,
    pub query: Option<&'a QueryInfo>,
    /// Operation known from elsewhere than the text (e.g. PostgreSQL's
    /// CommandComplete tag) when there is no text.
    pub operation_hint: Option<&'a str>,
    pub start_ns: u64,
    pub end_ns: u64,
    pub tid: u32,
    pub outcome: Outcome,
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl DbSpan<'_> {
    pub fn build(self) -> ParsedSpan {
        let mut attributes: Vec<Attribute> = Vec::with_capacity(12);
        attributes.push(("db.system.name", AttrValue::from(self.system)));
        if let Some(ns) = self.namespace.filter(|ns| !ns.is_empty()) {
            attributes.push(("db.namespace", AttrValue::from(ns.to_owned())));
        }
        let shared = |s: &Arc<str>| Text::Shared(Arc::clone(s));
        let mut operation = self.query.and_then(|q| q.operation.as_ref()).map(shared);
        if operation.is_none() && self.query.is_none_or(|q| q.text.is_empty()) {
            operation = self.operation_hint.map(|hint| Text::Owned(hint.to_owned()));
        }
        if let Some(op) = &operation {
            attributes.push(("db.operation.name", AttrValue::Str(op.clone())));
        }
        let mut summary = None;
        if let Some(q) = self.query {
            if let Some(c) = &q.collection {
                attributes.push(("db.collection.name", AttrValue::Str(shared(c))));
            }
            if !q.text.is_empty() {
                attributes.push(("db.query.text", AttrValue::Str(shared(&q.text))));
            }
            if q.truncated {
                attributes.push(("waggle.db.query.truncated", AttrValue::Bool(true)));
            }
            if q.statements > 1 {
                attributes.push(("db.operation.batch.size", AttrValue::Int(clamp_i64(q.statements as u64))));
            }
            summary = q.summary.as_ref().map(shared);
        }
        if let Some(s) = &summary {
            attributes.push(("db.query.summary", AttrValue::Str(s.clone())));
        }
        let out = self.outcome;
        if let Some(n) = out.returned_rows {
            attributes.push(("db.response.returned_rows", AttrValue::Int(clamp_i64(n))));
        }
        if let Some(n) = out.affected_rows {
            attributes.push(("waggle.db.response.affected_rows", AttrValue::Int(clamp_i64(n))));
        }
        if out.response_truncated {
            attributes.push(("waggle.db.response.truncated", AttrValue::Bool(true)));
        }
        let status = match out.error {
            Some(err) => {
                attributes.push(("db.response.status_code", AttrValue::from(err.code.clone())));
                attributes.push(("error.type", AttrValue::from(err.code)));
                SpanStatus::Error { description: err.description }
            }
            None => SpanStatus::Unset,
        };
        let name = summary.or(operation).map_or_else(|| self.system.to_owned(), |t| t.as_str().to_owned());
        ParsedSpan {
            kind: self.kind,
            name: name.into(),
            start_ns: self.start_ns,
            end_ns: self.end_ns.max(self.start_ns),
            status,
            attributes,
            incoming_context: None,
            incoming_tracestate: None,
            tid: self.tid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::sql::{analyze_query, Backslash, Dialect};

    fn info(s: &str) -> QueryInfo {
        analyze_query(s.as_bytes(), false, Dialect::Postgres, Backslash::Plain, false)
    }

    #[test]
    fn span_building_follows_semconv_names() {
        let q = info("SELECT * FROM items WHERE id = 7");
        let span = DbSpan {
            kind: SpanKind::Client,
            system: "postgresql",
            namespace: Some("shop"),
            query: Some(&q),
            operation_hint: None,
            start_ns: 10,
            end_ns: 20,
            tid: 3,
            outcome: Outcome { returned_rows: Some(1), ..Default::default() },
        }
        .build();
        assert_eq!(span.name, "SELECT items");
        assert_eq!(span.attr("db.system.name"), Some(&AttrValue::from("postgresql")));
        assert_eq!(span.attr("db.namespace"), Some(&AttrValue::from("shop")));
        assert_eq!(span.attr("db.query.text"), Some(&AttrValue::from("SELECT * FROM items WHERE id = ?")));
        assert_eq!(span.attr("db.response.returned_rows"), Some(&AttrValue::Int(1)));
        assert_eq!(span.status, SpanStatus::Unset);
        let err = DbSpan {
            kind: SpanKind::Client,
            system: "mysql",
            namespace: None,
            query: None,
            operation_hint: Some("UPDATE"),
            start_ns: 30,
            end_ns: 20,
            tid: 3,
            outcome: Outcome {
                error: Some(DbError { code: "1146".into(), description: "d".into() }),
                ..Default::default()
            },
        }
        .build();
        assert_eq!(err.name, "UPDATE");
        assert_eq!(err.end_ns, 30);
        assert_eq!(err.attr("error.type"), Some(&AttrValue::from("1146")));
        assert_eq!(err.attr("db.query.text"), None);
        assert!(matches!(err.status, SpanStatus::Error { .. }));
    }
}
