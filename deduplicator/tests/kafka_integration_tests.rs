//! Kafka integration tests: the real `deduplicator` binary against the real Apache Kafka
//! broker of `KAFKA_TEST_BOOTSTRAP_SERVERS` (`scripts/start-test-services.sh`).
//!
//! Every wait is for a condition with a deadline, never a fixed sleep.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dedup_testkit::*;
use rdkafka::message::Headers;
use rdkafka::Message;

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
    dedup.wait_committed(events.len() as f64, WAIT);
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
    let copies = copies_of(&events[..500], "t4-copy");
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
    a.hand_over_to(&mut b, PARTITIONS, WAIT);

    // Second half: new events and copies of first-half events (caught by stores that
    // moved from a to b through the shared directory).
    kafka.produce(
        &input,
        &second.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    b.wait_committed(events.len() as f64, WAIT);
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

/// A partition that moves to a process with an empty store and no checkpoint remote (or
/// whose restore failed) rebuilds the keys of the last DEDUP_WINDOW by catch-up replay
/// before it publishes: copies of events published before the move are still dropped.
/// (Before: the new store started at the committed offset, and every copy passed.)
#[test]
fn a_partition_moved_to_an_empty_store_rebuilds_the_window_by_catch_up() {
    let kafka = TestKafka::start();
    let input = kafka.topic("in", PARTITIONS);
    let output = kafka.topic("out", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    // Event times of now, so that the window (1 h) holds them.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut events = generate(4_000, 0, PARTITIONS, 41, "mv");
    for e in &mut events {
        e.timestamp_ms += now_ms - 1_700_000_000_000 - 10 * 60_000;
    }
    let spec = |store: &str| {
        DedupSpec::new(&kafka, &input, Some(&output), &dir.path().join(store))
            .env("DEDUP_WINDOW", "1h")
    };
    kafka.produce(
        &input,
        &events.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    let mut first = spec("a").spawn(dir.path(), "a");
    first.wait_until("everything committed", WAIT, |d| {
        committed_to_end(d, PARTITIONS) && d.metric("dedup_committed_offset") >= 4_000.0
    });
    assert!(first.terminate().success(), "A leaves the group");

    // Every event again, as copies; the partitions' new owner has an empty store.
    let copies = copies_of(&events, "mv-again");
    kafka.produce(
        &input,
        &copies.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    let mut second = spec("b").spawn(dir.path(), "b");
    second.wait_until("the copies consumed", WAIT, |d| {
        d.metric("dedup_committed_offset") >= 8_000.0 && d.metric("dedup_in_flight_messages") == 0.0
    });
    assert_eq!(
        second.metric("dedup_published_total"),
        0.0,
        "a copy of an event published before the move passed"
    );
    assert_eq!(
        second.metric("dedup_catch_up_replays_total{kind=\"new_store\"}"),
        PARTITIONS as f64
    );
    assert_eq!(second.metric("dedup_catch_up_messages_total"), 4_000.0);
    assert_eq!(
        second.metric("dedup_events_total{outcome=\"duplicate\"}"),
        4_000.0
    );
    assert!(second.terminate().success());
    let all: Vec<GenEvent> = events.iter().chain(&copies).cloned().collect();
    let published = kafka.read_all(&output, PARTITIONS, 4_000, Duration::from_secs(2));
    assert_eq!(published.len(), 4_000);
    assert_eq!(verify_no_loss(&all, &published), 0);
}

/// A new group (or expired offsets) while the output refuses every message: the store
/// records keys and its next offset, nothing is published or committed, the store is
/// flushed, the process dies. Restarted, with no committed offset, it must not resume
/// at the store's next offset (the messages below it were never published).
#[test]
fn no_committed_offset_and_a_store_that_is_ahead_loses_no_unique_event() {
    let kafka = TestKafka::start();
    let input = kafka.topic("in", PARTITIONS);
    let output = kafka.topic("out", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let spec = DedupSpec::new(&kafka, &input, Some(&output), &dir.path().join("store"))
        .env("DEDUP_WINDOW", "0")
        .env("RETENTION_INTERVAL", "1s");
    let events = generate(600, 0, PARTITIONS, 43, "nc");
    let mut dedup = spec.spawn(dir.path(), "outage");
    dedup.wait_until("joined", WAIT, |d| {
        d.metric("dedup_assigned_partitions") >= 1.0
    });
    // An output outage: the topic is gone (the cluster does not create topics), so
    // every write fails and is retried, until the test creates it again.
    kafka.delete_topic(&output);
    kafka.produce(
        &input,
        &events.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    dedup.wait_until("consumed, publishing failing", WAIT, |d| {
        d.metric("dedup_messages_in_total") >= 600.0
    });
    assert_eq!(dedup.metric("dedup_published_total"), 0.0);
    // Two retention passes: the store's keys and next offset are flushed.
    std::thread::sleep(Duration::from_secs(3));
    dedup.kill9();
    assert_eq!(kafka.committed_total(&spec.group, &input, PARTITIONS), 0);

    kafka.create_topic_named(&output, PARTITIONS);
    let mut restarted = spec.spawn(dir.path(), "restarted");
    restarted.wait_until("everything published and committed", WAIT, |d| {
        d.metric("dedup_committed_offset") >= 600.0 && d.metric("dedup_in_flight_messages") == 0.0
    });
    assert!(restarted.terminate().success());
    let published = kafka.read_all(&output, PARTITIONS, 600, Duration::from_secs(2));
    assert_eq!(
        verify_no_loss(&events, &published),
        0,
        "each event published once: the failed publications are not in the output"
    );
}

fn event_at(partition: i32, uuid: &str, distinct_id: &str, timestamp_ms: i64) -> Produced {
    Produced {
        partition,
        key: Some(distinct_id.as_bytes().to_vec()),
        payload: Some(
            format!(
                r#"{{"uuid":"{uuid}","distinct_id":"{distinct_id}","token":"tok","event":"$pageview","timestamp":{timestamp_ms}}}"#
            )
            .into_bytes(),
        ),
    }
}

fn uuids(messages: &[rdkafka::message::OwnedMessage]) -> Vec<String> {
    let mut uuids: Vec<String> = messages
        .iter()
        .filter_map(|m| {
            let value: serde_json::Value = serde_json::from_slice(m.payload()?).ok()?;
            Some(value["uuid"].as_str()?.to_string())
        })
        .collect();
    uuids.sort();
    uuids
}

/// Both ends of the window. A timestamp more than MAX_EVENT_TIME_SKEW ahead (here
/// microseconds read as milliseconds) is not deduplicated: dead-lettered with its reason
/// and counted, so its key never sits in the store for ever. An event older than the
/// window is deduplicated against what the store still holds: its copy is dropped while
/// the key is there, and passes once a retention pass has evicted it (it is outside the
/// window), as docs/reliability.md states.
#[test]
fn timestamps_far_ahead_are_dead_lettered_and_old_events_are_kept_until_retention() {
    let kafka = TestKafka::start();
    let input = kafka.topic("in", 1);
    let output = kafka.topic("out", 1);
    let dlq = kafka.topic("dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    let hour = 3_600_000;
    // No recent-keys cache: it may keep an evicted key a little longer (which only
    // lengthens deduplication), and this test shows the store's own bound.
    let mut spec = DedupSpec::new(&kafka, &input, Some(&output), &dir.path().join("store"))
        .env("DEDUP_WINDOW", "1h")
        .env("MAX_EVENT_TIME_SKEW", "1h")
        .env("RETENTION_INTERVAL", "2s")
        .env("STORE_RECENT_KEYS", "0");
    spec.dead_letter = Some(dlq.clone());
    kafka.produce(
        &input,
        &[
            event_at(0, "micros", "a", now * 1_000),
            event_at(0, "micros-copy", "a", now * 1_000),
            event_at(0, "soon", "b", now + hour / 2),
            event_at(0, "soon-copy", "b", now + hour / 2),
            event_at(0, "old", "c", now - 2 * hour),
            event_at(0, "old-copy", "c", now - 2 * hour),
        ],
    );
    let mut dedup = spec.spawn(dir.path(), "dedup");
    dedup.wait_until("all six decided", WAIT, |d| {
        d.metric("dedup_committed_offset") >= 6.0
    });
    assert_eq!(
        dedup
            .metric("dedup_malformed_total{reason=\"timestamp_in_future\",action=\"dead_letter\"}"),
        2.0
    );
    assert_eq!(dedup.metric("dedup_dead_lettered_total"), 2.0);
    assert_eq!(
        dedup.metric("dedup_events_total{outcome=\"duplicate\"}"),
        2.0
    );
    // The old key leaves the store at the next retention pass; a copy after it passes.
    dedup.wait_until("the old key evicted", WAIT, |d| {
        d.metric("dedup_evicted_keys_total") >= 1.0
    });
    kafka.produce(&input, &[event_at(0, "old-copy-late", "c", now - 2 * hour)]);
    dedup.wait_until("the late copy decided", WAIT, |d| {
        d.metric("dedup_committed_offset") >= 7.0
    });
    assert!(dedup.terminate().success());
    let published = kafka.read_all(&output, 1, 3, Duration::from_secs(2));
    assert_eq!(uuids(&published), ["old", "old-copy-late", "soon"]);
    let dead = kafka.read_all(&dlq, 1, 2, Duration::from_secs(2));
    assert_eq!(uuids(&dead), ["micros", "micros-copy"]);
    for message in &dead {
        let reason = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "dedup-error"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        assert_eq!(reason.as_deref(), Some("timestamp_in_future"));
    }
}

/// A unique event sent to the dead-letter topic because publishing it failed was never
/// output: replaying the dead-letter topic into the input publishes it, once.
#[test]
fn events_dead_lettered_after_failed_publishing_can_be_replayed() {
    let kafka = TestKafka::start();
    let input = kafka.topic("in", 1);
    // The broker refuses every event until the test raises the limit.
    let output = kafka.topic_with_config("out", 1, &[("max.message.bytes", "100")]);
    let dlq = kafka.topic("dlq", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut spec = DedupSpec::new(&kafka, &input, Some(&output), &dir.path().join("store"))
        .env("DEDUP_WINDOW", "0")
        .env("PUBLISH_MAX_ATTEMPTS", "2");
    spec.dead_letter = Some(dlq.clone());
    let events: Vec<Produced> = (0..20)
        .map(|i| {
            event_at(
                0,
                &format!("e{i:02}"),
                &format!("user-{i}"),
                1_700_000_000_000 + i,
            )
        })
        .collect();
    kafka.produce(&input, &events);
    let mut dedup = spec.spawn(dir.path(), "dedup");
    dedup.wait_until("every event dead-lettered", WAIT, |d| {
        d.metric("dedup_dead_lettered_total") >= 20.0 && d.metric("dedup_committed_offset") >= 20.0
    });
    assert_eq!(dedup.metric("dedup_published_total"), 0.0);

    kafka.alter_topic_config(&output, &[("max.message.bytes", "1000000")]);
    let dead = kafka.read_all(&dlq, 1, 20, Duration::from_secs(1));
    assert_eq!(dead.len(), 20);
    let replay: Vec<Produced> = dead
        .iter()
        .map(|m| Produced {
            partition: 0,
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
        })
        .collect();
    kafka.produce(&input, &replay);
    dedup.wait_until("the replay published", WAIT, |d| {
        d.metric("dedup_committed_offset") >= 40.0 && d.metric("dedup_in_flight_messages") == 0.0
    });
    assert_eq!(
        dedup.metric("dedup_events_total{outcome=\"duplicate\"}"),
        0.0,
        "a replayed event was dropped as a duplicate of itself"
    );
    assert!(dedup.terminate().success());
    let published = kafka.read_all(&output, 1, 20, Duration::from_secs(2));
    let expected: Vec<String> = (0..20).map(|i| format!("e{i:02}")).collect();
    assert_eq!(uuids(&published), expected, "each replayed event once");
}

/// A message no broker will ever take (1.5 MB, above the producer's `message.max.bytes`)
/// among normal ones, without a dead-letter topic: it is skipped after its attempts,
/// logged and counted with its reason, and the partition's commits move past it (before:
/// retried for ever, commits frozen, everything after it republished at each restart).
#[test]
fn a_message_that_can_never_be_published_is_skipped_and_commits_advance() {
    let kafka = TestKafka::start();
    for guarantee in ["at-least-once", "exactly-once"] {
        let input = kafka.topic("in", 1);
        let output = kafka.topic("out", 1);
        let dir = tempfile::tempdir().unwrap();
        let spec = DedupSpec::new(&kafka, &input, Some(&output), &dir.path().join("store"))
            .env("DEDUP_WINDOW", "0")
            .env("OUTPUT_GUARANTEE", guarantee)
            .env("PUBLISH_MAX_ATTEMPTS", "3")
            .env("KAFKA_PRODUCER_PROPERTIES", "message.max.bytes=1000000");
        let mut messages: Vec<Produced> = (0..10)
            .map(|i| {
                event_at(
                    0,
                    &format!("e{i:02}"),
                    &format!("user-{i}"),
                    1_700_000_000_000 + i,
                )
            })
            .collect();
        let huge = format!(
            r#"{{"uuid":"huge","distinct_id":"big","token":"tok","event":"$pageview","timestamp":1700000000000,"properties":{{"blob":"{}"}}}}"#,
            "x".repeat(1_500_000)
        );
        messages.insert(
            5,
            Produced {
                partition: 0,
                key: Some(b"big".to_vec()),
                payload: Some(huge.into_bytes()),
            },
        );
        kafka.produce(&input, &messages);
        let mut dedup = spec.spawn(dir.path(), guarantee);
        dedup.wait_until("every offset committed", WAIT, |d| {
            d.metric("dedup_committed_offset") >= 11.0
                && d.metric("dedup_in_flight_messages") == 0.0
        });
        assert_eq!(
            dedup.metric("dedup_publish_skipped_total{reason=\"message_too_large\"}"),
            1.0,
            "{guarantee}"
        );
        assert_eq!(dedup.metric("dedup_published_total"), 10.0, "{guarantee}");
        let log = std::fs::read_to_string(&dedup.log).unwrap_or_default();
        assert!(
            log.contains("the message can never be published; skipped"),
            "{guarantee}: {log}"
        );
        assert!(dedup.terminate().success());
        let published = kafka.read_all(&output, 1, 10, Duration::from_secs(2));
        assert_eq!(published.len(), 10, "{guarantee}");
    }
}

/// A user's mistake: the output or dead-letter topic does not exist (and the cluster does
/// not create topics). Start-up fails at once with status 1 and one error naming the
/// setting and the topic, instead of consuming and retrying for ever without a word.
#[test]
fn a_missing_output_or_dead_letter_topic_is_named_at_start() {
    let kafka = TestKafka::start();
    let input = kafka.topic("in", 1);
    let output = kafka.topic("out", 1);
    let dir = tempfile::tempdir().unwrap();
    // Events waiting on the input: a process that started consuming would commit some.
    kafka.produce(
        &input,
        &generate(200, 10, 1, 31, "mt")
            .iter()
            .map(GenEvent::produced)
            .collect::<Vec<_>>(),
    );
    for (setting, missing_output) in [("OUTPUT_TOPIC", true), ("DEAD_LETTER_TOPIC", false)] {
        let missing = format!("no-such-topic-{}", std::process::id());
        let mut spec = DedupSpec::new(
            &kafka,
            &input,
            Some(if missing_output { &missing } else { &output }),
            &dir.path().join(setting),
        );
        if !missing_output {
            spec.dead_letter = Some(missing.clone());
        }
        let log = spec.spawn(dir.path(), setting).expect_start_failure();
        assert!(
            log.contains(&format!(
                "{setting} names topic `{missing}`, which does not exist"
            )),
            "{log}"
        );
        assert_eq!(
            kafka.committed_total(&spec.group, &input, 1),
            0,
            "nothing consumed"
        );
    }
}
