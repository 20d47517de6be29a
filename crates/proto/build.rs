//! Compiles every `.proto` under `proto/` with protox (no system `protoc`),
//! generates prost/tonic code and writes the file descriptor set that gRPC
//! reflection serves.

use std::path::{Path, PathBuf};

fn proto_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            // `google/` is vendored for buf only; protox ships the well-known types.
            if path.file_name().is_some_and(|n| n == "google") {
                continue;
            }
            proto_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // At run time, not `env!`: a build script binary may be reused from a
    // checkout at another path that shares the target directory.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let mut files = Vec::new();
    proto_files(&root, &mut files)?;
    files.sort();
    println!("cargo:rerun-if-changed={}", root.display());
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("meridian_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    let mut config = tonic_prost_build::Config::new();
    // `prost::Name` lets the event catalogue check payload names at compile time.
    config.enable_type_names();
    tonic_prost_build::configure().compile_fds_with_config(fds, config)?;
    Ok(())
}
