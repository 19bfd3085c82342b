//! Reconciliation of `DedupCluster` resources.
//!
//! Idempotent and declarative: compute the wanted children, apply them with server-side
//! apply under one field manager, read the StatefulSet back, write the status, requeue.
//! An invalid spec is not an error of the operator: it is reported in the `Degraded`
//! condition (and an Event), and nothing is applied until the spec changes.
//!
//! The controller watches DedupClusters filtered to spec changes (generation), so its own
//! status writes do not trigger it; StatefulSets it owns trigger it on any change, which
//! is how ready replicas reach the status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::runtime::{reflector, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::builders;
use crate::crd::{DedupCluster, DedupClusterStatus};
use crate::metrics::Metrics;
use crate::storage;

/// The one field manager of every apply.
pub const FIELD_MANAGER: &str = "kafka-deduplicator-operator";
/// How often a healthy cluster is reconciled without any change.
const RESYNC: Duration = Duration::from_secs(300);

/// How soon a cluster refused for a consumer group conflict is checked again.
const GROUP_CONFLICT_RECHECK: Duration = Duration::from_secs(30);

/// Errors of a reconcile; the variant name is the `error` label of the metrics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    /// The server refused to apply a child; the message is the server's.
    #[error("applying {kind} {name}: {}", api_message(.source))]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("serializing {kind}: {source}")]
    Serialize {
        kind: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the resource has no name, namespace or uid")]
    MissingObjectKey,
    /// A step that completes by itself (the garbage collector); retried shortly.
    #[error("waiting: {0}")]
    Waiting(&'static str),
}

impl Error {
    /// Whether the API server refused a request (a 4xx answer): something in the cluster
    /// or the spec must change, which the status reports. Other errors are transient.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::Apply { source: kube::Error::Api(status), .. } if (400..500).contains(&status.code)
        )
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Apply { .. } => "apply",
            Error::Serialize { .. } => "serialize",
            Error::MissingObjectKey => "missing_object_key",
            Error::Waiting(_) => "waiting",
        }
    }
}

/// The server's own words for a refused request (its Status message), else the error.
fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

/// What reconcile needs besides the resource.
pub struct Context {
    pub client: Client,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// Per cluster (`namespace/name`), the most replicas seen since the last departure:
    /// the pods of a scale-down, whose static members leave the group once they are gone
    /// ([`crate::group_departure`]).
    pub members_seen: std::sync::Mutex<std::collections::HashMap<String, i32>>,
    /// Every DedupCluster the controller watches, to find a consumer group that another
    /// one already holds ([`builders::group_holder`]). `None`: not checked.
    pub peers: Option<reflector::Store<DedupCluster>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var(dedup_core::config::env::POD_NAME).ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            members_seen: Default::default(),
            peers: None,
        }
    }

    /// Checks each cluster's consumer group against those of `peers`.
    pub fn with_peers(mut self, peers: reflector::Store<DedupCluster>) -> Self {
        self.peers = Some(peers);
        self
    }
}

pub async fn reconcile(cluster: Arc<DedupCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(&cluster, &ctx).await;
    ctx.metrics.observe_reconcile(
        started.elapsed(),
        result.as_ref().err().map(Error::metric_label),
    );
    result
}

async fn reconcile_inner(cluster: &DedupCluster, ctx: &Arc<Context>) -> Result<Action, Error> {
    let namespace = cluster.namespace().ok_or(Error::MissingObjectKey)?;
    let name = cluster.name_any();
    let clusters: Api<DedupCluster> = Api::namespaced(ctx.client.clone(), &namespace);
    let previous = cluster.status.clone().unwrap_or_default();

    if is_paused(cluster) {
        let status = paused_status(cluster, &previous);
        if status != previous {
            tracing::info!(%namespace, %name, "reconcile paused by annotation");
            publish_event(
                ctx,
                cluster,
                EventType::Normal,
                "Paused",
                &format!("{PAUSED_ANNOTATION} is \"true\": nothing is applied until it is removed"),
            )
            .await;
            write_status(&clusters, &name, &status).await?;
        }
        return Ok(Action::await_change());
    }

    if let Err(invalid) = cluster.spec.validate() {
        tracing::warn!(%namespace, %name, %invalid, "invalid DedupCluster spec");
        report_failure(
            ctx,
            cluster,
            &clusters,
            &previous,
            "InvalidSpec",
            &invalid.to_string(),
        )
        .await?;
        // Nothing to retry: the next spec change triggers a reconcile.
        return Ok(Action::await_change());
    }

    if let Some(holder) = group_holder(ctx, cluster).await {
        let message = format!(
            "consumer group {} on the same brokers is already used by DedupCluster {}/{}: set spec.kafka.consumerGroup to a group of its own",
            builders::consumer_group(cluster),
            holder.namespace().unwrap_or_default(),
            holder.name_any()
        );
        tracing::warn!(%namespace, %name, %message, "consumer group conflict");
        report_failure(
            ctx,
            cluster,
            &clusters,
            &previous,
            "ConsumerGroupConflict",
            &message,
        )
        .await?;
        // Checked again soon: the holder may be deleted or change its group.
        return Ok(Action::requeue(GROUP_CONFLICT_RECHECK));
    }

    let owner = builders::owner_reference(cluster).ok_or(Error::MissingObjectKey)?;
    let secrets = match secret_versions(ctx, cluster, &namespace).await? {
        Ok(versions) => versions,
        Err(missing) => {
            // Pods would not start without it; its creation triggers a reconcile.
            let message = format!(
                "Secret {missing} (referenced by the spec) does not exist in namespace {namespace}"
            );
            report_failure(
                ctx,
                cluster,
                &clusters,
                &previous,
                "SecretNotFound",
                &message,
            )
            .await?;
            return Ok(Action::requeue(RESYNC));
        }
    };
    let (statefulset, storage_refused) =
        match apply_children(ctx, cluster, &namespace, &owner, &secrets).await {
            Ok(applied) => applied,
            Err(Error::Waiting(what)) => {
                tracing::info!(%namespace, %name, what, "waiting");
                return Ok(Action::requeue(Duration::from_secs(2)));
            }
            Err(error) if !error.is_refusal() => {
                // Transient (a timeout, a 5xx, a lost connection): retry with backoff, and
                // leave the status as it was.
                return Err(error);
            }
            Err(error) => {
                // The server refused a child (admission, quota, RBAC, an immutable field):
                // say so in the status, then let the error policy retry with backoff.
                let message = error.to_string();
                tracing::warn!(%namespace, %name, error = %message, "applying a child failed");
                report_failure(ctx, cluster, &clusters, &previous, "ApplyFailed", &message).await?;
                return Err(error);
            }
        };

    ctx.metrics.note_success(&name);
    let departing = crate::group_departure::after_reconcile(ctx, cluster).await;
    // A refused volume expansion: everything else is applied (on the volumes as they
    // are), and Degraded says why the size is not.
    let degraded = storage_refused
        .as_deref()
        .map(|message| ("VolumeExpansionRefused", message));
    let status = observed_status(cluster, &previous, &statefulset, degraded, Timestamp::now());
    if let Some((reason, message)) = degraded {
        if condition(&previous, "Degraded").is_none_or(|c| c.reason != reason) {
            publish_event(ctx, cluster, EventType::Warning, reason, message).await;
        }
    }
    if status.conditions != previous.conditions {
        let ready = condition(&status, "Ready").is_some_and(|c| c.status == "True");
        let (kind, reason) = if ready {
            (EventType::Normal, "Ready")
        } else {
            (EventType::Normal, "Progressing")
        };
        let note = format!(
            "{} of {} replicas ready",
            status.ready_replicas, cluster.spec.replicas
        );
        publish_event(ctx, cluster, kind, reason, &note).await;
    }
    if status != previous {
        write_status(&clusters, &name, &status).await?;
    }
    if departing {
        // Pods of a scale-down are still terminating: look again soon (their removal
        // from the API also changes the StatefulSet's status, which triggers a reconcile).
        return Ok(Action::requeue(Duration::from_secs(3)));
    }
    Ok(Action::requeue(RESYNC))
}

/// The resourceVersion of each Secret the spec references (metadata only: the operator
/// never reads Secret data), or the name of one that does not exist.
async fn secret_versions(
    ctx: &Context,
    cluster: &DedupCluster,
    namespace: &str,
) -> Result<Result<BTreeMap<String, String>, String>, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut versions = BTreeMap::new();
    for name in cluster.spec.referenced_secrets() {
        match secrets.get_metadata_opt(&name).await? {
            Some(secret) => {
                versions.insert(name, secret.metadata.resource_version.unwrap_or_default());
            }
            None => return Ok(Err(name)),
        }
    }
    Ok(Ok(versions))
}

/// Applies the ConfigMap, Service, StatefulSet and PodDisruptionBudget; returns the
/// StatefulSet as the server has it, and the message of a refused volume expansion.
async fn apply_children(
    ctx: &Context,
    cluster: &DedupCluster,
    namespace: &str,
    owner: &k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    secrets: &BTreeMap<String, String>,
) -> Result<(StatefulSet, Option<String>), Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let client = &ctx.client;
    apply(
        client,
        namespace,
        &params,
        &builders::config_map(cluster, owner),
    )
    .await?;
    apply(
        client,
        namespace,
        &params,
        &builders::service(cluster, owner),
    )
    .await?;
    let mut wanted = builders::stateful_set(cluster, owner);
    let mut storage_refused = None;
    match storage::prepare(ctx, cluster, namespace, &wanted).await? {
        storage::Prepared::Apply => {}
        storage::Prepared::Wait => {
            // The old StatefulSet is being removed (its pods stay); apply once it is gone.
            return Err(Error::Waiting(
                "the StatefulSet is being re-created for the new volume size",
            ));
        }
        storage::Prepared::KeepSize { size, message } => {
            // The server refused to expand a claim: apply every other change on the
            // volumes as they are, rather than wedge the cluster on the size.
            storage::set_claim_size(&mut wanted, &size);
            storage_refused = Some(message);
        }
    }
    builders::annotate_secrets_hash(&mut wanted, secrets);
    let statefulset = apply(client, namespace, &params, &wanted).await?;
    apply(
        client,
        namespace,
        &params,
        &builders::pod_disruption_budget(cluster, owner),
    )
    .await?;
    Ok((statefulset, storage_refused))
}

/// Server-side apply of one child, always: the server merges it with what other managers
/// own, removes the fields this manager set before and no longer sets (a field removed
/// from the spec leaves the child), and writes nothing when the result is unchanged (no
/// new resourceVersion), so a steady-state reconcile costs requests but no writes.
/// Comparing the wanted object with the live one instead cannot see a field that should
/// be gone, and server defaulting and canonical quantities (`0.5` → `500m`) defeat it.
async fn apply<K>(
    client: &Client,
    namespace: &str,
    params: &PatchParams,
    object: &K,
) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let kind = K::kind(&()).into_owned();
    let name = object.meta().name.clone().ok_or(Error::MissingObjectKey)?;
    let body = builders::typed_json(object).map_err(|source| Error::Serialize {
        kind: kind.clone(),
        source,
    })?;
    api.patch(&name, params, &Patch::Apply(&body))
        .await
        .map_err(|source| Error::Apply { kind, name, source })
}

async fn write_status(
    api: &Api<DedupCluster>,
    name: &str,
    status: &DedupClusterStatus,
) -> Result<(), Error> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&status_patch(status)),
    )
    .await?;
    Ok(())
}

/// The controller's merge patch of a status. `status.autoscaling` is left out: it is the
/// autoscaler's to write, the controller's copy may be older, and a merge patch leaves a
/// field it does not name alone.
pub fn status_patch(status: &DedupClusterStatus) -> serde_json::Value {
    let status = DedupClusterStatus {
        autoscaling: None,
        ..status.clone()
    };
    serde_json::json!({ "status": status })
}

pub(crate) async fn publish_event(
    ctx: &Context,
    cluster: &DedupCluster,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    publish_action_event(ctx, cluster, type_, reason, note, "Reconcile").await;
}

/// An Event about `cluster` for `action` (Reconcile, Autoscale); a failure to publish is
/// logged at debug (Events are best effort).
pub(crate) async fn publish_action_event(
    ctx: &Context,
    cluster: &DedupCluster,
    type_: EventType,
    reason: &str,
    note: &str,
    action: &str,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: action.into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &cluster.object_ref(&())).await {
        tracing::debug!(%error, "publishing an event failed");
    }
}

/// Set to "true", the operator leaves the cluster's children alone (to debug by hand,
/// or to hold a rollout); the status says so. Removing it resumes.
pub const PAUSED_ANNOTATION: &str = "kafka-deduplicator.dev/paused";

pub fn is_paused(cluster: &DedupCluster) -> bool {
    cluster
        .annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v == "true")
}

/// The status of a paused cluster: Progressing is False with reason Paused; Ready and
/// Degraded stay as last observed.
pub fn paused_status(cluster: &DedupCluster, previous: &DedupClusterStatus) -> DedupClusterStatus {
    let generation = cluster.metadata.generation;
    let mut conditions: Vec<Condition> = previous
        .conditions
        .iter()
        .filter(|c| c.type_ != "Progressing")
        .cloned()
        .collect();
    conditions.push(next_condition(
        previous,
        "Progressing",
        false,
        "Paused",
        &format!("{PAUSED_ANNOTATION} is \"true\": spec changes are not applied"),
        generation,
        Timestamp::now(),
    ));
    DedupClusterStatus {
        conditions,
        ..previous.clone()
    }
}

/// What of a DedupCluster triggers a reconcile: its spec (generation) and the pause
/// annotation; not its status, so the operator's own status writes do not.
fn spec_or_pause(cluster: &DedupCluster) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    cluster.metadata.generation.hash(&mut hasher);
    is_paused(cluster).hash(&mut hasher);
    Some(hasher.finish())
}

/// Reports a cluster that could not be applied, for `reason`: its status (see
/// [`failed_status`]) and a Warning Event, both only when the status changes.
async fn report_failure(
    ctx: &Context,
    cluster: &DedupCluster,
    clusters: &Api<DedupCluster>,
    previous: &DedupClusterStatus,
    reason: &str,
    message: &str,
) -> Result<(), Error> {
    let status = failed_status(cluster, previous, reason, message);
    if status != *previous {
        publish_event(ctx, cluster, EventType::Warning, reason, message).await;
        write_status(clusters, &cluster.name_any(), &status).await?;
    }
    Ok(())
}

/// The status of a cluster whose spec could not be applied, for `reason` (InvalidSpec,
/// ApplyFailed): not Ready, not Progressing, Degraded with the message. Replica counts
/// are those last observed.
pub fn failed_status(
    cluster: &DedupCluster,
    previous: &DedupClusterStatus,
    reason: &str,
    message: &str,
) -> DedupClusterStatus {
    let now = Timestamp::now();
    let generation = cluster.metadata.generation;
    let conditions = vec![
        next_condition(previous, "Ready", false, reason, message, generation, now),
        next_condition(
            previous,
            "Progressing",
            false,
            reason,
            "waiting for a spec that can be applied",
            generation,
            now,
        ),
        next_condition(previous, "Degraded", true, reason, message, generation, now),
    ];
    DedupClusterStatus {
        conditions,
        observed_generation: generation,
        label_selector: Some(builders::selector_string(cluster)),
        ..previous.clone()
    }
}

/// The status of a valid cluster, from its StatefulSet as the server has it.
/// `degraded`: a (reason, message) of something applied only in part (a refused volume
/// expansion); `None` when all of the spec is applied.
pub fn observed_status(
    cluster: &DedupCluster,
    previous: &DedupClusterStatus,
    statefulset: &StatefulSet,
    degraded: Option<(&str, &str)>,
    now: Timestamp,
) -> DedupClusterStatus {
    let desired = cluster.spec.replicas;
    let sts_status = statefulset.status.clone().unwrap_or_default();
    let ready = sts_status.ready_replicas.unwrap_or(0);
    let updated = sts_status.updated_replicas.unwrap_or(0);
    let current = sts_status.replicas;
    let sts_generation = statefulset.metadata.generation;
    // The StatefulSet controller has not seen the latest template or scale yet.
    let sts_behind = sts_status
        .observed_generation
        .is_none_or(|o| Some(o) < sts_generation);
    let rolled_out = !sts_behind
        && updated == desired
        && current == desired
        && sts_status.current_revision == sts_status.update_revision;
    let generation = cluster.metadata.generation;

    let is_ready = ready == desired && rolled_out;
    let ready_message = format!("{ready} of {desired} replicas ready");
    let (progress_reason, progress_message) = if rolled_out {
        ("Stable", "every replica runs the current spec".to_string())
    } else if current != desired {
        ("Scaling", format!("{current} replicas, {desired} desired"))
    } else {
        (
            "RollingOut",
            format!("{updated} of {desired} replicas updated"),
        )
    };
    let conditions = vec![
        next_condition(
            previous,
            "Ready",
            is_ready,
            if is_ready {
                "AllReplicasReady"
            } else {
                "ReplicasNotReady"
            },
            &ready_message,
            generation,
            now,
        ),
        next_condition(
            previous,
            "Progressing",
            !rolled_out,
            progress_reason,
            &progress_message,
            generation,
            now,
        ),
        next_condition(
            previous,
            "Degraded",
            degraded.is_some(),
            degraded.map_or("AsExpected", |(reason, _)| reason),
            degraded.map_or("spec is valid and applied", |(_, message)| message),
            generation,
            now,
        ),
    ];
    DedupClusterStatus {
        replicas: current,
        ready_replicas: ready,
        label_selector: Some(builders::selector_string(cluster)),
        observed_generation: generation,
        conditions,
        autoscaling: previous.autoscaling.clone(),
    }
}

/// A condition whose `lastTransitionTime` changes only when its status flips.
fn next_condition(
    previous: &DedupClusterStatus,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if status { "True" } else { "False" };
    let last_transition_time = match condition(previous, type_) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Time(now),
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    }
}

pub fn condition<'a>(status: &'a DedupClusterStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Retry a failed reconcile with a backoff that grows with consecutive failures (held in
/// the metrics' per-object error counts), from 5 s to 5 min.
pub fn error_policy(cluster: Arc<DedupCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.metrics.note_failure(&cluster.name_any());
    tracing::warn!(name = %cluster.name_any(), %error, failures, "reconcile failed");
    Action::requeue(backoff(failures))
}

pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << failures.saturating_sub(1).min(6)))
        .min(Duration::from_secs(300))
}

/// The DedupCluster holding `cluster`'s consumer group, judged on every watched cluster
/// (after the watch's first full list, never on part of it).
async fn group_holder(ctx: &Context, cluster: &DedupCluster) -> Option<DedupCluster> {
    let peers = ctx.peers.as_ref()?;
    if peers.wait_until_ready().await.is_err() {
        return None;
    }
    let state = peers.state();
    builders::group_holder(cluster, state.iter().map(|c| c.as_ref())).cloned()
}

/// An API over one namespace, or all of them.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `shutdown` completes, over the DedupClusters of `namespace`
/// (`None`: every namespace).
pub async fn run(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let namespace = namespace.as_deref();
    let clusters: Api<DedupCluster> = scoped(&client, namespace);
    let statefulsets: Api<StatefulSet> = scoped(&client, namespace);
    let (reader, writer) = reflector::store();
    // Only spec changes (generation) and pausing: status writes do not re-trigger.
    let cluster_changes = watcher(clusters, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_pause, Default::default());
    // Children only: every object the operator makes carries its managed-by label, so
    // the watches do not hold every ConfigMap, Service and StatefulSet of the cluster.
    let children = || watcher::Config::default().labels(&builders::managed_by_selector());
    // Secrets, metadata only: a change of one a cluster references rolls its pods.
    let referencing = reader.clone();
    let secret_changes = watcher(
        scoped::<PartialObjectMeta<Secret>>(&client, namespace),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects();
    let ctx = Arc::new(Context::new(client, Arc::clone(&metrics)).with_peers(reader.clone()));
    // The lag autoscaler, over the same store; it stops with the controller.
    let autoscaler = crate::autoscaler::run(reader.clone(), Arc::clone(&ctx));
    let controller = Controller::for_stream(cluster_changes, reader)
        .watches_stream(secret_changes, move |secret: PartialObjectMeta<Secret>| {
            let name = secret.name_any();
            let secret_namespace = secret.namespace();
            referencing
                .state()
                .into_iter()
                .filter(|c| {
                    c.namespace() == secret_namespace && c.spec.referenced_secrets().contains(&name)
                })
                .map(|c| ObjectRef::from_obj(&*c))
                .collect::<Vec<_>>()
        })
        .owns(statefulsets, children())
        .owns(scoped::<ConfigMap>(&ctx.client, namespace), children())
        .owns(scoped::<Service>(&ctx.client, namespace), children())
        .owns(
            scoped::<PodDisruptionBudget>(&ctx.client, namespace),
            children(),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(name = %object.name, "reconciled"),
                Err(error) => tracing::debug!(%error, "reconcile stream error"),
            }
        });
    tokio::select! {
        _ = controller => {}
        _ = autoscaler => {}
    }
}
