//! The generated events: PostHog-style, keyed by distinct_id, a share of them copies of
//! an earlier event and a share malformed; produced with a bounded backlog ahead of the
//! deduplicator (the mock cluster keeps only 5 MiB per partition). The truth the run is
//! judged by is counted as they are made.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deduplicator::metrics::Metrics;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::ClientConfig;

use crate::args::Args;
use crate::error::Error;

/// Most messages produced but not yet consumed by the deduplicator, per partition.
const BACKLOG_PER_PARTITION: u64 = 4_000;

/// The counts the run is judged by.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truth {
    pub events: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub malformed: u64,
}

/// xorshift64*, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One generated event: its partition, message key and payload, and dedup key.
struct Generated {
    partition: i32,
    key: String,
    payload: Vec<u8>,
}

pub fn produce(
    args: &Args,
    bootstrap: &str,
    topic: &str,
    metrics: &Metrics,
    produced: &AtomicU64,
) -> Result<Truth, Error> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .map_err(Error::kafka("producer"))?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let events = [
        "$pageview",
        "$autocapture",
        "$identify",
        "signup",
        "purchase",
        "$pageleave",
    ];
    let mut recent: Vec<Vec<Generated>> = (0..args.partitions).map(|_| Vec::new()).collect();
    let mut truth = Truth {
        events: args.events,
        ..Truth::default()
    };
    let mut keys = HashSet::new();
    let backlog = BACKLOG_PER_PARTITION * args.partitions as u64;
    for i in 0..args.events {
        while i.saturating_sub(metrics.messages_in.get()) > backlog {
            producer.poll(Duration::from_millis(5));
        }
        let roll = rng.next() % 1000;
        let generated = if roll < u64::from(args.malformed_per_mille) {
            truth.malformed += 1;
            let partition = (rng.next() % args.partitions as u64) as i32;
            let payload = match i % 3 {
                0 => b"{not json".to_vec(),
                1 => format!("{{\"uuid\":\"m-{i}\",\"event\":\"$pageview\"}}").into_bytes(),
                _ => format!("{{\"distinct_id\":\"u\",\"token\":\"t\",\"event\":\"e\",\"timestamp\":\"yesterday-ish {i}\"}}").into_bytes(),
            };
            Generated {
                partition,
                key: format!("malformed-{i}"),
                payload,
            }
        } else {
            // A copy goes where its original went; a new event to its distinct_id's
            // partition (keyed by distinct_id, as PostHog's producers do), so that equal
            // keys always meet in one partition store.
            let copy_from = (rng.next() % args.partitions as u64) as usize;
            let pool = &recent[copy_from];
            if rng.next() % 100 < u64::from(args.duplicate_percent) && !pool.is_empty() {
                let partition = copy_from as i32;
                let original = &pool[(rng.next() as usize) % pool.len()];
                truth.duplicates += 1;
                Generated {
                    partition,
                    key: original.key.clone(),
                    payload: original.payload.clone(),
                }
            } else {
                let user = rng.next() % 200_000;
                let partition = (user % args.partitions as u64) as i32;
                let distinct_id = format!("user-{user}");
                let event = events[(rng.next() % events.len() as u64) as usize];
                let timestamp_ms = now_ms - 60_000 + (i as i64 % 60_000);
                let uuid = format!(
                    "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
                    rng.next() as u32,
                    rng.next() as u16,
                    rng.next() & 0xfff,
                    rng.next() & 0xfff,
                    rng.next() & 0xffff_ffff_ffff
                );
                let browser = ["Chrome", "Firefox", "Safari"][(rng.next() % 3) as usize];
                let plan = ["free", "team", "enterprise"][(rng.next() % 3) as usize];
                let page = rng.next() % 500;
                let payload = serde_json::json!({
                    "uuid": uuid,
                    "distinct_id": distinct_id,
                    "token": "phc_quickstart",
                    "event": event,
                    "timestamp": chrono_like(timestamp_ms),
                    "properties": {
                        "$current_url": format!("https://example.com/page/{page}"),
                        "$browser": browser,
                        "$lib": "posthog-js",
                        "plan": plan,
                    },
                })
                .to_string()
                .into_bytes();
                // Same key fields → same dedup key, even in a fresh event (counted once).
                if keys.insert((timestamp_ms, distinct_id.clone(), event)) {
                    truth.unique += 1;
                } else {
                    truth.duplicates += 1;
                }
                let generated = Generated {
                    partition,
                    key: distinct_id,
                    payload,
                };
                let pool = &mut recent[partition as usize];
                if pool.len() < 10_000 {
                    pool.push(Generated {
                        partition,
                        key: generated.key.clone(),
                        payload: generated.payload.clone(),
                    });
                } else {
                    let slot = (rng.next() as usize) % pool.len();
                    pool[slot] = Generated {
                        partition,
                        key: generated.key.clone(),
                        payload: generated.payload.clone(),
                    };
                }
                generated
            }
        };
        let mut record = BaseRecord::<str, [u8]>::to(topic)
            .partition(generated.partition)
            .key(generated.key.as_str())
            .payload(generated.payload.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, returned)) => {
                    record = returned;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        produced.fetch_add(1, Ordering::Relaxed);
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(Error::kafka("flushing the producer"))?;
    Ok(truth)
}

/// RFC 3339 in UTC with milliseconds, as PostHog SDKs send it.
fn chrono_like(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
