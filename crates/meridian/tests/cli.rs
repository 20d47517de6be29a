//! The `meridian` command as a person uses it: `config check`, and
//! `meridian dev` with real gRPC and HTTP clients, Ctrl-C and a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meridian_integration_tests::dicom::acknowledged;
use meridian_proto::admin::v1 as admin;
use meridian_proto::admin::v1::admin_service_client::AdminServiceClient;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::{Code, Request};
use tonic_types::StatusExt;

const MERIDIAN: &str = env!("CARGO_BIN_EXE_meridian");

mod isolation;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn config_check_passes_the_examples_and_reports_every_broken_message() {
    let ok = Command::new(MERIDIAN).args(["config", "check"]).arg(repo().join("deploy/examples/dev")).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok (3 regions, 3 tenants, 3 contracts, 2 reading groups"));

    let broken = repo().join("crates/config/tests/fixtures/broken");
    let out = Command::new(MERIDIAN).args(["config", "check"]).arg(&broken).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = std::fs::read_to_string(broken.with_extension("expected")).unwrap();
    for line in expected.lines().filter(|l| !l.is_empty()) {
        assert!(stderr.lines().any(|l| l == line), "missing from `config check`: {line}\n---\n{stderr}");
    }
}

/// A running `meridian dev`, killed when dropped.
struct Dev {
    child: Child,
    data: PathBuf,
}

impl Dev {
    fn start(data: &Path) -> Dev {
        Dev::start_armed(data, "")
    }

    /// Starts with `MERIDIAN_FAILPOINTS` set to `failpoints`.
    fn start_armed(data: &Path, failpoints: &str) -> Dev {
        Dev::start_configured(&repo().join("deploy/examples/dev"), data, failpoints)
    }

    /// Starts on the configuration in `config`.
    fn start_configured(config: &Path, data: &Path, failpoints: &str) -> Dev {
        Dev::start_with(config, data, failpoints, &[])
    }

    /// Starts on `config` with `env` set besides.
    fn start_with(config: &Path, data: &Path, failpoints: &str, env: &[(&str, &str)]) -> Dev {
        let _ = std::fs::remove_file(data.join("endpoints.json"));
        let child = Command::new(MERIDIAN)
            .args(["dev", "--ports", "auto", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(data)
            .env("MERIDIAN_FAILPOINTS", failpoints)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut dev = Dev { child, data: data.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !data.join("endpoints.json").exists() {
            if let Some(status) = dev.child.try_wait().unwrap() {
                panic!("meridian dev exited early: {status}");
            }
            assert!(Instant::now() < deadline, "meridian dev wrote no endpoints.json in 60 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        dev
    }

    fn json(&self, name: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.data.join(name)).unwrap()).unwrap()
    }

    fn grpc(&self, region: &str) -> String {
        format!("http://{}", self.json("endpoints.json")["regions"][region]["grpc"].as_str().unwrap())
    }

    fn http(&self, region: &str) -> String {
        self.json("endpoints.json")["regions"][region]["http"]
            .as_str()
            .unwrap()
            .trim_start_matches("http://")
            .to_owned()
    }

    fn dicom_port(&self, region: &str) -> u16 {
        self.json("endpoints.json")["regions"][region]["dicom"]["port"].as_u64().unwrap() as u16
    }

    fn mllp_port(&self, region: &str) -> u16 {
        self.json("endpoints.json")["regions"][region]["mllp"]["port"].as_u64().unwrap() as u16
    }

    fn token(&self, principal: &str) -> String {
        self.json("tokens.json")["principals"][principal]["token"].as_str().unwrap().to_owned()
    }

    /// SIGINT, as Ctrl-C sends it; the process must exit cleanly.
    fn interrupt(self) {
        self.stop_with("INT");
    }

    /// SIGTERM, as an orchestrator sends it; the process must exit cleanly.
    fn terminate(self) {
        self.stop_with("TERM");
    }

    fn stop_with(mut self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        // Liveness, not speed: a stop that never comes fails here.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "meridian dev exited with {status} after SIG{signal}");
                break;
            }
            assert!(Instant::now() < deadline, "meridian dev did not stop within 60 s of SIG{signal}");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!self.data.join("endpoints.json").exists(), "a stopped dev leaves no endpoints.json behind");
    }
}

impl Dev {
    /// Waits for the process to die on its own (an armed failpoint).
    fn wait_for_crash(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(!status.success(), "meridian dev was to crash, and exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "meridian dev did not crash at its failpoint");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn simulate_runs_the_example_with_both_policies_side_by_side() {
    let out = tempfile::TempDir::new().unwrap();
    let (json, svg) = (out.path().join("day.json"), out.path().join("day.svg"));
    let run = Command::new(MERIDIAN)
        .arg("simulate")
        .arg(repo().join("deploy/examples/simulate/scenario.toml"))
        .arg("--add")
        .arg(repo().join("deploy/examples/simulate/two-offshore-neuro.toml"))
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{text}{}", String::from_utf8_lossy(&run.stderr));
    assert!(text.contains("22 readers"), "the added roster joins: {text}");
    let stat_row = text.lines().find(|l| l.starts_with("all") && l.contains("stat")).unwrap();
    assert!(stat_row.contains('%') && text.contains("meridian") && text.contains("fifo"), "{text}");
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(results["policies"].as_array().unwrap().len(), 2);
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));

    // A scenario that does not read is an error that names the field.
    let bad = out.path().join("bad.toml");
    std::fs::write(&bad, "[day]\nstart = \"yesterday\"\n").unwrap();
    let run = Command::new(MERIDIAN).arg("simulate").arg(&bad).output().unwrap();
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("day.start"), "{}", String::from_utf8_lossy(&run.stderr));
}

fn storescu_verbose(port: u16, files: &[PathBuf]) -> String {
    let out = Command::new("storescu")
        .args(["-v", "-aet", "ACME_CT1", "-aec", "MERIDIAN_ACME", "127.0.0.1", &port.to_string()])
        .args(files)
        .env("TCP_NODELAY", "1")
        .output()
        .expect("storescu (dcmtk) is installed: scripts/test installs it");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Every envelope (and its record's raw value) of one of us-east's
/// topics, read from the log file of a stopped `meridian dev`.
fn topic_events(
    data: &Path,
    class: meridian_events::DataClass,
    stream: &str,
) -> (Vec<(Vec<u8>, meridian_events::Envelope)>, meridian_log::embedded::EmbeddedKeyStore) {
    region_topic_events(data, "us-east", class, stream)
}

/// The same, of any region's topic.
fn region_topic_events(
    data: &Path,
    region: &str,
    class: meridian_events::DataClass,
    stream: &str,
) -> (Vec<(Vec<u8>, meridian_events::Envelope)>, meridian_log::embedded::EmbeddedKeyStore) {
    use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
    use meridian_log::{EventLog, Position, TopicName};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let log = EmbeddedLog::open(&data.join(region).join("log.redb"), EmbeddedOptions::default()).unwrap();
        let topic = TopicName::new(region, class, stream).unwrap();
        let from = (0..log.partitions(&topic).await.unwrap()).map(|p| Position::start(topic.clone(), p)).collect();
        let mut reader = log.reader(from).await.unwrap();
        let mut events = Vec::new();
        loop {
            let batch = reader.next_batch(1_000, Duration::from_millis(200)).await.unwrap();
            if batch.is_empty() {
                return (events, log.key_store());
            }
            events.extend(batch.into_iter().map(|r| {
                let envelope = r.envelope().unwrap();
                (r.value, envelope)
            }));
        }
    })
}

/// What us-east's log holds of stored instances: SOP Instance UID → the
/// object keys and SHA-256s its InstanceReceived events name.
fn stored_instances(data: &Path) -> Vec<(String, String, String)> {
    use meridian_events::payload::Payload;
    let (events, keys) = topic_events(data, meridian_events::DataClass::Phi, "ingest");
    events
        .iter()
        .filter_map(|(_, e)| match e.open(&keys) {
            Ok(Payload::InstanceReceived(r)) => Some((r.sop_instance_uid, r.object_key, r.sha256)),
            _ => None,
        })
        .collect()
}

/// The Python with the tools the tests drive (scripts/test installs them).
fn python() -> PathBuf {
    std::env::var_os("MERIDIAN_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/meridian/tools/venv/bin/python")
    })
}

/// The SOP Instance UIDs acme-pacs finds with QIDO-RS in us-east.
fn visible_instances(dev: &Dev) -> Vec<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (status, _, found) =
        runtime.block_on(http_get(&dev.http("us-east"), "/dicomweb/instances", Some(&dev.token("acme-pacs"))));
    assert_eq!(status, 200, "{found}");
    let uids = found.as_array().unwrap().iter().filter_map(|i| i["00080018"]["Value"][0].as_str());
    uids.map(str::to_owned).collect()
}

/// pydicom's test files copied into `dir` with fresh UIDs, by
/// `integration-tests/python/dicomweb_check.py`: (transfer syntax, path).
fn pydicom_files(dir: &Path) -> Vec<(String, String)> {
    let script = repo().join("integration-tests/python/dicomweb_check.py");
    let listed = Command::new(python()).arg(&script).arg("files").arg(dir).output().unwrap();
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let text = String::from_utf8_lossy(&listed.stdout).into_owned();
    text.lines().filter_map(|l| l.split_once(' ')).map(|(ts, p)| (ts.to_owned(), p.to_owned())).collect()
}

/// Runs the script's `mode` checks against us-east's DICOMweb and asserts
/// they all passed (the script says `passed` last).
fn python_checks(dev: &Dev, mode: &str, files: &Path, passed: &str) {
    let script = repo().join("integration-tests/python/dicomweb_check.py");
    let checked = Command::new(python())
        .arg(&script)
        .arg(mode)
        .arg(format!("http://{}/dicomweb", dev.http("us-east")))
        .arg(dev.data.join("tokens.json"))
        .arg(files)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&checked.stdout).into_owned() + &String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success() && said.contains(passed), "{said}");
}

#[test]
fn dicomweb_gives_a_real_client_what_dimse_stored_in_every_transfer_syntax_and_audits_each_read() {
    use meridian_events::payload::Payload;
    let data = tempfile::TempDir::new().unwrap();
    let files = tempfile::TempDir::new().unwrap();
    let dev = Dev::start(data.path());
    let port = dev.dicom_port("us-east").to_string();
    // Native syntaxes with storescu proposing exactly that one; compressed
    // files with dcmsend, which proposes the file's own.
    for (ts, path) in pydicom_files(files.path()) {
        let (ts, path) = (ts.as_str(), path.as_str());
        let native = match ts {
            "1.2.840.10008.1.2" => Some("-xi"),
            "1.2.840.10008.1.2.1" => Some("-xe"),
            "1.2.840.10008.1.2.1.99" => Some("-xd"),
            "1.2.840.10008.1.2.2" => Some("-xb"),
            _ => None,
        };
        let mut send = match native {
            Some(option) => {
                let mut c = Command::new("storescu");
                c.arg(option);
                c
            }
            None => {
                let mut c = Command::new("dcmsend");
                c.arg("-dn");
                c
            }
        };
        let out = send
            .args(["-aet", "ACME_CT1", "-aec", "MERIDIAN_ACME", "127.0.0.1", &port, path])
            .env("TCP_NODELAY", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "sending {path} ({ts}): {}", String::from_utf8_lossy(&out.stderr));
    }
    python_checks(&dev, "check", files.path(), "all DICOMweb checks passed");
    dev.interrupt();

    // Each read was audited in the home region, with opaque ids only.
    let (audit, _) = topic_events(data.path(), meridian_events::DataClass::Operational, "audit");
    let accessed: Vec<_> = audit
        .iter()
        .filter_map(|(raw, e)| {
            assert!(
                !String::from_utf8_lossy(raw).contains("1.2.826.0.1.3680043.10.543.77"),
                "an audit record names no DICOM UID"
            );
            match e.open_plain() {
                Ok(Payload::PhiAccessed(a)) => Some(a),
                Ok(Payload::AccessDenied(_) | Payload::ConfigurationLoaded(_)) => None,
                other => panic!("the audit topic holds audit records only: {other:?}"),
            }
        })
        .collect();
    for action in [
        "qido-rs.search-studies",
        "qido-rs.search-instances",
        "wado-rs.retrieve-instance",
        "wado-rs.retrieve-study",
        "wado-rs.metadata",
        "wado-rs.retrieve-frames",
    ] {
        assert!(accessed.iter().any(|a| a.action == action && a.principal == "acme-pacs"), "{action} is audited");
    }
    assert!(
        accessed.iter().all(|a| a.principal == "acme-pacs" && a.from_region == "us-east"),
        "refused callers saw nothing, so nothing was audited for them"
    );
    assert!(accessed.iter().all(|a| uuid::Uuid::parse_str(&a.study_id).is_ok()));
}

#[test]
fn no_acknowledged_instance_is_lost_when_the_region_dies_between_put_append_and_acknowledgement() {
    use meridian_integration_tests::dicom::{CtInstance, write_ct};
    use sha2::Digest;
    let data = tempfile::TempDir::new().unwrap();
    let files = tempfile::TempDir::new().unwrap();
    let study = |round: usize, n: usize| -> Vec<PathBuf> {
        let study_uid = format!("1.2.826.0.1.3680043.10.543.{}", 500 + round);
        let series_uid = format!("{study_uid}.1");
        (1..=n)
            .map(|i| {
                let sop_uid = format!("{series_uid}.{i}");
                let pixels = [i as u16, round as u16, 7, 7];
                let ct = CtInstance {
                    study_uid: &study_uid,
                    series_uid: &series_uid,
                    sop_uid: &sop_uid,
                    patient_id: "MRN-CRASH",
                    priority: "",
                    pixels,
                };
                write_ct(files.path(), &ct)
            })
            .collect()
    };
    let mut sent: Vec<PathBuf> = Vec::new();
    let mut acked: Vec<String> = Vec::new();
    // The region dies after the object is durable but before its event,
    // then after the event but before the success status.
    for (round, point) in [(1, "ingest.after_put"), (2, "ingest.after_append")] {
        let mut dev = Dev::start_armed(data.path(), &format!("{point}=abort@3"));
        let batch = study(round, 5);
        let said = storescu_verbose(dev.dicom_port("us-east"), &batch);
        dev.wait_for_crash();
        let this = acknowledged(&said);
        assert_eq!(this.len(), 2, "two acknowledged before the crash at {point}:\n{said}");
        acked.extend(this);
        sent.extend(batch);
    }
    // SIGKILL at an arbitrary moment of a longer send.
    {
        let dev = Dev::start(data.path());
        let batch = study(3, 200);
        let port = dev.dicom_port("us-east");
        let sender = {
            let batch = batch.clone();
            std::thread::spawn(move || storescu_verbose(port, &batch))
        };
        // Once the send is under way (objects are landing), kill it.
        let objects = data.path().join("us-east/objects");
        let before = count_files(&objects);
        let deadline = Instant::now() + Duration::from_secs(30);
        while count_files(&objects) < before + 10 {
            assert!(Instant::now() < deadline, "the send did not get under way");
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = Command::new("kill").args(["-KILL", &dev.child.id().to_string()]).status().unwrap();
        assert!(status.success());
        let this = acknowledged(&sender.join().unwrap());
        assert!(
            !this.is_empty() && this.len() < batch.len(),
            "killed mid-send: {} of {} acknowledged",
            this.len(),
            batch.len()
        );
        acked.extend(this);
        sent.extend(batch);
        drop(dev);
    }

    // Before any retry: every acknowledged instance is visible to QIDO-RS
    // (the restarted region's index caught up from the log).
    let dev = Dev::start(data.path());
    let visible = visible_instances(&dev);
    for file in &acked {
        let uid = Path::new(file).file_stem().unwrap().to_string_lossy().into_owned();
        assert!(visible.contains(&uid), "acknowledged {uid} is retrievable after the crash");
    }

    // The sender retries everything: every instance is stored exactly once.
    let said = storescu_verbose(dev.dicom_port("us-east"), &sent);
    assert_eq!(acknowledged(&said).len(), sent.len(), "{said}");
    dev.interrupt();

    let stored = stored_instances(data.path());
    let uid_of = |file: &str| Path::new(file).file_stem().unwrap().to_string_lossy().into_owned();
    for file in &acked {
        let uid = uid_of(file);
        assert!(stored.iter().any(|(u, _, _)| *u == uid), "acknowledged {uid} is in the log");
    }
    let mut uids: Vec<&String> = stored.iter().map(|(u, _, _)| u).collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), sent.len(), "every sent instance is recorded");
    assert_eq!(stored.len(), sent.len(), "and none twice");
    // Nothing half-written is visible: every recorded object is whole.
    for (uid, key, sha) in &stored {
        let bytes = std::fs::read(data.path().join("us-east/objects").join(key)).unwrap();
        assert_eq!(&hex_of(&sha2::Sha256::digest(&bytes)), sha, "{uid}");
    }
}

/// The multipart/related body of one STOW-RS request of `files`
/// (Part-10), and its Content-Type.
fn stow_body(files: &[PathBuf]) -> (Vec<u8>, String) {
    let boundary = "meridian-stow-test";
    let mut body = Vec::new();
    for f in files {
        body.extend(format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes());
        body.extend(std::fs::read(f).unwrap());
        body.extend(b"\r\n");
    }
    body.extend(format!("--{boundary}--\r\n").as_bytes());
    (body, format!("multipart/related; type=\"application/dicom\"; boundary={boundary}"))
}

/// The SOP Instance UIDs a STOW-RS answer reports stored (its Referenced
/// SOP Sequence).
fn stored_uids(answer: &Value) -> Vec<String> {
    let stored = answer["00081199"]["Value"].as_array().cloned().unwrap_or_default();
    stored.iter().filter_map(|i| i["00081155"]["Value"][0].as_str().map(str::to_owned)).collect()
}

/// One STOW-RS request of `files` to `https` with curl trusting `ca`, with
/// `extra` arguments (a token's header, a client certificate): the status
/// and the body, with what curl said. HTTP/1.1: a refusal answered before
/// the upload is read ends an HTTP/2 stream with RST_STREAM, which curl
/// 7.88 reports as an error in place of the status it received.
fn stow_https(https: &str, ca: &Path, files: &[PathBuf], extra: &[&std::ffi::OsStr]) -> (String, String) {
    use std::io::Write;
    let (body, content_type) = stow_body(files);
    let mut curl = Command::new("curl")
        .args(["-sS", "--http1.1", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca)
        .args(extra)
        .args(["-H", &format!("Content-Type: {content_type}"), "--data-binary", "@-"])
        .arg(format!("{https}/dicomweb/studies"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = curl.stdin.take().unwrap().write_all(&body);
    let out = curl.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or_default();
    (code.to_owned(), body.to_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// One STOW-RS request of `files` (Part-10) over a fresh connection; the
/// status and body, or `None` when the connection broke first.
fn stow(addr: &str, token: &str, files: &[PathBuf]) -> Option<(u16, Value)> {
    use std::io::{Read, Write};
    let (body, content_type) = stow_body(files);
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    let head = format!(
        "POST /dicomweb/studies HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(&body).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, serde_json::from_str(body).ok()?))
}

#[test]
fn stow_rs_stores_through_the_same_checks_and_write_path_and_answers_each_part() {
    use meridian_events::payload::Payload;
    let data = tempfile::TempDir::new().unwrap();
    let files = tempfile::TempDir::new().unwrap();
    let dev = Dev::start(data.path());
    pydicom_files(files.path());
    python_checks(&dev, "stow", files.path(), "all STOW-RS checks passed");
    dev.interrupt();

    // The residency refusal is on record, and the refused parts are listed
    // for the tenant with opaque ids and reasons only.
    let (storage, _) = topic_events(data.path(), meridian_events::DataClass::Operational, "storage");
    let refusals: Vec<_> = storage
        .iter()
        .filter_map(|(_, e)| match e.open_plain() {
            Ok(Payload::PhiWriteRefused(r)) => Some(r),
            _ => None,
        })
        .collect();
    assert!(refusals.iter().any(|r| r.tenant == "northwind" && r.region == "us-east"), "{refusals:?}");
    let (ingest, _) = topic_events(data.path(), meridian_events::DataClass::Operational, "ingest");
    let rejected: Vec<_> = ingest
        .iter()
        .filter_map(|(raw, e)| match e.open_plain() {
            Ok(Payload::InstanceRejected(r)) => {
                assert!(
                    !String::from_utf8_lossy(raw).contains("1.2.826.0.1.3680043.10.543.77"),
                    "no UID in a rejection"
                );
                Some(r.reason_code)
            }
            _ => None,
        })
        .collect();
    for code in ["unreadable_data_set", "study_mismatch", "residency"] {
        assert!(rejected.iter().any(|c| c == code), "{code} among {rejected:?}");
    }
}

#[test]
fn every_instance_stow_rs_reported_stored_survives_a_sigkill_mid_request() {
    use meridian_integration_tests::dicom::{CtInstance, write_ct};
    let data = tempfile::TempDir::new().unwrap();
    let files = tempfile::TempDir::new().unwrap();
    let study = "1.2.826.0.1.3680043.10.543.600";
    let series = format!("{study}.1");
    let all: Vec<PathBuf> = (1..=120u16)
        .map(|i| {
            let sop = format!("{series}.{i}");
            let ct = CtInstance {
                study_uid: study,
                series_uid: &series,
                sop_uid: &sop,
                patient_id: "MRN-STOW",
                priority: "",
                pixels: [i, 1, 2, 3],
            };
            write_ct(files.path(), &ct)
        })
        .collect();
    let dev = Dev::start(data.path());
    let (addr, token) = (dev.http("us-east"), dev.token("acme-pacs"));
    let (tx, rx) = std::sync::mpsc::channel::<Vec<String>>();
    let sender = {
        let all = all.clone();
        std::thread::spawn(move || {
            for chunk in all.chunks(4) {
                let Some((200, answer)) = stow(&addr, &token, chunk) else { return };
                if tx.send(stored_uids(&answer)).is_err() {
                    return;
                }
            }
        })
    };
    // A few requests answered, then SIGKILL while the next is in flight.
    let mut reported: Vec<String> = Vec::new();
    while reported.len() < 12 {
        reported.extend(rx.recv_timeout(Duration::from_secs(30)).expect("STOW-RS answers"));
    }
    let status = Command::new("kill").args(["-KILL", &dev.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    sender.join().unwrap();
    reported.extend(rx.try_iter().flatten());
    assert!(reported.len() < all.len(), "the kill came mid-send ({} reported)", reported.len());
    drop(dev);

    let dev = Dev::start(data.path());
    let visible = visible_instances(&dev);
    for uid in &reported {
        assert!(visible.contains(uid), "{uid} was reported stored and is retrievable after SIGKILL");
    }
    dev.interrupt();
}

/// SIGKILL mid-association over DICOM TLS and mid-STOW-RS over HTTPS:
/// every instance dcmtk saw acknowledged and every instance a STOW-RS
/// answer reported stored is retrievable after the restart.
#[test]
fn every_instance_acknowledged_over_tls_survives_a_sigkill_mid_association_and_mid_stow() {
    use meridian_integration_tests::dicom::{CtInstance, acknowledged, write_ct};
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::examples_with_tls(config.path(), "kill", false);
    let data = tempfile::TempDir::new().unwrap();
    let tls = data.path().join("secrets/tls");
    std::fs::create_dir_all(&tls).unwrap();
    let certs = meridian_integration_tests::test_certificates(&tls, "kill", &[]);

    // Two studies: one for the association, one for STOW-RS.
    let files = tempfile::TempDir::new().unwrap();
    let study = |study: &str, n: u16| -> Vec<(PathBuf, String)> {
        let series = format!("{study}.1");
        (1..=n)
            .map(|i| {
                let sop = format!("{series}.{i}");
                let ct = CtInstance {
                    study_uid: study,
                    series_uid: &series,
                    sop_uid: &sop,
                    patient_id: "MRN-TLS-KILL",
                    priority: "",
                    pixels: [i, 1, 2, 3],
                };
                (write_ct(files.path(), &ct), sop)
            })
            .collect()
    };
    let over_dicom = study("1.2.826.0.1.3680043.10.543.610", 400);
    let over_stow = study("1.2.826.0.1.3680043.10.543.611", 160);

    let dev = Dev::start_configured(config.path(), data.path(), "");
    let endpoints = dev.json("endpoints.json");
    let https = endpoints["regions"]["us-east"]["http"].as_str().unwrap().to_owned();
    let token = dev.token("acme-pacs");

    // storescu over TLS, its verbose output to a file read as it goes.
    let said_path = files.path().join("storescu.out");
    let said_file = std::fs::File::create(&said_path).unwrap();
    let mut storescu = Command::new("storescu")
        .args(["-v", "+tla", "+cf"])
        .arg(&certs.ca)
        .args(["-aet", "ACME_CT1", "-aec", "MERIDIAN_ACME", "127.0.0.1", &dev.dicom_port("us-east").to_string()])
        .args(over_dicom.iter().map(|(path, _)| path))
        .env("TCP_NODELAY", "1")
        .stdout(said_file.try_clone().unwrap())
        .stderr(said_file)
        .spawn()
        .unwrap();

    // STOW-RS over HTTPS, four instances a request, each answer's stored
    // instances handed back.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<String>>();
    let stower = {
        let paths: Vec<PathBuf> = over_stow.iter().map(|(path, _)| path.clone()).collect();
        let (ca, https, bearer) = (certs.ca.clone(), https.clone(), format!("Authorization: Bearer {token}"));
        std::thread::spawn(move || {
            for chunk in paths.chunks(4) {
                let (_, said) = stow_https(&https, &ca, chunk, &["-H".as_ref(), bearer.as_ref()]);
                let Ok(answer) = serde_json::from_str::<Value>(&said) else { return };
                if tx.send(stored_uids(&answer)).is_err() {
                    return;
                }
            }
        })
    };

    // Both under way, then SIGKILL.
    let mut reported: Vec<String> = Vec::new();
    while reported.len() < 12 {
        reported.extend(rx.recv_timeout(Duration::from_secs(30)).expect("STOW-RS answers over HTTPS"));
    }
    wait_for("storescu acknowledged some over TLS", 30, || {
        let said = std::fs::read_to_string(&said_path).unwrap_or_default();
        (acknowledged(&said).len() >= 10).then_some(())
    });
    let status = Command::new("kill").args(["-KILL", &dev.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let _ = storescu.wait();
    stower.join().unwrap();
    reported.extend(rx.try_iter().flatten());
    let said = std::fs::read_to_string(&said_path).unwrap();
    let by_path: std::collections::HashMap<String, String> =
        over_dicom.iter().map(|(path, sop)| (path.display().to_string(), sop.clone())).collect();
    let acked: Vec<String> = acknowledged(&said).iter().filter_map(|f| by_path.get(f).cloned()).collect();
    assert!(acked.len() < over_dicom.len(), "the kill came mid-association ({} acknowledged)", acked.len());
    assert!(reported.len() < over_stow.len(), "the kill came mid-STOW ({} reported)", reported.len());
    drop(dev);

    let dev = Dev::start_configured(config.path(), data.path(), "");
    let https = dev.json("endpoints.json")["regions"]["us-east"]["http"].as_str().unwrap().to_owned();
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&certs.ca)
        .args(["-H", &format!("Authorization: Bearer {}", dev.token("acme-pacs"))])
        .arg(format!("{https}/dicomweb/instances"))
        .output()
        .unwrap();
    let found: Value = serde_json::from_slice(&out.stdout).expect("QIDO-RS answers over HTTPS");
    let visible: std::collections::HashSet<String> = found
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["00080018"]["Value"][0].as_str().map(str::to_owned))
        .collect();
    for uid in acked.iter().chain(&reported) {
        assert!(visible.contains(uid), "{uid} was acknowledged over TLS and is retrievable after SIGKILL");
    }
    dev.interrupt();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_upload_stores_answers_each_instance_and_replays_a_key() {
    use meridian_proto::ingest::v1 as ingest;
    use meridian_proto::ingest::v1::ingest_service_client::IngestServiceClient;
    use meridian_proto::ingest::v1::upload_instances_request::Part;
    use meridian_proto::ingest::v1::upload_instances_response::Result as Answer;
    let data = tempfile::TempDir::new().unwrap();
    let files = tempfile::TempDir::new().unwrap();
    let dev = Dev::start(data.path());
    pydicom_files(files.path());
    let junk = files.path().join("junk.dcm");
    std::fs::write(&junk, b"not a DICOM file").unwrap();
    // pydicom's UN_sequence.dcm as it ships (674 bytes): dicom-rs reads its
    // undefined-length UN on as explicit VR, to a 3.5 GiB value it would
    // make room for before failing; ingest refuses it first, naming where.
    let located = Command::new(python())
        .args([
            "-c",
            "import pydicom, os; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files'))",
        ])
        .output()
        .unwrap();
    let test_files = PathBuf::from(String::from_utf8_lossy(&located.stdout).trim());
    std::fs::copy(test_files.join("UN_sequence.dcm"), files.path().join("UN_sequence.dcm")).unwrap();

    // `meridian send`: every file of the folder, the broken ones refused
    // with their reasons and the others stored.
    let sent = meridian_send(data.path(), "us-east", "acme-pacs", files.path());
    let said = String::from_utf8_lossy(&sent.stdout);
    assert_eq!(sent.status.code(), Some(1), "a refusal fails the command: {said}");
    assert!(said.contains("12 of 14 instances stored, 2 refused"), "{said}");
    assert!(said.contains("junk.dcm: 0xC000 unreadable_data_set: not a DICOM Part-10 file"), "{said}");
    assert!(
        said.contains(
            "UN_sequence.dcm: 0xC000 length_beyond_data_set: element (0008,1115) at byte 32 of the data set \
             declares 3758161918 bytes, but only 284 follow"
        ),
        "{said}"
    );

    // The stream by hand: a key answered once is replayed, not stored again;
    // the same key with other bytes is refused; a malformed stream ends
    // with INVALID_ARGUMENT naming the instance.
    let channel = Channel::from_shared(dev.grpc("us-east")).unwrap().connect().await.unwrap();
    let mut client = IngestServiceClient::new(channel);
    let token = dev.token("acme-pacs");
    let ct = std::fs::read(files.path().join("CT_small.dcm")).unwrap();
    let mr = std::fs::read(files.path().join("MR_small.dcm")).unwrap();
    let instance = |key: &str, bytes: &[u8]| {
        let header =
            ingest::InstanceHeader { idempotency_key: key.into(), size_bytes: bytes.len() as u64, label: key.into() };
        let mut parts = vec![Part::Header(header)];
        parts.extend(bytes.chunks(10_000).map(|c| Part::Chunk(c.to_vec())));
        parts
    };
    let mut parts = instance("k1", &ct);
    parts.extend(instance("k1", &ct));
    parts.extend(instance("k1", &mr));
    parts.push(Part::Chunk(b"stray".to_vec()));
    let messages: Vec<_> = parts.into_iter().map(|p| ingest::UploadInstancesRequest { part: Some(p) }).collect();
    let mut answers = client.upload_instances(bearer(tokio_stream::iter(messages), &token)).await.unwrap().into_inner();
    let first = answers.message().await.unwrap().unwrap();
    let Some(Answer::Stored(stored)) = first.result else { panic!("{first:?}") };
    assert!(!stored.replayed && uuid::Uuid::parse_str(&stored.instance_id).is_ok());
    let again = answers.message().await.unwrap().unwrap();
    let Some(Answer::Stored(replayed)) = again.result else { panic!("{again:?}") };
    assert!(replayed.replayed);
    assert_eq!(replayed.instance_id, stored.instance_id);
    let other = answers.message().await.unwrap().unwrap();
    let Some(Answer::Refused(refused)) = other.result else { panic!("{other:?}") };
    assert_eq!(refused.reason_code, "idempotency_key_reused");
    let broken = answers.message().await.unwrap_err();
    assert_eq!(broken.code(), Code::InvalidArgument);
    assert!(broken.message().contains("without an InstanceHeader"), "{}", broken.message());

    // Another facility's tenant may not store here; an admin may not send.
    let denied =
        client.upload_instances(bearer(tokio_stream::iter(Vec::new()), &dev.token("acme-admin"))).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    dev.interrupt();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_the_grpc_upload_answered_stored_survives_a_sigkill_mid_stream() {
    use meridian_proto::ingest::v1 as ingest;
    use meridian_proto::ingest::v1::ingest_service_client::IngestServiceClient;
    use meridian_proto::ingest::v1::upload_instances_request::Part;
    use meridian_proto::ingest::v1::upload_instances_response::Result as Answer;
    let data = tempfile::TempDir::new().unwrap();
    let files = tempfile::TempDir::new().unwrap();
    // 200 CT slices of 512×512 (≈ 0.5 MB each): long enough a stream to be
    // killed in the middle of.
    let series = format!("{}.700", meridian_integration_tests::bench::STUDY);
    let (paths, _) = meridian_integration_tests::bench::slices(files.path(), 200, &series).unwrap();
    let mut messages = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        let sop = format!("{series}.{}", i + 1);
        let bytes = std::fs::read(path).unwrap();
        let header =
            ingest::InstanceHeader { idempotency_key: sop.clone(), size_bytes: bytes.len() as u64, label: sop };
        messages.push(ingest::UploadInstancesRequest { part: Some(Part::Header(header)) });
        messages.extend(
            bytes.chunks(1 << 20).map(|c| ingest::UploadInstancesRequest { part: Some(Part::Chunk(c.to_vec())) }),
        );
    }
    let dev = Dev::start(data.path());
    let channel = Channel::from_shared(dev.grpc("us-east")).unwrap().connect().await.unwrap();
    let mut client = IngestServiceClient::new(channel);
    let request = bearer(tokio_stream::iter(messages), &dev.token("acme-pacs"));
    let mut answers = client.upload_instances(request).await.unwrap().into_inner();
    // Some instances answered, then SIGKILL while the rest are in flight.
    let mut reported = Vec::new();
    while reported.len() < 10 {
        let answer = answers.message().await.unwrap().expect("the upload answers");
        assert!(matches!(answer.result, Some(Answer::Stored(_))), "{answer:?}");
        reported.push(answer.label);
    }
    let status = Command::new("kill").args(["-KILL", &dev.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    while let Ok(Some(answer)) = answers.message().await {
        if let Some(Answer::Stored(_)) = answer.result {
            reported.push(answer.label);
        }
    }
    assert!(reported.len() < 200, "the kill came mid-stream ({} answered)", reported.len());
    drop(dev);

    let dev = Dev::start(data.path());
    let visible = tokio::task::block_in_place(|| visible_instances(&dev));
    for uid in &reported {
        assert!(visible.contains(uid), "{uid} was answered stored and is retrievable after SIGKILL");
    }
    dev.interrupt();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_stops_on_sigterm_while_busy_and_restarts_from_its_snapshots_queueing_each_study_once() {
    const STUDIES: usize = 1_500;
    let data = tempfile::TempDir::new().unwrap();
    let files = tempfile::TempDir::new().unwrap();
    // One-instance STAT studies: each is queued for routing at its first
    // instance, so routing's intake has a backlog when the signal comes.
    meridian_integration_tests::bench::small_studies(files.path(), 9, STUDIES, 1, 16, "STAT").unwrap();
    let dev = Dev::start(data.path());
    let sent = meridian_send(data.path(), "us-east", "acme-pacs", files.path());
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stdout));
    dev.terminate();
    let snapshots = data.path().join("us-east/snapshots");
    for name in ["events.summary", "ingest.studies", "routing.worklist"] {
        assert!(snapshots.join(format!("{name}.snapshot.json")).exists(), "{name} was snapshotted at shutdown");
    }

    // The restart continues from the snapshots: ingest and routing wrote
    // nothing after theirs, so they read no tail at all.
    let dev = Dev::start(data.path());
    let sre = dev.token("sre");
    let (status, _, summary) = http_get(&dev.http("us-east"), "/v1/summary", Some(&sre)).await;
    assert_eq!(status, 200, "{summary}");
    let projections = summary["projections"].as_array().unwrap();
    for p in projections {
        assert_eq!(p["opened"]["from_snapshot"], true, "{p}");
    }
    let opened = |name: &str| projections.iter().find(|p| p["name"] == name).unwrap().clone();
    assert_eq!(opened("ingest.studies")["opened"]["tail"], 0, "{}", opened("ingest.studies"));
    assert_eq!(opened("routing.worklist")["opened"]["tail"], 0, "{}", opened("routing.worklist"));
    assert_eq!(opened("ingest.studies")["open_studies"], STUDIES);
    // Every consumer outside the projections says what it passed, and why.
    let mut consumers: Vec<&str> =
        summary["consumers"].as_array().unwrap().iter().filter_map(|c| c["consumer"].as_str()).collect();
    consumers.sort();
    assert_eq!(consumers, ["routing.intake", "storage.derivatives", "storage.index", "storage.landed"]);
    assert!(summary["consumers"].as_array().unwrap().iter().all(|c| c["skipped_total"] == 0), "{summary}");

    // 1,500 studies are more than one QIDO-RS page (1,000 by default): the
    // page is cut, the response says so (PS3.18 8.3.4.2), and the next
    // page holds the rest.
    let acme = dev.token("acme-pacs");
    let (status, headers, first) = http_get(&dev.http("us-east"), "/dicomweb/studies", Some(&acme)).await;
    assert_eq!((status, first.as_array().map(Vec::len)), (200, Some(1_000)));
    let warning = headers.get("warning").expect("a cut result carries a Warning");
    assert!(warning.starts_with("299 ") && warning.contains("There are additional results that can be requested"));
    let (_, headers, rest) = http_get(&dev.http("us-east"), "/dicomweb/studies?offset=1000", Some(&acme)).await;
    assert_eq!(rest.as_array().map(Vec::len), Some(STUDIES - 1_000));
    assert!(!headers.contains_key("warning"), "the last page is whole");

    // Routing takes in the rest of its backlog; every study is queued once.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, _, summary) = http_get(&dev.http("us-east"), "/v1/summary", Some(&sre)).await;
        if summary["by_type"]["StudyQueued"].as_u64() == Some(STUDIES as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "not every study was queued: {}", summary["by_type"]);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    dev.interrupt();
    let (routing, _) =
        tokio::task::block_in_place(|| topic_events(data.path(), meridian_events::DataClass::Operational, "routing"));
    let mut queued: Vec<_> = routing
        .iter()
        .filter_map(|(_, e)| match e.open_plain() {
            Ok(meridian_events::payload::Payload::StudyQueued(q)) => Some(q.study_id),
            _ => None,
        })
        .collect();
    queued.sort();
    let total = queued.len();
    queued.dedup();
    assert_eq!((total, queued.len()), (STUDIES, STUDIES), "each study queued exactly once across the stop");

    // Offline, the study index gives its free pages back; it serves the
    // same studies afterwards.
    let compact = Command::new(MERIDIAN).args(["index", "compact", "--data-dir"]).arg(data.path()).output().unwrap();
    let said = String::from_utf8_lossy(&compact.stdout);
    assert!(
        compact.status.success() && said.contains("us-east: study index"),
        "{said}{}",
        String::from_utf8_lossy(&compact.stderr)
    );
    let dev = Dev::start(data.path());
    let acme = dev.token("acme-pacs");
    let (status, _, rest) = http_get(&dev.http("us-east"), "/dicomweb/studies?offset=1000", Some(&acme)).await;
    assert_eq!((status, rest.as_array().map(Vec::len)), (200, Some(STUDIES - 1_000)));
    dev.interrupt();
}

/// `meridian send` of `path` to `region` as `principal`, against the
/// `meridian dev` whose data directory is `data`.
fn meridian_send(data: &Path, region: &str, principal: &str, path: &Path) -> std::process::Output {
    Command::new(MERIDIAN)
        .args(["send", "--region", region, "--as", principal, "--data-dir"])
        .arg(data)
        .arg(path)
        .output()
        .unwrap()
}

/// The files under `dir`, recursively (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_study_under_a_deidentified_contract_is_derived_into_the_allowed_region_only() {
    use meridian_events::DataClass;
    use meridian_events::payload::Payload;
    use meridian_proto::ingest::v1 as ipb;
    use meridian_proto::ingest::v1::ingest_service_client::IngestServiceClient;
    let data = tempfile::TempDir::new().unwrap();
    let files = tempfile::TempDir::new().unwrap();
    // Northwind (home eu-west) gives Lotus's offshore readers
    // de-identified images in in-south, with modified dates.
    let study_uid = "1.2.826.0.1.3680043.10.543.77";
    for (i, burned_in) in [(1, "NO"), (2, "NO"), (3, "YES")] {
        let sop = format!("{study_uid}.1.{i}");
        let file = meridian_integration_tests::dicom::write_ct(
            files.path(),
            &meridian_integration_tests::dicom::CtInstance {
                study_uid,
                series_uid: "1.2.826.0.1.3680043.10.543.77.1",
                sop_uid: &sop,
                patient_id: "NW-MRN-31",
                priority: "",
                pixels: [i, 2, 3, 4],
            },
        );
        let modified = Command::new("dcmodify")
            .args(["-nb", "-i", &format!("(0028,0301)={burned_in}"), "-i", "(0010,0010)=Kelly^Niamh"])
            .args(["-i", "(0008,0020)=20240301", "-i", "(0008,0080)=Dublin General"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(modified.status.success(), "{}", String::from_utf8_lossy(&modified.stderr));
    }
    for f in files_under(files.path()) {
        if f.extension().is_some_and(|e| e == "dump") {
            std::fs::remove_file(f).unwrap();
        }
    }
    // The region dies after the first derivative object is stored, before
    // DerivativeCreated is committed.
    let mut dev = Dev::start_armed(data.path(), "derivatives.after_put=abort@1");
    let sent = meridian_send(data.path(), "eu-west", "northwind-pacs", files.path());
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stdout));

    let channel = Channel::from_shared(dev.grpc("eu-west")).unwrap().connect().await.unwrap();
    let complete = ipb::CompleteStudyRequest {
        study: Some(ipb::complete_study_request::Study::StudyInstanceUid(study_uid.into())),
    };
    let done = IngestServiceClient::new(channel)
        .complete_study(bearer(complete, &dev.token("northwind-pacs")))
        .await
        .unwrap()
        .into_inner();
    assert!(done.completed_now && done.instance_count == 3, "{done:?}");
    dev.wait_for_crash();
    let destination = data.path().join("in-south/objects/deid");
    assert_eq!(files_under(&destination).len(), 1, "one object stored before the crash");

    // After the restart the study is derived again: the two released
    // instances appear in in-south's store, and nowhere else.
    let dev = Dev::start(data.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    while files_under(&destination).len() < 2 {
        assert!(Instant::now() < deadline, "no derivative in in-south within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let derived = files_under(&destination);
    assert_eq!(derived.len(), 2, "{derived:?}");
    for region in ["eu-west", "us-east"] {
        assert!(files_under(&data.path().join(region).join("objects/deid")).is_empty(), "{region}");
    }
    for path in &derived {
        let key = path.strip_prefix(data.path().join("in-south/objects")).unwrap().to_string_lossy().into_owned();
        assert!(key.starts_with("deid/northwind/northwind-lotus/"), "{key}");
        let bytes = std::fs::read(path).unwrap();
        for phi in ["Kelly", "NW-MRN-31", "Dublin", study_uid] {
            assert!(!bytes.windows(phi.len()).any(|w| w == phi.as_bytes()), "{phi} in {key}");
        }
        // pydicom reads it, and it says what was done.
        let script = repo().join("integration-tests/python/deid_oracle.py");
        let read = Command::new(python()).arg(&script).arg("read").arg(path).output().unwrap();
        assert!(read.status.success(), "{}", String::from_utf8_lossy(&read.stderr));
        let attrs: Value = serde_json::from_slice(&read.stdout).unwrap();
        assert_eq!(attrs["00120062"][1], "YES");
        assert_eq!(attrs["00280303"][1], "MODIFIED");
        assert!(attrs["0020000D"][1].as_str().unwrap().starts_with("2.25."));
        let date = attrs["00080020"][1].as_str().unwrap();
        assert!(date.len() == 8 && date < "20230301", "study date moved back a year or more: {date}");
    }
    dev.interrupt();

    // Another restart derives nothing twice.
    let dev = Dev::start(data.path());
    tokio::time::sleep(Duration::from_secs(3)).await;
    dev.interrupt();
    assert_eq!(files_under(&destination).len(), 2);
    let log_dir = data.path().to_path_buf();
    let (events, _) = tokio::task::spawn_blocking(move || {
        region_topic_events(&log_dir, "eu-west", DataClass::Operational, "storage")
    })
    .await
    .unwrap();
    let created: Vec<_> = events
        .iter()
        .filter_map(|(_, e)| match e.open_plain() {
            Ok(Payload::DerivativeCreated(c)) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "{created:?}");
    let c = &created[0];
    assert_eq!((c.instance_count, c.withheld_count), (2, 1));
    assert_eq!((c.destination_region.as_str(), c.contract.as_str()), ("in-south", "northwind-lotus"));
    assert_eq!(c.study_id, done.study_id);
    assert_ne!(c.derivative_study_id, c.study_id);
    assert!(c.derivative_study_id.parse::<uuid::Uuid>().is_ok());
    assert_eq!(c.options, ["retain_longitudinal_modified_dates", "retain_patient_characteristics"]);
}

/// Copies a configuration directory (the examples) to `to`.
/// A fixed-offset zone (no daylight saving) whose local hour is `hour` now.
// The region under test reads the real clock, so the test must too.
#[allow(clippy::disallowed_methods)]
fn zone_at_hour(hour: i64) -> String {
    let utc_hour = jiff::Timestamp::now().as_second().rem_euclid(86_400) / 3_600;
    let mut offset = (hour - utc_hour).rem_euclid(24);
    if offset > 12 {
        offset -= 24;
    }
    // POSIX sign: Etc/GMT-3 is three hours east of UTC.
    match offset {
        0 => "Etc/GMT".into(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    }
}

#[test]
fn each_study_goes_to_the_contract_that_takes_it_at_its_facilitys_hour() {
    use meridian_events::payload::Payload;
    // acme with a day contract (atlantic-rads, 07:00 to 19:00 facility
    // time) and a nighthawk contract (lotus-teleradiology, 19:00 to 07:00);
    // its two facilities sit where it is now 10:00 and 02:00.
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::copy_dir(&repo().join("deploy/examples/dev"), config.path());
    let tenant = config.path().join("tenants/acme.toml");
    let text = std::fs::read_to_string(&tenant).unwrap().replacen(
        "time_zone = \"America/New_York\"",
        &format!("time_zone = \"{}\"", zone_at_hour(10)),
        1,
    );
    let text = text.replacen("time_zone = \"America/New_York\"", &format!("time_zone = \"{}\"", zone_at_hour(2)), 1);
    // A third facility, also at 02:00, that no contract takes at night.
    let annex = format!(
        "\n[[facilities]]\nname = \"acme-annex\"\njurisdiction = \"US-NY\"\ntime_zone = \"{}\"\ncalling_ae_titles = [\"ACME_ANNEX\"]\n",
        zone_at_hour(2)
    );
    std::fs::write(&tenant, text + &annex).unwrap();
    let day = config.path().join("contracts/acme-atlantic.toml");
    let text = std::fs::read_to_string(&day).unwrap();
    let with_hours =
        |t: &str, hours: &str| t.replacen("\n[delivery]", &format!("\n[applies]\nhours = {hours}\n\n[delivery]"), 1);
    std::fs::write(&day, with_hours(&text, r#"{ start = "07:00", end = "19:00" }"#)).unwrap();
    let nights = with_hours(&text, r#"{ start = "19:00", end = "07:00" }"#)
        .replace("\n[applies]\n", "\n[applies]\nfacilities = [\"acme-general\", \"acme-imaging-center\"]\n")
        .replace("name = \"acme-atlantic\"", "name = \"acme-nights\"")
        .replace(
            r#"reading_groups = ["atlantic-rads", "lotus-teleradiology"]"#,
            r#"reading_groups = ["lotus-teleradiology"]"#,
        );
    std::fs::write(config.path().join("contracts/acme-nights.toml"), nights).unwrap();
    let check = Command::new(MERIDIAN).args(["config", "check"]).arg(config.path()).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    let data = tempfile::TempDir::new().unwrap();
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let files = tempfile::TempDir::new().unwrap();
    let send = |study: &str, calling: &str| {
        let file = meridian_integration_tests::dicom::one_instance_study(files.path(), study, "MRN-HOURS", "STAT");
        let (ok, said) =
            meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), calling, "MERIDIAN_ACME", &[file]);
        assert!(ok, "{said}");
    };
    send("1.2.826.0.1.3680043.10.543.201", "ACME_CT1"); // acme-general, 10:00 there
    send("1.2.826.0.1.3680043.10.543.202", "ACMEIC_PACS"); // acme-imaging-center, 02:00 there
    send("1.2.826.0.1.3680043.10.543.203", "ACME_ANNEX"); // acme-annex, 02:00 there: no contract
    let deadline = Instant::now() + Duration::from_secs(30);
    let queued = loop {
        let out = Command::new(MERIDIAN)
            .args(["log", "tail", "--json", "--stream", "routing", "--region", "us-east", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        let queued: Vec<Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["payload_type"] == "meridian.events.v1.StudyQueued")
            .map(|e| e["payload"].clone())
            .collect();
        if queued.len() == 2 {
            break queued;
        }
        assert!(Instant::now() < deadline, "two STAT studies queued within 30 s: {queued:?}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let contract_of = |facility: &str| {
        queued.iter().find(|q| q["facility"] == facility).map(|q| q["contract"].clone()).unwrap_or_default()
    };
    assert_eq!(contract_of("acme-general"), "acme-atlantic", "{queued:?}");
    assert_eq!(contract_of("acme-imaging-center"), "acme-nights", "{queued:?}");
    // The annex's study is kept as unroutable, and its tenant can list it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let out = Command::new(MERIDIAN)
            .args(["unroutable", "--region", "us-east", "--as", "acme-pacs", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listed = String::from_utf8(out.stdout).unwrap();
        if !listed.is_empty() {
            break listed;
        }
        assert!(Instant::now() < deadline, "the annex's study listed as unroutable within 30 s");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains("facility=acme-annex") && listed.contains("no contract of tenant acme takes"), "{listed}");
    let denied = Command::new(MERIDIAN)
        .args(["unroutable", "--region", "us-east", "--as", "dr-ortiz", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!denied.status.success(), "a reader does not list a tenant's studies");
    dev.interrupt();
    // The choice is on the log from the first instance on.
    let (ingest, _) = topic_events(data.path(), meridian_events::DataClass::Operational, "ingest");
    let started: Vec<String> = ingest
        .iter()
        .filter_map(|(_, e)| match e.open_plain() {
            Ok(Payload::StudyStarted(s)) => Some(s.contract),
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 3);
    assert!(started.contains(&"acme-atlantic".to_string()) && started.contains(&"acme-nights".to_string()));
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.filter_map(Result::ok).map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

async fn http_get(addr: &str, path: &str, token: Option<&str>) -> (u16, HashMap<String, String>, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines.filter_map(|l| l.split_once(": ")).map(|(k, v)| (k.to_lowercase(), v.to_owned())).collect();
    (status, headers, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_three_regions_with_health_reflection_dicom_echo_and_auth_and_restarts() {
    let data = tempfile::TempDir::new().unwrap();
    let dev = Dev::start(data.path());

    let endpoints = dev.json("endpoints.json");
    let regions: Vec<&String> = endpoints["regions"].as_object().unwrap().keys().collect();
    assert_eq!(regions, ["eu-west", "in-south", "us-east"]);
    let tokens = dev.json("tokens.json");
    for name in
        ["acme-pacs", "acme-admin", "northwind-pacs", "northwind-admin", "atlantic-admin", "dr-ortiz", "dr-nair", "sre"]
    {
        let p = &tokens["principals"][name];
        assert!(p["token"].as_str().is_some_and(|t| t.split('.').count() == 3), "{name} has a JWT");
        assert!(p["kind"].is_string() && p["roles"].is_array(), "{name}: {p}");
    }
    assert_eq!(tokens["principals"]["acme-pacs"]["tenant"], "acme");
    assert_eq!(tokens["principals"]["dr-nair"]["group"], "lotus-teleradiology");

    for region in ["us-east", "eu-west", "in-south"] {
        let channel = Channel::from_shared(dev.grpc(region)).unwrap().connect().await.unwrap();
        // Health.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let status = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.unwrap();
        assert_eq!(status.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
        // The same through `meridian health`, as a probe or `helm test` asks.
        let asked = Command::new(MERIDIAN).args(["health", "--endpoint", &dev.grpc(region)]).output().unwrap();
        assert!(asked.status.success(), "{}", String::from_utf8_lossy(&asked.stdout));
        let routing = ["health", "--endpoint", &dev.grpc(region), "--service", "meridian.routing.v1.RoutingService"];
        assert!(Command::new(MERIDIAN).args(routing).output().unwrap().status.success());
        let unknown = ["health", "--endpoint", &dev.grpc(region), "--service", "meridian.nothing.v1.Nothing"];
        let asked = Command::new(MERIDIAN).args(unknown).output().unwrap();
        assert!(!asked.status.success() && String::from_utf8_lossy(&asked.stdout).contains("NotFound"));
        // Reflection v1 and v1alpha list Meridian's service.
        {
            use tonic_reflection::pb::v1::ServerReflectionRequest;
            use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
            use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
            let mut client = ServerReflectionClient::new(channel.clone());
            let req = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut replies = client.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
            let reply = replies.message().await.unwrap().unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
                panic!("no service list")
            };
            let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            assert!(names.contains(&"meridian.admin.v1.AdminService".to_owned()), "{names:?}");
            assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
        }
        {
            use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
            use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
            let mut client = ServerReflectionClient::new(channel.clone());
            let req = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut replies = client.server_reflection_info(tokio_stream::iter(vec![req])).await.unwrap().into_inner();
            assert!(replies.message().await.unwrap().is_some());
        }

        // Auth over gRPC: no token, a bad token, the wrong principal, the right one.
        let mut admin = AdminServiceClient::new(channel);
        let err = admin.list_topics(admin::ListTopicsRequest {}).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert_eq!(err.get_error_details().error_info().unwrap().reason, "TOKEN_MISSING");
        let err = admin.list_topics(bearer(admin::ListTopicsRequest {}, "not-a-token")).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        assert_eq!(err.get_error_details().error_info().unwrap().reason, "TOKEN_MALFORMED");
        let err = admin.list_topics(bearer(admin::ListTopicsRequest {}, &dev.token("acme-admin"))).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let details = err.get_error_details();
        assert_eq!(details.error_info().unwrap().reason, "PERMISSION_DENIED");
        assert_eq!(details.resource_info().unwrap().resource_name, format!("region {region}"));
        let topics = admin
            .list_topics(bearer(admin::ListTopicsRequest {}, &dev.token("sre")))
            .await
            .unwrap()
            .into_inner()
            .topics;
        assert!(
            topics.iter().any(|t| t.name == format!("meridian.{region}.phi.ingest") && t.partitions == 8),
            "{topics:?}"
        );

        // Auth over HTTP.
        let addr = dev.http(region);
        let (status, _, body) = http_get(&addr, "/healthz", None).await;
        assert_eq!((status, body["status"].as_str()), (200, Some("serving")));
        let (status, headers, body) = http_get(&addr, "/v1/whoami", None).await;
        assert_eq!(status, 401);
        assert_eq!(headers.get("www-authenticate").map(String::as_str), Some("Bearer"));
        assert_eq!(body["error"]["reason"], "TOKEN_MISSING");
        let (status, _, body) = http_get(&addr, "/v1/whoami", Some(&dev.token("dr-nair"))).await;
        assert_eq!(status, 200);
        assert_eq!(body["principal"]["reader"], "dr-priya-nair");
        let (status, _, body) = http_get(&addr, "/v1/summary", Some(&dev.token("dr-nair"))).await;
        assert_eq!((status, body["error"]["code"].as_str()), (403, Some("PERMISSION_DENIED")));
        let (status, _, body) = http_get(&addr, "/v1/summary", Some(&dev.token("sre"))).await;
        assert_eq!(status, 200);
        let stats = &body["projection"]["stats"];
        assert!(stats["applied"].as_u64().unwrap() >= 1, "{body}");
        assert_eq!(stats["unreadable_payloads"], 0);
    }

    // A real DICOM peer (dcmtk's echoscu): the called AE title names the
    // tenant, the calling AE title the facility; anything else is refused
    // with the PS3.8 reason.
    let echo = |region: &str, calling: &str, called: &str| {
        let out = Command::new("echoscu")
            .args(["-aet", calling, "-aec", called, "127.0.0.1", &dev.dicom_port(region).to_string()])
            .env("TCP_NODELAY", "1")
            .output()
            .expect("echoscu (dcmtk) is installed: scripts/test installs it");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(dev.json("endpoints.json")["regions"]["us-east"]["dicom"]["host"], "127.0.0.1");
    assert!(echo("us-east", "ACME_CT1", "MERIDIAN_ACME").0);
    assert!(echo("us-east", "ACMEIC_PACS", "MERIDIAN_ACME").0, "127.0.0.1 is in the facility's source networks");
    assert!(echo("eu-west", "NW_DUB_PACS", "MERIDIAN_NW").0);
    let (ok, err) = echo("us-east", "ACME_CT1", "MERIDIAN_NW");
    assert!(!ok && err.contains("Called AE Title Not Recognized"), "northwind's AE is not in us-east: {err}");
    let (ok, err) = echo("eu-west", "ACME_CT1", "MERIDIAN_NW");
    assert!(!ok && err.contains("Calling AE Title Not Recognized"), "{err}");

    // Every refusal above left an AccessDenied in its region's audit: a
    // missing or broken token with where it came from, a principal out of
    // its scope over gRPC and HTTP, an association no facility's.
    let denials = |region: &str, expected: usize| {
        wait_for(&format!("{expected} refusals audited in {region}"), 10, || {
            let found = tail_payloads_in(data.path(), region, "audit", "AccessDenied");
            (found.len() >= expected).then_some(found)
        })
    };
    let field = |d: &Value, name: &str| d[name].as_str().unwrap_or_default().to_owned();
    let us_east = denials("us-east", 6);
    let seen: Vec<(String, String, String)> =
        us_east.iter().map(|d| (field(d, "code"), field(d, "principal"), field(d, "action"))).collect();
    for expected in [
        ("TOKEN_MISSING", "", "authenticate"),
        ("TOKEN_MALFORMED", "", "authenticate"),
        ("PERMISSION_DENIED", "acme-admin", "tail_log"),
        ("PERMISSION_DENIED", "dr-nair", "tail_log"),
        ("CALLED_AE_NOT_RECOGNIZED", "", "associate"),
    ] {
        let expected = (expected.0.to_owned(), expected.1.to_owned(), expected.2.to_owned());
        assert!(seen.contains(&expected), "{expected:?} in {seen:?}");
    }
    let missing: Vec<&Value> = us_east.iter().filter(|d| field(d, "code") == "TOKEN_MISSING").collect();
    assert!(missing.len() >= 2, "one over gRPC, one over HTTP: {us_east:?}");
    assert!(
        missing.iter().all(|d| field(d, "networkAccessPoint").starts_with("127.0.0.1:")),
        "a refused token says where it came from: {missing:?}"
    );
    let denied = us_east.iter().find(|d| field(d, "principal") == "acme-admin").unwrap();
    assert_eq!((field(denied, "tenant"), field(denied, "region")), ("acme".into(), "us-east".into()));
    assert_eq!(field(denied, "resource"), "region us-east");
    // A tenant's administrator exports its trail as ATNA audit messages;
    // another tenant's is refused; a range with nothing in it is empty.
    let export = |who: &str, tenant: &str, range: &[&str]| {
        let out = Command::new(MERIDIAN)
            .args(["audit", "export", "--region", "us-east", "--as", who, "--tenant", tenant, "--data-dir"])
            .arg(data.path())
            .args(range)
            .output()
            .unwrap();
        let lines: Vec<Value> =
            String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (out.status.success(), lines, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, trail, err) = export("acme-admin", "acme", &[]);
    assert!(ok, "{err}");
    assert!(
        trail.iter().any(|m| m["EventIdentification"]["EventID"]["csd-code"] == "110113"
            && m["ActiveParticipant"][0]["UserID"] == "acme-admin"
            && m["EventIdentification"]["EventOutcomeIndicator"] == "4"),
        "acme-admin's refusal is in acme's trail: {trail:?}"
    );
    assert!(trail.iter().all(|m| m["AuditSourceIdentification"]["AuditEnterpriseSiteID"] == "acme"), "{trail:?}");
    let (ok, _, err) = export("acme-admin", "northwind", &[]);
    assert!(!ok && err.contains("PermissionDenied"), "{err}");
    let (ok, old, err) = export("sre", "acme", &["--to", "2001-01-01"]);
    assert!(ok && old.is_empty(), "{err} {old:?}");
    let (ok, _, err) = export("sre", "acme", &["--from", "last tuesday"]);
    assert!(!ok && err.contains("--from \"last tuesday\""), "{err}");

    // And each region's audit says which configuration the process started with.
    let loaded = tail_payloads_in(data.path(), "in-south", "audit", "ConfigurationLoaded");
    assert_eq!(loaded.len(), 1, "{loaded:?}");
    assert_eq!((field(&loaded[0], "process"), field(&loaded[0], "region")), ("dev".into(), "in-south".into()));
    assert!(field(&loaded[0], "digest").len() == 64 && loaded[0]["files"].as_u64().unwrap() > 10, "{loaded:?}");
    let eu_west = denials("eu-west", 6);
    let association = eu_west.iter().find(|d| field(d, "code") == "CALLING_AE_NOT_RECOGNIZED").unwrap();
    assert_eq!(
        (field(association, "tenant"), field(association, "networkAccessPoint")),
        ("northwind".into(), "127.0.0.1".into())
    );

    // The CLI against the running process: readers were registered at first start.
    let tail = |region: &str| {
        let out = Command::new(MERIDIAN)
            .args(["log", "tail", "--region", region, "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let us_east = tail("us-east");
    // The readers who sit in us-east; the others are their regions' to
    // register (us-east folds the copies of theirs).
    assert_eq!(us_east.lines().filter(|l| l.contains("ReaderRegistered")).count(), 2, "{us_east}");
    assert!(us_east.contains("dr-ana-ortiz") && us_east.contains("dr-ben-cole"));
    // --study keeps one aggregate's events (here a reader's, the only aggregates yet).
    let aggregate =
        us_east.lines().next().unwrap().split_whitespace().nth(3).unwrap().split('/').nth(1).unwrap().to_owned();
    let out = Command::new(MERIDIAN)
        .args(["log", "tail", "--region", "us-east", "--study", &aggregate, "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let one = String::from_utf8(out.stdout).unwrap();
    assert_eq!(one.lines().count(), 1, "{one}");
    assert!(one.contains(&aggregate));
    let rebuild = Command::new(MERIDIAN)
        .args(["projection", "rebuild", "events.summary", "--region", "in-south", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&rebuild.stdout);
    // In-south's two readers registered, billing's prices put in force, the
    // configuration the process started with, and the five refusals above.
    assert!(rebuild.status.success() && text.contains("9 events applied") && text.contains("matches"), "{text}");
    assert!(text.contains("AccessDenied=5, ConfigurationLoaded=1, PricesInForce=1, ReaderRegistered=2"), "{text}");
    for name in ["ingest.studies", "routing.worklist"] {
        let rebuild = Command::new(MERIDIAN)
            .args(["projection", "rebuild", name, "--region", "us-east", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&rebuild.stdout);
        assert!(rebuild.status.success() && text.contains("matches"), "{name}: {text}");
    }
    let unknown = Command::new(MERIDIAN)
        .args(["projection", "rebuild", "no.such", "--region", "us-east", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success() && said.contains("routing.worklist"), "the known ones are named: {said}");
    let denied = Command::new(MERIDIAN)
        .args(["log", "tail", "--region", "us-east", "--as", "acme-pacs", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("PermissionDenied"));

    // A STAT study sent with storescu: stored in us-east, started, and
    // queued by routing at its first instance; the tail shows no PHI.
    let files = tempfile::TempDir::new().unwrap();
    let study_uid = "1.2.826.0.1.3680043.10.543.99";
    let file = meridian_integration_tests::dicom::write_ct(
        files.path(),
        &meridian_integration_tests::dicom::CtInstance {
            study_uid,
            series_uid: "1.2.826.0.1.3680043.10.543.99.1",
            sop_uid: "1.2.826.0.1.3680043.10.543.99.1.1",
            patient_id: "MRN-E2E-9",
            priority: "STAT",
            pixels: [1, 2, 3, 4],
        },
    );
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &[file]);
    assert!(ok, "{said}");
    let mut seen = String::new();
    for _ in 0..40 {
        seen = tail("us-east");
        if seen.contains("StudyQueued") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for event in ["InstanceReceived", "StudyStarted", "StudyQueued"] {
        assert!(seen.contains(event), "{event} in us-east's log:\n{seen}");
    }
    assert!(!seen.contains("MRN-E2E-9") && !seen.contains(study_uid), "no PHI in the tail:\n{seen}");
    assert!(!seen.contains("StudyQueued {"), "one readable line per event, not Rust's Debug:\n{seen}");
    let queued = seen.lines().find(|l| l.contains(" StudyQueued ")).unwrap();
    assert!(queued.contains(" priority=stat") || queued.contains(" priority=STAT"), "{queued}");
    // --json: one object per line, the payload in protobuf's JSON mapping.
    let out = Command::new(MERIDIAN)
        .args(["log", "tail", "--json", "--region", "us-east", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let events: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let of = |short: &str| {
        events.iter().find(|e| e["payload_type"] == format!("meridian.events.v1.{short}")).unwrap().clone()
    };
    let received = of("InstanceReceived");
    assert_eq!((received["sealed"].clone(), received["payload"].clone()), (Value::Bool(true), Value::Null));
    let queued = of("StudyQueued");
    assert_eq!(queued["payload"]["studyId"], queued["aggregate_id"], "{queued}");
    assert!(queued["occurred_at"].as_str().unwrap().ends_with('Z'));

    // The tenant's ingest API in its home region: the PACS completes the
    // study now and lists its rejections; a reader may do neither.
    {
        use meridian_proto::ingest::v1 as ipb;
        use meridian_proto::ingest::v1::ingest_service_client::IngestServiceClient;
        let channel = Channel::from_shared(dev.grpc("us-east")).unwrap().connect().await.unwrap();
        let mut ingest = IngestServiceClient::new(channel);
        let pacs = dev.token("acme-pacs");
        let complete = || ipb::CompleteStudyRequest {
            study: Some(ipb::complete_study_request::Study::StudyInstanceUid(study_uid.into())),
        };
        let done = ingest.complete_study(bearer(complete(), &pacs)).await.unwrap().into_inner();
        assert!(done.completed_now && done.instance_count == 1, "{done:?}");
        assert!(!done.study_id.contains(study_uid), "answered with the opaque id");
        assert!(!ingest.complete_study(bearer(complete(), &pacs)).await.unwrap().into_inner().completed_now);
        let none = ipb::ListRejectionsRequest { page_size: 0 };
        assert!(ingest.list_rejections(bearer(none, &pacs)).await.unwrap().into_inner().rejections.is_empty());
        let err = ingest.list_rejections(bearer(none, &dev.token("dr-ortiz"))).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    }

    // Routing in every region: a reader's worklist gathered from all of them
    // (empty until ingest queues studies), commands to a study's region.
    let run = |args: &[&str]| {
        let out = Command::new(MERIDIAN).args(args).arg("--data-dir").arg(data.path()).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = run(&["worklist", "--as", "dr-ortiz"]);
    assert!(ok && text.contains("0 studies on dr-ana-ortiz's worklist"), "{text}");
    let (ok, text) = run(&["worklist", "--as", "atlantic-admin", "--reader", "dr-ana-ortiz"]);
    assert!(ok, "a group admin sees the group's worklists: {text}");
    let (ok, text) = run(&["worklist", "--as", "dr-nair", "--reader", "dr-ana-ortiz"]);
    assert!(!ok && text.contains("PermissionDenied"), "{text}");
    let (ok, text) = run(&["claim-next", "--region", "us-east", "--as", "dr-ortiz"]);
    assert!(!ok && text.contains("NotFound: no eligible study for dr-ana-ortiz"), "{text}");

    // Ctrl-C stops it cleanly; a restart continues where it stopped.
    dev.interrupt();
    let dev = Dev::start(data.path());
    let again = tail("us-east");
    assert_eq!(
        again.lines().filter(|l| l.contains("ReaderRegistered")).count(),
        2,
        "us-east registers its two readers, and a restart nobody twice:\n{again}"
    );
    drop(dev);
}

/// The payloads of `stream`'s events of `kind` in us-east, as `meridian
/// log tail --json` shows them.
/// A client command against `meridian dev`'s us-east in `data`: whether
/// it succeeded, and what it printed (stdout, then stderr).
fn us_east(data: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(MERIDIAN).args(args).args(["--region", "us-east", "--data-dir"]).arg(data).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

fn tail_payloads(data: &Path, stream: &str, kind: &str) -> Vec<Value> {
    tail_payloads_in(data, "us-east", stream, kind)
}

fn tail_payloads_in(data: &Path, region: &str, stream: &str, kind: &str) -> Vec<Value> {
    tail_events(data, region, stream, kind).into_iter().map(|e| e["payload"].clone()).collect()
}

/// The events of `kind` on `region`'s `stream`, as `meridian log tail --json` prints them.
fn tail_events(data: &Path, region: &str, stream: &str, kind: &str) -> Vec<Value> {
    tail_events_trusting(data, region, stream, kind, None)
}

/// [`tail_events`] of a region that speaks TLS with a certificate of `ca`.
fn tail_events_trusting(data: &Path, region: &str, stream: &str, kind: &str, ca: Option<&Path>) -> Vec<Value> {
    let mut command = Command::new(MERIDIAN);
    command.args(["log", "tail", "--json", "--stream", stream, "--region", region, "--data-dir"]).arg(data);
    if let Some(ca) = ca {
        command.arg("--ca").arg(ca);
    }
    let out = command.output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["payload_type"] == format!("meridian.events.v1.{kind}"))
        .collect()
}

/// The copies of `source`'s `stream` events the replicator brought into
/// `region`'s log.
fn copied_events(data: &Path, region: &str, source: &str, stream: &str) -> Vec<Value> {
    let out = Command::new(MERIDIAN)
        .args(["log", "tail", "--json", "--stream", stream, "--copies-of", source, "--region", region, "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
}

#[test]
fn the_replicator_copies_each_regions_operational_events_where_its_contracts_reach_and_nothing_phi() {
    let data = tempfile::TempDir::new().unwrap();
    let files = tempfile::TempDir::new().unwrap();
    let dev = Dev::start(data.path());
    let study_uid = "1.2.826.0.1.3680043.10.543.912";
    let file = meridian_integration_tests::dicom::one_instance_study(files.path(), study_uid, "MRN-REPL", "STAT");
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &[file]);
    assert!(ok, "{said}");
    let queued = wait_for("the study queued in us-east", 30, || {
        tail_events(data.path(), "us-east", "routing", "StudyQueued").into_iter().next()
    });
    // Acme's contract reads from in-south (Lotus): the queueing crosses
    // there as the same event, under us-east's topic name.
    let copy = wait_for("the queueing copied to in-south", 30, || {
        copied_events(data.path(), "in-south", "us-east", "routing")
            .into_iter()
            .find(|e| e["event_id"] == queued["event_id"])
    });
    assert_eq!(copy["topic"], "meridian.us-east.ops.routing");
    assert_eq!(
        (&copy["aggregate_id"], &copy["aggregate_version"]),
        (&queued["aggregate_id"], &queued["aggregate_version"])
    );
    // Ingest's operational events cross too; its PHI topic never does.
    let ingest = wait_for("ingest's events copied", 30, || {
        let copies = copied_events(data.path(), "in-south", "us-east", "ingest");
        copies.iter().any(|e| e["payload_type"] == "meridian.events.v1.StudyStarted").then_some(copies)
    });
    assert!(ingest.iter().all(|e| e["data_class"] == "ops"), "{ingest:?}");
    assert!(ingest.iter().all(|e| e["topic"] == "meridian.us-east.ops.ingest"), "{ingest:?}");
    assert!(!ingest.iter().any(|e| e["payload_type"] == "meridian.events.v1.InstanceReceived"));
    // And back: in-south's readers' events reach us-east.
    wait_for("in-south's reader events in us-east", 30, || {
        copied_events(data.path(), "us-east", "in-south", "routing")
            .into_iter()
            .find(|e| e["payload_type"] == "meridian.events.v1.ReaderRegistered")
    });
    dev.interrupt();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_in_another_region_sees_claims_and_changes_through_their_own_region() {
    use meridian_proto::routing::v1 as pb;
    use meridian_proto::routing::v1::routing_service_client::RoutingServiceClient;
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::nair_always_on_pull_examples(&repo().join("deploy/examples/dev"), config.path());
    let data = tempfile::TempDir::new().unwrap();
    let files = tempfile::TempDir::new().unwrap();
    let dev = Dev::start_configured(config.path(), data.path(), "");
    // Each region registered only the readers who sit in it.
    for (region, sitting) in [("us-east", 2), ("eu-west", 1), ("in-south", 2)] {
        let registered = tail_payloads_in(data.path(), region, "routing", "ReaderRegistered");
        assert_eq!(registered.len(), sitting, "{region}: {registered:?}");
        assert!(registered.iter().all(|r| r["region"] == region), "{region}: {registered:?}");
    }
    let study_uid = "1.2.826.0.1.3680043.10.543.2201";
    let file = meridian_integration_tests::dicom::one_instance_study(files.path(), study_uid, "MRN-2201", "STAT");
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &[file]);
    assert!(ok, "{said}");
    let queued = wait_for("the study queued in us-east", 30, || {
        tail_payloads(data.path(), "routing", "StudyQueued").into_iter().next()
    });
    let study = queued["studyId"].as_str().unwrap().to_owned();
    let run = |args: &[&str]| {
        let out = Command::new(MERIDIAN).args(args).arg("--data-dir").arg(data.path()).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // Her worklist comes from in-south, where she sits: us-east's study is
    // on it (copied there with no PHI), naming its home region.
    let listed = wait_for("us-east's study on dr-priya-nair's worklist in in-south", 30, || {
        let (ok, text) = run(&["worklist", "--as", "dr-nair"]);
        (ok && text.contains(&study)).then_some(text)
    });
    let line = listed.lines().find(|l| l.contains(&study)).unwrap();
    assert!(line.starts_with("us-east") && line.contains("offshore") && line.contains("stat"), "{listed}");
    assert!(listed.contains("(from in-south, where they sit)") && !listed.contains(study_uid), "{listed}");
    // As a deployment is asked: her region's address and a token.
    let (ok, text) = run(&[
        "worklist",
        "--token",
        &dev.token("dr-nair"),
        "--reader",
        "dr-priya-nair",
        "--endpoint",
        &dev.grpc("in-south"),
    ]);
    assert!(ok && text.lines().any(|l| l.starts_with("us-east") && l.contains(&study)), "{text}");
    // Why she may read it, asked where she sits: as us-east would say.
    let explained =
        RoutingServiceClient::new(Channel::from_shared(dev.grpc("in-south")).unwrap().connect().await.unwrap())
            .explain_eligibility(bearer(
                pb::ExplainEligibilityRequest { reader_id: "dr-priya-nair".into(), study_id: study.clone() },
                &dev.token("dr-nair"),
            ))
            .await
            .unwrap()
            .into_inner();
    assert!(explained.eligible && !explained.checks.is_empty(), "{explained:?}");
    // A claim goes to the study's home region; in-south says so.
    let (ok, said) = run(&["claim", &study, "--region", "in-south", "--as", "dr-nair"]);
    assert!(!ok && said.contains("FailedPrecondition") && said.contains("homed in us-east"), "{said}");
    let (ok, said) = run(&["claim", &study, "--region", "us-east", "--as", "dr-nair"]);
    assert!(ok && said.contains(&study), "{said}");
    wait_for("the claim shown in in-south", 30, || {
        let (ok, text) = run(&["worklist", "--as", "dr-nair"]);
        (ok && text.contains("1 studies assigned to dr-priya-nair")).then_some(())
    });

    // Her own changes are in-south's to write; us-east learns them from
    // the copies and refuses to write them itself.
    let client = |region: &str| {
        let url = dev.grpc(region);
        async move { RoutingServiceClient::new(Channel::from_shared(url).unwrap().connect().await.unwrap()) }
    };
    let nair = dev.token("dr-nair");
    let away = || pb::SetAvailabilityRequest { reader_id: "dr-priya-nair".into(), status: "away".into() };
    let refused = client("us-east").await.set_availability(bearer(away(), &nair)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("sits in in-south"), "{refused:?}");
    let details = refused.get_error_details();
    let violation = &details.precondition_failure().unwrap().violations[0];
    assert_eq!((violation.r#type.as_str(), violation.subject.as_str()), ("REGION", "in-south/dr-priya-nair"));
    client("in-south").await.set_availability(bearer(away(), &nair)).await.unwrap();
    let reader = || pb::GetReaderRequest { reader_id: "dr-priya-nair".into() };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut us_east = client("us-east").await;
    loop {
        let r = us_east.get_reader(bearer(reader(), &nair)).await.unwrap().into_inner().reader.unwrap();
        if r.status == "away" {
            assert_eq!(r.region, "in-south");
            break;
        }
        assert!(Instant::now() < deadline, "her availability in us-east within 30 s: {r:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Nothing about her was written by us-east.
    let written_here = tail_payloads_in(data.path(), "us-east", "routing", "AvailabilityChanged");
    assert!(written_here.is_empty(), "{written_here:?}");
    dev.interrupt();
}

/// `meridian residency report` against `data`'s `meridian dev` with `args`:
/// whether it exited 0, its stdout and its stderr.
fn residency(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(MERIDIAN).args(["residency", "report", "--data-dir"]).arg(data).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `bytes` at `key` of `region`'s local object store in `data`,
/// behind the platform's back.
fn plant(data: &Path, region: &str, key: &str, bytes: &[u8]) -> PathBuf {
    let path = data.join(region).join("objects").join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_residency_report_names_every_object_where_it_may_not_be_and_every_access() {
    let data = tempfile::TempDir::new().unwrap();
    let files = tempfile::TempDir::new().unwrap();
    let dev = Dev::start(data.path());
    let study_uid = "1.2.826.0.1.3680043.10.543.2207";
    let file = meridian_integration_tests::dicom::one_instance_study(files.path(), study_uid, "MRN-2207", "ROUTINE");
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &[file]);
    assert!(ok, "{said}");
    wait_for("the instance's event", 30, || tail_events(data.path(), "us-east", "ingest", "StudyStarted").pop());
    // The PACS reads its study back: an access, audited in us-east.
    let addr = dev.http("us-east").trim_start_matches("http://").to_owned();
    let (status, _, _) =
        http_get(&addr, &format!("/dicomweb/studies/{study_uid}/metadata"), Some(&dev.token("acme-pacs"))).await;
    assert_eq!(status, 200);

    // Clean: acme's one object in us-east, the access, nothing else.
    let (ok, out, err) = residency(data.path(), &[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("us-east   holds 1 PHI object of acme"), "{out}");
    assert!(out.contains("eu-west   holds nothing") && out.contains("in-south  holds nothing"), "{out}");
    let access = out.lines().find(|l| l.contains(" access ")).unwrap_or_else(|| panic!("no access: {out}"));
    assert!(access.starts_with("us-east   access ") && access.contains(" acme study "), "{out}");
    assert!(access.contains(" from us-east: wado-rs.metadata"), "{out}");
    assert!(!out.contains(study_uid) && !out.contains("MRN-2207"), "no UID or patient id in the report: {out}");
    assert!(err.contains("residency: 3 regions, no object where it may not be"), "{err}");
    // Only the SRE reads it.
    let (ok, out, err) = residency(data.path(), &["--as", "acme-admin"]);
    assert!(!ok && out.contains("us-east   UNANSWERED PermissionDenied"), "{out}");
    assert!(err.contains("residency: 0 violations, 3 of 3 regions unanswered"), "{err}");

    // Planted behind the platform's back: acme's object copied into
    // eu-west's folder; a file outside the key scheme; an object of acme's
    // that no event names, written two hours ago; a northwind derivative
    // in us-east, which is no destination of its contract.
    let stored = wait_for("acme's object", 10, || {
        files_under(&data.path().join("us-east/objects/phi"))
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "dcm"))
    });
    let key = stored.strip_prefix(data.path().join("us-east/objects")).unwrap().to_string_lossy().replace('\\', "/");
    plant(data.path(), "eu-west", &key, &std::fs::read(&stored).unwrap());
    plant(data.path(), "us-east", "exports/patients.csv", b"name,mrn\n");
    let sha = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
    let ids = [
        "0190f4a2-6f1c-8d3e-a000-000000000001",
        "0190f4a2-6f1c-8d3e-a000-000000000002",
        "0190f4a2-6f1c-8d3e-a000-000000000003",
    ];
    let orphan = format!("phi/acme/{}/{}/{}.{sha}.dcm", ids[0], ids[1], ids[2]);
    let planted = plant(data.path(), "us-east", &orphan, b"DICM");
    #[allow(clippy::disallowed_methods)] // an object written two hours ago
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7_200);
    std::fs::File::options().write(true).open(&planted).unwrap().set_modified(two_hours_ago).unwrap();
    let recent = format!("phi/acme/{}/{}/{}.{sha}.dcm", ids[0], ids[1], ids[0]);
    plant(data.path(), "us-east", &recent, b"DICM");
    let derivative = format!("deid/northwind/northwind-lotus/{}/{}/{}.{sha}.dcm", ids[0], ids[1], ids[2]);
    plant(data.path(), "us-east", &derivative, b"DICM");

    let (ok, out, err) = residency(data.path(), &[]);
    assert!(!ok, "violations exit non-zero: {out}{err}");
    let violation = |region: &str, rule: &str, key: &str| {
        out.lines().any(|l| l.starts_with(region) && l.contains(&format!("VIOLATION {rule} {key}:")))
    };
    assert!(violation("eu-west", "phi_outside_home", &key), "{out}");
    assert!(violation("us-east", "outside_key_scheme", "exports/patients.csv"), "{out}");
    assert!(violation("us-east", "phi_no_event_names", &orphan), "{out}");
    assert!(violation("us-east", "derivative_outside_destinations", &derivative), "{out}");
    assert!(!out.contains(&recent), "an unnamed object inside the orphan grace may be in flight: {out}");
    assert!(err.contains("residency: 4 violations, 0 of 3 regions unanswered"), "{err}");
    // The inventory: every object, with what its key says it is.
    let (_, out, _) = residency(data.path(), &["--objects"]);
    assert!(out.contains(&format!("us-east   object {orphan} (phi of acme)")), "{out}");
    assert!(out.contains("us-east   object exports/patients.csv (unknown)"), "{out}");
    assert!(out.contains(&format!("eu-west   object {key} (phi of acme)")), "{out}");
    // As JSON, and for one tenant: northwind's derivative only.
    let (ok, json, _) = residency(data.path(), &["--json", "--tenant", "northwind"]);
    assert!(!ok);
    let report: Value = serde_json::from_str(&json).unwrap();
    let rules: Vec<&str> =
        report["violations"].as_array().unwrap().iter().map(|v| v["rule"].as_str().unwrap()).collect();
    // A key outside the scheme names no tenant: it could hold anyone's
    // data, so every tenant's report shows it.
    assert_eq!(rules, ["derivative_outside_destinations", "outside_key_scheme"], "{report}");
    assert_eq!(report["regions"]["us-east"]["derivative"]["northwind"], 1, "{report}");
    assert_eq!(report["violations"][0]["region"], "us-east");
    assert!(report["accesses"].as_array().unwrap().is_empty(), "acme's access is not northwind's: {report}");
    dev.interrupt();
}

/// The examples for a study read across regions end to end: acme on pull
/// with studies complete a second after their last instance;
/// dr-priya-nair (Lotus, in-south: preliminaries, offshore) and
/// dr-ana-ortiz (Atlantic, us-east: finals, onshore) on shift around the
/// clock; acme's RIS (MLLP) and EHR (FHIR) at `ris` and `ehr` on loopback.
fn read_across_regions_examples(to: &Path, ris: u16, ehr: u16) {
    meridian_integration_tests::nair_always_on_pull_examples(&repo().join("deploy/examples/dev"), to);
    completing_in_a_second(to);
    let group = to.join("groups/atlantic-rads.toml");
    let text = std::fs::read_to_string(&group).unwrap();
    let weekdays = r#"shifts = [{ days = ["mon", "tue", "wed", "thu", "fri"], start = "08:00", end = "17:00" }]"#;
    let always =
        r#"shifts = [{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "00:00", end = "23:59" }]"#;
    assert!(text.contains(weekdays), "the example's reader changed");
    std::fs::write(&group, text.replacen(weekdays, always, 1)).unwrap();
    let tenant = to.join("tenants/acme.toml");
    let text = std::fs::read_to_string(&tenant).unwrap();
    let text = text
        .replace("address = \"127.0.0.1:6661\"", &format!("address = \"127.0.0.1:{ris}\""))
        .replace("address = \"https://ehr.acme.example/fhir\"", &format!("address = \"http://127.0.0.1:{ehr}/fhir\""))
        .replace("enabled = false", "enabled = true");
    assert_eq!(text.matches("\nenabled = true").count(), 2, "{text}");
    std::fs::write(&tenant, text).unwrap();
}

#[test]
fn a_head_ct_sent_to_us_east_is_triaged_read_offshore_then_onshore_reported_billed_and_stays_home() {
    let work = tempfile::TempDir::new().unwrap();
    let fhir_python = std::env::var_os("MERIDIAN_FHIR_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/meridian/tools/venv-fhir/bin/python")
    });
    let ris = Receiver::start(&python(), "mllp_receiver.py", work.path(), &[]);
    let ehr = Receiver::start(&fhir_python, "fhir_receiver.py", work.path(), &["--token", "ehr-token-7"]);
    let config = work.path().join("config");
    read_across_regions_examples(&config, ris.port, ehr.port);
    let data = work.path().join("data");
    std::fs::create_dir_all(data.join("secrets")).unwrap();
    std::fs::write(data.join("secrets/acme-ehr.token"), "ehr-token-7\n").unwrap();
    let dev = Dev::start_configured(&config, &data, "");

    // A two-series head CT (the axial series with a bleed on slice 2, and a
    // second series) over one association to us-east.
    let study_uid = "1.2.826.0.1.3680043.10.543.2222";
    let files = work.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let mut slices: Vec<PathBuf> = (1..=3)
        .map(|n| meridian_integration_tests::dicom::head_ct_series_slice(&files, study_uid, 1, n, n == 2))
        .collect();
    slices.extend(
        (1..=2).map(|n| meridian_integration_tests::dicom::head_ct_series_slice(&files, study_uid, 2, n, false)),
    );
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &slices);
    assert!(ok, "{said}");

    // AI triage reads it and raises it to STAT.
    let study = wait_for("the study triaged and raised to STAT", 60, || {
        let triaged = tail_payloads(&data, "routing", "StudyTriaged");
        triaged.into_iter().find(|t| t["priority"] == "stat").map(|t| t["studyId"].as_str().unwrap().to_owned())
    });
    let completed = tail_payloads(&data, "ingest", "StudyCompleted");
    assert!(completed.iter().any(|c| c["studyId"] == study.as_str() && c["seriesCount"] == 2), "{completed:?}");

    // Offered to the offshore reader where she sits, claimed at home.
    let run = |args: &[&str]| {
        let out = Command::new(MERIDIAN).args(args).arg("--data-dir").arg(&data).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let listed = wait_for("the study on dr-priya-nair's worklist in in-south", 30, || {
        let (ok, text) = run(&["worklist", "--as", "dr-nair"]);
        (ok && text.lines().any(|l| l.contains(&study) && l.contains("stat"))).then_some(text)
    });
    let line = listed.lines().find(|l| l.contains(&study)).unwrap();
    assert!(line.starts_with("us-east") && line.contains("offshore") && line.contains("[AI]"), "{listed}");
    let (ok, said) = run(&["claim", &study, "--region", "us-east", "--as", "dr-nair"]);
    assert!(ok, "{said}");
    // She opens the images from home's DICOMweb; the access is audited at
    // home as coming from in-south.
    let cli = |args: &[&str]| us_east(&data, args);
    let url = wait_for("the claim folded by storage", 30, || {
        let (ok, url) = cli(&["report", "open", &study, "--as", "dr-nair"]);
        ok.then(|| url.trim().to_owned())
    });
    let token = dev.token("dr-nair");
    let metadata = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("authorization: Bearer {token}")])
        .arg(format!("{url}/metadata"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&metadata.stdout), "200");
    // The preliminary, written and signed by her in us-east.
    let draft = |reader: &str, impression: &str| {
        cli(&[
            "report",
            "draft",
            &study,
            "--as",
            reader,
            "--findings",
            "Hyperdensity, right frontal.",
            "--impression",
            impression,
            "--field",
            "haemorrhage=present",
        ])
    };
    let (ok, said) = draft("dr-nair", "Acute right frontal haemorrhage.");
    assert!(ok, "{said}");
    let (ok, said) = cli(&["report", "sign", &study, "--as", "dr-nair", "--read-type", "preliminary"]);
    assert!(ok, "{said}");

    // The final, onshore: queued after the preliminary, claimed and signed
    // by dr-ana-ortiz.
    wait_for("the final read queued", 30, || {
        let queued = tail_payloads(&data, "routing", "StudyQueued");
        queued.iter().any(|q| q["studyId"] == study.as_str() && q["readType"] == "final").then_some(())
    });
    let (ok, said) = run(&["claim", &study, "--region", "us-east", "--as", "dr-ortiz"]);
    assert!(ok, "{said}");
    let (ok, said) = wait_for("her draft of the final", 30, || {
        let drafted = draft("dr-ortiz", "Acute right frontal intraparenchymal haemorrhage; agree with preliminary.");
        drafted.0.then_some(drafted)
    });
    assert!(ok, "{said}");
    let (ok, said) = cli(&["report", "sign", &study, "--as", "dr-ortiz", "--read-type", "final"]);
    assert!(ok, "{said}");

    // Delivered: the RIS gets both reads over MLLP, the EHR the final over
    // FHIR, each valid under its validator.
    wait_for("three deliveries", 60, || {
        (tail_payloads(&data, "reporting", "ReportDelivered").len() >= 3).then_some(())
    });
    let ris_got = ris.records();
    assert!(ris_got.iter().all(|r| r["error"] == "" && r["ack"] == "AA"), "{ris_got:?}");
    let results: std::collections::BTreeSet<&str> = ris_got.iter().filter_map(|r| r["obr25"].as_str()).collect();
    assert_eq!(results, ["F", "P"].into_iter().collect(), "{ris_got:?}");
    let ehr_got = ehr.records();
    assert!(ehr_got.iter().any(|r| r["error"] == "" && r["status"] == "final"), "{ehr_got:?}");

    // Charged, and on the month's invoice preview.
    let charges = wait_for("both reads charged", 30, || {
        let c = tail_events(&data, "us-east", "billing", "ChargePosted");
        let mine: Vec<Value> = c.into_iter().filter(|c| c["payload"]["studyId"] == study.as_str()).collect();
        (mine.len() >= 2).then_some(mine)
    });
    let period = charges[0]["payload"]["period"].as_str().unwrap().to_owned();
    let (ok, said) = cli(&["invoice", "preview", "--tenant", "acme", "--period", &period, "--as", "acme-admin"]);
    assert!(ok && said.contains("acme-atlantic total"), "{said}");
    assert!(said.contains("engagement.per_read_type.preliminary.CT"), "{said}");

    // Each read queued, claimed, completed, signed and charged once (as the
    // same run as processes through SIGKILLs ends: processes.rs).
    std::thread::sleep(Duration::from_secs(2));
    for (stream, kind, n) in [
        ("billing", "ChargePosted", 2),
        ("routing", "StudyQueued", 2),
        ("routing", "AssignmentClaimed", 2),
        ("routing", "AssignmentCompleted", 2),
        ("routing", "StudyTriaged", 1),
        ("reporting", "ReportSigned", 2),
        ("ingest", "StudyCompleted", 1),
    ] {
        let ids: std::collections::BTreeSet<String> = tail_events(&data, "us-east", stream, kind)
            .into_iter()
            .filter(|e| e["payload"]["studyId"] == study.as_str())
            // One final in twenty is drawn for peer review: another read.
            .filter(|e| e["payload"]["readType"] != "peer_review")
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), n, "{kind}");
    }

    // And no PHI left home: the residency report is clean; the reader's
    // access is listed as hers, from in-south.
    let out = Command::new(MERIDIAN).args(["residency", "report", "--data-dir"]).arg(&data).output().unwrap();
    let (report, summary) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{report}{summary}");
    assert!(report.contains("us-east   holds 5 PHI objects of acme"), "{report}");
    assert!(report.contains("in-south  holds nothing") && report.contains("eu-west   holds nothing"), "{report}");
    assert!(
        report
            .lines()
            .any(|l| l.contains(&format!("study {study} by dr-nair (group) from in-south: wado-rs.metadata"))),
        "{report}"
    );
    let opened = format!("study {study} by dr-nair (group) from in-south: reporting.open-study");
    assert!(report.lines().any(|l| l.contains(&opened)), "{report}");
    assert!(!report.contains(study_uid) && !report.contains("MRN-AI"), "{report}");
    dev.interrupt();
}

/// Sends Northwind's two-instance CT `study_uid` (no annotation burned
/// into its pixels, so its derivative is released) to eu-west, completes
/// it there, and returns its opaque id once routing queued it.
async fn send_northwind_study(dev: &Dev, data: &Path, study_uid: &str) -> String {
    let files = tempfile::TempDir::new().unwrap();
    for i in 1..=2 {
        meridian_integration_tests::dicom::write_ct(
            files.path(),
            &meridian_integration_tests::dicom::CtInstance {
                study_uid,
                series_uid: &format!("{study_uid}.1"),
                sop_uid: &format!("{study_uid}.1.{i}"),
                patient_id: "NW-MRN-44",
                priority: "",
                pixels: [i, 2, 3, 4],
            },
        );
    }
    for f in files_under(files.path()).into_iter().filter(|f| f.extension().is_some_and(|e| e == "dcm")) {
        let modified = Command::new("dcmodify").args(["-nb", "-i", "(0028,0301)=NO"]).arg(&f).output().unwrap();
        assert!(modified.status.success(), "{}", String::from_utf8_lossy(&modified.stderr));
    }
    for f in files_under(files.path()) {
        if f.extension().is_some_and(|e| e == "dump") {
            std::fs::remove_file(f).unwrap();
        }
    }
    let sent = meridian_send(data, "eu-west", "northwind-pacs", files.path());
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stdout));
    use meridian_proto::ingest::v1 as ipb;
    let channel = Channel::from_shared(dev.grpc("eu-west")).unwrap().connect().await.unwrap();
    let complete = ipb::CompleteStudyRequest {
        study: Some(ipb::complete_study_request::Study::StudyInstanceUid(study_uid.into())),
    };
    let done = ipb::ingest_service_client::IngestServiceClient::new(channel)
        .complete_study(bearer(complete, &dev.token("northwind-pacs")))
        .await
        .unwrap()
        .into_inner();
    assert!(done.completed_now, "{done:?}");
    wait_for("the study queued in eu-west", 30, || {
        let queued = tail_payloads_in(data, "eu-west", "routing", "StudyQueued");
        queued.first().map(|q| q["studyId"].as_str().unwrap().to_owned())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_derivative_is_served_where_it_lands_to_the_reader_holding_its_study_and_audited_there() {
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::northwind_reads_in_in_south(&repo().join("deploy/examples/dev"), config.path(), None);
    let data = tempfile::TempDir::new().unwrap();
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let study_uid = "1.2.826.0.1.3680043.10.543.2244";
    let study = send_northwind_study(&dev, data.path(), study_uid).await;
    // Claimed at home (its worklist is pull).
    let claim = Command::new(MERIDIAN)
        .args(["claim", &study, "--region", "eu-west", "--as", "dr-rao", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(claim.status.success(), "{}", String::from_utf8_lossy(&claim.stderr));

    // In in-south, where the derivative landed: her search finds it, under
    // its de-identified UID, and its metadata carries no identifier.
    let in_south = dev.http("in-south").trim_start_matches("http://").to_owned();
    let rao = dev.token("dr-rao");
    let mut found = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(30);
    while found.as_array().is_none_or(|a| a.is_empty()) {
        if Instant::now() >= deadline {
            let (_, _, summary) = http_get(&in_south, "/v1/summary", Some(&dev.token("sre"))).await;
            panic!("the derivative served in in-south within 30 s: {found}\n{summary}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, _, body) = http_get(&in_south, "/dicomweb/studies", Some(&rao)).await;
        assert_eq!(status, 200, "{body}");
        found = body;
    }
    let studies = found.as_array().unwrap();
    assert_eq!(studies.len(), 1, "{found}");
    let uid = studies[0]["0020000D"]["Value"][0].as_str().unwrap().to_owned();
    assert_ne!(uid, study_uid, "a de-identified UID");
    // Opened from home, the study is its derivative where he reads it.
    let opened = Command::new(MERIDIAN)
        .args(["report", "open", &study, "--region", "eu-west", "--as", "dr-rao", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    let url = String::from_utf8_lossy(&opened.stdout).trim().to_owned();
    assert!(opened.status.success(), "{}", String::from_utf8_lossy(&opened.stderr));
    assert_eq!(url, format!("http://{in_south}/dicomweb/studies/{uid}"));
    let (status, _, metadata) = http_get(&in_south, &format!("/dicomweb/studies/{uid}/metadata"), Some(&rao)).await;
    assert_eq!(status, 200, "{metadata}");
    assert_eq!(metadata.as_array().map(Vec::len), Some(2), "{metadata}");
    assert!(!metadata.to_string().contains("NW-MRN-44") && !metadata.to_string().contains(study_uid), "{metadata}");
    // A Lotus reader who does not hold it sees nothing; at home she sees
    // nothing of it either (home serves no derivative, and no original to
    // a de-identified contract's reader).
    let (_, _, theirs) = http_get(&in_south, "/dicomweb/studies", Some(&dev.token("dr-nair"))).await;
    assert!(!theirs.to_string().contains(&uid), "{theirs}");
    let eu_west = dev.http("eu-west").trim_start_matches("http://").to_owned();
    let (status, _, home) = http_get(&eu_west, "/dicomweb/studies", Some(&rao)).await;
    assert!(status == 403 || !home.to_string().contains(study_uid), "{status} {home}");
    // Audited where it was read, as hers, from in-south.
    let accessed = tail_payloads_in(data.path(), "in-south", "audit", "PhiAccessed");
    assert!(
        accessed
            .iter()
            .any(|a| a["action"] == "wado-rs.metadata" && a["principal"] == "dr-rao" && a["fromRegion"] == "in-south"),
        "{accessed:?}"
    );
    let out = Command::new(MERIDIAN).args(["residency", "report", "--data-dir"]).arg(data.path()).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && report.contains("in-south  holds 2 derivatives of northwind"), "{report}");
    dev.interrupt();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_is_purged_at_home_and_where_its_derivative_landed_when_its_retention_ends_through_a_crash() {
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::northwind_reads_in_in_south(
        &repo().join("deploy/examples/dev"),
        config.path(),
        Some("3s"),
    );
    let data = tempfile::TempDir::new().unwrap();
    // The first purge dies after deleting and shredding, before its record.
    let mut dev = Dev::start_configured(config.path(), data.path(), "retention.after_delete=abort");
    let study_uid = "1.2.826.0.1.3680043.10.543.2251";
    let study = send_northwind_study(&dev, data.path(), study_uid).await;
    let objects = |region: &str, under: &str| -> Vec<PathBuf> {
        let dir = data.path().join(region).join("objects").join(under);
        files_under(&dir).into_iter().filter(|f| f.extension().is_some_and(|e| e == "dcm")).collect()
    };
    let home = format!("phi/northwind/{study}");
    let originals = objects("eu-west", &home);
    assert_eq!(originals.len(), 2, "{originals:?}");
    wait_for("the derivative landed in in-south", 30, || {
        (objects("in-south", "deid/northwind").len() == 2).then_some(())
    });
    let eu_west = |args: &[&str]| {
        let out = Command::new(MERIDIAN)
            .args(args)
            .args(["--region", "eu-west", "--as", "dr-byrne", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {said}");
    };
    eu_west(&["claim", &study]);
    eu_west(&["report", "draft", &study, "--findings", "No acute finding.", "--impression", "Normal CT."]);
    eu_west(&["report", "sign", &study, "--read-type", "final"]);

    // Three seconds after the signature, the purge: it deletes, shreds and dies.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = dev.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the armed purge did not run within 60 s of the signature");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success(), "aborted at retention.after_delete: {status}");
    assert!(objects("eu-west", &home).is_empty(), "deleted before the crash");
    assert_eq!(objects("in-south", "deid/northwind").len(), 2, "the derivative waits for the record");

    // Restarted: the study is still due, the purge is done again and recorded.
    dev = Dev::start_configured(config.path(), data.path(), "");
    let purged = wait_for("the purge recorded in eu-west", 60, || {
        let purged = tail_payloads_in(data.path(), "eu-west", "storage", "ObjectPurged");
        (purged.len() >= 2).then_some(purged)
    });
    assert_eq!(purged.len(), 2, "one record for the derivative, one for the study: {purged:?}");
    let (derivative, original) = (&purged[0], &purged[1]);
    assert_eq!(original["objectKey"], format!("{home}/"), "{original}");
    assert_eq!(original["region"], "eu-west");
    assert_eq!(derivative["region"], "in-south");
    let key = derivative["objectKey"].as_str().unwrap();
    assert!(key.starts_with("deid/northwind/northwind-lotus/"), "{derivative}");
    assert!(!purged.iter().any(|p| p.to_string().contains(study_uid)), "opaque ids only: {purged:?}");
    assert!(original["reason"].as_str().unwrap().contains("northwind-lotus"), "{original}");
    wait_for("the derivative purged where it landed", 30, || {
        objects("in-south", "deid/northwind").is_empty().then_some(())
    });
    // Searched at home, the study is gone; the residency report is clean.
    let addr = dev.http("eu-west").trim_start_matches("http://").to_owned();
    let pacs = dev.token("northwind-pacs");
    let search = format!("/dicomweb/studies?StudyInstanceUID={study_uid}");
    let (status, _, found) = http_get(&addr, &search, Some(&pacs)).await;
    assert!(status == 200 || status == 204, "{status} {found}");
    assert!(!found.to_string().contains(study_uid), "{found}");
    let (ok, out, err) = residency(data.path(), &[]);
    assert!(ok, "{out}{err}");
    dev.interrupt();
    // Every index forgot it: at home, and where the derivative landed.
    for region in ["eu-west", "in-south"] {
        let index = meridian_storage::index::StudyIndex::open(&data.path().join(region).join("index.redb")).unwrap();
        assert!(index.studies("northwind").unwrap().is_empty(), "{region}'s index still holds northwind's study");
    }

    // Sent again after its purge, the study is new: stored, found, and
    // not a purged object.
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let files = tempfile::TempDir::new().unwrap();
    let resent = meridian_integration_tests::dicom::one_instance_study(files.path(), study_uid, "NW-MRN-44", "ROUTINE");
    let sent = meridian_send(data.path(), "eu-west", "northwind-pacs", &resent);
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stdout));
    assert_eq!(objects("eu-west", &home).len(), 1, "stored anew");
    let addr = dev.http("eu-west").trim_start_matches("http://").to_owned();
    let (status, _, found) = http_get(&addr, &search, Some(&dev.token("northwind-pacs"))).await;
    assert_eq!(status, 200, "{found}");
    assert!(found.to_string().contains(study_uid), "{found}");
    let (ok, out, err) = residency(data.path(), &["--tenant", "northwind"]);
    assert!(ok, "written after the purge: {out}{err}");
    // An object of the purged study written before its purge, left behind.
    let sha = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
    let left = format!("{home}/0190f4a2-6f1c-8d3e-a000-000000000002/0190f4a2-6f1c-8d3e-a000-000000000003.{sha}.dcm");
    let planted = plant(data.path(), "eu-west", &left, b"DICM");
    #[allow(clippy::disallowed_methods)] // an object written two hours ago
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7_200);
    std::fs::File::options().write(true).open(&planted).unwrap().set_modified(two_hours_ago).unwrap();
    let (ok, out, _) = residency(data.path(), &["--tenant", "northwind"]);
    assert!(!ok, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("eu-west") && l.contains(&format!("VIOLATION purged_object_held {left}:"))),
        "{out}"
    );
    dev.interrupt();
}

fn wait_for<T>(what: &str, seconds: u64, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "{what} within {seconds} s");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_reader_drafts_and_signs_the_read_they_hold_and_routing_pushes_them_the_next() {
    // Atlantic with one reader, always on shift, one study at a time; the
    // contract names only Atlantic, so every preliminary goes to her.
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::one_reader_examples(&repo().join("deploy/examples/dev"), config.path());
    let check = Command::new(MERIDIAN).args(["config", "check"]).arg(config.path()).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));

    let data = tempfile::TempDir::new().unwrap();
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let files = tempfile::TempDir::new().unwrap();
    for uid in ["1.2.826.0.1.3680043.10.543.301", "1.2.826.0.1.3680043.10.543.302"] {
        let file = meridian_integration_tests::dicom::one_instance_study(files.path(), uid, "MRN-READ", "STAT");
        let (ok, said) = meridian_integration_tests::dicom::storescu(
            dev.dicom_port("us-east"),
            "ACME_CT1",
            "MERIDIAN_ACME",
            &[file],
        );
        assert!(ok, "{said}");
    }
    let queued = wait_for("both studies queued", 30, || {
        let q = tail_payloads(data.path(), "routing", "StudyQueued");
        (q.len() == 2).then_some(q)
    });
    let held = wait_for("one study pushed to dr-ana-ortiz", 30, || {
        let assigned = tail_payloads(data.path(), "routing", "StudyAssigned");
        assigned.first().map(|a| a["studyId"].as_str().unwrap().to_owned())
    });
    let other: String = queued.iter().map(|q| q["studyId"].as_str().unwrap().to_owned()).find(|s| *s != held).unwrap();
    let cli = |args: &[&str]| us_east(data.path(), args);
    // The assignee opens it in a viewer: its DICOMweb URL (audited), which
    // answers her own token; another reader gets nothing.
    let (ok, url) = cli(&["report", "open", &held, "--as", "dr-ortiz"]);
    assert!(ok, "{url}");
    let url = url.trim().to_owned();
    assert!(url.starts_with("http://") && url.contains("/dicomweb/studies/1.2.826.0.1.3680043.10.543.30"), "{url}");
    let token = dev.json("tokens.json")["principals"]["dr-ortiz"]["token"].as_str().unwrap().to_owned();
    let metadata = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("authorization: Bearer {token}")])
        .arg(format!("{url}/metadata"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&metadata.stdout), "200", "the viewer's request with her token");
    let (ok, said) = cli(&["report", "open", &held, "--as", "dr-nair"]);
    assert!(!ok && said.contains("PermissionDenied"), "{said}");
    let opened = tail_payloads(data.path(), "audit", "PhiAccessed");
    assert!(
        opened.iter().any(|a| a["action"] == "reporting.open-study" && a["studyId"] == held.as_str()),
        "{opened:?}"
    );
    // Only the reader who holds it writes its report.
    let (ok, said) = cli(&["report", "draft", &other, "--as", "dr-ortiz", "--impression", "x"]);
    assert!(!ok && said.contains("PermissionDenied"), "{said}");
    let (ok, said) = cli(&["report", "draft", &held, "--as", "dr-nair", "--impression", "x"]);
    assert!(!ok && said.contains("PermissionDenied"), "{said}");
    // Drafted without an impression, then with one; signed.
    let (ok, said) = cli(&["report", "draft", &held, "--as", "dr-ortiz", "--findings", "No bleed."]);
    assert!(ok && said.contains("preliminary draft version 1 saved"), "{said}");
    let (ok, said) = cli(&["report", "sign", &held, "--as", "dr-ortiz", "--read-type", "preliminary"]);
    assert!(!ok && said.contains("InvalidArgument") && said.contains("sections.impression"), "{said}");
    // A CT head is written to the ct-head template: its coded fields take
    // the values of their lists.
    let (ok, said) =
        cli(&["report", "draft", &held, "--as", "dr-ortiz", "--impression", "x", "--field", "laterality=sideways"]);
    assert!(!ok && said.contains("InvalidArgument") && said.contains("fields.laterality"), "{said}");
    let (ok, said) = cli(&[
        "report",
        "draft",
        &held,
        "--as",
        "dr-ortiz",
        "--findings",
        "No bleed.",
        "--impression",
        "No acute findings.",
        "--field",
        "haemorrhage=absent",
        "--base-version",
        "1",
    ]);
    assert!(ok && said.contains("version 2"), "{said}");
    let (ok, said) = cli(&["report", "sign", &held, "--as", "dr-ortiz", "--read-type", "final"]);
    assert!(!ok && said.contains("FailedPrecondition") && said.contains("open read is preliminary"), "{said}");
    let (ok, said) = cli(&["report", "sign", &held, "--as", "dr-ortiz", "--read-type", "preliminary"]);
    assert!(ok && said.contains("signed with version 2"), "{said}");
    // Routing completes the read, which frees her, and pushes her the next.
    wait_for("the preliminary completed", 30, || {
        let done = tail_payloads(data.path(), "routing", "AssignmentCompleted");
        done.iter().any(|c| c["studyId"] == held.as_str() && c["readType"] == "preliminary").then_some(())
    });
    wait_for("the other study pushed to her", 30, || {
        let assigned = tail_payloads(data.path(), "routing", "StudyAssigned");
        assigned.iter().any(|a| a["studyId"] == other.as_str() && a["readerId"] == "dr-ana-ortiz").then_some(())
    });
    // The tenant reads the signed report; the read is audited.
    let (ok, said) = cli(&["report", "show", &held, "--as", "acme-admin"]);
    assert!(ok && said.contains("signed by dr-ana-ortiz") && said.contains("IMPRESSION: No acute findings."), "{said}");
    assert!(said.contains("CT Head without contrast [ct-head, en]") && said.contains("haemorrhage: absent"), "{said}");
    let audited = tail_payloads(data.path(), "audit", "PhiAccessed");
    assert!(
        audited.iter().any(|a| a["action"] == "reporting.get-report" && a["studyId"] == held.as_str()),
        "{audited:?}"
    );
    let (ok, said) = cli(&["report", "show", &held, "--as", "northwind-admin"]);
    assert!(!ok && said.contains("PermissionDenied"), "{said}");
    // Listed, without text: the tenant's by status, and the reader's own.
    let (ok, said) = cli(&["report", "list", "--as", "acme-admin", "--tenant", "acme", "--status", "preliminary"]);
    assert!(ok && said.contains(&format!("{held} preliminary preliminary (2 versions, by dr-ana-ortiz)")), "{said}");
    assert!(!said.contains("No acute"), "{said}");
    let (ok, said) = cli(&["report", "list", "--as", "dr-ortiz"]);
    assert!(ok && said.contains(held.as_str()), "{said}");
    let (ok, said) = cli(&["report", "list", "--as", "northwind-admin", "--tenant", "acme"]);
    assert!(!ok && said.contains("PermissionDenied"), "{said}");
    let (ok, said) = cli(&["report", "list", "--as", "acme-admin", "--tenant", "acme", "--status", "signed"]);
    assert!(!ok && said.contains("InvalidArgument") && said.contains("status"), "{said}");
    // A critical result: flagged by its reader, reported within its window.
    let (ok, said) = cli(&["report", "critical", &held, "--as", "dr-ortiz", "--category", "1"]);
    assert!(ok && said.contains("category 1: open"), "{said}");
    let (ok, said) = cli(&["report", "critical", &held, "--as", "dr-ortiz", "--category", "2"]);
    assert!(!ok && said.contains("FailedPrecondition") && said.contains("record its communication first"), "{said}");
    let reach = |method: &str| {
        cli(&["report", "communicated", &held, "--as", "dr-ortiz", "--recipient", "Dr Lee, ED", "--method", method])
    };
    let (ok, said) = reach("fax");
    assert!(!ok && said.contains("InvalidArgument") && said.contains("method"), "{said}");
    let (ok, said) = reach("phone");
    assert!(ok && said.contains("closed in time"), "{said}");
    // The tenant's figures for the month: the read, in its SLA; the
    // critical result, reached in time.
    #[allow(clippy::disallowed_methods)] // the region signs by the real clock; so does the test
    let month = jiff::Timestamp::now().strftime("%Y-%m").to_string();
    let (ok, said) = cli(&["kpi", "--as", "acme-admin", "--tenant", "acme", "--period", &month]);
    assert!(ok && said.contains(": 1 reads signed") && said.contains("SLA met 1 of 1"), "{said}");
    assert!(said.contains("critical results 1: 1 reached in time, 0 late"), "{said}");
    let (ok, said) = cli(&["kpi", "--as", "northwind-admin", "--tenant", "acme", "--period", &month]);
    assert!(!ok && said.contains("PermissionDenied"), "{said}");
    // Its signer appends an addendum; the signed text stays the report.
    let addendum =
        ["report", "addendum", &held, "--read-type", "preliminary", "--text", "Compared with the prior: stable."];
    let (ok, said) = cli(&[&addendum[..], &["--as", "dr-nair"]].concat());
    assert!(!ok && said.contains("PermissionDenied"), "{said}");
    let (ok, said) = cli(&[&addendum[..], &["--as", "dr-ortiz"]].concat());
    assert!(ok && said.contains("is appended (version 3)"), "{said}");
    let (ok, said) = cli(&["report", "show", &held, "--as", "acme-admin"]);
    assert!(ok && said.contains("appended, signed by dr-ana-ortiz"), "{said}");
    assert!(
        said.contains("IMPRESSION: No acute findings.") && said.contains("Compared with the prior: stable."),
        "{said}"
    );
    dev.interrupt();
    // The text is on the PHI topic, sealed; the signature names its version.
    let (texts, _) = topic_events(data.path(), meridian_events::DataClass::Phi, "reporting");
    assert_eq!(texts.len(), 4, "two drafts, who was reached, and the addendum");
    assert!(texts.iter().all(|(_, e)| e.open_plain().is_err()), "report text is sealed on the log");
    let (signed, _) = topic_events(data.path(), meridian_events::DataClass::Operational, "reporting");
    let kinds: Vec<&str> = signed.iter().map(|(_, e)| e.payload_type.rsplit('.').next().unwrap()).collect();
    assert_eq!(kinds, ["ReportSigned", "CriticalResultFlagged", "CriticalResultClosed", "ReportAmended"]);
}

/// The examples in `config` with Acme's reads finals only, every one
/// drawn for peer review: dr-ana-ortiz reads them, dr-ben-cole (always on
/// shift, peer reviews only) reviews them.
fn every_final_peer_reviewed(config: &Path) {
    meridian_integration_tests::one_reader_examples(&repo().join("deploy/examples/dev"), config);
    let contract = config.join("contracts/acme-atlantic.toml");
    let text = std::fs::read_to_string(&contract).unwrap();
    let text =
        text.replace("fraction = 0.05", "fraction = 1.0").replace("preliminary = [\"onshore\", \"offshore\"]\n", "");
    assert!(text.contains("fraction = 1.0") && !text.contains("preliminary = ["), "the example's contract changed");
    std::fs::write(&contract, text).unwrap();
    let group = config.join("groups/atlantic-rads.toml");
    let mut text = std::fs::read_to_string(&group).unwrap();
    text.push_str(
        r#"
[[readers]]
id = "dr-ben-cole"
name = "Dr Ben Cole"
region = "us-east"
time_zone = "America/Chicago"
licences = [{ jurisdiction = "US-NY", expires = "2030-03-31" }]
credentials = [{ tenant = "acme", facility = "acme-general", expires = "2030-03-31" }]
subspecialties = ["neuro"]
modalities = ["CT", "MR"]
read_types = ["peer_review"]
capacity = 1
shifts = [{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "00:00", end = "23:59" }]
"#,
    );
    std::fs::write(&group, text).unwrap();
    let auth = config.join("auth.toml");
    let text = std::fs::read_to_string(&auth).unwrap() + "\n" + meridian_integration_tests::DR_COLE;
    std::fs::write(&auth, text).unwrap();
    let check = Command::new(MERIDIAN).args(["config", "check"]).arg(config).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

#[test]
fn a_final_drawn_for_peer_review_is_read_again_blind_scored_and_arbitrated() {
    // Finals only, every one drawn; dr-ana-ortiz reads them, dr-ben-cole
    // (always on shift, peer reviews only) reviews them.
    let config = tempfile::TempDir::new().unwrap();
    every_final_peer_reviewed(config.path());
    let data = tempfile::TempDir::new().unwrap();
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let files = tempfile::TempDir::new().unwrap();
    let file = meridian_integration_tests::dicom::one_instance_study(
        files.path(),
        "1.2.826.0.1.3680043.10.543.401",
        "MRN-PEER",
        "STAT",
    );
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &[file]);
    assert!(ok, "{said}");
    let study = wait_for("the final pushed to dr-ana-ortiz", 30, || {
        let assigned = tail_payloads(data.path(), "routing", "StudyAssigned");
        assigned.first().map(|a| a["studyId"].as_str().unwrap().to_owned())
    });
    let cli = |args: &[&str]| us_east(data.path(), args);
    let draft = |who: &str, impression: &str| {
        cli(&["report", "draft", &study, "--as", who, "--findings", "Findings.", "--impression", impression])
    };
    let (ok, said) = draft("dr-ortiz", "No acute findings.");
    assert!(ok, "{said}");
    let (ok, said) = cli(&["report", "sign", &study, "--as", "dr-ortiz", "--read-type", "final"]);
    assert!(ok, "{said}");
    // Drawn: routing queues the review, which goes to dr-ben-cole (never
    // to the reader reviewed).
    wait_for("the review pushed to dr-ben-cole", 30, || {
        let assigned = tail_payloads(data.path(), "routing", "StudyAssigned");
        assigned.iter().any(|a| a["studyId"] == study.as_str() && a["readerId"] == "dr-ben-cole").then_some(())
    });
    let requested = tail_payloads(data.path(), "reporting", "PeerReviewRequested");
    assert_eq!(requested.len(), 1, "{requested:?}");
    assert_eq!(requested[0]["reviewedReaderId"], "dr-ana-ortiz");
    // Blinded: the reviewer sees no other read, and scores nothing yet.
    let (ok, said) = cli(&["report", "show", &study, "--as", "dr-cole"]);
    assert!(ok && !said.contains("No acute findings.") && said.contains("no report of"), "{said}");
    let (ok, said) = cli(&["report", "score", &study, "--as", "dr-cole", "--score", "1"]);
    assert!(!ok && said.contains("FailedPrecondition") && said.contains("blinded read comes before"), "{said}");
    let (ok, said) = draft("dr-cole", "Small left subdural haematoma.");
    assert!(ok && said.contains("peer_review draft version 1 saved"), "{said}");
    let (ok, said) = cli(&["report", "show", &study, "--as", "dr-cole"]);
    assert!(ok && !said.contains("No acute findings.") && said.contains("Small left subdural"), "{said}");
    let (ok, said) = cli(&["report", "sign", &study, "--as", "dr-cole", "--read-type", "peer_review"]);
    assert!(ok, "{said}");
    // Signed: now the reviewed report shows, and the score is taken.
    let (ok, said) = cli(&["report", "show", &study, "--as", "dr-cole"]);
    assert!(ok && said.contains("No acute findings.") && said.contains("Small left subdural"), "{said}");
    let (ok, said) = cli(&["report", "score", &study, "--as", "dr-cole", "--score", "4"]);
    assert!(!ok && said.contains("InvalidArgument") && said.contains("RADPEER"), "{said}");
    let (ok, said) = cli(&["report", "score", &study, "--as", "dr-cole", "--score", "3b"]);
    assert!(ok && said.contains("scored 3b, awaits arbitration"), "{said}");
    // The hospital sees its final, never the review.
    let (ok, said) = cli(&["report", "show", &study, "--as", "acme-admin"]);
    assert!(ok && said.contains("No acute findings.") && !said.contains("subdural"), "{said}");
    let (ok, said) = cli(&["report", "list", "--as", "acme-admin", "--tenant", "acme"]);
    assert!(ok && said.contains(" final final") && !said.contains("peer_review"), "{said}");
    // Only the reviewed reader's group admin arbitrates.
    let (ok, said) = cli(&["report", "arbitrate", &study, "--as", "dr-cole", "--score", "2a"]);
    assert!(!ok && said.contains("PermissionDenied"), "{said}");
    let (ok, said) = cli(&["report", "arbitrate", &study, "--as", "atlantic-admin", "--score", "2a"]);
    assert!(ok && said.contains("stands at 2a"), "{said}");
    #[allow(clippy::disallowed_methods)] // the region scores by the real clock; so does the test
    let month = jiff::Timestamp::now().strftime("%Y-%m").to_string();
    let (ok, said) = cli(&["kpi", "--as", "acme-admin", "--tenant", "acme", "--period", &month]);
    assert!(ok && said.contains(": 1 reads signed"), "the review is not a read of the hospital's: {said}");
    assert!(said.contains("peer review of reader dr-ana-ortiz: 1 reviewed, concordant 0.0% (2a: 1)"), "{said}");
    assert!(said.contains("peer review of group atlantic-rads: 1 reviewed"), "{said}");
    // No delivery of the review: only the final's requests.
    let requests = tail_payloads(data.path(), "reporting", "DeliveryRequested");
    assert!(requests.iter().all(|r| r["readType"] == "final"), "{requests:?}");
    dev.interrupt();
}

#[test]
fn orders_over_mllp_and_fhir_meet_their_studies_and_raise_their_priority() {
    let data = tempfile::TempDir::new().unwrap();
    let dev = Dev::start(data.path());
    let python = std::env::var_os("MERIDIAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/meridian/tools/venv/bin/python"));
    let mllp_send = python.with_file_name("mllp_send");
    // Over one connection: an order with no accession (AE naming OBR-18),
    // a STAT order for the study to come (AA), an ADT (AR): each answered,
    // the connection kept.
    let orm = |control: &str, accession: &str| {
        format!(
            "MSH|^~\\&|EPIC|acme-general|MERIDIAN|us-east|20261203101500||ORM^O01^ORM_O01|{control}|P|2.5.1\r\
PID|1||MRN-ORDER^^^ACME GENERAL^MR||Doe^Jane\r\
ORC|NW|PO-{control}|||||^^^^^S||20261203101400|||1234^Lee^Sam\r\
OBR|1|PO-{control}||70450^CT head^CPT||||||||||||||{accession}\r"
        )
    };
    let adt = orm("ADT-1", "ACC-X").replace("ORM^O01^ORM_O01", "ADT^A01^ADT_A01");
    let unknown = orm("WHO-1", "ACC-X").replace("|EPIC|acme-general|", "|EPIC|nowhere-general|");
    let messages = [orm("BAD-1", ""), orm("ORD-1", "ACC-77"), adt, unknown].join("\n");
    let file = data.path().join("orders.hl7");
    std::fs::write(&file, messages).unwrap();
    let out = Command::new(&mllp_send)
        .args(["--loose", "--file"])
        .arg(&file)
        .args(["--port", &dev.mllp_port("us-east").to_string(), "127.0.0.1"])
        .output()
        .expect("python-hl7's mllp_send in the tools' venv: scripts/test installs it");
    let said = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    let answers: Vec<&str> = said.lines().filter(|l| l.starts_with("MSA|") || l.starts_with("ERR|")).collect();
    assert_eq!(answers.len(), 7, "{said}");
    assert!(answers[0].starts_with("MSA|AE|BAD-1|") && answers[1].starts_with("ERR||OBR^1^18|101^"), "{said}");
    assert_eq!(answers[2], "MSA|AA|ORD-1");
    assert!(answers[3].starts_with("MSA|AR|ADT-1|") && answers[4].starts_with("ERR||MSH^1^9|200^"), "{said}");
    assert!(answers[5].starts_with("MSA|AR|WHO-1|") && answers[6].contains("MSH-4"), "{said}");

    // The study arrives routine, with the order's accession (write_ct's
    // ACC-77): matched, and
    // raised to the order's STAT.
    let files = tempfile::TempDir::new().unwrap();
    let file = meridian_integration_tests::dicom::one_instance_study(
        files.path(),
        "1.2.826.0.1.3680043.10.543.501",
        "MRN-ORDER",
        "ROUTINE",
    );
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &[file]);
    assert!(ok, "{said}");
    let matched = wait_for("the order matched to its study", 60, || {
        let m = tail_payloads(data.path(), "reporting", "OrderMatched");
        m.first().cloned()
    });
    assert_eq!(matched["priority"], "stat");
    let study = matched["studyId"].as_str().unwrap().to_owned();
    wait_for("routing raised the study to STAT", 60, || {
        let triaged = tail_payloads(data.path(), "routing", "StudyTriaged");
        triaged
            .iter()
            .any(|t| t["studyId"] == study.as_str() && t["priority"] == "stat" && t["model"] == "order")
            .then_some(())
    });

    // FHIR: a facility's ServiceRequest is created (201, its id the opaque
    // order key); a bad one gets 400 and an OperationOutcome naming the
    // element; no token, 401.
    let url = format!("http://{}/fhir/ServiceRequest", dev.http("us-east"));
    let post = |token: Option<&str>, body: &str| {
        let mut curl = Command::new("curl");
        curl.args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            "content-type: application/fhir+json",
            "--data",
            body,
        ]);
        if let Some(t) = token {
            curl.args(["-H", &format!("authorization: Bearer {t}")]);
        }
        let out = curl.arg(&url).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_owned(), body.to_owned())
    };
    let request = serde_json::json!({
        "resourceType": "ServiceRequest", "status": "active", "intent": "order", "priority": "urgent",
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                        "value": "ACC-FHIR-1"}],
        "subject": {"identifier": {"value": "MRN-ORDER"}},
        "requester": {"display": "Dr Sam Lee"}
    });
    let token = dev.token("acme-pacs");
    let (code, body) = post(Some(&token), &request.to_string());
    assert_eq!(code, "201", "{body}");
    let created: Value = serde_json::from_str(&body).unwrap();
    assert!(uuid::Uuid::parse_str(created["id"].as_str().unwrap()).is_ok(), "{body}");
    let (code, _) = post(Some(&token), &request.to_string());
    assert_eq!(code, "200", "the same order again: nothing new");
    let mut bad = request.clone();
    bad["priority"] = serde_json::json!("whenever");
    let (code, body) = post(Some(&token), &bad.to_string());
    assert_eq!(code, "400", "{body}");
    let outcome: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["expression"][0], "ServiceRequest.priority");
    let (code, _) = post(None, &request.to_string());
    assert_eq!(code, "401");
    let (code, _) = post(Some(&dev.token("acme-admin")), &request.to_string());
    assert_eq!(code, "403", "an administrator is no order system");
    dev.interrupt();
    // Orders are PHI: sealed on the PHI topic (the HL7 one and the FHIR
    // one), nothing of them in the clear.
    let (orders, _) = topic_events(data.path(), meridian_events::DataClass::Phi, "reporting");
    let kinds: Vec<&str> = orders.iter().map(|(_, e)| e.payload_type.rsplit('.').next().unwrap()).collect();
    assert_eq!(kinds, ["OrderReceived", "OrderReceived"]);
    assert!(orders.iter().all(|(_, e)| e.open_plain().is_err()), "an order is sealed on the log");
}

/// The examples, with acme's studies complete after a second's quiet (its
/// contract buys the demonstration triage model).
fn acme_completing_in_a_second() -> tempfile::TempDir {
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::copy_dir(&repo().join("deploy/examples/dev"), config.path());
    completing_in_a_second(config.path());
    config
}

/// acme's studies under `config` complete a second after their last
/// instance (the example's contract waits two minutes), read by ich-demo.
fn completing_in_a_second(config: &Path) {
    let contract = config.join("contracts/acme-atlantic.toml");
    let text = std::fs::read_to_string(&contract).unwrap();
    assert!(text.contains("quiet_period = \"2m\"") && text.contains("ai_models = [\"ich-demo\"]"), "{text}");
    std::fs::write(&contract, text.replace("quiet_period = \"2m\"", "quiet_period = \"1s\"")).unwrap();
}

/// Head-CT slices `numbers` of `study` (the bleed on slice `bleed_on`, none
/// for 0) written under `dir` and sent by storescu to us-east as ACME_CT1.
fn send_head_ct(dev: &Dev, dir: &Path, study: &str, numbers: std::ops::RangeInclusive<usize>, bleed_on: usize) {
    let dir = dir.join(study);
    std::fs::create_dir_all(&dir).unwrap();
    let slices: Vec<PathBuf> =
        numbers.map(|n| meridian_integration_tests::dicom::head_ct_slice(&dir, study, n, n == bleed_on)).collect();
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &slices);
    assert!(ok, "{said}");
}

#[test]
fn a_burst_of_100_studies_gets_one_triage_outcome_each_through_a_sigkill() {
    let config = acme_completing_in_a_second();
    // A validation that expects nothing flagged, over windows of 20: a
    // third flagged is drift, alerted once a window.
    let model = config.path().join("models/ich-demo.toml");
    let text = std::fs::read_to_string(&model).unwrap();
    let text = text
        .replace("baseline_positive_rate = 0.3", "baseline_positive_rate = 0.0")
        .replace("window = 50", "window = 20")
        .replace("tolerance = 0.25", "tolerance = 0.1");
    assert!(text.contains("window = 20") && text.contains("= 0.0"), "the example's validation changed");
    std::fs::write(&model, text).unwrap();
    let data = tempfile::TempDir::new().unwrap();
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let files = tempfile::TempDir::new().unwrap();
    let slices: Vec<PathBuf> = (0..100)
        .map(|n| {
            let study = format!("1.2.826.0.1.3680043.10.543.9{n:03}");
            meridian_integration_tests::dicom::head_ct_slice(files.path(), &study, 1, n % 3 == 0)
        })
        .collect();
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &slices);
    assert!(ok, "{said}");
    let outcomes = |data: &Path| {
        let mut all = tail_payloads(data, "inference", "AiTriageCompleted");
        all.extend(tail_payloads(data, "inference", "AiTriageFailed"));
        all
    };
    // Some read, then SIGKILL mid-burst.
    wait_for("a first part of the burst triaged", 60, || (outcomes(data.path()).len() >= 15).then_some(()));
    let status = Command::new("kill").args(["-KILL", &dev.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    drop(dev);
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let all = wait_for("every study triaged", 120, || {
        let all = outcomes(data.path());
        (all.len() >= 100).then_some(all)
    });
    std::thread::sleep(Duration::from_secs(2));
    let all = if outcomes(data.path()).len() > all.len() { outcomes(data.path()) } else { all };
    let mut studies: Vec<&str> = all.iter().map(|o| o["studyId"].as_str().unwrap()).collect();
    studies.sort_unstable();
    studies.dedup();
    assert_eq!((all.len(), studies.len()), (100, 100), "one outcome a study");
    let flagged = all.iter().filter(|o| o["flagged"] == true).count();
    assert_eq!(flagged, 34, "every third study has a bleed");
    let drift = tail_payloads(data.path(), "inference", "ModelDriftDetected");
    assert!((1..=5).contains(&drift.len()), "once a window of 20, at most five: {drift:?}");
    assert!(drift.iter().all(|d| d["model"] == "ich-demo@1" && d["statistic"].as_f64().unwrap() > 0.1), "{drift:?}");
    dev.interrupt();
}

#[test]
fn a_head_ct_with_a_bleed_is_triaged_once_through_a_crash_by_the_demonstration_model_and_raised_to_stat() {
    let config = acme_completing_in_a_second();
    // The region aborts once the first read's scores are computed, before
    // anything is appended.
    let data = tempfile::TempDir::new().unwrap();
    let mut dev = Dev::start_configured(config.path(), data.path(), "inference.after_run=abort@1");
    let files = tempfile::TempDir::new().unwrap();
    let (bleed, clear) = ("1.2.826.0.1.3680043.10.543.701", "1.2.826.0.1.3680043.10.543.702");
    let mut sent = Vec::new();
    for (study, bleeding) in [(bleed, true), (clear, false)] {
        // Three slices; the bleed is on the second.
        send_head_ct(&dev, files.path(), study, 1..=3, if bleeding { 2 } else { 0 });
        sent.push(study);
    }
    let died = wait_for("the region aborts after its first read", 60, || dev.child.try_wait().unwrap());
    assert!(!died.success(), "{died}");
    // Restarted: each study read once, the aborted read again.
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let outcomes = wait_for("both studies triaged", 60, || {
        let t = tail_payloads(data.path(), "inference", "AiTriageCompleted");
        (t.len() >= 2).then_some(t)
    });
    let flagged: Vec<&Value> = outcomes.iter().filter(|t| t["flagged"] == true).collect();
    assert_eq!(flagged.len(), 1, "{outcomes:?}");
    let hit = flagged[0];
    assert_eq!((hit["model"].as_str(), hit["suggestedPriority"].as_str()), (Some("ich-demo@1"), Some("stat")));
    assert_eq!(hit["instancesUsed"], 3);
    assert_eq!(hit["findings"][0], "ICH");
    let study = hit["studyId"].as_str().unwrap().to_owned();
    // Routing raised the flagged study to STAT; the other stays routine.
    wait_for("routing raised the flagged study", 30, || {
        let triaged = tail_payloads(data.path(), "routing", "StudyTriaged");
        triaged.iter().any(|t| t["studyId"] == study.as_str() && t["priority"] == "stat").then_some(())
    });
    // Each read was audited before the pixels were read (the aborted one too).
    let audited = tail_payloads(data.path(), "audit", "PhiAccessed");
    let reads = audited.iter().filter(|a| a["action"] == "inference.read").count();
    assert_eq!(reads, 3, "{audited:?}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(tail_payloads(data.path(), "inference", "AiTriageCompleted").len(), 2, "one outcome a study");
    let raised = tail_payloads(data.path(), "routing", "StudyTriaged");
    assert_eq!(raised.iter().filter(|t| t["studyId"] == study.as_str()).count(), 1, "{raised:?}");
    // The tenant sees what the model said (codes only); another tenant not.
    let (ok, said) = us_east(data.path(), &["ai", "triage", &study, "--as", "acme-admin"]);
    assert!(ok && said.contains("ich-demo@1: flagged ICH (stat), 3 instances"), "{said}");
    let (ok, said) = us_east(data.path(), &["ai", "triage", &study, "--as", "northwind-admin"]);
    assert!(!ok && said.contains("PermissionDenied"), "{said}");
    // The platform's SRE turns the model off (and on), saying why; nobody else.
    let (ok, said) = us_east(data.path(), &["ai", "disable", "ich-demo", "--as", "acme-admin", "--reason", "x"]);
    assert!(!ok && said.contains("PermissionDenied"), "{said}");
    let (ok, said) = us_east(data.path(), &["ai", "disable", "ich-demo", "--as", "sre", "--reason", "drift review"]);
    assert!(ok && said.contains("ich-demo@1 off"), "{said}");
    let (ok, said) = us_east(data.path(), &["ai", "models", "--as", "sre"]);
    assert!(ok && said.contains("ich-demo@1 off"), "{said}");
    assert!(said.contains("2 read, 1 flagged, 0 failed"), "{said}");
    let (ok, said) = us_east(data.path(), &["ai", "enable", "ich-demo", "--as", "sre", "--reason", "reviewed"]);
    assert!(ok && said.contains("ich-demo@1 on"), "{said}");
    dev.interrupt();
    // The scores are PHI: sealed on the PHI topic.
    let (scored, _) = topic_events(data.path(), meridian_events::DataClass::Phi, "inference");
    assert_eq!(scored.len(), 2);
    assert!(scored.iter().all(|(_, e)| e.open_plain().is_err()), "scores are sealed on the log");
}

#[test]
fn a_model_served_by_mlserver_triages_reruns_when_a_slice_comes_later_and_a_dead_server_fails_only_the_triage() {
    let config = acme_completing_in_a_second();
    let mut server = meridian_integration_tests::MlServer::start(
        "ich-demo",
        &repo().join("deploy/examples/dev/models/ich-demo.onnx"),
    );
    // The example's model, served remotely over the Open Inference Protocol.
    let model = config.path().join("models/ich-demo.toml");
    let text = std::fs::read_to_string(&model).unwrap();
    let embedded = "[runtime]\nkind = \"embedded\"\npath = \"models/ich-demo.onnx\"\n";
    assert!(text.contains(embedded), "the example's runtime changed: {text}");
    let remote = format!(
        "[runtime]\nkind = \"remote\"\nendpoint = \"{}\"\nmodel = \"ich-demo\"\ntimeout_ms = 2000\nretries = 2\n",
        server.endpoint()
    );
    std::fs::write(&model, text.replace(embedded, &remote)).unwrap();
    let data = tempfile::TempDir::new().unwrap();
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let files = tempfile::TempDir::new().unwrap();
    let send = |study: &str, numbers: std::ops::RangeInclusive<usize>, bleed_on: usize| {
        send_head_ct(&dev, files.path(), study, numbers, bleed_on);
    };
    // Three clear slices: read over OIP, nothing flagged.
    let study_uid = "1.2.826.0.1.3680043.10.543.801";
    send(study_uid, 1..=3, 0);
    let first = wait_for("the study triaged by MLServer", 60, || {
        tail_payloads(data.path(), "inference", "AiTriageCompleted").into_iter().next()
    });
    assert_eq!((first["flagged"].as_bool(), first["instancesUsed"].as_u64()), (None, Some(3)), "{first}");
    let study = first["studyId"].as_str().unwrap().to_owned();
    // A fourth slice, with a bleed, after the study completed: ingest says
    // StudyUpdated and the model reads the study again.
    send(study_uid, 4..=4, 4);
    let rerun = wait_for("the study triaged again", 60, || {
        let all = tail_payloads(data.path(), "inference", "AiTriageCompleted");
        (all.len() >= 2).then(|| all[1].clone())
    });
    assert_eq!(rerun["studyId"], study.as_str());
    assert_eq!((rerun["flagged"].as_bool(), rerun["instancesUsed"].as_u64()), (Some(true), Some(4)), "{rerun}");
    assert_ne!(rerun["inputDigest"], first["inputDigest"]);
    wait_for("routing raised the study on the rerun", 30, || {
        let triaged = tail_payloads(data.path(), "routing", "StudyTriaged");
        triaged.iter().any(|t| t["studyId"] == study.as_str() && t["priority"] == "stat").then_some(())
    });
    let (ok, said) = us_east(data.path(), &["ai", "models", "--as", "sre"]);
    assert!(ok && said.contains(&format!("runtime: remote {}", server.endpoint())), "{said}");
    assert!(said.contains("2 read, 1 flagged, 0 failed"), "{said}");
    assert!(said.contains("ich scores by tenths, 0 to 1: 1 0 0 0 0 0 0 0 0 1"), "{said}");
    let (ok, said) = us_east(data.path(), &["ai", "triage", &study, "--as", "acme-admin"]);
    assert!(ok && said.contains("ich-demo@1: flagged ICH (stat), 4 instances"), "{said}");
    // The server gone: the next study's triage fails, named; the study is
    // queued at its normal priority all the same.
    server.stop();
    send("1.2.826.0.1.3680043.10.543.802", 1..=2, 1);
    let failed = wait_for("the triage failed", 60, || {
        tail_payloads(data.path(), "inference", "AiTriageFailed").into_iter().next()
    });
    assert_eq!(failed["reason"], "unreachable", "{failed}");
    assert!(failed["detail"].as_str().unwrap().contains("after 3 calls"), "{failed}");
    let other = failed["studyId"].as_str().unwrap().to_owned();
    wait_for("the other study queued", 30, || {
        let queued = tail_payloads(data.path(), "routing", "StudyQueued");
        queued.iter().any(|q| q["studyId"] == other.as_str() && q["priority"] == "routine").then_some(())
    });
    let (ok, said) = us_east(data.path(), &["ai", "models", "--as", "sre"]);
    assert!(ok && said.contains("2 read, 1 flagged, 1 failed") && said.contains("failures: unreachable 1"), "{said}");
    dev.interrupt();
}

/// A Python receiver (an MLLP listener, a FHIR server), killed when
/// dropped; its port and the JSON lines it records.
struct Receiver {
    child: Child,
    port: u16,
    record: PathBuf,
}

impl Receiver {
    fn start(python: &Path, script: &str, dir: &Path, args: &[&str]) -> Receiver {
        let (port_file, record) = (dir.join(format!("{script}.port")), dir.join(format!("{script}.jsonl")));
        let child = Command::new(python)
            .arg(repo().join("integration-tests/python").join(script))
            .args([&port_file, &record])
            .args(args)
            .spawn()
            .unwrap();
        let port = wait_for(&format!("{script} listening"), 30, || {
            std::fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse().ok())
        });
        Receiver { child, port, record }
    }

    fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.record).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_signed_report_reaches_a_ris_over_mllp_and_an_ehr_over_fhir_once_through_a_crash_after_sending() {
    let work = tempfile::TempDir::new().unwrap();
    let fhir_python = std::env::var_os("MERIDIAN_FHIR_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/meridian/tools/venv-fhir/bin/python")
    });
    // The RIS answers its first message "busy" (AE): it is sent again.
    // It refuses for good (AR) the first correction it is sent.
    let ris = Receiver::start(&python(), "mllp_receiver.py", work.path(), &["--busy", "1", "--refuse-first", "C"]);
    // The EHR takes only its bearer token (acme-ehr's, from the secrets).
    let ehr = Receiver::start(&fhir_python, "fhir_receiver.py", work.path(), &["--token", "ehr-token-7"]);
    let config = work.path().join("config");
    meridian_integration_tests::one_reader_examples(&repo().join("deploy/examples/dev"), &config);
    let tenant = config.join("tenants/acme.toml");
    let text = std::fs::read_to_string(&tenant).unwrap();
    let text = text
        .replace("address = \"127.0.0.1:6661\"", &format!("address = \"127.0.0.1:{}\"", ris.port))
        .replace(
            "address = \"https://ehr.acme.example/fhir\"",
            &format!("address = \"http://127.0.0.1:{}/fhir\"", ehr.port),
        )
        .replace("read_types = [\"final\"]\n", "")
        .replace("enabled = false", "enabled = true");
    assert_eq!(text.matches("\nenabled = true").count(), 2, "{text}");
    std::fs::write(&tenant, text).unwrap();

    // The region aborts right after its first send, before recording the answer.
    let data = work.path().join("data");
    std::fs::create_dir_all(data.join("secrets")).unwrap();
    std::fs::write(data.join("secrets/acme-ehr.token"), "ehr-token-7\n").unwrap();
    let mut dev = Dev::start_configured(&config, &data, "reporting.after_send=abort@1");
    let files = work.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let file = meridian_integration_tests::dicom::one_instance_study(
        &files,
        "1.2.826.0.1.3680043.10.543.601",
        "MRN-DELIVER",
        "STAT",
    );
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &[file]);
    assert!(ok, "{said}");
    let study = wait_for("the study pushed to dr-ana-ortiz", 30, || {
        tail_payloads(&data, "routing", "StudyAssigned").first().map(|a| a["studyId"].as_str().unwrap().to_owned())
    });
    let cli = |args: &[&str]| us_east(&data, args);
    let (ok, said) = cli(&[
        "report",
        "draft",
        &study,
        "--as",
        "dr-ortiz",
        "--findings",
        "No bleed | no ^ mass.",
        "--impression",
        "Normal head CT.",
    ]);
    assert!(ok, "{said}");
    let (ok, said) = cli(&["report", "sign", &study, "--as", "dr-ortiz", "--read-type", "preliminary"]);
    assert!(ok, "{said}");
    let died = wait_for("the region aborts after its first send", 30, || dev.child.try_wait().unwrap());
    assert!(!died.success(), "{died}");
    let sent_before = ris.records().len() + ehr.records().len();
    assert_eq!(sent_before, 1, "one message sent before the abort");

    let dev = Dev::start_configured(&config, &data, "");
    let delivered = wait_for("both receivers' answers recorded", 60, || {
        let d = tail_payloads(&data, "reporting", "ReportDelivered");
        (d.len() >= 2).then_some(d)
    });
    assert_eq!(delivered.len(), 2, "one ReportDelivered per receiver: {delivered:?}");
    let requested = tail_payloads(&data, "reporting", "DeliveryRequested");
    assert_eq!(requested.len(), 2);
    // The RIS: the same message (one MSH-10) more than once — busy, then
    // sent again after the crash or the backoff — each valid under STRICT.
    let ris_got = ris.records();
    assert!(ris_got.len() >= 2, "{ris_got:?}");
    assert!(ris_got.iter().all(|r| r["error"] == "" && r["obr25"] == "P"), "{ris_got:?}");
    assert!(ris_got.iter().all(|r| r["control_id"] == ris_got[0]["control_id"]), "{ris_got:?}");
    assert_eq!(ris_got.last().unwrap()["ack"], "AA");
    // The EHR: one resource, conditionally updated, valid under fhir.resources.
    let ehr_got = ehr.records();
    assert!(ehr_got.iter().all(|r| r["error"] == "" && r["status"] == "preliminary"), "{ehr_got:?}");
    assert!(ehr_got.iter().all(|r| r["identifier"] == ehr_got[0]["identifier"]), "{ehr_got:?}");

    // An addendum goes out again as appended/corrected, replacing the
    // EHR's resource (same identifier) and reaching the RIS as OBR-25 C.
    let (ok, said) = cli(&[
        "report",
        "addendum",
        &study,
        "--as",
        "dr-ortiz",
        "--read-type",
        "preliminary",
        "--text",
        "Compared with the prior: stable.",
    ]);
    assert!(ok, "{said}");
    wait_for("the addendum delivered to the EHR", 60, || {
        (tail_payloads(&data, "reporting", "ReportDelivered").len() == 3).then_some(())
    });
    // The RIS refused it for good: a dead letter its tenant's administrator
    // sees, with why, and sends again.
    let dead = wait_for("the RIS's refusal recorded", 30, || {
        let (ok, said) = cli(&["report", "deliveries", "--as", "acme-admin", "--tenant", "acme"]);
        assert!(ok, "{said}");
        said.lines().find(|l| l.contains(" dead ")).map(|l| l.split(' ').next().unwrap().to_owned())
    });
    let (ok, said) = cli(&["report", "deliveries", "--as", "northwind-admin", "--tenant", "acme"]);
    assert!(!ok && said.contains("PermissionDenied"), "{said}");
    let (ok, said) = cli(&["report", "redeliver", &dead, "--as", "acme-admin"]);
    assert!(ok && said.contains(" due "), "{said}");
    wait_for("the addendum delivered to both", 60, || {
        (tail_payloads(&data, "reporting", "ReportDelivered").len() == 4).then_some(())
    });
    let (ok, said) = cli(&["report", "deliveries", "--as", "acme-admin", "--tenant", "acme"]);
    assert!(ok && said.trim().is_empty(), "nothing left to deliver: {said}");
    let last_ehr = ehr.records().last().unwrap().clone();
    assert_eq!(
        (last_ehr["status"].as_str(), last_ehr["identifier"].as_str()),
        (Some("appended"), ehr_got[0]["identifier"].as_str())
    );
    assert!(last_ehr["version"].as_u64().unwrap() >= 2 && last_ehr["answer"] == 200, "{last_ehr}");
    let last_ris = ris.records().last().unwrap().clone();
    assert_eq!((last_ris["obr25"].as_str(), last_ris["ack"].as_str()), (Some("C"), Some("AA")));
    assert_ne!(last_ris["control_id"], ris_got[0]["control_id"], "a new message for the new version");
    dev.interrupt();
}

/// A reader signs 100 studies one after another; `meridian dev` is
/// SIGKILLed after 40 signatures were acknowledged, mid-flow, and
/// restarted: every acknowledged signature is on the log once, and
/// routing completes each of those reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_signature_survives_a_sigkill_and_routing_completes_each() {
    use meridian_proto::reporting::v1 as pb;
    use meridian_proto::reporting::v1::reporting_service_client::ReportingServiceClient;
    const STUDIES: usize = 100;
    let work = tempfile::TempDir::new().unwrap();
    let config = work.path().join("config");
    meridian_integration_tests::one_reader_examples(&repo().join("deploy/examples/dev"), &config);
    let group = config.join("groups/atlantic-rads.toml");
    let text = std::fs::read_to_string(&group).unwrap().replace("capacity = 1", &format!("capacity = {STUDIES}"));
    std::fs::write(&group, text).unwrap();
    let data = work.path().join("data");
    let mut dev = Dev::start_configured(&config, &data, "");
    let files_dir = work.path().join("files");
    std::fs::create_dir_all(&files_dir).unwrap();
    let files: Vec<PathBuf> = (0..STUDIES)
        .map(|n| {
            let uid = format!("1.2.826.0.1.3680043.10.543.7{n:03}");
            meridian_integration_tests::dicom::one_instance_study(&files_dir, &uid, &format!("MRN-{n}"), "STAT")
        })
        .collect();
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &files);
    assert!(ok, "{said}");
    let assigned = wait_for("every study pushed to dr-ana-ortiz", 60, || {
        let a = tail_payloads(&data, "routing", "StudyAssigned");
        (a.len() == STUDIES).then(|| a.iter().map(|a| a["studyId"].as_str().unwrap().to_owned()).collect::<Vec<_>>())
    });
    let token = dev.json("tokens.json")["principals"]["dr-ortiz"]["token"].as_str().unwrap().to_owned();
    let mut client = ReportingServiceClient::connect(dev.grpc("us-east")).await.unwrap();
    let mut acked = Vec::new();
    // A SIGKILL from another thread a few milliseconds after the 40th
    // acknowledgement, while the next calls are in flight.
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let killer = {
        let (count, pid) = (count.clone(), dev.child.id().to_string());
        std::thread::spawn(move || {
            while count.load(std::sync::atomic::Ordering::SeqCst) < 40 {
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(3));
            Command::new("kill").args(["-KILL", &pid]).status().unwrap();
        })
    };
    for study in &assigned {
        let sections =
            pb::Sections { findings: "No acute findings.".into(), impression: "Normal.".into(), ..Default::default() };
        let draft = pb::SaveDraftRequest { study_id: study.clone(), sections: Some(sections), ..Default::default() };
        if client.save_draft(bearer(draft, &token)).await.is_err() {
            break;
        }
        let sign = pb::SignRequest { study_id: study.clone(), read_type: "preliminary".into(), ..Default::default() };
        match client.sign(bearer(sign, &token)).await {
            Ok(_) => acked.push(study.clone()),
            Err(_) => break,
        }
        count.store(acked.len(), std::sync::atomic::Ordering::SeqCst);
    }
    killer.join().unwrap();
    let _ = dev.child.wait();
    assert!((40..STUDIES).contains(&acked.len()), "the kill landed mid-flow: {} acknowledged", acked.len());

    let dev = Dev::start_configured(&config, &data, "");
    let signed = tail_payloads(&data, "reporting", "ReportSigned");
    for study in &acked {
        let n = signed.iter().filter(|s| s["studyId"] == study.as_str()).count();
        assert_eq!(n, 1, "acknowledged signature of {study} on the log once");
    }
    wait_for("routing completes every acknowledged read", 60, || {
        let done = tail_payloads(&data, "routing", "AssignmentCompleted");
        acked
            .iter()
            .all(|s| done.iter().any(|c| c["studyId"] == s.as_str() && c["readType"] == "preliminary"))
            .then_some(())
    });
    dev.interrupt();
}

/// Systems that cannot hold a token present a client certificate: DICOM,
/// DICOMweb and gRPC take a listed one as its facility's principal, DICOM
/// refuses one of another facility (A-ASSOCIATE-RJ reason 3), and a
/// facility may require one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_speaks_for_its_facility_over_dicom_https_and_grpc_and_for_no_other() {
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::examples_with_tls(config.path(), "site", true);
    // The imaging center's PACS must prove itself with its certificate.
    let acme = config.path().join("tenants/acme.toml");
    let text = std::fs::read_to_string(&acme).unwrap().replace(
        "calling_ae_titles = [\"ACMEIC_PACS\"]\n",
        "calling_ae_titles = [\"ACMEIC_PACS\"]\nclient_certificate_required = true\n",
    );
    std::fs::write(&acme, text).unwrap();
    let data = tempfile::TempDir::new().unwrap();
    let tls = data.path().join("secrets/tls");
    std::fs::create_dir_all(&tls).unwrap();
    let clients = "ct=ct1.acme-general.acme.example,ic=pacs.acme-imaging-center.acme.example,\
                   nw=pacs.northwind-dublin.northwind.example,unlisted=modality.acme.example";
    let site = meridian_integration_tests::test_certificates(&tls, "site", &["--clients", clients]);
    // The same name as acme-general's CT, from a CA the region does not trust.
    let forged = meridian_integration_tests::test_certificates(
        &data.path().join("secrets"),
        "forged",
        &["--clients", "ct=ct1.acme-general.acme.example"],
    );
    let client =
        |label: &str| (tls.join(format!("site-client-{label}.pem")), tls.join(format!("site-client-{label}.key")));
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let endpoints = dev.json("endpoints.json");

    // DICOM over TLS with dcmtk: `+tls key cert` presents a certificate,
    // `+tla` none.
    let port = dev.dicom_port("us-east").to_string();
    let dcmtk = |tool: &str, calling: &str, identity: Option<(&Path, &Path)>, files: &[&Path]| {
        let mut command = Command::new(tool);
        match identity {
            Some((cert, key)) => command.arg("+tls").arg(key).arg(cert),
            None => command.arg("+tla"),
        };
        let out = command
            .arg("+cf")
            .arg(&site.ca)
            .args(["-aet", calling, "-aec", "MERIDIAN_ACME", "127.0.0.1", &port])
            .args(files)
            .env("TCP_NODELAY", "1")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ct_cert, ct_key) = client("ct");
    let (ic_cert, ic_key) = client("ic");
    let ct = Some((ct_cert.as_path(), ct_key.as_path()));
    let ic = Some((ic_cert.as_path(), ic_key.as_path()));
    let (ok, said) = dcmtk("echoscu", "ACME_CT1", ct, &[]);
    assert!(ok, "acme-general's CT with its certificate: {said}");
    let (ok, said) = dcmtk("echoscu", "ACME_CT1", None, &[]);
    assert!(ok, "acme-general requires no certificate: {said}");
    let (ok, said) = dcmtk("echoscu", "ACMEIC_PACS", ct, &[]);
    assert!(!ok && said.contains("Calling AE Title Not Recognized"), "another facility's certificate: {said}");
    let (ok, said) = dcmtk("echoscu", "ACMEIC_PACS", None, &[]);
    assert!(!ok && said.contains("Calling AE Title Not Recognized"), "the imaging center requires one: {said}");
    let (ok, said) = dcmtk("echoscu", "ACMEIC_PACS", ic, &[]);
    assert!(ok, "the imaging center with its own: {said}");
    let forged_ct =
        (data.path().join("secrets/forged-client-ct.pem"), data.path().join("secrets/forged-client-ct.key"));
    let (ok, _) = dcmtk("echoscu", "ACME_CT1", Some((&forged_ct.0, &forged_ct.1)), &[]);
    assert!(!ok, "acme-general's name on a certificate from a CA the region does not trust gets no association");
    let _ = forged;
    let files = tempfile::TempDir::new().unwrap();
    let file = meridian_integration_tests::dicom::one_instance_study(
        files.path(),
        "1.2.826.0.1.3680043.10.543.778",
        "MRN-CERT",
        "ROUTINE",
    );
    let (ok, said) = dcmtk("storescu", "ACMEIC_PACS", ic, &[&file]);
    assert!(ok, "storescu with the imaging center's certificate: {said}");

    // HL7 orders over MLLP on TLS (Python's ssl, OpenSSL): the MSH-4
    // facility must be the certificate's, and the imaging center's needs
    // its own.
    let mllp_port = dev.mllp_port("us-east").to_string();
    let order = |facility: &str, control: &str| {
        format!(
            "MSH|^~\\&|EPIC|{facility}|MERIDIAN|us-east|20261203101500||ORM^O01^ORM_O01|{control}|P|2.5.1\n\
             PID|1||MRN-CERT^^^ACME^MR||Doe^Jane\n\
             ORC|NW|PO-{control}|||||^^^^^S||20261203101400|||1234^Lee^Sam\n\
             OBR|1|PO-{control}||70450^CT head^CPT||||||||||||||ACC-{control}\n"
        )
    };
    let mllp = |message: String, identity: Option<&str>| {
        use std::io::Write;
        let mut command = Command::new(meridian_integration_tests::venv_bin().join("python"));
        command
            .arg(repo().join("integration-tests/python/mllp_tls_send.py"))
            .args(["127.0.0.1", &mllp_port])
            .arg(&site.ca);
        if let Some(label) = identity {
            let (cert, key) = client(label);
            command.arg(cert).arg(key);
        }
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(message.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let said = mllp(order("acme-general", "CERT-1"), Some("ct"));
    assert!(said.contains("MSA|AA|CERT-1"), "acme-general's order with its certificate: {said}");
    let said = mllp(order("acme-general", "CERT-2"), None);
    assert!(said.contains("MSA|AA|CERT-2"), "acme-general requires no certificate: {said}");
    let said = mllp(order("acme-general", "CERT-3"), Some("ic"));
    assert!(said.contains("MSA|AR|CERT-3") && said.contains("does not speak for facility acme-general"), "{said}");
    let said = mllp(order("acme-imaging-center", "CERT-4"), None);
    assert!(said.contains("MSA|AR|CERT-4") && said.contains("must present its client certificate"), "{said}");
    let said = mllp(order("acme-imaging-center", "CERT-5"), Some("ic"));
    assert!(said.contains("MSA|AA|CERT-5"), "the imaging center with its own: {said}");

    // DICOMweb: STOW-RS with the certificate and no token.
    let http = endpoints["regions"]["us-east"]["http"].as_str().unwrap().to_owned();
    let second = meridian_integration_tests::dicom::one_instance_study(
        files.path(),
        "1.2.826.0.1.3680043.10.543.779",
        "MRN-CERT-2",
        "ROUTINE",
    );
    let curl = |identity: Option<&str>| match identity {
        None => stow_https(&http, &site.ca, std::slice::from_ref(&second), &[]),
        Some(label) => {
            let (cert, key) = client(label);
            let extra = ["--cert".as_ref(), cert.as_os_str(), "--key".as_ref(), key.as_os_str()];
            stow_https(&http, &site.ca, std::slice::from_ref(&second), &extra)
        }
    };
    let (code, said) = curl(None);
    assert_eq!(code, "401", "neither token nor certificate: {said}");
    let (code, said) = curl(Some("unlisted"));
    assert!(code == "401" && said.contains("CERTIFICATE_UNKNOWN") && said.contains("modality.acme.example"), "{said}");
    let (code, said) = curl(Some("ct"));
    assert_eq!(code, "200", "STOW-RS with acme-general's certificate: {said}");
    // Northwind's certificate speaks for Northwind only: its STOW-RS to
    // acme's region stores nothing of acme's.
    let (code, said) = curl(Some("nw"));
    assert_ne!(code, "200", "northwind's certificate storing into acme: {said}");

    // gRPC: the certificate is the principal of a call without a token.
    use meridian_proto::ingest::v1::ListRejectionsRequest;
    use meridian_proto::ingest::v1::ingest_service_client::IngestServiceClient;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let grpc = format!("https://{}", endpoints["regions"]["us-east"]["grpc"].as_str().unwrap());
    let rejections = |identity: Option<&str>| {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(&site.ca).unwrap()));
        if let Some(label) = identity {
            let (cert, key) = client(label);
            tls = tls.identity(Identity::from_pem(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap()));
        }
        let grpc = grpc.clone();
        async move {
            let channel = Channel::from_shared(grpc).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
            IngestServiceClient::new(channel).list_rejections(ListRejectionsRequest { page_size: 10 }).await
        }
    };
    assert!(rejections(Some("ct")).await.is_ok(), "acme-general's certificate lists acme's rejections");
    let refused = rejections(None).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let refused = rejections(Some("unlisted")).await.unwrap_err();
    assert!(refused.code() == tonic::Code::Unauthenticated && refused.message().contains("modality.acme.example"));

    // Each refusal is in the region's audit with its code.
    let codes = wait_for("the certificate refusals audited", 20, || {
        let found = tail_events_trusting(data.path(), "us-east", "audit", "AccessDenied", Some(&site.ca));
        let codes: Vec<String> =
            found.iter().map(|e| e["payload"]["code"].as_str().unwrap_or_default().to_owned()).collect();
        (codes.iter().filter(|c| *c == "CERTIFICATE_UNKNOWN").count() >= 2).then_some(codes)
    });
    for code in ["CERTIFICATE_NOT_OF_FACILITY", "CERTIFICATE_REQUIRED", "TOKEN_MISSING"] {
        assert!(codes.iter().any(|c| c == code), "{code} in {codes:?}");
    }
    dev.interrupt();
}

/// A hospital's identity provider signs ES256 and RS256 tokens (here with
/// Python's `cryptography`, not the Rust library that verifies them): they
/// are taken for the tenant `auth.toml` says it speaks for, and for no
/// other; a key rotated into its key set is taken without a restart.
#[test]
fn an_identity_providers_tokens_speak_for_its_tenant_and_no_other() {
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::copy_dir(&repo().join("deploy/examples/dev"), config.path());
    let auth = config.path().join("auth.toml");
    let mut text = std::fs::read_to_string(&auth).unwrap();
    text.push_str(
        "\n[[oidc_issuers]]\nissuer = \"https://sso.acme.example\"\naudience = \"meridian\"\n\
         jwks = { file = \"oidc/jwks.json\" }\ntenant = \"acme\"\n",
    );
    std::fs::write(&auth, text).unwrap();
    let data = tempfile::TempDir::new().unwrap();
    let idp = data.path().join("secrets/oidc");
    std::fs::create_dir_all(&idp).unwrap();
    let python = meridian_integration_tests::venv_bin().join("python");
    let script = repo().join("integration-tests/python/oidc_idp.py");
    let run = |args: &[&str]| {
        let out = Command::new(&python).arg(&script).args(args).output().unwrap();
        assert!(out.status.success(), "oidc_idp.py: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let idp_dir = idp.to_str().unwrap().to_owned();
    run(&["keys", &idp_dir]);
    let dev = Dev::start_configured(config.path(), data.path(), "");
    #[allow(clippy::disallowed_methods)] // the tokens' times, as an identity provider reads them
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let token = |alg: &str, extra: &str| {
        let claims = format!(
            "{{\"iss\": \"https://sso.acme.example\", \"sub\": \"u-17\", \"aud\": [\"account\", \"meridian\"], \
             \"iat\": {}, \"exp\": {}, \"roles\": [\"tenant-admin\"]{extra}}}",
            now - 5,
            now + 600
        );
        run(&["token", &idp_dir, alg, &claims])
    };
    let export = |token: &str, tenant: &str| {
        let out = Command::new(MERIDIAN)
            .args(["audit", "export", "--region", "us-east", "--tenant", tenant, "--token", token, "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, said) = export(&token("ES256", ""), "acme");
    assert!(ok, "an ES256 token of acme's identity provider exports acme's audit: {said}");
    let (ok, said) = export(&token("RS256", ""), "acme");
    assert!(ok, "and an RS256 one: {said}");
    let (ok, said) = export(&token("ES256", ""), "northwind");
    assert!(!ok && said.contains("PermissionDenied"), "acme's identity provider speaks for acme only: {said}");
    let (ok, said) = export(&token("ES256", ", \"tenant\": \"northwind\""), "northwind");
    assert!(
        !ok && said.contains("Unauthenticated") && said.contains("expected \"acme\""),
        "claiming northwind: {said}"
    );

    // The identity provider rotates: its next keys are published beside
    // the current ones in the same file, and taken without a restart.
    let next = data.path().join("secrets/oidc-next");
    std::fs::create_dir_all(&next).unwrap();
    let next_dir = next.to_str().unwrap().to_owned();
    run(&["keys", &next_dir, "2"]);
    let set =
        |dir: &Path| serde_json::from_str::<Value>(&std::fs::read_to_string(dir.join("jwks.json")).unwrap()).unwrap();
    let mut keys = set(&idp)["keys"].as_array().unwrap().clone();
    keys.extend(set(&next)["keys"].as_array().unwrap().iter().cloned());
    let claims = format!(
        "{{\"iss\": \"https://sso.acme.example\", \"sub\": \"u-18\", \"aud\": \"meridian\", \
         \"iat\": {}, \"exp\": {}, \"roles\": [\"tenant-admin\"]}}",
        now - 5,
        now + 600
    );
    let signed_by_next = run(&["token", &next_dir, "RS256", &claims, "2"]);
    let (ok, said) = export(&signed_by_next, "acme");
    assert!(!ok && said.contains("Unauthenticated") && said.contains("rsa-2"), "not yet published: {said}");
    std::fs::write(idp.join("jwks.json"), serde_json::json!({"keys": keys}).to_string()).unwrap();
    let (ok, said) = export(&signed_by_next, "acme");
    assert!(ok, "published, the next key's token is taken: {said}");
    dev.interrupt();
}

/// gRPC health of `grpc` (an https:// URL) trusting `ca`: SERVING, or the
/// connection's error with its causes.
async fn health_over_tls(grpc: &str, ca: &Path) -> Result<i32, String> {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
    let endpoint = Channel::from_shared(grpc.to_owned()).unwrap().tls_config(tls).unwrap();
    let channel = endpoint.connect().await.map_err(|e| {
        let mut said = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            said.push_str(&format!(": {c}"));
            cause = c.source();
        }
        said
    })?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await;
    answer.map(|a| a.into_inner().status).map_err(|s| format!("{s:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_with_a_certificate_speaks_only_tls_refuses_bad_certificates_and_serves_a_rotated_one() {
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::copy_dir(&repo().join("deploy/examples/dev"), config.path());
    let region = config.path().join("regions/us-east.toml");
    let mut text = std::fs::read_to_string(&region).unwrap();
    text.push_str("\n[tls]\ncert = { file = \"tls/us-east.pem\" }\nkey = { file = \"tls/us-east.key\" }\n");
    std::fs::write(&region, text).unwrap();
    let data = tempfile::TempDir::new().unwrap();
    let certs = tempfile::TempDir::new().unwrap();
    let tls = data.path().join("secrets/tls");

    // Bad input first: no certificate file, no start; the message names
    // the file, the field and the path.
    let refused = Command::new(MERIDIAN)
        .args(["dev", "--ports", "auto", "--config"])
        .arg(config.path())
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(64), "{said}");
    assert!(said.contains("regions/us-east.toml: tls.cert") && said.contains("secrets/tls/us-east.pem"), "{said}");

    let certificates = meridian_integration_tests::test_certificates;
    let install = |pair: &meridian_integration_tests::TestCertificates| {
        std::fs::create_dir_all(&tls).unwrap();
        // The key first, as an operator's copy might: the certificate that
        // follows is what makes the pair whole.
        std::fs::copy(&pair.key, tls.join("us-east.key")).unwrap();
        std::fs::copy(&pair.cert, tls.join("us-east.pem")).unwrap();
    };
    let first = certificates(certs.path(), "first", &[]);
    install(&first);
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let endpoints = dev.json("endpoints.json");
    assert_eq!(endpoints["regions"]["us-east"]["tls"], true);
    assert_eq!(endpoints["regions"]["eu-west"]["tls"], false, "only the region with a certificate");
    let grpc = format!("https://{}", endpoints["regions"]["us-east"]["grpc"].as_str().unwrap());
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    assert_eq!(health_over_tls(&grpc, &first.ca).await, Ok(serving));

    // Plaintext to the TLS port gets nothing.
    let plain = format!("http://{}", endpoints["regions"]["us-east"]["grpc"].as_str().unwrap());
    let channel = Channel::from_shared(plain).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = tokio::time::timeout(
        Duration::from_secs(15),
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }),
    )
    .await;
    assert!(!matches!(answer, Ok(Ok(_))), "plaintext answered on the TLS port: {answer:?}");

    // The CLI trusts the CA it is given, and says what it needs without one.
    let tail = |ca: Option<&Path>| {
        let mut command = Command::new(MERIDIAN);
        command.args(["log", "tail", "--region", "us-east", "--data-dir"]).arg(data.path());
        if let Some(ca) = ca {
            command.arg("--ca").arg(ca);
        }
        let out = command.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, said) = tail(Some(&first.ca));
    assert!(ok && said.contains("ReaderRegistered"), "{said}");
    let (ok, said) = tail(None);
    assert!(!ok && said.contains("speaks TLS") && said.contains("--ca"), "{said}");
    // The probe's command too.
    let probe = Command::new(MERIDIAN).args(["health", "--endpoint", &grpc, "--ca"]).arg(&first.ca).output().unwrap();
    assert!(probe.status.success(), "{}", String::from_utf8_lossy(&probe.stdout));

    // HTTP speaks TLS too: curl trusting the CA, and not without it.
    let http = endpoints["regions"]["us-east"]["http"].as_str().unwrap().to_owned();
    assert!(http.starts_with("https://"), "{http}");
    let curl = |ca: Option<&Path>| {
        let mut command = Command::new("curl");
        command.args(["-s", "-o", "/dev/null", "-w", "%{http_code}"]);
        if let Some(ca) = ca {
            command.arg("--cacert").arg(ca);
        }
        let out = command.arg(format!("{http}/healthz")).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(curl(Some(&first.ca)), (Some(0), "200".to_owned()));
    assert_eq!(curl(None).0, Some(60), "curl: the peer's certificate cannot be verified");

    // DICOM over TLS (PS3.15 Annex B) with dcmtk: a PACS trusting the CA
    // echoes and stores; plaintext on the port, or trusting another CA,
    // gets no association.
    let stranger = certificates(certs.path(), "stranger", &[]);
    let port = dev.dicom_port("us-east").to_string();
    let dcmtk = |tool: &str, ca: Option<&Path>, files: &[&Path]| {
        let mut command = Command::new(tool);
        if let Some(ca) = ca {
            command.arg("+tla").arg("+cf").arg(ca);
        }
        let out = command
            .args(["-aet", "ACME_CT1", "-aec", "MERIDIAN_ACME", "127.0.0.1", &port])
            .args(files)
            .env("TCP_NODELAY", "1")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, said) = dcmtk("echoscu", Some(&first.ca), &[]);
    assert!(ok, "echoscu over TLS: {said}");
    let (ok, _) = dcmtk("echoscu", None, &[]);
    assert!(!ok, "plaintext DICOM on the TLS port");
    let (ok, said) = dcmtk("echoscu", Some(&stranger.ca), &[]);
    assert!(!ok, "a PACS trusting another CA: {said}");
    let files = tempfile::TempDir::new().unwrap();
    let file = meridian_integration_tests::dicom::one_instance_study(
        files.path(),
        "1.2.826.0.1.3680043.10.543.777",
        "MRN-TLS",
        "ROUTINE",
    );
    let (ok, said) = dcmtk("storescu", Some(&first.ca), &[&file]);
    assert!(ok, "storescu over TLS: {said}");
    wait_for("the instance stored over TLS recorded", 20, || {
        let out = Command::new(MERIDIAN)
            .args(["log", "tail", "--stream", "ingest", "--region", "us-east", "--data-dir"])
            .arg(data.path())
            .arg("--ca")
            .arg(&first.ca)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("StudyStarted").then_some(())
    });

    // A client trusting another CA is refused, naming why.
    let refused = health_over_tls(&grpc, &stranger.ca).await.unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    // Rotated without a restart: the next connection gets the new
    // certificate; the old CA is no longer enough.
    let second = certificates(certs.path(), "second", &[]);
    install(&second);
    wait_for("the rotated certificate served", 20, || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(health_over_tls(&grpc, &second.ca)).ok()
        })
    });
    let refused = health_over_tls(&grpc, &first.ca).await.unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    // An expired certificate, and one for another name: clients refuse them.
    let expired = certificates(certs.path(), "expired", &["--expired"]);
    install(&expired);
    let said = wait_for("the expired certificate served and refused", 20, || {
        let said = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(health_over_tls(&grpc, &expired.ca))
        });
        said.err().filter(|e| e.to_lowercase().contains("expired"))
    });
    assert!(said.contains("invalid peer certificate"), "{said}");
    let misnamed = certificates(certs.path(), "misnamed", &["--names", "pacs.example.org"]);
    install(&misnamed);
    wait_for("the misnamed certificate served and refused", 20, || {
        let said = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(health_over_tls(&grpc, &misnamed.ca))
        });
        said.err().filter(|e| e.contains("NotValidForName") || e.contains("not valid for name"))
    });
    dev.interrupt();
}

/// rotel's agent (an OpenTelemetry collector) on loopback, printing every
/// span it receives in the collector's debug form; killed when dropped.
struct Collector {
    child: Child,
    grpc: u16,
    printed: PathBuf,
}

/// One span as the collector printed it.
#[derive(Debug, Clone)]
struct Printed {
    trace: String,
    parent: String,
    id: String,
    name: String,
    kind: String,
}

impl Collector {
    fn start(dir: &Path) -> Collector {
        let rotel =
            std::env::var("MERIDIAN_ROTEL").expect("MERIDIAN_ROTEL names rotel-agent (scripts/test installs it)");
        let (grpc, http) = (meridian_integration_tests::free_port(), meridian_integration_tests::free_port());
        let printed = dir.join("rotel.out");
        let child = Command::new(rotel)
            .args(["start", "--exporter", "blackhole", "--debug-log", "traces", "--debug-log", "metrics"])
            .args(["--debug-log-verbosity", "detailed"])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
            .arg("--log-file")
            .arg(dir.join("rotel.log"))
            .arg("--pid-file")
            .arg(dir.join("rotel.pid"))
            .stdout(std::fs::File::create(&printed).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let collector = Collector { child, grpc, printed };
        wait_for("rotel listening", 20, || std::net::TcpStream::connect(("127.0.0.1", grpc)).ok());
        collector
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.printed).unwrap_or_default()
    }

    /// Every span printed so far.
    fn spans(&self) -> Vec<Printed> {
        let field = |block: &str, name: &str| {
            block
                .lines()
                .find_map(|l| l.trim_start().strip_prefix(name).and_then(|r| r.trim_start().strip_prefix(':')))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        self.text()
            .split("Span #")
            .skip(1)
            .map(|block| Printed {
                trace: field(block, "Trace ID"),
                parent: field(block, "Parent ID"),
                id: field(block, "ID"),
                name: field(block, "Name"),
                kind: field(block, "Kind"),
            })
            .collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The trace id and span id a `traceparent` names.
fn trace_and_span(traceparent: &Value) -> (String, String) {
    let text = traceparent.as_str().unwrap_or_else(|| panic!("no traceparent: {traceparent}"));
    assert!(!text.is_empty());
    let parts: Vec<&str> = text.split('-').collect();
    assert_eq!(parts.len(), 4, "{text}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// A collector address that is not one stops the start, naming the
/// variable and what it should be; a client command never exports and
/// ignores it.
#[test]
fn a_malformed_collector_address_stops_the_start_naming_the_variable() {
    let data = tempfile::TempDir::new().unwrap();
    let refused = Command::new(MERIDIAN)
        .args(["dev", "--ports", "auto", "--config"])
        .arg(repo().join("deploy/examples/dev"))
        .arg("--data-dir")
        .arg(data.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(64), "{said}");
    assert!(said.contains("OTEL_EXPORTER_OTLP_ENDPOINT=collector:4317") && said.contains("http://"), "{said}");
    assert!(!data.path().join("endpoints.json").exists(), "nothing started");
    let check = Command::new(MERIDIAN)
        .args(["config", "check"])
        .arg(repo().join("deploy/examples/dev"))
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

#[test]
fn one_studys_spans_from_c_store_to_assignment_share_a_trace_across_the_log_and_a_dead_collector_fails_nothing() {
    // Atlantic's one reader takes each STAT study pushed to her: the study
    // is queued at its StudyStarted (STAT) and assigned at once, and
    // completes a second after its last instance.
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::one_reader_examples(&repo().join("deploy/examples/dev"), config.path());
    completing_in_a_second(config.path());

    let work = tempfile::TempDir::new().unwrap();
    let collector = Collector::start(work.path());
    let data = tempfile::TempDir::new().unwrap();
    let endpoint = collector.endpoint();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "500"),
    ];
    let dev = Dev::start_with(config.path(), data.path(), "", &env);

    let study_uid = "1.2.826.0.1.3680043.10.543.911";
    let file = meridian_integration_tests::dicom::one_instance_study(work.path(), study_uid, "MRN-TRACE", "STAT");
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &[file]);
    assert!(ok, "{said}");

    // The log: every event of the study names the one trace.
    let assigned = wait_for("the study assigned", 30, || {
        tail_events(data.path(), "us-east", "routing", "StudyAssigned").into_iter().next()
    });
    let completed = wait_for("the study completed", 30, || {
        tail_events(data.path(), "us-east", "ingest", "StudyCompleted").into_iter().next()
    });
    let started = tail_events(data.path(), "us-east", "ingest", "StudyStarted").remove(0);
    let queued = tail_events(data.path(), "us-east", "routing", "StudyQueued").remove(0);
    let (trace, c_store) = trace_and_span(&started["traceparent"]);
    for (what, event) in [("StudyCompleted", &completed), ("StudyQueued", &queued), ("StudyAssigned", &assigned)] {
        assert!(event["traceparent"].is_string(), "{what} names a trace: {event}");
        assert_eq!(trace_and_span(&event["traceparent"]).0, trace, "{what} is in the study's trace: {event}");
    }
    let (_, intake_step) = trace_and_span(&queued["traceparent"]);
    let (_, push) = trace_and_span(&assigned["traceparent"]);
    assert!(intake_step != c_store && push != intake_step, "each service appends in a span of its own");

    // The collector: the same trace, span by span, parent by parent.
    let spans = wait_for("the study's spans at the collector", 30, || {
        let spans: Vec<Printed> = collector.spans().into_iter().filter(|s| s.trace == trace).collect();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        let whole = [
            "dicom association",
            "C-STORE",
            "ingest.study completed",
            "meridian.us-east.ops.ingest process",
            "routing StudyAssigned",
            "inference triage",
            "meridian.us-east.ops.inference process",
        ]
        .iter()
        .all(|n| names.contains(n));
        whole.then_some(spans)
    });
    let named = |name: &str| spans.iter().find(|s| s.name == name).unwrap().clone();
    let (association, store) = (named("dicom association"), named("C-STORE"));
    assert_eq!(association.kind, "SPAN_KIND_SERVER", "{association:?}");
    assert_eq!(association.parent, "", "the association begins the trace");
    assert_eq!(store.parent, association.id, "each C-STORE is a step of its association");
    assert_eq!(store.id, c_store, "StudyStarted was appended in the C-STORE's span");
    let intake: Vec<&Printed> = spans.iter().filter(|s| s.name == "meridian.us-east.ops.ingest process").collect();
    assert!(intake.iter().all(|s| s.kind == "SPAN_KIND_CONSUMER"), "{intake:?}");
    assert!(
        intake.iter().any(|s| s.parent == c_store && s.id == intake_step),
        "routing's intake continued the C-STORE: {intake:?}"
    );
    // Inference's read follows the completion, and routing takes its
    // outcome in the same trace.
    let completion = named("ingest.study completed");
    let triage = named("inference triage");
    assert_eq!(triage.parent, completion.id, "the model read the completed study in its trace");
    assert!(
        spans.iter().any(|s| s.name == "meridian.us-east.ops.inference process" && !s.parent.is_empty()),
        "routing took the triage outcome in the study's trace: {spans:?}"
    );
    let pushed = named("routing StudyAssigned");
    assert_eq!(
        (pushed.parent.as_str(), pushed.id.as_str()),
        (intake_step.as_str(), push.as_str()),
        "the push timer's assignment is a step after the queueing"
    );
    assert_eq!(named("ingest.study completed").parent, c_store, "completion continues the study's trace");

    // Metrics reach the same collector: instances stored, the queue by
    // priority, the model's reads.
    let metrics = wait_for("the metrics at the collector", 30, || {
        let text = collector.text();
        [
            "meridian.ingest.instances",
            "meridian.ingest.bytes",
            "meridian.routing.queue.depth",
            "meridian.routing.sla.at_risk",
            "meridian.inference.triage.duration",
            "meridian.consumer.lag",
        ]
        .iter()
        .all(|m| text.contains(m))
        .then_some(text)
    });
    assert!(metrics.contains("Str(stat)"), "the queue's gauge names its priority");
    // An HTTP request is named by its route, never its path (which holds
    // the Study Instance UID).
    let reader = dev.token("acme-admin");
    let series = tokio::runtime::Runtime::new().unwrap().block_on(http_get(
        &dev.http("us-east"),
        &format!("/dicomweb/studies/{study_uid}/series"),
        Some(&reader),
    ));
    assert_eq!(series.0, 200, "{:?}", series.2);
    let request = wait_for("the DICOMweb request's span", 30, || {
        collector
            .spans()
            .into_iter()
            .find(|s| s.name == "GET /dicomweb/studies/{study}/series" && s.kind == "SPAN_KIND_SERVER")
    });
    // The access's audit record was appended in the request's span.
    let accessed = wait_for("the access audited", 30, || {
        tail_events(data.path(), "us-east", "audit", "PhiAccessed")
            .into_iter()
            .find(|e| e["traceparent"].is_string() && trace_and_span(&e["traceparent"]).1 == request.id)
    });
    assert_eq!(trace_and_span(&accessed["traceparent"]).0, request.trace);
    // Spans leave the region: no UID, patient id or accession in them.
    let printed = collector.text();
    for phi in [study_uid, "MRN-TRACE", "1.2.826.0.1.3680043.10.543"] {
        assert!(!printed.contains(phi), "{phi} reached the collector");
    }
    // A gRPC call is a span of its own, named by its method.
    let claimed =
        Command::new(MERIDIAN).args(["worklist", "--as", "dr-ortiz", "--data-dir"]).arg(data.path()).output().unwrap();
    assert!(claimed.status.success(), "{}", String::from_utf8_lossy(&claimed.stderr));
    wait_for("the worklist call's span", 30, || {
        collector
            .spans()
            .into_iter()
            .find(|s| s.name.ends_with("RoutingService/GetWorklist") && s.kind == "SPAN_KIND_SERVER")
    });

    // The collector dies: studies are still stored and assigned, and the
    // spans that could not be sent are counted.
    drop(collector);
    let token = dev.token("sre");
    let dropped = || {
        let summary = tokio::runtime::Runtime::new().unwrap().block_on(http_get(
            &dev.http("us-east"),
            "/v1/summary",
            Some(&token),
        ));
        summary.2["telemetry"]["spans_dropped"].as_u64().unwrap_or(0)
    };
    assert_eq!(dropped(), 0, "nothing dropped while the collector was up");
    let summary =
        tokio::runtime::Runtime::new().unwrap().block_on(http_get(&dev.http("us-east"), "/v1/summary", Some(&token)));
    assert_eq!(summary.2["audit"]["refusals_overflowed"], 0, "{}", summary.2);
    // Lag is measured from committed positions, per consumer and topic.
    let lag = summary.2["lag"].as_array().cloned().unwrap_or_default();
    for (consumer, topic) in
        [("routing.intake", "meridian.us-east.ops.ingest"), ("billing.ledger", "meridian.us-east.ops.routing")]
    {
        assert!(
            lag.iter().any(|l| l["consumer"] == consumer && l["topic"] == topic && l["records"].is_u64()),
            "{consumer} on {topic} in {lag:?}"
        );
    }
    let second = "1.2.826.0.1.3680043.10.543.912";
    let file = meridian_integration_tests::dicom::one_instance_study(work.path(), second, "MRN-TRACE2", "STAT");
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &[file]);
    assert!(ok, "a dead collector refused a study: {said}");
    wait_for("the second study queued", 30, || {
        (tail_events(data.path(), "us-east", "routing", "StudyQueued").len() == 2).then_some(())
    });
    wait_for("the undeliverable spans counted", 30, || (dropped() > 0).then_some(()));
}

/// A browser script the test talks to line by line: it prints what it
/// reached, the test answers on its stdin.
struct Conversation {
    child: Child,
    said: std::io::BufReader<std::process::ChildStdout>,
}

impl Conversation {
    /// Starts `script` and waits for its first line, `first`.
    fn start(mut script: Command, first: &str) -> Conversation {
        let mut child = script.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let said = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut talk = Conversation { child, said };
        let line = talk.next();
        if line != first {
            let (_, stderr) = talk.end();
            panic!("the browser said {line:?}: {stderr}");
        }
        talk
    }

    fn next(&mut self) -> String {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.said, &mut line).unwrap();
        line.trim().to_owned()
    }

    fn say(&mut self, line: &str) {
        std::io::Write::write_all(self.child.stdin.as_mut().unwrap(), format!("{line}\n").as_bytes()).unwrap();
    }

    /// Waits for it to end: whether it succeeded, and its stderr.
    fn end(self) -> (bool, String) {
        let out = self.child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// playwright-core's folder and the browser it drives (scripts/test
/// installs both).
fn browser_tools() -> (String, String) {
    let playwright = std::env::var("MERIDIAN_PLAYWRIGHT")
        .expect("MERIDIAN_PLAYWRIGHT names playwright-core's folder (scripts/test installs it)");
    let chromium =
        std::env::var("MERIDIAN_CHROMIUM").expect("MERIDIAN_CHROMIUM names the browser (scripts/test installs it)");
    (playwright, chromium)
}

/// "Claim the next study": dr-nair, in in-south, is told nothing is
/// offered; then Acme's study (homed in us-east, on pull) is offered to
/// her, and the button claims it in its home region and opens it.
#[test]
fn a_reader_claims_the_next_study_from_another_region_in_the_reading_room() {
    let (playwright, chromium) = browser_tools();
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::nair_always_on_pull_examples(&repo().join("deploy/examples/dev"), config.path());
    let data = tempfile::TempDir::new().unwrap();
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let mut script = Command::new("node");
    script.arg(repo().join("integration-tests/browser/claim-next.mjs")).arg(format!("http://{}", dev.http("in-south")));
    script.env("MERIDIAN_PLAYWRIGHT", &playwright).env("MERIDIAN_CHROMIUM", &chromium);
    let mut browser = Conversation::start(script, "empty");
    let files = tempfile::TempDir::new().unwrap();
    let file = meridian_integration_tests::dicom::one_instance_study(
        files.path(),
        "1.2.826.0.1.3680043.10.543.2401",
        "MRN-NEXT",
        "STAT",
    );
    let (ok, sent) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &[file]);
    assert!(ok, "{sent}");
    browser.say("sent");
    let done = browser.next();
    let (ok, stderr) = browser.end();
    assert!(ok, "{done}\n{stderr}");
    let result: Value = serde_json::from_str(done.strip_prefix("done ").unwrap()).unwrap();
    assert!(result["nothing"].as_str().unwrap().contains("Nothing to claim"), "{result}");
    assert_eq!(result["claimed"], result["offered"], "{result}");
    assert_eq!((result["home"].as_str(), result["language"].as_str()), (Some("us-east"), Some("en")), "{result}");
    assert_eq!(result["said"], "Claimed: the next study", "{result}");
    // Claimed where the study lives, by her.
    let claimed = wait_for("the claim on us-east's log", 30, || {
        tail_payloads(data.path(), "routing", "AssignmentClaimed")
            .into_iter()
            .find(|c| c["studyId"] == result["claimed"])
    });
    assert_eq!(claimed["readerId"], "dr-priya-nair", "{claimed}");
}

/// A peer review in the reading room: the reviewer reads the study blind
/// (nothing of the reviewed read on his page), signs his read, finds it
/// on his worklist to score, sees the reviewed read only then, and scores
/// it by RADPEER; the score is on the log.
#[test]
fn a_reviewer_reads_blind_and_scores_by_radpeer_in_the_reading_room() {
    let (playwright, chromium) = browser_tools();
    let config = tempfile::TempDir::new().unwrap();
    every_final_peer_reviewed(config.path());
    let data = tempfile::TempDir::new().unwrap();
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let files = tempfile::TempDir::new().unwrap();
    let file = meridian_integration_tests::dicom::one_instance_study(
        files.path(),
        "1.2.826.0.1.3680043.10.543.402",
        "MRN-PEER-ROOM",
        "STAT",
    );
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &[file]);
    assert!(ok, "{said}");
    let study = wait_for("the final pushed to dr-ana-ortiz", 30, || {
        let assigned = tail_payloads(data.path(), "routing", "StudyAssigned");
        assigned.first().map(|a| a["studyId"].as_str().unwrap().to_owned())
    });
    let cli = |args: &[&str]| us_east(data.path(), args);
    let (ok, said) = cli(&[
        "report",
        "draft",
        &study,
        "--as",
        "dr-ortiz",
        "--findings",
        "Findings.",
        "--impression",
        "No acute findings.",
    ]);
    assert!(ok, "{said}");
    let (ok, said) = cli(&["report", "sign", &study, "--as", "dr-ortiz", "--read-type", "final"]);
    assert!(ok, "{said}");
    // The same patient again: its final goes to dr-ortiz, free again.
    let next = meridian_integration_tests::dicom::one_instance_study(
        files.path(),
        "1.2.826.0.1.3680043.10.543.403",
        "MRN-PEER-ROOM",
        "STAT",
    );
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &[next]);
    assert!(ok, "{said}");
    let next_study = wait_for("the next study pushed to dr-ana-ortiz", 60, || {
        tail_payloads(data.path(), "routing", "StudyAssigned")
            .into_iter()
            .find(|a| a["studyId"] != study.as_str() && a["readerId"] == "dr-ana-ortiz")
            .map(|a| a["studyId"].as_str().unwrap().to_owned())
    });
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reading-room");
    std::fs::create_dir_all(&shots).unwrap();
    let browser = Command::new("node")
        .arg(repo().join("integration-tests/browser/peer-review.mjs"))
        .arg(format!("http://{}", dev.http("us-east")))
        .arg(&study)
        .arg(&shots)
        .arg(&next_study)
        .env("MERIDIAN_PLAYWRIGHT", &playwright)
        .env("MERIDIAN_CHROMIUM", &chromium)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&browser.stdout);
    assert!(browser.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&browser.stderr));
    let result: Value = serde_json::from_str(stdout.trim().strip_prefix("done ").unwrap()).unwrap();
    assert!(result["row"].as_str().unwrap().contains("peer review (blinded)"), "{result}");
    assert_eq!(result["blind"], true, "nothing of the reviewed read before his own is signed: {result}");
    assert_eq!(result["to_score"], 1, "{result}");
    assert_eq!(result["reviewed_shown"], true, "{result}");
    assert_eq!(result["scored"], "You scored 3b; the score awaits arbitration.", "{result}");
    assert_eq!(result["to_score_after"], 0, "{result}");
    // The patient's first study is the next one's prior: her signed final
    // (never the blinded review), and reading it was audited as hers.
    assert_eq!(
        (&result["priors"], result["prior_study"].as_str()),
        (&Value::from(1), Some(study.as_str())),
        "{result}"
    );
    let prior = result["prior"].as_str().unwrap();
    assert!(prior.contains("final (final): No acute findings.") && !prior.contains("subdural"), "{result}");
    let accessed = tail_payloads(data.path(), "audit", "PhiAccessed");
    assert!(
        accessed.iter().any(|a| a["action"] == "reporting.list-priors"
            && a["principal"] == "dr-ortiz"
            && a.to_string().contains(study.as_str())),
        "{accessed:?}"
    );
    // On the log: his blinded read signed, then the score.
    let signed = wait_for("the review's signature", 30, || {
        tail_payloads(data.path(), "reporting", "ReportSigned")
            .into_iter()
            .find(|s| s["studyId"] == study.as_str() && s["readType"] == "peer_review")
    });
    assert_eq!(signed["readerId"], "dr-ben-cole", "{signed}");
    let scored = wait_for("the score", 30, || {
        tail_payloads(data.path(), "reporting", "PeerReviewScored").into_iter().find(|s| s["studyId"] == study.as_str())
    });
    assert_eq!(scored["score"], "3b", "{scored}");
}

/// A reader signs in to the reading room, run as its own process
/// (`meridian room`, as a deployment runs it beside `meridian serve`'s
/// services), through a real OpenID Connect provider (oidc-provider, with
/// PKCE): the provider's access token is
/// verified as the platform verifies it, kept on the server, renewed with
/// the refresh token before it ends; someone the provider knows who is not
/// a reader gets no session and is told why; a callback this browser did
/// not begin is refused.
#[test]
fn a_reader_signs_in_to_the_reading_room_run_apart_through_an_identity_provider() {
    let (playwright, chromium) = browser_tools();
    let oidc_provider = std::env::var("MERIDIAN_OIDC_PROVIDER")
        .expect("MERIDIAN_OIDC_PROVIDER names oidc-provider's folder (scripts/test installs it)");
    let script = repo().join("integration-tests/browser/identity-provider.mjs");
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::one_reader_examples(&repo().join("deploy/examples/dev"), config.path());
    let data = tempfile::TempDir::new().unwrap();
    let keys = data.path().join("secrets/oidc");
    std::fs::create_dir_all(&keys).unwrap();
    let made = Command::new("node").arg(&script).arg("keys").arg(&keys).output().unwrap();
    assert!(made.status.success(), "{made:?}");
    let port = meridian_integration_tests::free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let auth = config.path().join("auth.toml");
    let mut text = std::fs::read_to_string(&auth).unwrap();
    text.push_str(&format!(
        "\n[[oidc_issuers]]\nissuer = \"{issuer}\"\naudience = \"meridian\"\njwks = {{ file = \"oidc/jwks.json\" }}\n\
         group = \"atlantic-rads\"\n[oidc_issuers.room]\nclient_id = \"reading-room\"\n\
         label = \"Atlantic single sign-on\"\nscopes = [\"reading\"]\n"
    ));
    std::fs::write(&auth, text).unwrap();
    let dev = Dev::start_configured(config.path(), data.path(), "");
    // The room apart, told each region's routing, reporting and DICOMweb
    // (here all three are `meridian dev`'s ports of the region).
    let mut command = Command::new(MERIDIAN);
    command.args(["room", "--region", "us-east", "--http-port", "0", "--config"]).arg(config.path());
    command.arg("--secrets").arg(data.path().join("secrets"));
    let regions = dev.json("endpoints.json")["regions"].as_object().unwrap().clone();
    assert!(regions.len() >= 3, "{regions:?}");
    for (region, e) in &regions {
        let grpc = format!("{region}=http://{}", e["grpc"].as_str().unwrap());
        command.args(["--routing", &grpc, "--reporting", &grpc]);
        command.args(["--dicomweb", &format!("{region}={}", e["http"].as_str().unwrap())]);
    }
    let room_endpoint = data.path().join("room.json");
    let mut room_process = command.arg("--endpoints").arg(&room_endpoint).stderr(Stdio::piped()).spawn().unwrap();
    wait_for("meridian room's port", 30, || room_endpoint.exists().then_some(()));
    let room: Value = serde_json::from_str(&std::fs::read_to_string(&room_endpoint).unwrap()).unwrap();
    let room = room["http"].as_str().unwrap().to_owned();
    // Access tokens live 65 s; the room renews one within a minute of its end.
    let lifetime = 65;
    let mut provider = Command::new("node")
        .arg(&script)
        .args(["serve", &port.to_string()])
        .arg(&keys)
        .arg(lifetime.to_string())
        .arg(format!("{room}/room/oidc/callback"))
        .env("MERIDIAN_OIDC_PROVIDER", &oidc_provider)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let provider_said = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let out = provider.stdout.take().unwrap();
    let lines = provider_said.clone();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    wait_for("the identity provider", 30, || provider_said.lock().unwrap().iter().any(|l| l == "ready").then_some(()));
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reading-room");
    std::fs::create_dir_all(&shots).unwrap();
    let browser = Command::new("node")
        .arg(repo().join("integration-tests/browser/sign-in.mjs"))
        .arg(&room)
        .arg("7")
        .arg(&shots)
        .env("MERIDIAN_PLAYWRIGHT", &playwright)
        .env("MERIDIAN_CHROMIUM", &chromium)
        .output()
        .unwrap();
    let _ = provider.kill();
    let provider_err = provider.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
    let _ = room_process.kill();
    let room_err = room_process.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
    let stdout = String::from_utf8_lossy(&browser.stdout);
    assert!(
        browser.status.success(),
        "{stdout}\n{}\nprovider: {provider_err:?}\nroom: {room_err:?}",
        String::from_utf8_lossy(&browser.stderr)
    );
    let result: Value = serde_json::from_str(stdout.trim().strip_prefix("done ").unwrap()).unwrap();
    // Signed in as the provider's subject, reading as the reader its token names.
    let header = result["signed_in_as"].as_str().unwrap();
    assert!(header.contains("oidc:atlantic-rads:dr-ana-ortiz") && header.contains("reader dr-ana-ortiz"), "{result}");
    // Only the session's id in an HttpOnly cookie: no token in the page.
    assert_eq!(result["cookies"], serde_json::json!(["meridian_room true Strict"]), "{result}");
    assert_eq!(result["storage"], 0, "{result}");
    // Renewed with the refresh token, unseen by the reader.
    assert_eq!(result["after_renewal"], true, "{result}");
    // Signed out at the provider too: asked to sign in again.
    assert_eq!(result["asked_again"], true, "{result}");
    let granted = provider_said.lock().unwrap().clone();
    assert!(granted.contains(&"granted authorization_code".to_owned()), "{granted:?}");
    assert!(granted.contains(&"granted refresh_token".to_owned()), "the token was renewed: {granted:?}");
    // Not a reader: no session, and the reason.
    assert!(result["not_a_reader"].as_str().unwrap().contains("names no reader"), "{result}");
    assert_eq!(
        (result["not_a_reader_url"].as_str(), &result["not_a_reader_session"]),
        (Some("/room/oidc/callback"), &Value::Bool(false))
    );
    assert_eq!(result["forged_status"], 401, "{result}");
    assert!(result["forged"].as_str().unwrap().contains("not begun in this browser"), "{result}");
    // Her worklist came from routing, asked with the provider's token.
    assert_eq!(result["worklist"], "Nothing to read now.", "{result}");
}

/// The reading room in a real browser (Debian's chromium, driven by
/// playwright-core from `integration-tests/browser/reading-room.mjs`): a
/// reader signs in, sees a study arrive on her worklist without a reload,
/// opens it, saves a draft and signs her preliminary; a forged session and
/// a form without the session's CSRF token are refused; another group's
/// reader sees nothing of it. Screenshots are kept in the test's target
/// folder.
#[test]
fn a_reader_reads_a_study_in_the_reading_room_in_a_real_browser() {
    let (playwright, chromium) = browser_tools();
    // `meridian dev` serves it from there (the child inherits it).
    let viewer = std::env::var("MERIDIAN_VIEWER")
        .expect("MERIDIAN_VIEWER names OHIF's dist (scripts/install-viewer installs it)");
    assert!(Path::new(&viewer).join("index.html").is_file(), "no OHIF in {viewer}");
    // Atlantic's dr-ana-ortiz, always on shift: Acme's STAT study is
    // pushed to her as soon as it arrives; dr-ben-cole reads its final.
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::preliminary_and_final_examples(&repo().join("deploy/examples/dev"), config.path());
    let axe =
        std::env::var("MERIDIAN_AXE").expect("MERIDIAN_AXE names axe-core's axe.min.js (scripts/test installs it)");
    let data = tempfile::TempDir::new().unwrap();
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reading-room");
    std::fs::create_dir_all(&shots).unwrap();
    let mut script = Command::new("node");
    script.arg(repo().join("integration-tests/browser/reading-room.mjs"));
    script.args([format!("http://{}", dev.http("us-east")), format!("http://{}", dev.http("in-south"))]).arg(&shots);
    script.env("MERIDIAN_PLAYWRIGHT", &playwright).env("MERIDIAN_CHROMIUM", &chromium).env("MERIDIAN_AXE", &axe);
    let mut browser = Conversation::start(script, "worklist-open");
    // The hospital's order for it first, over MLLP: why it is asked for.
    let python = std::env::var_os("MERIDIAN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/meridian/tools/venv/bin/python"));
    let order = "MSH|^~\\&|EPIC|acme-general|MERIDIAN|us-east|20261203101500||ORM^O01^ORM_O01|ROOM-1|P|2.5.1\r\
PID|1||MRN-ROOM^^^ACME GENERAL^MR||Doe^Jane\r\
ORC|NW|PO-ROOM-1|||||^^^^^S||20261203101400|||1234^Lee^Sam\r\
OBR|1|PO-ROOM-1||70450^CT head^CPT||||||||||||||ACC-77|||||||||||||^Fall, rule out bleed\r";
    let orders = data.path().join("order.hl7");
    std::fs::write(&orders, order).unwrap();
    let sent = Command::new(python.with_file_name("mllp_send"))
        .args(["--loose", "--file"])
        .arg(&orders)
        .args(["--port", &dev.mllp_port("us-east").to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&sent.stdout).contains("MSA|AA|ROOM-1"), "{sent:?}");
    let files = tempfile::TempDir::new().unwrap();
    let uid = "1.2.826.0.1.3680043.10.543.2301";
    let file = meridian_integration_tests::dicom::one_instance_study(files.path(), uid, "MRN-ROOM", "STAT");
    let (ok, sent) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &[file]);
    assert!(ok, "{sent}");
    browser.say("sent");
    let appeared = browser.next();
    let done = browser.next();
    let (ok, stderr) = browser.end();
    assert!(ok, "{appeared}\n{done}\n{stderr}");
    let study = appeared.strip_prefix("study ").unwrap_or_else(|| panic!("{appeared}: {stderr}"));
    let result: Value = serde_json::from_str(done.strip_prefix("done ").unwrap()).unwrap();
    for step in ["signed", "critical", "addendum", "worklist_followed", "stale_buttons_disabled", "final_signed"] {
        assert_eq!(result[step], true, "{step}: {result}");
    }
    assert!(result["second_tab"].as_str().is_some_and(|s| s.starts_with("Not saved: ")), "{result}");
    assert!(result["stale_tab"].as_str().is_some_and(|s| s.starts_with("You no longer hold this read")), "{result}");
    assert!(result["critical_state"].as_str().is_some_and(|s| s.contains("closed in time")), "{result}");
    assert_eq!(result["corrected"], "Your preliminary read is corrected.", "{result}");
    // Her own preliminary's final is not hers to read: a rule says why.
    assert!(result["why"].as_array().unwrap().contains(&Value::from("conflict")), "{result}");
    // No WCAG 2 A or AA violation axe-core finds on any page of the room.
    for (page, found) in result["axe"].as_object().unwrap() {
        assert_eq!(found, &serde_json::json!([]), "axe-core on the {page} page: {found}");
    }
    assert_eq!(result["axe"].as_object().unwrap().len(), 4, "{result}");
    assert!(result["viewer"]["max"].as_u64() > result["viewer"]["min"].as_u64(), "pixels drawn: {result}");
    eprintln!("the viewer drew its first image {} ms after the click", result["first_image_ms"]);
    assert!(!study.contains(uid), "the page names studies by opaque id");
    // Signed on the log: the preliminary, by her, and its text held at home.
    let signed = wait_for("the signature on the log", 30, || {
        tail_payloads(data.path(), "reporting", "ReportSigned").into_iter().find(|s| s["studyId"] == study)
    });
    assert_eq!((signed["readType"].as_str(), signed["readerId"].as_str()), (Some("preliminary"), Some("dr-ana-ortiz")));
    // The version signed is the first tab's last, not the second tab's text.
    assert_eq!(signed["reportVersion"], 4, "{signed}");
    // And the final, signed by dr-ben-cole in his browser.
    let final_read = wait_for("the final's signature on the log", 30, || {
        tail_payloads(data.path(), "reporting", "ReportSigned")
            .into_iter()
            .find(|s| s["studyId"] == study && s["readType"] == "final")
    });
    assert_eq!(final_read["readerId"], "dr-ben-cole", "{final_read}");
    // Every image the viewer asked for went through her session to
    // us-east's DICOMweb, which audited it as hers.
    let accessed = tail_payloads(data.path(), "audit", "PhiAccessed");
    let hers: Vec<&Value> =
        accessed.iter().filter(|a| a["principal"] == "dr-ana-ortiz" || a["principal"] == "dr-ortiz").collect();
    assert!(hers.iter().any(|a| a["action"].as_str().is_some_and(|x| x.starts_with("wado-rs"))), "{accessed:?}");
    assert!(hers.iter().all(|a| a["studyId"] == study), "{hers:?}");
    for shot in ["worklist.png", "editor.png", "viewer.png"] {
        assert!(std::fs::metadata(shots.join(shot)).unwrap().len() > 1_000, "{shot} kept");
    }
    dev.interrupt();
}
