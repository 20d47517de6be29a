//! C-STORE over TLS (docs/benchmarks.md): dcmtk's `storescu` sends N CT
//! slices of 512×512×16 bit over loopback to `meridian dev` (us-east) in
//! plaintext and over TLS (PS3.15 Annex B, `+tla`), and to dcmtk's
//! `storescp --fork` in plaintext and over TLS (`+tls`) receiving the same
//! files in the same run; (a) on one association, (b) on four. Runs are
//! interleaved, each on fresh UIDs, and the median is reported. A third
//! `meridian dev` in plaintext exports its spans to rotel's collector
//! (`MERIDIAN_ROTEL`, discarding them): the cost of tracing on the ingest
//! path.
//!
//!   MERIDIAN_ROTEL=… target/release/cstore-tls-bench --count 500 --runs 3 [--settle 10]
//!
//! The `meridian` binary is taken from beside this one (same target dir).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use meridian_integration_tests::bench::{MkDir, STUDY, arg, send_parallel_over, slices, start_dev_with, wait_for_port};

/// A receiver: its process, DICOM port, AE titles, and the CA to trust
/// when it speaks TLS.
struct Receiver {
    name: &'static str,
    child: Child,
    port: u16,
    calling: &'static str,
    called: &'static str,
    ca: Option<PathBuf>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let n: usize = arg("--count").and_then(|v| v.parse().ok()).unwrap_or(500);
    let runs: usize = arg("--runs").and_then(|v| v.parse().ok()).unwrap_or(3);
    // Seconds to wait before each receiver, so none is measured while the
    // one before it still completes and triages its study.
    let settle: u64 = arg("--settle").and_then(|v| v.parse().ok()).unwrap_or(0);
    let work = tempfile::TempDir::new()?;
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev");
    // The TLS configuration: the examples with a certificate for us-east.
    let tls_config = work.path().join("config-tls");
    meridian_integration_tests::examples_with_tls(&tls_config, "bench", false);
    let certs_dir = work.path().join("certs").tap_mkdir()?;
    let certs = meridian_integration_tests::test_certificates(&certs_dir, "bench", &[]);
    let (_, bytes) = slices(&work.path().join("probe").tap_mkdir()?, 1, &format!("{STUDY}.0"))?;
    println!(
        "cstore-tls {n} CT slices of 512x512x16 bit ({:.0} MB), storescu over loopback with TCP_NODELAY=1",
        (bytes as usize * n) as f64 / 1e6
    );

    let mut rates: std::collections::BTreeMap<(&str, &str), Vec<f64>> = Default::default();
    let port_base = 25_000 + (std::process::id() % 1_000) as u16 * 10;
    for run in 0..runs {
        let run_dir = work.path().join(format!("run-{run}")).tap_mkdir()?;
        let receivers = start_receivers(&run_dir, &examples, &tls_config, &certs, port_base)?;
        for (mode, associations) in [("a", 1), ("b", 4)] {
            let set_dir = work.path().join(format!("set-{run}-{mode}")).tap_mkdir()?;
            let files = slices(&set_dir, n, &format!("{STUDY}.{}", 200 + run * 2 + usize::from(mode == "b")))?.0;
            for r in receivers.iter().filter(|r| r.name != "rotel") {
                // The receiver before this one completes its study after
                // the last instance (and inference reads it): on two cores
                // that work would be measured against this receiver.
                std::thread::sleep(std::time::Duration::from_secs(settle));
                let secs = send_parallel_over(r.port, r.calling, r.called, &files, associations, r.ca.as_deref())?;
                rates.entry((mode, r.name)).or_default().push(n as f64 / secs);
            }
            std::fs::remove_dir_all(&set_dir)?;
        }
        drop(receivers);
        std::fs::remove_dir_all(&run_dir)?;
    }
    let median = |all: &[f64]| {
        let mut sorted = all.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    for mode in ["a", "b"] {
        for name in ["meridian", "meridian+traced", "meridian+tls", "storescp", "storescp+tls"] {
            let all = &rates[&(mode, name)];
            let shown: Vec<String> = all.iter().map(|r| format!("{r:.0}")).collect();
            println!(
                "cstore-tls ({mode}) {name:<13} median {:>5.0} instances/s over {} association(s); runs: {}",
                median(all),
                if mode == "a" { 1 } else { 4 },
                shown.join(", ")
            );
        }
        let ratio = |tls: &str, plain: &str| median(&rates[&(mode, tls)]) / median(&rates[&(mode, plain)]);
        println!(
            "cstore-tls ({mode}) TLS ÷ plaintext: meridian {:.2}, storescp {:.2}; meridian+tls ÷ storescp+tls {:.2}",
            ratio("meridian+tls", "meridian"),
            ratio("storescp+tls", "storescp"),
            median(&rates[&(mode, "meridian+tls")]) / median(&rates[&(mode, "storescp+tls")])
        );
        println!(
            "cstore-tls ({mode}) traced ÷ plaintext: meridian {:.3} (spans exported over OTLP to a collector)",
            ratio("meridian+traced", "meridian"),
        );
    }
    Ok(())
}

/// Meridian in plaintext and over TLS (two `meridian dev`), storescp
/// --fork in plaintext and over TLS, each writing under `dir`.
fn start_receivers(
    dir: &Path,
    examples: &Path,
    tls_config: &Path,
    certs: &meridian_integration_tests::TestCertificates,
    port_base: u16,
) -> anyhow::Result<Vec<Receiver>> {
    let mut receivers = Vec::new();
    // The collector the traced receiver exports to: rotel's agent, which
    // receives and discards.
    let rotel = std::env::var("MERIDIAN_ROTEL").map_err(|_| anyhow::anyhow!("MERIDIAN_ROTEL names no rotel-agent"))?;
    let otlp = port_base + 300;
    let collector = Command::new(rotel)
        .args(["start", "--exporter", "blackhole", "--otlp-grpc-endpoint", &format!("127.0.0.1:{otlp}")])
        .args(["--otlp-http-endpoint", &format!("127.0.0.1:{}", otlp + 1)])
        .arg("--log-file")
        .arg(dir.join("rotel.log"))
        .arg("--pid-file")
        .arg(dir.join("rotel.pid"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_for_port(otlp)?;
    let endpoint = format!("http://127.0.0.1:{otlp}");
    let traced = [("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str())];
    for (name, config, base, env) in [
        ("meridian", examples, port_base, &[][..]),
        ("meridian+traced", examples, port_base + 50, &traced[..]),
        ("meridian+tls", tls_config, port_base + 100, &[][..]),
    ] {
        let data = dir.join(name).tap_mkdir()?;
        if config == tls_config {
            let tls = data.join("secrets/tls").tap_mkdir()?;
            std::fs::copy(&certs.cert, tls.join("bench-server.pem"))?;
            std::fs::copy(&certs.key, tls.join("bench-server.key"))?;
        }
        let child = start_dev_with(&data, config, &["--port-base", &base.to_string()], env)?;
        let endpoints: serde_json::Value = serde_json::from_slice(&std::fs::read(data.join("endpoints.json"))?)?;
        let port = endpoints["regions"]["us-east"]["dicom"]["port"].as_u64().unwrap_or(0) as u16;
        let ca = (config == tls_config).then(|| certs.ca.clone());
        receivers.push(Receiver { name, child, port, calling: "ACME_CT1", called: "MERIDIAN_ACME", ca });
    }
    for (name, port, tls) in [("storescp", port_base + 207, false), ("storescp+tls", port_base + 208, true)] {
        let out = dir.join(name).tap_mkdir()?;
        let mut storescp = Command::new("storescp");
        if tls {
            // Verifies a client certificate when one comes, as Meridian
            // does (storescp would otherwise require one).
            storescp.arg("+tls").arg(&certs.key).arg(&certs.cert).arg("-vc").arg("+cf").arg(&certs.ca);
        }
        let child = storescp
            .args(["--fork", "-od"])
            .arg(&out)
            .arg(port.to_string())
            .env("TCP_NODELAY", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let ca = tls.then(|| certs.ca.clone());
        receivers.push(Receiver { name, child, port, calling: "BENCH", called: "STORESCP", ca });
    }
    receivers.push(Receiver { name: "rotel", child: collector, port: otlp, calling: "", called: "", ca: None });
    for r in &receivers {
        wait_for_port(r.port)?;
    }
    Ok(receivers)
}
