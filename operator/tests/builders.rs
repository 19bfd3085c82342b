//! The child objects built from a full and a minimal spec.

use crate::fixtures;

use dedup_core::config::env;
use operator::builders::{self, CONFIG_HASH_ANNOTATION};

#[test]
fn minimal_spec_gets_the_documented_defaults() {
    let cluster = fixtures::minimal();
    cluster.spec.validate().unwrap();
    let owner = builders::owner_reference(&cluster).unwrap();
    let data = builders::config_data(&cluster);
    assert_eq!(data[env::KAFKA_HOSTS], "kafka:9092");
    assert_eq!(data[env::KAFKA_CONSUMER_TOPIC], "events");
    assert_eq!(
        data[env::KAFKA_CONSUMER_GROUP],
        "prod",
        "group defaults to the name"
    );
    assert_eq!(data[env::S3_BUCKET], "dedup-checkpoints");
    assert_eq!(data[env::STORE_PATH], "/data/store");
    assert!(!data.contains_key(env::OUTPUT_TOPIC));
    assert!(
        !data.contains_key(env::KAFKA_GROUP_PROTOCOL),
        "the deduplicator's default"
    );

    let sts = builders::stateful_set(&cluster, &owner);
    let spec = sts.spec.unwrap();
    assert_eq!(spec.replicas, Some(1));
    let claim = &spec.volume_claim_templates.unwrap()[0];
    let storage = &claim
        .spec
        .as_ref()
        .unwrap()
        .resources
        .as_ref()
        .unwrap()
        .requests
        .as_ref()
        .unwrap()["storage"];
    assert_eq!(storage.0, "10Gi");
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.termination_grace_period_seconds, Some(60));
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("kafka-deduplicator:0.1.0")
    );
}

#[test]
fn full_spec_reaches_every_object() {
    let cluster = fixtures::full();
    cluster.spec.validate().unwrap();
    let owner = builders::owner_reference(&cluster).unwrap();
    assert_eq!(owner.kind, "DedupCluster");
    assert_eq!(owner.controller, Some(true));

    let cm = builders::config_map(&cluster, &owner);
    let data = cm.data.as_ref().unwrap();
    assert_eq!(data[env::OUTPUT_TOPIC], "events_deduplicated");
    assert_eq!(data[env::DEAD_LETTER_TOPIC], "events_dlq");
    assert_eq!(data[env::KAFKA_CONSUMER_GROUP], "dedup-prod");
    assert_eq!(data[env::KAFKA_GROUP_PROTOCOL], "consumer");
    assert_eq!(
        data[env::KAFKA_PROPERTIES],
        "sasl.mechanism=SCRAM-SHA-512\nsecurity.protocol=SASL_SSL"
    );
    assert_eq!(data[env::DEDUP_WINDOW], "48h");
    assert_eq!(data[env::MAX_STORE_CAPACITY], "20GiB");
    assert_eq!(data[env::MAX_IN_FLIGHT_MESSAGES], "5000");
    assert_eq!(data[env::OUTPUT_GUARANTEE], "exactly-once");
    assert_eq!(data[env::CHECKPOINT_INTERVAL], "120s");
    assert_eq!(data[env::FULL_UPLOAD_INTERVAL], "5");
    assert_eq!(data[env::MAX_LOCAL_CHECKPOINTS], "3");
    assert_eq!(data[env::MAX_REMOTE_CHECKPOINTS], "20");
    assert_eq!(data[env::S3_KEY_PREFIX], "prod");
    assert_eq!(data[env::S3_REGION], "eu-west-1");
    assert_eq!(data[env::S3_ENDPOINT], "http://minio.storage:9000");
    assert_eq!(data[env::SHUTDOWN_TIMEOUT], "85s");
    // No credential ever lands in the ConfigMap.
    for value in data.values() {
        assert!(!value.to_lowercase().contains("password"), "{value}");
    }

    let sts = builders::stateful_set(&cluster, &owner);
    assert_eq!(sts.metadata.owner_references.as_ref().unwrap()[0], owner);
    let spec = sts.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("prod"));
    let template = spec.template;
    let annotations = template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap();
    assert_eq!(
        annotations[CONFIG_HASH_ANNOTATION],
        builders::config_hash(data)
    );
    let pod = template.spec.unwrap();
    assert_eq!(pod.termination_grace_period_seconds, Some(90));
    assert_eq!(pod.node_selector.as_ref().unwrap()["workload"], "streaming");
    assert_eq!(
        pod.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("dedicated")
    );
    assert!(pod.affinity.as_ref().unwrap().pod_anti_affinity.is_some());

    let init = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.name, "restorer");
    assert_eq!(init.command.as_ref().unwrap(), &["restorer"]);
    let main = &pod.containers[0];
    assert_eq!(main.name, "deduplicator");
    assert_eq!(
        main.image.as_deref(),
        Some("registry.example/kafka-deduplicator:1.2.3")
    );
    assert_eq!(
        main.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"].0,
        "4Gi"
    );
    assert_eq!(main.ports.as_ref().unwrap()[0].container_port, 8080);
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .unwrap()
            .http_get
            .as_ref()
            .unwrap()
            .path
            .clone()
            .unwrap()
    };
    assert_eq!(probe_path(&main.liveness_probe), "/healthz");
    assert_eq!(probe_path(&main.readiness_probe), "/readyz");
    for container in [init, main] {
        let env = container.env.as_ref().unwrap();
        let pod_name = env.iter().find(|e| e.name == env::POD_NAME).unwrap();
        let field = pod_name
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            field.field_path, "metadata.name",
            "POD_NAME from the downward API"
        );
        let password = env
            .iter()
            .find(|e| e.name == env::KAFKA_SASL_PASSWORD)
            .unwrap();
        let secret = password
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            (secret.name.as_str(), secret.key.as_str()),
            ("kafka-credentials", "password")
        );
        let from = container.env_from.as_ref().unwrap();
        assert_eq!(from[0].config_map_ref.as_ref().unwrap().name, "prod-config");
        assert_eq!(from[1].secret_ref.as_ref().unwrap().name, "s3-credentials");
        assert_eq!(
            container.volume_mounts.as_ref().unwrap()[0].mount_path,
            "/data"
        );
    }
    let claim = &spec.volume_claim_templates.unwrap()[0];
    assert_eq!(
        claim.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some("fast-ssd")
    );

    let service = builders::service(&cluster, &owner).spec.unwrap();
    assert_eq!(service.cluster_ip.as_deref(), Some("None"));
    let pdb = builders::pod_disruption_budget(&cluster, &owner)
        .spec
        .unwrap();
    assert_eq!(
        pdb.max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
    assert_eq!(
        builders::selector_string(&cluster),
        "app.kubernetes.io/instance=prod,app.kubernetes.io/name=kafka-deduplicator"
    );
}

#[test]
fn a_settings_change_changes_the_template_and_scaling_does_not() {
    let owner_of = |c: &operator::crd::DedupCluster| builders::owner_reference(c).unwrap();
    let base = fixtures::full();
    let mut scaled = base.clone();
    scaled.spec.replicas = 7;
    let mut changed = base.clone();
    changed.spec.dedup.window = Some("72h".into());
    let template = |c: &operator::crd::DedupCluster| {
        serde_json::to_value(
            builders::stateful_set(c, &owner_of(c))
                .spec
                .unwrap()
                .template,
        )
        .unwrap()
    };
    assert_eq!(template(&base), template(&scaled));
    assert_ne!(template(&base), template(&changed));
}

#[test]
fn invalid_specs_name_the_field() {
    let cases: Vec<(serde_json::Value, &str)> = vec![
        (serde_json::json!({"replicas": -1}), "spec.replicas"),
        (
            serde_json::json!({"kafka": {"bootstrapServers": " ", "inputTopic": "events"}}),
            "spec.kafka.bootstrapServers",
        ),
        (
            serde_json::json!({"kafka": {"bootstrapServers": "k:9092", "inputTopic": "bad topic!"}}),
            "spec.kafka.inputTopic",
        ),
        (
            serde_json::json!({"kafka": {"bootstrapServers": "k:9092", "inputTopic": "a", "outputTopic": "a"}}),
            "spec.kafka.outputTopic",
        ),
        (
            serde_json::json!({"kafka": {"bootstrapServers": "k:9092", "inputTopic": "a", "properties": {"group.id": "x"}}}),
            "spec.kafka.properties",
        ),
        (
            serde_json::json!({"kafka": {"bootstrapServers": "k:9092", "inputTopic": "a", "groupProtocol": "new"}}),
            "spec.kafka.groupProtocol",
        ),
        (
            serde_json::json!({"kafka": {"bootstrapServers": "k:9092", "inputTopic": "a", "properties": {"group.protocol": "consumer"}}}),
            "spec.kafka.properties",
        ),
        (
            serde_json::json!({"kafka": {"bootstrapServers": "k:9092", "inputTopic": "a", "groupProtocol": "consumer", "properties": {"session.timeout.ms": "6000"}}}),
            "spec.kafka.properties",
        ),
        (
            serde_json::json!({"dedup": {"window": "a week"}}),
            "spec.dedup.window",
        ),
        (
            serde_json::json!({"dedup": {"maxStoreCapacity": "lots"}}),
            "spec.dedup.maxStoreCapacity",
        ),
        (
            serde_json::json!({"dedup": {"outputGuarantee": "twice"}}),
            "spec.dedup.outputGuarantee",
        ),
        (
            serde_json::json!({"kafka": {"bootstrapServers": "k:9092", "inputTopic": "a", "outputTopic": null}, "dedup": {"outputGuarantee": "exactly-once"}}),
            "spec.dedup.outputGuarantee",
        ),
        (
            serde_json::json!({"storage": {"size": "big"}}),
            "spec.storage.size",
        ),
        (
            serde_json::json!({"checkpoint": {"s3": {"bucket": ""}}}),
            "spec.checkpoint.s3.bucket",
        ),
        (
            serde_json::json!({"terminationGracePeriodSeconds": 1}),
            "spec.terminationGracePeriodSeconds",
        ),
    ];
    for (patch, field) in cases {
        let mut spec = serde_json::to_value(&fixtures::minimal().spec).unwrap();
        merge(&mut spec, &patch);
        let cluster = fixtures::cluster(spec);
        let error = cluster.spec.validate().expect_err(field).to_string();
        assert!(error.starts_with(field), "{field}: {error}");
    }
}

fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// A DedupCluster `namespace/name` created at `created` (RFC 3339), on `brokers`, with
/// `group` as its `kafka.consumerGroup` (`None`: the default, its name).
fn peer(
    namespace: &str,
    name: &str,
    created: &str,
    brokers: &str,
    group: Option<&str>,
) -> operator::crd::DedupCluster {
    let mut spec = serde_json::to_value(&fixtures::minimal().spec).unwrap();
    spec["kafka"]["bootstrapServers"] = brokers.into();
    if let Some(group) = group {
        spec["kafka"]["consumerGroup"] = group.into();
    }
    let mut cluster = fixtures::cluster(spec);
    cluster.metadata.name = Some(name.into());
    cluster.metadata.namespace = Some(namespace.into());
    cluster.metadata.creation_timestamp = Some(serde_json::from_value(created.into()).unwrap());
    cluster
}

fn holder_of(
    cluster: &operator::crd::DedupCluster,
    peers: &[operator::crd::DedupCluster],
) -> Option<(String, String)> {
    builders::group_holder(cluster, peers.iter()).map(|c| {
        (
            c.metadata.namespace.clone().unwrap(),
            c.metadata.name.clone().unwrap(),
        )
    })
}

#[test]
fn a_consumer_group_already_held_on_the_same_brokers_is_refused_to_the_later_cluster() {
    let first = peer(
        "team-a",
        "events",
        "2026-01-01T00:00:00Z",
        "k1:9092,k2:9092",
        None,
    );
    // The same name in another namespace: the same default group, the same instance ids.
    let second = peer(
        "team-b",
        "events",
        "2026-01-02T00:00:00Z",
        " K2:9092, k1:9092 ",
        None,
    );
    let all = [first.clone(), second.clone()];
    assert_eq!(
        holder_of(&second, &all),
        Some(("team-a".into(), "events".into())),
        "the later one is refused, whatever the spelling of the same brokers"
    );
    assert_eq!(holder_of(&first, &all), None, "the first keeps its group");

    // Another name that sets the same group explicitly conflicts too.
    let named = peer(
        "team-c",
        "other",
        "2026-01-03T00:00:00Z",
        "k1:9092,k2:9092",
        Some("events"),
    );
    assert!(holder_of(&named, &[first.clone(), named.clone()]).is_some());

    // A group of its own, or other brokers: no conflict.
    let own = peer(
        "team-b",
        "events",
        "2026-01-02T00:00:00Z",
        "k1:9092,k2:9092",
        Some("events-b"),
    );
    assert_eq!(holder_of(&own, &[first.clone(), own.clone()]), None);
    let elsewhere = peer(
        "team-b",
        "events",
        "2026-01-02T00:00:00Z",
        "other:9092",
        None,
    );
    assert_eq!(
        holder_of(&elsewhere, &[first.clone(), elsewhere.clone()]),
        None
    );

    // An earlier cluster being deleted, or with an invalid spec, holds nothing.
    let mut leaving = first.clone();
    leaving.metadata.deletion_timestamp = leaving.metadata.creation_timestamp.clone();
    assert_eq!(holder_of(&second, &[leaving, second.clone()]), None);
    let mut broken = first.clone();
    broken.spec.replicas = -1;
    assert!(broken.spec.validate().is_err());
    assert_eq!(holder_of(&second, &[broken, second.clone()]), None);

    // Created in the same second: the lower namespace/name keeps it.
    let twin = peer(
        "team-0",
        "events",
        "2026-01-01T00:00:00Z",
        "k1:9092,k2:9092",
        None,
    );
    assert_eq!(
        holder_of(&first, &[first.clone(), twin.clone()]),
        Some(("team-0".into(), "events".into()))
    );
    assert_eq!(holder_of(&twin, &[first, twin.clone()]), None);
}
