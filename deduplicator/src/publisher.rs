//! Publishing to the output and dead-letter topics: an idempotent producer that keeps a
//! message's key, headers, timestamp and payload bytes unchanged.
//!
//! Messages are enqueued in consumption order (librdkafka keeps that order per output
//! partition, retries included, with idempotence); their delivery is awaited separately,
//! so a partition keeps consuming while earlier messages are being acknowledged.
//! A delivery that fails after librdkafka's own retries is retried here with backoff;
//! after `PUBLISH_MAX_ATTEMPTS` it goes to the dead-letter topic if there is one.
//! Without one, a transient failure (a broker away, a timeout) is retried until it
//! succeeds: a unique event is never given up for an outage. A message that no broker
//! will ever take (larger than `message.max.bytes`, an invalid record) is skipped after
//! `PUBLISH_MAX_ATTEMPTS` (or after as many failed attempts at the dead-letter topic),
//! logged with why and counted in `publish_skipped{reason}`: it would otherwise hold its
//! partition's commits forever and be republished with everything after it at each
//! restart.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Timestamp};

use crate::config::Config;
use crate::internal_events::{InternalEvent, PublishSkipped};
use crate::metrics::Metrics;
use std::sync::Arc;

/// Where a message is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Output,
    /// The dead-letter topic, with the reason recorded in the message headers.
    DeadLetter {
        reason: &'static str,
    },
}

/// How a message's publication ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    Output,
    DeadLetter,
    /// Neither topic will ever take it: skipped, logged and counted.
    Skipped,
}

/// What becomes of a message whose publication to `target` failed `failures` times,
/// the last with `error`: one policy for both output guarantees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterFailure {
    /// Try again (before `PUBLISH_MAX_ATTEMPTS`, and a transient failure after them
    /// when the dead-letter topic cannot take it: never given up for an outage).
    Retry,
    /// To the dead-letter topic (an output message out of attempts, with one set).
    DeadLetter,
    /// Out of attempts, and no broker will ever take it: skipped, for this reason.
    Skip(&'static str),
}

pub(crate) fn after_failure(
    error: &KafkaError,
    target: Target,
    failures: u32,
    max_attempts: u32,
    has_dead_letter: bool,
) -> AfterFailure {
    if failures < max_attempts {
        AfterFailure::Retry
    } else if target == Target::Output && has_dead_letter {
        AfterFailure::DeadLetter
    } else {
        is_permanent(error).map_or(AfterFailure::Retry, AfterFailure::Skip)
    }
}

/// Logs an output message routed to the dead-letter topic after `attempts` failures.
pub(crate) fn report_dead_lettered(message: &OwnedMessage, error: &KafkaError, attempts: u32) {
    tracing::error!(partition = message.partition(), offset = message.offset(), %error,
        attempts, "publishing failed; routing the message to the dead-letter topic");
}

/// A failure no retry can mend: the message itself is refused.
pub(crate) fn is_permanent(error: &KafkaError) -> Option<&'static str> {
    let code = match error {
        KafkaError::MessageProduction(code) => *code,
        KafkaError::Transaction(e) => e.code(),
        _ => return None,
    };
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge => Some("message_too_large"),
        RDKafkaErrorCode::InvalidMessageSize | RDKafkaErrorCode::InvalidMessage => {
            Some("invalid_message")
        }
        RDKafkaErrorCode::InvalidRecord => Some("invalid_record"),
        RDKafkaErrorCode::MessageBatchTooLarge => Some("batch_too_large"),
        _ => None,
    }
}

pub struct Publisher {
    producer: FutureProducer,
    output_topic: Option<String>,
    dead_letter_topic: Option<String>,
    max_attempts: u32,
    metrics: Arc<Metrics>,
}

impl Publisher {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, KafkaError> {
        let mut client = ClientConfig::new();
        client
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("client.id", client_id(config, "producer"));
        for (key, value) in config.kafka_client_properties() {
            client.set(key, value);
        }
        for (key, value) in &config.kafka_producer_properties.0 {
            client.set(key, value);
        }
        Ok(Self {
            producer: client.create().map_err(crate::config::without_value)?,
            output_topic: config.output_topic.clone(),
            dead_letter_topic: config.dead_letter_topic.clone(),
            max_attempts: config.publish_max_attempts,
            metrics,
        })
    }

    pub fn has_output(&self) -> bool {
        self.output_topic.is_some()
    }

    pub fn has_dead_letter(&self) -> bool {
        self.dead_letter_topic.is_some()
    }

    /// Enqueues `message` for `target`; waits only while librdkafka's queue is full.
    /// `None` when the target topic is not configured.
    pub async fn enqueue(
        &self,
        message: &OwnedMessage,
        target: Target,
    ) -> Option<Result<DeliveryFuture, KafkaError>> {
        let topic = match target {
            Target::Output => self.output_topic.as_deref()?,
            Target::DeadLetter { .. } => self.dead_letter_topic.as_deref()?,
        };
        Some(send(&self.producer, message, topic, target).await)
    }

    /// Waits for `first` (an enqueue for `target`) to be acknowledged, retrying as the
    /// module documentation says. Returns where the message ended up.
    pub async fn deliver(
        &self,
        message: &OwnedMessage,
        target: Target,
        first: Result<DeliveryFuture, KafkaError>,
    ) -> Delivered {
        let mut target = target;
        let mut attempt = first;
        let mut failures = 0u32;
        loop {
            let error = match attempt {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => {
                        return match target {
                            Target::Output => {
                                self.metrics.published.inc();
                                Delivered::Output
                            }
                            Target::DeadLetter { .. } => {
                                self.metrics.dead_lettered.inc();
                                Delivered::DeadLetter
                            }
                        };
                    }
                    Ok(Err((err, _))) => err,
                    Err(_canceled) => KafkaError::Canceled,
                },
                Err(err) => err,
            };
            failures += 1;
            self.metrics.publish_retries.inc();
            match after_failure(
                &error,
                target,
                failures,
                self.max_attempts,
                self.has_dead_letter(),
            ) {
                AfterFailure::Skip(reason) => {
                    PublishSkipped {
                        message,
                        error: &error,
                        reason,
                        attempts: failures,
                    }
                    .emit(&self.metrics);
                    return Delivered::Skipped;
                }
                AfterFailure::DeadLetter => {
                    report_dead_lettered(message, &error, failures);
                    target = Target::DeadLetter {
                        reason: "publish_failed",
                    };
                    failures = 0;
                }
                AfterFailure::Retry => {
                    tracing::warn!(partition = message.partition(), offset = message.offset(), %error,
                        attempts = failures, "publishing failed; retrying");
                    tokio::time::sleep(backoff(failures)).await;
                }
            }
            attempt = match self.enqueue(message, target).await {
                Some(result) => result,
                // The topic was configured when the message was first enqueued.
                None => Err(KafkaError::Canceled),
            };
        }
    }

    /// Waits until everything enqueued is acknowledged, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        use rdkafka::producer::Producer;
        self.producer.flush(timeout)
    }
}

/// Enqueues `message` to `topic` with its key, headers (plus the dead-letter ones),
/// timestamp and payload unchanged; waits only while librdkafka's queue is full.
pub(crate) async fn send(
    producer: &FutureProducer,
    message: &OwnedMessage,
    topic: &str,
    target: Target,
) -> Result<DeliveryFuture, KafkaError> {
    let mut record = FutureRecord::to(topic);
    if let Some(headers) = headers_for(message, target) {
        record = record.headers(headers);
    }
    if let Some(payload) = message.payload() {
        record = record.payload(payload);
    }
    if let Some(key) = message.key() {
        record = record.key(key);
    }
    if let Timestamp::CreateTime(ts) | Timestamp::LogAppendTime(ts) = message.timestamp() {
        record = record.timestamp(ts);
    }
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                record = returned;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((err, _)) => return Err(err),
        }
    }
}

/// A unique event that went to the dead-letter topic because it could not be published
/// was never output: its key is forgotten, so that replaying the dead-letter topic into
/// the input publishes it (once) instead of dropping it as a duplicate of itself.
pub(crate) fn forget_dead_lettered(
    store: &dedup_core::store::PartitionStore,
    key: &dedup_core::StoredKey,
    message: &OwnedMessage,
) {
    if let Err(error) = store.forget(key, message.offset()) {
        tracing::warn!(partition = message.partition(), offset = message.offset(), %error,
            "cannot forget the key of a dead-lettered event; replaying it would drop it as a duplicate");
    }
}

pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(8))).min(Duration::from_secs(10))
}

/// The original headers, plus the reason and source for a dead-lettered message;
/// `None` when there are none (most messages: no header list is built for them).
fn headers_for(message: &OwnedMessage, target: Target) -> Option<OwnedHeaders> {
    let original = message.headers().cloned();
    let Target::DeadLetter { reason } = target else {
        return original;
    };
    let mut headers = original.unwrap_or_else(OwnedHeaders::new);
    let partition = message.partition().to_string();
    let offset = message.offset().to_string();
    for (key, value) in [
        ("dedup-error", reason),
        ("dedup-source-topic", message.topic()),
        ("dedup-source-partition", partition.as_str()),
        ("dedup-source-offset", offset.as_str()),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    Some(headers)
}

pub fn client_id(config: &Config, role: &str) -> String {
    match &config.pod_name {
        Some(pod) => format!("kafka-deduplicator-{pod}-{role}"),
        None => format!("kafka-deduplicator-{role}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn out_of_attempts_an_output_message_goes_to_the_dead_letter_topic_or_is_skipped_if_never_publishable(
    ) {
        let too_large = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        let away = KafkaError::MessageProduction(RDKafkaErrorCode::AllBrokersDown);
        let dead_letter = Target::DeadLetter { reason: "x" };
        assert_eq!(
            after_failure(&too_large, Target::Output, 2, 3, true),
            AfterFailure::Retry
        );
        assert_eq!(
            after_failure(&too_large, Target::Output, 3, 3, true),
            AfterFailure::DeadLetter
        );
        assert_eq!(
            after_failure(&too_large, Target::Output, 3, 3, false),
            AfterFailure::Skip("message_too_large")
        );
        assert_eq!(
            after_failure(&too_large, dead_letter, 3, 3, true),
            AfterFailure::Skip("message_too_large")
        );
        assert_eq!(
            after_failure(&away, Target::Output, 9, 3, false),
            AfterFailure::Retry
        );
        assert_eq!(
            after_failure(&away, dead_letter, 9, 3, true),
            AfterFailure::Retry
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert!(backoff(3) > backoff(2));
        assert_eq!(backoff(30), Duration::from_secs(10));
    }

    #[test]
    fn dead_letter_headers_keep_the_originals_and_name_the_source() {
        let original = OwnedHeaders::new().insert(Header {
            key: "trace",
            value: Some("abc"),
        });
        let message = OwnedMessage::new(
            Some(b"not json".to_vec()),
            Some(b"k".to_vec()),
            "events".into(),
            Timestamp::CreateTime(5),
            3,
            42,
            Some(original),
        );
        let headers = headers_for(&message, Target::DeadLetter { reason: "not_json" }).unwrap();
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                (
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect();
        assert_eq!(pairs[0], ("trace".into(), "abc".into()));
        assert!(pairs.contains(&("dedup-error".into(), "not_json".into())));
        assert!(pairs.contains(&("dedup-source-partition".into(), "3".into())));
        assert!(pairs.contains(&("dedup-source-offset".into(), "42".into())));
        assert_eq!(headers_for(&message, Target::Output).unwrap().count(), 1);
    }
}
