//! Starting and stopping a node: open the data directory, bind both doors, serve until told
//! to stop, then finish what is in flight and make it durable.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::auth::AdminToken;
use protocol::limits::{ConnectionLimit, DoorLimits};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Result};
use crate::node::Node;
use crate::shard::ShardOptions;

/// How long a starting node waits for its logs' locks held by another process.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long shutdown waits for in-flight requests before it stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The server's name (`Server0`).
    pub name: String,
    /// Address of the binary protocol listener.
    pub listen: SocketAddr,
    /// Address of the HTTP shim; `None` runs without it.
    pub http: Option<SocketAddr>,
    /// Where the shard replicas live.
    pub data_dir: PathBuf,
    /// Tunables of every shard replica.
    pub shard: ShardOptions,
}

/// How a node's doors guard themselves: the limits of its flags, and the admin token its HTTP
/// shim requires for `/config` (none: open, as the contract's clients expect); with a token,
/// its binary door takes configuration and replication commands only from sessions
/// authenticated with the cluster secret (`protocol::authz`).
#[derive(Clone, Debug, Default)]
pub struct Guards {
    /// Connection caps, the HTTP idle timeout, row caps.
    pub limits: DoorLimits,
    /// When set, `/config` over HTTP needs `Authorization: Bearer TOKEN`.
    pub admin_token: Option<AdminToken>,
}

/// A running node.
pub struct NodeServer {
    node: Arc<Node>,
    binary_addr: SocketAddr,
    http_addr: Option<SocketAddr>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl NodeServer {
    /// Opens the node's data (recovering every shard) and starts serving, with the default
    /// limits and no admin token.
    pub async fn start(cfg: NodeConfig) -> Result<NodeServer> {
        NodeServer::start_with(cfg, Guards::default()).await
    }

    /// [`NodeServer::start`] with the doors guarded by `guards`.
    pub async fn start_with(cfg: NodeConfig, guards: Guards) -> Result<NodeServer> {
        let waiting_since = std::time::Instant::now();
        let node = loop {
            let (name, dir, opts) = (cfg.name.clone(), cfg.data_dir.clone(), cfg.shard.clone());
            let opened =
                tokio::task::spawn_blocking(move || Node::open(&name, &dir, opts))
                    .await
                    .map_err(|e| Error::io("open node", &cfg.data_dir, std::io::Error::other(e)))?;
            match opened {
                // The process that had these logs open may still be exiting (killed with its
                // shard manager a moment ago, say): its locks go with it.
                Err(Error::Wal(wal::Error::Locked { .. }))
                    if waiting_since.elapsed() < LOCK_WAIT =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => break other?,
            }
        };
        let node = Arc::new(node.with_row_limits(guards.limits.rows));
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|e| Error::io("bind", std::path::Path::new(&addr.to_string()), e))
        };
        let binary = bind(cfg.listen).await?;
        let binary_addr = binary
            .local_addr()
            .map_err(|e| Error::io("bind", std::path::Path::new("binary"), e))?;
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let http_addr = match cfg.http {
            Some(addr) => {
                let l = bind(addr).await?;
                let a = l
                    .local_addr()
                    .map_err(|e| Error::io("bind", std::path::Path::new("http"), e))?;
                let door = crate::http::HttpDoor {
                    limit: ConnectionLimit::new("http", guards.limits.max_connections),
                    idle_timeout: guards.limits.idle_timeout,
                    admin_token: guards.admin_token.clone(),
                };
                tracker.spawn(crate::http::serve(
                    l,
                    node.clone(),
                    door,
                    cancel.clone(),
                    tracker.clone(),
                ));
                Some(a)
            }
            None => None,
        };
        let binary_limit = ConnectionLimit::new("binary", guards.limits.max_connections);
        tracker.spawn(crate::binary::serve(
            binary,
            node.clone(),
            guards.admin_token.clone(),
            binary_limit,
            cancel.clone(),
            tracker.clone(),
        ));
        Ok(NodeServer { node, binary_addr, http_addr, cancel, tracker })
    }

    /// The node itself.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Where the binary protocol listens.
    pub fn binary_addr(&self) -> SocketAddr {
        self.binary_addr
    }

    /// Where the HTTP shim listens.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Stops accepting, lets in-flight requests finish (up to a grace period), then makes
    /// everything appended durable and stops the shards.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, self.tracker.wait()).await.is_err() {
            tracing::warn!("in-flight requests did not finish within the grace period");
        }
        let node = self.node.clone();
        let _ = tokio::task::spawn_blocking(move || node.close()).await;
    }
}

/// Runs a node until `shutdown` completes, then stops it cleanly (default limits, no admin
/// token).
pub async fn run(cfg: NodeConfig, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    run_with(cfg, Guards::default(), shutdown).await
}

/// Fault-injection builds only: arms the fail points that `SHARDGATE_FAILPOINTS_<NAME>`
/// names for this node, as `point=actions` pairs separated by `;` in the `fail` crate's
/// syntax (`wal::sync=40*off->return`: the first 40 syncs pass, every later one fails), so
/// that a test can break the disk of one node of a cluster.
#[cfg(feature = "failpoints")]
fn arm_fail_points(name: &str) -> Result<()> {
    let var = format!("SHARDGATE_FAILPOINTS_{name}");
    let Ok(spec) = std::env::var(&var) else { return Ok(()) };
    let bad = |detail: String| {
        Error::io("arm fail points", std::path::Path::new(&var), std::io::Error::other(detail))
    };
    for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (point, actions) =
            item.split_once('=').ok_or_else(|| bad(format!("'{item}' is not point=actions")))?;
        fail::cfg(point.trim(), actions.trim()).map_err(bad)?;
        tracing::warn!(node = name, point, actions, "fail point armed");
    }
    Ok(())
}

/// [`run`] with the doors guarded by `guards`.
pub async fn run_with(
    cfg: NodeConfig,
    guards: Guards,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    #[cfg(feature = "failpoints")]
    arm_fail_points(&cfg.name)?;
    // A node bound to its own address talks to its peers from it too.
    client::set_source_ip(cfg.listen.ip());
    let server = NodeServer::start_with(cfg.clone(), guards).await?;
    tracing::info!(
        name = %cfg.name,
        binary = %server.binary_addr(),
        http = ?server.http_addr(),
        data_dir = %cfg.data_dir.display(),
        "node serving"
    );
    // One machine-readable line on stdout, for spawners and scripts that start nodes on
    // port 0 and need to know where they listen.
    let _ = writeln!(
        std::io::stdout(),
        "shardgate node {} listening binary={} http={}",
        cfg.name,
        server.binary_addr(),
        server.http_addr().map_or_else(|| "-".to_string(), |a| a.to_string())
    );
    shutdown.await;
    tracing::info!(name = %cfg.name, "node stopping");
    server.shutdown().await;
    Ok(())
}
