//! The CRD in `crds/` is what the code generates; generated objects and `manifests/`
//! pass the Kubernetes schemas (`kubernetes-validate`, PyPI); the example DedupCluster
//! passes the CRD's own schema.
//!
//! `kubernetes-validate` is installed by `scripts/install-deps.sh`. Missing, these tests
//! fail, unless `DEDUP_ALLOW_MISSING_TOOLS=1` is set (local runs only, never in CI).

use crate::fixtures;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn checked_in_crd_matches_the_code() {
    let generated = operator::crd_yaml().unwrap();
    let path = repo_root().join("crds/dedupcluster.yaml");
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        generated == checked_in,
        "crds/dedupcluster.yaml is out of date: run `cargo run -p operator -- crd > crds/dedupcluster.yaml`"
    );
}

fn kubernetes_validate(files: &[PathBuf]) {
    if let Some(report) = run_kubernetes_validate(files) {
        assert!(report.0, "kubernetes-validate failed:\n{}", report.1);
        assert!(!report.1.contains("ERROR"), "{}", report.1);
    }
}

/// `(passed, report)`, or `None` when the tool is missing and that is allowed.
fn run_kubernetes_validate(files: &[PathBuf]) -> Option<(bool, String)> {
    let result = Command::new("kubernetes-validate")
        .args(["--strict", "--no-warn", "--kubernetes-version", "1.35.0"])
        .args(files)
        .output();
    match result {
        Ok(output) => {
            let report = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            Some((output.status.success(), report))
        }
        Err(error) if dedup_testkit::services::may_skip("DEDUP_ALLOW_MISSING_TOOLS") => {
            eprintln!("skipping: kubernetes-validate not runnable ({error}) and DEDUP_ALLOW_MISSING_TOOLS=1");
            None
        }
        Err(error) => {
            panic!("kubernetes-validate is required (scripts/install-deps.sh installs it): {error}")
        }
    }
}

#[test]
fn generated_objects_pass_the_kubernetes_schemas() {
    let dir = tempfile_dir();
    let mut files = Vec::new();
    for (name, cluster) in [("minimal", fixtures::minimal()), ("full", fixtures::full())] {
        let owner = operator::builders::owner_reference(&cluster).unwrap();
        for (i, object) in operator::builders::all_objects(&cluster, &owner)
            .iter()
            .enumerate()
        {
            let path = dir.join(format!("{name}-{i}.yaml"));
            std::fs::write(&path, serde_yaml::to_string(object).unwrap()).unwrap();
            files.push(path);
        }
    }
    assert_eq!(files.len(), 8);
    kubernetes_validate(&files);
}

#[test]
fn the_validator_rejects_a_broken_object() {
    let cluster = fixtures::full();
    let owner = operator::builders::owner_reference(&cluster).unwrap();
    let mut sts =
        operator::builders::typed_json(&operator::builders::stateful_set(&cluster, &owner))
            .unwrap();
    sts["spec"]["replicas"] = serde_json::json!("three");
    sts["spec"]["template"]["spec"]["containers"][0]["unknownField"] = serde_json::json!(1);
    let path = tempfile_dir().join("broken.yaml");
    std::fs::write(&path, serde_yaml::to_string(&sts).unwrap()).unwrap();
    if let Some((passed, report)) = run_kubernetes_validate(&[path]) {
        assert!(!passed, "a broken StatefulSet passed:\n{report}");
    }
}

#[test]
fn manifests_pass_the_kubernetes_schemas() {
    let dir = repo_root().join("manifests");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // The kustomization and the example custom resource have no built-in schema.
        .filter(|p| !p.ends_with("kustomization.yaml") && !p.ends_with("example-dedupcluster.yaml"))
        .collect();
    files.push(repo_root().join("crds/dedupcluster.yaml"));
    files.sort();
    assert_eq!(files.len(), 4, "{files:?}");
    kubernetes_validate(&files);
}

#[test]
fn example_dedup_cluster_passes_the_crd_schema() {
    let crd: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("crds/dedupcluster.yaml")).unwrap(),
    )
    .unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let validator = jsonschema::validator_for(schema).expect("the CRD schema compiles");
    let example: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join("manifests/example-dedupcluster.yaml")).unwrap(),
    )
    .unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&example)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    // The schema is not vacuous: a negative replica count and a missing bucket fail it.
    let mut bad = example.clone();
    bad["spec"]["replicas"] = serde_json::json!(-1);
    bad["spec"]["checkpoint"]["s3"]
        .as_object_mut()
        .unwrap()
        .remove("bucket");
    assert!(validator.iter_errors(&bad).count() >= 2);
    // And the example is a valid spec for the operator too.
    let cluster: operator::crd::DedupCluster = serde_json::from_value(example).unwrap();
    cluster.spec.validate().unwrap();
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dedup-operator-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
