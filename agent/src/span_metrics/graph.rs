//! Service-graph pairing: a CLIENT span (the caller's side of a call) and
//! the SERVER span it caused (the callee's side) meet in a small table
//! keyed by (trace id, client span id) = (trace id, server's parent span
//! id). Whichever side comes first waits there, at most `ttl`; the table
//! holds at most `capacity` waiting sides. Both limits are counted when hit.
use std::{
    collections::{hash_map::Entry, HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use super::series::TraceRef;
use crate::model::ProcessResource;

/// How long one side waits for the other. Both sides of a call finish
/// within its duration of each other, and batches leave at least every
/// export interval (1 s by default); a callee still running after this
/// long is rare enough to count as unpaired.
pub const PAIRING_TTL: Duration = Duration::from_secs(10);
/// Waiting sides at most (a few hundred bytes each).
pub const PAIRING_CAPACITY: usize = 16_384;

/// One side of a call, waiting for the other.
#[derive(Clone, Debug)]
pub struct Side {
    pub resource: Arc<ProcessResource>,
    pub seconds: f64,
    pub failed: bool,
    pub trace: TraceRef,
    pub end: SystemTime,
}

/// A call whose two sides met.
pub struct Edge<'a> {
    pub client: &'a Side,
    pub server: &'a Side,
}

struct Waiting {
    client: bool,
    side: Side,
    since: Instant,
}

type Key = [u8; 24];

/// Which side of which call a span is.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    client: bool,
    key: Key,
}

impl Link {
    /// A CLIENT span: the call is its own span id.
    pub fn client(trace_id: &[u8; 16], span_id: &[u8; 8]) -> Link {
        Link { client: true, key: key(trace_id, span_id) }
    }

    /// A SERVER span: the call is its parent's span id.
    pub fn server(trace_id: &[u8; 16], parent_span_id: &[u8; 8]) -> Link {
        Link { client: false, key: key(trace_id, parent_span_id) }
    }
}

pub struct Pairing {
    ttl: Duration,
    capacity: usize,
    waiting: HashMap<Key, Waiting, foldhash::fast::FixedState>,
    /// Insertion order, for expiry; entries already paired are skipped
    /// when they come up.
    order: VecDeque<(Instant, Key)>,
}

/// What one `offer` or `expire` did besides pairing, for the counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Lost {
    /// Sides whose other side never came (expired, or a duplicate).
    pub unpaired: u64,
    /// Sides not kept because the table was full.
    pub dropped_full: u64,
}

fn key(trace_id: &[u8; 16], span_id: &[u8; 8]) -> Key {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(trace_id);
    k[16..].copy_from_slice(span_id);
    k
}

impl Pairing {
    pub fn new(ttl: Duration, capacity: usize) -> Pairing {
        Pairing { ttl, capacity, waiting: HashMap::default(), order: VecDeque::new() }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Offers one side of a call; calls `paired` when the other side was
    /// waiting.
    pub fn offer(&mut self, link: Link, side: Side, now: Instant, lost: &mut Lost, paired: impl FnOnce(Edge<'_>)) {
        let Link { client, key: k } = link;
        let len = self.waiting.len();
        match self.waiting.entry(k) {
            Entry::Occupied(entry) if entry.get().client != client => {
                let other = entry.remove();
                let edge = if client {
                    Edge { client: &side, server: &other.side }
                } else {
                    Edge { client: &other.side, server: &side }
                };
                paired(edge);
            }
            // A second span on the same side of one call (a retry sent with
            // the same traceparent): the first keeps waiting.
            Entry::Occupied(_) => lost.unpaired += 1,
            Entry::Vacant(_) if len >= self.capacity => lost.dropped_full += 1,
            Entry::Vacant(slot) => {
                slot.insert(Waiting { client, side, since: now });
                self.order.push_back((now, k));
            }
        }
    }

    /// Drops the sides that waited longer than the ttl.
    pub fn expire(&mut self, now: Instant, lost: &mut Lost) {
        while let Some(&(since, k)) = self.order.front() {
            if now.saturating_duration_since(since) < self.ttl {
                break;
            }
            self.order.pop_front();
            if let Entry::Occupied(entry) = self.waiting.entry(k) {
                // The same key may have been paired and offered again since.
                if entry.get().since == since {
                    entry.remove();
                    lost.unpaired += 1;
                }
            }
        }
        // Paired entries leave stale order slots behind; keep it bounded.
        if self.order.len() > 2 * self.capacity.max(self.waiting.len()) {
            let waiting = &self.waiting;
            self.order.retain(|(since, k)| waiting.get(k).is_some_and(|w| w.since == *since));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(service: &str) -> Side {
        Side {
            resource: Arc::new(ProcessResource {
                service_name: service.into(),
                pid: 1,
                executable_name: "x".into(),
                attributes: vec![],
            }),
            seconds: 0.5,
            failed: false,
            trace: TraceRef { trace_id: [1; 16], span_id: [2; 8] },
            end: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn pairing_meets_either_order_expires_and_caps() {
        let t0 = Instant::now();
        let mut p = Pairing::new(Duration::from_secs(10), 2);
        let mut lost = Lost::default();
        let mut edges = Vec::new();
        // Server first, then its client.
        p.offer(Link::server(&[1; 16], &[9; 8]), side("inventory"), t0, &mut lost, |_| panic!("nothing waits"));
        p.offer(Link::client(&[1; 16], &[9; 8]), side("front"), t0, &mut lost, |e| {
            edges.push((e.client.resource.service_name.clone(), e.server.resource.service_name.clone()))
        });
        assert_eq!(edges, vec![("front".to_owned(), "inventory".to_owned())]);
        assert_eq!(p.len(), 0);
        // Same trace, other span id: no match.
        p.offer(Link::client(&[1; 16], &[8; 8]), side("front"), t0, &mut lost, |_| panic!("other call"));
        // Same side twice: the second is unpaired.
        p.offer(Link::client(&[1; 16], &[8; 8]), side("front"), t0, &mut lost, |_| panic!("same side"));
        assert_eq!(lost, Lost { unpaired: 1, dropped_full: 0 });
        p.offer(Link::server(&[2; 16], &[8; 8]), side("b"), t0, &mut lost, |_| panic!("other trace"));
        // Full.
        p.offer(Link::server(&[3; 16], &[8; 8]), side("c"), t0, &mut lost, |_| panic!("full"));
        assert_eq!(lost, Lost { unpaired: 1, dropped_full: 1 });
        p.expire(t0 + Duration::from_secs(9), &mut lost);
        assert_eq!(p.len(), 2);
        p.expire(t0 + Duration::from_secs(10), &mut lost);
        assert_eq!(p.len(), 0);
        assert_eq!(lost, Lost { unpaired: 3, dropped_full: 1 });
    }
}
