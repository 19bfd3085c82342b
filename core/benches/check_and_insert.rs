//! Sustained events/s through `PartitionStore::check_and_insert` in batches of 1,000,
//! for 0 %, 10 % and 50 % duplicates, on stores preloaded with 1M and 10M keys; and the
//! same key stream into an in-memory `HashSet` in the same run.
//!
//! Criterion measures for seconds on one store that keeps growing (by 10M+ keys over the
//! three ratios), so later rows also pay the compaction debt of earlier ones. The
//! comparison with `db_bench fillrandom` (same number of operations on a fresh store) is
//! `store_fill`, which `scripts/bench-store.sh` runs.
//! `DEDUP_BENCH_SIZES=1000000` limits the preloaded sizes (comma-separated);
//! `DEDUP_BENCH_WAL=1` runs with the WAL on.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dedup_core::key::StoredKey;
use dedup_core::store::{PartitionStore, StoreResources, StoreSettings};

mod common;
use common::{KeyStream, BATCH, DUPLICATE_RATIOS};

fn preload(store: &PartitionStore, keys: u64) -> i64 {
    let mut stream = KeyStream::new(0, 0);
    let mut offset = 0i64;
    while (offset as u64) < keys {
        let batch = stream.batch(offset);
        offset += BATCH as i64;
        store.check_and_insert(&batch, offset).expect("preload");
    }
    store.flush().expect("flush");
    offset
}

fn sizes() -> Vec<u64> {
    std::env::var("DEDUP_BENCH_SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000_000, 10_000_000])
}

fn bench_store(c: &mut Criterion) {
    let wal = std::env::var("DEDUP_BENCH_WAL").is_ok_and(|v| v == "1");
    let mut group = c.benchmark_group(if wal { "store_wal" } else { "store" });
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    for size in sizes() {
        let dir = tempfile::TempDir::new().expect("tempdir");
        let settings = StoreSettings {
            dedup_window: Duration::ZERO,
            max_capacity_bytes: 0,
            wal,
            ..StoreSettings::default()
        };
        let store = PartitionStore::open(
            dir.path().join("bench_0"),
            &settings,
            &StoreResources::default(),
        )
        .expect("open");
        let mut offset = preload(&store, size);
        for ratio in DUPLICATE_RATIOS {
            // New keys continue after the preloaded ones.
            let mut stream = KeyStream::new(ratio, size * 2);
            group.bench_with_input(
                BenchmarkId::new(format!("{}M_keys", size / 1_000_000), format!("dup{ratio}")),
                &ratio,
                |b, _| {
                    b.iter_custom(|iters| {
                        let batches: Vec<_> = (0..iters)
                            .map(|i| stream.batch(offset + i as i64 * BATCH as i64))
                            .collect();
                        let start = Instant::now();
                        for batch in &batches {
                            offset += BATCH as i64;
                            store.check_and_insert(batch, offset).expect("insert");
                        }
                        start.elapsed()
                    })
                },
            );
        }
    }
    group.finish();
}

fn bench_hashset(c: &mut Criterion) {
    let mut group = c.benchmark_group("hashset");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    for ratio in DUPLICATE_RATIOS {
        let mut set: HashSet<StoredKey> = HashSet::new();
        let mut preload_stream = KeyStream::new(0, 0);
        for _ in 0..1_000_000 {
            set.insert(preload_stream.next_key());
        }
        let mut stream = KeyStream::new(ratio, 2_000_000);
        group.bench_with_input(
            BenchmarkId::new("1M_keys", format!("dup{ratio}")),
            &ratio,
            |b, _| {
                b.iter_custom(|iters| {
                    let batches: Vec<_> = (0..iters).map(|_| stream.batch(0)).collect();
                    let start = Instant::now();
                    let mut unique = 0usize;
                    for batch in &batches {
                        for (key, _) in batch {
                            unique += usize::from(set.insert(*key));
                        }
                    }
                    std::hint::black_box(unique);
                    start.elapsed()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_store, bench_hashset);
criterion_main!(benches);
