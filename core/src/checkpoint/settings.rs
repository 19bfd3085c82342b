//! The settings that say where checkpoints are kept off the pod, shared by the
//! deduplicator and the restorer (same variable names in both, flattened into each
//! binary's command line).

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{env, parse_duration};

use super::remote::{LocalDirRemote, Remote};
use super::s3::{S3Remote, S3Settings};

#[derive(Debug, Clone, clap::Args)]
pub struct RemoteArgs {
    /// S3 bucket checkpoints are uploaded to and restored from. Unset (and no
    /// CHECKPOINT_REMOTE_DIR): checkpoints stay on the local volume only.
    #[arg(long, env = env::S3_BUCKET)]
    pub s3_bucket: Option<String>,

    /// Key prefix of everything this system writes to the bucket.
    #[arg(long, env = env::S3_KEY_PREFIX, default_value = "deduplication-checkpoints")]
    pub s3_key_prefix: String,

    /// AWS region of the bucket. Unset: the AWS chain's region, else us-east-1.
    #[arg(long, env = env::S3_REGION)]
    pub s3_region: Option<String>,

    /// Endpoint of an S3-compatible store (MinIO, moto, …), e.g. http://minio:9000;
    /// path-style addressing is used with it.
    #[arg(long, env = env::S3_ENDPOINT, value_parser = parse_endpoint)]
    pub s3_endpoint: Option<String>,

    /// Bound of one attempt of one S3 request.
    #[arg(long, env = env::S3_REQUEST_TIMEOUT, default_value = "60s", value_parser = parse_duration)]
    pub s3_request_timeout: Duration,

    /// Attempts per S3 request (with backoff) before the operation counts as failed.
    #[arg(long, env = env::S3_MAX_ATTEMPTS, default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub s3_max_attempts: u32,

    /// A directory standing in for the bucket (one machine, or a shared volume). For
    /// development and tests; ignored when S3_BUCKET is set.
    #[arg(long, env = env::CHECKPOINT_REMOTE_DIR)]
    pub checkpoint_remote_dir: Option<PathBuf>,

    /// Files uploaded or downloaded at once per checkpoint.
    #[arg(long, env = env::CHECKPOINT_TRANSFER_CONCURRENCY, default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub checkpoint_transfer_concurrency: u16,
}

impl RemoteArgs {
    /// The configured remote, or `None` when checkpoints stay local. Credentials for S3
    /// come from the standard AWS chain and are never logged.
    pub async fn connect(&self) -> Option<Remote> {
        if let Some(bucket) = self.s3_bucket.as_deref().filter(|b| !b.trim().is_empty()) {
            let settings = S3Settings {
                bucket: bucket.trim().to_string(),
                region: self.s3_region.clone().filter(|r| !r.is_empty()),
                endpoint: self.s3_endpoint.clone(),
                attempt_timeout: self.s3_request_timeout,
                max_attempts: self.s3_max_attempts,
            };
            return Some(Remote::S3(S3Remote::new(&settings).await));
        }
        self.checkpoint_remote_dir
            .as_ref()
            .map(|dir| Remote::Dir(LocalDirRemote::new(dir)))
    }

    pub fn concurrency(&self) -> usize {
        usize::from(self.checkpoint_transfer_concurrency)
    }
}

/// An endpoint URL: `http://` or `https://` and a host.
pub fn parse_endpoint(text: &str) -> Result<String, String> {
    let text = text.trim();
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(text.to_string()),
        _ => Err(format!(
            "`{text}` is not an endpoint: expected http://host[:port] or https://host[:port]"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        remote: RemoteArgs,
    }

    #[test]
    fn endpoints_need_a_scheme_and_a_host() {
        assert!(parse_endpoint("http://127.0.0.1:5000").is_ok());
        assert!(parse_endpoint("https://s3.example").is_ok());
        for bad in ["127.0.0.1:5000", "http://", "ftp://x", ""] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn the_remote_follows_the_settings() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.remote)
        };
        let none = parse(&[]).unwrap();
        assert_eq!(none.s3_key_prefix, "deduplication-checkpoints");
        assert!(none.connect().await.is_none());
        let dir = parse(&["--checkpoint-remote-dir", "/tmp/x"]).unwrap();
        assert!(matches!(dir.connect().await, Some(Remote::Dir(_))));
        let s3 = parse(&[
            "--s3-bucket",
            "b",
            "--s3-endpoint",
            "http://127.0.0.1:1",
            "--s3-region",
            "us-east-1",
            "--checkpoint-remote-dir",
            "/tmp/x",
        ])
        .unwrap();
        match s3.connect().await {
            Some(remote @ Remote::S3(_)) => assert_eq!(remote.to_string(), "s3://b"),
            _ => panic!("S3_BUCKET wins"),
        }
        let err = parse(&["--s3-endpoint", "minio:9000"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("S3_ENDPOINT") && err.contains("http://"),
            "{err}"
        );
        let err = parse(&["--s3-max-attempts", "0"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("S3_MAX_ATTEMPTS"), "{err}");
    }
}
