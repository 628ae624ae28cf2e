//! What an exchange becomes: the span's name, kind, status and semantic
//! convention attributes, from the request head and what is known of the
//! response.

use super::{
    head::{name_method, split_host_port, RequestHead},
    strings::{intern, PathStrings},
};
use crate::model::{AttrValue, Attribute, ParsedSpan, SpanKind, SpanStatus, Text};

/// A request whose head was read, waiting for (or receiving) its response.
#[derive(Debug)]
pub(super) struct PendingRequest {
    pub(super) id: u64,
    pub(super) head: Option<RequestHead>,
    /// Request body size once known (Content-Length or decoded chunks).
    pub(super) body_size: Option<u64>,
    pub(super) start_ns: u64,
    pub(super) tid: u32,
}

impl PendingRequest {
    pub(super) fn method(&self) -> &str {
        self.head.as_ref().map_or("", |h| h.method)
    }
}

/// A request matched with its response head.
#[derive(Debug)]
pub(super) struct Exchange {
    pub(super) req: PendingRequest,
    pub(super) status: Option<u16>,
    pub(super) body_bytes: u64,
    pub(super) body_size_known: bool,
}

/// None for a placeholder: a request that was never readable.
pub(super) fn build_span(kind: SpanKind, exchange: Exchange, end_ns: u64) -> Option<ParsedSpan> {
    let Exchange { req, status, body_bytes, body_size_known } = exchange;
    // Placeholders stand for requests that were never readable.
    let head = req.head?;
    // Path (redacted), route and name: computed once per distinct path
    // (strings.rs), looked up when the request head was read.
    let (path, route, name) = match head.path {
        Some(PathStrings { path, route, name }) => (Some(path), Some(route), Text::Shared(name)),
        None => (None, None, Text::Static(name_method(head.method))),
    };
    let mut attributes: Vec<Attribute> = Vec::with_capacity(14);
    attributes.push(("http.request.method", AttrValue::from(head.method)));
    if let Some(original) = head.method_original {
        attributes.push(("http.request.method_original", AttrValue::from(original)));
    }
    if let Some(path) = path {
        attributes.push(("url.path", AttrValue::from(path)));
    }
    attributes.push(("url.scheme", AttrValue::from("http")));
    if let Some(route) = route {
        attributes.push(("http.route", AttrValue::from(Text::Shared(route))));
    }
    if let Some(status) = status {
        attributes.push(("http.response.status_code", AttrValue::Int(i64::from(status))));
    }
    let version = if head.minor_version == 0 { "1.0" } else { "1.1" };
    attributes.push(("network.protocol.version", AttrValue::from(version)));
    if let Some(ua) = head.user_agent {
        attributes.push(("user_agent.original", AttrValue::from(Text::Shared(ua))));
    }
    if let Some(size) = req.body_size {
        attributes.push(("http.request.body.size", AttrValue::Int(i64::try_from(size).unwrap_or(i64::MAX))));
    }
    if body_size_known {
        attributes.push(("http.response.body.size", AttrValue::Int(i64::try_from(body_bytes).unwrap_or(i64::MAX))));
    }
    let server = match (head.host, head.target_authority.as_deref()) {
        (Some(host), _) => Some(host),
        (None, Some(authority)) => {
            let (address, port) = split_host_port(authority);
            Some((intern(address), port))
        }
        (None, None) => None,
    };
    if let Some((address, port)) = server {
        attributes.push(("server.address", AttrValue::from(Text::Shared(address))));
        if let Some(port) = port {
            attributes.push(("server.port", AttrValue::Int(i64::from(port))));
        }
    }
    let status = span_status(kind, status, &mut attributes);
    Some(ParsedSpan {
        kind,
        name,
        start_ns: req.start_ns,
        end_ns: end_ns.max(req.start_ns),
        status,
        attributes,
        incoming_context: head.context,
        incoming_tracestate: head.tracestate,
        tid: req.tid,
    })
}

/// OTel's HTTP rule: a SERVER span is an error from 500, a CLIENT span from
/// 400; the code goes into `error.type`. Shared with the protocols that
/// carry HTTP requests (FastCGI).
pub(crate) fn span_status(kind: SpanKind, status: Option<u16>, attributes: &mut Vec<Attribute>) -> SpanStatus {
    let error = match (kind, status) {
        (SpanKind::Server, Some(s)) if s >= 500 => Some(s),
        (SpanKind::Client, Some(s)) if s >= 400 => Some(s),
        _ => None,
    };
    match error {
        Some(s) => {
            attributes.push(("error.type", AttrValue::from(s.to_string())));
            SpanStatus::Error { description: format!("HTTP {s}") }
        }
        None => SpanStatus::Unset,
    }
}
