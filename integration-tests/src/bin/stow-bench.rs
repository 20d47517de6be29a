//! STOW-RS throughput (docs/benchmarks.md): N CT slices of 512×512×16 bit
//! (≈ 0.5 MB each) posted over loopback in requests of 1 and of 50
//! instances, one request at a time, to `meridian dev` (us-east, as the
//! acme-pacs principal) and to Orthanc with its DICOMweb plugin (default
//! SQLite index and filesystem storage); three runs, interleaved, each on
//! fresh UIDs; medians. Then the same set through `meridian send` (the
//! gRPC upload, one stream) to the same region.
//!
//!   unshare -n sh -c 'ip link set lo up && target/release/stow-bench --count 1000'
//!
//! The `meridian` binary is taken from beside this one (same target dir).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use meridian_integration_tests::bench::{MkDir, STUDY, arg, slices, start_dev, start_orthanc};

const ORTHANC_DICOMWEB: &str = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so";
const BOUNDARY: &str = "meridian-stow-bench";

struct Target {
    name: &'static str,
    child: Child,
    addr: String,
    path: &'static str,
    token: Option<String>,
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One multipart/related body per request of `per` files.
fn bodies(files: &[PathBuf], per: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    files
        .chunks(per)
        .map(|chunk| {
            let mut body = Vec::new();
            for f in chunk {
                body.extend(format!("--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes());
                body.extend(std::fs::read(f)?);
                body.extend(b"\r\n");
            }
            body.extend(format!("--{BOUNDARY}--\r\n").as_bytes());
            Ok(body)
        })
        .collect()
}

/// POSTs each body in turn; returns seconds.
fn post_all(target: &Target, bodies: &[Vec<u8>]) -> anyhow::Result<f64> {
    let started = Instant::now();
    for body in bodies {
        let mut stream = std::net::TcpStream::connect(&target.addr)?;
        stream.set_nodelay(true)?;
        let auth = target.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\n{auth}Accept: application/dicom+json\r\n\
             Content-Type: multipart/related; type=\"application/dicom\"; boundary={BOUNDARY}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            target.path,
            target.addr,
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let status =
            String::from_utf8_lossy(&answer[..answer.len().min(16)]).split(' ').nth(1).unwrap_or("").to_owned();
        anyhow::ensure!(status == "200", "{} answered {status}: {}", target.name, String::from_utf8_lossy(&answer));
    }
    Ok(started.elapsed().as_secs_f64())
}

fn start_targets(dir: &Path, port_base: u16) -> anyhow::Result<Vec<Target>> {
    let mut targets = Vec::new();
    let meridian_dir = dir.join("meridian").tap_mkdir()?;
    let child = start_dev(&meridian_dir, &["--port-base", &port_base.to_string()])?;
    let endpoints: serde_json::Value = serde_json::from_slice(&std::fs::read(meridian_dir.join("endpoints.json"))?)?;
    let tokens: serde_json::Value = serde_json::from_slice(&std::fs::read(meridian_dir.join("tokens.json"))?)?;
    let addr = endpoints["regions"]["us-east"]["http"].as_str().unwrap_or("").trim_start_matches("http://").to_owned();
    let token = tokens["principals"]["acme-pacs"]["token"].as_str().map(str::to_owned);
    targets.push(Target { name: "meridian", child, addr, path: "/dicomweb/studies", token });
    let orthanc_dir = dir.join("orthanc").tap_mkdir()?;
    let dicomweb = serde_json::json!({"DicomWeb": {"Enable": true, "Root": "/dicom-web/"}});
    let port = port_base + 8;
    let orthanc = if Path::new(ORTHANC_DICOMWEB).exists() {
        start_orthanc(&orthanc_dir, port, &[ORTHANC_DICOMWEB], dicomweb)?
    } else {
        None
    };
    match orthanc {
        Some(child) => {
            let addr = format!("127.0.0.1:{}", port + 1);
            targets.push(Target { name: "orthanc", child, addr, path: "/dicom-web/studies", token: None });
        }
        _ => println!(
            "stow      orthanc with its DICOMweb plugin: not installed (apt-get install orthanc-dicomweb); left out"
        ),
    }
    Ok(targets)
}

fn main() -> anyhow::Result<()> {
    let n: usize = arg("--count").and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let runs: usize = arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(3);
    let work = tempfile::TempDir::new()?;
    let port_base = 25_000 + (std::process::id() % 500) as u16 * 10;
    let mut rates: std::collections::BTreeMap<(usize, &str), Vec<f64>> = Default::default();
    let mut mb = 0.0;
    for run in 0..runs {
        let run_dir = work.path().join(format!("run-{run}")).tap_mkdir()?;
        let targets = start_targets(&run_dir, port_base + (run as u16 % 3) * 100)?;
        for (k, per) in [1, 50].into_iter().enumerate() {
            // Fresh UIDs for each run and request size; the same set for every target.
            let set = work.path().join(format!("set-{run}-{per}")).tap_mkdir()?;
            let (files, bytes) = slices(&set, n, &format!("{STUDY}.{}", 300 + run * 2 + k))?;
            mb = bytes as f64 / 1e6;
            let bodies = bodies(&files, per)?;
            for target in &targets {
                let secs = post_all(target, &bodies)?;
                rates.entry((per, target.name)).or_default().push(n as f64 / secs);
            }
            std::fs::remove_dir_all(&set)?;
        }
        // The gRPC upload: `meridian send` of a fresh set, one stream.
        let set = work.path().join(format!("set-{run}-grpc")).tap_mkdir()?;
        slices(&set, n, &format!("{STUDY}.{}", 400 + run))?;
        let started = Instant::now();
        let sent = Command::new(std::env::current_exe()?.with_file_name("meridian"))
            .args(["send", "--region", "us-east", "--as", "acme-pacs", "--data-dir"])
            .arg(run_dir.join("meridian"))
            .arg(&set)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        anyhow::ensure!(sent.success(), "meridian send failed");
        rates.entry((0, "meridian (gRPC upload)")).or_default().push(n as f64 / started.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&set)?;
        drop(targets);
        std::fs::remove_dir_all(&run_dir)?;
    }
    println!("stow      {n} CT slices of 512x512x16 bit, {mb:.0} MB, one request at a time over loopback");
    for ((per, name), all) in &rates {
        let mut sorted = all.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let shown: Vec<String> = all.iter().map(|r| format!("{r:.0}")).collect();
        let per = if *per == 0 { "stream".to_owned() } else { format!("{per:>2} per request") };
        println!(
            "stow      {per:<14} {name:<9} median {median:>5.0} instances/s {:>6.1} MB/s; runs: {}",
            median * mb / n as f64,
            shown.join(", ")
        );
    }
    Ok(())
}
