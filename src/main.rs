//! `shardgate`: the command line of the load balancer, the shard manager and the nodes.

// Every request allocates a few small buffers, freed on whichever thread finishes it;
// mimalloc serves that pattern with less work than glibc's malloc (which showed up at ~6% of
// the router's CPU in `perf`).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod analyze;
mod analyze_db;
mod analyze_lb_failover;
mod bench;
mod bench_db;
mod bench_wal;
mod cluster;
mod proc_tree;
mod procs;
mod progress;
mod secret_file;
mod security;

#[derive(Parser)]
#[command(
    name = "shardgate",
    version,
    about = "Consistent-hashing load balancer and sharded, replicated, WAL-backed database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one storage server (a node): the server endpoints over HTTP and the binary protocol.
    Node {
        /// The server's name, its [ID] in answers (`Hello from Server: NAME`).
        #[arg(long)]
        name: String,
        /// Address of the binary protocol listener.
        #[arg(long, default_value = "127.0.0.1:8001")]
        listen: SocketAddr,
        /// Address of the HTTP shim.
        #[arg(long, default_value = "127.0.0.1:8000")]
        http: SocketAddr,
        /// Directory of the node's shard replicas (default ./data/NAME); run alone without
        /// --secret-file, the node keeps its cluster secret there (cluster.secret, created
        /// on first start).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[command(flatten)]
        limits: security::LimitArgs,
        #[command(flatten)]
        admin: security::AdminTokenArgs,
        #[command(flatten)]
        secret: security::SecretArgs,
    },
    /// Start the balancer: the shard manager and the router in one process, with
    /// --servers replicas named Server1..ServerN. Ctrl-C / SIGTERM stops everything.
    Up(Box<cluster::UpArgs>),
    /// Run the shard manager alone (membership, heartbeats, replicas); routers connect to
    /// its --listen address, with its cluster secret (DATA_DIR/cluster.secret).
    Manager(cluster::ManagerCmdArgs),
    /// Run a router alone against a running shard manager (several may share one).
    Lb(cluster::LbArgs),
    /// Analyses of the assignment: `analyze lb` (stage 1: A-1..A-4; alias `stage1`) and
    /// `analyze db` (stages 2 and 3: A-1..A-3 with charts).
    Analyze {
        #[command(subcommand)]
        what: analyze::AnalyzeWhat,
    },
    /// Benchmarks: `bench node` (one node), `bench lb` (the router's cost), `bench db` (the
    /// sharded database through the router), `bench wal` (the log against the raw disk).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Single-row durable writes and range reads against one node, binary and HTTP.
    Node(bench::NodeBench),
    /// GET /home through the router against the same load straight to one node.
    Lb(bench::LbBench),
    /// The database analyses A-1..A-3: single-row writes and reads through the router on a
    /// cluster it starts, every acknowledged row checked; optional primary failover.
    Db(bench_db::DbBench),
    /// The write-ahead log against pwrite + fdatasync of a zeroed file, taking turns.
    Wal(bench_wal::WalBench),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: logs piped to files or to `docker logs` stay plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shardgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Node { name, listen, http, data_dir, limits, admin, secret } => {
                let data_dir = data_dir.unwrap_or_else(|| PathBuf::from("data").join(&name));
                let guards = node::Guards { limits: limits.limits()?, admin_token: admin.token()? };
                // Run alone, a node makes its own secret (its binary door then closed to
                // anyone without that file); the spawners always give one, or --insecure.
                let has_token = guards.admin_token.is_some();
                secret.establish(&data_dir, false, has_token, "node")?;
                use security::{warn_if_exposed, Door};
                warn_if_exposed("node binary (--listen)", listen, Door::Binary, false);
                warn_if_exposed(
                    "node HTTP (--http)",
                    http,
                    Door::Http,
                    guards.admin_token.is_some(),
                );
                let cfg = node::NodeConfig {
                    name,
                    listen,
                    http: Some(http),
                    data_dir,
                    shard: node::ShardOptions::default(),
                };
                node::run_with(cfg, guards, shutdown_signal()).await.map_err(|e| e.to_string())
            }
            Command::Up(args) => cluster::up(*args, shutdown_signal()).await,
            Command::Manager(args) => cluster::manager(args, shutdown_signal()).await,
            Command::Lb(args) => cluster::lb(args, shutdown_signal()).await,
            // These start clusters of their own: on Ctrl-C / SIGTERM their future is dropped,
            // and with it the guards that kill every process they started.
            Command::Analyze { what } => interruptible(analyze::run(what)).await,
            Command::Bench { what: BenchWhat::Node(b) } => interruptible(bench::run(b)).await,
            Command::Bench { what: BenchWhat::Lb(b) } => interruptible(bench::run_lb(b)).await,
            Command::Bench { what: BenchWhat::Db(b) } => interruptible(bench_db::run(b)).await,
            Command::Bench { what: BenchWhat::Wal(b) } => interruptible(bench_wal::run(b)).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shardgate: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `work` unless Ctrl-C or SIGTERM comes first (then `work` is dropped: its child
/// processes are killed by their guards) and the answer is an error.
async fn interruptible(
    work: impl std::future::Future<Output = Result<(), String>>,
) -> Result<(), String> {
    tokio::select! {
        r = work => r,
        _ = shutdown_signal() => Err("interrupted; every process it started was stopped".into()),
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
