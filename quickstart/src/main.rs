//! `quickstart`, the README's main job: the real deduplicator pipeline (the same code as production) on an
//! embedded default — an in-process Kafka (librdkafka's mock cluster) and a
//! local-directory checkpoint remote — fed with generated PostHog-style events with a
//! known share of duplicates and malformed messages, checked against the truth.
//!
//! A producer keeps a bounded backlog ahead of the deduplicator (the mock cluster keeps
//! only 5 MiB per partition), and a verifier reads the output and dead-letter topics as
//! they are written. At the end the output must hold each unique event exactly once and
//! the dead-letter topic every malformed message; anything else exits non-zero.
//!
//! `--kafka-hosts` and `--s3-bucket` (with `--s3-endpoint`, `--s3-region`) point the same
//! run at a real Kafka and S3 instead.

//!
//! Modules: [`args`] (flags), [`setup`] (work directory, topics, the deduplicator's
//! settings, the remote), [`events`] (the generator and its truth), [`progress`] (the
//! verifier and the progress lines), [`report`] (the judged table), [`error`].

mod args;
mod error;
mod events;
mod progress;
mod report;
mod setup;

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use deduplicator::metrics::{Metrics, ResultLabels};
use prometheus_client::registry::Registry;

use crate::args::Args;
use crate::error::Error;
use crate::progress::Seen;
use crate::report::Report;
use crate::setup::Setup;

/// How long the run waits, after the last event, for a checkpoint of every partition.
const FINAL_CHECKPOINT_WAIT: Duration = Duration::from_secs(60);

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
            println!("\n{report}");
            if report.ok() {
                println!("OK: every unique event published once, every duplicate dropped, every malformed message dead-lettered.");
                ExitCode::SUCCESS
            } else {
                println!("MISMATCH: the counts above differ from what was generated.");
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the quick start; `Err` when it could not run, else the report (which may say the
/// counts did not match).
async fn run(args: Args) -> Result<Report, Error> {
    let setup = Setup::new(&args).await?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let dedup = tokio::spawn(deduplicator::run_with_metrics(
        setup.config.clone(),
        registry,
        Arc::clone(&metrics),
        async {
            let _ = stopped.await;
        },
    ));

    // Producer and verifier threads.
    let started = Instant::now();
    let produced = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(Seen::default());
    let done_reading = Arc::new(AtomicBool::new(false));
    let producer = {
        let (bootstrap, input, metrics, produced) = (
            setup.bootstrap.clone(),
            setup.input.clone(),
            Arc::clone(&metrics),
            Arc::clone(&produced),
        );
        let args = args.clone();
        std::thread::spawn(move || events::produce(&args, &bootstrap, &input, &metrics, &produced))
    };
    let verifier = {
        let (bootstrap, seen, done) = (
            setup.bootstrap.clone(),
            Arc::clone(&seen),
            Arc::clone(&done_reading),
        );
        let (output, dead_letter, partitions) = (
            setup.output.clone(),
            setup.dead_letter.clone(),
            args.partitions,
        );
        std::thread::spawn(move || {
            progress::verify(&bootstrap, &output, &dead_letter, partitions, &seen, &done)
        })
    };
    let followed = progress::follow(started, Some(producer), &produced, &metrics, &seen).await?;

    // A checkpoint of every partition taken after the last event.
    let uploads = metrics
        .checkpoint_uploads
        .get_or_create(&ResultLabels { result: "success" })
        .clone();
    let before = uploads.get();
    let checkpoint_wait = Instant::now();
    while uploads.get() < before + args.partitions as u64
        && checkpoint_wait.elapsed() < FINAL_CHECKPOINT_WAIT
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let the verifier see anything extra (a copy published by mistake) before judging.
    tokio::time::sleep(Duration::from_secs(1)).await;
    done_reading.store(true, Ordering::Relaxed);
    let _ = verifier.join();
    let _ = stop.send(());
    dedup.await??;
    Ok(report::build(report::Inputs {
        followed,
        metrics: &metrics,
        seen: &seen,
        partitions: args.partitions,
        guarantee: args.output_guarantee,
        remote: &setup.remote,
        key_prefix: &setup.key_prefix,
        input: &setup.input,
    })
    .await)
}
