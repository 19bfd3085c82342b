//! Tracking of in-flight messages: every consumed message becomes an [`AckableMessage`]
//! that must be acked (outcome final) or nacked (routed to the dead-letter topic).
//!
//! The tracker bounds the messages in flight across all partitions by
//! `MAX_IN_FLIGHT_MESSAGES`, and releases a partition's offset for commit only when every
//! earlier message of that partition is done, even when publishing finishes out of order.
//! Offsets are followed in receive order, not by arithmetic: Kafka offsets may have gaps
//! (compaction, transaction markers).
//!
//! A message dropped without ack or nack is a bug (a delivery that panicked past its
//! retries, say); it is logged and counted, and its offset (and every later one of the
//! partition) is never committed, so the message is redelivered rather than lost. The
//! process then reports not live, so that the restart the liveness probe causes
//! redelivers it and commits move again (instead of freezing while the partition's
//! pending offsets grow). After a partition is fenced, dropping is how in-flight work
//! is abandoned, and is counted as such.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use dedup_core::http::Health;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::internal_events::{InternalEvent, MessageDroppedUnacked};
use crate::metrics::Metrics;

/// The process-wide bound on in-flight messages.
#[derive(Clone)]
pub struct MessageTracker {
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
    /// Made not live when a message's outcome is lost (see the module documentation).
    health: Health,
}

impl MessageTracker {
    pub fn new(max_in_flight: usize, metrics: Arc<Metrics>, health: Health) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_in_flight)),
            metrics,
            health,
        }
    }

    /// A tracker for one partition whose committed offset is `committed` (offsets below
    /// it are never stored again, so catch-up replay cannot move the commit backwards).
    pub fn partition(&self, partition: i32, committed: Option<i64>) -> Arc<PartitionTracker> {
        Arc::new(PartitionTracker {
            partition,
            tracker: self.clone(),
            fenced: AtomicBool::new(false),
            state: Mutex::new(PartitionOffsets {
                pending: VecDeque::new(),
                floor: committed.unwrap_or(-1),
                committable: None,
            }),
        })
    }

    /// Waits for room for one more message.
    pub async fn reserve(&self) -> Reservation {
        // The semaphore is never closed, so acquiring only fails if it were.
        let permit = Arc::clone(&self.permits).acquire_owned().await.ok();
        Reservation { _permit: permit }
    }

    /// Room for one more message, if there is some right now.
    pub fn try_reserve(&self) -> Option<Reservation> {
        Arc::clone(&self.permits)
            .try_acquire_owned()
            .ok()
            .map(|permit| Reservation {
                _permit: Some(permit),
            })
    }

    pub fn available(&self) -> usize {
        self.permits.available_permits()
    }
}

/// Room for one in-flight message, taken before the message is received and given back
/// when the message is settled or dropped.
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
}

/// The offsets of one partition, in receive order.
pub struct PartitionTracker {
    partition: i32,
    tracker: MessageTracker,
    fenced: AtomicBool,
    state: Mutex<PartitionOffsets>,
}

struct PartitionOffsets {
    /// Received and not yet released for commit: `(offset, done)`, in receive order.
    pending: VecDeque<(i64, bool)>,
    /// Offsets at or below this were committed before: never store them again.
    floor: i64,
    /// The next offset to commit, once it moves above the floor.
    committable: Option<i64>,
}

impl PartitionTracker {
    /// Starts tracking a received message.
    pub fn track(self: &Arc<Self>, offset: i64, reservation: Reservation) -> AckableMessage {
        self.state().pending.push_back((offset, false));
        self.tracker.metrics.in_flight.inc();
        AckableMessage {
            partition: Arc::clone(self),
            offset,
            received: Instant::now(),
            _reservation: reservation,
            settled: false,
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The next offset to commit: every message before it is done. `None` until that is
    /// above the offset committed when the partition was assigned.
    pub fn committable(&self) -> Option<i64> {
        self.state().committable
    }

    /// Offsets at or below `committed` are never released again (for a committed offset
    /// learned after the tracker was made).
    pub fn raise_floor(&self, committed: i64) {
        let mut state = self.state();
        state.floor = state.floor.max(committed);
        if state.committable.is_some_and(|next| next <= state.floor) {
            state.committable = None;
        }
    }

    /// Messages received and not yet done.
    pub fn in_flight(&self) -> usize {
        self.state()
            .pending
            .iter()
            .filter(|(_, done)| !done)
            .count()
    }

    /// From now on, a message dropped without ack is abandoned work, not a bug.
    pub fn fence(&self) {
        self.fenced.store(true, Ordering::SeqCst);
    }

    fn complete(&self, offset: i64) {
        let mut state = self.state();
        // Offsets grow in receive order, so the entry is found by binary search.
        if let Ok(i) = state.pending.binary_search_by_key(&offset, |(o, _)| *o) {
            state.pending[i].1 = true;
        }
        let mut released = None;
        while let Some(&(front, true)) = state.pending.front() {
            state.pending.pop_front();
            released = Some(front + 1);
        }
        if let Some(next) = released {
            if next > state.floor {
                state.committable = Some(next);
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, PartitionOffsets> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A consumed message whose outcome is not final yet. Consume it with [`ack`] or
/// [`nack`]; dropping it is reported.
///
/// [`ack`]: AckableMessage::ack
/// [`nack`]: AckableMessage::nack
#[must_use = "a message must be acked or nacked, or its offset is never committed"]
pub struct AckableMessage {
    partition: Arc<PartitionTracker>,
    offset: i64,
    received: Instant,
    _reservation: Reservation,
    settled: bool,
}

impl AckableMessage {
    pub fn offset(&self) -> i64 {
        self.offset
    }

    pub fn partition(&self) -> i32 {
        self.partition.partition
    }

    /// The outcome is final: published and acknowledged by Kafka, or a known duplicate,
    /// or replayed into the store during catch-up.
    pub fn ack(mut self) {
        self.settle();
    }

    /// The message could not be handled and was routed to the dead-letter topic. Its
    /// offset may be committed: the dead-letter topic holds it.
    pub fn nack(mut self) {
        self.settle();
    }

    fn settle(&mut self) {
        self.settled = true;
        let metrics = &self.partition.tracker.metrics;
        metrics.in_flight.dec();
        metrics
            .processing_latency
            .observe(self.received.elapsed().as_secs_f64());
        self.partition.complete(self.offset);
    }
}

impl Drop for AckableMessage {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let metrics = &self.partition.tracker.metrics;
        metrics.in_flight.dec();
        if self.partition.fenced.load(Ordering::SeqCst) {
            metrics.abandoned_on_revoke.inc();
        } else {
            MessageDroppedUnacked {
                partition: self.partition.partition,
                offset: self.offset,
            }
            .emit(metrics);
            self.partition.tracker.health.set_not_live(format!(
                "partition {}: the outcome of offset {} was lost; a restart redelivers it",
                self.partition.partition, self.offset
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    fn tracker(max: usize) -> (MessageTracker, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        let health = Health::default();
        (
            MessageTracker::new(max, Arc::clone(&metrics), health),
            metrics,
        )
    }

    #[tokio::test]
    async fn commits_only_past_contiguous_done_messages() {
        let (tracker, _) = tracker(10);
        let partition = tracker.partition(0, None);
        let mut messages = Vec::new();
        for offset in [10, 11, 13, 20] {
            messages.push(partition.track(offset, tracker.reserve().await));
        }
        let last = messages.pop().unwrap();
        let third = messages.pop().unwrap();
        let second = messages.pop().unwrap();
        let first = messages.pop().unwrap();

        third.ack();
        assert_eq!(partition.committable(), None, "10 and 11 are not done");
        first.ack();
        assert_eq!(partition.committable(), Some(11));
        second.nack();
        // 13 was already done, so the gap 12 (never received) does not hold it back.
        assert_eq!(partition.committable(), Some(14));
        last.ack();
        assert_eq!(partition.committable(), Some(21));
        assert_eq!(partition.in_flight(), 0);
    }

    #[tokio::test]
    async fn never_releases_below_the_committed_offset() {
        let (tracker, _) = tracker(10);
        let partition = tracker.partition(0, Some(100));
        partition.track(50, tracker.reserve().await).ack();
        assert_eq!(partition.committable(), None);
        partition.track(100, tracker.reserve().await).ack();
        assert_eq!(partition.committable(), Some(101));
    }

    #[tokio::test]
    async fn a_committed_offset_learned_later_is_a_floor_too() {
        let (tracker, _) = tracker(10);
        // Assigned while the committed offset could not be read.
        let partition = tracker.partition(0, None);
        partition.track(40, tracker.reserve().await).ack();
        assert_eq!(partition.committable(), Some(41));
        partition.raise_floor(100);
        assert_eq!(
            partition.committable(),
            None,
            "41 would move the commit back"
        );
        partition.track(60, tracker.reserve().await).ack();
        assert_eq!(partition.committable(), None);
        partition.track(100, tracker.reserve().await).ack();
        assert_eq!(partition.committable(), Some(101));
    }

    #[tokio::test]
    async fn bounds_in_flight_messages() {
        let (tracker, metrics) = tracker(2);
        let partition = tracker.partition(0, None);
        let a = partition.track(0, tracker.reserve().await);
        let _b = partition.track(1, tracker.reserve().await);
        assert!(tracker.try_reserve().is_none());
        assert_eq!(metrics.in_flight.get(), 2);
        a.ack();
        assert!(tracker.try_reserve().is_some());
    }

    #[tokio::test]
    async fn a_dropped_message_is_reported_blocks_commits_and_asks_for_a_restart() {
        let (tracker, metrics) = tracker(10);
        tracker.health.set_live();
        let partition = tracker.partition(0, None);
        let dropped = partition.track(0, tracker.reserve().await);
        let later = partition.track(1, tracker.reserve().await);
        drop(dropped);
        later.ack();
        assert_eq!(metrics.unacked_dropped.get(), 1);
        assert_eq!(partition.committable(), None);
        assert_eq!(tracker.available(), 10, "the reservation is returned");
        assert!(
            !tracker.health.is_live(),
            "commits cannot move past it until a restart redelivers it"
        );
    }

    #[tokio::test]
    async fn dropping_after_fence_is_abandonment() {
        let (tracker, metrics) = tracker(10);
        tracker.health.set_live();
        let partition = tracker.partition(0, None);
        let message = partition.track(0, tracker.reserve().await);
        partition.fence();
        drop(message);
        assert_eq!(metrics.unacked_dropped.get(), 0);
        assert_eq!(metrics.abandoned_on_revoke.get(), 1);
        assert!(tracker.health.is_live());
    }
}
