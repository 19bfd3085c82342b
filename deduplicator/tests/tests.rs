//! The deduplicator's integration tests: one binary (one link instead of seven), one
//! module per subject. The harness they share (the broker, S3, the deduplicator run as a
//! process, generated events and output checks) is the workspace's test kit,
//! `dedup-testkit` (`testkit/`).
//!
//! One module alone: `cargo test --test tests checkpoint_tests::`.

mod checkpoint_tests;
mod kafka_integration_tests;
mod monitoring_tests;
mod pod_reschedule_tests;
mod reliability_tests;
mod startup_tests;
mod transaction_tests;
