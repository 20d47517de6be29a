//! The production shape without containers: one region on a Kafka-API
//! broker (tansu) and an S3-API bucket (moto), each service its own
//! `meridian serve` process on free ports, meeting the others only on the
//! log. Studies go in over DIMSE to ingest, are found through storage's
//! QIDO-RS and queued and assigned by routing; processes are killed with
//! SIGKILL mid-flow and restarted, and nothing acknowledged is lost or
//! counted twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meridian_integration_tests::dicom::{CtInstance, acknowledged, storescu, write_ct};
use meridian_integration_tests::{Moto, Tansu};
use serde_json::Value;

const MERIDIAN: &str = env!("CARGO_BIN_EXE_meridian");
const BUCKET: &str = "meridian-us-east-phi";
const KEK: &str = "6b656b2d666f722d7468652d70726f636573732d746573742d6f6e6c792d2121";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// The example configuration with us-east on the broker and the bucket,
/// and one reader on shift around the clock so that push assignment does
/// not depend on the hour the test runs.
fn configure(dir: &Path, tansu: &Tansu, moto: &Moto) {
    copy_dir(&repo().join("deploy/examples/dev"), dir);
    let region = dir.join("regions/us-east.toml");
    let text = std::fs::read_to_string(&region).unwrap().replace(
        "[objects]\nkind = \"local\"",
        &format!(
            "[objects]\nkind = \"s3\"\nbucket = \"{BUCKET}\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\n\
             allow_http = true\naccess_key_id_env = \"MERIDIAN_TEST_S3_KEY\"\n\
             secret_access_key_env = \"MERIDIAN_TEST_S3_SECRET\"\n\n\
             [log]\nkind = \"kafka\"\nbootstrap_servers = \"{}\"\npartitions = 2\nreplication_factor = 1\n\n\
             [keys]\nkey_encryption_key = {{ env = \"MERIDIAN_TEST_KEK\" }}\n",
            moto.endpoint(),
            tansu.bootstrap()
        ),
    );
    assert!(text.contains("kind = \"kafka\""), "the example's [objects] moved: update this test");
    std::fs::write(&region, text).unwrap();
    let group = dir.join("groups/atlantic-rads.toml");
    let text = std::fs::read_to_string(&group).unwrap().replacen(
        r#"shifts = [{ days = ["mon", "tue", "wed", "thu", "fri"], start = "08:00", end = "17:00" }]"#,
        r#"shifts = [{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "06:00", end = "05:59" }]"#,
        1,
    );
    std::fs::write(&group, text).unwrap();
    let check = Command::new(MERIDIAN).args(["config", "check"]).arg(dir).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

/// Tenant id secrets and a token key pair in `secrets`; a token for each
/// named principal.
fn secrets(config: &Path, secrets: &Path) -> BTreeMap<String, String> {
    use meridian_auth::{Principal, TokenSigner};
    std::fs::create_dir_all(secrets).unwrap();
    for tenant in ["acme", "northwind"] {
        std::fs::write(secrets.join(format!("{tenant}.id-secret")), format!("{tenant}-").repeat(8)).unwrap();
    }
    let (private, public) = meridian_auth::token::generate_ed25519().unwrap();
    std::fs::write(secrets.join("jwt-dev-1.pub.pem"), public).unwrap();
    let platform = meridian_config::Platform::load(config).unwrap();
    let signer = TokenSigner::new("dev-1", private.as_bytes(), &platform.auth.issuer, &platform.auth.audience).unwrap();
    #[allow(clippy::disallowed_methods)] // tokens are checked against the real clock
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    platform
        .auth
        .principals
        .iter()
        .map(|p| (p.name.clone(), signer.mint(&Principal::from(p), now, 3_600).unwrap()))
        .collect()
}

/// One `meridian serve` child.
struct Service {
    name: String,
    child: Child,
    endpoints: Value,
    log: PathBuf,
}

struct Cluster {
    config: PathBuf,
    work: PathBuf,
    env: Vec<(String, String)>,
}

impl Cluster {
    /// Starts `service` (as replica `instance` where given) and waits for
    /// its endpoints file.
    fn start(&self, service: &str, instance: Option<u32>) -> Service {
        let name = instance.map_or(service.to_owned(), |i| format!("{service}-{i}"));
        let data = self.work.join(&name);
        let endpoints = self.work.join(format!("{name}.endpoints.json"));
        let _ = std::fs::remove_file(&endpoints);
        let log = self.work.join(format!("{name}.log"));
        let mut command = Command::new(MERIDIAN);
        command
            .args(["serve", service, "--region", "us-east", "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&data)
            .arg("--secrets")
            .arg(self.work.join("secrets"))
            .args(["--grpc-port", "0", "--http-port", "0", "--dicom-port", "0", "--endpoints"])
            .arg(&endpoints)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap());
        if let Some(i) = instance {
            command.args(["--instance", &i.to_string()]);
        }
        let mut child = command.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        while !endpoints.exists() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{name} exited {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "{name} up within 90 s: {}", std::fs::read_to_string(&log).unwrap());
            std::thread::sleep(Duration::from_millis(100));
        }
        let endpoints: Value = serde_json::from_slice(&std::fs::read(&endpoints).unwrap()).unwrap();
        Service { name, child, endpoints: endpoints["regions"]["us-east"].clone(), log }
    }
}

impl Service {
    fn grpc(&self) -> String {
        self.endpoints["grpc"].as_str().unwrap().to_owned()
    }

    fn http(&self) -> String {
        self.endpoints["http"].as_str().unwrap().trim_start_matches("http://").to_owned()
    }

    fn dicom_port(&self) -> u16 {
        self.endpoints["dicom"]["port"].as_u64().unwrap() as u16
    }

    fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- {} ---\n{}", self.name, std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

fn get(addr: &str, path: &str, token: &str) -> (u16, Value) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\
             Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_default();
        // Chunked bodies: take the JSON between the first chunk size and the end.
        let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
            body.split_once("\r\n").map(|(_, b)| b.rsplit_once("\r\n0\r\n").map_or(b, |(b, _)| b)).unwrap_or_default()
        } else {
            body
        };
        (status, serde_json::from_str(body.trim()).unwrap_or(Value::Null))
    })
}

/// The SOP Instance UIDs storage's QIDO-RS finds for acme.
fn found(storage: &Service, token: &str) -> Vec<String> {
    let (status, body) = get(&storage.http(), "/dicomweb/instances?limit=1000", token);
    assert_eq!(status, 200, "{body}");
    let uids = body.as_array().unwrap().iter().filter_map(|i| i["00080018"]["Value"][0].as_str());
    let mut uids: Vec<String> = uids.map(str::to_owned).collect();
    uids.sort();
    uids
}

/// Routing's events, read back through a process's admin API with the
/// CLI's `--endpoint`.
fn routing_events(process: &Service, token: &str) -> Vec<Value> {
    let out = Command::new(MERIDIAN)
        .args(["log", "tail", "--json", "--stream", "routing", "--region", "us-east", "--endpoint"])
        .arg(process.grpc())
        .args(["--token", token])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn of_type<'a>(events: &'a [Value], short: &str) -> Vec<&'a Value> {
    let full = format!("meridian.events.v1.{short}");
    events.iter().filter(|e| e["payload_type"] == full.as_str()).collect()
}

fn wait_until<T>(what: &str, seconds: u64, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(t) = probe() {
            return t;
        }
        assert!(Instant::now() < deadline, "{what} within {seconds} s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn complete(ingest: &Service, token: &str, study_uid: &str) {
    use meridian_proto::ingest::v1 as pb;
    use meridian_proto::ingest::v1::ingest_service_client::IngestServiceClient;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = IngestServiceClient::connect(format!("http://{}", ingest.grpc())).await.unwrap();
        let mut request = tonic::Request::new(pb::CompleteStudyRequest {
            study: Some(pb::complete_study_request::Study::StudyInstanceUid(study_uid.to_owned())),
        });
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        client.complete_study(request).await.unwrap();
    });
}

fn study_files(dir: &Path, study: &str, n: usize) -> Vec<PathBuf> {
    (1..=n)
        .map(|i| {
            write_ct(
                dir,
                &CtInstance {
                    study_uid: study,
                    series_uid: &format!("{study}.1"),
                    sop_uid: &format!("{study}.1.{i}"),
                    patient_id: "MRN-PROC",
                    priority: "STAT",
                    pixels: [i as u16, 2, 3, 4],
                },
            )
        })
        .collect()
}

#[test]
fn services_as_processes_on_kafka_lose_nothing_acknowledged_when_killed_mid_flow() {
    let (tansu, moto) = (Tansu::start(), Moto::start(BUCKET));
    let work = tempfile::TempDir::new().unwrap();
    let config = work.path().join("config");
    configure(&config, &tansu, &moto);
    let tokens = secrets(&config, &work.path().join("secrets"));
    let env = [("MERIDIAN_TEST_S3_KEY", "testing"), ("MERIDIAN_TEST_S3_SECRET", "testing"), ("MERIDIAN_TEST_KEK", KEK)];
    let cluster = Cluster {
        config: config.clone(),
        work: work.path().to_owned(),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };

    // Bad input first: an embedded region is refused, naming the file.
    let embedded = Command::new(MERIDIAN)
        .args(["serve", "routing", "--region", "eu-west", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(work.path().join("refused"))
        .output()
        .unwrap();
    assert_eq!(embedded.status.code(), Some(64));
    let said = String::from_utf8_lossy(&embedded.stderr);
    assert!(said.contains("regions/eu-west.toml") && said.contains("kind = \"kafka\""), "{said}");
    // A missing key-encryption key exits 64 naming the field.
    let no_kek = Command::new(MERIDIAN)
        .args(["serve", "routing", "--region", "us-east", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(work.path().join("refused"))
        .arg("--secrets")
        .arg(work.path().join("secrets"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&no_kek.stderr);
    assert!(!no_kek.status.success() && said.contains("keys.key_encryption_key"), "{said}");

    let routing = cluster.start("routing", None);
    let storage = cluster.start("storage", None);
    let ingest = cluster.start("ingest", Some(0));
    let (pacs, sre) = (&tokens["acme-pacs"], &tokens["sre"]);

    // One study of three instances through ingest, completed, found by
    // storage, queued and assigned by routing: three processes, one log.
    let files = tempfile::TempDir::new().unwrap();
    let first = "1.2.826.0.1.3680043.10.543.301";
    let (ok, said) = storescu(ingest.dicom_port(), "ACME_CT1", "MERIDIAN_ACME", &study_files(files.path(), first, 3));
    assert!(ok, "{said}");
    wait_until("storage's QIDO-RS finds the three instances", 60, || (found(&storage, pacs).len() == 3).then_some(()));
    complete(&ingest, pacs, first);
    let events = wait_until("routing queues and assigns the study", 60, || {
        let events = routing_events(&storage, sre);
        (of_type(&events, "StudyQueued").len() == 1 && of_type(&events, "StudyAssigned").len() == 1).then_some(events)
    });
    assert_eq!(of_type(&events, "StudyAssigned")[0]["payload"]["readerId"], "dr-ana-ortiz");

    // SIGKILL ingest in the middle of an association; what storescu saw
    // acknowledged must all be found once ingest is back, and the rest is
    // sent again.
    let second = "1.2.826.0.1.3680043.10.543.302";
    let many = study_files(files.path(), second, 40);
    let port = ingest.dicom_port();
    let sending = {
        let many = many.clone();
        std::thread::spawn(move || {
            let out = Command::new("storescu")
                .args(["-v", "-aet", "ACME_CT1", "-aec", "MERIDIAN_ACME", "127.0.0.1", &port.to_string()])
                .args(&many)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    ingest.kill();
    // Files are named by their SOP Instance UIDs.
    let acked: Vec<String> = acknowledged(&sending.join().unwrap())
        .iter()
        .map(|file| Path::new(file).file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    eprintln!("{} of 40 instances acknowledged before the SIGKILL", acked.len());
    assert!(acked.len() < many.len(), "the kill landed mid-association ({} of 40 acknowledged)", acked.len());
    // Storage, too, is killed while it may be indexing, and comes back.
    storage.kill();
    let storage = cluster.start("storage", None);
    let ingest = cluster.start("ingest", Some(0));
    // Files are named by their SOP Instance UID.
    let all = wait_until("every acknowledged instance found after the kills", 60, || {
        let all = found(&storage, pacs);
        acked.iter().all(|uid| all.contains(uid)).then_some(all)
    });
    assert!(all.len() >= 3 + acked.len(), "{} found, {} acknowledged", all.len(), acked.len());
    let (ok, said) = storescu(ingest.dicom_port(), "ACME_CT1", "MERIDIAN_ACME", &many);
    assert!(ok, "the whole study again after the restart: {said}");
    wait_until("all 43 instances found", 60, || (found(&storage, pacs).len() == 43).then_some(()));

    // Routing is killed after the second study completes, and restarted.
    complete(&ingest, pacs, second);
    wait_until("the second study queued", 60, || {
        (of_type(&routing_events(&storage, sre), "StudyQueued").len() == 2).then_some(())
    });
    routing.kill();
    let routing = cluster.start("routing", None);
    let events = wait_until("both studies assigned after routing's restart", 60, || {
        let events = routing_events(&routing, sre);
        (of_type(&events, "StudyAssigned").len() >= 2).then_some(events)
    });
    // Exactly once: one StudyQueued and one StudyAssigned per study.
    let per_study = |short: &str| {
        let mut studies: Vec<String> =
            of_type(&events, short).iter().map(|e| e["payload"]["studyId"].as_str().unwrap().to_owned()).collect();
        let n = studies.len();
        studies.sort();
        studies.dedup();
        (n, studies.len())
    };
    assert_eq!(per_study("StudyQueued"), (2, 2), "one StudyQueued per study");
    assert_eq!(per_study("StudyAssigned"), (2, 2), "one StudyAssigned per study");

    // No consumer of any process met a conflict or skipped a record.
    for process in [&routing, &storage, &ingest] {
        let (status, summary) = get(&process.http(), "/v1/summary", sre);
        assert_eq!(status, 200, "{summary}");
        for projection in summary["projections"].as_array().unwrap() {
            assert_eq!(projection["stats"]["conflicts"], 0, "{}: {projection}", process.name);
        }
        for consumer in summary["consumers"].as_array().unwrap() {
            assert_eq!(consumer["skipped_total"], 0, "{}: {consumer}", process.name);
        }
    }
}

/// gRPC health of a process: SERVING or NOT_SERVING.
fn health(process: &Service) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", process.grpc())).unwrap().connect().await;
        let mut client = HealthClient::new(channel.unwrap());
        client.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner().status
    })
}

/// `/readyz`: (ready, the reasons it gives when not).
fn ready(process: &Service) -> (bool, String) {
    let (status, body) = get(&process.http(), "/readyz", "");
    (status == 200, body["reasons"].to_string())
}

#[test]
fn a_process_is_not_ready_while_its_broker_or_bucket_is_away_and_recovers_by_itself() {
    use tonic_health::ServingStatus;
    let brokers_bucket = Moto::start("unused");
    let mut tansu = Tansu::on_s3(&brokers_bucket, "tansu");
    let mut moto = Moto::start(BUCKET);
    let work = tempfile::TempDir::new().unwrap();
    let config = work.path().join("config");
    configure(&config, &tansu, &moto);
    let tokens = secrets(&config, &work.path().join("secrets"));
    let env = [("MERIDIAN_TEST_S3_KEY", "testing"), ("MERIDIAN_TEST_S3_SECRET", "testing"), ("MERIDIAN_TEST_KEK", KEK)];
    let cluster = Cluster {
        config: config.clone(),
        work: work.path().to_owned(),
        env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    };
    let routing = cluster.start("routing", None);
    let ingest = cluster.start("ingest", None);
    wait_until("ready at start", 30, || ready(&ingest).0.then_some(()));
    assert_eq!(health(&ingest), ServingStatus::Serving as i32);

    // The bucket goes away: not ready, saying why; back: ready by itself.
    moto.stop();
    let said = wait_until("not ready without the bucket", 30, || {
        let (ok, said) = ready(&ingest);
        (!ok).then_some(said)
    });
    assert!(said.contains("object store"), "{said}");
    assert_eq!(health(&ingest), ServingStatus::NotServing as i32);
    moto.restart(BUCKET);
    wait_until("ready again with the bucket back", 30, || ready(&ingest).0.then_some(()));
    assert_eq!(health(&ingest), ServingStatus::Serving as i32);

    // The broker goes away: the same; it comes back with its topics and
    // positions (tansu keeps them in its own bucket), and work goes on.
    tansu.stop();
    let said = wait_until("not ready without the broker", 60, || {
        let (ok, said) = ready(&routing);
        (!ok).then_some(said)
    });
    assert!(said.contains("event log"), "{said}");
    assert_eq!(health(&routing), ServingStatus::NotServing as i32);
    tansu.restart();
    wait_until("ready again with the broker back", 60, || ready(&routing).0.then_some(()));
    let files = tempfile::TempDir::new().unwrap();
    let study = "1.2.826.0.1.3680043.10.543.401";
    let (ok, said) = storescu(ingest.dicom_port(), "ACME_CT1", "MERIDIAN_ACME", &study_files(files.path(), study, 2));
    assert!(ok, "stored after the broker's restart: {said}");
    let events = routing_events(&routing, &tokens["sre"]);
    assert_eq!(of_type(&events, "ReaderRegistered").len(), 5, "the broker kept what it held");
}
