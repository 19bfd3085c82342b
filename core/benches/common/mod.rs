//! The key stream the store benchmarks share.

use dedup_core::key::{EventKey, StoredKey};
use dedup_testkit::rng::Rng;

/// Events per `check_and_insert` call.
pub const BATCH: usize = 1_000;

/// Shares of duplicates measured, percent.
pub const DUPLICATE_RATIOS: [u32; 3] = [0, 10, 50];

/// A stream of keys like a PostHog topic's: mostly new events, a given share of them
/// copies of a recent event, timestamps moving forward.
pub struct KeyStream {
    next_id: u64,
    rng: Rng,
    duplicate_percent: u32,
    recent: Vec<StoredKey>,
}

impl KeyStream {
    pub fn new(duplicate_percent: u32, first_id: u64) -> Self {
        Self {
            next_id: first_id,
            rng: Rng::new(0x9E37_79B9_7F4A_7C15 ^ first_id),
            duplicate_percent,
            recent: Vec::with_capacity(4096),
        }
    }

    fn random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    pub fn next_key(&mut self) -> StoredKey {
        let roll = (self.random() % 100) as u32;
        if roll < self.duplicate_percent && !self.recent.is_empty() {
            let i = (self.random() as usize) % self.recent.len();
            return self.recent[i];
        }
        let id = self.next_id;
        self.next_id += 1;
        let distinct_id = format!("user-{}", self.random() % 1_000_000);
        let event = ["$pageview", "$autocapture", "signup", "purchase"][(id % 4) as usize];
        let key = EventKey {
            timestamp_ms: 1_700_000_000_000 + (id / 10) as i64,
            distinct_id: &distinct_id,
            token: "phc_benchmark_token",
            event,
        }
        .stored();
        if self.recent.len() < 4096 {
            self.recent.push(key);
        } else {
            let i = (id as usize) % 4096;
            self.recent[i] = key;
        }
        key
    }

    pub fn batch(&mut self, first_offset: i64) -> Vec<(StoredKey, i64)> {
        (0..BATCH)
            .map(|i| (self.next_key(), first_offset + i as i64))
            .collect()
    }
}
