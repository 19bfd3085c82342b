//! The deduplicator: a stateful, partition-aware Kafka consumer that publishes each
//! event once, keeping per-partition state in RocksDB ([`dedup_core::store`]).
//!
//! - [`stateful_consumer`]: `StatefulKafkaConsumer`, the main loop and shutdown.
//! - [`kafka_context`]: the consumer type and its librdkafka callbacks (rebalances,
//!   statistics, errors).
//! - [`rebalance_handler`]: `RebalanceHandler`, partition assignment and revocation.
//! - [`partition_restore`]: restore-on-assignment and where a partition starts.
//! - [`partition_task`]: an assigned partition's task: its output, its store, its worker.
//! - [`partition_worker`]: the loop that owns one partition's messages.
//! - [`routing`]: where one message goes (unique, copy, malformed, catch-up), without I/O.
//! - [`output`]: `PartitionOutput`, one interface over at-least-once deliveries and
//!   exactly-once transactions.
//! - [`checkpoint_exporter`]: `CheckpointExporter`, periodic checkpoints and uploads, and
//!   the final one of a partition given up.
//! - [`handoff_prefetch`] and [`target_assignment`]: warm handoff, the checkpoints of
//!   partitions about to move here downloaded before the move (KIP-848 groups).
//! - [`ownership_record`]: which partitions this pod owns, for its restorer.
//! - [`message_tracker`]: `MessageTracker`, ackable messages and in-order commits.
//! - [`publisher`]: output and dead-letter producer.
//! - [`transactional_publisher`]: `TransactionalPublisher`, exactly-once output: one
//!   transaction per partition carrying its output and its consumed offsets.
//! - [`internal_events`]: each notable happening as a type whose `emit` logs and counts it.
//! - [`config`], [`metrics`], [`context`]: settings, Prometheus metrics, shared state.

pub mod checkpoint_exporter;
pub mod config;
pub mod context;
pub mod handoff_prefetch;
pub mod internal_events;
pub mod kafka_context;
pub mod message_tracker;
pub mod metrics;
pub mod output;
pub mod ownership_record;
pub mod partition_restore;
pub mod partition_task;
pub mod partition_worker;
pub mod publisher;
pub mod rebalance_handler;
pub mod routing;
pub mod stateful_consumer;
pub mod target_assignment;
pub mod transactional_publisher;

pub use config::Config;
pub use stateful_consumer::{run, run_with_metrics, RunError, StatefulKafkaConsumer};
