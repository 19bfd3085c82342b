//! The Kafka the tests run against: a real Apache Kafka broker, named by
//! `KAFKA_TEST_BOOTSTRAP_SERVERS` (`eval "$(scripts/start-test-services.sh)"` starts one
//! and sets it). Without it a test fails, unless `DEDUP_TEST_KAFKA=mock` asks for
//! librdkafka's mock cluster: a fast local tier that proves nothing the mock cannot
//! show, refused in CI. Topics are created per test with unique names.

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
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

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
        let in_ci = crate::services::in_ci();
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
    send_all(bootstrap, topic, messages, None);
}

/// Produces `messages` at a steady `per_second` through one producer (in order, each
/// sent when due), so that consumption gaps can be told from gaps in the input.
pub fn produce_paced(bootstrap: &str, topic: &str, messages: &[Produced], per_second: u64) {
    send_all(bootstrap, topic, messages, Some(per_second));
}

/// Sends `messages` in order through one producer (each when due, at `per_second` if
/// given) and waits for every delivery.
fn send_all(bootstrap: &str, topic: &str, messages: &[Produced], per_second: Option<u64>) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "3000000")
        .set("linger.ms", if per_second.is_some() { "2" } else { "5" })
        .create()
        .expect("producer");
    let started = std::time::Instant::now();
    for (i, m) in messages.iter().enumerate() {
        if let Some(rate) = per_second {
            let due = started + Duration::from_micros(i as u64 * 1_000_000 / rate.max(1));
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition(m.partition);
        if let Some(key) = &m.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &m.payload {
            record = record.payload(payload.as_slice());
        }
        while let Err((_, returned)) = producer.send(record) {
            record = returned;
            producer.poll(Duration::from_millis(10));
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
