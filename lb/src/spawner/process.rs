//! The `process` spawner: `shardgate node` children on loopback.
//!
//! A child is started as `<exe> node --name NAME --listen HOST:0 --http HOST:0 --data-dir
//! <data-dir>/nodes/NAME` (with `--insecure` when the cluster has no secret), its
//! environment holding the cluster secret's file (`SHARDGATE_SECRET_FILE`) and the admin
//! token (`SHARDGATE_ADMIN_TOKEN`) when there is one, and the spawner waits for the one stdout line a node prints once
//! it listens (`shardgate node NAME listening binary=ADDR http=ADDR`) to learn its ports.
//!
//! No orphans, whatever happens to the manager:
//! - `stop_all` (shutdown) and `remove` stop children and reap them;
//! - every `Child` is `kill_on_drop`, so dropping the spawner kills what is left;
//! - each child asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`), which
//!   covers a SIGKILL of the manager itself;
//! - each child runs in its own process group, so a terminal's Ctrl-C reaches only the
//!   manager, which then stops the children in order instead of racing them (a node that
//!   died of the Ctrl-C first would be "replaced").

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{NodeSecret, NodeToken, SpawnError, Spawned, Spawner, NODE_ENV_CLEARED};

/// How long a node may take from exec to its "listening" line.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stopping node may take to exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// How the `process` spawner starts nodes.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// The `shardgate` executable (normally `std::env::current_exe()`).
    pub exe: PathBuf,
    /// The data directory; node `NAME` keeps its data in `<data_dir>/nodes/NAME`.
    pub data_dir: PathBuf,
    /// The addresses nodes bind (port 0 each). With several, each node name gets the next
    /// one in turn when it first starts and keeps it across respawns, so a test (or a user
    /// studying faults) can cut one replica off from the others with iptables rules on its
    /// address. Empty means 127.0.0.1.
    pub hosts: Vec<IpAddr>,
    /// The cluster secret every node uses, or none (`--insecure`).
    pub secret: NodeSecret,
    /// The admin token every node's `/config` requires, if one is set.
    pub admin_token: Option<NodeToken>,
}

/// Starts nodes as child processes; see the module doc.
pub struct ProcessSpawner {
    cfg: ProcessConfig,
    children: Mutex<HashMap<String, Child>>,
    /// The address each node name was given (see [`ProcessConfig::hosts`]).
    hosts_of: Mutex<HashMap<String, IpAddr>>,
}

impl ProcessSpawner {
    /// A spawner with no children yet.
    pub fn new(cfg: ProcessConfig) -> ProcessSpawner {
        ProcessSpawner {
            cfg,
            children: Mutex::new(HashMap::new()),
            hosts_of: Mutex::new(HashMap::new()),
        }
    }

    /// The address node `name` binds: the one it had, else the next of the configured ones.
    fn host_for(&self, name: &str) -> IpAddr {
        let mut given = self.hosts_of.lock().unwrap_or_else(|e| e.into_inner());
        let next = match self.cfg.hosts.as_slice() {
            [] => IpAddr::from([127, 0, 0, 1]),
            hosts => hosts[given.len() % hosts.len()],
        };
        *given.entry(name.to_string()).or_insert(next)
    }

    /// The data directory of node `name`.
    pub fn node_dir(&self, name: &str) -> PathBuf {
        self.cfg.data_dir.join("nodes").join(name)
    }

    fn take(&self, name: &str) -> Option<Child> {
        self.children.lock().unwrap_or_else(|e| e.into_inner()).remove(name)
    }

    async fn start(&self, name: &str) -> Result<Spawned, SpawnError> {
        let err = |detail: String| SpawnError { name: name.to_string(), detail };
        // A name has one node: replace whatever still runs under it.
        if let Some(old) = self.take(name) {
            kill_now(old).await;
        }
        let dir = self.node_dir(name);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        let bind = SocketAddr::new(self.host_for(name), 0).to_string();
        let mut cmd = Command::new(&self.cfg.exe);
        cmd.args(["node", "--name", name, "--listen", &bind, "--http", &bind, "--data-dir"])
            .arg(&dir);
        for var in NODE_ENV_CLEARED {
            cmd.env_remove(var);
        }
        match &self.cfg.secret {
            NodeSecret::File(path) => cmd.env("SHARDGATE_SECRET_FILE", path),
            NodeSecret::Insecure => cmd.arg("--insecure"),
        };
        if let Some(NodeToken(token)) = &self.cfg.admin_token {
            cmd.env("SHARDGATE_ADMIN_TOKEN", token);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only async-signal-safe calls are made (prctl,
        // getppid), and no memory is allocated.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl: then nobody would kill us.
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("parent exited"));
                }
                Ok(())
            });
        }
        let mut child =
            cmd.spawn().map_err(|e| err(format!("cannot run {}: {e}", self.cfg.exe.display())))?;
        let stdout = child.stdout.take().ok_or_else(|| err("no stdout pipe".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(NODE_START_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = child.wait().await.map(|s| s.to_string()).unwrap_or_default();
                return Err(err(format!("the node exited before listening ({status})")));
            }
            Err(_) => {
                kill_now(child).await;
                return Err(err(format!("no 'listening' line within {NODE_START_TIMEOUT:?}")));
            }
        };
        let spawned = match parse_listening_line(&line) {
            Some(s) => s,
            None => {
                kill_now(child).await;
                return Err(err(format!("unexpected first line {line:?}")));
            }
        };
        // Keep the pipe drained so the node never blocks on a full stdout.
        let who = name.to_string();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(node = %who, "stdout: {line}");
            }
        });
        tracing::debug!(node = %name, pid = ?child.id(), addr = %spawned.addr, http = %spawned.http, "node started");
        self.children.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), child);
        Ok(spawned)
    }
}

/// Reads `shardgate node NAME listening binary=ADDR http=ADDR`.
pub(crate) fn parse_listening_line(line: &str) -> Option<Spawned> {
    let field = |k: &str| -> Option<SocketAddr> {
        line.split_whitespace().find_map(|w| w.strip_prefix(k))?.parse().ok()
    };
    if !line.contains(" listening ") {
        return None;
    }
    Some(Spawned { addr: field("binary=")?, http: field("http=")? })
}

async fn kill_now(mut child: Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// SIGTERM, then SIGKILL if it has not exited within [`STOP_GRACE`].
async fn stop_gracefully(mut child: Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain syscall on a pid we own and have not reaped yet.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGTERM);
        }
        if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_ok() {
            return;
        }
    }
    kill_now(child).await;
}

impl Spawner for ProcessSpawner {
    fn spawn<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Spawned, SpawnError>> {
        Box::pin(self.start(name))
    }

    fn kill<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(child) = self.take(name) {
                kill_now(child).await;
            }
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Some(child) = self.take(name) {
                stop_gracefully(child).await;
            }
            let dir = self.node_dir(name);
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(node = %name, dir = %dir.display(), error = %e, "cannot delete the data of a removed node");
                }
            }
        })
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let children: Vec<Child> = {
                let mut map = self.children.lock().unwrap_or_else(|e| e.into_inner());
                map.drain().map(|(_, c)| c).collect()
            };
            futures::future::join_all(children.into_iter().map(stop_gracefully)).await;
        })
    }

    fn pid(&self, name: &str) -> Option<u32> {
        self.children.lock().unwrap_or_else(|e| e.into_inner()).get(name).and_then(Child::id)
    }
}

impl std::fmt::Debug for ProcessSpawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.children.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("ProcessSpawner")
            .field("exe", &self.cfg.exe)
            .field("data_dir", &self.cfg.data_dir)
            .field("children", &n)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_gives_both_addresses() {
        let s = parse_listening_line(
            "shardgate node Server1 listening binary=127.0.0.1:4001 http=127.0.0.1:4000",
        )
        .unwrap();
        assert_eq!(s.addr, "127.0.0.1:4001".parse().unwrap());
        assert_eq!(s.http, "127.0.0.1:4000".parse().unwrap());
        assert!(parse_listening_line("shardgate node S listening binary=x http=y").is_none());
        assert!(parse_listening_line("hello").is_none());
        assert!(
            parse_listening_line("shardgate node S listening binary=127.0.0.1:1 http=-").is_none()
        );
    }
}
