//! Harness for end-to-end tests of the real `shardgate` binary: processes on loopback with
//! temp dirs, killed when their guard drops (even when a test fails).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

/// A `shardgate node` child process; SIGKILLed on drop if still running.
pub struct NodeProc {
    child: Child,
    pub binary: SocketAddr,
    pub http: SocketAddr,
}

impl NodeProc {
    /// Starts `shardgate node` on ports the OS picks and waits for its "listening" line.
    pub fn start(name: &str, data_dir: &Path) -> NodeProc {
        NodeProc::start_on(name, data_dir, None)
    }

    /// Starts `shardgate node` with its binary protocol on `listen` (port 0 when `None`).
    pub fn start_on(name: &str, data_dir: &Path, listen: Option<SocketAddr>) -> NodeProc {
        let listen = listen.map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        let mut child = Command::new(BIN)
            .args(["node", "--name", name, "--listen", &listen, "--http", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn shardgate node");
        let stdout = child.stdout.take().expect("stdout");
        let mut guard =
            NodeProc { child, binary: ([0, 0, 0, 0], 0).into(), http: ([0, 0, 0, 0], 0).into() };
        let mut line = String::new();
        // The node prints this line once it listens; EOF means it died first.
        BufReader::new(stdout).read_line(&mut line).expect("read node stdout");
        let field = |k: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
                .parse()
                .expect("address")
        };
        guard.binary = field("binary=");
        guard.http = field("http=");
        guard
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let status =
            Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait (bounded) for a clean exit; returns whether it exited by itself.
    pub fn terminate(&mut self, within: Duration) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::yield_now();
        }
        self.kill9();
        false
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
