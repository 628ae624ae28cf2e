//! The connection table's storage: a slab (one `Vec` of slots, freed slots
//! reused through a free list) threaded by an intrusive least-recently-used
//! list, and a small map from connection id to slot index.
//!
//! Why not `lru::LruCache`: it allocates a node per entry (an allocation and
//! a free per connection, the node freed wherever the table was) and hashes
//! with SipHash on every lookup, of which a connection makes a dozen (open,
//! each data record, close). Here a connection's whole life costs one map
//! insert and remove (foldhash: the ids are kernel-made, not attacker
//! chosen) and no allocation once the slab has grown to its working size.
//! Every operation is O(1); eviction takes the list's tail.
use std::collections::HashMap;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// No slot: the end of the list.
const NIL: u32 = u32::MAX;

struct Slot<V> {
    key: u64,
    /// None while the slot is on the free list.
    value: Option<V>,
    /// Towards the most recently used end.
    prev: u32,
    /// Towards the least recently used end.
    next: u32,
}

pub(super) struct LruSlab<V> {
    index: FastMap<u64, u32>,
    slots: Vec<Slot<V>>,
    free: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used: the next to evict.
    tail: u32,
}

impl<V> LruSlab<V> {
    pub(super) fn new() -> LruSlab<V> {
        LruSlab { index: FastMap::default(), slots: Vec::new(), free: Vec::new(), head: NIL, tail: NIL }
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub(super) fn contains(&self, key: &u64) -> bool {
        self.index.contains_key(key)
    }

    /// Slots ever allocated (live + free): the slab's high-water mark.
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn unlink(&mut self, i: u32) {
        let (prev, next) = (self.slots[i as usize].prev, self.slots[i as usize].next);
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
    }

    fn push_front(&mut self, i: u32) {
        let old = self.head;
        {
            let slot = &mut self.slots[i as usize];
            slot.prev = NIL;
            slot.next = old;
        }
        match old {
            NIL => self.tail = i,
            o => self.slots[o as usize].prev = i,
        }
        self.head = i;
    }

    /// Inserts `value` as the most recently used entry; returns the value
    /// `key` held before, if any.
    pub(super) fn put(&mut self, key: u64, value: V) -> Option<V> {
        if let Some(&i) = self.index.get(&key) {
            self.unlink(i);
            self.push_front(i);
            return self.slots[i as usize].value.replace(value);
        }
        let i = match self.free.pop() {
            Some(i) => {
                let slot = &mut self.slots[i as usize];
                slot.key = key;
                slot.value = Some(value);
                i
            }
            None => {
                // u32::MAX slots would be ~4 billion connections: the table's
                // own cap (max_conns) is far below.
                let i = self.slots.len() as u32;
                self.slots.push(Slot { key, value: Some(value), prev: NIL, next: NIL });
                i
            }
        };
        self.push_front(i);
        self.index.insert(key, i);
        None
    }

    fn take(&mut self, i: u32) -> Option<V> {
        self.unlink(i);
        self.free.push(i);
        self.slots[i as usize].value.take()
    }

    pub(super) fn pop(&mut self, key: &u64) -> Option<V> {
        let i = self.index.remove(key)?;
        self.take(i)
    }

    /// Removes and returns the least recently used entry.
    pub(super) fn pop_lru(&mut self) -> Option<(u64, V)> {
        let i = self.tail;
        if i == NIL {
            return None;
        }
        let key = self.slots[i as usize].key;
        self.index.remove(&key);
        self.take(i).map(|v| (key, v))
    }

    /// Looks up without changing the order.
    pub(super) fn peek(&self, key: &u64) -> Option<&V> {
        let &i = self.index.get(key)?;
        self.slots[i as usize].value.as_ref()
    }

    pub(super) fn peek_mut(&mut self, key: &u64) -> Option<&mut V> {
        let &i = self.index.get(key)?;
        self.slots[i as usize].value.as_mut()
    }

    /// Looks up and marks the entry most recently used.
    pub(super) fn get_mut(&mut self, key: &u64) -> Option<&mut V> {
        let &i = self.index.get(key)?;
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        self.slots[i as usize].value.as_mut()
    }

    /// Every live entry, in slab order (not recency: the callers, ticks
    /// and shutdown, visit every entry and do not care in which order).
    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (u64, &mut V)> {
        self.slots.iter_mut().filter_map(|s| s.value.as_mut().map(|v| (s.key, v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_lru_first(s: &mut LruSlab<u32>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some((k, _)) = s.pop_lru() {
            out.push(k);
        }
        out
    }

    #[test]
    fn evicts_least_recently_used_first_and_touch_moves_to_front() {
        let mut s = LruSlab::new();
        for k in 1..=4u64 {
            assert!(s.put(k, k as u32 * 10).is_none());
        }
        // Touch 1: 2 becomes the oldest.
        assert_eq!(s.get_mut(&1).copied(), Some(10));
        // Peeking does not change the order.
        assert_eq!(s.peek(&2).copied(), Some(20));
        assert_eq!(s.pop_lru(), Some((2, 20)));
        assert_eq!(s.len(), 3);
        // Re-putting an existing key replaces its value and refreshes it.
        assert_eq!(s.put(3, 31), Some(30));
        assert_eq!(keys_lru_first(&mut s), vec![4, 1, 3]);
        assert!(s.is_empty());
        assert_eq!(s.pop_lru(), None);
    }

    #[test]
    fn freed_slots_are_reused_so_churn_does_not_grow_the_slab() {
        let mut s = LruSlab::new();
        for k in 0..8u64 {
            s.put(k, 0);
        }
        for round in 0..1000u64 {
            let k = 8 + round;
            assert_eq!(s.pop(&(k - 8)), Some(u32::from(round >= 8)));
            s.put(k, 1);
        }
        assert_eq!(s.len(), 8);
        assert_eq!(s.capacity(), 8, "a closed connection's slot is taken by the next one");
        assert_eq!(keys_lru_first(&mut s), (1000..1008).collect::<Vec<_>>());
        assert_eq!(s.capacity(), 8);
    }

    #[test]
    fn removal_from_the_middle_and_both_ends_keeps_the_list_whole() {
        let mut s = LruSlab::new();
        for k in 1..=5u64 {
            s.put(k, k as u32);
        }
        // Order, oldest first: 1 2 3 4 5. Remove middle, newest, oldest.
        assert_eq!(s.pop(&3), Some(3));
        assert_eq!(s.pop(&5), Some(5));
        assert_eq!(s.pop(&1), Some(1));
        assert_eq!(s.pop(&1), None);
        assert!(!s.contains(&3));
        assert!(s.peek_mut(&2).is_some());
        s.put(6, 6);
        let mut seen: Vec<u64> = s.iter_mut().map(|(k, _)| k).collect();
        seen.sort_unstable();
        assert_eq!(seen, vec![2, 4, 6]);
        assert_eq!(keys_lru_first(&mut s), vec![2, 4, 6]);
    }
}
