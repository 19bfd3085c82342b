//! The alert rules and the Grafana dashboard of the chart use only metrics the programs
//! export: every `dedup_*` series they name is rendered by the deduplicator's or the
//! operator's registry (a renamed metric fails here, not silently in production).

use std::collections::BTreeSet;
use std::path::Path;

use prometheus_client::registry::Registry;

/// The series names the registries can render. A family renders nothing until it has a
/// label set, so the names come from the registries' descriptors (their `Debug` form:
/// each sub-registry's `Prefix("…")` and then its `Descriptor { name: "…"`), each with the
/// suffixes the exposition adds to counters (`_total`) and histograms (`_bucket`, `_sum`,
/// `_count`).
fn exported() -> BTreeSet<String> {
    let mut registry = Registry::default();
    let _deduplicator = deduplicator::metrics::Metrics::new(&mut registry);
    let _operator = operator::metrics::Metrics::new(&mut registry);
    let debug = format!("{registry:?}");
    let quoted_after = |text: &str, at: usize, marker: &str| -> Option<String> {
        let start = at + marker.len();
        let end = start + text[start..].find('"')?;
        Some(text[start..end].to_string())
    };
    let mut names = BTreeSet::new();
    let mut prefix = String::new();
    let mut at = 0;
    loop {
        let next_prefix = debug[at..].find("Prefix(\"").map(|i| i + at);
        let next_name = debug[at..].find("Descriptor { name: \"").map(|i| i + at);
        match (next_prefix, next_name) {
            (Some(p), n) if n.is_none_or(|n| p < n) => {
                prefix = quoted_after(&debug, p, "Prefix(\"").expect("a prefix");
                at = p + 1;
            }
            (_, Some(n)) => {
                let name = quoted_after(&debug, n, "Descriptor { name: \"").expect("a name");
                let full = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}_{name}")
                };
                for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
                    names.insert(format!("{full}{suffix}"));
                }
                at = n + 1;
            }
            _ => break,
        }
    }
    names
}

/// Every `dedup_…` identifier in `text`.
fn referenced(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(found) = text[i..].find("dedup_") {
        let start = i + found;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(text[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    names
}

#[test]
fn alerts_and_dashboard_use_only_exported_metrics() {
    let exported = exported();
    assert!(
        exported.contains("dedup_operator_reconciles_total"),
        "{exported:?}"
    );
    let files = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/kafka-deduplicator/files");
    for file in ["prometheus-rules.yaml", "grafana-dashboard.json"] {
        let text =
            std::fs::read_to_string(files.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let used = referenced(&text);
        assert!(!used.is_empty(), "{file} names no dedup_ metric");
        let unknown: Vec<&String> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} names metrics nobody exports: {unknown:?}"
        );
    }
}
