//! Test support: a Kafka to test against, an event generator, and the real
//! `deduplicator` binary run as a process.
//!
//! Kafka is a real Apache Kafka broker, named by `KAFKA_TEST_BOOTSTRAP_SERVERS`
//! (`eval "$(scripts/start-test-services.sh)"` starts one and sets it). Without it a test
//! fails, unless `DEDUP_TEST_KAFKA=mock` asks for librdkafka's mock cluster: a fast local
//! tier that proves nothing the mock cannot show, refused in CI. Topics are created per
//! test with unique names.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The environment variable naming a real broker to run the Kafka tests against.
pub const REAL_BROKER_VAR: &str = "KAFKA_TEST_BOOTSTRAP_SERVERS";

/// Set to `mock` to run the Kafka tests on librdkafka's mock cluster (local runs only).
pub const KAFKA_TIER_VAR: &str = "DEDUP_TEST_KAFKA";

pub struct TestKafka {
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
    pub bootstrap: String,
}

impl TestKafka {
    /// The Kafka the tests run against: the real broker of `KAFKA_TEST_BOOTSTRAP_SERVERS`,
    /// or, when `DEDUP_TEST_KAFKA=mock` outside CI, the mock cluster.
    pub fn start() -> Self {
        if let Ok(bootstrap) = std::env::var(REAL_BROKER_VAR) {
            if !bootstrap.is_empty() {
                return Self {
                    _mock: None,
                    bootstrap,
                };
            }
        }
        let mock_asked = std::env::var(KAFKA_TIER_VAR).is_ok_and(|v| v == "mock");
        let in_ci = dedup_core::test_services::in_ci();
        if !mock_asked || in_ci {
            panic!(
                "no Kafka broker: {REAL_BROKER_VAR} is not set. Start the test services with \
                 `eval \"$(scripts/start-test-services.sh)\"` (a real Apache Kafka broker on \
                 127.0.0.1){}",
                if in_ci {
                    "; CI runs every Kafka test on the real broker"
                } else {
                    ", or set DEDUP_TEST_KAFKA=mock for the mock-cluster tier (local runs only)"
                }
            );
        }
        Self::mock_cluster()
    }

    /// The real broker, for a test whose claim only a real broker can show (transactions,
    /// fencing). Under the local mock tier it says so and returns `None` (the test skips);
    /// everywhere else it is [`TestKafka::start`].
    pub fn start_real() -> Option<Self> {
        let kafka = Self::start();
        if kafka.is_real_broker() {
            Some(kafka)
        } else {
            eprintln!(
                "skipped: this test needs a real broker ({REAL_BROKER_VAR}), not the mock tier"
            );
            None
        }
    }

    /// The real broker at `bootstrap`.
    pub fn real(bootstrap: &str) -> Self {
        Self {
            _mock: None,
            bootstrap: bootstrap.to_string(),
        }
    }

    /// librdkafka's mock cluster, whatever the environment says: for the few tests that
    /// inject a broker's error answer, which a real broker cannot be made to give.
    pub fn mock_cluster() -> Self {
        let mock = MockCluster::new(1).expect("start the librdkafka mock cluster");
        let bootstrap = mock.bootstrap_servers();
        Self {
            _mock: Some(mock),
            bootstrap,
        }
    }

    /// The mock cluster, when the tests run on it (for error injection).
    pub fn mock(&self) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        self._mock.as_ref()
    }

    /// True when the tests run against a real broker (`KAFKA_TEST_BOOTSTRAP_SERVERS`).
    pub fn is_real_broker(&self) -> bool {
        self._mock.is_none()
    }

    /// A new topic with a name unique to this test run.
    pub fn topic(&self, prefix: &str, partitions: i32) -> String {
        self.topic_with_config(prefix, partitions, &[])
    }

    /// A new topic with a unique name and the given topic-level settings (real broker).
    pub fn topic_with_config(
        &self,
        prefix: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> String {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        match &self._mock {
            Some(mock) => {
                assert!(config.is_empty(), "topic settings need a real broker");
                mock.create_topic(&name, partitions, 1)
                    .expect("create topic on the mock cluster")
            }
            None => {
                let mut topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
                for (key, value) in config {
                    topic = topic.set(key, value);
                }
                let results = self
                    .admin(|admin| async move {
                        admin.create_topics([&topic], &AdminOptions::new()).await
                    })
                    .expect("create topic");
                for result in results {
                    result.expect("create topic");
                }
            }
        }
        name
    }

    /// The sum over `partitions` partitions of `group`'s committed offsets of `topic`
    /// (a partition without one counts 0).
    pub fn committed_total(&self, group: &str, topic: &str, partitions: i32) -> i64 {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer for the committed offsets");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(30))
            .expect("committed offsets");
        committed
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum()
    }

    /// Deletes `topic` on the real broker and waits until it is gone.
    pub fn delete_topic(&self, topic: &str) {
        let results = self
            .admin(|admin| async move { admin.delete_topics(&[topic], &AdminOptions::new()).await })
            .expect("delete topic");
        for result in results {
            result.expect("delete topic");
        }
    }

    /// Creates `topic` (this exact name) on the real broker, retrying while a deletion of
    /// the same name is still in progress.
    pub fn create_topic_named(&self, topic: &str, partitions: i32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
            let results = self
                .admin(
                    |admin| async move { admin.create_topics([&new], &AdminOptions::new()).await },
                )
                .expect("create topic");
            match results.into_iter().next() {
                Some(Ok(_)) => return,
                Some(Err((_, error))) if Instant::now() < deadline => {
                    eprintln!("creating {topic} again: {error:?}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => panic!("create topic {topic}: {other:?}"),
            }
        }
    }

    /// Changes topic-level settings of `topic` on the real broker.
    pub fn alter_topic_config(&self, topic: &str, config: &[(&str, &str)]) {
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (key, value) in config {
            alter = alter.set(key, value);
        }
        let results = self
            .admin(|admin| async move { admin.alter_configs([&alter], &AdminOptions::new()).await })
            .expect("alter topic settings");
        for result in results {
            result.expect("alter topic settings");
        }
    }

    /// Runs one admin call on its own thread and runtime, so it works from synchronous
    /// and asynchronous tests alike.
    fn admin<T, F>(
        &self,
        call: impl FnOnce(Arc<AdminClient<DefaultClientContext>>) -> F + Send,
    ) -> T
    where
        F: std::future::Future<Output = T>,
        T: Send,
    {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("admin client");
        let admin = Arc::new(admin);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime for an admin call")
                        .block_on(call(admin))
                })
                .join()
                .expect("admin call")
        })
    }

    pub fn produce(&self, topic: &str, messages: &[Produced]) {
        produce_to(&self.bootstrap, topic, messages);
    }

    /// Every message of `topic`, read from the beginning until `expected` messages have
    /// arrived and then `settle` more without a new one (so extra messages are seen too).
    pub fn read_all(
        &self,
        topic: &str,
        partitions: i32,
        expected: usize,
        settle: Duration,
    ) -> Vec<OwnedMessage> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", format!("reader-{topic}"))
            .set("enable.auto.commit", "false")
            .set("fetch.message.max.bytes", "3000000")
            .create()
            .expect("reader");
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last_new = Instant::now();
        while Instant::now() < deadline {
            if out.len() >= expected && last_new.elapsed() >= settle {
                break;
            }
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
                out.push(message.detach());
                last_new = Instant::now();
            }
        }
        out
    }
}

/// Produces `messages` to `topic` on the cluster at `bootstrap` and waits for them (for
/// threads: the mock cluster handle itself stays with the test).
pub fn produce_to(bootstrap: &str, topic: &str, messages: &[Produced]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "3000000")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for m in messages {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition(m.partition);
        if let Some(key) = &m.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &m.payload {
            record = record.payload(payload.as_slice());
        }
        let mut record = record;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("flush test producer");
}

/// One message to produce.
#[derive(Clone, Debug)]
pub struct Produced {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
}

/// A generated event with everything the checks need to know about it.
#[derive(Clone, Debug)]
pub struct GenEvent {
    pub uuid: String,
    pub distinct_id: String,
    pub timestamp_ms: i64,
    pub event: String,
    pub partition: i32,
    /// Position within its partition's stream, for order checks.
    pub seq: u64,
    /// Whether it is a copy of an earlier event (same key, new uuid).
    pub is_copy: bool,
}

impl GenEvent {
    pub fn dedup_key(&self) -> String {
        format!(
            "{}:{}:tok:{}",
            self.timestamp_ms, self.distinct_id, self.event
        )
    }

    pub fn produced(&self) -> Produced {
        let payload = serde_json::json!({
            "uuid": self.uuid,
            "distinct_id": self.distinct_id,
            "token": "tok",
            "event": self.event,
            "timestamp": self.timestamp_ms,
            "properties": {"src_partition": self.partition, "seq": self.seq},
        });
        Produced {
            partition: self.partition,
            key: Some(format!("tok:{}", self.distinct_id).into_bytes()),
            payload: Some(payload.to_string().into_bytes()),
        }
    }
}

/// Generates `count` events over `partitions`, a `duplicate_percent` share of them copies
/// of an earlier event of the same partition. Deterministic for a given `seed`.
pub fn generate(
    count: usize,
    duplicate_percent: u64,
    partitions: i32,
    seed: u64,
    id_prefix: &str,
) -> Vec<GenEvent> {
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut by_partition: HashMap<i32, Vec<GenEvent>> = HashMap::new();
    let mut seqs: HashMap<i32, u64> = HashMap::new();
    let mut events = Vec::with_capacity(count);
    for i in 0..count {
        let partition = (next() % partitions as u64) as i32;
        let seq = {
            let s = seqs.entry(partition).or_default();
            *s += 1;
            *s
        };
        let earlier = by_partition.entry(partition).or_default();
        let event = if next() % 100 < duplicate_percent && !earlier.is_empty() {
            let original = &earlier[(next() as usize) % earlier.len()];
            GenEvent {
                uuid: format!("{id_prefix}-{i}"),
                seq,
                is_copy: true,
                ..original.clone()
            }
        } else {
            let e = GenEvent {
                uuid: format!("{id_prefix}-{i}"),
                distinct_id: format!("{id_prefix}-user-{}", next() % 100_000),
                timestamp_ms: 1_700_000_000_000 + i as i64,
                event: ["$pageview", "signup", "purchase"][(next() % 3) as usize].to_string(),
                partition,
                seq,
                is_copy: false,
            };
            earlier.push(e.clone());
            e
        };
        events.push(event);
    }
    events
}

/// What an output message says about itself.
pub struct Published {
    pub uuid: String,
    pub dedup_key: String,
    pub src_partition: i64,
    pub seq: u64,
    pub out_partition: i32,
}

pub fn parse_published(message: &OwnedMessage) -> Option<Published> {
    let value: serde_json::Value = serde_json::from_slice(message.payload()?).ok()?;
    Some(Published {
        uuid: value["uuid"].as_str()?.to_string(),
        dedup_key: format!(
            "{}:{}:{}:{}",
            value["timestamp"].as_i64()?,
            value["distinct_id"].as_str()?,
            value["token"].as_str()?,
            value["event"].as_str()?
        ),
        src_partition: value["properties"]["src_partition"].as_i64()?,
        seq: value["properties"]["seq"].as_u64()?,
        out_partition: message.partition(),
    })
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
        let mut command = Command::new(env!("CARGO_BIN_EXE_deduplicator"));
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

pub fn sum_metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http_request(addr, "GET", path)
}

pub fn http_request(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    http_request_with(addr, method, path, "")
}

/// `headers`: extra header lines, each ending in `\r\n`.
pub fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n{headers}Connection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

pub fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// A free port for a server started later (after other servers have started): chosen
/// below the kernel's ephemeral range, so that no `bind(0)` in the meantime (the mock
/// cluster's brokers, a process's HTTP port) can take it.
pub fn free_port_for_later() -> SocketAddr {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.clamp(10_001, 32768));
    let start = low + (std::process::id() as u16 % (high - low));
    (start..high)
        .chain(low..start)
        .map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
        .find(|addr| TcpListener::bind(addr).is_ok())
        .expect("a free port below the ephemeral range")
}

/// The S3 the checkpoint tests use: `moto_server` started by
/// `scripts/start-test-services.sh`, at `DEDUP_TEST_S3_ENDPOINT` (default
/// http://127.0.0.1:5000). Not reachable: the test fails, unless
/// `DEDUP_ALLOW_MISSING_SERVICES=1` (local runs only) makes it skip (`None`).
pub fn test_s3() -> Option<TestS3> {
    let endpoint =
        std::env::var("DEDUP_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:5000".into());
    let addr: SocketAddr = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("DEDUP_TEST_S3_ENDPOINT is http://IP:PORT");
    if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
        return Some(TestS3 {
            addr,
            bucket: unique_bucket(),
        });
    }
    if dedup_core::test_services::may_skip("DEDUP_ALLOW_MISSING_SERVICES") {
        eprintln!("skipping: no S3 at {endpoint} and DEDUP_ALLOW_MISSING_SERVICES=1");
        return None;
    }
    panic!("no S3 at {endpoint}: run scripts/start-test-services.sh (moto_server)");
}

fn unique_bucket() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "dedup-it-{}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        Instant::now().elapsed().as_nanos() % 1000
    )
}

/// A bucket on an S3-compatible server (moto: no authentication needed for these plain
/// HTTP calls; the deduplicator itself signs with test credentials).
pub struct TestS3 {
    pub addr: SocketAddr,
    pub bucket: String,
}

impl TestS3 {
    pub fn at(addr: SocketAddr) -> Self {
        Self {
            addr,
            bucket: unique_bucket(),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A plain HTTP call to moto, which wants an `Authorization` header on object reads
    /// but does not check the signature.
    fn call(&self, method: &str, path: &str) -> Option<(u16, String)> {
        http_request_with(self.addr, method, path, MOTO_AUTH)
    }

    /// An object's bytes.
    pub fn get_bytes(&self, key: &str) -> Option<Vec<u8>> {
        match raw_request(
            self.addr,
            "GET",
            &format!("/{}/{key}", self.bucket),
            MOTO_AUTH,
            &[],
        ) {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    /// Writes an object.
    pub fn put(&self, key: &str, body: &[u8]) -> bool {
        matches!(
            raw_request(
                self.addr,
                "PUT",
                &format!("/{}/{key}", self.bucket),
                MOTO_AUTH,
                body
            ),
            Some((200, _))
        )
    }

    pub fn create_bucket(&self) -> bool {
        matches!(
            self.call("PUT", &format!("/{}", self.bucket)),
            Some((200, _))
        )
    }

    pub fn delete(&self, key: &str) -> bool {
        matches!(
            self.call("DELETE", &format!("/{}/{key}", self.bucket)),
            Some((204 | 200, _))
        )
    }

    /// Every key under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let Some((200, body)) = self.call(
            "GET",
            &format!("/{}?list-type=2&max-keys=1000&prefix={prefix}", self.bucket),
        ) else {
            return Vec::new();
        };
        body.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
    }

    pub fn get(&self, key: &str) -> Option<String> {
        match self.call("GET", &format!("/{}/{key}", self.bucket)) {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    /// The settings that point a deduplicator (or restorer) at this bucket.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("S3_BUCKET", self.bucket.clone()),
            ("S3_ENDPOINT", self.endpoint()),
            ("S3_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
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

/// The `Authorization` header moto wants on object calls (it does not check it).
const MOTO_AUTH: &str = "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0\r\n";

/// One HTTP/1.1 request with a body; the status and the raw body (no chunked encoding
/// expected: moto sends Content-Length).
fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &[u8],
) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n",
        body.len()
    )
    .ok()?;
    stream.write_all(body).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let status = std::str::from_utf8(response.get(9..12)?)
        .ok()?
        .parse()
        .ok()?;
    Some((status, response[split + 4..].to_vec()))
}

/// A TCP forwarder to a server on loopback that can be cut off and restored: an outage
/// of the server without losing its state (a restarted moto would forget its buckets).
pub struct Outage {
    pub addr: SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Outage {
    pub fn forward_to(target: SocketAddr) -> Self {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Mutex};
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the forwarder");
        let addr = listener.local_addr().expect("forwarder address");
        let up = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (accept_up, accept_connections) = (Arc::clone(&up), Arc::clone(&connections));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !accept_up.load(Ordering::SeqCst) {
                    drop(client); // closed at once: the server is "down"
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let mut open = accept_connections.lock().unwrap();
                for stream in [&client, &server] {
                    if let Ok(clone) = stream.try_clone() {
                        open.push(clone);
                    }
                }
                for (mut from, mut to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ]
                .into_iter()
                .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Self {
            addr,
            up,
            connections,
        }
    }

    /// Cuts every connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, Ordering::SeqCst);
        for stream in self.connections.lock().unwrap().drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn up(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Dedup key → uuid of its first occurrence (the original), over generated events.
pub fn unique_keys(events: &[GenEvent]) -> HashMap<String, String> {
    let mut originals = HashMap::new();
    for e in events {
        originals
            .entry(e.dedup_key())
            .or_insert_with(|| e.uuid.clone());
    }
    originals
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

/// Copies (new uuid, same key) of the given events.
pub fn copies_of(events: &[GenEvent], tag: &str) -> Vec<GenEvent> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| GenEvent {
            uuid: format!("{tag}-{i}"),
            is_copy: true,
            ..e.clone()
        })
        .collect()
}

/// What the output holds, measured against the generated truth.
#[derive(Debug, Clone, Copy)]
pub struct OutputCheck {
    pub unique_in_truth: usize,
    pub unique_in_output: usize,
    /// Messages published more than once (always originals: checked).
    pub republished: usize,
}

/// Checks every output message is the original of its key (never a later copy) and
/// counts what is there. Loss is for the caller to judge ([`verify_no_loss`]).
pub fn check_output(events: &[GenEvent], output: &[OwnedMessage]) -> OutputCheck {
    let originals = unique_keys(events);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for message in output {
        let published = parse_published(message).expect("output is a generated event");
        let original = originals
            .get(&published.dedup_key)
            .unwrap_or_else(|| panic!("unknown key published: {}", published.dedup_key));
        assert_eq!(
            &published.uuid, original,
            "a copy (not the original) of {} was published: its duplicate state was lost",
            published.dedup_key
        );
        *seen.entry(published.dedup_key).or_default() += 1;
    }
    OutputCheck {
        unique_in_truth: originals.len(),
        unique_in_output: seen.len(),
        republished: seen.values().map(|n| n - 1).sum(),
    }
}

/// [`check_output`], and every unique event present. Returns how many messages were
/// published more than once (redelivered originals).
pub fn verify_no_loss(events: &[GenEvent], output: &[OwnedMessage]) -> usize {
    let check = check_output(events, output);
    assert_eq!(
        check.unique_in_output,
        check.unique_in_truth,
        "{} unique events lost",
        check.unique_in_truth - check.unique_in_output
    );
    check.republished
}

/// A number from the environment variable `var` (a long version of a test), else
/// `default` (the CI version).
pub fn env_number(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One xorshift step: pseudo-random but repeatable timings for fault tests.
pub fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
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
