//! A writer process for the local object store's durability test: puts N
//! objects into one series directory through `LocalBlobs` (the store
//! `meridian dev` uses) and reports each acknowledged key on stdout.
//!
//! Usage: blob-writer DIR N

use anyhow::{Context, bail};
use meridian_storage::blobs::{Blobs, LocalBlobs};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, n] = args.as_slice() else { bail!("usage: blob-writer DIR N") };
    let n: usize = n.parse().context("N")?;
    let blobs = LocalBlobs::new(dir);
    for i in 0..n {
        let key = format!("phi/acme/study/series/instance-{i}.{i:064}.dcm");
        blobs.put_once(&key, vec![i as u8; 4096]).await?;
        println!("ack {key}");
    }
    Ok(())
}
