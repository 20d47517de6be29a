//! Durability that a test can catch lying.
//!
//! SIGKILL does not drop the page cache, so a kill alone cannot see a
//! missing fsync. Hence three kinds of test:
//! - failpoints between write and commit, and between commit and
//!   acknowledgement, each aborting the writer process there;
//! - a writer that reports every acknowledged batch over a pipe and is
//!   SIGKILLed mid-flight: every acknowledged batch must be there after a
//!   restart, and no batch may be half there;
//! - a count of fsync/fdatasync calls (strace) on durable appends: fewer
//!   syncs than acknowledged commits means acknowledgements are not durable.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use meridian_events::DataClass;
use meridian_events::payload::Payload;
use meridian_integration_tests::durability::{TOPIC_PARTITIONS, batch_of};
use meridian_log::contract::read_to_end;
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::{Position, TopicName};
use tempfile::TempDir;

const WRITER: &str = env!("CARGO_BIN_EXE_log-writer");
const BATCH: u64 = 10;

fn writer(path: &Path, batches: u64, concurrency: u64, failpoints: &str) -> Child {
    writer_from(path, 0, batches, concurrency, failpoints)
}

fn writer_from(path: &Path, first: u64, batches: u64, concurrency: u64, failpoints: &str) -> Child {
    Command::new(WRITER)
        .args([
            path.to_str().unwrap(),
            &batches.to_string(),
            &BATCH.to_string(),
            &concurrency.to_string(),
            &first.to_string(),
        ])
        .env("MERIDIAN_FAILPOINTS", failpoints)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start log-writer")
}

/// Reads acknowledgements until the writer exits, or until `stop_after`
/// acknowledgements, when it is SIGKILLed.
fn acks(mut child: Child, stop_after: Option<usize>) -> (BTreeSet<u64>, std::process::ExitStatus) {
    let stdout = child.stdout.take().unwrap();
    let mut acked = BTreeSet::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(n) = line.strip_prefix("ack ") {
            acked.insert(n.parse().unwrap());
            if stop_after.is_some_and(|s| acked.len() >= s) {
                child.kill().unwrap();
                break;
            }
        }
    }
    (acked, child.wait().unwrap())
}

/// Batch number → how many of its events are in the log.
async fn stored(path: &Path) -> BTreeMap<u64, u64> {
    let log = EmbeddedLog::open(path, EmbeddedOptions::default()).unwrap();
    let topic = TopicName::new("durability", DataClass::Operational, "writes").unwrap();
    let from = (0..TOPIC_PARTITIONS).map(|p| Position::start(topic.clone(), p)).collect();
    let mut counts = BTreeMap::new();
    for r in read_to_end(&log, from).await {
        let Payload::StudyStarted(s) = r.envelope().unwrap().open_plain().unwrap() else {
            panic!("unexpected payload")
        };
        *counts.entry(batch_of(&s.modality).unwrap()).or_insert(0) += 1;
    }
    log.close().await;
    counts
}

fn assert_no_half_batch(counts: &BTreeMap<u64, u64>) {
    for (batch, n) in counts {
        assert_eq!(*n, BATCH, "batch {batch} is half there: {n} of {BATCH} events");
    }
}

fn assert_acked_are_stored(acked: &BTreeSet<u64>, counts: &BTreeMap<u64, u64>) {
    let missing: Vec<_> = acked.iter().filter(|b| !counts.contains_key(b)).collect();
    assert!(missing.is_empty(), "acknowledged batches lost: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_write_and_commit_loses_only_the_unacknowledged_batch() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("region.redb");
    // Commit 1 creates the topic; commit 8 is batch 6's, which dies unwritten.
    let (acked, status) = acks(writer(&path, 50, 1, "log.before_commit=abort@8"), None);
    assert!(!status.success(), "the writer must have died at the failpoint");
    assert_eq!(acked, (0..6).collect());
    let counts = stored(&path).await;
    assert_no_half_batch(&counts);
    assert_eq!(counts.keys().copied().collect::<BTreeSet<_>>(), acked, "exactly the acknowledged batches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_commit_and_acknowledgement_keeps_the_committed_batch() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("region.redb");
    let (acked, status) = acks(writer(&path, 50, 1, "log.after_commit=abort@8"), None);
    assert!(!status.success());
    assert_eq!(acked, (0..6).collect());
    let counts = stored(&path).await;
    assert_no_half_batch(&counts);
    // Batch 6 was committed, then the process died before saying so.
    assert_eq!(counts.keys().copied().collect::<BTreeSet<_>>(), (0..7).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_loses_no_acknowledged_batch_and_restart_continues() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("region.redb");
    let (acked, _) = acks(writer(&path, 1_000_000, 4, ""), Some(300));
    assert!(acked.len() >= 300);
    let counts = stored(&path).await;
    assert_no_half_batch(&counts);
    assert_acked_are_stored(&acked, &counts);

    // A restarted writer appends after what is there; nothing old changes.
    let (again, status) = acks(writer_from(&path, 10_000_000, 20, 1, ""), None);
    assert!(status.success());
    assert_eq!(again, (10_000_000..10_000_020).collect());
    let mut after = stored(&path).await;
    assert_no_half_batch(&after);
    assert_acked_are_stored(&again, &after);
    after.retain(|b, _| *b < 10_000_000);
    assert_eq!(after, counts);
}

#[test]
fn every_acknowledged_append_is_synced_to_disk() {
    if Command::new("strace").arg("-V").output().is_err() {
        panic!("strace is not installed: scripts/test installs it (apt-get install strace)");
    }
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("region.redb");
    let summary = dir.path().join("strace.txt");
    // One batch at a time, so every acknowledgement needs its own commit.
    let status = Command::new("strace")
        .args(["-f", "-c", "-e", "trace=fsync,fdatasync,sync_file_range", "-o", summary.to_str().unwrap()])
        .args([WRITER, path.to_str().unwrap(), "25", &BATCH.to_string(), "1"])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&summary).unwrap();
    let syncs: u64 = text
        .lines()
        .filter(|l| l.trim_end().ends_with("fsync") || l.trim_end().ends_with("fdatasync"))
        .filter_map(|l| l.split_whitespace().nth(3).and_then(|calls| calls.parse::<u64>().ok()))
        .sum();
    // 25 acknowledged appends + the topic's creation, each durable.
    assert!(syncs >= 26, "{syncs} fsync/fdatasync calls for 26 durable commits:\n{text}");
}

#[test]
fn every_acknowledged_object_is_synced_with_its_directory() {
    if Command::new("strace").arg("-V").output().is_err() {
        panic!("strace is not installed: scripts/test installs it (apt-get install strace)");
    }
    let dir = TempDir::new().unwrap();
    let trace = dir.path().join("strace.txt");
    let objects = dir.path().join("objects");
    let out = Command::new("strace")
        .args(["-f", "-e", "trace=fsync,fdatasync,rename,link,linkat", "-y", "-o", trace.to_str().unwrap()])
        .args([env!("CARGO_BIN_EXE_blob-writer"), objects.to_str().unwrap(), "20"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let acked = String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("ack ")).count();
    assert_eq!(acked, 20);
    let text = std::fs::read_to_string(&trace).unwrap();
    // `-y` names each descriptor's path: a sync of each object's file,
    // and of the series directory after each is linked into it (a link,
    // not a rename, so that a name is created once, never replaced).
    let synced = |pred: &dyn Fn(&str) -> bool| {
        text.lines().filter(|l| (l.contains("fsync(") || l.contains("fdatasync(")) && pred(l)).count()
    };
    let files = synced(&|l| l.contains("/.tmp-"));
    let series_dir = synced(&|l| l.contains("/phi/acme/study/series>"));
    let links = text.lines().filter(|l| l.contains("link(") || l.contains("linkat(")).count();
    assert_eq!(files, 20, "each object's bytes are synced before it is linked into place:\n{text}");
    assert_eq!(links, 20);
    assert!(series_dir >= 20, "the directory is synced after each link ({series_dir}):\n{text}");
}

/// Billing through crashes: 10,000 signed reads on the routing topic, the
/// billing process SIGKILLed at random 20 times and aborted at its
/// failpoints (after deciding, before the log commits), restarted each
/// time, then run to the end. The ledger is exactly the one a single
/// uninterrupted fold decides: every charge and payout once, none twice,
/// to the minor unit. The embedded log admits one process, so the reads
/// are written first; on tansu they are fed while billing is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_posts_each_charge_once_through_sigkills_and_failpoints() {
    use meridian_integration_tests::billing::{PARTITIONS, write_reads};
    use meridian_log::{EventLog, TopicSpec};
    let dir = TempDir::new().unwrap();
    let (log_path, snapshots) = (dir.path().join("log.redb"), dir.path().join("snapshots"));
    {
        let log = EmbeddedLog::open(&log_path, EmbeddedOptions::default()).unwrap();
        for stream in ["routing", "billing"] {
            let t = TopicName::new("us-east", DataClass::Operational, stream).unwrap();
            log.ensure_topic(&TopicSpec::new(t, PARTITIONS)).await.unwrap();
        }
        write_reads(&log, 0, BILLED_READS).await.unwrap();
        log.close().await;
    }
    let kills = kill_billing(log_path.to_str().unwrap(), &snapshots, 5..65, &Default::default()).len() as u32;
    let log = EmbeddedLog::open(&log_path, EmbeddedOptions::default()).unwrap();
    let keys = log.key_store();
    let copies = assert_billed_exactly(&log, &keys, kills).await;
    assert_eq!(copies, 0, "the embedded log shows no record twice");
    log.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_on_tansu_posts_each_charge_once_while_fed_and_killed() {
    use meridian_integration_tests::billing::{PARTITIONS, write_reads};
    use meridian_log::kafka::{KafkaConfig, KafkaLog};
    use meridian_log::{EventLog, TopicSpec};
    let tansu = meridian_integration_tests::Tansu::start();
    let dir = TempDir::new().unwrap();
    let feeder = KafkaLog::connect(KafkaConfig::new(tansu.bootstrap(), "test-billing-feeder")).await.unwrap();
    for stream in ["routing", "billing"] {
        let t = TopicName::new("us-east", DataClass::Operational, stream).unwrap();
        feeder.ensure_topic(&TopicSpec::new(t, PARTITIONS)).await.unwrap();
    }
    // The reads arrive in 40 parts over ~12 s while billing is killed; a
    // part waits for the kills before it (one per 8 parts), so that on a
    // loaded machine, where a restart takes longer, kills still land
    // while reads are fed.
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let kills_so_far = counted.clone();
    let feeding = tokio::spawn(async move {
        let part = BILLED_READS / 40;
        for n in 0..40 {
            let waited = std::time::Instant::now();
            while kills_so_far.load(std::sync::atomic::Ordering::SeqCst) < (n as usize + 1) / 8
                && waited.elapsed() < std::time::Duration::from_secs(60)
            {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            write_reads(&feeder, n * part, part).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        (feeder, std::time::Instant::now())
    });
    let log = format!("kafka:{}", tansu.bootstrap());
    let snapshots = dir.path().join("snapshots");
    let killed = tokio::task::spawn_blocking(move || kill_billing(&log, &snapshots, 100..900, &counted)).await.unwrap();
    let (feeder, fed) = feeding.await.unwrap();
    let while_fed = killed.iter().filter(|at| **at < fed).count();
    assert!(while_fed >= 5, "only {while_fed} of the kills landed while the reads were being fed");
    let kills = killed.len() as u32;
    let keys = meridian_events::seal::MemoryKeyStore::default();
    let copies = assert_billed_exactly(&feeder, &keys, kills).await;
    // This tansu shows a killed step's aborted records to read_committed
    // readers (TOOLS.md): the same bytes again, which a reader drops as a
    // duplicate; a conflict (same id, other bytes) fails above.
    eprintln!("aborted copies visible on tansu: {copies}");
}

const BILLED_READS: u64 = 10_000;

/// Runs billing-writer over `log` to the end: aborted at each of its
/// failpoints, then SIGKILLed 20 times at pseudo-random moments (`delay`
/// ms after it has opened; a fixed seed: the same schedule every run).
/// Returns when each kill landed.
/// `counted` counts the kills as they happen.
fn kill_billing(
    log: &str,
    snapshots: &Path,
    delay: std::ops::Range<u64>,
    counted: &std::sync::atomic::AtomicUsize,
) -> Vec<std::time::Instant> {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev");
    let victim = |failpoints: &str| {
        Command::new(env!("CARGO_BIN_EXE_billing-writer"))
            .arg(log)
            .arg(snapshots)
            .arg(BILLED_READS.to_string())
            .arg(&config)
            .env("MERIDIAN_FAILPOINTS", failpoints)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let line = |child: &mut Child| {
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        line
    };
    // Failpoints first: each aborts the process inside a step.
    for failpoints in [
        "billing.after_decide=abort@2",
        "billing.before_commit=abort@3",
        "log.before_commit=abort@3",
        "log.after_commit=abort@2",
    ] {
        let mut child = victim(failpoints);
        let _ = line(&mut child);
        let status = child.wait().unwrap();
        assert!(!status.success(), "{failpoints}: the victim died there ({status})");
    }
    let mut seed = 0x9e37_79b9_u64;
    let mut kills = Vec::new();
    while kills.len() < 20 {
        let mut child = victim("");
        if line(&mut child).trim() != "ready" {
            // It finished before it could be killed: nothing left to do.
            break;
        }
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(std::time::Duration::from_millis(delay.start + (seed >> 33) % (delay.end - delay.start)));
        child.kill().unwrap();
        child.wait().unwrap();
        kills.push(std::time::Instant::now());
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    let mut child = victim("");
    let _ = line(&mut child);
    let done = line(&mut child);
    assert!(child.wait().unwrap().success() && done.starts_with("done"), "{done}");
    assert!(done.trim().ends_with("conflicts 0"), "the ledger folded no conflicting event: {done}");
    kills
}

/// Asserts that billing's topic on `log` holds exactly the facts one
/// uninterrupted fold of the routing topic decides: every charge and payout,
/// none twice, the charges to the minor unit. Returns how many records were
/// the same bytes again (aborted copies a reader drops).
async fn assert_billed_exactly(
    log: &dyn meridian_log::EventLog,
    keys: &dyn meridian_events::KeyStore,
    kills: u32,
) -> usize {
    use meridian_billing::app::LedgerProjection;
    use meridian_integration_tests::billing::{PARTITIONS, routing};
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev");
    let mut expected = meridian_projection::Projector::<LedgerProjection>::new(
        (0..PARTITIONS).map(|p| Position::start(routing("us-east"), p)).collect(),
    );
    expected.state_mut().pricebook =
        meridian_billing::adapters::config::pricebook(&meridian_config::Platform::load(&config).unwrap());
    let routed = read_to_end(log, (0..PARTITIONS).map(|p| Position::start(routing("us-east"), p)).collect()).await;
    for r in &routed {
        expected.feed(r, keys).unwrap();
    }
    let billing = TopicName::new("us-east", DataClass::Operational, "billing").unwrap();
    let posted = read_to_end(log, (0..PARTITIONS).map(|p| Position::start(billing.clone(), p)).collect()).await;
    let mut seen: BTreeMap<meridian_events::EventId, Vec<u8>> = BTreeMap::new();
    let (mut copies, mut charged, mut prices) = (0, 0i64, 0);
    for r in &posted {
        let envelope = r.envelope().unwrap();
        if let Some(first) = seen.get(&envelope.meta.event_id) {
            assert_eq!(first, &r.value, "event {} twice with other bytes", envelope.meta.event_id);
            copies += 1;
            continue;
        }
        match envelope.open_plain().unwrap() {
            Payload::ChargePosted(c) => charged += c.amount.unwrap().minor_units,
            // The prices in force, recorded by the first start (the
            // configuration never changes here): not a fold's fact.
            Payload::PricesInForce(_) => {
                prices += 1;
                continue;
            }
            _ => {}
        }
        seen.insert(envelope.meta.event_id, r.value.clone());
    }
    assert_eq!(prices, 1, "the prices are put in force once, by the first start");
    let expected_ids: BTreeSet<_> = expected.state().outbox.iter().map(|f| f.id).collect();
    let got_ids: BTreeSet<_> = seen.keys().copied().collect();
    assert_eq!(got_ids.len(), expected_ids.len(), "every charge and payout, after {kills} kills");
    assert_eq!(got_ids, expected_ids);
    let expected_charged: i64 =
        expected.state().totals.iter().filter(|(k, _)| k.starts_with("acme/")).map(|(_, t)| t.charges).sum();
    assert_eq!(charged, expected_charged, "to the minor unit");
    assert_eq!(expected.state().totals.values().map(|t| t.charged_reads).sum::<u64>(), BILLED_READS);
    assert!(kills >= 20, "only {kills} kills landed before billing finished");
    copies
}
