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
//! partition's [`StagingLocks`] entry. A restore that starts while its partition is
//! being prefetched cancels the prefetch, which ends once the files under way are
//! verified (no other starts), and then takes what it staged. Staged copies of
//! partitions that leave the target without arriving are removed, and at start-up those
//! an earlier run left unless their partition is coming. A prefetch that fails is not
//! tried again for that move: the restore at assignment downloads the checkpoint, as it
//! would without a prefetch. With the classic protocol the target is computed inside the
//! group leader and reaches the new owner only with the assignment, so there is nothing
//! to prefetch from.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dedup_core::checkpoint::loader::CheckpointLoader;
use dedup_core::checkpoint::transfer;
use dedup_core::store::PartitionStore;
use tokio::sync::{OwnedMutexGuard, Semaphore};
use tokio::task::{AbortHandle, JoinSet};

use crate::config::GroupProtocol;
use crate::internal_events::{InternalEvent, PrefetchFinished};
use crate::kafka_context::DedupConsumer;
use crate::metrics::Metrics;
use crate::rebalance_handler::RebalanceHandler;
use crate::target_assignment::{target_partitions, TargetError};

/// Bound of one read of the target assignment (a read under way at shutdown holds the
/// consumer until it ends).
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Partitions prefetched at once (each downloads CHECKPOINT_TRANSFER_CONCURRENCY files
/// at once).
const PREFETCH_CONCURRENCY: usize = 2;

/// One lock per partition over its staging directories, held by a prefetch and by the
/// restore at assignment so they never write the same files at once, and the
/// cancellation flag of the partition's running prefetch.
#[derive(Default)]
pub struct StagingLocks(Mutex<HashMap<i32, Slot>>);

#[derive(Default)]
struct Slot {
    lock: Arc<tokio::sync::Mutex<()>>,
    prefetch: Arc<AtomicBool>,
}

impl StagingLocks {
    /// Waits until no prefetch or restore of `partition` runs, and holds it off.
    pub async fn lock(&self, partition: i32) -> OwnedMutexGuard<()> {
        let lock = Arc::clone(&self.slots().entry(partition).or_default().lock);
        lock.lock_owned().await
    }

    /// For the restore at assignment: cancels the partition's running prefetch (it ends
    /// once the files under way are verified), then holds off the next.
    pub async fn overtake(&self, partition: i32) -> OwnedMutexGuard<()> {
        if let Some(slot) = self.slots().get(&partition) {
            slot.prefetch.store(true, Ordering::SeqCst);
        }
        self.lock(partition).await
    }

    /// A new prefetch's cancellation flag (the caller holds the partition's lock).
    fn new_prefetch(&self, partition: i32) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.slots().entry(partition).or_default().prefetch = Arc::clone(&flag);
        flag
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<i32, Slot>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A set of partitions shared with the prefetch tasks.
type Shared = Arc<Mutex<BTreeSet<i32>>>;

fn locked(set: &Shared) -> MutexGuard<'_, BTreeSet<i32>> {
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
    // Partitions whose prefetch ended (staged, nothing to stage, failed), not arrived.
    // Copies staged by an earlier run are removed unless their partition is coming.
    let staged = transfer::staged_partitions(&config.store_path, &topic);
    let tried: Shared = Arc::new(Mutex::new(staged.into_iter().collect()));
    // Partitions in the target that this member does not own.
    let coming: Shared = Arc::default();
    let permits = Arc::new(Semaphore::new(PREFETCH_CONCURRENCY));
    // Aborted with this task (at shutdown).
    let mut tasks = JoinSet::new();
    let mut running: HashMap<i32, AbortHandle> = HashMap::new();
    let mut failures = 0u32;
    let mut ticker = tokio::time::interval(config.prefetch_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        while tasks.try_join_next().is_some() {}
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
            Ok(Err(TargetError::NotJoined)) => continue,
            Err(error) => {
                tracing::error!(%error, "reading the target assignment panicked (a bug)");
                continue;
            }
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
        if now_coming != *locked(&coming) {
            if !now_coming.is_empty() {
                tracing::info!(partitions = ?now_coming, "partitions about to move here; prefetching their checkpoints");
            }
            *locked(&coming) = now_coming.clone();
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
        for partition in now_coming {
            if running.contains_key(&partition) || locked(&tried).contains(&partition) {
                continue;
            }
            let task = prefetch_one(
                Arc::clone(&handler),
                loader.clone(),
                Arc::clone(&permits),
                [Arc::clone(&tried), Arc::clone(&coming)],
                topic.clone(),
                partition,
            );
            running.insert(partition, tasks.spawn(task));
        }
    }
}

async fn prefetch_one(
    handler: Arc<RebalanceHandler>,
    loader: CheckpointLoader,
    permits: Arc<Semaphore>,
    [tried, coming]: [Shared; 2],
    topic: String,
    partition: i32,
) {
    let Ok(_permit) = permits.acquire_owned().await else {
        return;
    };
    let context = &handler.context;
    let _staging = context.staging_locks.lock(partition).await;
    if handler.owned().contains(&partition) || !locked(&coming).contains(&partition) {
        return; // arrived meanwhile (its restore has run), or no longer coming
    }
    let cancel = context.staging_locks.new_prefetch(partition);
    let dir = PartitionStore::dir_for(&context.config.store_path, &topic, partition);
    let started = Instant::now();
    let outcome = loader.prefetch(&topic, partition, &dir, cancel).await;
    PrefetchFinished {
        partition,
        outcome: &outcome,
        started,
    }
    .emit(&context.metrics);
    locked(&tried).insert(partition);
}

/// Removes the staged copies of a partition that is not coming here (it left the target
/// without arriving, or an earlier run staged it).
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
        "a staged checkpoint of a partition not coming here is removed"
    );
}
