//! Reliability under faults, driving the real binary as a separate process against the
//! real Kafka broker (`KAFKA_TEST_BOOTSTRAP_SERVERS`) and moto (`dedup_testkit::test_s3`).
//!
//! Short versions run in CI; `DEDUP_RELIABILITY_CYCLES=20` runs the long crash loop.

use std::collections::HashMap;
use std::time::Duration;

use dedup_testkit::*;

const PARTITIONS: i32 = 4;
const WAIT: Duration = Duration::from_secs(120);
const IN_FLIGHT: usize = 200;

/// Crash loop: `kill -9` at pseudo-random moments (mid-batch, mid-checkpoint,
/// mid-upload, mid-rebalance: the process checkpoints and uploads every second) while a
/// producer streams events with known duplicates. Afterwards every unique event is in
/// the output, and every extra copy is a redelivered original. Per crash at most the
/// originals whose offsets had not reached Kafka are republished: the in-flight bound
/// plus what was consumed within one COMMIT_INTERVAL (1 s).
#[test]
fn a_crash_loop_loses_no_unique_event_and_republishes_only_originals() {
    let Some(s3) = test_s3() else { return };
    assert!(s3.create_bucket());
    let cycles = env_number("DEDUP_RELIABILITY_CYCLES", 6);
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
    let producer = stream_in_background(
        &kafka.bootstrap,
        &input,
        &events,
        cycles as usize * 10,
        Duration::from_millis(150),
    );
    // A restarted process consumes the backlog of its downtime in a burst, so what one
    // COMMIT_INTERVAL (1 s) holds is measured from the process, not from the producer.
    let crashes = crash_loop(cycles, 0x0005_DEEC_E66D, Duration::from_secs(1), |cycle| {
        spec.spawn(dir.path(), &format!("cycle-{cycle}"))
    });
    producer.join().expect("producer");
    let bound = crashes.bound(IN_FLIGHT);

    let mut last = spec.spawn(dir.path(), "final");
    last.wait_committed(events.len() as f64, WAIT);
    assert!(last.terminate().success());

    let uniques = unique_keys(&events).len();
    let published = kafka.read_all(&output, PARTITIONS, uniques, Duration::from_secs(3));
    let check = check_output(&events, &published);
    let republished = check.republished;
    eprintln!(
        "crash loop: {} events sent, {} unique in truth, {} unique in output, {} republished originals, {} crashes survived (bound {bound}: per crash in-flight {IN_FLIGHT} + consumed within one commit interval {:?})",
        events.len(),
        check.unique_in_truth,
        check.unique_in_output,
        republished,
        crashes.crashes,
        crashes.consumed_per_window,
    );
    assert_eq!(
        check.unique_in_output, check.unique_in_truth,
        "unique events lost"
    );
    assert!(
        republished <= bound,
        "{republished} republished originals exceed {bound}"
    );
}

/// The manifests of a partition, oldest first, parsed.
fn manifests(s3: &TestS3, topic: &str, partition: i32) -> Vec<(String, serde_json::Value)> {
    let mut keys = s3.keys(&format!(
        "deduplication-checkpoints/{topic}/{partition}/manifests/"
    ));
    keys.sort();
    keys.into_iter()
        .filter_map(|k| {
            let body = s3.get_bytes(&k)?;
            Some((k, serde_json::from_slice(&body).ok()?))
        })
        .collect()
}

/// Remote keys of SST files the newest manifest references and the oldest does not
/// (written after the first wave; damaging one spoils every checkpoint since).
fn files_newer_than_the_oldest(s3: &TestS3, topic: &str, partition: i32) -> Vec<String> {
    let all = manifests(s3, topic, partition);
    let files = |m: &serde_json::Value| -> Vec<String> {
        m["files"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|f| f["remote_key"].as_str().map(str::to_string))
            .collect()
    };
    let oldest: std::collections::HashSet<String> = files(&all.first().expect("manifests").1)
        .into_iter()
        .collect();
    files(&all.last().expect("manifests").1)
        .into_iter()
        .filter(|k| k.ends_with(".sst") && !oldest.contains(k))
        .map(|k| format!("deduplication-checkpoints/{topic}/{partition}/{k}"))
        .collect()
}

/// Checkpoint damage, one kind per partition, found by a new owner restoring on
/// assignment: each is detected, the next older checkpoint is used, and it is counted.
/// The restored state (plus catch-up) still drops every copy of an earlier event.
#[test]
fn damaged_checkpoints_are_detected_and_the_next_older_one_is_used() {
    const PARTS: i32 = 6;
    let Some(s3) = test_s3() else { return };
    assert!(s3.create_bucket());
    let kafka = TestKafka::start();
    let input = kafka.topic("in", PARTS);
    let output = kafka.topic("out", PARTS);
    let dir = tempfile::tempdir().unwrap();
    let spec = |pod: &str| {
        DedupSpec::checkpointing_pod(&kafka, &input, &output, dir.path(), pod, &s3)
            .env("MAX_REMOTE_CHECKPOINTS", "100")
    };
    let first = generate(3_000, 10, PARTS, 41, "d1");
    let second = generate(3_000, 10, PARTS, 42, "d2");

    // Two waves, each followed by checkpoints: every partition gets an older and a
    // newer checkpoint with files of its own.
    let mut a = spec("dedup-a").spawn(dir.path(), "a");
    for (wave, events) in [&first, &second].into_iter().enumerate() {
        kafka.produce(
            &input,
            &events.iter().map(GenEvent::produced).collect::<Vec<_>>(),
        );
        let target = ((wave + 1) * 3_000) as f64;
        a.wait_until("wave consumed", WAIT, |d| {
            d.metric("dedup_messages_in_total") >= target
        });
        let uploads = a.metric("dedup_checkpoint_uploads_total{result=\"success\"}");
        a.wait_until("wave checkpointed", WAIT, |d| {
            d.metric("dedup_checkpoint_uploads_total{result=\"success\"}")
                >= uploads + 2.0 * PARTS as f64
        });
    }
    assert!(a.terminate().success());

    // One kind of damage per partition, on the newest checkpoints only.
    let sst = |p: i32| {
        files_newer_than_the_oldest(&s3, &input, p)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("partition {p}: the newest checkpoint has a file of its own"))
    };
    let newest_manifest = |p: i32| manifests(&s3, &input, p).pop().expect("a manifest").0;
    // 0: a flipped byte.
    let key = sst(0);
    let mut bytes = s3.get_bytes(&key).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    assert!(s3.put(&key, &bytes));
    // 1: a truncated file.
    let key = sst(1);
    let bytes = s3.get_bytes(&key).unwrap();
    assert!(s3.put(&key, &bytes[..bytes.len() / 3]));
    // 2: a manifest pointing at a missing object.
    assert!(s3.delete(&sst(2)));
    // 3: an invalid manifest.
    assert!(s3.put(
        &newest_manifest(3),
        b"{\"format_version\": 1, \"files\": [tr"
    ));
    // 4: a checkpoint of another partition (another lineage) under this one's name.
    let foreign = s3.get_bytes(&newest_manifest(0)).unwrap();
    // Same millisecond as the newest, highest tiebreak: it sorts as the newest.
    let newest = newest_manifest(4);
    let millis = newest
        .rsplit('/')
        .next()
        .unwrap()
        .split('-')
        .next()
        .unwrap();
    let name = format!("{millis}-ffffffff.json");
    assert!(s3.put(
        &format!("deduplication-checkpoints/{input}/4/manifests/{name}"),
        &foreign
    ));
    // 5: the newest manifest missing (an upload that never committed).
    assert!(s3.delete(&newest_manifest(5)));

    let mut b = spec("dedup-b").spawn(dir.path(), "b");
    b.wait_until("restored", WAIT, |d| {
        d.metric("dedup_assigned_partitions") >= PARTS as f64
            && d.metric("dedup_restores_total") >= PARTS as f64
    });
    assert_eq!(
        b.metric("dedup_restores_total{result=\"restored_older\"}"),
        5.0,
        "partitions 0-4 fall back past a damaged checkpoint\n{}",
        b.log_tail()
    );
    assert_eq!(b.metric("dedup_restores_total{result=\"restored\"}"), 1.0);
    // A damaged file spoils every checkpoint since it was written: at least one each.
    assert!(b.metric("dedup_restore_skipped_checkpoints_total") >= 5.0);

    // The older checkpoints plus catch-up know every earlier event.
    let copies: Vec<GenEvent> = first
        .iter()
        .chain(&second)
        .enumerate()
        .map(|(i, e)| GenEvent {
            uuid: format!("d-copy-{i}"),
            is_copy: true,
            ..e.clone()
        })
        .collect();
    let published_before = b.metric("dedup_published_total");
    kafka.produce(
        &input,
        &copies.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    b.wait_until("copies consumed", WAIT, |d| {
        d.metric("dedup_committed_offset") >= 12_000.0 - 0.5
            && d.metric("dedup_in_flight_messages") == 0.0
    });
    assert_eq!(
        b.metric("dedup_published_total"),
        published_before,
        "no copy of an earlier event is published"
    );
    assert!(b.terminate().success());
}

/// When each process of a storm owned each partition: `(start, end)` in epoch
/// milliseconds, from "partition store ready" to "partition revoked; store closed".
/// Partition → ownership intervals `(start, end)`, epoch milliseconds.
type Ownership = HashMap<i32, Vec<(i64, i64)>>;

fn ownership_intervals(log: &std::path::Path) -> Ownership {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut open: HashMap<i32, i64> = HashMap::new();
    let mut intervals: HashMap<i32, Vec<(i64, i64)>> = HashMap::new();
    for line in text.lines() {
        let line = strip_ansi(line);
        let (Some(stamp), Some(partition)) = (
            line.split_whitespace().next(),
            line.split("partition=").nth(1).and_then(|rest| {
                rest.split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse::<i32>()
                    .ok()
            }),
        ) else {
            continue;
        };
        let Ok(at) = chrono::DateTime::parse_from_rfc3339(stamp) else {
            continue;
        };
        let at = at.timestamp_millis();
        if line.contains("partition store ready; consuming") {
            open.insert(partition, at);
        } else if line.contains("partition revoked; store closed") {
            if let Some(start) = open.remove(&partition) {
                intervals.entry(partition).or_default().push((start, at));
            }
        }
    }
    // Still open at the end of the log: owned until the process ended.
    for (partition, start) in open {
        intervals
            .entry(partition)
            .or_default()
            .push((start, i64::MAX));
    }
    intervals
}

/// Rebalance storm: three processes with separate store directories join and leave
/// every few seconds while events stream in. No unique event is lost, only originals
/// are republished (how many is reported), no partition is ever owned by two processes
/// at once, and every manifest was written while its writer owned the partition.
/// `DEDUP_STORM_SECONDS` (default 30; the long run is 120).
#[test]
fn a_rebalance_storm_loses_nothing_and_never_shares_a_partition() {
    const PARTS: i32 = 6;
    let Some(s3) = test_s3() else { return };
    assert!(s3.create_bucket());
    let seconds = env_number("DEDUP_STORM_SECONDS", 30);
    let kafka = TestKafka::start();
    let input = kafka.topic("in", PARTS);
    let output = kafka.topic("out", PARTS);
    let dir = tempfile::tempdir().unwrap();
    // Dynamic members (no POD_NAME), so a leaving process hands its partitions over at
    // once; checkpoint writers are then named `pid-{pid}`.
    let spec = |slot: usize| {
        DedupSpec::new(
            &kafka,
            &input,
            Some(&output),
            &dir.path().join(format!("m{slot}")),
        )
        .with_s3(&s3)
        .env("CHECKPOINT_INTERVAL", "1s")
        .env("MAX_REMOTE_CHECKPOINTS", "1000")
        .env("MAX_IN_FLIGHT_MESSAGES", &IN_FLIGHT.to_string())
        .env("DEDUP_WINDOW", "0")
    };
    let events = generate(1_000 * seconds as usize, 20, PARTS, 51, "s1");
    let producer = stream_in_background(
        &kafka.bootstrap,
        &input,
        &events,
        seconds as usize * 5,
        Duration::from_millis(200),
    );

    let mut members: Vec<Option<Dedup>> = vec![None, None, None];
    let mut logs: Vec<(std::path::PathBuf, u32)> = Vec::new();
    let mut spawned = 0;
    let mut leaves = 0;
    let mut spawn = |slot: usize, members: &mut Vec<Option<Dedup>>| {
        let name = format!("m{slot}-{spawned}");
        spawned += 1;
        let member = spec(slot).spawn(dir.path(), &name);
        logs.push((member.log.clone(), member.pid().unwrap_or(0)));
        members[slot] = Some(member);
    };
    spawn(0, &mut members);
    let mut rng = 0x0009_E377_9B97_u64;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        next_random(&mut rng);
        std::thread::sleep(Duration::from_millis(2_000 + rng % 3_000));
        let slot = (rng % 3) as usize;
        let running = members.iter().filter(|m| m.is_some()).count();
        match members[slot].take() {
            Some(member) if running > 1 => {
                assert!(
                    member.terminate().success(),
                    "a leaving member exits cleanly"
                );
                leaves += 1;
            }
            Some(member) => members[slot] = Some(member),
            None => spawn(slot, &mut members),
        }
    }
    producer.join().expect("producer");
    // The running members own the partitions between them: their committed offsets
    // together must reach the end.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let running: Vec<&Dedup> = members.iter().flatten().collect();
        let committed: f64 = running
            .iter()
            .map(|d| d.metric("dedup_committed_offset"))
            .sum();
        let in_flight: f64 = running
            .iter()
            .map(|d| d.metric("dedup_in_flight_messages"))
            .sum();
        if committed >= events.len() as f64 - 0.5 && in_flight == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not everything committed: {committed} of {}\n{}",
            events.len(),
            running
                .iter()
                .map(|d| d.log_tail())
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for member in members.into_iter().flatten() {
        assert!(member.terminate().success());
    }

    // Output: every unique event, copies never; originals again are counted.
    let uniques = unique_keys(&events).len();
    let published = kafka.read_all(&output, PARTS, uniques, Duration::from_secs(3));
    let check = check_output(&events, &published);
    let republished = check.republished;
    // What the members logged about handovers, for reading the republished count.
    let mut signals: HashMap<&str, usize> = HashMap::new();
    for (log, _) in &logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for signal in [
            "could not read committed offsets",
            "no committed offset; resuming",
            "drain timed out",
            "committing revoked partitions failed",
            "replaying the gap in catch-up mode",
            "cannot move to the store's offset",
            "partitions lost",
        ] {
            *signals.entry(signal).or_default() += text.matches(signal).count();
        }
        for line in text.lines().filter(|l| {
            l.contains("committing revoked partitions failed")
                || l.contains("could not read committed offsets")
                || l.contains("partitions lost")
        }) {
            eprintln!("storm signal: {}", strip_ansi(line));
        }
    }

    // Fencing: per partition, the ownership intervals of different processes never
    // overlap.
    let intervals: Vec<(u32, Ownership)> = logs
        .iter()
        .map(|(log, pid)| (*pid, ownership_intervals(log)))
        .collect();
    let mut handovers = 0;
    for partition in 0..PARTS {
        let mut all: Vec<(i64, i64, u32)> = intervals
            .iter()
            .flat_map(|(pid, m)| {
                m.get(&partition)
                    .into_iter()
                    .flatten()
                    .map(move |(s, e)| (*s, *e, *pid))
            })
            .collect();
        all.sort();
        handovers += all.len().saturating_sub(1);
        for pair in all.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "partition {partition} owned by pid {} until {} and by pid {} from {}",
                pair[0].2,
                pair[0].1,
                pair[1].2,
                pair[1].0
            );
        }
    }
    // No manifest from a writer that did not own the partition when it checkpointed.
    let mut manifests_checked = 0;
    for partition in 0..PARTS {
        for (key, manifest) in manifests(&s3, &input, partition) {
            let writer = manifest["writer"].as_str().unwrap_or_default();
            let created = manifest["created_at_ms"].as_i64().unwrap_or_default();
            let pid: u32 = writer.trim_start_matches("pid-").parse().unwrap_or(0);
            let owned = intervals
                .iter()
                .filter(|(p, _)| *p == pid)
                .flat_map(|(_, m)| m.get(&partition).into_iter().flatten())
                .any(|(s, e)| *s <= created && created <= *e);
            assert!(
                owned,
                "{key} written by {writer} at {created}, not its owner then"
            );
            manifests_checked += 1;
        }
    }
    eprintln!(
        "rebalance storm ({seconds} s): {} events sent, {} unique in truth, {} unique in output, {republished} republished originals, {spawned} members started, {leaves} left, {handovers} partition handovers, {manifests_checked} manifests checked; logged: {signals:?}",
        events.len(),
        check.unique_in_truth,
        check.unique_in_output,
    );
    assert_eq!(
        check.unique_in_output, check.unique_in_truth,
        "unique events lost"
    );
    // Per handover, at most what was in flight plus what the whole input brought in one
    // commit interval (1 s): a revoked partition's final commit can fail when the group's
    // generation has moved on, and its auto-commits can fail for a few intervals while
    // the group rebalances, so one partition may lag several intervals of its own
    // traffic. Before the committed offset was read again when the assignment could not
    // read it, a partition restarted at its checkpoint's offset (1,796 in one run).
    let per_interval = (events.len() as u64 / seconds.max(1)) as usize;
    let bound = handovers * (IN_FLIGHT + per_interval);
    eprintln!("republished bound: {bound} = {handovers} handovers × (in-flight {IN_FLIGHT} + {per_interval} per commit interval)");
    assert!(
        republished <= bound,
        "{republished} republished originals exceed {bound}"
    );
}

/// A member that cannot read the group's committed offsets when partitions are assigned
/// (they time out in a rebalance storm) reads them again before consuming. Taking
/// "unknown" for "no committed offset" would resume a store that is behind the committed
/// offset (a restored checkpoint, an older volume) at its own offset and publish
/// everything since again.
///
/// A real broker cannot be told to refuse one `OffsetFetch`, so the refusal is injected
/// on librdkafka's mock cluster: fault injection, the one thing it is used for here. The
/// same sequence without the refusal runs on the real broker below.
#[test]
fn an_unreadable_committed_offset_is_read_again_not_taken_as_none() {
    older_volume_rejoins(TestKafka::mock_cluster(), true);
}

/// A member on an older copy of the volume (its stores one wave behind) rejoins: it
/// resumes at the group's committed offset, catches its store up, and republishes nothing.
#[test]
fn a_member_on_an_older_volume_catches_up_and_republishes_nothing() {
    older_volume_rejoins(TestKafka::start(), false);
}

fn older_volume_rejoins(kafka: TestKafka, refuse_the_first_offset_read: bool) {
    let input = kafka.topic("in", PARTITIONS);
    let output = kafka.topic("out", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let spec = |store: &str| {
        DedupSpec::new(&kafka, &input, Some(&output), &dir.path().join(store))
            .env("DEDUP_WINDOW", "0")
    };
    let waves: Vec<Vec<GenEvent>> = (0..3u64)
        .map(|w| generate(1_500, 0, PARTITIONS, 71 + w, &format!("u{w}")))
        .collect();
    let mut sent = 0;
    let mut run = |store: &str, wave: &[GenEvent], name: &str| -> String {
        kafka.produce(
            &input,
            &wave.iter().map(GenEvent::produced).collect::<Vec<_>>(),
        );
        sent += wave.len();
        let mut dedup = spec(store).spawn(dir.path(), name);
        dedup.wait_until("the wave committed", WAIT, |d| {
            d.metric("dedup_committed_offset") >= sent as f64 - 0.5
                && d.metric("dedup_in_flight_messages") == 0.0
        });
        let log = std::fs::read_to_string(&dedup.log).unwrap_or_default();
        assert!(dedup.terminate().success());
        log
    };
    run("a", &waves[0], "a-0");
    // An older copy of the volume: its stores stop after the first wave.
    copy_dir(&dir.path().join("a"), &dir.path().join("b"));
    run("a", &waves[1], "a-1");
    // The member on the older volume; its first committed-offset read is refused.
    if let Some(mock) = kafka.mock().filter(|_| refuse_the_first_offset_read) {
        mock.request_errors(
            rdkafka::types::RDKafkaApiKey::OffsetFetch,
            &[rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED],
        );
    }
    let log = run("b", &waves[2], "b");

    let events: Vec<GenEvent> = waves.into_iter().flatten().collect();
    let uniques = unique_keys(&events).len();
    let published = kafka.read_all(&output, PARTITIONS, uniques, Duration::from_secs(2));
    let republished = verify_no_loss(&events, &published);
    assert_eq!(republished, 0, "the second wave was published again");
    if refuse_the_first_offset_read {
        assert!(
            log.contains("could not read committed offsets")
                && log.contains("committed offset read in the partition's task")
                && log.contains("replaying the gap in catch-up mode"),
            "the refused read was not retried, or the gap not caught up:\n{log}"
        );
    }
}

/// S3 outage (through a forwarder that can be cut, so S3 keeps its state): during
/// uploads and during a restore. Consumption continues, failed uploads are counted and
/// succeed once S3 is back, the restore falls back as configured, and no process exits.
/// `DEDUP_OUTAGE_SECONDS` (default 10; the long run is 60).
#[test]
fn an_s3_outage_during_uploads_and_a_restore_stops_nothing() {
    let Some(s3) = test_s3() else { return };
    assert!(s3.create_bucket());
    let outage_for = Duration::from_secs(env_number("DEDUP_OUTAGE_SECONDS", 10));
    let outage = Outage::forward_to(s3.addr);
    let via = TestS3 {
        addr: outage.addr,
        bucket: s3.bucket.clone(),
    };
    let kafka = TestKafka::start();
    let input = kafka.topic("in", PARTITIONS);
    let output = kafka.topic("out", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let spec = |pod: &str| {
        DedupSpec::checkpointing_pod(&kafka, &input, &output, dir.path(), pod, &via)
            .env("S3_MAX_ATTEMPTS", "1")
            .env("S3_REQUEST_TIMEOUT", "2s")
            .env("RESTORE_MAX_ATTEMPTS", "2")
            .env("RESTORE_TIMEOUT", "5s")
    };
    let uploads_ok = |d: &Dedup| d.metric("dedup_checkpoint_uploads_total{result=\"success\"}");
    let uploads_failed = |d: &Dedup| d.metric("dedup_checkpoint_uploads_total{result=\"failure\"}");
    // Unique events only: a partition that falls back to an empty store during the
    // outage may, by design, not know earlier keys.
    let before = generate(2_000, 0, PARTITIONS, 61, "o1");
    let during = generate(2_000, 0, PARTITIONS, 62, "o2");

    let mut a = spec("dedup-a").spawn(dir.path(), "a");
    kafka.produce(
        &input,
        &before.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    a.wait_until("uploads before the outage", WAIT, |d| {
        d.metric("dedup_messages_in_total") >= 2_000.0 && uploads_ok(d) >= PARTITIONS as f64
    });

    let cut_at = std::time::Instant::now();
    outage.down();
    let failed_before = uploads_failed(&a);
    kafka.produce(
        &input,
        &during.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    a.wait_until("consumption continues, uploads fail", WAIT, |d| {
        d.metric("dedup_committed_offset") >= 4_000.0 - 0.5
            && uploads_failed(d) >= failed_before + PARTITIONS as f64
    });
    // A new member joins during the outage: its restores fall back.
    let mut b = spec("dedup-b").spawn(dir.path(), "b");
    b.wait_until("b's restores fall back", WAIT, |d| {
        d.metric("dedup_restores_total{result=\"remote_failed\"}")
            + d.metric("dedup_restores_total{result=\"timed_out\"}")
            >= 1.0
    });
    std::thread::sleep(outage_for.saturating_sub(cut_at.elapsed()));
    let (ok_a, ok_b) = (uploads_ok(&a), uploads_ok(&b));
    outage.up();
    a.wait_until("a uploads again", WAIT, |d| uploads_ok(d) > ok_a);
    b.wait_until("b uploads again", WAIT, |d| uploads_ok(d) > ok_b);
    let outage_seconds = cut_at.elapsed().as_secs();
    let failures = uploads_failed(&a) + uploads_failed(&b);
    assert!(a.terminate().success(), "a kept running");
    assert!(b.terminate().success(), "b kept running");

    let all: Vec<GenEvent> = before.iter().chain(&during).cloned().collect();
    let published = kafka.read_all(&output, PARTITIONS, all.len(), Duration::from_secs(2));
    let uuids: std::collections::HashSet<String> = published
        .iter()
        .filter_map(parse_published)
        .map(|p| p.uuid)
        .collect();
    let lost = all.iter().filter(|e| !uuids.contains(&e.uuid)).count();
    eprintln!(
        "S3 outage of {outage_seconds} s: {} events, {lost} lost, {failures} failed uploads retried",
        all.len()
    );
    assert_eq!(lost, 0);
}

/// Unmounts on drop.
struct SmallFilesystem {
    path: std::path::PathBuf,
}

impl SmallFilesystem {
    /// A tmpfs of `size` (e.g. `2m`) at `path`. Needs the right to mount (root in the
    /// CI container); without it the test fails with mount's message.
    fn mount(path: &std::path::Path, size: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount a {size} tmpfs at {}",
            path.display()
        );
        Self {
            path: path.to_path_buf(),
        }
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .expect("run mount");
        assert!(status.success(), "resize the tmpfs to {size}");
    }
}

impl Drop for SmallFilesystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// Disk pressure: the store directory fills up. The process reports unhealthy (its
/// stores cannot flush), commits no offset of a message it did not process, keeps
/// running, and once space returns a restart (what the failing liveness probe causes)
/// recovers it through catch-up replay, with nothing lost and nothing republished.
#[test]
fn a_full_disk_is_reported_commits_nothing_unprocessed_and_recovers() {
    let kafka = TestKafka::start();
    let input = kafka.topic("in", PARTITIONS);
    let output = kafka.topic("out", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let small = SmallFilesystem::mount(&dir.path().join("small"), "1m");
    let spec = DedupSpec::new(&kafka, &input, Some(&output), &small.path.join("store"))
        .env(
            "LOCAL_CHECKPOINT_DIR",
            small.path.join("checkpoints").to_str().unwrap(),
        )
        .env("RETENTION_INTERVAL", "1s")
        .env("DEDUP_WINDOW", "0");
    let events = generate(50_000, 0, PARTITIONS, 71, "f1");
    let (first, second) = events.split_at(40_000);
    let mut dedup = spec.spawn(dir.path(), "dedup");
    kafka.produce(
        &input,
        &first.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    let http = dedup.http;
    dedup.wait_until("the full disk is reported", WAIT, |d| {
        d.metric("dedup_store_errors_total") >= 1.0
            && matches!(http_get(http, "/healthz"), Some((code, _)) if code != 200)
    });
    // More events once the store cannot flush: their writes fail (RocksDB refuses
    // writes after a failed flush), however fast the first ones were consumed.
    kafka.produce(
        &input,
        &second.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    dedup.wait_until("the writes fail", WAIT, |d| {
        d.metric("dedup_messages_in_total") > first.len() as f64
    });
    std::thread::sleep(Duration::from_secs(1));
    // Every committed offset is of a processed message: keys the store could not flush
    // are in its memtable, and after a crash the catch-up replay rebuilds them.
    let committed = dedup.metric("dedup_committed_offset");
    assert!(committed <= dedup.metric("dedup_messages_in_total"));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        matches!(http_get(http, "/healthz"), Some((code, _)) if code != 200),
        "stays unhealthy while the disk is full"
    );

    // Space returns. RocksDB keeps a failed flush's error until the database is
    // reopened, so a partition whose store write failed stays stuck and the failing
    // liveness probe gets the container restarted: the restarted process replays what
    // its stores lost (catch-up), consumes the rest, and is healthy.
    small.resize("256m");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        dedup.terminate().success(),
        "a clean stop despite the failed flushes"
    );
    let committed_before = kafka.committed_total(&spec.group, &input, PARTITIONS);
    let mut restarted = spec.spawn(dir.path(), "restarted");
    let http = restarted.http;
    restarted.wait_until("recovered and caught up", WAIT, |d| {
        d.metric("dedup_committed_offset") >= events.len() as f64 - 0.5
            && d.metric("dedup_in_flight_messages") == 0.0
            && d.metric("dedup_catch_up_messages_total") > 0.0
            && matches!(http_get(http, "/healthz"), Some((200, _)))
    });
    assert_eq!(
        restarted.metric("dedup_published_total"),
        (events.len() as i64 - committed_before) as f64,
        "the lost keys below the committed offsets ({committed_before}) were replayed, not republished; everything after them was published once"
    );
    assert!(restarted.terminate().success());
    let published = kafka.read_all(&output, PARTITIONS, events.len(), Duration::from_secs(2));
    let uuids: std::collections::HashSet<String> = published
        .iter()
        .filter_map(parse_published)
        .map(|p| p.uuid)
        .collect();
    assert_eq!(
        events.iter().filter(|e| !uuids.contains(&e.uuid)).count(),
        0,
        "nothing lost"
    );
}
