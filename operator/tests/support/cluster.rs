//! The real control plane and the operator, for the tests that run on them
//! (`real_cluster.rs`, `end_to_end.rs`): kubectl, a client, the shipped manifests, a
//! namespace per test and the operator binary running as its ServiceAccount.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use kube::Client;
pub const OPERATOR_NAMESPACE: &str = "kafka-deduplicator-system";
pub const OPERATOR_ACCOUNT: &str = "kafka-deduplicator-operator";
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// --- kubectl ------------------------------------------------------------------------------

pub fn kubectl_output(args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new("kubectl");
    command
        .args(args)
        .current_dir(repo_root())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("kubectl is not runnable ({e}): eval \"$(scripts/start-test-services.sh)\" puts it on PATH"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("piped stdin");
        pipe.write_all(input.as_bytes())
            .expect("writing kubectl's stdin");
    }
    child.wait_with_output().expect("kubectl ran")
}

/// Runs kubectl; panics with its output unless it succeeds; returns stdout.
pub fn kubectl(args: &[&str]) -> String {
    kubectl_in(args, None)
}

pub fn kubectl_in(args: &[&str], stdin: Option<&str>) -> String {
    let output = kubectl_output(args, stdin);
    assert!(
        output.status.success(),
        "kubectl {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

// --- the cluster and the operator -----------------------------------------------------------

/// A client of the test control plane, or `None` when the test may skip.
pub async fn cluster() -> Option<Client> {
    if std::env::var_os("KUBECONFIG").is_none() {
        if dedup_testkit::services::may_skip("DEDUP_ALLOW_MISSING_SERVICES") {
            eprintln!("skipping: no KUBECONFIG and DEDUP_ALLOW_MISSING_SERVICES=1");
            return None;
        }
        panic!("no KUBECONFIG: run eval \"$(scripts/start-test-services.sh)\" (it starts the test control plane)");
    }
    install_manifests();
    Some(
        operator::kube_client()
            .await
            .expect("a client of the test control plane from KUBECONFIG"),
    )
}

/// `kubectl apply -k manifests/`, once per test binary, then waits for the CRD.
pub fn install_manifests() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Server-side, as the README says: the CRD is too large for the annotation that
        // client-side apply keeps.
        kubectl(&["apply", "--server-side", "-k", "manifests/"]);
        kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/dedupclusters.kafka-deduplicator.dev",
        ]);
    });
}

/// A namespace of one test, enforcing Pod Security `restricted`, holding the S3
/// credentials Secret the example references (the README's install creates it); deleted
/// when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub fn create(test: &str) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "op-{test}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        kubectl_in(
            &["apply", "-f", "-"],
            Some(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    \
                 pod-security.kubernetes.io/enforce: restricted\n    \
                 pod-security.kubernetes.io/enforce-version: latest\n"
            )),
        );
        kubectl(&[
            "create",
            "secret",
            "generic",
            "dedup-s3-credentials",
            "--namespace",
            &name,
            "--from-literal=AWS_ACCESS_KEY_ID=test",
            "--from-literal=AWS_SECRET_ACCESS_KEY=test",
        ]);
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = kubectl_output(&["delete", "namespace", &self.name, "--wait=false"], None);
    }
}

/// The operator binary, running as the manifests' ServiceAccount, watching one namespace.
pub struct Operator {
    child: Child,
    http: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Operator {
    pub fn start(namespace: &str) -> Self {
        Self::start_with(namespace, &[])
    }

    /// The operator with extra environment variables.
    pub fn start_with(namespace: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let server = kubectl(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ]);
        let ca = kubectl(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority-data}",
        ]);
        let token = kubectl(&[
            "create",
            "token",
            OPERATOR_ACCOUNT,
            "--namespace",
            OPERATOR_NAMESPACE,
            "--duration=2h",
        ]);
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    \
                 server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: {OPERATOR_ACCOUNT}\n  \
                 user:\n    token: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    \
                 user: {OPERATOR_ACCOUNT}\ncurrent-context: test\n",
                token.trim()
            ),
        )
        .expect("writing the operator's kubeconfig");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let http = format!("127.0.0.1:{port}");
        let log = dir.path().join("operator.log");
        let log_file = std::fs::File::create(&log).expect("the operator's log file");
        let child = Command::new(env!("CARGO_BIN_EXE_operator"))
            .arg("run")
            .env("KUBECONFIG", &kubeconfig)
            .env("WATCH_NAMESPACE", namespace)
            .env("HTTP_BIND", &http)
            .env("RUST_LOG", "info,operator=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file)
            .spawn()
            .expect("the operator binary starts");
        let operator = Self {
            child,
            http,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while operator.get("/healthz").is_none() {
            assert!(
                Instant::now() < deadline,
                "the operator did not serve /healthz in 30 s; its log:\n{}",
                operator.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        operator
    }

    #[allow(dead_code)] // real_cluster.rs only
    /// SIGKILL: a crashed operator, with no chance to step down.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The body of an HTTP GET of the operator's port, if it answers 200.
    pub fn get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(&self.http).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (head, body) = response.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| body.to_string())
            .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
    }

    #[allow(dead_code)] // real_cluster.rs only
    /// Successful reconciles so far (`dedup_operator_reconciles_total{result="ok"}`).
    pub fn reconciles(&self) -> u64 {
        let metrics = self.get("/metrics").expect("the operator serves /metrics");
        metrics
            .lines()
            .find(|l| l.starts_with("dedup_operator_reconciles_total{result=\"ok\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- operator log ---\n{}", self.log());
        }
    }
}

/// Polls `check` every 250 ms until it gives a value; panics after `timeout`, with the
/// last state `check` described.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(state) if Instant::now() >= deadline => {
                panic!("{what}: not within {timeout:?}; last state: {state}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}
