//! Moving checkpoints between the local volume and a [`CheckpointRemote`]: upload
//! (incremental or full, manifest last), restore (newest manifest first, verified,
//! resumable, atomic, falling back to older ones) and garbage collection.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::manifest::{
    file_checksum, manifest_key, partition_prefix, CheckpointManifest, ManifestFile, UploadKind,
};
use super::remote::{CheckpointRemote, RemoteError};
use futures_util::stream::{self, StreamExt};

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

/// What the remote holds for a partition, as the uploader needs it.
#[derive(Debug, Clone, Default)]
pub struct RemoteState {
    /// Remote keys referenced by the partition's readable manifests.
    pub referenced: HashSet<String>,
    /// Incremental uploads since the newest full one (all of them if none is full).
    pub incrementals_since_full: usize,
    /// The newest readable manifest.
    pub newest: Option<CheckpointManifest>,
}

/// Reads every manifest of a partition (newest first); unreadable ones are skipped.
pub async fn remote_state<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    topic: &str,
    partition: i32,
) -> Result<RemoteState, RemoteError> {
    let mut state = RemoteState::default();
    let mut full_seen = false;
    for key in list_manifest_keys(remote, key_prefix, topic, partition).await? {
        let Some(bytes) = remote.get_bytes(&key).await? else {
            continue;
        };
        let Ok(manifest) = CheckpointManifest::from_json(&bytes) else {
            continue;
        };
        if manifest.kind == UploadKind::Full {
            full_seen = true;
        } else if !full_seen {
            state.incrementals_since_full += 1;
        }
        state
            .referenced
            .extend(manifest.files.iter().map(|f| f.remote_key.clone()));
        if state.newest.is_none() {
            state.newest = Some(manifest);
        }
    }
    Ok(state)
}

/// Remote keys referenced by the partition's readable manifests.
pub async fn referenced_files<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    topic: &str,
    partition: i32,
) -> Result<HashSet<String>, RemoteError> {
    Ok(remote_state(remote, key_prefix, topic, partition)
        .await?
        .referenced)
}

/// The newest readable manifest of a partition.
pub async fn newest_manifest<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    topic: &str,
    partition: i32,
) -> Result<Option<CheckpointManifest>, RemoteError> {
    for key in list_manifest_keys(remote, key_prefix, topic, partition).await? {
        if let Some(bytes) = remote.get_bytes(&key).await? {
            if let Ok(manifest) = CheckpointManifest::from_json(&bytes) {
                return Ok(Some(manifest));
            }
        }
    }
    Ok(None)
}

/// Uploads a local checkpoint: its files, then its manifest, last, as the commit marker.
/// See [`upload_files`] and [`put_manifest`]; a writer that must check it still owns the
/// partition before committing calls those two itself.
pub async fn upload<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    manifest: &CheckpointManifest,
    checkpoint_dir: &Path,
    already_remote: &HashSet<String>,
    concurrency: usize,
) -> Result<UploadStats, RemoteError> {
    let stats = upload_files(
        remote,
        key_prefix,
        manifest,
        checkpoint_dir,
        already_remote,
        concurrency,
    )
    .await?;
    put_manifest(remote, key_prefix, manifest).await?;
    Ok(stats)
}

/// Uploads the files of a checkpoint, `concurrency` at a time: all of them for a full
/// upload, else only those no remote manifest references yet (`already_remote`, from
/// [`remote_state`]).
pub async fn upload_files<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    manifest: &CheckpointManifest,
    checkpoint_dir: &Path,
    already_remote: &HashSet<String>,
    concurrency: usize,
) -> Result<UploadStats, RemoteError> {
    let prefix = partition_prefix(key_prefix, &manifest.topic, manifest.partition);
    let mut stats = UploadStats::default();
    let mut to_send = Vec::new();
    for file in &manifest.files {
        if manifest.kind == UploadKind::Incremental && already_remote.contains(&file.remote_key) {
            stats.files_reused += 1;
            stats.bytes_reused += file.size;
        } else {
            to_send.push(file);
        }
    }
    // Futures collected first: a stream over a closure that borrows trips the compiler's
    // `Send` inference (rust-lang/rust#102211) in callers that spawn this.
    let puts: Vec<_> = to_send
        .into_iter()
        .map(|file| {
            put_one(
                remote,
                format!("{prefix}/{}", file.remote_key),
                checkpoint_dir.join(&file.local_name),
                file.size,
            )
        })
        .collect();
    let mut puts = stream::iter(puts).buffer_unordered(concurrency.max(1));
    while let Some(sent) = puts.next().await {
        stats.bytes_uploaded += sent?;
        stats.files_uploaded += 1;
    }
    Ok(stats)
}

async fn put_one<R: CheckpointRemote>(
    remote: &R,
    key: String,
    path: PathBuf,
    size: u64,
) -> Result<u64, RemoteError> {
    remote.put_file(&key, &path).await.map(|()| size)
}

/// Writes a checkpoint's manifest: the commit marker, after all of its files.
pub async fn put_manifest<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    manifest: &CheckpointManifest,
) -> Result<(), RemoteError> {
    let bytes = manifest
        .to_json()
        .map_err(|e| RemoteError::io(&manifest.checkpoint_id, e))?;
    let key = manifest_key(
        key_prefix,
        &manifest.topic,
        manifest.partition,
        &manifest.checkpoint_id,
    );
    remote.put_bytes(&key, bytes).await
}

/// Progress of one checkpoint's download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub checkpoint_id: String,
    pub files_done: usize,
    pub files_total: usize,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

pub type ProgressFn = dyn Fn(&Progress) + Send + Sync;

/// How to restore.
#[derive(Clone, Default)]
pub struct RestoreOptions {
    /// Files downloaded at once (at least 1).
    pub concurrency: usize,
    /// The next offset of the local store, if there is one: only a checkpoint further
    /// ahead is worth restoring; otherwise the outcome is [`RestoreOutcome::NotNewer`].
    pub newer_than: Option<i64>,
    /// Called after every verified file.
    pub progress: Option<std::sync::Arc<ProgressFn>>,
    /// Directories (each with its subdirectories one level down) whose table files may
    /// stand in for a checkpoint's, besides the store directory itself and interrupted
    /// restores of it: e.g. the partition's local checkpoints. See [`restore`].
    pub reuse_from: Vec<PathBuf>,
    /// Set to stop: no file is started after it is set, the files under way finish,
    /// and the restore ends with [`RemoteError::Cancelled`] (what is verified stays in
    /// the staging directory). For a prefetch that its partition's restore overtakes.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl RestoreOptions {
    /// Whether [`Self::cancel`] is set.
    pub fn cancelled(&self) -> bool {
        self.cancel
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::SeqCst))
    }
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
        /// Table files taken from an older copy on this volume instead of downloaded
        /// (a delta restore), and their bytes.
        files_reused: usize,
        bytes_reused: u64,
        /// Newer checkpoints skipped as corrupt or incomplete, with the reason.
        skipped: Vec<(String, String)>,
    },
    /// No manifest exists for the partition.
    NoCheckpoint,
    /// The local store is as far ahead as every usable remote checkpoint (it is kept).
    NotNewer {
        local_next_offset: i64,
        remote_next_offset: Option<i64>,
        skipped: Vec<(String, String)>,
    },
    /// Manifests exist but none could be restored.
    AllCorrupt { skipped: Vec<(String, String)> },
}

/// Restores the newest usable checkpoint of a partition into `store_dir`.
///
/// Files are downloaded into `{store_dir}.restore-{checkpoint_id}` and verified (size
/// and checksum); files already there and valid are kept, so an interrupted restore
/// resumes. Only a fully verified checkpoint is renamed into place, replacing any
/// previous directory. A corrupt or incomplete checkpoint falls back to the next older.
///
/// Only the delta is downloaded when an older copy of the partition is on this volume
/// (the store being replaced, an interrupted restore of another checkpoint, the
/// directories of `options.reuse_from`): a table file (`.sst`, `.blob`) of the same name,
/// size and checksum is hard-linked (or copied) instead. RocksDB never changes a table
/// file once written, and the checksum is verified before a file is taken, so a file of
/// another lineage that only shares the name is downloaded.
pub async fn restore<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    topic: &str,
    partition: i32,
    store_dir: &Path,
    options: &RestoreOptions,
) -> Result<RestoreOutcome, RemoteError> {
    fetch(
        remote,
        key_prefix,
        topic,
        partition,
        store_dir,
        options,
        Finish::Install,
    )
    .await
}

/// Downloads and verifies the newest usable checkpoint of a partition next to
/// `store_dir` (in its staging directory, exactly as [`restore`] would) and leaves it
/// there, not installed: a later `restore` of the same checkpoint then downloads
/// nothing, and one of a newer checkpoint takes the staged table files and downloads only
/// the delta. For a partition about to move here (warm handoff). Staged copies of other
/// checkpoints of the partition are removed once this one is complete; the store
/// directory itself is never touched. `Restored` reports what was staged.
pub async fn prefetch<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    topic: &str,
    partition: i32,
    store_dir: &Path,
    options: &RestoreOptions,
) -> Result<RestoreOutcome, RemoteError> {
    fetch(
        remote,
        key_prefix,
        topic,
        partition,
        store_dir,
        options,
        Finish::Stage,
    )
    .await
}

/// Removes every staged (prefetched or interrupted) checkpoint of the store at
/// `store_dir`; the store itself is kept.
pub fn discard_staged(store_dir: &Path) {
    remove_stale_staging(store_dir, None);
}

/// What a fetched checkpoint becomes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// Renamed into place as the store.
    Install,
    /// Left in its staging directory.
    Stage,
}

async fn fetch<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    topic: &str,
    partition: i32,
    store_dir: &Path,
    options: &RestoreOptions,
    finish: Finish,
) -> Result<RestoreOutcome, RemoteError> {
    let manifests = list_manifest_keys(remote, key_prefix, topic, partition).await?;
    if manifests.is_empty() {
        return Ok(RestoreOutcome::NoCheckpoint);
    }
    let prefix = partition_prefix(key_prefix, topic, partition);
    let mut skipped = Vec::new();
    for key in manifests {
        if options.cancelled() {
            return Err(RemoteError::Cancelled);
        }
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
        if let Some(local) = options.newer_than {
            if manifest.next_offset.is_none_or(|remote| remote <= local) {
                if finish == Finish::Install {
                    // Staged copies (prefetched, interrupted) are older than the store.
                    remove_stale_staging(store_dir, None);
                }
                return Ok(RestoreOutcome::NotNewer {
                    local_next_offset: local,
                    remote_next_offset: manifest.next_offset,
                    skipped,
                });
            }
        }
        let staging = staging_dir(store_dir, &manifest.checkpoint_id);
        let reusable = reusable_files(store_dir, &staging, &options.reuse_from);
        match download_verified(remote, &prefix, &manifest, &staging, &reusable, options).await {
            Ok(FetchStats {
                files_resumed,
                files_reused,
                bytes_reused,
            }) => {
                match finish {
                    Finish::Install => {
                        replace_dir(&staging, store_dir)
                            .map_err(|e| RemoteError::io(&manifest.checkpoint_id, e))?;
                        remove_stale_staging(store_dir, None);
                    }
                    Finish::Stage => remove_stale_staging(store_dir, Some(&staging)),
                }
                return Ok(RestoreOutcome::Restored {
                    checkpoint_id: manifest.checkpoint_id.clone(),
                    next_offset: manifest.next_offset,
                    bytes: manifest.size(),
                    files_resumed,
                    files_reused,
                    bytes_reused,
                    skipped,
                });
            }
            Err(Problem::Corrupt(damage)) => {
                // Keep nothing of a corrupt checkpoint: it would never verify.
                let _ = std::fs::remove_dir_all(&staging);
                skipped.push((manifest.checkpoint_id.clone(), damage.to_string()));
            }
            Err(Problem::Remote(error)) => return Err(error),
        }
    }
    Ok(RestoreOutcome::AllCorrupt { skipped })
}

/// Why a checkpoint's file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    #[error("{key} is missing")]
    Missing { key: String },
    #[error("{file}: {source}")]
    Unreadable {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {actual} bytes, manifest says {expected}")]
    Size {
        file: String,
        actual: u64,
        expected: u64,
    },
    #[error("{file}: checksum mismatch")]
    Checksum { file: String },
    #[error("verification task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

enum Problem {
    /// The checkpoint cannot be restored (missing or damaged file).
    Corrupt(Damage),
    /// The remote failed; retrying later may work, and verified files are kept.
    Remote(RemoteError),
}

/// How a checkpoint's files got into its staging directory, beyond downloads.
#[derive(Debug, Default, Clone, Copy)]
struct FetchStats {
    files_resumed: usize,
    files_reused: usize,
    bytes_reused: u64,
}

/// How one file got there.
enum Fetched {
    Downloaded,
    Resumed,
    Reused,
    /// Not started: the transfer was cancelled before its turn.
    Skipped,
}

/// Table files on this volume that may stand in for a checkpoint's, by name: those of
/// the store directory, of other staging directories of it, and of `extra` and its
/// subdirectories (one level). Never the `staging` directory itself.
fn reusable_files(
    store_dir: &Path,
    staging: &Path,
    extra: &[PathBuf],
) -> HashMap<String, Vec<PathBuf>> {
    let mut dirs = vec![store_dir.to_path_buf()];
    if let (Some(parent), Some(name)) = (store_dir.parent(), store_dir.file_name()) {
        let stem = format!("{}{STAGING_MARK}", name.to_string_lossy());
        dirs.extend(subdirectories(parent).filter(|d| {
            d.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&stem))
        }));
    }
    for dir in extra {
        dirs.push(dir.clone());
        dirs.extend(subdirectories(dir));
    }
    let mut files: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for dir in dirs.into_iter().filter(|d| d != staging) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_table_file(&name) && entry.file_type().is_ok_and(|t| t.is_file()) {
                files.entry(name).or_default().push(entry.path());
            }
        }
    }
    files
}

fn subdirectories(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
}

/// RocksDB's immutable files: tables and blobs. Never the MANIFEST, CURRENT or OPTIONS,
/// which a store goes on writing (a hard link would share the writes).
fn is_table_file(name: &str) -> bool {
    name.ends_with(".sst") || name.ends_with(".blob")
}

async fn download_verified<R: CheckpointRemote>(
    remote: &R,
    prefix: &str,
    manifest: &CheckpointManifest,
    staging: &Path,
    reusable: &HashMap<String, Vec<PathBuf>>,
    options: &RestoreOptions,
) -> Result<FetchStats, Problem> {
    std::fs::create_dir_all(staging)
        .map_err(|e| Problem::Remote(RemoteError::io(&manifest.checkpoint_id, e)))?;
    let mut progress = Progress {
        checkpoint_id: manifest.checkpoint_id.clone(),
        files_done: 0,
        files_total: manifest.files.len(),
        bytes_done: 0,
        bytes_total: manifest.size(),
    };
    let fetches: Vec<_> = manifest
        .files
        .iter()
        .map(|file| {
            let candidates = reusable.get(&file.local_name).cloned().unwrap_or_default();
            async move {
                // Checked as each file's turn comes: none starts once cancelled.
                if options.cancelled() {
                    return Ok((0, Fetched::Skipped));
                }
                fetch_one(remote, prefix, staging, file, candidates).await
            }
        })
        .collect();
    let mut fetches = stream::iter(fetches).buffer_unordered(options.concurrency.max(1));
    let mut stats = FetchStats::default();
    while let Some(done) = fetches.next().await {
        let (size, how) = done?;
        match how {
            Fetched::Skipped => continue,
            Fetched::Downloaded => {}
            Fetched::Resumed => stats.files_resumed += 1,
            Fetched::Reused => {
                stats.files_reused += 1;
                stats.bytes_reused += size;
            }
        }
        progress.files_done += 1;
        progress.bytes_done += size;
        if let Some(report) = &options.progress {
            report(&progress);
        }
    }
    if options.cancelled() {
        return Err(Problem::Remote(RemoteError::Cancelled));
    }
    Ok(stats)
}

/// Gets one file into `staging`: kept if already there and valid, else taken from the
/// first of `candidates` (same name on this volume) that verifies, else downloaded.
async fn fetch_one<R: CheckpointRemote>(
    remote: &R,
    prefix: &str,
    staging: &Path,
    file: &ManifestFile,
    candidates: Vec<PathBuf>,
) -> Result<(u64, Fetched), Problem> {
    let local = staging.join(&file.local_name);
    if verify_blocking(&local, file).await.is_ok() {
        return Ok((file.size, Fetched::Resumed));
    }
    if !candidates.is_empty() && reuse_blocking(candidates, &local, file).await {
        return Ok((file.size, Fetched::Reused));
    }
    // A new file, never a write through what is there: that may be a hard link to a
    // store's or a local checkpoint's file (an earlier reuse).
    match std::fs::remove_file(&local) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(Problem::Remote(RemoteError::io(&file.local_name, error)));
        }
        _ => {}
    }
    let key = format!("{prefix}/{}", file.remote_key);
    if !remote
        .get_file(&key, &local)
        .await
        .map_err(Problem::Remote)?
    {
        return Err(Problem::Corrupt(Damage::Missing {
            key: file.remote_key.clone(),
        }));
    }
    verify_blocking(&local, file)
        .await
        .map_err(Problem::Corrupt)?;
    Ok((file.size, Fetched::Downloaded))
}

/// Links (or copies, across file systems) the first candidate whose size and checksum
/// are the manifest's to `target`; false if none does or none could be placed.
async fn reuse_blocking(candidates: Vec<PathBuf>, target: &Path, file: &ManifestFile) -> bool {
    let (target, file) = (target.to_path_buf(), file.clone());
    tokio::task::spawn_blocking(move || {
        candidates.iter().any(|candidate| {
            let same_size = std::fs::metadata(candidate).is_ok_and(|m| m.len() == file.size);
            if !same_size || verify(candidate, &file).is_err() {
                return false;
            }
            let _ = std::fs::remove_file(&target);
            std::fs::hard_link(candidate, &target).is_ok()
                || std::fs::copy(candidate, &target).is_ok_and(|n| n == file.size)
        })
    })
    .await
    .unwrap_or(false)
}

async fn verify_blocking(path: &Path, file: &ManifestFile) -> Result<(), Damage> {
    let (path, file) = (path.to_path_buf(), file.clone());
    tokio::task::spawn_blocking(move || verify(&path, &file)).await?
}

fn verify(path: &Path, file: &ManifestFile) -> Result<(), Damage> {
    let (checksum, size) = file_checksum(path).map_err(|source| Damage::Unreadable {
        file: file.local_name.clone(),
        source,
    })?;
    if size != file.size {
        return Err(Damage::Size {
            file: file.local_name.clone(),
            actual: size,
            expected: file.size,
        });
    }
    if checksum != file.checksum {
        return Err(Damage::Checksum {
            file: file.local_name.clone(),
        });
    }
    Ok(())
}

/// What separates a store directory's name from a checkpoint id in the name of a
/// staging directory (`{store}.restore-{checkpoint_id}`).
const STAGING_MARK: &str = ".restore-";

/// The partitions of `topic` with a staging directory under `store_path` (a restore
/// interrupted, a prefetch), from the directory names
/// (`{store_path}/{topic}_{partition}.restore-{checkpoint_id}`).
pub fn staged_partitions(store_path: &Path, topic: &str) -> HashSet<i32> {
    let stem = format!("{topic}_");
    subdirectories(store_path)
        .filter_map(|dir| {
            let name = dir.file_name()?.to_string_lossy().into_owned();
            let (partition, _) = name.strip_prefix(&stem)?.split_once(STAGING_MARK)?;
            partition.parse().ok()
        })
        .collect()
}

fn staging_dir(store_dir: &Path, checkpoint_id: &str) -> PathBuf {
    let name = store_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    store_dir.with_file_name(format!("{name}{STAGING_MARK}{checkpoint_id}"))
}

/// Removes staging directories of other checkpoints of this store (interrupted restores
/// of checkpoints that are not the one restored), all but `keep`.
fn remove_stale_staging(store_dir: &Path, keep: Option<&Path>) {
    let (Some(parent), Some(name)) = (store_dir.parent(), store_dir.file_name()) else {
        return;
    };
    let stem = format!("{}{STAGING_MARK}", name.to_string_lossy());
    if let Ok(entries) = std::fs::read_dir(parent) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&stem)
                && keep != Some(entry.path().as_path())
            {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// Moves `staging` to `target`, replacing what was there: the old directory is renamed
/// aside first, so `target` is always either the old or the new store, never a mix.
fn replace_dir(staging: &Path, target: &Path) -> std::io::Result<()> {
    // Not `with_extension`: a topic name may contain dots.
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let aside = target.with_file_name(format!("{name}.replaced"));
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
    /// Kept manifests that could not be read: while there is one, no file is deleted.
    pub unreadable_manifests: usize,
}

/// Keeps the newest `keep` readable manifests of a partition and every file they
/// reference; deletes the older manifests (first) and every file no kept manifest
/// references.
///
/// A manifest that cannot be read (damaged, or a newer format written by a newer version
/// during a rolling upgrade) and is newer than the oldest kept one is kept too, and may
/// reference any file: while there is one, no file is deleted (reported in
/// [`GcStats::unreadable_manifests`]). Once `keep` newer readable manifests exist it is
/// an old manifest like any other, deleted, and collection resumes.
pub async fn collect_garbage<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    topic: &str,
    partition: i32,
    keep: usize,
) -> Result<GcStats, RemoteError> {
    collect_garbage_while(remote, key_prefix, topic, partition, keep, || true).await
}

/// [`collect_garbage`], asking `still_owner` before every delete and stopping as soon as
/// it says no: a writer that loses the partition mid-collection deletes nothing more
/// (the new owner may be uploading).
pub async fn collect_garbage_while<R: CheckpointRemote>(
    remote: &R,
    key_prefix: &str,
    topic: &str,
    partition: i32,
    keep: usize,
    still_owner: impl Fn() -> bool,
) -> Result<GcStats, RemoteError> {
    let mut stats = GcStats::default();
    let mut readable_kept = 0;
    let mut referenced = HashSet::new();
    let mut old = Vec::new();
    for key in list_manifest_keys(remote, key_prefix, topic, partition).await? {
        let Some(bytes) = remote.get_bytes(&key).await? else {
            continue; // deleted meanwhile
        };
        let kept = readable_kept < keep;
        match CheckpointManifest::from_json(&bytes) {
            Ok(manifest) if kept => {
                readable_kept += 1;
                referenced.extend(manifest.files.into_iter().map(|f| f.remote_key));
            }
            Err(_) if kept => stats.unreadable_manifests += 1,
            _ => old.push(key),
        }
    }
    for key in &old {
        if !still_owner() {
            return Ok(stats);
        }
        remote.delete(key).await?;
        stats.manifests_deleted += 1;
    }
    if stats.unreadable_manifests > 0 {
        return Ok(stats);
    }
    let prefix = partition_prefix(key_prefix, topic, partition);
    for key in remote.list(&format!("{prefix}/files/")).await? {
        let relative = key.strip_prefix(&format!("{prefix}/")).unwrap_or(&key);
        if !referenced.contains(relative) {
            if !still_owner() {
                return Ok(stats);
            }
            remote.delete(&key).await?;
            stats.files_deleted += 1;
        }
    }
    Ok(stats)
}
