//! Getting a newly assigned partition's store ready: restore it from the newest remote
//! checkpoint when the local store is missing or behind, then decide where consumption
//! starts and up to where it is catch-up (keys learned, nothing published).
//!
//! With a remote, this runs in the partition's own task, so other partitions keep
//! flowing: the partition is paused while its store is restored, moved back to the
//! store's offset if that is behind the committed one, and resumed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dedup_core::checkpoint::loader::{local_next_offset, LoadOutcome};
use dedup_core::checkpoint::transfer::RestoreOutcome;
use dedup_core::store::PartitionStore;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::context::Context;
use crate::internal_events::{InternalEvent, KafkaCallFailed, RestoreFinished};
use crate::kafka_context::DedupConsumer;
use crate::metrics::Metrics;

/// Bound of the consumer calls made here (pause, seek, resume, committed offsets).
const CONSUMER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the move of a partition back to its store's offset is retried before the
/// partition is given up as unsafe to consume (see [`seek_to_start`]). A previous owner's
/// transaction is ended by this owner's producer before the move, so the wait is short.
const SEEK_WAIT: Duration = Duration::from_secs(60);

/// Step of the growing pause between refused moves (at most ten steps).
const SEEK_RETRY_STEP: Duration = Duration::from_millis(50);

/// The group's committed offset of a partition, as far as the assignment knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Committed {
    /// Read from the group coordinator: `None` means the group has no offset for it.
    Known(Option<i64>),
    /// The read failed (it times out in a rebalance storm). It is read again, retried,
    /// before the partition is planned: treating "unknown" as "none" would restart
    /// from the store's offset, or from 0, and publish history again.
    Unknown,
}

/// Where an assigned partition's store gets ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyWhere {
    /// In the rebalance callback: the store is opened and planned against this committed
    /// offset (no remote, and the offset is known).
    Here { committed: Option<i64> },
    /// In the partition's own task, off the callback: the restore check (with a remote),
    /// or the committed offset read again, retried (it could not be read).
    InTask,
}

/// Decides where a partition's store gets ready, from the committed offset as the
/// assignment read it and whether a checkpoint remote is configured.
pub fn ready_where(committed: Committed, has_remote: bool) -> ReadyWhere {
    match committed {
        Committed::Known(committed) if !has_remote => ReadyWhere::Here { committed },
        _ => ReadyWhere::InTask,
    }
}

/// True when a store opened in the callback must have its window rebuilt by catch-up (in
/// the partition's task, where the window's start offset is looked up): it is empty, the
/// group has consumed the partition before, and catch-up is allowed.
pub fn rebuilds_window(store_is_new: bool, committed: Option<i64>, catch_up_max: u64) -> bool {
    store_is_new && committed.is_some_and(|c| c > 0) && catch_up_max > 0
}

/// Where a partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StartPlan {
    /// Consume from here instead of the committed offset.
    pub start: Option<i64>,
    /// Messages below this offset are catch-up.
    pub catch_up_until: Option<i64>,
}

/// Compares the store's offset with the group's committed one.
///
/// - **A store behind the committed offset** (a crash lost unflushed keys, an older
///   checkpoint): its gap is replayed in catch-up mode.
/// - **A new (empty) store** of a partition the group has consumed before (it moved here
///   without a usable checkpoint): the window's keys are rebuilt by catch-up replay from
///   `rebuild_from` (the first offset of `now − DEDUP_WINDOW`, bounded by
///   CATCH_UP_MAX_MESSAGES), so copies of events published before the move are dropped.
///   That start is recorded durably now, so that a crash losing the unflushed keys still
///   shows the store behind.
/// - **No committed offset** (a new group, expired offsets) **but a store**: the store's
///   next offset does not mean "published" (keys are written before their messages are
///   published), so consumption resumes at its *finished* offset, below which every
///   outcome was final; the originals after it are redeliveries and published again.
///   Without one, consumption starts where the consumer's `auto.offset.reset` says.
pub fn plan_start(
    store: &PartitionStore,
    partition: i32,
    committed: Option<i64>,
    rebuild_from: Option<i64>,
) -> StartPlan {
    let store_next = match store.next_offset() {
        Ok(Some(next)) => Some(next),
        Ok(None) => {
            let start = match committed {
                Some(committed) => rebuild_from.map_or(committed, |r| r.clamp(0, committed)),
                None => 0,
            };
            if let Err(error) = store.record_next_offset(start).and_then(|()| store.flush()) {
                tracing::warn!(partition, %error, "cannot record the new store's start offset");
            }
            if committed.is_some_and(|c| start < c) {
                tracing::info!(
                    partition,
                    from = start,
                    to = committed,
                    "new store: rebuilding the window's keys by catch-up replay before publishing"
                );
            }
            Some(start)
        }
        Err(error) => {
            tracing::warn!(partition, %error, "cannot read the store's offset; no catch-up replay");
            None
        }
    };
    match (store_next, committed) {
        (Some(start), Some(committed)) if start < committed => {
            tracing::info!(
                partition,
                from = start,
                to = committed,
                "store is behind the committed offset; replaying the gap in catch-up mode"
            );
            StartPlan {
                start: Some(start),
                catch_up_until: Some(committed),
            }
        }
        (Some(next), None) if next > 0 => match store.finished_offset() {
            Ok(Some(finished)) if finished > 0 => {
                let start = finished.min(next);
                tracing::info!(
                    partition,
                    start,
                    store_next = next,
                    "no committed offset; resuming at the store's finished offset (originals after it are published again)"
                );
                StartPlan {
                    start: Some(start),
                    catch_up_until: None,
                }
            }
            finished => {
                tracing::warn!(
                    partition,
                    store_next = next,
                    ?finished,
                    "no committed offset and no finished offset in the store; consuming from auto.offset.reset (originals the store knows are published again)"
                );
                StartPlan::default()
            }
        },
        _ => StartPlan::default(),
    }
}

/// A partition's store, ready to consume.
pub struct Prepared {
    pub store: PartitionStore,
    /// Messages below this offset are catch-up.
    pub catch_up_until: Option<i64>,
    /// The group's committed offset, read again if it was unknown at assignment.
    pub committed: Option<i64>,
}

/// Restores (if needed) and opens the store of a partition assigned at `committed`,
/// moving consumption back to the store's offset when it is behind. `None` if the store
/// cannot be opened (the process then reports unhealthy and does not consume it).
pub async fn prepare_store(
    context: &Arc<Context>,
    consumer: &Arc<DedupConsumer>,
    topic: &str,
    partition: i32,
    committed: Committed,
    opened: Option<PartitionStore>,
) -> Option<Prepared> {
    let started = Instant::now();
    let config = &context.config;
    let metrics = &context.metrics;
    let dir = PartitionStore::dir_for(&config.store_path, topic, partition);
    let one = partition_list(topic, partition);
    let paused = {
        let consumer = Arc::clone(consumer);
        let one = one.clone();
        blocking(move || consumer.pause(&one)).await
    };
    if let Some(Err(error)) = &paused {
        tracing::warn!(partition, %error, "cannot pause the partition while restoring");
    }
    let committed = match committed {
        Committed::Known(committed) => committed,
        Committed::Unknown => read_committed(context, consumer, topic, partition).await,
    };

    if let (Some(loader), None) = (&context.loader, &opened) {
        // A prefetch of this partition under way (warm handoff) is cancelled and ends
        // once its files under way are verified; what it staged is then taken instead
        // of downloaded.
        let _staging = context.staging_locks.overtake(partition).await;
        let local = {
            let (dir, settings, resources) = (
                dir.clone(),
                config.store_settings(),
                context.resources.clone(),
            );
            blocking(move || local_next_offset(&dir, &settings, &resources)).await
        };
        let local = match local {
            Some(Ok(next)) => next,
            Some(Err(error)) => {
                Metrics::count(&metrics.restores, "store_unreadable");
                tracing::warn!(partition, %error, "the local store cannot be read; restoring over it");
                None
            }
            None => None,
        };
        let outcome = loader.load(topic, partition, &dir, local).await;
        report(context, partition, local, &outcome, started);
        if !matches!(
            outcome,
            LoadOutcome::Finished(
                RestoreOutcome::Restored { .. } | RestoreOutcome::NotNewer { .. }
            )
        ) {
            // Those two remove staged copies themselves; after the others a prefetched
            // or interrupted copy would stay on the volume until the next move.
            let dir = dir.clone();
            blocking(move || dedup_core::checkpoint::transfer::discard_staged(&dir)).await;
        }
    }

    let opened = match opened {
        Some(store) => Some(Ok(store)),
        None => {
            let (dir, settings, resources) = (
                dir.clone(),
                config.store_settings(),
                context.resources.clone(),
            );
            blocking(move || PartitionStore::open(dir, &settings, &resources)).await
        }
    };
    let store = match opened {
        Some(Ok(store)) => store,
        Some(Err(error)) => {
            context.store_failed(partition, &error);
            tracing::error!(partition, %error, "cannot open the partition store; not consuming it");
            return None;
        }
        None => return None,
    };
    let rebuild_from = match committed {
        Some(committed) if is_new(&store) => {
            rebuild_start(context, consumer, topic, partition, committed).await
        }
        _ => None,
    };
    let plan = plan_start(&store, partition, committed, rebuild_from);
    count_catch_up(context, &plan, rebuild_from.is_some());
    let catch_up_until = plan.catch_up_until;
    if let Some(start) = plan.start {
        if let Err(error) = seek_to_start(consumer, topic, partition, start, SEEK_WAIT).await {
            // Consuming from the committed offset instead would leave the gap's keys
            // unknown, and their copies would pass: the partition stays paused.
            KafkaCallFailed {
                message: "cannot move to the store's offset within SEEK_WAIT; the partition is left paused (not consumed) and the process reports not live",
                partition: Some(partition),
                error: &error,
                level: tracing::Level::ERROR,
            }
            .emit(metrics);
            context.partition_failed(
                partition,
                &format!("cannot move consumption back to its store's offset {start}: {error}"),
            );
            return None;
        }
    }
    let resumed = {
        let consumer = Arc::clone(consumer);
        blocking(move || consumer.resume(&one)).await
    };
    if let Some(Err(error)) = resumed {
        tracing::error!(partition, %error, "cannot resume the partition after restoring");
    }
    Some(Prepared {
        store,
        catch_up_until,
        committed,
    })
}

/// Moves a just-assigned partition's consumption to `start`, retried until it succeeds
/// or `wait` has passed; returns the number of refusals before it succeeded.
///
/// librdkafka refuses the seek ("Erroneous state") until the partition has started
/// fetching, and a partition starts fetching only once the group's committed offset for
/// it is stable: while a transaction holding one is open (a previous owner's last, being
/// committed or aborted), that is a while after the assignment.
pub async fn seek_to_start<C, X>(
    consumer: &Arc<C>,
    topic: &str,
    partition: i32,
    start: i64,
    wait: Duration,
) -> Result<u32, KafkaError>
where
    C: Consumer<X> + Send + Sync + 'static,
    X: ConsumerContext + 'static,
{
    let deadline = Instant::now() + wait;
    let mut refusals = 0u32;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // Never 0: librdkafka then seeks asynchronously and reports success unchecked.
        let call = CONSUMER_CALL_TIMEOUT
            .min(remaining)
            .max(Duration::from_millis(1));
        let seek = {
            let consumer = Arc::clone(consumer);
            let topic = topic.to_string();
            blocking(move || consumer.seek(&topic, partition, Offset::Offset(start), call))
                .await
                .unwrap_or(Err(KafkaError::Canceled))
        };
        match seek {
            Ok(()) => {
                if refusals > 0 {
                    tracing::info!(
                        partition,
                        start,
                        refusals,
                        "moved to the store's offset once the partition fetched"
                    );
                }
                return Ok(refusals);
            }
            Err(error) => {
                refusals += 1;
                let pause = SEEK_RETRY_STEP * refusals.min(10);
                if Instant::now() + pause >= deadline {
                    return Err(error);
                }
                if refusals == 1 {
                    tracing::info!(partition, start, %error, "the partition does not fetch yet (its committed offset is not stable); retrying the move to the store's offset");
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// True for a store that has never recorded an offset (created just now, empty).
pub fn is_new(store: &PartitionStore) -> bool {
    matches!(store.next_offset(), Ok(None))
}

/// Counts a planned catch-up replay by its reason.
pub fn count_catch_up(context: &Context, plan: &StartPlan, new_store: bool) {
    if plan.catch_up_until.is_some() {
        let kind = if new_store { "new_store" } else { "behind" };
        context
            .metrics
            .catch_up_replays
            .get_or_create(&crate::metrics::KindLabels { kind })
            .inc();
    }
}

/// Where an empty store of a partition committed at `committed` starts rebuilding the
/// window's keys: the partition's first offset at or after `now − DEDUP_WINDOW` (by
/// Kafka timestamp; with no window, the partition's start), at most
/// CATCH_UP_MAX_MESSAGES before `committed`. `None`: no replay (disabled, nothing in the
/// window, or the lookup failed, which is logged).
async fn rebuild_start(
    context: &Context,
    consumer: &Arc<DedupConsumer>,
    topic: &str,
    partition: i32,
    committed: i64,
) -> Option<i64> {
    let config = &context.config;
    if config.catch_up_max_messages == 0 || committed <= 0 {
        return None;
    }
    let window_start_ms = if config.dedup_window.is_zero() {
        0
    } else {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        now.saturating_sub(config.dedup_window).as_millis() as i64
    };
    let lookup = {
        let consumer = Arc::clone(consumer);
        let mut times = TopicPartitionList::new();
        let added = times.add_partition_offset(topic, partition, Offset::Offset(window_start_ms));
        blocking(move || {
            added?;
            consumer.offsets_for_times(times, CONSUMER_CALL_TIMEOUT)
        })
        .await
    };
    let first_in_window = match lookup {
        Some(Ok(list)) => match list.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => offset,
            // No message at or after the window's start: nothing to learn.
            _ => return None,
        },
        other => {
            KafkaCallFailed {
                message: "cannot look up the offset of the window's start; the new store starts empty at the committed offset, and copies of earlier events may pass",
                partition: Some(partition),
                error: &format!("{:?}", other.map(|r| r.map(|_| ()))),
                level: tracing::Level::ERROR,
            }
            .emit(&context.metrics);
            return None;
        }
    };
    let bound = committed.saturating_sub(config.catch_up_max_messages.min(i64::MAX as u64) as i64);
    let start = first_in_window.max(bound).max(0);
    if first_in_window < bound {
        tracing::warn!(
            partition,
            first_in_window,
            start,
            "the window holds more than CATCH_UP_MAX_MESSAGES messages; keys before the replay's start are not learned"
        );
    }
    (start < committed).then_some(start)
}

/// Reads the group's committed offset of one partition, retrying with backoff until the
/// coordinator answers (the caller drops this future when the partition is revoked).
async fn read_committed(
    context: &Context,
    consumer: &Arc<DedupConsumer>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let mut failures = 0u32;
    loop {
        let read = {
            let consumer = Arc::clone(consumer);
            let one = partition_list(topic, partition);
            blocking(move || consumer.committed_offsets(one, CONSUMER_CALL_TIMEOUT)).await
        };
        match read {
            Some(Ok(list)) => {
                let offset = offset_in(&list, topic, partition);
                tracing::info!(
                    partition,
                    committed = ?offset,
                    failures,
                    "committed offset read in the partition's task (the assignment could not read it, or exactly-once reads it after fencing)"
                );
                return offset;
            }
            other => {
                failures += 1;
                let error = match other {
                    Some(Err(error)) => error.to_string(),
                    _ => "task failed".to_string(),
                };
                KafkaCallFailed {
                    message:
                        "cannot read the committed offset; retrying before consuming the partition",
                    partition: Some(partition),
                    error: &format!("{error} (failures: {failures})"),
                    level: tracing::Level::WARN,
                }
                .emit(&context.metrics);
                tokio::time::sleep(Duration::from_millis(250 * u64::from(failures.min(20)))).await;
            }
        }
    }
}

fn report(
    context: &Context,
    partition: i32,
    local: Option<i64>,
    outcome: &LoadOutcome,
    started: Instant,
) {
    RestoreFinished {
        partition,
        local,
        outcome,
        started,
    }
    .emit(&context.metrics);
}

/// The offset a list (of committed offsets) gives a partition, if it gives one.
pub fn offset_in(list: &TopicPartitionList, topic: &str, partition: i32) -> Option<i64> {
    match list.find_partition(topic, partition)?.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

fn partition_list(topic: &str, partition: i32) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    list.add_partition(topic, partition);
    list
}

/// Runs a blocking call off the async workers; `None` if the task itself failed.
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    match tokio::task::spawn_blocking(call).await {
        Ok(value) => Some(value),
        Err(error) => {
            tracing::error!(%error, "blocking task failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dedup_core::store::{StoreResources, StoreSettings};

    fn store(dir: &tempfile::TempDir) -> PartitionStore {
        let settings = StoreSettings {
            dedup_window: Duration::ZERO,
            max_capacity_bytes: 0,
            wal: false,
            recent_keys: 0,
        };
        PartitionStore::open(
            dir.path().join("t_0"),
            &settings,
            &StoreResources::default(),
        )
        .expect("store")
    }

    #[test]
    fn a_store_is_made_ready_in_the_callback_only_without_a_remote_and_with_a_known_offset() {
        assert_eq!(
            ready_where(Committed::Known(Some(7)), false),
            ReadyWhere::Here { committed: Some(7) }
        );
        assert_eq!(
            ready_where(Committed::Known(None), false),
            ReadyWhere::Here { committed: None }
        );
        assert_eq!(
            ready_where(Committed::Known(Some(7)), true),
            ReadyWhere::InTask
        );
        assert_eq!(ready_where(Committed::Unknown, false), ReadyWhere::InTask);
        assert_eq!(ready_where(Committed::Unknown, true), ReadyWhere::InTask);
    }

    #[test]
    fn only_an_empty_store_of_a_partition_consumed_before_rebuilds_its_window() {
        assert!(rebuilds_window(true, Some(5), 1000));
        assert!(!rebuilds_window(false, Some(5), 1000), "a store with keys");
        assert!(
            !rebuilds_window(true, Some(0), 1000),
            "nothing consumed yet"
        );
        assert!(!rebuilds_window(true, None, 1000), "no committed offset");
        assert!(!rebuilds_window(true, Some(5), 0), "catch-up disabled");
    }

    #[test]
    fn a_new_store_rebuilds_from_the_window_start_up_to_the_committed_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        let plan = plan_start(&store, 0, Some(100), Some(40));
        assert_eq!(
            plan,
            StartPlan {
                start: Some(40),
                catch_up_until: Some(100)
            }
        );
        // Recorded at once: a crash before anything is flushed still shows it behind.
        assert_eq!(store.next_offset().unwrap(), Some(40));
    }

    #[test]
    fn a_new_store_without_a_window_start_begins_at_the_committed_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        assert_eq!(plan_start(&store, 0, Some(100), None), StartPlan::default());
        assert_eq!(store.next_offset().unwrap(), Some(100));
        // A window start past the committed offset changes nothing.
        let dir = tempfile::tempdir().unwrap();
        let store2 = self::store(&dir);
        assert_eq!(
            plan_start(&store2, 0, Some(100), Some(120)),
            StartPlan::default()
        );
    }

    #[test]
    fn a_store_behind_the_committed_offset_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.record_next_offset(50).unwrap();
        assert_eq!(
            plan_start(&store, 0, Some(80), Some(0)),
            StartPlan {
                start: Some(50),
                catch_up_until: Some(80)
            }
        );
    }

    #[test]
    fn without_a_committed_offset_a_store_resumes_at_its_finished_offset_not_its_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir);
        store.record_next_offset(50).unwrap();
        // Nothing known to be finished: from auto.offset.reset (originals republished).
        assert_eq!(plan_start(&store, 0, None, None), StartPlan::default());
        store.record_finished_offset(30).unwrap();
        assert_eq!(
            plan_start(&store, 0, None, None),
            StartPlan {
                start: Some(30),
                catch_up_until: None
            }
        );
    }
}
