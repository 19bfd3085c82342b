//! The store against RocksDB's `db_bench fillrandom` on equal terms: N events (the
//! same N as db_bench's `--num`) through `PartitionStore::check_and_insert` in batches
//! of 1,000 into a fresh, empty store, timed from the first call to the last, as
//! fillrandom times N puts into a fresh database. The same N events into an in-memory
//! `HashSet` give the CPU/DRAM limit.
//!
//! Prints one tab-separated line per size and ratio:
//! `events  duplicate_percent  store_events_per_s  hashset_events_per_s`.
//! `DEDUP_BENCH_SIZES` (comma-separated, default 1000000,10000000), `DEDUP_BENCH_WAL=1`.
//! `scripts/bench-store.sh` runs it beside db_bench and prints the ratios.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use dedup_core::key::StoredKey;
use dedup_core::store::{PartitionStore, StoreResources, StoreSettings};

mod common;
use common::{KeyStream, DUPLICATE_RATIOS};

fn main() {
    let sizes: Vec<u64> = std::env::var("DEDUP_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000_000, 10_000_000]);
    let wal = std::env::var("DEDUP_BENCH_WAL").is_ok_and(|v| v == "1");
    for &events in &sizes {
        for ratio in DUPLICATE_RATIOS {
            let mut stream = KeyStream::new(ratio, 0);
            let batches: Vec<Vec<(StoredKey, i64)>> = (0..events as usize / common::BATCH)
                .map(|b| stream.batch((b * common::BATCH) as i64))
                .collect();

            let dir = tempfile::TempDir::new().expect("tempdir");
            let settings = StoreSettings {
                dedup_window: Duration::ZERO,
                max_capacity_bytes: 0,
                wal,
                ..StoreSettings::default()
            };
            let store = PartitionStore::open(
                dir.path().join("fill_0"),
                &settings,
                &StoreResources::default(),
            )
            .expect("open");
            let started = Instant::now();
            for batch in &batches {
                let next = batch.last().map_or(0, |(_, offset)| offset + 1);
                store.check_and_insert(batch, next).expect("insert");
            }
            let store_rate = events as f64 / started.elapsed().as_secs_f64();
            store.close().expect("close");

            let mut set: HashSet<StoredKey> = HashSet::new();
            let started = Instant::now();
            let mut unique = 0usize;
            for batch in &batches {
                for (key, _) in batch {
                    unique += usize::from(set.insert(*key));
                }
            }
            std::hint::black_box(unique);
            let set_rate = events as f64 / started.elapsed().as_secs_f64();
            println!("{events}\t{ratio}\t{store_rate:.0}\t{set_rate:.0}");
        }
    }
}
