//! The reading room's figures (docs/benchmarks.md), in a real browser:
//! dr-priya-nair's worklist in in-south's room, open in Debian's chromium
//! (playwright-core, `integration-tests/browser/room-bench.mjs`), while
//! `--studies` acme studies are sent to us-east and completed one after
//! another. For each: from its last C-STORE acknowledged and CompleteStudy
//! answered, and from the moment in-south's routing put it on her
//! worklist (as a WatchWorklist stream of this bench's own sees it), to
//! its row in the page (the room's server-sent event, its rows fetched
//! and drawn). Also the worklist's first paint and the page's own bytes.
//!
//!   cargo build --release -p meridian -p meridian-integration-tests
//!   MERIDIAN_PLAYWRIGHT=… MERIDIAN_CHROMIUM=/usr/bin/chromium target/release/room-bench --studies 100

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meridian_integration_tests::bench::{STUDY, arg, percentiles, start_dev_nair_on_pull};
use meridian_proto::ingest::v1 as ingest;
use meridian_proto::routing::v1 as routing;
use tokio_stream::StreamExt;

fn bearer<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

#[allow(clippy::disallowed_methods)] // a bench's wall clock, compared with the browser's
fn unix_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

type Seen = Arc<Mutex<BTreeMap<String, f64>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let studies: usize = arg("--studies").and_then(|v| v.parse().ok()).unwrap_or(100);
    let playwright = std::env::var("MERIDIAN_PLAYWRIGHT")?;
    let chromium = std::env::var("MERIDIAN_CHROMIUM")?;
    let work = tempfile::TempDir::new()?;
    // meridian dev: every region in one process, the replicator between them.
    let (mut dev, files) = start_dev_nair_on_pull(work.path())?;
    let token = |p: &str| files.token(p);
    let port = files.dicom_port("us-east");
    let (us_east, in_south, room) = (files.grpc("us-east"), files.grpc("in-south"), files.http("in-south"));

    let mut browser = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/room-bench.mjs"))
        .arg(&room)
        .env("MERIDIAN_PLAYWRIGHT", playwright)
        .env("MERIDIAN_CHROMIUM", chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let rows: Seen = Arc::default();
    let seen = rows.clone();
    let out = browser.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(json) = line.strip_prefix("ready ") {
                let _ = ready_tx.send(json.to_owned());
            } else if let Some(row) = line.strip_prefix("row ") {
                let mut parts = row.split(' ');
                if let (Some(study), Some(at)) = (parts.next(), parts.next().and_then(|a| a.parse::<f64>().ok())) {
                    seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(study.to_owned(), at);
                }
            }
        }
    });
    let paint = ready_rx.recv_timeout(Duration::from_secs(60))?;

    // When in-south's routing shows each study on her worklist.
    let entered: Seen = Arc::default();
    let mut client =
        routing::routing_service_client::RoutingServiceClient::connect(format!("http://{in_south}")).await?;
    let request = routing::WatchWorklistRequest { reader_id: "dr-priya-nair".into(), page_size: 1_000 };
    let mut pages = client.watch_worklist(bearer(request, &token("dr-nair"))?).await?.into_inner();
    let on_list = entered.clone();
    tokio::spawn(async move {
        while let Some(Ok(page)) = pages.next().await {
            let at = unix_ms();
            let mut on_list = on_list.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for id in page.entered_study_ids {
                on_list.entry(id).or_insert(at);
            }
        }
    });

    let mut ingest_client =
        ingest::ingest_service_client::IngestServiceClient::connect(format!("http://{us_east}")).await?;
    let pacs = token("acme-pacs");
    let studies_dir = work.path().join("studies");
    std::fs::create_dir_all(&studies_dir)?;
    let (mut from_ack, mut from_list) = (Vec::new(), Vec::new());
    for i in 0..studies {
        let study = format!("{STUDY}.23.{i}");
        let file = meridian_integration_tests::dicom::one_instance_study(&studies_dir, &study, "MRN-ROOM", "");
        meridian_integration_tests::bench::send_parallel(port, "ACME_CT1", "MERIDIAN_ACME", &[file], 1)?;
        let acknowledged = unix_ms();
        let request = ingest::CompleteStudyRequest {
            study: Some(ingest::complete_study_request::Study::StudyInstanceUid(study.clone())),
        };
        let id = ingest_client.complete_study(bearer(request, &pacs)?).await?.into_inner().study_id;
        loop {
            let row = rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id).copied();
            let listed = entered.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&id).copied();
            if let (Some(row), Some(listed)) = (row, listed) {
                from_ack.push(row - acknowledged);
                from_list.push(row - listed);
                break;
            }
            anyhow::ensure!(unix_ms() - acknowledged < 60_000.0, "{study} not in the page in 60 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    drop(browser.stdin.take());
    let _ = browser.wait();
    let _ = dev.kill();
    let _ = dev.wait();
    println!("room      worklist page: {paint}");
    for (label, ms) in [
        ("last C-STORE acknowledged + CompleteStudy → its row in her page (in-south)", from_ack),
        ("on her worklist in in-south's routing → its row in her page (the room's own part)", from_list),
    ] {
        let n = ms.len();
        let (p50, p99) = percentiles(ms);
        println!("room      {label}, {n} studies: p50 {p50:.0} ms p99 {p99:.0} ms");
    }
    Ok(())
}
