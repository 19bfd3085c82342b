//! The ownership record: `owners/{consumer_group}/{pod_name}.json` in the checkpoint
//! remote, the partitions this pod owns. The restorer of the pod's next start reads it to
//! know which partitions to pull (`restorer`), before the deduplicator joins the group.

use std::sync::Arc;
use std::time::Duration;

use dedup_core::checkpoint::remote::CheckpointRemote;

use crate::checkpoint_exporter::now_ms;
use crate::internal_events::{InternalEvent, OwnerRecordFailed, OwnerRecordWritten};
use crate::rebalance_handler::RebalanceHandler;

/// Keeps `owners/{consumer_group}/{pod_name}.json` up to date with the partitions this
/// pod owns after each rebalance, and rewrites it every CHECKPOINT_INTERVAL (its
/// `updated_at_ms` says the pod is alive): the restorer reads it before the pod's next
/// start, and ignores a record older than OWNER_RECORD_MAX_AGE (a pod that was gone long
/// enough for its partitions to move, e.g. scaled down and up again).
pub async fn owner_record_loop(handler: Arc<RebalanceHandler>) {
    let context = Arc::clone(&handler.context);
    let config = &context.config;
    let (Some(remote), Some(pod)) = (context.remote.clone(), config.pod_name.clone()) else {
        return;
    };
    let key = dedup_core::checkpoint::manifest::owner_key(
        &config.remote.s3_key_prefix,
        &config.kafka_consumer_group,
        &pod,
    );
    let mut owners = handler.owners();
    let mut pending = false;
    let refresh = Some(config.checkpoint_interval).filter(|i| !i.is_zero());
    let mut written = false;
    loop {
        if !pending {
            let changed = match refresh {
                Some(every) => tokio::select! {
                    changed = owners.changed() => Some(changed),
                    _ = tokio::time::sleep(every) => None,
                },
                None => Some(owners.changed().await),
            };
            match changed {
                Some(Err(_)) => return,
                // Refresh only a record this process has written (its assignment).
                None if !written => continue,
                _ => {}
            }
        }
        pending = false;
        let partitions = owners.borrow_and_update().clone();
        let record = dedup_core::checkpoint::manifest::OwnerRecord {
            format_version: dedup_core::checkpoint::manifest::MANIFEST_FORMAT_VERSION,
            consumer_group: config.kafka_consumer_group.clone(),
            pod_name: pod.clone(),
            topic: config.kafka_consumer_topic.clone(),
            partitions: partitions.clone(),
            updated_at_ms: now_ms(),
        };
        let Ok(bytes) = record.to_json() else {
            continue;
        };
        let mut backoff = Duration::from_secs(1);
        loop {
            match remote.put_bytes(&key, bytes.clone()).await {
                Ok(()) => {
                    OwnerRecordWritten {
                        key: &key,
                        partitions: &partitions,
                    }
                    .emit(&context.metrics);
                    written = true;
                    break;
                }
                Err(error) => {
                    OwnerRecordFailed {
                        key: &key,
                        error: &error,
                        backoff,
                    }
                    .emit(&context.metrics);
                    // A newer assignment supersedes this record.
                    if let Ok(Ok(())) = tokio::time::timeout(backoff, owners.changed()).await {
                        pending = true;
                        break;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}
