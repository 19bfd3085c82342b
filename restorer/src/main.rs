//! `restorer`: see the crate documentation and the README.

use std::process::ExitCode;

use clap::Parser;
use restorer::Config;

fn main() -> ExitCode {
    // A bad setting exits here with status 2 and a message naming the variable.
    let config = Config::parse();
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
    let summary = runtime.block_on(restorer::run(&config));
    if summary.failed() && config.restore_fail_hard {
        tracing::error!("not every partition could be restored and RESTORE_FAIL_HARD is set");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
