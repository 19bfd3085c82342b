//! Exactly-once output (`OUTPUT_GUARANTEE=exactly-once`): the messages a partition
//! publishes and the offsets it consumed commit together, in one Kafka transaction.
//!
//! - **One transactional producer per owned source partition**, with the
//!   `transactional.id` `{TRANSACTIONAL_ID_PREFIX}-{topic}-{partition}`: the same on every
//!   pod. A partition's new owner initialises that id, which aborts whatever the previous
//!   owner left open and fences it: its next send or commit fails, and it stops.
//! - **A transaction** starts with the first message consumed after the previous commit
//!   and commits after `TRANSACTION_MAX_MESSAGES` messages or `TRANSACTION_MAX_DURATION`,
//!   whichever comes first, and when the partition is revoked. The consumed offsets go
//!   into it (`send_offsets_to_transaction`, with the consumer's group metadata, so a
//!   zombie of an older group generation is fenced as well).
//! - **Errors:** a retriable failure retries the commit; an abortable one aborts the
//!   transaction and publishes its messages again in a new one (they are kept until the
//!   commit); a fatal one recreates the producer. Being fenced ends the partition's work
//!   here: its offsets are not committed, and the new owner consumes the messages.
//! - **With the store:** a crash or an abort leaves the store knowing keys whose output was
//!   never committed. Their messages come back at their own offsets, so the store calls
//!   them redeliveries, and they are published again in the new transaction; copies at
//!   other offsets are still dropped (DESIGN's offset-of-first-occurrence rule).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::publisher::{backoff, client_id, is_permanent, report_skipped, send, Target};

/// A partition's output transactions.
pub struct TransactionalPublisher {
    producer: Arc<FutureProducer>,
    client: ClientConfig,
    transactional_id: String,
    source_topic: String,
    partition: i32,
    output_topic: String,
    dead_letter_topic: Option<String>,
    max_messages: usize,
    max_duration: Duration,
    call_timeout: Duration,
    metrics: Arc<Metrics>,
    open: Option<OpenTransaction>,
    /// The offset the newest committed transaction committed.
    committed_offset: Option<i64>,
}

struct OpenTransaction {
    started: Instant,
    /// Published in it; kept to be published again in a new transaction after an abort.
    records: Vec<(OwnedMessage, Target)>,
    /// Messages consumed in it: their offsets commit with it.
    consumed: usize,
    /// The offset to commit: every message before it is decided.
    next_offset: i64,
    /// A send failed, so the transaction must abort.
    failed: Option<KafkaError>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    #[error("fenced: another producer initialised the transactional id {transactional_id} (the partition has a new owner): {source}")]
    Fenced {
        transactional_id: String,
        #[source]
        source: KafkaError,
    },
    #[error("the transaction did not commit before the deadline; it is aborted: {0}")]
    Deadline(#[source] KafkaError),
}

/// What to do about a failed transactional call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// Call again, same transaction.
    Retry,
    /// Abort, then publish the transaction's messages again in a new one.
    Abort,
    /// The producer is unusable: make a new one (which aborts the open transaction).
    Fatal,
    /// Another producer owns the transactional id now.
    Fenced,
}

fn classify(error: &KafkaError) -> Failure {
    let fenced = |code: RDKafkaErrorCode| {
        matches!(
            code,
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    };
    match error {
        KafkaError::Transaction(e) if fenced(e.code()) => Failure::Fenced,
        KafkaError::Transaction(e) if e.is_fatal() => Failure::Fatal,
        KafkaError::Transaction(e) if e.txn_requires_abort() => Failure::Abort,
        KafkaError::Transaction(e) if e.is_retriable() => Failure::Retry,
        KafkaError::Transaction(_) => Failure::Abort,
        KafkaError::MessageProduction(code) if fenced(*code) => Failure::Fenced,
        // A message that could not be enqueued: its transaction cannot commit whole.
        KafkaError::MessageProduction(_) => Failure::Abort,
        // Flush timeouts, a cancelled call, no group metadata yet: try again.
        _ => Failure::Retry,
    }
}

impl TransactionalPublisher {
    /// Creates the partition's transactional producer and initialises its id (which
    /// fences any earlier producer of the id and aborts its open transaction).
    pub async fn start(
        config: &Config,
        partition: i32,
        metrics: Arc<Metrics>,
    ) -> Result<Self, KafkaError> {
        let transactional_id = config.transactional_id(partition);
        let mut client = ClientConfig::new();
        client
            .set("transactional.id", &transactional_id)
            .set(
                "transaction.timeout.ms",
                config.transaction_timeout.as_millis().to_string(),
            )
            .set("linger.ms", "5")
            .set(
                "client.id",
                client_id(config, &format!("producer-{partition}")),
            );
        for (key, value) in config.kafka_client_properties() {
            client.set(key, value);
        }
        for (key, value) in &config.kafka_producer_properties.0 {
            client.set(key, value);
        }
        let call_timeout = config.transaction_timeout;
        let producer = init(&client, call_timeout).await?;
        tracing::info!(
            partition,
            transactional_id,
            "transactional producer ready; earlier owners of the id are fenced"
        );
        Ok(Self {
            producer,
            client,
            transactional_id,
            source_topic: config.kafka_consumer_topic.clone(),
            partition,
            output_topic: config.output_topic.clone().unwrap_or_default(),
            dead_letter_topic: config.dead_letter_topic.clone(),
            max_messages: config.transaction_max_messages as usize,
            max_duration: config.transaction_max_duration,
            call_timeout,
            metrics,
            open: None,
            committed_offset: None,
        })
    }

    /// The offset the newest committed transaction committed: every message below it is
    /// final.
    pub fn committed_offset(&self) -> Option<i64> {
        self.committed_offset
    }

    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// Publishes `message` to `target` in the open transaction (opening one if needed).
    /// A failure surfaces at the commit, which then aborts and publishes again.
    pub async fn publish(&mut self, message: OwnedMessage, target: Target) {
        // Begun before the first send: librdkafka refuses a send outside a transaction.
        self.open(message.offset());
        let topic = match (target, &self.dead_letter_topic) {
            (Target::DeadLetter { .. }, Some(topic)) => topic,
            _ => &self.output_topic,
        };
        let sent = send(&self.producer, &message, topic, target).await;
        if let Err(error) = &sent {
            if let Some(reason) = is_permanent(error) {
                // Refused before it was sent (larger than the producer's message.max.bytes):
                // no retry or abort can mend it, and aborting would only repeat it.
                report_skipped(&self.metrics, &message, error, reason, 1);
                self.open(message.offset());
                return;
            }
        }
        let open = self.open(message.offset());
        if let Err(error) = sent {
            open.failed.get_or_insert(error);
        }
        open.records.push((message, target));
    }

    /// Counts `count` messages consumed up to `next_offset` (exclusive) into the open
    /// transaction, published or not (duplicates commit their offsets too). Never called
    /// for catch-up alone: offsets below the committed one must not be committed.
    pub fn consumed(&mut self, next_offset: i64, count: usize) {
        let open = self.open(next_offset - 1);
        open.consumed += count;
        open.next_offset = open.next_offset.max(next_offset);
    }

    /// When the open transaction must be committed by time.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.open
            .as_ref()
            .map(|open| tokio::time::Instant::from_std(open.started + self.max_duration))
    }

    /// Messages the open transaction (or the next one) can still take.
    pub fn room(&self) -> usize {
        let consumed = self.open.as_ref().map_or(0, |open| open.consumed);
        self.max_messages.saturating_sub(consumed).max(1)
    }

    /// True once the open transaction holds `TRANSACTION_MAX_MESSAGES` messages.
    pub fn is_full(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|open| open.consumed >= self.max_messages)
    }

    fn open(&mut self, first_offset: i64) -> &mut OpenTransaction {
        let producer = &self.producer;
        self.open.get_or_insert_with(|| OpenTransaction {
            started: Instant::now(),
            records: Vec::new(),
            consumed: 0,
            next_offset: first_offset,
            failed: producer.begin_transaction().err(),
        })
    }

    /// Commits the open transaction with its offsets, handling failures as the module
    /// documentation says, until it commits, the producer is fenced, or `give_up_at`
    /// passes (then the transaction is aborted: nothing of it is visible or committed).
    pub async fn commit<X: ConsumerContext + 'static>(
        &mut self,
        consumer: &impl Consumer<X>,
        give_up_at: Option<Instant>,
    ) -> Result<(), TransactionError> {
        let mut failures = 0u32;
        loop {
            let Some(open) = self.open.as_mut() else {
                return Ok(());
            };
            let result = match open.failed.take() {
                Some(error) => Err(error),
                None => self.try_commit(consumer).await,
            };
            let error = match result {
                Ok(()) => {
                    self.committed();
                    return Ok(());
                }
                Err(error) => error,
            };
            failures += 1;
            let failure = classify(&error);
            tracing::warn!(partition = self.partition, %error, ?failure, failures, "transaction commit failed");
            let recovered = match failure {
                Failure::Fenced => return Err(self.fenced(error)),
                Failure::Retry => Ok(()),
                // An abort that fails (other than by fencing) leaves a new producer.
                Failure::Abort => match self.abort_and_republish().await {
                    Err(e) if classify(&e) != Failure::Fenced => self.recreate().await,
                    other => other,
                },
                Failure::Fatal => self.recreate().await,
            };
            if let Err(e) = recovered {
                if classify(&e) == Failure::Fenced {
                    return Err(self.fenced(e));
                }
            }
            if give_up_at.is_some_and(|at| Instant::now() >= at) {
                self.abort().await;
                return Err(TransactionError::Deadline(error));
            }
            tokio::time::sleep(backoff(failures.min(6))).await;
        }
    }

    /// Aborts the open transaction (nothing of it is published or committed) and drops
    /// it; for a partition given up whose transaction cannot commit.
    async fn abort(&mut self) {
        if self.open.take().is_some() {
            let producer = Arc::clone(&self.producer);
            let timeout = self.call_timeout;
            let _ = blocking(move || producer.abort_transaction(timeout)).await;
            crate::metrics::Metrics::count(&self.metrics.transactions, "aborted");
        }
    }

    async fn try_commit<X: ConsumerContext + 'static>(
        &self,
        consumer: &impl Consumer<X>,
    ) -> Result<(), KafkaError> {
        let Some(open) = self.open.as_ref() else {
            return Ok(());
        };
        let Some(group) = consumer.group_metadata() else {
            return Err(KafkaError::Canceled);
        };
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(
            &self.source_topic,
            self.partition,
            Offset::Offset(open.next_offset),
        )?;
        let producer = Arc::clone(&self.producer);
        let timeout = self.call_timeout;
        blocking(move || {
            producer.send_offsets_to_transaction(&offsets, &group, timeout)?;
            producer.commit_transaction(timeout)
        })
        .await
    }

    fn committed(&mut self) {
        let Some(open) = self.open.take() else {
            return;
        };
        if open.consumed > 0 {
            self.committed_offset = Some(open.next_offset);
        }
        let metrics = &self.metrics;
        crate::metrics::Metrics::count(&metrics.transactions, "committed");
        metrics
            .transaction_duration
            .observe(open.started.elapsed().as_secs_f64());
        metrics.transaction_events.observe(open.consumed as f64);
        for (_, target) in &open.records {
            match target {
                Target::Output => metrics.published.inc(),
                Target::DeadLetter { .. } => metrics.dead_lettered.inc(),
            };
        }
        metrics
            .committed_offset
            .get_or_create(&crate::metrics::PartitionLabels {
                partition: self.partition,
            })
            .set(open.next_offset);
    }

    fn fenced(&mut self, source: KafkaError) -> TransactionError {
        self.open = None;
        crate::metrics::Metrics::count(&self.metrics.transactions, "fenced");
        tracing::error!(partition = self.partition, transactional_id = self.transactional_id, %source,
            "producer fenced: another owner took the partition; its messages are left to that owner");
        TransactionError::Fenced {
            transactional_id: self.transactional_id.clone(),
            source,
        }
    }

    /// Aborts the open transaction and publishes its messages again in a new one.
    async fn abort_and_republish(&mut self) -> Result<(), KafkaError> {
        let producer = Arc::clone(&self.producer);
        let timeout = self.call_timeout;
        let aborted = blocking(move || producer.abort_transaction(timeout)).await;
        crate::metrics::Metrics::count(&self.metrics.transactions, "aborted");
        aborted?;
        self.republish().await
    }

    /// A new producer for the id (after a fatal error), then the open transaction's
    /// messages again.
    async fn recreate(&mut self) -> Result<(), KafkaError> {
        tracing::warn!(
            partition = self.partition,
            "recreating the transactional producer"
        );
        self.producer = init(&self.client, self.call_timeout).await?;
        self.republish().await
    }

    async fn republish(&mut self) -> Result<(), KafkaError> {
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        self.producer.begin_transaction()?;
        open.started = Instant::now();
        open.failed = None;
        let records = std::mem::take(&mut open.records);
        for (message, target) in records {
            self.publish(message, target).await;
        }
        Ok(())
    }
}

/// Creates a transactional producer and initialises its id.
async fn init(client: &ClientConfig, timeout: Duration) -> Result<Arc<FutureProducer>, KafkaError> {
    let producer: Arc<FutureProducer> =
        Arc::new(client.create().map_err(crate::config::without_value)?);
    let initialising = Arc::clone(&producer);
    blocking(move || initialising.init_transactions(timeout)).await?;
    Ok(producer)
}

/// A blocking librdkafka call off the async workers.
async fn blocking(
    call: impl FnOnce() -> Result<(), KafkaError> + Send + 'static,
) -> Result<(), KafkaError> {
    tokio::task::spawn_blocking(call)
        .await
        .unwrap_or(Err(KafkaError::Canceled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_what_can_be_done() {
        assert_eq!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::ProducerFenced
            )),
            Failure::Fenced
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge
            )),
            Failure::Abort
        );
        assert_eq!(classify(&KafkaError::Canceled), Failure::Retry);
    }
}
