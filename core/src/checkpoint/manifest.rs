//! The checkpoint manifest and the remote layout, shared by the deduplicator (writer)
//! and the restorer (reader).
//!
//! ```text
//! {S3_KEY_PREFIX}/{topic}/{partition}/manifests/{checkpoint_id}.json
//! {S3_KEY_PREFIX}/{topic}/{partition}/files/{checksum}-{size}{.ext}
//! {S3_KEY_PREFIX}/owners/{consumer_group}/{pod_name}.json
//! ```
//!
//! A remote file is named by its content (XXH3-128 checksum and size), never by its
//! RocksDB file name: two stores of one partition (one restored, one started empty) can
//! both create a different `000012.sst`, and content names keep them apart while letting
//! identical files be shared. The manifest is written last and is the commit marker.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Bumped when the manifest's meaning changes; readers refuse other versions.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// Whether an upload sent every file again or only those not yet referenced remotely.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadKind {
    Full,
    Incremental,
}

/// One file of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Name inside the checkpoint directory (e.g. `000012.sst`, `MANIFEST-000005`).
    pub local_name: String,
    /// Object key, relative to the partition's prefix (`files/…`).
    pub remote_key: String,
    pub size: u64,
    /// XXH3-128 of the content, lower-case hex.
    pub checksum: String,
}

/// What a remote checkpoint holds; written after all of its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointManifest {
    pub format_version: u32,
    pub topic: String,
    pub partition: i32,
    pub checkpoint_id: String,
    /// Creation time, epoch milliseconds.
    pub created_at_ms: i64,
    /// The next offset to consume that the checkpointed store is consistent with.
    pub next_offset: Option<i64>,
    /// The pod (or process) that wrote it.
    pub writer: String,
    pub kind: UploadKind,
    pub files: Vec<ManifestFile>,
}

impl CheckpointManifest {
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec_pretty(self)
    }

    /// Parses a manifest, refusing other format versions.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let manifest: Self = serde_json::from_slice(bytes).map_err(ManifestError::Invalid)?;
        if manifest.format_version != MANIFEST_FORMAT_VERSION {
            return Err(ManifestError::Version(manifest.format_version));
        }
        Ok(manifest)
    }

    /// Total bytes of its files.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// The partitions a pod owned after its last rebalance, written by the deduplicator to
/// [`owner_key`] and read by the restorer before the pod's next start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    pub format_version: u32,
    pub consumer_group: String,
    pub pod_name: String,
    pub topic: String,
    pub partitions: Vec<i32>,
    /// When it was written, epoch milliseconds.
    pub updated_at_ms: i64,
}

impl OwnerRecord {
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec_pretty(self)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        let record: Self = serde_json::from_slice(bytes).map_err(ManifestError::Invalid)?;
        if record.format_version != MANIFEST_FORMAT_VERSION {
            return Err(ManifestError::Version(record.format_version));
        }
        Ok(record)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid: {0}")]
    Invalid(#[source] serde_json::Error),
    #[error("manifest format {0}, this build reads format {MANIFEST_FORMAT_VERSION}")]
    Version(u32),
}

/// A checkpoint id: zero-padded epoch milliseconds and a tiebreak, so that ids sort
/// lexicographically in creation order.
pub fn checkpoint_id(now_ms: i64, tiebreak: u32) -> String {
    format!("{:013}-{tiebreak:08x}", now_ms.max(0))
}

/// Where objects of one partition live, under the configured key prefix.
pub fn partition_prefix(key_prefix: &str, topic: &str, partition: i32) -> String {
    join(key_prefix, &format!("{topic}/{partition}"))
}

pub fn manifest_key(key_prefix: &str, topic: &str, partition: i32, checkpoint_id: &str) -> String {
    format!(
        "{}/manifests/{checkpoint_id}.json",
        partition_prefix(key_prefix, topic, partition)
    )
}

/// The key of the ownership record the restorer reads for a pod.
pub fn owner_key(key_prefix: &str, consumer_group: &str, pod_name: &str) -> String {
    join(
        key_prefix,
        &format!("owners/{consumer_group}/{pod_name}.json"),
    )
}

/// The remote key (relative to the partition prefix) of a file with this content.
/// The extension is kept so that the object's kind is visible in a listing.
pub fn content_key(local_name: &str, checksum: &str, size: u64) -> String {
    let extension = Path::new(local_name)
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    format!("files/{checksum}-{size}{extension}")
}

/// XXH3-128 of a file's content, lower-case hex, and its size; reads in 1 MiB chunks.
pub fn file_checksum(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok((format!("{:032x}", hasher.digest128()), size))
}

fn join(prefix: &str, rest: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> CheckpointManifest {
        CheckpointManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            topic: "events".into(),
            partition: 3,
            checkpoint_id: checkpoint_id(1_700_000_000_000, 1),
            created_at_ms: 1_700_000_000_000,
            next_offset: Some(42),
            writer: "dedup-0".into(),
            kind: UploadKind::Incremental,
            files: vec![ManifestFile {
                local_name: "000012.sst".into(),
                remote_key: content_key("000012.sst", "ab", 10),
                size: 10,
                checksum: "ab".into(),
            }],
        }
    }

    #[test]
    fn round_trips_through_json() {
        let m = manifest();
        assert_eq!(
            CheckpointManifest::from_json(&m.to_json().unwrap()).unwrap(),
            m
        );
        assert_eq!(m.size(), 10);
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        let mut m = manifest();
        m.format_version = 2;
        assert!(matches!(
            CheckpointManifest::from_json(&m.to_json().unwrap()),
            Err(ManifestError::Version(2))
        ));
        assert!(matches!(
            CheckpointManifest::from_json(b"{\"topic\":"),
            Err(ManifestError::Invalid(_))
        ));
    }

    #[test]
    fn owner_records_round_trip() {
        let record = OwnerRecord {
            format_version: MANIFEST_FORMAT_VERSION,
            consumer_group: "g".into(),
            pod_name: "dedup-0".into(),
            topic: "events".into(),
            partitions: vec![0, 3],
            updated_at_ms: 5,
        };
        assert_eq!(
            OwnerRecord::from_json(&record.to_json().unwrap()).unwrap(),
            record
        );
        assert!(OwnerRecord::from_json(b"[]").is_err());
    }

    #[test]
    fn ids_sort_in_creation_order() {
        let ids = [
            checkpoint_id(999, 5),
            checkpoint_id(1_000, 0),
            checkpoint_id(1_000, 1),
            checkpoint_id(1_700_000_000_000, 0),
        ];
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids);
    }

    #[test]
    fn layout_matches_the_design() {
        assert_eq!(
            manifest_key("deduplication-checkpoints", "events", 3, "x"),
            "deduplication-checkpoints/events/3/manifests/x.json"
        );
        assert_eq!(
            owner_key("deduplication-checkpoints/", "group", "dedup-0"),
            "deduplication-checkpoints/owners/group/dedup-0.json"
        );
        assert_eq!(partition_prefix("", "events", 0), "events/0");
        assert_eq!(content_key("000012.sst", "ab", 7), "files/ab-7.sst");
        assert_eq!(content_key("MANIFEST-000005", "cd", 9), "files/cd-9");
    }

    #[test]
    fn content_names_tell_different_files_apart() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        std::fs::write(&a, b"first store's 000012.sst").unwrap();
        std::fs::write(&b, b"other store's 000012.sst").unwrap();
        std::fs::write(&c, b"first store's 000012.sst").unwrap();
        let (sa, sb, sc) = (
            file_checksum(&a).unwrap(),
            file_checksum(&b).unwrap(),
            file_checksum(&c).unwrap(),
        );
        assert_ne!(sa, sb);
        assert_eq!(sa, sc);
        assert_eq!(sa.1, 24);
        assert_ne!(
            content_key("000012.sst", &sa.0, sa.1),
            content_key("000012.sst", &sb.0, sb.1)
        );
    }
}
