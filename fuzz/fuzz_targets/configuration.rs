//! `Platform::load` on the dev example's configuration with one of its
//! files (chosen by the first byte) replaced by the rest of the input:
//! whatever the file says, the load answers with the configuration or the
//! problems by file and field, never a panic.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use meridian_config::Platform;

struct Example {
    dir: PathBuf,
    files: Vec<(PathBuf, Vec<u8>)>,
}

fn copy(from: &Path, to: &Path, files: &mut Vec<(PathBuf, Vec<u8>)>) {
    std::fs::create_dir_all(to).expect("a scratch directory");
    let mut entries: Vec<_> = std::fs::read_dir(from).expect("the dev example").flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy(&entry.path(), &target, files);
        } else {
            let bytes = std::fs::read(entry.path()).expect("an example file");
            std::fs::write(&target, &bytes).expect("a scratch file");
            if target.extension().is_some_and(|e| e == "toml") {
                files.push((target, bytes));
            }
        }
    }
}

fn example() -> &'static Example {
    static EXAMPLE: OnceLock<Example> = OnceLock::new();
    EXAMPLE.get_or_init(|| {
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev");
        let dir = std::env::temp_dir().join(format!("meridian-fuzz-configuration-{}", std::process::id()));
        let mut files = Vec::new();
        copy(&from, &dir, &mut files);
        Example { dir, files }
    })
}

fuzz_target!(|input: &[u8]| {
    let Some((&which, text)) = input.split_first() else { return };
    let example = example();
    let (path, original) = &example.files[usize::from(which) % example.files.len()];
    std::fs::write(path, text).expect("a scratch file");
    let loaded = Platform::load(&example.dir);
    std::fs::write(path, original).expect("a scratch file");
    if let Err(problems) = loaded {
        assert!(!problems.0.is_empty(), "a refusal names at least one problem");
    }
});
