//! The controller against kube-fake-client's in-memory API server: children, scale,
//! spec changes, invalid specs; the status as a pure function of the StatefulSet.

use crate::fixtures;

use std::sync::Arc;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use kube_fake_client::ClientBuilder;
use operator::controller::{condition, observed_status, reconcile, Context};
use operator::crd::DedupCluster;
use operator::metrics::Metrics;
use prometheus_client::registry::Registry;

use crate::fixtures::NAMESPACE;

async fn fake_client() -> Client {
    ClientBuilder::new()
        .with_resource::<DedupCluster>()
        .with_status_subresource::<DedupCluster>()
        .with_status_subresource::<StatefulSet>()
        .build()
        .await
        .expect("fake client")
}

struct Harness {
    clusters: Api<DedupCluster>,
    statefulsets: Api<StatefulSet>,
    ctx: Arc<Context>,
    metrics: Arc<Metrics>,
}

impl Harness {
    async fn new(cluster: DedupCluster) -> Self {
        let client = fake_client().await;
        let clusters: Api<DedupCluster> = Api::namespaced(client.clone(), NAMESPACE);
        let mut cluster = cluster;
        cluster.metadata.uid = None;
        cluster.metadata.generation = None;
        clusters
            .create(&PostParams::default(), &cluster)
            .await
            .expect("create DedupCluster");
        // The Secrets the spec references exist (the operator checks them before applying).
        let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
        for name in cluster.spec.referenced_secrets() {
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name),
                    ..Default::default()
                },
                ..Secret::default()
            };
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .expect("create Secret");
        }
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        Self {
            statefulsets: Api::namespaced(client.clone(), NAMESPACE),
            ctx: Arc::new(Context::new(client, Arc::clone(&metrics))),
            clusters,
            metrics,
        }
    }

    async fn current(&self) -> DedupCluster {
        self.clusters.get("prod").await.expect("get DedupCluster")
    }

    async fn reconcile(&self) {
        let cluster = self.current().await;
        reconcile(Arc::new(cluster), Arc::clone(&self.ctx))
            .await
            .expect("reconcile");
    }

    async fn patch_spec(&self, patch: serde_json::Value) {
        self.clusters
            .patch(
                "prod",
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({ "spec": patch })),
            )
            .await
            .expect("patch spec");
    }

    async fn statefulset(&self) -> StatefulSet {
        self.statefulsets
            .get("prod")
            .await
            .expect("StatefulSet exists")
    }

    fn client(&self) -> Client {
        self.ctx.client.clone()
    }
}

#[tokio::test]
async fn a_dedup_cluster_gets_its_children_with_owner_references() {
    let h = Harness::new(fixtures::full()).await;
    h.reconcile().await;
    let uid = h.current().await.uid().expect("uid assigned by the API");

    let cm: ConfigMap = Api::namespaced(h.client(), NAMESPACE)
        .get("prod-config")
        .await
        .unwrap();
    let svc: Service = Api::namespaced(h.client(), NAMESPACE)
        .get("prod")
        .await
        .unwrap();
    let pdb: PodDisruptionBudget = Api::namespaced(h.client(), NAMESPACE)
        .get("prod")
        .await
        .unwrap();
    let sts = h.statefulset().await;
    for owners in [
        cm.owner_references(),
        svc.owner_references(),
        pdb.owner_references(),
        sts.owner_references(),
    ] {
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, uid);
        assert_eq!(owners[0].kind, "DedupCluster");
        assert_eq!(owners[0].controller, Some(true));
    }
    assert_eq!(sts.spec.as_ref().unwrap().replicas, Some(3));

    let status = h.current().await.status.expect("status written");
    assert_eq!(
        status.label_selector.as_deref(),
        Some("app.kubernetes.io/instance=prod,app.kubernetes.io/name=kafka-deduplicator")
    );
    assert_eq!(
        status.observed_generation,
        h.current().await.metadata.generation
    );
    assert_eq!(condition(&status, "Ready").unwrap().status, "False");
    assert_eq!(condition(&status, "Degraded").unwrap().status, "False");
    assert_eq!(
        h.metrics
            .reconciles
            .get_or_create(&operator::metrics::ResultLabels { result: "ok" })
            .get(),
        1
    );
}

#[tokio::test]
async fn scaling_changes_only_the_replicas() {
    let h = Harness::new(fixtures::full()).await;
    h.reconcile().await;
    let before = h.statefulset().await.spec.unwrap();
    // What `kubectl scale dedup/prod --replicas=5` does through the scale subresource.
    h.patch_spec(serde_json::json!({"replicas": 5})).await;
    h.reconcile().await;
    let after = h.statefulset().await.spec.unwrap();
    assert_eq!(after.replicas, Some(5));
    assert_eq!(
        serde_json::to_value(&before.template).unwrap(),
        serde_json::to_value(&after.template).unwrap(),
        "no pod template change, so no rolling restart"
    );
}

#[tokio::test]
async fn a_spec_change_rolls_the_pods() {
    let h = Harness::new(fixtures::full()).await;
    h.reconcile().await;
    let hash = |sts: &StatefulSet| {
        sts.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[operator::builders::CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let before = hash(&h.statefulset().await);
    h.patch_spec(serde_json::json!({"dedup": {"window": "72h"}}))
        .await;
    h.reconcile().await;
    let sts = h.statefulset().await;
    assert_ne!(
        hash(&sts),
        before,
        "the template changes, so the StatefulSet rolls"
    );
    let cm: ConfigMap = Api::namespaced(h.client(), NAMESPACE)
        .get("prod-config")
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["DEDUP_WINDOW"], "72h");
}

/// The status as a pure function of the StatefulSet (the real server's StatefulSet
/// controller writes that status in `real_cluster.rs`; kube-fake-client's apply does not
/// keep it, so here the StatefulSet is built by hand).
#[test]
fn status_and_conditions_follow_the_statefulset() {
    let mut cluster = fixtures::full();
    cluster.metadata.generation = Some(2);
    let progressing = serde_json::from_value::<StatefulSet>(serde_json::json!({
        "metadata": {"name": "prod", "generation": 1},
        "status": {"replicas": 3, "readyReplicas": 1, "updatedReplicas": 3,
                   "currentRevision": "prod-1", "updateRevision": "prod-1",
                   "observedGeneration": 1}
    }))
    .unwrap();
    let t0 = jiff::Timestamp::from_second(1_000_000).unwrap();
    let first = observed_status(&cluster, &Default::default(), &progressing, None, t0);
    assert_eq!((first.replicas, first.ready_replicas), (3, 1));
    assert_eq!(condition(&first, "Ready").unwrap().status, "False");
    assert_eq!(condition(&first, "Degraded").unwrap().status, "False");
    assert_eq!(first.observed_generation, Some(2));

    // The StatefulSet controller brings every pod up.
    let mut all_ready = progressing.clone();
    all_ready.status.as_mut().unwrap().ready_replicas = Some(3);
    let t1 = jiff::Timestamp::from_second(1_000_060).unwrap();
    let now = observed_status(&cluster, &first, &all_ready, None, t1);
    assert_eq!((now.replicas, now.ready_replicas), (3, 3));
    let ready = condition(&now, "Ready").unwrap();
    assert_eq!(ready.status, "True");
    assert_eq!(ready.last_transition_time.0, t1, "Ready flipped");
    assert_eq!(condition(&now, "Progressing").unwrap().status, "False");
    let degraded = condition(&now, "Degraded").unwrap();
    assert_eq!(degraded.status, "False");
    assert_eq!(degraded.last_transition_time.0, t0, "Degraded did not flip");

    // A StatefulSet that has not seen its latest generation is still rolling out.
    let mut behind = all_ready;
    behind.metadata.generation = Some(2);
    let later = observed_status(&cluster, &now, &behind, None, t1);
    assert_eq!(condition(&later, "Ready").unwrap().status, "False");
    assert_eq!(condition(&later, "Progressing").unwrap().status, "True");
}

#[tokio::test]
async fn an_invalid_spec_is_reported_as_degraded_without_children() {
    let mut cluster = fixtures::minimal();
    cluster.spec.kafka.output_topic = Some("events".into()); // same as the input
    let h = Harness::new(cluster).await;
    h.reconcile().await;
    let status = h.current().await.status.expect("status written");
    let degraded = condition(&status, "Degraded").unwrap();
    assert_eq!(degraded.status, "True");
    assert_eq!(degraded.reason, "InvalidSpec");
    assert!(
        degraded.message.contains("spec.kafka.outputTopic"),
        "{}",
        degraded.message
    );
    assert!(
        h.statefulsets.get_opt("prod").await.unwrap().is_none(),
        "nothing applied"
    );

    // Fixing the spec clears it.
    h.patch_spec(serde_json::json!({"kafka": {"outputTopic": "events_out"}}))
        .await;
    h.reconcile().await;
    let status = h.current().await.status.unwrap();
    assert_eq!(condition(&status, "Degraded").unwrap().status, "False");
    assert!(h.statefulsets.get_opt("prod").await.unwrap().is_some());
}

// That a reconcile of an unchanged spec writes nothing is a property of the real API
// server's server-side apply (kube-fake-client bumps resourceVersions on every apply): it
// is tested in `real_cluster.rs`.

/// Seen in the end-to-end autoscaling run: the controller wrote back its older copy of
/// `status.autoscaling` with every status write, so `kubectl get dedup` showed the lag and
/// decision of a reading or more before.
#[test]
fn the_controllers_status_write_leaves_the_autoscalers_part_alone() {
    use operator::crd::{AutoscalingStatus, DedupClusterStatus};
    let status = DedupClusterStatus {
        replicas: 3,
        autoscaling: Some(AutoscalingStatus {
            lag: Some(5),
            ..Default::default()
        }),
        ..Default::default()
    };
    let patch = operator::controller::status_patch(&status);
    assert_eq!(patch["status"]["replicas"], 3);
    assert!(
        patch["status"].get("autoscaling").is_none(),
        "the patch names status.autoscaling: {patch}"
    );
}
