//! The operator on a real control plane: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and a kwok node, started by `scripts/start-test-services.sh`
//! (`scripts/start-kube.sh`). Unlike `controller.rs` (kube-fake-client), these tests see
//! server-side apply, admission (the CRD's schema and CEL rules, Pod Security
//! `restricted`, quota), RBAC, the `/scale` subresource, the StatefulSet controller and
//! the garbage collector as a cluster has them.
//!
//! The CRD, RBAC and the operator's Deployment are installed with `kubectl apply -k
//! manifests/` as shipped. Each test then runs the operator binary itself as the
//! manifests' ServiceAccount (a token of that account, so a verb missing from
//! `manifests/rbac.yaml` fails the test), limited to the test's own namespace
//! (`WATCH_NAMESPACE`), which enforces Pod Security `restricted`. kwok marks the pods
//! Running and Ready, so StatefulSets roll out as on a cluster; no container runs.
//!
//! Needs `KUBECONFIG` (set by `eval "$(scripts/start-test-services.sh)"`) and `kubectl` on
//! PATH. Missing, the tests fail, unless `DEDUP_ALLOW_MISSING_SERVICES=1` (local runs only,
//! never in CI) makes them skip.

mod support {
    pub mod cluster;
}

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, ListParams};
use kube::{Client, Resource, ResourceExt};
use operator::controller::condition;
use operator::crd::DedupCluster;
use operator::storage::{claim_request, claim_size};
use support::cluster::*;

const WAIT: Duration = Duration::from_secs(90);

/// Runs kubectl expecting a refusal; returns its error output.
fn kubectl_refused(args: &[&str], stdin: Option<&str>) -> String {
    let output = kubectl_output(args, stdin);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "kubectl {} was expected to be refused, but succeeded:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout)
    );
    stderr
}

/// A client, a namespace of the test's own and the operator watching it; `None` when the
/// test may skip.
async fn started(test: &str) -> Option<(Client, TestNamespace, Operator)> {
    let client = cluster().await?;
    let ns = TestNamespace::create(test);
    let operator = Operator::start(&ns.name);
    Some((client, ns, operator))
}

/// The example DedupCluster of `manifests/`, named `name`, with `replicas`, tolerating
/// the kwok node's taint, with `edit` applied to its spec (as JSON).
fn example(name: &str, replicas: i32, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let text = std::fs::read_to_string(repo_root().join("manifests/example-dedupcluster.yaml"))
        .expect("manifests/example-dedupcluster.yaml");
    let mut cluster: serde_json::Value = serde_yaml::from_str(&text).expect("the example is YAML");
    cluster["metadata"]["name"] = name.into();
    let spec = &mut cluster["spec"];
    spec["replicas"] = replicas.into();
    spec["tolerations"] = serde_json::json!([
        {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}
    ]);
    edit(spec);
    serde_json::to_string(&cluster).expect("JSON")
}

/// `kubectl patch dedup NAME --type=merge -p PATCH`.
fn patch_cluster(namespace: &str, name: &str, patch: &str) {
    kubectl(&[
        "patch",
        "dedup",
        name,
        "--namespace",
        namespace,
        "--type=merge",
        "-p",
        patch,
    ]);
}

/// Waits until the cluster's `Degraded` condition is True; returns it.
async fn degraded(clusters: &Api<DedupCluster>, name: &str) -> Condition {
    eventually(&format!("DedupCluster {name} Degraded"), WAIT, || async {
        let cluster = clusters.get(name).await.map_err(|e| e.to_string())?;
        let status = cluster.status.unwrap_or_default();
        match condition(&status, "Degraded") {
            Some(c) if c.status == "True" => Ok(c.clone()),
            _ => Err(format!("{status:?}")),
        }
    })
    .await
}

/// A child of the test's namespace, which must exist.
async fn child<K>(client: &Client, namespace: &str, name: &str) -> K
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("{} {name}: {e}", K::kind(&())))
}

/// A StorageClass of kwok's volumes, allowing expansion or not; returns its name.
fn storage_class(name: &str, expandable: bool) -> String {
    kubectl_in(
        &["apply", "-f", "-"],
        Some(&format!(
            r#"{{"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
                "metadata": {{"name": "{name}"}}, "provisioner": "kwok.x-k8s.io/volume",
                "allowVolumeExpansion": {expandable}, "volumeBindingMode": "Immediate"}}"#
        )),
    );
    name.to_string()
}

fn apply(namespace: &str, manifest: &str) {
    kubectl_in(
        &["apply", "--namespace", namespace, "-f", "-"],
        Some(manifest),
    );
}

/// Waits until the cluster's status says Ready for its current generation.
/// Applies the example DedupCluster `name` with 10Gi volumes of a new StorageClass
/// (expandable or not) in `ns`, and waits until it is ready; returns it and the class.
async fn ready_on_own_class(
    client: &kube::Client,
    ns: &TestNamespace,
    name: &str,
    replicas: i32,
    expandable: bool,
    operator: &Operator,
) -> (Api<DedupCluster>, String) {
    let class = storage_class(&format!("{}-{name}", ns.name), expandable);
    apply(
        &ns.name,
        &example(name, replicas, |spec| {
            spec["storage"] = serde_json::json!({"size": "10Gi", "storageClassName": class});
        }),
    );
    let clusters: Api<DedupCluster> = Api::namespaced(client.clone(), &ns.name);
    ready(&clusters, name, operator).await;
    (clusters, class)
}

/// The StatefulSet's update revision (the pod template its pods roll onto).
fn update_revision(s: &StatefulSet) -> Option<String> {
    s.status.as_ref().and_then(|s| s.update_revision.clone())
}

/// Waits until the StatefulSet `name` has an update revision other than `from`: its pods
/// roll (onto `what`).
async fn rolled_past(
    statefulsets: &Api<StatefulSet>,
    name: &str,
    from: Option<String>,
    what: &str,
) {
    let revision = update_revision;
    eventually(&format!("the pods roll onto {what}"), WAIT, || async {
        let now = statefulsets.get(name).await.map_err(|e| e.to_string())?;
        if revision(&now) != from {
            Ok(())
        } else {
            Err(format!("revision {:?}", revision(&now)))
        }
    })
    .await;
}

async fn ready(clusters: &Api<DedupCluster>, name: &str, operator: &Operator) -> DedupCluster {
    eventually(&format!("DedupCluster {name} Ready"), WAIT, || async {
        let cluster = clusters.get(name).await.map_err(|e| e.to_string())?;
        let status = cluster.status.clone().unwrap_or_default();
        let is_ready = condition(&status, "Ready").is_some_and(|c| c.status == "True");
        if is_ready
            && status.observed_generation == cluster.metadata.generation
            && status.ready_replicas == cluster.spec.replicas
        {
            Ok(cluster)
        } else {
            Err(format!(
                "{status:?}\noperator log tail:\n{}",
                tail(&operator.log(), 15)
            ))
        }
    })
    .await
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn owned_by(object: &impl Resource, cluster: &DedupCluster) -> bool {
    object.owner_references().iter().any(|o| {
        o.kind == "DedupCluster"
            && o.name == cluster.name_any()
            && Some(&o.uid) == cluster.metadata.uid.as_ref()
            && o.controller == Some(true)
    })
}

/// The resourceVersions of the cluster's children (`None`: absent) and of the
/// DedupCluster itself; an API error fails the test.
async fn resource_versions(client: &Client, namespace: &str, name: &str) -> [Option<String>; 5] {
    async fn version<K>(client: &Client, namespace: &str, name: &str) -> Option<String>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::<K>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("reading {} {name}: {e}", K::kind(&())))
            .and_then(|o| o.meta().resource_version.clone())
    }
    [
        version::<ConfigMap>(client, namespace, &format!("{name}-config")).await,
        version::<Service>(client, namespace, name).await,
        version::<StatefulSet>(client, namespace, name).await,
        version::<PodDisruptionBudget>(client, namespace, name).await,
        version::<DedupCluster>(client, namespace, name).await,
    ]
}

/// Waits until the operator has made no reconcile for two seconds; returns the count.
async fn settled(operator: &Operator) -> u64 {
    let mut last = operator.reconciles();
    let mut quiet_since = Instant::now();
    let deadline = Instant::now() + WAIT;
    while quiet_since.elapsed() < Duration::from_secs(2) {
        assert!(Instant::now() < deadline, "the operator never settles");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = operator.reconciles();
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
    last
}

/// Waits for a reconcile after `before` (so that "nothing changed" follows one).
async fn reconciled_after(operator: &Operator, before: u64) {
    eventually("a reconcile", WAIT, || async {
        let now = operator.reconciles();
        if now > before {
            Ok(())
        } else {
            Err(format!("{now} reconciles"))
        }
    })
    .await;
}

// --- the tests ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_cluster_comes_up_under_restricted_pod_security_as_the_operators_account() {
    let Some((client, ns, operator)) = started("example").await else {
        return;
    };
    apply(&ns.name, &example("events", 3, |_| {}));
    let clusters: Api<DedupCluster> = Api::namespaced(client.clone(), &ns.name);
    let cluster = ready(&clusters, "events", &operator).await;

    // Every child, owned by the cluster (what the garbage collector follows).
    let sts: StatefulSet = child(&client, &ns.name, "events").await;
    assert!(owned_by(&sts, &cluster));
    let config: ConfigMap = child(&client, &ns.name, "events-config").await;
    assert!(owned_by(&config, &cluster));
    let service: Service = child(&client, &ns.name, "events").await;
    assert!(owned_by(&service, &cluster));
    let budget: PodDisruptionBudget = child(&client, &ns.name, "events").await;
    assert!(owned_by(&budget, &cluster));

    // The pods were admitted under `restricted` and run (kwok), one volume each.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default().labels("app.kubernetes.io/instance=events"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 3);
    assert!(pods
        .items
        .iter()
        .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")));
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(claims.items.len(), 3, "one PVC per pod");

    // Status: every condition describes the current generation.
    let status = cluster.status.clone().unwrap();
    for type_ in ["Ready", "Progressing", "Degraded"] {
        let c = condition(&status, type_).unwrap_or_else(|| panic!("{type_} condition"));
        assert_eq!(
            c.observed_generation, cluster.metadata.generation,
            "{type_}"
        );
    }
    assert_eq!(condition(&status, "Degraded").unwrap().status, "False");
    assert_eq!(status.replicas, 3);

    // The printer columns, and the Events `kubectl describe` shows.
    let table = kubectl(&["get", "dedup", "events", "--namespace", &ns.name]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "DESIRED",
            "READY",
            "LAG",
            "TARGET",
            "AGE",
            "CONDITION"
        ]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!((row[0], row[1], row[2]), ("events", "3", "3"), "{table}");
    assert_eq!(row[4], "Ready", "{table}");
    let described = eventually("the Ready event", WAIT, || async {
        let text = kubectl(&["describe", "dedup", "events", "--namespace", &ns.name]);
        if text.contains("3 of 3 replicas ready") {
            Ok(text)
        } else {
            Err(text)
        }
    })
    .await;
    assert!(described.contains("Normal"), "{described}");

    // The operator's own Deployment, as shipped, is admitted under `restricted` too (its
    // namespace enforces it): its ReplicaSet made a pod.
    let operator_pods = kubectl(&[
        "get",
        "pods",
        "--namespace",
        OPERATOR_NAMESPACE,
        "-l",
        "app.kubernetes.io/name=kafka-deduplicator-operator",
        "-o",
        "name",
    ]);
    assert!(
        !operator_pods.trim().is_empty(),
        "the operator's Deployment made no pod: {}",
        kubectl(&[
            "get",
            "events",
            "--namespace",
            OPERATOR_NAMESPACE,
            "--field-selector",
            "reason=FailedCreate"
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_changes_only_the_replicas_and_an_autoscaler_reads_the_scale() {
    let Some((client, ns, operator)) = started("scale").await else {
        return;
    };
    apply(&ns.name, &example("scaled", 2, |_| {}));
    let clusters: Api<DedupCluster> = Api::namespaced(client.clone(), &ns.name);
    ready(&clusters, "scaled", &operator).await;
    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), &ns.name);
    let before = statefulsets.get("scaled").await.unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
    let pod_uid = |name: &str| {
        let pods = pods.clone();
        let name = name.to_string();
        async move { pods.get(&name).await.unwrap().metadata.uid }
    };
    let first_pod = pod_uid("scaled-0").await;

    kubectl(&[
        "scale",
        "dedup/scaled",
        "--replicas=4",
        "--namespace",
        &ns.name,
    ]);
    let cluster = ready(&clusters, "scaled", &operator).await;
    assert_eq!(cluster.spec.replicas, 4);
    let after = statefulsets.get("scaled").await.unwrap();
    assert_eq!(after.spec.as_ref().unwrap().replicas, Some(4));
    let revision = update_revision;
    assert_eq!(
        revision(&before),
        revision(&after),
        "scaling rolled the pods"
    );
    assert_eq!(
        pod_uid("scaled-0").await,
        first_pod,
        "scaling replaced a pod"
    );

    // The scale subresource gives autoscalers the replicas and the pod selector.
    let scale: serde_json::Value = serde_json::from_str(&kubectl(&[
        "get",
        "--raw",
        &format!(
            "/apis/kafka-deduplicator.dev/v1alpha1/namespaces/{}/dedupclusters/scaled/scale",
            ns.name
        ),
    ]))
    .unwrap();
    assert_eq!(scale["spec"]["replicas"], 4);
    assert_eq!(scale["status"]["replicas"], 4);
    assert_eq!(
        scale["status"]["selector"],
        "app.kubernetes.io/instance=scaled,app.kubernetes.io/name=kafka-deduplicator"
    );
    // A HorizontalPodAutoscaler targeting the DedupCluster: the real HPA controller gets
    // its scale (AbleToScale) and finds its pods by the selector (no metrics server here,
    // so it cannot compute a recommendation, but the selector is not what fails).
    apply(
        &ns.name,
        r#"{"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "scaled"},
            "spec": {"scaleTargetRef": {"apiVersion": "kafka-deduplicator.dev/v1alpha1",
                                        "kind": "DedupCluster", "name": "scaled"},
                     "minReplicas": 1, "maxReplicas": 8,
                     "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                                  "target": {"type": "Utilization", "averageUtilization": 80}}}]}}"#,
    );
    let conditions = eventually("the autoscaler's conditions", WAIT, || async {
        let hpa: serde_json::Value = serde_json::from_str(&kubectl(&[
            "get",
            "hpa",
            "scaled",
            "--namespace",
            &ns.name,
            "-o",
            "json",
        ]))
        .map_err(|e| e.to_string())?;
        let conditions = hpa["status"]["conditions"].clone();
        let able = conditions
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "AbleToScale");
        match able {
            Some(c) if c["status"] == "True" => Ok(conditions),
            _ => Err(conditions.to_string()),
        }
    })
    .await;
    assert!(
        !conditions.to_string().contains("InvalidSelector")
            && !conditions.to_string().contains("selector"),
        "{conditions}"
    );
    assert_eq!(clusters.get("scaled").await.unwrap().spec.replicas, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_spec_field_leaves_the_children_and_a_steady_reconcile_writes_nothing() {
    let Some((client, ns, operator)) = started("removal").await else {
        return;
    };
    // A CPU request in a form the server canonicalises (0.5 → 500m).
    apply(
        &ns.name,
        &example("trimmed", 2, |spec| {
            spec["resources"]["requests"]["cpu"] = "0.5".into();
            spec["dedup"]["maxInFlightMessages"] = 500.into();
        }),
    );
    let clusters: Api<DedupCluster> = Api::namespaced(client.clone(), &ns.name);
    ready(&clusters, "trimmed", &operator).await;
    let configs = Api::<ConfigMap>::namespaced(client.clone(), &ns.name);
    let data = configs.get("trimmed-config").await.unwrap().data.unwrap();
    assert_eq!(
        data.get("DEAD_LETTER_TOPIC").map(String::as_str),
        Some("events_dead_letter")
    );
    assert_eq!(
        data.get("MAX_IN_FLIGHT_MESSAGES").map(String::as_str),
        Some("500")
    );

    // Remove two fields: their settings leave the ConfigMap, and the pods roll onto it.
    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), &ns.name);
    let revision = update_revision;
    let first_revision = revision(&statefulsets.get("trimmed").await.unwrap());
    kubectl(&[
        "patch",
        "dedup",
        "trimmed",
        "--namespace",
        &ns.name,
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/kafka/deadLetterTopic"},
            {"op": "remove", "path": "/spec/dedup/maxInFlightMessages"}]"#,
    ]);
    eventually("the removed settings leave the ConfigMap", WAIT, || async {
        let data = configs
            .get("trimmed-config")
            .await
            .map_err(|e| e.to_string())?
            .data
            .unwrap_or_default();
        if data.contains_key("DEAD_LETTER_TOPIC") || data.contains_key("MAX_IN_FLIGHT_MESSAGES") {
            Err(format!("{data:?}"))
        } else {
            Ok(())
        }
    })
    .await;
    ready(&clusters, "trimmed", &operator).await;
    let rolled = revision(&statefulsets.get("trimmed").await.unwrap());
    assert_ne!(
        rolled, first_revision,
        "the pods did not roll onto the new settings"
    );

    // Steady state. A change to an owned object (someone labels the ConfigMap) triggers a
    // reconcile of the unchanged spec: it writes no child (no resourceVersion moves).
    kubectl(&[
        "label",
        "configmap",
        "trimmed-config",
        "--namespace",
        &ns.name,
        "example.com/touched=yes",
    ]);
    // The reconcile that label triggers is over before anything is counted.
    let before = settled(&operator).await;
    let before_versions = resource_versions(&client, &ns.name, "trimmed").await;
    kubectl(&[
        "label",
        "service",
        "trimmed",
        "--namespace",
        &ns.name,
        "example.com/touched=yes",
    ]);
    let service_version = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get("trimmed")
        .await
        .unwrap()
        .metadata
        .resource_version;
    reconciled_after(&operator, before).await;
    // Time for any write the reconcile would make.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_versions = resource_versions(&client, &ns.name, "trimmed").await;
    assert_eq!(after_versions[0], before_versions[0], "ConfigMap written");
    assert_eq!(after_versions[1], service_version, "Service written");
    assert_eq!(after_versions[2], before_versions[2], "StatefulSet written");
    assert_eq!(after_versions[3], before_versions[3], "PDB written");
    assert_eq!(
        after_versions[4], before_versions[4],
        "DedupCluster (status) written"
    );
    let labels = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get("trimmed")
        .await
        .unwrap()
        .labels()
        .clone();
    assert_eq!(
        labels.get("example.com/touched").map(String::as_str),
        Some("yes"),
        "another manager's label was removed"
    );

    // A status-only change (the operator's own status writes are such changes) does not
    // trigger a reconcile: the watch is filtered to spec generations. First the pods must
    // be available (`minReadySeconds` after Ready): the StatefulSet's own status update
    // then would trigger a reconcile, rightly, inside the window looked at.
    eventually("the pods available", WAIT, || async {
        let status = statefulsets
            .get("trimmed")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        if status.available_replicas == Some(2) && status.ready_replicas == Some(2) {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;
    let before = settled(&operator).await;
    kubectl(&[
        "patch",
        "dedup",
        "trimmed",
        "--namespace",
        &ns.name,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status": {"readyReplicas": 0}}"#,
    ]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        operator.reconciles(),
        before,
        "a status write triggered a reconcile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_what_the_schema_can_express_and_degraded_reports_the_rest() {
    let Some((client, ns, operator)) = started("admission").await else {
        return;
    };
    let refused = |manifest: String| {
        kubectl_refused(
            &["apply", "--namespace", &ns.name, "-f", "-"],
            Some(&manifest),
        )
    };

    let error = refused(example("once", 1, |spec| {
        spec["dedup"]["outputGuarantee"] = "exactly-once".into();
        spec["kafka"].as_object_mut().unwrap().remove("outputTopic");
    }));
    assert!(
        error.contains("exactly-once needs kafka.outputTopic"),
        "{error}"
    );
    let error = refused(example("loop", 1, |spec| {
        spec["kafka"]["outputTopic"] = "events".into();
    }));
    assert!(
        error.contains("kafka.outputTopic must differ from kafka.inputTopic"),
        "{error}"
    );
    let error = refused(example("unsaved", 1, |spec| {
        spec["checkpoint"]["interval"] = "0s".into();
    }));
    assert!(
        error.contains("checkpoint.interval 0 turns checkpoints off"),
        "{error}"
    );

    // Volumes cannot shrink or change class: refused at admission, not wedged in the
    // reconcile (a StatefulSet's volumeClaimTemplates cannot change).
    apply(&ns.name, &example("stored", 1, |_| {}));
    let clusters: Api<DedupCluster> = Api::namespaced(client.clone(), &ns.name);
    ready(&clusters, "stored", &operator).await;
    for (patch, message) in [
        (
            r#"{"spec": {"storage": {"size": "10Gi"}}}"#,
            "spec.storage.size can grow but not shrink",
        ),
        (
            r#"{"spec": {"storage": {"storageClassName": "other"}}}"#,
            "spec.storage.storageClassName is immutable",
        ),
    ] {
        let error = kubectl_refused(
            &[
                "patch",
                "dedup",
                "stored",
                "--namespace",
                &ns.name,
                "--type=merge",
                "-p",
                patch,
            ],
            None,
        );
        assert!(error.contains(message), "{error}");
    }

    // What the schema cannot express reaches the Degraded condition.
    apply(
        &ns.name,
        &example("grouped", 1, |spec| {
            spec["kafka"]["properties"] = serde_json::json!({"group.id": "other"});
        }),
    );
    let status = degraded(&clusters, "grouped").await;
    assert_eq!(status.reason, "InvalidSpec");
    assert!(status.message.contains("group.id"), "{}", status.message);
    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), &ns.name);
    assert!(statefulsets.get_opt("grouped").await.unwrap().is_none());
}

/// Two DedupClusters in one consumer group on the same brokers would split the input's
/// partitions between them (and two of the same name in two namespaces would also share
/// their pods' instance ids and fence each other): the one created later is refused
/// with `Degraded`/`ConsumerGroupConflict` and gets no children, until its group is its
/// own. The first one is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cluster_in_a_held_consumer_group_is_refused_until_its_group_is_its_own() {
    let Some((client, ns, _operator)) = started("groups").await else {
        return;
    };
    let clusters: Api<DedupCluster> = Api::namespaced(client.clone(), &ns.name);
    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), &ns.name);
    let exists = |name: &'static str| {
        let statefulsets = statefulsets.clone();
        async move {
            match statefulsets.get_opt(name).await {
                Ok(Some(_)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    };
    apply(
        &ns.name,
        &example("first", 1, |spec| {
            spec["kafka"]["consumerGroup"] = "shared".into();
        }),
    );
    eventually("first's StatefulSet", WAIT, || exists("first")).await;
    // Creation times have a resolution of one second.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    apply(
        &ns.name,
        &example("second", 1, |spec| {
            spec["kafka"]["consumerGroup"] = "shared".into();
        }),
    );
    let status = degraded(&clusters, "second").await;
    assert_eq!(status.reason, "ConsumerGroupConflict");
    assert!(
        status.message.contains("consumer group shared")
            && status.message.contains(&format!("{}/first", ns.name)),
        "{}",
        status.message
    );
    assert!(statefulsets.get_opt("second").await.unwrap().is_none());
    let first = clusters
        .get("first")
        .await
        .unwrap()
        .status
        .unwrap_or_default();
    assert!(
        condition(&first, "Degraded").is_none_or(|c| c.status != "True"),
        "the holder is not degraded: {first:?}"
    );

    patch_cluster(
        &ns.name,
        "second",
        r#"{"spec": {"kafka": {"consumerGroup": "second-own"}}}"#,
    );
    eventually(
        "second's StatefulSet once its group is its own",
        WAIT,
        || exists("second"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_the_server_refuses_is_reported_in_degraded_and_retried() {
    let Some(client) = cluster().await else {
        return;
    };
    let ns = TestNamespace::create("quota");
    // No Services may be created in this namespace.
    apply(
        &ns.name,
        r#"{"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "no-services"},
            "spec": {"hard": {"services": "0"}}}"#,
    );
    let operator = Operator::start(&ns.name);
    apply(&ns.name, &example("limited", 1, |_| {}));
    let clusters: Api<DedupCluster> = Api::namespaced(client.clone(), &ns.name);
    let degraded = degraded(&clusters, "limited").await;
    assert_eq!(degraded.reason, "ApplyFailed");
    assert!(
        degraded.message.contains("Service") && degraded.message.contains("exceeded quota"),
        "{}",
        degraded.message
    );
    let events = kubectl(&["describe", "dedup", "limited", "--namespace", &ns.name]);
    assert!(events.contains("ApplyFailed"), "{events}");

    // Once the quota is gone, a retry applies everything.
    kubectl(&[
        "delete",
        "resourcequota",
        "no-services",
        "--namespace",
        &ns.name,
    ]);
    let cluster = ready(&clusters, "limited", &operator).await;
    let status = cluster.status.unwrap();
    assert_eq!(condition(&status, "Degraded").unwrap().status, "False");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_cluster_collects_its_children_and_keeps_its_volumes() {
    let Some((client, ns, operator)) = started("delete").await else {
        return;
    };
    apply(&ns.name, &example("doomed", 2, |_| {}));
    let clusters: Api<DedupCluster> = Api::namespaced(client.clone(), &ns.name);
    ready(&clusters, "doomed", &operator).await;

    kubectl(&[
        "delete",
        "dedup",
        "doomed",
        "--namespace",
        &ns.name,
        "--wait=true",
        "--timeout=60s",
    ]);
    eventually("the children are collected", WAIT, || async {
        let left = resource_versions(&client, &ns.name, "doomed").await;
        let pods = Api::<Pod>::namespaced(client.clone(), &ns.name)
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        if left.iter().all(Option::is_none) && pods.items.is_empty() {
            Ok(())
        } else {
            Err(format!("children {left:?}, {} pods", pods.items.len()))
        }
    })
    .await;
    // The volumes stay: a cluster applied again under the same name finds its state.
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut names: Vec<String> = claims.items.iter().map(|c| c.name_any()).collect();
    names.sort();
    assert_eq!(names, ["data-doomed-0", "data-doomed-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_in_a_quota_bound_namespace_with_their_account_template_and_spread() {
    let Some(client) = cluster().await else {
        return;
    };
    let ns = TestNamespace::create("policy");
    let priority = format!("{}-high", ns.name);
    // Every container must declare CPU and memory requests and limits here.
    apply(
        &ns.name,
        &format!(
            r#"{{"apiVersion": "v1", "kind": "List", "items": [
            {{"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {{"name": "bounded"}},
              "spec": {{"hard": {{"requests.cpu": "100", "requests.memory": "100Gi",
                                 "limits.cpu": "100", "limits.memory": "100Gi"}}}}}},
            {{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {{"name": "dedup-s3"}}}},
            {{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {{"name": "kafka-ca"}},
              "data": {{"ca.crt": "not a real certificate"}}}},
            {{"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
              "metadata": {{"name": "{priority}"}}, "value": 1000}}]}}"#
        ),
    );
    let operator = Operator::start(&ns.name);
    apply(
        &ns.name,
        &example("hardened", 2, |spec| {
            spec["resources"] = serde_json::json!({
                "requests": {"cpu": "1", "memory": "1Gi"},
                "limits": {"cpu": "2", "memory": "2Gi"}});
            spec["serviceAccountName"] = "dedup-s3".into();
            spec["podTemplate"] = serde_json::json!({
                "labels": {"team": "payments"},
                "annotations": {"example.com/owner": "payments"},
                "priorityClassName": priority,
                "imagePullSecrets": [{"name": "registry"}],
                "volumes": [{"name": "kafka-ca", "configMap": {"name": "kafka-ca"}}],
                "volumeMounts": [{"name": "kafka-ca", "mountPath": "/etc/kafka-ca", "readOnly": true}]
            });
        }),
    );
    let clusters: Api<DedupCluster> = Api::namespaced(client.clone(), &ns.name);
    ready(&clusters, "hardened", &operator).await;

    let pod = Api::<Pod>::namespaced(client.clone(), &ns.name)
        .get("hardened-0")
        .await
        .unwrap();
    assert_eq!(
        pod.labels().get("team").map(String::as_str),
        Some("payments")
    );
    assert_eq!(
        pod.annotations()
            .get("example.com/owner")
            .map(String::as_str),
        Some("payments")
    );
    let spec = pod.spec.unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some("dedup-s3"));
    assert_eq!(spec.priority_class_name.as_deref(), Some(priority.as_str()));
    assert_eq!(spec.priority, Some(1000), "the PriorityClass was resolved");
    assert_eq!(spec.image_pull_secrets.unwrap()[0].name, "registry");
    let spread = spec.topology_spread_constraints.unwrap_or_default();
    let keys: Vec<&str> = spread.iter().map(|c| c.topology_key.as_str()).collect();
    assert_eq!(
        keys,
        ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    );
    assert!(spread
        .iter()
        .all(|c| c.when_unsatisfiable == "ScheduleAnyway"));
    let restorer = &spec.init_containers.unwrap()[0];
    let deduplicator = &spec.containers[0];
    for container in [restorer, deduplicator] {
        let mounts = container.volume_mounts.clone().unwrap_or_default();
        assert!(
            mounts.iter().any(|m| m.mount_path == "/etc/kafka-ca"),
            "{}: {mounts:?}",
            container.name
        );
    }
    let limits = restorer
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    assert!(limits.contains_key("cpu") && limits.contains_key("memory"));
    assert!(deduplicator.startup_probe.is_some());
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns.name)
        .get("hardened")
        .await
        .unwrap();
    assert_eq!(sts.spec.unwrap().min_ready_seconds, Some(10));
    kubectl(&["delete", "priorityclass", &priority, "--wait=false"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_policy_of_delete_removes_the_volumes_with_the_cluster() {
    let Some((client, ns, operator)) = started("retention").await else {
        return;
    };
    apply(
        &ns.name,
        &example("transient", 2, |spec| {
            spec["persistentVolumeClaimRetentionPolicy"] =
                serde_json::json!({"whenDeleted": "Delete", "whenScaled": "Retain"});
        }),
    );
    let clusters: Api<DedupCluster> = Api::namespaced(client.clone(), &ns.name);
    ready(&clusters, "transient", &operator).await;
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns.name);
    assert_eq!(
        claims
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        2
    );

    kubectl(&["delete", "dedup", "transient", "--namespace", &ns.name]);
    eventually("the volumes are deleted with the cluster", WAIT, || async {
        let left = claims
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        if left.items.is_empty() {
            Ok(())
        } else {
            Err(format!("{} PVCs left", left.items.len()))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_cluster_is_left_alone_until_resumed() {
    let Some((client, ns, operator)) = started("pause").await else {
        return;
    };
    apply(&ns.name, &example("held", 1, |_| {}));
    let clusters: Api<DedupCluster> = Api::namespaced(client.clone(), &ns.name);
    ready(&clusters, "held", &operator).await;
    let window = || async {
        Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
            .get("held-config")
            .await
            .ok()
            .and_then(|c| c.data)
            .and_then(|d| d.get("DEDUP_WINDOW").cloned())
    };

    kubectl(&[
        "annotate",
        "dedup",
        "held",
        "--namespace",
        &ns.name,
        "kafka-deduplicator.dev/paused=true",
    ]);
    eventually("the status says paused", WAIT, || async {
        let status = clusters
            .get("held")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        match condition(&status, "Progressing") {
            Some(c) if c.reason == "Paused" => Ok(()),
            _ => Err(format!("{status:?}")),
        }
    })
    .await;
    let before = settled(&operator).await;
    patch_cluster(
        &ns.name,
        "held",
        r#"{"spec": {"dedup": {"window": "48h"}}}"#,
    );
    // The spec change is reconciled (and left alone), not missed.
    reconciled_after(&operator, before).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        window().await.as_deref(),
        Some("24h"),
        "a paused cluster was changed"
    );

    kubectl(&[
        "annotate",
        "dedup",
        "held",
        "--namespace",
        &ns.name,
        "kafka-deduplicator.dev/paused-",
    ]);
    eventually("the spec change is applied once resumed", WAIT, || async {
        match window().await {
            Some(w) if w == "48h" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    ready(&clusters, "held", &operator).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_operator_replicas_elect_one_leader_and_the_other_takes_over() {
    let Some(client) = cluster().await else {
        return;
    };
    let ns = TestNamespace::create("leader");
    // The Lease the manifests' Role covers; a holder left by an earlier run goes first.
    let _ = kubectl_output(
        &[
            "delete",
            "lease",
            "kafka-deduplicator-operator",
            "--namespace",
            OPERATOR_NAMESPACE,
        ],
        None,
    );
    let election = [("LEADER_ELECTION_NAMESPACE", OPERATOR_NAMESPACE)];
    let holder = || {
        kubectl_output(
            &[
                "get",
                "lease",
                "kafka-deduplicator-operator",
                "--namespace",
                OPERATOR_NAMESPACE,
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ],
            None,
        )
    };
    let mut first = Operator::start_with(&ns.name, &[election[0], ("POD_NAME", "operator-a")]);
    eventually("operator-a leads", WAIT, || async {
        let out = holder();
        let who = String::from_utf8_lossy(&out.stdout).into_owned();
        if who == "operator-a" {
            Ok(())
        } else {
            Err(who)
        }
    })
    .await;
    let second = Operator::start_with(&ns.name, &[election[0], ("POD_NAME", "operator-b")]);

    apply(&ns.name, &example("led", 1, |_| {}));
    let clusters: Api<DedupCluster> = Api::namespaced(client.clone(), &ns.name);
    ready(&clusters, "led", &first).await;
    assert!(first.reconciles() > 0);
    assert_eq!(second.reconciles(), 0, "the standby reconciled");

    // The leader crashes: the standby takes the Lease once it expires, and reconciles.
    first.kill();
    patch_cluster(&ns.name, "led", r#"{"spec": {"dedup": {"window": "48h"}}}"#);
    eventually("operator-b applies the change", WAIT, || async {
        let window = Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
            .get("led-config")
            .await
            .map_err(|e| e.to_string())?
            .data
            .unwrap_or_default()
            .get("DEDUP_WINDOW")
            .cloned();
        if window.as_deref() == Some("48h") {
            Ok(())
        } else {
            Err(format!(
                "{window:?}; lease holder {:?}",
                String::from_utf8_lossy(&holder().stdout)
            ))
        }
    })
    .await;
    assert!(second.reconciles() > 0);
    assert_eq!(String::from_utf8_lossy(&holder().stdout), "operator-b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_properties_come_from_secrets_roll_the_pods_and_are_never_shown() {
    let Some(client) = cluster().await else {
        return;
    };
    let ns = TestNamespace::create("secrets");
    let secret = |value: &str| {
        format!(
            r#"{{"apiVersion": "v1", "kind": "Secret", "metadata": {{"name": "kafka-client"}},
                "stringData": {{"client-secret": "{value}"}}}}"#
        )
    };
    apply(&ns.name, &secret("hunter2-first"));
    let operator = Operator::start(&ns.name);

    // A secret in plain properties is refused at admission.
    let error = kubectl_refused(
        &["apply", "--namespace", &ns.name, "-f", "-"],
        Some(&example("plain", 1, |spec| {
            spec["kafka"]["properties"] = serde_json::json!({"ssl.key.password": "hunter2"});
        })),
    );
    assert!(
        error.contains("kafka.properties must not hold secrets"),
        "{error}"
    );

    apply(
        &ns.name,
        r#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kafka-tls"},
            "stringData": {"client.key": "key one"}}"#,
    );
    apply(
        &ns.name,
        &example("sealed", 2, |spec| {
            spec["podTemplate"] = serde_json::json!({
                "volumes": [{"name": "tls", "secret": {"secretName": "kafka-tls"}}],
                "volumeMounts": [{"name": "tls", "mountPath": "/etc/kafka-tls", "readOnly": true}]});
            spec["kafka"]["properties"] = serde_json::json!({
                "security.protocol": "SASL_SSL", "sasl.mechanism": "OAUTHBEARER",
                "sasl.oauthbearer.method": "oidc"});
            spec["kafka"]["secretProperties"] = serde_json::json!({
                "sasl.oauthbearer.client.secret": {"name": "kafka-client", "key": "client-secret"}});
        }),
    );
    let clusters: Api<DedupCluster> = Api::namespaced(client.clone(), &ns.name);
    ready(&clusters, "sealed", &operator).await;
    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), &ns.name);
    let sts = statefulsets.get("sealed").await.unwrap();
    let container = &sts
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let env = container.env.clone().unwrap_or_default();
    let var = |name: &str| env.iter().find(|v| v.name == name).cloned();
    assert_eq!(
        var("KAFKA_SECRET_PROPERTIES")
            .and_then(|v| v.value)
            .as_deref(),
        Some("sasl.oauthbearer.client.secret=$(DEDUP_SECRET_PROPERTY_0)")
    );
    let reference = var("DEDUP_SECRET_PROPERTY_0")
        .and_then(|v| v.value_from)
        .and_then(|v| v.secret_key_ref)
        .expect("the value comes from the Secret");
    assert_eq!(
        (reference.name.as_str(), reference.key.as_str()),
        ("kafka-client", "client-secret")
    );
    let revision = update_revision;
    let first_revision = revision(&sts);

    // A rotated Secret rolls the pods.
    apply(&ns.name, &secret("hunter2-second"));
    rolled_past(
        &statefulsets,
        "sealed",
        first_revision,
        "the rotated Secret",
    )
    .await;
    ready(&clusters, "sealed", &operator).await;

    // So does a rotated Secret mounted as a volume (a keystore is read at start).
    let second_revision = revision(&statefulsets.get("sealed").await.unwrap());
    apply(
        &ns.name,
        r#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kafka-tls"},
            "stringData": {"client.key": "key two"}}"#,
    );
    rolled_past(
        &statefulsets,
        "sealed",
        second_revision,
        "the rotated volume Secret",
    )
    .await;
    ready(&clusters, "sealed", &operator).await;

    // A reference to a Secret that does not exist is reported; creating it is enough.
    apply(
        &ns.name,
        &example("awaiting", 1, |spec| {
            spec["kafka"]["credentialsSecret"] = "not-yet".into();
        }),
    );
    let degraded = degraded(&clusters, "awaiting").await;
    assert_eq!(degraded.reason, "SecretNotFound");
    assert!(degraded.message.contains("not-yet"), "{}", degraded.message);
    apply(
        &ns.name,
        r#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "not-yet"},
            "stringData": {"username": "app", "password": "hunter2-third"}}"#,
    );
    ready(&clusters, "awaiting", &operator).await;

    // No secret value in a ConfigMap, an Event or the operator's log.
    let configs = kubectl(&["get", "configmaps", "--namespace", &ns.name, "-o", "json"]);
    let events = kubectl(&["get", "events", "--namespace", &ns.name, "-o", "json"]);
    for (what, text) in [
        ("ConfigMaps", configs),
        ("Events", events),
        ("operator log", operator.log()),
    ] {
        assert!(!text.contains("hunter2"), "a secret value in the {what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_larger_storage_size_expands_the_volumes_without_restarting_pods() {
    let Some(client) = cluster().await else {
        return;
    };
    let ns = TestNamespace::create("expand");
    let operator = Operator::start(&ns.name);
    let (clusters, class) = ready_on_own_class(&client, &ns, "growing", 2, true, &operator).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
    let uids = || async {
        let mut uids: Vec<Option<String>> = pods
            .list(&ListParams::default().labels("app.kubernetes.io/instance=growing"))
            .await
            .unwrap()
            .items
            .into_iter()
            .map(|p| p.metadata.uid)
            .collect();
        uids.sort();
        uids
    };
    let before = uids().await;
    let first_sts = Api::<StatefulSet>::namespaced(client.clone(), &ns.name)
        .get("growing")
        .await
        .unwrap()
        .metadata
        .uid;

    // 20480Mi: the same as 20Gi, spelled otherwise (the server keeps its own spelling).
    patch_cluster(
        &ns.name,
        "growing",
        r#"{"spec": {"storage": {"size": "20480Mi"}}}"#,
    );
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &ns.name);
    eventually("both claims request 20Gi", WAIT, || async {
        let sizes: Vec<String> = claims
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .iter()
            .filter_map(claim_request)
            .collect();
        if sizes.len() == 2 && sizes.iter().all(|s| s == "20Gi" || s == "20480Mi") {
            Ok(())
        } else {
            Err(format!("{sizes:?}"))
        }
    })
    .await;
    let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), &ns.name);
    let sts = eventually(
        "the StatefulSet is re-created with the new template",
        WAIT,
        || async {
            let sts = statefulsets
                .get("growing")
                .await
                .map_err(|e| e.to_string())?;
            let size = claim_size(&sts);
            if sts.metadata.uid != first_sts
                && size
                    .as_deref()
                    .is_some_and(|s| s == "20Gi" || s == "20480Mi")
            {
                Ok(sts)
            } else {
                Err(format!("uid {:?}, size {size:?}", sts.metadata.uid))
            }
        },
    )
    .await;
    assert!(sts.metadata.deletion_timestamp.is_none());
    ready(&clusters, "growing", &operator).await;
    assert_eq!(uids().await, before, "a pod was replaced");
    let described = kubectl(&["describe", "dedup", "growing", "--namespace", &ns.name]);
    assert!(described.contains("VolumesExpanded"), "{described}");

    // Steady: a reconcile now re-creates nothing (the spellings differ, the sizes do not).
    let before = settled(&operator).await;
    let recreated = statefulsets.get("growing").await.unwrap().metadata.uid;
    kubectl(&[
        "label",
        "configmap",
        "growing-config",
        "--namespace",
        &ns.name,
        "touched=yes",
    ]);
    reconciled_after(&operator, before).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        statefulsets.get("growing").await.unwrap().metadata.uid,
        recreated
    );
    kubectl(&["delete", "storageclass", &class, "--wait=false"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_with_its_options_is_accepted_by_the_api_server() {
    let Some(_client) = cluster().await else {
        return;
    };
    let ns = TestNamespace::create("chart");
    // Single-namespace mode, no leader election, a NetworkPolicy; the monitoring objects
    // need the Prometheus operator's CRDs, which this control plane does not have.
    let rendered = Command::new("helm")
        .args([
            "template",
            "kafka-deduplicator",
            "charts/kafka-deduplicator",
            "--namespace",
            &ns.name,
            "--set",
            &format!(
                "namespace.create=false,watchNamespace={},leaderElection.enabled=false,networkPolicy.enabled=true",
                ns.name
            ),
        ])
        .current_dir(repo_root())
        .output()
        .expect("helm is on PATH (scripts/start-test-services.sh)");
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let manifest = String::from_utf8_lossy(&rendered.stdout).into_owned();
    let applied = kubectl_in(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(&manifest),
    );
    for object in [
        "deployment.apps/kafka-deduplicator-operator",
        "networkpolicy.networking.k8s.io/",
        "role.rbac.authorization.k8s.io/",
    ] {
        assert!(applied.contains(object), "{object} not applied:\n{applied}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_volume_expansion_is_reported_and_wedges_nothing() {
    let Some(client) = cluster().await else {
        return;
    };
    let ns = TestNamespace::create("fixed");
    let operator = Operator::start(&ns.name);
    // A class that does not allow expansion: the server refuses to grow its claims.
    let (clusters, class) = ready_on_own_class(&client, &ns, "fixed", 1, false, &operator).await;

    patch_cluster(
        &ns.name,
        "fixed",
        r#"{"spec": {"storage": {"size": "20Gi"}}}"#,
    );
    let refused = degraded(&clusters, "fixed").await;
    assert_eq!(refused.reason, "VolumeExpansionRefused");
    assert!(
        refused.message.contains("10Gi → 20Gi"),
        "{}",
        refused.message
    );

    // Other changes still apply, on the volumes as they are.
    kubectl(&[
        "scale",
        "dedup/fixed",
        "--replicas=2",
        "--namespace",
        &ns.name,
    ]);
    eventually("scaled to 2 despite the refused size", WAIT, || async {
        let status = clusters
            .get("fixed")
            .await
            .map_err(|e| e.to_string())?
            .status
            .unwrap_or_default();
        if status.ready_replicas == 2 {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;
    let sts: StatefulSet = child(&client, &ns.name, "fixed").await;
    assert_eq!(claim_size(&sts).as_deref(), Some("10Gi"));
    kubectl(&["delete", "storageclass", &class, "--wait=false"]);
}
