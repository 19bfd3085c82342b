//! Where checkpoints are kept off the pod: the [`CheckpointRemote`] interface, and a
//! local-directory implementation (for the embedded default and for tests about
//! something else than S3). The S3 implementation plugs in behind the same interface.

use std::future::Future;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote I/O on {key}: {message}")]
    Io { key: String, message: String },
    /// The transfer was stopped on request ([`super::transfer::RestoreOptions::cancel`]).
    #[error("cancelled")]
    Cancelled,
}

impl RemoteError {
    pub fn io(key: &str, error: impl std::fmt::Display) -> Self {
        Self::Io {
            key: key.to_string(),
            message: error.to_string(),
        }
    }
}

/// An object store holding checkpoint files and manifests under string keys.
pub trait CheckpointRemote: Send + Sync {
    /// Uploads the file at `path` as `key`.
    fn put_file(
        &self,
        key: &str,
        path: &Path,
    ) -> impl Future<Output = Result<(), RemoteError>> + Send;
    /// Writes `bytes` as `key`.
    fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
    ) -> impl Future<Output = Result<(), RemoteError>> + Send;
    /// Downloads `key` into the file at `path`; `Ok(false)` if there is no such key.
    fn get_file(
        &self,
        key: &str,
        path: &Path,
    ) -> impl Future<Output = Result<bool, RemoteError>> + Send;
    /// The content of `key`, if it exists.
    fn get_bytes(
        &self,
        key: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, RemoteError>> + Send;
    /// Every key starting with `prefix`.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<String>, RemoteError>> + Send;
    /// Deletes `key` (no error if it is already gone).
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), RemoteError>> + Send;
}

/// A directory standing in for a bucket: key `a/b/c` is the file `{root}/a/b/c`.
/// Writes go to a temporary name first and are renamed into place, like an object
/// store's all-or-nothing PUT.
#[derive(Debug, Clone)]
pub struct LocalDirRemote {
    root: PathBuf,
}

impl LocalDirRemote {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    async fn write_atomically(
        &self,
        key: &str,
        write: impl Future<Output = std::io::Result<()>>,
        tmp: &Path,
    ) -> Result<(), RemoteError> {
        write.await.map_err(|e| RemoteError::io(key, e))?;
        tokio::fs::rename(tmp, self.path(key))
            .await
            .map_err(|e| RemoteError::io(key, e))
    }

    async fn prepare(&self, key: &str) -> Result<PathBuf, RemoteError> {
        let target = self.path(key);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| RemoteError::io(key, e))?;
        }
        Ok(target.with_extension(format!("{}.part", std::process::id())))
    }
}

impl CheckpointRemote for LocalDirRemote {
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), RemoteError> {
        let tmp = self.prepare(key).await?;
        self.write_atomically(
            key,
            async { tokio::fs::copy(path, &tmp).await.map(|_| ()) },
            &tmp,
        )
        .await
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), RemoteError> {
        let tmp = self.prepare(key).await?;
        self.write_atomically(key, tokio::fs::write(&tmp, bytes), &tmp)
            .await
    }

    async fn get_file(&self, key: &str, path: &Path) -> Result<bool, RemoteError> {
        match tokio::fs::copy(self.path(key), path).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(RemoteError::io(key, e)),
        }
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        match tokio::fs::read(self.path(key)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RemoteError::io(key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError> {
        let mut keys = Vec::new();
        let mut pending = vec![self.root.clone()];
        while let Some(dir) = pending.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(RemoteError::io(prefix, e)),
            };
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| RemoteError::io(prefix, e))?
            {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Ok(relative) = path.strip_prefix(&self.root) {
                    let key = relative.to_string_lossy().replace('\\', "/");
                    if key.starts_with(prefix) && !key.ends_with(".part") {
                        keys.push(key);
                    }
                }
            }
        }
        keys.sort();
        Ok(keys)
    }

    async fn delete(&self, key: &str) -> Result<(), RemoteError> {
        match tokio::fs::remove_file(self.path(key)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RemoteError::io(key, e)),
        }
    }
}

/// The remote a binary was configured with: S3 (`S3_BUCKET`) or a local directory
/// (`CHECKPOINT_REMOTE_DIR`).
#[derive(Clone)]
pub enum Remote {
    S3(super::s3::S3Remote),
    Dir(LocalDirRemote),
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::S3(s3) => write!(f, "s3://{}", s3.bucket()),
            Self::Dir(dir) => write!(f, "directory {}", dir.root.display()),
        }
    }
}

impl CheckpointRemote for Remote {
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), RemoteError> {
        match self {
            Self::S3(r) => r.put_file(key, path).await,
            Self::Dir(r) => r.put_file(key, path).await,
        }
    }

    async fn put_bytes(&self, key: &str, bytes: Vec<u8>) -> Result<(), RemoteError> {
        match self {
            Self::S3(r) => r.put_bytes(key, bytes).await,
            Self::Dir(r) => r.put_bytes(key, bytes).await,
        }
    }

    async fn get_file(&self, key: &str, path: &Path) -> Result<bool, RemoteError> {
        match self {
            Self::S3(r) => r.get_file(key, path).await,
            Self::Dir(r) => r.get_file(key, path).await,
        }
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, RemoteError> {
        match self {
            Self::S3(r) => r.get_bytes(key).await,
            Self::Dir(r) => r.get_bytes(key).await,
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError> {
        match self {
            Self::S3(r) => r.list(prefix).await,
            Self::Dir(r) => r.list(prefix).await,
        }
    }

    async fn delete(&self, key: &str) -> Result<(), RemoteError> {
        match self {
            Self::S3(r) => r.delete(key).await,
            Self::Dir(r) => r.delete(key).await,
        }
    }
}
