//! The lag autoscaler: for each DedupCluster with `spec.autoscaling`, reads the consumer
//! group's lag on the input topic from Kafka every `pollIntervalSeconds`, decides the
//! replicas, and sets them through the cluster's scale subresource (the same path as
//! `kubectl scale`); the controller then scales the StatefulSet. Each reading and
//! decision is written to `status.autoscaling`; each change is a Kubernetes Event.
//!
//! The decision ([`recommend`], [`decide`]) is pure, stabilised as the HPA's is: a
//! scale-up follows the lowest recommendation of its window (0 s by default: at once), a
//! scale-down the highest of its own (300 s), so that a dip in the lag does not remove
//! pods that the next reading would want back; each decision moves at most `maxStep`
//! pods. A scale-down also waits until the autoscaler has watched the cluster for a whole
//! window (after an operator restart, say), so it never acts on a partial history.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::runtime::reflector;
use kube::{Client, ResourceExt};

use crate::controller::Context;
use crate::crd::{AutoscalingSpec, AutoscalingStatus, DedupCluster};
use crate::kafka_lag::{self, GroupLag, KafkaAccess};

/// How often the autoscaler looks for readings that are due.
const TICK: Duration = Duration::from_secs(1);

/// The most one lag reading may take, all its Kafka calls together (the clusters are
/// read one after another).
const READING_TIMEOUT: Duration = Duration::from_secs(20);

/// The replicas the lag alone asks for: ⌈lag ÷ target⌉, at least `minReplicas`, at most
/// `maxReplicas` and never above the partition count (a pod without a partition idles).
pub fn recommend(spec: &AutoscalingSpec, lag: i64, partitions: i32) -> i32 {
    let (lower, upper) = bounds(spec, partitions);
    let target = spec.target_lag_per_replica.max(1);
    let lag = lag.max(0);
    let wanted = lag / target + i64::from(lag % target != 0);
    wanted.clamp(i64::from(lower), i64::from(upper)) as i32
}

/// `minReplicas..=min(maxReplicas, partitions)` (the lower bound gives way to the upper).
fn bounds(spec: &AutoscalingSpec, partitions: i32) -> (i32, i32) {
    let upper = spec.max_replicas.min(partitions.max(1)).max(1);
    (spec.min_replicas.clamp(1, upper), upper)
}

/// One reading's recommendation, with how long ago it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Past {
    pub age: Duration,
    pub replicas: i32,
}

/// What the autoscaler decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub replicas: i32,
    pub reason: String,
}

/// Decides the replicas from the recommendations of the readings so far (`history`,
/// newest included, at age 0), the time the cluster has been watched, and the current
/// replicas.
pub fn decide(
    spec: &AutoscalingSpec,
    history: &[Past],
    watched_for: Duration,
    current: i32,
    lag: i64,
    partitions: i32,
) -> Decision {
    let (lower, upper) = bounds(spec, partitions);
    if current < lower || current > upper {
        let replicas = current.clamp(lower, upper);
        return Decision {
            replicas,
            reason: format!(
                "{current} replicas is outside {lower}..{upper} (minReplicas..min(maxReplicas, {partitions} partitions)): {replicas}"
            ),
        };
    }
    let window = |rules: &crate::crd::ScalingRules| {
        Duration::from_secs(rules.stabilization_window_seconds.max(0) as u64)
    };
    let (up_window, down_window) = (window(&spec.scale_up), window(&spec.scale_down));
    let within = |limit: Duration| history.iter().filter(move |p| p.age <= limit);
    let up_floor = within(up_window).map(|p| p.replicas).min();
    let down_ceiling = within(down_window).map(|p| p.replicas).max();
    let target = spec.target_lag_per_replica;
    if let Some(floor) = up_floor.filter(|&floor| floor > current) {
        let replicas = floor.min(current + spec.scale_up.max_step.max(1));
        return Decision {
            replicas,
            reason: format!(
                "lag {lag} is above {current} × {target}: scaling up to {replicas} (recommended {floor} for {}s)",
                up_window.as_secs()
            ),
        };
    }
    if let Some(ceiling) = down_ceiling.filter(|&ceiling| ceiling < current) {
        if watched_for < down_window {
            return Decision {
                replicas: current,
                reason: format!(
                    "lag {lag} asks for {ceiling}; holding {current} until {}s of readings are seen",
                    down_window.as_secs()
                ),
            };
        }
        let replicas = ceiling.max(current - spec.scale_down.max_step.max(1));
        return Decision {
            replicas,
            reason: format!(
                "lag {lag} has stayed below what {current} replicas handle for {}s: scaling down to {replicas}",
                down_window.as_secs()
            ),
        };
    }
    Decision {
        replicas: current,
        reason: format!("lag {lag} within the target of {current} × {target}: holding {current}"),
    }
}

/// What the autoscaler remembers of one cluster.
struct Watched {
    since: Instant,
    next_reading: Instant,
    /// (when, recommended replicas), oldest first.
    history: VecDeque<(Instant, i32)>,
    /// The last reading's error, to publish a Warning Event only when it changes.
    last_error: Option<String>,
}

/// Runs the autoscaler over the clusters in `clusters` (the controller's store) until
/// dropped.
pub async fn run(clusters: reflector::Store<DedupCluster>, ctx: Arc<Context>) {
    let mut watched: HashMap<String, Watched> = HashMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        let clusters = clusters.state();
        watched.retain(|key, _| {
            clusters
                .iter()
                .any(|c| key_of(c) == *key && c.spec.autoscaling.is_some())
        });
        for cluster in clusters.iter() {
            let Some(spec) = cluster.spec.autoscaling.clone() else {
                continue;
            };
            // A paused or invalid cluster, or one refused a consumer group another holds,
            // is left alone: the controller applies nothing, and replicas decided meanwhile
            // would all land at once on resuming (the lag read would be the holder's).
            if crate::controller::is_paused(cluster)
                || cluster.spec.validate().is_err()
                || crate::builders::group_holder(cluster, clusters.iter().map(|c| c.as_ref()))
                    .is_some()
            {
                continue;
            }
            let now = Instant::now();
            let state = watched.entry(key_of(cluster)).or_insert(Watched {
                since: now,
                next_reading: now,
                history: VecDeque::new(),
                last_error: None,
            });
            if now < state.next_reading {
                continue;
            }
            let poll = Duration::from_secs(spec.poll_interval_seconds.max(1) as u64);
            state.next_reading = now + poll;
            if let Err(error) = step(&ctx.client, &ctx, cluster, &spec, state).await {
                tracing::warn!(cluster = %key_of(cluster), %error, "autoscaler step failed");
            }
        }
    }
}

fn key_of(cluster: &DedupCluster) -> String {
    format!(
        "{}/{}",
        cluster.namespace().unwrap_or_default(),
        cluster.name_any()
    )
}

/// One reading and decision for `cluster`.
async fn step(
    client: &Client,
    ctx: &Context,
    cluster: &DedupCluster,
    spec: &AutoscalingSpec,
    state: &mut Watched,
) -> Result<(), kube::Error> {
    let namespace = cluster.namespace().unwrap_or_default();
    let name = cluster.name_any();
    let api: Api<DedupCluster> = Api::namespaced(client.clone(), &namespace);
    let now = Instant::now();
    // The replicas as the API server has them now (the store may lag behind a change).
    let current = match api.get_scale(&name).await {
        Ok(scale) => scale.spec.and_then(|s| s.replicas).unwrap_or(0),
        Err(error) => return Err(error),
    };
    if current == 0 {
        // Scaled to 0 by hand: autoscaling holds, as the HPA's does, until scaled up.
        let status = AutoscalingStatus {
            reason: Some("replicas is 0 (scaled down by hand): autoscaling holds until replicas is set above 0".into()),
            ..previous_status(cluster)
        };
        return write_status(&api, &name, &status).await;
    }
    let reading = match KafkaAccess::for_cluster(client, cluster).await {
        Ok(access) => match tokio::time::timeout(
            READING_TIMEOUT,
            kafka_lag::read(access, Duration::from_secs(10)),
        )
        .await
        {
            Ok(reading) => reading,
            Err(_) => Err(format!("no lag reading within {READING_TIMEOUT:?}")),
        },
        Err(error) => Err(error),
    };
    let lag = match reading {
        Ok(lag) => lag,
        Err(error) => {
            ctx.metrics.autoscaler_errors.inc();
            let message = format!("cannot read the consumer group's lag: {error}");
            if state.last_error.as_deref() != Some(message.as_str()) {
                tracing::warn!(cluster = %name, namespace, %error, "autoscaler: lag unreadable; replicas unchanged");
                publish(ctx, cluster, EventType::Warning, "LagUnavailable", &message).await;
            }
            state.last_error = Some(message.clone());
            let status = AutoscalingStatus {
                reason: Some(format!("{message}; replicas unchanged")),
                ..previous_status(cluster)
            };
            return write_status(&api, &name, &status).await;
        }
    };
    state.last_error = None;
    let GroupLag { total, partitions } = lag;
    let recommended = recommend(spec, total, partitions);
    state.history.push_back((now, recommended));
    let longest = Duration::from_secs(
        spec.scale_up
            .stabilization_window_seconds
            .max(spec.scale_down.stabilization_window_seconds)
            .max(0) as u64,
    );
    while state
        .history
        .front()
        .is_some_and(|(at, _)| now.duration_since(*at) > longest)
    {
        state.history.pop_front();
    }
    let history: Vec<Past> = state
        .history
        .iter()
        .map(|(at, replicas)| Past {
            age: now.duration_since(*at),
            replicas: *replicas,
        })
        .collect();
    let decision = decide(
        spec,
        &history,
        now.duration_since(state.since),
        current,
        total,
        partitions,
    );
    let labels = crate::metrics::ClusterLabels {
        namespace: namespace.clone(),
        name: name.clone(),
    };
    ctx.metrics.autoscaler_lag.get_or_create(&labels).set(total);
    ctx.metrics
        .autoscaler_desired_replicas
        .get_or_create(&labels)
        .set(i64::from(decision.replicas));
    let mut status = AutoscalingStatus {
        lag: Some(total),
        partitions: Some(partitions),
        recommended_replicas: Some(recommended),
        desired_replicas: Some(decision.replicas),
        reason: Some(decision.reason.clone()),
        last_reading_time: Some(jiff::Timestamp::now().to_string()),
        last_scale_time: previous_status(cluster).last_scale_time,
    };
    if decision.replicas != current {
        let patch = serde_json::json!({ "spec": { "replicas": decision.replicas } });
        api.patch_scale(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let (direction, reason) = if decision.replicas > current {
            ("up", "ScaledUp")
        } else {
            ("down", "ScaledDown")
        };
        ctx.metrics
            .autoscaler_scalings
            .get_or_create(&crate::metrics::DirectionLabels { direction })
            .inc();
        tracing::info!(cluster = %name, namespace, from = current, to = decision.replicas, lag = total, reason = decision.reason, "autoscaler: replicas changed");
        publish(
            ctx,
            cluster,
            EventType::Normal,
            reason,
            &format!(
                "{current} → {} replicas: {}",
                decision.replicas, decision.reason
            ),
        )
        .await;
        status.last_scale_time = status.last_reading_time.clone();
    }
    write_status(&api, &name, &status).await
}

fn previous_status(cluster: &DedupCluster) -> AutoscalingStatus {
    cluster
        .status
        .as_ref()
        .and_then(|s| s.autoscaling.clone())
        .unwrap_or_default()
}

async fn write_status(
    api: &Api<DedupCluster>,
    name: &str,
    status: &AutoscalingStatus,
) -> Result<(), kube::Error> {
    let patch = serde_json::json!({ "status": { "autoscaling": status } });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn publish(
    ctx: &Context,
    cluster: &DedupCluster,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    crate::controller::publish_action_event(ctx, cluster, type_, reason, note, "Autoscale").await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::ScalingRules;

    fn spec() -> AutoscalingSpec {
        AutoscalingSpec {
            min_replicas: 1,
            max_replicas: 6,
            target_lag_per_replica: 1_000,
            poll_interval_seconds: 15,
            scale_up: ScalingRules::default_up(),
            scale_down: ScalingRules {
                stabilization_window_seconds: 60,
                max_step: 1,
            },
        }
    }

    fn at(seconds: u64, replicas: i32) -> Past {
        Past {
            age: Duration::from_secs(seconds),
            replicas,
        }
    }

    const WATCHED: Duration = Duration::from_secs(3_600);

    #[test]
    fn the_recommendation_is_the_lag_over_the_target_within_the_bounds_and_the_partitions() {
        let spec = spec();
        assert_eq!(recommend(&spec, 0, 8), 1, "minReplicas");
        assert_eq!(recommend(&spec, 1, 8), 1);
        assert_eq!(recommend(&spec, 1_001, 8), 2, "rounded up");
        assert_eq!(recommend(&spec, 4_000, 8), 4);
        assert_eq!(recommend(&spec, 1_000_000, 8), 6, "maxReplicas");
        assert_eq!(
            recommend(&spec, 1_000_000, 3),
            3,
            "never above the partitions"
        );
        assert_eq!(recommend(&spec, -5, 8), 1, "no negative lag");
        let many = AutoscalingSpec {
            min_replicas: 5,
            ..spec
        };
        assert_eq!(
            recommend(&many, 0, 2),
            2,
            "the partitions win over minReplicas"
        );
    }

    #[test]
    fn a_burst_scales_up_at_once_by_at_most_the_step() {
        let spec = spec();
        let decision = decide(&spec, &[at(0, 6)], WATCHED, 1, 6_000, 8);
        assert_eq!(decision.replicas, 5, "1 + maxStep 4");
        let decision = decide(&spec, &[at(0, 6)], WATCHED, 5, 6_000, 8);
        assert_eq!(decision.replicas, 6);
        assert!(
            decision.reason.contains("scaling up"),
            "{}",
            decision.reason
        );
    }

    #[test]
    fn a_scale_up_window_follows_the_lowest_recommendation_in_it() {
        let spec = AutoscalingSpec {
            scale_up: ScalingRules {
                stabilization_window_seconds: 30,
                max_step: 4,
            },
            ..spec()
        };
        let spike = [at(40, 1), at(20, 1), at(0, 6)];
        assert_eq!(decide(&spec, &spike, WATCHED, 1, 6_000, 8).replicas, 1);
        let sustained = [at(40, 1), at(25, 3), at(10, 4), at(0, 6)];
        assert_eq!(decide(&spec, &sustained, WATCHED, 1, 6_000, 8).replicas, 3);
    }

    #[test]
    fn a_scale_down_waits_for_its_window_and_removes_one_pod_at_a_time() {
        let spec = spec();
        // Lag dropped 30 s ago: the window still holds a reading that wanted 4.
        let dropping = [at(50, 4), at(30, 1), at(0, 1)];
        let held = decide(&spec, &dropping, WATCHED, 4, 0, 8);
        assert_eq!(held.replicas, 4);
        // Every reading of the last 60 s wants 1.
        let drained = [at(70, 4), at(50, 1), at(30, 1), at(0, 1)];
        assert_eq!(decide(&spec, &drained, WATCHED, 4, 0, 8).replicas, 3);
        assert_eq!(decide(&spec, &drained, WATCHED, 3, 0, 8).replicas, 2);
    }

    #[test]
    fn no_scale_down_before_a_whole_window_was_watched() {
        let spec = spec();
        let decision = decide(&spec, &[at(0, 1)], Duration::from_secs(10), 4, 0, 8);
        assert_eq!(decision.replicas, 4);
        assert!(decision.reason.contains("holding"), "{}", decision.reason);
        let later = decide(&spec, &[at(0, 1)], Duration::from_secs(60), 4, 0, 8);
        assert_eq!(later.replicas, 3);
    }

    #[test]
    fn a_lag_that_swings_around_the_target_does_not_flap() {
        // Readings every 15 s for 10 minutes, the lag swinging between 1 and 3 pods'
        // worth: after the first scale-up the replicas never go down and up again.
        let spec = spec();
        let mut current = 1;
        let mut readings: Vec<(u64, i32)> = Vec::new();
        let mut changes = Vec::new();
        for tick in 0..40u64 {
            let now = tick * 15;
            let lag = if tick % 2 == 0 { 2_900 } else { 900 };
            readings.push((now, recommend(&spec, lag, 8)));
            let history: Vec<Past> = readings
                .iter()
                .map(|&(t, r)| at(now - t, r))
                .filter(|p| p.age <= Duration::from_secs(60))
                .collect();
            let decision = decide(&spec, &history, Duration::from_secs(now), current, lag, 8);
            if decision.replicas != current {
                changes.push((now, current, decision.replicas));
                current = decision.replicas;
            }
        }
        assert_eq!(changes, vec![(0, 1, 3)], "one scale-up, then steady");
    }

    #[test]
    fn replicas_outside_the_bounds_are_brought_back_at_once() {
        let spec = spec();
        assert_eq!(decide(&spec, &[at(0, 1)], WATCHED, 9, 0, 8).replicas, 6);
        assert_eq!(decide(&spec, &[at(0, 1)], WATCHED, 0, 0, 8).replicas, 1);
        assert_eq!(decide(&spec, &[at(0, 1)], WATCHED, 6, 0, 4).replicas, 4);
    }
}
