//! Traces as trees: spans grouped by trace and printed as an indented
//! waterfall (`--print tree`, the default on a terminal-only set-up), and
//! the ring of recent traces that `waggle trace <id>` reads through the
//! agent's local endpoint.
//!
//! Both keep a [`TraceSpan`], the part of a span a waterfall shows, instead
//! of the whole span: one allocation (the name) per span, and the resource
//! is shared with the span it came from.
mod lookup;
mod printer;
mod recent;
mod render;

use std::{sync::Arc, time::SystemTime};

pub use lookup::{decode_trace, encode_trace, parse_trace_id, LookupError};
pub use printer::{spawn_tree_printer, TreePrinter};
pub use recent::{RecentTraces, SharedRecentTraces};
pub use render::{colour_stdout, render_trace, RenderOptions};

use super::stdout::status_code;
use crate::model::{AttrValue, FinishedSpan, ProcessResource, SpanKind, SpanStatus};

/// What a waterfall line shows of a span.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSpan {
    pub resource: Arc<ProcessResource>,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub kind: SpanKind,
    pub name: String,
    /// The protocol's status code (HTTP status, SQLSTATE), as printed.
    pub code: Option<AttrValue>,
    /// Some for an error span: its description, possibly empty.
    pub error: Option<String>,
    pub start: SystemTime,
    pub end: SystemTime,
}

impl TraceSpan {
    pub fn of(span: &FinishedSpan) -> TraceSpan {
        TraceSpan {
            resource: span.resource.clone(),
            trace_id: span.trace_id,
            span_id: span.span_id,
            parent_span_id: span.parent_span_id,
            kind: span.kind,
            name: span.name.to_string(),
            code: status_code(span).cloned(),
            error: match &span.status {
                SpanStatus::Unset => None,
                SpanStatus::Error { description } => Some(description.clone()),
            },
            start: span.start,
            end: span.end,
        }
    }

    /// Heap bytes this span holds on its own (the shared resource is not
    /// counted: every span of a process points at one).
    pub fn heap_bytes(&self) -> usize {
        let code = match &self.code {
            Some(AttrValue::Str(crate::model::Text::Owned(s))) => s.capacity(),
            _ => 0,
        };
        self.name.capacity() + self.error.as_ref().map_or(0, String::capacity) + code
    }

    pub fn duration(&self) -> std::time::Duration {
        self.end.duration_since(self.start).unwrap_or_default()
    }
}
