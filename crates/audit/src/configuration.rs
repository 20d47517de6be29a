//! ConfigurationLoaded: which configuration a process started with, by
//! the digest of its directory, on the region's audit topic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use meridian_events::{Envelope, UnixMicros};
use meridian_log::{EventLog, Outgoing};
use meridian_proto::events::v1 as pb;
use sha2::{Digest, Sha256};

use crate::AuditError;

/// Aggregate type: one aggregate per region's configuration history.
pub const CONFIGURATION: &str = "audit.configuration";

/// The digest of every file under `dir` (relative path and bytes, in path
/// order) and how many files there are.
pub fn digest(dir: &Path) -> std::io::Result<(String, u32)> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    let mut hash = Sha256::new();
    for file in &files {
        let relative = file.strip_prefix(dir).unwrap_or(file).to_string_lossy().replace('\\', "/");
        let bytes = std::fs::read(file)?;
        // Lengths first, so no two directories hash alike by shifting bytes
        // between a name and a content.
        hash.update((relative.len() as u64).to_le_bytes());
        hash.update(relative.as_bytes());
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(&bytes);
    }
    Ok((hex::encode(hash.finalize()), files.len() as u32))
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Appends ConfigurationLoaded for `process` of `region`, which loaded
/// the configuration in `dir`; returns the digest.
pub async fn record(
    log: &Arc<dyn EventLog>,
    region: &str,
    dir: &Path,
    process: &str,
    at: UnixMicros,
) -> Result<String, AuditError> {
    let (digest, files) = digest(dir).map_err(|e| AuditError::Append(format!("{}: {e}", dir.display())))?;
    let topic = crate::audit_topic(region)?;
    let meta = crate::record_meta(CONFIGURATION, "platform".into(), region, at);
    let payload = pb::ConfigurationLoaded {
        digest: digest.clone(),
        files,
        process: process.to_owned(),
        region: region.to_owned(),
    };
    let envelope = Envelope::plain(meta, &payload).map_err(|e| AuditError::Append(e.to_string()))?;
    let outgoing = Outgoing::new(topic, &envelope).map_err(|e| AuditError::Append(e.to_string()))?;
    log.append(vec![outgoing]).await.map_err(|e| AuditError::Append(e.to_string()))?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_changes_with_any_files_bytes_or_name_and_not_with_nothing() {
        let dir = tempfile::TempDir::new().unwrap();
        std::fs::create_dir(dir.path().join("tenants")).unwrap();
        std::fs::write(dir.path().join("platform.toml"), "a = 1\n").unwrap();
        std::fs::write(dir.path().join("tenants/acme.toml"), "b = 2\n").unwrap();
        let (first, files) = digest(dir.path()).unwrap();
        assert_eq!(files, 2);
        assert_eq!(digest(dir.path()).unwrap().0, first, "the same files, the same digest");
        std::fs::write(dir.path().join("tenants/acme.toml"), "b = 3\n").unwrap();
        let changed = digest(dir.path()).unwrap().0;
        assert_ne!(changed, first);
        std::fs::rename(dir.path().join("tenants/acme.toml"), dir.path().join("tenants/acme2.toml")).unwrap();
        assert_ne!(digest(dir.path()).unwrap().0, changed, "a renamed file changes it");
    }
}
