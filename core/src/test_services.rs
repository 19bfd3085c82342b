//! The one rule of every test that needs a service or a tool (S3, Kafka, the Kubernetes
//! control plane, kubectl, helm, promtool): missing, it fails, unless a local run asks
//! to skip with `DEDUP_ALLOW_MISSING_SERVICES=1` (services) or
//! `DEDUP_ALLOW_MISSING_TOOLS=1` (tools). Under CI (`CI` set) nothing may skip.

/// Whether a test may skip because what it needs is missing: `variable` is `1` and `CI`
/// is not set.
pub fn may_skip(variable: &str) -> bool {
    std::env::var(variable).is_ok_and(|v| v == "1") && !in_ci()
}

/// Whether this is a CI run: `CI` set to anything but empty or `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}
