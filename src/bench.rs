//! `shardgate bench node`: durable single-row writes and range reads against one node, over
//! the binary protocol and over HTTP, from many concurrent clients; rows/s, p50 and p99.
//!
//! The node runs as its own process (a `shardgate node` child on a temp dir, unless
//! `--binary`/`--http` name a running one), so the load generator and the server each have
//! their own CPU accounting; on a 2-core machine they share both cores.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use protocol::{ConfigReq, ReadReq, Request, Row, Schema, ShardSpec, Value, WriteReq};
use serde_json::json;
use tokio::io::AsyncBufReadExt;

/// What to measure, from the command line.
#[derive(clap::Args, Debug, Clone)]
pub struct NodeBench {
    /// Concurrent clients (each with its own connection).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Keys per range read.
    #[arg(long, default_value_t = 100)]
    read_span: i64,
    /// Binary address of a running node to measure instead of starting one (its cluster
    /// secret in SHARDGATE_SECRET_FILE).
    #[arg(long, requires = "http")]
    binary: Option<SocketAddr>,
    /// HTTP address of that running node.
    #[arg(long, requires = "binary")]
    http: Option<SocketAddr>,
    /// Where the started node keeps its data (default: a temp dir, removed after).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Also measure durable replicated writes on a shard with this many replicas (majority
    /// commit), each its own node process; 0 skips it.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
}

const SHARD: &str = "bench";
/// Keys of one client live in their own block.
const KEYS_PER_CLIENT: i64 = 100_000_000;

/// Runs every phase and prints the table.
pub async fn run(b: NodeBench) -> Result<(), String> {
    let tmp;
    let mut child = None;
    let (binary, http) = match (b.binary, b.http) {
        // A running node: its secret comes in SHARDGATE_SECRET_FILE.
        (Some(bin), Some(http)) => {
            crate::security::process_secret()?;
            (bin, http)
        }
        _ => {
            let dir = match &b.data_dir {
                Some(d) => d.clone(),
                None => {
                    tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
                    tmp.path().to_path_buf()
                }
            };
            let (c, bin, http) = spawn_node(&dir, "BenchNode").await?;
            child = Some(c);
            (bin, http)
        }
    };
    let result = phases(&b, binary, http).await;
    if let Some(mut c) = child {
        let _ = c.kill().await;
    }
    let mut table = result?;
    if b.replicas > 0 {
        table.push(replicated(&b).await?);
    }
    println!("| phase | clients | ops/s | p50 | p99 |");
    println!("|---|---:|---:|---:|---:|");
    for line in table {
        println!("{line}");
    }
    Ok(())
}

async fn spawn_node(
    dir: &std::path::Path,
    name: &str,
) -> Result<(tokio::process::Child, SocketAddr, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // The node's secret is this process's own, so the benchmark's clients get in.
    let secret = crate::security::share_secret(dir)?;
    let mut child = tokio::process::Command::new(exe)
        .env_remove("SHARDGATE_ADMIN_TOKEN")
        .env_remove("SHARDGATE_ADMIN_TOKEN_FILE")
        .env("SHARDGATE_SECRET_FILE", &secret)
        .args(["node", "--name", name, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the node: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    tokio::io::BufReader::new(stdout).read_line(&mut line).await.map_err(|e| e.to_string())?;
    let field = |k: &str| -> Result<SocketAddr, String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .ok_or_else(|| format!("node did not report {k}: {line:?}"))?
            .parse()
            .map_err(|e| format!("bad address in {line:?}: {e}"))
    };
    Ok((child, field("binary=")?, field("http=")?))
}

fn row(key: i64) -> Row {
    Row {
        key,
        values: vec![Value::Int(key), Value::Str(format!("name{key}")), Value::Int(key % 100)],
    }
}

/// Durable writes through the primary of a shard replicated on `b.replicas` node processes.
async fn replicated(b: &NodeBench) -> Result<String, String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut children = Vec::new();
    let mut replicas = Vec::new();
    for i in 0..b.replicas {
        let dir = tmp.path().join(format!("r{i}"));
        let name = format!("BenchReplica{i}");
        let (c, bin, _) = spawn_node(&dir, &name).await?;
        children.push(c);
        replicas.push(protocol::Replica { name, addr: bin.to_string() });
    }
    let result = async {
        let mut conns = Vec::new();
        for r in &replicas {
            let c = client::Connection::connect(r.addr.as_str(), "bench")
                .await
                .map_err(|e| e.to_string())?;
            c.call(Request::Config(ConfigReq {
                schema: bench_schema(),
                shards: vec![ShardSpec::with_range(SHARD, 0, 1 << 40)],
            }))
            .await
            .map_err(|e| format!("configure: {e}"))?;
            c.call(Request::Adopt(protocol::AdoptReq { shard: SHARD.into(), epoch: 1 }))
                .await
                .map_err(|e| e.to_string())?;
            conns.push(c);
        }
        let voters = replicas.clone();
        conns[0]
            .call(Request::Promote(protocol::PromoteReq {
                shard: SHARD.into(),
                epoch: 1,
                voters: voters.clone(),
                learners: vec![],
                quorum: protocol::Quorum::Majority,
            }))
            .await
            .map_err(|e| format!("promote: {e}"))?;
        for c in &conns[1..] {
            c.call(Request::Follow(protocol::FollowReq {
                shard: SHARD.into(),
                epoch: 1,
                primary: voters[0].clone(),
            }))
            .await
            .map_err(|e| format!("follow: {e}"))?;
        }
        let primary: SocketAddr = replicas[0].addr.parse().map_err(|e| format!("{e}"))?;
        let r = run_phase(
            b.clients,
            Duration::from_secs_f64(b.seconds),
            single_row_write,
            primary,
            primary,
        )
        .await?;
        Ok::<_, String>(
            r.line(&format!("binary write, 1 row, {} replicas, majority", b.replicas), b.clients),
        )
    }
    .await;
    for mut c in children {
        let _ = c.kill().await;
    }
    result
}

/// Client `c`'s `i`-th durable single-row write (keys of one client never collide).
fn single_row_write(c: usize, i: u64) -> Op {
    let key = c as i64 * KEYS_PER_CLIENT + i as i64;
    Op::Binary(Request::Write(WriteReq {
        shard: SHARD.into(),
        curr_idx: None,
        rows: vec![row(key)],
    }))
}

fn bench_schema() -> Schema {
    Schema {
        columns: vec!["Stud_id".into(), "Stud_name".into(), "Stud_marks".into()],
        dtypes: vec![protocol::DType::Number, protocol::DType::String, protocol::DType::String],
    }
}

async fn phases(
    b: &NodeBench,
    binary: SocketAddr,
    http: SocketAddr,
) -> Result<Vec<String>, String> {
    let setup = client::Connection::connect(binary, "bench").await.map_err(|e| e.to_string())?;
    let schema = bench_schema();
    setup
        .call(Request::Config(ConfigReq {
            schema,
            shards: vec![ShardSpec::with_range(SHARD, 0, 1 << 40)],
        }))
        .await
        .map_err(|e| format!("configure: {e}"))?;
    let dur = Duration::from_secs_f64(b.seconds);
    let mut out = Vec::new();

    let written = run_phase(b.clients, dur, single_row_write, binary, http).await?;
    out.push(written.line("binary write, 1 row, durable", b.clients));

    let http_written = run_phase(b.clients, dur, |c, i| {
        let key = c as i64 * KEYS_PER_CLIENT + KEYS_PER_CLIENT / 2 + i as i64;
        Op::Http("POST", "/write", json!({"shard": SHARD, "data": [{"Stud_id": key, "Stud_name": format!("name{key}"), "Stud_marks": key % 100}]}))
    }, binary, http)
    .await?;
    out.push(http_written.line("http write, 1 row, durable", b.clients));

    let span = b.read_span;
    let per_client = written.per_client.clone();
    let read_key = move |c: usize, i: u64| {
        let n = per_client.get(c).copied().unwrap_or(1).max(1);
        c as i64 * KEYS_PER_CLIENT + (i % n) as i64
    };
    let rk = read_key.clone();
    let reads = run_phase(
        b.clients,
        dur,
        move |c, i| {
            let low = rk(c, i);
            Op::Binary(Request::Read(ReadReq {
                shard: SHARD.into(),
                low,
                high: low + span - 1,
                min_lsn: 0,
                consistency: protocol::Consistency::Default,
            }))
        },
        binary,
        http,
    )
    .await?;
    out.push(reads.line(&format!("binary range read, {span} keys"), b.clients));
    let http_reads = run_phase(
        b.clients,
        dur,
        move |c, i| {
            let low = read_key(c, i);
            Op::Http(
                "POST",
                "/read",
                json!({"shard": SHARD, "Stud_id": {"low": low, "high": low + span - 1}}),
            )
        },
        binary,
        http,
    )
    .await?;
    out.push(http_reads.line(&format!("http range read, {span} keys"), b.clients));
    Ok(out)
}

enum Op {
    Binary(Request),
    Http(&'static str, &'static str, serde_json::Value),
    /// A GET without a body.
    Get(&'static str),
}

struct PhaseResult {
    ops: u64,
    elapsed: Duration,
    latencies_us: Vec<u32>,
    per_client: Vec<u64>,
}

impl PhaseResult {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// The rounds of one phase as one (rate and percentiles over all of them).
    fn merge(rounds: Vec<PhaseResult>) -> PhaseResult {
        let mut all = PhaseResult {
            ops: 0,
            elapsed: Duration::ZERO,
            latencies_us: vec![],
            per_client: vec![],
        };
        for r in rounds {
            all.ops += r.ops;
            all.elapsed += r.elapsed;
            all.latencies_us.extend(r.latencies_us);
            all.per_client.extend(r.per_client);
        }
        all
    }

    fn line(&self, name: &str, clients: usize) -> String {
        let p = Percentiles::of(&self.latencies_us);
        format!(
            "| {name} | {clients} | {:.0} | {:.2} ms | {:.2} ms |",
            self.rate(),
            p.p50_ms,
            p.p99_ms
        )
    }
}

/// The median of `xs` and their smallest and largest (zeros when empty).
fn median_and_range(xs: &[f64]) -> (f64, f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let (Some(&low), Some(&high)) = (v.first(), v.last()) else { return (0.0, 0.0, 0.0) };
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 };
    (median, low, high)
}

/// Latency percentiles of one phase (every benchmark reports these two).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Percentiles {
    /// Median, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
}

impl Percentiles {
    /// From latency samples in microseconds (any order; none gives zeros).
    pub fn of(latencies_us: &[u32]) -> Percentiles {
        let mut l = latencies_us.to_vec();
        l.sort_unstable();
        Percentiles {
            p50_ms: percentile(&l, 0.50) as f64 / 1000.0,
            p99_ms: percentile(&l, 0.99) as f64 / 1000.0,
        }
    }
}

/// The `p` quantile (0..=1) of `sorted` by the nearest-rank rule; 0 when empty.
pub(crate) fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted.get(i).copied().unwrap_or_default()
}

/// A latency in microseconds, saturated to what a sample holds.
pub(crate) fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

async fn run_phase<F>(
    clients: usize,
    dur: Duration,
    make: F,
    binary: SocketAddr,
    http: SocketAddr,
) -> Result<PhaseResult, String>
where
    F: Fn(usize, u64) -> Op + Send + Sync + Clone + 'static,
{
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut bin_conn = None;
            let mut http_conn = None;
            let mut i = 0u64;
            while Instant::now() < deadline {
                let op = make(c, i);
                let t = Instant::now();
                match op {
                    Op::Binary(req) => {
                        if bin_conn.is_none() {
                            bin_conn = Some(
                                client::Connection::connect(binary, "bench")
                                    .await
                                    .map_err(|e| e.to_string())?,
                            );
                        }
                        let conn = bin_conn.as_ref().ok_or("no connection")?;
                        conn.call(req).await.map_err(|e| format!("binary call failed: {e}"))?;
                    }
                    Op::Http(method, path, body) => {
                        if http_conn.is_none() {
                            http_conn = Some(
                                client::HttpClient::connect(http)
                                    .await
                                    .map_err(|e| e.to_string())?,
                            );
                        }
                        let conn = http_conn.as_mut().ok_or("no connection")?;
                        let (status, reply) = conn
                            .json(method, path, Some(&body))
                            .await
                            .map_err(|e| e.to_string())?;
                        if status != 200 {
                            return Err(format!("http {path} answered {status}: {reply}"));
                        }
                    }
                    Op::Get(path) => {
                        if http_conn.is_none() {
                            http_conn = Some(
                                client::HttpClient::connect(http)
                                    .await
                                    .map_err(|e| e.to_string())?,
                            );
                        }
                        let conn = http_conn.as_mut().ok_or("no connection")?;
                        let reply =
                            conn.request("GET", path, &[]).await.map_err(|e| e.to_string())?;
                        if reply.status != 200 {
                            return Err(format!("GET {path} answered {}", reply.status));
                        }
                    }
                }
                lat.push(micros(t.elapsed()));
                i += 1;
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut all = Vec::new();
    let mut per_client = Vec::new();
    for t in tasks {
        let lat = t.await.map_err(|e| e.to_string())??;
        per_client.push(lat.len() as u64);
        all.extend(lat);
    }
    Ok(PhaseResult {
        ops: all.len() as u64,
        elapsed: start.elapsed(),
        latencies_us: all,
        per_client,
    })
}

/// `shardgate bench lb`: GET /home through the router against the same load sent straight
/// to one node, from keep-alive HTTP clients.
#[derive(clap::Args, Debug, Clone)]
pub struct LbBench {
    /// Concurrent clients (each with its own keep-alive connection).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds each phase runs.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Rounds of the two phases, in turn (direct first in odd rounds, routed first in even
    /// ones): the ratio reported is the median of the rounds' ratios, so a burst of noise on
    /// a shared machine during one phase does not decide it.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Replicas behind the router.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// The router's hash family (see `shardgate up --help`).
    #[arg(long, default_value = "assignment")]
    hash: String,
    /// The router's front threads (`shardgate up --router-threads`; default: one per core).
    #[arg(long)]
    router_threads: Option<usize>,
}

/// Runs both phases and prints the table with the router's cost as a ratio.
pub async fn run_lb(b: LbBench) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (mut node, _, node_http) = spawn_node(&tmp.path().join("direct"), "Direct").await?;
    let threads = b.router_threads.map(|n| n.to_string());
    let mut up_args = vec!["--hash", b.hash.as_str()];
    if let Some(n) = &threads {
        up_args.extend(["--router-threads", n.as_str()]);
    }
    let up = crate::procs::UpChild::start(b.servers, &up_args, "warn").await?;
    let router = up.http;
    let result = async {
        // Wait (bounded) until every replica is up.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut c = client::HttpClient::connect(router).await.map_err(|e| e.to_string())?;
        loop {
            let (_, rep) = c.json("GET", "/rep", None).await.map_err(|e| e.to_string())?;
            if rep["message"]["N"].as_u64() == Some(b.servers as u64) {
                break;
            }
            if Instant::now() > deadline {
                return Err("the replicas did not come up".to_string());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let dur = Duration::from_secs_f64(b.seconds);
        let mut direct = Vec::new();
        let mut routed = Vec::new();
        for round in 0..b.rounds.max(1) {
            let home = |_: usize, _: u64| Op::Get("/home");
            if round % 2 == 0 {
                direct.push(run_phase(b.clients, dur, home, node_http, node_http).await?);
                routed.push(run_phase(b.clients, dur, home, router, router).await?);
            } else {
                routed.push(run_phase(b.clients, dur, home, router, router).await?);
                direct.push(run_phase(b.clients, dur, home, node_http, node_http).await?);
            }
        }
        let ratios: Vec<f64> =
            direct.iter().zip(&routed).map(|(d, r)| r.rate() / d.rate()).collect();
        let (median, low, high) = median_and_range(&ratios);
        Ok::<_, String>(vec![
            PhaseResult::merge(direct).line("GET /home straight to one node", b.clients),
            PhaseResult::merge(routed).line(
                &format!("GET /home through the router ({} replicas, {})", b.servers, b.hash),
                b.clients,
            ),
            format!(
                "\nrouter / direct throughput: {median:.2}x, median of {} rounds of {}s per \
                 phase (rounds: {low:.2}x to {high:.2}x); the router costs {:.0}%",
                ratios.len(),
                b.seconds,
                100.0 * (1.0 - median)
            ),
        ])
    }
    .await;
    // SIGTERM lets up stop its replicas itself; the guard kills whatever is left.
    up.stop().await;
    let _ = node.kill().await;
    let lines = result?;
    println!("| phase | clients | ops/s | p50 | p99 |");
    println!("|---|---:|---:|---:|---:|");
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_range_of_rounds() {
        assert_eq!(median_and_range(&[0.7, 0.5, 0.9]), (0.7, 0.5, 0.9));
        assert_eq!(median_and_range(&[0.8, 0.6, 0.5, 0.9]), (0.7, 0.5, 0.9));
        assert_eq!(median_and_range(&[]), (0.0, 0.0, 0.0));
    }
}
