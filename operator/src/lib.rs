//! The Kafka Deduplicator operator: reconciles `DedupCluster` resources into the
//! StatefulSet (restorer + deduplicator), Service, ConfigMap and PodDisruptionBudget
//! that run a deduplication cluster.
//!
//! - [`crd`]: the resource type and its validation.
//! - [`builders`]: the child objects, as pure functions.
//! - [`controller`]: reconcile, status, error policy, the controller loop.
//! - [`autoscaler`]: replicas from the consumer group's lag (`spec.autoscaling`).
//! - [`kafka_lag`]: the operator's Kafka access, and the group's lag read from Kafka.
//! - [`group_departure`]: scaled-down pods' static members leave the group at once.
//! - [`leader`]: leader election through a Lease.
//! - [`metrics`]: reconcile metrics.
//! - [`storage`]: growing the pods' volumes.

pub mod autoscaler;
pub mod builders;
pub mod controller;
pub mod crd;
pub mod group_departure;
pub mod kafka_lag;
pub mod leader;
pub mod metrics;
pub mod storage;

use kube::CustomResourceExt;

/// The CustomResourceDefinition as YAML, as `operator crd` prints it and
/// `crds/dedupcluster.yaml` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd::DedupCluster::crd())
}

/// A client of the Kubernetes API from the environment (in-cluster service account, or
/// `KUBECONFIG`), over rustls with ring.
///
/// rustls needs one process-wide crypto provider; a build that links two (ring for kube,
/// aws-lc for an AWS SDK elsewhere in the workspace) makes it pick none and panic on the
/// first connection, so the provider is installed explicitly.
pub async fn kube_client() -> Result<kube::Client, kube::Error> {
    // An error only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::Client::try_default().await
}
