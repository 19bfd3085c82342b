//! A bounded in-memory cache of keys recently written to or found in a partition store,
//! with their first offsets.
//!
//! New keys are cheap for the store (a bloom filter answers "absent"), but a duplicate
//! needs a real lookup. Copies of an event usually arrive soon after it, so most
//! duplicates are answered here without touching RocksDB. The cache only ever holds
//! keys the store has (or had: after eviction by the window, a key can stay here a little
//! longer, which only lengthens its deduplication), so outcomes are the same with or
//! without it.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use super::KeyHasher;
use crate::key::StoredKey;

pub(crate) struct RecentKeys {
    capacity: usize,
    offsets: HashMap<StoredKey, i64, BuildHasherDefault<KeyHasher>>,
    /// Insertion order, for first-in first-out eviction.
    order: VecDeque<StoredKey>,
}

impl RecentKeys {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            offsets: HashMap::with_capacity_and_hasher(capacity, Default::default()),
            order: VecDeque::with_capacity(capacity),
        }
    }

    pub(crate) fn get(&self, key: &StoredKey) -> Option<i64> {
        self.offsets.get(key).copied()
    }

    pub(crate) fn insert(&mut self, key: StoredKey, first_offset: i64) {
        if self.capacity == 0 || self.offsets.insert(key, first_offset).is_some() {
            return;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.offsets.remove(&oldest);
            }
        }
    }

    /// Drops `key` (its insertion-order entry stays until it is popped; it then removes
    /// nothing or a newer entry of the key early, which only shortens its caching).
    pub(crate) fn remove(&mut self, key: &StoredKey) {
        self.offsets.remove(key);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.offsets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::EventKey;

    fn key(i: i64) -> StoredKey {
        EventKey {
            timestamp_ms: i,
            distinct_id: "d",
            token: "t",
            event: "e",
        }
        .stored()
    }

    #[test]
    fn keeps_the_most_recent_keys_up_to_capacity() {
        let mut recent = RecentKeys::new(3);
        for i in 0..5 {
            recent.insert(key(i), i * 10);
        }
        assert_eq!(recent.len(), 3);
        assert_eq!(recent.get(&key(0)), None);
        assert_eq!(recent.get(&key(1)), None);
        assert_eq!(recent.get(&key(4)), Some(40));
        // Re-inserting a present key keeps its first offset's slot.
        recent.insert(key(4), 99);
        assert_eq!(recent.len(), 3);
    }

    #[test]
    fn zero_capacity_holds_nothing() {
        let mut recent = RecentKeys::new(0);
        recent.insert(key(1), 1);
        assert_eq!(recent.get(&key(1)), None);
    }
}
