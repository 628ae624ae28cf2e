//! Trace identity: the W3C context a request carried and the ids a span is
//! given.

/// W3C trace context (`traceparent`), parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

/// The ids a span must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanIdentity {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    pub sampled: bool,
    /// The kernel wrote these ids into the request's `traceparent`.
    pub injected: bool,
}

/// Random ids are never all-zero (the W3C invalid value).
pub fn random_nonzero<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = rand::random();
        if bytes.iter().any(|b| *b != 0) {
            return bytes;
        }
    }
}
