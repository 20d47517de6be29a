//! Click → first image of a `--slices`-slice CT (512×512×16 bit) in OHIF,
//! through Meridian's reading room beside the same OHIF build on Orthanc's
//! DICOMweb plugin, in Debian's chromium (`integration-tests/browser/
//! viewer-bench.mjs`), `--runs` runs each, alternating, on loopback. The
//! study is sent to both with storescu first; Meridian pushes it to
//! dr-ana-ortiz, who opens it from her worklist.
//!
//!   cargo build --release -p meridian -p meridian-integration-tests
//!   MERIDIAN_PLAYWRIGHT=… MERIDIAN_CHROMIUM=/usr/bin/chromium MERIDIAN_VIEWER=… \
//!     target/release/viewer-bench --slices 500 --runs 5

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use meridian_integration_tests::bench::{DevFiles, MkDir, STUDY, arg, slices, start_dev_configured, start_orthanc};
use meridian_proto::ingest::v1 as ingest;

const ORTHANC_DICOMWEB: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";

fn bearer<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = arg("--slices").and_then(|v| v.parse().ok()).unwrap_or(500);
    let runs: usize = arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(5);
    let playwright = std::env::var("MERIDIAN_PLAYWRIGHT")?;
    let chromium = std::env::var("MERIDIAN_CHROMIUM")?;
    let viewer = std::env::var("MERIDIAN_VIEWER")?;
    anyhow::ensure!(Path::new(ORTHANC_DICOMWEB).exists(), "apt-get install orthanc orthanc-dicomweb");
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev");
    let work = tempfile::TempDir::new()?;
    let config = work.path().join("config");
    meridian_integration_tests::one_reader_examples(&examples, &config);
    let dir = work.path().join("dev");
    let mut dev = start_dev_configured(&dir, &config, &["--ports", "auto"])?;
    let files = DevFiles::read(&dir)?;
    let orthanc_port = meridian_integration_tests::free_port();
    let dicomweb = serde_json::json!({"DicomWeb": {"Enable": true, "Root": "/dicom-web/"}});
    let orthanc_dir = work.path().join("orthanc").tap_mkdir()?;
    let mut orthanc = start_orthanc(&orthanc_dir, orthanc_port, &[ORTHANC_DICOMWEB], dicomweb)?
        .ok_or_else(|| anyhow::anyhow!("Orthanc is not installed"))?;

    let series = format!("{STUDY}.1");
    let (cts, bytes) = slices(&work.path().join("slices").tap_mkdir()?, n, &series)?;
    let sent = Instant::now();
    meridian_integration_tests::bench::send_parallel(
        files.dicom_port("us-east"),
        "ACME_CT1",
        "MERIDIAN_ACME",
        &cts,
        1,
    )?;
    meridian_integration_tests::bench::send_parallel(orthanc_port, "BENCH", "ORTHANC", &cts, 1)?;
    println!("viewer    {n} slices ({} MB) stored in both in {:.1} s", bytes / 1_000_000, sent.elapsed().as_secs_f64());
    let mut ingest_client = meridian_proto::ingest::v1::ingest_service_client::IngestServiceClient::connect(format!(
        "http://{}",
        files.grpc("us-east")
    ))
    .await?;
    let request = ingest::CompleteStudyRequest {
        study: Some(ingest::complete_study_request::Study::StudyInstanceUid(STUDY.into())),
    };
    let study = ingest_client.complete_study(bearer(request, &files.token("acme-pacs"))?).await?.into_inner().study_id;
    // Pushed to her (one reader, always on shift), then opened.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let out = Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/viewer-bench.mjs"))
        .arg(files.http("us-east"))
        .arg(format!("http://127.0.0.1:{}", orthanc_port + 1))
        .arg(&viewer)
        .arg(STUDY)
        .arg(&study)
        .arg(runs.to_string())
        .env("MERIDIAN_PLAYWRIGHT", playwright)
        .env("MERIDIAN_CHROMIUM", chromium)
        .stderr(Stdio::inherit())
        .output()?;
    let _ = (dev.kill(), orthanc.kill());
    let _ = (dev.wait(), orthanc.wait());
    let said = String::from_utf8_lossy(&out.stdout);
    let json = said.lines().find_map(|l| l.strip_prefix("done ")).ok_or_else(|| anyhow::anyhow!("{said}"))?;
    let result: serde_json::Value = serde_json::from_str(json)?;
    let ms = |name: &str| -> Vec<f64> {
        result[name].as_array().map(|a| a.iter().filter_map(serde_json::Value::as_f64).collect()).unwrap_or_default()
    };
    let (meridian, orthanc) = (ms("meridian"), ms("orthanc"));
    println!("viewer    click → first image, {n}-slice CT, {runs} runs each (ms):");
    println!("viewer      meridian (reading room): {meridian:?}, median {:.0}", median(&meridian));
    println!("viewer      OHIF on Orthanc's DICOMweb: {orthanc:?}, median {:.0}", median(&orthanc));
    Ok(())
}
