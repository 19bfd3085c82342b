//! Where a partition's decided messages are published: one interface over the two output
//! guarantees, so that the partition worker does not know which one it runs.
//!
//! - **At-least-once** ([`PartitionOutput::at_least_once`]): each message is enqueued to
//!   the shared producer in consumption order and its delivery completes on its own task
//!   (retries, the dead-letter topic, panics survived); its offset is acknowledged once
//!   it is final, and the worker stores the partition's committable offset for the
//!   consumer's commit.
//! - **Exactly-once** ([`PartitionOutput::exactly_once`]): messages go into the
//!   partition's open transaction, which commits their consumed offsets with them; the
//!   consumer commits nothing.

use std::sync::Arc;
use std::time::Instant;

use dedup_core::store::PartitionStore;
use dedup_core::StoredKey;
use futures_util::FutureExt;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::Message;
use tokio::task::JoinSet;

use crate::internal_events::{DeliveryPanicked, InternalEvent};
use crate::kafka_context::DedupConsumer;
use crate::message_tracker::AckableMessage;
use crate::metrics::Metrics;
use crate::publisher::{forget_dead_lettered, Delivered, Publisher, Target};
use crate::transactional_publisher::{TransactionError, TransactionalPublisher};

/// A partition's output.
pub struct PartitionOutput {
    inner: Inner,
}

enum Inner {
    AtLeastOnce(Deliveries),
    ExactlyOnce(Box<TransactionalPublisher>),
}

/// At-least-once deliveries in flight. They run as their own tasks: they complete (and
/// give back in-flight room) even while the worker waits for room itself.
struct Deliveries {
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
    max_attempts: u32,
    tasks: JoinSet<()>,
}

/// How the output's end went, for the worker's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every delivery finished (or nothing was in flight).
    Complete,
    /// The bound passed: this many deliveries were abandoned. Their offsets are never
    /// committed, so the next owner publishes them again.
    Abandoned(usize),
}

impl PartitionOutput {
    pub fn at_least_once(
        publisher: Arc<Publisher>,
        metrics: Arc<Metrics>,
        max_attempts: u32,
    ) -> Self {
        Self {
            inner: Inner::AtLeastOnce(Deliveries {
                publisher,
                metrics,
                max_attempts,
                tasks: JoinSet::new(),
            }),
        }
    }

    pub fn exactly_once(transactions: TransactionalPublisher) -> Self {
        Self {
            inner: Inner::ExactlyOnce(Box::new(transactions)),
        }
    }

    /// True when the output commits the consumed offsets itself (in its transactions):
    /// the worker then stores none for the consumer, and hands none back at revocation.
    pub fn commits_offsets(&self) -> bool {
        matches!(self.inner, Inner::ExactlyOnce(_))
    }

    /// When the output must be committed by time (an open transaction's age).
    pub fn commit_due(&self) -> Option<tokio::time::Instant> {
        match &self.inner {
            Inner::AtLeastOnce(_) => None,
            Inner::ExactlyOnce(transactions) => transactions.deadline(),
        }
    }

    /// The largest batch the output takes now: a batch never takes a transaction past
    /// `TRANSACTION_MAX_MESSAGES`.
    pub fn batch_limit(&self, batch_size: usize) -> usize {
        match &self.inner {
            Inner::AtLeastOnce(_) => batch_size,
            Inner::ExactlyOnce(transactions) => transactions.room().min(batch_size),
        }
    }

    /// True when the output must be committed by size (a full transaction).
    pub fn commit_is_due_by_size(&self) -> bool {
        match &self.inner {
            Inner::AtLeastOnce(_) => false,
            Inner::ExactlyOnce(transactions) => transactions.is_full(),
        }
    }

    /// Completes when a delivery task ends; pending while none is in flight. A failed
    /// task (its message was dropped unacked: counted, never committed) is logged.
    pub async fn delivery_finished(&mut self, partition: i32) {
        let Inner::AtLeastOnce(deliveries) = &mut self.inner else {
            return std::future::pending().await;
        };
        match deliveries.tasks.join_next().await {
            Some(Err(error)) => {
                tracing::error!(partition, %error, "a delivery task failed");
            }
            Some(Ok(())) => {}
            None => std::future::pending().await,
        }
    }

    /// Publishes one decided message to `target`, acknowledging `ackable` when it is final
    /// (at once for exactly-once: the transaction's commit makes it final, and a failed
    /// commit publishes it again). `forget`: the store and key of a unique event, forgotten
    /// if it ends in the dead-letter topic.
    pub async fn publish(
        &mut self,
        message: OwnedMessage,
        target: Target,
        forget: Option<(Arc<PartitionStore>, StoredKey)>,
        ackable: AckableMessage,
    ) {
        match &mut self.inner {
            Inner::ExactlyOnce(transactions) => {
                transactions.publish(message, target, forget).await;
                ackable.ack();
            }
            Inner::AtLeastOnce(deliveries) => {
                deliveries.publish(message, target, forget, ackable).await
            }
        }
    }

    /// Counts `count` consumed messages up to `next_offset` (exclusive) into the output's
    /// offsets. Never called for catch-up alone: offsets below the committed one must not
    /// be committed.
    pub fn consumed(&mut self, next_offset: i64, count: usize) {
        if let Inner::ExactlyOnce(transactions) = &mut self.inner {
            transactions.consumed(next_offset, count);
        }
    }

    /// Commits what the output holds open; returns the offset now committed with it, if
    /// any. `give_up_at` is set when the partition is being given up.
    pub async fn commit(
        &mut self,
        consumer: &DedupConsumer,
        give_up_at: Option<Instant>,
    ) -> Result<Option<i64>, TransactionError> {
        match &mut self.inner {
            Inner::AtLeastOnce(_) => Ok(None),
            Inner::ExactlyOnce(transactions) => {
                let result = transactions.commit(consumer, give_up_at).await;
                let committed = transactions.committed_offset();
                result.map(|()| committed)
            }
        }
    }

    /// Lets in-flight deliveries finish, up to `deadline`; past it they are dropped, which
    /// is abandonment (the partition's tracker is fenced), not loss.
    pub async fn drain(&mut self, deadline: tokio::time::Instant) -> Drained {
        let Inner::AtLeastOnce(deliveries) = &mut self.inner else {
            return Drained::Complete;
        };
        while !deliveries.tasks.is_empty() {
            if tokio::time::timeout_at(deadline, deliveries.tasks.join_next())
                .await
                .is_err()
            {
                let abandoned = deliveries.tasks.len();
                deliveries.tasks.shutdown().await;
                return Drained::Abandoned(abandoned);
            }
        }
        Drained::Complete
    }
}

impl Deliveries {
    async fn publish(
        &mut self,
        message: OwnedMessage,
        target: Target,
        forget: Option<(Arc<PartitionStore>, StoredKey)>,
        ackable: AckableMessage,
    ) {
        let first = match self.publisher.enqueue(&message, target).await {
            None => return ackable.ack(), // no output topic: deduplicate and count only
            Some(first) => first,
        };
        let publisher = Arc::clone(&self.publisher);
        let metrics = Arc::clone(&self.metrics);
        let max_attempts = self.max_attempts;
        self.tasks.spawn(async move {
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
                // Dropped unacked: never committed past, and the process reports not live
                // so that a restart redelivers it.
                None => drop(ackable),
            }
        });
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
                let panic = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                DeliveryPanicked {
                    partition: message.partition(),
                    offset: message.offset(),
                    attempt,
                    panic: &panic,
                }
                .emit(metrics);
            }
        }
    }
    None
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
