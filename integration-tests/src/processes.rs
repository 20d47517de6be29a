//! `meridian serve` processes for tests and benches: regions of the
//! example configuration on a tansu broker and moto buckets, each service
//! of a region its own child process on free ports, found through the
//! endpoints file it writes once it is up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::dicom::{CtInstance, write_ct};
use crate::{Moto, Tansu};

pub const KEK: &str = "6b656b2d666f722d7468652d70726f636573732d746573742d6f6e6c792d2121";

pub fn copy_dir(from: &Path, to: &Path) {
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

/// The bucket of `region`'s objects on moto.
pub fn bucket(region: &str) -> String {
    format!("meridian-{region}-objects")
}

/// The regions [`configure`] puts on the broker.
pub const ON_KAFKA: [&str; 2] = ["us-east", "eu-west"];

/// The example configuration with us-east and eu-west on the broker and
/// each region's objects in its own bucket on `moto` (in-south keeps the
/// embedded log: it only receives de-identified derivatives here), and one
/// reader on shift around the clock so that push assignment does not depend
/// on the hour the test runs.
///
/// Without `moto` the regions keep `[objects] kind = "local"`: each process
/// then has its own objects and data keys, which only a process that works
/// alone (ingest, for a throughput figure) can use.
pub fn configure(meridian: &Path, examples: &Path, dir: &Path, tansu: &Tansu, moto: Option<&Moto>) {
    copy_dir(examples, dir);
    for region in ["us-east", "eu-west", "in-south"] {
        let objects = match moto {
            Some(moto) => {
                let (status, body) = moto.request("PUT", &format!("/{}", bucket(region)));
                assert!(status == 200, "creating bucket {}: {status} {body}", bucket(region));
                format!(
                    "[objects]\nkind = \"s3\"\nbucket = \"{}\"\nregion = \"us-east-1\"\nendpoint = \"{}\"\n\
                     allow_http = true\naccess_key_id_env = \"MERIDIAN_TEST_S3_KEY\"\n\
                     secret_access_key_env = \"MERIDIAN_TEST_S3_SECRET\"\n",
                    bucket(region),
                    moto.endpoint()
                )
            }
            None => "[objects]\nkind = \"local\"\n".to_owned(),
        };
        let log = if ON_KAFKA.contains(&region) {
            format!(
                "\n[log]\nkind = \"kafka\"\nbootstrap_servers = \"{}\"\npartitions = 2\nreplication_factor = 1\n\n\
                 [keys]\nkey_encryption_key = {{ env = \"MERIDIAN_TEST_KEK\" }}\n",
                tansu.bootstrap()
            )
        } else {
            String::new()
        };
        let path = dir.join(format!("regions/{region}.toml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let text = if text.contains("[objects]\nkind = \"local\"") {
            text.replace("[objects]\nkind = \"local\"", &format!("{objects}{log}"))
        } else {
            format!("{text}\n{objects}{log}")
        };
        std::fs::write(&path, text).unwrap();
    }
    let group = dir.join("groups/atlantic-rads.toml");
    let text = std::fs::read_to_string(&group).unwrap().replacen(
        r#"shifts = [{ days = ["mon", "tue", "wed", "thu", "fri"], start = "08:00", end = "17:00" }]"#,
        r#"shifts = [{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "06:00", end = "05:59" }]"#,
        1,
    );
    std::fs::write(&group, text).unwrap();
    let check = Command::new(meridian).args(["config", "check"]).arg(dir).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
}

/// Tenant id secrets and a token key pair in `secrets`; a token for each
/// named principal.
pub fn secrets(config: &Path, secrets: &Path) -> BTreeMap<String, String> {
    use meridian_auth::{Principal, TokenSigner};
    std::fs::create_dir_all(secrets).unwrap();
    for tenant in ["acme", "globex", "northwind"] {
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
pub struct Service {
    pub name: String,
    pub child: Child,
    pub endpoints: Value,
    /// Where its stderr (its tracing) goes.
    pub log: PathBuf,
}

/// Where processes are started from: the `meridian` binary, the
/// configuration, a work directory (each process's data, its log, its
/// endpoints file) and the environment they get (bucket credentials, the
/// key-encryption key).
pub struct Cluster {
    pub meridian: PathBuf,
    pub config: PathBuf,
    pub work: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Cluster {
    /// The example configuration on `tansu` and `moto` (see [`configure`]) in `work/config`, its secrets in `work/secrets`; a
    /// token for each principal.
    pub fn new(
        meridian: &Path,
        examples: &Path,
        work: &Path,
        tansu: &Tansu,
        moto: Option<&Moto>,
    ) -> (Cluster, BTreeMap<String, String>) {
        let config = work.join("config");
        configure(meridian, examples, &config, tansu, moto);
        let tokens = secrets(&config, &work.join("secrets"));
        let env =
            [("MERIDIAN_TEST_S3_KEY", "testing"), ("MERIDIAN_TEST_S3_SECRET", "testing"), ("MERIDIAN_TEST_KEK", KEK)];
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        (Cluster { meridian: meridian.to_owned(), config, work: work.to_owned(), env }, tokens)
    }

    /// Puts `region`, which [`configure`] left on the embedded log, on
    /// `broker`'s Kafka log (two partitions, its key-encryption key from the
    /// environment): a region on a cluster of its own, which only a
    /// replicator joins to the others.
    pub fn on_broker(&self, region: &str, broker: &Tansu) {
        let path = self.config.join(format!("regions/{region}.toml"));
        let mut text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("[log]"), "{region} is on a log already: {text}");
        text.push_str(&format!(
            "\n[log]\nkind = \"kafka\"\nbootstrap_servers = \"{}\"\npartitions = 2\nreplication_factor = 1\n\n\
             [keys]\nkey_encryption_key = {{ env = \"MERIDIAN_TEST_KEK\" }}\n",
            broker.bootstrap()
        ));
        std::fs::write(&path, text).unwrap();
    }

    /// Starts us-east's `service` (as replica `instance` where given) and
    /// waits for its endpoints file.
    pub fn start(&self, service: &str, instance: Option<u32>) -> Service {
        self.start_in("us-east", service, instance, "")
    }

    /// The same, with `MERIDIAN_FAILPOINTS` set to `failpoints`.
    pub fn start_armed(&self, service: &str, instance: Option<u32>, failpoints: &str) -> Service {
        self.start_in("us-east", service, instance, failpoints)
    }

    /// Replica `ordinal` of `replicas` of `region`'s `service`.
    pub fn start_replica(&self, region: &str, service: &str, ordinal: u32, replicas: u32) -> Service {
        self.spawn(region, service, Some(ordinal), replicas, "", &[])
    }

    /// `replicas` replicas of `region`'s ingest, each told every replica's
    /// gRPC address (free ports picked before they start, as a
    /// StatefulSet's stable names would be known).
    pub fn start_ingest_replicas(&self, region: &str, replicas: u32) -> Vec<Service> {
        let ports: Vec<u16> = (0..replicas).map(|_| crate::free_port()).collect();
        (0..replicas).map(|i| self.start_ingest_replica(region, i, &ports)).collect()
    }

    /// Ingest replica `ordinal` of `region`, its peers on the gRPC `ports`
    /// of every replica (its own among them): to start or restart one.
    pub fn start_ingest_replica(&self, region: &str, ordinal: u32, ports: &[u16]) -> Service {
        let peers: Vec<String> = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        let (port, peers) = (ports[ordinal as usize].to_string(), peers.join(","));
        let replicas = ports.len() as u32;
        self.spawn(region, "ingest", Some(ordinal), replicas, "", &["--grpc-port", &port, "--peers", &peers])
    }

    /// `region`'s `service`, with `failpoints` armed.
    pub fn start_in(&self, region: &str, service: &str, instance: Option<u32>, failpoints: &str) -> Service {
        self.spawn(region, service, instance, 1, failpoints, &[])
    }

    fn spawn(
        &self,
        region: &str,
        service: &str,
        instance: Option<u32>,
        replicas: u32,
        failpoints: &str,
        extra: &[&str],
    ) -> Service {
        let name = instance.map_or(service.to_owned(), |i| format!("{service}-{i}"));
        let name = if region == "us-east" { name } else { format!("{region}-{name}") };
        let data = self.work.join(&name);
        let endpoints = self.work.join(format!("{name}.endpoints.json"));
        let _ = std::fs::remove_file(&endpoints);
        let log = self.work.join(format!("{name}.log"));
        let mut command = Command::new(&self.meridian);
        command
            .args(["serve", service, "--region", region, "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&data)
            .arg("--secrets")
            .arg(self.work.join("secrets"))
            .args(["--http-port", "0", "--dicom-port", "0", "--mllp-port", "0", "--endpoints"])
            .arg(&endpoints)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .env("MERIDIAN_FAILPOINTS", failpoints)
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap());
        if let Some(i) = instance {
            command.args(["--instance", &i.to_string(), "--replicas", &replicas.to_string()]);
        }
        if !extra.contains(&"--grpc-port") {
            command.args(["--grpc-port", "0"]);
        }
        command.args(extra);
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
        Service { name, child, endpoints: endpoints["regions"][region].clone(), log }
    }
}

impl Service {
    pub fn grpc(&self) -> String {
        self.endpoints["grpc"].as_str().unwrap().to_owned()
    }

    pub fn http(&self) -> String {
        self.endpoints["http"].as_str().unwrap().trim_start_matches("http://").to_owned()
    }

    pub fn dicom_port(&self) -> u16 {
        self.endpoints["dicom"]["port"].as_u64().unwrap() as u16
    }

    pub fn kill(mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    /// How it ended, once it has (a failpoint's abort).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
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

pub fn get(addr: &str, path: &str, token: &str) -> (u16, Value) {
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
pub fn found(storage: &Service, token: &str) -> Vec<String> {
    let (status, body) = get(&storage.http(), "/dicomweb/instances?limit=1000", token);
    assert_eq!(status, 200, "{body}");
    let uids = body.as_array().unwrap().iter().filter_map(|i| i["00080018"]["Value"][0].as_str());
    let mut uids: Vec<String> = uids.map(str::to_owned).collect();
    uids.sort();
    uids
}

/// Routing's events, read back through a process's admin API with the
/// CLI's `--endpoint`.
pub fn routing_events(meridian: &Path, process: &Service, token: &str) -> Vec<Value> {
    stream_events(meridian, process, "us-east", "routing", token)
}

/// Every event of `region`'s `stream` so far, as `meridian log tail --json`
/// prints them through `process`'s admin API.
pub fn stream_events(meridian: &Path, process: &Service, region: &str, stream: &str, token: &str) -> Vec<Value> {
    let out = Command::new(meridian)
        .args(["log", "tail", "--json", "--stream", stream, "--region", region, "--endpoint"])
        .arg(process.grpc())
        .args(["--token", token])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

pub fn of_type<'a>(events: &'a [Value], short: &str) -> Vec<&'a Value> {
    let full = format!("meridian.events.v1.{short}");
    events.iter().filter(|e| e["payload_type"] == full.as_str()).collect()
}

pub fn wait_until<T>(what: &str, seconds: u64, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(t) = probe() {
            return t;
        }
        assert!(Instant::now() < deadline, "{what} within {seconds} s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Completes a study through `ingest`: (series, instances, completed now).
pub fn complete(ingest: &Service, token: &str, study_uid: &str) -> (u32, u32, bool) {
    use meridian_proto::ingest::v1 as pb;
    use meridian_proto::ingest::v1::ingest_service_client::IngestServiceClient;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = IngestServiceClient::connect(format!("http://{}", ingest.grpc())).await.unwrap();
        let mut request = tonic::Request::new(pb::CompleteStudyRequest {
            study: Some(pb::complete_study_request::Study::StudyInstanceUid(study_uid.to_owned())),
        });
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let done = client.complete_study(request).await.unwrap().into_inner();
        (done.series_count, done.instance_count, done.completed_now)
    })
}

/// The tenant's rejections as `ingest` lists them: (reason code, facility).
pub fn rejections(ingest: &Service, token: &str) -> Vec<(String, String)> {
    use meridian_proto::ingest::v1 as pb;
    use meridian_proto::ingest::v1::ingest_service_client::IngestServiceClient;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = IngestServiceClient::connect(format!("http://{}", ingest.grpc())).await.unwrap();
        let mut request = tonic::Request::new(pb::ListRejectionsRequest { page_size: 0 });
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let listed = client.list_rejections(request).await.unwrap().into_inner();
        listed.rejections.into_iter().map(|r| (r.reason_code, r.facility)).collect()
    })
}

pub fn study_files(dir: &Path, study: &str, n: usize) -> Vec<PathBuf> {
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

/// gRPC health of a process: SERVING or NOT_SERVING.
pub fn health(process: &Service) -> i32 {
    service_health(process, "")
}

/// gRPC health of one of a process's services (`meridian.ingest.v1.IngestService`).
pub fn service_health(process: &Service, service: &str) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", process.grpc())).unwrap().connect().await;
        let mut client = HealthClient::new(channel.unwrap());
        let request = HealthCheckRequest { service: service.to_owned() };
        client.check(request).await.unwrap().into_inner().status
    })
}

/// `/readyz`: (ready, the reasons it gives when not).
pub fn ready(process: &Service) -> (bool, String) {
    let (status, body) = get(&process.http(), "/readyz", "");
    (status == 200, body["reasons"].to_string())
}

/// Appends reporting's ReportSigned for `study` (as reporting will): the
/// read `read_type` signed by `reader`, as version `version` of the
/// study's reporting aggregate, to `region`'s reporting topic on `tansu`.
pub fn sign(tansu: &Tansu, region: &str, tenant: &str, study: &str, reader: &str, read_type: &str, version: u64) {
    #[allow(clippy::disallowed_methods)] // a test's stand-in for reporting: the signature's time
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    sign_at(tansu, (region, tenant), study, reader, read_type, version, meridian_events::UnixMicros(now));
}

/// [`sign`], with the signature's time `at` (a read signed last month
/// bills in a month that has ended).
pub fn sign_at(
    tansu: &Tansu,
    (region, tenant): (&str, &str),
    study: &str,
    reader: &str,
    read_type: &str,
    version: u64,
    at: meridian_events::UnixMicros,
) {
    use meridian_events::payload::Payload;
    use meridian_events::{DataClass, EventId, EventMeta};
    use meridian_log::kafka::{KafkaConfig, KafkaLog};
    use meridian_log::{EventLog, Outgoing, TopicName};
    let study_id: uuid::Uuid = study.parse().unwrap();
    let payload = Payload::ReportSigned(meridian_proto::events::v1::ReportSigned {
        study_id: study.to_owned(),
        report_id: EventId::derived(EventId(study_id), read_type, version as u32).to_string(),
        read_type: read_type.to_owned(),
        reader_id: reader.to_owned(),
        signed_at: Some(at.to_timestamp()),
        ..Default::default()
    });
    let meta = EventMeta {
        event_id: EventId::derived(EventId(study_id), "test.sign", version as u32),
        aggregate_type: "reporting.study".into(),
        aggregate_id: study_id,
        aggregate_version: version,
        tenant: tenant.to_owned(),
        home_region: region.to_owned(),
        occurred_at: at,
        causation_id: None,
        correlation_id: None,
        traceparent: None,
    };
    let envelope = payload.plain_envelope(meta).unwrap();
    let topic = TopicName::new(region, DataClass::Operational, "reporting").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let config = KafkaConfig::new(tansu.bootstrap(), format!("test-reporting-{}", uuid::Uuid::now_v7().simple()));
        let log = KafkaLog::connect(config).await.unwrap();
        log.append(vec![Outgoing::new(topic, &envelope).unwrap()]).await.unwrap();
    });
}
