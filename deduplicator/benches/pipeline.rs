//! End-to-end throughput through librdkafka's mock cluster: the real `deduplicator`
//! binary consuming, deduplicating, publishing and committing, beside a plain librdkafka
//! consume + produce of the same messages in the same run. Prints a Markdown table.
//!
//! `cargo bench -p deduplicator --bench pipeline`
//! (`DEDUP_BENCH_EVENTS`, default 60000; `DEDUP_BENCH_DUPLICATES`, percent, default 20)
//!
//! Then memory: the binary with default settings on 8 partitions, fed as fast as it
//! consumes for `DEDUP_BENCH_MEMORY_SECONDS` (default 30); resident set size sampled
//! twice a second, the median of the second half reported as steady state, per
//! partition, beside the peak.
//!
//! The mock cluster keeps at most 5 MiB of messages per partition and drops older ones,
//! so a run must stay below that (60,000 of these events over 4 partitions is ~3.7 MiB
//! each). Against a real broker there is no such limit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const PARTITIONS: i32 = 4;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes harness flags; this benchmark takes none.
    let events = env_number("DEDUP_BENCH_EVENTS", 60_000) as usize;
    let duplicate_percent = env_number("DEDUP_BENCH_DUPLICATES", 20);
    let mock = MockCluster::new(1).expect("mock cluster");
    let bootstrap = mock.bootstrap_servers();
    for topic in ["in", "out", "raw_out", "eos_out"] {
        mock.create_topic(topic, PARTITIONS, 1).expect("topic");
    }

    let (messages, uniques) = generate(events, duplicate_percent);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for (partition, key, payload) in &messages {
        let mut record = BaseRecord::to("in")
            .partition(*partition)
            .key(key.as_slice())
            .payload(payload.as_slice());
        while let Err((_, returned)) = producer.send(record) {
            record = returned;
            producer.poll(Duration::from_millis(5));
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");

    let baseline = raw_consume_produce(&bootstrap, events);
    // The two modes alternately, three runs each (own consumer groups, same input);
    // the median of each, since one run is a fraction of a second of consuming.
    let mut at_least_once = Vec::new();
    let mut exactly_once = Vec::new();
    for round in 0..RUNS_PER_MODE {
        at_least_once.push(run_deduplicator(
            &bootstrap,
            events,
            uniques,
            "out",
            &format!("out-{round}"),
            &[],
        ));
        exactly_once.push(run_deduplicator(
            &bootstrap,
            events,
            uniques,
            "eos_out",
            &format!("eos-{round}"),
            &[("OUTPUT_GUARANTEE", "exactly-once")],
        ));
    }
    let (dedup_elapsed, dedup_consuming, published) = median_run(&mut at_least_once);
    let (eos_elapsed, eos_consuming, eos_published) = median_run(&mut exactly_once);
    let rate = |elapsed: Duration| events as f64 / elapsed.as_secs_f64();
    println!("| measure | events | unique | seconds | events/s |");
    println!("|---|---|---|---|---|");
    println!(
        "| raw librdkafka consume + produce | {events} | — | {:.2} | {:.0} |",
        baseline.as_secs_f64(),
        rate(baseline)
    );
    println!(
        "| deduplicator (consume, dedup, produce, commit) | {events} | {published} | {:.2} | {:.0} |",
        dedup_elapsed.as_secs_f64(),
        rate(dedup_elapsed)
    );
    println!(
        "| deduplicator, from its first consumed message | {events} | {published} | {:.2} | {:.0} |",
        dedup_consuming.as_secs_f64(),
        rate(dedup_consuming)
    );
    println!(
        "| deduplicator, exactly-once (transactions, defaults), from its first consumed message | {events} | {eos_published} | {:.2} | {:.0} |",
        eos_consuming.as_secs_f64(),
        rate(eos_consuming)
    );
    println!(
        "\nratio deduplicator / raw: {:.2}× including start-up and group join, {:.2}× from the first message",
        rate(dedup_elapsed) / rate(baseline),
        rate(dedup_consuming) / rate(baseline)
    );
    println!(
        "ratio exactly-once / at-least-once: {:.2}× from the first message ({:.2}× including start-up: {:.2} s vs {:.2} s); medians of {RUNS_PER_MODE} alternating runs each",
        rate(eos_consuming) / rate(dedup_consuming),
        rate(eos_elapsed) / rate(dedup_elapsed),
        eos_elapsed.as_secs_f64(),
        dedup_elapsed.as_secs_f64()
    );

    let seconds = env_number("DEDUP_BENCH_MEMORY_SECONDS", 30);
    if seconds > 0 {
        let memory = memory_at_steady_state(&mock, &bootstrap, Duration::from_secs(seconds));
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

fn memory_at_steady_state(
    mock: &MockCluster<'_, DefaultProducerContext>,
    bootstrap: &str,
    run_for: Duration,
) -> Memory {
    for topic in ["mem_in", "mem_out"] {
        mock.create_topic(topic, MEMORY_PARTITIONS, 1)
            .expect("topic");
    }
    let (mut child, store, http) = spawn_deduplicator(bootstrap, "mem_in", "mem_out", "mem", &[]);
    let pid = child.id();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let (bootstrap, stop) = (bootstrap.to_string(), std::sync::Arc::clone(&stop));
        std::thread::spawn(move || {
            let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("linger.ms", "5")
                .create()
                .expect("producer");
            let mut sent = 0u64;
            let mut consumed = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // The mock cluster keeps 5 MiB per partition: stay close behind.
                if sent >= consumed + 2_000 * MEMORY_PARTITIONS as u64 {
                    consumed = metric(
                        &http_get(http).unwrap_or_default(),
                        "dedup_messages_in_total",
                    ) as u64;
                    if sent >= consumed + 2_000 * MEMORY_PARTITIONS as u64 {
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
                    1_800_000_000_000u64 + id,
                    id % 97
                );
                let mut record = BaseRecord::to("mem_in")
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
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let events = feeder.join().unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&store);
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
fn generate(count: usize, duplicate_percent: u64) -> (Vec<Produced>, usize) {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut recent: Vec<Vec<(String, i64, &str)>> = vec![Vec::new(); PARTITIONS as usize];
    let mut out = Vec::with_capacity(count);
    let mut uniques = 0;
    for i in 0..count {
        let partition = (next() % PARTITIONS as u64) as usize;
        let copy = next() % 100 < duplicate_percent && !recent[partition].is_empty();
        let (distinct_id, ts, event) = if copy {
            let pool = &recent[partition];
            pool[(next() as usize) % pool.len()].clone()
        } else {
            uniques += 1;
            let e = (
                format!("user-{}", next() % 50_000),
                1_700_000_000_000 + i as i64,
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

fn raw_consume_produce(bootstrap: &str, events: usize) -> Duration {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "raw-baseline")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("in", p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    let mut seen = 0;
    while seen < events {
        if Instant::now() > deadline {
            panic!("raw baseline read only {seen} of {events} messages");
        }
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            seen += 1;
            let mut record = BaseRecord::to("raw_out")
                .key(message.key().unwrap_or_default())
                .payload(message.payload().unwrap_or_default());
            while let Err((_, returned)) = producer.send(record) {
                record = returned;
                producer.poll(Duration::from_millis(1));
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    consumer
        .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
        .expect("commit");
    started.elapsed()
}

const RUNS_PER_MODE: usize = 3;

/// The run with the median time from the first consumed message.
fn median_run(runs: &mut [(Duration, Duration, u64)]) -> (Duration, Duration, u64) {
    runs.sort_by_key(|run| run.1);
    runs[runs.len() / 2]
}

/// Time from start-up to every event consumed, published and committed, time from the
/// first consumed message to the same point, and events published.
fn run_deduplicator(
    bootstrap: &str,
    events: usize,
    uniques: usize,
    output: &str,
    tag: &str,
    extra: &[(&str, &str)],
) -> (Duration, Duration, u64) {
    let started = Instant::now();
    let (mut child, store, http) = spawn_deduplicator(bootstrap, "in", output, tag, extra);
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut first_message = None;
    let published = loop {
        let metrics = http_get(http).unwrap_or_default();
        if first_message.is_none() && metric(&metrics, "dedup_messages_in_total") > 0.0 {
            first_message = Some(Instant::now());
        }
        let published = metric(&metrics, "dedup_published_total") as u64;
        let committed = metric(&metrics, "dedup_committed_offset");
        if published as usize >= uniques && committed >= events as f64 - 0.5 {
            break published;
        }
        if Instant::now() > deadline {
            eprintln!("timed out: {published} of {uniques} published");
            break published;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let elapsed = started.elapsed();
    let consuming = first_message.map(|t| t.elapsed()).unwrap_or(elapsed);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&store);
    (elapsed, consuming, published)
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
        .envs(extra.iter().copied())
        .env("KAFKA_HOSTS", bootstrap)
        .env("KAFKA_CONSUMER_TOPIC", input)
        .env("OUTPUT_TOPIC", output)
        .env("KAFKA_CONSUMER_GROUP", format!("dedup-bench-{tag}"))
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

fn http_get(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}
