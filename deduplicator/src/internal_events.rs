//! Notable happenings of the deduplicator, one small type each, whose [`emit`] writes the
//! log line and the metric together (Vector's `internal_events` pattern): an operator who
//! sees a counter move finds its log line here, and a new happening cannot be logged
//! without being counted, or the reverse.
//!
//! [`emit`]: InternalEvent::emit

use std::fmt::Display;
use std::time::{Duration, Instant};

use dedup_core::checkpoint::loader::{AfterRestore, LoadOutcome, RestoreEnded};
use dedup_core::checkpoint::manifest::CheckpointManifest;
use dedup_core::checkpoint::transfer::{RestoreOutcome, UploadStats};
use dedup_core::checkpoint::LocalCheckpoint;
use dedup_core::EventError;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tracing::Level;

use crate::metrics::{KindLabels, MalformedLabels, Metrics, PartitionLabels, ReasonLabels};
use crate::routing::Verdict;

/// A happening that is logged and counted.
pub trait InternalEvent {
    fn emit(self, metrics: &Metrics);
}

/// A call to Kafka failed, or the client reported an error (`dedup_kafka_errors_total`).
/// `message` says what failed and what follows from it.
pub struct KafkaCallFailed<'a> {
    pub message: &'static str,
    pub partition: Option<i32>,
    pub error: &'a dyn Display,
    /// `WARN` when it is retried or harmless, `ERROR` when something is given up.
    pub level: Level,
}

impl InternalEvent for KafkaCallFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.kafka_errors.inc();
        let Self {
            message,
            partition,
            error,
            level,
        } = self;
        match (level == Level::ERROR, partition) {
            (true, Some(partition)) => tracing::error!(partition, %error, "{message}"),
            (true, None) => tracing::error!(%error, "{message}"),
            (false, Some(partition)) => tracing::warn!(partition, %error, "{message}"),
            (false, None) => tracing::warn!(%error, "{message}"),
        }
    }
}

/// A partition store call failed (`dedup_store_errors_total`); `message` says what
/// follows (retried, or given up).
pub struct StoreCallFailed<'a> {
    pub message: &'static str,
    pub partition: i32,
    pub error: &'a dyn Display,
    /// Failures in a row so far, when the call is retried.
    pub failures: Option<u32>,
    pub level: Level,
}

impl InternalEvent for StoreCallFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.store_errors.inc();
        let Self {
            message,
            partition,
            error,
            failures,
            level,
        } = self;
        if level == Level::ERROR {
            tracing::error!(partition, %error, ?failures, "{message}");
        } else {
            tracing::warn!(partition, %error, ?failures, "{message}");
        }
    }
}

/// One consumed message decided ([`crate::routing::route`]): counted by verdict; a
/// malformed one is also logged (at debug: a bad producer can send many).
pub struct MessageDecided<'a> {
    pub partition: i32,
    pub offset: i64,
    pub verdict: Verdict,
    pub error: Option<&'a EventError>,
}

impl InternalEvent for MessageDecided<'_> {
    fn emit(self, metrics: &Metrics) {
        match self.verdict {
            Verdict::Unique => {
                metrics.unique.inc();
            }
            Verdict::Redelivery => {
                metrics.redelivery.inc();
            }
            Verdict::Duplicate => {
                metrics.duplicate.inc();
            }
            Verdict::Malformed { reason, action } => {
                metrics
                    .malformed
                    .get_or_create(&MalformedLabels { reason, action })
                    .inc();
                if let Some(error) = self.error {
                    tracing::debug!(partition = self.partition, offset = self.offset, %error, action, "malformed message");
                }
            }
        }
    }
}

/// A partition's restore on assignment ended (`dedup_restores_total{result}`, its
/// duration, bytes and skipped checkpoints), logged as the restorer logs its own.
pub struct RestoreFinished<'a> {
    pub partition: i32,
    pub local: Option<i64>,
    pub outcome: &'a LoadOutcome,
    pub started: Instant,
}

impl InternalEvent for RestoreFinished<'_> {
    fn emit(self, metrics: &Metrics) {
        let seconds = self.started.elapsed().as_secs_f64();
        metrics.restore_duration.observe(seconds);
        Metrics::count(&metrics.restores, self.outcome.label());
        metrics
            .restore_skipped_checkpoints
            .inc_by(self.outcome.skipped().len() as u64);
        if let LoadOutcome::Finished(RestoreOutcome::Restored {
            bytes,
            bytes_reused,
            ..
        }) = self.outcome
        {
            metrics.restore_bytes.inc_by(*bytes);
            metrics.restore_reused_bytes.inc_by(*bytes_reused);
        }
        RestoreEnded {
            partition: self.partition,
            local: self.local,
            outcome: self.outcome,
            seconds,
            after: AfterRestore::StartsWithout,
        }
        .log();
    }
}

/// A partition's checkpoint was prefetched before its move here (or the prefetch
/// failed: the restore at assignment downloads it then).
pub struct PrefetchFinished<'a> {
    pub partition: i32,
    pub outcome: &'a LoadOutcome,
    pub started: Instant,
}

impl InternalEvent for PrefetchFinished<'_> {
    fn emit(self, metrics: &Metrics) {
        Metrics::count(&metrics.prefetches, self.outcome.label());
        if let LoadOutcome::Finished(RestoreOutcome::Restored {
            bytes,
            bytes_reused,
            ..
        }) = self.outcome
        {
            metrics
                .prefetch_downloaded_bytes
                .inc_by(bytes.saturating_sub(*bytes_reused));
        }
        RestoreEnded {
            partition: self.partition,
            local: None,
            outcome: self.outcome,
            seconds: self.started.elapsed().as_secs_f64(),
            after: AfterRestore::Prefetch,
        }
        .log();
    }
}

/// A delivery task panicked (a bug; `dedup_delivery_panics_total`); the message is
/// published again.
pub struct DeliveryPanicked<'a> {
    pub partition: i32,
    pub offset: i64,
    pub attempt: u32,
    pub panic: &'a str,
}

impl InternalEvent for DeliveryPanicked<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.delivery_panics.inc();
        tracing::error!(
            partition = self.partition,
            offset = self.offset,
            attempt = self.attempt,
            panic = self.panic,
            "a delivery panicked (a bug); publishing the message again"
        );
    }
}

/// Retention removed old keys from a partition store (`dedup_evicted_keys_total{kind}`:
/// `window` by age, `capacity` by size).
pub struct KeysEvicted {
    pub partition: i32,
    pub keys: u64,
    pub kind: &'static str,
    pub cutoff_ms: Option<i64>,
}

impl InternalEvent for KeysEvicted {
    fn emit(self, metrics: &Metrics) {
        metrics
            .evicted_keys
            .get_or_create(&KindLabels { kind: self.kind })
            .inc_by(self.keys);
        tracing::info!(
            partition = self.partition,
            keys = self.keys,
            kind = self.kind,
            cutoff_ms = self.cutoff_ms,
            "evicted old keys"
        );
    }
}

/// A local checkpoint could not be made (`dedup_checkpoints_total{result="failure"}`).
pub struct CheckpointFailed<'a> {
    pub partition: i32,
    pub message: &'static str,
    pub error: &'a dyn Display,
}

impl InternalEvent for CheckpointFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        Metrics::count(&metrics.checkpoints, "failure");
        tracing::error!(partition = self.partition, error = %self.error, "{}", self.message);
    }
}

/// A local checkpoint was made, pausing the store's writes for `pause`
/// (`dedup_checkpoints_total{result="success"}`, `dedup_checkpoint_duration_seconds`).
/// Logged once it is kept or uploaded.
pub struct CheckpointCreated {
    pub pause: Duration,
}

impl InternalEvent for CheckpointCreated {
    fn emit(self, metrics: &Metrics) {
        metrics
            .checkpoint_duration
            .observe(self.pause.as_secs_f64());
        Metrics::count(&metrics.checkpoints, "success");
    }
}

/// Without a remote: the local checkpoint is all there is (`dedup_checkpoint_size_bytes`).
pub struct LocalCheckpointKept<'a> {
    pub partition: i32,
    pub local: &'a LocalCheckpoint,
    pub size: u64,
    pub pause: Duration,
}

impl InternalEvent for LocalCheckpointKept<'_> {
    fn emit(self, metrics: &Metrics) {
        let Self {
            partition,
            local,
            size,
            pause,
        } = self;
        metrics
            .checkpoint_size_bytes
            .get_or_create(&PartitionLabels { partition })
            .set(size as i64);
        tracing::info!(partition, id = local.id, next_offset = ?local.next_offset,
            size, pause_ms = pause.as_millis() as u64, "checkpoint created (local only)");
    }
}

/// A checkpoint's manifest was published (`dedup_checkpoint_uploads_total{result="success"}`,
/// upload duration, files and bytes uploaded and reused, size, remote age reset).
pub struct CheckpointUploaded<'a> {
    pub partition: i32,
    pub manifest: &'a CheckpointManifest,
    pub stats: &'a UploadStats,
    pub pause: Duration,
    pub seconds: f64,
    /// The final checkpoint of a partition being given up.
    pub last: bool,
}

impl InternalEvent for CheckpointUploaded<'_> {
    fn emit(self, metrics: &Metrics) {
        let Self {
            partition,
            manifest,
            stats,
            pause,
            seconds,
            last,
        } = self;
        metrics.checkpoint_upload_duration.observe(seconds);
        Metrics::count(&metrics.checkpoint_uploads, "success");
        let count = |family: &Family<KindLabels, Counter>, kind, value| {
            family.get_or_create(&KindLabels { kind }).inc_by(value);
        };
        count(
            &metrics.checkpoint_files,
            "uploaded",
            stats.files_uploaded as u64,
        );
        count(
            &metrics.checkpoint_files,
            "reused",
            stats.files_reused as u64,
        );
        count(&metrics.checkpoint_bytes, "uploaded", stats.bytes_uploaded);
        count(&metrics.checkpoint_bytes, "reused", stats.bytes_reused);
        metrics
            .checkpoint_size_bytes
            .get_or_create(&PartitionLabels { partition })
            .set(manifest.size() as i64);
        metrics
            .checkpoint_remote_age
            .get_or_create(&PartitionLabels { partition })
            .set(0);
        tracing::info!(partition, id = manifest.checkpoint_id, next_offset = ?manifest.next_offset,
            kind = ?manifest.kind, files_uploaded = stats.files_uploaded,
            bytes_uploaded = stats.bytes_uploaded, files_reused = stats.files_reused,
            pause_ms = pause.as_millis() as u64, upload_seconds = seconds, last,
            "checkpoint uploaded");
    }
}

/// The partition was given up during the upload: no manifest was published
/// (`dedup_checkpoint_uploads_total{result="fenced"}`).
pub struct CheckpointUploadFenced<'a> {
    pub partition: i32,
    pub id: &'a str,
}

impl InternalEvent for CheckpointUploadFenced<'_> {
    fn emit(self, metrics: &Metrics) {
        Metrics::count(&metrics.checkpoint_uploads, "fenced");
        tracing::info!(
            partition = self.partition,
            id = self.id,
            "partition given up during the upload; no manifest published"
        );
    }
}

/// An upload failed; the next interval tries again
/// (`dedup_checkpoint_uploads_total{result="failure"}`).
pub struct CheckpointUploadFailed<'a> {
    pub partition: i32,
    pub id: &'a str,
    pub error: &'a dyn Display,
}

impl InternalEvent for CheckpointUploadFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        Metrics::count(&metrics.checkpoint_uploads, "failure");
        tracing::warn!(partition = self.partition, id = self.id, error = %self.error,
            "checkpoint upload failed; retried at the next interval");
    }
}

/// No broker will ever take a message (`reason`, from `is_permanent`) after `attempts`
/// tries: skipped, its offset committed (`dedup_publish_skipped_total{reason}`).
pub struct PublishSkipped<'a> {
    pub message: &'a OwnedMessage,
    pub error: &'a KafkaError,
    pub reason: &'static str,
    pub attempts: u32,
}

impl InternalEvent for PublishSkipped<'_> {
    fn emit(self, metrics: &Metrics) {
        let Self {
            message,
            error,
            reason,
            attempts,
        } = self;
        metrics
            .publish_skipped
            .get_or_create(&ReasonLabels { reason })
            .inc();
        tracing::error!(partition = message.partition(), offset = message.offset(), %error,
            attempts, reason, bytes = message.payload().map_or(0, <[u8]>::len),
            "the message can never be published; skipped (its offset is committed)");
    }
}

/// Another owner initialised the partition's transactional id: this producer is fenced
/// and leaves the partition's messages to it (`dedup_transactions_total{result="fenced"}`).
pub struct TransactionFenced<'a> {
    pub partition: i32,
    pub transactional_id: &'a str,
    pub error: &'a KafkaError,
}

impl InternalEvent for TransactionFenced<'_> {
    fn emit(self, metrics: &Metrics) {
        Metrics::count(&metrics.transactions, "fenced");
        tracing::error!(partition = self.partition, transactional_id = self.transactional_id, error = %self.error,
            "producer fenced: another owner took the partition; its messages are left to that owner");
    }
}

/// The ownership record (which partitions this pod owns, for its restorer) was written
/// (`dedup_owner_record_writes_total{result="success"}`).
pub struct OwnerRecordWritten<'a> {
    pub key: &'a str,
    pub partitions: &'a [i32],
}

impl InternalEvent for OwnerRecordWritten<'_> {
    fn emit(self, metrics: &Metrics) {
        Metrics::count(&metrics.owner_record_writes, "success");
        tracing::info!(key = self.key, partitions = ?self.partitions, "ownership record written");
    }
}

/// Writing the ownership record failed; retried after `backoff`, or superseded by a newer
/// assignment (`dedup_owner_record_writes_total{result="failure"}`).
pub struct OwnerRecordFailed<'a> {
    pub key: &'a str,
    pub error: &'a dyn Display,
    pub backoff: Duration,
}

impl InternalEvent for OwnerRecordFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        Metrics::count(&metrics.owner_record_writes, "failure");
        tracing::warn!(key = self.key, error = %self.error, backoff = ?self.backoff,
            "writing the ownership record failed; retrying");
    }
}

/// The final checkpoints of the partitions given up did not finish within
/// `FINAL_CHECKPOINT_TIMEOUT` and were cancelled
/// (`dedup_checkpoint_uploads_total{result="final_timed_out"}`).
pub struct FinalCheckpointsTimedOut<'a> {
    pub partitions: &'a [i32],
    pub timeout: Duration,
}

impl InternalEvent for FinalCheckpointsTimedOut<'_> {
    fn emit(self, metrics: &Metrics) {
        Metrics::count(&metrics.checkpoint_uploads, "final_timed_out");
        tracing::warn!(partitions = ?self.partitions, timeout = ?self.timeout,
            "final checkpoints not done within FINAL_CHECKPOINT_TIMEOUT; cancelled: the next owners restore older checkpoints and replay the rest");
    }
}

/// A message's outcome was lost (dropped without ack or nack, a bug): the partition's
/// offsets are not committed past it until a restart redelivers it
/// (`dedup_unacked_dropped_total`; the caller also reports the process not live).
pub struct MessageDroppedUnacked {
    pub partition: i32,
    pub offset: i64,
}

impl InternalEvent for MessageDroppedUnacked {
    fn emit(self, metrics: &Metrics) {
        metrics.unacked_dropped.inc();
        tracing::error!(
            partition = self.partition,
            offset = self.offset,
            "message dropped without ack or nack; the partition's offsets will not be committed past it until a restart redelivers it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn each_event_moves_its_metric() {
        let metrics = Metrics::new(&mut Registry::default());
        KafkaCallFailed {
            message: "consumer error",
            partition: None,
            error: &"broker down",
            level: Level::WARN,
        }
        .emit(&metrics);
        StoreCallFailed {
            message: "partition store write failed; retrying",
            partition: 1,
            error: &"disk full",
            failures: Some(1),
            level: Level::ERROR,
        }
        .emit(&metrics);
        for verdict in [Verdict::Unique, Verdict::Redelivery, Verdict::Duplicate] {
            MessageDecided {
                partition: 0,
                offset: 1,
                verdict,
                error: None,
            }
            .emit(&metrics);
        }
        MessageDecided {
            partition: 0,
            offset: 2,
            verdict: Verdict::Malformed {
                reason: "invalid_json",
                action: "dead_letter",
            },
            error: None,
        }
        .emit(&metrics);
        DeliveryPanicked {
            partition: 0,
            offset: 3,
            attempt: 1,
            panic: "bug",
        }
        .emit(&metrics);
        KeysEvicted {
            partition: 0,
            keys: 7,
            kind: "window",
            cutoff_ms: Some(0),
        }
        .emit(&metrics);
        RestoreFinished {
            partition: 0,
            local: None,
            outcome: &LoadOutcome::Finished(RestoreOutcome::Restored {
                checkpoint_id: "c".into(),
                next_offset: Some(10),
                bytes: 4096,
                files_resumed: 0,
                files_reused: 1,
                bytes_reused: 1024,
                skipped: vec![("newer".into(), "corrupt".into())],
            }),
            started: Instant::now(),
        }
        .emit(&metrics);

        assert_eq!(metrics.kafka_errors.get(), 1);
        assert_eq!(metrics.store_errors.get(), 1);
        assert_eq!(metrics.unique.get(), 1);
        assert_eq!(metrics.redelivery.get(), 1);
        assert_eq!(metrics.duplicate.get(), 1);
        let malformed = MalformedLabels {
            reason: "invalid_json",
            action: "dead_letter",
        };
        assert_eq!(metrics.malformed.get_or_create(&malformed).get(), 1);
        assert_eq!(metrics.delivery_panics.get(), 1);
        assert_eq!(
            metrics
                .evicted_keys
                .get_or_create(&KindLabels { kind: "window" })
                .get(),
            7
        );
        assert_eq!(
            metrics
                .restores
                .get_or_create(&crate::metrics::ResultLabels {
                    result: "restored_older"
                })
                .get(),
            1
        );
        assert_eq!(metrics.restore_bytes.get(), 4096);
        assert_eq!(metrics.restore_skipped_checkpoints.get(), 1);
    }

    #[test]
    fn checkpoint_ownership_and_publishing_events_move_their_metrics() {
        let metrics = Metrics::new(&mut Registry::default());
        let result = |family: &Family<crate::metrics::ResultLabels, Counter>, result| {
            family
                .get_or_create(&crate::metrics::ResultLabels { result })
                .get()
        };
        CheckpointFailed {
            partition: 0,
            message: "checkpoint creation failed",
            error: &"disk full",
        }
        .emit(&metrics);
        CheckpointCreated {
            pause: Duration::from_millis(5),
        }
        .emit(&metrics);
        CheckpointUploadFenced {
            partition: 0,
            id: "c1",
        }
        .emit(&metrics);
        CheckpointUploadFailed {
            partition: 0,
            id: "c2",
            error: &"timeout",
        }
        .emit(&metrics);
        FinalCheckpointsTimedOut {
            partitions: &[1, 2],
            timeout: Duration::from_secs(10),
        }
        .emit(&metrics);
        OwnerRecordWritten {
            key: "k",
            partitions: &[0],
        }
        .emit(&metrics);
        OwnerRecordFailed {
            key: "k",
            error: &"refused",
            backoff: Duration::from_secs(1),
        }
        .emit(&metrics);
        MessageDroppedUnacked {
            partition: 0,
            offset: 9,
        }
        .emit(&metrics);
        let message = OwnedMessage::new(
            Some(vec![0; 4]),
            None,
            "in".into(),
            rdkafka::Timestamp::NotAvailable,
            0,
            1,
            None,
        );
        PublishSkipped {
            message: &message,
            error: &KafkaError::Canceled,
            reason: "message_too_large",
            attempts: 3,
        }
        .emit(&metrics);

        assert_eq!(result(&metrics.checkpoints, "failure"), 1);
        assert_eq!(result(&metrics.checkpoints, "success"), 1);
        assert_eq!(result(&metrics.checkpoint_uploads, "fenced"), 1);
        assert_eq!(result(&metrics.checkpoint_uploads, "failure"), 1);
        assert_eq!(result(&metrics.checkpoint_uploads, "final_timed_out"), 1);
        assert_eq!(result(&metrics.owner_record_writes, "success"), 1);
        assert_eq!(result(&metrics.owner_record_writes, "failure"), 1);
        assert_eq!(metrics.unacked_dropped.get(), 1);
        assert_eq!(
            metrics
                .publish_skipped
                .get_or_create(&ReasonLabels {
                    reason: "message_too_large"
                })
                .get(),
            1
        );
    }
}
