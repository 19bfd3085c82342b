//! Moving checkpoints between the local volume and a [`CheckpointRemote`]: upload
//! (incremental or full, manifest last), restore (newest manifest first, verified,
//! resumable, atomic, falling back to older ones) and garbage collection.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use super::manifest::{
    file_checksum, manifest_key, partition_prefix, CheckpointManifest, ManifestFile, UploadKind,
};
use super::remote::{CheckpointRemote, RemoteError};

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UploadStats {
    pub files_uploaded: usize,
    pub bytes_uploaded: u64,
    pub files_reused: usize,
    pub bytes_reused: u64,
}

/// The manifests of a partition, newest first. Unreadable ones are skipped (the loader
/// reports them when it gets to them).
pub async fn list_manifest_keys<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    topic: &str,
    partition: i32,
) -> Result<Vec<String>, RemoteError> {
    let prefix = format!(
        "{}/manifests/",
        partition_prefix(key_prefix, topic, partition)
    );
    let mut keys: Vec<String> = remote
        .list(&prefix)
        .await?
        .into_iter()
        .filter(|k| k.ends_with(".json"))
        .collect();
    keys.sort_unstable_by(|a, b| b.cmp(a));
    Ok(keys)
}

/// Remote keys referenced by the partition's readable manifests.
pub async fn referenced_files<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    topic: &str,
    partition: i32,
) -> Result<HashSet<String>, RemoteError> {
    let mut referenced = HashSet::new();
    for key in list_manifest_keys(remote, key_prefix, topic, partition).await? {
        if let Some(bytes) = remote.get_bytes(&key).await? {
            if let Ok(manifest) = CheckpointManifest::from_json(&bytes) {
                referenced.extend(manifest.files.into_iter().map(|f| f.remote_key));
            }
        }
    }
    Ok(referenced)
}

/// Uploads a local checkpoint: its files (all of them for a full upload, else only
/// those no remote manifest references yet), then its manifest, last, as the commit
/// marker. `already_remote` comes from [`referenced_files`].
pub async fn upload<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    manifest: &CheckpointManifest,
    checkpoint_dir: &Path,
    already_remote: &HashSet<String>,
) -> Result<UploadStats, RemoteError> {
    let prefix = partition_prefix(key_prefix, &manifest.topic, manifest.partition);
    let mut stats = UploadStats::default();
    for file in &manifest.files {
        if manifest.kind == UploadKind::Incremental && already_remote.contains(&file.remote_key) {
            stats.files_reused += 1;
            stats.bytes_reused += file.size;
            continue;
        }
        let key = format!("{prefix}/{}", file.remote_key);
        remote
            .put_file(&key, &checkpoint_dir.join(&file.local_name))
            .await?;
        stats.files_uploaded += 1;
        stats.bytes_uploaded += file.size;
    }
    let manifest_bytes = manifest
        .to_json()
        .map_err(|e| RemoteError::io(&manifest.checkpoint_id, e))?;
    remote
        .put_bytes(
            &manifest_key(
                key_prefix,
                &manifest.topic,
                manifest.partition,
                &manifest.checkpoint_id,
            ),
            manifest_bytes,
        )
        .await?;
    Ok(stats)
}

/// How a restore ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// The store directory now holds this checkpoint.
    Restored {
        checkpoint_id: String,
        next_offset: Option<i64>,
        bytes: u64,
        /// Files found already downloaded and verified (a resumed restore).
        files_resumed: usize,
        /// Newer checkpoints skipped as corrupt or incomplete, with the reason.
        skipped: Vec<(String, String)>,
    },
    /// No manifest exists for the partition.
    NoCheckpoint,
    /// Manifests exist but none could be restored.
    AllCorrupt { skipped: Vec<(String, String)> },
}

/// Restores the newest usable checkpoint of a partition into `store_dir`.
///
/// Files are downloaded into `{store_dir}.restore-{checkpoint_id}` and verified (size
/// and checksum); files already there and valid are kept, so an interrupted restore
/// resumes. Only a fully verified checkpoint is renamed into place, replacing any
/// previous directory. A corrupt or incomplete checkpoint falls back to the next older.
pub async fn restore<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    topic: &str,
    partition: i32,
    store_dir: &Path,
) -> Result<RestoreOutcome, RemoteError> {
    let manifests = list_manifest_keys(remote, key_prefix, topic, partition).await?;
    if manifests.is_empty() {
        return Ok(RestoreOutcome::NoCheckpoint);
    }
    let prefix = partition_prefix(key_prefix, topic, partition);
    let mut skipped = Vec::new();
    for key in manifests {
        let manifest = match remote.get_bytes(&key).await? {
            Some(bytes) => match CheckpointManifest::from_json(&bytes) {
                Ok(m) if m.topic == topic && m.partition == partition => m,
                Ok(_) => {
                    skipped.push((key, "manifest of another partition".into()));
                    continue;
                }
                Err(error) => {
                    skipped.push((key, error.to_string()));
                    continue;
                }
            },
            None => continue, // deleted meanwhile (garbage collection)
        };
        let staging = staging_dir(store_dir, &manifest.checkpoint_id);
        match download_verified(remote, &prefix, &manifest, &staging).await {
            Ok(files_resumed) => {
                replace_dir(&staging, store_dir)
                    .map_err(|e| RemoteError::io(&manifest.checkpoint_id, e))?;
                return Ok(RestoreOutcome::Restored {
                    checkpoint_id: manifest.checkpoint_id.clone(),
                    next_offset: manifest.next_offset,
                    bytes: manifest.size(),
                    files_resumed,
                    skipped,
                });
            }
            Err(Problem::Corrupt(reason)) => {
                // Keep nothing of a corrupt checkpoint: it would never verify.
                let _ = std::fs::remove_dir_all(&staging);
                skipped.push((manifest.checkpoint_id.clone(), reason));
            }
            Err(Problem::Remote(error)) => return Err(error),
        }
    }
    Ok(RestoreOutcome::AllCorrupt { skipped })
}

enum Problem {
    /// The checkpoint cannot be restored (missing or damaged file).
    Corrupt(String),
    /// The remote failed; retrying later may work, and verified files are kept.
    Remote(RemoteError),
}

async fn download_verified<R: CheckpointRemote>(
    remote: &R,
    prefix: &str,
    manifest: &CheckpointManifest,
    staging: &Path,
) -> Result<usize, Problem> {
    std::fs::create_dir_all(staging)
        .map_err(|e| Problem::Remote(RemoteError::io(&manifest.checkpoint_id, e)))?;
    let mut resumed = 0;
    for file in &manifest.files {
        let local = staging.join(&file.local_name);
        if verify(&local, file).is_ok() {
            resumed += 1;
            continue;
        }
        let key = format!("{prefix}/{}", file.remote_key);
        if !remote
            .get_file(&key, &local)
            .await
            .map_err(Problem::Remote)?
        {
            return Err(Problem::Corrupt(format!("{} is missing", file.remote_key)));
        }
        verify(&local, file).map_err(Problem::Corrupt)?;
    }
    Ok(resumed)
}

fn verify(path: &Path, file: &ManifestFile) -> Result<(), String> {
    let (checksum, size) = file_checksum(path).map_err(|e| format!("{}: {e}", file.local_name))?;
    if size != file.size {
        return Err(format!(
            "{}: {size} bytes, manifest says {}",
            file.local_name, file.size
        ));
    }
    if checksum != file.checksum {
        return Err(format!("{}: checksum mismatch", file.local_name));
    }
    Ok(())
}

fn staging_dir(store_dir: &Path, checkpoint_id: &str) -> PathBuf {
    let name = store_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    store_dir.with_file_name(format!("{name}.restore-{checkpoint_id}"))
}

/// Moves `staging` to `target`, replacing what was there: the old directory is renamed
/// aside first, so `target` is always either the old or the new store, never a mix.
fn replace_dir(staging: &Path, target: &Path) -> std::io::Result<()> {
    let aside = target.with_extension("replaced");
    if target.exists() {
        let _ = std::fs::remove_dir_all(&aside);
        std::fs::rename(target, &aside)?;
    }
    std::fs::rename(staging, target)?;
    let _ = std::fs::remove_dir_all(&aside);
    Ok(())
}

/// What garbage collection removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GcStats {
    pub manifests_deleted: usize,
    pub files_deleted: usize,
}

/// Keeps the newest `keep` manifests of a partition and every file they reference;
/// deletes the older manifests (first) and every file no kept manifest references.
pub async fn collect_garbage<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    topic: &str,
    partition: i32,
    keep: usize,
) -> Result<GcStats, RemoteError> {
    let manifests = list_manifest_keys(remote, key_prefix, topic, partition).await?;
    let mut stats = GcStats::default();
    for old in manifests.iter().skip(keep) {
        remote.delete(old).await?;
        stats.manifests_deleted += 1;
    }
    let referenced = referenced_files(remote, key_prefix, topic, partition).await?;
    let prefix = partition_prefix(key_prefix, topic, partition);
    for key in remote.list(&format!("{prefix}/files/")).await? {
        let relative = key.strip_prefix(&format!("{prefix}/")).unwrap_or(&key);
        if !referenced.contains(relative) {
            remote.delete(&key).await?;
            stats.files_deleted += 1;
        }
    }
    Ok(stats)
}
