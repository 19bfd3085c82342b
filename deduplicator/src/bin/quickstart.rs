//! `quickstart`: the deduplicator on an embedded Kafka and generated events; see
//! `deduplicator::quickstart` and the README.

use std::process::ExitCode;

use clap::Parser;
use deduplicator::quickstart::{run, Args};

fn main() -> ExitCode {
    let args = Args::parse();
    // The pipeline's own logs stay quiet unless RUST_LOG asks; progress goes to stderr.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    dedup_core::telemetry::init(dedup_core::telemetry::LogFormat::Text);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "quick start: {} events, {} % duplicates, {} partitions, {} Kafka, {} checkpoint remote",
        args.events,
        args.duplicate_percent,
        args.partitions,
        if args.kafka_hosts.is_some() {
            "external"
        } else {
            "embedded (mock cluster)"
        },
        if args.s3_bucket.is_some() {
            "S3"
        } else {
            "local-directory"
        },
    );
    match runtime.block_on(run(args)) {
        Ok(report) => {
            println!("\n| measure | expected | actual |");
            println!("|---|---|---|");
            for (name, expected, actual) in &report.lines {
                println!("| {name} | {expected} | {actual} |");
            }
            if report.ok {
                println!("\nOK: every unique event published once, every duplicate dropped, every malformed message dead-lettered.");
                ExitCode::SUCCESS
            } else {
                println!("\nMISMATCH: the counts above differ from what was generated.");
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
