//! The live stream of the end-to-end scenarios and its truth check: PostHog-style events
//! produced at a steady rate to the real broker (a share of them copies of earlier ones,
//! with a new uuid, other properties and the timestamp spelled differently), and what the
//! output topic holds measured against what was sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

/// The real broker of `KAFKA_TEST_BOOTSTRAP_SERVERS` (started by
/// `scripts/start-test-services.sh`); `None` only when a local run may skip.
pub fn broker() -> Option<String> {
    match std::env::var("KAFKA_TEST_BOOTSTRAP_SERVERS") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if dedup_testkit::services::may_skip("DEDUP_ALLOW_MISSING_SERVICES") => {
            eprintln!("skipping: no KAFKA_TEST_BOOTSTRAP_SERVERS and DEDUP_ALLOW_MISSING_SERVICES=1");
            None
        }
        _ => panic!(
            "no Kafka broker: KAFKA_TEST_BOOTSTRAP_SERVERS is not set; run eval \"$(scripts/start-test-services.sh)\""
        ),
    }
}

pub use dedup_testkit::process::now_ms;

/// A topic to create: name, partitions, configs.
pub type TopicSpec<'a> = (&'a str, i32, &'a [(&'a str, &'a str)]);

/// Creates the topics.
pub async fn create_topics(bootstrap: &str, topics: &[TopicSpec<'_>]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("an admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions, configs)| {
            configs.iter().fold(
                NewTopic::new(name, *partitions, TopicReplication::Fixed(1)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    for result in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .expect("creating topics")
    {
        result.unwrap_or_else(|(topic, e)| panic!("creating topic {topic}: {e}"));
    }
}

/// What a key's events were: the uuid of its first event (the original) and its input
/// partition.
#[derive(Default)]
pub struct Truth {
    pub originals: HashMap<String, String>,
    pub sent: u64,
    pub copies_sent: u64,
    /// Partition of each distinct_id's events.
    pub partition_of: HashMap<String, i32>,
    /// Events the broker did not acknowledge (the check refuses to judge then).
    pub failed_deliveries: u64,
}

/// Counts the deliveries the broker refused or that timed out: the truth assumes every
/// event sent arrived.
#[derive(Default)]
struct Deliveries {
    failed: std::sync::atomic::AtomicU64,
}

impl rdkafka::ClientContext for Deliveries {}

impl rdkafka::producer::ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            eprintln!("stream: a delivery failed: {error}");
            self.failed.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A background producer of events at a steady rate, until stopped.
pub struct Stream {
    stop: Arc<AtomicBool>,
    /// Events a second; changed with [`Stream::set_rate`].
    rate: Arc<AtomicU64>,
    truth: Arc<Mutex<Truth>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stream {
    /// Starts producing `rate` events a second to `topic` (its `partitions`), a
    /// `copy_percent` share of them copies of an earlier event.
    pub fn start(
        bootstrap: &str,
        topic: &str,
        partitions: i32,
        rate: u64,
        copy_percent: u64,
        seed: u64,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rate = Arc::new(AtomicU64::new(rate));
        let truth = Arc::new(Mutex::new(Truth::default()));
        let producer: ThreadedProducer<Deliveries> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "5")
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create_with_context(Deliveries::default())
            .expect("a producer");
        let (topic, stop_flag, shared) = (topic.to_string(), Arc::clone(&stop), Arc::clone(&truth));
        let rate_now = Arc::clone(&rate);
        let thread = std::thread::spawn(move || {
            let mut rng = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407)
                | 1;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            // (distinct_id, event, timestamp) of the originals sent so far.
            let mut originals: Vec<(String, &'static str, i64)> = Vec::new();
            let mut sent: u64 = 0;
            // The rate counts from its latest change: (rate, since, sent then).
            let mut pace = (rate_now.load(Ordering::SeqCst), Instant::now(), 0u64);
            while !stop_flag.load(Ordering::SeqCst) {
                let rate = rate_now.load(Ordering::SeqCst);
                if rate != pace.0 {
                    pace = (rate, Instant::now(), sent);
                }
                // Keep to the rate: sleep until the next event is due.
                let due = pace.1 + Duration::from_micros((sent - pace.2) * 1_000_000 / rate.max(1));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait.min(Duration::from_millis(50)));
                    continue;
                }
                let uuid = format!("e2e-{seed}-{sent}");
                let copy = next() % 100 < copy_percent && !originals.is_empty();
                let (distinct_id, event, ts, spelled, variant) = if copy {
                    let (d, e, t) = originals[(next() as usize) % originals.len()].clone();
                    let spelled = spell(t, next() % 3);
                    (d, e, t, spelled, next() % 1000)
                } else {
                    let d = format!("user-{}", next() % 20_000);
                    let e = ["$pageview", "$identify", "signup", "purchase"][(next() % 4) as usize];
                    let t = now_ms();
                    originals.push((d.clone(), e, t));
                    (d, e, t, serde_json::json!(t), 0)
                };
                let partition = partition_of(&distinct_id, partitions);
                let payload = serde_json::json!({
                    "uuid": uuid,
                    "event": event,
                    "distinct_id": distinct_id,
                    "token": "phc_e2e",
                    "timestamp": spelled,
                    "properties": {"$lib": "e2e", "variant": variant, "src_partition": partition},
                })
                .to_string();
                let mut record = BaseRecord::<str, str>::to(&topic)
                    .partition(partition)
                    .key(distinct_id.as_str())
                    .payload(payload.as_str());
                let mut queued = false;
                while !stop_flag.load(Ordering::SeqCst) {
                    match producer.send(record) {
                        Ok(()) => {
                            queued = true;
                            break;
                        }
                        Err((_, returned)) => {
                            record = returned;
                            producer.poll(Duration::from_millis(10));
                        }
                    }
                }
                if !queued {
                    break;
                }
                let mut truth = shared.lock().unwrap();
                truth.sent += 1;
                let key = key_of(ts, &distinct_id, event);
                match truth.originals.entry(key) {
                    std::collections::hash_map::Entry::Occupied(_) => truth.copies_sent += 1,
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(uuid);
                    }
                }
                truth.partition_of.insert(distinct_id, partition);
                sent += 1;
            }
            producer
                .flush(Duration::from_secs(60))
                .expect("the stream's last events are acknowledged");
            shared.lock().unwrap().failed_deliveries =
                producer.context().failed.load(Ordering::SeqCst);
        });
        Self {
            stop,
            rate,
            truth,
            thread: Some(thread),
        }
    }

    /// Changes the rate from now on (a burst, then back).
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::SeqCst);
    }

    /// Events sent so far.
    pub fn sent(&self) -> u64 {
        self.truth.lock().unwrap().sent
    }

    /// Stops the stream (every event acknowledged) and gives what was sent.
    pub fn stop(mut self) -> Truth {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the stream thread");
        }
        std::mem::take(&mut *self.truth.lock().unwrap())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The input partition of a distinct_id's events (FNV-1a, so it is the same every run).
pub fn partition_of(distinct_id: &str, partitions: i32) -> i32 {
    let hash = distinct_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (hash % partitions as u64) as i32
}

/// The same instant spelled three ways a copy may use.
fn spell(ms: i64, how: u64) -> serde_json::Value {
    let Ok(t) = jiff::Timestamp::from_millisecond(ms) else {
        return serde_json::json!(ms);
    };
    match how {
        0 => serde_json::json!(ms),
        1 => serde_json::json!(format!("{t:.3}")), // 2026-11-28T16:00:00.123Z
        _ => serde_json::json!(t
            .to_zoned(jiff::tz::TimeZone::fixed(jiff::tz::offset(2)))
            .strftime("%Y-%m-%dT%H:%M:%S%.3f%:z")
            .to_string()),
    }
}

fn key_of(ts: i64, distinct_id: &str, event: &str) -> String {
    format!("{ts}:{distinct_id}:{event}")
}

/// One output message as the check reads it.
pub struct Published {
    pub key: String,
    pub uuid: String,
    pub src_partition: i32,
    /// The broker's append time (the output topic is `LogAppendTime`).
    pub appended_ms: i64,
}

/// Reads the whole output topic (up to its end offsets at the call).
pub fn read_output(bootstrap: &str, topic: &str, read_committed: bool) -> Vec<Published> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("e2e-reader-{}", now_ms()))
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            if read_committed {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .create()
        .expect("an output reader");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("the output topic's metadata");
    let partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let mut assignment = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for p in &partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, *p, Duration::from_secs(10))
            .expect("watermarks");
        ends.insert(*p, high);
        assignment
            .add_partition_offset(topic, *p, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    // The consumer's positions move past transaction markers too: done when every
    // partition's position reached the end offset read above.
    let done = |consumer: &BaseConsumer| {
        let Ok(positions) = consumer.position() else {
            return false;
        };
        ends.iter().all(|(p, end)| {
            *end == 0
                || positions
                    .find_partition(topic, *p)
                    .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= *end))
        })
    };
    loop {
        if done(&consumer) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the output could not be read to its end in 180 s ({} messages read)",
            out.len()
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let appended_ms = m.timestamp().to_millis().unwrap_or(0);
                let Some(value) = m
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                else {
                    panic!(
                        "the output holds a message that is not an event: {:?}",
                        m.payload()
                    );
                };
                out.push(published(&value, appended_ms).unwrap_or_else(|| {
                    panic!("the output holds an event without its fields: {value}")
                }));
            }
            Some(Err(e)) => panic!("reading the output: {e}"),
            None => {}
        }
    }
    out
}

fn published(value: &serde_json::Value, appended_ms: i64) -> Option<Published> {
    let ts = match &value["timestamp"] {
        serde_json::Value::Number(n) => n.as_i64()?,
        serde_json::Value::String(s) => s.parse::<jiff::Timestamp>().ok()?.as_millisecond(),
        _ => return None,
    };
    Some(Published {
        key: key_of(ts, value["distinct_id"].as_str()?, value["event"].as_str()?),
        uuid: value["uuid"].as_str()?.to_string(),
        src_partition: value["properties"]["src_partition"].as_i64()? as i32,
        appended_ms,
    })
}

/// The output measured against the truth.
#[derive(Debug)]
pub struct Verdict {
    pub sent: u64,
    pub unique: usize,
    pub lost: usize,
    /// Copies published (an event other than its key's original).
    pub copies_passed: usize,
    /// Originals published more than once (at-least-once's replays).
    pub republished: usize,
}

pub fn check(truth: &Truth, output: &[Published]) -> Verdict {
    assert_eq!(
        truth.failed_deliveries, 0,
        "events of the stream were not delivered: the truth is unknown"
    );
    assert!(
        truth.sent > 0 && truth.copies_sent > 0 && !output.is_empty(),
        "nothing to judge: {} sent, {} copies, {} published",
        truth.sent,
        truth.copies_sent,
        output.len()
    );
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut copies_passed = 0;
    for m in output {
        match truth.originals.get(&m.key) {
            Some(original) if *original == m.uuid => *seen.entry(m.key.as_str()).or_default() += 1,
            Some(_) => copies_passed += 1,
            None => panic!("the output holds an event never sent: {}", m.key),
        }
    }
    Verdict {
        sent: truth.sent,
        unique: truth.originals.len(),
        lost: truth.originals.len() - seen.len(),
        copies_passed,
        republished: seen.values().map(|n| n - 1).sum(),
    }
}

/// The longest time, over input partitions, in which no event of the partition was
/// published, among the gaps that overlap `[from_ms, to_ms]` (the handoff gap of a step).
/// Also returns the partition.
pub fn longest_gap(output: &[Published], partitions: i32, from_ms: i64, to_ms: i64) -> (f64, i32) {
    partition_gaps(output, partitions, from_ms, to_ms)
        .into_iter()
        .enumerate()
        .fold((0.0, -1), |worst, (p, gap)| {
            if gap > worst.0 {
                (gap, p as i32)
            } else {
                worst
            }
        })
}

/// Per input partition, its longest gap (seconds) between two appended outputs around
/// `[from_ms, to_ms]`: the handoff gap of each partition in a step.
pub fn partition_gaps(output: &[Published], partitions: i32, from_ms: i64, to_ms: i64) -> Vec<f64> {
    let mut by_partition: HashMap<i32, Vec<i64>> = HashMap::new();
    for m in output {
        by_partition
            .entry(m.src_partition)
            .or_default()
            .push(m.appended_ms);
    }
    (0..partitions)
        .map(|p| {
            let mut times = by_partition.remove(&p).unwrap_or_default();
            times.sort_unstable();
            times
                .windows(2)
                .filter(|pair| pair[1] >= from_ms && pair[0] <= to_ms)
                .map(|pair| (pair[1] - pair[0]) as f64 / 1000.0)
                .fold(0.0, f64::max)
        })
        .collect()
}

/// Republished originals whose later copies were appended in `[from_ms, to_ms)`.
pub fn republished_between(output: &[Published], from_ms: i64, to_ms: i64) -> usize {
    let mut first: HashMap<(&str, &str), i64> = HashMap::new();
    let mut count = 0;
    let mut sorted: Vec<&Published> = output.iter().collect();
    sorted.sort_by_key(|m| m.appended_ms);
    for m in sorted {
        if first
            .insert((m.key.as_str(), m.uuid.as_str()), m.appended_ms)
            .is_some()
            && m.appended_ms >= from_ms
            && m.appended_ms < to_ms
        {
            count += 1;
        }
    }
    count
}

/// The group's lag on `topic`: end offsets minus committed offsets, summed.
pub fn group_lag(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> Option<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .ok()?;
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .ok()?;
    let mut lag = 0;
    for p in 0..partitions {
        let (_, high) = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .ok()?;
        let done = match committed.find_partition(topic, p)?.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        };
        lag += (high - done).max(0);
    }
    Some(lag)
}

/// The group's state and how many of its members hold partitions (DescribeGroups).
pub fn group_state(bootstrap: &str, group: &str) -> Option<(String, usize)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .ok()?;
    let groups = consumer
        .fetch_group_list(Some(group), Duration::from_secs(10))
        .ok()?;
    let info = groups.groups().iter().find(|g| g.name() == group)?;
    // A member's assignment (consumer protocol): version (2), topic count (4), then the
    // topics; an empty one is shorter than one topic with a partition.
    let holding = info
        .members()
        .iter()
        .filter(|m| m.assignment().is_some_and(|a| a.len() > 6 + 2 + 4 + 4))
        .count();
    Some((info.state().to_string(), holding))
}
