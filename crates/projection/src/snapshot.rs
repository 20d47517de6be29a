//! Atomic snapshot files: write to a temporary file, fsync it, rename it over
//! the old one, fsync the directory. A crash leaves the old snapshot or the
//! new one, never a mix, and state and positions are in the same file.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Projection, Snapshot};

/// Snapshots of projections, one file each, in a directory.
#[derive(Clone, Debug)]
pub struct FileSnapshots {
    dir: PathBuf,
}

impl FileSnapshots {
    pub fn new(dir: impl Into<PathBuf>) -> FileSnapshots {
        FileSnapshots { dir: dir.into() }
    }

    fn path<P: Projection>(&self) -> PathBuf {
        self.dir.join(format!("{}.snapshot.json", P::NAME))
    }

    pub fn save<P: Projection>(&self, snapshot: &Snapshot<P>) -> Result<(), Error> {
        let err = |reason: String| Error::Snapshot { projection: P::NAME, operation: "save", reason };
        fs::create_dir_all(&self.dir).map_err(|e| err(format!("{}: {e}", self.dir.display())))?;
        let bytes = serde_json::to_vec(snapshot).map_err(|e| err(e.to_string()))?;
        let path = self.path::<P>();
        let tmp = path.with_extension("json.tmp");
        let mut file = File::create(&tmp).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
        file.write_all(&bytes).map_err(|e| err(format!("{}: {e}", tmp.display())))?;
        file.sync_all().map_err(|e| err(format!("{}: {e}", tmp.display())))?;
        fs::rename(&tmp, &path).map_err(|e| err(format!("{}: {e}", path.display())))?;
        sync_dir(&self.dir).map_err(|e| err(format!("{}: {e}", self.dir.display())))
    }

    pub fn load<P: Projection>(&self) -> Result<Option<Snapshot<P>>, Error> {
        let path = self.path::<P>();
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

    /// Throws the snapshot away, so the next start replays from the log.
    pub fn remove<P: Projection>(&self) -> Result<(), Error> {
        match fs::remove_file(self.path::<P>()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Snapshot { projection: P::NAME, operation: "remove", reason: e.to_string() }),
        }
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
