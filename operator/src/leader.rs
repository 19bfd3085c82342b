//! Leader election through a `coordination.k8s.io` Lease (`kube-leader-election`), so the
//! operator's Deployment can run two replicas: one reconciles, the other waits to take
//! over.
//!
//! The leader renews the Lease every [`RENEW`], each attempt bounded by [`RENEW`]; a
//! candidate takes it once it has not been renewed for [`LEASE_TTL`]. A leader that has
//! not renewed it for [`RENEW_DEADLINE`] (shorter than the TTL) stops: the process exits
//! and is restarted as a candidate, before anyone else may take the Lease. The library
//! takes an expired Lease without a resourceVersion precondition, so two candidates
//! racing for it may both believe they won until the next renew shows one of them it
//! lost (one renew interval); reconciles are idempotent server-side applies, so an
//! overlap costs requests, not correctness. On SIGTERM the leader steps down, and the
//! other replica takes over within one retry interval instead of a TTL.

use std::time::{Duration, Instant};

use kube::Client;
use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};

/// The Lease's name, in the operator's namespace.
pub const LEASE_NAME: &str = "kafka-deduplicator-operator";
/// How long a Lease not renewed stays its holder's.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often the leader renews, and a candidate tries; also the bound of one attempt.
pub const RENEW: Duration = Duration::from_secs(3);
/// A leader that has not renewed for this long gives up, before the TTL lets another take
/// the Lease.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);

pub struct Leadership {
    lock: LeaseLock,
    holder: String,
}

impl Leadership {
    /// Waits until this process holds the Lease `LEASE_NAME` in `namespace`.
    pub async fn acquire(client: Client, namespace: &str, holder: String) -> Self {
        let lock = LeaseLock::new(
            client,
            namespace,
            LeaseLockParams {
                lease_name: LEASE_NAME.into(),
                holder_id: holder.clone(),
                lease_ttl: LEASE_TTL,
            },
        );
        let mut waiting_since: Option<Instant> = None;
        loop {
            match lock.try_acquire_or_renew().await {
                Ok(LeaseLockResult::Acquired(_)) => {
                    tracing::info!(%holder, lease = LEASE_NAME, namespace, "leading: this replica reconciles");
                    return Self { lock, holder };
                }
                Ok(LeaseLockResult::NotAcquired(lease)) => {
                    if waiting_since.is_none() {
                        let leader = lease.spec.and_then(|s| s.holder_identity);
                        tracing::info!(%holder, ?leader, "another replica leads; waiting to take over");
                        waiting_since = Some(Instant::now());
                    }
                }
                Err(error) => {
                    tracing::warn!(%holder, %error, "cannot read or take the leader Lease; retrying")
                }
            }
            tokio::time::sleep(RENEW).await;
        }
    }

    /// Renews the Lease until it is lost (another holder, or no renewal within the TTL);
    /// returns why.
    pub async fn keep(&self) -> String {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(RENEW).await;
            match self.lock.try_acquire_or_renew().await {
                Ok(LeaseLockResult::Acquired(_)) => renewed = Instant::now(),
                Ok(LeaseLockResult::NotAcquired(lease)) => {
                    let leader = lease.spec.and_then(|s| s.holder_identity);
                    return format!("the Lease is held by {leader:?} now");
                }
                Err(error) if renewed.elapsed() >= LEASE_TTL => {
                    return format!("the Lease was not renewed for {LEASE_TTL:?}: {error}");
                }
                Err(error) => {
                    tracing::warn!(holder = %self.holder, %error, "renewing the leader Lease failed; retrying")
                }
            }
        }
    }

    /// Gives the Lease up (on shutdown), so another replica takes over at once.
    pub async fn step_down(&self) {
        match self.lock.step_down().await {
            Ok(()) => tracing::info!(holder = %self.holder, "stepped down as leader"),
            Err(error) => {
                tracing::warn!(holder = %self.holder, %error, "stepping down failed; the Lease expires by itself")
            }
        }
    }
}
