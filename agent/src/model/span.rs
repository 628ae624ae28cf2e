//! Spans as parsers produce them ([`ParsedSpan`]) and as exporters consume
//! them ([`FinishedSpan`]).
use std::{sync::Arc, time::SystemTime};

use super::{ProcessResource, Text, TraceContext};

/// Span kind, from the traced process's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Server,
    Client,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(Text),
    Int(i64),
    Bool(bool),
}

impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(Text::Owned(v))
    }
}
/// A literal or a fixed vocabulary word: no allocation.
impl From<&'static str> for AttrValue {
    fn from(v: &'static str) -> Self {
        AttrValue::Str(Text::Static(v))
    }
}
impl From<Text> for AttrValue {
    fn from(v: Text) -> Self {
        AttrValue::Str(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

/// Semantic-convention attribute: key + value.
pub type Attribute = (&'static str, AttrValue);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpanStatus {
    Unset,
    Error { description: String },
}

/// A span as a protocol parser sees it: times are CLOCK_MONOTONIC ns from the
/// kernel; no ids, no process or network identity yet.
#[derive(Clone, Debug, PartialEq)]
pub struct ParsedSpan {
    pub kind: SpanKind,
    /// Shared where the name repeats (an HTTP route's), owned otherwise.
    pub name: Text,
    pub start_ns: u64,
    pub end_ns: u64,
    pub status: SpanStatus,
    pub attributes: Vec<Attribute>,
    /// Context the request carried (`traceparent`/`tracestate`), if valid.
    pub incoming_context: Option<TraceContext>,
    pub incoming_tracestate: Option<String>,
    /// Thread that read the request (server) or wrote it (client).
    pub tid: u32,
}

impl ParsedSpan {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// A complete span ready for export.
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedSpan {
    pub resource: Arc<ProcessResource>,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub tracestate: Option<String>,
    pub sampled: bool,
    pub kind: SpanKind,
    pub name: Text,
    pub start: SystemTime,
    pub end: SystemTime,
    pub status: SpanStatus,
    pub attributes: Vec<Attribute>,
}

impl FinishedSpan {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
    pub fn duration(&self) -> std::time::Duration {
        self.end.duration_since(self.start).unwrap_or_default()
    }
}
