//! The operator's Prometheus metrics: reconciles by result, their duration, and errors
//! by kind; the lag autoscaler's readings, decisions and failures. Also keeps the consecutive failures of each resource for the retry backoff.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// ok or error
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

/// One DedupCluster.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    /// up or down
    pub direction: &'static str,
}

pub struct Metrics {
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    /// The autoscaler's last lag reading per cluster, in messages.
    pub autoscaler_lag: Family<ClusterLabels, Gauge>,
    /// The replicas the autoscaler last decided per cluster.
    pub autoscaler_desired_replicas: Family<ClusterLabels, Gauge>,
    pub autoscaler_scalings: Family<DirectionLabels, Counter>,
    /// Lag readings that failed (Kafka unreachable, a Secret missing).
    pub autoscaler_errors: Counter,
    /// Static members of scaled-down pods sent out of the group: removed, unknown (already
    /// gone), failed.
    pub group_departures: Family<ResultLabels, Counter>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.005, 2.0, 12)),
            autoscaler_lag: Family::default(),
            autoscaler_desired_replicas: Family::default(),
            autoscaler_scalings: Family::default(),
            autoscaler_errors: Counter::default(),
            group_departures: Family::default(),
            failures: Mutex::new(HashMap::new()),
        };
        let r = registry.sub_registry_with_prefix("dedup_operator");
        r.register(
            "reconciles",
            "Reconciles of DedupClusters, by result",
            metrics.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciles, by error kind",
            metrics.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of reconciles",
            metrics.reconcile_duration.clone(),
        );
        r.register(
            "autoscaler_lag",
            "Consumer lag of a DedupCluster's group on its input topic at the autoscaler's last reading, in messages",
            metrics.autoscaler_lag.clone(),
        );
        r.register(
            "autoscaler_desired_replicas",
            "Replicas the autoscaler last decided for a DedupCluster",
            metrics.autoscaler_desired_replicas.clone(),
        );
        r.register(
            "autoscaler_scalings",
            "Replica changes made by the autoscaler, by direction",
            metrics.autoscaler_scalings.clone(),
        );
        r.register(
            "autoscaler_errors",
            "Lag readings of the autoscaler that failed",
            metrics.autoscaler_errors.clone(),
        );
        r.register(
            "group_departures",
            "Static members of scaled-down pods removed from the consumer group (removed, unknown: already gone, failed)",
            metrics.group_departures.clone(),
        );
        metrics
    }

    pub fn observe_reconcile(&self, duration: Duration, error: Option<&'static str>) {
        self.reconcile_duration.observe(duration.as_secs_f64());
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        if let Some(error) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { error })
                .inc();
        }
    }

    /// Counts a failure of `name` and returns how many in a row.
    pub fn note_failure(&self, name: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = failures.entry(name.to_string()).or_default();
        *count += 1;
        *count
    }

    pub fn note_success(&self, name: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }
}
