//! Events/s through `PartitionStore::check_and_insert` in batches of 1,000, for 0 %, 10 %
//! and 50 % duplicates, on stores preloaded with 1M and 10M keys; and the same key stream
//! into an in-memory `HashSet` (the CPU/DRAM limit) in the same run.
//!
//! `cargo bench -p dedup-core --bench check_and_insert`; `scripts/bench-store.sh` runs it
//! beside RocksDB's `db_bench fillrandom` and prints the ratios.
//! `DEDUP_BENCH_SIZES=1000000` limits the preloaded sizes (comma-separated);
//! `DEDUP_BENCH_WAL=1` runs with the WAL on.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dedup_core::key::{EventKey, StoredKey};
use dedup_core::store::{PartitionStore, StoreResources, StoreSettings};

const BATCH: usize = 1_000;
const DUPLICATE_RATIOS: [u32; 3] = [0, 10, 50];

/// A stream of keys like a PostHog topic's: mostly new events, a given share of them
/// copies of a recent event, timestamps moving forward.
struct KeyStream {
    next_id: u64,
    rng: u64,
    duplicate_percent: u32,
    recent: Vec<StoredKey>,
}

impl KeyStream {
    fn new(duplicate_percent: u32, first_id: u64) -> Self {
        Self {
            next_id: first_id,
            rng: 0x9E37_79B9_7F4A_7C15 ^ first_id,
            duplicate_percent,
            recent: Vec::with_capacity(4096),
        }
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: cheap and deterministic.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn next_key(&mut self) -> StoredKey {
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

    fn batch(&mut self, first_offset: i64) -> Vec<(StoredKey, i64)> {
        (0..BATCH)
            .map(|i| (self.next_key(), first_offset + i as i64))
            .collect()
    }
}

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
