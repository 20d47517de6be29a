//! Inference's figures (docs/benchmarks.md): the demonstration model under
//! tract (the embedded runtime) beside onnxruntime (Python) on the same
//! model and inputs, at batch 1 and 16, and served by MLServer over the
//! Open Inference Protocol v2 (the remote runtime); decoding JPEG 2000 and
//! JPEG-LS slices beside pydicom (pylibjpeg-openjpeg, pyjpegls) on the
//! same files; and StudyCompleted → AiTriageCompleted for a 100-slice head
//! CT (512 × 512, 16 bit) on the embedded log and a local object store: the
//! read of the objects, the decode, the model and the append.
//!
//! `cargo build --release -p meridian-integration-tests --bin
//! inference-bench && target/release/inference-bench [--runs 200]
//! [--studies 10] [--decode 20]`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dicom_pixeldata::PixelDecoder;
use meridian_events::payload::Payload;
use meridian_events::{DataClass, Envelope, EventId, EventMeta, KeyStore, StudyId, UnixMicros};
use meridian_inference::adapters::oip::RemoteSpec;
use meridian_inference::adapters::runtime::{Embedded, Remote};
use meridian_inference::app::{Inference, Opening};
use meridian_integration_tests::bench::arg;
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::{EventLog, Outgoing, TopicName, TopicSpec};
use meridian_objects::blobs::{Blobs, LocalBlobs};
use meridian_projection::run::Snapshotter;
use meridian_proto::events::v1 as pb;
use uuid::Uuid;

const NOW: UnixMicros = UnixMicros(1_796_000_000_000_000);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn topic(class: DataClass, stream: &str) -> TopicName {
    TopicName::new("us-east", class, stream).expect("a known topic")
}

fn meta(aggregate: &str, id: Uuid, version: u64, event_id: EventId) -> EventMeta {
    EventMeta {
        event_id,
        aggregate_type: aggregate.into(),
        aggregate_id: id,
        aggregate_version: version,
        tenant: "acme".into(),
        home_region: "us-east".into(),
        occurred_at: NOW,
        causation_id: None,
        correlation_id: None,
        traceparent: None,
    }
}

/// tract's inferences/s and p99 per batch, at `batch`: given the batch
/// laid out in one buffer, as onnxruntime is given one array.
fn tract_at(model: &Embedded, batch: usize, runs: usize) -> anyhow::Result<(f64, f64)> {
    let data: Vec<f32> = bench_slices(batch).concat();
    for _ in 0..5 {
        model.run_batch(&data, batch)?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        model.run_batch(&data, batch)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let total: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    Ok(((batch * runs) as f64 / total, percentile(&times, 0.99) * 1000.0))
}

/// The bench's slices at `batch`: the same values tract is given.
fn bench_slices(batch: usize) -> Vec<Vec<f32>> {
    (0..batch).map(|b| (0..64 * 64).map(|p| ((p * 7 + b) % 100) as f32 / 100.0).collect()).collect()
}

/// The model over OIP v2: inferences/s and p99 per call, at `batch`.
async fn remote_at(model: &Remote, batch: usize, runs: usize) -> anyhow::Result<(f64, f64)> {
    let slices = bench_slices(batch);
    for _ in 0..5 {
        model.run(&slices, "bench").await?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        model.run(&slices, "bench").await?;
        times.push(t.elapsed().as_secs_f64());
    }
    let total: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    Ok(((batch * runs) as f64 / total, percentile(&times, 0.99) * 1000.0))
}

/// `count` head-CT slices (512 × 512, 16 bit, noise of σ 10 added so they
/// compress as a scanner's do) re-encoded by pydicom as `syntax`: ours (dicom-pixeldata) and pydicom's decode, in MB/s of pixel
/// data, best of three passes each.
fn decode_at(python: &str, syntax: &str, count: usize) -> anyhow::Result<(f64, f64, f64)> {
    let dir = tempfile::TempDir::new()?;
    let (plain, out) = (dir.path().join("plain"), dir.path().join(syntax));
    std::fs::create_dir_all(&plain)?;
    std::fs::create_dir_all(&out)?;
    let mut originals = Vec::new();
    for n in 1..=count {
        let path = plain.join(format!("{n}.dcm"));
        std::fs::write(
            &path,
            meridian_integration_tests::dicom::head_ct_bytes("1.2.826.0.1.3680043.10.543.95", n, n == 2, 512),
        )?;
        originals.push(path);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/encode_slices.py");
    let run = std::process::Command::new(python)
        .arg(&script)
        .arg(syntax)
        .arg(&out)
        .args(["--noise", "10"])
        .args(&originals)
        .output()?;
    anyhow::ensure!(run.status.success(), "encode_slices.py: {}", String::from_utf8_lossy(&run.stderr));
    let said: serde_json::Value = serde_json::from_slice(&run.stdout)?;
    let pixel_bytes = said["pixel_bytes"].as_f64().unwrap_or(0.0);
    let theirs = pixel_bytes / said["decode_s"].as_f64().unwrap_or(f64::INFINITY) / 1e6;
    let files: Vec<Vec<u8>> = said["files"]
        .as_array()
        .map(|f| f.iter().filter_map(|p| p.as_str()).map(std::fs::read).collect::<Result<_, _>>())
        .transpose()?
        .unwrap_or_default();
    let encoded: usize = files.iter().map(Vec::len).sum();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        for bytes in &files {
            let object = dicom_object::from_reader(bytes.as_slice())?;
            std::hint::black_box(object.decode_pixel_data()?);
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok((pixel_bytes / best / 1e6, theirs, pixel_bytes / encoded as f64))
}

/// Studies completed one after another into a region's inference, timed
/// from the StudyCompleted's append to the outcome folded.
struct Pass<'a> {
    inference: &'a Inference,
    log: &'a EmbeddedLog,
    keys: &'a dyn KeyStore,
    blobs: &'a dyn Blobs,
}

impl Pass<'_> {
    /// Studies `first..first + count`, 100 instances each from `bytes(study,
    /// n)` stored as `syntax`: p50 and p99 in ms, and MB/s of the 16-bit
    /// pixel data the model read (64 of 100 slices).
    async fn studies(
        &self,
        first: usize,
        count: usize,
        syntax: &str,
        bytes: &dyn Fn(usize, usize) -> Vec<u8>,
    ) -> anyhow::Result<(f64, f64, f64)> {
        let mut latencies = Vec::new();
        for s in first..first + count {
            let study = Uuid::from_u64_pair(0xa1, s as u64);
            let mut batch = Vec::new();
            for n in 1..=100usize {
                let key = format!("bench/{study}/{n}");
                self.blobs.put_once(&key, bytes(s, n)).await?;
                let received = pb::InstanceReceived {
                    study_id: study.to_string(),
                    instance_id: Uuid::from_u64_pair(s as u64, n as u64).to_string(),
                    series_id: Uuid::from_u64_pair(s as u64, 0).to_string(),
                    object_key: key,
                    transfer_syntax_uid: syntax.into(),
                    modality: "CT".into(),
                    body_part: "HEAD".into(),
                    ..Default::default()
                };
                let id = EventId::derived(EventId(study), "received", n as u32);
                let sealed = Envelope::sealed(
                    meta("ingest.instances", study, n as u64, id),
                    &received,
                    StudyId(study),
                    self.keys,
                )?;
                batch.push(Outgoing::new(topic(DataClass::Phi, "ingest"), &sealed)?);
            }
            self.log.append(batch).await?;
            let completed = Payload::StudyCompleted(pb::StudyCompleted {
                study_id: study.to_string(),
                instance_count: 100,
                series_count: 1,
                modality: "CT".into(),
                body_part: "HEAD".into(),
                contract: "acme-atlantic".into(),
                completed_at: Some(NOW.to_timestamp()),
                ..Default::default()
            });
            let id = EventId::derived(EventId(study), "completed", 0);
            let envelope = completed.plain_envelope(meta("ingest.study", study, 1, id))?;
            let started = Instant::now();
            self.log.append(vec![Outgoing::new(topic(DataClass::Operational, "ingest"), &envelope)?]).await?;
            loop {
                self.inference.run_due(NOW).await?;
                let done = self
                    .inference
                    .read_state(|f| f.state.studies.get(&study).is_some_and(|st| !st.read_by.is_empty()))
                    .await;
                if done {
                    break;
                }
            }
            latencies.push(started.elapsed().as_secs_f64());
        }
        let total: f64 = latencies.iter().sum();
        latencies.sort_by(f64::total_cmp);
        let read = (count * 64 * 512 * 512 * 2) as f64 / 1e6;
        Ok((percentile(&latencies, 0.5) * 1000.0, percentile(&latencies, 0.99) * 1000.0, read / total))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = arg("--runs").map_or(Ok(200), |v| v.parse())?;
    let studies: usize = arg("--studies").map_or(Ok(10), |v| v.parse())?;
    let decode: usize = arg("--decode").map_or(Ok(20), |v| v.parse())?;
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev");
    let model_file = examples.join("models/ich-demo.onnx");
    let model = Embedded::load(&model_file, "slices", 64, 64, &["ich".to_string()])?;
    println!("inference  ich-demo (64 x 64, f32), {runs} runs a batch size");
    let python = std::env::var("MERIDIAN_PYTHON").unwrap_or_else(|_| {
        format!("{}/.cache/meridian/tools/venv/bin/python", std::env::var("HOME").unwrap_or_default())
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/onnx_bench.py");
    let ort =
        std::process::Command::new(&python).arg(&script).arg(&model_file).arg("1,16").arg(runs.to_string()).output()?;
    anyhow::ensure!(ort.status.success(), "onnx_bench.py: {}", String::from_utf8_lossy(&ort.stderr));
    let ort: serde_json::Value = serde_json::from_slice(&ort.stdout)?;
    for batch in [1usize, 16] {
        let (per_s, p99) = tract_at(&model, batch, runs)?;
        let theirs = &ort[batch.to_string()];
        println!(
            "inference  batch {batch:>2}: tract {per_s:.0}/s (p99 {p99:.3} ms a batch), onnxruntime {:.0}/s (p99 {:.3} ms)",
            theirs["per_s"].as_f64().unwrap_or(0.0),
            theirs["p99_ms"].as_f64().unwrap_or(0.0)
        );
    }
    // The same model served by MLServer (onnxruntime inside), over OIP v2.
    let server = meridian_integration_tests::MlServer::start("ich-demo", &model_file);
    let remote = Remote::connect(RemoteSpec {
        endpoint: server.endpoint(),
        model: "ich-demo".into(),
        version: String::new(),
        input: "slices".into(),
        outputs: vec!["ich".into()],
        rows: 64,
        columns: 64,
        timeout: Duration::from_secs(5),
        retries: 0,
        ca_pem: None,
    })?;
    for batch in [1usize, 16] {
        let (per_s, p99) = remote_at(&remote, batch, runs).await?;
        println!(
            "inference  batch {batch:>2}: MLServer 1.7 over OIP v2 (gRPC, loopback) {per_s:.0}/s (p99 {p99:.3} ms a call)"
        );
    }
    drop(server);
    for syntax in ["jpeg2000", "jpeg-ls"] {
        let (ours, theirs, ratio) = decode_at(&python, syntax, decode)?;
        println!(
            "inference  decode {syntax} lossless, {decode} slices of 512 x 512 x 16 bit (compressed {ratio:.1}:1): dicom-pixeldata {ours:.0} MB/s, pydicom {theirs:.0} MB/s"
        );
    }

    // StudyCompleted → AiTriageCompleted, 100 slices of 512 x 512.
    let dir = tempfile::TempDir::new()?;
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default())?);
    for (class, stream) in [
        (DataClass::Operational, "ingest"),
        (DataClass::Phi, "ingest"),
        (DataClass::Operational, "inference"),
        (DataClass::Phi, "inference"),
        (DataClass::Operational, "audit"),
    ] {
        log.ensure_topic(&TopicSpec::new(topic(class, stream), 2)).await?;
    }
    let keys: Arc<dyn KeyStore> = Arc::new(log.key_store());
    let blobs: Arc<dyn Blobs> = Arc::new(LocalBlobs::new(dir.path().join("objects")));
    let platform = Arc::new(meridian_config::Platform::load(&examples).map_err(|e| anyhow::anyhow!("{e}"))?);
    let inference = Inference::open(Opening {
        region: "us-east".into(),
        platform,
        log: log.clone(),
        keys: keys.clone(),
        blobs: blobs.clone(),
        snapshots: Snapshotter::none(),
        idle: Duration::from_millis(20),
        failpoints: Default::default(),
    })
    .await?;
    let plain = |s: usize, n: usize| {
        let uid = format!("1.2.826.0.1.3680043.10.543.8{s}");
        meridian_integration_tests::dicom::head_ct_bytes(&uid, n, s.is_multiple_of(2) && n == 50, 512)
    };
    let pass = Pass { inference: &inference, log: log.as_ref(), keys: keys.as_ref(), blobs: blobs.as_ref() };
    let (p50, p99, mb_s) = pass.studies(0, studies, "1.2.840.10008.1.2.1", &plain).await?;
    println!(
        "inference  StudyCompleted -> AiTriageCompleted, 100 slices of 512 x 512 (64 read), explicit VR LE: p50 {p50:.0} ms, p99 {p99:.0} ms (goal p99 < 2 s) over {studies} studies; {mb_s:.0} MB/s of 16-bit pixel data read"
    );
    // The same as JPEG 2000 lossless (scanner-like noise, 2.7:1): the
    // decode dominates.
    let j2k = tempfile::TempDir::new()?;
    let originals: Vec<std::path::PathBuf> = (1..=100)
        .map(|n| {
            let path = j2k.path().join(format!("{n:03}.dcm"));
            std::fs::write(&path, plain(1, n)).map(|_| path)
        })
        .collect::<Result<_, _>>()?;
    let out = j2k.path().join("j2k");
    std::fs::create_dir_all(&out)?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/encode_slices.py");
    let run = std::process::Command::new(&python)
        .arg(&script)
        .args(["jpeg2000".as_ref(), out.as_os_str(), "--noise".as_ref(), "10".as_ref()])
        .args(&originals)
        .output()?;
    anyhow::ensure!(run.status.success(), "encode_slices.py: {}", String::from_utf8_lossy(&run.stderr));
    let encoded: Vec<Vec<u8>> =
        (1..=100).map(|n| std::fs::read(out.join(format!("{n:03}.dcm")))).collect::<Result<_, _>>()?;
    let j2k_studies = studies.min(5);
    let (p50, p99, mb_s) =
        pass.studies(studies, j2k_studies, "1.2.840.10008.1.2.4.90", &|_, n| encoded[n - 1].clone()).await?;
    println!(
        "inference  StudyCompleted -> AiTriageCompleted, the same as JPEG 2000 lossless: p50 {p50:.0} ms, p99 {p99:.0} ms over {j2k_studies} studies; {mb_s:.0} MB/s of 16-bit pixel data read"
    );
    Ok(())
}
