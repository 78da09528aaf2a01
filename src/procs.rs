//! Child processes of `bench` and `analyze`: a `shardgate up` cluster on loopback that is
//! always stopped ([`UpChild`], a guard with `Drop`), and the /proc look-ups that find the
//! node processes under it (to SIGKILL a primary or a replica on purpose).
//!
//! No orphans, whatever happens to the benchmark:
//! - an error or a return drops the guard, which SIGKILLs every descendant of `up` and `up`;
//! - Ctrl-C / SIGTERM of the benchmark drops its future (main races it with the signal), so
//!   the same guard runs;
//! - `up` asks the kernel for SIGKILL when the benchmark dies (`PR_SET_PDEATHSIG`), and `up`
//!   does the same for its nodes, so even a SIGKILL of the benchmark leaves nothing behind;
//! - `up` runs in its own process group, so a terminal's Ctrl-C reaches the benchmark alone,
//!   which then stops the cluster (instead of racing it).

use std::net::SocketAddr;
use std::os::raw::{c_int, c_ulong};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::proc_tree::{cmdline, descendants, node_pid, node_pids, pid_alive};

/// How long `up` may take to print its "listening" line.
const UP_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping `up` may take to exit after SIGTERM before it is killed.
const UP_STOP_GRACE: Duration = Duration::from_secs(10);
/// Most lines of `up`'s stderr kept (the oldest are dropped past this).
const MAX_LOG_LINES: usize = 20_000;

const SIGKILL: c_int = 9;
const SIGTERM: c_int = 15;
const PR_SET_PDEATHSIG: c_int = 1;

extern "C" {
    fn kill(pid: c_int, sig: c_int) -> c_int;
    fn prctl(option: c_int, ...) -> c_int;
}

/// Sends `sig` to `pid`; whether the kernel accepted it.
fn send_signal(pid: u32, sig: c_int) -> bool {
    let Ok(pid) = c_int::try_from(pid) else { return false };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) on a positive pid has no memory effects on this process.
    unsafe { kill(pid, sig) == 0 }
}

/// SIGKILL to `pid`; whether the kernel accepted it.
pub fn sigkill(pid: u32) -> bool {
    send_signal(pid, SIGKILL)
}

/// One line `up` wrote on stderr, with when it was read.
#[derive(Clone, Debug)]
pub struct LogLine {
    /// When the line was read.
    pub at: Instant,
    /// The line.
    pub text: String,
}

/// A `shardgate up` child on loopback ports it picked, with its data in a temp dir. Dropping
/// it SIGKILLs every process under it and it (see the module doc).
pub struct UpChild {
    child: Child,
    /// The router's HTTP address.
    pub http: SocketAddr,
    /// The router's binary protocol door.
    pub binary: SocketAddr,
    log: Arc<Mutex<Vec<LogLine>>>,
    // Dropped after the processes are gone (fields drop after `Drop::drop`).
    _dir: tempfile::TempDir,
}

impl UpChild {
    /// Starts `shardgate up --servers SERVERS EXTRA...` on ports the OS picks and waits for
    /// its "listening" line. `rust_log` is its `RUST_LOG` (its stderr is kept, see
    /// [`UpChild::log`]).
    pub async fn start(servers: usize, extra: &[&str], rust_log: &str) -> Result<UpChild, String> {
        let dir = tempfile::Builder::new()
            .prefix("shardgate-bench-")
            .tempdir()
            .map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let exe = std::env::current_exe()
            .map_err(|e| format!("cannot find the shardgate executable: {e}"))?;
        // The cluster's secret is this process's own, so its clients get in.
        let secret = crate::security::share_secret(dir.path())?;
        let mut cmd = Command::new(exe);
        cmd.env_remove("SHARDGATE_ADMIN_TOKEN")
            .env_remove("SHARDGATE_ADMIN_TOKEN_FILE")
            .env("SHARDGATE_SECRET_FILE", &secret)
            .args(["up", "--http", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
            .args(["--servers", &servers.to_string()])
            .arg("--data-dir")
            .arg(dir.path())
            .args(extra)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let parent = std::process::id();
        // SAFETY: between fork and exec only async-signal-safe calls are made (prctl,
        // getppid) and nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                if prctl(PR_SET_PDEATHSIG, SIGKILL as c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl: then nobody would kill us.
                if std::os::unix::process::parent_id() != parent {
                    return Err(std::io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| format!("cannot start shardgate up: {e}"))?;
        let log: Arc<Mutex<Vec<LogLine>>> = Arc::default();
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(text)) = lines.next_line().await {
                    let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                    if l.len() >= MAX_LOG_LINES {
                        l.remove(0);
                    }
                    l.push(LogLine { at: Instant::now(), text });
                }
            });
        }
        let stdout = child.stdout.take().ok_or("shardgate up: no stdout pipe")?;
        let unset = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut guard = UpChild { child, http: unset, binary: unset, log, _dir: dir };
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(UP_START_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => return Err(format!("shardgate up exited before listening{}", guard.tail(20))),
            Err(_) => {
                return Err(format!(
                    "shardgate up printed no 'listening' line within {UP_START_TIMEOUT:?}{}",
                    guard.tail(20)
                ))
            }
        };
        // Keep the pipe drained so up never blocks on a full stdout.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let field = |name: &str| -> Result<SocketAddr, String> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .ok_or_else(|| format!("shardgate up did not report its {name} address: {line:?}"))?
                .parse()
                .map_err(|e| format!("bad address in {line:?}: {e}"))
        };
        guard.http = field("http=")?;
        guard.binary = field("binary=")?;
        Ok(guard)
    }

    /// The pid of `up` (0 once it has been reaped).
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// The pid of the live node named `name` under `up`.
    pub fn node_pid(&self, name: &str) -> Option<u32> {
        node_pid(self.pid(), name)
    }

    /// Every stderr line so far.
    pub fn log(&self) -> Vec<LogLine> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The last `n` stderr lines, as a block to append to an error message ("" if none).
    pub fn tail(&self, n: usize) -> String {
        let l = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if l.is_empty() {
            return String::new();
        }
        let from = l.len().saturating_sub(n);
        let lines: Vec<&str> = l[from..].iter().map(|x| x.text.as_str()).collect();
        format!("\n--- last lines of shardgate up's stderr ---\n{}", lines.join("\n"))
    }

    /// SIGTERM (up stops its nodes itself), then SIGKILL of whatever is left after a grace.
    pub async fn stop(mut self) {
        let pid = self.pid();
        let nodes = node_pids(pid);
        if pid != 0 && send_signal(pid, SIGTERM) {
            let _ = tokio::time::timeout(UP_STOP_GRACE, self.child.wait()).await;
        }
        // up normally stops its nodes itself; a node that outlived it is killed here, and
        // Drop kills up if it is still running.
        for p in nodes {
            if pid_alive(p) && cmdline(p).contains(" node --name ") {
                sigkill(p);
            }
        }
    }
}

impl Drop for UpChild {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            // Nodes first, so none outlives us even if the parent-death signal did not fire.
            for p in descendants(pid) {
                sigkill(p);
            }
            sigkill(pid);
        }
        let _ = self.child.start_kill();
        let _ = self.child.try_wait();
    }
}

/// Polls `f` every `every` until it returns `Some` or `within` has passed.
pub async fn poll<T, F, Fut>(within: Duration, every: Duration, mut f: F) -> Option<T>
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
        tokio::time::sleep(every).await;
    }
}

/// Whether `path` is usable as an output directory (created if missing).
pub fn ensure_dir(path: &Path) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))
}
