//! The quick start: the real deduplicator pipeline (the same code as production) on an
//! embedded default — an in-process Kafka (librdkafka's mock cluster) and a
//! local-directory checkpoint remote — fed with generated PostHog-style events with a
//! known share of duplicates and malformed messages, checked against the truth.
//!
//! A producer keeps a bounded backlog ahead of the deduplicator (the mock cluster keeps
//! only 5 MiB per partition), and a verifier reads the output and dead-letter topics as
//! they are written. At the end the output must hold each unique event exactly once and
//! the dead-letter topic every malformed message; anything else exits non-zero.
//!
//! `--kafka-hosts` and `--s3-bucket` (with `--s3-endpoint`, `--s3-region`) point the same
//! run at a real Kafka and S3 instead.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use dedup_core::checkpoint::manifest::CheckpointManifest;
use dedup_core::checkpoint::remote::Remote;
use dedup_core::checkpoint::transfer;
use prometheus_client::registry::Registry;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::metrics::Metrics;
use crate::Config;

/// Most messages produced but not yet consumed by the deduplicator, per partition.
const BACKLOG_PER_PARTITION: u64 = 4_000;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "quickstart",
    version,
    about = "Runs the deduplicator on generated events and checks the result"
)]
pub struct Args {
    /// Events to generate (duplicates and malformed messages included).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,

    /// Share of events that are copies of an earlier event (same key, same uuid).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=95))]
    pub duplicate_percent: u8,

    /// Share of messages that are malformed, in tenths of a percent (5 = 0.5 %).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub malformed_per_mille: u16,

    /// Partitions of the input topic.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=256))]
    pub partitions: i32,

    /// A real Kafka instead of the embedded one (topics are created).
    #[arg(long)]
    pub kafka_hosts: Option<String>,

    /// A real S3 bucket instead of the local-directory remote (credentials from the AWS
    /// chain).
    #[arg(long)]
    pub s3_bucket: Option<String>,

    #[arg(long)]
    pub s3_endpoint: Option<String>,

    #[arg(long)]
    pub s3_region: Option<String>,

    /// Where stores, checkpoints and the local remote go (default: a temporary directory,
    /// removed at the end).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,

    /// The deduplicator's OUTPUT_GUARANTEE: at-least-once, or exactly-once (output and
    /// offsets in one transaction per partition; the verifier reads `read_committed`).
    #[arg(long, default_value = "at-least-once")]
    pub output_guarantee: crate::config::OutputGuarantee,
}

/// The counts the run is judged by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truth {
    pub events: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub malformed: u64,
}

/// What the verifier read back.
#[derive(Debug, Default)]
struct Seen {
    output: AtomicU64,
    output_distinct: AtomicU64,
    dead_letter: AtomicU64,
}

pub struct Report {
    pub truth: Truth,
    pub lines: Vec<(String, String, String)>,
    pub ok: bool,
}

/// Runs the quick start; `Err` for a set-up failure, else a report (which may say the
/// counts did not match).
pub async fn run(args: Args) -> Result<Report, String> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let temp = match &args.work_dir {
        Some(_) => None,
        None => Some(tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?),
    };
    let work = args
        .work_dir
        .clone()
        .or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()))
        .ok_or("no work directory")?;
    let input = format!("quickstart-events-{stamp}");
    let output = format!("{input}-deduplicated");
    let dead_letter = format!("{input}-dead-letter");

    // Kafka: embedded unless given.
    let mock;
    let bootstrap = match &args.kafka_hosts {
        Some(hosts) => {
            create_topics(hosts, &[&input, &output, &dead_letter], args.partitions).await?;
            hosts.clone()
        }
        None => {
            mock = MockCluster::new(1).map_err(|e| format!("mock Kafka cluster: {e}"))?;
            for topic in [&input, &output, &dead_letter] {
                mock.create_topic(topic, args.partitions, 1)
                    .map_err(|e| format!("create topic {topic}: {e}"))?;
            }
            mock.bootstrap_servers()
        }
    };

    let mut settings = vec![
        "deduplicator".to_string(),
        format!("--kafka-hosts={bootstrap}"),
        format!("--kafka-consumer-topic={input}"),
        format!("--kafka-consumer-group=quickstart-{stamp}"),
        format!("--output-topic={output}"),
        format!("--dead-letter-topic={dead_letter}"),
        format!("--store-path={}", work.join("store").display()),
        format!(
            "--local-checkpoint-dir={}",
            work.join("checkpoints").display()
        ),
        "--checkpoint-interval=3s".into(),
        format!(
            "--output-guarantee={}",
            clap::ValueEnum::to_possible_value(&args.output_guarantee)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default()
        ),
        "--pod-name=quickstart-0".into(),
        "--http-bind=127.0.0.1:0".into(),
    ];
    match &args.s3_bucket {
        Some(bucket) => {
            settings.push(format!("--s3-bucket={bucket}"));
            if let Some(endpoint) = &args.s3_endpoint {
                settings.push(format!("--s3-endpoint={endpoint}"));
            }
            if let Some(region) = &args.s3_region {
                settings.push(format!("--s3-region={region}"));
            }
        }
        None => settings.push(format!(
            "--checkpoint-remote-dir={}",
            work.join("remote").display()
        )),
    }
    let config = Config::try_parse_from(&settings).map_err(|e| e.to_string())?;
    let remote = config
        .remote
        .connect()
        .await
        .ok_or("no checkpoint remote")?;
    let key_prefix = config.remote.s3_key_prefix.clone();

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let dedup = tokio::spawn(crate::run_with_metrics(
        config,
        registry,
        Arc::clone(&metrics),
        async {
            let _ = stopped.await;
        },
    ));

    // Producer and verifier threads.
    let started = Instant::now();
    let produced = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Seen::default());
    let done_reading = Arc::new(AtomicBool::new(false));
    let mut producer = Some({
        let (bootstrap, input, metrics, produced) = (
            bootstrap.clone(),
            input.clone(),
            Arc::clone(&metrics),
            Arc::clone(&produced),
        );
        let args = args.clone();
        std::thread::spawn(move || produce(&args, &bootstrap, &input, &metrics, &produced))
    });
    let verifier = {
        let (bootstrap, seen, done) = (
            bootstrap.clone(),
            Arc::clone(&seen),
            Arc::clone(&done_reading),
        );
        let (output, dead_letter, partitions) =
            (output.clone(), dead_letter.clone(), args.partitions);
        std::thread::spawn(move || {
            verify(&bootstrap, &output, &dead_letter, partitions, &seen, &done)
        })
    };

    // Progress until everything produced is consumed and final, and read back.
    let mut last_print = Instant::now();
    let mut truth: Option<Truth> = None;
    let mut finished_at = None;
    let deadline_idle = Duration::from_secs(120);
    let mut last_change = (Instant::now(), 0u64);
    let mut first_consumed: Option<Duration> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(handle) = producer.take_if(|p| p.is_finished()) {
            truth = Some(handle.join().map_err(|_| "the producer thread failed")??);
        }
        let consumed = metrics.messages_in.get();
        if consumed > 0 {
            first_consumed.get_or_insert_with(|| started.elapsed());
        }
        let final_out = metrics.published.get() + metrics.dead_lettered.get();
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let seconds = started.elapsed().as_secs_f64();
            eprintln!(
                "[{seconds:6.1}s] produced {:>9} | consumed {:>9} ({:>7.0}/s) | unique {:>9} | duplicate {:>9} | malformed {:>6} | published+dead-lettered {:>9} | read back {:>9}",
                produced.load(Ordering::Relaxed),
                consumed,
                consumed as f64 / seconds,
                metrics.unique.get() + metrics.redelivery.get(),
                metrics.duplicate.get(),
                malformed_total(&metrics),
                final_out,
                seen.output.load(Ordering::Relaxed) + seen.dead_letter.load(Ordering::Relaxed),
            );
        }
        if consumed != last_change.1 {
            last_change = (Instant::now(), consumed);
        } else if last_change.0.elapsed() > deadline_idle {
            eprintln!("no progress for {deadline_idle:?}; stopping");
            break;
        }
        if let Some(truth) = &truth {
            let read_back =
                seen.output.load(Ordering::Relaxed) + seen.dead_letter.load(Ordering::Relaxed);
            if consumed >= truth.events
                && metrics.in_flight.get() == 0
                && read_back >= truth.unique + truth.malformed
            {
                finished_at.get_or_insert_with(|| started.elapsed());
                break;
            }
        }
    }
    let elapsed = finished_at.unwrap_or_else(|| started.elapsed());

    // A checkpoint of every partition taken after the last event.
    let uploads = metrics
        .checkpoint_uploads
        .get_or_create(&crate::metrics::ResultLabels { result: "success" })
        .clone();
    let before = uploads.get();
    let checkpoint_wait = Instant::now();
    while uploads.get() < before + args.partitions as u64
        && checkpoint_wait.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the verifier see anything extra (a copy published by mistake) before judging.
    tokio::time::sleep(Duration::from_secs(1)).await;
    done_reading.store(true, Ordering::Relaxed);
    let _ = verifier.join();
    let _ = stop.send(());
    match dedup.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => return Err(format!("deduplicator: {error}")),
        Err(error) => return Err(format!("deduplicator task: {error}")),
    }

    let truth = truth.unwrap_or_default();
    let (checkpoint_id, checkpoint_bytes, checkpoints) =
        newest_checkpoints(&remote, &key_prefix, &input, args.partitions).await;
    let rows = [
        ("events in", truth.events, metrics.messages_in.get()),
        ("unique", truth.unique, metrics.unique.get()),
        ("redelivered originals", 0, metrics.redelivery.get()),
        ("duplicate", truth.duplicates, metrics.duplicate.get()),
        ("malformed", truth.malformed, malformed_total(&metrics)),
        ("published to output", truth.unique, metrics.published.get()),
        (
            "in output topic",
            truth.unique,
            seen.output.load(Ordering::Relaxed),
        ),
        (
            "distinct keys in output",
            truth.unique,
            seen.output_distinct.load(Ordering::Relaxed),
        ),
        (
            "in dead-letter topic",
            truth.malformed,
            seen.dead_letter.load(Ordering::Relaxed),
        ),
    ];
    let mut ok = checkpoints == args.partitions as usize;
    let mut lines = Vec::new();
    for (name, expected, actual) in rows {
        ok &= expected == actual;
        lines.push((name.to_string(), expected.to_string(), actual.to_string()));
    }
    let steady = elapsed.saturating_sub(first_consumed.unwrap_or_default());
    lines.push((
        "throughput from the first consumed event (events/s)".into(),
        "—".into(),
        format!(
            "{:.0}",
            truth.events as f64 / steady.as_secs_f64().max(1e-3)
        ),
    ));
    lines.push((
        "elapsed, joining the group included".into(),
        "—".into(),
        format!("{:.1} s", elapsed.as_secs_f64()),
    ));
    lines.push((
        "remote checkpoints (partitions)".into(),
        args.partitions.to_string(),
        checkpoints.to_string(),
    ));
    if args.output_guarantee == crate::config::OutputGuarantee::ExactlyOnce {
        let transactions = |result| {
            metrics
                .transactions
                .get_or_create(&crate::metrics::ResultLabels { result })
                .get()
                .to_string()
        };
        lines.push((
            "transactions committed / aborted".into(),
            "—".into(),
            format!(
                "{} / {}",
                transactions("committed"),
                transactions("aborted")
            ),
        ));
    }
    lines.push(("newest checkpoint".into(), "—".into(), checkpoint_id));
    lines.push((
        "checkpoint size (all partitions)".into(),
        "—".into(),
        format!("{:.1} MB", checkpoint_bytes as f64 / 1e6),
    ));
    drop(temp);
    Ok(Report { truth, lines, ok })
}

fn malformed_total(metrics: &Metrics) -> u64 {
    dedup_core::EventError::KINDS
        .iter()
        .map(|reason| {
            metrics
                .malformed
                .get_or_create(&crate::metrics::MalformedLabels {
                    reason,
                    action: "dead_letter",
                })
                .get()
        })
        .sum()
}

async fn create_topics(hosts: &str, topics: &[&str], partitions: i32) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", hosts)
        .create()
        .map_err(|e| format!("Kafka admin client: {e}"))?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .map_err(|e| format!("create topics: {e}"))?;
    for result in results {
        result.map_err(|(topic, e)| format!("create topic {topic}: {e}"))?;
    }
    Ok(())
}

/// xorshift64*, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One generated event: its partition, message key and payload, and dedup key.
struct Generated {
    partition: i32,
    key: String,
    payload: Vec<u8>,
}

fn produce(
    args: &Args,
    bootstrap: &str,
    topic: &str,
    metrics: &Metrics,
    produced: &AtomicU64,
) -> Result<Truth, String> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .map_err(|e| format!("producer: {e}"))?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let events = [
        "$pageview",
        "$autocapture",
        "$identify",
        "signup",
        "purchase",
        "$pageleave",
    ];
    let mut recent: Vec<Vec<Generated>> = (0..args.partitions).map(|_| Vec::new()).collect();
    let mut truth = Truth {
        events: args.events,
        ..Truth::default()
    };
    let mut keys = HashSet::new();
    let backlog = BACKLOG_PER_PARTITION * args.partitions as u64;
    for i in 0..args.events {
        while i.saturating_sub(metrics.messages_in.get()) > backlog {
            producer.poll(Duration::from_millis(5));
        }
        let roll = rng.next() % 1000;
        let generated = if roll < u64::from(args.malformed_per_mille) {
            truth.malformed += 1;
            let partition = (rng.next() % args.partitions as u64) as i32;
            let payload = match i % 3 {
                0 => b"{not json".to_vec(),
                1 => format!("{{\"uuid\":\"m-{i}\",\"event\":\"$pageview\"}}").into_bytes(),
                _ => format!("{{\"distinct_id\":\"u\",\"token\":\"t\",\"event\":\"e\",\"timestamp\":\"yesterday-ish {i}\"}}").into_bytes(),
            };
            Generated {
                partition,
                key: format!("malformed-{i}"),
                payload,
            }
        } else {
            // A copy goes where its original went; a new event to its distinct_id's
            // partition (keyed by distinct_id, as PostHog's producers do), so that equal
            // keys always meet in one partition store.
            let copy_from = (rng.next() % args.partitions as u64) as usize;
            let pool = &recent[copy_from];
            if rng.next() % 100 < u64::from(args.duplicate_percent) && !pool.is_empty() {
                let partition = copy_from as i32;
                let original = &pool[(rng.next() as usize) % pool.len()];
                truth.duplicates += 1;
                Generated {
                    partition,
                    key: original.key.clone(),
                    payload: original.payload.clone(),
                }
            } else {
                let user = rng.next() % 200_000;
                let partition = (user % args.partitions as u64) as i32;
                let distinct_id = format!("user-{user}");
                let event = events[(rng.next() % events.len() as u64) as usize];
                let timestamp_ms = now_ms - 60_000 + (i as i64 % 60_000);
                let uuid = format!(
                    "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                    rng.next() as u32,
                    rng.next() as u16,
                    rng.next() & 0xfff,
                    rng.next() & 0xfff,
                    rng.next() & 0xffff_ffff_ffff
                );
                let browser = ["Chrome", "Firefox", "Safari"][(rng.next() % 3) as usize];
                let plan = ["free", "team", "enterprise"][(rng.next() % 3) as usize];
                let page = rng.next() % 500;
                let payload = serde_json::json!({
                    "uuid": uuid,
                    "distinct_id": distinct_id,
                    "token": "phc_quickstart",
                    "event": event,
                    "timestamp": chrono_like(timestamp_ms),
                    "properties": {
                        "$current_url": format!("https://example.com/page/{page}"),
                        "$browser": browser,
                        "$lib": "posthog-js",
                        "plan": plan,
                    },
                })
                .to_string()
                .into_bytes();
                // Same key fields → same dedup key, even in a fresh event (counted once).
                if keys.insert((timestamp_ms, distinct_id.clone(), event)) {
                    truth.unique += 1;
                } else {
                    truth.duplicates += 1;
                }
                let generated = Generated {
                    partition,
                    key: distinct_id,
                    payload,
                };
                let pool = &mut recent[partition as usize];
                if pool.len() < 10_000 {
                    pool.push(Generated {
                        partition,
                        key: generated.key.clone(),
                        payload: generated.payload.clone(),
                    });
                } else {
                    let slot = (rng.next() as usize) % pool.len();
                    pool[slot] = Generated {
                        partition,
                        key: generated.key.clone(),
                        payload: generated.payload.clone(),
                    };
                }
                generated
            }
        };
        let mut record = BaseRecord::<str, [u8]>::to(topic)
            .partition(generated.partition)
            .key(generated.key.as_str())
            .payload(generated.payload.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        produced.fetch_add(1, Ordering::Relaxed);
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| format!("flushing the producer: {e}"))?;
    Ok(truth)
}

/// RFC 3339 in UTC with milliseconds, as PostHog SDKs send it.
fn chrono_like(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn verify(
    bootstrap: &str,
    output: &str,
    dead_letter: &str,
    partitions: i32,
    seen: &Seen,
    done: &AtomicBool,
) {
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("quickstart-verifier-{output}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
    {
        Ok(consumer) => consumer,
        Err(error) => {
            eprintln!("verifier: {error}");
            return;
        }
    };
    let mut tpl = TopicPartitionList::new();
    for topic in [output, dead_letter] {
        for p in 0..partitions {
            let _ = tpl.add_partition_offset(topic, p, Offset::Beginning);
        }
    }
    if let Err(error) = consumer.assign(&tpl) {
        eprintln!("verifier: {error}");
        return;
    }
    let mut distinct = HashSet::new();
    while !done.load(Ordering::Relaxed) {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        if message.topic() == dead_letter {
            seen.dead_letter.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        seen.output.fetch_add(1, Ordering::Relaxed);
        let key = message
            .payload()
            .and_then(|p| dedup_core::event::stored_key(Some(p)).ok());
        if let Some(key) = key {
            if distinct.insert(key) {
                seen.output_distinct.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The newest remote checkpoint id, total bytes of each partition's newest checkpoint,
/// and how many partitions have one.
async fn newest_checkpoints(
    remote: &Remote,
    key_prefix: &str,
    topic: &str,
    partitions: i32,
) -> (String, u64, usize) {
    let mut newest = String::from("(none)");
    let mut bytes = 0;
    let mut count = 0;
    for partition in 0..partitions {
        if let Ok(Some(manifest)) =
            transfer::newest_manifest(remote, key_prefix, topic, partition).await
        {
            let manifest: CheckpointManifest = manifest;
            count += 1;
            bytes += manifest.size();
            if newest == "(none)" || manifest.checkpoint_id > newest {
                newest = manifest.checkpoint_id.clone();
            }
        }
    }
    (newest, bytes, count)
}
