//! The whole system end to end, on the real control plane and the real broker: the
//! operator turns a DedupCluster into a StatefulSet, the real controllers and scheduler
//! make and place its pods, and a test node agent (`support/node_agent.rs`) runs them as
//! processes of the workspace's `restorer` and `deduplicator` binaries with their volumes,
//! environment and probes. Checkpoints go to moto (S3).
//!
//! While a stream of PostHog-style events runs (20 % copies with a new uuid, other
//! properties and the timestamp spelled differently), the scenario scales the cluster with
//! `kubectl scale`, reschedules a pod onto an empty volume (pod and PVC deleted), rolls the
//! pods with a spec change and crashes a pod (SIGKILL, no grace). Then it checks the output
//! against what was sent: every unique event present, no copy, republished originals within
//! the documented bound; and prints, per step, the handoff gap (the longest time a
//! partition's events were not published), the catch-up replay and what was restored.
//!
//! The short version runs in CI (`cargo test`); the long one (more events, more steps):
//! `cargo build --bins && DEDUP_E2E_LONG=1 cargo test --test end_to_end -- --nocapture`
//! (docs/reliability.md).
//!
//! Needs the test services (`eval "$(scripts/start-test-services.sh)"`) and root (the
//! agent mounts each pod's volume in a mount namespace of its own).

mod support {
    pub mod cluster;
    pub mod node_agent;
    pub mod stream;
}

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use support::cluster::{cluster, eventually, kubectl, kubectl_in, Operator, TestNamespace};
use support::node_agent::NodeAgent;
use support::stream::{self, Stream};

const PARTITIONS: i32 = 8;
const COPY_PERCENT: u64 = 20;
/// In flight per partition (`maxInFlightMessages` of the scenario's cluster).
const MAX_IN_FLIGHT: u64 = 200;

/// How long a step may take to settle (pods ready, rolled).
const STEP_TIMEOUT: Duration = Duration::from_secs(240);

/// One scenario run's sizes: CI's short version, or the long one.
struct Sizes {
    rate: u64,
    /// Steady streaming after each step, so that the handoff shows and settles.
    dwell: Duration,
    long: bool,
}

impl Sizes {
    fn get() -> Self {
        if std::env::var("DEDUP_E2E_LONG").is_ok_and(|v| v == "1") {
            Self {
                rate: 2_500,
                dwell: Duration::from_secs(40),
                long: true,
            }
        } else {
            Self {
                rate: 600,
                dwell: Duration::from_secs(20),
                long: false,
            }
        }
    }
}

/// The pods' counters of [`COUNTERS`], summed over every pod seen.
type Totals = [f64; 4];

/// Where a step began.
struct Mark {
    name: String,
    from_ms: i64,
    totals: Totals,
}

/// A figure row of one step.
struct Step {
    name: String,
    from_ms: i64,
    to_ms: i64,
    before: Totals,
    after: Totals,
    /// Seconds from the action until the pods were ready and the group stable with
    /// every pod holding partitions.
    settled_s: f64,
}

impl Step {
    /// How much the counter `COUNTERS[index]` grew during the step.
    fn grew(&self, index: usize) -> f64 {
        self.after[index] - self.before[index]
    }
}

/// The deduplicators' counters, scraped from every running pod: a pod's counters are
/// kept after it is gone (and across its restarts), so totals only grow.
#[derive(Default)]
struct Scraped {
    /// (pod uid, metric) → (accumulated before the last reset, last value)
    values: HashMap<(String, &'static str), (f64, f64)>,
}

impl Scraped {
    fn total(&self, metric: &str) -> f64 {
        self.values
            .iter()
            .filter(|((_, m), _)| *m == metric)
            .map(|(_, (acc, last))| acc + last)
            .sum()
    }
}

const CATCH_UP: &str = "dedup_catch_up_messages_total";
const RESTORE_BYTES: &str = "dedup_restore_bytes_total";
const REUSED_BYTES: &str = "dedup_restore_reused_bytes_total";
const PREFETCHED_BYTES: &str = "dedup_prefetch_downloaded_bytes_total";
/// The counters a step's row shows, in the order of [`Totals`].
const COUNTERS: [&str; 4] = [CATCH_UP, RESTORE_BYTES, REUSED_BYTES, PREFETCHED_BYTES];

fn scrape_once(agent: &NodeAgent, scraped: &Mutex<Scraped>) {
    for (_, uid, port) in agent.running("http") {
        let Some(body) = http_get(port, "/metrics") else {
            continue;
        };
        for metric in COUNTERS {
            let value: f64 = body
                .lines()
                .filter(|l| l.starts_with(metric))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            let mut scraped = scraped.lock().unwrap();
            let entry = scraped
                .values
                .entry((uid.clone(), metric))
                .or_insert((0.0, 0.0));
            if value < entry.1 {
                entry.0 += entry.1; // the container restarted: its counter began again
            }
            entry.1 = value;
        }
    }
}

/// The body of a 200 answer to `GET path` on a pod's host port (the test kit's call).
fn http_get(port: u16, path: &str) -> Option<String> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    match dedup_testkit::http::http_get(address, path) {
        Some((200, body)) => Some(body),
        _ => None,
    }
}

/// A plain HTTP request to moto (no signature needed): (status, body).
fn s3_request(endpoint: &str, method: &str, path: &str) -> (u16, String) {
    let address = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("S3 endpoint {endpoint}: {e}"));
    dedup_testkit::http::http_request(address, method, path)
        .unwrap_or_else(|| panic!("S3 at {endpoint} did not answer {method} {path}"))
}

fn s3_endpoint() -> String {
    dedup_testkit::services::s3_endpoint()
}

/// Everything a scenario works with.
struct Scenario {
    client: Client,
    ns: TestNamespace,
    agent: NodeAgent,
    operator: Operator,
    bootstrap: String,
    name: String,
    input: String,
    output: String,
    group: String,
    bucket: String,
    sizes: Sizes,
    scraped: Arc<Mutex<Scraped>>,
    steps: Vec<Step>,
    /// `kafka.groupProtocol` is `consumer` (KIP-848).
    consumer_protocol: bool,
}

impl Scenario {
    /// Starts the scenario's cluster (3 replicas, checkpoints every 10 s), with
    /// `overrides` merged into its spec (a JSON merge patch: objects merge, `null`
    /// removes).
    async fn start_with(test: &str, guarantee: &str, overrides: serde_json::Value) -> Option<Self> {
        let client = cluster().await?;
        let bootstrap = stream::broker()?;
        let ns = TestNamespace::create(test);
        let suffix = format!("{}-{}", std::process::id(), stream::now_ms() % 100_000);
        let (input, output) = (format!("e2e-in-{suffix}"), format!("e2e-out-{suffix}"));
        stream::create_topics(
            &bootstrap,
            &[
                (&input, PARTITIONS, &[]),
                // The broker's append time: the handoff gap is read off the output.
                (
                    &output,
                    PARTITIONS,
                    &[("message.timestamp.type", "LogAppendTime")],
                ),
            ],
        )
        .await;
        let bucket = format!("e2e-{suffix}");
        let (status, body) = s3_request(&s3_endpoint(), "PUT", &format!("/{bucket}"));
        assert_eq!(status, 200, "creating bucket {bucket}: {body}");
        let agent = NodeAgent::start(client.clone()).await;
        let operator = Operator::start(&ns.name);
        let name = "events".to_string();
        let group = format!("e2e-{suffix}");
        let (node_selector, tolerations) = agent.placement();
        let cluster = json!({
            "apiVersion": "kafka-deduplicator.dev/v1alpha1",
            "kind": "DedupCluster",
            "metadata": {"name": name, "namespace": ns.name},
            "spec": {
                "replicas": 3,
                "image": "kafka-deduplicator:e2e",
                "nodeSelector": node_selector,
                "tolerations": tolerations,
                "terminationGracePeriodSeconds": 20,
                "kafka": {
                    "bootstrapServers": bootstrap,
                    "inputTopic": input,
                    "outputTopic": output,
                    // A group of the scenario's own: two scenarios' pods have the same
                    // names, which are their static member ids.
                    "consumerGroup": group,
                    // A shorter session than the default 45 s: a static member that left
                    // (scaled down) gives its partitions back sooner, and CI stays short.
                    "properties": {"session.timeout.ms": "10000"},
                },
                "dedup": {
                    "window": "1h",
                    "maxStoreCapacity": "1GiB",
                    "maxInFlightMessages": MAX_IN_FLIGHT,
                    "outputGuarantee": guarantee,
                },
                "storage": {"size": "1Gi"},
                "checkpoint": {
                    "interval": "10s",
                    "s3": {"bucket": bucket, "region": "us-east-1", "endpoint": s3_endpoint()},
                    "credentialsSecret": "dedup-s3-credentials",
                },
            },
        });
        let mut cluster = cluster;
        merge_patch(&mut cluster["spec"], &overrides);
        kubectl_in(&["apply", "-f", "-"], Some(&cluster.to_string()));
        let scraped = Arc::new(Mutex::new(Scraped::default()));
        Some(Self {
            client,
            ns,
            agent,
            operator,
            bootstrap,
            name,
            input,
            output,
            group,
            bucket,
            sizes: Sizes::get(),
            scraped,
            steps: Vec::new(),
            consumer_protocol: cluster["spec"]["kafka"]["groupProtocol"] == "consumer",
        })
    }

    fn scrape(&self) {
        scrape_once(&self.agent, &self.scraped);
    }

    /// Waits until the StatefulSet has `replicas` pods, all updated and ready, scraping
    /// the pods' counters meanwhile.
    async fn settled(&self, replicas: i32) {
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.ns.name);
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            self.scrape();
            let state = match sets.get_opt(&self.name).await {
                Ok(Some(s)) => {
                    let status = s.status.clone().unwrap_or_default();
                    let rolled = status.update_revision.is_some()
                        && status.current_revision == status.update_revision;
                    let done = status.observed_generation == s.metadata.generation
                        && status.replicas == replicas
                        && status.ready_replicas == Some(replicas)
                        && status.updated_replicas == Some(replicas)
                        && rolled;
                    let running = self.agent.running("http").len();
                    // The group has settled too: every pod holds partitions.
                    let group = if done && running == replicas as usize && self.consumer_protocol {
                        // The classic DescribeGroups does not show a KIP-848 group's
                        // members: the pods say what they hold.
                        self.pods_holding()
                    } else if done && running == replicas as usize {
                        let (bootstrap, name) = (self.bootstrap.clone(), self.group.clone());
                        tokio::task::spawn_blocking(move || stream::group_state(&bootstrap, &name))
                            .await
                            .ok()
                            .flatten()
                    } else {
                        None
                    };
                    if matches!(&group, Some((state, holding)) if state == "Stable" && *holding == replicas as usize)
                    {
                        return;
                    }
                    format!("{status:?}; pods run by the agent: {running}; group: {group:?}")
                }
                Ok(None) => "no StatefulSet yet".into(),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                self.report_logs();
                panic!("the cluster did not settle at {replicas} ready pods in {STEP_TIMEOUT:?}: {state}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// ("Stable", pods holding partitions) when the running pods hold every partition
    /// between them, each at least one, as their metrics say.
    fn pods_holding(&self) -> Option<(String, usize)> {
        let mut holding = 0;
        let mut total = 0.0;
        for (_, _, port) in self.agent.running("http") {
            let body = http_get(port, "/metrics")?;
            let assigned: f64 = body
                .lines()
                .filter(|l| l.starts_with("dedup_assigned_partitions"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            holding += usize::from(assigned >= 1.0);
            total += assigned;
        }
        let state = if total == f64::from(PARTITIONS) {
            "Stable"
        } else {
            "Reconciling"
        };
        Some((state.to_string(), holding))
    }

    /// The StatefulSet's update revision.
    async fn update_revision(&self) -> Option<String> {
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.ns.name);
        sets.get_opt(&self.name)
            .await
            .ok()
            .flatten()
            .and_then(|s| s.status)
            .and_then(|s| s.update_revision)
    }

    /// Streams on for the dwell, scraping.
    async fn dwell(&self) {
        let until = Instant::now() + self.sizes.dwell;
        while Instant::now() < until {
            self.scrape();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// The start of a step: the counters and the time before its action.
    fn begin(&self, name: &str) -> Mark {
        eprintln!("e2e: step {name}");
        self.scrape();
        Mark {
            name: name.into(),
            from_ms: stream::now_ms(),
            totals: self.totals(),
        }
    }

    /// The end of a step: `replicas` ready pods, then the dwell; records its figures.
    async fn end(&mut self, mark: Mark, replicas: i32) {
        // Let the StatefulSet controller see the change before judging it settled.
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.settled(replicas).await;
        let settled_s = (stream::now_ms() - mark.from_ms) as f64 / 1000.0;
        self.dwell().await;
        self.steps.push(Step {
            name: mark.name,
            from_ms: mark.from_ms,
            to_ms: stream::now_ms(),
            before: mark.totals,
            after: self.totals(),
            settled_s,
        });
    }

    /// Catch-up messages, bytes restored, of those bytes reused from the volume, and
    /// bytes prefetched before a move.
    fn totals(&self) -> Totals {
        let scraped = self.scraped.lock().unwrap();
        COUNTERS.map(|counter| scraped.total(counter))
    }

    fn scale(&self, replicas: i32) {
        kubectl(&[
            "scale",
            "dedup",
            &self.name,
            "--namespace",
            &self.ns.name,
            &format!("--replicas={replicas}"),
        ]);
    }

    /// The pod and its claim deleted: it comes back on an empty volume.
    async fn reschedule(&self, ordinal: u32) {
        let pod = format!("{}-{ordinal}", self.name);
        let claims: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &self.ns.name);
        let claim_name = format!("data-{pod}");
        let old = claims
            .get(&claim_name)
            .await
            .unwrap_or_else(|e| panic!("the claim {claim_name}: {e}"))
            .uid();
        // The claim first: it waits (kubernetes.io/pvc-protection) until the pod is gone.
        kubectl(&[
            "delete",
            "pvc",
            &claim_name,
            "--namespace",
            &self.ns.name,
            "--wait=false",
        ]);
        kubectl(&[
            "delete",
            "pod",
            &pod,
            "--namespace",
            &self.ns.name,
            "--wait=false",
        ]);
        eventually(
            "a new claim for the rescheduled pod",
            STEP_TIMEOUT,
            || async {
                match claims.get_opt(&claim_name).await {
                    Ok(Some(c)) if c.uid() != old => Ok(()),
                    other => Err(format!("{:?}", other.map(|c| c.map(|c| c.uid())))),
                }
            },
        )
        .await;
    }

    /// Bytes restored, of those bytes reused from the volume, and seconds, that the
    /// restorer init containers reported in `[from_ms, to_ms)`.
    fn restorer_figures(&self, from_ms: i64, to_ms: i64) -> (f64, f64, f64) {
        let (mut bytes, mut reused, mut seconds) = (0.0, 0.0, 0.0);
        for (file, text) in self.agent.all_logs() {
            if !file.ends_with("_restorer.log") {
                continue;
            }
            for line in text.lines() {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let at = value["timestamp"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map_or(0, |t| t.as_millisecond());
                if at < from_ms || at >= to_ms {
                    continue;
                }
                // LOG_FORMAT=json: the event's fields beside timestamp and level.
                let fields = &value;
                match fields["message"].as_str() {
                    Some("partition restored") => {
                        let restored = fields["bytes"].as_f64().unwrap_or(0.0);
                        let downloaded = fields["bytes_downloaded"].as_f64().unwrap_or(restored);
                        bytes += restored;
                        reused += restored - downloaded;
                    }
                    Some("restorer done") => seconds += fields["seconds"].as_f64().unwrap_or(0.0),
                    _ => {}
                }
            }
        }
        (bytes, reused, seconds)
    }

    /// Stops the stream, waits for the group to consume everything, reads the output and
    /// checks it. Returns the verdict, the output and how long the drain took.
    async fn finish(
        &self,
        stream: Stream,
        read_committed: bool,
    ) -> (stream::Verdict, Vec<stream::Published>) {
        let truth = stream.stop();
        let (bootstrap, group, input) = (
            self.bootstrap.clone(),
            self.group.clone(),
            self.input.clone(),
        );
        eventually("the group consumed the whole input", STEP_TIMEOUT, || {
            let (bootstrap, group, input) = (bootstrap.clone(), group.clone(), input.clone());
            async move {
                let lag = tokio::task::spawn_blocking(move || {
                    stream::group_lag(&bootstrap, &group, &input, PARTITIONS)
                })
                .await
                .ok()
                .flatten();
                match lag {
                    Some(0) => Ok(()),
                    other => Err(format!("lag {other:?}")),
                }
            }
        })
        .await;
        let (bootstrap, output) = (self.bootstrap.clone(), self.output.clone());
        let published = tokio::task::spawn_blocking(move || {
            stream::read_output(&bootstrap, &output, read_committed)
        })
        .await
        .expect("reading the output");
        (stream::check(&truth, &published), published)
    }

    /// The figures table of the steps.
    fn table(&self, output: &[stream::Published]) -> String {
        let mut table = String::from(
            "| step | settled after (s) | handoff gap (s, longest partition) | median partition gap (s) | catch-up replayed | bytes restored (restorer + in process) | of which reused from the volume | prefetched before the move | restorer seconds | republished originals |\n|---|---|---|---|---|---|---|---|---|---|\n",
        );
        for step in &self.steps {
            let (gap, partition) =
                stream::longest_gap(output, PARTITIONS, step.from_ms, step.to_ms);
            let median = median(stream::partition_gaps(
                output,
                PARTITIONS,
                step.from_ms,
                step.to_ms,
            ));
            let (restorer_bytes, restorer_reused, restorer_seconds) =
                self.restorer_figures(step.from_ms, step.to_ms);
            table.push_str(&format!(
                "| {} | {:.1} | {gap:.1} (p{partition}) | {median:.1} | {} | {} | {} | {} | {restorer_seconds:.1} | {} |\n",
                step.name,
                step.settled_s,
                step.grew(0),
                restorer_bytes + step.grew(1),
                restorer_reused + step.grew(2),
                step.grew(3),
                stream::republished_between(output, step.from_ms, step.to_ms),
            ));
        }
        table
    }

    fn report_logs(&self) {
        eprintln!(
            "--- operator log (tail) ---\n{}",
            tail(&self.operator.log(), 30)
        );
        for (file, text) in self.agent.all_logs() {
            eprintln!("--- {file} (tail) ---\n{}", tail(&text, 25));
        }
    }

    /// Deletes the scenario's namespace and waits until it is gone, while the agent still
    /// runs its pods (they get their SIGTERM and grace): nothing is left behind to load
    /// the control plane for the tests after this one.
    async fn teardown(self) {
        let namespace = self.ns.name.clone();
        tokio::task::spawn_blocking(move || {
            kubectl(&[
                "delete",
                "namespace",
                &namespace,
                "--wait=true",
                "--timeout=180s",
            ])
        })
        .await
        .expect("deleting the scenario's namespace");
    }

    /// Deletes the DedupCluster: its children go (garbage collector), the checkpoints in
    /// S3 stay.
    async fn delete_cluster(&self) {
        kubectl(&[
            "delete",
            "dedup",
            &self.name,
            "--namespace",
            &self.ns.name,
            "--wait=true",
            "--timeout=120s",
        ]);
        let sets: Api<StatefulSet> = Api::namespaced(self.client.clone(), &self.ns.name);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns.name);
        eventually(
            "the StatefulSet and its pods gone",
            STEP_TIMEOUT,
            || async {
                let set = sets.get_opt(&self.name).await.map_err(|e| e.to_string())?;
                let listed = pods
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                if set.is_none() && listed.items.is_empty() && self.agent.running("http").is_empty()
                {
                    Ok(())
                } else {
                    Err(format!(
                        "StatefulSet present: {}, pods: {:?}",
                        set.is_some(),
                        listed
                            .items
                            .iter()
                            .map(|p| p.name_any())
                            .collect::<Vec<_>>()
                    ))
                }
            },
        )
        .await;
        for kind in ["service", "configmap", "pdb"] {
            let left = kubectl(&[
                "get",
                kind,
                "--namespace",
                &self.ns.name,
                "-l",
                &format!("app.kubernetes.io/instance={}", self.name),
                "-o",
                "name",
            ]);
            assert!(
                left.trim().is_empty(),
                "{kind} left after the delete: {left}"
            );
        }
        // The pods' final checkpoints went up at their SIGTERM (older ones were
        // collected as always); every partition keeps its checkpoints.
        for partition in 0..PARTITIONS {
            let manifests = s3_keys(
                &self.bucket,
                &format!(
                    "deduplication-checkpoints/{}/{partition}/manifests/",
                    self.input
                ),
            );
            assert!(
                manifests > 0,
                "partition {partition} has no checkpoint in S3 after the delete"
            );
        }
    }
}

/// Applies a JSON merge patch (RFC 7386): objects merge key by key, `null` removes a
/// key, anything else replaces.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let Some(fields) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    for (key, value) in fields {
        if value.is_null() {
            if let Some(object) = target.as_object_mut() {
                object.remove(key);
            }
        } else {
            merge_patch(&mut target[key], value);
        }
    }
}

/// How many objects the bucket holds under `prefix`.
fn s3_keys(bucket: &str, prefix: &str) -> usize {
    let (status, body) = s3_request(
        &s3_endpoint(),
        "GET",
        &format!("/{bucket}?list-type=2&max-keys=1000&prefix={prefix}"),
    );
    assert_eq!(status, 200, "listing {bucket}: {body}");
    body.matches("<Key>").count()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The republished originals the guarantee allows for the steps: per step, what was in
/// flight on every partition plus what the input brought in one commit interval (1 s)
/// and the drain's margin (docs/reliability.md, "handovers").
fn republish_bound(steps: usize, rate: u64) -> usize {
    (steps as u64 * (PARTITIONS as u64 * MAX_IN_FLIGHT + 2 * rate)) as usize
}

/// `session.timeout.ms` of the scenario's cluster, in seconds.
const SESSION_TIMEOUT_S: f64 = 10.0;

/// A "kubectl scale A → B" step with B < A.
fn is_scale_down(step: &str) -> bool {
    let Some(counts) = step.strip_prefix("kubectl scale ") else {
        return false;
    };
    let mut parts = counts.split(" → ").map(|n| n.trim().parse::<i32>().ok());
    matches!((parts.next(), parts.next()), (Some(Some(from)), Some(Some(to))) if to < from)
}

/// The step that deletes a pod and its claim.
const RESCHEDULE: &str = "pod 1 and its PVC deleted";

/// The scenarios run one at a time: each has its own node and namespace, but two at once
/// would share the machine's two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Which steps a scenario takes.
#[derive(PartialEq)]
enum Steps {
    /// Scale 3 → 5 → 2 (and 2 → 4 → 3 in the long version).
    Scale,
    /// The scale steps, then a reschedule onto an empty volume, a rolling spec change and
    /// a node crash.
    All,
}

/// Streams, takes the steps, checks the output and prints the figures; returns the
/// verdict and the scenario (for what the caller checks after).
/// (The caller holds [`ONE_AT_A_TIME`] until its scenario is torn down.)
async fn run(
    test: &str,
    guarantee: &str,
    steps: Steps,
    spec: serde_json::Value,
) -> Option<(stream::Verdict, Scenario)> {
    let mut scenario = Scenario::start_with(test, guarantee, spec).await?;
    let stream = Stream::start(
        &scenario.bootstrap,
        &scenario.input,
        PARTITIONS,
        scenario.sizes.rate,
        COPY_PERCENT,
        17,
    );
    scenario.settled(3).await;
    scenario.dwell().await;
    let mut scale_steps = vec![5, 2];
    if scenario.sizes.long {
        scale_steps.extend([4, 3]);
    }
    let mut replicas = 3;
    for to in scale_steps {
        let mark = scenario.begin(&format!("kubectl scale {replicas} → {to}"));
        scenario.scale(to);
        scenario.end(mark, to).await;
        replicas = to;
    }
    if steps == Steps::All {
        // A reschedule onto an empty volume: the restorer pulls the checkpoints.
        let mark = scenario.begin(RESCHEDULE);
        scenario.reschedule(1).await;
        scenario.end(mark, replicas).await;
        let mark = scenario.begin("spec change rolls the pods");
        let before = scenario.update_revision().await;
        let patch = json!({"spec": {"dedup": {"window": "2h"}}}).to_string();
        kubectl(&[
            "patch",
            "dedup",
            &scenario.name,
            "--namespace",
            &scenario.ns.name,
            "--type=merge",
            "-p",
            &patch,
        ]);
        // Settled means rolled to the new revision, not the old one still standing.
        eventually("the StatefulSet takes the change", STEP_TIMEOUT, || async {
            match scenario.update_revision().await {
                Some(now) if Some(&now) != before.as_ref() => Ok(()),
                other => Err(format!("update revision {other:?}")),
            }
        })
        .await;
        scenario.end(mark, replicas).await;
        let mark = scenario.begin("node crash of pod 0 (SIGKILL)");
        scenario.agent.crash(&format!("{}-0", scenario.name));
        scenario.end(mark, replicas).await;
    }
    let read_committed = guarantee == "exactly-once";
    let (verdict, output) = scenario.finish(stream, read_committed).await;
    eprintln!(
        "e2e ({guarantee}, {}): {} events sent at {} ev/s, {} unique; lost {}, copies passed {}, \
         republished originals {}\n{}",
        if scenario.sizes.long { "long" } else { "short" },
        verdict.sent,
        scenario.sizes.rate,
        verdict.unique,
        verdict.lost,
        verdict.copies_passed,
        verdict.republished,
        scenario.table(&output)
    );
    if verdict.lost > 0 || verdict.copies_passed > 0 {
        scenario.report_logs();
    }
    assert_eq!(verdict.lost, 0, "unique events lost: {verdict:?}");
    assert_eq!(verdict.copies_passed, 0, "copies published: {verdict:?}");
    // A scale-down's pods leave the group when they are gone (the operator's LeaveGroup):
    // their partitions move well within the session timeout (10 s) they used to wait.
    for step in scenario.steps.iter().filter(|s| is_scale_down(&s.name)) {
        let (gap, partition) = stream::longest_gap(&output, PARTITIONS, step.from_ms, step.to_ms);
        assert!(
            gap < SESSION_TIMEOUT_S - 2.0,
            "{}: partition {partition} waited {gap:.1} s, about the session timeout ({SESSION_TIMEOUT_S} s): did the departed pods leave the group?",
            step.name
        );
    }
    // The pod rescheduled onto an empty volume had its state from S3, by its restorer.
    if let Some(step) = scenario.steps.iter().find(|s| s.name == RESCHEDULE) {
        let (bytes, _, _) = scenario.restorer_figures(step.from_ms, step.to_ms);
        assert!(
            bytes > 0.0,
            "the restorer of the rescheduled pod restored nothing"
        );
    }
    Some((verdict, scenario))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_rescheduling_rolling_and_a_crash_under_load_lose_nothing_and_pass_no_copy() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some((verdict, scenario)) = run("e2e", "at-least-once", Steps::All, json!({})).await else {
        return;
    };
    let bound = republish_bound(scenario.steps.len(), scenario.sizes.rate);
    assert!(
        verdict.republished <= bound,
        "{} republished originals, more than the bound {bound}: {verdict:?}",
        verdict.republished
    );
    scenario.delete_cluster().await;
    scenario.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_scaling_shows_a_read_committed_reader_each_unique_event_once() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some((verdict, scenario)) = run("e2e-eos", "exactly-once", Steps::Scale, json!({})).await
    else {
        return;
    };
    assert_eq!(
        verdict.republished, 0,
        "an original seen twice by read_committed: {verdict:?}"
    );
    scenario.teardown().await;
}

/// Warm handoff with the brokers assigning (`kafka.groupProtocol: consumer`, KIP-848):
/// the scale steps under load, where a pod about to get a partition downloads its
/// checkpoint while the old owner still holds it and restores only the delta at the
/// move. Nothing is lost, no copy passes, and the departed pods of the scale-down leave
/// the group at once (the operator's LeaveGroup by instance id removes KIP-848 static
/// members too; the brokers' session timeout is 45 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_brokers_assigning_pods_prefetch_what_moves_to_them_and_lose_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(scenario) = brokers_assigning("e2e-kip848", "at-least-once").await else {
        return;
    };
    scenario.teardown().await;
}

/// The same with `outputGuarantee: exactly-once`: the transactions' offsets commit with
/// the member epochs of the KIP-848 group, and a `read_committed` reader sees each
/// unique event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_with_the_brokers_assigning_shows_each_unique_event_once() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(scenario) = brokers_assigning("e2e-kip848-eos", "exactly-once").await else {
        return;
    };
    scenario.teardown().await;
}

/// The scale steps with `kafka.groupProtocol: consumer`: [`run`]'s checks, the
/// prefetch and the republish bound (none at exactly-once).
async fn brokers_assigning(test: &str, guarantee: &str) -> Option<Scenario> {
    // The brokers set the session timeout with this protocol: no session.timeout.ms.
    let spec = json!({"kafka": {"groupProtocol": "consumer", "properties": null}});
    let (verdict, scenario) = run(test, guarantee, Steps::Scale, spec).await?;
    let scale_up = &scenario.steps[0];
    assert!(
        scale_up.grew(3) > 0.0,
        "the pods that joined prefetched the checkpoints of partitions moving to them"
    );
    assert!(
        scale_up.grew(2) > 0.0,
        "their restores at the move took the prefetched files (their volumes were empty)"
    );
    let bound = if guarantee == "exactly-once" {
        0
    } else {
        republish_bound(scenario.steps.len(), scenario.sizes.rate)
    };
    assert!(
        verdict.republished <= bound,
        "{} republished originals, more than the bound {bound}: {verdict:?}",
        verdict.republished
    );
    Some(scenario)
}

/// One look at the autoscaled cluster.
#[derive(Debug, Clone)]
struct Sample {
    at_s: f64,
    replicas: i32,
    lag: Option<i64>,
    reason: String,
}

impl Scenario {
    /// The cluster's `spec.replicas` and `status.autoscaling`.
    async fn sample(&self, since: Instant) -> Option<Sample> {
        let api: Api<operator::crd::DedupCluster> =
            Api::namespaced(self.client.clone(), &self.ns.name);
        let cluster = api.get_opt(&self.name).await.ok().flatten()?;
        let autoscaling = cluster
            .status
            .and_then(|s| s.autoscaling)
            .unwrap_or_default();
        Some(Sample {
            at_s: since.elapsed().as_secs_f64(),
            replicas: cluster.spec.replicas,
            lag: autoscaling.lag,
            reason: autoscaling.reason.unwrap_or_default(),
        })
    }

    /// Samples every 500 ms (scraping the pods too) for `period`, or until `done` says
    /// the timeline is complete.
    async fn follow(
        &self,
        since: Instant,
        timeline: &mut Vec<Sample>,
        period: Duration,
        done: impl Fn(&[Sample]) -> bool,
    ) -> bool {
        let until = Instant::now() + period;
        while Instant::now() < until {
            self.scrape();
            if let Some(sample) = self.sample(since).await {
                if timeline
                    .last()
                    .is_none_or(|last| last.replicas != sample.replicas || last.lag != sample.lag)
                {
                    eprintln!("e2e autoscale: {sample:?}");
                }
                timeline.push(sample);
            }
            if done(timeline) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }
}

/// True when the replicas rise (or stay) and then only fall: no scale-down followed by
/// a scale-up.
fn rises_then_falls(replicas: &[i32]) -> bool {
    let changes: Vec<i32> = replicas
        .windows(2)
        .filter(|w| w[0] != w[1])
        .map(|w| w[1] - w[0])
        .collect();
    let first_down = changes.iter().position(|&d| d < 0).unwrap_or(changes.len());
    changes[first_down..].iter().all(|&d| d < 0)
}

#[test]
fn scale_down_steps_are_told_by_their_name() {
    assert!(is_scale_down("kubectl scale 5 → 2"));
    assert!(!is_scale_down("kubectl scale 3 → 5"));
    assert!(!is_scale_down("pod 1 and its PVC deleted"));
}

#[test]
fn flapping_is_told_apart_from_one_rise_and_one_fall() {
    assert!(rises_then_falls(&[1, 1, 4, 4, 3, 2, 1]));
    assert!(rises_then_falls(&[1, 2, 4, 4]));
    assert!(!rises_then_falls(&[1, 4, 3, 4, 1]));
}

/// The lag autoscaler on the real control plane and broker: the cluster starts at 1 of
/// 1..4 replicas with a target of 2,000 messages of lag per replica, a reading every 2 s
/// and a 20 s scale-down window. A burst of input (20,000 ev/s for 6 s over a steady
/// 100 ev/s) must scale it up; once drained it must come back to 1 after the window, the
/// replicas rising then falling, never both ways; nothing lost, no copy through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_scales_the_cluster_up_on_lag_and_the_drain_back_down_without_flapping() {
    const STEADY: u64 = 100;
    const BURST: u64 = 20_000;
    let _alone = ONE_AT_A_TIME.lock().await;
    let autoscaling = json!({
        "replicas": 1,
        "autoscaling": {
            "minReplicas": 1,
            "maxReplicas": 4,
            "targetLagPerReplica": 2000,
            "pollIntervalSeconds": 2,
            "scaleUp": {"stabilizationWindowSeconds": 0, "maxStep": 4},
            "scaleDown": {"stabilizationWindowSeconds": 20, "maxStep": 1},
        },
    });
    let Some(scenario) = Scenario::start_with("e2e-autoscale", "at-least-once", autoscaling).await
    else {
        return;
    };
    let stream = Stream::start(
        &scenario.bootstrap,
        &scenario.input,
        PARTITIONS,
        STEADY,
        COPY_PERCENT,
        23,
    );
    scenario.settled(1).await;
    let since = Instant::now();
    let mut timeline = Vec::new();
    // Steady: the lag reading is within one replica's target, and nothing moves.
    scenario
        .follow(since, &mut timeline, Duration::from_secs(8), |_| false)
        .await;
    assert!(
        timeline.iter().all(|s| s.replicas == 1),
        "scaled before the burst: {timeline:?}"
    );
    let burst_at = since.elapsed().as_secs_f64();
    stream.set_rate(BURST);
    scenario
        .follow(since, &mut timeline, Duration::from_secs(6), |_| false)
        .await;
    stream.set_rate(STEADY);
    let burst_sent = stream.sent();
    // Up, and then back down to 1 once the lag has stayed low for the window.
    let back_down = scenario
        .follow(since, &mut timeline, Duration::from_secs(240), |t| {
            t.iter().any(|s| s.replicas > 1) && t.last().is_some_and(|s| s.replicas == 1)
        })
        .await;
    let replicas: Vec<i32> = timeline.iter().map(|s| s.replicas).collect();
    let peak = replicas.iter().copied().max().unwrap_or(0);
    let up_at = timeline.iter().find(|s| s.replicas > 1).map(|s| s.at_s);
    let down_at = timeline.last().map(|s| s.at_s);
    eprintln!(
        "e2e autoscale: burst at {burst_at:.1} s ({burst_sent} events sent by its end); first scale-up at {up_at:?} s; peak {peak} replicas; back to 1 at {down_at:?} s\n{}",
        timeline
            .iter()
            .filter(|s| !s.reason.is_empty())
            .fold((String::new(), None::<(i32, Option<i64>)>), |(mut out, last), s| {
                if last != Some((s.replicas, s.lag)) {
                    out.push_str(&format!(
                        "| {:.1} s | {} replicas | lag {:?} | {} |\n",
                        s.at_s, s.replicas, s.lag, s.reason
                    ));
                }
                (out, Some((s.replicas, s.lag)))
            })
            .0
    );
    if !back_down {
        scenario.report_logs();
    }
    assert!(
        peak >= 2,
        "the burst did not scale the cluster up: {timeline:?}"
    );
    assert!(
        back_down,
        "the cluster did not come back to 1 replica: {timeline:?}"
    );
    assert!(
        rises_then_falls(&replicas),
        "the replicas flapped: {replicas:?}"
    );
    // The window held: no scale-down within 20 s of the scale-up's reading (less the
    // 500 ms sampling step and the API's latency).
    let first_down = timeline
        .windows(2)
        .find(|w| w[1].replicas < w[0].replicas)
        .map(|w| w[1].at_s);
    if let (Some(up), Some(down)) = (up_at, first_down) {
        assert!(
            down - up >= 19.0,
            "scaled down {:.1} s after scaling up, inside the 20 s window",
            down - up
        );
    }
    // kubectl shows the lag and the target; Events record each change.
    let table = kubectl(&[
        "get",
        "dedup",
        &scenario.name,
        "--namespace",
        &scenario.ns.name,
    ]);
    assert!(
        table.contains("LAG") && table.contains("TARGET") && table.contains("2000"),
        "kubectl get dedup shows no lag and target columns:\n{table}"
    );
    let events = kubectl(&[
        "get",
        "events",
        "--namespace",
        &scenario.ns.name,
        "-o",
        "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
    ]);
    for reason in ["ScaledUp", "ScaledDown"] {
        assert!(
            events.lines().any(|l| l == reason),
            "no {reason} Event: {events}"
        );
    }
    scenario.settled(1).await;
    let (verdict, _) = scenario.finish(stream, false).await;
    eprintln!(
        "e2e autoscale: {} events sent, {} unique; lost {}, copies passed {}, republished {}",
        verdict.sent, verdict.unique, verdict.lost, verdict.copies_passed, verdict.republished
    );
    assert_eq!(verdict.lost, 0, "unique events lost: {verdict:?}");
    assert_eq!(verdict.copies_passed, 0, "copies published: {verdict:?}");
    scenario.teardown().await;
}
