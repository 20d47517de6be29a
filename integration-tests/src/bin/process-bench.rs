//! Services as processes (docs/benchmarks.md): one region on a tansu broker,
//! each service its own `meridian serve` process, beside `meridian dev` on
//! the embedded log.
//!
//! - C-STORE instances/s into one ingest process, with the same slices as
//!   ingest-bench, over one association and four: objects in a local
//!   folder (ingest alone: what Kafka costs) and in a moto bucket (the
//!   whole split); `meridian dev` beside.
//! - The last C-STORE of a study acknowledged → its StudyQueued on the log
//!   (CompleteStudy in between, so no quiet period), p50/p99 over
//!   `--studies` studies, across processes and in one.
//! - The same acknowledgement → the instance found by storage's QIDO-RS
//!   (another process, whose index follows the log).
//! - Peak resident memory of each service process.
//! - SIGKILL → ready again (endpoints written, `/readyz` 200) per service.
//!
//!   cargo build --release -p meridian -p meridian-integration-tests
//!   target/release/process-bench --count 300 --studies 30
//!
//! The `meridian` binary is taken from beside this one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_integration_tests::bench::{STUDY, arg, peak_rss_mb, percentiles, slices, start_dev};
use meridian_integration_tests::dicom::{CtInstance, write_ct};
use meridian_integration_tests::processes::{Cluster, ready, wait_until};
use meridian_integration_tests::{Moto, Tansu};
use meridian_proto::admin::v1 as admin;
use meridian_proto::ingest::v1 as ingest;
use tokio_stream::StreamExt;

fn send(port: u16, files: &[PathBuf], associations: usize) -> anyhow::Result<f64> {
    meridian_integration_tests::bench::send_parallel(port, "ACME_CT1", "MERIDIAN_ACME", files, associations)
}

fn bearer<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// When each study's StudyQueued reached a follower of the routing topic.
type Queued = Arc<Mutex<BTreeMap<String, Instant>>>;

/// Follows the routing stream through `grpc`'s admin API.
async fn follow_queued(grpc: String, token: String) -> anyhow::Result<Queued> {
    use admin::admin_service_client::AdminServiceClient;
    let mut client = AdminServiceClient::connect(format!("http://{grpc}")).await?;
    let request = admin::TailLogRequest { streams: vec!["routing".into()], follow: true, ..Default::default() };
    let mut stream = client.tail_log(bearer(request, &token)?).await?.into_inner();
    let queued: Queued = Arc::default();
    let seen = queued.clone();
    tokio::spawn(async move {
        while let Some(Ok(event)) = stream.next().await {
            if event.payload_type.ends_with(".StudyQueued") {
                seen.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(event.aggregate_id, Instant::now());
            }
        }
    });
    Ok(queued)
}

/// `studies` one-instance studies, each sent (acknowledged), completed,
/// and timed until its StudyQueued is seen; ms each.
async fn queue_latency(
    dicom_port: u16,
    ingest_grpc: &str,
    queued: &Queued,
    token: &str,
    studies: usize,
    dir: &Path,
    tag: usize,
) -> anyhow::Result<Vec<f64>> {
    use ingest::ingest_service_client::IngestServiceClient;
    let mut client = IngestServiceClient::connect(format!("http://{ingest_grpc}")).await?;
    let mut ms = Vec::new();
    for i in 0..studies {
        let study = format!("{STUDY}.{tag}.{i}");
        let file = write_ct(
            dir,
            &CtInstance {
                study_uid: &study,
                series_uid: &format!("{study}.1"),
                sop_uid: &format!("{study}.1.1"),
                patient_id: "MRN-LATENCY",
                // Not STAT: routing queues a STAT study at its first
                // instance, before any completion.
                priority: "",
                pixels: [i as u16, 1, 2, 3],
            },
        );
        send(dicom_port, &[file], 1)?;
        let acknowledged = Instant::now();
        let request = ingest::CompleteStudyRequest {
            study: Some(ingest::complete_study_request::Study::StudyInstanceUid(study.clone())),
        };
        let id = client.complete_study(bearer(request, token)?).await?.into_inner().study_id;
        let deadline = acknowledged + Duration::from_secs(60);
        loop {
            if let Some(at) = queued.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id) {
                ms.push(at.duration_since(acknowledged).as_secs_f64() * 1e3);
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "study {study} not queued within 60 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(ms)
}

/// Whether a QIDO-RS search of `study` on `http` (host:port) finds it.
async fn found(http: &str, token: &str, study: &str) -> anyhow::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(http).await?;
    let request = format!(
        "GET /dicomweb/studies?StudyInstanceUID={study} HTTP/1.1\r\nHost: {http}\r\n\
         Authorization: Bearer {token}\r\nAccept: application/dicom+json\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let raw = String::from_utf8_lossy(&raw);
    Ok(raw.starts_with("HTTP/1.1 200") && raw.contains(study))
}

/// `studies` one-instance studies sent to `dicom_port`, each timed from
/// its acknowledgement until storage's QIDO-RS on `http` finds it; ms.
async fn search_latency(
    dicom_port: u16,
    http: &str,
    token: &str,
    studies: usize,
    dir: &Path,
    tag: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut ms = Vec::new();
    for i in 0..studies {
        let study = format!("{STUDY}.{tag}.{i}");
        let file = meridian_integration_tests::dicom::one_instance_study(dir, &study, "MRN-SEARCH", "");
        send(dicom_port, &[file], 1)?;
        let acknowledged = Instant::now();
        while !found(http, token, &study).await? {
            anyhow::ensure!(acknowledged.elapsed() < Duration::from_secs(60), "{study} not found within 60 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ms.push(acknowledged.elapsed().as_secs_f64() * 1e3);
    }
    Ok(ms)
}

fn rates(label: &str, port: u16, n: usize, work: &Path, tag: usize) -> anyhow::Result<()> {
    for associations in [1, 4] {
        let dir = work.join(format!("set-{tag}-{associations}"));
        std::fs::create_dir_all(&dir)?;
        let (files, _) = slices(&dir, n, &format!("{STUDY}.{}", 200 + tag * 2 + usize::from(associations == 4)))?;
        let secs = send(port, &files, associations)?;
        println!("process   {label:<34} {:>5.0} instances/s over {associations} association(s)", n as f64 / secs);
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// Half of `files` to each port over two associations each, at once:
/// seconds until both halves are acknowledged.
fn send_split(ports: [u16; 2], files: &[PathBuf]) -> anyhow::Result<f64> {
    let (first, second) = files.split_at(files.len() / 2);
    let started = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let a = s.spawn(|| send(ports[0], first, 2));
        let b = s.spawn(|| send(ports[1], second, 2));
        for sent in [a.join(), b.join()] {
            sent.map_err(|_| anyhow::anyhow!("a sender panicked"))??;
        }
        Ok(())
    })?;
    Ok(started.elapsed().as_secs_f64())
}

/// The same four associations split over two ingest replicas, two each,
/// at once: instances/s over the whole set.
fn rates_split(label: &str, ports: [u16; 2], n: usize, work: &Path, tag: usize) -> anyhow::Result<()> {
    let dir = work.join(format!("set-{tag}-split"));
    std::fs::create_dir_all(&dir)?;
    let (files, _) = slices(&dir, n, &format!("{STUDY}.{}", 200 + tag * 2 + 1))?;
    let secs = send_split(ports, &files)?;
    println!("process   {label:<34} {:>5.0} instances/s over 4 associations, 2 to each", n as f64 / secs);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// `n` one-instance studies over four associations, two to each port.
fn many_studies(label: &str, ports: [u16; 2], n: usize, work: &Path, tag: usize) -> anyhow::Result<()> {
    let dir = work.join(format!("many-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let files: Vec<PathBuf> = (0..n)
        .map(|i| {
            meridian_integration_tests::dicom::one_instance_study(&dir, &format!("{STUDY}.{tag}.{i}"), "MRN-MANY", "")
        })
        .collect();
    let rate = n as f64 / send_split(ports, &files)?;
    println!("process   {label:<34} {rate:>5.0} instances/s, {n} one-instance studies over 4 associations");
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = arg("--count").and_then(|v| v.parse().ok()).unwrap_or(300);
    let studies: usize = arg("--studies").and_then(|v| v.parse().ok()).unwrap_or(30);
    let meridian = std::env::current_exe()?.with_file_name("meridian");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev");
    let work = tempfile::TempDir::new()?;
    println!("process   {n} CT slices of 512x512x16 bit per set; {studies} one-instance studies for latency");

    // meridian dev: every service of every region in one process.
    {
        let dir = work.path().join("dev");
        let mut dev = start_dev(&dir, &["--ports", "auto"])?;
        let endpoints: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("endpoints.json"))?)?;
        let tokens: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("tokens.json"))?)?;
        let port = endpoints["regions"]["us-east"]["dicom"]["port"].as_u64().unwrap_or_default() as u16;
        let grpc = endpoints["regions"]["us-east"]["grpc"].as_str().unwrap_or_default().to_owned();
        rates("meridian dev (embedded log)", port, n, work.path(), 0)?;
        let sre = tokens["principals"]["sre"]["token"].as_str().unwrap_or_default().to_owned();
        let pacs = tokens["principals"]["acme-pacs"]["token"].as_str().unwrap_or_default().to_owned();
        let queued = follow_queued(grpc.clone(), sre).await?;
        let files = work.path().join("latency-dev");
        std::fs::create_dir_all(&files)?;
        let ms = queue_latency(port, &grpc, &queued, &pacs, studies, &files, 1).await?;
        let (p50, p99) = percentiles(ms);
        println!("process   meridian dev: acknowledged → StudyQueued p50 {p50:.0} ms p99 {p99:.0} ms");
        println!("process   meridian dev peak RSS {:.0} MB", peak_rss_mb(dev.id()).unwrap_or_default());
        let _ = dev.kill();
        let _ = dev.wait();
    }

    // Ingest alone on tansu with local objects: what the Kafka log costs.
    {
        let tansu = Tansu::start();
        let dir = work.path().join("local");
        let (cluster, _) = Cluster::new(&meridian, &examples, &dir, &tansu, None);
        let ingest = cluster.start("ingest", None);
        rates("ingest process, tansu, local objects", ingest.dicom_port(), n, work.path(), 2)?;
        ingest.kill();
    }

    // Two ingest replicas on tansu and a moto bucket (replicas share the
    // region's object store), beside one on the same parts.
    {
        let tansu = Tansu::start();
        let moto = Moto::start("unused");
        let dir = work.path().join("replicas");
        let (cluster, _) = Cluster::new(&meridian, &examples, &dir, &tansu, Some(&moto));
        let one = cluster.start("ingest", None);
        rates_split("one ingest process, tansu, moto", [one.dicom_port(); 2], n, work.path(), 5)?;
        many_studies("one ingest process, tansu, moto", [one.dicom_port(); 2], n, work.path(), 8)?;
        one.kill();
        // The slices are one study: one replica owns it and the other
        // hands every arrival it stores to that owner.
        let replicas = cluster.start_ingest_replicas("us-east", 2);
        let ports = [replicas[0].dicom_port(), replicas[1].dicom_port()];
        rates_split("two ingest replicas, tansu, moto", ports, n, work.path(), 6)?;
        // Many studies: each replica owns about half of them.
        many_studies("two ingest replicas, tansu, moto", ports, n, work.path(), 7)?;
        for r in replicas {
            r.kill();
        }
    }

    // The split: routing, storage and ingest on tansu and a moto bucket.
    let tansu = Tansu::start();
    let moto = Moto::start("unused");
    let dir = work.path().join("split");
    let (cluster, tokens) = Cluster::new(&meridian, &examples, &dir, &tansu, Some(&moto));
    let mut services = BTreeMap::new();
    for name in ["routing", "storage", "ingest"] {
        services.insert(name, cluster.start(name, None));
    }
    let port = services["ingest"].dicom_port();
    rates("ingest process, tansu, moto bucket", port, n, work.path(), 4)?;
    let queued = follow_queued(services["routing"].grpc(), tokens["sre"].clone()).await?;
    let files = work.path().join("latency-split");
    std::fs::create_dir_all(&files)?;
    let ms = queue_latency(port, &services["ingest"].grpc(), &queued, &tokens["acme-pacs"], studies, &files, 2).await?;
    let (p50, p99) = percentiles(ms);
    println!("process   separate processes: acknowledged → StudyQueued p50 {p50:.0} ms p99 {p99:.0} ms");
    let files = work.path().join("search-split");
    std::fs::create_dir_all(&files)?;
    let ms = search_latency(port, &services["storage"].http(), &tokens["acme-pacs"], studies, &files, 3).await?;
    let (p50, p99) = percentiles(ms);
    println!("process   separate processes: acknowledged → found by storage's QIDO-RS p50 {p50:.0} ms p99 {p99:.0} ms");
    for (name, service) in &services {
        println!("process   {name:<8} peak RSS {:.0} MB", peak_rss_mb(service.child.id()).unwrap_or_default());
    }
    // SIGKILL → ready again, per service.
    for name in ["routing", "storage", "ingest"] {
        let Some(service) = services.remove(name) else { continue };
        let killed = Instant::now();
        service.kill();
        let again = cluster.start(name, None);
        // The probe's HTTP client runs its own runtime: off this one.
        std::thread::scope(|s| {
            s.spawn(|| wait_until("ready after the restart", 120, || ready(&again).0.then_some(())));
        });
        println!("process   {name:<8} SIGKILL → ready again in {:.1} s", killed.elapsed().as_secs_f64());
        services.insert(name, again);
    }
    Ok(())
}
