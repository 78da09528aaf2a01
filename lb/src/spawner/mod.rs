//! The spawner: the only code that knows how a node is started and stopped.
//!
//! - `process` (default): `shardgate node` children on loopback ports the OS picks, data under
//!   `<data-dir>/nodes/<name>`; they die with the manager (killed on stop, on drop, and by
//!   the kernel if the manager itself dies).
//! - `docker`: containers of the `FROM scratch` image on a Docker network, through the
//!   engine's API on its unix socket (`engine`); data on one named volume per node, kept
//!   when a container is replaced.

mod docker;
mod engine;
mod process;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use futures::future::BoxFuture;

pub use docker::{DockerConfig, DockerSpawner, LABEL_PROJECT, LABEL_SERVER, NODE_DATA_DIR};
pub use engine::Engine;
pub use process::{ProcessConfig, ProcessSpawner, NODE_START_TIMEOUT, STOP_GRACE};

/// How the nodes a spawner starts authenticate their binary doors: with the cluster's
/// secret (every process of the cluster the same), or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeSecret {
    /// The cluster secret file, given to each node as `SHARDGATE_SECRET_FILE` (for docker, a
    /// path inside the containers, on the secret's volume).
    File(PathBuf),
    /// None: nodes run `--insecure` (their binary doors serve anyone).
    Insecure,
}

/// The admin token handed to the nodes a spawner starts (in their environment as
/// `SHARDGATE_ADMIN_TOKEN`, never on a command line), so that their `/config` needs it too.
/// `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct NodeToken(pub String);

impl fmt::Debug for NodeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NodeToken(<redacted>)")
    }
}

/// Variables of the parent's environment a node must not inherit: the spawner sets what
/// the node needs explicitly (a `SHARDGATE_ADMIN_TOKEN_FILE` inherited beside a
/// `SHARDGATE_ADMIN_TOKEN` would be refused as two tokens).
pub const NODE_ENV_CLEARED: &[&str] =
    &["SHARDGATE_SECRET_FILE", "SHARDGATE_ADMIN_TOKEN", "SHARDGATE_ADMIN_TOKEN_FILE"];

/// Where a freshly started node listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    /// Its binary protocol listener.
    pub addr: SocketAddr,
    /// Its HTTP shim.
    pub http: SocketAddr,
}

/// Why a node could not be started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot start node '{name}'; {detail}")]
pub struct SpawnError {
    /// The node's name.
    pub name: String,
    /// What went wrong.
    pub detail: String,
}

/// Starts and stops nodes by name. A name has at most one running node: spawning a name that
/// runs replaces it.
pub trait Spawner: Send + Sync + fmt::Debug {
    /// Starts node `name` (its data directory kept from an earlier life, if any) and
    /// returns once it listens. Its addresses must differ from those of the node it
    /// replaces: the manager tells a respawned node from the old one by its address.
    fn spawn<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Spawned, SpawnError>>;

    /// Kills node `name` at once (SIGKILL) and waits until it is gone; no-op if it is not
    /// running. For a node that stopped answering.
    fn kill<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()>;

    /// Stops node `name` for good: asks it to stop, kills it after a grace period, and
    /// deletes its data. For `/rm`.
    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()>;

    /// Stops every node (gracefully, then killed after the grace period), keeping their data.
    fn stop_all(&self) -> BoxFuture<'_, ()>;

    /// The OS process id of node `name`, when it is a local process.
    fn pid(&self, name: &str) -> Option<u32>;
}

/// Which spawner `--spawner` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpawnerKind {
    /// Child processes on loopback.
    #[default]
    Process,
    /// Docker containers on a Docker network.
    Docker,
}

impl FromStr for SpawnerKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "process" => Ok(SpawnerKind::Process),
            "docker" => Ok(SpawnerKind::Docker),
            _ => Err(format!("unknown spawner {s:?}; expected process or docker")),
        }
    }
}

impl fmt::Display for SpawnerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpawnerKind::Process => "process",
            SpawnerKind::Docker => "docker",
        })
    }
}
