//! End-to-end "pod reschedule": the deduplicator runs as pod `dedup-0` on volume A,
//! checkpoints to S3 and is killed (`kill -9`); volume A is lost; the `restorer` runs as
//! `dedup-0` on an empty volume B and pulls the partitions `dedup-0` owned; the
//! deduplicator starts on volume B and drops every replayed earlier event.
//!
//! Real processes: the `deduplicator` and `restorer` binaries, the real Kafka broker
//! (`KAFKA_TEST_BOOTSTRAP_SERVERS`) and `moto_server` (see `dedup_testkit::test_s3`). The
//! restorer binary is the workspace's (`cargo test` at the root builds it).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use dedup_testkit::*;

const PARTITIONS: i32 = 4;
const WAIT: Duration = Duration::from_secs(90);

fn restorer_binary() -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_deduplicator")).with_file_name("restorer");
    assert!(
        path.exists(),
        "{} is missing: run `cargo test` at the workspace root, or `cargo build -p restorer`",
        path.display()
    );
    path
}

#[test]
fn a_pod_rescheduled_onto_an_empty_volume_keeps_its_deduplication_state() {
    let Some(s3) = test_s3() else { return };
    assert!(s3.create_bucket());
    let kafka = TestKafka::start();
    let input = kafka.topic("in", PARTITIONS);
    let output = kafka.topic("out", PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let volume = |name: &str| dir.path().join(name);
    let spec = |store: PathBuf| {
        DedupSpec {
            pod_name: Some("dedup-0".into()),
            ..DedupSpec::new(&kafka, &input, Some(&output), &store)
        }
        .with_s3(&s3)
        .env("CHECKPOINT_INTERVAL", "1s")
        .env("DEDUP_WINDOW", "0")
    };
    let before = generate(4_000, 20, PARTITIONS, 21, "r1");

    // 1. dedup-0 on volume A: consume, checkpoint, upload; then kill -9.
    std::fs::create_dir_all(volume("a")).unwrap();
    let mut first = spec(volume("a").join("store")).spawn(dir.path(), "dedup-on-a");
    kafka.produce(
        &input,
        &before.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    first.wait_until("everything consumed", WAIT, |d| {
        d.metric("dedup_messages_in_total") >= before.len() as f64
    });
    let uploads = first.metric("dedup_checkpoint_uploads_total{result=\"success\"}");
    first.wait_until("checkpoints uploaded after that", WAIT, |d| {
        d.metric("dedup_checkpoint_uploads_total{result=\"success\"}")
            >= uploads + 2.0 * PARTITIONS as f64
    });
    first.kill9();

    // 2. The pod lands on a new node: volume A is gone, volume B is empty.
    std::fs::remove_dir_all(volume("a")).unwrap();
    std::fs::create_dir_all(volume("b")).unwrap();
    let store_b = volume("b").join("store");
    let restorer = Command::new(restorer_binary())
        .env_clear()
        .env("POD_NAME", "dedup-0")
        .env("KAFKA_CONSUMER_GROUP", format!("dedup-{input}"))
        .env("STORE_PATH", &store_b)
        .env("RUST_LOG", "info")
        .envs(s3.env())
        .output()
        .expect("run the restorer");
    let restorer_log = String::from_utf8_lossy(&restorer.stderr).into_owned()
        + &String::from_utf8_lossy(&restorer.stdout);
    assert!(restorer.status.success(), "{restorer_log}");
    assert_eq!(
        restorer_log.matches("partition restored").count(),
        PARTITIONS as usize,
        "{restorer_log}"
    );
    for partition in 0..PARTITIONS {
        assert!(store_b
            .join(format!("{input}_{partition}/CURRENT"))
            .exists());
    }

    // 3. dedup-0 on volume B: its stores are already there.
    let mut second = spec(store_b).spawn(dir.path(), "dedup-on-b");
    second.wait_until("partitions assigned", WAIT, |d| {
        d.metric("dedup_assigned_partitions") >= PARTITIONS as f64
    });
    // Replay every earlier event (new uuids, same keys), plus new events.
    let replayed: Vec<GenEvent> = before
        .iter()
        .enumerate()
        .map(|(i, e)| GenEvent {
            uuid: format!("r1-replay-{i}"),
            is_copy: true,
            ..e.clone()
        })
        .collect();
    let fresh = generate(1_000, 0, PARTITIONS, 22, "r2");
    kafka.produce(
        &input,
        &replayed.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    kafka.produce(
        &input,
        &fresh.iter().map(GenEvent::produced).collect::<Vec<_>>(),
    );
    let total = (before.len() + replayed.len() + fresh.len()) as f64;
    second.wait_committed(total, WAIT);
    assert!(
        second.metric("dedup_events_total{outcome=\"duplicate\"}") >= replayed.len() as f64,
        "every replayed earlier event is dropped"
    );
    assert_eq!(
        second.metric("dedup_restores_total{result=\"local_is_current\"}"),
        PARTITIONS as f64,
        "the restorer had already put the newest checkpoints in place\n{}\n{}",
        second
            .metrics()
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("dedup_restores"))
            .collect::<Vec<_>>()
            .join("\n"),
        second.log_tail()
    );
    assert!(second.terminate().success());

    // Every unique event, each published as its original (never a replayed copy).
    let all: Vec<GenEvent> = before
        .iter()
        .chain(&replayed)
        .chain(&fresh)
        .cloned()
        .collect();
    let uniques = unique_keys(&all).len();
    let published = kafka.read_all(&output, PARTITIONS, uniques, Duration::from_secs(2));
    let republished = verify_no_loss(&all, &published);
    eprintln!("pod reschedule: {uniques} unique, {republished} redelivered originals");
}
