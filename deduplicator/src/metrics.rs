//! The deduplicator's Prometheus metrics, registered once and shared by every task.
//! Names are prefixed `dedup_`; label values are fixed small sets (plus the partition).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// unique, duplicate, redelivery
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MalformedLabels {
    /// The parse error kind (not_json, missing_field, …).
    pub reason: &'static str,
    /// dead_letter or pass_through
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

pub struct Metrics {
    pub messages_in: Counter,
    pub events: Family<OutcomeLabels, Counter>,
    /// The `events` counters of each outcome, resolved once: they are counted per
    /// message, and a cloned counter shares its value.
    pub unique: Counter,
    pub duplicate: Counter,
    pub redelivery: Counter,
    pub malformed: Family<MalformedLabels, Counter>,
    pub published: Counter,
    pub dead_lettered: Counter,
    pub catch_up_messages: Counter,
    /// Catch-up replays planned, by why: `behind` (a store behind the committed offset),
    /// `new_store` (an empty store rebuilding the window's keys).
    pub catch_up_replays: Family<KindLabels, Counter>,
    /// Messages no broker will take (too large, invalid), skipped after their attempts.
    pub publish_skipped: Family<ReasonLabels, Counter>,
    pub publish_retries: Counter,
    pub processing_latency: Histogram,
    pub in_flight: Gauge,
    pub unacked_dropped: Counter,
    pub abandoned_on_revoke: Counter,
    pub delivery_panics: Counter,
    pub store_size_bytes: Family<PartitionLabels, Gauge>,
    pub store_errors: Counter,
    pub evicted_keys: Family<KindLabels, Counter>,
    pub rebalances: Family<KindLabels, Counter>,
    pub assigned_partitions: Gauge,
    pub consumer_lag: Family<PartitionLabels, Gauge>,
    pub kafka_errors: Counter,
    pub committed_offset: Family<PartitionLabels, Gauge>,
    pub checkpoints: Family<ResultLabels, Counter>,
    pub checkpoint_duration: Histogram,
    pub checkpoint_size_bytes: Family<PartitionLabels, Gauge>,
    pub checkpoint_uploads: Family<ResultLabels, Counter>,
    pub checkpoint_upload_duration: Histogram,
    pub checkpoint_files: Family<KindLabels, Counter>,
    pub checkpoint_bytes: Family<KindLabels, Counter>,
    pub checkpoint_remote_age: Family<PartitionLabels, Gauge>,
    pub checkpoint_gc_deleted: Family<KindLabels, Counter>,
    pub restores: Family<ResultLabels, Counter>,
    pub restore_duration: Histogram,
    pub restore_bytes: Counter,
    pub restore_reused_bytes: Counter,
    pub restore_skipped_checkpoints: Counter,
    pub prefetches: Family<ResultLabels, Counter>,
    pub prefetch_downloaded_bytes: Counter,
    pub owner_record_writes: Family<ResultLabels, Counter>,
    pub transactions: Family<ResultLabels, Counter>,
    pub transaction_duration: Histogram,
    pub transaction_events: Histogram,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let events: Family<OutcomeLabels, Counter> = Family::default();
        let outcome = |outcome| events.get_or_create(&OutcomeLabels { outcome }).clone();
        let (unique, duplicate, redelivery) = (
            outcome("unique"),
            outcome("duplicate"),
            outcome("redelivery"),
        );
        let metrics = Self {
            messages_in: Counter::default(),
            events,
            unique,
            duplicate,
            redelivery,
            malformed: Family::default(),
            published: Counter::default(),
            dead_lettered: Counter::default(),
            catch_up_messages: Counter::default(),
            catch_up_replays: Family::default(),
            publish_skipped: Family::default(),
            publish_retries: Counter::default(),
            // 100 µs … ~13 s
            processing_latency: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            in_flight: Gauge::default(),
            unacked_dropped: Counter::default(),
            abandoned_on_revoke: Counter::default(),
            delivery_panics: Counter::default(),
            store_size_bytes: Family::default(),
            store_errors: Counter::default(),
            evicted_keys: Family::default(),
            rebalances: Family::default(),
            assigned_partitions: Gauge::default(),
            consumer_lag: Family::default(),
            kafka_errors: Counter::default(),
            committed_offset: Family::default(),
            checkpoints: Family::default(),
            // 1 ms … ~65 s
            checkpoint_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            checkpoint_size_bytes: Family::default(),
            checkpoint_uploads: Family::default(),
            // 10 ms … ~22 min
            checkpoint_upload_duration: Histogram::new(exponential_buckets(0.01, 2.0, 18)),
            checkpoint_files: Family::default(),
            checkpoint_bytes: Family::default(),
            checkpoint_remote_age: Family::default(),
            checkpoint_gc_deleted: Family::default(),
            restores: Family::default(),
            restore_duration: Histogram::new(exponential_buckets(0.01, 2.0, 18)),
            restore_bytes: Counter::default(),
            restore_reused_bytes: Counter::default(),
            restore_skipped_checkpoints: Counter::default(),
            prefetches: Family::default(),
            prefetch_downloaded_bytes: Counter::default(),
            owner_record_writes: Family::default(),
            transactions: Family::default(),
            // 1 ms … ~65 s
            transaction_duration: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 1 … 65,536 messages
            transaction_events: Histogram::new(exponential_buckets(1.0, 2.0, 17)),
        };
        let r = registry.sub_registry_with_prefix("dedup");
        r.register(
            "messages_in",
            "Messages consumed from the input topic",
            metrics.messages_in.clone(),
        );
        r.register(
            "events",
            "Well-formed events by deduplication outcome",
            metrics.events.clone(),
        );
        r.register(
            "malformed",
            "Messages without a deduplication key, by reason and action",
            metrics.malformed.clone(),
        );
        r.register(
            "published",
            "Messages published to the output topic and acknowledged by Kafka",
            metrics.published.clone(),
        );
        r.register(
            "dead_lettered",
            "Messages published to the dead-letter topic",
            metrics.dead_lettered.clone(),
        );
        r.register(
            "catch_up_messages",
            "Messages replayed into a store without publishing (catch-up)",
            metrics.catch_up_messages.clone(),
        );
        r.register(
            "catch_up_replays",
            "Catch-up replays planned at assignment, by reason (behind, new_store)",
            metrics.catch_up_replays.clone(),
        );
        r.register(
            "publish_skipped",
            "Messages skipped because no broker will ever take them, by reason",
            metrics.publish_skipped.clone(),
        );
        r.register(
            "publish_retries",
            "Failed publish attempts that were retried",
            metrics.publish_retries.clone(),
        );
        r.register(
            "processing_latency_seconds",
            "Time from receipt of a message to its final outcome",
            metrics.processing_latency.clone(),
        );
        r.register(
            "in_flight_messages",
            "Messages received whose outcome is not yet final",
            metrics.in_flight.clone(),
        );
        r.register(
            "unacked_dropped",
            "Messages dropped without ack or nack (a bug: their offsets are never committed until a restart; the process reports not live)",
            metrics.unacked_dropped.clone(),
        );
        r.register(
            "delivery_panics",
            "Deliveries that panicked (a bug); the message is published again, up to PUBLISH_MAX_ATTEMPTS times",
            metrics.delivery_panics.clone(),
        );
        r.register(
            "abandoned_on_revoke",
            "In-flight messages given up when a drain timed out (redelivered to the next owner)",
            metrics.abandoned_on_revoke.clone(),
        );
        r.register(
            "store_size_bytes",
            "Live SST bytes of each partition store",
            metrics.store_size_bytes.clone(),
        );
        r.register(
            "store_errors",
            "Failed store operations (retried)",
            metrics.store_errors.clone(),
        );
        r.register(
            "evicted_keys",
            "Keys evicted from partition stores, by kind (window, capacity)",
            metrics.evicted_keys.clone(),
        );
        r.register(
            "rebalances",
            "Rebalance events, by kind (assign, revoke, lost: revoked because the group moved on without this member, error)",
            metrics.rebalances.clone(),
        );
        r.register(
            "assigned_partitions",
            "Partitions currently owned by this consumer",
            metrics.assigned_partitions.clone(),
        );
        r.register(
            "consumer_lag",
            "Messages between the committed offset and the end of each partition",
            metrics.consumer_lag.clone(),
        );
        r.register(
            "kafka_errors",
            "Errors reported by the Kafka client",
            metrics.kafka_errors.clone(),
        );
        r.register(
            "committed_offset",
            "Next offset stored for commit, per partition",
            metrics.committed_offset.clone(),
        );
        r.register(
            "checkpoints",
            "Local checkpoints created, by result (success, failure)",
            metrics.checkpoints.clone(),
        );
        r.register(
            "checkpoint_duration_seconds",
            "Time to create a local checkpoint, memtable flush included (writes wait this long)",
            metrics.checkpoint_duration.clone(),
        );
        r.register(
            "checkpoint_size_bytes",
            "Bytes of the newest checkpoint of each partition",
            metrics.checkpoint_size_bytes.clone(),
        );
        r.register(
            "checkpoint_uploads",
            "Checkpoint uploads by result (success, failure, fenced: partition lost before the manifest)",
            metrics.checkpoint_uploads.clone(),
        );
        r.register(
            "checkpoint_upload_duration_seconds",
            "Time to upload a checkpoint's files and manifest",
            metrics.checkpoint_upload_duration.clone(),
        );
        r.register(
            "checkpoint_files",
            "Checkpoint files by kind (uploaded, reused: already referenced remotely)",
            metrics.checkpoint_files.clone(),
        );
        r.register(
            "checkpoint_bytes",
            "Checkpoint bytes by kind (uploaded, reused)",
            metrics.checkpoint_bytes.clone(),
        );
        r.register(
            "checkpoint_remote_age_seconds",
            "Age of the newest remote checkpoint of each owned partition",
            metrics.checkpoint_remote_age.clone(),
        );
        r.register(
            "checkpoint_gc_deleted",
            "Remote objects deleted by checkpoint garbage collection, by kind (manifest, file)",
            metrics.checkpoint_gc_deleted.clone(),
        );
        r.register(
            "restores",
            "Restores on assignment by result (restored, restored_older, no_checkpoint, local_is_current, all_corrupt, remote_failed, timed_out, store_unreadable)",
            metrics.restores.clone(),
        );
        r.register(
            "restore_duration_seconds",
            "Time from assignment to a partition store ready after a restore check",
            metrics.restore_duration.clone(),
        );
        r.register(
            "restore_bytes",
            "Bytes of checkpoints restored",
            metrics.restore_bytes.clone(),
        );
        r.register(
            "restore_reused_bytes",
            "Bytes of restored checkpoints taken from an older copy on the volume instead of downloaded (a delta restore); included in restore_bytes",
            metrics.restore_reused_bytes.clone(),
        );
        r.register(
            "restore_skipped_checkpoints",
            "Remote checkpoints found corrupt or incomplete while restoring",
            metrics.restore_skipped_checkpoints.clone(),
        );
        r.register(
            "prefetches",
            "Checkpoints of partitions about to move here downloaded before the move (KAFKA_GROUP_PROTOCOL=consumer), by result (restored, restored_older, no_checkpoint, all_corrupt, remote_failed, timed_out, discarded, describe_failed)",
            metrics.prefetches.clone(),
        );
        r.register(
            "prefetch_downloaded_bytes",
            "Bytes downloaded by prefetches (the restore at assignment then downloads only the delta)",
            metrics.prefetch_downloaded_bytes.clone(),
        );
        r.register(
            "owner_record_writes",
            "Writes of this pod's ownership record, by result",
            metrics.owner_record_writes.clone(),
        );
        r.register(
            "transactions",
            "Output transactions (OUTPUT_GUARANTEE=exactly-once) by result (committed; aborted; fenced: another owner took the partition's transactional id; reinitialised: fenced while still the owner, e.g. the coordinator timed the transaction out; resumed: a commit call ran out and was called again)",
            metrics.transactions.clone(),
        );
        r.register(
            "transaction_duration_seconds",
            "Time from a transaction's first message to its commit",
            metrics.transaction_duration.clone(),
        );
        r.register(
            "transaction_events",
            "Messages consumed per committed transaction (their offsets commit with it)",
            metrics.transaction_events.clone(),
        );
        metrics
    }

    pub fn count(family: &Family<ResultLabels, Counter>, result: &'static str) {
        family.get_or_create(&ResultLabels { result }).inc();
    }
}
