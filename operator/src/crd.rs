//! The `DedupCluster` custom resource (`kafka-deduplicator.dev/v1alpha1`).
//!
//! Field doc comments become the descriptions `kubectl explain dedupcluster.spec` shows;
//! what the schema can check (required fields, ranges, duration and quantity formats) it
//! checks at admission. [`DedupClusterSpec::validate`] covers what it cannot, and the
//! controller reports its findings in the `Degraded` condition.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSetPersistentVolumeClaimRetentionPolicy;
use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, SecretKeySelector, Toleration,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A cluster of deduplicator pods consuming one Kafka topic as one consumer group, with
/// per-partition RocksDB state on each pod's volume and checkpoints in S3.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kafka-deduplicator.dev",
    version = "v1alpha1",
    kind = "DedupCluster",
    plural = "dedupclusters",
    shortname = "dedup",
    namespaced,
    status = "DedupClusterStatus",
    derive = "Default",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.labelSelector"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyReplicas"}"#,
    printcolumn = r#"{"name":"Lag","type":"integer","jsonPath":".status.autoscaling.lag"}"#,
    printcolumn = r#"{"name":"Target","type":"integer","jsonPath":".spec.autoscaling.targetLagPerReplica"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Condition","type":"string","jsonPath":".status.conditions[?(@.status==\"True\")].type"}"#
)]
// What the schema can say about field combinations, said at admission (CEL); `validate`
// repeats it for servers that do not evaluate these rules.
#[x_kube(
    validation = Rule::new("!has(self.dedup.outputGuarantee) || self.dedup.outputGuarantee != 'exactly-once' || has(self.kafka.outputTopic)")
        .message("exactly-once needs kafka.outputTopic: the output is what the transactions commit"),
    validation = Rule::new("!has(self.kafka.outputTopic) || self.kafka.outputTopic != self.kafka.inputTopic")
        .message("kafka.outputTopic must differ from kafka.inputTopic, or every event would be consumed again"),
    validation = Rule::new("!has(self.kafka.properties) || self.kafka.properties.all(k, !(k.contains('password') || k.contains('secret') || k.contains('jaas') || k.endsWith('key.pem') || k == 'sasl.oauthbearer.config'))")
        .message("kafka.properties must not hold secrets (passwords, sasl.jaas.config, client secrets, private keys): take them from a Secret with kafka.secretProperties"),
    validation = Rule::new("!has(self.autoscaling) || self.autoscaling.minReplicas <= self.autoscaling.maxReplicas")
        .message("autoscaling.minReplicas must not be above autoscaling.maxReplicas"),
    validation = Rule::new("!has(self.checkpoint.interval) || !self.checkpoint.interval.matches('^0+(ms|s|m|h|d)?$')")
        .message("checkpoint.interval 0 turns checkpoints off, and a partition that moves would start with an empty store; set an interval above 0")
)]
#[serde(rename_all = "camelCase")]
pub struct DedupClusterSpec {
    /// Number of deduplicator pods. The consumer group spreads the input topic's
    /// partitions over them; more pods than partitions leaves pods idle.
    /// Change it with `kubectl scale dedup/NAME --replicas=N`.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// Container image holding the `deduplicator` and `restorer` binaries.
    #[serde(default = "default_image")]
    #[schemars(length(min = 1))]
    pub image: String,

    /// Image pull policy of both containers (Always, IfNotPresent, Never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: Option<String>,

    /// Where events come from and go to.
    pub kafka: KafkaSpec,

    /// Deduplication settings.
    #[serde(default)]
    pub dedup: DedupSpec,

    /// The volume each pod keeps its partition stores and local checkpoints on. The size
    /// can grow (the pods' volumes are expanded where the StorageClass allows it); it
    /// cannot shrink, and the StorageClass cannot change (docs/operator.md, "Changing
    /// storage").
    #[serde(default)]
    #[x_kube(
        validation = Rule::new("quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0").message(
            "spec.storage.size can grow but not shrink: volumes cannot be made smaller (docs/operator.md, \"Changing storage\")"
        ),
        validation = Rule::new("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)").message(
            "spec.storage.storageClassName is immutable: existing volumes cannot move to another class (docs/operator.md, \"Changing storage\")"
        )
    )]
    pub storage: StorageSpec,

    /// Checkpoint policy: how often stores are snapshotted and where they are kept.
    pub checkpoint: CheckpointSpec,

    /// CPU and memory of the deduplicator container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// CPU and memory of the restorer init container. Default: requests 100m CPU and
    /// 128Mi, limits 1 CPU and 512Mi (namespaces with a quota on limits need them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restorer_resources: Option<ResourceRequirements>,

    /// ServiceAccount the pods run as, e.g. one bound to an IAM role for S3 (EKS IRSA
    /// or Pod Identity, GKE Workload Identity). Unset: the namespace's `default`. The
    /// operator creates none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub service_account_name: Option<String>,

    /// Additions to the pods' template: labels, annotations, spread, priority, pull
    /// secrets, extra volumes.
    #[serde(default, skip_serializing_if = "PodTemplateOverrides::is_empty")]
    pub pod_template: PodTemplateOverrides,

    /// What happens to the pods' volumes when the cluster is deleted (`whenDeleted`) or
    /// scaled down (`whenScaled`): `Retain` (default, both) or `Delete`. Retained
    /// volumes keep their stores for a later cluster of the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_retention_policy:
        Option<StatefulSetPersistentVolumeClaimRetentionPolicy>,

    /// Seconds a new pod must stay Ready before a rolling update moves on to the next
    /// one (default 10): the consumer has joined its group and opened its stores.
    #[serde(default = "default_min_ready")]
    #[schemars(range(min = 0))]
    pub min_ready_seconds: i32,

    /// Node labels the pods must run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Pod affinity and anti-affinity rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Seconds a pod has after SIGTERM to drain, commit and checkpoint (default 60).
    /// The deduplicator's own shutdown bound is set 5 seconds below it.
    #[serde(default = "default_grace")]
    #[schemars(range(min = 10))]
    pub termination_grace_period_seconds: i64,

    /// Scale on the consumer group's lag: the operator reads the lag from Kafka and sets
    /// `replicas` itself (a `kubectl scale` is then overridden at the next decision).
    /// Unset: `replicas` is left to you (or to an HPA/KEDA on the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,
}

/// Autoscaling on consumer lag (docs/operator.md, "Autoscaling"). Replicas =
/// ⌈lag ÷ targetLagPerReplica⌉, within minReplicas..maxReplicas and never above the input
/// topic's partition count, stabilised like the HPA's: a scale-up follows the lowest
/// recommendation of its window, a scale-down the highest of its own.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Fewest pods (default 1).
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,

    /// Most pods (capped at the input topic's partition count).
    #[schemars(range(min = 1))]
    pub max_replicas: i32,

    /// Messages of lag (the group's end offsets minus its committed offsets, summed over
    /// the input topic's partitions) each pod should have at most.
    #[schemars(range(min = 1))]
    pub target_lag_per_replica: i64,

    /// Seconds between lag readings and decisions (default 15).
    #[serde(default = "default_poll_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub poll_interval_seconds: i32,

    /// How fast pods are added.
    #[serde(default = "ScalingRules::default_up")]
    pub scale_up: ScalingRules,

    /// How fast pods are removed.
    #[serde(default = "ScalingRules::default_down")]
    pub scale_down: ScalingRules,
}

/// The pace of one direction of scaling.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Seconds of recommendations a change must agree with: the lowest of them for a
    /// scale-up, the highest for a scale-down. Default 0 up, 300 down.
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: i32,

    /// Most pods added or removed by one decision. Default 4 up, 1 down.
    #[schemars(range(min = 1))]
    pub max_step: i32,
}

impl ScalingRules {
    pub fn default_up() -> Self {
        Self {
            stabilization_window_seconds: 0,
            max_step: 4,
        }
    }

    pub fn default_down() -> Self {
        Self {
            stabilization_window_seconds: 300,
            max_step: 1,
        }
    }
}

/// What the autoscaler saw and decided last.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// The group's lag on the input topic at the last reading, in messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Partitions of the input topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Replicas the last reading alone asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_replicas: Option<i32>,
    /// Replicas decided after stabilisation and step limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Why: the decision, or why none could be made (lag unreadable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the lag was last read (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reading_time: Option<String>,
    /// When the autoscaler last changed `spec.replicas` (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
}

/// Additions to the pods' template, in the spirit of Strimzi's `template` and the Flink
/// operator's `podTemplate`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverrides {
    /// Labels added to the pods (the operator's own `app.kubernetes.io/*` labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Annotations added to the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// How the pods spread over failure domains. Unset: over zones and over nodes,
    /// `ScheduleAnyway` (a preference, never a reason to stay Pending); `[]`: no
    /// constraint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,

    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Secrets for pulling the image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Extra volumes of the pods (a Kafka CA or keystore for TLS, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,

    /// Extra mounts, added to both the restorer and the deduplicator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

impl PodTemplateOverrides {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Bootstrap servers, comma-separated host:port.
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,

    /// The topic to deduplicate. Key it by something copies of an event share (e.g.
    /// token:distinct_id): only copies in the same partition are caught.
    #[schemars(pattern(r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub input_topic: String,

    /// Topic unique events are published to. Unset: deduplicate and count only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub output_topic: Option<String>,

    /// Topic malformed messages are routed to. Unset: they pass through to the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[a-zA-Z0-9._-]{1,249}$"))]
    pub dead_letter_topic: Option<String>,

    /// Consumer group id (default: the DedupCluster's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub consumer_group: Option<String>,

    /// Consumer group protocol: `classic` (default; the group's leader assigns,
    /// cooperative-sticky) or `consumer` (KIP-848, Kafka 4.0+: the brokers assign, and
    /// a pod about to get a partition downloads its checkpoint before the old owner
    /// gives it up, so a move restores only the delta). With `consumer` the brokers'
    /// `group.consumer.session.timeout.ms` and `group.consumer.heartbeat.interval.ms`
    /// apply, and `kafka.properties` cannot set `session.timeout.ms`,
    /// `heartbeat.interval.ms` or `partition.assignment.strategy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(classic|consumer)$"))]
    pub group_protocol: Option<String>,

    /// Extra librdkafka properties for consumer and producer, e.g.
    /// `security.protocol: SASL_SSL`, `sasl.mechanism: SCRAM-SHA-512`.
    /// Credentials do not belong here: use `credentialsSecret`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,

    /// librdkafka properties that hold secrets, each taken from a key of a Secret in the
    /// same namespace, e.g. `sasl.oauthbearer.client.secret: {name: kafka-client, key:
    /// secret}` or `ssl.key.password`. Values are single lines (mount PEM files as
    /// volumes and use `ssl.key.location`). Their
    /// values reach the pods' environment by reference only, never a ConfigMap, a log
    /// line or an Event; a change of the Secret rolls the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_properties: BTreeMap<String, SecretKeySelector>,

    /// Name of a Secret in the same namespace with keys `username` and `password`,
    /// passed to the deduplicator as SASL credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DedupSpec {
    /// Keys older than this by event time are forgotten (e.g. 24h, 7d; 0 = never).
    /// Default 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([0-9]+(ms|s|m|h|d)|0)$"))]
    pub window: Option<String>,

    /// Most bytes each partition store may hold, oldest keys evicted beyond it
    /// (e.g. 512MiB, 10GB; 0 = unlimited). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]+ ?([KMGT]i?B|[kmgt]i?b|B|b)?$"))]
    pub max_store_capacity: Option<String>,

    /// Messages in flight per pod (received, outcome not yet final). Default 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_in_flight_messages: Option<i32>,

    /// `at-least-once` (default) or `exactly-once`: output and consumed offsets commit
    /// in one Kafka transaction per partition, so `read_committed` readers of the output
    /// see each unique event once across crashes and rebalances. Needs
    /// `kafka.outputTopic` and brokers with transactions; costs latency (output is
    /// visible at each commit, every 100 ms by default) and throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^(at-least-once|exactly-once)$"))]
    pub output_guarantee: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each pod's volume (a Kubernetes quantity, e.g. 20Gi). Default 10Gi.
    #[serde(default = "default_storage_size")]
    #[schemars(pattern(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,

    /// StorageClass of the volumes (default: the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSpec {
    /// Time between checkpoints of each partition store. Default 300s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^([0-9]+(ms|s|m|h|d)|0)$"))]
    pub interval: Option<String>,

    /// Every N-th upload is full (all files sent again); the others are incremental.
    /// Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub full_upload_interval: Option<i32>,

    /// Checkpoints kept on each pod's volume. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub local_retention: Option<i32>,

    /// Checkpoints kept in S3 per partition (older ones are garbage-collected).
    /// Default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub remote_retention: Option<i32>,

    /// Where checkpoints are uploaded.
    pub s3: S3Spec,

    /// Name of a Secret in the same namespace whose keys are set as environment
    /// variables of both containers: the standard AWS ones (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, optionally AWS_SESSION_TOKEN). Unset: the pod's own AWS
    /// identity (e.g. IRSA) is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Spec {
    /// Bucket holding the checkpoints.
    #[schemars(length(min = 3, max = 63))]
    pub bucket: String,

    /// Key prefix under the bucket. Default deduplication-checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,

    /// AWS region of the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,

    /// Endpoint of an S3-compatible store (path-style addressing), e.g.
    /// http://minio.storage:9000. Unset: AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^https?://.+"))]
    pub endpoint: Option<String>,
}

/// What the operator observed of the cluster.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DedupClusterStatus {
    /// Pods the StatefulSet has (scale subresource).
    #[serde(default)]
    pub replicas: i32,
    /// Pods that are ready: joined the group with every assigned store open.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods, as a string (scale subresource, for autoscalers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing and Degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The lag autoscaler's last reading and decision (with `spec.autoscaling`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
}

/// The defaults a spec gets from the schema and serde; Kafka and S3 fields, which have
/// none, are empty (and invalid).
impl Default for DedupClusterSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            image: default_image(),
            image_pull_policy: None,
            kafka: KafkaSpec::default(),
            dedup: DedupSpec::default(),
            storage: StorageSpec::default(),
            checkpoint: CheckpointSpec::default(),
            resources: None,
            restorer_resources: None,
            service_account_name: None,
            pod_template: PodTemplateOverrides::default(),
            persistent_volume_claim_retention_policy: None,
            min_ready_seconds: default_min_ready(),
            node_selector: None,
            tolerations: None,
            affinity: None,
            termination_grace_period_seconds: default_grace(),
            autoscaling: None,
        }
    }
}

fn default_min_replicas() -> i32 {
    1
}

fn default_poll_seconds() -> i32 {
    15
}

fn default_replicas() -> i32 {
    1
}

fn default_image() -> String {
    "kafka-deduplicator:0.1.0".into()
}

fn default_storage_size() -> String {
    "10Gi".into()
}

fn default_grace() -> i64 {
    60
}

fn default_min_ready() -> i32 {
    10
}

/// A spec problem the schema could not catch: which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {message}")]
pub struct InvalidSpec {
    pub field: &'static str,
    pub message: String,
}

impl DedupClusterSpec {
    /// Checks what the CRD schema cannot express (or what a server without the schema
    /// would let through).
    pub fn validate(&self) -> Result<(), InvalidSpec> {
        let invalid = |field, message: String| Err(InvalidSpec { field, message });
        if self.replicas < 0 {
            return invalid("replicas", format!("{} is negative", self.replicas));
        }
        if self.image.trim().is_empty() {
            return invalid("image", "must not be empty".into());
        }
        if self.kafka.bootstrap_servers.trim().is_empty() {
            return invalid("kafka.bootstrapServers", "must not be empty".into());
        }
        for (field, topic) in [
            ("kafka.inputTopic", Some(&self.kafka.input_topic)),
            ("kafka.outputTopic", self.kafka.output_topic.as_ref()),
            (
                "kafka.deadLetterTopic",
                self.kafka.dead_letter_topic.as_ref(),
            ),
        ] {
            if let Some(topic) = topic {
                if !valid_topic(topic) {
                    return invalid(field, format!("`{topic}` is not a Kafka topic name ([a-zA-Z0-9._-], 1 to 249 characters)"));
                }
            }
        }
        match self.dedup.output_guarantee.as_deref() {
            None | Some("at-least-once") => {}
            Some("exactly-once") if self.kafka.output_topic.is_none() => return invalid(
                "dedup.outputGuarantee",
                "exactly-once needs kafka.outputTopic: the output is what the transactions commit"
                    .into(),
            ),
            Some("exactly-once") => {}
            Some(other) => {
                return invalid(
                    "dedup.outputGuarantee",
                    format!("`{other}` is not at-least-once or exactly-once"),
                )
            }
        }
        if Some(&self.kafka.input_topic) == self.kafka.output_topic.as_ref() {
            return invalid(
                "kafka.outputTopic",
                "must differ from kafka.inputTopic, or every event would be consumed again".into(),
            );
        }
        for key in self.kafka.properties.keys() {
            if holds_secret(key) {
                return invalid(
                    "kafka.properties",
                    format!(
                        "`{key}` holds a secret: take it from a Secret with kafka.secretProperties"
                    ),
                );
            }
        }
        for key in self.kafka.secret_properties.keys() {
            if key == "sasl.jaas.config" {
                return invalid(
                    "kafka.secretProperties",
                    "librdkafka does not take sasl.jaas.config (a Java client setting): use credentialsSecret for SASL PLAIN/SCRAM, or sasl.oauthbearer.* for OAUTHBEARER".into(),
                );
            }
            if key.trim().is_empty() || self.kafka.properties.contains_key(key) {
                return invalid(
                    "kafka.secretProperties",
                    format!("`{key}` is empty or also in kafka.properties"),
                );
            }
        }
        for key in self
            .kafka
            .properties
            .keys()
            .chain(self.kafka.secret_properties.keys())
        {
            if matches!(
                key.as_str(),
                "bootstrap.servers"
                    | "group.id"
                    | "group.instance.id"
                    | "sasl.password"
                    | "sasl.username"
                    | "enable.auto.offset.store"
                    | "group.protocol"
            ) {
                return invalid("kafka.properties", format!("`{key}` is set by the operator (use the dedicated field or credentialsSecret)"));
            }
        }
        match self.kafka.group_protocol.as_deref() {
            None | Some("classic") => {}
            Some("consumer") => {
                if let Some(key) = self.kafka.properties.keys().find(|k| {
                    dedup_core::config::BROKER_SIDE_WITH_CONSUMER_PROTOCOL.contains(&k.as_str())
                }) {
                    return invalid(
                        "kafka.properties",
                        format!("`{key}` cannot be set with kafka.groupProtocol consumer: the brokers decide it (group.consumer.session.timeout.ms, group.consumer.heartbeat.interval.ms, group.remote.assignor)"),
                    );
                }
            }
            Some(other) => {
                return invalid(
                    "kafka.groupProtocol",
                    format!("`{other}` is not a group protocol: classic or consumer"),
                )
            }
        }
        for (field, value) in [
            ("dedup.window", &self.dedup.window),
            ("checkpoint.interval", &self.checkpoint.interval),
        ] {
            if let Some(value) = value {
                if let Err(message) = dedup_core::config::parse_duration(value) {
                    return invalid(field, message);
                }
            }
        }
        if let Some(capacity) = &self.dedup.max_store_capacity {
            if let Err(message) = dedup_core::config::parse_bytes(capacity) {
                return invalid("dedup.maxStoreCapacity", message);
            }
        }
        if let Some(autoscaling) = &self.autoscaling {
            if autoscaling.min_replicas < 1 || autoscaling.max_replicas < 1 {
                return invalid(
                    "autoscaling",
                    "minReplicas and maxReplicas must be at least 1".into(),
                );
            }
            if autoscaling.min_replicas > autoscaling.max_replicas {
                return invalid(
                    "autoscaling.minReplicas",
                    format!(
                        "{} is above autoscaling.maxReplicas ({})",
                        autoscaling.min_replicas, autoscaling.max_replicas
                    ),
                );
            }
            if autoscaling.target_lag_per_replica < 1 {
                return invalid(
                    "autoscaling.targetLagPerReplica",
                    "must be at least 1 message".into(),
                );
            }
        }
        if !valid_quantity(&self.storage.size) {
            return invalid(
                "storage.size",
                format!("`{}` is not a quantity (e.g. 10Gi)", self.storage.size),
            );
        }
        if self.checkpoint.s3.bucket.trim().len() < 3 {
            return invalid(
                "checkpoint.s3.bucket",
                "must be a bucket name of 3 to 63 characters".into(),
            );
        }
        if let Some(interval) = &self.checkpoint.interval {
            if dedup_core::config::parse_duration(interval).is_ok_and(|d| d.is_zero()) {
                return invalid(
                    "checkpoint.interval",
                    "0 turns checkpoints off, and a partition that moves would start with an empty store".into(),
                );
            }
        }
        for key in self.pod_template.labels.keys() {
            if key.starts_with("app.kubernetes.io/") {
                return invalid(
                    "podTemplate.labels",
                    format!("`{key}` is set by the operator (the pods' selector and owner)"),
                );
            }
        }
        for mount in &self.pod_template.volume_mounts {
            if mount.mount_path == "/data" || mount.mount_path.starts_with("/data/") {
                return invalid(
                    "podTemplate.volumeMounts",
                    format!(
                        "`{}` is inside the pods' data volume (/data)",
                        mount.mount_path
                    ),
                );
            }
        }
        if self.termination_grace_period_seconds < 10 {
            return invalid(
                "terminationGracePeriodSeconds",
                "must be at least 10 (drain, commit and checkpoint need time)".into(),
            );
        }
        Ok(())
    }
}

/// Whether a librdkafka property holds a secret (the CRD's CEL rule says the same).
pub fn holds_secret(key: &str) -> bool {
    key.contains("password")
        || key.contains("secret")
        || key.contains("jaas")
        || key.ends_with("key.pem")
        || key == "sasl.oauthbearer.config"
}

impl DedupClusterSpec {
    /// The names of the Secrets the pods reference: SASL credentials, S3 credentials,
    /// secret properties, and Secret volumes of `podTemplate` (a keystore is read at
    /// start, so a rotation must roll the pods). Optional volume Secrets are left out.
    pub fn referenced_secrets(&self) -> std::collections::BTreeSet<String> {
        let volumes = self.pod_template.volumes.iter().flat_map(|volume| {
            let direct = volume
                .secret
                .iter()
                .filter(|s| s.optional != Some(true))
                .filter_map(|s| s.secret_name.clone());
            let projected = volume
                .projected
                .iter()
                .flat_map(|p| p.sources.iter().flatten())
                .filter_map(|source| source.secret.as_ref())
                .filter(|s| s.optional != Some(true))
                .map(|s| s.name.clone());
            direct.chain(projected).collect::<Vec<_>>()
        });
        self.kafka
            .credentials_secret
            .iter()
            .chain(&self.checkpoint.credentials_secret)
            .cloned()
            .chain(
                self.kafka
                    .secret_properties
                    .values()
                    .map(|s| s.name.clone()),
            )
            .chain(volumes)
            .collect()
    }
}

fn valid_topic(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn valid_quantity(text: &str) -> bool {
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    !number.is_empty()
        && number.parse::<f64>().is_ok()
        && [
            "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "k", "M", "G", "T", "P", "E",
        ]
        .contains(&suffix)
}
