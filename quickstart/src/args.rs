//! The quick start's flags.

use std::path::PathBuf;

use clap::Parser;
use deduplicator::config::OutputGuarantee;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "quickstart",
    version,
    about = "Runs the deduplicator on generated events and checks the result"
)]
pub struct Args {
    /// Events to generate (duplicates and malformed messages included).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,

    /// Share of events that are copies of an earlier event (same key, same uuid).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u8).range(0..=95))]
    pub duplicate_percent: u8,

    /// Share of messages that are malformed, in tenths of a percent (5 = 0.5 %).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub malformed_per_mille: u16,

    /// Partitions of the input topic.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(1..=256))]
    pub partitions: i32,

    /// A real Kafka instead of the embedded one (topics are created).
    #[arg(long)]
    pub kafka_hosts: Option<String>,

    /// A real S3 bucket instead of the local-directory remote (credentials from the AWS
    /// chain).
    #[arg(long)]
    pub s3_bucket: Option<String>,

    #[arg(long)]
    pub s3_endpoint: Option<String>,

    #[arg(long)]
    pub s3_region: Option<String>,

    /// Where stores, checkpoints and the local remote go (default: a temporary directory,
    /// removed at the end).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,

    /// The deduplicator's OUTPUT_GUARANTEE: at-least-once, or exactly-once (output and
    /// offsets in one transaction per partition; the verifier reads `read_committed`).
    #[arg(long, default_value = "at-least-once")]
    pub output_guarantee: OutputGuarantee,
}
