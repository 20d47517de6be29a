//! Bounded state at scale (docs/benchmarks.md): fills us-east of a
//! `meridian dev` through the gRPC upload with small CT instances (20 to
//! a study), audits DICOMweb reads (one PhiAccessed each), and at each
//! stage measures SIGTERM → exit, restart → QIDO-RS answering, the idle
//! process's resident memory, QIDO-RS p50/p99, snapshot sizes and write
//! times, and the study index's bytes per instance.
//!
//! ```sh
//! cargo build --release -p meridian -p meridian-integration-tests
//! target/release/scale-bench --stages 200000,1000000 --dir /tmp/scale --housekeeping
//! ```
//!
//! `--housekeeping` then measures upload acknowledgements with the orphan
//! sweep idle and with it running back to back.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_integration_tests::bench::{STUDY, Synthetic, arg, percentiles, synthetic, timed_get};
use meridian_proto::ingest::v1 as ingest;
use meridian_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use meridian_proto::ingest::v1::upload_instances_request::Part;

const JSON: &str = "application/dicom+json";

fn start(dir: &Path) -> anyhow::Result<(Child, f64)> {
    start_with(dir, &Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev"))
}

fn start_with(dir: &Path, config: &Path) -> anyhow::Result<(Child, f64)> {
    let meridian = std::env::current_exe()?.with_file_name("meridian");
    let _ = std::fs::remove_file(dir.join("endpoints.json"));
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("dev.log"))?;
    let started = Instant::now();
    let mut child = Command::new(&meridian)
        .args(["dev", "--ports", "auto", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn,meridian_projection=debug,meridian_region=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    while !dir.join("endpoints.json").exists() {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("meridian dev exited: {status} (see {})", dir.join("dev.log").display());
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "no endpoints.json in 600 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, started.elapsed().as_secs_f64()))
}

struct Endpoints {
    grpc: String,
    http: String,
    token: String,
}

fn endpoints(dir: &Path) -> anyhow::Result<Endpoints> {
    let e: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("endpoints.json"))?)?;
    let t: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("tokens.json"))?)?;
    let region = &e["regions"]["us-east"];
    Ok(Endpoints {
        grpc: format!("http://{}", region["grpc"].as_str().unwrap_or_default()),
        http: region["http"].as_str().unwrap_or_default().trim_start_matches("http://").to_owned(),
        token: t["principals"]["acme-pacs"]["token"].as_str().unwrap_or_default().to_owned(),
    })
}

fn study_uid(study: u64) -> String {
    format!("{STUDY}.9.{study}")
}

/// Instance `k`: study `k / per_study`, patient `P{study % 10,000}`.
fn instance(k: u64, per_study: u64) -> anyhow::Result<Vec<u8>> {
    let study = k / per_study;
    let (uid, n) = (study_uid(study), k % per_study);
    let series = format!("{uid}.1");
    let sop = format!("{series}.{}", n + 1);
    let patient = format!("P{}", study % 10_000);
    let ct = Synthetic {
        study: &uid,
        series: &series,
        sop: &sop,
        patient_id: &patient,
        priority: "",
        number: n as usize + 1,
        side: 16,
    };
    synthetic(&ct)
}

/// Instances a stream has sent and not yet had answered: a sender with a
/// window, as a PACS with a few associations is; the latency measured is
/// the region's, not a queue's.
const IN_FLIGHT: usize = 8;

/// Sends instances `from..to` over `streams` gRPC upload streams; returns
/// each instance's acknowledgement latency (ms).
async fn fill(e: &Endpoints, from: u64, to: u64, per_study: u64, streams: u64) -> anyhow::Result<Vec<f64>> {
    let mut tasks = Vec::new();
    let share = (to - from).div_ceil(streams);
    for s in 0..streams {
        let (start, end) = (from + s * share, (from + (s + 1) * share).min(to));
        let (grpc, token) = (e.grpc.clone(), e.token.clone());
        tasks.push(tokio::spawn(async move {
            let channel = tonic::transport::Channel::from_shared(grpc)?.connect().await?;
            let mut client = IngestServiceClient::new(channel);
            let (tx, rx) = tokio::sync::mpsc::channel::<ingest::UploadInstancesRequest>(64);
            let sent = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
            let window = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
            let sending = {
                let (sent, window) = (sent.clone(), window.clone());
                tokio::spawn(async move {
                    for k in start..end {
                        window.acquire().await?.forget();
                        let bytes = instance(k, per_study)?;
                        let header = ingest::InstanceHeader {
                            idempotency_key: String::new(),
                            size_bytes: bytes.len() as u64,
                            label: k.to_string(),
                        };
                        sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push_back(Instant::now());
                        let message = |part| ingest::UploadInstancesRequest { part: Some(part) };
                        if tx.send(message(Part::Header(header))).await.is_err()
                            || tx.send(message(Part::Chunk(bytes))).await.is_err()
                        {
                            break;
                        }
                    }
                    anyhow::Ok(())
                })
            };
            let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
            let mut answers = client.upload_instances(request).await?.into_inner();
            let mut latencies = Vec::with_capacity((end - start) as usize);
            while let Some(answer) = answers.message().await? {
                let at = sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop_front();
                window.add_permits(1);
                latencies.push(at.map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3));
                anyhow::ensure!(
                    matches!(answer.result, Some(ingest::upload_instances_response::Result::Stored(_))),
                    "instance {} refused: {answer:?}",
                    answer.label
                );
            }
            sending.await??;
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// `n` audited reads over `threads` threads: QIDO-RS for one study by UID.
fn reads(e: &Endpoints, n: u64, studies: u64, threads: u64) -> anyhow::Result<()> {
    let mut handles = Vec::new();
    for t in 0..threads {
        let (http, token) = (e.http.clone(), e.token.clone());
        handles.push(std::thread::spawn(move || -> anyhow::Result<()> {
            for i in (t..n).step_by(threads as usize) {
                let path = format!("/dicomweb/studies?StudyInstanceUID={}", study_uid((i * 7_919) % studies));
                let (_, _, status, _) = timed_get(&http, &path, &token, JSON)?;
                anyhow::ensure!(status == 200, "{path}: {status}");
            }
            Ok(())
        }));
    }
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("a reader thread panicked"))??;
    }
    Ok(())
}

fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1));
    kb.and_then(|k| k.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
}

fn terminate(child: &mut Child) -> anyhow::Result<f64> {
    let started = Instant::now();
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "meridian dev exited with {status} after SIGTERM");
    Ok(started.elapsed().as_secs_f64())
}

fn file_mb(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / 1e6)
}

/// The snapshot writes the log reports since byte `from`: (projection, bytes, ms).
fn snapshot_writes(log: &Path, from: usize) -> Vec<(String, f64, f64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let field = |line: &str, name: &str| -> Option<String> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        Some(line[at..].split_whitespace().next()?.trim_matches('"').to_owned())
    };
    text.get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("snapshot written"))
        .filter_map(|l| {
            Some((field(l, "projection")?, field(l, "bytes")?.parse().ok()?, field(l, "ms")?.parse().ok()?))
        })
        .collect()
}

/// Where the study index's bytes go: per table, its entries and the bytes
/// stored in them, its B-tree pages and fragmentation, beside the file.
fn index_report(path: &Path, instances: u64) -> anyhow::Result<()> {
    use redb::{ReadableDatabase, ReadableTableMetadata, TableHandle};
    let db = redb::Database::open(path)?;
    let txn = db.begin_read()?;
    let mut total = 0;
    println!("\nstudy index {} ({:.0} MB file):", path.display(), file_mb(path));
    println!("table | entries | stored MB | B/instance | metadata MB | fragmented MB");
    for handle in txn.list_tables()? {
        let table = txn.open_untyped_table(handle.clone())?;
        let stats = table.stats()?;
        let bytes = stats.stored_bytes() + stats.metadata_bytes() + stats.fragmented_bytes();
        total += bytes;
        println!(
            "{} | {} | {:.1} | {:.0} | {:.1} | {:.1}",
            handle.name(),
            table.len()?,
            stats.stored_bytes() as f64 / 1e6,
            stats.stored_bytes() as f64 / instances as f64,
            stats.metadata_bytes() as f64 / 1e6,
            stats.fragmented_bytes() as f64 / 1e6
        );
    }
    println!("all tables: {:.0} MB in pages, {:.0} B/instance", total as f64 / 1e6, total as f64 / instances as f64);
    Ok(())
}

/// The example configuration copied under `dir`, us-east sweeping for
/// orphans every second (so sweeps run back to back).
fn sweeping_config(dir: &Path) -> anyhow::Result<PathBuf> {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev");
    let to = dir.join("config-sweeping");
    let status = Command::new("cp").arg("-r").arg(&from).arg(&to).status()?;
    anyhow::ensure!(status.success(), "copying {}", from.display());
    let region = to.join("regions/us-east.toml");
    let mut text = std::fs::read_to_string(&region)?;
    text.push_str("\n[housekeeping]\norphan_sweep_every = \"1s\"\n");
    std::fs::write(&region, text)?;
    Ok(to)
}

/// Upload acknowledgements over the filled region with the orphan sweep
/// idle (as configured: every 10 minutes), then with it running back to
/// back: acknowledgements must not wait for housekeeping. Completion runs
/// every second in both.
async fn housekeeping(dir: &Path, child: &mut Child, from: u64, per_study: u64, streams: u64) -> anyhow::Result<u64> {
    const N: u64 = 30_000;
    let log = dir.join("dev.log");
    let (idle50, idle99) = percentiles(fill(&endpoints(dir)?, from, from + N, per_study, streams).await?);
    terminate(child)?;
    let log_from = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
    let (next, _) = start_with(dir, &sweeping_config(dir)?)?;
    *child = next;
    let sweeps = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.get(log_from..).unwrap_or_default().lines().filter(|l| l.contains("orphan sweep")).count()
    };
    // The first sweep starts a second after the start; wait for one whole
    // sweep so the measured window sees them back to back.
    while sweeps() == 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (before, started) = (sweeps(), Instant::now());
    let (busy50, busy99) = percentiles(fill(&endpoints(dir)?, from + N, from + 2 * N, per_study, streams).await?);
    let during = sweeps() - before;
    println!(
        "\nupload acknowledgement over {from} instances, {N} each: sweep idle p50/p99 {idle50:.1}/{idle99:.1} ms; \
         sweeps back to back p50/p99 {busy50:.1}/{busy99:.1} ms ({during} sweeps of the whole store finished in the {:.0} s window)",
        started.elapsed().as_secs_f64()
    );
    Ok(from + 2 * N)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let stages: Vec<u64> = arg("--stages")
        .unwrap_or_else(|| "200000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let per_study: u64 = arg("--per-study").map_or(Ok(20), |v| v.parse())?;
    let streams: u64 = arg("--streams").map_or(Ok(4), |v| v.parse())?;
    let reads_per_instance: f64 = arg("--reads-per-instance").map_or(Ok(0.2), |v| v.parse())?;
    let dir = PathBuf::from(arg("--dir").unwrap_or_else(|| "/tmp/meridian-scale-bench".into()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("dev.log");
    let (mut child, _) = start(&dir)?;
    let (mut instances, mut read) = (0u64, 0u64);
    println!(
        "stage | fill /s | ack p50/p99 ms | SIGTERM→exit s | restart→endpoints s | →QIDO s | idle RSS MB | QIDO limit=50 p50/p99 ms | PatientID p50/p99 ms | index MB (B/instance) | log MB | snapshots"
    );
    for stage in stages {
        let e = endpoints(&dir)?;
        let started = Instant::now();
        let acks = fill(&e, instances, stage, per_study, streams).await?;
        let rate = (stage - instances) as f64 / started.elapsed().as_secs_f64();
        let (ack50, ack99) = percentiles(acks);
        instances = stage;
        let studies = instances / per_study;
        let target = (instances as f64 * reads_per_instance) as u64;
        reads(&e, target.saturating_sub(read), studies, 4)?;
        read = read.max(target);
        let log_from = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let stop = terminate(&mut child)?;
        let writes = snapshot_writes(&log, log_from);
        let restart_from = Instant::now();
        let (next, to_endpoints) = start(&dir)?;
        child = next;
        let e = endpoints(&dir)?;
        loop {
            let (_, _, status, _) = timed_get(&e.http, "/dicomweb/studies?limit=50", &e.token, JSON)?;
            if status == 200 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let to_qido = restart_from.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(5));
        let idle = rss_mb(child.id());
        let mut page = Vec::new();
        let mut patient = Vec::new();
        for i in 0..200u64 {
            page.push(timed_get(&e.http, "/dicomweb/studies?limit=50", &e.token, JSON)?.1);
            let path = format!("/dicomweb/studies?PatientID=P{}&limit=50", (i * 37) % 10_000.min(studies.max(1)));
            patient.push(timed_get(&e.http, &path, &e.token, JSON)?.1);
        }
        let ((p50, p99), (q50, q99)) = (percentiles(page), percentiles(patient));
        let index = file_mb(&dir.join("us-east/index.redb"));
        let shots: Vec<String> = writes
            .iter()
            .filter(|(p, _, _)| !p.is_empty())
            .map(|(p, b, ms)| format!("{p} {:.1} MB in {ms:.0} ms", b / 1e6))
            .collect();
        println!(
            "{instances} instances, {studies} studies, {read} audited reads | {rate:.0} | {ack50:.1}/{ack99:.1} | {stop:.2} | {to_endpoints:.2} | {to_qido:.2} | {idle:.0} | {p50:.1}/{p99:.1} | {q50:.1}/{q99:.1} | {index:.0} ({:.0}) | {:.0} | {}",
            index * 1e6 / instances as f64,
            file_mb(&dir.join("us-east/log.redb")),
            shots.join("; ")
        );
    }
    if std::env::args().any(|a| a == "--housekeeping") {
        instances = housekeeping(&dir, &mut child, instances, per_study, streams).await?;
    }
    terminate(&mut child)?;
    index_report(&dir.join("us-east/index.redb"), instances)
}
