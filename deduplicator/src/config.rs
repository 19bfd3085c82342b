//! The deduplicator's settings. Each is an environment variable and a flag of the same
//! name; the seed's variables keep their names and defaults. A bad value stops start-up
//! with clap's message, which names the variable and the accepted form.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dedup_core::checkpoint::settings::RemoteArgs;
use dedup_core::config::{env, parse_bytes, parse_duration, BROKER_SIDE_WITH_CONSUMER_PROTOCOL};
use dedup_core::http::parse_bind_address;
use dedup_core::store::{StoreResources, StoreSettings};
use dedup_core::telemetry::LogFormat;

#[derive(Debug, Clone, Parser)]
#[command(name = "deduplicator", version, about)]
pub struct Config {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(long, env = env::KAFKA_HOSTS, default_value = "localhost:9092")]
    pub kafka_hosts: String,

    /// Consumer group id.
    #[arg(
        long,
        env = env::KAFKA_CONSUMER_GROUP,
        default_value = "kafka-deduplicator"
    )]
    pub kafka_consumer_group: String,

    /// Topic to deduplicate.
    #[arg(long, env = env::KAFKA_CONSUMER_TOPIC, default_value = "events")]
    pub kafka_consumer_topic: String,

    /// Topic unique events are published to. Unset: deduplicate and count only.
    #[arg(long, env = env::OUTPUT_TOPIC)]
    pub output_topic: Option<String>,

    /// Topic malformed messages (and messages that could not be published) are routed
    /// to. Unset: malformed messages pass through to the output topic undeduplicated.
    #[arg(long, env = env::DEAD_LETTER_TOPIC)]
    pub dead_letter_topic: Option<String>,

    /// Messages received but not yet final (published and acknowledged, or known
    /// duplicate), across all partitions. Bounds memory and the redeliveries after a crash.
    #[arg(long, env = env::MAX_IN_FLIGHT_MESSAGES, default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight_messages: u32,

    /// Most messages looked up and written to a partition store at once.
    #[arg(long, env = env::BATCH_SIZE, default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_size: u32,

    /// Base path of the per-partition RocksDB stores (`{STORE_PATH}/{topic}_{partition}`).
    #[arg(long, env = env::STORE_PATH, default_value = "/tmp/deduplication-store")]
    pub store_path: PathBuf,

    /// Most bytes a partition store may hold; the oldest keys are evicted beyond it.
    /// 0 = unlimited. Plain bytes or with a unit (512MiB, 10GB).
    #[arg(long, env = env::MAX_STORE_CAPACITY, default_value = "0", value_parser = parse_bytes)]
    pub max_store_capacity: u64,

    /// Keys older than this by event time are forgotten (ms, s, m, h, d; 0 = never).
    #[arg(long, env = env::DEDUP_WINDOW, default_value = "24h", value_parser = parse_duration)]
    pub dedup_window: Duration,

    /// Events whose timestamp is further ahead of now than this are not deduplicated:
    /// they are malformed (`reason="timestamp_in_future"`), routed to the dead-letter
    /// topic or passed through, and counted. Their keys would never leave the window and
    /// would outlive every other key under MAX_STORE_CAPACITY. 0 = no bound.
    #[arg(long, env = env::MAX_EVENT_TIME_SKEW, default_value = "1h", value_parser = parse_duration)]
    pub max_event_time_skew: Duration,

    /// How often retention (window and capacity) is enforced on each partition store.
    #[arg(long, env = env::RETENTION_INTERVAL, default_value = "60s", value_parser = parse_duration)]
    pub retention_interval: Duration,

    /// Write RocksDB's write-ahead log. Off is safe (catch-up replay rebuilds what a
    /// crash loses) and faster.
    #[arg(long, env = env::STORE_WAL, default_value_t = false, action = clap::ArgAction::Set)]
    pub store_wal: bool,

    /// Block cache shared by all partition stores (bytes or with a unit).
    #[arg(long, env = env::STORE_BLOCK_CACHE_BYTES, default_value = "128MiB", value_parser = parse_bytes)]
    pub store_block_cache_bytes: u64,

    /// Memtable budget shared by all partition stores (bytes or with a unit).
    #[arg(long, env = env::STORE_WRITE_BUFFER_BYTES, default_value = "64MiB", value_parser = parse_bytes)]
    pub store_write_buffer_bytes: u64,

    /// Keys kept in memory per partition store so that duplicates of recent events are
    /// answered without a RocksDB lookup (about 64 bytes each; 0 disables).
    #[arg(long, env = env::STORE_RECENT_KEYS, default_value_t = StoreSettings::DEFAULT_RECENT_KEYS)]
    pub store_recent_keys: usize,

    /// This pod's name: the consumer's `group.instance.id` (static membership), so a
    /// restarted pod gets its partitions back without a group-wide rebalance.
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: Option<String>,

    /// Address of the HTTP port serving /metrics, /healthz and /readyz.
    #[arg(long, env = env::HTTP_BIND, default_value = "0.0.0.0:8080", value_parser = parse_bind_address)]
    pub http_bind: SocketAddr,

    /// Log format: text or json.
    #[arg(long, env = env::LOG_FORMAT, default_value = "text")]
    pub log_format: LogFormat,

    /// Extra librdkafka properties for consumer and producer: `key=value` pairs
    /// separated by commas or newlines (e.g. `security.protocol=SASL_SSL`).
    #[arg(long, env = env::KAFKA_PROPERTIES, default_value = "", value_parser = parse_properties)]
    pub kafka_properties: Properties,

    /// Extra librdkafka properties for the consumer only (same form).
    #[arg(long, env = env::KAFKA_CONSUMER_PROPERTIES, default_value = "", value_parser = parse_properties)]
    pub kafka_consumer_properties: Properties,

    /// Extra librdkafka properties for the producer only (same form).
    #[arg(long, env = env::KAFKA_PRODUCER_PROPERTIES, default_value = "", value_parser = parse_properties)]
    pub kafka_producer_properties: Properties,

    /// SASL username for the Kafka cluster (e.g. from a Secret); with
    /// `security.protocol` and `sasl.mechanism` set in KAFKA_PROPERTIES.
    #[arg(long, env = env::KAFKA_SASL_USERNAME)]
    pub kafka_sasl_username: Option<String>,

    /// SASL password for the Kafka cluster. Never logged.
    #[arg(long, env = env::KAFKA_SASL_PASSWORD, hide_env_values = true)]
    pub kafka_sasl_password: Option<String>,

    /// librdkafka properties that hold secrets (`ssl.key.password`,
    /// `sasl.oauthbearer.client.secret`, ...), for consumer and
    /// producer: `key=value`, one per line (values may contain commas). Applied after
    /// KAFKA_PROPERTIES. Never logged, not even in error messages.
    #[arg(long, env = env::KAFKA_SECRET_PROPERTIES, default_value = "", hide_env_values = true, hide_default_value = true, value_parser = parse_secret_properties)]
    pub kafka_secret_properties: SecretProperties,

    /// The consumer group protocol: `classic` (assignments computed by the group's
    /// leader, cooperative-sticky) or `consumer` (KIP-848, Kafka 4.0+: the brokers
    /// assign, and a partition's next owner sees it in its target assignment before the
    /// old owner gives it up, so it prefetches the partition's checkpoint; see
    /// PREFETCH_INTERVAL). With `consumer`, the session timeout and heartbeat interval
    /// are the brokers' (`group.consumer.session.timeout.ms`, 45 s by default), and
    /// `session.timeout.ms`, `heartbeat.interval.ms` and `partition.assignment.strategy`
    /// cannot be set in KAFKA_CONSUMER_PROPERTIES.
    #[arg(long, env = env::KAFKA_GROUP_PROTOCOL, default_value = "classic")]
    pub kafka_group_protocol: GroupProtocol,

    /// With KAFKA_GROUP_PROTOCOL=consumer and a checkpoint remote: how often this
    /// member's target assignment is read from the group coordinator, to download the
    /// checkpoints of partitions about to move here before they are revoked from their
    /// old owners (0 = no prefetch; the restore at assignment downloads everything).
    #[arg(long, env = env::PREFETCH_INTERVAL, default_value = "1s", value_parser = parse_duration)]
    pub prefetch_interval: Duration,

    /// At-least-once: how often the offsets of final messages are committed. A crash
    /// republishes at most the originals consumed within this interval plus those in
    /// flight (MAX_IN_FLIGHT_MESSAGES); shorter means more commit requests.
    #[arg(long, env = env::COMMIT_INTERVAL, default_value = "1s", value_parser = parse_duration)]
    pub commit_interval: Duration,

    /// Longest wait, on revocation, for a partition's in-flight messages to finish.
    #[arg(long, env = env::REBALANCE_DRAIN_TIMEOUT, default_value = "20s", value_parser = parse_duration)]
    pub rebalance_drain_timeout: Duration,

    /// Longest shutdown after SIGTERM (drain, commit, close). Keep it below the pod's
    /// termination grace period.
    #[arg(long, env = env::SHUTDOWN_TIMEOUT, default_value = "25s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Attempts to publish a message before it is dead-lettered (when a dead-letter topic
    /// is set; without one, publishing is retried until it succeeds).
    #[arg(long, env = env::PUBLISH_MAX_ATTEMPTS, default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub publish_max_attempts: u32,

    /// Most messages a partition replays into an empty store (a partition that moved here
    /// without a usable checkpoint) to learn the keys of the last DEDUP_WINDOW before
    /// publishing again: copies of events published before the move are then still
    /// dropped. The replay starts at the partition's first message of `now −
    /// DEDUP_WINDOW` (by Kafka timestamp; the partition's start when the window is 0),
    /// at most this many messages before the committed offset. 0 = no replay.
    #[arg(long, env = env::CATCH_UP_MAX_MESSAGES, default_value_t = 10_000_000)]
    pub catch_up_max_messages: u64,

    /// Time between checkpoints of each partition store (0 = no checkpoints).
    #[arg(long, env = env::CHECKPOINT_INTERVAL, default_value = "300s", value_parser = parse_duration)]
    pub checkpoint_interval: Duration,

    /// On revocation and at shutdown, the longest time spent checkpointing and uploading
    /// the partitions being given up (all of them at once, after their last offsets are
    /// committed), so that their next owners restore the current state and replay almost
    /// nothing. 0 = none: the next owner restores the last periodic checkpoint and
    /// replays what came after it. Only with a remote and a CHECKPOINT_INTERVAL.
    #[arg(long, env = env::FINAL_CHECKPOINT_TIMEOUT, default_value = "10s", value_parser = parse_duration)]
    pub final_checkpoint_timeout: Duration,

    /// Base path of local checkpoints (`{LOCAL_CHECKPOINT_DIR}/{topic}_{partition}/{id}`).
    /// Must be on the store's filesystem: checkpoints are hard links.
    #[arg(long, env = env::LOCAL_CHECKPOINT_DIR, default_value = "./checkpoints")]
    pub local_checkpoint_dir: PathBuf,

    /// Every N-th upload of a partition sends all files again; the others only files not
    /// yet referenced remotely.
    #[arg(long, env = env::FULL_UPLOAD_INTERVAL, default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub full_upload_interval: u32,

    /// Local checkpoints kept per partition.
    #[arg(long, env = env::MAX_LOCAL_CHECKPOINTS, default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_local_checkpoints: u32,

    /// Remote checkpoints kept per partition (older ones and files only they reference
    /// are deleted).
    #[arg(long, env = env::MAX_REMOTE_CHECKPOINTS, default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_remote_checkpoints: u32,

    /// Bound of restoring one partition on assignment, retries included; past it the
    /// partition starts from its local or an empty store (catch-up replay still runs).
    #[arg(long, env = env::RESTORE_TIMEOUT, default_value = "10m", value_parser = parse_duration)]
    pub restore_timeout: Duration,

    /// Attempts to restore a partition while the remote fails.
    #[arg(long, env = env::RESTORE_MAX_ATTEMPTS, default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub restore_max_attempts: u32,

    /// What a `read_committed` reader of the output topic sees: `at-least-once` (a crash
    /// or a rebalance may publish an original again) or `exactly-once` (output and
    /// consumed offsets commit in one Kafka transaction per partition; needs
    /// OUTPUT_TOPIC and brokers with transactions).
    #[arg(long, env = env::OUTPUT_GUARANTEE, default_value = "at-least-once")]
    pub output_guarantee: OutputGuarantee,

    /// Exactly-once: most messages consumed in one transaction of a partition.
    #[arg(long, env = env::TRANSACTION_MAX_MESSAGES, default_value_t = 5000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub transaction_max_messages: u32,

    /// Exactly-once: a partition's open transaction is committed at most this long after
    /// its first message. Output becomes visible to `read_committed` readers only then.
    #[arg(long, env = env::TRANSACTION_MAX_DURATION, default_value = "100ms", value_parser = parse_duration)]
    pub transaction_max_duration: Duration,

    /// Exactly-once: the brokers abort a transaction left open this long (a crashed
    /// owner's), and the bound of each transactional call (librdkafka
    /// `transaction.timeout.ms`).
    #[arg(long, env = env::TRANSACTION_TIMEOUT, default_value = "60s", value_parser = parse_duration)]
    pub transaction_timeout: Duration,

    /// Exactly-once: `transactional.id` of partition P is `{prefix}-{topic}-{P}`, the same
    /// on every pod, so a partition's new owner fences the old one. Default: the consumer
    /// group.
    #[arg(long, env = env::TRANSACTIONAL_ID_PREFIX)]
    pub transactional_id_prefix: Option<String>,

    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// The output guarantee (OUTPUT_GUARANTEE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputGuarantee {
    AtLeastOnce,
    ExactlyOnce,
}

/// The consumer group protocol (KAFKA_GROUP_PROTOCOL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupProtocol {
    Classic,
    Consumer,
}

impl GroupProtocol {
    /// librdkafka's `group.protocol` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Consumer => "consumer",
        }
    }
}

/// librdkafka properties given as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<(String, String)>);

pub fn parse_properties(text: &str) -> Result<Properties, String> {
    let mut pairs = Vec::new();
    for item in text
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        match item.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                pairs.push((key.trim().to_string(), value.trim().to_string()))
            }
            _ => {
                return Err(format!(
                    "`{item}` is not a property: expected key=value pairs separated by commas or newlines, e.g. security.protocol=SSL,client.rack=eu-west-1a"
                ))
            }
        }
    }
    Ok(Properties(pairs))
}

/// librdkafka properties holding secrets; `Debug` shows their keys only. Text that does
/// not parse is kept as the error (reported by [`Config::validate`]): clap would echo a
/// value its parser refuses.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretProperties(pub Vec<(String, String)>, pub Option<String>);

impl std::fmt::Debug for SecretProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| format!("{k}=<redacted>")))
            .finish()
    }
}

/// A librdkafka configuration error without the value it was given: rdkafka's error
/// carries the property's value and shows it, and the value may be a secret
/// (KAFKA_SECRET_PROPERTIES, KAFKA_SASL_PASSWORD). The description and key stay.
pub fn without_value(error: rdkafka::error::KafkaError) -> rdkafka::error::KafkaError {
    use rdkafka::error::KafkaError;
    match error {
        KafkaError::ClientConfig(code, description, key, value) => {
            // librdkafka's description may quote the value ("Invalid value ... : VALUE").
            let description = if value.is_empty() {
                description
            } else {
                description.replace(&value, "(value not shown)")
            };
            KafkaError::ClientConfig(code, description, key, "(value not shown)".into())
        }
        other => other,
    }
}

/// One `key=value` per line. Never fails (see [`SecretProperties`]).
pub fn parse_secret_properties(text: &str) -> Result<SecretProperties, String> {
    Ok(match secret_properties(text) {
        Ok(pairs) => SecretProperties(pairs, None),
        Err(error) => SecretProperties(Vec::new(), Some(error)),
    })
}

/// One `key=value` per line; an error names the line, never its text.
fn secret_properties(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                pairs.push((key.trim().to_string(), value.to_string()))
            }
            _ => {
                return Err(format!(
                    "line {} is not a property: expected key=value, one per line (the line is not shown: it may hold a secret)",
                    number + 1
                ))
            }
        }
    }
    Ok(pairs)
}

impl Config {
    /// The librdkafka properties common to consumer and producer: bootstrap servers,
    /// SASL credentials, KAFKA_PROPERTIES, then KAFKA_SECRET_PROPERTIES.
    pub fn kafka_client_properties(&self) -> Vec<(&str, &str)> {
        let mut properties = vec![("bootstrap.servers", self.kafka_hosts.as_str())];
        if let Some(username) = &self.kafka_sasl_username {
            properties.push(("sasl.username", username));
        }
        if let Some(password) = &self.kafka_sasl_password {
            properties.push(("sasl.password", password));
        }
        properties.extend(
            self.kafka_properties
                .0
                .iter()
                .chain(&self.kafka_secret_properties.0)
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        properties
    }

    pub fn exactly_once(&self) -> bool {
        self.output_guarantee == OutputGuarantee::ExactlyOnce
    }

    /// The `transactional.id` of a source partition (exactly-once).
    pub fn transactional_id(&self, partition: i32) -> String {
        format!("{}-{partition}", self.transactional_id_base())
    }

    /// `{TRANSACTIONAL_ID_PREFIX}-{topic}`: what every transactional id of this
    /// deduplicator starts with.
    pub fn transactional_id_base(&self) -> String {
        let prefix = self
            .transactional_id_prefix
            .as_deref()
            .unwrap_or(&self.kafka_consumer_group);
        format!("{prefix}-{}", self.kafka_consumer_topic)
    }

    /// Settings that are valid one by one but not together.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(error) = &self.kafka_secret_properties.1 {
            return Err(format!("{}: {error}", env::KAFKA_SECRET_PROPERTIES));
        }
        for (variable, properties) in [
            (env::KAFKA_PROPERTIES, &self.kafka_properties.0),
            (
                env::KAFKA_CONSUMER_PROPERTIES,
                &self.kafka_consumer_properties.0,
            ),
            (
                env::KAFKA_SECRET_PROPERTIES,
                &self.kafka_secret_properties.0,
            ),
        ] {
            for (key, _) in properties {
                if key == "group.protocol" {
                    return Err(format!(
                        "{variable} sets group.protocol; set {} instead (classic or consumer)",
                        env::KAFKA_GROUP_PROTOCOL
                    ));
                }
                if self.kafka_group_protocol == GroupProtocol::Consumer
                    && BROKER_SIDE_WITH_CONSUMER_PROTOCOL.contains(&key.as_str())
                {
                    return Err(format!(
                        "{variable} sets {key}, which {}=consumer does not accept: with that protocol the brokers set the session timeout and heartbeat interval (group.consumer.session.timeout.ms, group.consumer.heartbeat.interval.ms) and assign the partitions (group.remote.assignor=uniform or range)",
                        env::KAFKA_GROUP_PROTOCOL
                    ));
                }
            }
        }
        if self.commit_interval.is_zero() {
            return Err(format!(
                "{} must be above 0 (e.g. 1s, 200ms)",
                env::COMMIT_INTERVAL
            ));
        }
        if self.exactly_once() && self.output_topic.is_none() {
            return Err(format!(
                "{}=exactly-once needs {}: the output is what the transactions commit",
                env::OUTPUT_GUARANTEE,
                env::OUTPUT_TOPIC
            ));
        }
        if self.exactly_once() && self.transaction_max_duration >= self.transaction_timeout {
            return Err(format!(
                "{} ({:?}) must be shorter than {} ({:?}), or the brokers abort transactions before they are committed",
                env::TRANSACTION_MAX_DURATION,
                self.transaction_max_duration,
                env::TRANSACTION_TIMEOUT,
                self.transaction_timeout
            ));
        }
        Ok(())
    }

    pub fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            dedup_window: self.dedup_window,
            max_capacity_bytes: self.max_store_capacity,
            wal: self.store_wal,
            recent_keys: self.store_recent_keys,
        }
    }

    pub fn store_resources(&self) -> StoreResources {
        StoreResources::new(self.store_block_cache_bytes, self.store_write_buffer_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("deduplicator").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_match_the_seed() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.kafka_hosts, "localhost:9092");
        assert_eq!(config.kafka_consumer_group, "kafka-deduplicator");
        assert_eq!(config.kafka_consumer_topic, "events");
        assert_eq!(config.output_topic, None);
        assert_eq!(config.max_in_flight_messages, 1000);
        assert_eq!(config.store_path, PathBuf::from("/tmp/deduplication-store"));
        assert_eq!(config.max_store_capacity, 0);
        assert_eq!(config.dedup_window, Duration::from_secs(86_400));
        assert_eq!(config.checkpoint_interval, Duration::from_secs(300));
        assert_eq!(config.final_checkpoint_timeout, Duration::from_secs(10));
        assert_eq!(config.local_checkpoint_dir, PathBuf::from("./checkpoints"));
        assert_eq!(config.remote.s3_bucket, None);
        assert_eq!(config.remote.s3_key_prefix, "deduplication-checkpoints");
        assert_eq!(config.full_upload_interval, 10);
        assert_eq!(config.max_local_checkpoints, 5);
    }

    #[test]
    fn bad_values_name_the_variable_and_the_form() {
        for (args, variable, form) in [
            (
                &["--max-store-capacity", "lots"][..],
                "MAX_STORE_CAPACITY",
                "whole number of bytes",
            ),
            (
                &["--dedup-window", "1 week"][..],
                "DEDUP_WINDOW",
                "with a unit",
            ),
            (
                &["--max-in-flight-messages", "0"][..],
                "MAX_IN_FLIGHT_MESSAGES",
                "1..",
            ),
            (&["--http-bind", "nowhere"][..], "HTTP_BIND", "IP:PORT"),
            (&["--log-format", "xml"][..], "LOG_FORMAT", "text or json"),
            (
                &["--kafka-properties", "acks"][..],
                "KAFKA_PROPERTIES",
                "key=value",
            ),
            (&["--store-wal", "maybe"][..], "STORE_WAL", "true"),
            (
                &["--checkpoint-interval", "often"][..],
                "CHECKPOINT_INTERVAL",
                "with a unit",
            ),
            (
                &["--final-checkpoint-timeout", "soon"][..],
                "FINAL_CHECKPOINT_TIMEOUT",
                "with a unit",
            ),
            (
                &["--full-upload-interval", "0"][..],
                "FULL_UPLOAD_INTERVAL",
                "1..",
            ),
            (
                &["--s3-endpoint", "minio:9000"][..],
                "S3_ENDPOINT",
                "http://",
            ),
            (
                &["--output-guarantee", "once"][..],
                "OUTPUT_GUARANTEE",
                "at-least-once, exactly-once",
            ),
            (
                &["--transaction-max-duration", "soon"][..],
                "TRANSACTION_MAX_DURATION",
                "with a unit",
            ),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(variable), "{args:?}: {err}");
            assert!(err.contains(form), "{args:?}: {err}");
        }
    }

    #[test]
    fn the_group_protocol_is_set_by_its_own_variable_and_refuses_client_side_timeouts() {
        assert_eq!(
            parse(&[]).unwrap().kafka_group_protocol,
            GroupProtocol::Classic
        );
        let err = parse(&["--kafka-group-protocol", "new"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("classic") && err.contains("consumer"), "{err}");
        let config = parse(&["--kafka-consumer-properties", "group.protocol=consumer"]).unwrap();
        let err = config.validate().unwrap_err();
        assert!(err.contains("KAFKA_GROUP_PROTOCOL"), "{err}");
        let config = parse(&[
            "--kafka-group-protocol",
            "consumer",
            "--kafka-consumer-properties",
            "session.timeout.ms=6000",
        ])
        .unwrap();
        let err = config.validate().unwrap_err();
        assert!(
            err.contains("KAFKA_CONSUMER_PROPERTIES")
                && err.contains("session.timeout.ms")
                && err.contains("group.consumer.session.timeout.ms"),
            "{err}"
        );
        let config = parse(&["--kafka-group-protocol", "consumer"]).unwrap();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.prefetch_interval, Duration::from_secs(1));
    }

    #[test]
    fn exactly_once_settings_are_checked_together() {
        let config = parse(&["--output-guarantee", "exactly-once"]).unwrap();
        let err = config.validate().unwrap_err();
        assert!(
            err.contains("OUTPUT_GUARANTEE") && err.contains("OUTPUT_TOPIC"),
            "{err}"
        );
        let config = parse(&[
            "--output-guarantee",
            "exactly-once",
            "--output-topic",
            "out",
            "--transaction-max-duration",
            "2m",
        ])
        .unwrap();
        let err = config.validate().unwrap_err();
        assert!(
            err.contains("TRANSACTION_MAX_DURATION") && err.contains("TRANSACTION_TIMEOUT"),
            "{err}"
        );
        let config = parse(&[
            "--output-guarantee",
            "exactly-once",
            "--output-topic",
            "out",
        ])
        .unwrap();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.transactional_id(3), "kafka-deduplicator-events-3");
        assert_eq!(
            parse(&[]).unwrap().output_guarantee,
            OutputGuarantee::AtLeastOnce
        );
    }

    #[test]
    fn properties_parse() {
        assert_eq!(
            parse_properties("a=1, b.c = x=y\nd=").unwrap(),
            Properties(vec![
                ("a".into(), "1".into()),
                ("b.c".into(), "x=y".into()),
                ("d".into(), "".into())
            ])
        );
        assert_eq!(parse_properties("").unwrap(), Properties::default());
    }

    #[test]
    fn a_configuration_error_never_shows_the_value() {
        use rdkafka::error::KafkaError;
        let error = without_value(KafkaError::ClientConfig(
            rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
            "Invalid value for configuration property \"ssl.key.password\": hunter2".into(),
            "ssl.key.password".into(),
            "hunter2".into(),
        ));
        let shown = error.to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("ssl.key.password"), "{shown}");
    }

    #[test]
    fn secret_properties_keep_commas_and_never_show_their_values() {
        let parsed = parse_secret_properties(
            "sasl.jaas.config=Module required user=\"a,b\" password=\"s3cret\";\nssl.key.password=k=v\n",
        )
        .unwrap();
        assert_eq!(
            parsed.0,
            vec![
                (
                    "sasl.jaas.config".to_string(),
                    "Module required user=\"a,b\" password=\"s3cret\";".to_string()
                ),
                ("ssl.key.password".to_string(), "k=v".to_string()),
            ]
        );
        let shown = format!("{parsed:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("sasl.jaas.config"),
            "{shown}"
        );
        let error = parse_secret_properties("ok=1\nhunter2").unwrap().1.unwrap();
        assert!(
            error.contains("line 2") && !error.contains("hunter2"),
            "{error}"
        );
    }
}
