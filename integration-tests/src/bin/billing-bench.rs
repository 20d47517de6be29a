//! Billing figures (docs/benchmarks.md):
//! - charges posted/s: `--reads` signed reads (a StudyQueued and an
//!   AssignmentCompleted each) already on the routing topic, taken by the
//!   ledger in atomic steps (facts and input positions in one commit): on
//!   the embedded log and on tansu;
//! - the same charges into PostgreSQL 15 as an idempotent ledger, in the
//!   same run: per batch one transaction of `INSERT … ON CONFLICT
//!   (event_id) DO NOTHING` and the consumer's offset update, with
//!   `synchronous_commit = on` (a private cluster started here);
//! - rebuilding the ledger by folding `--rebuild` routing events from the
//!   embedded log (read, decode, decide, fold).
//!
//!   cargo build --release -p meridian-integration-tests --bin billing-bench
//!   target/release/billing-bench --reads 20000 --rebuild 1000000

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use meridian_billing::app::Billing;
use meridian_config::Platform;
use meridian_events::{DataClass, EventId, KeyStore};
use meridian_integration_tests::Tansu;
use meridian_integration_tests::bench::arg;
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::kafka::{KafkaConfig, KafkaLog};
use meridian_log::{EventLog, TopicName, TopicSpec};
use meridian_projection::run::Snapshotter;
use uuid::Uuid;

use meridian_integration_tests::billing::{PARTITIONS, routing, write_reads};

/// Opens billing on `log` and times its steps over everything there:
/// charges posted per second.
async fn charges_per_second(
    log: Arc<dyn EventLog>,
    keys: Arc<dyn KeyStore>,
    platform: &Platform,
    reads: u64,
    idle: Duration,
) -> anyhow::Result<f64> {
    let billing = Billing::open("us-east", platform, log, keys, Snapshotter::none(), Default::default(), idle).await?;
    let started = Instant::now();
    let mut taken = 0;
    while taken < 2 * reads as usize {
        taken += billing.pass(Duration::from_millis(200)).await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let charged = billing.totals("acme").await.values().map(|t| t.charged_reads).sum::<u64>();
    anyhow::ensure!(charged == reads, "{charged} reads charged of {reads}");
    Ok(reads as f64 / secs)
}

/// A private PostgreSQL 15 cluster in `dir` on a free port, run as the
/// `postgres` user (initdb refuses root). Returns its port.
fn start_postgres(dir: &Path) -> anyhow::Result<u16> {
    let bin = Path::new("/usr/lib/postgresql/15/bin");
    let data = dir.join("pgdata");
    std::fs::create_dir_all(&data)?;
    let chown = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status()?;
    anyhow::ensure!(chown.success(), "chown {}", dir.display());
    let as_postgres = |program: &str| {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(program));
        c
    };
    let init = as_postgres("initdb").arg("-D").arg(&data).args(["-A", "trust"]).stdout(Stdio::null()).status()?;
    anyhow::ensure!(init.success(), "initdb");
    let port = meridian_integration_tests::free_port();
    let options = format!("-p {port} -k {} -c synchronous_commit=on -c fsync=on", dir.display());
    let started = as_postgres("pg_ctl")
        .arg("-D")
        .arg(&data)
        .args(["-o", &options, "-w", "-l"])
        .arg(dir.join("pg.log"))
        .arg("start")
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(started.success(), "pg_ctl start");
    Ok(port)
}

fn psql(dir: &Path, port: u16, sql: &str) -> anyhow::Result<()> {
    let mut child = Command::new("runuser")
        .args(["-u", "postgres", "--", "/usr/lib/postgresql/15/bin/psql", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(dir)
        .args(["-p", &port.to_string(), "-d", "postgres"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    child.stdin.take().context("psql stdin")?.write_all(sql.as_bytes())?;
    anyhow::ensure!(child.wait()?.success(), "psql");
    Ok(())
}

/// The same charges as an idempotent ledger in PostgreSQL: per batch of
/// `batch` reads, one transaction inserting their charges (ON CONFLICT DO
/// NOTHING) and updating the consumer's offset. Charges per second.
fn postgres_charges_per_second(dir: &Path, port: u16, reads: u64, batch: u64) -> anyhow::Result<f64> {
    psql(
        dir,
        port,
        "CREATE TABLE charges (event_id uuid PRIMARY KEY, study_id uuid NOT NULL, contract text NOT NULL, \
         period text NOT NULL, currency text NOT NULL, amount bigint NOT NULL, cause uuid NOT NULL);\n\
         CREATE TABLE consumer_offsets (consumer text, part int, next bigint, PRIMARY KEY (consumer, part));\n\
         INSERT INTO consumer_offsets VALUES ('billing.ledger', 0, 0);\n",
    )?;
    let mut sql = String::new();
    let mut n = 0;
    while n < reads {
        sql.push_str("BEGIN;\nINSERT INTO charges VALUES ");
        let end = (n + batch).min(reads);
        for i in n..end {
            let study = Uuid::from_u64_pair(0xb111, i);
            let cause = EventId::derived(EventId(study), "meridian.events.v1.AssignmentCompleted", 2);
            let id = EventId::derived(cause, "meridian.events.v1.ChargePosted", 0);
            let sep = if i + 1 == end { "" } else { "," };
            sql.push_str(&format!("('{id}','{study}','acme-atlantic','2026-11','USD',4500,'{cause}'){sep}"));
        }
        sql.push_str(&format!(
            " ON CONFLICT (event_id) DO NOTHING;\nUPDATE consumer_offsets SET next = {} WHERE consumer = 'billing.ledger' AND part = 0;\nCOMMIT;\n",
            2 * end
        ));
        n = end;
    }
    let started = Instant::now();
    psql(dir, port, &sql)?;
    Ok(reads as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let reads: u64 = arg("--reads").and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let rebuild: u64 = arg("--rebuild").and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev");
    let platform = Platform::load(&examples).map_err(|p| anyhow::anyhow!("{p}"))?;
    let work = tempfile::TempDir::new()?;
    println!("billing   {reads} signed reads (a StudyQueued and an AssignmentCompleted each)");

    // Embedded log: the inputs first, then the ledger's steps.
    {
        let log = Arc::new(EmbeddedLog::open(&work.path().join("log.redb"), EmbeddedOptions::default())?);
        for stream in ["routing", "billing"] {
            let t = TopicName::new("us-east", DataClass::Operational, stream)?;
            log.ensure_topic(&TopicSpec::new(t, PARTITIONS)).await?;
        }
        write_reads(log.as_ref(), 0, reads).await?;
        let keys: Arc<dyn KeyStore> = Arc::new(log.key_store());
        let rate = charges_per_second(log, keys, &platform, reads, Duration::from_millis(50)).await?;
        println!("billing   embedded log: {rate:>8.0} charges posted/s (atomic steps; goal ≥ 20,000)");
    }

    // tansu: the same through Kafka transactions with their offsets.
    {
        let tansu = Tansu::start();
        let config = KafkaConfig::new(tansu.bootstrap(), format!("bench-billing-{}", Uuid::now_v7().simple()));
        let log = Arc::new(KafkaLog::connect(config).await?);
        for stream in ["routing", "billing"] {
            let t = TopicName::new("us-east", DataClass::Operational, stream)?;
            log.ensure_topic(&TopicSpec::new(t, PARTITIONS)).await?;
        }
        write_reads(log.as_ref(), 0, reads).await?;
        let keys: Arc<dyn KeyStore> = Arc::new(meridian_events::seal::MemoryKeyStore::default());
        let rate = charges_per_second(log, keys, &platform, reads, Duration::from_secs(2)).await?;
        println!("billing   tansu:        {rate:>8.0} charges posted/s (Kafka transactions with offsets)");
    }

    // PostgreSQL 15, the same charges, the same batch size.
    match start_postgres(work.path()) {
        Ok(port) => {
            let rate = postgres_charges_per_second(work.path(), port, reads, 1_024)?;
            println!(
                "billing   PostgreSQL 15: {rate:>7.0} charges posted/s (INSERT … ON CONFLICT + offset, one transaction per 1,024 reads as billing's steps, synchronous_commit=on)"
            );
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "-D"])
                .arg(work.path().join("pgdata"))
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .status();
        }
        Err(e) => println!("billing   PostgreSQL 15: not run ({e:#})"),
    }

    // Rebuild: fold `rebuild` routing events from the embedded log.
    {
        let log = Arc::new(EmbeddedLog::open(&work.path().join("rebuild.redb"), EmbeddedOptions::default())?);
        for stream in ["routing", "billing"] {
            let t = TopicName::new("us-east", DataClass::Operational, stream)?;
            log.ensure_topic(&TopicSpec::new(t, PARTITIONS)).await?;
        }
        write_reads(log.as_ref(), 1_000_000, rebuild / 2).await?;
        let keys: Arc<dyn KeyStore> = Arc::new(log.key_store());
        let started = Instant::now();
        let mut projector = meridian_projection::Projector::<meridian_billing::app::LedgerProjection>::new(
            (0..PARTITIONS).map(|p| meridian_log::Position::start(routing("us-east"), p)).collect(),
        );
        projector.state_mut().pricebook = meridian_billing::adapters::config::pricebook(&platform);
        meridian_projection::run::catch_up(log.as_ref(), keys.as_ref(), &mut projector, Duration::from_millis(50))
            .await?;
        let secs = started.elapsed().as_secs_f64();
        let facts = projector.state().outbox.len();
        println!(
            "billing   ledger rebuild: {rebuild} routing events folded in {secs:.1} s ({facts} facts decided; goal < 10 s)"
        );
        // Every read above is Acme's, signed in November: its preview.
        projector.state_mut().outbox.clear();
        let charges = projector.state().entries.get("acme/2026-11").map_or(0, Vec::len);
        let mut ms = Vec::new();
        for _ in 0..5 {
            let started = Instant::now();
            let invoices = meridian_billing::domain::invoice::preview(projector.state(), "acme", "2026-11");
            ms.push(started.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(invoices.iter().map(|i| i.lines.len()).sum::<usize>() > 0, "an empty preview");
        }
        ms.sort_by(f64::total_cmp);
        println!(
            "billing   invoice preview: {charges} charges in a month, median {:.0} ms of 5 (goal < 200 ms at 100,000)",
            ms[2]
        );
    }
    Ok(())
}
