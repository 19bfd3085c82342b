//! The task that owns one assigned partition: reads the partition's own queue, batches
//! messages, asks the partition store which are new, publishes them, and stores the
//! offset for commit once every earlier message of the partition is final.
//!
//! One task per partition, so a slow partition does not hold up the others; output
//! order within a partition follows input order because messages are enqueued to the
//! producer in consumption order. Deliveries complete concurrently with consumption,
//! bounded by `MAX_IN_FLIGHT_MESSAGES`.
//!
//! Messages below `catch_up_until` (the group's committed offset when the store was
//! behind it) are replayed into the store without being published: they were published
//! before, and the store must learn their keys.

use std::sync::Arc;
use std::time::Duration;

use dedup_core::event;
use dedup_core::store::{Outcome, PartitionStore};
use futures_util::FutureExt;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::context::Context;
use crate::kafka_context::{DedupConsumer, PartitionQueue};
use crate::message_tracker::{AckableMessage, PartitionTracker, Reservation};
use crate::metrics::{MalformedLabels, Metrics, PartitionLabels};
use crate::publisher::{forget_dead_lettered, Delivered, Target};
use crate::transactional_publisher::{TransactionError, TransactionalPublisher};

/// How a worker ended: the next offset to commit, if it moved.
#[derive(Debug, Clone, Copy)]
pub struct WorkerExit {
    pub committable: Option<i64>,
}

pub struct PartitionWorker {
    pub topic: String,
    pub partition: i32,
    pub queue: PartitionQueue,
    pub store: Arc<PartitionStore>,
    pub tracker: Arc<PartitionTracker>,
    pub context: Arc<Context>,
    pub consumer: Arc<DedupConsumer>,
    pub catch_up_until: Option<i64>,
    pub fence: watch::Receiver<bool>,
    /// Exactly-once: the partition's output transactions. Offsets then commit with them,
    /// never through the consumer.
    pub transactions: Option<TransactionalPublisher>,
    /// A finished offset not yet in the store: written with the next batch (no write of
    /// its own on the hot path), or when the worker ends.
    pub finished: Option<i64>,
}

impl PartitionWorker {
    /// Runs until fenced. `stray` carries messages of this partition that arrived on the
    /// consumer's main queue.
    pub async fn run(mut self, mut stray: mpsc::UnboundedReceiver<OwnedMessage>) -> WorkerExit {
        let mut fence = self.fence.clone();
        // Deliveries run as their own tasks: they complete (and give back in-flight room)
        // even while this task waits for room itself.
        let mut deliveries: JoinSet<()> = JoinSet::new();
        let mut stored: Option<i64> = None;
        let batch_size = self.context.config.batch_size as usize;
        loop {
            let commit_due = self.transactions.as_ref().and_then(|t| t.deadline());
            let first = tokio::select! {
                biased;
                _ = fenced(&mut fence) => break,
                _ = sleep_until(commit_due), if commit_due.is_some() => {
                    if !self.commit_transaction(None).await {
                        return self.fenced_out();
                    }
                    None
                }
                Some(done) = deliveries.join_next(), if !deliveries.is_empty() => {
                    if let Err(error) = done {
                        // Its message was dropped unacked: counted, and never committed.
                        tracing::error!(partition = self.partition, %error, "a delivery task failed");
                    }
                    None
                }
                Some(message) = stray.recv() => Some(message),
                received = self.queue.recv() => self.detach(received),
            };
            if let Some(first) = first {
                // Room for the message, unless the partition is fenced first: then it was
                // never tracked, nothing after it is committed, and the next owner gets it.
                let reservation = tokio::select! {
                    biased;
                    _ = fenced(&mut fence) => break,
                    reservation = self.context.tracker.reserve() => reservation,
                };
                // A batch never takes a transaction past TRANSACTION_MAX_MESSAGES.
                let batch_size = self
                    .transactions
                    .as_ref()
                    .map_or(batch_size, |t| t.room().min(batch_size));
                let mut batch = Vec::with_capacity(batch_size);
                batch.push((reservation, first));
                while batch.len() < batch_size {
                    let Some(reservation) = self.context.tracker.try_reserve() else {
                        break;
                    };
                    let Some(next) = self.queue.recv().now_or_never() else {
                        break;
                    };
                    if let Some(message) = self.detach(next) {
                        batch.push((reservation, message));
                    }
                }
                self.process(batch, &mut deliveries).await;
                if self.transactions.as_ref().is_some_and(|t| t.is_full())
                    && !self.commit_transaction(None).await
                {
                    return self.fenced_out();
                }
            }
            self.store_committable(&mut stored);
        }

        if self.transactions.is_some() {
            // Revoked: commit what is open, within the drain bound; past it, abort (the
            // next owner publishes those messages again, once).
            let give_up_at =
                std::time::Instant::now() + self.context.config.rebalance_drain_timeout;
            self.commit_transaction(Some(give_up_at)).await;
            self.write_finished();
            return WorkerExit { committable: None };
        }

        // Fenced: take nothing new, let in-flight deliveries finish within the bound.
        let deadline = tokio::time::Instant::now() + self.context.config.rebalance_drain_timeout;
        while !deliveries.is_empty() {
            match tokio::time::timeout_at(deadline, deliveries.join_next()).await {
                Ok(_) => self.store_committable(&mut stored),
                Err(_) => {
                    tracing::warn!(
                        partition = self.partition,
                        abandoned = deliveries.len(),
                        "drain timed out; in-flight messages will be redelivered to the next owner"
                    );
                    // Dropping them is abandonment (the tracker is fenced), not loss: their
                    // offsets are never committed.
                    deliveries.shutdown().await;
                    break;
                }
            }
        }
        self.store_committable(&mut stored);
        self.write_finished();
        WorkerExit {
            committable: self.tracker.committable(),
        }
    }

    /// Commits the open transaction; false if this process was fenced (another owner
    /// has the partition's transactional id), and the worker must stop.
    async fn commit_transaction(&mut self, give_up_at: Option<std::time::Instant>) -> bool {
        let Some(transactions) = self.transactions.as_mut() else {
            return true;
        };
        let result = transactions
            .commit(self.consumer.as_ref(), give_up_at)
            .await;
        let committed = transactions.committed_offset();
        match result {
            Ok(()) => {
                if let Some(next) = committed {
                    self.record_finished(next);
                }
                true
            }
            Err(TransactionError::Fenced { .. }) => false,
            Err(error @ TransactionError::Fatal { .. }) => {
                // Not retried as if it were transient: the process is restarted (not
                // live), and the partition's messages are consumed again from its
                // committed offset.
                tracing::error!(partition = self.partition, %error, "exactly-once output failed; this partition stops");
                self.context
                    .health
                    .set_not_live(format!("partition {}: {error}", self.partition));
                false
            }
            Err(error @ TransactionError::Deadline(_)) => {
                tracing::error!(partition = self.partition, %error, "transaction abandoned at revocation; the next owner publishes its messages");
                true
            }
        }
    }

    /// Fenced by a newer owner of the partition's transactional id: take nothing more,
    /// commit nothing; the rebalance that follows revokes the partition.
    fn fenced_out(&mut self) -> WorkerExit {
        self.write_finished();
        self.tracker.fence();
        self.context
            .health
            .set_not_ready("a partition's transactional producer was fenced");
        WorkerExit { committable: None }
    }

    fn detach(
        &self,
        received: Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>,
    ) -> Option<OwnedMessage> {
        match received {
            Ok(message) => Some(message.detach()),
            Err(error) => {
                self.context.metrics.kafka_errors.inc();
                tracing::warn!(partition = self.partition, %error, "error on the partition queue");
                None
            }
        }
    }

    async fn process(
        &mut self,
        batch: Vec<(Reservation, OwnedMessage)>,
        deliveries: &mut JoinSet<()>,
    ) {
        let context = Arc::clone(&self.context);
        let metrics = &context.metrics;
        metrics.messages_in.inc_by(batch.len() as u64);
        let Some(last_offset) = batch.last().map(|(_, m)| m.offset()) else {
            return;
        };
        let messages: Vec<(AckableMessage, OwnedMessage)> = batch
            .into_iter()
            .map(|(reservation, message)| {
                (self.tracker.track(message.offset(), reservation), message)
            })
            .collect();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let skew = self.context.config.max_event_time_skew;
        let parsed: Vec<_> = messages
            .iter()
            .map(|(_, message)| {
                event::stored_key(message.payload())
                    .and_then(|key| event::within_skew(key, now_ms, skew))
            })
            .collect();
        let keyed: Vec<_> = parsed
            .iter()
            .zip(&messages)
            .filter_map(|(key, (_, message))| key.as_ref().ok().map(|k| (*k, message.offset())))
            .collect();
        let Some(outcomes) = self.check_and_insert(keyed, last_offset + 1).await else {
            return; // fenced while the store was failing: the messages are abandoned
        };
        let consumed = messages.len();

        let publisher = &self.context.publisher;
        let mut outcomes = outcomes.into_iter();
        for ((ackable, message), key) in messages.into_iter().zip(parsed) {
            let stored_key = key.as_ref().ok().copied();
            let target = match key {
                Ok(_) => match outcomes.next() {
                    Some(Outcome::Unique) => {
                        metrics.unique.inc();
                        Some(Target::Output)
                    }
                    Some(Outcome::Redelivery) => {
                        metrics.redelivery.inc();
                        Some(Target::Output)
                    }
                    Some(Outcome::Duplicate { .. }) | None => {
                        metrics.duplicate.inc();
                        None
                    }
                },
                Err(error) => {
                    let reason = error.kind();
                    let action = if publisher.has_dead_letter() {
                        "dead_letter"
                    } else {
                        "pass_through"
                    };
                    metrics
                        .malformed
                        .get_or_create(&MalformedLabels { reason, action })
                        .inc();
                    tracing::debug!(partition = self.partition, offset = message.offset(), %error, action, "malformed message");
                    Some(if publisher.has_dead_letter() {
                        Target::DeadLetter { reason }
                    } else {
                        Target::Output
                    })
                }
            };
            if self
                .catch_up_until
                .is_some_and(|until| message.offset() < until)
            {
                metrics.catch_up_messages.inc();
                ackable.ack();
                continue;
            }
            let Some(target) = target else {
                ackable.ack();
                continue;
            };
            if let Some(transactions) = self.transactions.as_mut() {
                // Final once the transaction commits; a failed commit publishes it again.
                let forget = stored_key
                    .filter(|_| target == Target::Output && publisher.has_dead_letter())
                    .map(|key| (Arc::clone(&self.store), key));
                transactions.publish(message, target, forget).await;
                ackable.ack();
                continue;
            }
            match publisher.enqueue(&message, target).await {
                None => ackable.ack(), // no output topic: deduplicate and count only
                Some(first) => {
                    let publisher = Arc::clone(publisher);
                    let metrics = Arc::clone(metrics);
                    let max_attempts = self.context.config.publish_max_attempts;
                    // Only an output message can end in the dead-letter topic by failing.
                    let forget = stored_key
                        .filter(|_| target == Target::Output && publisher.has_dead_letter())
                        .map(|key| (Arc::clone(&self.store), key));
                    deliveries.spawn(async move {
                        let mut first = Some(first);
                        let (publisher, message) = (&publisher, &message);
                        let delivered = deliver_surviving_panics(
                            |_| {
                                let first = first.take();
                                async move {
                                    let attempt = match first {
                                        Some(first) => first,
                                        None => publisher
                                            .enqueue(message, target)
                                            .await
                                            .unwrap_or(Err(KafkaError::Canceled)),
                                    };
                                    publisher.deliver(message, target, attempt).await
                                }
                            },
                            max_attempts,
                            &metrics,
                            message,
                        )
                        .await;
                        match delivered {
                            Some(Delivered::Output | Delivered::Skipped) => ackable.ack(),
                            Some(Delivered::DeadLetter) => {
                                if let Some((store, key)) = forget {
                                    forget_dead_lettered(&store, &key, message);
                                }
                                ackable.nack()
                            }
                            // Dropped unacked: never committed past, and the process
                            // reports not live so that a restart redelivers it.
                            None => drop(ackable),
                        }
                    });
                }
            }
        }
        // Catch-up messages lie below the committed offset: committing their offsets
        // would move it back, and a crash would then publish them again.
        let past_catch_up = self
            .catch_up_until
            .is_none_or(|until| last_offset + 1 > until);
        if let Some(transactions) = self.transactions.as_mut().filter(|_| past_catch_up) {
            transactions.consumed(last_offset + 1, consumed);
        }
    }

    /// The store call, retried with backoff while it fails (a full disk, say): nothing
    /// is published or committed meanwhile. `None` if the partition is fenced first. It
    /// runs on a blocking thread, off the async workers (RocksDB reads and writes, and
    /// a checkpoint's flush that holds the store's write lock, can take milliseconds);
    /// it carries the pending finished offset into the same write.
    async fn check_and_insert(
        &mut self,
        keyed: Vec<(dedup_core::StoredKey, i64)>,
        next: i64,
    ) -> Option<Vec<Outcome>> {
        let mut failures = 0u32;
        let mut keyed = keyed;
        loop {
            let store = Arc::clone(&self.store);
            let finished = self.finished;
            let call = tokio::task::spawn_blocking(move || {
                let result = store.check_and_insert_finishing(&keyed, next, finished);
                (keyed, result)
            })
            .await;
            let error: dedup_core::StoreError = match call {
                Ok((_, Ok(outcomes))) => {
                    if failures > 0 {
                        tracing::info!(partition = self.partition, "partition store recovered");
                        self.context.store_recovered(self.partition);
                    }
                    if self.finished == finished {
                        self.finished = None;
                    }
                    return Some(outcomes);
                }
                Ok((returned, Err(error))) => {
                    keyed = returned;
                    error
                }
                // The blocking pool refused or the call panicked: the batch is not
                // decided, and nothing of it is published or committed.
                Err(error) => {
                    tracing::error!(partition = self.partition, %error, "partition store call failed; its messages are abandoned to a restart");
                    self.context.health.set_not_live(format!(
                        "partition {}: store call failed: {error}",
                        self.partition
                    ));
                    return None;
                }
            };
            failures += 1;
            self.context.metrics.store_errors.inc();
            tracing::error!(partition = self.partition, %error, failures, "partition store write failed; retrying");
            self.context.store_failed(self.partition, &error);
            let pause = Duration::from_millis(200 * u64::from(failures.min(25)));
            let mut fence = self.fence.clone();
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = fenced(&mut fence) => return None,
            }
        }
    }

    /// Tells the store that every message below `next` is finished, so that a restart
    /// without a committed offset (a new group, expired offsets) resumes there and not
    /// at the store's next offset, below which messages may not have been published.
    /// Held until the next batch's write (or the worker's end): the store's finished
    /// offset may lag one batch behind, which resumes earlier, never later.
    fn record_finished(&mut self, next: i64) {
        self.finished = Some(next);
    }

    /// Writes a finished offset still held (the worker ends).
    fn write_finished(&mut self) {
        let Some(next) = self.finished.take() else {
            return;
        };
        if let Err(error) = self.store.record_finished_offset(next) {
            self.context.metrics.store_errors.inc();
            tracing::warn!(partition = self.partition, %error, "cannot record the finished offset in the store");
        }
    }

    fn store_committable(&mut self, stored: &mut Option<i64>) {
        if self.transactions.is_some() {
            return; // offsets commit inside the transactions
        }
        let Some(next) = self.tracker.committable() else {
            return;
        };
        if *stored == Some(next) {
            return;
        }
        let mut offsets = TopicPartitionList::new();
        if let Err(error) =
            offsets.add_partition_offset(&self.topic, self.partition, Offset::Offset(next))
        {
            tracing::warn!(partition = self.partition, %error, "could not build the offset list");
            return;
        }
        match self.consumer.store_offsets(&offsets) {
            Ok(()) => {
                *stored = Some(next);
                self.record_finished(next);
                self.context
                    .metrics
                    .committed_offset
                    .get_or_create(&PartitionLabels {
                        partition: self.partition,
                    })
                    .set(next);
            }
            Err(error) => {
                tracing::warn!(partition = self.partition, %error, "storing the offset failed")
            }
        }
    }
}

/// Runs `deliver` (one publication of `message`, with its own retries) and, when it
/// panics (a bug: the outcome is unknown), publishes the message again, up to
/// `max_attempts` panics: at-least-once, an original may go out twice, nothing is lost.
/// `None` once every attempt panicked. A panic must not drop the message's ack silently,
/// which would freeze the partition's commits while its pending offsets grow.
pub(crate) async fn deliver_surviving_panics<F, Fut>(
    mut deliver: F,
    max_attempts: u32,
    metrics: &Metrics,
    message: &OwnedMessage,
) -> Option<Delivered>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Delivered>,
{
    for attempt in 1..=max_attempts.max(1) {
        match std::panic::AssertUnwindSafe(deliver(attempt))
            .catch_unwind()
            .await
        {
            Ok(delivered) => return Some(delivered),
            Err(panic) => {
                metrics.delivery_panics.inc();
                let panic = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(
                    partition = message.partition(),
                    offset = message.offset(),
                    attempt,
                    panic,
                    "a delivery panicked (a bug); publishing the message again"
                );
            }
        }
    }
    None
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Completes once the partition is fenced (or its handle is gone).
pub(crate) async fn fenced(fence: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here, not in the caller.
    let _ = fence.wait_for(|fenced| *fenced).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;
    use rdkafka::Timestamp;

    fn message() -> OwnedMessage {
        OwnedMessage::new(
            None,
            None,
            "in".into(),
            Timestamp::NotAvailable,
            3,
            42,
            None,
        )
    }

    #[tokio::test]
    async fn a_delivery_that_panics_is_published_again() {
        let metrics = Metrics::new(&mut Registry::default());
        let mut calls = 0;
        let delivered = deliver_surviving_panics(
            |attempt| {
                calls += 1;
                async move {
                    if attempt == 1 {
                        panic!("a bug in the first delivery");
                    }
                    Delivered::Output
                }
            },
            5,
            &metrics,
            &message(),
        )
        .await;
        assert_eq!(delivered, Some(Delivered::Output));
        assert_eq!(calls, 2);
        assert_eq!(metrics.delivery_panics.get(), 1);
    }

    #[tokio::test]
    async fn a_delivery_that_always_panics_gives_up_after_its_attempts() {
        let metrics = Metrics::new(&mut Registry::default());
        let delivered = deliver_surviving_panics(
            |_| async { panic!("a bug in every delivery") },
            3,
            &metrics,
            &message(),
        )
        .await;
        assert_eq!(delivered, None);
        assert_eq!(metrics.delivery_panics.get(), 3);
    }
}
