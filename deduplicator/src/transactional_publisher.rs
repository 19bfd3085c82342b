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
//! - **Errors:** a retriable failure retries the call that failed; a commit whose call
//!   timed out is resumed (`commit_transaction` again, never the offsets again, which
//!   librdkafka refuses as a conflicting call). An abortable one aborts the transaction
//!   and publishes its messages again in a new one (they are kept until the commit);
//!   a message the broker refused `PUBLISH_MAX_ATTEMPTS` times goes to the dead-letter
//!   topic, or is skipped when no broker will ever take it, so the abort loop ends. A
//!   fatal one recreates the producer.
//! - **Fenced:** the brokers say "fenced" both when a new owner initialised the id and
//!   when the coordinator aborted a transaction that outlived `TRANSACTION_TIMEOUT` (it
//!   bumps the epoch). While this member still holds the partition in the group's
//!   assignment, and is not giving it up, the producer is initialised again (at most
//!   [`MAX_REINITIALISATIONS`] times per commit) and the messages published again.
//!   Otherwise fencing ends the partition's work here: its offsets are not committed,
//!   and the new owner consumes the messages.
//! - **With the store:** a crash or an abort leaves the store knowing keys whose output was
//!   never committed. Their messages come back at their own offsets, so the store calls
//!   them redeliveries, and they are published again in the new transaction; copies at
//!   other offsets are still dropped (DESIGN's offset-of-first-occurrence rule).

use std::sync::Arc;
use std::time::{Duration, Instant};

use dedup_core::store::PartitionStore;
use dedup_core::StoredKey;
use futures_util::FutureExt;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{DeliveryFuture, FutureProducer, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::config::Config;
use crate::internal_events::{InternalEvent, PublishSkipped, TransactionFenced};
use crate::metrics::Metrics;
use crate::publisher::{
    after_failure, backoff, client_id, forget_dead_lettered, is_permanent, report_dead_lettered,
    send, AfterFailure, Target,
};

/// The pause before a commit whose call timed out is resumed.
const RESUME_PAUSE: Duration = Duration::from_millis(50);

/// How often one commit may initialise the producer again after being fenced while the
/// partition is still assigned here, before it takes the fencing as final; and how many
/// fatal errors in a row, each with a new producer, it takes before it gives up.
pub const MAX_REINITIALISATIONS: u32 = 3;

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
    max_attempts: u32,
    call_timeout: Duration,
    /// The most one `commit_transaction` call blocks; a call that runs out is resumed.
    commit_call_timeout: Duration,
    metrics: Arc<Metrics>,
    open: Option<OpenTransaction>,
    /// The offset the newest committed transaction committed.
    committed_offset: Option<i64>,
}

struct OpenTransaction {
    started: Instant,
    /// Published in it; kept to be published again in a new transaction after an abort.
    records: Vec<Record>,
    /// Messages consumed in it: their offsets commit with it.
    consumed: usize,
    /// The offset to commit: every message before it is decided.
    next_offset: i64,
    /// A send failed, so the transaction must abort.
    failed: Option<KafkaError>,
    /// The offsets are in the transaction: from now on only `commit_transaction` is
    /// called (again, after a timeout) until it commits or aborts.
    offsets_sent: bool,
}

/// A message published in the open transaction.
pub(crate) struct Record {
    message: OwnedMessage,
    target: Target,
    /// Its latest send; read after an abort to find what the broker refused.
    delivery: Option<DeliveryFuture>,
    /// Failed sends so far, and the latest failure.
    failures: u32,
    error: Option<KafkaError>,
    /// For a unique event: its key, forgotten if the event ends in the dead-letter topic.
    forget: Option<(Arc<PartitionStore>, StoredKey)>,
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
    #[error("exactly-once output failed {attempts} times with a fatal error, with a new producer each time (do the brokers support transactions, and may this client use its transactional id?): {source}")]
    Fatal {
        attempts: u32,
        #[source]
        source: KafkaError,
    },
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
        // An abortable epoch error (the coordinator timed the transaction out): abort,
        // and librdkafka bumps the epoch.
        KafkaError::Transaction(e) if e.txn_requires_abort() && !e.is_fatal() => Failure::Abort,
        KafkaError::Transaction(e) if fenced(e.code()) => Failure::Fenced,
        KafkaError::Transaction(e) if e.is_fatal() => Failure::Fatal,
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
        let client = client(config, &transactional_id, &format!("producer-{partition}"));
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
            max_attempts: config.publish_max_attempts.max(1),
            call_timeout,
            commit_call_timeout: call_timeout,
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

    /// The most one `commit_transaction` call blocks before the commit is resumed with
    /// another call (default `TRANSACTION_TIMEOUT`). Tests shorten it to make a commit
    /// outlast its call on a real broker.
    #[doc(hidden)]
    pub fn set_commit_call_timeout(&mut self, timeout: Duration) {
        self.commit_call_timeout = timeout;
    }

    /// Publishes `message` to `target` in the open transaction (opening one if needed).
    /// A failure surfaces at the commit, which then aborts and publishes again. `forget`:
    /// the store and key of a unique event, forgotten if it ends in the dead-letter topic.
    pub async fn publish(
        &mut self,
        message: OwnedMessage,
        target: Target,
        forget: Option<(Arc<PartitionStore>, StoredKey)>,
    ) {
        let record = Record {
            message,
            target,
            delivery: None,
            failures: 0,
            error: None,
            forget,
        };
        self.send_record(record).await;
    }

    async fn send_record(&mut self, mut record: Record) {
        // Begun before the first send: librdkafka refuses a send outside a transaction.
        self.open(record.message.offset());
        let topic = match (record.target, &self.dead_letter_topic) {
            (Target::DeadLetter { .. }, Some(topic)) => topic,
            _ => &self.output_topic,
        };
        match send(&self.producer, &record.message, topic, record.target).await {
            Ok(delivery) => record.delivery = Some(delivery),
            Err(error) => {
                if let Some(reason) = is_permanent(&error) {
                    // Refused before it was sent (larger than the producer's
                    // message.max.bytes): no retry or abort can mend it, and aborting
                    // would only repeat it.
                    PublishSkipped {
                        message: &record.message,
                        error: &error,
                        reason,
                        attempts: 1,
                    }
                    .emit(&self.metrics);
                    return;
                }
                // Not the message's own failure (a transaction that must abort, a topic
                // unknown for now): not counted against it.
                self.open(record.message.offset())
                    .failed
                    .get_or_insert(error);
            }
        }
        self.open(record.message.offset()).records.push(record);
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
            offsets_sent: false,
        })
    }

    /// Commits the open transaction with its offsets, handling failures as the module
    /// documentation says, until it commits, the producer is fenced, or `give_up_at`
    /// passes (then the transaction is aborted: nothing of it is visible or committed).
    /// `give_up_at` is set when the partition is being given up: then fencing is final.
    pub async fn commit<X: ConsumerContext + 'static>(
        &mut self,
        consumer: &impl Consumer<X>,
        give_up_at: Option<Instant>,
    ) -> Result<(), TransactionError> {
        let mut failures = 0u32;
        let mut reinitialised = 0u32;
        let mut fatal = 0u32;
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
                Failure::Fenced => Err(error.clone()),
                Failure::Retry => Ok(()),
                // An abort that fails (other than by fencing) leaves a new producer.
                Failure::Abort => match self.abort_and_republish().await {
                    Err(e) if classify(&e) != Failure::Fenced => self.recreate().await,
                    other => other,
                },
                Failure::Fatal if fatal + 1 >= MAX_REINITIALISATIONS => {
                    // Not transient: a broker without transactions, a refused id.
                    self.abort().await;
                    return Err(TransactionError::Fatal {
                        attempts: fatal + 1,
                        source: error,
                    });
                }
                Failure::Fatal => {
                    fatal += 1;
                    self.recreate().await
                }
            };
            if let Err(e) = recovered {
                if classify(&e) == Failure::Fenced {
                    let owner = give_up_at.is_none()
                        && reinitialised < MAX_REINITIALISATIONS
                        && still_assigned(consumer, &self.source_topic, self.partition);
                    if !owner {
                        return Err(self.fenced(e));
                    }
                    reinitialised += 1;
                    crate::metrics::Metrics::count(&self.metrics.transactions, "reinitialised");
                    tracing::warn!(partition = self.partition, error = %e, reinitialised,
                        "fenced while this member still holds the partition: the coordinator aborted a transaction that outlived TRANSACTION_TIMEOUT (or a member of an older generation took the id); initialising the producer again");
                    // A failure here is met by the next attempt.
                    let _ = self.recreate().await;
                }
            }
            if give_up_at.is_some_and(|at| Instant::now() >= at) {
                self.abort().await;
                return Err(TransactionError::Deadline(error));
            }
            if is_timed_out_commit(&error) {
                // Resumed soon: the broker is working on it. Not at once: librdkafka
                // aborts the process ("Invalid transaction state transition") when a
                // resumed call lands before the timed-out call's operation has started
                // on its main thread (seen with calls given no time at all).
                crate::metrics::Metrics::count(&self.metrics.transactions, "resumed");
                tokio::time::sleep(RESUME_PAUSE).await;
            } else {
                tokio::time::sleep(backoff(failures.min(6))).await;
            }
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

    /// Puts the offsets into the transaction (once) and commits it. After a commit call
    /// that timed out, only `commit_transaction` is called again: librdkafka goes on with
    /// the commit in the background, and answers a second `send_offsets_to_transaction`
    /// with a conflict.
    async fn try_commit<X: ConsumerContext + 'static>(
        &mut self,
        consumer: &impl Consumer<X>,
    ) -> Result<(), KafkaError> {
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        if !open.offsets_sent {
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
            blocking(move || producer.send_offsets_to_transaction(&offsets, &group, timeout))
                .await?;
            open.offsets_sent = true;
        }
        let producer = Arc::clone(&self.producer);
        let timeout = self.commit_call_timeout;
        blocking(move || producer.commit_transaction(timeout)).await
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
        for record in &open.records {
            match record.target {
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
        TransactionFenced {
            partition: self.partition,
            transactional_id: &self.transactional_id,
            error: &source,
        }
        .emit(&self.metrics);
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

    /// Begins a new transaction with the open one's messages. A message that failed
    /// before is sent alone and awaited, so that a refusal is its own and not its
    /// batch's; at the first refusal the rest wait, unsent, for the next transaction. A
    /// message refused `PUBLISH_MAX_ATTEMPTS` times goes to the dead-letter topic instead
    /// (its key forgotten), or, when no broker will ever take it and it cannot go there,
    /// is skipped; otherwise it is published again (a transient failure is retried until
    /// it succeeds).
    async fn republish(&mut self) -> Result<(), KafkaError> {
        let Some(open) = self.open.as_mut() else {
            return Ok(());
        };
        self.producer.begin_transaction()?;
        open.started = Instant::now();
        open.failed = None;
        open.offsets_sent = false;
        let mut records = std::mem::take(&mut open.records).into_iter();
        while let Some(mut record) = records.next() {
            record.settle_delivery();
            if !self.reroute(&mut record) {
                continue;
            }
            let suspect = record.failures > 0;
            if suspect && !self.flush_sent().await {
                // Sent into a transaction that must abort: left for the next one.
                if let Some(open) = self.open.as_mut() {
                    open.records.push(record);
                    open.records.extend(records);
                }
                break;
            }
            self.send_record(record).await;
            if suspect && !self.delivered_alone().await {
                if let Some(open) = self.open.as_mut() {
                    open.records.extend(records);
                }
                break;
            }
        }
        Ok(())
    }

    /// A message refused `PUBLISH_MAX_ATTEMPTS` times: to the dead-letter topic (true:
    /// send it there), or skipped when no broker will ever take it (false); otherwise
    /// retried (true). The policy is at-least-once mode's ([`after_failure`]).
    fn reroute(&self, record: &mut Record) -> bool {
        let Some(error) = record.error.clone() else {
            return true;
        };
        let has_dead_letter = self.dead_letter_topic.is_some();
        match after_failure(
            &error,
            record.target,
            record.failures,
            self.max_attempts,
            has_dead_letter,
        ) {
            AfterFailure::Retry => true,
            AfterFailure::DeadLetter => {
                report_dead_lettered(&record.message, &error, record.failures);
                if let Some((store, key)) = record.forget.take() {
                    forget_dead_lettered(&store, &key, &record.message);
                }
                record.target = Target::DeadLetter {
                    reason: "publish_failed",
                };
                record.failures = 0;
                record.error = None;
                true
            }
            AfterFailure::Skip(reason) => {
                PublishSkipped {
                    message: &record.message,
                    error: &error,
                    reason,
                    attempts: record.failures,
                }
                .emit(&self.metrics);
                false
            }
        }
    }

    /// Waits until every message sent in the open transaction is delivered, so that the
    /// next one goes alone in its produce request. False if the transaction must abort.
    async fn flush_sent(&mut self) -> bool {
        let Some(open) = self.open.as_mut() else {
            return false;
        };
        if open.records.is_empty() {
            return open.failed.is_none();
        }
        let producer = Arc::clone(&self.producer);
        let timeout = self.call_timeout;
        let flushed = blocking(move || producer.flush(timeout)).await;
        if open.failed.is_none() && flushed.is_err() {
            open.failed = Some(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut,
            ));
        }
        open.failed.is_none()
    }

    /// Waits for the delivery of the message just sent (alone in its produce request).
    /// False if it failed: the transaction must abort.
    async fn delivered_alone(&mut self) -> bool {
        let timeout = self.call_timeout;
        let Some(open) = self.open.as_mut() else {
            return false;
        };
        if open.failed.is_some() {
            return false; // refused at enqueue
        }
        let Some(record) = open.records.last_mut() else {
            return true; // skipped as never publishable
        };
        let Some(delivery) = record.delivery.take() else {
            return true;
        };
        let error = match tokio::time::timeout(timeout, delivery).await {
            Ok(Ok(Ok(_))) => {
                record.failures = 0;
                record.error = None;
                return true;
            }
            Ok(Ok(Err((error, _)))) => {
                if !failed_for_another(&error) {
                    record.failures += 1;
                    record.error = Some(error.clone());
                }
                error
            }
            // Unknown: abort (an abortable error, never a retry that would commit the
            // messages not sent yet) and try again.
            Ok(Err(_)) | Err(_) => KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        };
        open.failed = Some(error);
        false
    }
}

impl Record {
    /// Counts the failure of its latest send, once that has ended (after an abort every
    /// delivery has), unless it failed for another message's sake.
    fn settle_delivery(&mut self) {
        if let Some(Ok(Err((error, _)))) = self.delivery.take().and_then(FutureExt::now_or_never) {
            if !failed_for_another(&error) {
                self.failures += 1;
                self.error = Some(error);
            }
        }
    }
}

/// This consumer still holds `partition` of `topic` in the group's assignment.
fn still_assigned<X: ConsumerContext + 'static>(
    consumer: &impl Consumer<X>,
    topic: &str,
    partition: i32,
) -> bool {
    !consumer.assignment_lost()
        && consumer
            .assignment()
            .is_ok_and(|tpl| tpl.find_partition(topic, partition).is_some())
}

/// A message failed for another's sake, not its own: its transaction was aborted, or
/// another record of its batch was refused.
fn failed_for_another(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageProduction(
            RDKafkaErrorCode::PurgeQueue
                | RDKafkaErrorCode::PurgeInflight
                | RDKafkaErrorCode::InvalidDifferentRecord
        )
    )
}

/// A commit call that ran out of time while the commit goes on.
fn is_timed_out_commit(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(e) if e.code() == RDKafkaErrorCode::OperationTimedOut && e.is_retriable())
}

/// The settings of a transactional producer for `transactional_id`.
fn client(config: &Config, transactional_id: &str, role: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("transactional.id", transactional_id)
        .set(
            "transaction.timeout.ms",
            config.transaction_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "5")
        .set("client.id", client_id(config, role));
    for (key, value) in config.kafka_client_properties() {
        client.set(key, value);
    }
    for (key, value) in &config.kafka_producer_properties.0 {
        client.set(key, value);
    }
    client
}

/// Asks the brokers, before anything is consumed, whether they run transactions for
/// this client: a transactional producer with an id of its own
/// (`{prefix}-{topic}-probe-{pod}`, fencing no partition's) is initialised within
/// `timeout`. `Err` when the brokers refuse for good (no transactions, a
/// `TRANSACTION_TIMEOUT` above their `transaction.max.timeout.ms`, no ACL for the id);
/// `Ok` when they accept, and when they do not answer in time (a cluster away at start
/// is not a bad setting; the partitions' producers then retry).
pub async fn check_brokers(config: &Config, timeout: Duration) -> Result<(), KafkaError> {
    let owner = config
        .pod_name
        .clone()
        .unwrap_or_else(|| format!("pid-{}", std::process::id()));
    let probe = format!("{}-probe-{owner}", config.transactional_id_base());
    match init(&client(config, &probe, "producer-probe"), timeout).await {
        Ok(_) => Ok(()),
        Err(KafkaError::Transaction(error))
            if error.is_fatal() || refused_for_good(error.code()) =>
        {
            Err(KafkaError::Transaction(error))
        }
        Err(error) => {
            tracing::warn!(%error, "cannot tell whether the brokers run transactions; starting anyway");
            Ok(())
        }
    }
}

/// Answers to initialising a transactional id that no retry changes.
fn refused_for_good(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::UnsupportedFeature
            | RDKafkaErrorCode::UnsupportedVersion
            | RDKafkaErrorCode::InvalidTransactionTimeout
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
    )
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
