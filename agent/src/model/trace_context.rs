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

use std::cell::RefCell;

use rand::{rngs::SmallRng, RngCore, SeedableRng};

thread_local! {
    /// Ids need to be unique and uniformly random (samplers read the trace
    /// id), not secret: a per-thread xoshiro generator seeded by the OS costs
    /// a fraction of the reseeding ChaCha behind `rand::random` (which was
    /// 4 % of parsing and assembling an exchange).
    static ID_RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

/// Random ids are never all-zero (the W3C invalid value).
pub fn random_nonzero<const N: usize>() -> [u8; N] {
    ID_RNG.with_borrow_mut(|rng| loop {
        let mut bytes = [0u8; N];
        rng.fill_bytes(&mut bytes);
        if bytes.iter().any(|b| *b != 0) {
            return bytes;
        }
    })
}
