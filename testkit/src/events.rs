//! Generated PostHog events, with everything the checks need to know about each, and what
//! an output message says about itself.

use std::collections::HashMap;

use rdkafka::message::OwnedMessage;
use rdkafka::Message;

use crate::kafka::Produced;
use crate::rng::xorshift;

/// A generated event with everything the checks need to know about it.
#[derive(Clone, Debug)]
pub struct GenEvent {
    pub uuid: String,
    pub distinct_id: String,
    pub timestamp_ms: i64,
    pub event: String,
    pub partition: i32,
    /// Position within its partition's stream, for order checks.
    pub seq: u64,
    /// Whether it is a copy of an earlier event (same key, new uuid).
    pub is_copy: bool,
}

impl GenEvent {
    pub fn dedup_key(&self) -> String {
        format!(
            "{}:{}:tok:{}",
            self.timestamp_ms, self.distinct_id, self.event
        )
    }

    pub fn produced(&self) -> Produced {
        let payload = serde_json::json!({
            "uuid": self.uuid,
            "distinct_id": self.distinct_id,
            "token": "tok",
            "event": self.event,
            "timestamp": self.timestamp_ms,
            "properties": {"src_partition": self.partition, "seq": self.seq},
        });
        Produced {
            partition: self.partition,
            key: Some(format!("tok:{}", self.distinct_id).into_bytes()),
            payload: Some(payload.to_string().into_bytes()),
        }
    }
}

/// Generates `count` events over `partitions`, a `duplicate_percent` share of them copies
/// of an earlier event of the same partition. Deterministic for a given `seed`.
pub fn generate(
    count: usize,
    duplicate_percent: u64,
    partitions: i32,
    seed: u64,
    id_prefix: &str,
) -> Vec<GenEvent> {
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || xorshift(&mut rng);
    let mut by_partition: HashMap<i32, Vec<GenEvent>> = HashMap::new();
    let mut seqs: HashMap<i32, u64> = HashMap::new();
    let mut events = Vec::with_capacity(count);
    for i in 0..count {
        let partition = (next() % partitions as u64) as i32;
        let seq = {
            let s = seqs.entry(partition).or_default();
            *s += 1;
            *s
        };
        let earlier = by_partition.entry(partition).or_default();
        let event = if next() % 100 < duplicate_percent && !earlier.is_empty() {
            let original = &earlier[(next() as usize) % earlier.len()];
            GenEvent {
                uuid: format!("{id_prefix}-{i}"),
                seq,
                is_copy: true,
                ..original.clone()
            }
        } else {
            let e = GenEvent {
                uuid: format!("{id_prefix}-{i}"),
                distinct_id: format!("{id_prefix}-user-{}", next() % 100_000),
                timestamp_ms: 1_700_000_000_000 + i as i64,
                event: ["$pageview", "signup", "purchase"][(next() % 3) as usize].to_string(),
                partition,
                seq,
                is_copy: false,
            };
            earlier.push(e.clone());
            e
        };
        events.push(event);
    }
    events
}

/// What an output message says about itself.
pub struct Published {
    pub uuid: String,
    pub dedup_key: String,
    pub src_partition: i64,
    pub seq: u64,
    pub out_partition: i32,
}

pub fn parse_published(message: &OwnedMessage) -> Option<Published> {
    let value: serde_json::Value = serde_json::from_slice(message.payload()?).ok()?;
    Some(Published {
        uuid: value["uuid"].as_str()?.to_string(),
        dedup_key: format!(
            "{}:{}:{}:{}",
            value["timestamp"].as_i64()?,
            value["distinct_id"].as_str()?,
            value["token"].as_str()?,
            value["event"].as_str()?
        ),
        src_partition: value["properties"]["src_partition"].as_i64()?,
        seq: value["properties"]["seq"].as_u64()?,
        out_partition: message.partition(),
    })
}

/// Dedup key → uuid of its first occurrence (the original), over generated events.
pub fn unique_keys(events: &[GenEvent]) -> HashMap<String, String> {
    let mut originals = HashMap::new();
    for e in events {
        originals
            .entry(e.dedup_key())
            .or_insert_with(|| e.uuid.clone());
    }
    originals
}

/// Copies (new uuid, same key) of the given events.
pub fn copies_of(events: &[GenEvent], tag: &str) -> Vec<GenEvent> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| GenEvent {
            uuid: format!("{tag}-{i}"),
            is_copy: true,
            ..e.clone()
        })
        .collect()
}
