//! Warm handoff: the checkpoints of partitions about to move here are downloaded before
//! their old owners give them up.
//!
//! With `KAFKA_GROUP_PROTOCOL=consumer` (KIP-848) the brokers compute the assignment, and
//! a partition that moves is in its new owner's *target* assignment
//! ([`crate::target_assignment`]) from the moment the coordinator decides the move, while
//! the old owner still consumes it: the old owner learns of the revocation on its next
//! heartbeat and then drains, commits and uploads a final checkpoint. Every
//! `PREFETCH_INTERVAL`, this task reads the target and downloads, verifies and stages
//! ([`CheckpointLoader::prefetch`]) the newest checkpoint of each partition in it that
//! this member does not own yet. When the partition arrives, its restore
//! ([`crate::partition_restore::prepare_store`]) finds the staged table files and
//! downloads only what the final checkpoint added.
//!
//! A prefetch and the restore of the same partition never run at once: both hold the
//! partition's [`StagingLocks`] entry, so a restore that starts while its partition is
//! being prefetched waits for the download it would otherwise repeat. Staged copies of
//! partitions that leave the target without arriving are removed. With the classic
//! protocol the target is computed inside the group leader and reaches the new owner
//! only with the assignment, so there is nothing to prefetch from.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dedup_core::checkpoint::loader::CheckpointLoader;
use dedup_core::checkpoint::transfer;
use dedup_core::store::PartitionStore;
use tokio::sync::{OwnedMutexGuard, Semaphore};
use tokio::task::JoinHandle;

use crate::config::GroupProtocol;
use crate::internal_events::{InternalEvent, PrefetchFinished};
use crate::kafka_context::DedupConsumer;
use crate::metrics::Metrics;
use crate::rebalance_handler::RebalanceHandler;
use crate::target_assignment::{target_partitions, TargetError};

/// Bound of one read of the target assignment.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Partitions prefetched at once (each downloads CHECKPOINT_TRANSFER_CONCURRENCY files
/// at once).
const PREFETCH_CONCURRENCY: usize = 2;

/// One lock per partition over its staging directories: held by a prefetch and by the
/// restore at assignment, so they never write the same files at once.
#[derive(Default)]
pub struct StagingLocks(Mutex<HashMap<i32, Arc<tokio::sync::Mutex<()>>>>);

impl StagingLocks {
    /// Waits until no prefetch or restore of `partition` runs, and holds it off.
    pub async fn lock(&self, partition: i32) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.0.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(locks.entry(partition).or_default())
        };
        lock.lock_owned().await
    }
}

/// Partitions whose prefetch ended (staged, or nothing to stage), not yet assigned.
type Tried = Arc<Mutex<BTreeSet<i32>>>;

fn locked(set: &Tried) -> MutexGuard<'_, BTreeSet<i32>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

/// Prefetches until aborted; returns at once unless KAFKA_GROUP_PROTOCOL=consumer, a
/// checkpoint remote is set and PREFETCH_INTERVAL is above 0.
pub async fn prefetch_loop(handler: Arc<RebalanceHandler>, consumer: Arc<DedupConsumer>) {
    let context = Arc::clone(&handler.context);
    let config = &context.config;
    let Some(loader) = context.loader.clone() else {
        return;
    };
    if config.kafka_group_protocol != GroupProtocol::Consumer || config.prefetch_interval.is_zero()
    {
        return;
    }
    let topic = config.kafka_consumer_topic.clone();
    let group = config.kafka_consumer_group.clone();
    // Copies staged by an earlier run are removed unless their partition is coming.
    let tried: Tried = Arc::new(Mutex::new(staged_on_volume(&config.store_path, &topic)));
    let permits = Arc::new(Semaphore::new(PREFETCH_CONCURRENCY));
    let mut running: HashMap<i32, JoinHandle<()>> = HashMap::new();
    let mut coming = BTreeSet::new();
    let mut failures = 0u32;
    let mut ticker = tokio::time::interval(config.prefetch_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        running.retain(|_, task| !task.is_finished());
        let target = {
            let (consumer, group, topic) = (Arc::clone(&consumer), group.clone(), topic.clone());
            tokio::task::spawn_blocking(move || {
                target_partitions(&consumer, &group, &topic, DESCRIBE_TIMEOUT)
            })
            .await
        };
        let target = match target {
            Ok(Ok(target)) => {
                failures = 0;
                target
            }
            Ok(Err(TargetError::NotJoined)) | Err(_) => continue,
            Ok(Err(error)) => {
                failures += 1;
                Metrics::count(&context.metrics.prefetches, "describe_failed");
                // Once, then every minute or so while it lasts.
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(%error, failures, "cannot read this member's target assignment; partitions that move here are restored without a prefetch");
                }
                continue;
            }
        };
        let owned: BTreeSet<i32> = handler.owned().into_iter().collect();
        let now_coming: BTreeSet<i32> = target.difference(&owned).copied().collect();
        if now_coming != coming {
            if !now_coming.is_empty() {
                tracing::info!(partitions = ?now_coming, "partitions about to move here; prefetching their checkpoints");
            }
            coming = now_coming;
        }
        // Arrived partitions: their restore took (or removed) the staged copy.
        locked(&tried).retain(|p| !owned.contains(p));
        let gone: Vec<i32> = locked(&tried)
            .iter()
            .filter(|p| !target.contains(p) && !running.contains_key(p))
            .copied()
            .collect();
        for partition in gone {
            discard(&handler, &topic, partition).await;
            locked(&tried).remove(&partition);
        }
        for &partition in &coming {
            if running.contains_key(&partition) || locked(&tried).contains(&partition) {
                continue;
            }
            let task = prefetch_one(
                Arc::clone(&handler),
                loader.clone(),
                Arc::clone(&permits),
                Arc::clone(&tried),
                topic.clone(),
                partition,
            );
            running.insert(partition, tokio::spawn(task));
        }
    }
}

async fn prefetch_one(
    handler: Arc<RebalanceHandler>,
    loader: CheckpointLoader,
    permits: Arc<Semaphore>,
    tried: Tried,
    topic: String,
    partition: i32,
) {
    let Ok(_permit) = permits.acquire_owned().await else {
        return;
    };
    let context = &handler.context;
    let _staging = context.staging_locks.lock(partition).await;
    if handler.owned().contains(&partition) {
        return; // arrived meanwhile: its restore has run
    }
    let dir = PartitionStore::dir_for(&context.config.store_path, &topic, partition);
    let started = Instant::now();
    let outcome = loader.prefetch(&topic, partition, &dir).await;
    PrefetchFinished {
        partition,
        outcome: &outcome,
        started,
    }
    .emit(&context.metrics);
    locked(&tried).insert(partition);
}

/// Removes the staged copies of a partition that left the target without arriving.
async fn discard(handler: &Arc<RebalanceHandler>, topic: &str, partition: i32) {
    let context = &handler.context;
    let _staging = context.staging_locks.lock(partition).await;
    if handler.owned().contains(&partition) {
        return;
    }
    let dir = PartitionStore::dir_for(&context.config.store_path, topic, partition);
    let _ = tokio::task::spawn_blocking(move || transfer::discard_staged(&dir)).await;
    Metrics::count(&context.metrics.prefetches, "discarded");
    tracing::info!(
        partition,
        "a prefetched partition is no longer coming here; its staged checkpoint is removed"
    );
}

/// Partitions of `topic` with staged checkpoints under `store_path`
/// (`{topic}_{partition}.restore-{checkpoint}`).
fn staged_on_volume(store_path: &Path, topic: &str) -> BTreeSet<i32> {
    let stem = format!("{topic}_");
    let Ok(entries) = std::fs::read_dir(store_path) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let (store, _) = name.strip_prefix(&stem)?.split_once(".restore-")?;
            store.parse::<i32>().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_copies_are_found_by_their_partition() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "events_3.restore-0001-aa",
            "events_3",
            "events_12.restore-0002-bb",
            "other_5.restore-0001-aa",
            "events_x.restore-1",
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
        }
        assert_eq!(
            staged_on_volume(dir.path(), "events"),
            BTreeSet::from([3, 12])
        );
        assert!(staged_on_volume(&dir.path().join("missing"), "events").is_empty());
    }
}
