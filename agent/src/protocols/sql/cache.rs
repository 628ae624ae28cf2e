//! A bounded map for per-connection statement caches.
use std::{collections::HashMap, hash::Hash};

/// A map with an entry limit and a weight budget; the oldest insertions are
/// evicted first. Eviction scans (O(n)), which is fine at these sizes and
/// only happens when full.
pub struct BoundedMap<K, V> {
    map: HashMap<K, (u64, usize, V)>,
    max_entries: usize,
    max_weight: usize,
    weight: usize,
    seq: u64,
}

impl<K: Hash + Eq + Clone, V> BoundedMap<K, V> {
    pub fn new(max_entries: usize, max_weight: usize) -> Self {
        BoundedMap { map: HashMap::new(), max_entries, max_weight, weight: 0, seq: 0 }
    }

    pub fn insert(&mut self, key: K, value: V, weight: usize) {
        self.remove(&key);
        if weight > self.max_weight || self.max_entries == 0 {
            return;
        }
        while self.map.len() >= self.max_entries || self.weight + weight > self.max_weight {
            let Some(oldest) = self.map.iter().min_by_key(|(_, (seq, ..))| *seq).map(|(k, _)| k.clone()) else {
                break;
            };
            self.remove(&oldest);
        }
        self.seq += 1;
        self.weight += weight;
        self.map.insert(key, (self.seq, weight, value));
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(_, _, v)| v)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (_, w, v) = self.map.remove(key)?;
        self.weight -= w;
        Some(v)
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.weight = 0;
    }

    /// Sum of the weights of the entries held.
    pub fn weight(&self) -> usize {
        self.weight
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_map_evicts_oldest_within_budget() {
        let mut m = BoundedMap::new(3, 100);
        m.insert("a", 1, 10);
        m.insert("b", 2, 10);
        m.insert("c", 3, 10);
        m.insert("d", 4, 10);
        assert_eq!(m.get(&"a"), None);
        assert_eq!(m.get(&"d"), Some(&4));
        m.insert("e", 5, 85);
        assert_eq!(m.len(), 2, "weight budget evicts the oldest until e fits");
        assert_eq!(m.get(&"c"), None);
        assert_eq!(m.get(&"d"), Some(&4));
        m.insert("huge", 6, 101);
        assert_eq!(m.get(&"huge"), None);
        assert_eq!(m.remove(&"e"), Some(5));
        assert_eq!(m.remove(&"d"), Some(4));
        assert!(m.is_empty());
    }
}
