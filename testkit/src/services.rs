//! The one rule of every test that needs a service or a tool (S3, Kafka, the Kubernetes
//! control plane, kubectl, helm, promtool): missing, it fails, unless a local run asks
//! to skip with `DEDUP_ALLOW_MISSING_SERVICES=1` (services) or
//! `DEDUP_ALLOW_MISSING_TOOLS=1` (tools). Under CI (`CI` set) nothing may skip.
//!
//! And where the services are: `scripts/start-test-services.sh` starts them on 127.0.0.1
//! and prints their addresses as environment variables.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The environment variable naming the S3 server (moto) of the tests.
pub const S3_ENDPOINT_VAR: &str = "DEDUP_TEST_S3_ENDPOINT";

/// moto's address when the variable is not set.
pub const DEFAULT_S3_ENDPOINT: &str = "http://127.0.0.1:5000";

/// Whether a test may skip because what it needs is missing: `variable` is `1` and `CI`
/// is not set.
pub fn may_skip(variable: &str) -> bool {
    std::env::var(variable).is_ok_and(|v| v == "1") && !in_ci()
}

/// Whether this is a CI run: `CI` set to anything but empty or `false`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false")
}

/// The S3 endpoint of the tests (`DEDUP_TEST_S3_ENDPOINT`, default
/// http://127.0.0.1:5000), whether or not it answers.
pub fn s3_endpoint() -> String {
    std::env::var(S3_ENDPOINT_VAR).unwrap_or_else(|_| DEFAULT_S3_ENDPOINT.into())
}

/// The test S3 (moto, started by `scripts/start-test-services.sh`): its endpoint and
/// address once it accepts a connection. Not reachable: the test fails, unless
/// `DEDUP_ALLOW_MISSING_SERVICES=1` (local runs only) makes it skip (`None`).
pub fn moto() -> Option<(String, SocketAddr)> {
    let endpoint = s3_endpoint();
    let addr: SocketAddr = match endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
    {
        Ok(addr) => addr,
        Err(error) => panic!("{S3_ENDPOINT_VAR}={endpoint}: expected http://IP:PORT ({error})"),
    };
    if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok() {
        return Some((endpoint, addr));
    }
    if may_skip("DEDUP_ALLOW_MISSING_SERVICES") {
        eprintln!("skipping: no S3 at {endpoint} and DEDUP_ALLOW_MISSING_SERVICES=1");
        return None;
    }
    panic!("no S3 at {endpoint}: run scripts/start-test-services.sh (moto_server)");
}
