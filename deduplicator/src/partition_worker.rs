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
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::context::Context;
use crate::internal_events::{InternalEvent, KafkaCallFailed, MessageDecided, StoreCallFailed};
use crate::kafka_context::{DedupConsumer, PartitionQueue};
use crate::message_tracker::{AckableMessage, PartitionTracker, Reservation};
use crate::metrics::PartitionLabels;
use crate::output::{Drained, PartitionOutput};
use crate::routing::{route, Route};
use crate::transactional_publisher::TransactionError;

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
    /// Where decided messages are published (at-least-once or exactly-once).
    pub output: PartitionOutput,
    /// A finished offset not yet in the store: written with the next batch (no write of
    /// its own on the hot path), or when the worker ends.
    pub finished: Option<i64>,
}

impl PartitionWorker {
    /// Runs until fenced. `stray` carries messages of this partition that arrived on the
    /// consumer's main queue.
    pub async fn run(mut self, mut stray: mpsc::UnboundedReceiver<OwnedMessage>) -> WorkerExit {
        let mut fence = self.fence.clone();
        let mut stored: Option<i64> = None;
        let batch_size = self.context.config.batch_size as usize;
        loop {
            let commit_due = self.output.commit_due();
            let first = tokio::select! {
                biased;
                _ = fenced(&mut fence) => break,
                _ = sleep_until(commit_due), if commit_due.is_some() => {
                    if !self.commit_output(None).await {
                        return self.fenced_out();
                    }
                    None
                }
                _ = self.output.delivery_finished(self.partition) => None,
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
                let batch_size = self.output.batch_limit(batch_size);
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
                self.process(batch).await;
                if self.output.commit_is_due_by_size() && !self.commit_output(None).await {
                    return self.fenced_out();
                }
            }
            self.store_committable(&mut stored);
        }

        // Fenced: take nothing new. What is open commits (exactly-once: past the bound it
        // is aborted, and the next owner publishes those messages again, once); in-flight
        // deliveries finish within the bound (at-least-once: past it they are abandoned,
        // never committed, and the next owner publishes them again).
        let drain_timeout = self.context.config.rebalance_drain_timeout;
        self.commit_output(Some(std::time::Instant::now() + drain_timeout))
            .await;
        if let Drained::Abandoned(abandoned) = self
            .output
            .drain(tokio::time::Instant::now() + drain_timeout)
            .await
        {
            tracing::warn!(
                partition = self.partition,
                abandoned,
                "drain timed out; in-flight messages will be redelivered to the next owner"
            );
        }
        self.store_committable(&mut stored);
        self.write_finished();
        WorkerExit {
            committable: if self.output.commits_offsets() {
                None
            } else {
                self.tracker.committable()
            },
        }
    }

    /// Commits what the output holds open; false if this process was fenced (another
    /// owner has the partition's transactional id), and the worker must stop.
    async fn commit_output(&mut self, give_up_at: Option<std::time::Instant>) -> bool {
        match self.output.commit(self.consumer.as_ref(), give_up_at).await {
            Ok(committed) => {
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
                KafkaCallFailed {
                    message: "error on the partition queue",
                    partition: Some(self.partition),
                    error: &error,
                    level: tracing::Level::WARN,
                }
                .emit(&self.context.metrics);
                None
            }
        }
    }

    /// Decides a batch (its keys checked and inserted in one store call) and carries out
    /// each message's [`route`](crate::routing::route).
    async fn process(&mut self, batch: Vec<(Reservation, OwnedMessage)>) {
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

        let has_dead_letter = self.context.publisher.has_dead_letter();
        let mut outcomes = outcomes.into_iter();
        for ((ackable, message), key) in messages.into_iter().zip(parsed) {
            let outcome = if key.is_ok() { outcomes.next() } else { None };
            let decision = route(
                &key,
                outcome,
                message.offset(),
                self.catch_up_until,
                has_dead_letter,
            );
            MessageDecided {
                partition: self.partition,
                offset: message.offset(),
                verdict: decision.verdict,
                error: key.as_ref().err(),
            }
            .emit(metrics);
            match decision.route {
                Route::CatchUp => {
                    metrics.catch_up_messages.inc();
                    ackable.ack();
                }
                Route::Drop => ackable.ack(),
                Route::Publish {
                    target,
                    forget_key_if_dead_lettered,
                } => {
                    let forget =
                        forget_key_if_dead_lettered.map(|key| (Arc::clone(&self.store), key));
                    self.output.publish(message, target, forget, ackable).await;
                }
            }
        }
        // Catch-up messages lie below the committed offset: committing their offsets
        // would move it back, and a crash would then publish them again.
        if self
            .catch_up_until
            .is_none_or(|until| last_offset + 1 > until)
        {
            self.output.consumed(last_offset + 1, consumed);
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
            StoreCallFailed {
                message: "partition store write failed; retrying",
                partition: self.partition,
                error: &error,
                failures: Some(failures),
                level: tracing::Level::ERROR,
            }
            .emit(&self.context.metrics);
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
            StoreCallFailed {
                message: "cannot record the finished offset in the store",
                partition: self.partition,
                error: &error,
                failures: None,
                level: tracing::Level::WARN,
            }
            .emit(&self.context.metrics);
        }
    }

    fn store_committable(&mut self, stored: &mut Option<i64>) {
        if self.output.commits_offsets() {
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
