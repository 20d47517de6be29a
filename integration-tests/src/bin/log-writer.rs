//! A writer process for durability tests: appends numbered batches to an
//! embedded log and reports each acknowledged batch on stdout
//! (`ack <batch>`), so the test knows exactly what was promised before it
//! kills the process. Failpoints come from `MERIDIAN_FAILPOINTS`.
//!
//! Usage: log-writer PATH BATCHES BATCH_SIZE CONCURRENCY [FIRST_BATCH]

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, bail};
use meridian_events::DataClass;
use meridian_integration_tests::durability::{TOPIC_PARTITIONS, batch_event};
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::failpoint::FailPoints;
use meridian_log::{EventLog, Outgoing, TopicName, TopicSpec};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (path, batches, size, concurrency, first) = match args.as_slice() {
        [_, path, b, s, c] => (path, b, s, c, "0"),
        [_, path, b, s, c, f] => (path, b, s, c, f.as_str()),
        _ => bail!("usage: log-writer PATH BATCHES BATCH_SIZE CONCURRENCY [FIRST_BATCH]"),
    };
    let first: u64 = first.parse().context("FIRST_BATCH")?;
    let (batches, size, concurrency): (u64, u64, u64) = (
        batches.parse().context("BATCHES")?,
        size.parse().context("BATCH_SIZE")?,
        concurrency.parse().context("CONCURRENCY")?,
    );
    let failpoints =
        FailPoints::from_spec(&std::env::var("MERIDIAN_FAILPOINTS").unwrap_or_default()).map_err(anyhow::Error::msg)?;
    let log = Arc::new(EmbeddedLog::open(path.as_ref(), EmbeddedOptions { failpoints })?);
    let topic = TopicName::new("durability", DataClass::Operational, "writes")?;
    log.ensure_topic(&TopicSpec::new(topic.clone(), TOPIC_PARTITIONS)).await?;
    println!("ready");
    let mut tasks = Vec::new();
    for lane in 0..concurrency {
        let (log, topic) = (log.clone(), topic.clone());
        tasks.push(tokio::spawn(async move {
            let mut batch_no = first + lane;
            while batch_no < first + batches {
                let batch: Vec<Outgoing> = (0..size)
                    .map(|i| Outgoing::new(topic.clone(), &batch_event(batch_no, i)).expect("operational event"))
                    .collect();
                log.append(batch).await?;
                // One line per ack, flushed, so the test reads it before any crash.
                let mut out = std::io::stdout().lock();
                writeln!(out, "ack {batch_no}")?;
                out.flush()?;
                batch_no += concurrency;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!("done");
    Ok(())
}
