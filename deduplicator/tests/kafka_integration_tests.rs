//! Kafka integration tests: the real `deduplicator` binary against the real Apache Kafka
//! broker of `KAFKA_TEST_BOOTSTRAP_SERVERS` (`scripts/start-test-services.sh`).
//!
//! Every wait is for a condition with a deadline, never a fixed sleep.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::message::Headers;
use rdkafka::Message;
use support::*;

const PARTITIONS: i32 = 4;
const WAIT: Duration = Duration::from_secs(90);

#[test]
fn ten_thousand_events_with_duplicates_publish_each_unique_once_in_order() {
    let kafka = TestKafka::start();
    let input = kafka.topic("in", PARTITIONS);
    let output = kafka.topic("out", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let events = generate(10_000, 30, PARTITIONS, 1, "t1");
    let uniques = unique_keys(&events).len();
    let copies = events.len() - uniques;
    assert!(copies > 2_000, "generator made {copies} copies");

    kafka.produce(
        &input,
        &events.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    let mut dedup = DedupSpec::new(&kafka, &input, Some(&output), &dir.path().join("store"))
        .spawn(dir.path(), "dedup");
    dedup.wait_until("all events published", WAIT, |d| {
        d.metric("dedup_published_total") >= uniques as f64
            && d.metric("dedup_messages_in_total") >= events.len() as f64
    });
    assert_eq!(
        dedup.metric("dedup_events_total{outcome=\"unique\"}"),
        uniques as f64
    );
    assert_eq!(
        dedup.metric("dedup_events_total{outcome=\"duplicate\"}"),
        copies as f64
    );
    assert_eq!(dedup.metric("dedup_malformed_total"), 0.0);
    assert!(dedup.terminate().success());

    let published = kafka.read_all(&output, PARTITIONS, uniques, Duration::from_secs(2));
    assert_eq!(published.len(), uniques, "each unique event exactly once");
    assert_eq!(verify_no_loss(&events, &published), 0);

    // Per input partition, output follows input order (within each output partition,
    // which is where Kafka defines order).
    let mut last: HashMap<(i32, i64), u64> = HashMap::new();
    for message in &published {
        let p = parse_published(message).unwrap();
        let previous = last.insert((p.out_partition, p.src_partition), p.seq);
        assert!(
            previous.is_none_or(|prev| prev < p.seq),
            "out of order: {previous:?} then {}",
            p.seq
        );
    }
}

#[test]
fn restart_with_the_same_store_loses_nothing() {
    let kafka = TestKafka::start();
    let input = kafka.topic("in", PARTITIONS);
    let output = kafka.topic("out", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let spec = DedupSpec::new(&kafka, &input, Some(&output), &dir.path().join("store"));
    let events = generate(6_000, 25, PARTITIONS, 2, "t2");
    let (first, second) = events.split_at(3_000);

    kafka.produce(
        &input,
        &first.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    let mut dedup = spec.spawn(dir.path(), "first");
    dedup.wait_until("some progress", WAIT, |d| {
        d.metric("dedup_messages_in_total") >= 1_000.0
    });
    assert!(dedup.terminate().success(), "clean exit on SIGTERM");

    let mut dedup = spec.spawn(dir.path(), "second");
    kafka.produce(
        &input,
        &second.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    let uniques = unique_keys(&events).len();
    dedup.wait_until("the rest consumed", WAIT, |d| {
        let out = kafka_out_count(d);
        out >= 1.0
            && d.metric("dedup_in_flight_messages") == 0.0
            && d.metric("dedup_committed_offset") >= 6_000.0 - 0.5
    });
    assert!(dedup.terminate().success());
    let published = kafka.read_all(&output, PARTITIONS, uniques, Duration::from_secs(2));
    let republished = verify_no_loss(&events, &published);
    // A clean stop commits everything it published: nothing is published twice.
    assert_eq!(republished, 0);
}

/// Every partition reports a consumer lag, computed from the committed offset, of zero.
fn committed_to_end(d: &Dedup, partitions: i32) -> bool {
    let Some(metrics) = d.metrics() else {
        return false;
    };
    let lags: Vec<f64> = metrics
        .lines()
        .filter(|l| l.starts_with("dedup_consumer_lag{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    lags.len() == partitions as usize && lags.iter().all(|lag| *lag == 0.0)
}

fn kafka_out_count(d: &Dedup) -> f64 {
    d.metric("dedup_published_total")
}

#[test]
fn kill_9_mid_stream_then_restart_loses_no_unique_event() {
    let kafka = TestKafka::start();
    let input = kafka.topic("in", PARTITIONS);
    let output = kafka.topic("out", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let spec = DedupSpec::new(&kafka, &input, Some(&output), &dir.path().join("store"));
    let events = generate(8_000, 20, PARTITIONS, 3, "t3");
    kafka.produce(
        &input,
        &events.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );

    let mut dedup = spec.spawn(dir.path(), "first");
    dedup.wait_until("mid-stream", WAIT, |d| {
        d.metric("dedup_messages_in_total") >= 2_000.0
    });
    dedup.kill9();

    let mut dedup = spec.spawn(dir.path(), "second");
    dedup.wait_until("everything committed", WAIT, |d| {
        d.metric("dedup_committed_offset") >= events.len() as f64 - 0.5
            && d.metric("dedup_in_flight_messages") == 0.0
    });
    assert!(dedup.terminate().success());
    let uniques = unique_keys(&events).len();
    let published = kafka.read_all(&output, PARTITIONS, uniques, Duration::from_secs(2));
    let republished = verify_no_loss(&events, &published);
    eprintln!(
        "kill -9: {} unique, {} redelivered originals",
        uniques, republished
    );
}

#[test]
fn catch_up_replays_the_gap_without_publishing() {
    let kafka = TestKafka::start();
    let input = kafka.topic("in", PARTITIONS);
    let output = kafka.topic("out", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    // No WAL and no periodic flush: a kill -9 loses every key since the store opened,
    // while the offsets were committed. The store is then behind the committed offset.
    let spec = DedupSpec::new(&kafka, &input, Some(&output), &dir.path().join("store"))
        .env("RETENTION_INTERVAL", "0");
    let events = generate(4_000, 0, PARTITIONS, 4, "t4");
    kafka.produce(
        &input,
        &events.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );

    let mut dedup = spec.spawn(dir.path(), "first");
    dedup.wait_until("all published", WAIT, |d| {
        d.metric("dedup_published_total") >= 4_000.0
    });
    // Wait until the commits have reached the group coordinator: librdkafka's lag
    // statistic is computed from the committed offset.
    dedup.wait_until("offsets committed to the end", WAIT, |d| {
        committed_to_end(d, PARTITIONS)
    });
    dedup.kill9();

    let mut dedup = spec.spawn(dir.path(), "second");
    dedup.wait_until("catch-up replay", WAIT, |d| {
        d.metric("dedup_catch_up_messages_total") >= 4_000.0
    });
    // Copies of the gap's events (new uuids) must now be known duplicates.
    let copies: Vec<GenEvent> = events
        .iter()
        .take(500)
        .enumerate()
        .map(|(i, e)| GenEvent {
            uuid: format!("t4-copy-{i}"),
            is_copy: true,
            ..e.clone()
        })
        .collect();
    kafka.produce(
        &input,
        &copies.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    dedup.wait_until("copies consumed", WAIT, |d| {
        d.metric("dedup_events_total{outcome=\"duplicate\"}") >= 500.0
    });
    assert_eq!(
        dedup.metric("dedup_published_total"),
        0.0,
        "nothing from the gap is republished"
    );
    assert!(dedup.terminate().success());

    let all: Vec<GenEvent> = events.iter().chain(&copies).cloned().collect();
    let published = kafka.read_all(&output, PARTITIONS, 4_000, Duration::from_secs(2));
    assert_eq!(published.len(), 4_000);
    assert_eq!(verify_no_loss(&all, &published), 0);
}

#[test]
fn two_processes_sharing_a_store_directory_hand_partitions_over() {
    let kafka = TestKafka::start();
    let input = kafka.topic("in", PARTITIONS);
    let output = kafka.topic("out", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let spec = DedupSpec::new(&kafka, &input, Some(&output), &dir.path().join("store"));
    let events = generate(6_000, 20, PARTITIONS, 5, "t5");
    let (first, second) = events.split_at(3_000);

    let mut a = DedupSpec {
        pod_name: Some("dedup-a".into()),
        ..spec.clone()
    }
    .spawn(dir.path(), "a");
    kafka.produce(
        &input,
        &first.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    a.wait_until("first half consumed", WAIT, |d| {
        d.metric("dedup_messages_in_total") >= 3_000.0
    });

    let mut b = DedupSpec {
        pod_name: Some("dedup-b".into()),
        ..spec.clone()
    }
    .spawn(dir.path(), "b");
    b.wait_until("b owns partitions", WAIT, |d| {
        d.metric("dedup_assigned_partitions") >= 1.0
    });
    a.wait_until("a gave some up", WAIT, |d| {
        d.metric("dedup_assigned_partitions") < PARTITIONS as f64
    });
    assert!(a.terminate().success());
    b.wait_until("b owns everything", WAIT, |d| {
        d.metric("dedup_assigned_partitions") >= PARTITIONS as f64
    });

    // Second half: new events and copies of first-half events (caught by stores that
    // moved from a to b through the shared directory).
    kafka.produce(
        &input,
        &second.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    b.wait_until("everything committed", WAIT, |d| {
        d.metric("dedup_committed_offset") >= events.len() as f64 - 0.5
            && d.metric("dedup_in_flight_messages") == 0.0
    });
    assert!(b.terminate().success());

    let uniques = unique_keys(&events).len();
    let published = kafka.read_all(&output, PARTITIONS, uniques, Duration::from_secs(2));
    let republished = verify_no_loss(&events, &published);
    eprintln!("handover: {uniques} unique, {republished} redelivered originals");
}

#[test]
fn malformed_messages_go_to_the_dead_letter_topic_or_pass_through() {
    let kafka = TestKafka::start();
    let garbage: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let bad_payloads: Vec<Option<Vec<u8>>> = vec![
        Some(b"not json at all".to_vec()),
        Some(br#"{"distinct_id":"d","token":"t","timestamp":1}"#.to_vec()),
        Some(br#"{"distinct_id":"d","token":5,"event":"e","timestamp":1}"#.to_vec()),
        Some(br#"{"distinct_id":"d","token":"t","event":"e","timestamp":"soon"}"#.to_vec()),
        Some(b"[1,2,3]".to_vec()),
        Some(b"\xff\xfe\x00garbage".to_vec()),
        Some(garbage),
        None,
        // Nesting far deeper than any parser's recursion limit. (Deep nesting inside
        // `properties` of an otherwise good event is fine: the parser skips it without
        // recursing; see dedup-core's event tests.)
        Some("[".repeat(100_000).into_bytes()),
        // Numbers no integer holds.
        Some(br#"{"distinct_id":"d","token":"t","event":"e","timestamp":1e400}"#.to_vec()),
        Some(
            br#"{"distinct_id":"d","token":"t","event":"e","timestamp":123456789012345678901234567890}"#
                .to_vec(),
        ),
        // The same key twice: which one counts is ambiguous, so neither does.
        Some(br#"{"distinct_id":"a","distinct_id":"b","token":"t","event":"e","timestamp":1}"#.to_vec()),
    ];
    for dead_letter in [true, false] {
        let input = kafka.topic("in", 1);
        let output = kafka.topic("out", 1);
        let dlq = kafka.topic("dlq", 1);
        let dir = tempfile::tempdir().unwrap();
        let good = generate(50, 0, 1, 6, "t6");
        let mut messages: Vec<Produced> = good.iter().map(GenEvent::produced).collect();
        for (i, payload) in bad_payloads.iter().enumerate() {
            messages.insert(
                i * 5,
                Produced {
                    partition: 0,
                    key: Some(b"bad".to_vec()),
                    payload: payload.clone(),
                },
            );
        }
        kafka.produce(&input, &messages);

        let mut spec = DedupSpec::new(&kafka, &input, Some(&output), &dir.path().join("store"));
        if dead_letter {
            spec.dead_letter = Some(dlq.clone());
        }
        let mut dedup = spec.spawn(dir.path(), "dedup");
        let total = messages.len() as f64;
        dedup.wait_until("all consumed", WAIT, |d| {
            d.metric("dedup_committed_offset") >= total - 0.5
                && d.metric("dedup_in_flight_messages") == 0.0
        });
        let action = if dead_letter {
            "dead_letter"
        } else {
            "pass_through"
        };
        let malformed = dedup.metric("dedup_malformed_total{reason");
        assert_eq!(malformed, bad_payloads.len() as f64);
        let metrics = dedup.metrics().unwrap();
        assert!(
            metrics.contains(&format!("action=\"{action}\"")),
            "{metrics}"
        );
        assert_eq!(dedup.metric("dedup_events_total{outcome=\"unique\"}"), 50.0);
        assert!(
            dedup.terminate().success(),
            "the consumer kept running and stopped cleanly"
        );

        if dead_letter {
            let routed = kafka.read_all(&dlq, 1, bad_payloads.len(), Duration::from_secs(1));
            assert_eq!(routed.len(), bad_payloads.len());
            let payloads: HashSet<Option<Vec<u8>>> = routed
                .iter()
                .map(|m| m.payload().map(<[u8]>::to_vec))
                .collect();
            for payload in &bad_payloads {
                assert!(payloads.contains(payload), "dead-lettered unchanged");
            }
            for message in &routed {
                let headers = message.headers().expect("dead-letter headers");
                assert!(headers.iter().any(|h| h.key == "dedup-error"));
            }
            let out = kafka.read_all(&output, 1, 50, Duration::from_secs(1));
            assert_eq!(out.len(), 50, "only well-formed events are published");
        } else {
            let out = kafka.read_all(&output, 1, 50 + bad_payloads.len(), Duration::from_secs(1));
            assert_eq!(
                out.len(),
                50 + bad_payloads.len(),
                "malformed messages passed through"
            );
            let payloads: HashSet<Option<Vec<u8>>> = out
                .iter()
                .map(|m| m.payload().map(<[u8]>::to_vec))
                .collect();
            for payload in &bad_payloads {
                assert!(payloads.contains(payload), "passed through unchanged");
            }
        }
    }
}

#[test]
fn without_output_topic_it_counts_only() {
    let kafka = TestKafka::start();
    let input = kafka.topic("in", 2);
    let dir = tempfile::tempdir().unwrap();
    let events = generate(1_000, 40, 2, 7, "t7");
    kafka.produce(
        &input,
        &events.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    let mut dedup =
        DedupSpec::new(&kafka, &input, None, &dir.path().join("store")).spawn(dir.path(), "dedup");
    let uniques = unique_keys(&events).len() as f64;
    dedup.wait_until("all counted", WAIT, |d| {
        d.metric("dedup_messages_in_total") >= 1_000.0
    });
    dedup.wait_until("offsets stored", WAIT, |d| {
        d.metric("dedup_committed_offset") >= 1_000.0 - 0.5
    });
    assert_eq!(
        dedup.metric("dedup_events_total{outcome=\"unique\"}"),
        uniques
    );
    assert_eq!(
        dedup.metric("dedup_events_total{outcome=\"duplicate\"}"),
        1_000.0 - uniques
    );
    assert_eq!(dedup.metric("dedup_published_total"), 0.0);
    assert!(dedup.terminate().success());
}

#[test]
fn an_in_flight_bound_below_the_partition_count_does_not_starve_busy_partitions() {
    // Idle partitions must not hold in-flight room while they wait for messages.
    let kafka = TestKafka::start();
    let input = kafka.topic("in", 8);
    let output = kafka.topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<GenEvent> = generate(500, 10, 1, 8, "t8")
        .into_iter()
        .map(|e| GenEvent { partition: 3, ..e })
        .collect();
    kafka.produce(
        &input,
        &events.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    let mut dedup = DedupSpec::new(&kafka, &input, Some(&output), &dir.path().join("store"))
        .env("MAX_IN_FLIGHT_MESSAGES", "2")
        .spawn(dir.path(), "dedup");
    let uniques = unique_keys(&events).len();
    dedup.wait_until("all published through a bound of 2", WAIT, |d| {
        d.metric("dedup_published_total") >= uniques as f64
            && d.metric("dedup_committed_offset") >= 500.0 - 0.5
    });
    assert!(dedup.terminate().success());
    let published = kafka.read_all(&output, 1, uniques, Duration::from_secs(1));
    assert_eq!(published.len(), uniques);
    assert_eq!(verify_no_loss(&events, &published), 0);
}
