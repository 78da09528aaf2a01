//! Harness for end-to-end tests of the real `shardgate` binary: processes on loopback with
//! temp dirs, killed when their guard drops (even when a test fails).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod raw_http;

// The /proc look-ups of the binary's own benchmarks, the same file.
#[path = "../../src/proc_tree.rs"]
mod proc_tree;
// Each test binary uses some of them (as with the rest of this module).
#[allow(unused_imports)]
pub use proc_tree::{cmdline, descendants, node_pid, node_pids, pid_alive};

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_shardgate");

// Creating the cluster secret file: the binary's own code, the same file.
#[path = "../../src/secret_file.rs"]
mod secret_file;

/// The cluster secret of every process this test process starts, and of its own Rust
/// clients: one file for every test process (`<target>/tmp/cluster.secret`, created by the
/// first that needs it), set as this process's secret on first use. The clusters a test
/// starts get it through `SHARDGATE_SECRET_FILE`.
pub fn secret_file() -> &'static Path {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster.secret");
        let (secret, _) =
            secret_file::load_or_create_reporting(&path).expect("the tests' cluster secret");
        protocol::auth::set_cluster_secret(&secret);
        path
    })
}

/// The tests' cluster secret itself (see [`secret_file`]), for a handshake made by hand.
pub fn secret() -> Vec<u8> {
    secret_file::load(secret_file()).expect("the tests' cluster secret")
}

/// `cmd` with the tests' cluster secret, unless its arguments choose otherwise
/// (`--insecure`, `--secret-file`).
fn with_secret<'c>(cmd: &'c mut Command, args: &[&str]) -> &'c mut Command {
    if args.iter().any(|a| *a == "--insecure" || a.starts_with("--secret-file")) {
        return cmd.env_remove("SHARDGATE_SECRET_FILE");
    }
    cmd.env("SHARDGATE_SECRET_FILE", secret_file())
}

/// `method path` with `body` and an optional `Authorization` header value, on a fresh
/// connection: the status and the body as JSON (`Null` when it is not).
pub async fn http_auth(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    authorization: Option<&str>,
) -> (u16, serde_json::Value) {
    let auth = authorization.map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = raw_http::exchange(addr, raw.as_bytes(), Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (r.status, r.json().unwrap_or(serde_json::Value::Null))
}

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
        NodeProc::start_with(name, data_dir, listen, &[])
    }

    /// [`NodeProc::start_on`] with `extra` arguments (`--max-connections 8`, ...).
    pub fn start_with(
        name: &str,
        data_dir: &Path,
        listen: Option<SocketAddr>,
        extra: &[&str],
    ) -> NodeProc {
        let listen = listen.map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        let mut cmd = Command::new(BIN);
        let mut child = with_secret(&mut cmd, extra)
            .args(["node", "--name", name, "--listen", &listen, "--http", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
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

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// A test that cannot run here (a tool or capability is missing: Docker, iptables, a
/// mount, FUSE): says `SKIPPED: <why>` and lets the caller return, except under CI
/// (`CI=true`), where a fault test that does not run must not pass: it panics instead.
pub fn cannot_run(why: &str) {
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0") {
        panic!("this test cannot run here and CI=true: {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// Sends `signal` (`"KILL"`, `"TERM"`) to `pid`.
pub fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill").args([format!("-{signal}"), pid.to_string()]).status();
}

/// Polls `f` every 20 ms until it returns `Some` or `within` has passed.
pub async fn poll<T, F, Fut>(within: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One HTTP request on a fresh connection: status and JSON body (`Null` when empty or not
/// JSON). Panics if the server cannot be reached.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    try_http(addr, method, path, body).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// [`http`] that reports transport errors instead of panicking.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> std::io::Result<(u16, serde_json::Value)> {
    let mut c = client::HttpClient::connect(addr).await?;
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
    let reply = c.request(method, path, &bytes).await?;
    Ok((reply.status, reply.json().unwrap_or(serde_json::Value::Null)))
}

/// A `shardgate up`, `manager` or `lb` process. On drop it and every node under it are
/// SIGKILLed (nodes first, so none outlives the test even if the kernel's parent-death
/// signal did not fire).
pub struct ClusterProc {
    child: Child,
    /// Fields of its first stdout line (`http=ADDR`, `manager=ADDR`, `control=ADDR`).
    fields: std::collections::HashMap<String, String>,
    /// What it wrote on stderr so far (also copied to the test's stderr).
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ClusterProc {
    /// Runs `shardgate ARGS` and waits (up to 60 s) for its first stdout line.
    pub fn start(args: &[&str]) -> ClusterProc {
        ClusterProc::start_with_env(args, &[])
    }

    /// [`ClusterProc::start`] with `env` added to the process's environment (which the
    /// nodes it starts inherit); a variable given an empty value is removed instead (e.g.
    /// `SHARDGATE_SECRET_FILE`, for a test of what happens without it). The tests' cluster
    /// secret is given unless `args` choose otherwise (see [`secret_file`]).
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> ClusterProc {
        let mut cmd = Command::new(BIN);
        with_secret(&mut cmd, args)
            .args(args)
            // SHARDGATE_TEST_LOG=info (or any filter) shows more of what the processes do.
            .env("RUST_LOG", std::env::var("SHARDGATE_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .env("NO_COLOR", "1");
        for (k, v) in env {
            if v.is_empty() {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn shardgate");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err_pipe = child.stderr.take().expect("stderr");
        let kept = stderr.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(err_pipe);
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                eprint!("{line}");
                let mut k = kept.lock().unwrap_or_else(|e| e.into_inner());
                // Bounded: the last 1 MiB is plenty for any assertion on it.
                if k.len() > 1 << 20 {
                    k.clear();
                }
                k.push_str(&line);
                line.clear();
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the process never blocks on a full pipe.
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        let mut guard = ClusterProc { child, fields: Default::default(), stderr };
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        assert!(line.contains(" listening "), "shardgate {args:?} did not start: {line:?}");
        guard.fields = line
            .split_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        guard
    }

    /// `shardgate up` with `servers` replicas on ports the OS picks, data in `dir`.
    pub fn up(servers: usize, dir: &Path, extra: &[&str]) -> ClusterProc {
        ClusterProc::up_with_env(servers, dir, extra, &[])
    }

    /// [`ClusterProc::up`] with `env` added to the environment of `up` and its nodes.
    pub fn up_with_env(
        servers: usize,
        dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> ClusterProc {
        let dir = dir.to_str().expect("utf-8 temp dir");
        let n = servers.to_string();
        let mut args = vec![
            "up",
            "--http",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir,
            "--servers",
            &n,
        ];
        args.extend_from_slice(extra);
        ClusterProc::start_with_env(&args, env)
    }

    /// An address from the first line (`http`, `manager`, `control`).
    pub fn addr(&self, field: &str) -> SocketAddr {
        self.fields
            .get(field)
            .unwrap_or_else(|| panic!("no {field}= in {:?}", self.fields))
            .parse()
            .expect("address")
    }

    /// The balancer's HTTP address.
    pub fn http(&self) -> SocketAddr {
        self.addr("http")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the process wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits up to `within` for the process to exit; its exit status, if it did.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL of the process alone (its nodes are left to the kernel's parent-death signal).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ClusterProc {
    fn drop(&mut self) {
        for p in descendants(self.child.id()) {
            signal(p, "KILL");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// TCP (IPv4) addresses `pid` listens on, from its socket descriptors and
/// `/proc/PID/net/tcp` (empty once it is gone).
pub fn listening_addrs(pid: u32) -> Vec<SocketAddr> {
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).into_iter().flatten().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else { continue };
        let inode = target
            .to_str()
            .and_then(|t| t.strip_prefix("socket:["))
            .and_then(|t| t.strip_suffix(']'))
            .map(str::to_string);
        inodes.extend(inode);
    }
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return Vec::new();
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Fields: sl local rem st ... inode (10th); state 0A is LISTEN.
            if f.len() < 10 || f[3] != "0A" || !inodes.contains(f[9]) {
                return None;
            }
            let (ip, port) = f[1].split_once(':')?;
            // The kernel prints the address as a native-endian u32 in hex.
            let ip = u32::from_str_radix(ip, 16).ok()?.to_ne_bytes();
            Some(SocketAddr::from((ip, u16::from_str_radix(port, 16).ok()?)))
        })
        .collect()
}

/// The HTTP address of the live `shardgate node --name NAME` under `root`: the one of its
/// listening ports that answers `GET /heartbeat` over HTTP (200, or 500 from a node whose
/// log has failed; the binary door answers no HTTP).
pub async fn node_http(root: u32, name: &str) -> Option<SocketAddr> {
    let pid = node_pid(root, name)?;
    let probes = listening_addrs(pid).into_iter().map(|a| async move {
        let probe =
            tokio::time::timeout(Duration::from_secs(2), try_http(a, "GET", "/heartbeat", None))
                .await;
        matches!(probe, Ok(Ok((200 | 500, _)))).then_some(a)
    });
    futures::future::join_all(probes).await.into_iter().flatten().next()
}

/// The binary door of node `name` under `root`: the one of its listening ports that is not
/// its HTTP shim.
pub async fn node_binary(root: u32, name: &str) -> SocketAddr {
    let pid = node_pid(root, name).unwrap_or_else(|| panic!("{name} runs"));
    let http = node_http(root, name).await.unwrap_or_else(|| panic!("{name} answers HTTP"));
    let ports: Vec<SocketAddr> = listening_addrs(pid).into_iter().filter(|a| *a != http).collect();
    assert_eq!(ports.len(), 1, "{name} listens on {ports:?} besides HTTP {http}");
    ports[0]
}

/// The resident memory of process `pid`, in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// The output folder of test `test`: `<target>/tmp/test-output/<test>/`, created when
/// missing (histories a checker rejected and other evidence go there).
pub fn output_dir(test: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-output").join(test);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// How many replicas of `shard` the router at `http` spreads reads over (its `/metrics`
/// gauge `shardgate_db_shard_live_replicas`): every voter that is alive.
pub async fn live_replicas(http: SocketAddr, shard: &str) -> Option<usize> {
    let v = metric(http, &format!("shardgate_db_shard_live_replicas{{shard=\"{shard}\"}}")).await?;
    usize::try_from(v).ok()
}

/// The `/init` config of the fault tests: shards sh1 (`0..size`) and sh2 (`size..2 * size`),
/// both on Server1, Server2 and Server3.
pub fn two_shards(size: i64) -> String {
    serde_json::json!({"N": 3,
        "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]},
        "shards": [{"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": size},
                   {"Stud_id_low": size, "Shard_id": "sh2", "Shard_size": size}],
        "servers": {"Server1": ["sh1", "sh2"], "Server2": ["sh1", "sh2"], "Server3": ["sh1", "sh2"]}})
    .to_string()
}

/// The value of `series` (name and labels, as `/metrics` writes them) in the balancer's
/// `/metrics`; `None` if it cannot be fetched or has no such line.
pub async fn metric(http: SocketAddr, series: &str) -> Option<u64> {
    let mut c = client::HttpClient::connect(http).await.ok()?;
    let metrics = String::from_utf8(c.request("GET", "/metrics", b"").await.ok()?.body).ok()?;
    let prefix = format!("{series} ");
    metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

/// A slowloris client: connects to `addr` and sends the request head `head` (then `a`s,
/// never finishing it) one byte per `pause`. Returns how long the server took to let go
/// (closed the connection, or answered 408); fails the test after `limit`.
pub async fn slow_head(
    addr: SocketAddr,
    head: &[u8],
    pause: Duration,
    limit: Duration,
) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    for i in 0usize.. {
        assert!(started.elapsed() < limit, "a slow head was still open after {limit:?}");
        let byte = head.get(i).copied().unwrap_or(b'a');
        if s.write_all(&[byte]).await.is_err() {
            break;
        }
        // The pause between bytes doubles as the watch for the server letting go.
        match tokio::time::timeout(pause, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(text.starts_with("HTTP/1.1 408"), "a slow head was answered {text:?}");
                break;
            }
            Err(_) => {}
        }
    }
    started.elapsed()
}

/// A small `/init` body: Server0 holds sh1 (ids 0-99) and sh2 (100-199); marks are numbers.
pub fn one_server_two_shards() -> String {
    serde_json::json!({
        "N": 1,
        "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "Number"]},
        "shards": [{"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": 100},
                   {"Stud_id_low": 100, "Shard_id": "sh2", "Shard_size": 100}],
        "servers": {"Server0": ["sh1", "sh2"]}
    })
    .to_string()
}
