//! The CheckpointLoader: restores a partition's store from its newest usable remote
//! checkpoint, with retries and a time bound, for the deduplicator (on assignment) and
//! the restorer (before the pod starts). The transfer itself (verified, resumable,
//! atomic, falling back to older checkpoints) is [`super::transfer::restore`].

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{PartitionStore, StoreResources, StoreSettings};

use super::remote::{Remote, RemoteError};
use super::transfer::{self, ProgressFn, RestoreOptions, RestoreOutcome};

/// Restores partition stores from a remote.
#[derive(Clone)]
pub struct CheckpointLoader {
    pub remote: Remote,
    pub key_prefix: String,
    /// Files downloaded at once.
    pub concurrency: usize,
    /// Attempts when the remote fails (verified files are kept between attempts).
    pub max_attempts: u32,
    /// Bound of the whole restore of one partition, retries included.
    pub time_bound: Duration,
    /// Called after every verified file.
    pub progress: Option<Arc<ProgressFn>>,
    /// `LOCAL_CHECKPOINT_DIR`, whose checkpoints of the partition (and the store being
    /// replaced) lend their table files to a restore, so only the delta is downloaded.
    pub local_checkpoints: Option<PathBuf>,
}

/// How loading one partition ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOutcome {
    /// Restored from `outcome` (a [`RestoreOutcome`]); see its fields.
    Finished(RestoreOutcome),
    /// The remote kept failing; the last error.
    Failed { attempts: u32, error: String },
    /// The time bound passed first.
    TimedOut { after: Duration },
    /// Stopped on request (a prefetch overtaken by its partition's restore).
    Cancelled,
}

impl LoadOutcome {
    /// The metric label of the outcome.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Finished(RestoreOutcome::Restored { skipped, .. }) if skipped.is_empty() => {
                "restored"
            }
            Self::Finished(RestoreOutcome::Restored { .. }) => "restored_older",
            Self::Finished(RestoreOutcome::NoCheckpoint) => "no_checkpoint",
            Self::Finished(RestoreOutcome::NotNewer { .. }) => "local_is_current",
            Self::Finished(RestoreOutcome::AllCorrupt { .. }) => "all_corrupt",
            Self::Failed { .. } => "remote_failed",
            Self::TimedOut { .. } => "timed_out",
            Self::Cancelled => "cancelled",
        }
    }

    /// Newer checkpoints found corrupt or incomplete on the way.
    pub fn skipped(&self) -> &[(String, String)] {
        match self {
            Self::Finished(
                RestoreOutcome::Restored { skipped, .. }
                | RestoreOutcome::NotNewer { skipped, .. }
                | RestoreOutcome::AllCorrupt { skipped },
            ) => skipped,
            _ => &[],
        }
    }
}

/// Who restored, and so what follows when nothing was restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRestore {
    /// The deduplicator, on assignment: the partition starts from its local or an empty
    /// store (an error: copies of earlier events may pass).
    StartsWithout,
    /// The restorer, before the pod starts: the deduplicator tries again on assignment
    /// (a warning).
    RetriedOnAssignment,
    /// A prefetch, before the partition moves here: nothing is installed, and its
    /// restore at assignment downloads what the prefetch did not (a warning).
    Prefetch,
}

/// The end of one partition's restore, logged the same way by the deduplicator and the
/// restorer: one line per unusable checkpoint skipped, one for the outcome. Each caller
/// counts it in its own metrics.
pub struct RestoreEnded<'a> {
    pub partition: i32,
    /// The local store's next offset before the restore.
    pub local: Option<i64>,
    pub outcome: &'a LoadOutcome,
    pub seconds: f64,
    pub after: AfterRestore,
}

impl RestoreEnded<'_> {
    pub fn log(&self) {
        let Self {
            partition,
            local,
            seconds,
            after,
            ..
        } = *self;
        for (checkpoint, reason) in self.outcome.skipped() {
            tracing::warn!(
                partition,
                checkpoint,
                reason,
                "remote checkpoint unusable; trying an older one"
            );
        }
        let fallback = match after {
            AfterRestore::StartsWithout => "starting from the local or an empty store",
            AfterRestore::RetriedOnAssignment => "the deduplicator will try again on assignment",
            AfterRestore::Prefetch => "its restore at assignment downloads it",
        };
        let failure = |what: &str, detail: &dyn std::fmt::Display| match after {
            AfterRestore::StartsWithout => {
                tracing::error!(partition, ?local, detail = %detail, "{what}; {fallback}")
            }
            AfterRestore::RetriedOnAssignment | AfterRestore::Prefetch => {
                tracing::warn!(partition, ?local, detail = %detail, "{what}; {fallback}")
            }
        };
        match self.outcome {
            LoadOutcome::Finished(RestoreOutcome::Restored {
                checkpoint_id,
                next_offset,
                bytes,
                files_resumed,
                files_reused,
                bytes_reused,
                ..
            }) => tracing::info!(
                partition,
                checkpoint_id,
                ?next_offset,
                ?local,
                bytes,
                bytes_downloaded = bytes.saturating_sub(*bytes_reused),
                files_resumed,
                files_reused,
                seconds,
                mb_per_s = *bytes as f64 / 1e6 / seconds.max(1e-9),
                "{}",
                match after {
                    AfterRestore::Prefetch => "checkpoint prefetched for a partition about to move here",
                    _ => "partition restored",
                }
            ),
            LoadOutcome::Finished(RestoreOutcome::NotNewer {
                local_next_offset,
                remote_next_offset,
                ..
            }) => tracing::info!(
                partition,
                local_next_offset,
                ?remote_next_offset,
                "local store is as recent as the remote checkpoints; kept"
            ),
            LoadOutcome::Finished(RestoreOutcome::NoCheckpoint) => tracing::info!(
                partition,
                ?local,
                "no remote checkpoint for this partition; {}",
                match after {
                    AfterRestore::StartsWithout => fallback,
                    AfterRestore::RetriedOnAssignment => "nothing to restore",
                    AfterRestore::Prefetch => "nothing to prefetch",
                }
            ),
            LoadOutcome::Finished(RestoreOutcome::AllCorrupt { skipped }) => failure(
                "every remote checkpoint is unusable",
                &format!("{} checkpoints", skipped.len()),
            ),
            LoadOutcome::Failed { attempts, error } => failure(
                "checkpoint remote unreachable",
                &format!("{attempts} attempts, last: {error}"),
            ),
            LoadOutcome::TimedOut { after } => failure(
                "restore timed out (RESTORE_TIMEOUT)",
                &format!("after {after:?}"),
            ),
            LoadOutcome::Cancelled => tracing::info!(
                partition,
                seconds,
                "{}",
                match after {
                    AfterRestore::Prefetch =>
                        "prefetch overtaken by the partition's arrival; its restore takes what was staged",
                    _ => "restore cancelled",
                }
            ),
        }
    }
}

impl CheckpointLoader {
    /// Restores `{topic}/{partition}` into `store_dir` unless the local store there
    /// (whose next offset is `local_next_offset`) is at least as far ahead as every
    /// usable remote checkpoint. Never returns an error: every way it can end is a
    /// [`LoadOutcome`], which the caller counts and logs.
    pub async fn load(
        &self,
        topic: &str,
        partition: i32,
        store_dir: &Path,
        local_next_offset: Option<i64>,
    ) -> LoadOutcome {
        self.run(topic, partition, store_dir, local_next_offset, None)
            .await
    }

    /// Downloads the partition's newest usable checkpoint next to `store_dir` without
    /// installing it ([`transfer::prefetch`]), with the same retries and time bound as
    /// [`Self::load`]: a later `load` then downloads only what changed since.
    /// Setting `cancel` stops it: the files under way finish, no other starts, and the
    /// outcome is [`LoadOutcome::Cancelled`].
    pub async fn prefetch(
        &self,
        topic: &str,
        partition: i32,
        store_dir: &Path,
        cancel: Arc<AtomicBool>,
    ) -> LoadOutcome {
        self.run(topic, partition, store_dir, None, Some(cancel))
            .await
    }

    async fn run(
        &self,
        topic: &str,
        partition: i32,
        store_dir: &Path,
        local_next_offset: Option<i64>,
        prefetch: Option<Arc<AtomicBool>>,
    ) -> LoadOutcome {
        let stage_only = prefetch.is_some();
        let started = Instant::now();
        let options = RestoreOptions {
            concurrency: self.concurrency.max(1),
            newer_than: local_next_offset,
            progress: self.progress.clone(),
            reuse_from: self
                .local_checkpoints
                .iter()
                .map(|root| PartitionStore::dir_for(root, topic, partition))
                .collect(),
            cancel: prefetch,
        };
        let attempts = async {
            let mut backoff = Duration::from_millis(500);
            let mut attempt = 0;
            loop {
                attempt += 1;
                match self
                    .attempt(topic, partition, store_dir, &options, stage_only)
                    .await
                {
                    Ok(outcome) => return LoadOutcome::Finished(outcome),
                    Err(RemoteError::Cancelled) => return LoadOutcome::Cancelled,
                    Err(error) if attempt >= self.max_attempts.max(1) => {
                        return LoadOutcome::Failed {
                            attempts: attempt,
                            error: error.to_string(),
                        }
                    }
                    Err(error) => {
                        tracing::warn!(topic, partition, attempt, %error, ?backoff,
                            "restore attempt failed; retrying (verified files are kept)");
                        // In steps, so that a cancelled prefetch ends within one.
                        let until = Instant::now() + backoff;
                        while Instant::now() < until {
                            if options.cancelled() {
                                return LoadOutcome::Cancelled;
                            }
                            let left = until.saturating_duration_since(Instant::now());
                            tokio::time::sleep(left.min(Duration::from_millis(100))).await;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        };
        match tokio::time::timeout(self.time_bound, attempts).await {
            Ok(outcome) => outcome,
            Err(_) => LoadOutcome::TimedOut {
                after: started.elapsed(),
            },
        }
    }

    async fn attempt(
        &self,
        topic: &str,
        partition: i32,
        store_dir: &Path,
        options: &RestoreOptions,
        stage_only: bool,
    ) -> Result<RestoreOutcome, RemoteError> {
        if let Some(parent) = store_dir.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| RemoteError::io(&parent.display().to_string(), e))?;
        }
        let (remote, prefix) = (&self.remote, self.key_prefix.as_str());
        if stage_only {
            transfer::prefetch(remote, prefix, topic, partition, store_dir, options).await
        } else {
            transfer::restore(remote, prefix, topic, partition, store_dir, options).await
        }
    }
}

/// The next offset of the store in `store_dir`: `Ok(None)` if there is no store there
/// or it has none recorded. The store is opened and closed again.
pub fn local_next_offset(
    store_dir: &Path,
    settings: &StoreSettings,
    resources: &StoreResources,
) -> Result<Option<i64>, crate::store::StoreError> {
    if !store_dir.join("CURRENT").exists() {
        return Ok(None);
    }
    let store = PartitionStore::open(store_dir, settings, resources)?;
    let next = store.next_offset()?;
    store.close()?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::manifest::UploadKind;
    use crate::checkpoint::remote::LocalDirRemote;
    use crate::checkpoint::s3::{S3Remote, S3Settings};
    use crate::checkpoint::{build_manifest, create_local};
    use crate::key::EventKey;

    fn key(i: i64) -> crate::StoredKey {
        let distinct_id = format!("u{i}");
        EventKey {
            timestamp_ms: 1_700_000_000_000 + i,
            distinct_id: &distinct_id,
            token: "t",
            event: "e",
        }
        .stored()
    }

    fn loader(remote: Remote, attempts: u32, bound: Duration) -> CheckpointLoader {
        CheckpointLoader {
            remote,
            key_prefix: "p".into(),
            concurrency: 4,
            max_attempts: attempts,
            time_bound: bound,
            progress: None,
            local_checkpoints: None,
        }
    }

    #[tokio::test]
    async fn restores_a_missing_store_and_keeps_a_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let (settings, resources) = (StoreSettings::default(), StoreResources::default());
        let store = PartitionStore::open(dir.path().join("a/t_0"), &settings, &resources).unwrap();
        let batch: Vec<_> = (0..1000).map(|i| (key(i), i)).collect();
        store.check_and_insert(&batch, 1000).unwrap();
        let local = create_local(&store, &dir.path().join("cp"), 1).unwrap();
        let manifest = build_manifest(&local, "t", 0, "w", 1, UploadKind::Full).unwrap();
        let remote = Remote::Dir(LocalDirRemote::new(dir.path().join("bucket")));
        transfer::upload(&remote, "p", &manifest, &local.dir, &Default::default(), 2)
            .await
            .unwrap();

        let target = dir.path().join("b/t_0");
        assert_eq!(
            local_next_offset(&target, &settings, &resources).unwrap(),
            None
        );
        let loader = loader(remote, 3, Duration::from_secs(30));
        let outcome = loader.load("t", 0, &target, None).await;
        assert_eq!(outcome.label(), "restored", "{outcome:?}");
        assert_eq!(
            local_next_offset(&target, &settings, &resources).unwrap(),
            Some(1000)
        );
        let outcome = loader.load("t", 0, &target, Some(1000)).await;
        assert_eq!(outcome.label(), "local_is_current", "{outcome:?}");
    }

    #[tokio::test]
    async fn an_unreachable_remote_fails_after_its_attempts_or_its_time_bound() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing listens on port 9 of loopback: connections are refused at once.
        let mut settings = S3Settings::new("b");
        settings.endpoint = Some("http://127.0.0.1:9".into());
        settings.max_attempts = 1;
        let builder = aws_sdk_s3::config::Builder::new()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "k", "s", None, None, "test",
            ));
        let remote = Remote::S3(S3Remote::from_builder(builder, &settings));
        let target = dir.path().join("t_0");
        let started = Instant::now();
        let outcome = loader(remote.clone(), 2, Duration::from_secs(60))
            .load("t", 0, &target, None)
            .await;
        assert!(
            matches!(outcome, LoadOutcome::Failed { attempts: 2, .. }),
            "{outcome:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(30));
        let outcome = loader(remote, 100, Duration::from_secs(2))
            .load("t", 0, &target, None)
            .await;
        assert_eq!(outcome.label(), "timed_out", "{outcome:?}");
        assert!(!target.exists());
    }
}
