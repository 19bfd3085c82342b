//! The judgement of a run: each measure beside what the truth expects, a few figures,
//! and whether every count matched.

use std::fmt;
use std::sync::atomic::Ordering;

use dedup_core::checkpoint::manifest::CheckpointManifest;
use dedup_core::checkpoint::remote::Remote;
use dedup_core::checkpoint::transfer;
use deduplicator::config::OutputGuarantee;
use deduplicator::metrics::{Metrics, ResultLabels};

use crate::progress::{malformed_total, Followed, Seen};

/// One line of the table.
pub struct Row {
    pub measure: &'static str,
    /// What the truth says (`None`: a figure, not judged).
    pub expected: Option<String>,
    pub actual: String,
}

impl Row {
    /// A count that must equal the truth's.
    fn count(measure: &'static str, expected: u64, actual: u64) -> Self {
        Self {
            measure,
            expected: Some(expected.to_string()),
            actual: actual.to_string(),
        }
    }

    /// A figure, reported but not judged.
    fn figure(measure: &'static str, actual: String) -> Self {
        Self {
            measure,
            expected: None,
            actual,
        }
    }

    fn matches(&self) -> bool {
        self.expected.as_ref().is_none_or(|e| *e == self.actual)
    }
}

pub struct Report {
    pub rows: Vec<Row>,
}

impl Report {
    /// Every judged row matched.
    pub fn ok(&self) -> bool {
        self.rows.iter().all(Row::matches)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "| measure | expected | actual |")?;
        writeln!(f, "|---|---|---|")?;
        for row in &self.rows {
            let expected = row.expected.as_deref().unwrap_or("—");
            writeln!(f, "| {} | {expected} | {} |", row.measure, row.actual)?;
        }
        Ok(())
    }
}

/// What the run is judged by, read from the deduplicator's metrics, the verifier and the
/// checkpoint remote.
pub struct Inputs<'a> {
    pub followed: Followed,
    pub metrics: &'a Metrics,
    pub seen: &'a Seen,
    pub partitions: i32,
    pub guarantee: OutputGuarantee,
    pub remote: &'a Remote,
    pub key_prefix: &'a str,
    pub input: &'a str,
}

pub async fn build(inputs: Inputs<'_>) -> Report {
    let Inputs {
        followed,
        metrics,
        seen,
        partitions,
        guarantee,
        remote,
        key_prefix,
        input,
    } = inputs;
    let truth = followed.truth;
    let (checkpoint_id, checkpoint_bytes, checkpoints) =
        newest_checkpoints(remote, key_prefix, input, partitions).await;
    let mut rows = vec![
        Row::count("events in", truth.events, metrics.messages_in.get()),
        Row::count("unique", truth.unique, metrics.unique.get()),
        Row::count("redelivered originals", 0, metrics.redelivery.get()),
        Row::count("duplicate", truth.duplicates, metrics.duplicate.get()),
        Row::count("malformed", truth.malformed, malformed_total(metrics)),
        Row::count("published to output", truth.unique, metrics.published.get()),
        Row::count(
            "in output topic",
            truth.unique,
            seen.output.load(Ordering::Relaxed),
        ),
        Row::count(
            "distinct keys in output",
            truth.unique,
            seen.output_distinct.load(Ordering::Relaxed),
        ),
        Row::count(
            "in dead-letter topic",
            truth.malformed,
            seen.dead_letter.load(Ordering::Relaxed),
        ),
    ];
    let steady = followed.elapsed.saturating_sub(followed.first_consumed);
    rows.push(Row::figure(
        "throughput from the first consumed event (events/s)",
        format!(
            "{:.0}",
            truth.events as f64 / steady.as_secs_f64().max(1e-3)
        ),
    ));
    rows.push(Row::figure(
        "elapsed, joining the group included",
        format!("{:.1} s", followed.elapsed.as_secs_f64()),
    ));
    rows.push(Row::count(
        "remote checkpoints (partitions)",
        partitions as u64,
        checkpoints as u64,
    ));
    if guarantee == OutputGuarantee::ExactlyOnce {
        let transactions = |result| {
            metrics
                .transactions
                .get_or_create(&ResultLabels { result })
                .get()
        };
        rows.push(Row::figure(
            "transactions committed / aborted",
            format!(
                "{} / {}",
                transactions("committed"),
                transactions("aborted")
            ),
        ));
    }
    rows.push(Row::figure("newest checkpoint", checkpoint_id));
    rows.push(Row::figure(
        "checkpoint size (all partitions)",
        format!("{:.1} MB", checkpoint_bytes as f64 / 1e6),
    ));
    Report { rows }
}

/// The newest remote checkpoint id, total bytes of each partition's newest checkpoint,
/// and how many partitions have one.
async fn newest_checkpoints(
    remote: &Remote,
    key_prefix: &str,
    topic: &str,
    partitions: i32,
) -> (String, u64, usize) {
    let mut newest = String::from("(none)");
    let mut bytes = 0;
    let mut count = 0;
    for partition in 0..partitions {
        if let Ok(Some(manifest)) =
            transfer::newest_manifest(remote, key_prefix, topic, partition).await
        {
            let manifest: CheckpointManifest = manifest;
            count += 1;
            bytes += manifest.size();
            if newest == "(none)" || manifest.checkpoint_id > newest {
                newest = manifest.checkpoint_id.clone();
            }
        }
    }
    (newest, bytes, count)
}
