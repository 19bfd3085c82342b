//! The `deduplicator` binary run as a process: its settings (`DedupSpec`), the running
//! process (`Dedup`: metrics, waits, SIGTERM, SIGKILL), crash loops, and event streams
//! produced in the background while a test does its damage.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::events::GenEvent;
use crate::http::{free_port, http_get, sum_metric};
use crate::kafka::{produce_to, Produced, TestKafka};
use crate::rng::next_random;
use crate::s3::TestS3;

/// A binary of this workspace, beside the running test executable's `deps/` directory
/// (`target/debug/`): cargo builds a package's binaries before its integration tests.
pub fn workspace_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --bins` first",
        path.display()
    );
    path
}

/// A running `deduplicator` process.
pub struct Dedup {
    child: Option<Child>,
    pub http: SocketAddr,
    pub log: PathBuf,
}

/// Settings of a deduplicator process under test.
#[derive(Clone)]
pub struct DedupSpec {
    pub bootstrap: String,
    pub input: String,
    pub output: Option<String>,
    pub dead_letter: Option<String>,
    pub group: String,
    pub store: PathBuf,
    pub pod_name: Option<String>,
    pub extra: Vec<(String, String)>,
}

impl DedupSpec {
    pub fn new(kafka: &TestKafka, input: &str, output: Option<&str>, store: &Path) -> Self {
        Self {
            bootstrap: kafka.bootstrap.clone(),
            input: input.to_string(),
            output: output.map(str::to_string),
            dead_letter: None,
            group: format!("dedup-{input}"),
            store: store.to_path_buf(),
            pod_name: None,
            extra: Vec::new(),
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.extra.push((key.into(), value.into()));
        self
    }

    pub fn spawn(&self, log_dir: &Path, name: &str) -> Dedup {
        let http = free_port();
        let log = log_dir.join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut command = Command::new(workspace_binary("deduplicator"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .env("KAFKA_HOSTS", &self.bootstrap)
            .env("KAFKA_CONSUMER_TOPIC", &self.input)
            .env("KAFKA_CONSUMER_GROUP", &self.group)
            .env("STORE_PATH", &self.store)
            .env("HTTP_BIND", http.to_string())
            // Quicker group changes than the production defaults, for test run time.
            .env(
                "KAFKA_CONSUMER_PROPERTIES",
                "session.timeout.ms=6000,heartbeat.interval.ms=500,fetch.message.max.bytes=3000000",
            )
            .env("KAFKA_PRODUCER_PROPERTIES", "message.max.bytes=3000000")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        if let Some(output) = &self.output {
            command.env("OUTPUT_TOPIC", output);
        }
        if let Some(dlq) = &self.dead_letter {
            command.env("DEAD_LETTER_TOPIC", dlq);
        }
        if let Some(pod) = &self.pod_name {
            command.env("POD_NAME", pod);
        }
        for (key, value) in &self.extra {
            command.env(key, value);
        }
        if !self.extra.iter().any(|(k, _)| k == "LOCAL_CHECKPOINT_DIR") {
            // Beside the store (hard links need the same filesystem), not in the cwd.
            command.env(
                "LOCAL_CHECKPOINT_DIR",
                self.store.with_file_name(format!(
                    "{}-checkpoints",
                    self.store
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                )),
            );
        }
        let child = command.spawn().expect("spawn deduplicator");
        Dedup {
            child: Some(child),
            http,
            log,
        }
    }
}

impl Dedup {
    /// The process id (the checkpoint writer name when POD_NAME is unset is `pid-{id}`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn metrics(&self) -> Option<String> {
        http_get(self.http, "/metrics").map(|(_, body)| body)
    }

    /// Sum of every sample of a metric whose line starts with `prefix`
    /// (e.g. `dedup_events_total{outcome="unique"}`).
    pub fn metric(&self, prefix: &str) -> f64 {
        self.metrics()
            .map(|m| sum_metric(&m, prefix))
            .unwrap_or(0.0)
    }

    /// Waits until `condition` holds, failing the test (with the process log) at `timeout`.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&Dedup) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if condition(self) {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "deduplicator exited with {status} while waiting for {what}\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}\nmetrics:\n{}\nlog:\n{}",
            self.metrics().unwrap_or_default(),
            self.log_tail()
        );
    }

    pub fn wait_ready(&mut self, timeout: Duration) {
        let http = self.http;
        self.wait_until("readiness", timeout, move |_| {
            matches!(http_get(http, "/readyz"), Some((200, _)))
        });
    }

    /// SIGTERM, then wait for a clean exit.
    /// A handover from `self` to `next`, which has just joined the group: `next` gets
    /// partitions, `self` gives some up, then `self` shuts down (SIGTERM, exit 0) and
    /// `next` owns all `partitions`.
    /// Waits until `messages` offsets are committed (summed over the partitions this
    /// process owns) and nothing is in flight.
    pub fn wait_committed(&mut self, messages: f64, timeout: Duration) {
        self.wait_until("everything committed", timeout, |d| {
            d.metric("dedup_committed_offset") >= messages - 0.5
                && d.metric("dedup_in_flight_messages") == 0.0
        });
    }

    pub fn hand_over_to(mut self, next: &mut Dedup, partitions: i32, timeout: Duration) {
        next.wait_until("the new member owns partitions", timeout, |d| {
            d.metric("dedup_assigned_partitions") >= 1.0
        });
        self.wait_until("the old member gave some up", timeout, |d| {
            d.metric("dedup_assigned_partitions") < partitions as f64
        });
        assert!(self.terminate().success(), "the old member exits cleanly");
        next.wait_until("the new member owns everything", timeout, |d| {
            d.metric("dedup_assigned_partitions") >= partitions as f64
        });
    }

    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "deduplicator did not stop after SIGTERM\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, or `None`
    /// (then it is killed).
    pub fn wait_for_exit(mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// `kill -9`.
    /// Waits (up to 60 s) for start-up to fail with status 1, as a bad setting found
    /// against the cluster does; returns the process's log.
    pub fn expect_start_failure(self) -> String {
        let log = self.log.clone();
        let status = self
            .wait_for_exit(Duration::from_secs(60))
            .expect("start-up fails instead of running");
        assert_eq!(status.code(), Some(1));
        std::fs::read_to_string(log).unwrap_or_default()
    }

    pub fn kill9(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        // Routine checkpoint lines (one per partition per interval) would hide the rest.
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("checkpoint uploaded"))
            .collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Dedup {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl DedupSpec {
    /// Pod `pod` with its own store directory `{dir}/{pod}`, checkpointing to `s3` every
    /// second, with no dedup window (generated events carry old timestamps).
    pub fn checkpointing_pod(
        kafka: &TestKafka,
        input: &str,
        output: &str,
        dir: &Path,
        pod: &str,
        s3: &TestS3,
    ) -> Self {
        DedupSpec {
            pod_name: Some(pod.into()),
            ..DedupSpec::new(kafka, input, Some(output), &dir.join(pod))
        }
        .with_s3(s3)
        .env("CHECKPOINT_INTERVAL", "1s")
        .env("DEDUP_WINDOW", "0")
    }

    pub fn with_s3(mut self, s3: &TestS3) -> Self {
        self.extra.extend(s3.env());
        self
    }
}

/// Now, in epoch milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `text` without terminal escape sequences (the deduplicator's text logs are coloured).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `cp -a from to`: a copy of a volume (an older one, once the original moves on).
pub fn copy_dir(from: &Path, to: &Path) {
    let copied = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(
        copied.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// A number from the environment variable `var` (a long version of a test), else
/// `default` (the CI version).
pub fn env_number(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Produces `events` to `input` on a thread, in `chunks` parts `pause` apart, so that
/// they stream in while the test does its damage. Joins to the time it took.
pub fn stream_in_background(
    bootstrap: &str,
    input: &str,
    events: &[GenEvent],
    chunks: usize,
    pause: Duration,
) -> std::thread::JoinHandle<Duration> {
    let (bootstrap, input) = (bootstrap.to_string(), input.to_string());
    let messages: Vec<Produced> = events.iter().map(GenEvent::produced).collect();
    let chunk = (messages.len() / chunks.max(1)).max(1);
    std::thread::spawn(move || {
        let started = Instant::now();
        for part in messages.chunks(chunk) {
            produce_to(&bootstrap, &input, part);
            std::thread::sleep(pause);
        }
        started.elapsed()
    })
}

/// What a crash loop did.
pub struct CrashLoop {
    pub crashes: usize,
    /// Per crash: the most messages the killed process consumed within any one
    /// `window` of its life (sampled every 100 ms): what one commit interval can hold.
    pub consumed_per_window: Vec<u64>,
}

impl CrashLoop {
    /// The republish bound: per crash, the in-flight bound plus what was consumed within
    /// one commit interval.
    pub fn bound(&self, in_flight: usize) -> usize {
        self.consumed_per_window
            .iter()
            .map(|&consumed| in_flight + consumed as usize)
            .sum()
    }
}

/// `cycles` times: a process from `spawn(cycle)`, let it join the group (a process
/// killed before that tests nothing), then `kill -9` 0.8–3.3 s later, at a moment
/// drawn from `seed`. Meanwhile its consumption is sampled, so that the most it took
/// within one `window` (a commit interval, plus the sampling step) is known.
pub fn crash_loop(
    cycles: u64,
    seed: u64,
    window: Duration,
    mut spawn: impl FnMut(u64) -> Dedup,
) -> CrashLoop {
    const STEP: Duration = Duration::from_millis(100);
    let mut rng = seed;
    let mut consumed_per_window = Vec::new();
    for cycle in 0..cycles {
        let mut dedup = spawn(cycle);
        let lifetime = Duration::from_millis(800 + next_random(&mut rng) % 2_500);
        dedup.wait_until("joined", Duration::from_secs(120), |d| {
            d.metric("dedup_assigned_partitions") >= 1.0
        });
        let killed_at = Instant::now() + lifetime;
        let mut samples: Vec<(Instant, f64)> = Vec::new();
        while Instant::now() < killed_at {
            samples.push((Instant::now(), dedup.metric("dedup_messages_in_total")));
            std::thread::sleep(STEP.min(killed_at.saturating_duration_since(Instant::now())));
        }
        dedup.kill9();
        // Consumed after the last sample counts too: the process's last window ends at
        // the kill, which the last sample misses by at most one step.
        let most = samples
            .iter()
            .map(|&(at, consumed)| {
                let window_start = samples
                    .iter()
                    .find(|(t, _)| at.duration_since(*t) <= window + STEP)
                    .map_or(0.0, |(_, c)| *c);
                consumed - window_start
            })
            .fold(0.0f64, f64::max);
        let newest = samples.last().map_or(0.0, |(_, c)| *c);
        let before_newest = samples
            .iter()
            .rev()
            .find(|(t, _)| {
                samples
                    .last()
                    .is_some_and(|(last, _)| last.duration_since(*t) >= STEP)
            })
            .map_or(0.0, |(_, c)| *c);
        // The unsampled tail before the kill, at the last step's rate.
        consumed_per_window.push((most + (newest - before_newest).max(0.0)) as u64);
    }
    CrashLoop {
        crashes: cycles as usize,
        consumed_per_window,
    }
}
