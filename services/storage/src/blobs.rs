//! Object stores for the PHI path. Keys are made of opaque ids and a
//! content hash, so a key names one content: writing a key again is a
//! no-op, never an overwrite.

use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("object key {key:?} is not a relative path of plain segments")]
    BadKey { key: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("object store task: {0}")]
    Task(String),
}

#[async_trait::async_trait]
pub trait Blobs: Send + Sync {
    /// Stores `bytes` under `key` durably unless the key exists (same key,
    /// same content). True when this call created it.
    async fn put_once(&self, key: &str, bytes: Vec<u8>) -> Result<bool, BlobError>;
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError>;
    /// Every key under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError>;
    async fn delete(&self, key: &str) -> Result<(), BlobError>;
}

/// Files under a root directory. A put writes a temporary file in the
/// target directory, fsyncs it, renames it into place and fsyncs the
/// directory (and any directory it had to create), so an acknowledged
/// object survives a power cut; `object_store`'s `LocalFileSystem` does
/// not sync, which is why this is not it.
pub struct LocalBlobs {
    root: PathBuf,
}

impl LocalBlobs {
    pub fn new(root: impl Into<PathBuf>) -> LocalBlobs {
        LocalBlobs { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        let plain = !key.is_empty()
            && key
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\\') && !s.starts_with(".tmp"));
        if !plain {
            return Err(BlobError::BadKey { key: key.to_owned() });
        }
        Ok(self.root.join(key))
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BlobError + '_ {
    move |source| BlobError::Io { path: path.display().to_string(), source }
}

fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Creates `dir` and its missing parents, syncing each parent whose entry
/// list changed.
fn create_dirs(root: &Path, dir: &Path) -> Result<(), BlobError> {
    if dir.exists() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && parent != root
    {
        create_dirs(root, parent)?;
    }
    std::fs::create_dir(dir).or_else(|e| if dir.is_dir() { Ok(()) } else { Err(e) }).map_err(io(dir))?;
    sync_dir(dir.parent().unwrap_or(root))
}

fn put_blocking(root: &Path, path: &Path, bytes: &[u8]) -> Result<bool, BlobError> {
    if path.exists() {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(root);
    if !root.is_dir() {
        std::fs::create_dir_all(root).map_err(io(root))?;
    }
    create_dirs(root, dir)?;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::now_v7()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    sync_dir(dir)?;
    Ok(true)
}

/// File system calls block: off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| BlobError::Task(e.to_string()))?
}

#[async_trait::async_trait]
impl Blobs for LocalBlobs {
    async fn put_once(&self, key: &str, bytes: Vec<u8>) -> Result<bool, BlobError> {
        let (root, path) = (self.root.clone(), self.path(key)?);
        blocking(move || put_blocking(&root, &path, &bytes)).await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        let path = self.path(key)?;
        blocking(move || match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        blocking(move || {
            let mut keys = Vec::new();
            let mut dirs = vec![root.clone()];
            while let Some(dir) = dirs.pop() {
                let entries = match std::fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&dir)(e)),
                };
                for entry in entries {
                    let path = entry.map_err(io(&dir))?.path();
                    if path.is_dir() {
                        dirs.push(path);
                    } else if let Ok(rel) = path.strip_prefix(&root) {
                        let key = rel.to_string_lossy().replace('\\', "/");
                        if key.starts_with(&prefix) && !key.rsplit('/').next().unwrap_or("").starts_with(".tmp") {
                            keys.push(key);
                        }
                    }
                }
            }
            keys.sort();
            Ok(keys)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        let path = self.path(key)?;
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_written_once_read_back_listed_and_never_escapes_the_root() {
        let dir = tempfile::TempDir::new().unwrap();
        let blobs = LocalBlobs::new(dir.path());
        assert!(blobs.put_once("phi/acme/s1/i1/abc.dcm", b"one".to_vec()).await.unwrap());
        assert!(!blobs.put_once("phi/acme/s1/i1/abc.dcm", b"other".to_vec()).await.unwrap(), "no overwrite");
        assert_eq!(blobs.get("phi/acme/s1/i1/abc.dcm").await.unwrap().unwrap(), b"one");
        assert_eq!(blobs.get("phi/acme/s1/i1/none.dcm").await.unwrap(), None);
        blobs.put_once("phi/acme/s2/i9/def.dcm", b"two".to_vec()).await.unwrap();
        assert_eq!(blobs.list("phi/acme/").await.unwrap(), ["phi/acme/s1/i1/abc.dcm", "phi/acme/s2/i9/def.dcm"]);
        for bad in ["../x", "/etc/passwd", "a//b", "a/./b", "", "a/.tmp-1"] {
            assert!(matches!(blobs.put_once(bad, vec![]).await, Err(BlobError::BadKey { .. })), "{bad}");
        }
        blobs.delete("phi/acme/s2/i9/def.dcm").await.unwrap();
        assert_eq!(blobs.list("phi/").await.unwrap(), ["phi/acme/s1/i1/abc.dcm"]);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("phi/acme/s1/i1")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }
}
