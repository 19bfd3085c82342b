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
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::rebalance_handler::DedupConsumer;

/// Bound of the consumer calls made here (pause, seek, resume, committed offsets).
const CONSUMER_CALL_TIMEOUT: Duration = Duration::from_secs(10);

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

/// Where a partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StartPlan {
    /// Consume from here instead of the committed offset.
    pub start: Option<i64>,
    /// Messages below this offset are catch-up.
    pub catch_up_until: Option<i64>,
}

/// Compares the store's offset with the group's committed one. A store without an
/// offset is new: it knows nothing before where consumption starts, and that point is
/// recorded durably now so that a crash losing its unflushed keys still shows it behind.
pub fn plan_start(store: &PartitionStore, partition: i32, committed: Option<i64>) -> StartPlan {
    let store_next = match store.next_offset() {
        Ok(Some(next)) => Some(next),
        Ok(None) => {
            let start = committed.unwrap_or(0);
            if let Err(error) = store.record_next_offset(start).and_then(|()| store.flush()) {
                tracing::warn!(partition, %error, "cannot record the new store's start offset");
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
        (Some(start), None) if start > 0 => {
            // No committed offset (a new group, or offsets expired) but the store has seen
            // everything before `start`: resume there rather than republish history.
            tracing::info!(
                partition,
                start,
                "no committed offset; resuming at the store's offset"
            );
            StartPlan {
                start: Some(start),
                catch_up_until: None,
            }
        }
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
    pipeline: &Arc<Pipeline>,
    consumer: &Arc<DedupConsumer>,
    topic: &str,
    partition: i32,
    committed: Committed,
) -> Option<Prepared> {
    let started = Instant::now();
    let config = &pipeline.config;
    let metrics = &pipeline.metrics;
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
        Committed::Unknown => read_committed(pipeline, consumer, topic, partition).await,
    };

    if let Some(loader) = &pipeline.loader {
        let local = {
            let (dir, settings, resources) = (
                dir.clone(),
                config.store_settings(),
                pipeline.resources.clone(),
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
        report(pipeline, partition, local, &outcome, started);
    }

    let opened = {
        let (dir, settings, resources) = (
            dir.clone(),
            config.store_settings(),
            pipeline.resources.clone(),
        );
        blocking(move || PartitionStore::open(dir, &settings, &resources)).await
    };
    let store = match opened {
        Some(Ok(store)) => store,
        Some(Err(error)) => {
            pipeline.store_failed(partition, &error);
            tracing::error!(partition, %error, "cannot open the partition store; not consuming it");
            return None;
        }
        None => return None,
    };
    let plan = plan_start(&store, partition, committed);
    let mut catch_up_until = plan.catch_up_until;
    if let Some(start) = plan.start {
        let consumer = Arc::clone(consumer);
        let topic = topic.to_string();
        let seek = blocking(move || {
            consumer.seek(
                &topic,
                partition,
                Offset::Offset(start),
                CONSUMER_CALL_TIMEOUT,
            )
        })
        .await;
        if !matches!(seek, Some(Ok(()))) {
            tracing::warn!(
                partition,
                start,
                ?seek,
                "cannot move to the store's offset; no catch-up replay"
            );
            catch_up_until = None;
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

/// Reads the group's committed offset of one partition, retrying with backoff until the
/// coordinator answers (the caller drops this future when the partition is revoked).
async fn read_committed(
    pipeline: &Pipeline,
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
                    "committed offset read after the assignment could not read it"
                );
                return offset;
            }
            other => {
                failures += 1;
                pipeline.metrics.kafka_errors.inc();
                let error = match other {
                    Some(Err(error)) => error.to_string(),
                    _ => "task failed".to_string(),
                };
                tracing::warn!(
                    partition,
                    failures,
                    error,
                    "cannot read the committed offset; retrying before consuming the partition"
                );
                tokio::time::sleep(Duration::from_millis(250 * u64::from(failures.min(20)))).await;
            }
        }
    }
}

fn report(
    pipeline: &Pipeline,
    partition: i32,
    local: Option<i64>,
    outcome: &LoadOutcome,
    started: Instant,
) {
    let metrics = &pipeline.metrics;
    let seconds = started.elapsed().as_secs_f64();
    metrics.restore_duration.observe(seconds);
    Metrics::count(&metrics.restores, outcome.label());
    metrics
        .restore_skipped_checkpoints
        .inc_by(outcome.skipped().len() as u64);
    for (checkpoint, reason) in outcome.skipped() {
        tracing::warn!(
            partition,
            checkpoint,
            reason,
            "remote checkpoint unusable; trying an older one"
        );
    }
    match outcome {
        LoadOutcome::Finished(RestoreOutcome::Restored {
            checkpoint_id,
            next_offset,
            bytes,
            files_resumed,
            ..
        }) => {
            metrics.restore_bytes.inc_by(*bytes);
            tracing::info!(
                partition,
                checkpoint_id,
                ?next_offset,
                ?local,
                bytes,
                files_resumed,
                seconds,
                "partition store restored from the remote checkpoint"
            );
        }
        LoadOutcome::Finished(RestoreOutcome::NotNewer {
            local_next_offset,
            remote_next_offset,
            ..
        }) => tracing::info!(
            partition,
            local_next_offset,
            ?remote_next_offset,
            "local store is as recent as the remote checkpoints; keeping it"
        ),
        LoadOutcome::Finished(RestoreOutcome::NoCheckpoint) => tracing::info!(
            partition,
            ?local,
            "no remote checkpoint; starting from the local or an empty store"
        ),
        LoadOutcome::Finished(RestoreOutcome::AllCorrupt { .. }) => tracing::error!(
            partition,
            ?local,
            "every remote checkpoint is unusable; starting from the local or an empty store"
        ),
        LoadOutcome::Failed { attempts, error } => tracing::error!(
            partition,
            attempts,
            error,
            "checkpoint remote unreachable; starting from the local or an empty store"
        ),
        LoadOutcome::TimedOut { after } => tracing::error!(
            partition,
            ?after,
            "restore timed out (RESTORE_TIMEOUT); starting from the local or an empty store"
        ),
    }
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
