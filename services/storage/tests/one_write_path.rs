//! Every path that puts patient data into an object store goes through the
//! PHI write path: outside `phi.rs`, no product code (every crate's and
//! service's `src/`) calls an object store's `put_once` or `put_content`, but for the key
//! store, which puts wrapped data keys. DIMSE today,
//! STOW-RS and the gRPC upload later: a new caller fails this test.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn only_the_phi_write_path_puts_objects() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = Vec::new();
    for group in ["crates", "services"] {
        let Ok(members) = std::fs::read_dir(root.join(group)) else { continue };
        for member in members.flatten() {
            rust_files(&member.path().join("src"), &mut files);
        }
    }
    assert!(files.len() > 20, "the workspace sources were found ({} files)", files.len());
    let mut callers = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // The stores' own definitions and their contract suite are not callers.
        let product = text.split("#[cfg(test)]").next().unwrap_or("");
        let own = file.ends_with("crates/objects/src/blobs.rs");
        if (product.contains(".put_once(") || product.contains(".put_content(")) && !own {
            callers.push(file.strip_prefix(&root).unwrap_or(file).display().to_string());
        }
    }
    callers.sort();
    // The key store puts wrapped data keys, never patient data.
    assert_eq!(
        callers,
        ["crates/objects/src/keys.rs", "services/storage/src/phi.rs"],
        "objects are put only through PhiWriter::put (and data keys by the key store)"
    );
}
