//! The Kubernetes objects a `DedupCluster` becomes, as pure functions of it (no I/O).
//!
//! - ConfigMap `{name}-config`: the deduplicator's and restorer's settings, under their
//!   own variable names. Never credentials: those come from the referenced Secrets.
//! - Service `{name}` (headless): stable pod DNS names and the metrics port.
//! - StatefulSet `{name}`: the restorer as init container, the deduplicator as main
//!   container, one PVC per pod, `POD_NAME` from the downward API (it is the consumer's
//!   static group member id and the key of the pod's checkpoint ownership record).
//! - PodDisruptionBudget `{name}`: one pod down at a time, so a drain never takes all
//!   partitions' owners at once.
//!
//! A hash of the ConfigMap's data is an annotation of the pod template, so a settings
//! change rolls the pods; replicas are not in the template, so scaling does not.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use dedup_core::config::env;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretEnvSource, SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec,
    TopologySpreadConstraint, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::DedupCluster;

/// Port of the deduplicator's /metrics, /healthz and /readyz.
pub const HTTP_PORT: i32 = 8080;
/// Where each pod's volume is mounted.
pub const DATA_DIR: &str = "/data";
/// Annotation carrying the hash of the ConfigMap data on the pod template.
pub const CONFIG_HASH_ANNOTATION: &str = "kafka-deduplicator.dev/config-hash";
/// Name of the claim template (the pods' claims are `data-NAME-N`).
pub const DATA_VOLUME: &str = "data";
const APP: &str = "kafka-deduplicator";
/// Unprivileged user of the image (distroless "nonroot").
const RUN_AS_USER: i64 = 65532;

/// Labels every child object carries; the first two select the pods.
pub fn labels(cluster: &DedupCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP.to_string()),
        ("app.kubernetes.io/instance".to_string(), cluster.name_any()),
        (
            "app.kubernetes.io/managed-by".to_string(),
            "kafka-deduplicator-operator".to_string(),
        ),
    ])
}

/// The label selector of every object the operator makes (its watches use it).
pub fn managed_by_selector() -> String {
    "app.kubernetes.io/managed-by=kafka-deduplicator-operator".into()
}

/// The pod selector, also published as `status.labelSelector` for the scale subresource.
pub fn selector_labels(cluster: &DedupCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), APP.to_string()),
        ("app.kubernetes.io/instance".to_string(), cluster.name_any()),
    ])
}

pub fn selector_string(cluster: &DedupCluster) -> String {
    selector_labels(cluster)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn metadata(cluster: &DedupCluster, name: String, owner: &OwnerReference) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: cluster.namespace(),
        labels: Some(labels(cluster)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The owner reference children carry (controller, block owner deletion). `None` if the
/// resource has no name or uid yet (not read from the API server).
pub fn owner_reference(cluster: &DedupCluster) -> Option<OwnerReference> {
    cluster.controller_owner_ref(&())
}

pub fn config_map_name(cluster: &DedupCluster) -> String {
    format!("{}-config", cluster.name_any())
}

/// The cluster's consumer group: `kafka.consumerGroup`, or the cluster's name.
pub fn consumer_group(cluster: &DedupCluster) -> String {
    cluster
        .spec
        .kafka
        .consumer_group
        .clone()
        .unwrap_or_else(|| cluster.name_any())
}

/// The cluster's brokers as a comparable set: `kafka.bootstrapServers` split at commas,
/// trimmed, lower-cased, sorted.
fn broker_set(cluster: &DedupCluster) -> Vec<String> {
    let mut brokers: Vec<String> = cluster
        .spec
        .kafka
        .bootstrap_servers
        .split(',')
        .map(|b| b.trim().to_ascii_lowercase())
        .filter(|b| !b.is_empty())
        .collect();
    brokers.sort_unstable();
    brokers.dedup();
    brokers
}

/// The DedupCluster that already holds `cluster`'s consumer group, if another one among
/// `peers` has the same group id on the same brokers and came first (created earlier;
/// at the same second, the lower `namespace/name`). Two clusters in one group would split
/// the input's partitions between them, and two with the same name would also share
/// their pods' `group.instance.id`s and fence each other: the later one must not start.
pub fn group_holder<'a>(
    cluster: &DedupCluster,
    peers: impl IntoIterator<Item = &'a DedupCluster>,
) -> Option<&'a DedupCluster> {
    let order = |c: &DedupCluster| {
        (
            c.metadata.creation_timestamp.clone(),
            c.namespace().unwrap_or_default(),
            c.name_any(),
        )
    };
    let (group, brokers, mine) = (consumer_group(cluster), broker_set(cluster), order(cluster));
    peers
        .into_iter()
        .filter(|peer| {
            (peer.namespace(), peer.name_any()) != (cluster.namespace(), cluster.name_any())
        })
        // One being deleted, or whose spec is invalid (it gets no children), holds nothing.
        .filter(|peer| peer.metadata.deletion_timestamp.is_none() && peer.spec.validate().is_ok())
        .filter(|peer| consumer_group(peer) == group && broker_set(peer) == brokers)
        .filter(|peer| order(peer) < mine)
        .min_by_key(|peer| order(peer))
}

/// The settings of both containers, under the deduplicator's own variable names.
pub fn config_data(cluster: &DedupCluster) -> BTreeMap<String, String> {
    let spec = &cluster.spec;
    let mut data = BTreeMap::new();
    let mut set = |key: &str, value: String| {
        data.insert(key.to_string(), value);
    };
    set(env::KAFKA_HOSTS, spec.kafka.bootstrap_servers.clone());
    set(env::KAFKA_CONSUMER_TOPIC, spec.kafka.input_topic.clone());
    set(env::KAFKA_CONSUMER_GROUP, consumer_group(cluster));
    if let Some(topic) = &spec.kafka.output_topic {
        set(env::OUTPUT_TOPIC, topic.clone());
    }
    if let Some(topic) = &spec.kafka.dead_letter_topic {
        set(env::DEAD_LETTER_TOPIC, topic.clone());
    }
    if let Some(protocol) = &spec.kafka.group_protocol {
        set(env::KAFKA_GROUP_PROTOCOL, protocol.clone());
    }
    if !spec.kafka.properties.is_empty() {
        let properties: Vec<String> = spec
            .kafka
            .properties
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        set(env::KAFKA_PROPERTIES, properties.join("\n"));
    }
    if let Some(window) = &spec.dedup.window {
        set(env::DEDUP_WINDOW, window.clone());
    }
    if let Some(capacity) = &spec.dedup.max_store_capacity {
        set(env::MAX_STORE_CAPACITY, capacity.clone());
    }
    if let Some(max) = spec.dedup.max_in_flight_messages {
        set(env::MAX_IN_FLIGHT_MESSAGES, max.to_string());
    }
    if let Some(guarantee) = &spec.dedup.output_guarantee {
        set(env::OUTPUT_GUARANTEE, guarantee.clone());
    }
    set(env::STORE_PATH, format!("{DATA_DIR}/store"));
    set(env::LOCAL_CHECKPOINT_DIR, format!("{DATA_DIR}/checkpoints"));
    set(env::HTTP_BIND, format!("0.0.0.0:{HTTP_PORT}"));
    set(env::LOG_FORMAT, "json".into());
    // Leave the pod time to exit by itself before the kubelet's SIGKILL.
    set(
        env::SHUTDOWN_TIMEOUT,
        format!("{}s", (spec.termination_grace_period_seconds - 5).max(5)),
    );
    let checkpoint = &spec.checkpoint;
    if let Some(interval) = &checkpoint.interval {
        set(env::CHECKPOINT_INTERVAL, interval.clone());
    }
    // Pods rewrite their ownership record every interval; the restorer ignores a record
    // not rewritten for three intervals and five minutes (its pod was gone, e.g. scaled
    // down, and its partitions have moved).
    let interval = checkpoint
        .interval
        .as_deref()
        .and_then(|i| dedup_core::config::parse_duration(i).ok())
        .unwrap_or(std::time::Duration::from_secs(300));
    set(
        env::OWNER_RECORD_MAX_AGE,
        format!("{}s", interval.as_secs() * 3 + 300),
    );
    if let Some(n) = checkpoint.full_upload_interval {
        set(env::FULL_UPLOAD_INTERVAL, n.to_string());
    }
    if let Some(n) = checkpoint.local_retention {
        set(env::MAX_LOCAL_CHECKPOINTS, n.to_string());
    }
    if let Some(n) = checkpoint.remote_retention {
        set(env::MAX_REMOTE_CHECKPOINTS, n.to_string());
    }
    set(env::S3_BUCKET, checkpoint.s3.bucket.clone());
    if let Some(prefix) = &checkpoint.s3.prefix {
        set(env::S3_KEY_PREFIX, prefix.clone());
    }
    if let Some(region) = &checkpoint.s3.region {
        set(env::S3_REGION, region.clone());
    }
    if let Some(endpoint) = &checkpoint.s3.endpoint {
        set(env::S3_ENDPOINT, endpoint.clone());
    }
    data
}

pub fn config_map(cluster: &DedupCluster, owner: &OwnerReference) -> ConfigMap {
    ConfigMap {
        metadata: metadata(cluster, config_map_name(cluster), owner),
        data: Some(config_data(cluster)),
        ..ConfigMap::default()
    }
}

pub fn service(cluster: &DedupCluster, owner: &OwnerReference) -> Service {
    Service {
        metadata: metadata(cluster, cluster.name_any(), owner),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(cluster)),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String("http".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A short, stable hash of the ConfigMap data (FNV-1a, so it does not change between
/// operator builds the way `DefaultHasher` may).
pub fn config_hash(data: &BTreeMap<String, String>) -> String {
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
    data.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn env_vars(cluster: &DedupCluster) -> Vec<EnvVar> {
    let mut vars = vec![EnvVar {
        name: env::POD_NAME.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }];
    if let Some(secret) = &cluster.spec.kafka.credentials_secret {
        for (name, key) in [
            (env::KAFKA_SASL_USERNAME, "username"),
            (env::KAFKA_SASL_PASSWORD, "password"),
        ] {
            vars.push(EnvVar {
                name: name.into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: secret.clone(),
                        key: key.into(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
    }
    // Secret properties: each value from its Secret key into a variable of its own, then
    // KAFKA_SECRET_PROPERTIES refers to them (`$(VAR)`, expanded by the kubelet), so the
    // values are never in the pod spec or the ConfigMap.
    let secret_properties = &cluster.spec.kafka.secret_properties;
    if !secret_properties.is_empty() {
        let mut lines = Vec::new();
        for (i, (key, selector)) in secret_properties.iter().enumerate() {
            let name = format!("{SECRET_PROPERTY_VAR}{i}");
            lines.push(format!("{key}=$({name})"));
            vars.push(EnvVar {
                name,
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(selector.clone()),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
        vars.push(EnvVar {
            name: env::KAFKA_SECRET_PROPERTIES.into(),
            value: Some(lines.join("\n")),
            ..EnvVar::default()
        });
    }
    vars
}

/// Prefix of the variables holding secret properties' values (`…0`, `…1`, …).
pub const SECRET_PROPERTY_VAR: &str = "DEDUP_SECRET_PROPERTY_";

/// Annotation of the pod template carrying a hash of the referenced Secrets' versions:
/// a changed Secret rolls the pods.
pub const SECRETS_HASH_ANNOTATION: &str = "kafka-deduplicator.dev/secrets-hash";

/// Puts a short, stable hash of the referenced Secrets' (name, resourceVersion) pairs on
/// the pod template (nothing when there are none): a rotated Secret rolls the pods. The
/// operator reads only the Secrets' metadata, never their data.
pub fn annotate_secrets_hash(statefulset: &mut StatefulSet, versions: &BTreeMap<String, String>) {
    if versions.is_empty() {
        return;
    }
    let metadata = statefulset
        .spec
        .as_mut()
        .and_then(|s| s.template.metadata.as_mut());
    if let Some(metadata) = metadata {
        metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(SECRETS_HASH_ANNOTATION.into(), config_hash(versions));
    }
}

fn env_from(cluster: &DedupCluster) -> Vec<EnvFromSource> {
    let mut sources = vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource {
            name: config_map_name(cluster),
            optional: Some(false),
        }),
        ..EnvFromSource::default()
    }];
    if let Some(secret) = &cluster.spec.checkpoint.credentials_secret {
        sources.push(EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.clone(),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        });
    }
    sources
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(k8s_openapi::api::core::v1::Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..SecurityContext::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

pub fn stateful_set(cluster: &DedupCluster, owner: &OwnerReference) -> StatefulSet {
    let spec = &cluster.spec;
    let data_mount = VolumeMount {
        name: DATA_VOLUME.into(),
        mount_path: DATA_DIR.into(),
        ..VolumeMount::default()
    };
    let overrides = &spec.pod_template;
    let mut mounts = vec![data_mount];
    mounts.extend(overrides.volume_mounts.iter().cloned());
    let restorer = Container {
        name: "restorer".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        command: Some(vec!["restorer".into()]),
        env: Some(env_vars(cluster)),
        env_from: Some(env_from(cluster)),
        resources: Some(
            spec.restorer_resources
                .clone()
                .unwrap_or_else(default_restorer_resources),
        ),
        volume_mounts: Some(mounts.clone()),
        security_context: Some(container_security()),
        ..Container::default()
    };
    let deduplicator = Container {
        name: "deduplicator".into(),
        image: Some(spec.image.clone()),
        image_pull_policy: spec.image_pull_policy.clone(),
        command: Some(vec!["deduplicator".into()]),
        env: Some(env_vars(cluster)),
        env_from: Some(env_from(cluster)),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // Liveness fails on a store that cannot be written; readiness until the pod has
        // joined the group with its stores open. Liveness waits for the start (opening
        // every assigned store) for up to STARTUP_GRACE.
        startup_probe: Some(http_probe("/healthz", 5, STARTUP_GRACE_SECONDS / 5)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        resources: spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(container_security()),
        ..Container::default()
    };
    let data = config_data(cluster);
    // The operator's labels win over the template's (validation refuses them anyway).
    let mut template_labels = overrides.labels.clone();
    template_labels.extend(labels(cluster));
    template_labels.extend(selector_labels(cluster));
    let mut annotations = overrides.annotations.clone();
    annotations.extend([
        (CONFIG_HASH_ANNOTATION.to_string(), config_hash(&data)),
        ("prometheus.io/scrape".to_string(), "true".to_string()),
        ("prometheus.io/port".to_string(), HTTP_PORT.to_string()),
    ]);
    let spread = overrides
        .topology_spread_constraints
        .clone()
        .unwrap_or_else(|| default_spread(cluster));
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(selector_labels(cluster)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(spec.storage.size.clone()),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    StatefulSet {
        metadata: metadata(cluster, cluster.name_any(), owner),
        spec: Some(StatefulSetSpec {
            replicas: Some(spec.replicas),
            service_name: Some(cluster.name_any()),
            // Pods are independent consumer-group members: start and stop them together.
            pod_management_policy: Some("Parallel".into()),
            min_ready_seconds: Some(spec.min_ready_seconds),
            persistent_volume_claim_retention_policy: spec
                .persistent_volume_claim_retention_policy
                .clone(),
            selector: LabelSelector {
                match_labels: Some(selector_labels(cluster)),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(template_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    init_containers: Some(vec![restorer]),
                    containers: vec![deduplicator],
                    termination_grace_period_seconds: Some(spec.termination_grace_period_seconds),
                    service_account_name: spec.service_account_name.clone(),
                    priority_class_name: overrides.priority_class_name.clone(),
                    image_pull_secrets: non_empty(&overrides.image_pull_secrets),
                    volumes: non_empty(&overrides.volumes),
                    topology_spread_constraints: non_empty(&spread),
                    node_selector: spec.node_selector.clone(),
                    tolerations: spec.tolerations.clone(),
                    affinity: spec.affinity.clone(),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS_USER),
                        run_as_group: Some(RUN_AS_USER),
                        fs_group: Some(RUN_AS_USER),
                        // Pod Security `restricted` requires a seccomp profile.
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

/// Seconds the deduplicator has to start (open every assigned store) before liveness
/// checks begin.
pub const STARTUP_GRACE_SECONDS: i32 = 300;

/// The restorer's resources when the spec gives none: small requests (it streams files
/// from S3 to disk), and limits, which namespaces with a quota on limits require.
pub fn default_restorer_resources() -> ResourceRequirements {
    let quantities = |cpu: &str, memory: &str| {
        Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ]))
    };
    ResourceRequirements {
        requests: quantities("100m", "128Mi"),
        limits: quantities("1", "512Mi"),
        ..ResourceRequirements::default()
    }
}

/// Spread the pods over zones, then over nodes, as a preference: losing a zone or a node
/// takes as few partitions' owners as possible, and a cluster with one zone or one node
/// still schedules every pod.
pub fn default_spread(cluster: &DedupCluster) -> Vec<TopologySpreadConstraint> {
    ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        .into_iter()
        .map(|key| TopologySpreadConstraint {
            max_skew: 1,
            topology_key: key.into(),
            when_unsatisfiable: "ScheduleAnyway".into(),
            label_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(cluster)),
                ..LabelSelector::default()
            }),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

fn non_empty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

pub fn pod_disruption_budget(
    cluster: &DedupCluster,
    owner: &OwnerReference,
) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: metadata(cluster, cluster.name_any(), owner),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(cluster)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// Every child object, for tests and validation.
pub fn all_objects(cluster: &DedupCluster, owner: &OwnerReference) -> Vec<serde_json::Value> {
    let mut objects = Vec::new();
    let push = |objects: &mut Vec<serde_json::Value>,
                value: Result<serde_json::Value, serde_json::Error>| {
        if let Ok(value) = value {
            objects.push(value);
        }
    };
    push(&mut objects, typed_json(&config_map(cluster, owner)));
    push(&mut objects, typed_json(&service(cluster, owner)));
    push(&mut objects, typed_json(&stateful_set(cluster, owner)));
    push(
        &mut objects,
        typed_json(&pod_disruption_budget(cluster, owner)),
    );
    objects
}

/// An object as JSON with its apiVersion and kind, as it is applied.
pub fn typed_json<K>(object: &K) -> Result<serde_json::Value, serde_json::Error>
where
    K: Resource<DynamicType = ()> + serde::Serialize,
{
    let mut value = serde_json::to_value(object)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), K::api_version(&()).into());
        map.insert("kind".into(), K::kind(&()).into());
    }
    Ok(value)
}
