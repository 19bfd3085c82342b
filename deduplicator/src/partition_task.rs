//! The task of one assigned partition, from assignment to its worker's end: open the
//! partition's output (exactly-once: its transactional producer, which fences the previous
//! owner first), get its store ready ([`crate::partition_restore`] when that is not done
//! in the rebalance callback), then run its [`PartitionWorker`]. The partition's fence
//! cancels each step.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dedup_core::store::PartitionStore;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use tokio::sync::{mpsc, watch};

use crate::context::Context;
use crate::internal_events::{InternalEvent, KafkaCallFailed};
use crate::kafka_context::{DedupConsumer, PartitionQueue};
use crate::message_tracker::PartitionTracker;
use crate::metrics::PartitionLabels;
use crate::output::PartitionOutput;
use crate::partition_restore::{prepare_store, Committed, Prepared};
use crate::partition_worker::{fenced, PartitionWorker, WorkerExit};
use crate::transactional_publisher::TransactionalPublisher;

/// A partition's transactional producer that cannot be initialised is tried again after
/// this times the failures so far (at most 20 times it: 10 s).
const TRANSACTIONS_RETRY_STEP: Duration = Duration::from_millis(500);

/// The store of a partition, once it is ready (at once without a remote, after the
/// restore check with one).
pub(crate) type StoreSlot = Arc<OnceLock<Arc<PartitionStore>>>;

/// How a partition's worker gets its store.
pub(crate) enum Start {
    /// Opened and planned in the rebalance callback (no remote).
    Ready {
        store: Box<PartitionStore>,
        catch_up_until: Option<i64>,
    },
    /// Restore check, open (unless `opened`) and plan in the partition's task once
    /// assignment `generation` is applied.
    Prepare {
        generation: u64,
        opened: Option<Box<PartitionStore>>,
    },
}

/// Everything the partition's task needs.
pub(crate) struct PartitionTask {
    pub context: Arc<Context>,
    pub consumer: Arc<DedupConsumer>,
    pub topic: String,
    pub partition: i32,
    pub committed: Committed,
    pub queue: PartitionQueue,
    pub tracker: Arc<PartitionTracker>,
    pub fence: watch::Receiver<bool>,
    /// Messages of this partition that arrived on the consumer's main queue.
    pub stray: mpsc::UnboundedReceiver<OwnedMessage>,
    /// Where the ready store is published (for checkpoints and revocation).
    pub slot: StoreSlot,
    /// The newest assignment handed to the consumer.
    pub applied: watch::Receiver<u64>,
}

impl PartitionTask {
    /// Runs the partition until its worker ends; `start` says how its store gets ready.
    pub async fn run(mut self, start: Start) -> WorkerExit {
        // Exactly-once: initialise the partition's transactional id first, which fences
        // the previous owner and completes or aborts its open transaction; only then is
        // the committed offset read (in the preparation below).
        let Some(output) = self.open_output().await else {
            return WorkerExit { committable: None };
        };
        let Some((store, catch_up_until)) = self.ready_store(start).await else {
            return WorkerExit { committable: None };
        };
        let store = Arc::new(store);
        let _ = self.slot.set(Arc::clone(&store));
        let partition = self.partition;
        tracing::info!(
            partition,
            committed = ?self.committed,
            ?catch_up_until,
            "partition store ready; consuming"
        );
        PartitionWorker {
            topic: self.topic,
            partition,
            queue: self.queue,
            store,
            tracker: self.tracker,
            context: self.context,
            consumer: self.consumer,
            catch_up_until,
            fence: self.fence,
            output,
            finished: None,
        }
        .run(self.stray)
        .await
    }

    /// The partition's output; `None` when fenced first, or when the brokers refuse its
    /// transactional producer for good.
    async fn open_output(&self) -> Option<PartitionOutput> {
        let context = &self.context;
        if !context.config.exactly_once() {
            return Some(PartitionOutput::at_least_once(
                Arc::clone(&context.publisher),
                Arc::clone(&context.metrics),
                context.config.publish_max_attempts,
            ));
        }
        let mut fence = self.fence.clone();
        tokio::select! {
            biased;
            _ = fenced(&mut fence) => None,
            started = start_transactions(context, self.partition) => {
                started.map(PartitionOutput::exactly_once)
            }
        }
    }

    /// The partition's store and catch-up bound; `None` when fenced first, or when the
    /// preparation gave up (it reports why).
    async fn ready_store(&mut self, start: Start) -> Option<(PartitionStore, Option<i64>)> {
        let (generation, opened) = match start {
            Start::Ready {
                store,
                catch_up_until,
            } => return Some((*store, catch_up_until)),
            Start::Prepare { generation, opened } => (generation, opened),
        };
        let mut fence = self.fence.clone();
        let (context, consumer, topic, partition) =
            (&self.context, &self.consumer, &self.topic, self.partition);
        let applied = &mut self.applied;
        let prepared = tokio::select! {
            biased;
            _ = fenced(&mut fence) => None,
            prepared = async {
                // Pausing or seeking needs the partition assigned first.
                let _ = applied.wait_for(|g| *g >= generation).await;
                prepare_store(context, consumer, topic, partition, self.committed, opened.map(|s| *s)).await
            } => prepared,
        };
        let Prepared {
            store,
            catch_up_until,
            committed,
        } = prepared?;
        if let Some(committed) = committed {
            self.tracker.raise_floor(committed);
            context
                .metrics
                .committed_offset
                .get_or_create(&PartitionLabels { partition })
                .set(committed);
        }
        Some((store, catch_up_until))
    }
}

/// The partition's transactional producer, retried until the brokers answer (the caller
/// drops this future when the partition is revoked first). A fatal error (brokers
/// without transactions, a transactional id this client may not use) is not retried as
/// if it were transient: `None`, and the process is not live, with the error as reason.
async fn start_transactions(
    context: &Arc<Context>,
    partition: i32,
) -> Option<TransactionalPublisher> {
    let mut failures = 0u32;
    loop {
        match TransactionalPublisher::start(
            &context.config,
            partition,
            Arc::clone(&context.metrics),
        )
        .await
        {
            Ok(transactions) => return Some(transactions),
            Err(KafkaError::Transaction(error)) if error.is_fatal() => {
                KafkaCallFailed {
                    message: "the brokers refuse this partition's transactional producer (do they support transactions, and may this client use the transactional id?); OUTPUT_GUARANTEE=exactly-once cannot work, the partition is not consumed",
                    partition: Some(partition),
                    error: &error,
                    level: tracing::Level::ERROR,
                }
                .emit(&context.metrics);
                context.health.set_not_live(format!(
                    "partition {partition}: exactly-once output refused by the brokers: {error}"
                ));
                return None;
            }
            Err(error) => {
                failures += 1;
                KafkaCallFailed {
                    message: "cannot initialise the partition's transactional producer; retrying",
                    partition: Some(partition),
                    error: &format!("{error} (failures: {failures})"),
                    level: tracing::Level::ERROR,
                }
                .emit(&context.metrics);
                tokio::time::sleep(TRANSACTIONS_RETRY_STEP * failures.min(20)).await;
            }
        }
    }
}
