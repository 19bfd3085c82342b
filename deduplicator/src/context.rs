//! What every part of the running deduplicator shares: settings, metrics, the in-flight
//! tracker, the publisher, the store memory, the checkpoint remote, and the process
//! health.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use dedup_core::checkpoint::loader::CheckpointLoader;
use dedup_core::checkpoint::remote::Remote;
use dedup_core::http::Health;
use dedup_core::store::{StoreError, StoreResources};

use crate::config::Config;
use crate::handoff_prefetch::StagingLocks;
use crate::message_tracker::MessageTracker;
use crate::metrics::Metrics;
use crate::publisher::Publisher;

pub struct Context {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub tracker: MessageTracker,
    pub publisher: Arc<Publisher>,
    pub resources: StoreResources,
    pub health: Health,
    /// Where checkpoints are uploaded; `None`: they stay local.
    pub remote: Option<Remote>,
    /// Restores partition stores on assignment (with a remote only).
    pub loader: Option<CheckpointLoader>,
    /// Keeps a partition's prefetch and its restore at assignment apart.
    pub staging_locks: StagingLocks,
    /// Partitions whose store cannot be opened or written; the process is not healthy
    /// while any is listed.
    failing: Mutex<BTreeSet<i32>>,
}

impl Context {
    pub fn new(
        config: Config,
        metrics: Arc<Metrics>,
        publisher: Publisher,
        health: Health,
        remote: Option<Remote>,
    ) -> Self {
        let loader = remote.clone().map(|remote| CheckpointLoader {
            remote,
            key_prefix: config.remote.s3_key_prefix.clone(),
            concurrency: config.remote.concurrency(),
            max_attempts: config.restore_max_attempts,
            time_bound: config.restore_timeout,
            progress: None,
            local_checkpoints: Some(config.local_checkpoint_dir.clone()),
        });
        Self {
            remote,
            loader,
            staging_locks: StagingLocks::default(),
            tracker: MessageTracker::new(
                config.max_in_flight_messages as usize,
                Arc::clone(&metrics),
                health.clone(),
            ),
            resources: config.store_resources(),
            publisher: Arc::new(publisher),
            config,
            metrics,
            health,
            failing: Mutex::new(BTreeSet::new()),
        }
    }

    /// A partition store failed: the process reports unhealthy (liveness and readiness)
    /// with the reason until every failing store recovers.
    pub fn store_failed(&self, partition: i32, error: &StoreError) {
        self.partition_failed(partition, &format!("store failing: {error}"));
    }

    /// A partition cannot be consumed safely and is left paused: the process reports
    /// unhealthy (liveness and readiness) with the reason, so that it is restarted.
    pub fn partition_failed(&self, partition: i32, reason: &str) {
        self.failing_set().insert(partition);
        self.health
            .set_not_live(format!("partition {partition} {reason}"));
    }

    pub fn store_recovered(&self, partition: i32) {
        let mut failing = self.failing_set();
        failing.remove(&partition);
        if failing.is_empty() {
            self.health.set_live();
        }
    }

    fn failing_set(&self) -> std::sync::MutexGuard<'_, BTreeSet<i32>> {
        self.failing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
