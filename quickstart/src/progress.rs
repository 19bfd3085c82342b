//! Following a run: a verifier thread reads the output and dead-letter topics as they are
//! written, and a progress line a second goes to standard error until everything produced
//! is consumed, final, and read back (or nothing moves for two minutes).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use deduplicator::metrics::Metrics;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::error::Error;
use crate::events::Truth;

/// With no event consumed for this long, the run stops and is judged as it is.
const IDLE_LIMIT: Duration = Duration::from_secs(120);

/// How far the run got.
pub struct Followed {
    /// What the producer generated (default if it did not finish).
    pub truth: Truth,
    /// From the start until everything was read back (or the run stopped).
    pub elapsed: Duration,
    /// When the deduplicator consumed its first event.
    pub first_consumed: Duration,
}

/// Prints progress until the producer is done and everything it made is consumed, final
/// and read back.
pub async fn follow(
    started: Instant,
    mut producer: Option<JoinHandle<Result<Truth, Error>>>,
    produced: &AtomicU64,
    metrics: &Metrics,
    seen: &Seen,
) -> Result<Followed, Error> {
    let mut last_print = Instant::now();
    let mut truth: Option<Truth> = None;
    let mut finished_at = None;
    let mut last_change = (Instant::now(), 0u64);
    let mut first_consumed: Option<Duration> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(handle) = producer.take_if(|p| p.is_finished()) {
            truth = Some(handle.join().map_err(|_| Error::ProducerThread)??);
        }
        let consumed = metrics.messages_in.get();
        if consumed > 0 {
            first_consumed.get_or_insert_with(|| started.elapsed());
        }
        let final_out = metrics.published.get() + metrics.dead_lettered.get();
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let seconds = started.elapsed().as_secs_f64();
            eprintln!(
                "[{seconds:6.1}s] produced {:>9} | consumed {:>9} ({:>7.0}/s) | unique {:>9} | duplicate {:>9} | malformed {:>6} | published+dead-lettered {:>9} | read back {:>9}",
                produced.load(Ordering::Relaxed),
                consumed,
                consumed as f64 / seconds,
                metrics.unique.get() + metrics.redelivery.get(),
                metrics.duplicate.get(),
                malformed_total(metrics),
                final_out,
                seen.output.load(Ordering::Relaxed) + seen.dead_letter.load(Ordering::Relaxed),
            );
        }
        if consumed != last_change.1 {
            last_change = (Instant::now(), consumed);
        } else if last_change.0.elapsed() > IDLE_LIMIT {
            eprintln!("no progress for {IDLE_LIMIT:?}; stopping");
            break;
        }
        if let Some(truth) = &truth {
            let read_back =
                seen.output.load(Ordering::Relaxed) + seen.dead_letter.load(Ordering::Relaxed);
            if consumed >= truth.events
                && metrics.in_flight.get() == 0
                && read_back >= truth.unique + truth.malformed
            {
                finished_at.get_or_insert_with(|| started.elapsed());
                break;
            }
        }
    }
    Ok(Followed {
        truth: truth.unwrap_or_default(),
        elapsed: finished_at.unwrap_or_else(|| started.elapsed()),
        first_consumed: first_consumed.unwrap_or_default(),
    })
}

/// What the verifier read back.
#[derive(Debug, Default)]
pub struct Seen {
    pub output: AtomicU64,
    pub output_distinct: AtomicU64,
    pub dead_letter: AtomicU64,
}

pub fn malformed_total(metrics: &Metrics) -> u64 {
    dedup_core::EventError::KINDS
        .iter()
        .map(|reason| {
            metrics
                .malformed
                .get_or_create(&deduplicator::metrics::MalformedLabels {
                    reason,
                    action: "dead_letter",
                })
                .get()
        })
        .sum()
}

pub fn verify(
    bootstrap: &str,
    output: &str,
    dead_letter: &str,
    partitions: i32,
    seen: &Seen,
    done: &AtomicBool,
) {
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("quickstart-verifier-{output}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
    {
        Ok(consumer) => consumer,
        Err(error) => {
            eprintln!("verifier: {error}");
            return;
        }
    };
    let mut tpl = TopicPartitionList::new();
    for topic in [output, dead_letter] {
        for p in 0..partitions {
            let _ = tpl.add_partition_offset(topic, p, Offset::Beginning);
        }
    }
    if let Err(error) = consumer.assign(&tpl) {
        eprintln!("verifier: {error}");
        return;
    }
    let mut distinct = HashSet::new();
    while !done.load(Ordering::Relaxed) {
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        if message.topic() == dead_letter {
            seen.dead_letter.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        seen.output.fetch_add(1, Ordering::Relaxed);
        let key = message
            .payload()
            .and_then(|p| dedup_core::event::stored_key(Some(p)).ok());
        if let Some(key) = key {
            if distinct.insert(key) {
                seen.output_distinct.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
