//! Checkpoints of partition stores.
//!
//! - Creation: a RocksDB checkpoint (hard links, so cheap and flat in store size) into
//!   `{LOCAL_CHECKPOINT_DIR}/{topic}_{partition}/{checkpoint_id}/`, consistent with the
//!   next offset it records ([`PartitionStore::create_checkpoint`]).
//! - Local retention: the newest `MAX_LOCAL_CHECKPOINTS` are kept.
//! - [`manifest`]: what a remote checkpoint holds, and the remote layout.
//! - [`remote`]: the object-store interface, and a local-directory implementation.
//! - [`s3`]: the S3 implementation.
//! - [`transfer`]: upload (incremental/full), verified restore with fallback, GC.
//! - [`loader`]: the CheckpointLoader (restore with retries and a time bound).
//! - [`settings`]: where the remote is (`S3_BUCKET`, `CHECKPOINT_REMOTE_DIR`, …).
//!
//! Garbage collection of a partition must run in its owner, after its own upload and
//! never beside it: files of an upload in progress are not referenced by any manifest
//! yet.

pub mod loader;
pub mod manifest;
pub mod remote;
pub mod s3;
pub mod settings;
pub mod transfer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::store::{PartitionStore, StoreError};
use manifest::{
    checkpoint_id, content_key, file_checksum, CheckpointManifest, ManifestFile, UploadKind,
    MANIFEST_FORMAT_VERSION,
};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A checkpoint on the local volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCheckpoint {
    pub id: String,
    pub dir: PathBuf,
    /// The next offset to consume the checkpoint is consistent with.
    pub next_offset: Option<i64>,
}

/// `{base}/{topic}_{partition}`: the checkpoints of one partition.
pub fn partition_dir(base: &Path, topic: &str, partition: i32) -> PathBuf {
    base.join(format!("{topic}_{partition}"))
}

/// Creates a checkpoint of `store` under `partition_dir`, named for `now_ms`.
pub fn create_local(
    store: &PartitionStore,
    partition_dir: &Path,
    now_ms: i64,
) -> Result<LocalCheckpoint, CheckpointError> {
    // Two checkpoints in one millisecond still get distinct, ordered ids.
    static TIEBREAK: AtomicU32 = AtomicU32::new(0);
    std::fs::create_dir_all(partition_dir).map_err(io_err(partition_dir))?;
    let id = checkpoint_id(now_ms, TIEBREAK.fetch_add(1, Ordering::Relaxed));
    let dir = partition_dir.join(&id);
    let next_offset = store.create_checkpoint(&dir)?;
    Ok(LocalCheckpoint {
        id,
        dir,
        next_offset,
    })
}

/// The checkpoints under `partition_dir`, oldest first. Anything not named like a
/// checkpoint id (e.g. a temporary directory) is ignored.
pub fn list_local(partition_dir: &Path) -> Result<Vec<(String, PathBuf)>, CheckpointError> {
    let entries = match std::fs::read_dir(partition_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(partition_dir)(e)),
    };
    let mut found: Vec<(String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            is_checkpoint_id(&name).then(|| (name, e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Deletes all but the newest `keep` checkpoints; returns the ids deleted.
pub fn prune_local(partition_dir: &Path, keep: usize) -> Result<Vec<String>, CheckpointError> {
    let all = list_local(partition_dir)?;
    let excess = all.len().saturating_sub(keep);
    let mut removed = Vec::with_capacity(excess);
    for (id, path) in all.into_iter().take(excess) {
        std::fs::remove_dir_all(&path).map_err(io_err(&path))?;
        removed.push(id);
    }
    Ok(removed)
}

/// Checksums already known, by file name and size: SST files are immutable, so a name
/// and size seen before in the same store is the same file.
pub type KnownChecksums = std::collections::HashMap<(String, u64), String>;

/// The manifest of a local checkpoint: every file with its size, checksum and content
/// key. (`kind` says whether the upload will send all files or only new ones.)
pub fn build_manifest(
    checkpoint: &LocalCheckpoint,
    topic: &str,
    partition: i32,
    writer: &str,
    created_at_ms: i64,
    kind: UploadKind,
) -> Result<CheckpointManifest, CheckpointError> {
    build_manifest_reusing(
        checkpoint,
        topic,
        partition,
        writer,
        created_at_ms,
        kind,
        &KnownChecksums::new(),
    )
}

/// [`build_manifest`], reading only the files whose checksum `known` does not hold
/// (`.sst` files only: the others change in place). A checkpoint of a large store then
/// reads its new files, not all of them.
pub fn build_manifest_reusing(
    checkpoint: &LocalCheckpoint,
    topic: &str,
    partition: i32,
    writer: &str,
    created_at_ms: i64,
    kind: UploadKind,
    known: &KnownChecksums,
) -> Result<CheckpointManifest, CheckpointError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&checkpoint.dir).map_err(io_err(&checkpoint.dir))? {
        let path = entry.map_err(io_err(&checkpoint.dir))?.path();
        let metadata = std::fs::metadata(&path).map_err(io_err(&path))?;
        if !metadata.is_file() {
            continue;
        }
        let local_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let cached = local_name
            .ends_with(".sst")
            .then(|| known.get(&(local_name.clone(), metadata.len())))
            .flatten();
        let (checksum, size) = match cached {
            Some(checksum) => (checksum.clone(), metadata.len()),
            None => file_checksum(&path).map_err(io_err(&path))?,
        };
        files.push(ManifestFile {
            remote_key: content_key(&local_name, &checksum, size),
            local_name,
            size,
            checksum,
        });
    }
    files.sort_by(|a, b| a.local_name.cmp(&b.local_name));
    Ok(CheckpointManifest {
        format_version: MANIFEST_FORMAT_VERSION,
        topic: topic.to_string(),
        partition,
        checkpoint_id: checkpoint.id.clone(),
        created_at_ms,
        next_offset: checkpoint.next_offset,
        writer: writer.to_string(),
        kind,
        files,
    })
}

fn is_checkpoint_id(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() == 22
        && bytes[13] == b'-'
        && bytes[..13].iter().all(u8::is_ascii_digit)
        && bytes[14..].iter().all(u8::is_ascii_hexdigit)
}

#[cfg(test)]
mod tests;
