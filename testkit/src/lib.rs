//! The workspace's test kit, one module per concern, shared by the tests and benchmarks
//! of every crate (a dev-dependency only, never published):
//!
//! - [`services`]: the rule for a missing service (never skipped under CI) and where the
//!   test services are (`scripts/start-test-services.sh`).
//! - [`kafka`]: `TestKafka`, the broker under test (topics, produce, read, admin calls).
//! - [`events`]: generated PostHog events with their truth, and what an output message
//!   says about itself.
//! - [`checks`]: output measured against the generated truth (no copy passed, no loss).
//! - [`process`]: the `deduplicator` binary run as a process (`DedupSpec`, `Dedup`), crash
//!   loops and background streams.
//! - [`http`]: plain HTTP/1.1 calls, free ports, metric sums.
//! - [`s3`]: `TestS3`, a bucket on moto with plain HTTP calls.
//! - [`outage`]: `Outage`, a TCP forwarder that can cut a server off and restore it.
//! - [`rng`]: xorshift random numbers, repeatable for a seed.
//!
//! The glob re-exports let a test file say `use dedup_testkit::*;`.

pub mod checks;
pub mod events;
pub mod http;
pub mod kafka;
pub mod outage;
pub mod process;
pub mod rng;
pub mod s3;
pub mod services;

pub use checks::*;
pub use events::*;
pub use http::*;
pub use kafka::*;
pub use outage::*;
pub use process::*;
pub use rng::*;
pub use s3::*;
