//! C-STORE throughput (docs/benchmarks.md): dcmtk's `storescu` sends N CT
//! slices of 512×512×16 bit (≈ 0.5 MB) over loopback, with TCP_NODELAY, to
//! `meridian dev` (us-east), to dcmtk's bare `storescp` writing plain files
//! (the ceiling that sender and disk allow), and to Orthanc when it is
//! installed (default SQLite index and filesystem storage); (a) on one
//! association, (b) on four in parallel. Also the peak memory of the
//! meridian process during (b).
//!
//! Then DICOMweb on the meridian region that took (a)'s 1,000-instance
//! series: WADO-RS first-byte latency of one instance, WADO-RS series
//! metadata and QIDO-RS instance search of the series (p50/p99).
//!
//! Orthanc listens on every interface, so run the bench in a private
//! network namespace:
//!
//!   unshare -n sh -c 'ip link set lo up && target/release/ingest-bench --count 1000'
//!
//! The `meridian` binary is taken from beside this one (same target dir).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use meridian_integration_tests::bench::{
    MkDir, STUDY, arg, peak_rss_mb, percentiles, slices, start_dev, start_orthanc, timed_get, wait_for_port,
};

fn send(port: u16, calling: &str, called: &str, files: &[PathBuf], associations: usize) -> anyhow::Result<f64> {
    meridian_integration_tests::bench::send_parallel(port, calling, called, files, associations)
}

struct Peer {
    name: &'static str,
    fsync: &'static str,
    child: Child,
    port: u16,
    calling: &'static str,
    called: &'static str,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let n: usize = arg("--count").and_then(|v| v.parse().ok()).unwrap_or(1_000);
    if let Some(dir) = arg("--write-only") {
        // The slices alone, for sending by hand (or under a profiler).
        let (files, bytes) = slices(&PathBuf::from(dir).tap_mkdir()?, n, &format!("{STUDY}.1"))?;
        println!("wrote {} slices, {} MB", files.len(), bytes / 1_000_000);
        return Ok(());
    }
    let work = tempfile::TempDir::new()?;
    let (files, bytes) = slices(&work.path().join("slices").tap_mkdir()?, n, &format!("{STUDY}.1"))?;
    let mb = bytes as f64 / 1e6;
    println!("ingest    {n} CT slices of 512x512x16 bit, {mb:.0} MB, storescu over loopback with TCP_NODELAY=1");

    let runs: usize = arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(3);
    let port_base = 24_000 + (std::process::id() % 1_000) as u16 * 10;
    // (mode, peer) → instances/s of each run; peak RSS of meridian in (b).
    let mut rates: std::collections::BTreeMap<(&str, &str), Vec<f64>> = Default::default();
    let mut rss = Vec::new();
    let mut fsync_policies = Vec::new();
    let mut last_meridian = None;
    for run in 0..runs {
        let run_dir = work.path().join(format!("run-{run}")).tap_mkdir()?;
        let peers = start_peers(&run_dir, port_base + (run as u16 % 3) * 100)?;
        fsync_policies = peers.iter().map(|p| (p.name, p.fsync)).collect();
        // Interleaved: (a) for every peer, then (b) for every peer, each
        // run on fresh UIDs (the peers of a run share a set).
        for (mode, associations) in [("a", 1), ("b", 4)] {
            let set = if run == 0 && mode == "a" {
                files.clone()
            } else {
                let dir = work.path().join(format!("set-{run}-{mode}")).tap_mkdir()?;
                slices(&dir, n, &format!("{STUDY}.{}", 100 + run * 2 + usize::from(mode == "b")))?.0
            };
            for peer in &peers {
                let secs = send(peer.port, peer.calling, peer.called, &set, associations)?;
                rates.entry((mode, peer.name)).or_default().push(n as f64 / secs);
                if peer.name == "meridian" && associations == 4 {
                    rss.extend(peak_rss_mb(peer.child.id()));
                }
            }
        }
        drop(peers);
        if run + 1 == runs {
            last_meridian = Some(run_dir.join("meridian"));
        } else {
            std::fs::remove_dir_all(&run_dir)?;
        }
        for mode in ["a", "b"] {
            let _ = std::fs::remove_dir_all(work.path().join(format!("set-{run}-{mode}")));
        }
    }
    for ((mode, peer), all) in &rates {
        let mut sorted = all.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let shown: Vec<String> = all.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "ingest    ({mode}) {peer:<9} median {median:>5.0} instances/s {:>6.1} MB/s over {} association(s); runs: {}",
            median * mb / n as f64,
            if *mode == "a" { 1 } else { 4 },
            shown.join(", ")
        );
    }
    if let Some(peak) = rss.iter().copied().reduce(f64::max) {
        println!("ingest    meridian peak RSS during (b): {peak:.0} MB");
    }
    for (name, fsync) in fsync_policies {
        println!("ingest    {name} fsync policy: {fsync}");
    }
    // The written data is flushed first, so the reads below do not share
    // the disk with writeback.
    Command::new("sync").status()?;
    // The last run's (a) series: the original files' in a single run.
    let series = if runs <= 1 { format!("{STUDY}.1") } else { format!("{STUDY}.{}", 100 + (runs - 1) * 2) };
    match last_meridian {
        Some(dir) => dicomweb_figures(&dir, n, &series),
        None => Ok(()),
    }
}

/// Starts meridian dev, storescp and (when installed) Orthanc in `dir`.
fn start_peers(dir: &Path, port_base: u16) -> anyhow::Result<Vec<Peer>> {
    let mut peers = Vec::new();
    for (name, fsync) in [
        (
            "meridian",
            "object file and directory fsynced, then the event log committed (group commit), before each success",
        ),
        ("storescp", "none: plain files, no fsync (dcmtk's bare SCP, --fork: one process per association)"),
        (
            "orthanc",
            "default: each stored file fdatasynced (SyncStorageArea), not its directory; SQLite index not synced",
        ),
    ] {
        let dir = dir.join(name).tap_mkdir()?;
        let peer = match name {
            "meridian" => {
                let child = start_dev(&dir, &["--port-base", &port_base.to_string()])?;
                let endpoints: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("endpoints.json"))?)?;
                let port = endpoints["regions"]["us-east"]["dicom"]["port"].as_u64().unwrap_or(0) as u16;
                Peer { name, fsync, child, port, calling: "ACME_CT1", called: "MERIDIAN_ACME" }
            }
            "storescp" => {
                let port = port_base + 7;
                // --fork: each association in its own process, as a real
                // archive serves several senders at once.
                let child = Command::new("storescp")
                    .args(["--fork", "-od"])
                    .arg(&dir)
                    .arg(port.to_string())
                    .env("TCP_NODELAY", "1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?;
                Peer { name, fsync, child, port, calling: "BENCH", called: "STORESCP" }
            }
            _ => {
                let port = port_base + 8;
                let Some(child) = start_orthanc(&dir, port, &[], serde_json::json!({}))? else {
                    println!("ingest    orthanc: not installed (apt-get install orthanc); left out");
                    continue;
                };
                Peer { name, fsync, child, port, calling: "BENCH", called: "ORTHANC" }
            }
        };
        wait_for_port(peer.port)?;
        peers.push(peer);
    }
    Ok(peers)
}

/// One GET over a fresh connection: (time to the first response byte,
/// time to the last, status, body bytes).
/// DICOMweb figures on a `meridian dev` started on `dir`, the last run's
/// meridian data: (a)'s series of `n` instances among others.
fn dicomweb_figures(dir: &Path, n: usize, series: &str) -> anyhow::Result<()> {
    let mut child = start_dev(dir, &["--ports", "auto"])?;
    let result = (|| -> anyhow::Result<()> {
        let endpoints: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("endpoints.json"))?)?;
        let tokens: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("tokens.json"))?)?;
        let http =
            endpoints["regions"]["us-east"]["http"].as_str().unwrap_or("").trim_start_matches("http://").to_owned();
        let token = tokens["principals"]["acme-pacs"]["token"].as_str().unwrap_or("").to_owned();
        let study = STUDY;
        let wado = "multipart/related; type=\"application/dicom\"; transfer-syntax=*";
        // Warm up (page cache, connections), then measure.
        for i in 1..=20 {
            timed_get(
                &http,
                &format!("/dicomweb/studies/{study}/series/{series}/instances/{series}.{i}"),
                &token,
                wado,
            )?;
        }
        let mut first = Vec::new();
        let mut sizes = 0;
        for i in 0..500 {
            let sop = format!("{series}.{}", i % n + 1);
            let path = format!("/dicomweb/studies/{study}/series/{series}/instances/{sop}");
            let (fb, _, status, size) = timed_get(&http, &path, &token, wado)?;
            anyhow::ensure!(status == 200, "WADO-RS answered {status}");
            first.push(fb);
            sizes += size;
        }
        let (p50, p99) = percentiles(first);
        println!(
            "dicomweb  WADO-RS instance (512x512x16, as stored), first byte: p50 {p50:.2} ms, p99 {p99:.2} ms over 500 requests ({} KB each)",
            sizes / 500 / 1024
        );
        for (what, path, accept) in [
            (
                "WADO-RS series metadata",
                format!("/dicomweb/studies/{study}/series/{series}/metadata"),
                "application/dicom+json",
            ),
            (
                "QIDO-RS instances of the series",
                format!("/dicomweb/studies/{study}/series/{series}/instances"),
                "application/dicom+json",
            ),
        ] {
            let mut total = Vec::new();
            let mut size = 0;
            for _ in 0..100 {
                let (_, t, status, s) = timed_get(&http, &path, &token, accept)?;
                anyhow::ensure!(status == 200, "{what} answered {status}");
                total.push(t);
                size = s;
            }
            let (p50, p99) = percentiles(total);
            println!(
                "dicomweb  {what} ({n} instances, {} KB), whole response: p50 {p50:.1} ms, p99 {p99:.1} ms over 100 requests",
                size / 1024
            );
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}
