//! Reporting figures (docs/benchmarks.md), on the embedded log:
//! - sign → delivered, p50/p99 over `--reports` signatures one after
//!   another: from the Sign command to the receiver's answer recorded on
//!   the log, over MLLP (ORU^R01, ACK) and over FHIR (a conditional
//!   update), to receivers that answer at once (so the figure excludes
//!   them); beside the same messages sent to the same receivers by
//!   python-hl7's `mllp_send` and by a bare HTTP client;
//! - reports signed/s: Sign commands back to back (each caught up to the
//!   log's end, decided, appended and folded);
//! - rebuilding reporting's state by folding `--rebuild` reporting events
//!   (routing's, its text sealed under the study's key, its signatures).
//!
//!   cargo build --release -p meridian-integration-tests --bin report-bench
//!   target/release/report-bench --reports 300 --rebuild 1000000

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_config::{DeliveryEndpoint, DeliveryKind, Platform};
use meridian_events::payload::Payload;
use meridian_events::{DataClass, Envelope, EventId, EventMeta, KeyStore, StudyId, UnixMicros};
use meridian_integration_tests::bench::arg;
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::{EventLog, Outgoing, Position, TopicName, TopicSpec};
use meridian_projection::run::Snapshotter;
use meridian_proto::events::v1 as pb;
use meridian_reporting::adapters::receivers::Receivers;
use meridian_reporting::adapters::{fhir, hl7};
use meridian_reporting::app::{Reporting, ReportingProjection};
use meridian_reporting::domain::message::{Patient, ReportMessage};
use meridian_reporting::domain::report::Command;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

const PARTITIONS: u32 = 4;
const NOW: UnixMicros = UnixMicros(1_796_000_000_000_000);
const READER: &str = "dr-ana-ortiz";

fn topic(class: DataClass, stream: &str) -> TopicName {
    TopicName::new("us-east", class, stream).expect("a catalogue topic")
}

fn meta(aggregate_type: &str, aggregate: Uuid, version: u64, id: EventId) -> EventMeta {
    EventMeta {
        event_id: id,
        aggregate_type: aggregate_type.into(),
        aggregate_id: aggregate,
        aggregate_version: version,
        tenant: "acme".into(),
        home_region: "us-east".into(),
        occurred_at: NOW,
        causation_id: None,
        correlation_id: None,
        traceparent: None,
    }
}

/// Routing's and ingest's events for `studies` preliminaries held by the
/// reader (and the reader, licensed): what reporting folds before a sign.
fn held(studies: std::ops::Range<u64>, keys: &dyn KeyStore) -> anyhow::Result<Vec<Outgoing>> {
    let (routing, ingest) = (topic(DataClass::Operational, "routing"), topic(DataClass::Phi, "ingest"));
    let mut out = Vec::new();
    if studies.start == 0 {
        let reader = pb::ReaderRegistered {
            reader_id: READER.into(),
            reading_group: "atlantic-rads".into(),
            licences: vec![pb::Licence {
                jurisdiction: "US".into(),
                expires_at: Some(UnixMicros(NOW.0 + 365 * 86_400_000_000).to_timestamp()),
            }],
            ..Default::default()
        };
        let id = EventId::derived(EventId(Uuid::nil()), "reader", 0);
        let payload = Payload::ReaderRegistered(reader);
        out.push(Outgoing::new(routing.clone(), &payload.plain_envelope(meta("routing.reader", Uuid::nil(), 1, id))?)?);
    }
    for n in studies {
        let study = Uuid::from_u64_pair(0x5e, n);
        let queued = Payload::StudyQueued(pb::StudyQueued {
            study_id: study.to_string(),
            tenant: "acme".into(),
            read_type: "preliminary".into(),
            contract: "acme-atlantic".into(),
            origin_jurisdiction: "US-NY".into(),
            modality: "CT".into(),
            ..Default::default()
        });
        let assigned = Payload::StudyAssigned(pb::StudyAssigned {
            study_id: study.to_string(),
            reader_id: READER.into(),
            read_type: "preliminary".into(),
            ..Default::default()
        });
        for (v, p) in [(1, queued), (2, assigned)] {
            let id = EventId::derived(EventId(study), p.type_name(), v as u32);
            out.push(Outgoing::new(routing.clone(), &p.plain_envelope(meta("routing.study", study, v, id))?)?);
        }
        let received = pb::InstanceReceived {
            study_id: study.to_string(),
            study_instance_uid: format!("1.2.826.0.1.3680043.10.543.9{n}"),
            patient_id: format!("MRN-{n}"),
            issuer_of_patient_id: "ACME GENERAL".into(),
            patient_name: "Doe^Jane".into(),
            patient_birth_date: "19800214".into(),
            patient_sex: "F".into(),
            accession_number: format!("ACC-{n}"),
            study_date: "20261104".into(),
            ..Default::default()
        };
        let id = EventId::derived(EventId(study), "received", 0);
        let sealed = Envelope::sealed(meta("ingest.instances", study, 1, id), &received, StudyId(study), keys)?;
        out.push(Outgoing::new(ingest.clone(), &sealed)?);
    }
    Ok(out)
}

/// An MLLP listener that answers each message AA at once, echoing MSH-10.
async fn ack_server() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 8192];
                while let Ok(n) = socket.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buffer.iter().position(|b| *b == 0x1c) {
                        let message = String::from_utf8_lossy(&buffer[..end]).into_owned();
                        buffer.drain(..(end + 2).min(buffer.len()));
                        let control = message.split('\r').next().and_then(|msh| msh.split('|').nth(9)).unwrap_or("");
                        let ack = format!(
                            "MSH|^~\\&|RIS|ACME|MERIDIAN|us-east|20261104||ACK^R01^ACK|A1|P|2.5.1\rMSA|AA|{control}\r"
                        );
                        if socket.write_all(&hl7::frame(&ack)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    Ok(port)
}

/// An HTTP/1.1 server that answers every request 200 at once (keep-alive).
async fn http_server() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 16384];
                loop {
                    // One request: headers, then content-length bytes.
                    let Some(head) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let headers = String::from_utf8_lossy(&buffer[..head]).to_ascii_lowercase();
                    let length: usize = headers
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                        .unwrap_or(0);
                    while buffer.len() < head + 4 + length {
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buffer.drain(..head + 4 + length);
                    let answer =
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/fhir+json\r\ncontent-length: 2\r\n\r\n{}";
                    if socket.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Reporting on a fresh log with `reports` held reads, delivering to
/// `endpoint`; sign → delivered for each, one after another.
async fn sign_to_delivered(
    work: &Path,
    platform: &Platform,
    endpoint: Option<DeliveryEndpoint>,
    reports: u64,
) -> anyhow::Result<(Vec<Duration>, f64)> {
    let dir = tempfile::TempDir::new_in(work)?;
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default())?);
    let keys: Arc<dyn KeyStore> = Arc::new(log.key_store());
    for (class, stream) in [
        (DataClass::Operational, "routing"),
        (DataClass::Operational, "reporting"),
        (DataClass::Phi, "reporting"),
        (DataClass::Phi, "ingest"),
    ] {
        log.ensure_topic(&TopicSpec::new(topic(class, stream), PARTITIONS)).await?;
    }
    log.append(held(0..reports, keys.as_ref())?).await?;
    let mut platform = platform.clone();
    let acme = platform.tenants.get_mut("acme").ok_or_else(|| anyhow::anyhow!("no acme"))?;
    acme.delivery = endpoint.into_iter().collect();
    let idle = Duration::from_millis(20);
    let reporting = Arc::new(
        Reporting::open(
            "us-east",
            Arc::new(platform),
            log.clone(),
            keys,
            Snapshotter::none(),
            idle,
            Default::default(),
        )
        .await?,
    );
    let worker = {
        let reporting = reporting.clone();
        let receivers = Receivers::new(Default::default()).map_err(anyhow::Error::msg)?;
        tokio::spawn(async move {
            loop {
                #[allow(clippy::disallowed_methods)] // the bench's clock, as serve's worker reads it
                let now = UnixMicros(
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64,
                );
                let _ = reporting.deliver_due(&receivers, now).await;
                reporting.wait_for_requests(Duration::from_secs(1)).await;
            }
        })
    };
    let mut latencies = Vec::new();
    let mut signing = Duration::ZERO;
    for n in 0..reports {
        let study = Uuid::from_u64_pair(0x5e, n);
        let draft = Command::SaveDraft {
            key: String::new(),
            study,
            reader: READER.into(),
            findings: "No acute intracranial abnormality. Ventricles and sulci normal.".into(),
            impression: "Normal head CT.".into(),
            fields: Default::default(),
            base_version: 0,
        };
        reporting.execute(draft, NOW).await?;
        let sign = Command::Sign {
            study,
            reader: READER.into(),
            read_type: "preliminary".into(),
            version: 0,
            discrepancy: String::new(),
        };
        let started = Instant::now();
        reporting.execute(sign, NOW).await?;
        signing += started.elapsed();
        loop {
            if reporting.read(|f| f.state.deliveries.is_empty()).await {
                break;
            }
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        latencies.push(started.elapsed());
    }
    worker.abort();
    latencies.sort();
    Ok((latencies, reports as f64 / signing.as_secs_f64()))
}

/// The message reporting sends for report `n`.
fn message(n: u64) -> ReportMessage {
    ReportMessage {
        report: Uuid::from_u64_pair(0xbe, n),
        study: Uuid::from_u64_pair(0x5e, n),
        tenant: "acme".into(),
        status: "preliminary".into(),
        read_type: "preliminary".into(),
        patient: Patient {
            id: format!("MRN-{n}"),
            issuer: "ACME GENERAL".into(),
            name: "Doe^Jane".into(),
            birth_date: "19800214".into(),
            sex: "F".into(),
        },
        accession: format!("ACC-{n}"),
        study_uid: format!("1.2.826.0.1.3680043.10.543.9{n}"),
        study_description: String::new(),
        study_date: "20261104".into(),
        study_time: String::new(),
        signed_at: NOW,
        reader: READER.into(),
        group: "atlantic-rads".into(),
        findings: "No acute intracranial abnormality. Ventricles and sulci normal.".into(),
        impression: "Normal head CT.".into(),
        addenda: vec![],
        language: "en".into(),
        title: String::new(),
        headings: meridian_reporting::domain::message::default_headings(),
        fields: Vec::new(),
        placer_order: String::new(),
        ordering_clinician: String::new(),
    }
}

/// Folds `events` reporting events written to a fresh log: read, decode,
/// open the sealed text, fold.
async fn rebuild(work: &Path, events: u64) -> anyhow::Result<(u64, Duration)> {
    let dir = tempfile::TempDir::new_in(work)?;
    let log = EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default())?;
    let keys = log.key_store();
    let names = [
        (DataClass::Operational, "routing"),
        (DataClass::Operational, "reporting"),
        (DataClass::Phi, "reporting"),
        (DataClass::Phi, "ingest"),
    ];
    for (class, stream) in names {
        log.ensure_topic(&TopicSpec::new(topic(class, stream), PARTITIONS)).await?;
    }
    // Per study: queued, assigned, its instance, the text, the signature.
    let studies = events / 5;
    let (text, signed) = (topic(DataClass::Phi, "reporting"), topic(DataClass::Operational, "reporting"));
    let mut batch = Vec::new();
    for n in 0..studies {
        batch.extend(held(n..n + 1, &keys)?);
        let study = Uuid::from_u64_pair(0x5e, n);
        let report = meridian_reporting::domain::model::report_id(study, "preliminary");
        let saved = pb::ReportText {
            study_id: study.to_string(),
            report_id: report.to_string(),
            version: 1,
            read_type: "preliminary".into(),
            author_id: READER.into(),
            findings: "No acute intracranial abnormality.".into(),
            impression: "Normal head CT.".into(),
            saved_at: Some(NOW.to_timestamp()),
            kind: "draft".into(),
            ..Default::default()
        };
        let id = EventId::derived(EventId(report), "text", 1);
        batch.push(Outgoing::new(
            text.clone(),
            &Envelope::sealed(meta("reporting.text", study, 1, id), &saved, StudyId(study), &keys)?,
        )?);
        let sig = Payload::ReportSigned(pb::ReportSigned {
            study_id: study.to_string(),
            report_id: report.to_string(),
            read_type: "preliminary".into(),
            reader_id: READER.into(),
            signed_at: Some(NOW.to_timestamp()),
            report_version: 1,
            discrepancy: String::new(),
        });
        let id = EventId::derived(EventId(report), "signed", 1);
        batch.push(Outgoing::new(signed.clone(), &sig.plain_envelope(meta("reporting.study", study, 1, id))?)?);
        if batch.len() >= 5_000 {
            log.append(std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        log.append(batch).await?;
    }
    let mut starts = Vec::new();
    for (class, stream) in names {
        starts.extend((0..PARTITIONS).map(|p| Position::start(topic(class, stream), p)));
    }
    let mut projector = meridian_projection::Projector::<ReportingProjection>::new(starts);
    let started = Instant::now();
    meridian_projection::run::catch_up(&log, &keys, &mut projector, Duration::from_millis(50)).await?;
    let took = started.elapsed();
    let folded = projector.stats().applied;
    anyhow::ensure!(projector.state().state.studies.len() as u64 == studies, "every study folded");
    log.close().await;
    Ok((folded, took))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let reports: u64 = arg("--reports").map_or(Ok(300), |v| v.parse())?;
    let rebuild_events: u64 = arg("--rebuild").map_or(Ok(1_000_000), |v| v.parse())?;
    let work = tempfile::TempDir::new()?;
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev");
    let platform = Platform::load(&examples).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mllp_port, http_port) = (ack_server().await?, http_server().await?);
    let endpoint = |kind, address: String| DeliveryEndpoint {
        name: "bench".into(),
        kind,
        address,
        receiving_application: Some("RIS".into()),
        receiving_facility: Some("ACME".into()),
        read_types: vec![],
        enabled: true,
        bearer_token: None,
    };
    println!("report    {reports} signatures, one after another, to receivers that answer at once");

    let mllp = endpoint(DeliveryKind::Hl7Mllp, format!("127.0.0.1:{mllp_port}"));
    let (lat, _) = sign_to_delivered(work.path(), &platform, Some(mllp), reports).await?;
    println!(
        "report    sign → delivered, MLLP: p50 {:.2} ms, p99 {:.2} ms (goal p99 < 100 ms)",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );
    let fhir_endpoint = endpoint(DeliveryKind::Fhir, format!("http://127.0.0.1:{http_port}/fhir"));
    let (lat, _) = sign_to_delivered(work.path(), &platform, Some(fhir_endpoint), reports).await?;
    println!(
        "report    sign → delivered, FHIR: p50 {:.2} ms, p99 {:.2} ms (goal p99 < 100 ms)",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );

    // python-hl7's mllp_send: the same messages, one connection.
    let file = work.path().join("messages.hl7");
    let parties = hl7::Parties { sending: ("MERIDIAN", "us-east"), receiving: ("RIS", "ACME") };
    let text: Vec<String> =
        (0..reports).map(|n| hl7::oru_r01(&message(n), &format!("P{n:019}"), &parties, NOW)).collect();
    // mllp_send reads its file as an MLLP stream: framed messages.
    std::fs::write(&file, text.iter().flat_map(|m| hl7::frame(m)).collect::<Vec<u8>>())?;
    let venv = std::env::var("HOME").unwrap_or_default() + "/.cache/meridian/tools/venv/bin/mllp_send";
    let started = Instant::now();
    let out = std::process::Command::new(&venv)
        .args(["--file"])
        .arg(&file)
        .args(["--port", &mllp_port.to_string(), "-q", "127.0.0.1"])
        .output();
    match out {
        Ok(o) if o.status.success() => println!(
            "report    python-hl7 mllp_send, the same messages: {:.2} ms each on average ({} in {:.0} ms, with its start)",
            ms(started.elapsed()) / reports as f64,
            reports,
            ms(started.elapsed())
        ),
        Ok(o) => {
            let said: String =
                String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or("").chars().take(200).collect();
            println!("report    mllp_send failed: {said}")
        }
        Err(e) => println!("report    mllp_send not run ({venv}: {e}); scripts/test installs it"),
    }

    // A bare HTTP client: the same DiagnosticReports as conditional updates.
    let client = reqwest::Client::new();
    let mut lat = Vec::new();
    for n in 0..reports {
        let m = message(n);
        let url = fhir::conditional_update_url(&format!("http://127.0.0.1:{http_port}/fhir"), &m);
        let started = Instant::now();
        let r = client
            .put(&url)
            .header("content-type", "application/fhir+json")
            .body(fhir::diagnostic_report(&m).to_string())
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "{}", r.status());
        lat.push(started.elapsed());
    }
    lat.sort();
    println!(
        "report    bare HTTP client, the same DiagnosticReports: p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99))
    );

    let (_, rate) = sign_to_delivered(work.path(), &platform, None, reports.max(1_000)).await?;
    println!("report    signatures/s (caught up, decided, appended, folded; no receiver): {rate:.0}");

    let (folded, took) = rebuild(work.path(), rebuild_events).await?;
    println!("report    rebuild: {folded} events folded in {:.1} s", took.as_secs_f64());
    Ok(())
}
