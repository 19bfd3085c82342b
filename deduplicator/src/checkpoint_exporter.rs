//! The CheckpointExporter: every `CHECKPOINT_INTERVAL`, for each owned partition,
//! creates a local checkpoint (hard links; writes to the store wait only for the flush
//! and the checkpoint call), keeps the newest `MAX_LOCAL_CHECKPOINTS`, and with a remote
//! uploads it in the background: incremental (files no remote manifest references yet),
//! full every `FULL_UPLOAD_INTERVAL`-th time, the manifest last; then garbage-collects
//! the partition's remote checkpoints beyond `MAX_REMOTE_CHECKPOINTS`.
//!
//! The manifest and the garbage collection happen under the partition's checkpoint lock
//! and only while the partition is not fenced, so a process that lost a partition never
//! publishes a checkpoint of it nor deletes what its new owner is uploading. A commit
//! in progress when the partition is fenced may finish within [`FENCED_COMMIT_GRACE`];
//! then it is cancelled. A revocation waits [`CHECKPOINT_LOCK_WAIT`], longer than that,
//! for the lock: it always gets it, and nothing of the old owner's reaches the bucket
//! after the handover (except a request S3 received more than the grace before and
//! answers later still).
//!
//! A failed upload is counted, logged and tried again at the next interval (with a new
//! checkpoint); consumption never waits for it.
//!
//! The final checkpoint of a partition being given up goes through [`export`] too,
//! from the revocation ([`crate::rebalance_handler`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dedup_core::checkpoint::manifest::{CheckpointManifest, UploadKind};
use dedup_core::checkpoint::remote::{CheckpointRemote, Remote, RemoteError};
use dedup_core::checkpoint::{self, transfer, LocalCheckpoint};
use dedup_core::store::PartitionStore;

use crate::context::Context;
use crate::internal_events::{
    CheckpointCreated, CheckpointFailed, CheckpointUploadFailed, CheckpointUploadFenced,
    CheckpointUploaded, InternalEvent, LocalCheckpointKept,
};
use crate::metrics::{KindLabels, PartitionLabels};
use crate::rebalance_handler::{ExportTarget, RebalanceHandler};

/// Checksums of immutable files (SSTs) already computed, by name and size, per
/// partition: a checkpoint of a large store then reads only its new files.
///
/// Valid for one assignment of the partition only: a store restored (or opened) at
/// another assignment may be another lineage whose `000012.sst` has the same size and
/// other bytes, and a stale checksum would make every restore of it fail verification.
#[derive(Default)]
pub(crate) struct ChecksumCache {
    /// Partition → (the assignment it was computed in, checksum by file name and size).
    by_partition: HashMap<i32, (u64, Checksums)>,
}

impl ChecksumCache {
    /// The checksums known for `partition` in `assignment`; empty for a new assignment.
    fn for_assignment(&mut self, partition: i32, assignment: u64) -> &mut Checksums {
        let entry = self
            .by_partition
            .entry(partition)
            .or_insert_with(|| (assignment, HashMap::new()));
        if entry.0 != assignment {
            *entry = (assignment, HashMap::new());
        }
        &mut entry.1
    }

    /// A copy of the checksums known for `partition` in `assignment`, for one export
    /// (the cache is shared by the periodic exports and the final one at revocation).
    fn known(&mut self, partition: i32, assignment: u64) -> Checksums {
        self.for_assignment(partition, assignment).clone()
    }

    /// Adds what an export of `partition` in `assignment` computed.
    fn remember(&mut self, partition: i32, assignment: u64, computed: Checksums) {
        self.for_assignment(partition, assignment).extend(computed);
    }
}

type Checksums = checkpoint::KnownChecksums;

pub struct CheckpointExporter {
    handler: Arc<RebalanceHandler>,
}

impl CheckpointExporter {
    pub fn new(handler: Arc<RebalanceHandler>) -> Self {
        Self { handler }
    }

    /// Runs until aborted.
    pub async fn run(mut self) {
        let interval = self.handler.context.config.checkpoint_interval;
        if interval.is_zero() {
            tracing::info!("checkpoints disabled (CHECKPOINT_INTERVAL=0)");
            return;
        }
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.export_all().await;
        }
    }

    /// One checkpoint (and upload) of every owned partition whose store is ready.
    pub async fn export_all(&mut self) {
        let targets = self.handler.export_targets();
        let owned: Vec<i32> = targets.iter().map(|t| t.partition).collect();
        self.handler
            .checksums()
            .by_partition
            .retain(|p, _| owned.contains(p));
        for target in targets {
            export(&self.handler, target).await;
        }
    }
}

/// One checkpoint of `target`'s store, uploaded when there is a remote: periodic, or the
/// final one of a partition being given up ([`ExportTarget::last`]).
pub async fn export(handler: &RebalanceHandler, target: ExportTarget) {
    let context = Arc::clone(&handler.context);
    let config = &context.config;
    let partition = target.partition;
    let topic = config.kafka_consumer_topic.clone();
    let dir = checkpoint::partition_dir(&config.local_checkpoint_dir, &topic, partition);
    let Some(store) = target.store.upgrade() else {
        return;
    };
    let now_ms = now_ms();
    let Some((local, pause)) = create(&context, partition, store, &dir, now_ms).await else {
        return;
    };
    let Some(remote) = context.remote.clone() else {
        LocalCheckpointKept {
            partition,
            local: &local,
            size: dir_size(&local.dir),
            pause,
        }
        .emit(&context.metrics);
        return;
    };
    let mut known = handler.checksums().known(partition, target.assignment);
    let upload_started = Instant::now();
    let uploaded = upload(
        &context, &remote, &target, &topic, &local, now_ms, &mut known,
    )
    .await;
    handler
        .checksums()
        .remember(partition, target.assignment, known);
    match uploaded {
        Ok(Uploaded::Done { manifest, stats }) => CheckpointUploaded {
            partition,
            manifest: &manifest,
            stats: &stats,
            pause,
            seconds: upload_started.elapsed().as_secs_f64(),
            last: target.last,
        }
        .emit(&context.metrics),
        Ok(Uploaded::Fenced) => CheckpointUploadFenced {
            partition,
            id: &local.id,
        }
        .emit(&context.metrics),
        Err(error) => CheckpointUploadFailed {
            partition,
            id: &local.id,
            error: &error,
        }
        .emit(&context.metrics),
    }
}

/// Creates a local checkpoint of `store` in `dir` (off the async workers) and prunes the
/// older ones past `MAX_LOCAL_CHECKPOINTS`; the checkpoint and the pause it took, or
/// `None` when creation failed (counted and logged).
async fn create(
    context: &Context,
    partition: i32,
    store: Arc<PartitionStore>,
    dir: &Path,
    now_ms: i64,
) -> Option<(LocalCheckpoint, Duration)> {
    let started = Instant::now();
    let created = {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || checkpoint::create_local(&store, &dir, now_ms)).await
    };
    let failure = match created {
        Ok(Ok(local)) => Ok(local),
        Ok(Err(error)) => Err(("checkpoint creation failed", error.to_string())),
        Err(error) => Err(("checkpoint task failed", error.to_string())),
    };
    let local = match failure {
        Ok(local) => local,
        Err((message, error)) => {
            CheckpointFailed {
                partition,
                message,
                error: &error,
            }
            .emit(&context.metrics);
            return None;
        }
    };
    let pause = started.elapsed();
    CheckpointCreated { pause }.emit(&context.metrics);
    let keep = context.config.max_local_checkpoints as usize;
    let dir = dir.to_path_buf();
    match tokio::task::spawn_blocking(move || checkpoint::prune_local(&dir, keep)).await {
        Ok(Err(error)) => tracing::warn!(partition, %error, "pruning local checkpoints failed"),
        Err(error) => tracing::warn!(partition, %error, "pruning task failed"),
        Ok(Ok(_)) => {}
    }
    Some((local, pause))
}

enum Uploaded {
    Done {
        manifest: CheckpointManifest,
        stats: transfer::UploadStats,
    },
    Fenced,
}

async fn upload(
    context: &Context,
    remote: &Remote,
    target: &ExportTarget,
    topic: &str,
    local: &LocalCheckpoint,
    now_ms: i64,
    checksums: &mut Checksums,
) -> Result<Uploaded, RemoteError> {
    let config = &context.config;
    let prefix = &config.remote.s3_key_prefix;
    let partition = target.partition;
    let state = transfer::remote_state(remote, prefix, topic, partition).await?;
    if let Some(newest) = &state.newest {
        context
            .metrics
            .checkpoint_remote_age
            .get_or_create(&PartitionLabels { partition })
            .set((now_ms - newest.created_at_ms).max(0) / 1000);
    }
    let every = config.full_upload_interval.max(1) as usize;
    let kind = if state.newest.is_none() || state.incrementals_since_full + 1 >= every {
        UploadKind::Full
    } else {
        UploadKind::Incremental
    };
    let writer = config
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("pid-{}", std::process::id()));
    let manifest = {
        let (checkpoint, topic, known) = (local.clone(), topic.to_string(), checksums.clone());
        tokio::task::spawn_blocking(move || {
            checkpoint::build_manifest_reusing(
                &checkpoint,
                &topic,
                partition,
                &writer,
                now_ms,
                kind,
                &known,
            )
        })
        .await
        .map_err(|e| RemoteError::io(&local.id, e))?
        .map_err(|e| RemoteError::io(&local.id, e))?
    };
    for file in &manifest.files {
        if file.local_name.ends_with(".sst") {
            checksums.insert((file.local_name.clone(), file.size), file.checksum.clone());
        }
    }
    let stats = transfer::upload_files(
        remote,
        prefix,
        &manifest,
        &local.dir,
        &state.referenced,
        config.remote.concurrency(),
    )
    .await?;

    let keep = config.max_remote_checkpoints as usize;
    let gc = match commit_while_owner(
        remote,
        prefix,
        &manifest,
        keep,
        &target.checkpoint_lock,
        &target.fence,
        FENCED_COMMIT_GRACE,
    )
    .await?
    {
        Committed::Done(gc) => gc,
        Committed::Fenced => return Ok(Uploaded::Fenced),
    };
    match gc {
        Ok(gc) => {
            let metrics = &context.metrics;
            metrics
                .checkpoint_gc_deleted
                .get_or_create(&KindLabels { kind: "manifest" })
                .inc_by(gc.manifests_deleted as u64);
            metrics
                .checkpoint_gc_deleted
                .get_or_create(&KindLabels { kind: "file" })
                .inc_by(gc.files_deleted as u64);
            if gc.unreadable_manifests > 0 {
                tracing::warn!(partition, unreadable = gc.unreadable_manifests,
                    "a kept remote manifest cannot be read (damaged, or a newer format); no file deleted until it ages out");
            }
        }
        Err(error) => {
            tracing::warn!(partition, %error, "remote checkpoint garbage collection failed")
        }
    }
    Ok(Uploaded::Done { manifest, stats })
}

/// How long a revocation waits for a checkpoint commit in progress (the partition's
/// checkpoint lock) before it hands the partition over anyway.
pub const CHECKPOINT_LOCK_WAIT: Duration = Duration::from_secs(30);

/// How long a checkpoint commit in progress may go on once its partition is fenced
/// before it is cancelled: shorter than [`CHECKPOINT_LOCK_WAIT`], so that a revocation
/// always gets the lock, and an owner that lost the partition writes nothing after it.
pub const FENCED_COMMIT_GRACE: Duration = Duration::from_secs(20);

enum Committed {
    /// The manifest is published; the garbage collection's result.
    Done(Result<transfer::GcStats, RemoteError>),
    /// Fenced before the commit, or cancelled `grace` after the fence.
    Fenced,
}

/// Publishes `manifest` and collects the partition's remote garbage, under the
/// partition's checkpoint lock, while the partition is not fenced; once it is, the
/// commit may go on for `grace`, then it is cancelled (the request in flight dropped).
async fn commit_while_owner<R: CheckpointRemote>(
    remote: &R,
    prefix: &str,
    manifest: &CheckpointManifest,
    keep: usize,
    lock: &tokio::sync::Mutex<()>,
    fence: &tokio::sync::watch::Receiver<bool>,
    grace: Duration,
) -> Result<Committed, RemoteError> {
    let _owner = lock.lock().await;
    if *fence.borrow() {
        return Ok(Committed::Fenced);
    }
    let commit = async {
        transfer::put_manifest(remote, prefix, manifest).await?;
        let still_owner = {
            let fence = fence.clone();
            move || !*fence.borrow()
        };
        let (topic, partition) = (&manifest.topic, manifest.partition);
        Ok(
            transfer::collect_garbage_while(remote, prefix, topic, partition, keep, still_owner)
                .await,
        )
    };
    let mut watch = fence.clone();
    tokio::select! {
        biased;
        done = commit => done.map(Committed::Done),
        () = async {
            crate::partition_worker::fenced(&mut watch).await;
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!(partition = manifest.partition, id = manifest.checkpoint_id, ?grace,
                "checkpoint commit still running after the partition was given up; cancelled");
            Ok(Committed::Fenced)
        }
    }
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_checksums_do_not_outlive_the_assignment_they_were_computed_in() {
        let mut cache = ChecksumCache::default();
        let sst = ("000012.sst".to_string(), 4_096);
        cache
            .for_assignment(3, 1)
            .insert(sst.clone(), "lineage-a".into());
        assert_eq!(
            cache.for_assignment(3, 1).get(&sst).map(String::as_str),
            Some("lineage-a")
        );
        // Revoked and assigned again: the store may now be another lineage's.
        assert!(cache.for_assignment(3, 2).get(&sst).is_none());
        assert!(cache.for_assignment(3, 2).is_empty());
    }

    /// A remote whose writes never finish (an S3 that stopped answering mid-request).
    struct Stalled;

    impl CheckpointRemote for Stalled {
        async fn put_file(&self, _: &str, _: &Path) -> Result<(), RemoteError> {
            std::future::pending().await
        }
        async fn put_bytes(&self, _: &str, _: Vec<u8>) -> Result<(), RemoteError> {
            std::future::pending().await
        }
        async fn get_file(&self, _: &str, _: &Path) -> Result<bool, RemoteError> {
            std::future::pending().await
        }
        async fn get_bytes(&self, _: &str) -> Result<Option<Vec<u8>>, RemoteError> {
            std::future::pending().await
        }
        async fn list(&self, _: &str) -> Result<Vec<String>, RemoteError> {
            std::future::pending().await
        }
        async fn delete(&self, _: &str) -> Result<(), RemoteError> {
            std::future::pending().await
        }
    }

    fn manifest() -> CheckpointManifest {
        CheckpointManifest {
            format_version: dedup_core::checkpoint::manifest::MANIFEST_FORMAT_VERSION,
            topic: "events".into(),
            partition: 3,
            checkpoint_id: "cp-1".into(),
            created_at_ms: 1,
            next_offset: Some(10),
            writer: "dedup-0".into(),
            kind: UploadKind::Full,
            files: Vec::new(),
        }
    }

    /// A commit stuck in S3 when its partition is revoked gives the lock back within
    /// the grace, so the revocation (which waits longer) always gets it and the stuck
    /// request is dropped before the handover: nothing of the old owner's lands after.
    /// (Scaled down: a grace of 300 ms instead of FENCED_COMMIT_GRACE.)
    #[tokio::test]
    async fn a_commit_stuck_at_revocation_is_cancelled_within_the_grace() {
        const { assert!(FENCED_COMMIT_GRACE.as_secs() + 5 <= CHECKPOINT_LOCK_WAIT.as_secs()) };
        let grace = Duration::from_millis(300);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let (fence, fence_rx) = tokio::sync::watch::channel(false);
        let commit = {
            let lock = Arc::clone(&lock);
            tokio::spawn(async move {
                let manifest = manifest();
                commit_while_owner(&Stalled, "p", &manifest, 2, &lock, &fence_rx, grace).await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(lock.try_lock().is_err(), "the commit holds the lock");
        let revoked_at = Instant::now();
        fence.send_replace(true);
        let waited = tokio::time::timeout(Duration::from_secs(5), lock.lock()).await;
        assert!(waited.is_ok(), "the revocation gets the lock");
        drop(waited);
        let held = revoked_at.elapsed();
        assert!(
            held >= grace && held < grace + Duration::from_millis(500),
            "held {held:?} after the fence"
        );
        assert!(matches!(commit.await, Ok(Ok(Committed::Fenced))));
    }

    #[tokio::test]
    async fn a_commit_of_a_fenced_partition_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let remote = dedup_core::checkpoint::remote::LocalDirRemote::new(dir.path());
        let lock = tokio::sync::Mutex::new(());
        let (fence, fence_rx) = tokio::sync::watch::channel(false);
        let committed = commit_while_owner(
            &remote,
            "p",
            &manifest(),
            2,
            &lock,
            &fence_rx,
            FENCED_COMMIT_GRACE,
        )
        .await;
        assert!(matches!(committed, Ok(Committed::Done(Ok(_)))));
        assert_eq!(remote.list("p/").await.unwrap().len(), 1, "the manifest");
        fence.send_replace(true);
        let mut second = manifest();
        second.checkpoint_id = "cp-2".into();
        let committed = commit_while_owner(
            &remote,
            "p",
            &second,
            2,
            &lock,
            &fence_rx,
            FENCED_COMMIT_GRACE,
        )
        .await;
        assert!(matches!(committed, Ok(Committed::Fenced)));
        assert_eq!(remote.list("p/").await.unwrap().len(), 1, "nothing more");
    }
}
