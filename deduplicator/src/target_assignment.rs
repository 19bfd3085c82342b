//! This member's *target* assignment, read from the group coordinator while partitions
//! are still on their way here.
//!
//! With the `consumer` group protocol (KIP-848, `KAFKA_GROUP_PROTOCOL=consumer`), the
//! brokers compute the assignment. A partition that moves is first revoked from its old
//! owner (on that owner's next heartbeat, after its revocation callback: drain, commit,
//! final checkpoint) and only then given to its new owner; meanwhile the coordinator's
//! `ConsumerGroupDescribe` already lists it in the new owner's target assignment. The
//! [`crate::handoff_prefetch`] task reads that to download the partition's checkpoint
//! before the move, so the restore at assignment fetches only the delta.
//!
//! librdkafka has the call (`rd_kafka_DescribeConsumerGroups`, which uses
//! `ConsumerGroupDescribe` for such groups) but the `rdkafka` crate does not wrap it, so
//! this module calls it through the crate's bindings, on the consumer's own client (its
//! brokers, TLS and SASL settings), with a queue of its own. Everything librdkafka
//! returns is copied out before the result is destroyed. The call blocks up to its
//! timeout: run it off the async runtime's workers.

use std::collections::BTreeSet;
use std::ffi::{c_char, c_void, CStr, CString};
use std::ptr::NonNull;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::Consumer;

use crate::kafka_context::DedupConsumer;

/// Why the target assignment could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// Not (yet) a member the coordinator lists: before the first heartbeat, while
    /// rejoining, or while the group does not exist yet.
    #[error("this member is not in the group's description yet")]
    NotJoined,
    #[error("no answer from the group coordinator within {0:?}")]
    TimedOut(Duration),
    #[error("describing the consumer group failed: {0}")]
    Describe(String),
    #[error("the group uses the classic protocol: it has no target assignment (KAFKA_GROUP_PROTOCOL=consumer needs Kafka 4.0+)")]
    Classic,
}

/// The partitions of `topic` that the coordinator means this member to own (those it
/// owns now included), read with one `ConsumerGroupDescribe` bounded by `timeout`.
pub fn target_partitions(
    consumer: &DedupConsumer,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeSet<i32>, TargetError> {
    let client = consumer.client();
    let rk = client.native_ptr();
    let member = member_id(rk).ok_or(TargetError::NotJoined)?;
    let group_c = CString::new(group)
        .map_err(|_| TargetError::Describe("the group id contains a NUL byte".into()))?;
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `rk` is the live client of `consumer`, borrowed for this whole call. The
    // queue, options and event are created and destroyed here (by their guards), and
    // nothing is kept of the event after it is destroyed: strings and partition lists
    // are copied out first.
    unsafe {
        let queue = Guard::new(rd::rd_kafka_queue_new(rk), |q| {
            rd::rd_kafka_queue_destroy(q)
        })
        .ok_or_else(|| TargetError::Describe("cannot create a queue".into()))?;
        let options = Guard::new(
            rd::rd_kafka_AdminOptions_new(
                rk,
                rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_DESCRIBECONSUMERGROUPS,
            ),
            |o| rd::rd_kafka_AdminOptions_destroy(o),
        )
        .ok_or_else(|| TargetError::Describe("cannot create admin options".into()))?;
        let mut errstr = [0 as c_char; 256];
        if rd::rd_kafka_AdminOptions_set_request_timeout(
            options.ptr(),
            timeout_ms,
            errstr.as_mut_ptr(),
            errstr.len(),
        ) != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return Err(TargetError::Describe(text(errstr.as_ptr())));
        }
        let mut groups = [group_c.as_ptr()];
        rd::rd_kafka_DescribeConsumerGroups(rk, groups.as_mut_ptr(), 1, options.ptr(), queue.ptr());
        // The request timeout bounds the answer; a little more for the queue.
        let event = Guard::new(
            rd::rd_kafka_queue_poll(queue.ptr(), timeout_ms.saturating_add(1000)),
            |e| rd::rd_kafka_event_destroy(e),
        )
        .ok_or(TargetError::TimedOut(timeout))?;
        if rd::rd_kafka_event_error(event.ptr())
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return Err(TargetError::Describe(text(
                rd::rd_kafka_event_error_string(event.ptr()),
            )));
        }
        let result = rd::rd_kafka_event_DescribeConsumerGroups_result(event.ptr());
        if result.is_null() {
            return Err(TargetError::Describe(
                "not a DescribeConsumerGroups result".into(),
            ));
        }
        let mut count = 0usize;
        let descriptions = rd::rd_kafka_DescribeConsumerGroups_result_groups(result, &mut count);
        if descriptions.is_null() || count == 0 {
            return Err(TargetError::Describe("no group in the answer".into()));
        }
        let description = *descriptions;
        let error = rd::rd_kafka_ConsumerGroupDescription_error(description);
        if !error.is_null() {
            return Err(TargetError::Describe(text(rd::rd_kafka_error_string(
                error,
            ))));
        }
        if rd::rd_kafka_ConsumerGroupDescription_type(description)
            != rd::rd_kafka_consumer_group_type_t::RD_KAFKA_CONSUMER_GROUP_TYPE_CONSUMER
        {
            // A group the coordinator does not know yet is described by the classic
            // call's fallback, as dead or empty: this member has not joined yet.
            use rd::rd_kafka_consumer_group_state_t as State;
            return match rd::rd_kafka_ConsumerGroupDescription_state(description) {
                State::RD_KAFKA_CONSUMER_GROUP_STATE_DEAD
                | State::RD_KAFKA_CONSUMER_GROUP_STATE_EMPTY
                | State::RD_KAFKA_CONSUMER_GROUP_STATE_UNKNOWN => Err(TargetError::NotJoined),
                _ => Err(TargetError::Classic),
            };
        }
        for index in 0..rd::rd_kafka_ConsumerGroupDescription_member_count(description) {
            let m = rd::rd_kafka_ConsumerGroupDescription_member(description, index);
            if m.is_null() || text(rd::rd_kafka_MemberDescription_consumer_id(m)) != member {
                continue;
            }
            let target = rd::rd_kafka_MemberDescription_target_assignment(m);
            if target.is_null() {
                return Ok(BTreeSet::new());
            }
            return Ok(partitions_of(
                rd::rd_kafka_MemberAssignment_partitions(target),
                topic,
            ));
        }
        Err(TargetError::NotJoined)
    }
}

/// The client's member id (with the consumer protocol, librdkafka makes one up before
/// the first heartbeat), `None` if it has none.
fn member_id(rk: *mut rd::rd_kafka_t) -> Option<String> {
    // SAFETY: `rk` is a live client; the returned string is librdkafka's allocation,
    // copied and then freed with its allocator.
    unsafe {
        let raw = rd::rd_kafka_memberid(rk);
        if raw.is_null() {
            return None;
        }
        let id = text(raw);
        rd::rd_kafka_mem_free(rk, raw.cast::<c_void>());
        (!id.is_empty()).then_some(id)
    }
}

/// The partitions of `topic` in a librdkafka partition list.
///
/// # Safety
/// `list` is null or a valid list that outlives the call.
unsafe fn partitions_of(
    list: *const rd::rd_kafka_topic_partition_list_t,
    topic: &str,
) -> BTreeSet<i32> {
    let mut partitions = BTreeSet::new();
    let Some(list) = list.as_ref() else {
        return partitions;
    };
    if list.elems.is_null() {
        return partitions;
    }
    let count = usize::try_from(list.cnt).unwrap_or(0);
    for element in std::slice::from_raw_parts(list.elems, count) {
        if !element.topic.is_null() && CStr::from_ptr(element.topic).to_bytes() == topic.as_bytes()
        {
            partitions.insert(element.partition);
        }
    }
    partitions
}

/// A C string as text (empty for null).
///
/// # Safety
/// `raw` is null or a valid NUL-terminated string.
unsafe fn text(raw: *const c_char) -> String {
    if raw.is_null() {
        String::new()
    } else {
        CStr::from_ptr(raw).to_string_lossy().into_owned()
    }
}

/// Destroys a librdkafka object when dropped.
struct Guard<T> {
    ptr: NonNull<T>,
    destroy: unsafe fn(*mut T),
}

impl<T> Guard<T> {
    fn new(ptr: *mut T, destroy: unsafe fn(*mut T)) -> Option<Self> {
        NonNull::new(ptr).map(|ptr| Self { ptr, destroy })
    }

    fn ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T> Drop for Guard<T> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from librdkafka's matching constructor and is
        // destroyed once.
        unsafe { (self.destroy)(self.ptr.as_ptr()) }
    }
}
