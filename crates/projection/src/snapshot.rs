//! Atomic snapshot files: write to a temporary file, fsync it, rename it over
//! the old one, fsync the directory. A crash leaves the old snapshot or the
//! new one, never a mix, and state and positions are in the same file.
//!
//! A snapshot that cannot be read (truncated, corrupt, or written by a build
//! whose state no longer decodes) is never a reason not to start and never
//! a silent empty state: it is logged with its path, renamed aside
//! (`NAME.snapshot.json.unreadable-N`, kept for inspection) and the
//! projection is rebuilt from the log.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Projection, Snapshot};

/// Snapshots of projections, one file each, in a directory.
#[derive(Clone, Debug)]
pub struct FileSnapshots {
    /// `None`: snapshots are neither read nor written (every open is a full
    /// replay), for tests and rebuilds that must not touch the files.
    dir: Option<PathBuf>,
}

/// What [`FileSnapshots::load_or_set_aside`] found.
#[derive(Debug)]
pub enum Loaded<P: Projection> {
    Found(Snapshot<P>),
    Missing,
    /// The file did not read; it was moved to `set_aside`.
    SetAside {
        set_aside: PathBuf,
        reason: String,
    },
}

impl FileSnapshots {
    pub fn new(dir: impl Into<PathBuf>) -> FileSnapshots {
        FileSnapshots { dir: Some(dir.into()) }
    }

    /// No files: loads find nothing, saves write nothing.
    pub fn none() -> FileSnapshots {
        FileSnapshots { dir: None }
    }

    /// The file of projection `name`, if snapshots are kept.
    pub fn path_of(&self, name: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{name}.snapshot.json")))
    }

    pub fn save<P: Projection>(&self, snapshot: &Snapshot<P>) -> Result<(), Error> {
        let bytes = serde_json::to_vec(snapshot).map_err(|e| Error::Snapshot {
            projection: P::NAME,
            operation: "save",
            reason: e.to_string(),
        })?;
        self.write::<P>(&bytes)
    }

    /// Writes encoded snapshot bytes ([`crate::Projector::encode_snapshot`])
    /// atomically. Returns nothing until the file and its directory are synced.
    pub fn write<P: Projection>(&self, bytes: &[u8]) -> Result<(), Error> {
        let err = |reason: String| Error::Snapshot { projection: P::NAME, operation: "save", reason };
        let Some(dir) = &self.dir else { return Ok(()) };
        fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
        let path = dir.join(format!("{}.snapshot.json", P::NAME));
        // A temporary name of its own, so two writers (a tick and the
        // shutdown) never write into one file.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("json.tmp-{}-{n}", std::process::id()));
        let mut file = File::create(&tmp).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
        file.write_all(bytes).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
        file.sync_all().map_err(|e| err(format!("{}: {e}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        sync_dir(dir).map_err(|e| err(format!("{}: {e}", dir.display())))
    }

    /// Reads the snapshot; an unreadable file is an error (see
    /// [`load_or_set_aside`](Self::load_or_set_aside) for what a start does).
    pub fn load<P: Projection>(&self) -> Result<Option<Snapshot<P>>, Error> {
        let Some(path) = self.path_of(P::NAME) else { return Ok(None) };
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::Snapshot {
                    projection: P::NAME,
                    operation: "load",
                    reason: format!("{}: {e}", path.display()),
                });
            }
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| Error::Snapshot {
            projection: P::NAME,
            operation: "load",
            reason: format!("{}: {e}", path.display()),
        })
    }

    /// Reads the snapshot, moving an unreadable one aside. Only an I/O
    /// error on the directory itself (not the file's content) is an error.
    pub fn load_or_set_aside<P: Projection>(&self) -> Result<Loaded<P>, Error> {
        let Some(path) = self.path_of(P::NAME) else { return Ok(Loaded::Missing) };
        let reason = match self.load::<P>() {
            Ok(Some(s)) if s.projection == P::NAME => return Ok(Loaded::Found(s)),
            Ok(Some(s)) => format!("it is a snapshot of projection {:?}", s.projection),
            Ok(None) => return Ok(Loaded::Missing),
            Err(e) => e.to_string(),
        };
        let set_aside = (0u32..)
            .map(|n| path.with_extension(format!("json.unreadable-{n}")))
            .find(|p| !p.exists())
            .unwrap_or_else(|| path.with_extension("json.unreadable"));
        fs::rename(&path, &set_aside).map_err(|e| Error::Snapshot {
            projection: P::NAME,
            operation: "set aside",
            reason: format!("{}: {e}", path.display()),
        })?;
        tracing::warn!(
            projection = P::NAME,
            path = %path.display(),
            set_aside = %set_aside.display(),
            %reason,
            "snapshot unreadable: set aside, rebuilding from the log"
        );
        Ok(Loaded::SetAside { set_aside, reason })
    }

    /// Throws the snapshot away, so the next start replays from the log.
    pub fn remove<P: Projection>(&self) -> Result<(), Error> {
        let Some(path) = self.path_of(P::NAME) else { return Ok(()) };
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Snapshot { projection: P::NAME, operation: "remove", reason: e.to_string() }),
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
