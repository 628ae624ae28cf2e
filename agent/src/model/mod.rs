//! The data every stage passes on: spans, trace identity, connection and
//! process identity. A leaf: it imports nothing else of the agent, so any
//! stage may use it and data only flows down the pipeline.
mod conn;
mod pod;
mod resource;
mod span;
mod text;
mod trace_context;

pub use conn::{ConnMeta, Protocol};
pub use pod::{PodDirectory, PodFacts, Workload, WorkloadKind};
pub use resource::{
    parse_resource_attributes, parse_resource_attributes_lossy, ProcessResource, ResourceAttributesError,
};
pub use span::{AttrValue, Attribute, FinishedSpan, ParsedSpan, SpanKind, SpanStatus};
pub use text::{cut_utf8, hex, truncate_utf8, Text};
pub use trace_context::{random_nonzero, SpanIdentity, TraceContext};
