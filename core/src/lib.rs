//! `dedup-core`: what the Kafka Deduplicator's three binaries (deduplicator, restorer,
//! operator) share.
//!
//! - [`key`]: the deduplication key, `timestamp:distinct_id:token:event_name`, and its
//!   fixed-width stored form.
//! - [`event`]: reading that key out of a message value, with typed errors for malformed
//!   input.
//! - [`store`]: the per-partition RocksDB store (lookups, inserts, next offset,
//!   retention).
//! - [`checkpoint`]: checkpoint creation, local retention, the manifest and remote
//!   layout.
//! - [`config`]: parsing of setting values (durations, byte sizes).
//! - [`http`]: the `/metrics`, `/healthz`, `/readyz` port of the long-running binaries.
//! - [`telemetry`]: logging set-up (`LOG_FORMAT=json`).
//!
//! No Kafka consumer loop and no Kubernetes code live here.

#[cfg(feature = "store")]
pub mod checkpoint;
pub mod config;
pub mod event;
pub mod http;
pub mod key;
#[cfg(feature = "store")]
pub mod store;
pub mod telemetry;

pub use event::{Event, EventError};
pub use key::{EventKey, StoredKey};
#[cfg(feature = "store")]
pub use store::{Eviction, Outcome, PartitionStore, StoreError, StoreResources, StoreSettings};
