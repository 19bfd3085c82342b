//! The operator's tests that need no control plane, one binary with a module per subject:
//! the child objects as pure functions (`builders`), the reconcile paths on
//! kube-fake-client (`controller`), the shipped manifests and chart (`manifests`,
//! `packaging`), and the scale-down's LeaveGroup against the real broker
//! (`group_departure`). The tests on the real control plane are binaries of their own,
//! `real_cluster` and `end_to_end`, which never run at the same time (cargo runs test
//! binaries one after another; both load the one control plane).
//!
//! One module alone: `cargo test --test tests packaging::`.

mod fixtures;

mod builders;
mod controller;
mod group_departure;
mod manifests;
mod packaging;
