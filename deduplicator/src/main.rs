//! `deduplicator`: see the crate documentation and the README.

use std::process::ExitCode;

use clap::Parser;
use deduplicator::Config;

fn main() -> ExitCode {
    // A bad setting exits here with status 2 and a message naming the variable.
    let config = Config::parse();
    if let Err(message) = config.validate() {
        eprintln!("error: {message}");
        return ExitCode::from(2);
    }
    dedup_core::telemetry::init(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(deduplicator::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "deduplicator failed");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the process");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
