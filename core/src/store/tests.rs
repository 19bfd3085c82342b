use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use tempfile::TempDir;

use super::*;
use crate::key::EventKey;

fn key(ts: i64, distinct_id: &str) -> StoredKey {
    EventKey {
        timestamp_ms: ts,
        distinct_id,
        token: "tok",
        event: "ev",
    }
    .stored()
}

/// No retention; a recent-keys cache far smaller than the tests' key spaces, so that
/// answers from the cache, from RocksDB and after cache eviction are all exercised.
fn unlimited() -> StoreSettings {
    StoreSettings {
        dedup_window: Duration::ZERO,
        max_capacity_bytes: 0,
        wal: false,
        recent_keys: 8,
    }
}

fn open(dir: &TempDir, settings: &StoreSettings) -> PartitionStore {
    PartitionStore::open(
        dir.path().join("events_0"),
        settings,
        &StoreResources::default(),
    )
    .unwrap()
}

#[test]
fn store_directory_is_topic_underscore_partition() {
    assert_eq!(
        PartitionStore::dir_for(Path::new("/data"), "events", 7),
        PathBuf::from("/data/events_7")
    );
}

#[test]
fn same_event_twice_is_a_duplicate_of_the_first_offset() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, &unlimited());
    let k = key(1_000, "a");
    assert_eq!(
        store.check_and_insert(&[(k, 10)], 11).unwrap(),
        [Outcome::Unique]
    );
    assert_eq!(
        store.check_and_insert(&[(k, 25)], 26).unwrap(),
        [Outcome::Duplicate { first_offset: 10 }]
    );
    assert_eq!(store.first_offset(&k).unwrap(), Some(10));
}

#[test]
fn duplicates_inside_one_batch_are_caught() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, &unlimited());
    let (a, b) = (key(1, "a"), key(1, "b"));
    let outcomes = store
        .check_and_insert(&[(a, 0), (b, 1), (a, 2), (a, 3), (b, 4)], 5)
        .unwrap();
    assert_eq!(
        outcomes,
        [
            Outcome::Unique,
            Outcome::Unique,
            Outcome::Duplicate { first_offset: 0 },
            Outcome::Duplicate { first_offset: 0 },
            Outcome::Duplicate { first_offset: 1 },
        ]
    );
}

#[test]
fn redelivery_of_the_original_is_recognised() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, &unlimited());
    let (a, b) = (key(1, "a"), key(2, "b"));
    store
        .check_and_insert(&[(a, 0), (b, 1), (a, 2)], 3)
        .unwrap();
    // The same messages consumed again after a crash: originals are redeliveries (to be
    // published again), the copy stays a duplicate.
    assert_eq!(
        store
            .check_and_insert(&[(a, 0), (b, 1), (a, 2)], 3)
            .unwrap(),
        [
            Outcome::Redelivery,
            Outcome::Redelivery,
            Outcome::Duplicate { first_offset: 0 }
        ]
    );
}

#[test]
fn reopen_keeps_keys_and_next_offset() {
    let dir = TempDir::new().unwrap();
    let k = key(5, "persist");
    {
        let store = open(&dir, &unlimited());
        assert_eq!(store.next_offset().unwrap(), None);
        store.check_and_insert(&[(k, 41)], 42).unwrap();
        store.close().unwrap();
    }
    let store = open(&dir, &unlimited());
    assert_eq!(store.next_offset().unwrap(), Some(42));
    assert_eq!(
        store.check_and_insert(&[(k, 50)], 51).unwrap(),
        [Outcome::Duplicate { first_offset: 41 }]
    );
}

#[test]
fn dropping_without_close_still_persists_with_wal_off() {
    // RocksDB flushes unpersisted memtables when a WAL-less database is closed.
    let dir = TempDir::new().unwrap();
    let k = key(5, "drop");
    {
        let store = open(&dir, &unlimited());
        store.check_and_insert(&[(k, 1)], 2).unwrap();
    }
    let store = open(&dir, &unlimited());
    assert_eq!(store.first_offset(&k).unwrap(), Some(1));
    assert_eq!(store.next_offset().unwrap(), Some(2));
}

#[test]
fn next_offset_can_advance_without_keys() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, &unlimited());
    store.record_next_offset(7).unwrap();
    assert_eq!(store.next_offset().unwrap(), Some(7));
}

#[test]
fn a_store_of_another_format_is_refused() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(&dir, &unlimited());
        let meta = store.cf(META_CF).unwrap();
        store.db.put_cf(meta, FORMAT, 99u32.to_be_bytes()).unwrap();
        store.close().unwrap();
    }
    let result = PartitionStore::open(
        dir.path().join("events_0"),
        &unlimited(),
        &StoreResources::default(),
    );
    assert!(
        matches!(result, Err(StoreError::Format { .. })),
        "{:?}",
        result.err()
    );
}

#[test]
fn window_evicts_exactly_the_keys_older_than_it() {
    let dir = TempDir::new().unwrap();
    let settings = StoreSettings {
        dedup_window: Duration::from_millis(500),
        ..unlimited()
    };
    let store = open(&dir, &settings);
    let keys: Vec<(StoredKey, i64)> = (0..1_000).map(|ts| (key(ts, "w"), ts)).collect();
    for (i, chunk) in keys.chunks(100).enumerate() {
        store.check_and_insert(chunk, (i as i64 + 1) * 100).unwrap();
        store.flush().unwrap(); // several SST files, so file deletion is exercised too
    }
    // now = 1000 and window = 500 ms: keys with ts < 500 go.
    let eviction = store.enforce_retention(1_000).unwrap();
    assert_eq!(eviction.cutoff_ms, Some(500));
    assert_eq!(eviction.keys_evicted, 500);
    assert!(!eviction.by_capacity);
    for (k, ts) in &keys {
        let expected = if *ts < 500 { None } else { Some(*ts) };
        assert_eq!(store.first_offset(k).unwrap(), expected, "ts {ts}");
    }
    // The store's next offset is untouched by eviction.
    assert_eq!(store.next_offset().unwrap(), Some(1_000));
    // A second pass has nothing left to do.
    assert_eq!(store.enforce_retention(1_000).unwrap().keys_evicted, 0);
}

#[test]
fn capacity_bound_holds_after_compaction() {
    // Stated tolerance: after a retention pass the live SST bytes are at most 110 % of
    // MAX_STORE_CAPACITY (it aims at the 90 % low watermark, from size estimates).
    const TOLERANCE: f64 = 1.10;
    let dir = TempDir::new().unwrap();
    let capacity = 1 << 20;
    let settings = StoreSettings {
        max_capacity_bytes: capacity,
        ..unlimited()
    };
    let store = open(&dir, &settings);
    let total = 200_000i64;
    for start in (0..total).step_by(10_000) {
        let batch: Vec<_> = (start..start + 10_000)
            .map(|i| (key(i, "cap"), i))
            .collect();
        store.check_and_insert(&batch, start + 10_000).unwrap();
    }
    store.flush().unwrap();
    let before = store.size_bytes().unwrap();
    assert!(
        before > capacity * 3,
        "test needs a store well over capacity: {before}"
    );

    let eviction = store.enforce_retention(0).unwrap();
    assert!(eviction.by_capacity);
    let after = store.size_bytes().unwrap();
    assert_eq!(after, eviction.size_after);
    assert!(
        after as f64 <= capacity as f64 * TOLERANCE,
        "{after} bytes after eviction, capacity {capacity}"
    );
    // Oldest first: the newest keys are all still there, the oldest are gone.
    let cutoff = eviction.cutoff_ms.unwrap();
    assert!(cutoff > 0 && cutoff < total);
    assert_eq!(store.first_offset(&key(0, "cap")).unwrap(), None);
    assert_eq!(store.first_offset(&key(cutoff - 1, "cap")).unwrap(), None);
    assert_eq!(
        store.first_offset(&key(cutoff, "cap")).unwrap(),
        Some(cutoff)
    );
    assert_eq!(
        store.first_offset(&key(total - 1, "cap")).unwrap(),
        Some(total - 1)
    );
    assert_eq!(eviction.keys_evicted, cutoff as u64);
    // It did not throw away far more than needed either.
    assert!(
        after as f64 >= capacity as f64 * 0.5,
        "evicted too much: {after} bytes left of capacity {capacity}"
    );
}

#[test]
fn absent_keys_are_answered_by_the_bloom_filter() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, &unlimited());
    let present: Vec<_> = (0..20_000).map(|i| (key(i, "present"), i)).collect();
    store.check_and_insert(&present, 20_000).unwrap();
    store.flush().unwrap();

    let useful_before = store.bloom_filter_useful();
    let reads_before = store.block_reads();
    let lookups = 5_000;
    let absent: Vec<_> = (0..lookups)
        .map(|i| (key(i, "absent"), 100_000 + i))
        .collect();
    let outcomes = store.check_and_insert(&absent, 200_000).unwrap();
    assert!(outcomes.iter().all(|o| *o == Outcome::Unique));

    let useful = store.bloom_filter_useful() - useful_before;
    let reads = store.block_reads() - reads_before;
    // 10 bits per key: about 1 % false positives. Require 95 % answered by the filter.
    assert!(
        useful as f64 >= lookups as f64 * 0.95,
        "bloom filter answered {useful} of {lookups} absent lookups"
    );
    assert!(
        (reads as f64) <= lookups as f64 * 0.05,
        "{reads} data block reads for {lookups} absent lookups"
    );
}

#[test]
fn wal_setting_is_honoured() {
    for wal in [false, true] {
        let dir = TempDir::new().unwrap();
        let store = open(&dir, &StoreSettings { wal, ..unlimited() });
        store.check_and_insert(&[(key(1, "x"), 0)], 1).unwrap();
        let wal_bytes: u64 = std::fs::read_dir(store.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        assert_eq!(wal_bytes > 0, wal, "wal={wal}: {wal_bytes} WAL bytes");
    }
}

/// What the store must answer, as a plain map from key to first offset.
#[derive(Default)]
struct Model(HashMap<StoredKey, i64>);

impl Model {
    fn check_and_insert(&mut self, batch: &[(StoredKey, i64)]) -> Vec<Outcome> {
        batch
            .iter()
            .map(|(k, offset)| match self.0.get(k) {
                None => {
                    self.0.insert(*k, *offset);
                    Outcome::Unique
                }
                Some(first) if first == offset => Outcome::Redelivery,
                Some(first) => Outcome::Duplicate {
                    first_offset: *first,
                },
            })
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Random batches over a small key space (so duplicates abound), sometimes replaying
    /// a batch as after a crash, sometimes reopening: the store answers like the model.
    #[test]
    fn store_agrees_with_a_map(
        batches in proptest::collection::vec(
            (proptest::collection::vec(0u8..40, 1..50), any::<bool>(), any::<bool>()),
            1..12,
        )
    ) {
        let dir = TempDir::new().unwrap();
        let mut store = open(&dir, &unlimited());
        let mut model = Model::default();
        let mut offset = 0i64;
        for (ids, replay, reopen) in batches {
            let batch: Vec<_> = ids
                .iter()
                .map(|id| {
                    offset += 1;
                    (key(i64::from(*id % 4), &format!("k{id}")), offset)
                })
                .collect();
            let rounds = if replay { 2 } else { 1 };
            for _ in 0..rounds {
                let got = store.check_and_insert(&batch, offset + 1).unwrap();
                prop_assert_eq!(got, model.check_and_insert(&batch));
            }
            if reopen {
                store.close().unwrap();
                store = open(&dir, &unlimited());
            }
            prop_assert_eq!(store.next_offset().unwrap(), Some(offset + 1));
        }
    }
}

#[test]
fn the_finished_offset_is_kept_apart_from_the_next_offset() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(&dir, &unlimited());
        assert_eq!(store.finished_offset().unwrap(), None);
        store.check_and_insert(&[(key(1, "a"), 0)], 10).unwrap();
        store.record_finished_offset(4).unwrap();
        store.close().unwrap();
    }
    let store = open(&dir, &unlimited());
    assert_eq!(store.next_offset().unwrap(), Some(10));
    assert_eq!(store.finished_offset().unwrap(), Some(4));
}

#[test]
fn the_finished_offset_rides_with_a_batch() {
    let dir = TempDir::new().unwrap();
    {
        let store = open(&dir, &unlimited());
        store
            .check_and_insert_finishing(&[(key(1, "a"), 0)], 1, None)
            .unwrap();
        assert_eq!(store.finished_offset().unwrap(), None);
        let outcomes = store
            .check_and_insert_finishing(&[(key(1, "a"), 1), (key(1, "b"), 2)], 3, Some(1))
            .unwrap();
        assert_eq!(outcomes[1], Outcome::Unique);
        store.close().unwrap();
    }
    let store = open(&dir, &unlimited());
    assert_eq!(store.next_offset().unwrap(), Some(3));
    assert_eq!(store.finished_offset().unwrap(), Some(1));
}

#[test]
fn a_forgotten_key_is_new_again_but_only_for_its_own_offset() {
    let dir = TempDir::new().unwrap();
    let store = open(&dir, &unlimited());
    let k = key(7, "dead-lettered");
    store.check_and_insert(&[(k, 3)], 4).unwrap();
    // Another offset's message does not own the key.
    assert!(!store.forget(&k, 9).unwrap());
    assert_eq!(
        store.check_and_insert(&[(k, 10)], 11).unwrap(),
        [Outcome::Duplicate { first_offset: 3 }]
    );
    assert!(store.forget(&k, 3).unwrap());
    // Replayed from the dead-letter topic at a new offset: new, also through the cache.
    assert_eq!(
        store.check_and_insert(&[(k, 20)], 21).unwrap(),
        [Outcome::Unique]
    );
}
