//! Regions end to end (docs/benchmarks.md): an acme study's last C-STORE
//! acknowledged in us-east and its CompleteStudy answered → the study on
//! the eligible reader's worklist in another region (dr-priya-nair, who
//! sits in in-south: through the replicator's copy of us-east's routing
//! events and in-south's routing, as her WatchWorklist stream shows it),
//! p50/p99 over `--studies` studies, on `meridian dev` (its resident
//! memory idle and after the load), and as processes on two tansu brokers
//! (us-east's ingest and routing on one; in-south's routing on the other;
//! `meridian serve replicator --region in-south` between them).
//!
//!   cargo build --release -p meridian -p meridian-integration-tests
//!   target/release/region-bench --studies 200
//!
//! The `meridian` binary is taken from beside this one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_integration_tests::Tansu;
use meridian_integration_tests::bench::{STUDY, arg, peak_rss_mb, percentiles, start_dev_nair_on_pull};
use meridian_integration_tests::processes::Cluster;
use meridian_proto::ingest::v1 as ingest;
use meridian_proto::routing::v1 as routing;
use tokio_stream::StreamExt;

fn bearer<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

/// When each study entered the watched worklist.
type Entered = Arc<Mutex<BTreeMap<String, Instant>>>;

/// Watches `reader`'s worklist on `grpc` (host:port) as `token`.
async fn watch(grpc: &str, reader: &str, token: &str) -> anyhow::Result<Entered> {
    use routing::routing_service_client::RoutingServiceClient;
    let mut client = RoutingServiceClient::connect(format!("http://{grpc}")).await?;
    let request = routing::WatchWorklistRequest { reader_id: reader.into(), page_size: 1_000 };
    let mut pages = client.watch_worklist(bearer(request, token)?).await?.into_inner();
    let entered: Entered = Arc::default();
    let seen = entered.clone();
    tokio::spawn(async move {
        while let Some(Ok(page)) = pages.next().await {
            let at = Instant::now();
            let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for id in page.entered_study_ids {
                seen.entry(id).or_insert(at);
            }
        }
    });
    Ok(entered)
}

/// Resident memory now, MB.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<f64>().ok()? / 1024.0)
}

/// `studies` one-instance studies sent to us-east's DICOM `port`, each
/// completed through us-east's ingest at `ingest` (host:port), and timed
/// from its acknowledgement until in-south's routing at `in_south` shows it
/// on dr-priya-nair's watched worklist; ms each.
#[allow(clippy::too_many_arguments)]
async fn latencies(
    port: u16,
    ingest: &str,
    in_south: &str,
    nair: &str,
    pacs: &str,
    studies: usize,
    work: &Path,
    tag: usize,
) -> anyhow::Result<Vec<f64>> {
    let entered = watch(in_south, "dr-priya-nair", nair).await?;
    let mut client = ingest::ingest_service_client::IngestServiceClient::connect(format!("http://{ingest}")).await?;
    let files = work.join(format!("studies-{tag}"));
    std::fs::create_dir_all(&files)?;
    let mut ms = Vec::with_capacity(studies);
    for i in 0..studies {
        let study = format!("{STUDY}.22.{tag}.{i}");
        // Not STAT: a STAT study is queued at its first instance.
        let file = meridian_integration_tests::dicom::one_instance_study(&files, &study, "MRN-REGIONS", "");
        meridian_integration_tests::bench::send_parallel(port, "ACME_CT1", "MERIDIAN_ACME", &[file], 1)?;
        let acknowledged = Instant::now();
        let request = ingest::CompleteStudyRequest {
            study: Some(ingest::complete_study_request::Study::StudyInstanceUid(study.clone())),
        };
        let id = client.complete_study(bearer(request, pacs)?).await?.into_inner().study_id;
        loop {
            if let Some(at) = entered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id) {
                ms.push(at.duration_since(acknowledged).as_secs_f64() * 1e3);
                break;
            }
            anyhow::ensure!(acknowledged.elapsed() < Duration::from_secs(60), "{study} not on her worklist in 60 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(ms)
}

fn report(label: &str, ms: &[f64]) {
    let (p50, p99) = percentiles(ms.to_vec());
    let max = ms.iter().copied().fold(0.0, f64::max);
    println!(
        "regions   {label}, {} studies: acknowledged + CompleteStudy → on dr-priya-nair's worklist in in-south: \
         p50 {p50:.0} ms p99 {p99:.0} ms max {max:.0} ms",
        ms.len()
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let studies: usize = arg("--studies").and_then(|v| v.parse().ok()).unwrap_or(200);
    let work = tempfile::TempDir::new()?;
    // meridian dev: every region in one process, the replicator between them.
    let (mut dev, files) = start_dev_nair_on_pull(work.path())?;
    let token = |p: &str| files.token(p);
    let port = files.dicom_port("us-east");
    let (us_east, in_south) = (files.grpc("us-east"), files.grpc("in-south"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_mb(dev.id()).unwrap_or_default();
    let (nair, pacs) = (token("dr-nair"), token("acme-pacs"));
    let ms = latencies(port, &us_east, &in_south, &nair, &pacs, studies, work.path(), 1).await?;
    let loaded = rss_mb(dev.id()).unwrap_or_default();
    let peak = peak_rss_mb(dev.id()).unwrap_or_default();
    report("meridian dev (embedded logs)", &ms);
    println!(
        "regions   meridian dev resident memory: idle {idle:.0} MB, after the load {loaded:.0} MB, peak {peak:.0} MB"
    );
    let _ = dev.kill();
    let _ = dev.wait();

    // The same across processes and brokers.
    let (tansu, other) = (Tansu::start(), Tansu::start());
    let meridian = std::env::current_exe()?.with_file_name("meridian");
    let (cluster, tokens) =
        Cluster::new(&meridian, &work.path().join("config"), &work.path().join("processes"), &tansu, None);
    cluster.on_broker("in-south", &other);
    let ingest = cluster.start("ingest", None);
    let routing = cluster.start("routing", None);
    let south = cluster.start_in("in-south", "routing", None, "");
    let replicator = cluster.start_in("in-south", "replicator", None, "");
    let (nair, pacs) = (&tokens["dr-nair"], &tokens["acme-pacs"]);
    let ms = latencies(ingest.dicom_port(), &ingest.grpc(), &south.grpc(), nair, pacs, studies, work.path(), 2).await?;
    report("processes on two tansu brokers", &ms);
    for service in [&ingest, &routing, &south, &replicator] {
        let peak = peak_rss_mb(service.child.id()).unwrap_or_default();
        println!("regions   {} process peak RSS {peak:.0} MB", service.name);
    }
    for service in [ingest, routing, south, replicator] {
        service.kill();
    }
    Ok(())
}
