//! The output measured against the generated truth: every message is the original of its
//! key (never a later copy), and no unique event is missing.

use std::collections::HashMap;

use rdkafka::message::OwnedMessage;

use crate::events::{parse_published, unique_keys, GenEvent};

/// What the output holds, measured against the generated truth.
#[derive(Debug, Clone, Copy)]
pub struct OutputCheck {
    pub unique_in_truth: usize,
    pub unique_in_output: usize,
    /// Messages published more than once (always originals: checked).
    pub republished: usize,
}

/// Checks every output message is the original of its key (never a later copy) and
/// counts what is there. Loss is for the caller to judge ([`verify_no_loss`]).
pub fn check_output(events: &[GenEvent], output: &[OwnedMessage]) -> OutputCheck {
    let originals = unique_keys(events);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for message in output {
        let published = parse_published(message).expect("output is a generated event");
        let original = originals
            .get(&published.dedup_key)
            .unwrap_or_else(|| panic!("unknown key published: {}", published.dedup_key));
        assert_eq!(
            &published.uuid, original,
            "a copy (not the original) of {} was published: its duplicate state was lost",
            published.dedup_key
        );
        *seen.entry(published.dedup_key).or_default() += 1;
    }
    OutputCheck {
        unique_in_truth: originals.len(),
        unique_in_output: seen.len(),
        republished: seen.values().map(|n| n - 1).sum(),
    }
}

/// [`check_output`], and every unique event present. Returns how many messages were
/// published more than once (redelivered originals).
pub fn verify_no_loss(events: &[GenEvent], output: &[OwnedMessage]) -> usize {
    let check = check_output(events, output);
    assert_eq!(
        check.unique_in_output,
        check.unique_in_truth,
        "{} unique events lost",
        check.unique_in_truth - check.unique_in_output
    );
    check.republished
}
