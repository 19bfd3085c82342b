//! The `restorer` binary against S3 (`moto_server` on 127.0.0.1, started by
//! `scripts/start-test-services.sh`; endpoint `DEDUP_TEST_S3_ENDPOINT`, default
//! http://127.0.0.1:5000). Without it these tests fail, unless
//! `DEDUP_ALLOW_MISSING_SERVICES=1` (local runs only) makes them skip.
//!
//! The end-to-end pod reschedule (deduplicator, kill -9, restorer on an empty volume,
//! deduplicator again) is in `deduplicator/tests/pod_reschedule_tests.rs`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use dedup_core::checkpoint::manifest::{
    manifest_key, owner_key, OwnerRecord, UploadKind, MANIFEST_FORMAT_VERSION,
};
use dedup_core::checkpoint::remote::CheckpointRemote;
use dedup_core::checkpoint::s3::{S3Remote, S3Settings};
use dedup_core::checkpoint::{build_manifest, create_local, transfer};
use dedup_core::key::EventKey;
use dedup_core::store::{PartitionStore, StoreResources, StoreSettings};

const PREFIX: &str = "deduplication-checkpoints";
const GROUP: &str = "dedup-group";

/// The test S3 (moto); `None` only when a local run may skip it.
fn endpoint() -> Option<String> {
    dedup_testkit::services::moto().map(|(endpoint, _)| endpoint)
}

fn bucket(tag: &str) -> String {
    format!("restorer-{tag}-{}", std::process::id())
}

fn remote(endpoint: &str, bucket: &str) -> S3Remote {
    let builder = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"));
    let settings = S3Settings {
        endpoint: Some(endpoint.to_string()),
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

fn settings() -> StoreSettings {
    StoreSettings {
        dedup_window: Duration::ZERO,
        ..StoreSettings::default()
    }
}

/// A store of `partition` holding keys `0..count`, checkpointed and uploaded once per
/// entry of `uploads` (each adding keys); returns the manifests' ids, oldest first.
async fn upload_store(
    s3: &S3Remote,
    work: &Path,
    partition: i32,
    uploads: &[i64],
) -> Vec<(String, i64)> {
    let store = PartitionStore::open(
        work.join(format!("source/events_{partition}")),
        &settings(),
        &StoreResources::default(),
    )
    .unwrap();
    let mut next = 0;
    let mut ids = Vec::new();
    for (n, count) in uploads.iter().enumerate() {
        let batch: Vec<_> = (next..next + count).map(|i| (key(i), i)).collect();
        next += count;
        store.check_and_insert(&batch, next).unwrap();
        let now = 1_000 + n as i64;
        let local =
            create_local(&store, &work.join(format!("cp/events_{partition}")), now).unwrap();
        let manifest = build_manifest(
            &local,
            "events",
            partition,
            "dedup-0",
            now,
            UploadKind::Full,
        )
        .unwrap();
        transfer::upload(s3, PREFIX, &manifest, &local.dir, &Default::default(), 4)
            .await
            .unwrap();
        ids.push((local.id, next));
    }
    ids
}

async fn write_owner(s3: &S3Remote, pod: &str, partitions: Vec<i32>) {
    write_owner_at(s3, pod, partitions, now_ms()).await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn write_owner_at(s3: &S3Remote, pod: &str, partitions: Vec<i32>, updated_at_ms: i64) {
    let record = OwnerRecord {
        format_version: MANIFEST_FORMAT_VERSION,
        consumer_group: GROUP.into(),
        pod_name: pod.into(),
        topic: "events".into(),
        partitions,
        updated_at_ms,
    };
    s3.put_bytes(&owner_key(PREFIX, GROUP, pod), record.to_json().unwrap())
        .await
        .unwrap();
}

fn run_restorer(
    endpoint: &str,
    bucket: &str,
    pod: &str,
    store: &Path,
    extra: &[(&str, &str)],
) -> (Output, Duration) {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_restorer"))
        .env_clear()
        .env("POD_NAME", pod)
        .env("KAFKA_CONSUMER_GROUP", GROUP)
        .env("STORE_PATH", store)
        .env("S3_BUCKET", bucket)
        .env("S3_ENDPOINT", endpoint)
        .env("S3_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "info")
        .envs(extra.iter().copied())
        .output()
        .expect("run restorer");
    (output, started.elapsed())
}

fn log(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned() + &String::from_utf8_lossy(&output.stdout)
}

fn next_offset(dir: &PathBuf) -> Option<i64> {
    let store = PartitionStore::open(dir, &settings(), &StoreResources::default()).unwrap();
    store.next_offset().unwrap()
}

#[tokio::test]
async fn restores_what_the_pod_owned_keeps_newer_local_stores_and_skips_corrupt_checkpoints() {
    let Some(endpoint) = endpoint() else { return };
    let bucket = bucket("owned");
    let s3 = remote(&endpoint, &bucket);
    s3.ensure_bucket().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    // Partition 0: two checkpoints, the newest is restored.
    let p0 = upload_store(&s3, work.path(), 0, &[1_000, 500]).await;
    // Partition 1: remote at 800; the pod's volume already has a store at 5,000.
    upload_store(&s3, work.path(), 1, &[800]).await;
    // Partition 2: the newest checkpoint's manifest is damaged: the older one is used.
    let p2 = upload_store(&s3, work.path(), 2, &[300, 300]).await;
    s3.put_bytes(
        &manifest_key(PREFIX, "events", 2, &p2[1].0),
        b"{\"broken".to_vec(),
    )
    .await
    .unwrap();
    // Partition 3: owned but never checkpointed.
    write_owner(&s3, "dedup-0", vec![0, 1, 2, 3]).await;

    let volume = work.path().join("volume");
    let local1 = volume.join("events_1");
    {
        let store = PartitionStore::open(&local1, &settings(), &StoreResources::default()).unwrap();
        store
            .check_and_insert(&[(key(99_999), 4_999)], 5_000)
            .unwrap();
        store.close().unwrap();
    }

    let (output, _) = run_restorer(&endpoint, &bucket, "dedup-0", &volume, &[]);
    let text = log(&output);
    assert!(output.status.success(), "{text}");
    assert_eq!(
        next_offset(&volume.join("events_0")),
        Some(p0[1].1),
        "{text}"
    );
    let restored = PartitionStore::open(
        volume.join("events_0"),
        &settings(),
        &StoreResources::default(),
    )
    .unwrap();
    assert_eq!(restored.first_offset(&key(1_234)).unwrap(), Some(1_234));
    drop(restored);
    assert_eq!(
        next_offset(&local1),
        Some(5_000),
        "the newer local store is kept"
    );
    assert_eq!(
        next_offset(&volume.join("events_2")),
        Some(p2[0].1),
        "older checkpoint"
    );
    assert!(!volume.join("events_3").exists());
    for line in [
        "partition restored",
        "local store is as recent as the remote checkpoints; kept",
        "remote checkpoint unusable",
        "no remote checkpoint for this partition",
        "downloading",
        "restorer done",
    ] {
        assert!(text.contains(line), "missing `{line}` in\n{text}");
    }
}

#[tokio::test]
async fn an_unknown_pod_restores_nothing_and_succeeds() {
    let Some(endpoint) = endpoint() else { return };
    let bucket = bucket("unknown");
    let s3 = remote(&endpoint, &bucket);
    s3.ensure_bucket().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    upload_store(&s3, work.path(), 0, &[100]).await;
    write_owner(&s3, "dedup-0", vec![0]).await;
    let volume = work.path().join("volume");
    let (output, _) = run_restorer(&endpoint, &bucket, "dedup-7", &volume, &[]);
    let text = log(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("no ownership record for this pod"), "{text}");
    assert!(!volume.join("events_0").exists());
}

#[tokio::test]
async fn a_stale_ownership_record_restores_nothing() {
    // dedup-4 owned partition 0, then the cluster was scaled down; the record was not
    // rewritten for two hours. Scaled up again, dedup-4 must not fetch partition 0 (it
    // most likely belongs to another pod now); the deduplicator restores on assignment.
    let Some(endpoint) = endpoint() else { return };
    let bucket = bucket("stale");
    let s3 = remote(&endpoint, &bucket);
    s3.ensure_bucket().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    upload_store(&s3, work.path(), 0, &[100]).await;
    write_owner_at(&s3, "dedup-4", vec![0], now_ms() - 2 * 3_600_000).await;
    let volume = work.path().join("volume");
    let (output, _) = run_restorer(
        &endpoint,
        &bucket,
        "dedup-4",
        &volume,
        &[("OWNER_RECORD_MAX_AGE", "30m")],
    );
    let text = log(&output);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("the ownership record is stale"), "{text}");
    assert!(!volume.join("events_0").exists());

    // Within the bound, the same record is followed.
    let (output, _) = run_restorer(
        &endpoint,
        &bucket,
        "dedup-4",
        &volume,
        &[("OWNER_RECORD_MAX_AGE", "3h")],
    );
    let text = log(&output);
    assert!(output.status.success(), "{text}");
    assert!(volume.join("events_0").exists(), "{text}");
}

#[test]
fn unreachable_s3_exits_within_its_bound_as_configured() {
    // Nothing listens on this port.
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let volume = tempfile::tempdir().unwrap();
    let settings = [
        ("RESTORE_TIMEOUT", "20s"),
        ("RESTORE_MAX_ATTEMPTS", "3"),
        ("S3_MAX_ATTEMPTS", "1"),
    ];
    let (output, took) = run_restorer(&dead, "b", "dedup-0", volume.path(), &settings);
    let text = log(&output);
    assert!(
        output.status.success(),
        "warn and exit 0 by default\n{text}"
    );
    assert!(text.contains("cannot read the ownership record"), "{text}");
    assert!(took < Duration::from_secs(20), "{took:?}");

    let mut hard = settings.to_vec();
    hard.push(("RESTORE_FAIL_HARD", "true"));
    hard[0] = ("RESTORE_TIMEOUT", "3s");
    hard[1] = ("RESTORE_MAX_ATTEMPTS", "100");
    let (output, took) = run_restorer(&dead, "b", "dedup-0", volume.path(), &hard);
    assert!(!output.status.success(), "fail hard\n{}", log(&output));
    assert!(
        took < Duration::from_secs(10),
        "bounded by RESTORE_TIMEOUT: {took:?}"
    );
}
