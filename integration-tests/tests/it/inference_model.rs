//! The demonstration model: the committed file is its generator's output
//! byte for byte (onnx 1.17); tract, the embedded runtime, says what
//! onnxruntime, the reference, says on the same inputs; and the remote
//! runtime, over the Open Inference Protocol v2 to a real MLServer, says it
//! too, and fails by name when the server does not answer.

use std::path::{Path, PathBuf};
use std::process::Command;

use meridian_inference::adapters::oip::RemoteSpec;
use meridian_inference::adapters::runtime::{Embedded, Remote};

fn python() -> PathBuf {
    std::env::var_os("MERIDIAN_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/meridian/tools/venv/bin/python")
    })
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model() -> PathBuf {
    repo().join("deploy/examples/dev/models/ich-demo.onnx")
}

#[test]
fn the_committed_demonstration_model_is_its_generators_output() {
    let dir = tempfile::TempDir::new().unwrap();
    let built = dir.path().join("ich-demo.onnx");
    let out = Command::new(python())
        .arg(repo().join("scripts/make-demo-model.py"))
        .arg(&built)
        .output()
        .expect("onnx in the tools' venv: scripts/test installs it");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&built).unwrap(), std::fs::read(model()).unwrap());
}

/// onnxruntime's reference run: its six input slices and its scores.
fn reference() -> (Vec<Vec<f32>>, Vec<f32>) {
    let dir = tempfile::TempDir::new().unwrap();
    let reference = dir.path().join("reference.json");
    let out = Command::new(python())
        .arg(repo().join("integration-tests/python/onnx_reference.py"))
        .arg(model())
        .arg(&reference)
        .output()
        .expect("onnxruntime in the tools' venv: scripts/test installs it");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&reference).unwrap()).unwrap();
    let inputs: Vec<f32> = r["inputs"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let slices = inputs.chunks(64 * 64).map(<[f32]>::to_vec).collect();
    let scores = r["outputs"]["ich"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    (slices, scores)
}

fn remote(endpoint: String, outputs: &[&str]) -> Remote {
    remote_trusting(endpoint, outputs, None)
}

fn remote_trusting(endpoint: String, outputs: &[&str], ca_pem: Option<Vec<u8>>) -> Remote {
    Remote::connect(RemoteSpec {
        endpoint,
        model: "ich-demo".into(),
        version: String::new(),
        input: "slices".into(),
        outputs: outputs.iter().map(|o| o.to_string()).collect(),
        rows: 64,
        columns: 64,
        timeout: std::time::Duration::from_secs(5),
        retries: 2,
        ca_pem,
    })
    .unwrap()
}

/// MLServer behind a TLS front (`integration-tests/mlserver/tls_front.py`,
/// grpcio with a certificate for 127.0.0.1 from a test CA).
struct TlsFront {
    child: std::process::Child,
    port: u16,
}

impl TlsFront {
    fn start(dir: &Path, upstream: u16) -> TlsFront {
        meridian_integration_tests::test_certificates(dir, "test", &[]);
        let mlserver_python = meridian_integration_tests::mlserver_bin().with_file_name("python");
        let port_file = dir.join("front.port");
        let child = Command::new(mlserver_python)
            .arg(repo().join("integration-tests/mlserver/tls_front.py"))
            .args([dir.join("test-server.pem"), dir.join("test-server.key")])
            .arg(format!("127.0.0.1:{upstream}"))
            .arg(&port_file)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let port = loop {
            if let Some(port) = std::fs::read_to_string(&port_file).ok().and_then(|p| p.trim().parse().ok()) {
                break port;
            }
            assert!(std::time::Instant::now() < deadline, "the TLS front did not start");
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        TlsFront { child, port }
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_model_behind_tls_is_reached_trusting_its_ca_and_refused_trusting_another() {
    let (slices, theirs) = reference();
    let server = meridian_integration_tests::MlServer::start("ich-demo", &model());
    let dir = tempfile::TempDir::new().unwrap();
    let front = TlsFront::start(dir.path(), server.grpc_port);
    let endpoint = format!("https://127.0.0.1:{}", front.port);
    let ca = std::fs::read(dir.path().join("test-ca.pem")).unwrap();
    let trusted = remote_trusting(endpoint.clone(), &["ich"], Some(ca));
    let scores = trusted.run(&slices, "a-study").await.unwrap();
    for (a, b) in scores["ich"].iter().zip(&theirs) {
        assert!((a - b).abs() < 1e-5, "over TLS {a}, onnxruntime {b}");
    }
    // Another CA: the certificate is not trusted, and the failure says so.
    let other = tempfile::TempDir::new().unwrap();
    let wrong = std::fs::read(meridian_integration_tests::test_certificates(other.path(), "other", &[]).ca).unwrap();
    let e = remote_trusting(endpoint.clone(), &["ich"], Some(wrong)).run(&slices, "a-study").await.unwrap_err();
    let (reason, detail) = e.reason();
    assert_eq!(reason, "unreachable", "{detail}");
    assert!(detail.to_lowercase().contains("certificate"), "{detail}");
    // Plain text to a TLS port is no answer either.
    let plain = endpoint.replace("https://", "http://");
    assert!(remote(plain, &["ich"]).run(&slices, "a-study").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlserver_over_the_open_inference_protocol_says_what_tract_says_and_a_dead_server_fails_unreachable() {
    let (slices, theirs) = reference();
    let mut server = meridian_integration_tests::MlServer::start("ich-demo", &model());
    let oip = remote(server.endpoint(), &["ich"]);
    assert!(oip.ready().await.unwrap(), "ModelReady");
    // 200 slices: more than one call's bytes (3 MiB), so split in two.
    let many: Vec<Vec<f32>> = (0..200).map(|i| slices[i % slices.len()].clone()).collect();
    let served = oip.run(&many, "a-study").await.unwrap();
    let embedded = Embedded::load(&model(), "slices", 64, 64, &["ich".to_string()]).unwrap();
    let ours = embedded.run(&many).unwrap();
    assert_eq!(served["ich"].len(), 200);
    for (i, (a, b)) in served["ich"].iter().zip(&ours["ich"]).enumerate() {
        assert!((a - b).abs() < 1e-5, "slice {i}: MLServer {a}, tract {b}");
        assert!((a - theirs[i % theirs.len()]).abs() < 1e-5, "slice {i}: MLServer {a}, onnxruntime's reference");
    }
    assert!(served["ich"][5] > 0.9 && served["ich"][..5].iter().all(|s| *s < 0.5));
    // An output the model does not have: the server refuses, named, at once.
    let e = remote(server.endpoint(), &["bleed"]).run(&slices, "a-study").await.unwrap_err();
    let (reason, detail) = e.reason();
    assert_eq!(reason, "run", "{detail}");
    assert!(detail.contains("bleed"), "{detail}");
    // The server gone: called again with backoff, then unreachable.
    server.stop();
    let e = oip.run(&slices, "a-study").await.unwrap_err();
    let (reason, detail) = e.reason();
    assert_eq!(reason, "unreachable", "{detail}");
    assert!(detail.contains("after 3 calls") && detail.contains(&oip.endpoint().to_string()), "{detail}");
}

#[test]
fn jpeg_2000_and_jpeg_ls_slices_decode_to_what_their_uncompressed_originals_do() {
    use meridian_inference::adapters::pixels;
    let dir = tempfile::TempDir::new().unwrap();
    let originals: Vec<PathBuf> = (1..=3)
        .map(|n| {
            let path = dir.path().join(format!("slice-{n}.dcm"));
            let bytes =
                meridian_integration_tests::dicom::head_ct_bytes("1.2.826.0.1.3680043.10.543.91", n, n == 2, 128);
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect();
    for (syntax, uid) in [("jpeg2000", "1.2.840.10008.1.2.4.90"), ("jpeg-ls", "1.2.840.10008.1.2.4.80")] {
        let out = dir.path().join(syntax);
        std::fs::create_dir_all(&out).unwrap();
        let run = Command::new(python())
            .arg(repo().join("integration-tests/python/encode_slices.py"))
            .arg(syntax)
            .arg(&out)
            .args(&originals)
            .output()
            .expect("pydicom with pylibjpeg-openjpeg and pyjpegls: scripts/test installs them");
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        for original in &originals {
            let encoded = std::fs::read(out.join(original.file_name().unwrap())).unwrap();
            let object = dicom_object::from_reader(&encoded[128..]).unwrap();
            assert_eq!(object.meta().transfer_syntax().trim_end_matches('\0'), uid);
            let theirs = pixels::slice(&encoded, 70.0, 40.0, 64, 64).unwrap();
            let ours = pixels::slice(&std::fs::read(original).unwrap(), 70.0, 40.0, 64, 64).unwrap();
            assert_eq!(theirs, ours, "{syntax}: {}", original.display());
        }
    }
    // A transfer syntax no codec here reads (MPEG-2 video, its frames left as
    // they were): refused by name, not misread.
    let relabelled = dir.path().join("mpeg2.dcm");
    let jpeg_ls = dir.path().join("jpeg-ls").join(originals[0].file_name().unwrap());
    let script = "import sys, pydicom; ds = pydicom.dcmread(sys.argv[1]); \
                  ds.file_meta.TransferSyntaxUID = '1.2.840.10008.1.2.4.100'; ds.save_as(sys.argv[2])";
    let out = Command::new(python()).args(["-c", script]).arg(&jpeg_ls).arg(&relabelled).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e = pixels::slice(&std::fs::read(&relabelled).unwrap(), 70.0, 40.0, 64, 64).unwrap_err();
    assert_eq!(e.reason, "unsupported_transfer_syntax", "{e}");
    assert!(e.detail.contains("1.2.840.10008.1.2.4.100"), "{e}");
}

#[test]
fn tract_says_what_onnxruntime_says_on_the_same_slices() {
    let (slices, theirs) = reference();
    let model = Embedded::load(&model(), "slices", 64, 64, &["ich".to_string()]).unwrap();
    let ours = model.run(&slices).unwrap();
    assert_eq!(ours["ich"].len(), theirs.len());
    for (a, b) in ours["ich"].iter().zip(&theirs) {
        assert!((a - b).abs() < 1e-5, "tract {a} onnxruntime {b}");
    }
    // The reference says something: the dark slice with a bright block is
    // flagged, noise below half the window is not.
    assert!(theirs[5] > 0.9 && theirs[..5].iter().all(|s| *s < 0.5), "{theirs:?}");
    // A model whose outputs are not the configured ones does not load.
    let e = Embedded::load(&self::model(), "slices", 64, 64, &["bleed".to_string()]).unwrap_err();
    assert!(e.to_string().contains("no output \"bleed\""), "{e}");
}
