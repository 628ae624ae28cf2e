//! The most recent traces, bounded in bytes, for `waggle trace <id>`.
//!
//! Traces are kept in the order they were first seen and the oldest are
//! dropped whole (and counted) when a new span would take the total past the
//! budget, so a look-up finds the whole of a recent trace or nothing.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use super::TraceSpan;
use crate::metrics::Metrics;

struct Kept {
    spans: Vec<TraceSpan>,
    /// What the spans hold on the heap (names, error texts).
    heap: usize,
    /// All this trace costs: the entry, the span vector's capacity, `heap`.
    bytes: usize,
}

/// A trace's table entry and its place in the order, beside its spans.
const PER_TRACE_BYTES: usize =
    std::mem::size_of::<([u8; 16], Kept)>() + std::mem::size_of::<([u8; 16], SystemTime)>() + 16;

pub struct RecentTraces {
    traces: HashMap<[u8; 16], Kept, foldhash::fast::RandomState>,
    /// First-seen order: one entry per kept trace, pushed when it is
    /// created and popped when it is dropped.
    order: VecDeque<([u8; 16], SystemTime)>,
    bytes: usize,
    budget: usize,
    metrics: Arc<Metrics>,
}

impl RecentTraces {
    pub fn new(budget: usize, metrics: Arc<Metrics>) -> RecentTraces {
        RecentTraces { traces: HashMap::default(), order: VecDeque::new(), bytes: 0, budget, metrics }
    }

    /// Keeps `span` with its trace, then drops the oldest traces (possibly
    /// this one, if it alone is past the budget) until the ring fits.
    pub fn insert(&mut self, span: TraceSpan) {
        let kept = self.traces.entry(span.trace_id).or_insert_with(|| {
            self.order.push_back((span.trace_id, span.start));
            Kept { spans: Vec::new(), heap: 0, bytes: 0 }
        });
        kept.heap += span.heap_bytes();
        kept.spans.push(span);
        let before = kept.bytes;
        kept.bytes = PER_TRACE_BYTES + kept.spans.capacity() * std::mem::size_of::<TraceSpan>() + kept.heap;
        self.bytes = self.bytes - before + kept.bytes;
        while self.bytes > self.budget && self.evict_oldest() {}
    }

    /// Drops the oldest trace; false when there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some((id, _)) = self.order.pop_front() else { return false };
        if let Some(kept) = self.traces.remove(&id) {
            self.bytes -= kept.bytes;
        }
        Metrics::inc(&self.metrics.recent_traces_evicted);
        true
    }

    pub fn get(&self, trace_id: &[u8; 16]) -> Option<Vec<TraceSpan>> {
        self.traces.get(trace_id).map(|kept| kept.spans.clone())
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.traces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    /// Start of the oldest trace still kept: how far back a look-up reaches.
    pub fn oldest_start(&self) -> Option<SystemTime> {
        self.order.front().map(|(_, start)| *start)
    }
}

/// The ring shared by the exporter (writes, once per batch) and the local
/// endpoint (reads, per look-up).
#[derive(Clone)]
pub struct SharedRecentTraces(Arc<Mutex<RecentTraces>>);

impl std::fmt::Debug for SharedRecentTraces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedRecentTraces")
    }
}

impl SharedRecentTraces {
    pub fn new(budget: usize, metrics: Arc<Metrics>) -> SharedRecentTraces {
        SharedRecentTraces(Arc::new(Mutex::new(RecentTraces::new(budget, metrics))))
    }

    /// Runs `f` on the ring; None if a panic while it was held poisoned it.
    pub fn with<R>(&self, f: impl FnOnce(&mut RecentTraces) -> R) -> Option<R> {
        self.0.lock().ok().map(|mut ring| f(&mut ring))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{tests::span, waterfall::TraceSpan};

    fn trace_span(trace: u8, id: u8) -> TraceSpan {
        let mut s = TraceSpan::of(&span("GET /"));
        s.trace_id = [trace; 16];
        s.span_id = [id; 8];
        s
    }

    #[test]
    fn oldest_traces_go_first_whole_and_counted() {
        let evicted = |m: &Metrics| m.recent_traces_evicted.load(std::sync::atomic::Ordering::Relaxed);
        let metrics = Arc::new(Metrics::default());
        let mut probe = RecentTraces::new(usize::MAX, metrics.clone());
        probe.insert(trace_span(1, 1));
        let one = probe.bytes();
        assert!(one > std::mem::size_of::<TraceSpan>() + PER_TRACE_BYTES, "the entry, the vector and the name");
        let mut ring = RecentTraces::new(3 * one + 1, metrics.clone());
        ring.insert(trace_span(1, 1));
        ring.insert(trace_span(2, 1));
        ring.insert(trace_span(3, 1));
        assert_eq!((ring.len(), ring.bytes()), (3, 3 * one));
        // A second span of trace 1 (its name; the vector has room) takes the
        // ring past its budget: trace 1
        // is the oldest and goes whole, with both its spans.
        ring.insert(trace_span(1, 2));
        assert!(ring.get(&[1; 16]).is_none());
        assert_eq!((ring.len(), ring.bytes(), evicted(&metrics)), (2, 2 * one, 1));
        ring.insert(trace_span(4, 1));
        assert_eq!(ring.get(&[2; 16]).unwrap().len(), 1);
        assert_eq!((ring.len(), ring.bytes(), evicted(&metrics)), (3, 3 * one, 1));
        // A trace bigger than the whole budget is not kept, and counted.
        let mut huge = trace_span(5, 1);
        huge.name = "x".repeat(10 * one);
        ring.insert(huge);
        assert!(ring.get(&[5; 16]).is_none());
        assert!(ring.bytes() <= 3 * one + 1);
        assert_eq!((ring.len(), evicted(&metrics)), (0, 5), "everything older went first, then the huge one");
    }

    #[test]
    fn a_trace_seen_again_after_its_drop_is_kept_anew() {
        let mut ring = RecentTraces::new(usize::MAX, Arc::new(Metrics::default()));
        ring.insert(trace_span(9, 1));
        let one = ring.bytes();
        let mut ring = RecentTraces::new(one, Arc::new(Metrics::default()));
        for round in 0..1000u32 {
            ring.insert(trace_span((round % 2) as u8 + 1, 1));
        }
        assert_eq!((ring.len(), ring.order.len(), ring.bytes()), (1, 1, one));
        assert_eq!(ring.get(&[2; 16]).map(|s| s.len()), Some(1));
        assert!(ring.oldest_start().is_some());
    }
}
