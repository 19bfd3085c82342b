//! The README's main-job command, `quickstart`, run as a user runs it (smaller): the
//! real pipeline checked against the generated truth, exiting 0 only when every count
//! matches. Once on its embedded default (the mock cluster in process: the README's first
//! command needs no Java and no broker), once against the real broker.

use std::process::Command;

/// Where the quick start's Kafka is.
enum Kafka {
    /// Its embedded default.
    Embedded,
    /// The real test broker (`KAFKA_TEST_BOOTSTRAP_SERVERS`), through `--kafka-hosts`.
    Real,
}

/// Runs `quickstart` with `args`, requires exit 0 and the all-counts-match line, and
/// returns its table (stdout).
fn run_quickstart(kafka: Kafka, args: &[&str]) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_quickstart"));
    command.args(args);
    if let Kafka::Real = kafka {
        let bootstrap = std::env::var("KAFKA_TEST_BOOTSTRAP_SERVERS")
            .ok()
            .filter(|b| !b.is_empty())
            .expect("KAFKA_TEST_BOOTSTRAP_SERVERS names the test broker (scripts/start-test-services.sh)");
        command.args(["--kafka-hosts", &bootstrap]);
    }
    let output = command.output().expect("run quickstart");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("OK: every unique event published once"),
        "{stdout}"
    );
    stdout
}

#[test]
fn the_quick_start_runs_the_pipeline_and_checks_every_count() {
    let stdout = run_quickstart(
        Kafka::Embedded,
        &[
            "--events",
            "30000",
            "--duplicate-percent",
            "30",
            "--malformed-per-mille",
            "20",
            "--partitions",
            "4",
        ],
    );
    let row = |name: &str| -> (u64, u64) {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no `{name}` row in\n{stdout}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        (cells[2].parse().unwrap(), cells[3].parse().unwrap())
    };
    let (events, consumed) = row("events in");
    assert_eq!((events, consumed), (30_000, 30_000));
    let (unique, _) = row("unique");
    let (duplicates, _) = row("duplicate");
    let (malformed, dead_lettered) = row("in dead-letter topic");
    assert_eq!(unique + duplicates + malformed, events);
    assert!(duplicates > 6_000, "about 30 % copies: {duplicates}");
    assert!(malformed > 300 && dead_lettered == malformed);
    assert!(
        stdout.contains("| remote checkpoints (partitions) | 4 | 4 |"),
        "{stdout}"
    );
}

/// The same against the real broker with `--output-guarantee exactly-once`: every count
/// still matches, and the output went through transactions.
#[test]
fn the_quick_start_runs_in_exactly_once_mode_on_a_real_broker() {
    let stdout = run_quickstart(
        Kafka::Real,
        &[
            "--events",
            "10000",
            "--partitions",
            "4",
            "--output-guarantee",
            "exactly-once",
        ],
    );
    let committed: u64 = stdout
        .lines()
        .find(|l| l.starts_with("| transactions committed / aborted |"))
        .and_then(|l| l.split('|').nth(3))
        .and_then(|cell| cell.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transactions row in\n{stdout}"));
    assert!(
        committed >= 4,
        "one transaction per partition at least: {stdout}"
    );
}

#[test]
fn bad_quick_start_flags_are_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .args(["--duplicate-percent", "120"])
        .output()
        .expect("run quickstart");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--duplicate-percent"));
}
