//! De-identification throughput (docs/benchmarks.md), on N CT slices of
//! 512×512×16 bit (≈ 0.5 MB each):
//!
//! 1. Meridian's PS3.15 Basic Profile (with the modified-dates and patient
//!    characteristics options, as the example contract) on the Part-10
//!    bytes in memory, on one thread and on two; beside it the
//!    `dicom-anonymizer` package (2026c rules, pydicom read and write, one
//!    process) on the same files. Three runs each, medians.
//! 2. End to end in `meridian dev`: the set sent to eu-west (`meridian
//!    send`), the study completed by gRPC, and the time until every
//!    derivative object is in in-south's store (read, de-identify, write
//!    with fsync).
//!
//!   unshare -n sh -c 'ip link set lo up && target/release/deid-bench --count 1000'

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use meridian_events::TenantSecret;
use meridian_integration_tests::bench::{MkDir, arg, slices, start_dev};
use meridian_integration_tests::venv_bin;
use meridian_storage::deidentify::{Profile, ProfileOption};

const ORACLE: &str = r#"
import sys, time, io, pydicom
from dicomanonymizer.simpledicomanonymizer import anonymize_dataset, initialize_actions
files = sys.argv[1:]
started = time.perf_counter()
for f in files:
    ds = pydicom.dcmread(f)
    anonymize_dataset(ds, base_rules_gen=lambda: initialize_actions("dicomfields_2026c"))
    ds.save_as(io.BytesIO())
print(time.perf_counter() - started)
"#;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn meridian_seconds(profile: &Profile, files: &[Vec<u8>], threads: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(files.len().div_ceil(threads))
            .map(|chunk| scope.spawn(move || chunk.iter().try_for_each(|f| profile.deidentify(f).map(|_| ()))))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(|_| anyhow::anyhow!("a thread panicked"))?.map_err(anyhow::Error::from))
    })?;
    Ok(started.elapsed().as_secs_f64())
}

fn oracle_seconds(files: &[PathBuf]) -> anyhow::Result<f64> {
    let out = Command::new(venv_bin().join("python")).arg("-c").arg(ORACLE).args(files).output()?;
    anyhow::ensure!(out.status.success(), "dicom-anonymizer: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}

fn end_to_end(dir: &Path, files_dir: &Path, count: usize) -> anyhow::Result<f64> {
    let mut dev = start_dev(dir, &["--ports", "auto"])?;
    let result = (|| {
        let meridian = std::env::current_exe()?.with_file_name("meridian");
        let sent = Command::new(&meridian)
            .args(["send", "--region", "eu-west", "--as", "northwind-pacs", "--data-dir"])
            .arg(dir)
            .arg(files_dir)
            .output()?;
        anyhow::ensure!(sent.status.success(), "meridian send: {}", String::from_utf8_lossy(&sent.stdout));
        let endpoints: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("endpoints.json"))?)?;
        let tokens: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("tokens.json"))?)?;
        let grpc = format!("http://{}", endpoints["regions"]["eu-west"]["grpc"].as_str().unwrap_or_default());
        let token = tokens["principals"]["northwind-pacs"]["token"].as_str().unwrap_or_default().to_owned();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let started = runtime.block_on(async {
            use meridian_proto::ingest::v1 as ipb;
            let channel = tonic::transport::Channel::from_shared(grpc)?.connect().await?;
            let mut request = tonic::Request::new(ipb::CompleteStudyRequest {
                study: Some(ipb::complete_study_request::Study::StudyInstanceUid(
                    meridian_integration_tests::bench::STUDY.into(),
                )),
            });
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
            let started = Instant::now();
            ipb::ingest_service_client::IngestServiceClient::new(channel).complete_study(request).await?;
            anyhow::Ok(started)
        })?;
        let destination = dir.join("in-south/objects/deid");
        let deadline = Instant::now() + Duration::from_secs(600);
        while count_files(&destination) < count {
            anyhow::ensure!(Instant::now() < deadline, "derivatives incomplete after 600 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(started.elapsed().as_secs_f64())
    })();
    let _ = dev.kill();
    let _ = dev.wait();
    result
}

fn main() -> anyhow::Result<()> {
    let count: usize = arg("--count").map(|c| c.parse()).transpose()?.unwrap_or(1000);
    let runs: usize = arg("--runs").map(|c| c.parse()).transpose()?.unwrap_or(3);
    let root = tempfile::TempDir::new()?;
    let (paths, bytes) = slices(&root.path().join("slices").tap_mkdir()?, count, "1.2.826.0.1.3680043.10.543.2026.1")?;
    let files: Vec<Vec<u8>> = paths.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let mb = bytes as f64 / 1e6;
    let secret = TenantSecret::new(vec![5; 32])?;
    let options = [ProfileOption::RetainLongitudinalModifiedDates, ProfileOption::RetainPatientCharacteristics];
    let profile = Profile::new(&secret, "northwind-lotus", &options);
    println!("{count} slices, {mb:.0} MB");

    let (mut one, mut two, mut oracle) = (Vec::new(), Vec::new(), Vec::new());
    for run in 1..=runs {
        one.push(meridian_seconds(&profile, &files, 1)?);
        two.push(meridian_seconds(&profile, &files, 2)?);
        oracle.push(oracle_seconds(&paths)?);
        println!(
            "run {run}: meridian 1 thread {:.2} s, 2 threads {:.2} s, dicom-anonymizer {:.2} s",
            one[run - 1],
            two[run - 1],
            oracle[run - 1]
        );
    }
    for (name, secs) in [
        ("meridian, 1 thread", median(one)),
        ("meridian, 2 threads", median(two)),
        ("dicom-anonymizer 2.1.0 (Python, 1 process)", median(oracle)),
    ] {
        println!("{name}: {:.0} instances/s, {:.0} MB/s", count as f64 / secs, mb / secs);
    }
    let secs = end_to_end(&root.path().join("dev").tap_mkdir()?, &root.path().join("slices"), count)?;
    println!(
        "end to end (completed -> {count} derivative objects in in-south): {secs:.2} s, {:.0} instances/s, {:.0} MB/s",
        count as f64 / secs,
        mb / secs
    );
    Ok(())
}
