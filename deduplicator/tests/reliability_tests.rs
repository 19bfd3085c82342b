//! Reliability under faults, driving the real binary as a separate process against the
//! mock Kafka cluster (or `KAFKA_TEST_BOOTSTRAP_SERVERS`) and moto (`support::test_s3`).
//!
//! Short versions run in CI; `DEDUP_RELIABILITY_CYCLES=20` runs the long crash loop.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use support::*;

const PARTITIONS: i32 = 4;
const WAIT: Duration = Duration::from_secs(120);
const IN_FLIGHT: usize = 200;

/// Crash loop: `kill -9` at pseudo-random moments (mid-batch, mid-checkpoint,
/// mid-upload, mid-rebalance: the process checkpoints and uploads every second) while a
/// producer streams events with known duplicates. Afterwards every unique event is in
/// the output, and every extra copy is a redelivered original. Per crash at most the
/// originals whose offsets had not reached Kafka are republished: the in-flight bound
/// plus what was consumed within one auto-commit interval (1 s).
#[test]
fn a_crash_loop_loses_no_unique_event_and_republishes_only_originals() {
    let Some(s3) = test_s3() else { return };
    assert!(s3.create_bucket());
    let cycles: u64 = std::env::var("DEDUP_RELIABILITY_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let kafka = TestKafka::start();
    let input = kafka.topic("in", PARTITIONS);
    let output = kafka.topic("out", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let spec = DedupSpec {
        pod_name: Some("dedup-0".into()),
        ..DedupSpec::new(&kafka, &input, Some(&output), &dir.path().join("store"))
    }
    .with_s3(&s3)
    .env("CHECKPOINT_INTERVAL", "1s")
    .env("MAX_IN_FLIGHT_MESSAGES", &IN_FLIGHT.to_string())
    .env("DEDUP_WINDOW", "0");
    let events = generate(3_000 * cycles as usize, 25, PARTITIONS, 31, "c1");

    // The producer streams over about the whole crash loop.
    let producer = {
        let (bootstrap, input) = (kafka.bootstrap.clone(), input.clone());
        let messages: Vec<Produced> = events.iter().map(GenEvent::produced).collect();
        let chunk = (messages.len() / (cycles as usize * 10)).max(1);
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            for part in messages.chunks(chunk) {
                produce_to(&bootstrap, &input, part);
                std::thread::sleep(Duration::from_millis(150));
            }
            started.elapsed()
        })
    };

    let mut rng = 0x0005_DEEC_E66D_u64;
    let mut crashes = 0;
    for cycle in 0..cycles {
        let mut dedup = spec.spawn(dir.path(), &format!("cycle-{cycle}"));
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let lifetime = Duration::from_millis(800 + rng % 2_500);
        // Let it get somewhere first (a process killed before joining the group tests
        // nothing), then kill it at a random moment.
        dedup.wait_until("joined", WAIT, |d| {
            d.metric("dedup_assigned_partitions") >= 1.0
        });
        std::thread::sleep(lifetime);
        dedup.kill9();
        crashes += 1;
    }
    let producing = producer.join().expect("producer");
    // Events arriving within one auto-commit interval, at the producer's mean rate.
    let per_commit_interval = (events.len() as f64 / producing.as_secs_f64()).ceil() as usize;
    let bound = crashes * (IN_FLIGHT + per_commit_interval);

    let mut last = spec.spawn(dir.path(), "final");
    last.wait_until("everything committed", WAIT, |d| {
        d.metric("dedup_committed_offset") >= events.len() as f64 - 0.5
            && d.metric("dedup_in_flight_messages") == 0.0
    });
    assert!(last.terminate().success());

    let mut originals: HashMap<String, String> = HashMap::new();
    for e in &events {
        originals
            .entry(e.dedup_key())
            .or_insert_with(|| e.uuid.clone());
    }
    let published = kafka.read_all(&output, PARTITIONS, originals.len(), Duration::from_secs(3));
    let mut seen: HashMap<String, usize> = HashMap::new();
    for message in &published {
        let p = parse_published(message).expect("a generated event");
        assert_eq!(
            originals.get(&p.dedup_key),
            Some(&p.uuid),
            "a copy, not the original, of {} was published",
            p.dedup_key
        );
        *seen.entry(p.dedup_key).or_default() += 1;
    }
    let lost = originals.len() - seen.len();
    let republished: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "crash loop: {} events sent, {} unique in truth, {} unique in output, {} republished originals, {} crashes survived (bound {bound}: (in-flight {IN_FLIGHT} + {per_commit_interval} per commit interval) per crash)",
        events.len(),
        originals.len(),
        seen.len(),
        republished,
        crashes,
    );
    assert_eq!(lost, 0, "unique events lost");
    assert!(
        republished <= bound,
        "{republished} republished originals exceed {bound}"
    );
}
