//! The restorer's settings: the deduplicator's names for what they share (pod name,
//! consumer group, store path, S3 location), plus its own time bound and fail-hard
//! switch. A bad value stops it with a message naming the variable and the form.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dedup_core::checkpoint::settings::RemoteArgs;
use dedup_core::config::{env, parse_duration};
use dedup_core::telemetry::LogFormat;

#[derive(Debug, Clone, Parser)]
#[command(name = "restorer", version, about)]
pub struct Config {
    /// This pod's name: whose ownership record to read.
    #[arg(long, env = env::POD_NAME)]
    pub pod_name: String,

    /// The deduplicator's consumer group (the ownership record lives under it).
    #[arg(long, env = env::KAFKA_CONSUMER_GROUP, default_value = "kafka-deduplicator")]
    pub kafka_consumer_group: String,

    /// Base path of the per-partition stores, as the deduplicator's STORE_PATH.
    #[arg(long, env = env::STORE_PATH, default_value = "/tmp/deduplication-store")]
    pub store_path: PathBuf,

    /// Base path of the deduplicator's local checkpoints, as its LOCAL_CHECKPOINT_DIR: a
    /// restore takes the table files it finds there (and in the store it replaces)
    /// instead of downloading them, so only the delta is fetched.
    #[arg(long, env = env::LOCAL_CHECKPOINT_DIR, default_value = "./checkpoints")]
    pub local_checkpoint_dir: PathBuf,

    /// Bound of the whole run, retries included. Past it the remaining partitions are
    /// left to the deduplicator, which restores on assignment.
    #[arg(long, env = env::RESTORE_TIMEOUT, default_value = "10m", value_parser = parse_duration)]
    pub restore_timeout: Duration,

    /// Attempts per request group while the remote fails (with backoff).
    #[arg(long, env = env::RESTORE_MAX_ATTEMPTS, default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub restore_max_attempts: u32,

    /// An ownership record not rewritten for this long is ignored: its pod was gone long
    /// enough for its partitions to have moved (scaled down, then up again), so restoring
    /// them would only delay the start. The deduplicator rewrites its record every
    /// CHECKPOINT_INTERVAL; keep this well above it.
    #[arg(long, env = env::OWNER_RECORD_MAX_AGE, default_value = "30m", value_parser = parse_duration)]
    pub owner_record_max_age: Duration,

    /// Exit non-zero when a partition could not be restored (remote unreachable, every
    /// checkpoint corrupt, time bound passed). Off: warn and exit 0, the pod starts and
    /// the deduplicator restores on assignment.
    #[arg(long, env = env::RESTORE_FAIL_HARD, default_value_t = false, action = clap::ArgAction::Set)]
    pub restore_fail_hard: bool,

    /// Log format: text or json.
    #[arg(long, env = env::LOG_FORMAT, default_value = "text")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("restorer").chain(args.iter().copied()))
    }

    #[test]
    fn shares_the_deduplicators_names_and_defaults() {
        let config = parse(&["--pod-name", "dedup-0"]).unwrap();
        assert_eq!(config.kafka_consumer_group, "kafka-deduplicator");
        assert_eq!(config.store_path, PathBuf::from("/tmp/deduplication-store"));
        assert_eq!(config.remote.s3_key_prefix, "deduplication-checkpoints");
        assert!(!config.restore_fail_hard);
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (args, variable) in [
            (&[][..], "POD_NAME"),
            (
                &["--pod-name", "p", "--restore-timeout", "soon"][..],
                "RESTORE_TIMEOUT",
            ),
            (
                &["--pod-name", "p", "--restore-fail-hard", "yes"][..],
                "RESTORE_FAIL_HARD",
            ),
            (
                &["--pod-name", "p", "--restore-max-attempts", "0"][..],
                "RESTORE_MAX_ATTEMPTS",
            ),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(variable), "{args:?}: {err}");
        }
    }
}
