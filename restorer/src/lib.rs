//! The restorer: the init container that runs before the deduplicator in each pod and
//! pulls the checkpoints the pod will need from the remote into its volume, so that a
//! pod rescheduled onto an empty volume resumes with its deduplication state.
//!
//! It reads `{S3_KEY_PREFIX}/owners/{KAFKA_CONSUMER_GROUP}/{POD_NAME}.json` (written by
//! the deduplicator after each rebalance) and, for each listed partition whose local
//! store is missing or behind the newest remote checkpoint, restores it with the core
//! crate's [`CheckpointLoader`] (verified, atomic, resumable, falling back to older
//! checkpoints). Newer local stores are left alone.
//!
//! Nothing to do (no remote, no record, no checkpoint) is success. A partition that
//! cannot be restored is a warning and success too — the deduplicator restores on
//! assignment — unless `RESTORE_FAIL_HARD` is set.

pub mod config;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dedup_core::checkpoint::loader::{
    local_next_offset, AfterRestore, CheckpointLoader, LoadOutcome, RestoreEnded,
};
use dedup_core::checkpoint::manifest::{owner_key, OwnerRecord};
use dedup_core::checkpoint::remote::{CheckpointRemote, Remote};
use dedup_core::checkpoint::transfer::{Progress, RestoreOutcome};
use dedup_core::store::{PartitionStore, StoreResources, StoreSettings};

pub use config::Config;

/// What happened to one partition.
#[derive(Debug, Clone)]
pub struct PartitionReport {
    pub topic: String,
    pub partition: i32,
    pub outcome: LoadOutcome,
    pub seconds: f64,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum Summary {
    /// No remote is configured.
    NoRemote,
    /// The pod has no ownership record.
    NoOwnerRecord { key: String },
    /// The ownership record is older than OWNER_RECORD_MAX_AGE: not this pod's
    /// partitions any more, most likely.
    StaleOwnerRecord { key: String, age: Duration },
    /// The ownership record could not be read.
    RecordUnreadable { key: String, error: RecordError },
    /// Each listed partition, with its outcome.
    Partitions(Vec<PartitionReport>),
}

impl Summary {
    /// Whether something that should have been restored was not.
    pub fn failed(&self) -> bool {
        match self {
            Self::NoRemote | Self::NoOwnerRecord { .. } | Self::StaleOwnerRecord { .. } => false,
            Self::RecordUnreadable { .. } => true,
            Self::Partitions(reports) => reports.iter().any(|r| {
                matches!(
                    r.outcome,
                    LoadOutcome::Failed { .. }
                        | LoadOutcome::TimedOut { .. }
                        | LoadOutcome::Finished(RestoreOutcome::AllCorrupt { .. })
                )
            }),
        }
    }
}

/// Runs the restorer once.
pub async fn run(config: &Config) -> Summary {
    let started = Instant::now();
    let deadline = started + config.restore_timeout;
    let Some(remote) = config.remote.connect().await else {
        tracing::info!("no S3_BUCKET (or CHECKPOINT_REMOTE_DIR) configured: nothing to restore");
        return Summary::NoRemote;
    };
    let key = owner_key(
        &config.remote.s3_key_prefix,
        &config.kafka_consumer_group,
        &config.pod_name,
    );
    let record = match read_record(&remote, &key, config, deadline).await {
        Ok(Some(record)) => record,
        Ok(None) => {
            tracing::info!(key, %remote, "no ownership record for this pod: nothing to restore (a new pod, or its partitions were never assigned)");
            return Summary::NoOwnerRecord { key };
        }
        Err(error) => {
            tracing::warn!(key, %remote, %error, "cannot read the ownership record; the deduplicator will restore on assignment");
            return Summary::RecordUnreadable { key, error };
        }
    };
    tracing::info!(key, topic = record.topic, partitions = ?record.partitions,
        updated_at_ms = record.updated_at_ms, "ownership record read");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let age = Duration::from_millis(now_ms.saturating_sub(record.updated_at_ms).max(0) as u64);
    if age > config.owner_record_max_age {
        tracing::info!(key, age_seconds = age.as_secs(), max_age_seconds = config.owner_record_max_age.as_secs(),
            "the ownership record is stale (this pod was gone long enough for its partitions to move): nothing restored; the deduplicator restores what it is assigned");
        return Summary::StaleOwnerRecord { key, age };
    }

    let mut reports = Vec::new();
    for &partition in &record.partitions {
        let report = restore_partition(config, &remote, &record.topic, partition, deadline).await;
        reports.push(report);
    }
    let restored = reports
        .iter()
        .filter(|r| {
            matches!(
                r.outcome,
                LoadOutcome::Finished(RestoreOutcome::Restored { .. })
            )
        })
        .count();
    tracing::info!(
        partitions = reports.len(),
        restored,
        seconds = started.elapsed().as_secs_f64(),
        "restorer done"
    );
    Summary::Partitions(reports)
}

/// Why the ownership record could not be read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// It is there but does not parse: not retried, it will not get better.
    #[error("the ownership record is not valid: {0}")]
    Invalid(String),
    /// The remote kept failing (or RESTORE_TIMEOUT passed) through every attempt.
    #[error("{last} (after {attempts} attempts)")]
    Unreachable { last: String, attempts: u32 },
}

async fn read_record(
    remote: &Remote,
    key: &str,
    config: &Config,
    deadline: Instant,
) -> Result<Option<OwnerRecord>, RecordError> {
    let mut backoff = Duration::from_millis(500);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let error = match tokio::time::timeout(remaining, remote.get_bytes(key)).await {
            Ok(Ok(None)) => return Ok(None),
            Ok(Ok(Some(bytes))) => {
                return OwnerRecord::from_json(&bytes)
                    .map(Some)
                    .map_err(|e| RecordError::Invalid(e.to_string()));
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => "RESTORE_TIMEOUT passed".to_string(),
        };
        if attempt >= config.restore_max_attempts || Instant::now() + backoff >= deadline {
            return Err(RecordError::Unreachable {
                last: error,
                attempts: attempt,
            });
        }
        tracing::warn!(
            key,
            attempt,
            error,
            ?backoff,
            "reading the ownership record failed; retrying"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Block cache and memtable budget of a local store opened only to read its offset.
const PROBE_CACHE_BYTES: u64 = 8 << 20;
const PROBE_MEMTABLE_BYTES: u64 = 8 << 20;

async fn restore_partition(
    config: &Config,
    remote: &Remote,
    topic: &str,
    partition: i32,
    deadline: Instant,
) -> PartitionReport {
    let started = Instant::now();
    let dir = PartitionStore::dir_for(&config.store_path, topic, partition);
    let local = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            local_next_offset(
                &dir,
                &StoreSettings::default(),
                &StoreResources::new(PROBE_CACHE_BYTES, PROBE_MEMTABLE_BYTES),
            )
        })
        .await
    };
    let local = match local {
        Ok(Ok(next)) => next,
        Ok(Err(error)) => {
            tracing::warn!(partition, %error, "the local store cannot be read; restoring over it");
            None
        }
        Err(error) => {
            tracing::warn!(partition, %error, "reading the local store failed");
            None
        }
    };
    let loader = CheckpointLoader {
        remote: remote.clone(),
        key_prefix: config.remote.s3_key_prefix.clone(),
        concurrency: config.remote.concurrency(),
        max_attempts: config.restore_max_attempts,
        time_bound: deadline.saturating_duration_since(Instant::now()),
        progress: Some(progress_logger(partition)),
        local_checkpoints: Some(config.local_checkpoint_dir.clone()),
    };
    let outcome = loader.load(topic, partition, &dir, local).await;
    let seconds = started.elapsed().as_secs_f64();
    RestoreEnded {
        partition,
        local,
        outcome: &outcome,
        seconds,
        after: AfterRestore::RetriedOnAssignment,
    }
    .log();
    PartitionReport {
        topic: topic.to_string(),
        partition,
        outcome,
        seconds,
    }
}

/// Logs download progress at most every 2 seconds, and at the end of each checkpoint.
fn progress_logger(partition: i32) -> Arc<dedup_core::checkpoint::transfer::ProgressFn> {
    let state = Mutex::new((Instant::now(), Instant::now()));
    Arc::new(move |p: &Progress| {
        let mut guard = state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (started, last) = &mut *guard;
        let now = Instant::now();
        let done = p.files_done == p.files_total;
        if !done && now.duration_since(*last) < Duration::from_secs(2) {
            return;
        }
        *last = now;
        let seconds = now.duration_since(*started).as_secs_f64().max(1e-9);
        tracing::info!(
            partition,
            checkpoint_id = p.checkpoint_id,
            files = format!("{}/{}", p.files_done, p.files_total),
            bytes = format!("{}/{}", p.bytes_done, p.bytes_total),
            mb_per_s = p.bytes_done as f64 / 1e6 / seconds,
            "downloading"
        );
    })
}
