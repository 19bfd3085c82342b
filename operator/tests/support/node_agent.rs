//! A node agent for the tests: a Node of the test control plane whose pods run as local
//! processes, in place of a kubelet and a container runtime. Test code, not product.
//!
//! The real StatefulSet controller creates and deletes the pods and the real scheduler
//! binds them; the agent only runs the pods bound to its node:
//!
//! - It registers a Node (`dedup-agent-…`, labelled `kubernetes.io/hostname` with its
//!   name and tainted [`TAINT_KEY`]`=<name>:NoSchedule`, so only pods that ask for it land
//!   there) and renews its Ready condition every 10 s. kwok manages only the nodes
//!   annotated `kwok.x-k8s.io/node=fake`, so it never touches this node's pods.
//! - A pod's init containers run first, in order, each to completion; then its
//!   containers. An image's command names one of the workspace's binaries (`restorer`,
//!   `deduplicator`), run from the `target` directory of the test build.
//! - The environment is resolved from the pod spec as a kubelet does: `envFrom`
//!   (ConfigMaps, Secrets, prefixes, `optional`), then `env` in order with `$(VAR)`
//!   expansion, `valueFrom.fieldRef` (the downward API: name, namespace, uid, node, IPs,
//!   labels, annotations, service account), `secretKeyRef` and `configMapKeyRef`.
//! - Each volume is a directory of the agent's: a PVC's is keyed on the claim's uid (a
//!   deleted and re-created claim is a new, empty directory; a deleted claim's directory
//!   is removed), an `emptyDir` is the pod's own. Each container runs in a private mount
//!   namespace (`unshare --mount`) with its volumes bind-mounted at their `mountPath`, so
//!   the pod sees `/data` as in a cluster (the agent runs as root).
//! - Network: pods share the host's network (the test services listen on 127.0.0.1), so
//!   each container port gets a free host port on 127.0.0.1, and a bind address
//!   `0.0.0.0:<containerPort>` in the environment is rewritten to it. The pod's IP is
//!   127.0.0.1. This is the one place where the agent differs from a kubelet.
//! - Startup, liveness and readiness probes run as HTTP GETs with their periods,
//!   thresholds and timeouts; a failed startup or liveness probe restarts the container.
//!   The pod status (phase, conditions with Ready, container statuses with restart counts
//!   and states) is written to the API server whenever it changes.
//! - `restartPolicy` is honoured (a restart waits 1, 2, 4 … up to 10 s). Deletion sends
//!   SIGTERM, waits the pod's grace period, then SIGKILL, then removes the pod from the
//!   API (as a kubelet's final delete). [`NodeAgent::crash`] is a node crash for one pod:
//!   SIGKILL at once, then the pod starts again from its init containers on the same
//!   volumes, as after a node's reboot.
//!
//! Not done: images, resource limits, security contexts, Service networking, exec and TCP
//! probes, volume types other than claims, `emptyDir` and projected volumes (service
//! account token, ConfigMap, downward API).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Node, PersistentVolumeClaim, Pod, Probe, ProjectedVolumeSource, Secret,
    ServiceAccount,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// The taint of the agent's node (its value is the node's name).
pub const TAINT_KEY: &str = "kafka-deduplicator.dev/test-node-agent";

/// How often the agent lists its pods and the node's conditions are renewed.
const SYNC_PERIOD: Duration = Duration::from_millis(500);
const HEARTBEAT_PERIOD: Duration = Duration::from_secs(10);
/// The longest wait before a container is started again (a kubelet's is 5 minutes).
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(10);

/// What the agent tells a pod's task.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Control {
    Run,
    /// The pod is being deleted: SIGTERM, the grace period, SIGKILL.
    Terminate {
        grace: Duration,
    },
    /// Node crash: SIGKILL now, then start the pod again from its init containers.
    Crash {
        generation: u32,
    },
    /// The pod is gone from the API: SIGKILL and stop.
    Kill,
}

struct PodHandle {
    namespace: String,
    name: String,
    control: watch::Sender<Control>,
    task: tokio::task::JoinHandle<()>,
    /// Host ports of the pod's container ports, by port name.
    ports: BTreeMap<String, u16>,
    crashes: u32,
}

struct Shared {
    node: String,
    root: PathBuf,
    binaries: PathBuf,
    client: Client,
    pods: Mutex<HashMap<String, PodHandle>>,
}

/// A running node agent; stops its pods (SIGKILL) and deletes its Node when dropped.
pub struct NodeAgent {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    _root: Option<tempfile::TempDir>,
}

impl NodeAgent {
    /// Registers a Node and starts running the pods bound to it.
    pub async fn start(client: Client) -> Self {
        let binaries = workspace_binaries();
        check_mount_namespaces();
        let root = tempfile::Builder::new()
            .prefix("dedup-node-agent-")
            .tempdir_in(
                std::env::var_os("DEDUP_NODE_AGENT_DIR").unwrap_or_else(|| "/var/tmp".into()),
            )
            .expect("the node agent's directory");
        // DEDUP_NODE_AGENT_KEEP=1 keeps the volumes and logs for a look after the run.
        let (path, root) = if std::env::var("DEDUP_NODE_AGENT_KEEP").is_ok_and(|v| v == "1") {
            let kept = root.keep();
            eprintln!("node agent: volumes and logs kept in {}", kept.display());
            (kept, None)
        } else {
            (root.path().to_path_buf(), Some(root))
        };
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let node = format!(
            "dedup-agent-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        register_node(&client, &node).await;
        let shared = Arc::new(Shared {
            node,
            root: path,
            binaries,
            client,
            pods: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(sync_loop(Arc::clone(&shared)));
        Self {
            shared,
            task,
            _root: root,
        }
    }

    /// The `nodeSelector` and `tolerations` (as JSON) that put a pod on this node.
    pub fn placement(&self) -> (Value, Value) {
        (
            json!({"kubernetes.io/hostname": self.shared.node}),
            json!([{"key": TAINT_KEY, "operator": "Equal", "value": self.shared.node, "effect": "NoSchedule"}]),
        )
    }

    /// Names of the pods the agent runs now, with the host ports named `port_name`.
    pub fn running(&self, port_name: &str) -> Vec<(String, String, u16)> {
        let pods = self.shared.pods.lock().unwrap();
        pods.iter()
            .filter(|(_, p)| !p.task.is_finished())
            .filter_map(|(uid, p)| Some((p.name.clone(), uid.clone(), *p.ports.get(port_name)?)))
            .collect()
    }

    /// Node crash of one pod: its processes get SIGKILL at once (no SIGTERM, no grace),
    /// then the pod starts again from its init containers on the same volumes.
    pub fn crash(&self, pod: &str) {
        let mut pods = self.shared.pods.lock().unwrap();
        let handle = pods
            .values_mut()
            .find(|p| p.name == pod && !p.task.is_finished())
            .unwrap_or_else(|| panic!("the agent runs no pod {pod}"));
        if matches!(
            *handle.control.borrow(),
            Control::Terminate { .. } | Control::Kill
        ) {
            return; // being deleted already
        }
        handle.crashes += 1;
        let _ = handle.control.send(Control::Crash {
            generation: handle.crashes,
        });
    }

    /// Every log file of the agent's containers: (file name, content).
    pub fn all_logs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Ok(dir) = std::fs::read_dir(self.shared.root.join("logs")) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                out.push((
                    name,
                    std::fs::read_to_string(entry.path()).unwrap_or_default(),
                ));
            }
        }
        out.sort();
        out
    }
}

impl Drop for NodeAgent {
    fn drop(&mut self) {
        self.task.abort();
        for (_, pod) in self.shared.pods.lock().unwrap().drain() {
            let _ = pod.control.send(Control::Kill);
            pod.task.abort(); // the children are killed on drop
        }
        let _ = std::process::Command::new("kubectl")
            .args(["delete", "node", &self.shared.node, "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The workspace's binaries: the `target/<profile>` directory of this test executable
/// (`cargo test` at the workspace root builds every package's binaries).
fn workspace_binaries() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps")
        .to_path_buf();
    for binary in ["deduplicator", "restorer"] {
        assert!(
            dir.join(binary).is_file(),
            "{} is missing: run the tests with `cargo test` at the workspace root (it builds \
             every binary), or `cargo build --bins` first",
            dir.join(binary).display()
        );
    }
    dir
}

/// The agent runs each container in a mount namespace of its own: that needs root.
fn check_mount_namespaces() {
    let works = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        works,
        "the node agent needs `unshare --mount` (util-linux, run as root): each pod's \
         volumes are bind-mounted in a mount namespace of its own"
    );
}

async fn register_node(client: &Client, node: &str) {
    let nodes: Api<Node> = Api::all(client.clone());
    let object: Node = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node,
            "labels": {
                "kubernetes.io/hostname": node,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH,
            },
        },
        "spec": {"taints": [{"key": TAINT_KEY, "value": node, "effect": "NoSchedule"}]},
    }))
    .expect("a Node");
    nodes
        .create(&PostParams::default(), &object)
        .await
        .unwrap_or_else(|e| panic!("registering the node {node}: {e}"));
    let now = now_rfc3339();
    let conditions: Vec<Value> = [
        ("Ready", "True", "KubeletReady"),
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
    ]
    .iter()
    .map(|(kind, status, reason)| {
        json!({"type": kind, "status": status, "reason": reason,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    })
    .collect();
    let resources =
        json!({"cpu": "64", "memory": "256Gi", "ephemeral-storage": "512Gi", "pods": "110"});
    let status = json!({"status": {
        "capacity": resources,
        "allocatable": resources,
        "conditions": conditions,
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": node}],
        "nodeInfo": {"machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
            "osImage": "test node agent", "containerRuntimeVersion": "process://",
            "kubeletVersion": "v1.35.0", "kubeProxyVersion": "", "operatingSystem": "linux",
            "architecture": std::env::consts::ARCH},
    }});
    nodes
        .patch_status(node, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap_or_else(|e| panic!("the status of node {node}: {e}"));
}

async fn heartbeat(client: &Client, node: &str) {
    let now = now_rfc3339();
    let conditions: Vec<Value> = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]
        .iter()
        .map(|kind| json!({"type": kind, "lastHeartbeatTime": now}))
        .collect();
    let nodes: Api<Node> = Api::all(client.clone());
    // A strategic merge patch merges the conditions by type, keeping their other fields.
    let patch = json!({"status": {"conditions": conditions}});
    if let Err(e) = nodes
        .patch_status(node, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        eprintln!("node agent: heartbeat of {node}: {e}");
    }
}

async fn sync_loop(shared: Arc<Shared>) {
    let pods_api: Api<Pod> = Api::all(shared.client.clone());
    let claims_api: Api<PersistentVolumeClaim> = Api::all(shared.client.clone());
    let mut last_heartbeat = Instant::now();
    let mut last_volume_gc = Instant::now();
    // Pods run to their end (deleted, or terminal under their restart policy): not again.
    let mut done: HashSet<String> = HashSet::new();
    loop {
        tokio::time::sleep(SYNC_PERIOD).await;
        if last_heartbeat.elapsed() >= HEARTBEAT_PERIOD {
            heartbeat(&shared.client, &shared.node).await;
            last_heartbeat = Instant::now();
        }
        let params = ListParams::default().fields(&format!("spec.nodeName={}", shared.node));
        let listed = match pods_api.list(&params).await {
            Ok(list) => list.items,
            Err(e) => {
                eprintln!("node agent: listing pods: {e}");
                continue;
            }
        };
        let mut present = HashSet::new();
        for pod in listed {
            let Some(uid) = pod.uid() else { continue };
            present.insert(uid.clone());
            let deleting = pod.metadata.deletion_timestamp.is_some();
            let grace = Duration::from_secs(
                pod.metadata
                    .deletion_grace_period_seconds
                    .or(pod
                        .spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds))
                    .unwrap_or(30)
                    .max(0) as u64,
            );
            let mut pods = shared.pods.lock().unwrap();
            match pods.get(&uid) {
                Some(handle) => {
                    let told = *handle.control.borrow();
                    if deleting && matches!(told, Control::Run | Control::Crash { .. }) {
                        let _ = handle.control.send(Control::Terminate { grace });
                    }
                    if handle.task.is_finished() {
                        done.insert(uid.clone());
                        pods.remove(&uid);
                    }
                }
                None if done.contains(&uid) => {}
                None if deleting => {
                    // Never run here (or already finished): the final delete.
                    done.insert(uid.clone());
                    tokio::spawn(final_delete(shared.client.clone(), pod));
                }
                None => {
                    let (control, receiver) = watch::channel(Control::Run);
                    let ports = host_ports(&pod);
                    let namespace = pod.namespace().unwrap_or_default();
                    let name = pod.name_any();
                    let task =
                        tokio::spawn(run_pod(Arc::clone(&shared), pod, ports.clone(), receiver));
                    pods.insert(
                        uid,
                        PodHandle {
                            namespace,
                            name,
                            control,
                            task,
                            ports: ports.by_name,
                            crashes: 0,
                        },
                    );
                }
            }
        }
        {
            let mut pods = shared.pods.lock().unwrap();
            let gone: Vec<String> = pods
                .keys()
                .filter(|uid| !present.contains(*uid))
                .cloned()
                .collect();
            for uid in gone {
                if let Some(handle) = pods.get(&uid) {
                    if handle.task.is_finished() {
                        pods.remove(&uid);
                    } else if *handle.control.borrow() != Control::Kill {
                        eprintln!(
                            "node agent: pod {}/{} is gone from the API: killing it",
                            handle.namespace, handle.name
                        );
                        let _ = handle.control.send(Control::Kill);
                    }
                }
            }
        }
        if last_volume_gc.elapsed() >= HEARTBEAT_PERIOD {
            last_volume_gc = Instant::now();
            if let Ok(claims) = claims_api.list(&ListParams::default()).await {
                let live: HashSet<String> = claims.items.iter().filter_map(|c| c.uid()).collect();
                remove_volumes_except(&shared.root, &live);
            }
        }
    }
}

/// Deletes the directories of claims that no longer exist.
fn remove_volumes_except(root: &Path, live: &HashSet<String>) {
    let Ok(dir) = std::fs::read_dir(root.join("volumes")) else {
        return;
    };
    for entry in dir.flatten() {
        let uid = entry.file_name().to_string_lossy().into_owned();
        if !live.contains(&uid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The kubelet's last word on a pod: remove it from the API once its containers stopped.
async fn final_delete(client: Client, pod: Pod) {
    let api: Api<Pod> = Api::namespaced(client, &pod.namespace().unwrap_or_default());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    // Retried: a pod whose final delete failed would stay Terminating for good.
    for attempt in 1..=30 {
        match api.delete(&pod.name_any(), &params).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => return,
            Err(e) => {
                eprintln!(
                    "node agent: final delete of {} (attempt {attempt}): {e}",
                    pod.name_any()
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[derive(Clone, Default)]
struct HostPorts {
    /// container port → host port
    by_number: BTreeMap<i32, u16>,
    by_name: BTreeMap<String, u16>,
}

/// A free host port below the kernel's ephemeral range (so no client connection takes it
/// before the pod binds it), never handed out twice by this process.
fn free_host_port() -> u16 {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap();
    let given = given.get_or_insert_with(HashSet::new);
    let start = 20_000 + (std::process::id() % 500) as u16 * 20;
    (0..10_000u16)
        .map(|i| 20_000 + (start - 20_000 + i) % 10_000)
        .find(|port| !given.contains(port) && TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .inspect(|port| {
            given.insert(*port);
        })
        .expect("a free port in 20000-29999")
}

fn host_ports(pod: &Pod) -> HostPorts {
    let mut ports = HostPorts::default();
    let containers = pod.spec.iter().flat_map(|s| s.containers.iter());
    for port in containers.flat_map(|c| c.ports.iter().flatten()) {
        let host = free_host_port();
        ports.by_number.insert(port.container_port, host);
        if let Some(name) = &port.name {
            ports.by_name.insert(name.clone(), host);
        }
    }
    ports
}

// --- one pod ---------------------------------------------------------------------------------

/// What a container is doing, as its status says.
#[derive(Clone, Debug)]
enum State {
    Waiting(String),
    Running {
        since: String,
    },
    Terminated {
        code: i32,
        reason: String,
        since: String,
        until: String,
    },
}

struct ContainerRun {
    spec: Container,
    state: State,
    last: Option<State>,
    restarts: u32,
    ready: bool,
    started: bool,
    child: Option<Child>,
    started_at: Instant,
    /// Consecutive probe results: (failures, next due).
    startup: ProbeState,
    liveness: ProbeState,
    readiness: ProbeState,
    /// When a crashed container may start again.
    restart_at: Option<Instant>,
}

#[derive(Default)]
struct ProbeState {
    failures: i32,
    next: Option<Instant>,
}

impl ContainerRun {
    fn new(spec: &Container) -> Self {
        Self {
            spec: spec.clone(),
            state: State::Waiting("PodInitializing".into()),
            last: None,
            restarts: 0,
            ready: false,
            started: false,
            child: None,
            started_at: Instant::now(),
            startup: ProbeState::default(),
            liveness: ProbeState::default(),
            readiness: ProbeState::default(),
            restart_at: None,
        }
    }

    fn status(&self) -> Value {
        let state = state_json(&self.state);
        let mut status = json!({
            "name": self.spec.name,
            "image": self.spec.image.clone().unwrap_or_default(),
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restarts,
            "state": state,
        });
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            status["containerID"] = json!(format!("process://{pid}"));
        }
        if let Some(last) = &self.last {
            status["lastState"] = state_json(last);
        }
        status
    }
}

fn state_json(state: &State) -> Value {
    match state {
        State::Waiting(reason) => json!({"waiting": {"reason": reason}}),
        State::Running { since } => json!({"running": {"startedAt": since}}),
        State::Terminated {
            code,
            reason,
            since,
            until,
        } => {
            json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": since, "finishedAt": until}})
        }
    }
}

struct PodRun {
    shared: Arc<Shared>,
    pod: Pod,
    api: Api<Pod>,
    ports: HostPorts,
    init: Vec<ContainerRun>,
    main: Vec<ContainerRun>,
    /// Index of the init container running or next, or `init.len()` when all are done.
    init_done: usize,
    start_time: String,
    conditions: BTreeMap<&'static str, (bool, String)>,
    written: Option<Value>,
    phase: &'static str,
    message: Option<String>,
}

async fn run_pod(
    shared: Arc<Shared>,
    pod: Pod,
    ports: HostPorts,
    mut control: watch::Receiver<Control>,
) {
    let namespace = pod.namespace().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let mut run = PodRun {
        api: Api::namespaced(shared.client.clone(), &namespace),
        shared,
        init: spec
            .init_containers
            .iter()
            .flatten()
            .map(ContainerRun::new)
            .collect(),
        main: spec.containers.iter().map(ContainerRun::new).collect(),
        init_done: 0,
        pod,
        ports,
        start_time: now_rfc3339(),
        conditions: BTreeMap::new(),
        written: None,
        phase: "Pending",
        message: None,
    };
    let mut crash_seen = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let order = *control.borrow_and_update();
        match order {
            Control::Run => {}
            Control::Crash { generation } if generation != crash_seen => {
                crash_seen = generation;
                run.kill_all(137, "Error (node crash)").await;
                // As after a node's reboot: the sandbox again, init containers first.
                run.init_done = 0;
                for c in run.init.iter_mut().chain(run.main.iter_mut()) {
                    c.restart_at = Some(Instant::now());
                    c.started = false;
                    c.ready = false;
                }
                run.phase = "Pending";
            }
            Control::Crash { .. } => {}
            Control::Terminate { grace } => {
                run.terminate(grace).await;
                run.write_status().await;
                final_delete(run.shared.client.clone(), run.pod.clone()).await;
                run.remove_own_dirs();
                return;
            }
            Control::Kill => {
                run.kill_all(137, "Error (pod deleted)").await;
                run.remove_own_dirs();
                return;
            }
        }
        if run.step().await.is_break() {
            run.write_status().await;
            // Terminal under its restart policy: wait for the deletion.
            loop {
                if control.changed().await.is_err() {
                    return;
                }
                match *control.borrow() {
                    Control::Terminate { .. } | Control::Kill => break,
                    _ => {}
                }
            }
            final_delete(run.shared.client.clone(), run.pod.clone()).await;
            run.remove_own_dirs();
            return;
        }
        run.write_status().await;
        tokio::select! {
            _ = tick.tick() => {}
            _ = control.changed() => {}
        }
    }
}

impl PodRun {
    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    /// One round: reap exits, start what is due, probe. `Break` when the pod is over.
    async fn step(&mut self) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow;
        let policy = self.restart_policy().to_string();
        // Init containers, in order.
        while self.init_done < self.init.len() {
            let i = self.init_done;
            if let Some(code) = reap(&mut self.init[i]) {
                if code == 0 {
                    self.init_done += 1;
                    continue;
                }
                if policy == "Never" {
                    self.phase = "Failed";
                    self.message =
                        Some(format!("init container {} failed", self.init[i].spec.name));
                    return ControlFlow::Break(());
                }
                backoff(&mut self.init[i]);
            }
            if self.init[i].child.is_none()
                && self.init[i].restart_at.is_none_or(|t| Instant::now() >= t)
            {
                self.start(Kind::Init, i).await;
            }
            return ControlFlow::Continue(());
        }
        // Containers.
        let mut all_exited_ok = true;
        for i in 0..self.main.len() {
            if let Some(code) = reap(&mut self.main[i]) {
                let restart = match policy.as_str() {
                    "Never" => false,
                    "OnFailure" => code != 0,
                    _ => true,
                };
                if restart {
                    backoff(&mut self.main[i]);
                } else {
                    self.main[i].restart_at = None;
                }
            }
            let c = &self.main[i];
            let exited_for_good = c.child.is_none()
                && c.restart_at.is_none()
                && matches!(c.state, State::Terminated { .. });
            let failed = matches!(c.state, State::Terminated { code, .. } if code != 0);
            if !exited_for_good || failed {
                all_exited_ok = false;
            }
            let due = c.child.is_none()
                && match c.restart_at {
                    Some(t) => Instant::now() >= t,
                    None => matches!(c.state, State::Waiting(_)),
                };
            if due {
                self.start(Kind::Main, i).await;
            }
        }
        if self.main.iter().all(|c| {
            c.child.is_none()
                && c.restart_at.is_none()
                && matches!(c.state, State::Terminated { .. })
        }) {
            self.phase = if all_exited_ok { "Succeeded" } else { "Failed" };
            return ControlFlow::Break(());
        }
        self.phase = "Running";
        self.probe().await;
        ControlFlow::Continue(())
    }

    async fn start(&mut self, kind: Kind, i: usize) {
        let spec = match kind {
            Kind::Init => self.init[i].spec.clone(),
            Kind::Main => self.main[i].spec.clone(),
        };
        let outcome = self.spawn(&spec).await;
        let c = match kind {
            Kind::Init => &mut self.init[i],
            Kind::Main => &mut self.main[i],
        };
        match outcome {
            Ok(child) => {
                if matches!(c.state, State::Terminated { .. }) {
                    c.last = Some(c.state.clone());
                }
                c.child = Some(child);
                c.state = State::Running {
                    since: now_rfc3339(),
                };
                c.started_at = Instant::now();
                c.restart_at = None;
                c.started = c.spec.startup_probe.is_none();
                c.ready = false;
                let delay = |p: &Option<Probe>| {
                    p.as_ref()
                        .map(|p| Instant::now() + secs(p.initial_delay_seconds.unwrap_or(0)))
                };
                c.startup = ProbeState {
                    failures: 0,
                    next: delay(&c.spec.startup_probe),
                };
                c.liveness = ProbeState {
                    failures: 0,
                    next: delay(&c.spec.liveness_probe),
                };
                c.readiness = ProbeState {
                    failures: 0,
                    next: delay(&c.spec.readiness_probe),
                };
            }
            Err(reason) => {
                eprintln!(
                    "node agent: {}/{}: cannot start {}: {reason}",
                    self.pod.namespace().unwrap_or_default(),
                    self.pod.name_any(),
                    spec.name
                );
                c.state = State::Waiting("CreateContainerConfigError".into());
                backoff_only(c);
            }
        }
    }

    /// Starts one container: its environment and volumes resolved, in a mount namespace
    /// of its own.
    async fn spawn(&self, spec: &Container) -> Result<Child, String> {
        let command = spec.command.clone().unwrap_or_default();
        let Some(program) = command.first() else {
            return Err("no command (the agent runs no images' entrypoints)".into());
        };
        let binary = self.shared.binaries.join(program);
        if !binary.is_file() {
            return Err(format!("{} is not a workspace binary", program));
        }
        let env = self.environment(spec).await?;
        let mut mounts: Vec<(PathBuf, String)> = Vec::new();
        for mount in spec.volume_mounts.iter().flatten() {
            let mut source = self.volume_dir(&mount.name).await?;
            if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                source = source.join(sub);
            }
            std::fs::create_dir_all(&source).map_err(|e| format!("{}: {e}", source.display()))?;
            std::fs::create_dir_all(&mount.mount_path)
                .map_err(|e| format!("mount point {}: {e}", mount.mount_path))?;
            mounts.push((source, mount.mount_path.clone()));
        }
        let logs = self.shared.root.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
        let log_path = logs.join(format!(
            "{}_{}_{}.log",
            self.pod.name_any(),
            self.pod.uid().unwrap_or_default(),
            spec.name
        ));
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        use std::io::Write as _;
        let _ = writeln!(
            log,
            "--- node agent: {} starts at {}",
            spec.name,
            now_rfc3339()
        );
        // mount each pair, then exec the program: one process, SIGTERM goes to it.
        const SCRIPT: &str = r#"while [ "$1" != -- ]; do mount --bind "$1" "$2" || exit 125; shift 2; done; shift; exec "$@""#;
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            SCRIPT,
            "sh",
        ]);
        for (source, target) in &mounts {
            cmd.arg(source).arg(target);
        }
        cmd.arg("--").arg(&binary).args(command.iter().skip(1));
        cmd.args(spec.args.iter().flatten());
        cmd.env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .kill_on_drop(true);
        if let Some(dir) = spec.working_dir.as_deref() {
            cmd.current_dir(dir);
        }
        cmd.spawn().map_err(|e| format!("unshare: {e}"))
    }

    /// The directory behind a pod volume.
    async fn volume_dir(&self, name: &str) -> Result<PathBuf, String> {
        let volume = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .and_then(|v| v.iter().find(|v| v.name == name))
            .ok_or_else(|| format!("no volume {name}"))?;
        if let Some(claim) = &volume.persistent_volume_claim {
            let claims: Api<PersistentVolumeClaim> = Api::namespaced(
                self.shared.client.clone(),
                &self.pod.namespace().unwrap_or_default(),
            );
            let claim = claims
                .get(&claim.claim_name)
                .await
                .map_err(|e| format!("claim {}: {e}", claim.claim_name))?;
            if claim.metadata.deletion_timestamp.is_some() {
                return Err(format!("claim {} is being deleted", claim.name_any()));
            }
            let bound = claim.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            if !bound {
                return Err(format!("claim {} is not bound yet", claim.name_any()));
            }
            let uid = claim.uid().ok_or("a claim without uid")?;
            return Ok(self.shared.root.join("volumes").join(uid));
        }
        if volume.empty_dir.is_some() {
            return Ok(self.own_dir().join(name));
        }
        if let Some(projected) = &volume.projected {
            let dir = self.own_dir().join(name);
            self.project(projected, &dir).await?;
            return Ok(dir);
        }
        Err(format!(
            "volume {name}: only claims, emptyDir and projected volumes are supported"
        ))
    }

    /// Writes a projected volume's files (e.g. the service account's token, CA and
    /// namespace that every pod gets) into `dir`.
    async fn project(&self, projected: &ProjectedVolumeSource, dir: &Path) -> Result<(), String> {
        let namespace = self.pod.namespace().unwrap_or_default();
        let client = &self.shared.client;
        let mut files: Vec<(String, String)> = Vec::new();
        for source in projected.sources.iter().flatten() {
            if let Some(token) = &source.service_account_token {
                let account = self
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into());
                let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &namespace);
                let request = json!({
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {
                        "audiences": token.audience.iter().collect::<Vec<_>>(),
                        "expirationSeconds": token.expiration_seconds.unwrap_or(3607),
                        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod",
                            "name": self.pod.name_any(), "uid": self.pod.uid()},
                    },
                });
                let answer: Value = accounts
                    .create_subresource("token", &account, &PostParams::default(), &request)
                    .await
                    .map_err(|e| format!("a token of {account}: {e}"))?;
                let value = answer["status"]["token"].as_str().unwrap_or_default();
                files.push((token.path.clone(), value.to_string()));
            }
            if let Some(map) = &source.config_map {
                let maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
                let data = match maps.get_opt(&map.name).await.map_err(|e| e.to_string())? {
                    Some(m) => m.data.unwrap_or_default(),
                    None if map.optional == Some(true) => continue,
                    None => return Err(format!("configmap {} not found", map.name)),
                };
                match &map.items {
                    Some(items) => {
                        for item in items {
                            let value = data.get(&item.key).cloned().unwrap_or_default();
                            files.push((item.path.clone(), value));
                        }
                    }
                    None => files.extend(data),
                }
            }
            if let Some(downward) = &source.downward_api {
                for item in downward.items.iter().flatten() {
                    if let Some(field) = &item.field_ref {
                        files.push((item.path.clone(), self.field(&field.field_path)?));
                    }
                }
            }
        }
        for (path, content) in files {
            let file = dir.join(path);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&file, content).map_err(|e| format!("{}: {e}", file.display()))?;
        }
        Ok(())
    }

    fn own_dir(&self) -> PathBuf {
        self.shared
            .root
            .join("pods")
            .join(self.pod.uid().unwrap_or_default())
    }

    fn remove_own_dirs(&self) {
        let _ = std::fs::remove_dir_all(self.own_dir());
    }

    /// The container's environment, as a kubelet resolves it.
    async fn environment(&self, spec: &Container) -> Result<Vec<(String, String)>, String> {
        let namespace = self.pod.namespace().unwrap_or_default();
        let client = &self.shared.client;
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let mut env: Vec<(String, String)> = Vec::new();
        fn set(env: &mut Vec<(String, String)>, name: String, value: String) {
            env.retain(|(n, _)| *n != name);
            env.push((name, value));
        }
        for source in spec.env_from.iter().flatten() {
            let prefix = source.prefix.clone().unwrap_or_default();
            let data: Option<BTreeMap<String, String>> = if let Some(r) = &source.config_map_ref {
                match config_maps
                    .get_opt(&r.name)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Some(cm) => Some(cm.data.unwrap_or_default()),
                    None if r.optional == Some(true) => None,
                    None => return Err(format!("configmap {} not found", r.name)),
                }
            } else if let Some(r) = &source.secret_ref {
                match secrets.get_opt(&r.name).await.map_err(|e| e.to_string())? {
                    Some(s) => Some(secret_strings(&s)),
                    None if r.optional == Some(true) => None,
                    None => return Err(format!("secret {} not found", r.name)),
                }
            } else {
                None
            };
            for (k, v) in data.into_iter().flatten() {
                set(&mut env, format!("{prefix}{k}"), v);
            }
        }
        for var in spec.env.iter().flatten() {
            let value = if let Some(value) = &var.value {
                expand(value, &env)
            } else if let Some(from) = &var.value_from {
                if let Some(field) = &from.field_ref {
                    self.field(&field.field_path)?
                } else if let Some(key) = &from.secret_key_ref {
                    let secret = secrets
                        .get_opt(&key.name)
                        .await
                        .map_err(|e| e.to_string())?;
                    match secret.and_then(|s| secret_strings(&s).remove(&key.key)) {
                        Some(v) => v,
                        None if key.optional == Some(true) => continue,
                        None => {
                            return Err(format!("secret {} key {} not found", key.name, key.key))
                        }
                    }
                } else if let Some(key) = &from.config_map_key_ref {
                    let map = config_maps
                        .get_opt(&key.name)
                        .await
                        .map_err(|e| e.to_string())?;
                    match map.and_then(|m| m.data.unwrap_or_default().remove(&key.key)) {
                        Some(v) => v,
                        None if key.optional == Some(true) => continue,
                        None => {
                            return Err(format!("configmap {} key {} not found", key.name, key.key))
                        }
                    }
                } else {
                    return Err(format!(
                        "env {}: only fieldRef, secretKeyRef and configMapKeyRef",
                        var.name
                    ));
                }
            } else {
                String::new()
            };
            set(&mut env, var.name.clone(), value);
        }
        // The pod shares the host's network: its ports are host ports of its own.
        for (_, value) in env.iter_mut() {
            for (container, host) in &self.ports.by_number {
                for any in ["0.0.0.0", "[::]"] {
                    *value =
                        value.replace(&format!("{any}:{container}"), &format!("127.0.0.1:{host}"));
                }
            }
        }
        Ok(env)
    }

    /// A `fieldRef` of the downward API.
    fn field(&self, path: &str) -> Result<String, String> {
        let meta = &self.pod.metadata;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let label = |map: &Option<BTreeMap<String, String>>, key: &str| {
            map.as_ref()
                .and_then(|m| m.get(key).cloned())
                .unwrap_or_default()
        };
        Ok(match path {
            "metadata.name" => self.pod.name_any(),
            "metadata.namespace" => self.pod.namespace().unwrap_or_default(),
            "metadata.uid" => self.pod.uid().unwrap_or_default(),
            "spec.nodeName" => spec.node_name.unwrap_or_default(),
            "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
            "status.podIP" | "status.hostIP" | "status.podIPs" | "status.hostIPs" => {
                "127.0.0.1".into()
            }
            p if p.starts_with("metadata.labels['") => label(
                &meta.labels,
                p.trim_start_matches("metadata.labels['")
                    .trim_end_matches("']"),
            ),
            p if p.starts_with("metadata.annotations['") => label(
                &meta.annotations,
                p.trim_start_matches("metadata.annotations['")
                    .trim_end_matches("']"),
            ),
            other => return Err(format!("fieldRef {other} is not supported")),
        })
    }

    /// Runs the probes that are due.
    async fn probe(&mut self) {
        let now = Instant::now();
        let ports = self.ports.clone();
        let mut restart = Vec::new();
        for (i, c) in self.main.iter_mut().enumerate() {
            if c.child.is_none() {
                continue;
            }
            if !c.started {
                if let Some(p) = c.spec.startup_probe.clone() {
                    if c.startup.next.is_some_and(|t| now >= t) {
                        c.startup.next = Some(now + secs(p.period_seconds.unwrap_or(10)));
                        if http_probe(&p, &ports).await {
                            c.started = true;
                        } else {
                            c.startup.failures += 1;
                            if c.startup.failures >= p.failure_threshold.unwrap_or(3) {
                                restart.push(i);
                            }
                        }
                    }
                    continue;
                }
                c.started = true;
            }
            if let Some(p) = c.spec.liveness_probe.clone() {
                if c.liveness.next.is_none_or(|t| now >= t) {
                    c.liveness.next = Some(now + secs(p.period_seconds.unwrap_or(10)));
                    if http_probe(&p, &ports).await {
                        c.liveness.failures = 0;
                    } else {
                        c.liveness.failures += 1;
                        if c.liveness.failures >= p.failure_threshold.unwrap_or(3) {
                            restart.push(i);
                            continue;
                        }
                    }
                }
            }
            match c.spec.readiness_probe.clone() {
                Some(p) => {
                    if c.readiness.next.is_none_or(|t| now >= t) {
                        c.readiness.next = Some(now + secs(p.period_seconds.unwrap_or(10)));
                        if http_probe(&p, &ports).await {
                            c.readiness.failures = 0;
                            c.ready = true;
                        } else {
                            c.readiness.failures += 1;
                            if c.readiness.failures >= p.failure_threshold.unwrap_or(3) {
                                c.ready = false;
                            }
                        }
                    }
                }
                None => c.ready = true,
            }
        }
        let grace = self.grace();
        for i in restart {
            eprintln!(
                "node agent: {}: container {} failed its probes: restarting it",
                self.pod.name_any(),
                self.main[i].spec.name
            );
            stop(&mut self.main[i], grace).await;
            backoff(&mut self.main[i]);
        }
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64,
        )
    }

    /// Deletion: SIGTERM to every process, SIGKILL after `grace`.
    async fn terminate(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        for c in self.init.iter_mut().chain(self.main.iter_mut()) {
            signal(c, libc::SIGTERM);
        }
        for c in self.init.iter_mut().chain(self.main.iter_mut()) {
            stop(c, deadline.saturating_duration_since(Instant::now())).await;
            c.ready = false;
            c.restart_at = None;
        }
        self.phase = "Running";
        self.conditions.clear();
    }

    async fn kill_all(&mut self, code: i32, reason: &str) {
        for c in self.init.iter_mut().chain(self.main.iter_mut()) {
            if let Some(mut child) = c.child.take() {
                let _ = child.kill().await;
                c.last = Some(c.state.clone());
                c.state = State::Terminated {
                    code,
                    reason: reason.into(),
                    since: since(&c.state),
                    until: now_rfc3339(),
                };
                c.restarts += 1;
            }
            c.ready = false;
        }
    }

    fn condition(&mut self, kind: &'static str, value: bool) -> Value {
        let entry = self
            .conditions
            .entry(kind)
            .or_insert_with(|| (value, now_rfc3339()));
        if entry.0 != value {
            *entry = (value, now_rfc3339());
        }
        json!({"type": kind, "status": if value { "True" } else { "False" }, "lastTransitionTime": entry.1})
    }

    async fn write_status(&mut self) {
        let initialized = self.init_done >= self.init.len();
        let ready = initialized && self.main.iter().all(|c| c.ready);
        let conditions = vec![
            self.condition("PodScheduled", true),
            self.condition("PodReadyToStartContainers", true),
            self.condition("Initialized", initialized),
            self.condition("ContainersReady", ready),
            self.condition("Ready", ready),
        ];
        let phase = if !initialized && self.phase == "Running" {
            "Pending"
        } else {
            self.phase
        };
        let mut status = json!({
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "conditions": conditions,
            "initContainerStatuses": self.init.iter().map(ContainerRun::status).collect::<Vec<_>>(),
            "containerStatuses": self.main.iter().map(ContainerRun::status).collect::<Vec<_>>(),
        });
        if let Some(message) = &self.message {
            status["message"] = json!(message);
        }
        if self.written.as_ref() == Some(&status) {
            return;
        }
        let patch = json!({"status": status});
        match self
            .api
            .patch_status(
                &self.pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            Ok(_) => self.written = Some(status),
            Err(kube::Error::Api(e)) if e.code == 404 => self.written = Some(status),
            Err(e) => eprintln!("node agent: status of {}: {e}", self.pod.name_any()),
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Init,
    Main,
}

/// The exit code of a container that exited since the last look (recording it).
fn reap(c: &mut ContainerRun) -> Option<i32> {
    let child = c.child.as_mut()?;
    let status = child.try_wait().ok()??;
    c.child = None;
    let code = status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    });
    c.last = Some(c.state.clone());
    c.state = State::Terminated {
        code,
        reason: if code == 0 { "Completed" } else { "Error" }.into(),
        since: since(&c.state),
        until: now_rfc3339(),
    };
    c.ready = false;
    Some(code)
}

fn since(state: &State) -> String {
    match state {
        State::Running { since } => since.clone(),
        _ => now_rfc3339(),
    }
}

/// Counts a restart and schedules it: 1, 2, 4 … 10 s after the exit.
fn backoff(c: &mut ContainerRun) {
    c.restarts += 1;
    backoff_only(c);
}

fn backoff_only(c: &mut ContainerRun) {
    let wait =
        Duration::from_secs(1 << c.restarts.saturating_sub(1).min(4)).min(MAX_RESTART_BACKOFF);
    c.restart_at = Some(Instant::now() + wait);
}

fn signal(c: &ContainerRun, signal: i32) {
    if let Some(pid) = c.child.as_ref().and_then(Child::id) {
        // SAFETY: kill(2) on a child of ours that has not been reaped.
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }
}

/// SIGTERM, up to `grace` for the exit, then SIGKILL.
async fn stop(c: &mut ContainerRun, grace: Duration) {
    signal(c, libc::SIGTERM);
    if let Some(child) = c.child.as_mut() {
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
    reap_stopped(c);
}

fn reap_stopped(c: &mut ContainerRun) {
    if c.child.is_some() && reap(c).is_none() {
        // Killed and waited for above; should not happen.
        c.child = None;
    }
}

/// One HTTP GET probe: success is a status from 200 to 399 within the timeout.
async fn http_probe(probe: &Probe, ports: &HostPorts) -> bool {
    let Some(get) = &probe.http_get else {
        return true; // exec and TCP probes are not run: counted as passing
    };
    let port = match &get.port {
        IntOrString::Int(n) => ports.by_number.get(n).copied(),
        IntOrString::String(name) => ports.by_name.get(name).copied(),
    };
    let Some(port) = port else {
        return false;
    };
    let path = get.path.clone().unwrap_or_else(|| "/".into());
    let timeout = secs(probe.timeout_seconds.unwrap_or(1));
    let request = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let mut text = String::new();
        let _ = write!(
            text,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: kube-probe\r\n\r\n"
        );
        stream.write_all(text.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse::<u16>().ok()
    };
    matches!(
        tokio::time::timeout(timeout, request).await,
        Ok(Some(200..=399))
    )
}

fn secret_strings(secret: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = secret.string_data.clone().unwrap_or_default();
    for (k, v) in secret.data.iter().flatten() {
        out.insert(k.clone(), String::from_utf8_lossy(&v.0).into_owned());
    }
    out
}

/// `$(VAR)` of a variable defined before, as a kubelet expands it (`$$` escapes).
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match env.iter().rev().find(|(n, _)| n == name) {
                        Some((_, v)) => out.push_str(v),
                        None => out.push_str(&format!("$({name})")),
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push_str(&rest[at..]);
                    rest = "";
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn secs(n: i32) -> Duration {
    Duration::from_secs(n.max(0) as u64)
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map_or_else(|_| jiff::Timestamp::now().to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn variables_defined_before_are_expanded_and_double_dollars_escape() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("k=$(A),$(B),$$(A),$", &env), "k=x,$(B),$(A),$");
    }
}
