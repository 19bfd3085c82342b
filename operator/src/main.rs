//! `operator`: `operator crd` prints the CustomResourceDefinition; `operator run` (the
//! default) runs the controller with /metrics and /healthz on HTTP_BIND.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use dedup_core::config::env;
use dedup_core::http::{self, parse_bind_address, Health};
use dedup_core::telemetry::{self, LogFormat};
use operator::leader::Leadership;
use prometheus_client::registry::Registry;

#[derive(Parser)]
#[command(name = "operator", version, about = "Kafka Deduplicator operator")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print the DedupCluster CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller (the default).
    Run(RunArgs),
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// Address of the HTTP port serving /metrics, /healthz and /readyz.
    #[arg(long, env = env::HTTP_BIND, default_value = "0.0.0.0:8080", value_parser = parse_bind_address)]
    http_bind: SocketAddr,
    /// Namespace whose DedupClusters this operator reconciles; empty: every namespace.
    #[arg(long = "namespace", env = "WATCH_NAMESPACE", default_value = "")]
    watch_namespace: String,
    /// Namespace of the leader-election Lease (`kafka-deduplicator-operator`); empty: no
    /// election (run one replica only). The manifests set it to the pod's namespace.
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE", default_value = "")]
    leader_election_namespace: String,
    /// Log format: text or json.
    #[arg(long, env = env::LOG_FORMAT, default_value = "text")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Crd) => {
            return match operator::crd_yaml() {
                Ok(yaml) => {
                    print!("{yaml}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("error: cannot render the CRD: {error}");
                    ExitCode::FAILURE
                }
            };
        }
        Some(Command::Run(args)) => args,
        None => RunArgs::parse_from(["operator"]),
    };
    telemetry::init(args.log_format);
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
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "operator failed");
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    let client = operator::kube_client().await?;
    let mut registry = Registry::default();
    let metrics = Arc::new(operator::metrics::Metrics::new(&mut registry));
    let health = Health::default();
    let listener = http::bind(args.http_bind)
        .await
        .map_err(|e| format!("cannot bind HTTP_BIND {}: {e}", args.http_bind))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, Arc::new(registry), health, async {
        let _ = stopped.await;
    }));
    // SIGTERM or Ctrl-C, seen by every waiter.
    let (terminate, terminated) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = terminate.send(true);
    });
    let until_terminated = |mut terminated: tokio::sync::watch::Receiver<bool>| async move {
        let _ = terminated.wait_for(|t| *t).await;
    };

    let namespace = Some(args.watch_namespace).filter(|n| !n.is_empty());
    let election = Some(args.leader_election_namespace).filter(|n| !n.is_empty());
    let leadership = match &election {
        Some(lease_namespace) => {
            let holder = std::env::var(env::POD_NAME)
                .unwrap_or_else(|_| format!("operator-{}", std::process::id()));
            tokio::select! {
                leadership = Leadership::acquire(client.clone(), lease_namespace, holder) => Some(leadership),
                _ = until_terminated(terminated.clone()) => None,
            }
        }
        None => None,
    };
    let result = if election.is_some() && leadership.is_none() {
        Ok(()) // terminated while waiting to lead
    } else {
        tracing::info!(
            namespace = namespace.as_deref().unwrap_or("(all)"),
            "operator started"
        );
        let controller = operator::controller::run(
            client,
            namespace,
            metrics,
            until_terminated(terminated.clone()),
        );
        match &leadership {
            None => {
                controller.await;
                Ok(())
            }
            Some(leadership) => {
                let outcome = tokio::select! {
                    _ = controller => Ok(()),
                    why = leadership.keep() => Err(format!("leadership lost ({why}); exiting so that one replica reconciles")),
                };
                if outcome.is_ok() {
                    leadership.step_down().await;
                }
                outcome
            }
        }
    };
    let _ = stop.send(());
    let _ = server.await;
    Ok(result?)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
