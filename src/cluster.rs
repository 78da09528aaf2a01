//! `shardgate up`, `shardgate manager` and `shardgate lb`: the shard manager and the router,
//! together in one process (still talking over the control protocol) or apart.

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lb::key::{KeySource, KEY_HELP};
use lb::manager::{Manager, ManagerConfig};
use lb::ring::{RingKind, HASH_HELP};
use lb::router::{Router, RouterConfig};
use lb::spawner::{
    DockerConfig, DockerSpawner, NodeSecret, NodeToken, ProcessConfig, ProcessSpawner, Spawner,
    SpawnerKind,
};
use protocol::auth::AdminToken;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::security::{warn_if_exposed, AdminTokenArgs, Door, LimitArgs, Secret, SecretArgs};

/// How long a router waits for the manager's first membership before `up` gives up.
const FIRST_MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(15);

/// Flags of the shard manager (in `up` and `manager`).
#[derive(clap::Args, Debug, Clone)]
pub struct ManagerArgs {
    /// Address of the manager's control listener (routers connect here).
    #[arg(long, default_value = "127.0.0.1:5001")]
    pub listen: SocketAddr,
    /// Data directory; replica NAME keeps its data in DATA_DIR/nodes/NAME, and the cluster
    /// secret is DATA_DIR/cluster.secret unless --secret-file names another.
    #[arg(long, default_value = crate::security::DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Replicas to start with, named Server1..ServerN (default 3, or 0 with --init).
    #[arg(long)]
    pub servers: Option<usize>,
    /// Configure the database once started: `default` (the contract's default
    /// configuration: 4 shards, 6 servers, 3 replicas each), a JSON file's path, or the
    /// `/init` JSON itself. Skipped when the data dir already holds a configured database.
    #[arg(long)]
    pub init: Option<String>,
    /// How replicas are started: process (child processes on loopback) or docker.
    #[arg(long, default_value = "process")]
    pub spawner: SpawnerKind,
    /// Interval between heartbeats to each replica, in milliseconds.
    #[arg(long, default_value_t = 150)]
    pub heartbeat_ms: u64,
    /// A replica with no answered heartbeat for this long (ms) is replaced.
    #[arg(long, default_value_t = 500)]
    pub dead_after_ms: u64,
    /// Most replicas at once.
    #[arg(long, default_value_t = lb::manager::MAX_REPLICAS)]
    pub max_replicas: usize,
    /// Address the replicas listen on (each on a port the OS picks). A comma-separated
    /// list gives each replica the next address in turn, kept across respawns (e.g.
    /// 127.0.0.2,127.0.0.3,127.0.0.4 to cut one replica off with iptables).
    #[arg(long, default_value = "127.0.0.1", value_delimiter = ',')]
    pub node_host: Vec<IpAddr>,
    /// --spawner docker: the image of the node containers (scripts/image.sh builds it).
    #[arg(long, default_value = "shardgate:latest")]
    pub docker_image: String,
    /// --spawner docker: the Docker network node containers join (it must exist).
    #[arg(long, default_value = "shardgate_net")]
    pub docker_network: String,
    /// --spawner docker: the Docker engine's unix socket.
    #[arg(long, default_value = "/var/run/docker.sock")]
    pub docker_socket: PathBuf,
    /// --spawner docker: the deployment's name, the label on every container and volume
    /// the manager creates (teardowns remove exactly these) and its volumes' prefix.
    #[arg(long, default_value = "shardgate")]
    pub docker_project: String,
    /// --spawner docker: prefix of container names (container = prefix + server name).
    #[arg(long, default_value = "")]
    pub docker_prefix: String,
    /// --spawner docker: first port node containers listen on (inside their network); each
    /// new container takes the next pair (HTTP shim, binary protocol), so a replaced node
    /// never has its predecessor's address.
    #[arg(long, default_value_t = 20000)]
    pub node_port: u16,
    /// --spawner docker: the named volume that holds the cluster secret file; it is mounted
    /// read-only into every node container at the file's directory (default
    /// PROJECT_secret, as docker-compose.yml names it).
    #[arg(long)]
    pub docker_secret_volume: Option<String>,
}

/// Flags of the router (in `up` and `lb`).
#[derive(clap::Args, Debug, Clone)]
pub struct RouterArgs {
    /// Address of the balancer's HTTP endpoint.
    #[arg(long, default_value = "127.0.0.1:5000")]
    pub http: SocketAddr,
    /// Address of the router's binary protocol door (the Rust client's); default: the
    /// --http address with port + 2 (5002), or a free port when --http's port is 0.
    #[arg(long)]
    pub binary: Option<SocketAddr>,
    /// Request -> replica mapping (see --help).
    #[arg(long, default_value = "assignment", long_help = HASH_HELP)]
    pub hash: RingKind,
    /// Source of a request's ring key (see --help).
    #[arg(long, default_value = "random", long_help = KEY_HELP)]
    pub key: KeySource,
    /// Replicas a request is tried on before the balancer answers 503.
    #[arg(long, default_value_t = lb::router::FORWARD_ATTEMPTS)]
    pub attempts: usize,
    /// Limit on one forwarding attempt, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub forward_timeout_ms: u64,
    /// Threads serving the balancer's HTTP connections, each with its own connections to
    /// the replicas (default: one per core).
    #[arg(long)]
    pub router_threads: Option<usize>,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `shardgate up`.
#[derive(clap::Args, Debug, Clone)]
pub struct UpArgs {
    #[command(flatten)]
    pub manager: ManagerArgs,
    #[command(flatten)]
    pub router: RouterArgs,
    #[command(flatten)]
    pub admin: AdminTokenArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
}

/// `shardgate manager`.
#[derive(clap::Args, Debug, Clone)]
pub struct ManagerCmdArgs {
    #[command(flatten)]
    pub manager: ManagerArgs,
    /// The admin token of the routers (the nodes' `/config` then needs it too).
    #[command(flatten)]
    pub admin: AdminTokenArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
}

/// `shardgate lb`.
#[derive(clap::Args, Debug, Clone)]
pub struct LbArgs {
    /// The shard manager's control address (its --listen).
    #[arg(long)]
    pub manager: String,
    #[command(flatten)]
    pub router: RouterArgs,
    #[command(flatten)]
    pub admin: AdminTokenArgs,
    #[command(flatten)]
    pub secret: SecretArgs,
}

/// What the nodes a manager starts are given: the cluster secret (or `--insecure`) and the
/// admin token.
#[derive(Debug, Clone)]
struct NodeGuards {
    secret: NodeSecret,
    admin_token: Option<NodeToken>,
}

impl NodeGuards {
    fn new(secret: &Secret, admin: &AdminTokenArgs) -> Result<NodeGuards, String> {
        let secret = match secret {
            Secret::File(p) => NodeSecret::File(p.clone()),
            Secret::Insecure => NodeSecret::Insecure,
        };
        Ok(NodeGuards { secret, admin_token: admin.node_token()? })
    }
}

fn spawner(args: &ManagerArgs, guards: &NodeGuards) -> Result<Arc<dyn Spawner>, String> {
    match args.spawner {
        SpawnerKind::Docker => {
            let spawner = DockerSpawner::new(DockerConfig {
                socket: args.docker_socket.clone(),
                image: args.docker_image.clone(),
                network: args.docker_network.clone(),
                project: args.docker_project.clone(),
                prefix: args.docker_prefix.clone(),
                first_port: args.node_port,
                // Nodes log like the manager does.
                log_filter: std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                secret: guards.secret.clone(),
                secret_volume: args
                    .docker_secret_volume
                    .clone()
                    .unwrap_or_else(|| format!("{}_secret", args.docker_project)),
                admin_token: guards.admin_token.clone(),
            })?;
            Ok(Arc::new(spawner))
        }
        SpawnerKind::Process => {
            let exe = std::env::current_exe()
                .map_err(|e| format!("cannot find the shardgate executable: {e}"))?;
            Ok(Arc::new(ProcessSpawner::new(ProcessConfig {
                exe,
                data_dir: args.data_dir.clone(),
                hosts: args.node_host.clone(),
                secret: guards.secret.clone(),
                admin_token: guards.admin_token.clone(),
            })))
        }
    }
}

fn manager_config(
    args: &ManagerArgs,
    admin_token: Option<AdminToken>,
) -> Result<ManagerConfig, String> {
    if args.heartbeat_ms == 0 || args.dead_after_ms == 0 {
        return Err("--heartbeat-ms and --dead-after-ms must be positive".into());
    }
    if args.servers() > args.max_replicas {
        return Err(format!(
            "--servers {} is more than --max-replicas {}",
            args.servers(),
            args.max_replicas
        ));
    }
    Ok(ManagerConfig {
        servers: args.servers(),
        heartbeat: Duration::from_millis(args.heartbeat_ms),
        dead_after: Duration::from_millis(args.dead_after_ms),
        max_replicas: args.max_replicas,
        admin_token,
        ..ManagerConfig::default()
    })
}

fn router_config(
    manager: String,
    args: &RouterArgs,
    admin_token: Option<AdminToken>,
) -> Result<RouterConfig, String> {
    if args.attempts == 0 {
        return Err("--attempts must be at least 1".into());
    }
    let mut cfg = RouterConfig::new(manager);
    cfg.hash = args.hash;
    cfg.key = args.key.clone();
    cfg.attempts = args.attempts;
    cfg.forward_timeout = Duration::from_millis(args.forward_timeout_ms.max(1));
    match args.router_threads {
        Some(0) => return Err("--router-threads must be at least 1".into()),
        Some(n) => cfg.front_threads = n,
        None => {}
    }
    cfg.limits = args.limits.limits()?;
    cfg.admin_token = admin_token;
    Ok(cfg)
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| format!("cannot listen for {what} on {addr}: {e}"))
}

fn local(l: &TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into())
}

impl ManagerArgs {
    /// `--servers`, or its default: 3, none when `--init` configures the database.
    pub fn servers(&self) -> usize {
        self.servers.unwrap_or(if self.init.is_some() { 0 } else { 3 })
    }
}

/// `--init`: configures the database through the manager's `/init`, unless a database is
/// already configured (a restart on the same data dir).
async fn init_database(manager: &Arc<Manager>, init: &str) -> Result<(), String> {
    if manager.catalog().initialized() {
        tracing::info!("the database is already configured; --init skipped");
        return Ok(());
    }
    let body = match init.trim() {
        "default" => lb::catalog::default_config().to_string(),
        inline if inline.starts_with('{') => inline.to_string(),
        path => std::fs::read_to_string(path)
            .map_err(|e| format!("--init {path}: cannot read the configuration: {e}"))?,
    };
    let (status, answer) = manager.db_admin(lb::control::AdminOp::Init, &body).await;
    if status != 200 {
        return Err(format!("--init: the configuration was refused ({status}): {answer}"));
    }
    tracing::info!("database configured by --init");
    Ok(())
}

/// Warns about the manager's control door and its replicas' doors when they are open beyond
/// loopback without the cluster secret.
fn warn_manager_exposure(args: &ManagerArgs, control: &TcpListener) {
    if let Ok(a) = control.local_addr() {
        warn_if_exposed("shard manager (--listen)", a, Door::Binary, false);
    }
    // The replicas' binary doors; their HTTP shims warn for themselves.
    for &host in &args.node_host {
        warn_if_exposed("replicas (--node-host)", SocketAddr::new(host, 0), Door::Binary, false);
    }
}

/// A running manager with its control listener.
struct RunningManager {
    manager: Arc<Manager>,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl RunningManager {
    async fn stop(self) {
        self.cancel.cancel();
        self.manager.shutdown().await;
        let _ = self.server.await;
    }
}

/// Starts the manager's replicas (unless `shutdown` comes first) and its control listener.
async fn start_manager(
    args: &ManagerArgs,
    cfg: ManagerConfig,
    guards: &NodeGuards,
    listener: TcpListener,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Result<Option<RunningManager>, String> {
    let spawner = spawner(args, guards)?;
    // The catalog and membership persist in the manager's own log under the data dir.
    let log_dir = lb::manager::log_dir(&args.data_dir);
    let manager = tokio::select! {
        m = Manager::start_with_log(cfg, spawner.clone(), Some(&log_dir)) => m.map_err(|e| e.message)?,
        _ = &mut *shutdown => {
            spawner.stop_all().await;
            return Ok(None);
        }
    };
    if let Some(init) = &args.init {
        let configured = tokio::select! {
            r = init_database(&manager, init) => Some(r),
            _ = &mut *shutdown => None,
        };
        match configured {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                manager.shutdown().await;
                return Err(e);
            }
            None => {
                manager.shutdown().await;
                return Ok(None);
            }
        }
    }
    let cancel = CancellationToken::new();
    let server = tokio::spawn(lb::manager::serve(listener, manager.clone(), cancel.clone()));
    Ok(Some(RunningManager { manager, cancel, server }))
}

/// The router's listeners: HTTP and the binary door.
struct RouterListeners {
    http: TcpListener,
    binary: TcpListener,
}

impl RouterListeners {
    async fn bind(args: &RouterArgs) -> Result<RouterListeners, String> {
        let http = bind(args.http, "HTTP").await?;
        let binary_addr = match args.binary {
            Some(a) => a,
            None if args.http.port() == 0 => SocketAddr::new(args.http.ip(), 0),
            None => {
                let port = args.http.port().checked_add(2).ok_or_else(|| {
                    format!(
                        "--http port {} leaves no default for --binary; give --binary",
                        args.http.port()
                    )
                })?;
                SocketAddr::new(args.http.ip(), port)
            }
        };
        let binary = bind(binary_addr, "the binary protocol (--binary)").await?;
        Ok(RouterListeners { http, binary })
    }

    /// Warns about each listener open beyond loopback without its guard.
    fn warn_if_exposed(&self, has_admin_token: bool) {
        if let Ok(a) = self.http.local_addr() {
            warn_if_exposed("router HTTP (--http)", a, Door::Http, has_admin_token);
        }
        if let Ok(a) = self.binary.local_addr() {
            warn_if_exposed("router binary (--binary)", a, Door::Binary, false);
        }
    }

    /// `http=ADDR binary=ADDR` for the banner.
    fn describe(&self) -> String {
        format!("http={} binary={}", local(&self.http), local(&self.binary))
    }
}

/// Runs the router on its listeners until `shutdown`, once it has its first membership.
async fn run_router(
    cfg: RouterConfig,
    listeners: RouterListeners,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
    banner: impl FnOnce(&Router) -> String,
) -> Result<(), String> {
    let router = Router::start(cfg).map_err(|e| e.to_string())?;
    let ready = tokio::select! {
        r = router.wait_ready(FIRST_MEMBERSHIP_TIMEOUT) => r,
        _ = &mut *shutdown => { router.stop(); return Ok(()); }
    };
    if !ready {
        router.stop();
        return Err(format!(
            "no membership from the shard manager at {} within {FIRST_MEMBERSHIP_TIMEOUT:?}",
            router.config().manager
        ));
    }
    // One machine-readable line on stdout, for scripts and tests that use port 0.
    let _ = writeln!(std::io::stdout(), "{}", banner(&router));
    let stop_binary = CancellationToken::new();
    let binary = tokio::spawn(lb::router::serve_binary(
        listeners.binary,
        router.clone(),
        stop_binary.clone(),
    ));
    lb::router::serve(listeners.http, router.clone(), shutdown).await;
    stop_binary.cancel();
    let _ = binary.await;
    router.stop();
    Ok(())
}

/// `shardgate up`: manager and router in one process, replicas as children; stops
/// everything, children included, when `shutdown` completes.
pub async fn up(args: UpArgs, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    tokio::pin!(shutdown);
    if let Some(cap) = lb::router::ring_capacity(&args.router.hash) {
        if args.manager.servers() > cap {
            return Err(format!(
                "--servers {} does not fit the {} ring: it holds at most {cap} servers",
                args.manager.servers(),
                args.router.hash
            ));
        }
    }
    let router_args = args.router.clone();
    // An unreadable token, a missing secret or --insecure with a token fail before any
    // port is bound or any replica starts.
    let token = args.admin.token()?;
    let secret = args.secret.establish(&args.manager.data_dir, true, token.is_some(), "up")?;
    let guards = NodeGuards::new(&secret, &args.admin)?;
    let manager_cfg = manager_config(&args.manager, token.clone())?;
    // Bind both first: a port in use fails before any replica starts.
    let control = bind(args.manager.listen, "the shard manager").await?;
    let listeners = RouterListeners::bind(&router_args).await?;
    // Bad limits fail before any replica starts.
    let cfg = router_config(local(&control), &router_args, token)?;
    warn_manager_exposure(&args.manager, &control);
    listeners.warn_if_exposed(cfg.admin_token.is_some());
    let control_addr = local(&control);
    let started =
        ManagerThread::start(args.manager.clone(), manager_cfg, guards, control, &mut shutdown);
    let Some(manager) = started.await? else {
        return Ok(());
    };
    let addrs = listeners.describe();
    let result = run_router(cfg, listeners, &mut shutdown, |r| {
        format!(
            "shardgate up listening {addrs} manager={control_addr} servers={}",
            r.membership().members.len()
        )
    })
    .await;
    tracing::info!("stopping: router stopped, stopping the shard manager and every replica");
    let stopped = manager.stop().await;
    result.and(stopped)
}

/// The shard manager of `up`, on a runtime of its own (two threads named `manager`): its
/// heartbeats, elections and control door keep their timing whatever load the router
/// carries on the main runtime (a router busy with thousands of clients once delayed the
/// manager's heartbeat checks enough that it replaced healthy nodes).
struct ManagerThread {
    runtime: tokio::runtime::Runtime,
    task: tokio::task::JoinHandle<Result<(), String>>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl ManagerThread {
    /// Starts the manager on its runtime; `None` when `shutdown` came first.
    async fn start(
        args: ManagerArgs,
        cfg: ManagerConfig,
        guards: NodeGuards,
        control: TcpListener,
        shutdown: &mut (impl Future<Output = ()> + Unpin),
    ) -> Result<Option<ManagerThread>, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("manager")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the shard manager's runtime: {e}"))?;
        // The listener moves to the manager's runtime (its readiness comes from there).
        let control = control.into_std().map_err(|e| format!("control listener: {e}"))?;
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<bool>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = runtime.spawn(async move {
            let control =
                TcpListener::from_std(control).map_err(|e| format!("control listener: {e}"))?;
            let mut stopped = Box::pin(async move {
                let _ = stop_rx.await;
            });
            let started = start_manager(&args, cfg, &guards, control, &mut stopped);
            let Some(running) = started.await? else {
                let _ = ready_tx.send(false);
                return Ok(());
            };
            let _ = ready_tx.send(true);
            stopped.await;
            running.stop().await;
            Ok(())
        });
        let started = tokio::select! {
            r = ready_rx => r.unwrap_or(false),
            _ = &mut *shutdown => false,
        };
        let this = ManagerThread { runtime, task, stop };
        if started {
            return Ok(Some(this));
        }
        // Stopped before it served, or failed to start: wait for it, and say why.
        this.stop().await.map(|()| None)
    }

    /// Stops the manager (and every replica it started), then its runtime.
    async fn stop(self) -> Result<(), String> {
        let _ = self.stop.send(());
        let result = match self.task.await {
            Ok(r) => r,
            Err(e) => Err(format!("the shard manager failed: {e}")),
        };
        self.runtime.shutdown_background();
        result
    }
}

/// `shardgate manager`: the shard manager alone.
pub async fn manager(
    cmd: ManagerCmdArgs,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    tokio::pin!(shutdown);
    let args = cmd.manager;
    let token = cmd.admin.token()?;
    let secret = cmd.secret.establish(&args.data_dir, true, token.is_some(), "manager")?;
    let guards = NodeGuards::new(&secret, &cmd.admin)?;
    let cfg = manager_config(&args, token)?;
    // Calls to the nodes leave from the manager's own address.
    client::set_source_ip(args.listen.ip());
    let control = bind(args.listen, "the shard manager").await?;
    warn_manager_exposure(&args, &control);
    let addr = local(&control);
    let Some(running) = start_manager(&args, cfg, &guards, control, &mut shutdown).await? else {
        return Ok(());
    };
    let _ = writeln!(
        std::io::stdout(),
        "shardgate manager listening control={addr} servers={}",
        running.manager.membership().members.len()
    );
    shutdown.await;
    running.stop().await;
    Ok(())
}

/// `shardgate lb`: a router alone, against a running manager.
pub async fn lb(args: LbArgs, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    tokio::pin!(shutdown);
    let token = args.admin.token()?;
    args.secret.find(token.is_some(), "lb")?;
    // Calls to the manager and the nodes leave from the router's own address.
    client::set_source_ip(args.router.http.ip());
    let listeners = RouterListeners::bind(&args.router).await?;
    let addrs = listeners.describe();
    let cfg = router_config(args.manager.clone(), &args.router, token)?;
    listeners.warn_if_exposed(cfg.admin_token.is_some());
    let manager = args.manager.clone();
    run_router(cfg, listeners, &mut shutdown, |_| {
        format!("shardgate lb listening {addrs} manager={manager}")
    })
    .await
}
