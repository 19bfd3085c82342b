//! The Helm chart (`charts/kafka-deduplicator`) and the alert rules: `helm lint`, the chart
//! rendering exactly what `kubectl kustomize manifests/` installs, its CRD being the
//! generated one, and `promtool` checking and unit-testing the alert rules.
//!
//! helm and promtool are built from the Go module proxy by `scripts/build-go-tools.sh`
//! and kubectl by `scripts/start-kube.sh`; `eval "$(scripts/start-test-services.sh)"`
//! puts all three on PATH. Missing, these tests fail, unless `DEDUP_ALLOW_MISSING_TOOLS=1`
//! (local runs only, never in CI) makes them skip.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const CHART: &str = "charts/kafka-deduplicator";

/// Runs `tool args` at the repository root; `None` when the tool is missing and that is
/// allowed; panics with the output when it fails.
fn run(tool: &str, args: &[&str]) -> Option<String> {
    let output = match Command::new(tool).args(args).current_dir(repo_root()).output() {
        Ok(output) => output,
        Err(error) if dedup_testkit::services::may_skip("DEDUP_ALLOW_MISSING_TOOLS") => {
            eprintln!("skipping: {tool} not runnable ({error}) and DEDUP_ALLOW_MISSING_TOOLS=1");
            return None;
        }
        Err(error) => panic!(
            "{tool} is required (eval \"$(scripts/start-test-services.sh)\" builds it and puts it on PATH): {error}"
        ),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{tool} {} failed:\n{stdout}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Some(stdout)
}

/// Every object of a multi-document YAML stream, keyed by kind, namespace and name.
fn objects(yaml: &str) -> BTreeMap<(String, String, String), serde_json::Value> {
    let mut objects = BTreeMap::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value: serde_json::Value =
            serde::Deserialize::deserialize(document).expect("a YAML document");
        if value.is_null() {
            continue;
        }
        let value = whole_numbers(value);
        let text = |pointer: &str| {
            value
                .pointer(pointer)
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_string()
        };
        let key = (
            text("/kind"),
            text("/metadata/namespace"),
            text("/metadata/name"),
        );
        assert!(
            objects.insert(key.clone(), value).is_none(),
            "{key:?} twice"
        );
    }
    objects
}

/// `1.0` as `1`: the generated CRD spells schema bounds as floats, and kustomize
/// rewrites them as integers; the API server reads both alike.
fn whole_numbers(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() < 9e15 => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(items) => Value::Array(items.into_iter().map(whole_numbers).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, whole_numbers(v)))
                .collect(),
        ),
        other => other,
    }
}

#[test]
fn the_chart_lints_clean_with_and_without_its_options() {
    let Some(_) = run("helm", &["lint", "--strict", CHART]) else {
        return;
    };
    run(
        "helm",
        &[
            "lint",
            "--strict",
            CHART,
            "--set",
            "metrics.podMonitor.enabled=true,metrics.prometheusRule.enabled=true,grafanaDashboard.enabled=true,networkPolicy.enabled=true,watchNamespace=team-a,leaderElection.enabled=false,namespace.create=false",
        ],
    );
}

#[test]
fn the_chart_renders_what_kustomize_installs() {
    let Some(rendered) = run(
        "helm",
        &[
            "template",
            "kafka-deduplicator",
            CHART,
            "--namespace",
            "kafka-deduplicator-system",
            "--include-crds",
        ],
    ) else {
        return;
    };
    let Some(kustomized) = run("kubectl", &["kustomize", "manifests/"]) else {
        return;
    };
    let chart = objects(&rendered);
    let kustomize = objects(&kustomized);
    let names = |m: &BTreeMap<(String, String, String), serde_json::Value>| {
        m.keys().cloned().collect::<Vec<_>>()
    };
    assert_eq!(names(&chart), names(&kustomize), "the same objects");
    for (key, wanted) in &kustomize {
        assert_eq!(
            &chart[key], wanted,
            "{key:?} differs between the chart and manifests/"
        );
    }
}

#[test]
fn the_charts_crd_is_the_generated_one() {
    let root = repo_root();
    let generated = std::fs::read_to_string(root.join("crds/dedupcluster.yaml")).unwrap();
    let in_chart = std::fs::read_to_string(root.join(CHART).join("crds/dedupcluster.yaml"))
        .unwrap_or_default();
    assert!(
        generated == in_chart,
        "{CHART}/crds/dedupcluster.yaml is out of date: cp crds/dedupcluster.yaml {CHART}/crds/"
    );
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let rules = format!("{CHART}/files/prometheus-rules.yaml");
    let Some(_) = run("promtool", &["check", "rules", &rules]) else {
        return;
    };
    let report = run(
        "promtool",
        &[
            "test",
            "rules",
            &format!("{CHART}/files/prometheus-rules.test.yaml"),
        ],
    )
    .unwrap_or_default();
    assert!(report.contains("SUCCESS"), "{report}");
}
