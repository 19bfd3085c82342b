//! Checkpoint benchmarks, printed as a Markdown table:
//!
//! - creation pause (flush included: writes wait this long) for stores of ~100 MB and
//!   ~2 GB (`DEDUP_BENCH_CHECKPOINT_MB`, default `100,2000`);
//! - incremental upload bytes ÷ bytes of the SST files new since the previous checkpoint;
//! - restore MB/s (verified, atomic) from S3 vs a plain parallel GET of the same objects
//!   from the same server in the same run, for a ~1 GB store (`DEDUP_BENCH_RESTORE_MB`);
//! - the delta restore: bytes downloaded and time to bring a copy one checkpoint behind
//!   to the newest checkpoint, against the cold restore.
//!
//! S3 is `moto_server` at `DEDUP_TEST_S3_ENDPOINT` (default http://127.0.0.1:5000).
//! `scripts/bench-checkpoint.sh` runs it with a release build.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use dedup_core::checkpoint::manifest::UploadKind;
use dedup_core::checkpoint::remote::CheckpointRemote;
use dedup_core::checkpoint::s3::{S3Remote, S3Settings};
use dedup_core::checkpoint::transfer::{self, RestoreOptions, RestoreOutcome};
use dedup_core::checkpoint::{build_manifest, create_local, LocalCheckpoint};
use dedup_core::key::EventKey;
use dedup_core::store::{PartitionStore, StoreResources, StoreSettings};
use futures_util::stream::{self, StreamExt};

const PREFIX: &str = "bench";
const CONCURRENCY: usize = 8;

struct Filler {
    next: i64,
}

impl Filler {
    /// Inserts `count` new keys in batches of 10,000.
    fn insert(&mut self, store: &PartitionStore, count: i64) {
        let end = self.next + count;
        while self.next < end {
            let batch_end = (self.next + 10_000).min(end);
            let keys: Vec<_> = (self.next..batch_end)
                .map(|i| {
                    let distinct_id = format!("user-{i}");
                    let key = EventKey {
                        timestamp_ms: 1_800_000_000_000 + i / 10,
                        distinct_id: &distinct_id,
                        token: "phc_bench",
                        event: "$pageview",
                    }
                    .stored();
                    (key, i)
                })
                .collect();
            store.check_and_insert(&keys, batch_end).expect("insert");
            self.next = batch_end;
        }
    }

    /// Fills until the store's SST files hold `bytes`.
    fn fill_to(&mut self, store: &PartitionStore, bytes: u64) {
        loop {
            store.flush().expect("flush");
            if store.size_bytes().expect("size") >= bytes {
                return;
            }
            self.insert(store, 1_000_000);
        }
    }
}

fn settings() -> StoreSettings {
    StoreSettings {
        dedup_window: Duration::ZERO,
        ..StoreSettings::default()
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Copies a (flat) checkpoint directory.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("read checkpoint").flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

/// Median and max checkpoint pause over 5 checkpoints, each after 20,000 new keys in
/// the memtable (so every one flushes).
fn pauses(store: &PartitionStore, filler: &mut Filler, work: &Path) -> (Duration, Duration, u64) {
    let mut pauses = Vec::new();
    let mut size = 0;
    for round in 0..5 {
        filler.insert(store, 20_000);
        let started = Instant::now();
        let local = create_local(store, work, 10_000 + round).expect("checkpoint");
        pauses.push(started.elapsed());
        size = dir_bytes(&local.dir);
    }
    pauses.sort();
    (pauses[2], pauses[4], size)
}

fn remote(endpoint: &str, bucket: &str) -> S3Remote {
    let builder = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "bench"));
    let settings = S3Settings {
        endpoint: Some(endpoint.to_string()),
        attempt_timeout: Duration::from_secs(300),
        ..S3Settings::new(bucket)
    };
    S3Remote::from_builder(builder, &settings)
}

fn new_sst_bytes(old: &LocalCheckpoint, new: &LocalCheckpoint) -> u64 {
    let names = |dir: &PathBuf| -> HashSet<String> {
        std::fs::read_dir(dir)
            .map(|e| {
                e.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let before = names(&old.dir);
    names(&new.dir)
        .into_iter()
        .filter(|n| n.ends_with(".sst") && !before.contains(n))
        .map(|n| {
            std::fs::metadata(new.dir.join(n))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum()
}

async fn plain_get(s3: &S3Remote, keys: &[String], into: &Path) -> (u64, Duration) {
    std::fs::create_dir_all(into).expect("dir");
    let started = Instant::now();
    let gets: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| {
            let path = into.join(format!("{i}"));
            async move {
                s3.get_file(key, &path).await.expect("get");
                std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
            }
        })
        .collect();
    let bytes: u64 = stream::iter(gets)
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<u64>>()
        .await
        .into_iter()
        .sum();
    (bytes, started.elapsed())
}

fn main() {
    let sizes: Vec<u64> = std::env::var("DEDUP_BENCH_CHECKPOINT_MB")
        .unwrap_or_else(|_| "100,2000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let restore_mb: u64 = std::env::var("DEDUP_BENCH_RESTORE_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let endpoint = dedup_testkit::services::s3_endpoint();
    let work = tempfile::tempdir_in(
        std::env::var("DEDUP_BENCH_DIR").unwrap_or_else(|_| "/var/tmp".into()),
    )
    .expect("work dir");
    let resources = StoreResources::new(128 << 20, 64 << 20);

    println!("| measure | store | result | goal |");
    println!("|---|---|---|---|");
    for size_mb in &sizes {
        let store = PartitionStore::open(
            work.path().join(format!("pause-{size_mb}")),
            &settings(),
            &resources,
        )
        .expect("store");
        let mut filler = Filler { next: 0 };
        let filled = Instant::now();
        filler.fill_to(&store, size_mb * 1_000_000);
        let (median, max, size) = pauses(
            &store,
            &mut filler,
            &work.path().join(format!("cp-{size_mb}")),
        );
        eprintln!("filled {size_mb} MB in {:?}", filled.elapsed());
        println!(
            "| checkpoint pause, flush included (median / max of 5) | {:.0} MB, {} keys | {:.1} ms / {:.1} ms | < 500 ms, flat |",
            mb(size),
            filler.next,
            median.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        );
        store.close().expect("close");
        let _ = std::fs::remove_dir_all(work.path().join(format!("pause-{size_mb}")));
        let _ = std::fs::remove_dir_all(work.path().join(format!("cp-{size_mb}")));
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let bucket = format!("bench-{}", std::process::id());
        let s3 = remote(&endpoint, &bucket);
        s3.ensure_bucket().await.expect("S3 reachable (moto_server)");
        let store = PartitionStore::open(work.path().join("restore-src"), &settings(), &resources)
            .expect("store");
        let mut filler = Filler { next: 0 };
        filler.fill_to(&store, restore_mb * 1_000_000);
        let cps = work.path().join("cp-restore");
        let first = create_local(&store, &cps, 1).expect("checkpoint");
        let manifest = build_manifest(&first, "events", 0, "bench", 1, UploadKind::Full).expect("manifest");
        let started = Instant::now();
        let full = transfer::upload(&s3, PREFIX, &manifest, &first.dir, &HashSet::new(), CONCURRENCY)
            .await
            .expect("upload");
        let upload_s = started.elapsed().as_secs_f64();
        println!(
            "| full upload to moto | {:.0} MB | {:.1} MB/s | — |",
            mb(full.bytes_uploaded),
            mb(full.bytes_uploaded) / upload_s
        );

        // Small change: 1 % more keys, flushed (and whatever compaction that causes).
        filler.insert(&store, (filler.next / 100).max(10_000));
        let second = create_local(&store, &cps, 2).expect("checkpoint");
        let manifest2 = build_manifest(&second, "events", 0, "bench", 2, UploadKind::Incremental).expect("manifest");
        let already = transfer::referenced_files(&s3, PREFIX, "events", 0).await.expect("state");
        let incremental = transfer::upload(&s3, PREFIX, &manifest2, &second.dir, &already, CONCURRENCY)
            .await
            .expect("upload");
        let changed = new_sst_bytes(&first, &second);
        println!(
            "| incremental upload bytes ÷ new SST bytes | +1 % keys | {:.3} ({} B / {} B; {} files reused) | ≤ 1.05 |",
            incremental.bytes_uploaded as f64 / changed.max(1) as f64,
            incremental.bytes_uploaded,
            changed,
            incremental.files_reused
        );
        store.close().expect("close");

        // Restore the newest checkpoint vs plain GETs of the same objects, alternated.
        let keys: Vec<String> = manifest2
            .files
            .iter()
            .map(|f| format!("{PREFIX}/events/0/{}", f.remote_key))
            .collect();
        let (get_bytes, get_1) = plain_get(&s3, &keys, &work.path().join("get-1")).await;
        let _ = std::fs::remove_dir_all(work.path().join("get-1"));
        let target = work.path().join("restored/events_0");
        std::fs::create_dir_all(target.parent().expect("parent")).expect("dir");
        let started = Instant::now();
        let outcome = transfer::restore(
            &s3,
            PREFIX,
            "events",
            0,
            &target,
            &RestoreOptions { concurrency: CONCURRENCY, ..Default::default() },
        )
        .await
        .expect("restore");
        let restore_time = started.elapsed();
        let RestoreOutcome::Restored { bytes, .. } = outcome else {
            panic!("restore: {outcome:?}");
        };
        let (_, get_2) = plain_get(&s3, &keys, &work.path().join("get-2")).await;
        let get_rate = mb(get_bytes) / ((get_1 + get_2).as_secs_f64() / 2.0);
        let restore_rate = mb(bytes) / restore_time.as_secs_f64();
        println!(
            "| restore (verified, atomic) vs plain parallel GET, {CONCURRENCY} at a time | {:.0} MB | {:.1} MB/s vs {:.1} MB/s = {:.2}× ({:.1} s) | ≥ 0.8× |",
            mb(bytes),
            restore_rate,
            get_rate,
            restore_rate / get_rate,
            restore_time.as_secs_f64()
        );

        // Warm handoff's delta: a store one checkpoint behind on the volume (the first
        // checkpoint, as a prefetch or an earlier owner's copy would leave it) brought to
        // the newest checkpoint; only the files it lacks are downloaded.
        let warm = work.path().join("warm/events_0");
        copy_dir(&first.dir, &warm);
        let started = Instant::now();
        let outcome = transfer::restore(
            &s3,
            PREFIX,
            "events",
            0,
            &warm,
            &RestoreOptions { concurrency: CONCURRENCY, ..Default::default() },
        )
        .await
        .expect("restore");
        let warm_time = started.elapsed();
        let RestoreOutcome::Restored { bytes, bytes_reused, .. } = outcome else {
            panic!("warm restore: {outcome:?}");
        };
        println!(
            "| restore over a copy one checkpoint behind (delta) vs cold | {:.0} MB | downloaded {:.1} MB ({:.1} % of it; new SST bytes {:.1} MB), {:.2} s vs {:.2} s cold | downloads ≤ new SST bytes + the small files |",
            mb(bytes),
            mb(bytes - bytes_reused),
            100.0 * (bytes - bytes_reused) as f64 / bytes.max(1) as f64,
            mb(changed),
            warm_time.as_secs_f64(),
            restore_time.as_secs_f64()
        );
        for key in s3.list(&format!("{PREFIX}/")).await.unwrap_or_default() {
            let _ = s3.delete(&key).await;
        }
    });
}
