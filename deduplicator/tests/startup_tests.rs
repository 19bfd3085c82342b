//! Start-up with bad settings: the real binary exits non-zero, naming the variable and
//! the accepted form, before touching Kafka or the store.

use std::process::Command;

fn run_with(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_deduplicator"));
    command
        .env_clear()
        .env("STORE_PATH", dir.path().join("store"))
        .env("HTTP_BIND", "127.0.0.1:0")
        // Nothing listens here: a test that got past start-up would hang, not pass.
        .env("KAFKA_HOSTS", "127.0.0.1:1");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run deduplicator");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn each_bad_setting_is_named_with_its_accepted_form() {
    let cases: &[(&str, &str, &str)] = &[
        ("MAX_STORE_CAPACITY", "lots", "whole number of bytes"),
        ("MAX_IN_FLIGHT_MESSAGES", "0", "1.."),
        ("MAX_IN_FLIGHT_MESSAGES", "many", "invalid digit"),
        ("DEDUP_WINDOW", "forever", "with a unit"),
        ("RETENTION_INTERVAL", "-5s", "with a unit"),
        ("BATCH_SIZE", "-1", "BATCH_SIZE"),
        ("STORE_WAL", "sometimes", "true"),
        ("STORE_BLOCK_CACHE_BYTES", "1.5GB", "whole number of bytes"),
        ("HTTP_BIND", "localhost", "IP:PORT"),
        ("LOG_FORMAT", "yaml", "text or json"),
        ("KAFKA_PROPERTIES", "acks", "key=value"),
        ("KAFKA_CONSUMER_PROPERTIES", "=x", "key=value"),
        ("SHUTDOWN_TIMEOUT", "soon", "with a unit"),
        ("PUBLISH_MAX_ATTEMPTS", "0", "1.."),
        ("STORE_RECENT_KEYS", "-3", "STORE_RECENT_KEYS"),
        (
            "STORE_WRITE_BUFFER_BYTES",
            "64 potatoes",
            "whole number of bytes",
        ),
        ("REBALANCE_DRAIN_TIMEOUT", "20", "with a unit"),
        ("CHECKPOINT_INTERVAL", "5 minutes", "with a unit"),
        ("FULL_UPLOAD_INTERVAL", "0", "1.."),
        ("MAX_LOCAL_CHECKPOINTS", "0", "1.."),
        ("MAX_REMOTE_CHECKPOINTS", "none", "invalid digit"),
        ("S3_ENDPOINT", "minio:9000", "http://host"),
        ("S3_REQUEST_TIMEOUT", "1 minute", "with a unit"),
        ("S3_MAX_ATTEMPTS", "50", "1..=20"),
        ("CHECKPOINT_TRANSFER_CONCURRENCY", "0", "1..=256"),
        ("RESTORE_TIMEOUT", "later", "with a unit"),
        ("RESTORE_MAX_ATTEMPTS", "0", "1.."),
        ("OUTPUT_GUARANTEE", "once", "at-least-once, exactly-once"),
        ("TRANSACTION_MAX_MESSAGES", "0", "1.."),
        ("TRANSACTION_MAX_DURATION", "fast", "with a unit"),
        ("TRANSACTION_TIMEOUT", "1 minute", "with a unit"),
        ("COMMIT_INTERVAL", "often", "with a unit"),
        ("COMMIT_INTERVAL", "0", "above 0"),
        ("MAX_EVENT_TIME_SKEW", "an hour", "with a unit"),
        ("CATCH_UP_MAX_MESSAGES", "all", "invalid digit"),
    ];
    for (variable, value, form) in cases {
        let (code, stderr) = run_with(&[(variable, value)]);
        assert_eq!(code, Some(2), "{variable}={value}: {stderr}");
        assert!(
            stderr.contains(variable),
            "{variable}={value} not named: {stderr}"
        );
        assert!(
            stderr.contains(form),
            "{variable}={value} form not stated: {stderr}"
        );
    }
}

#[test]
fn settings_that_do_not_go_together_are_named() {
    // Exactly-once without an output topic: nothing for the transactions to commit.
    let (code, stderr) = run_with(&[("OUTPUT_GUARANTEE", "exactly-once")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("OUTPUT_GUARANTEE") && stderr.contains("OUTPUT_TOPIC"),
        "{stderr}"
    );
    let (code, stderr) = run_with(&[
        ("OUTPUT_GUARANTEE", "exactly-once"),
        ("OUTPUT_TOPIC", "out"),
        ("TRANSACTION_MAX_DURATION", "90s"),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("TRANSACTION_MAX_DURATION") && stderr.contains("TRANSACTION_TIMEOUT"),
        "{stderr}"
    );
}

#[test]
fn an_unusable_http_port_fails_start_up_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run_with(&[("HTTP_BIND", &addr)]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("HTTP_BIND"), "{stderr}");
}

#[test]
fn an_unusable_store_path_fails_start_up_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let store = file.join("store");
    let (code, stderr) = run_with(&[("STORE_PATH", store.to_str().unwrap())]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("STORE_PATH"), "{stderr}");
}

#[test]
fn secret_properties_reach_the_kafka_client_and_are_never_shown() {
    // Not key=value: named by variable and line, the text not echoed.
    let (code, stderr) = run_with(&[("KAFKA_SECRET_PROPERTIES", "hunter2")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("KAFKA_SECRET_PROPERTIES") && stderr.contains("line 1"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "a secret was shown: {stderr}");

    // A property librdkafka does not know: refused when the client is created (so the
    // pairs do reach it), with the key named and the value not shown.
    let (code, stderr) = run_with(&[(
        "KAFKA_SECRET_PROPERTIES",
        "no.such.secret.property=hunter2, with a comma",
    )]);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("no.such.secret.property"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "a secret was shown: {stderr}");
}
