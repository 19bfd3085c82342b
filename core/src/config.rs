//! Parsing of setting values shared by every binary, so that `300s` or `512MiB` mean the
//! same thing in every environment variable and flag.
//!
//! Errors state the accepted form; the caller (clap, via `value_parser`) adds the name of
//! the variable or flag.

use std::time::Duration;

/// The names of the environment variables (and, lower-cased with dashes, of the flags)
/// that configure the binaries. The deduplicator reads them; the operator writes them
/// into each cluster's ConfigMap. The seed's names are kept as they are.
pub mod env {
    pub const KAFKA_HOSTS: &str = "KAFKA_HOSTS";
    pub const KAFKA_CONSUMER_GROUP: &str = "KAFKA_CONSUMER_GROUP";
    pub const KAFKA_CONSUMER_TOPIC: &str = "KAFKA_CONSUMER_TOPIC";
    pub const OUTPUT_TOPIC: &str = "OUTPUT_TOPIC";
    pub const DEAD_LETTER_TOPIC: &str = "DEAD_LETTER_TOPIC";
    pub const MAX_IN_FLIGHT_MESSAGES: &str = "MAX_IN_FLIGHT_MESSAGES";
    pub const BATCH_SIZE: &str = "BATCH_SIZE";
    pub const STORE_PATH: &str = "STORE_PATH";
    pub const MAX_STORE_CAPACITY: &str = "MAX_STORE_CAPACITY";
    pub const DEDUP_WINDOW: &str = "DEDUP_WINDOW";
    pub const RETENTION_INTERVAL: &str = "RETENTION_INTERVAL";
    pub const STORE_WAL: &str = "STORE_WAL";
    pub const STORE_BLOCK_CACHE_BYTES: &str = "STORE_BLOCK_CACHE_BYTES";
    pub const STORE_WRITE_BUFFER_BYTES: &str = "STORE_WRITE_BUFFER_BYTES";
    pub const STORE_RECENT_KEYS: &str = "STORE_RECENT_KEYS";
    pub const POD_NAME: &str = "POD_NAME";
    pub const HTTP_BIND: &str = "HTTP_BIND";
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    pub const KAFKA_PROPERTIES: &str = "KAFKA_PROPERTIES";
    pub const KAFKA_CONSUMER_PROPERTIES: &str = "KAFKA_CONSUMER_PROPERTIES";
    pub const KAFKA_PRODUCER_PROPERTIES: &str = "KAFKA_PRODUCER_PROPERTIES";
    pub const KAFKA_SASL_USERNAME: &str = "KAFKA_SASL_USERNAME";
    pub const KAFKA_SASL_PASSWORD: &str = "KAFKA_SASL_PASSWORD";
    pub const KAFKA_SECRET_PROPERTIES: &str = "KAFKA_SECRET_PROPERTIES";
    pub const OWNER_RECORD_MAX_AGE: &str = "OWNER_RECORD_MAX_AGE";
    pub const REBALANCE_DRAIN_TIMEOUT: &str = "REBALANCE_DRAIN_TIMEOUT";
    pub const SHUTDOWN_TIMEOUT: &str = "SHUTDOWN_TIMEOUT";
    pub const PUBLISH_MAX_ATTEMPTS: &str = "PUBLISH_MAX_ATTEMPTS";
    pub const CHECKPOINT_INTERVAL: &str = "CHECKPOINT_INTERVAL";
    pub const FINAL_CHECKPOINT_TIMEOUT: &str = "FINAL_CHECKPOINT_TIMEOUT";
    pub const LOCAL_CHECKPOINT_DIR: &str = "LOCAL_CHECKPOINT_DIR";
    pub const S3_BUCKET: &str = "S3_BUCKET";
    pub const S3_KEY_PREFIX: &str = "S3_KEY_PREFIX";
    pub const FULL_UPLOAD_INTERVAL: &str = "FULL_UPLOAD_INTERVAL";
    pub const MAX_LOCAL_CHECKPOINTS: &str = "MAX_LOCAL_CHECKPOINTS";
    pub const MAX_REMOTE_CHECKPOINTS: &str = "MAX_REMOTE_CHECKPOINTS";
    pub const S3_REGION: &str = "S3_REGION";
    pub const S3_ENDPOINT: &str = "S3_ENDPOINT";
    pub const S3_REQUEST_TIMEOUT: &str = "S3_REQUEST_TIMEOUT";
    pub const S3_MAX_ATTEMPTS: &str = "S3_MAX_ATTEMPTS";
    pub const CHECKPOINT_REMOTE_DIR: &str = "CHECKPOINT_REMOTE_DIR";
    pub const CHECKPOINT_TRANSFER_CONCURRENCY: &str = "CHECKPOINT_TRANSFER_CONCURRENCY";
    pub const RESTORE_TIMEOUT: &str = "RESTORE_TIMEOUT";
    pub const RESTORE_MAX_ATTEMPTS: &str = "RESTORE_MAX_ATTEMPTS";
    pub const RESTORE_FAIL_HARD: &str = "RESTORE_FAIL_HARD";
    pub const OUTPUT_GUARANTEE: &str = "OUTPUT_GUARANTEE";
    pub const COMMIT_INTERVAL: &str = "COMMIT_INTERVAL";
    pub const TRANSACTION_MAX_MESSAGES: &str = "TRANSACTION_MAX_MESSAGES";
    pub const TRANSACTION_MAX_DURATION: &str = "TRANSACTION_MAX_DURATION";
    pub const TRANSACTION_TIMEOUT: &str = "TRANSACTION_TIMEOUT";
    pub const TRANSACTIONAL_ID_PREFIX: &str = "TRANSACTIONAL_ID_PREFIX";
    pub const CATCH_UP_MAX_MESSAGES: &str = "CATCH_UP_MAX_MESSAGES";
    pub const MAX_EVENT_TIME_SKEW: &str = "MAX_EVENT_TIME_SKEW";
    pub const KAFKA_GROUP_PROTOCOL: &str = "KAFKA_GROUP_PROTOCOL";
    pub const PREFETCH_INTERVAL: &str = "PREFETCH_INTERVAL";
}

/// Consumer properties librdkafka refuses with `group.protocol=consumer`
/// (`KAFKA_GROUP_PROTOCOL=consumer`): the brokers decide them.
pub const BROKER_SIDE_WITH_CONSUMER_PROTOCOL: [&str; 3] = [
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "partition.assignment.strategy",
];

/// Accepted forms of a duration, quoted in error messages.
pub const DURATION_FORM: &str =
    "a whole number with a unit: ms, s, m, h or d (e.g. 500ms, 300s, 5m, 24h, 7d), or 0";

/// Accepted forms of a byte size, quoted in error messages.
pub const BYTES_FORM: &str =
    "a whole number of bytes, optionally with a unit: KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)";

/// Parses `500ms`, `300s`, `5m`, `24h`, `7d`, or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let (number, unit) = split_number(text);
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}` is not a duration: expected {DURATION_FORM}"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per_unit))
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{text}` is not a duration: expected {DURATION_FORM}"))
}

/// Parses `1073741824`, `512MiB`, `10GB`, `0`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = split_number(text);
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "`{text}` is not a byte size: expected {BYTES_FORM}"
            ))
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("`{text}` is not a byte size: expected {BYTES_FORM}"))
}

/// Formats a duration the way [`parse_duration`] reads it back, in the largest exact unit.
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms == 0 {
        return "0".into();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn split_number(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    (&text[..end], text[end..].trim_start())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300s"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in [
            "",
            "300",
            "5 minutes",
            "-1s",
            "1.5h",
            "s",
            "99999999999999999999d",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(
                err.contains("expected a whole number with a unit"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("1073741824"), Ok(1 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("10GB"), Ok(10_000_000_000));
        assert_eq!(parse_bytes("64 kib"), Ok(64 << 10));
        for bad in ["", "-1", "1.5GB", "12 parsecs", "99999999999999TiB"] {
            let err = parse_bytes(bad).unwrap_err();
            assert!(
                err.contains("expected a whole number of bytes"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn formatted_durations_parse_back() {
        for d in ["0", "500ms", "90s", "5m", "24h", "7d", "1500ms"] {
            let parsed = parse_duration(d).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        }
        assert_eq!(format_duration(Duration::from_secs(300)), "5m");
    }
}
