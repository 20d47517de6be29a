//! Inference's figures (docs/benchmarks.md): the demonstration model under
//! tract (the embedded runtime) beside onnxruntime (Python) on the same
//! model and inputs, at batch 1 and 16; and StudyCompleted →
//! AiTriageCompleted for a 100-slice head CT (512 × 512, 16 bit) on the
//! embedded log and a local object store: the read of the objects, the
//! decode, the model and the append.
//!
//! `cargo build --release -p meridian-integration-tests --bin
//! inference-bench && target/release/inference-bench [--runs 200]
//! [--studies 10]`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_events::payload::Payload;
use meridian_events::{DataClass, Envelope, EventId, EventMeta, KeyStore, StudyId, UnixMicros};
use meridian_inference::adapters::runtime::Embedded;
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

/// tract's inferences/s and p99 per batch, at `batch`.
fn tract_at(model: &Embedded, batch: usize, runs: usize) -> anyhow::Result<(f64, f64)> {
    let slices: Vec<Vec<f32>> =
        (0..batch).map(|b| (0..64 * 64).map(|p| ((p * 7 + b) % 100) as f32 / 100.0).collect()).collect();
    for _ in 0..5 {
        model.run(&slices)?;
    }
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        model.run(&slices)?;
        times.push(t.elapsed().as_secs_f64());
    }
    let total: f64 = times.iter().sum();
    times.sort_by(f64::total_cmp);
    Ok(((batch * runs) as f64 / total, percentile(&times, 0.99) * 1000.0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs: usize = arg("--runs").map_or(Ok(200), |v| v.parse())?;
    let studies: usize = arg("--studies").map_or(Ok(10), |v| v.parse())?;
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
    let mut latencies = Vec::new();
    let mut decoded_bytes = 0u64;
    for s in 0..studies {
        let study = Uuid::from_u64_pair(0xa1, s as u64);
        let uid = format!("1.2.826.0.1.3680043.10.543.8{s}");
        let mut batch = Vec::new();
        for n in 1..=100usize {
            let bytes = meridian_integration_tests::dicom::head_ct_bytes(&uid, n, s % 2 == 0 && n == 50, 512);
            decoded_bytes += 512 * 512 * 2;
            let key = format!("bench/{study}/{n}");
            blobs.put_once(&key, bytes).await?;
            let received = pb::InstanceReceived {
                study_id: study.to_string(),
                instance_id: Uuid::from_u64_pair(s as u64, n as u64).to_string(),
                series_id: Uuid::from_u64_pair(s as u64, 0).to_string(),
                object_key: key,
                transfer_syntax_uid: "1.2.840.10008.1.2.1".into(),
                modality: "CT".into(),
                body_part: "HEAD".into(),
                ..Default::default()
            };
            let id = EventId::derived(EventId(study), "received", n as u32);
            let sealed = Envelope::sealed(
                meta("ingest.instances", study, n as u64, id),
                &received,
                StudyId(study),
                keys.as_ref(),
            )?;
            batch.push(Outgoing::new(topic(DataClass::Phi, "ingest"), &sealed)?);
        }
        log.append(batch).await?;
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
        log.append(vec![Outgoing::new(topic(DataClass::Operational, "ingest"), &envelope)?]).await?;
        loop {
            inference.run_due(NOW).await?;
            let done =
                inference.read_state(|f| f.state.studies.get(&study).is_some_and(|st| !st.read_by.is_empty())).await;
            if done {
                break;
            }
        }
        latencies.push(started.elapsed().as_secs_f64());
    }
    let total: f64 = latencies.iter().sum();
    latencies.sort_by(f64::total_cmp);
    println!(
        "inference  StudyCompleted -> AiTriageCompleted, 100 slices of 512 x 512 (64 read): p50 {:.0} ms, p99 {:.0} ms (goal p99 < 2 s) over {studies} studies",
        percentile(&latencies, 0.5) * 1000.0,
        percentile(&latencies, 0.99) * 1000.0
    );
    println!(
        "inference  the whole pass (objects read, decoded, windowed, run, appended): {:.0} MB/s of 16-bit pixel data read",
        (decoded_bytes as f64 * 0.64 / 1e6) / total
    );
    Ok(())
}
