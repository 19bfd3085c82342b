//! The Kafka Deduplicator operator: reconciles `DedupCluster` resources into the
//! StatefulSet (restorer + deduplicator), Service, ConfigMap and PodDisruptionBudget
//! that run a deduplication cluster.
//!
//! - [`crd`]: the resource type and its validation.
//! - [`builders`]: the child objects, as pure functions.
//! - [`controller`]: reconcile, status, error policy, the controller loop.
//! - [`metrics`]: reconcile metrics.

pub mod builders;
pub mod controller;
pub mod crd;
pub mod metrics;

use kube::CustomResourceExt;

/// The CustomResourceDefinition as YAML, as `operator crd` prints it and
/// `crds/dedupcluster.yaml` holds it.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&crd::DedupCluster::crd())
}
