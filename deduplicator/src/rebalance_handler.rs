//! Partition assignment and revocation.
//!
//! Revocation: fence the partition (its worker takes no new message), let in-flight
//! messages drain (bounded by `REBALANCE_DRAIN_TIMEOUT`), commit its final offset
//! synchronously, upload a last checkpoint of its store (with a remote, bounded by
//! `FINAL_CHECKPOINT_TIMEOUT`, not when the assignment was lost), flush and close its
//! store. Only then is the partition given up, so the next owner starts exactly where
//! this one stopped, from a store as recent as the commit. The callback is bounded for
//! all its partitions together, whatever their number: `CHECKPOINT_LOCK_WAIT` (30 s) +
//! `REBALANCE_DRAIN_TIMEOUT` + `FINAL_STORE_CALL_ALLOWANCE` (5 s) + the commit +
//! `FINAL_CHECKPOINT_TIMEOUT` + `STORE_CLOSE_WAIT` (60 s) at most.
//!
//! Assignment: open the partition's store, compare the offset it is consistent with
//! against the group's committed offset, and when the store is behind, start consuming
//! at the store's offset with catch-up up to the committed one (keys learned, nothing
//! published). The partition's queue is split off before it is assigned, so its messages
//! go to its own worker task from the first one.
//!
//! With a checkpoint remote, the store is prepared in the partition's own task instead
//! ([`crate::partition_restore`]): restored when the local one is missing or behind the
//! newest remote checkpoint, while the other partitions keep flowing.
//!
//! Checkpoints of a revoked partition: its checkpoint lock is taken after the fence, so
//! an upload in progress either published its manifest before the partition was given
//! up or will see the fence and publish nothing.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use dedup_core::store::PartitionStore;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::checkpoint_exporter::{ChecksumCache, CHECKPOINT_LOCK_WAIT};
use crate::context::Context;
use crate::internal_events::{FinalCheckpointsTimedOut, InternalEvent, KafkaCallFailed};
use crate::kafka_context::{DedupConsumer, DedupContext, PartitionQueue};
use crate::message_tracker::PartitionTracker;
use crate::metrics::{KindLabels, PartitionLabels};
use crate::partition_restore::{
    count_catch_up, is_new, offset_in, plan_start, ready_where, rebuilds_window, Committed,
    ReadyWhere,
};
use crate::partition_task::{PartitionTask, Start, StoreSlot};
use crate::partition_worker::WorkerExit;

/// How long a revocation waits, for all its partitions together, for the retention
/// task or a checkpoint to let go of the stores it closes (RocksDB allows one open
/// instance per directory, so the partition could not come back while one is held).
const STORE_CLOSE_WAIT: Duration = Duration::from_secs(60);

/// Beyond `REBALANCE_DRAIN_TIMEOUT`, the time a revoked worker gets for its last store
/// call before it is cancelled.
const FINAL_STORE_CALL_ALLOWANCE: Duration = Duration::from_secs(5);

/// How long to wait for the group coordinator's committed offsets on assignment.
const COMMITTED_OFFSETS_TIMEOUT: Duration = Duration::from_secs(10);

struct PartitionHandle {
    store: StoreSlot,
    tracker: Arc<PartitionTracker>,
    fence: watch::Sender<bool>,
    stray: mpsc::UnboundedSender<OwnedMessage>,
    task: JoinHandle<WorkerExit>,
    /// Held by the checkpoint exporter while it commits a remote checkpoint.
    checkpoint_lock: Arc<tokio::sync::Mutex<()>>,
    /// Unique to this assignment of the partition (its store may be another lineage's).
    assignment: u64,
}

/// What the checkpoint exporter needs of an owned partition.
pub struct ExportTarget {
    pub partition: i32,
    /// Unique to this assignment of the partition: a store opened (or restored) at
    /// another assignment may hold another lineage's files under the same names.
    pub assignment: u64,
    pub store: Weak<PartitionStore>,
    /// True once the partition is being given up.
    pub fence: watch::Receiver<bool>,
    /// Take it, then check the fence, before publishing a manifest or collecting garbage.
    pub checkpoint_lock: Arc<tokio::sync::Mutex<()>>,
    /// The final checkpoint of a partition being given up (its offsets committed).
    pub last: bool,
}

pub struct RebalanceHandler {
    pub context: Arc<Context>,
    consumer: OnceLock<Weak<DedupConsumer>>,
    partitions: Mutex<HashMap<i32, PartitionHandle>>,
    runtime: Handle,
    /// Counts assignments; `applied` is the newest one handed to the consumer, so a
    /// partition task knows when its partition is assigned (and may pause or seek it).
    generation: AtomicU64,
    /// Counts partition assignments (each partition's own), for [`ExportTarget::assignment`].
    assignments: AtomicU64,
    pub(crate) applied: watch::Sender<u64>,
    /// The partitions owned after the latest rebalance (for the ownership record).
    owners: watch::Sender<Vec<i32>>,
    /// Subscribed at creation, so that no rebalance is missed.
    owners_rx: Mutex<Option<watch::Receiver<Vec<i32>>>>,
    checksums: Mutex<ChecksumCache>,
}

impl RebalanceHandler {
    pub fn new(context: Arc<Context>, runtime: Handle) -> Self {
        let (owners, owners_rx) = watch::channel(Vec::new());
        Self {
            context,
            consumer: OnceLock::new(),
            partitions: Mutex::new(HashMap::new()),
            runtime,
            generation: AtomicU64::new(0),
            assignments: AtomicU64::new(0),
            applied: watch::channel(0).0,
            owners,
            owners_rx: Mutex::new(Some(owners_rx)),
            checksums: Mutex::new(ChecksumCache::default()),
        }
    }

    /// Checksums of SSTs already computed, shared by the periodic and final checkpoints.
    pub(crate) fn checksums(&self) -> MutexGuard<'_, ChecksumCache> {
        self.checksums
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The partitions owned after each rebalance (not emptied by shutdown: the record
    /// tells the restorer what this pod will most likely own again).
    /// Every rebalance since the handler was created is seen as a change.
    pub fn owners(&self) -> watch::Receiver<Vec<i32>> {
        self.owners_rx
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .unwrap_or_else(|| self.owners.subscribe())
    }

    pub(crate) fn publish_owned(&self) {
        let mut owned = self.owned();
        owned.sort_unstable();
        self.owners.send_replace(owned);
    }

    /// Gives the handler the consumer it serves (it needs it to split partition queues).
    pub fn attach(&self, consumer: &Arc<DedupConsumer>) {
        let _ = self.consumer.set(Arc::downgrade(consumer));
    }

    /// Partitions currently owned.
    pub fn owned(&self) -> Vec<i32> {
        self.partitions().keys().copied().collect()
    }

    /// The stores of owned partitions, for the retention task. Weak: a revocation must be
    /// able to close a store without waiting for anyone.
    pub fn stores(&self) -> Vec<(i32, Weak<PartitionStore>)> {
        self.partitions()
            .iter()
            .filter_map(|(p, h)| h.store.get().map(|s| (*p, Arc::downgrade(s))))
            .collect()
    }

    /// Owned partitions whose store is ready, for the checkpoint exporter.
    pub fn export_targets(&self) -> Vec<ExportTarget> {
        let mut targets: Vec<ExportTarget> = self
            .partitions()
            .iter()
            .filter_map(|(p, h)| {
                h.store.get().map(|s| ExportTarget {
                    partition: *p,
                    assignment: h.assignment,
                    store: Arc::downgrade(s),
                    fence: h.fence.subscribe(),
                    checkpoint_lock: Arc::clone(&h.checkpoint_lock),
                    last: false,
                })
            })
            .collect();
        targets.sort_by_key(|t| t.partition);
        targets
    }

    /// Hands a message that arrived on the consumer's main queue to its partition's
    /// worker. Returns false if the partition is not owned (then it is not committed
    /// either, and the owner will consume it).
    pub fn route_stray(&self, message: OwnedMessage) -> bool {
        match self.partitions().get(&message.partition()) {
            Some(handle) => handle.stray.send(message).is_ok(),
            None => false,
        }
    }

    /// Starts a worker for every assigned partition of the topic; returns the
    /// assignment's generation.
    pub(crate) fn assign<C: Consumer<DedupContext>>(
        &self,
        consumer: &C,
        tpl: &mut TopicPartitionList,
    ) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let topic = self.context.config.kafka_consumer_topic.clone();
        // Exactly-once reads them in each partition's task, after its producer has fenced
        // the previous owner, whose last transaction may still be committing offsets now.
        let exactly_once = self.context.config.exactly_once();
        let committed = if exactly_once {
            None
        } else {
            match consumer.committed_offsets(tpl.clone(), COMMITTED_OFFSETS_TIMEOUT) {
                Ok(committed) => Some(committed),
                Err(error) => {
                    tracing::warn!(%error, "could not read committed offsets; each partition reads its own before consuming");
                    None
                }
            }
        };
        let Some(stream_consumer) = self.consumer.get().and_then(Weak::upgrade) else {
            tracing::error!("rebalance before the consumer was attached");
            return generation;
        };
        let assigned: Vec<i32> = tpl
            .elements()
            .iter()
            .filter(|e| e.topic() == topic)
            .map(|e| e.partition())
            .collect();
        for partition in assigned {
            let committed_offset = match &committed {
                Some(list) => Committed::Known(offset_in(list, &topic, partition)),
                None => Committed::Unknown,
            };
            let Some(start) = self.start_for(tpl, &topic, partition, committed_offset, generation)
            else {
                continue;
            };
            let Some(queue) = stream_consumer.split_partition_queue(&topic, partition) else {
                tracing::error!(
                    partition,
                    "cannot split the partition queue; not consuming it"
                );
                continue;
            };
            self.start_worker(
                &topic,
                partition,
                start,
                queue,
                committed_offset,
                &stream_consumer,
            );
        }
        self.context
            .metrics
            .assigned_partitions
            .set(self.partitions().len() as i64);
        generation
    }

    /// How an assigned partition's store gets ready; `None` when the partition cannot be
    /// consumed (its store does not open). Without a remote and with the committed offset
    /// known, the store is opened and planned here, and the partition's start offset set
    /// in `tpl`; otherwise in the partition's task, off this callback.
    fn start_for(
        &self,
        tpl: &mut TopicPartitionList,
        topic: &str,
        partition: i32,
        committed: Committed,
        generation: u64,
    ) -> Option<Start> {
        let known = match ready_where(committed, self.context.loader.is_some()) {
            ReadyWhere::InTask => {
                return Some(Start::Prepare {
                    generation,
                    opened: None,
                })
            }
            ReadyWhere::Here { committed } => committed,
        };
        let store = match self.open_store(topic, partition) {
            Ok(store) => store,
            Err(error) => {
                // Without a store the partition cannot be deduplicated: do not consume it
                // (nothing is committed, nothing lost); report unhealthy.
                self.context.store_failed(partition, &error);
                tracing::error!(partition, %error, "cannot open the partition store; not consuming it");
                return None;
            }
        };
        if rebuilds_window(
            is_new(&store),
            known,
            self.context.config.catch_up_max_messages,
        ) {
            // The offset of the window's start is looked up in the partition's task.
            return Some(Start::Prepare {
                generation,
                opened: Some(Box::new(store)),
            });
        }
        let plan = plan_start(&store, partition, known, None);
        count_catch_up(&self.context, &plan, false);
        let mut catch_up_until = plan.catch_up_until;
        if let Some(start) = plan.start {
            if let Err(error) = tpl_set(tpl, topic, partition, start) {
                tracing::warn!(partition, %error, "cannot set the start offset");
                catch_up_until = None;
            }
        }
        Some(Start::Ready {
            store: Box::new(store),
            catch_up_until,
        })
    }

    fn start_worker(
        &self,
        topic: &str,
        partition: i32,
        start: Start,
        queue: PartitionQueue,
        committed: Committed,
        consumer: &Arc<DedupConsumer>,
    ) {
        let known = match committed {
            Committed::Known(known) => known,
            Committed::Unknown => None,
        };
        let tracker = self.context.tracker.partition(partition, known);
        if let Some(committed) = known {
            // The gauge shows where the partition stands from the start, not only once
            // this process stores an offset.
            self.context
                .metrics
                .committed_offset
                .get_or_create(&PartitionLabels { partition })
                .set(committed);
        }
        let (fence, fence_rx) = watch::channel(false);
        let (stray, stray_rx) = mpsc::unbounded_channel();
        let slot: StoreSlot = Arc::new(OnceLock::new());
        let task = PartitionTask {
            context: Arc::clone(&self.context),
            consumer: Arc::clone(consumer),
            topic: topic.to_string(),
            partition,
            committed,
            queue,
            tracker: Arc::clone(&tracker),
            fence: fence_rx,
            stray: stray_rx,
            slot: Arc::clone(&slot),
            applied: self.applied.subscribe(),
        };
        let task = self.runtime.spawn(task.run(start));
        tracing::info!(partition, ?committed, "partition assigned");
        self.partitions().insert(
            partition,
            PartitionHandle {
                store: slot,
                tracker,
                fence,
                stray,
                task,
                checkpoint_lock: Arc::new(tokio::sync::Mutex::new(())),
                assignment: self.assignments.fetch_add(1, Ordering::SeqCst),
            },
        );
    }

    /// Opens the local store of a partition.
    fn open_store(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<PartitionStore, dedup_core::StoreError> {
        let config = &self.context.config;
        let path = PartitionStore::dir_for(&config.store_path, topic, partition);
        PartitionStore::open(path, &config.store_settings(), &self.context.resources)
    }

    /// Fences, drains, commits and closes the given partitions.
    pub fn revoke<C: Consumer<DedupContext>>(&self, consumer: &C, partitions: Vec<i32>) {
        let handles: Vec<(i32, PartitionHandle)> = {
            let mut owned = self.partitions();
            partitions
                .into_iter()
                .filter_map(|p| owned.remove(&p).map(|h| (p, h)))
                .collect()
        };
        if handles.is_empty() {
            return;
        }
        for (_, handle) in &handles {
            handle.tracker.fence();
            let _ = handle.fence.send(true);
        }
        // A checkpoint commit in progress finishes (or is cancelled, within
        // FENCED_COMMIT_GRACE) first; any later one sees the fence. One deadline for all.
        let locks_by = tokio::time::Instant::now() + CHECKPOINT_LOCK_WAIT;
        for (partition, handle) in &handles {
            let lock = Arc::clone(&handle.checkpoint_lock);
            let waited =
                self.block_on(async { tokio::time::timeout_at(locks_by, lock.lock_owned()).await });
            if waited.is_err() {
                tracing::error!(
                    partition,
                    ?CHECKPOINT_LOCK_WAIT,
                    "a checkpoint upload still held the partition after its revocation"
                );
            }
        }
        // Workers stop within the drain timeout; allow for the final store call too. One
        // deadline for all the revoked partitions, not one each: the callback is bounded.
        let stopped_by = tokio::time::Instant::now()
            + self.context.config.rebalance_drain_timeout
            + FINAL_STORE_CALL_ALLOWANCE;
        let topic = self.context.config.kafka_consumer_topic.clone();
        let mut offsets = TopicPartitionList::new();
        let mut stores = Vec::new();
        let mut finals = Vec::new();
        for (partition, handle) in handles {
            let abort = handle.task.abort_handle();
            let exit = self.block_on(async {
                match tokio::time::timeout_at(stopped_by, handle.task).await {
                    Ok(Ok(exit)) => Some(exit),
                    Ok(Err(error)) => {
                        tracing::error!(partition, %error, "partition worker failed");
                        None
                    }
                    Err(_) => {
                        // Cancelled, so that it holds neither the store (which the
                        // partition needs if it comes back) nor anything of the partition.
                        abort.abort();
                        tracing::error!(
                            partition,
                            "partition worker did not stop in time; cancelled"
                        );
                        None
                    }
                }
            });
            if let Some(WorkerExit {
                committable: Some(next),
            }) = exit
            {
                let _ = offsets.add_partition_offset(&topic, partition, Offset::Offset(next));
            }
            if let Some(store) = handle.store.get() {
                stores.push((partition, Arc::clone(store)));
                finals.push(ExportTarget {
                    partition,
                    assignment: handle.assignment,
                    store: Arc::downgrade(store),
                    // Unfenced: the partition is still this member's until the callback
                    // returns (the periodic exporter sees the handle's fence).
                    fence: watch::channel(false).1,
                    checkpoint_lock: Arc::clone(&handle.checkpoint_lock),
                    last: true,
                });
            }
        }
        if offsets.count() > 0 {
            if let Err(error) = consumer.commit(&offsets, CommitMode::Sync) {
                KafkaCallFailed {
                    message: "committing revoked partitions failed; their next owner will see redeliveries",
                    partition: None,
                    error: &error,
                    level: tracing::Level::WARN,
                }
                .emit(&self.context.metrics);
            }
        }
        if !consumer.assignment_lost() {
            self.final_checkpoints(finals);
        }
        let closed_by = std::time::Instant::now() + STORE_CLOSE_WAIT;
        for (partition, store) in stores {
            self.close_store(partition, store, closed_by);
        }
        self.context
            .metrics
            .assigned_partitions
            .set(self.partitions().len() as i64);
    }

    /// A last checkpoint of each partition being given up, all at once, within
    /// `FINAL_CHECKPOINT_TIMEOUT`: its next owner restores it and replays almost nothing.
    /// Each commits its manifest under the partition's checkpoint lock, as the periodic
    /// ones do; what is not done in time is cancelled (the next owner then restores the
    /// last periodic checkpoint and replays the rest).
    fn final_checkpoints(&self, targets: Vec<ExportTarget>) {
        let config = &self.context.config;
        let timeout = config.final_checkpoint_timeout;
        if targets.is_empty()
            || timeout.is_zero()
            || config.checkpoint_interval.is_zero()
            || self.context.remote.is_none()
        {
            return;
        }
        let partitions: Vec<i32> = targets.iter().map(|t| t.partition).collect();
        let started = std::time::Instant::now();
        let exports = targets
            .into_iter()
            .map(|target| crate::checkpoint_exporter::export(self, target));
        let done = self.block_on(tokio::time::timeout(
            timeout,
            futures_util::future::join_all(exports),
        ));
        match done {
            Ok(_) => tracing::info!(
                ?partitions,
                seconds = started.elapsed().as_secs_f64(),
                "final checkpoints of the partitions given up"
            ),
            Err(_) => {
                FinalCheckpointsTimedOut {
                    partitions: &partitions,
                    timeout,
                }
                .emit(&self.context.metrics);
            }
        }
    }

    /// Revokes everything owned (shutdown).
    pub fn revoke_all<C: Consumer<DedupContext>>(&self, consumer: &C) {
        self.revoke(consumer, self.owned());
    }

    fn close_store(
        &self,
        partition: i32,
        store: Arc<PartitionStore>,
        deadline: std::time::Instant,
    ) {
        let metrics = &self.context.metrics;
        metrics
            .store_size_bytes
            .remove(&PartitionLabels { partition });
        metrics.consumer_lag.remove(&PartitionLabels { partition });
        metrics
            .committed_offset
            .remove(&PartitionLabels { partition });
        if let Err(error) = store.flush() {
            tracing::error!(partition, %error, "flushing the store on revocation failed");
        }
        // The retention task may hold the store for a moment; RocksDB allows one open
        // instance per directory, so wait for it before the partition can come back.
        let mut store = store;
        loop {
            match Arc::try_unwrap(store) {
                Ok(owned) => {
                    if let Err(error) = owned.close() {
                        tracing::error!(partition, %error, "closing the store failed");
                    }
                    tracing::info!(partition, "partition revoked; store closed");
                    return;
                }
                Err(shared) if std::time::Instant::now() < deadline => {
                    store = shared;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(_) => break,
            }
        }
        tracing::error!(
            partition,
            ?STORE_CLOSE_WAIT,
            "store still in use after the revocation; it closes when its last user lets go"
        );
    }

    pub(crate) fn count(&self, kind: &'static str) {
        self.context
            .metrics
            .rebalances
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Runs a future to completion from the rebalance callback, which librdkafka calls
    /// on a runtime worker thread inside the consumer's poll.
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        if Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.runtime.block_on(future))
        } else {
            self.runtime.block_on(future)
        }
    }

    fn partitions(&self) -> MutexGuard<'_, HashMap<i32, PartitionHandle>> {
        self.partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn tpl_set(
    tpl: &mut TopicPartitionList,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<(), KafkaError> {
    tpl.set_partition_offset(topic, partition, Offset::Offset(offset))
}
