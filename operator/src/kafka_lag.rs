//! The operator's own access to a cluster's Kafka ([`KafkaAccess`]), and a consumer
//! group's lag on a topic, read from Kafka: the topic's partitions (metadata),
//! the group's committed offsets (`OffsetFetch`, without joining the group) and each
//! partition's end offset. Lag = Σ (end − committed); a partition without a committed
//! offset counts whole (end − start): nothing of it has been consumed.

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::crd::DedupCluster;

/// How to reach the group's Kafka.
#[derive(Debug, Clone)]
pub struct KafkaAccess {
    pub bootstrap_servers: String,
    pub group: String,
    pub topic: String,
    /// librdkafka properties (security settings, credentials).
    pub properties: Vec<(String, String)>,
}

/// How the operator reaches the cluster's Kafka: its bootstrap servers, group, topic and
/// client properties, with the Secret-held ones (`secretProperties`, `credentialsSecret`)
/// read from their Secrets.
impl KafkaAccess {
    pub async fn for_cluster(client: &Client, cluster: &DedupCluster) -> Result<Self, String> {
        let kafka = &cluster.spec.kafka;
        let namespace = cluster.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let mut properties: Vec<(String, String)> = kafka
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let value = |secret: Secret, key: &str, name: &str| -> Result<String, String> {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .ok_or_else(|| format!("Secret {name} has no key {key}"))?;
            String::from_utf8(bytes.0.clone())
                .map(|v| v.trim_end_matches('\n').to_string())
                .map_err(|_| format!("Secret {name} key {key} is not UTF-8"))
        };
        for (property, selector) in &kafka.secret_properties {
            let name = selector.name.clone();
            let secret = secrets
                .get(&name)
                .await
                .map_err(|e| format!("reading Secret {name}: {e}"))?;
            properties.push((property.clone(), value(secret, &selector.key, &name)?));
        }
        if let Some(name) = &kafka.credentials_secret {
            let secret = secrets
                .get(name)
                .await
                .map_err(|e| format!("reading Secret {name}: {e}"))?;
            properties.push((
                "sasl.username".into(),
                value(secret.clone(), "username", name)?,
            ));
            properties.push(("sasl.password".into(), value(secret, "password", name)?));
        }
        Ok(KafkaAccess {
            bootstrap_servers: kafka.bootstrap_servers.clone(),
            group: crate::builders::consumer_group(cluster),
            topic: kafka.input_topic.clone(),
            properties,
        })
    }
}

/// The group's lag on the topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupLag {
    /// Messages not yet consumed, over every partition.
    pub total: i64,
    pub partitions: i32,
}

/// Reads the lag, each Kafka call bounded by `timeout` (on a blocking thread: librdkafka's
/// calls block). The error says what failed, for the status and the Event.
pub async fn read(access: KafkaAccess, timeout: Duration) -> Result<GroupLag, String> {
    tokio::task::spawn_blocking(move || read_blocking(&access, timeout))
        .await
        .map_err(|e| format!("the lag reading task failed: {e}"))?
}

fn read_blocking(access: &KafkaAccess, timeout: Duration) -> Result<GroupLag, String> {
    let mut config = ClientConfig::new();
    for (key, value) in &access.properties {
        config.set(key, value);
    }
    config
        .set("bootstrap.servers", &access.bootstrap_servers)
        .set("group.id", &access.group)
        .set("enable.auto.commit", "false")
        .set("client.id", "kafka-deduplicator-operator");
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| format!("cannot create a Kafka client: {e}"))?;
    let topic = access.topic.as_str();
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| format!("reading the metadata of {topic}: {e}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!(
            "the topic {topic} has no partitions (does it exist?)"
        ));
    }
    let mut list = TopicPartitionList::new();
    for &partition in &partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, timeout).map_err(|e| {
        format!(
            "reading the committed offsets of group {}: {e}",
            access.group
        )
    })?;
    let mut total = 0i64;
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| format!("reading the end offset of {topic}/{partition}: {e}"))?;
        let entry = committed.find_partition(topic, partition);
        if let Some(Err(error)) = entry.as_ref().map(|e| e.error()) {
            // Not "never committed": counting the whole partition would scale to the max.
            return Err(format!(
                "reading the committed offset of {topic}/{partition} for group {}: {error}",
                access.group
            ));
        }
        let consumed_up_to = match entry.map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => offset.max(low),
            _ => low,
        };
        total = total.saturating_add((high - consumed_up_to).max(0));
    }
    Ok(GroupLag {
        total,
        partitions: partitions.len() as i32,
    })
}
