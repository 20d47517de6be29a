//! Object stores for the PHI path. Keys are made of opaque ids and a
//! content hash, so a key names one content: writing a key again is a
//! no-op, never an overwrite.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("object key {key:?} is not a relative path of plain segments")]
    BadKey { key: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("object store task: {0}")]
    Task(String),
    #[error("object store {operation} {key:?}: {reason}")]
    Remote { operation: &'static str, key: String, reason: String },
}

/// Keys are relative paths of plain segments: nothing can name a place
/// outside the store, and `.tmp` names are the local store's own.
fn check_key(key: &str) -> Result<(), BlobError> {
    let plain = !key.is_empty()
        && key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\\') && !s.starts_with(".tmp"));
    if plain { Ok(()) } else { Err(BlobError::BadKey { key: key.to_owned() }) }
}

/// The SHA-256 of `bytes`, in lower-case hex: a content-addressed object's
/// version.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes))
}

/// Where a content-addressed put left its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentPut {
    /// `<prefix>.<sha256><suffix>`.
    pub key: String,
    pub sha256: String,
    /// True when this call created the key.
    pub created: bool,
}

#[async_trait::async_trait]
pub trait Blobs: Send + Sync {
    /// Stores `bytes` under `key` durably unless the key exists (same key,
    /// same content). True when this call created it.
    async fn put_once(&self, key: &str, bytes: Vec<u8>) -> Result<bool, BlobError>;
    /// Stores `bytes` under `<prefix>.<their SHA-256 in hex><suffix>` as
    /// [`Blobs::put_once`] does. The key names the content, so a store may
    /// hash the bytes while they are on their way to its disk.
    async fn put_content(&self, prefix: &str, suffix: &str, bytes: Vec<u8>) -> Result<ContentPut, BlobError> {
        let sha256 = sha256_hex(&bytes);
        let key = format!("{prefix}.{sha256}{suffix}");
        let created = self.put_once(&key, bytes).await?;
        Ok(ContentPut { key, sha256, created })
    }
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError>;
    /// Every key under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError>;
    /// At most `limit` keys under `prefix` after `after` (exclusive), in
    /// order: a listing of any size, one page in memory at a time.
    async fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, BlobError>;
    async fn delete(&self, key: &str) -> Result<(), BlobError>;
    /// When the object at `key` was written, as the store says (a file's
    /// modification time, S3's Last-Modified); `None` when there is none.
    async fn modified(&self, key: &str) -> Result<Option<meridian_events::UnixMicros>, BlobError>;
}

/// Files under a root directory. A put writes a temporary file in the
/// target directory, fsyncs it, links it into place (a name is created once, never replaced) and fsyncs the
/// directory (and any directory it had to create), so an acknowledged
/// object survives a power cut; `object_store`'s `LocalFileSystem` does
/// not sync, which is why this is not it.
pub struct LocalBlobs {
    root: PathBuf,
    dir_syncs: Arc<DirSyncs>,
}

impl LocalBlobs {
    pub fn new(root: impl Into<PathBuf>) -> LocalBlobs {
        LocalBlobs { root: root.into(), dir_syncs: Arc::default() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, BlobError> {
        check_key(key)?;
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

/// Directory syncs shared by objects linked into one directory at about
/// the same time (the instances of one series arriving over several
/// associations): a sync that starts after an object's link makes that
/// link durable, so it covers every object linked before it started.
/// A put returns only once such a sync has finished; concurrent puts into
/// one directory share it instead of each syncing the directory.
#[derive(Default)]
struct DirSyncs {
    dirs: std::sync::Mutex<std::collections::HashMap<PathBuf, DirSync>>,
    synced: std::sync::Condvar,
}

#[derive(Default)]
struct DirSync {
    /// Links into the directory so far, and how many a finished sync covers.
    linked: u64,
    covered: u64,
    syncing: bool,
    waiting: usize,
}

impl DirSyncs {
    /// Called after a link into `dir`: returns once a sync of `dir` that
    /// started after that link has finished (running `sync` itself, or
    /// waiting for the one in flight, then the next).
    fn after_link(&self, dir: &Path, sync: impl Fn(&Path) -> Result<(), BlobError>) -> Result<(), BlobError> {
        let mut dirs = self.dirs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mine = {
            let d = dirs.entry(dir.to_path_buf()).or_default();
            d.linked += 1;
            d.linked
        };
        loop {
            // The entry stays while anyone is in this loop (see `forget`).
            let Some(d) = dirs.get_mut(dir) else {
                drop(dirs);
                return sync(dir);
            };
            if d.covered >= mine {
                Self::forget(&mut dirs, dir);
                return Ok(());
            }
            if !d.syncing {
                d.syncing = true;
                let upto = d.linked;
                drop(dirs);
                let result = sync(dir);
                dirs = self.dirs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if let Some(d) = dirs.get_mut(dir) {
                    d.syncing = false;
                    if result.is_ok() {
                        d.covered = d.covered.max(upto);
                    }
                }
                // Waiters covered return; the others (or all, after an
                // error) start the next sync.
                self.synced.notify_all();
                Self::forget(&mut dirs, dir);
                return result;
            }
            d.waiting += 1;
            dirs = self.synced.wait(dirs).unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(d) = dirs.get_mut(dir) {
                d.waiting -= 1;
            }
        }
    }

    /// Drops a directory's entry once no one needs it: the map holds the
    /// directories being written now, not every series ever written.
    fn forget(dirs: &mut std::collections::HashMap<PathBuf, DirSync>, dir: &Path) {
        if dirs.get(dir).is_some_and(|d| !d.syncing && d.waiting == 0 && d.covered >= d.linked) {
            dirs.remove(dir);
        }
    }
}

fn put_blocking(root: &Path, path: &Path, bytes: &[u8], dir_syncs: &DirSyncs) -> Result<bool, BlobError> {
    let dir = path.parent().unwrap_or(root);
    if path.exists() {
        return exists(dir, dir_syncs);
    }
    Staged::write(root, dir, bytes)?.link(path, dir, dir_syncs)
}

/// The answer for a key that is already there. Its first put may have
/// failed after the link, before the directory was synced: this answer
/// must not come before that sync.
fn exists(dir: &Path, dir_syncs: &DirSyncs) -> Result<bool, BlobError> {
    dir_syncs.after_link(dir, sync_dir)?;
    Ok(false)
}

/// [`put_blocking`] for a content-addressed key: the bytes are staged
/// first and hashed while the disk writes them, then linked under the
/// name the hash gives.
fn put_content_blocking(
    root: &Path,
    prefix: &str,
    suffix: &str,
    bytes: &[u8],
    dir_syncs: &DirSyncs,
) -> Result<ContentPut, BlobError> {
    let placed = root.join(prefix);
    let dir = placed.parent().unwrap_or(root);
    let staged = Staged::write(root, dir, bytes)?;
    let sha256 = sha256_hex(bytes);
    let key = format!("{prefix}.{sha256}{suffix}");
    check_key(&key)?;
    let path = root.join(&key);
    let created = if path.exists() {
        drop(staged);
        exists(dir, dir_syncs)?
    } else {
        staged.link(&path, dir, dir_syncs)?
    };
    Ok(ContentPut { key, sha256, created })
}

/// An object's bytes in a temporary file of its directory, on their way to
/// the disk; the file is removed when this is dropped.
struct Staged {
    tmp: PathBuf,
    file: std::fs::File,
}

impl Staged {
    fn write(root: &Path, dir: &Path, bytes: &[u8]) -> Result<Staged, BlobError> {
        if !root.is_dir() {
            std::fs::create_dir_all(root).map_err(io(root))?;
        }
        create_dirs(root, dir)?;
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::now_v7()));
        let file = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io(&tmp))?;
        let mut staged = Staged { tmp, file };
        staged.file.write_all(bytes).map_err(io(&staged.tmp))?;
        start_writeback(&staged.file);
        Ok(staged)
    }

    /// Makes the bytes durable, links them under `path` if that name is
    /// free and syncs `dir`. True when this created the name.
    fn link(self, path: &Path, dir: &Path, dir_syncs: &DirSyncs) -> Result<bool, BlobError> {
        self.file.sync_all().map_err(io(&self.tmp))?;
        // A hard link creates the name only if it is free (a link would
        // replace it): of writers racing on one key exactly one creates it,
        // which the key store's pointers rely on.
        let linked = std::fs::hard_link(&self.tmp, path);
        drop(self);
        let created = match linked {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) => return Err(io(path)(e)),
        };
        dir_syncs.after_link(dir, sync_dir)?;
        Ok(created)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Starts writing the file's dirty pages to the disk without waiting for
/// them, so that what the caller does next (hashing the same bytes)
/// overlaps the device's work; the fsync after it waits only for the rest.
/// DONTNEED starts that writeback and drops only pages already clean; it
/// is advice, so a failure costs speed, never data.
#[cfg(target_os = "linux")]
fn start_writeback(file: &std::fs::File) {
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_: &std::fs::File) {}

/// Keys under `dir` (relative to `root`) that are under `prefix` and after
/// `after`, in key order, until `out` holds `limit`. Entries sort as their
/// keys do (a directory as its name and a slash), and a subtree wholly at
/// or before `after`, or beside `prefix`, is not entered. Returns whether
/// the page is full.
fn walk_page(
    root: &Path,
    dir: &str,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
    out: &mut Vec<String>,
) -> Result<bool, BlobError> {
    let path = if dir.is_empty() { root.to_path_buf() } else { root.join(dir) };
    let entries = match std::fs::read_dir(&path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io(&path)(e)),
    };
    let mut keyed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(&path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let key = if dir.is_empty() { name.clone() } else { format!("{dir}/{name}") };
        if entry.file_type().map_err(io(&path))?.is_dir() {
            keyed.push((format!("{key}/"), true));
        } else if !name.starts_with(".tmp") {
            keyed.push((key, false));
        }
    }
    keyed.sort();
    for (key, is_dir) in keyed {
        if is_dir {
            let beside = !(key.starts_with(prefix) || prefix.starts_with(key.as_str()));
            let passed = after.is_some_and(|a| key.as_str() < a && !a.starts_with(key.as_str()));
            if !beside && !passed && walk_page(root, key.trim_end_matches('/'), prefix, after, limit, out)? {
                return Ok(true);
            }
        } else if key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a) {
            out.push(key);
            if out.len() >= limit {
                return Ok(true);
            }
        }
    }
    Ok(false)
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
        let (root, path, dir_syncs) = (self.root.clone(), self.path(key)?, self.dir_syncs.clone());
        blocking(move || put_blocking(&root, &path, &bytes, &dir_syncs)).await
    }

    async fn put_content(&self, prefix: &str, suffix: &str, bytes: Vec<u8>) -> Result<ContentPut, BlobError> {
        // The name's shape is checked before anything is written.
        check_key(&format!("{prefix}.0{suffix}"))?;
        let (root, dir_syncs) = (self.root.clone(), self.dir_syncs.clone());
        let (prefix, suffix) = (prefix.to_owned(), suffix.to_owned());
        blocking(move || put_content_blocking(&root, &prefix, &suffix, &bytes, &dir_syncs)).await
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

    async fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, BlobError> {
        let (root, prefix, after) = (self.root.clone(), prefix.to_owned(), after.map(str::to_owned));
        blocking(move || {
            let mut out = Vec::new();
            if limit > 0 {
                walk_page(&root, "", &prefix, after.as_deref(), limit, &mut out)?;
            }
            Ok(out)
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

    async fn modified(&self, key: &str) -> Result<Option<meridian_events::UnixMicros>, BlobError> {
        let path = self.path(key)?;
        blocking(move || match std::fs::metadata(&path).and_then(|m| m.modified()) {
            Ok(at) => {
                let since = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                Ok(Some(meridian_events::UnixMicros(i64::try_from(since.as_micros()).unwrap_or(i64::MAX))))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        })
        .await
    }
}

/// Where an S3-API bucket is and how to sign for it.
#[derive(Clone, Debug)]
pub struct S3Settings {
    pub bucket: String,
    /// The service endpoint (MinIO, Ceph, moto); AWS's own when `None`.
    pub endpoint: Option<String>,
    pub region: String,
    pub allow_http: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// An S3-API bucket through `object_store`. A PUT is durable when S3
/// answers it (that is S3's contract), so the PHI path's order holds as it
/// does for local files. A put is conditional (If-None-Match), so a key is
/// written once even by racing writers: PHI keys are content-addressed,
/// but the key store's pointers are not.
pub struct S3Blobs {
    store: object_store::aws::AmazonS3,
    bucket: String,
}

impl S3Blobs {
    pub fn new(settings: &S3Settings) -> Result<S3Blobs, BlobError> {
        let mut builder = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.access_key_id)
            .with_secret_access_key(&settings.secret_access_key)
            .with_allow_http(settings.allow_http)
            // S3's own conditional writes (If-None-Match), for put_once.
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
        if let Some(endpoint) = &settings.endpoint {
            // Path-style addressing: custom endpoints rarely resolve
            // bucket sub-domains.
            builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| BlobError::Remote {
            operation: "configure",
            key: settings.bucket.clone(),
            reason: e.to_string(),
        })?;
        Ok(S3Blobs { store, bucket: settings.bucket.clone() })
    }

    fn path(key: &str) -> Result<object_store::path::Path, BlobError> {
        check_key(key)?;
        object_store::path::Path::parse(key).map_err(|_| BlobError::BadKey { key: key.to_owned() })
    }

    fn remote(&self, operation: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> BlobError + use<> {
        let key = format!("s3://{}/{key}", self.bucket);
        move |e| BlobError::Remote { operation, key, reason: e.to_string() }
    }
}

#[async_trait::async_trait]
impl Blobs for S3Blobs {
    async fn put_once(&self, key: &str, bytes: Vec<u8>) -> Result<bool, BlobError> {
        use object_store::ObjectStore;
        let path = S3Blobs::path(key)?;
        match self.store.head(&path).await {
            Ok(_) => return Ok(false),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.remote("head", key)(e)),
        }
        // A conditional PUT (If-None-Match: *): of writers racing on one
        // key exactly one creates it.
        let create = object_store::PutOptions { mode: object_store::PutMode::Create, ..Default::default() };
        match self.store.put_opts(&path, bytes.into(), create).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.remote("put", key)(e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        use object_store::ObjectStore;
        let path = S3Blobs::path(key)?;
        match self.store.get(&path).await {
            Ok(found) => Ok(Some(found.bytes().await.map_err(self.remote("get", key))?.to_vec())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.remote("get", key)(e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        use futures_util::TryStreamExt;
        use object_store::ObjectStore;
        // object_store lists whole segments: list the prefix's directory
        // and keep the keys that start with it.
        let dir = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let under = (!dir.is_empty()).then(|| object_store::path::Path::from(dir));
        let found: Vec<object_store::ObjectMeta> =
            self.store.list(under.as_ref()).try_collect().await.map_err(self.remote("list", prefix))?;
        let mut keys: Vec<String> =
            found.into_iter().map(|m| m.location.to_string()).filter(|k| k.starts_with(prefix)).collect();
        keys.sort();
        Ok(keys)
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, BlobError> {
        use futures_util::TryStreamExt;
        use object_store::ObjectStore;
        let dir = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let under = (!dir.is_empty()).then(|| object_store::path::Path::from(dir));
        // S3 lists in key order and starts after the offset itself.
        let mut listing = match after {
            Some(a) => self.store.list_with_offset(under.as_ref(), &object_store::path::Path::from(a)),
            None => self.store.list(under.as_ref()),
        };
        let mut out = Vec::new();
        while out.len() < limit {
            let Some(meta) = listing.try_next().await.map_err(self.remote("list", prefix))? else { break };
            let key = meta.location.to_string();
            if key.starts_with(prefix) && after.is_none_or(|a| key.as_str() > a) {
                out.push(key);
            }
        }
        out.sort();
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), BlobError> {
        use object_store::ObjectStore;
        let path = S3Blobs::path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.remote("delete", key)(e)),
        }
    }

    async fn modified(&self, key: &str) -> Result<Option<meridian_events::UnixMicros>, BlobError> {
        use object_store::ObjectStore;
        let path = S3Blobs::path(key)?;
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(meridian_events::UnixMicros(meta.last_modified.timestamp_micros()))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.remote("head", key)(e)),
        }
    }
}

/// The object store a region's `[objects]` names: files under `folder`,
/// or an S3-API bucket whose credentials come from the environment
/// variables the configuration names (read through `env`, the process's
/// edge). An unset variable is an error naming it.
pub fn open(
    config: &meridian_config::ObjectStoreConfig,
    folder: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Arc<dyn Blobs>, String> {
    use meridian_config::ObjectStoreConfig;
    match config {
        ObjectStoreConfig::Local => Ok(Arc::new(LocalBlobs::new(folder))),
        ObjectStoreConfig::S3 {
            bucket,
            endpoint,
            region: signing,
            allow_http,
            access_key_id_env,
            secret_access_key_env,
        } => {
            let var = |name: &str| {
                env(name)
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| format!("[objects] S3 bucket {bucket}: environment variable {name} is not set"))
            };
            let settings = S3Settings {
                bucket: bucket.clone(),
                endpoint: endpoint.clone(),
                region: signing.clone(),
                allow_http: *allow_http,
                access_key_id: var(access_key_id_env)?,
                secret_access_key: var(secret_access_key_env)?,
            };
            let store = S3Blobs::new(&settings).map_err(|e| e.to_string())?;
            Ok(Arc::new(store))
        }
    }
}

/// What every object store must do, run against each (the local store in
/// unit tests, S3 against moto in the integration tests). `blobs` must be
/// empty.
pub async fn contract(blobs: &dyn Blobs) {
    assert_eq!(blobs.modified("phi/acme/s1/i1/abc.dcm").await.unwrap(), None, "nothing there yet");
    assert!(blobs.put_once("phi/acme/s1/i1/abc.dcm", b"one".to_vec()).await.unwrap());
    // Written within the last day, by the store's clock (the test's host and
    // an S3 server may differ by seconds, never by a day).
    let written = blobs.modified("phi/acme/s1/i1/abc.dcm").await.unwrap().expect("a written object has a time");
    #[allow(clippy::disallowed_methods)] // comparing with the store's clock
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    assert!((now - written.0).abs() < 86_400_000_000, "written {written:?}, now {now}");
    assert!(!blobs.put_once("phi/acme/s1/i1/abc.dcm", b"other".to_vec()).await.unwrap(), "no overwrite");
    assert_eq!(blobs.get("phi/acme/s1/i1/abc.dcm").await.unwrap().unwrap(), b"one");
    assert_eq!(blobs.get("phi/acme/s1/i1/none.dcm").await.unwrap(), None);
    blobs.put_once("phi/acme/s2/i9/def.dcm", b"two".to_vec()).await.unwrap();
    blobs.put_once("phi/acmeco/s3/i1/ghi.dcm", b"three".to_vec()).await.unwrap();
    assert_eq!(blobs.list("phi/acme/").await.unwrap(), ["phi/acme/s1/i1/abc.dcm", "phi/acme/s2/i9/def.dcm"]);
    assert_eq!(blobs.list("phi/acme").await.unwrap().len(), 3, "a prefix need not end at a segment");
    for bad in ["../x", "/etc/passwd", "a//b", "a/./b", "", "a/.tmp-1"] {
        assert!(matches!(blobs.put_once(bad, vec![]).await, Err(BlobError::BadKey { .. })), "{bad}");
    }
    // Pages of any size walk the same keys in the same order.
    blobs.put_once("phi/acme/s1-b/x.dcm", b"four".to_vec()).await.unwrap();
    blobs.put_once("phi/acme/s1/i2/jkl.dcm", b"five".to_vec()).await.unwrap();
    let all = blobs.list("phi/").await.unwrap();
    assert_eq!(all.len(), 5);
    for size in [1, 2, 3, 10] {
        let (mut paged, mut after) = (Vec::new(), None::<String>);
        loop {
            let page = blobs.list_page("phi/", after.as_deref(), size).await.unwrap();
            assert!(page.len() <= size);
            let Some(last) = page.last().cloned() else { break };
            paged.extend(page);
            after = Some(last);
        }
        assert_eq!(paged, all, "pages of {size}");
    }
    assert_eq!(
        blobs.list_page("phi/acme/", Some("phi/acme/s1/i2/jkl.dcm"), 10).await.unwrap(),
        ["phi/acme/s2/i9/def.dcm"]
    );
    // A content-addressed put names the bytes by their SHA-256, once.
    let content = blobs.put_content("content/acme/i1", ".dcm", b"seven".to_vec()).await.unwrap();
    let sha = sha256_hex(b"seven");
    assert_eq!(sha, "3ba8d02b16fd2a01c1a8ba1a1f036d7ce386ed953696fa57331c2ac48a80b255", "sha256sum's");
    assert_eq!(content, ContentPut { key: format!("content/acme/i1.{sha}.dcm"), sha256: sha.clone(), created: true });
    let again = blobs.put_content("content/acme/i1", ".dcm", b"seven".to_vec()).await.unwrap();
    assert_eq!((again.key.as_str(), again.created), (content.key.as_str(), false), "the same bytes again");
    assert_eq!(blobs.get(&content.key).await.unwrap().unwrap(), b"seven");
    let other = blobs.put_content("content/acme/i1", ".dcm", b"eight".to_vec()).await.unwrap();
    assert!(other.created && other.key != content.key, "other bytes are another version beside it");
    for bad in ["../x", "content/../x", "content/.tmp-1"] {
        let refused = blobs.put_content(bad, ".dcm", b"x".to_vec()).await;
        assert!(matches!(refused, Err(BlobError::BadKey { .. })), "{bad}");
    }
    blobs.delete("phi/acme/s1-b/x.dcm").await.unwrap();
    blobs.delete("phi/acme/s1/i2/jkl.dcm").await.unwrap();
    blobs.delete("phi/acme/s2/i9/def.dcm").await.unwrap();
    blobs.delete("phi/acme/s2/i9/def.dcm").await.unwrap();
    assert_eq!(blobs.list("phi/").await.unwrap(), ["phi/acme/s1/i1/abc.dcm", "phi/acmeco/s3/i1/ghi.dcm"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_written_once_read_back_listed_and_never_escapes_the_root() {
        let dir = tempfile::TempDir::new().unwrap();
        let blobs = LocalBlobs::new(dir.path());
        contract(&blobs).await;
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("phi/acme/s1/i1")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        let mut content: Vec<_> = std::fs::read_dir(dir.path().join("content/acme"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        content.sort();
        assert_eq!(content.len(), 2, "two versions and no temporary file, the same bytes again included: {content:?}");
        assert!(content.iter().all(|name| name.starts_with("i1.") && name.ends_with(".dcm")), "{content:?}");
    }

    /// Many puts into one directory at once: each returns only after a
    /// directory sync that started after its link has finished, and an
    /// error reaches the puts that sync was for (which may try again).
    #[test]
    fn a_shared_directory_sync_covers_every_link_that_came_before_it() {
        use std::sync::Mutex;
        use std::sync::atomic::{AtomicU64, Ordering};
        let syncs = Arc::new(DirSyncs::default());
        let clock = Arc::new(AtomicU64::new(0));
        // (started, finished) of each sync.
        let done: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let failures = Arc::new(AtomicU64::new(1));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (syncs, clock, done, failures) = (syncs.clone(), clock.clone(), done.clone(), failures.clone());
                std::thread::spawn(move || {
                    let linked = clock.fetch_add(1, Ordering::SeqCst);
                    let sync = |_: &Path| {
                        let started = clock.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        if failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                            return Err(BlobError::Task("the disk said no".into()));
                        }
                        done.lock().unwrap().push((started, clock.fetch_add(1, Ordering::SeqCst)));
                        Ok(())
                    };
                    let mut result = syncs.after_link(Path::new("/series"), sync);
                    if result.is_err() {
                        // The caller retries its put, as ingest's sender would.
                        result = syncs.after_link(Path::new("/series"), sync);
                    }
                    (linked, result.map(|()| clock.fetch_add(1, Ordering::SeqCst)))
                })
            })
            .collect();
        let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let done = done.lock().unwrap().clone();
        for (linked, returned) in outcomes {
            let returned = returned.unwrap();
            assert!(
                done.iter().any(|(started, finished)| *started > linked && *finished < returned),
                "a put linked at {linked} returned at {returned} without a sync after it: {done:?}"
            );
        }
        assert!(done.len() <= 16, "never more syncs than links");
        assert!(syncs.dirs.lock().unwrap().is_empty(), "nothing kept once every put returned");
    }
}
