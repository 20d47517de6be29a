//! A victim for billing's crash test: billing over a log whose routing
//! topic holds (or is being fed) the signed reads, taking them in steps and
//! snapshotting often, until every read is charged; then it prints `done`
//! and exits. The test SIGKILLs it at random and at failpoints
//! (`MERIDIAN_FAILPOINTS`), and starts it again.
//!
//! Usage: billing-writer LOG SNAPSHOTS READS CONFIG, where LOG is an
//! embedded log's file or `kafka:BOOTSTRAP` (one transactional id for
//! every start, so a restart fences the killed one's open transaction).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use meridian_billing::app::Billing;
use meridian_config::Platform;
use meridian_events::KeyStore;
use meridian_events::seal::MemoryKeyStore;
use meridian_log::EventLog;
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::failpoint::FailPoints;
use meridian_log::kafka::{KafkaConfig, KafkaLog};
use meridian_projection::run::Snapshotter;
use meridian_projection::snapshot::FileSnapshots;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, log, snapshots, reads, config] = args.as_slice() else {
        bail!("usage: billing-writer LOG SNAPSHOTS READS CONFIG");
    };
    let reads: u64 = reads.parse().context("READS")?;
    let platform = Platform::load(Path::new(config)).map_err(|p| anyhow::anyhow!("{p}"))?;
    let failpoints =
        FailPoints::from_spec(&std::env::var("MERIDIAN_FAILPOINTS").unwrap_or_default()).map_err(anyhow::Error::msg)?;
    let (log, keys): (Arc<dyn EventLog>, Arc<dyn KeyStore>) = match log.strip_prefix("kafka:") {
        Some(bootstrap) => {
            let mut config = KafkaConfig::new(bootstrap, "meridian-us-east-billing-writer");
            config.failpoints = failpoints.clone();
            // Billing's topics are operational: nothing is sealed.
            (Arc::new(KafkaLog::connect(config).await?), Arc::new(MemoryKeyStore::default()))
        }
        None => {
            let log = Arc::new(EmbeddedLog::open(log.as_ref(), EmbeddedOptions { failpoints: failpoints.clone() })?);
            let keys = Arc::new(log.key_store());
            (log, keys)
        }
    };
    // A snapshot every few hundred inputs: kills land between snapshots
    // and committed steps, where recovery has work to do.
    let snapshots = Snapshotter::new(FileSnapshots::new(snapshots), 300, Duration::from_millis(50));
    let billing =
        Billing::open("us-east", &platform, log, keys, snapshots, failpoints, Duration::from_millis(50)).await?;
    println!("ready");
    loop {
        billing.pass(Duration::from_millis(20)).await?;
        billing.snapshot(false).await?;
        let charged = billing.totals("acme").await.values().map(|t| t.charged_reads).sum::<u64>();
        if charged >= reads {
            println!("done {charged} conflicts {}", billing.stats().await.conflicts);
            return Ok(());
        }
    }
}
