//! Checkpoints through S3: `moto_server` on 127.0.0.1, started by
//! `scripts/start-test-services.sh` (CI starts it). Endpoint: `DEDUP_TEST_S3_ENDPOINT`
//! (default http://127.0.0.1:5000). If it is not reachable these tests fail, unless
//! `DEDUP_ALLOW_MISSING_SERVICES=1` is set (local runs only, never in CI).

use std::time::Duration;

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use dedup_core::checkpoint::manifest::{manifest_key, UploadKind};
use dedup_core::checkpoint::remote::CheckpointRemote;
use dedup_core::checkpoint::s3::{S3Remote, S3Settings};
use dedup_core::checkpoint::transfer::{self, RestoreOutcome};
use dedup_core::checkpoint::{build_manifest, create_local};
use dedup_core::key::EventKey;
use dedup_core::store::{PartitionStore, StoreResources, StoreSettings};

const PREFIX: &str = "deduplication-checkpoints";

/// The test S3 (moto); `None` only when a local run may skip it.
fn endpoint() -> Option<String> {
    dedup_testkit::services::moto().map(|(endpoint, _)| endpoint)
}

fn remote(endpoint: &str, bucket: &str, attempts: u32, timeout: Duration) -> S3Remote {
    let builder = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "dedup-tests"));
    let settings = S3Settings {
        endpoint: Some(endpoint.to_string()),
        attempt_timeout: timeout,
        max_attempts: attempts,
        ..S3Settings::new(bucket)
    };
    S3Remote::from_builder(builder, &settings)
}

fn key(i: i64) -> dedup_core::StoredKey {
    EventKey {
        timestamp_ms: i,
        distinct_id: "d",
        token: "t",
        event: "e",
    }
    .stored()
}

fn unique_bucket(name: &str) -> String {
    format!("dedup-{name}-{}", std::process::id())
}

#[tokio::test]
async fn checkpoints_round_trip_through_s3_with_incremental_uploads_fallback_and_gc() {
    let Some(endpoint) = endpoint() else { return };
    let s3 = remote(
        &endpoint,
        &unique_bucket("roundtrip"),
        3,
        Duration::from_secs(30),
    );
    s3.ensure_bucket().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = StoreSettings {
        dedup_window: Duration::ZERO,
        ..StoreSettings::default()
    };
    let store = PartitionStore::open(
        dir.path().join("store/events_2"),
        &settings,
        &StoreResources::default(),
    )
    .unwrap();
    let checkpoints = dir.path().join("checkpoints/events_2");

    let batch: Vec<_> = (0..20_000).map(|i| (key(i), i)).collect();
    store.check_and_insert(&batch, 20_000).unwrap();
    let first = create_local(&store, &checkpoints, 1_000).unwrap();
    let first_manifest =
        build_manifest(&first, "events", 2, "dedup-0", 1_000, UploadKind::Full).unwrap();
    let full = transfer::upload(
        &s3,
        PREFIX,
        &first_manifest,
        &first.dir,
        &Default::default(),
        8,
    )
    .await
    .unwrap();

    store
        .check_and_insert(&[(key(50_000), 20_000)], 20_001)
        .unwrap();
    let second = create_local(&store, &checkpoints, 2_000).unwrap();
    let second_manifest = build_manifest(
        &second,
        "events",
        2,
        "dedup-0",
        2_000,
        UploadKind::Incremental,
    )
    .unwrap();
    let already = transfer::referenced_files(&s3, PREFIX, "events", 2)
        .await
        .unwrap();
    let incremental = transfer::upload(&s3, PREFIX, &second_manifest, &second.dir, &already, 8)
        .await
        .unwrap();
    assert!(incremental.files_reused >= 1, "{incremental:?}");
    assert!(
        incremental.bytes_uploaded < full.bytes_uploaded / 2,
        "{incremental:?} vs {full:?}"
    );

    // Restore into a new volume: the newest checkpoint, every key, the offset.
    let target = dir.path().join("restored/events_2");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    match transfer::restore(&s3, PREFIX, "events", 2, &target, &options())
        .await
        .unwrap()
    {
        RestoreOutcome::Restored {
            checkpoint_id,
            next_offset,
            ..
        } => {
            assert_eq!(checkpoint_id, second.id);
            assert_eq!(next_offset, Some(20_001));
        }
        other => panic!("{other:?}"),
    }
    let restored = PartitionStore::open(&target, &settings, &StoreResources::default()).unwrap();
    assert_eq!(restored.first_offset(&key(50_000)).unwrap(), Some(20_000));
    assert_eq!(restored.first_offset(&key(12_345)).unwrap(), Some(12_345));
    drop(restored);

    // Damage the newest manifest: the restore falls back to the older checkpoint.
    s3.put_bytes(
        &manifest_key(PREFIX, "events", 2, &second.id),
        b"{".to_vec(),
    )
    .await
    .unwrap();
    let fallback = dir.path().join("fallback/events_2");
    std::fs::create_dir_all(fallback.parent().unwrap()).unwrap();
    match transfer::restore(&s3, PREFIX, "events", 2, &fallback, &options())
        .await
        .unwrap()
    {
        RestoreOutcome::Restored {
            checkpoint_id,
            skipped,
            ..
        } => {
            assert_eq!(checkpoint_id, first.id);
            assert_eq!(skipped.len(), 1);
        }
        other => panic!("{other:?}"),
    }

    // GC keeps the newest readable manifest; the damaged one, newer, may reference
    // anything (a newer format, say), so no file is deleted while it is there.
    let files_before = s3.list(&format!("{PREFIX}/events/2/files/")).await.unwrap();
    let gc = transfer::collect_garbage(&s3, PREFIX, "events", 2, 1)
        .await
        .unwrap();
    assert_eq!(
        (
            gc.manifests_deleted,
            gc.unreadable_manifests,
            gc.files_deleted
        ),
        (0, 1, 0)
    );
    assert_eq!(
        s3.list(&format!("{PREFIX}/events/2/files/")).await.unwrap(),
        files_before
    );
    // Without it, GC keeps exactly what the newest manifest references.
    let damaged = transfer::list_manifest_keys(&s3, PREFIX, "events", 2)
        .await
        .unwrap()
        .remove(0);
    s3.delete(&damaged).await.unwrap();
    let gc = transfer::collect_garbage(&s3, PREFIX, "events", 2, 1)
        .await
        .unwrap();
    assert_eq!(gc.unreadable_manifests, 0);
    let files = s3.list(&format!("{PREFIX}/events/2/files/")).await.unwrap();
    let kept = transfer::referenced_files(&s3, PREFIX, "events", 2)
        .await
        .unwrap();
    assert_eq!(files.len(), kept.len());
}

fn options() -> transfer::RestoreOptions {
    transfer::RestoreOptions {
        concurrency: 8,
        ..Default::default()
    }
}

#[tokio::test]
async fn missing_objects_are_not_errors() {
    let Some(endpoint) = endpoint() else { return };
    let s3 = remote(
        &endpoint,
        &unique_bucket("missing"),
        3,
        Duration::from_secs(30),
    );
    s3.ensure_bucket().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(s3.get_bytes("nope.json").await.unwrap(), None);
    assert!(!s3
        .get_file("nope.sst", &dir.path().join("x"))
        .await
        .unwrap());
    s3.delete("nope.sst").await.unwrap();
    assert!(s3.list("nothing/").await.unwrap().is_empty());
    let outcome = transfer::restore(
        &s3,
        PREFIX,
        "events",
        9,
        &dir.path().join("events_9"),
        &options(),
    )
    .await
    .unwrap();
    assert_eq!(outcome, RestoreOutcome::NoCheckpoint);
}

#[tokio::test]
async fn an_unreachable_store_fails_within_its_bounds() {
    // Nothing listens on port 1: every attempt fails fast, and the error says so.
    let s3 = remote(
        "http://127.0.0.1:1",
        "dedup-unreachable",
        2,
        Duration::from_secs(2),
    );
    let started = std::time::Instant::now();
    let key = "probe/unreachable-manifest.json";
    let error = s3.put_bytes(key, b"v".to_vec()).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(error.to_string().contains('k'), "{error}");
    assert!(
        error.to_string().contains(key),
        "the error names the key: {error}"
    );
}
