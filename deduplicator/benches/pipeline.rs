//! End to end on the real Apache Kafka broker: the release `deduplicator` binary
//! consuming, deduplicating, publishing and committing, beside raw librdkafka
//! consume + produce loops of the same messages on the same broker, at 1 and at 8
//! partitions. Prints Markdown tables.
//!
//! ```text
//! eval "$(scripts/start-test-services.sh)"
//! cargo bench -p deduplicator --bench pipeline
//! ```
//!
//! - `KAFKA_TEST_BOOTSTRAP_SERVERS`: the broker (required); `DEDUP_TEST_STATE`: where
//!   `scripts/start-kafka.sh` left its pid, to measure the broker's CPU.
//! - `DEDUP_BENCH_EVENTS` (1,000,000), `DEDUP_BENCH_DUPLICATES` (percent, 20),
//!   `DEDUP_BENCH_PARTITIONS` (`1,8`), `DEDUP_BENCH_RUNS` (3: every pipeline runs this
//!   often, alternating, and the median is reported), `DEDUP_BENCH_MEMORY_SECONDS` (30).
//!
//! Each run has its own consumer group and output topic over the same input; time runs
//! from the first consumed message to the last offset committed (and, for the
//! deduplicator, every unique event acknowledged). CPU seconds are the process's user +
//! system time over the whole run, per million events; the broker's share is its CPU
//! time over the run's wall time, in cores.
//!
//! The baselines:
//! - **raw at-least-once:** one consumer polling all partitions into an idempotent
//!   producer with the deduplicator's producer settings (`enable.idempotence`,
//!   `linger.ms=5`), offsets stored after the produce and committed every second;
//! - **raw exactly-once:** the same into a transactional producer, committing the
//!   transaction with its offsets every 5,000 messages or 100 ms (the deduplicator's
//!   `TRANSACTION_MAX_MESSAGES` / `TRANSACTION_MAX_DURATION` defaults), as one producer
//!   for all partitions (the cheapest way to do it).
//!
//! Then memory: the binary with default settings on 8 partitions, fed as fast as it
//! consumes for `DEDUP_BENCH_MEMORY_SECONDS`; resident set size sampled twice a second,
//! the median of the second half reported as steady state, per partition, beside the
//! peak.

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dedup_testkit::process::env_number;
use dedup_testkit::rng::xorshift;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message};

/// One measured run.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// From the first consumed message to everything committed.
    consuming: Duration,
    /// From start-up (process start, group join) to the same point.
    total: Duration,
    /// User + system CPU of the pipeline's process over the whole run.
    cpu: Duration,
    /// The broker's CPU over the same wall time.
    broker_cpu: Duration,
    published: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Pipeline {
    RawAtLeastOnce,
    RawExactlyOnce,
    Dedup,
    DedupExactlyOnce,
}

impl Pipeline {
    const ALL: [Pipeline; 4] = [
        Pipeline::RawAtLeastOnce,
        Pipeline::Dedup,
        Pipeline::RawExactlyOnce,
        Pipeline::DedupExactlyOnce,
    ];

    fn name(self) -> &'static str {
        match self {
            Pipeline::RawAtLeastOnce => "raw librdkafka consume + produce, at-least-once",
            Pipeline::Dedup => "deduplicator, at-least-once",
            Pipeline::RawExactlyOnce => "raw librdkafka consume + produce, transactions",
            Pipeline::DedupExactlyOnce => "deduplicator, exactly-once",
        }
    }

    fn baseline(self) -> Option<Pipeline> {
        match self {
            Pipeline::Dedup => Some(Pipeline::RawAtLeastOnce),
            Pipeline::DedupExactlyOnce => Some(Pipeline::RawExactlyOnce),
            _ => None,
        }
    }
}

fn main() {
    let Some(bootstrap) = std::env::var("KAFKA_TEST_BOOTSTRAP_SERVERS")
        .ok()
        .filter(|b| !b.is_empty())
    else {
        eprintln!("KAFKA_TEST_BOOTSTRAP_SERVERS is not set: run `eval \"$(scripts/start-test-services.sh)\"` first");
        std::process::exit(2);
    };
    let events = env_number("DEDUP_BENCH_EVENTS", 1_000_000) as usize;
    let duplicate_percent = env_number("DEDUP_BENCH_DUPLICATES", 20);
    let runs = env_number("DEDUP_BENCH_RUNS", 3).max(1) as usize;
    let partition_counts: Vec<i32> = std::env::var("DEDUP_BENCH_PARTITIONS")
        .unwrap_or_else(|_| "1,8".into())
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    let broker = BrokerProcess::find();
    let admin = Admin::new(&bootstrap);
    let tag = std::process::id();

    let mut rows = Vec::new();
    for &partitions in &partition_counts {
        let input = format!("bench-in-{partitions}-{tag}");
        admin.create(&input, partitions);
        let (messages, uniques) = generate(events, duplicate_percent, partitions);
        let produced = Instant::now();
        produce_all(&bootstrap, &input, &messages);
        eprintln!(
            "{partitions} partitions: {events} events ({uniques} unique) produced in {:.1} s",
            produced.elapsed().as_secs_f64()
        );
        drop(messages);
        let mut results: Vec<(Pipeline, Vec<Run>)> =
            Pipeline::ALL.iter().map(|&p| (p, Vec::new())).collect();
        for round in 0..runs {
            for (pipeline, runs) in results.iter_mut() {
                let output = format!("bench-out-{partitions}-{round}-{:?}-{tag}", pipeline);
                admin.create(&output, partitions);
                let group = format!("{output}-group");
                let run = match pipeline {
                    Pipeline::RawAtLeastOnce | Pipeline::RawExactlyOnce => raw_consume_produce(
                        &bootstrap,
                        &input,
                        &output,
                        &group,
                        events,
                        *pipeline == Pipeline::RawExactlyOnce,
                        &broker,
                    ),
                    Pipeline::Dedup | Pipeline::DedupExactlyOnce => run_deduplicator(
                        &bootstrap,
                        &input,
                        &output,
                        &group,
                        events,
                        uniques,
                        if *pipeline == Pipeline::DedupExactlyOnce {
                            &[("OUTPUT_GUARANTEE", "exactly-once")][..]
                        } else {
                            &[]
                        },
                        &broker,
                    ),
                };
                eprintln!(
                    "  {} run {}: {:.2} s from the first message, {:.0} events/s, {} published",
                    pipeline.name(),
                    round + 1,
                    run.consuming.as_secs_f64(),
                    events as f64 / run.consuming.as_secs_f64(),
                    run.published
                );
                runs.push(run);
                admin.delete(&output);
            }
        }
        admin.delete(&input);
        for (pipeline, runs) in &mut results {
            runs.sort_by_key(|r| r.consuming);
            rows.push((partitions, *pipeline, runs[runs.len() / 2]));
        }
    }

    println!("Real broker: Apache Kafka at {bootstrap} (single node, KRaft), {events} events, {duplicate_percent} % duplicates, median of {runs} alternating runs; time from the first consumed message to the last offset committed.\n");
    println!("| partitions | pipeline | events/s | vs raw | seconds (incl. start-up) | CPU s per 1M events | broker CPU (cores) | published |");
    println!("|---|---|---|---|---|---|---|---|");
    for &(partitions, pipeline, run) in &rows {
        let rate = events as f64 / run.consuming.as_secs_f64();
        let versus = pipeline
            .baseline()
            .and_then(|base| rows.iter().find(|(p, q, _)| *p == partitions && *q == base))
            .map(|(_, _, base)| {
                format!(
                    "{:.2}×",
                    rate / (events as f64 / base.consuming.as_secs_f64())
                )
            })
            .unwrap_or_else(|| "—".into());
        println!(
            "| {partitions} | {} | {rate:.0} | {versus} | {:.2} ({:.2}) | {:.2} | {} | {} |",
            pipeline.name(),
            run.consuming.as_secs_f64(),
            run.total.as_secs_f64(),
            run.cpu.as_secs_f64() * 1_000_000.0 / events as f64,
            if broker.is_some() {
                format!(
                    "{:.2}",
                    run.broker_cpu.as_secs_f64() / run.total.as_secs_f64()
                )
            } else {
                "n/a".into()
            },
            run.published
        );
    }

    let seconds = env_number("DEDUP_BENCH_MEMORY_SECONDS", 30);
    if seconds > 0 {
        let memory = memory_at_steady_state(&admin, &bootstrap, Duration::from_secs(seconds));
        let mib = |kib: u64| kib as f64 / 1024.0;
        println!("\n| memory, defaults, {MEMORY_PARTITIONS} partitions | events | steady RSS (median, 2nd half) | per partition | peak RSS | goal |");
        println!("|---|---|---|---|---|---|");
        println!(
            "| deduplicator, fed for {seconds} s | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | < 64 MiB per partition |",
            memory.events,
            mib(memory.steady_kib),
            mib(memory.steady_kib) / MEMORY_PARTITIONS as f64,
            mib(memory.peak_kib)
        );
    }
}

/// Topic administration on the broker (one runtime for the benchmark's few calls).
struct Admin {
    client: AdminClient<DefaultClientContext>,
    runtime: tokio::runtime::Runtime,
}

impl Admin {
    fn new(bootstrap: &str) -> Self {
        Self {
            client: ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .create()
                .expect("admin client"),
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
        }
    }

    fn create(&self, topic: &str, partitions: i32) {
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let results = self
            .runtime
            .block_on(self.client.create_topics([&new], &AdminOptions::new()))
            .expect("create topic");
        for result in results {
            result.expect("create topic");
        }
    }

    /// Deletes a topic the benchmark is done with (the broker's disk is finite).
    fn delete(&self, topic: &str) {
        let _ = self
            .runtime
            .block_on(self.client.delete_topics(&[topic], &AdminOptions::new()));
    }
}

/// The broker's process, to read its CPU time (`DEDUP_TEST_STATE/kafka.pid`).
struct BrokerProcess(u32);

impl BrokerProcess {
    fn find() -> Option<Self> {
        let state = std::env::var("DEDUP_TEST_STATE").ok()?;
        let pid = std::fs::read_to_string(format!("{state}/kafka.pid")).ok()?;
        let pid = pid.trim().parse().ok()?;
        cpu_time(pid).map(|_| Self(pid))
    }
}

fn broker_cpu(broker: &Option<BrokerProcess>) -> Duration {
    broker
        .as_ref()
        .and_then(|b| cpu_time(b.0))
        .unwrap_or_default()
}

/// User + system CPU time of a process so far (`/proc/PID/stat`).
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

const MEMORY_PARTITIONS: i32 = 8;

struct Memory {
    events: u64,
    steady_kib: u64,
    peak_kib: u64,
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn memory_at_steady_state(admin: &Admin, bootstrap: &str, run_for: Duration) -> Memory {
    let tag = std::process::id();
    let (input, output) = (
        format!("bench-mem-in-{tag}"),
        format!("bench-mem-out-{tag}"),
    );
    admin.create(&input, MEMORY_PARTITIONS);
    admin.create(&output, MEMORY_PARTITIONS);
    let (mut child, store, http) = spawn_deduplicator(bootstrap, &input, &output, "mem", &[]);
    let pid = child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (bootstrap, stop, input) = (bootstrap.to_string(), Arc::clone(&stop), input.clone());
        std::thread::spawn(move || {
            let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("linger.ms", "5")
                .create()
                .expect("producer");
            let mut sent = 0u64;
            let mut consumed = 0u64;
            // Event times of now (not ahead of MAX_EVENT_TIME_SKEW, inside the window).
            let first_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
                - 3_600_000;
            while !stop.load(Ordering::Relaxed) {
                // Stay close ahead of the consumer: steady state, not a backlog.
                if sent >= consumed + 5_000 * MEMORY_PARTITIONS as u64 {
                    consumed = metric(
                        &http_get(http).unwrap_or_default(),
                        "dedup_messages_in_total",
                    ) as u64;
                    if sent >= consumed + 5_000 * MEMORY_PARTITIONS as u64 {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    continue;
                }
                let i = sent;
                // One in five a copy of a recent event.
                let id = if i % 5 == 4 && i >= 7 { i - 7 } else { i };
                let payload = format!(
                    r#"{{"uuid":"0190-{id:012}","event":"$pageview","distinct_id":"user-{}","token":"phc_bench","timestamp":{},"properties":{{"$current_url":"https://example.com/p/{}","$browser":"Firefox"}}}}"#,
                    id % 100_000,
                    first_ms + id,
                    id % 97
                );
                let mut record = BaseRecord::to(&input)
                    .partition((id % MEMORY_PARTITIONS as u64) as i32)
                    .key("k")
                    .payload(payload.as_bytes());
                while let Err((_, returned)) = producer.send(record) {
                    record = returned;
                    producer.poll(Duration::from_millis(5));
                }
                sent += 1;
            }
            let _ = producer.flush(Duration::from_secs(30));
            sent
        })
    };
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut peak = 0;
    while started.elapsed() < run_for {
        std::thread::sleep(Duration::from_millis(500));
        if let Some((rss, hwm)) = rss_kib(pid) {
            if started.elapsed() > run_for / 2 {
                samples.push(rss);
            }
            peak = hwm;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let events = feeder.join().unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&store);
    admin.delete(&input);
    admin.delete(&output);
    samples.sort_unstable();
    Memory {
        events,
        steady_kib: samples.get(samples.len() / 2).copied().unwrap_or(0),
        peak_kib: peak,
    }
}

type Produced = (i32, Vec<u8>, Vec<u8>);

/// PostHog-style events; `duplicate_percent` of them copies (new uuid) of a recent event
/// of the same partition. Returns the messages and the number of unique events.
fn generate(count: usize, duplicate_percent: u64, partitions: i32) -> (Vec<Produced>, usize) {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || xorshift(&mut rng);
    let mut recent: Vec<Vec<(String, i64, &str)>> = vec![Vec::new(); partitions as usize];
    let mut out = Vec::with_capacity(count);
    let mut uniques = 0;
    // Event times end now, so that no key is outside the default window.
    let first_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
        - count as i64;
    for i in 0..count {
        let partition = (next() % partitions as u64) as usize;
        let copy = next() % 100 < duplicate_percent && !recent[partition].is_empty();
        let (distinct_id, ts, event) = if copy {
            let pool = &recent[partition];
            pool[(next() as usize) % pool.len()].clone()
        } else {
            uniques += 1;
            let e = (
                format!("user-{}", next() % 50_000),
                first_ms + i as i64,
                ["$pageview", "signup", "$autocapture"][(next() % 3) as usize],
            );
            if recent[partition].len() < 1_000 {
                recent[partition].push(e.clone());
            } else {
                let slot = (next() as usize) % 1_000;
                recent[partition][slot] = e.clone();
            }
            e
        };
        let payload = format!(
            r#"{{"uuid":"0190-{i:012}","event":"{event}","distinct_id":"{distinct_id}","token":"phc_bench","timestamp":{ts},"properties":{{"$current_url":"https://example.com/p/{}","$browser":"Firefox","$lib":"web"}}}}"#,
            i % 97
        );
        out.push((
            partition as i32,
            format!("phc_bench:{distinct_id}").into_bytes(),
            payload.into_bytes(),
        ));
    }
    (out, uniques)
}

fn produce_all(bootstrap: &str, topic: &str, messages: &[Produced]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.kbytes", "262144")
        .create()
        .expect("producer");
    for (partition, key, payload) in messages {
        let mut record = BaseRecord::to(topic)
            .partition(*partition)
            .key(key.as_slice())
            .payload(payload.as_slice());
        while let Err((_, returned)) = producer.send(record) {
            record = returned;
            producer.poll(Duration::from_millis(5));
        }
    }
    producer.flush(Duration::from_secs(300)).expect("flush");
}

/// The raw baseline: consume every message of `input` and produce it to `output`, with
/// the deduplicator's producer settings; offsets committed every second (at-least-once)
/// or in transactions of at most 5,000 messages / 100 ms (`transactional`).
fn raw_consume_produce(
    bootstrap: &str,
    input: &str,
    output: &str,
    group: &str,
    events: usize,
    transactional: bool,
    broker: &Option<BrokerProcess>,
) -> Run {
    let cpu_before = cpu_time(std::process::id()).unwrap_or_default();
    let broker_before = broker_cpu(broker);
    let started = Instant::now();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    consumer.subscribe(&[input]).expect("subscribe");
    let mut producer_config = ClientConfig::new();
    producer_config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    if transactional {
        producer_config.set("transactional.id", format!("{group}-raw"));
    }
    let producer: ThreadedProducer<DefaultProducerContext> =
        producer_config.create().expect("producer");
    if transactional {
        producer
            .init_transactions(Duration::from_secs(30))
            .expect("init transactions");
    }
    let deadline = started + Duration::from_secs(900);
    let mut seen = 0;
    let mut first_message = None;
    let mut last_commit = Instant::now();
    let mut in_transaction = 0usize;
    let mut transaction_started = Instant::now();
    let mut offsets = std::collections::BTreeMap::new();
    while seen < events {
        assert!(
            Instant::now() < deadline,
            "raw baseline read only {seen} of {events} messages"
        );
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        first_message.get_or_insert_with(Instant::now);
        seen += 1;
        if transactional && in_transaction == 0 {
            producer.begin_transaction().expect("begin");
            transaction_started = Instant::now();
        }
        let mut record = BaseRecord::to(output)
            .partition(message.partition())
            .key(message.key().unwrap_or_default())
            .payload(message.payload().unwrap_or_default());
        while let Err((_, returned)) = producer.send(record) {
            record = returned;
            producer.poll(Duration::from_millis(1));
        }
        if transactional {
            in_transaction += 1;
            offsets.insert(message.partition(), message.offset() + 1);
            if in_transaction >= 5_000
                || transaction_started.elapsed() >= Duration::from_millis(100)
                || seen == events
            {
                let group = consumer.group_metadata().expect("group metadata");
                let mut list = rdkafka::TopicPartitionList::new();
                for (&partition, &next) in &offsets {
                    list.add_partition_offset(input, partition, rdkafka::Offset::Offset(next))
                        .expect("offset");
                }
                producer
                    .send_offsets_to_transaction(&list, &group, Duration::from_secs(30))
                    .expect("send offsets");
                producer
                    .commit_transaction(Duration::from_secs(30))
                    .expect("commit transaction");
                in_transaction = 0;
                offsets.clear();
            }
        } else {
            consumer.store_offset_from_message(&message).expect("store");
            if last_commit.elapsed() >= Duration::from_secs(1) {
                let _ = consumer.commit_consumer_state(CommitMode::Async);
                last_commit = Instant::now();
            }
        }
    }
    if !transactional {
        producer.flush(Duration::from_secs(60)).expect("flush");
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .expect("commit");
    }
    let consuming = first_message.map_or(started.elapsed(), |t| t.elapsed());
    let total = started.elapsed();
    Run {
        consuming,
        total,
        cpu: cpu_time(std::process::id())
            .unwrap_or_default()
            .saturating_sub(cpu_before),
        broker_cpu: broker_cpu(broker).saturating_sub(broker_before),
        published: seen as u64,
    }
}

/// The release binary with default settings: from start-up to every event consumed,
/// every unique one published and every offset committed.
#[allow(clippy::too_many_arguments)]
fn run_deduplicator(
    bootstrap: &str,
    input: &str,
    output: &str,
    group: &str,
    events: usize,
    uniques: usize,
    extra: &[(&str, &str)],
    broker: &Option<BrokerProcess>,
) -> Run {
    let broker_before = broker_cpu(broker);
    let started = Instant::now();
    let mut extra = extra.to_vec();
    extra.push(("KAFKA_CONSUMER_GROUP", group));
    let (mut child, store, http) = spawn_deduplicator(bootstrap, input, output, group, &extra);
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut first_message = None;
    let mut cpu = Duration::ZERO;
    let published = loop {
        let metrics = http_get(http).unwrap_or_default();
        if first_message.is_none() && metric(&metrics, "dedup_messages_in_total") > 0.0 {
            first_message = Some(Instant::now());
        }
        let published = metric(&metrics, "dedup_published_total") as u64;
        let committed = metric(&metrics, "dedup_committed_offset");
        cpu = cpu_time(child.id()).unwrap_or(cpu);
        if published as usize >= uniques && committed >= events as f64 - 0.5 {
            break published;
        }
        if Instant::now() > deadline {
            eprintln!("timed out: {published} of {uniques} published");
            break published;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let total = started.elapsed();
    let consuming = first_message.map_or(total, |t| t.elapsed());
    let broker_cpu = broker_cpu(broker).saturating_sub(broker_before);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&store);
    Run {
        consuming,
        total,
        cpu,
        broker_cpu,
        published,
    }
}

/// The release binary with default settings, consuming `input` into `output`; its store
/// directory (remove it afterwards) and HTTP address.
fn spawn_deduplicator(
    bootstrap: &str,
    input: &str,
    output: &str,
    tag: &str,
    extra: &[(&str, &str)],
) -> (std::process::Child, std::path::PathBuf, SocketAddr) {
    let store = std::env::temp_dir().join(format!("dedup-bench-{tag}-{}", std::process::id()));
    let http = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("port");
        listener.local_addr().expect("addr")
    };
    let child = Command::new(env!("CARGO_BIN_EXE_deduplicator"))
        .env("KAFKA_CONSUMER_GROUP", format!("dedup-bench-{tag}"))
        .envs(extra.iter().copied())
        .env("KAFKA_HOSTS", bootstrap)
        .env("KAFKA_CONSUMER_TOPIC", input)
        .env("OUTPUT_TOPIC", output)
        .env("STORE_PATH", &store)
        .env("LOCAL_CHECKPOINT_DIR", store.join("checkpoints"))
        .env("HTTP_BIND", http.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn deduplicator");
    (child, store, http)
}

fn metric(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The body of `GET /metrics` (the test kit's HTTP call).
fn http_get(addr: SocketAddr) -> Option<String> {
    dedup_testkit::http::http_get(addr, "/metrics").map(|(_, body)| body)
}
