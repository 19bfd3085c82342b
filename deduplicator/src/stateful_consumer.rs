//! The deduplicator as a whole: builds the consumer, publisher, metrics and HTTP port,
//! polls the consumer (which drives rebalances; partition messages go to per-partition
//! workers), runs retention in the background, and shuts down cleanly.
//!
//! Shutdown (SIGTERM/SIGINT, or the future given to [`run`]): stop fetching, fence and
//! drain every partition, commit, close the stores, flush the producer, leave. Bounded
//! by `SHUTDOWN_TIMEOUT`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dedup_core::config::env;
use dedup_core::http::{self, Health};
use prometheus_client::registry::Registry;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, Message};
use tokio::runtime::Handle;

use crate::checkpoint_exporter::CheckpointExporter;
use crate::config::{Config, GroupProtocol};
use crate::context::Context;
use crate::handoff_prefetch::prefetch_loop;
use crate::internal_events::{InternalEvent, KafkaCallFailed, KeysEvicted, StoreCallFailed};
use crate::kafka_context::{DedupConsumer, DedupContext};
use crate::metrics::{Metrics, PartitionLabels};
use crate::ownership_record::owner_record_loop;
use crate::publisher::{client_id, Publisher};
use crate::rebalance_handler::RebalanceHandler;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("invalid settings: {0}")]
    Settings(String),
    #[error("cannot bind the HTTP port {addr} (HTTP_BIND): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the Kafka {role}: {source}")]
    Kafka {
        role: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("{setting} names topic `{topic}`, which does not exist on the Kafka cluster (KAFKA_HOSTS={hosts}); create it (as many partitions as the input is usual) or fix {setting}")]
    MissingTopic {
        setting: &'static str,
        topic: String,
        hosts: String,
    },
    #[error("OUTPUT_GUARANTEE=exactly-once, but the Kafka cluster (KAFKA_HOSTS={hosts}) refuses this client's transactions: {source}. The brokers must support transactions (Kafka 2.5+), accept TRANSACTION_TIMEOUT ({timeout:?}, at most their transaction.max.timeout.ms) and allow the transactional ids (prefix {prefix}); or use OUTPUT_GUARANTEE=at-least-once")]
    TransactionsRefused {
        hosts: String,
        timeout: Duration,
        prefix: String,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("cannot create the store directory {path} (STORE_PATH): {source}")]
    StorePath {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How long start-up asks the cluster whether the output and dead-letter topics exist
/// before it goes on without knowing (a cluster away at start is not a bad setting).
const TOPIC_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// The stateful, partition-aware consumer of the product description.
pub struct StatefulKafkaConsumer {
    consumer: Arc<DedupConsumer>,
    handler: Arc<RebalanceHandler>,
    context: Arc<Context>,
}

impl StatefulKafkaConsumer {
    pub fn new(context: Arc<Context>) -> Result<Self, RunError> {
        let config = &context.config;
        let handler = Arc::new(RebalanceHandler::new(
            Arc::clone(&context),
            Handle::current(),
        ));
        let mut client = ClientConfig::new();
        client
            .set("group.id", &config.kafka_consumer_group)
            .set("client.id", client_id(config, "consumer"))
            // Offsets are stored by the workers only once a message's outcome is final;
            // librdkafka commits what was stored.
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                config.commit_interval.as_millis().max(1).to_string(),
            )
            // Never read what an upstream transaction may still abort.
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("statistics.interval.ms", "5000");
        client.set("group.protocol", config.kafka_group_protocol.as_str());
        if config.kafka_group_protocol == GroupProtocol::Classic {
            // With `consumer` (KIP-848) the brokers assign, always incrementally.
            client.set("partition.assignment.strategy", "cooperative-sticky");
        }
        if let Some(pod) = &config.pod_name {
            client.set("group.instance.id", pod);
        }
        for (key, value) in config.kafka_client_properties() {
            client.set(key, value);
        }
        for (key, value) in &config.kafka_consumer_properties.0 {
            client.set(key, value);
        }
        if config.exactly_once() {
            // Offsets commit inside each partition's output transaction, never apart.
            client.set("enable.auto.commit", "false");
        }
        let consumer: DedupConsumer = client
            .create_with_context(DedupContext {
                handler: Arc::clone(&handler),
            })
            .map_err(|source| RunError::Kafka {
                role: "consumer",
                source: crate::config::without_value(source),
            })?;
        let consumer = Arc::new(consumer);
        handler.attach(&consumer);
        Ok(Self {
            consumer,
            handler,
            context,
        })
    }

    /// Fails start-up, naming the setting, when the output or dead-letter topic does not
    /// exist: otherwise every message for it would be retried, one partition's retries
    /// would take all of MAX_IN_FLIGHT_MESSAGES, and nothing would say why. Asked with the
    /// consumer's metadata request, which never creates a topic. A cluster that does not
    /// answer within `TOPIC_CHECK_TIMEOUT` is logged and the check skipped.
    async fn check_topics_exist(&self) -> Result<(), RunError> {
        let config = &self.context.config;
        let wanted = [
            (env::OUTPUT_TOPIC, config.output_topic.clone()),
            (env::DEAD_LETTER_TOPIC, config.dead_letter_topic.clone()),
        ];
        for (setting, topic) in wanted {
            let Some(topic) = topic else { continue };
            let consumer = Arc::clone(&self.consumer);
            let asked = topic.clone();
            let answer = tokio::task::spawn_blocking(move || {
                consumer
                    .fetch_metadata(Some(&asked), TOPIC_CHECK_TIMEOUT)
                    .map(|metadata| {
                        metadata
                            .topics()
                            .iter()
                            .find(|t| t.name() == asked)
                            .map(|t| t.error())
                    })
            })
            .await;
            match answer {
                Ok(Ok(Some(Some(error))))
                    if RDKafkaErrorCode::from(error)
                        == RDKafkaErrorCode::UnknownTopicOrPartition =>
                {
                    return Err(RunError::MissingTopic {
                        setting,
                        topic,
                        hosts: config.kafka_hosts.clone(),
                    });
                }
                Ok(Ok(Some(None))) => tracing::debug!(setting, topic, "topic exists"),
                other => KafkaCallFailed {
                    message: "cannot tell whether the topic exists; starting anyway",
                    partition: None,
                    error: &format!("{setting}={topic}: {:?}", other.map(|r| r.map(|_| ()))),
                    level: tracing::Level::WARN,
                }
                .emit(&self.context.metrics),
            }
        }
        Ok(())
    }

    /// Fails start-up when exactly-once output is asked of brokers that refuse this
    /// client's transactions, instead of retrying each partition's producer forever.
    async fn check_transactions(&self) -> Result<(), RunError> {
        let config = &self.context.config;
        if !config.exactly_once() {
            return Ok(());
        }
        crate::transactional_publisher::check_brokers(config, TOPIC_CHECK_TIMEOUT)
            .await
            .map_err(|source| RunError::TransactionsRefused {
                hosts: config.kafka_hosts.clone(),
                timeout: config.transaction_timeout,
                prefix: config
                    .transactional_id_prefix
                    .clone()
                    .unwrap_or_else(|| config.kafka_consumer_group.clone()),
                source: Box::new(source),
            })
    }

    /// Subscribes and consumes until `shutdown` completes, then shuts down cleanly.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
        self.check_topics_exist().await?;
        self.check_transactions().await?;
        let topic = self.context.config.kafka_consumer_topic.clone();
        self.consumer
            .subscribe(&[&topic])
            .map_err(|source| RunError::Kafka {
                role: "consumer subscription",
                source,
            })?;
        tracing::info!(topic, group = %self.context.config.kafka_consumer_group, "subscribed");
        let retention = tokio::spawn(retention_loop(Arc::clone(&self.handler)));
        let exporter = tokio::spawn(CheckpointExporter::new(Arc::clone(&self.handler)).run());
        let owner_record = tokio::spawn(owner_record_loop(Arc::clone(&self.handler)));
        let prefetch = tokio::spawn(prefetch_loop(
            Arc::clone(&self.handler),
            Arc::clone(&self.consumer),
        ));

        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                received = self.consumer.recv() => match received {
                    // Partitions are split off before assignment, so this is rare: hand the
                    // message to its worker rather than lose it.
                    Ok(message) => {
                        let partition = message.partition();
                        if !self.handler.route_stray(message.detach()) {
                            tracing::warn!(partition, "message for a partition not owned; it stays uncommitted");
                        }
                    }
                    Err(error) => KafkaCallFailed {
                        message: "consumer error",
                        partition: None,
                        error: &error,
                        level: tracing::Level::WARN,
                    }
                    .emit(&self.context.metrics),
                },
            }
        }

        tracing::info!("shutting down: draining partitions");
        self.context.health.set_not_ready("shutting down");
        retention.abort();
        exporter.abort();
        owner_record.abort();
        prefetch.abort();
        // An upload in progress is abandoned (never half-published: the manifest comes
        // last); the next owner restores the previous checkpoint and catches up.
        let _ = exporter.await;
        let deadline = self.context.config.shutdown_timeout;
        let started = std::time::Instant::now();
        let handler = Arc::clone(&self.handler);
        let consumer = Arc::clone(&self.consumer);
        let drained = tokio::time::timeout(
            deadline,
            tokio::task::spawn_blocking(move || handler.revoke_all(consumer.as_ref())),
        )
        .await;
        if drained.is_err() {
            tracing::error!(?deadline, "shutdown drain timed out");
        }
        let remaining = deadline
            .saturating_sub(started.elapsed())
            .max(Duration::from_secs(1));
        if let Err(error) = self.context.publisher.flush(remaining) {
            tracing::warn!(%error, "producer flush incomplete");
        }
        self.consumer.unsubscribe();
        drop(self.consumer);
        tracing::info!("stopped");
        Ok(())
    }
}

/// Runs the deduplicator with `config` until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    run_with_metrics(config, registry, metrics, shutdown).await
}

/// [`run`] with metrics the caller keeps a handle on (the quick start reads them
/// directly); `registry` is what `/metrics` serves and must hold `metrics`.
pub async fn run_with_metrics(
    config: Config,
    registry: Registry,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    config.validate().map_err(RunError::Settings)?;
    std::fs::create_dir_all(&config.store_path).map_err(|source| RunError::StorePath {
        path: config.store_path.clone(),
        source,
    })?;
    let health = Health::starting("joining the consumer group");
    let listener = http::bind(config.http_bind)
        .await
        .map_err(|source| RunError::Bind {
            addr: config.http_bind,
            source,
        })?;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(
        listener,
        Arc::new(registry),
        health.clone(),
        async {
            let _ = http_stopped.await;
        },
    ));

    let publisher =
        Publisher::new(&config, Arc::clone(&metrics)).map_err(|source| RunError::Kafka {
            role: "producer",
            source,
        })?;
    tracing::info!(
        output = config
            .output_topic
            .as_deref()
            .unwrap_or("(none: count only)"),
        dead_letter = config
            .dead_letter_topic
            .as_deref()
            .unwrap_or("(none: pass malformed through)"),
        "starting"
    );
    let remote = config.remote.connect().await;
    match &remote {
        Some(remote) => tracing::info!(%remote, prefix = config.remote.s3_key_prefix,
            interval = ?config.checkpoint_interval, "checkpoints uploaded to the remote; stores restored from it on assignment"),
        None => tracing::warn!(dir = %config.local_checkpoint_dir.display(),
            "no S3_BUCKET (or CHECKPOINT_REMOTE_DIR): checkpoints stay on the local volume only; a partition moving to another pod is rebuilt by catch-up replay, not restored"),
    }
    if remote.is_some() && config.pod_name.is_none() {
        tracing::warn!("POD_NAME is not set: no ownership record is written, so the restorer cannot prepare this process's partitions");
    }
    let context = Arc::new(Context::new(config, metrics, publisher, health, remote));
    let result = StatefulKafkaConsumer::new(context)?.run(shutdown).await;
    let _ = stop_http.send(());
    let _ = server.await;
    result
}

/// Flushes every owned store and enforces its window and capacity, one at a time, off
/// the consuming tasks, every `RETENTION_INTERVAL`.
async fn retention_loop(handler: Arc<RebalanceHandler>) {
    let interval = handler.context.config.retention_interval;
    if interval.is_zero() {
        return;
    }
    loop {
        tokio::time::sleep(interval).await;
        for (partition, store) in handler.stores() {
            let Some(store) = store.upgrade() else {
                continue;
            };
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            // Flushing bounds what a crash can lose (the store runs without a WAL by
            // default) and so the catch-up replay after it.
            let result = tokio::task::spawn_blocking(move || {
                store.flush()?;
                store.enforce_retention(now_ms)
            })
            .await;
            let metrics = &handler.context.metrics;
            match &result {
                // A store that cannot flush (a full disk, say) keeps its keys only in
                // memory: page someone. It is healthy again once a flush succeeds.
                Ok(Err(error)) => handler.context.store_failed(partition, error),
                Ok(Ok(_)) => handler.context.store_recovered(partition),
                Err(_) => {}
            }
            match result {
                Ok(Ok(eviction)) => {
                    if eviction.keys_evicted > 0 {
                        let kind = if eviction.by_capacity {
                            "capacity"
                        } else {
                            "window"
                        };
                        KeysEvicted {
                            partition,
                            keys: eviction.keys_evicted,
                            kind,
                            cutoff_ms: eviction.cutoff_ms,
                        }
                        .emit(metrics);
                    }
                    metrics
                        .store_size_bytes
                        .get_or_create(&PartitionLabels { partition })
                        .set(eviction.size_after as i64);
                }
                Ok(Err(error)) => StoreCallFailed {
                    message: "retention failed",
                    partition,
                    error: &error,
                    failures: None,
                    level: tracing::Level::ERROR,
                }
                .emit(metrics),
                Err(error) => tracing::error!(partition, %error, "retention task failed"),
            }
        }
    }
}
