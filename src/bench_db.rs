//! `shardgate bench db`: the assignment's database analyses, measured through the router's
//! HTTP endpoints on a cluster this command starts itself.
//!
//! - the contract's default configuration (N = 6, 4 shards of 4096 ids, 3 replicas each).
//! - the same 4 shards with 7 replicas each, on 7 servers (each holds every shard).
//! - 10 servers, 6 shards of 4096 ids, 8 replicas each (placed round-robin: 8 servers
//!   hold 5 shards, 2 hold 4).
//!
//! For each configuration and each `--connections` value, a fresh `shardgate up --servers 0`
//! (temp dir, loopback ports it picks) gets the configuration with `POST /init`; then
//! `--rows` single-row `POST /write`s of distinct random Stud_ids drawn from the whole range,
//! then as many single-key `POST /read`s (`low == high`) of the acknowledged ids in another
//! random order, each phase over that many keep-alive connections ([`client::Db`]). Every
//! read must return exactly its row; afterwards every shard is read whole and compared with
//! what was acknowledged (no row missing, none changed, none that was never written).
//!
//! `--failover N` then kills (SIGKILL) the primary of a shard N times on the first cluster
//! while writers write to that shard, and measures the time from the kill to the first
//! acknowledged write that was sent after it; the killed node must come back and the shard
//! be whole again before the next run. The rows acknowledged there are checked too.
//!
//! The command fails (non-zero exit) when an acknowledged row is missing or wrong, or any
//! write or read outside the failover phase failed; the tables are printed (and written)
//! first either way.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use client::{Db, DbError, DbOptions};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value as Json};

use crate::bench::{micros, Percentiles};
use crate::procs::{poll, UpChild};
use crate::progress::Progress;

/// Flags of `bench db`.
#[derive(clap::Args, Debug, Clone)]
pub struct DbBench {
    /// Rows written (one POST /write each) and then read (one POST /read each) per run.
    #[arg(long, default_value_t = 10_000)]
    pub rows: usize,
    /// Concurrent keep-alive HTTP connections; a list (64,256) runs every configuration once
    /// per value, each on a fresh cluster.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    pub connections: Vec<usize>,
    /// The configurations to run (a1: default, a2: 7 replicas, a3: 10 servers, 6 shards, 8
    /// replicas).
    #[arg(long, value_delimiter = ',', default_value = "a1,a2,a3")]
    pub configs: Vec<ConfigName>,
    /// Kill -9 a shard's primary this many times while writers write (on the first
    /// cluster, shards in turn); 0 skips the failover phase.
    #[arg(long, default_value_t = 0)]
    pub failover: usize,
    /// Concurrent writers during the failover phase.
    #[arg(long, default_value_t = 8)]
    pub failover_writers: usize,
    /// Seed of the random Stud_ids and read order.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write results.md and results.csv (and failover.csv) into this directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The router's door the client uses: `http` (the contract's JSON endpoints, one
    /// keep-alive connection per call in flight) or `binary` (the Rust client over the binary
    /// protocol: every call pipelined on one connection).
    #[arg(long, default_value = "http")]
    pub door: Door,
}

/// Which of the router's doors `bench db` sends its requests through.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Door {
    /// HTTP/1.1 JSON.
    Http,
    /// The binary protocol.
    Binary,
}

/// One of the assignment's configurations.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigName {
    /// The contract's default: 6 servers, 4 shards, 3 replicas per shard.
    A1,
    /// 4 shards with 7 replicas each, on 7 servers.
    A2,
    /// 10 servers, 6 shards, 8 replicas each.
    A3,
}

/// Ids per shard in every configuration (the contract's Shard_size).
const SHARD_SIZE: i64 = 4096;
/// How long a fresh cluster may take until every shard has a primary and all its replicas.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Limit on one call of the benchmark's client.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Writes acknowledged in a failover run before the primary is killed.
const FAILOVER_WARMUP_WRITES: u64 = 20;
/// Limit on the wait for the first write after a kill.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Limit on the killed node's return (respawned, caught up, a voter again).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// Error messages kept per phase for the report.
const MAX_ERROR_SAMPLES: usize = 5;

/// A configuration's layout.
#[derive(Clone, Debug)]
struct Layout {
    name: &'static str,
    /// Shard ids in range order; shard `i` holds `[i * SHARD_SIZE, (i + 1) * SHARD_SIZE)`.
    shards: Vec<String>,
    servers: BTreeMap<String, Vec<String>>,
    replicas: usize,
}

impl Layout {
    fn of(name: ConfigName) -> Layout {
        match name {
            ConfigName::A1 => {
                // The contract's default configuration, server names included.
                let servers = [
                    ("Server0", ["sh1", "sh2"]),
                    ("Server1", ["sh3", "sh4"]),
                    ("Server3", ["sh1", "sh3"]),
                    ("Server4", ["sh4", "sh2"]),
                    ("Server5", ["sh1", "sh4"]),
                    ("Server6", ["sh3", "sh2"]),
                ];
                Layout {
                    name: "A-1",
                    shards: (1..=4).map(|i| format!("sh{i}")).collect(),
                    servers: servers
                        .iter()
                        .map(|(s, sh)| (s.to_string(), sh.iter().map(|x| x.to_string()).collect()))
                        .collect(),
                    replicas: 3,
                }
            }
            ConfigName::A2 => Layout::round_robin("A-2", 7, 4, 7),
            ConfigName::A3 => Layout::round_robin("A-3", 10, 6, 8),
        }
    }

    /// Shard `s` on servers `(s * replicas + j) mod servers`, `j < replicas`: as even as it
    /// gets (every server holds `shards * replicas / servers` shards, rounded up or down).
    fn round_robin(name: &'static str, servers: usize, shards: usize, replicas: usize) -> Layout {
        let mut map: BTreeMap<String, Vec<String>> =
            (0..servers).map(|i| (format!("Server{i}"), Vec::new())).collect();
        for s in 0..shards {
            for j in 0..replicas {
                let server = format!("Server{}", (s * replicas + j) % servers);
                map.entry(server).or_default().push(format!("sh{}", s + 1));
            }
        }
        Layout {
            name,
            shards: (1..=shards).map(|i| format!("sh{i}")).collect(),
            servers: map,
            replicas,
        }
    }

    fn range(&self) -> i64 {
        self.shards.len() as i64 * SHARD_SIZE
    }

    /// The `POST /init` body.
    fn init_body(&self) -> Json {
        let shards: Vec<Json> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                json!({"Stud_id_low": i as i64 * SHARD_SIZE, "Shard_id": s, "Shard_size": SHARD_SIZE})
            })
            .collect();
        json!({
            "N": self.servers.len(),
            "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"],
                       "dtypes": ["Number", "String", "String"]},
            "shards": shards,
            "servers": self.servers,
        })
    }
}

/// The row written for Stud_id `id`.
fn row(id: i64) -> Json {
    json!({"Stud_id": id, "Stud_name": format!("S{id}"), "Stud_marks": id % 100})
}

/// A number as written (a JSON number or a string of digits).
fn int(v: &Json) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// Whether `got` is the row written for `id`.
fn is_row(got: &Json, id: i64) -> bool {
    int(&got["Stud_id"]) == Some(id)
        && got["Stud_name"].as_str() == Some(format!("S{id}").as_str())
        && int(&got["Stud_marks"]) == Some(id % 100)
}

/// One line of the results: a phase of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseRow {
    /// "A-1", "A-2", "A-3".
    pub config: String,
    /// Servers in the configuration.
    pub servers: usize,
    /// Shards.
    pub shards: usize,
    /// Replicas per shard.
    pub replicas: usize,
    /// Concurrent connections.
    pub connections: usize,
    /// "write" or "read".
    pub phase: String,
    /// Operations sent (one row each).
    pub rows: u64,
    /// Operations that failed (no acknowledgement, or a read without its row).
    pub errors: u64,
    /// From the first request sent to the last answer.
    pub wall_s: f64,
    /// Successful operations per second of wall time.
    pub rows_per_s: f64,
    /// Latency percentiles of the successful operations.
    pub latency: Percentiles,
}

/// One failover run.
#[derive(Clone, Debug, PartialEq)]
pub struct FailoverRun {
    /// 1-based.
    pub run: usize,
    /// The shard whose primary was killed.
    pub shard: String,
    /// The server killed.
    pub killed: String,
    /// The shard's primary afterwards.
    pub new_primary: String,
    /// From SIGKILL to the first acknowledged write sent after it.
    pub kill_to_write_ms: f64,
    /// Writes that failed during the run.
    pub refused: u64,
    /// Writes acknowledged during the run (before and after the kill).
    pub acked: u64,
    /// From SIGKILL until the killed server ran again, every shard had all its replicas live,
    /// and the killed server answered `/read/<server>` with every acknowledged row of the shard.
    pub recovered_ms: f64,
}

/// What a whole `bench db` found.
#[derive(Clone, Debug, Default)]
pub struct DbReport {
    /// When it ran (UTC).
    pub date: String,
    /// The 1-minute load average when it started ("" when unknown): the machine is shared.
    pub load: String,
    /// Rows per run.
    pub rows: usize,
    /// The seed of the ids.
    pub seed: u64,
    /// Concurrent writers of the failover phase.
    pub failover_writers: usize,
    /// The router's door the requests went through ("" = HTTP).
    pub door: String,
    /// Every phase of every run.
    pub phases: Vec<PhaseRow>,
    /// Every failover run.
    pub failover: Vec<FailoverRun>,
    /// Correctness findings, one line each (empty when every acknowledged row was found).
    pub problems: Vec<String>,
    /// Other notes (per-run verification figures, error samples).
    pub notes: Vec<String>,
}

/// Runs `bench db`: prints the tables, writes them with `--out`, fails on any problem.
pub async fn run(b: DbBench) -> Result<(), String> {
    let progress = Progress::start();
    let report = measure(&b, &progress).await;
    progress.finish();
    let report = report?;
    let md = markdown(&report);
    print!("{md}");
    if let Some(dir) = &b.out {
        write_outputs(dir, &report)?;
        eprintln!("wrote {}/{{results.md,results.csv,failover.csv}}", dir.display());
    }
    verdict(&report)
}

/// Non-zero exit when the report found a problem.
pub fn verdict(report: &DbReport) -> Result<(), String> {
    if report.problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "bench db found {} problem(s):\n  {}",
            report.problems.len(),
            report.problems.join("\n  ")
        ))
    }
}

/// Runs every configuration (and the failover phase); the report (a run that could not go
/// on ends the benchmark with a problem in it), or an error in the flags.
pub async fn measure(b: &DbBench, progress: &Progress) -> Result<DbReport, String> {
    if b.rows == 0 || b.connections.is_empty() || b.connections.contains(&0) {
        return Err("need --rows >= 1 and every --connections >= 1".into());
    }
    if b.configs.is_empty() {
        return Err("need at least one --configs".into());
    }
    let mut report = DbReport {
        date: utc_now(),
        load: load_average(),
        rows: b.rows,
        seed: b.seed,
        failover_writers: b.failover_writers,
        door: match b.door {
            Door::Http => String::new(),
            Door::Binary => "binary".into(),
        },
        ..DbReport::default()
    };
    let mut first = true;
    for &name in &b.configs {
        let layout = Layout::of(name);
        if b.rows as i64 > layout.range() {
            return Err(format!(
                "--rows {} is more than the {} ids of {}",
                b.rows,
                layout.range(),
                layout.name
            ));
        }
        for &conns in &b.connections {
            let failover = if first { b.failover } else { 0 };
            first = false;
            // A run that cannot go on (a cluster that does not start, a failover that does
            // not end) is a problem of the report: what was measured before is kept.
            if let Err(e) = one_run(b, &layout, conns, failover, progress, &mut report).await {
                report.problems.push(format!("{} x{conns} stopped: {e}", layout.name));
                return Ok(report);
            }
        }
    }
    Ok(report)
}

/// What the client knows each id should be after a run.
#[derive(Default)]
struct Expect {
    /// Acknowledged: the row must be there.
    acked: HashSet<i64>,
    /// Sent without a clear answer: the row may or may not be there.
    maybe: HashSet<i64>,
    /// Every id sent in a write.
    sent: HashSet<i64>,
}

/// One configuration at one connection count, on a fresh cluster.
async fn one_run(
    b: &DbBench,
    layout: &Layout,
    conns: usize,
    failover: usize,
    progress: &Progress,
    report: &mut DbReport,
) -> Result<(), String> {
    let tag = format!("{} x{conns}", layout.name);
    progress.stage(format!("{tag}: starting the cluster"), 0);
    let up = UpChild::start(0, &[], "warn").await?;
    let result = async {
        // Options the client may gain later keep their defaults.
        #[allow(clippy::needless_update)]
        let options = DbOptions {
            max_connections: conns,
            request_timeout: CALL_TIMEOUT,
            ..DbOptions::default()
        };
        let db = match b.door {
            Door::Http => Db::connect_with(up.http, options).await,
            Door::Binary => Db::connect_binary_with(up.binary, options).await,
        }
        .map_err(|e| format!("cannot reach the router at {}: {e}", up.http))?;
        db.init(&layout.init_body()).await.map_err(|e| format!("{tag}: POST /init: {e}"))?;
        wait_ready(up.http, &db, layout).await.map_err(|e| format!("{tag}: {e}"))?;

        let mut rng = StdRng::seed_from_u64(b.seed);
        let ids: Vec<i64> = rand::seq::index::sample(&mut rng, layout.range() as usize, b.rows)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        warm_up(&db, conns).await;
        let mut expect = Expect::default();

        progress.stage(format!("{tag}: writes"), ids.len() as u64);
        let writes = run_ops(conns, Arc::new(ids.clone()), progress, {
            let db = db.clone();
            move |id| {
                let db = db.clone();
                async move { write_one(&db, id).await }
            }
        })
        .await?;
        let mut w = PhaseTally::default();
        for (id, lat, outcome) in &writes.ops {
            expect.sent.insert(*id);
            match outcome {
                WriteOutcome::Acked => {
                    expect.acked.insert(*id);
                    w.ok(*lat);
                }
                WriteOutcome::Refused(e) => w.err(e),
                WriteOutcome::Unknown(e) => {
                    expect.maybe.insert(*id);
                    w.err(e)
                }
            }
        }
        report.phases.push(w.row(layout, conns, "write", writes.wall));
        w.note_errors(report, &tag, "write");

        let mut read_ids: Vec<i64> = ids.iter().copied().filter(|i| expect.acked.contains(i)).collect();
        read_ids.shuffle(&mut rng);
        progress.stage(format!("{tag}: reads"), read_ids.len() as u64);
        let reads = run_ops(conns, Arc::new(read_ids), progress, {
            let db = db.clone();
            move |id| {
                let db = db.clone();
                async move { read_one(&db, id).await }
            }
        })
        .await?;
        let mut r = PhaseTally::default();
        let mut missing = 0u64;
        for (id, lat, outcome) in &reads.ops {
            match outcome {
                Ok(()) => r.ok(*lat),
                Err(ReadFailure::Missing(e)) => {
                    missing += 1;
                    r.err(&format!("Stud_id {id}: {e}"))
                }
                Err(ReadFailure::Error(e)) => r.err(e),
            }
        }
        report.phases.push(r.row(layout, conns, "read", reads.wall));
        r.note_errors(report, &tag, "read");
        if missing > 0 {
            report.problems.push(format!(
                "{tag}: {missing} acknowledged row(s) not returned (or returned wrong) by a single-key read"
            ));
        }
        if w.errors > 0 {
            report.problems.push(format!("{tag}: {} write(s) not acknowledged", w.errors));
        }
        if r.errors > missing {
            report.problems.push(format!("{tag}: {} read(s) failed", r.errors - missing));
        }

        progress.stage(format!("{tag}: verifying every shard"), 0);
        let v = verify(&db, layout, &expect).await?;
        report.notes.push(format!("{tag}: {}", v.summary()));
        report.problems.extend(v.problems().into_iter().map(|p| format!("{tag}: {p}")));

        if failover > 0 {
            let runs = failover_runs(&up, &db, layout, &mut expect, failover, b, progress, &tag)
                .await?;
            report.failover.extend(runs);
            progress.stage(format!("{tag}: verifying every shard after the failovers"), 0);
            let v = verify(&db, layout, &expect).await?;
            report.notes.push(format!("{tag}, after {failover} failover(s): {}", v.summary()));
            report.problems.extend(
                v.problems().into_iter().map(|p| format!("{tag}, after the failovers: {p}")),
            );
        }
        Ok::<_, String>(())
    }
    .await;
    let result = result.map_err(|e| format!("{e}{}", up.tail(30)));
    up.stop().await;
    result
}

/// Counts of one phase.
#[derive(Default)]
struct PhaseTally {
    latencies_us: Vec<u32>,
    errors: u64,
    samples: Vec<String>,
}

impl PhaseTally {
    fn ok(&mut self, lat_us: u32) {
        self.latencies_us.push(lat_us);
    }

    fn err(&mut self, e: &str) {
        self.errors += 1;
        if self.samples.len() < MAX_ERROR_SAMPLES {
            self.samples.push(e.to_string());
        }
    }

    fn row(&self, layout: &Layout, conns: usize, phase: &str, wall: Duration) -> PhaseRow {
        let ok = self.latencies_us.len() as u64;
        PhaseRow {
            config: layout.name.to_string(),
            servers: layout.servers.len(),
            shards: layout.shards.len(),
            replicas: layout.replicas,
            connections: conns,
            phase: phase.to_string(),
            rows: ok + self.errors,
            errors: self.errors,
            wall_s: wall.as_secs_f64(),
            rows_per_s: ok as f64 / wall.as_secs_f64().max(1e-9),
            latency: Percentiles::of(&self.latencies_us),
        }
    }

    fn note_errors(&self, report: &mut DbReport, tag: &str, phase: &str) {
        for s in &self.samples {
            report.notes.push(format!("{tag} {phase} error: {s}"));
        }
    }
}

enum WriteOutcome {
    Acked,
    /// Refused with a 4xx: not written.
    Refused(String),
    /// No answer or a 5xx: it may have been written.
    Unknown(String),
}

async fn write_one(db: &Db, id: i64) -> WriteOutcome {
    match db.write(&[row(id)]).await {
        Ok(1) => WriteOutcome::Acked,
        Ok(n) => WriteOutcome::Unknown(format!("Stud_id {id}: /write said {n} entries added")),
        Err(e) => classify(id, e),
    }
}

fn classify(id: i64, e: DbError) -> WriteOutcome {
    if (400..500).contains(&e.status) {
        WriteOutcome::Refused(format!("Stud_id {id}: {e}"))
    } else {
        WriteOutcome::Unknown(format!("Stud_id {id}: {e}"))
    }
}

enum ReadFailure {
    /// The answer came, without the row (or with another one).
    Missing(String),
    /// No answer.
    Error(String),
}

async fn read_one(db: &Db, id: i64) -> Result<(), ReadFailure> {
    match db.read(id, id).await {
        Ok(rows) if rows.len() == 1 && is_row(&rows[0], id) => Ok(()),
        Ok(rows) => Err(ReadFailure::Missing(format!(
            "expected its row, got {}",
            Json::Array(rows.into_iter().take(3).collect())
        ))),
        Err(e) => Err(ReadFailure::Error(format!("read of Stud_id {id}: {e}"))),
    }
}

/// The outcomes of one phase: (id, latency in µs, outcome), in completion order.
struct Ops<R> {
    wall: Duration,
    ops: Vec<(i64, u32, R)>,
}

/// Runs `op` once for every id over `conns` concurrent tasks (each takes the next id).
async fn run_ops<R, F, Fut>(
    conns: usize,
    ids: Arc<Vec<i64>>,
    progress: &Progress,
    op: F,
) -> Result<Ops<R>, String>
where
    R: Send + 'static,
    F: Fn(i64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = R> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns.min(ids.len().max(1)) {
        let (ids, next, op, progress) = (ids.clone(), next.clone(), op.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&id) = ids.get(i) else { break };
                let t = Instant::now();
                let r = op(id).await;
                out.push((id, micros(t.elapsed()), r));
                progress.inc(1);
            }
            out
        }));
    }
    let mut ops = Vec::with_capacity(ids.len());
    for t in tasks {
        ops.extend(t.await.map_err(|e| format!("a benchmark task failed: {e}"))?);
    }
    Ok(Ops { wall: start.elapsed(), ops })
}

/// Opens the pool's connections before the clock starts (reads of an empty range).
async fn warm_up(db: &Db, conns: usize) {
    let calls = (0..conns).map(|_| db.read(-2, -1));
    let _ = futures::future::join_all(calls).await;
}

/// Waits until every shard has a primary and every replica is live in the router's view.
async fn wait_ready(http: SocketAddr, db: &Db, layout: &Layout) -> Result<(), String> {
    let ready = poll(READY_TIMEOUT, Duration::from_millis(50), || async {
        let status = db.status().await.ok()?;
        let shards = status["shards"].as_array()?;
        let all_primaries = shards.len() == layout.shards.len()
            && shards.iter().all(|s| s["primary"].as_str().is_some_and(|p| !p.is_empty()));
        if !all_primaries {
            return None;
        }
        let live = live_replicas(http).await.ok()?;
        layout
            .shards
            .iter()
            .all(|s| live.get(s).copied() == Some(layout.replicas as u64))
            .then_some(())
    })
    .await;
    ready.ok_or_else(|| {
        format!("the cluster was not ready within {READY_TIMEOUT:?} (a shard without a primary or replicas)")
    })
}

/// `shardgate_db_shard_live_replicas` per shard, from the router's /metrics.
async fn live_replicas(http: SocketAddr) -> Result<HashMap<String, u64>, String> {
    let mut c = client::HttpClient::connect(http).await.map_err(|e| e.to_string())?;
    let reply = c.request("GET", "/metrics", b"").await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&reply.body);
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("shardgate_db_shard_live_replicas{shard=\""))
        .filter_map(|l| {
            let (shard, rest) = l.split_once("\"}")?;
            Some((shard.to_string(), rest.trim().parse().ok()?))
        })
        .collect())
}

/// What a whole-shard read found.
#[derive(Default)]
struct Verified {
    expected: usize,
    present: usize,
    missing: Vec<i64>,
    wrong: Vec<i64>,
    unexpected: Vec<i64>,
    duplicates: usize,
    maybe_present: usize,
}

impl Verified {
    fn summary(&self) -> String {
        format!(
            "whole-shard reads found {} rows: {} of {} acknowledged present, {} missing, {} \
             wrong, {} never written, {} duplicated{}",
            self.present,
            self.expected - self.missing.len(),
            self.expected,
            self.missing.len(),
            self.wrong.len(),
            self.unexpected.len(),
            self.duplicates,
            if self.maybe_present > 0 {
                format!(", {} unacknowledged writes present", self.maybe_present)
            } else {
                String::new()
            }
        )
    }

    fn problems(&self) -> Vec<String> {
        let few = |v: &[i64]| {
            let shown: Vec<String> = v.iter().take(10).map(i64::to_string).collect();
            shown.join(", ")
        };
        let mut p = Vec::new();
        if !self.missing.is_empty() {
            p.push(format!(
                "{} acknowledged row(s) missing from the whole-shard reads (Stud_id {})",
                self.missing.len(),
                few(&self.missing)
            ));
        }
        if !self.wrong.is_empty() {
            p.push(format!(
                "{} row(s) differ from what was written (Stud_id {})",
                self.wrong.len(),
                few(&self.wrong)
            ));
        }
        if !self.unexpected.is_empty() {
            p.push(format!(
                "{} row(s) that were never written (Stud_id {})",
                self.unexpected.len(),
                few(&self.unexpected)
            ));
        }
        if self.duplicates > 0 {
            p.push(format!("{} Stud_id(s) returned more than once", self.duplicates));
        }
        p
    }
}

/// Reads every shard whole (one range read each) and compares it with `expect`.
async fn verify(db: &Db, layout: &Layout, expect: &Expect) -> Result<Verified, String> {
    let mut seen: HashMap<i64, Json> = HashMap::new();
    let mut duplicates = 0;
    for i in 0..layout.shards.len() as i64 {
        let (low, high) = (i * SHARD_SIZE, (i + 1) * SHARD_SIZE - 1);
        let rows = db.read(low, high).await.map_err(|e| format!("read of {low}..={high}: {e}"))?;
        for r in rows {
            let Some(id) = int(&r["Stud_id"]) else {
                return Err(format!("a row without a Stud_id: {r}"));
            };
            if seen.insert(id, r).is_some() {
                duplicates += 1;
            }
        }
    }
    Ok(compare(&seen, duplicates, expect))
}

/// What the rows `seen` (Stud_id → row; `duplicates` ids came more than once) say against
/// what the client knows.
fn compare(seen: &HashMap<i64, Json>, duplicates: usize, expect: &Expect) -> Verified {
    let mut v = Verified { expected: expect.acked.len(), duplicates, ..Verified::default() };
    v.present = seen.len();
    let mut acked: Vec<i64> = expect.acked.iter().copied().collect();
    acked.sort_unstable();
    for id in acked {
        match seen.get(&id) {
            None => v.missing.push(id),
            Some(r) if !is_row(r, id) => v.wrong.push(id),
            Some(_) => {}
        }
    }
    let mut present: Vec<(&i64, &Json)> = seen.iter().collect();
    present.sort_unstable_by_key(|(id, _)| **id);
    for (&id, r) in present {
        if !expect.sent.contains(&id) {
            v.unexpected.push(id);
        } else if expect.maybe.contains(&id) {
            v.maybe_present += 1;
            if !is_row(r, id) {
                v.wrong.push(id);
            }
        }
    }
    v
}

/// One write of the failover phase.
struct Event {
    sent: Instant,
    done: Instant,
    id: i64,
    outcome: WriteOutcome,
}

/// `n` failover runs on the cluster `up`, shards in turn.
#[allow(clippy::too_many_arguments)]
async fn failover_runs(
    up: &UpChild,
    db: &Db,
    layout: &Layout,
    expect: &mut Expect,
    n: usize,
    b: &DbBench,
    progress: &Progress,
    tag: &str,
) -> Result<Vec<FailoverRun>, String> {
    // Ids no earlier write used, per shard.
    let mut free: Vec<VecDeque<i64>> = (0..layout.shards.len() as i64)
        .map(|s| {
            (s * SHARD_SIZE..(s + 1) * SHARD_SIZE).filter(|i| !expect.sent.contains(i)).collect()
        })
        .collect();
    let mut runs = Vec::new();
    for run in 1..=n {
        let s = (run - 1) % layout.shards.len();
        let shard = layout.shards[s].clone();
        progress.stage(format!("{tag}: failover {run}/{n} ({shard})"), 0);
        let (low, high) = (s as i64 * SHARD_SIZE, (s as i64 + 1) * SHARD_SIZE);
        let acked_before = expect.acked.iter().filter(|&&i| i >= low && i < high).count();
        let (r, events) = one_failover(
            up,
            db,
            layout,
            &shard,
            &mut free[s],
            b.failover_writers,
            run,
            acked_before,
        )
        .await?;
        for e in events {
            expect.sent.insert(e.id);
            match e.outcome {
                WriteOutcome::Acked => {
                    expect.acked.insert(e.id);
                }
                // A refused write may still have been applied by an earlier attempt of the
                // router (it retries through a new primary), so neither is "must be absent".
                WriteOutcome::Refused(_) | WriteOutcome::Unknown(_) => {
                    expect.maybe.insert(e.id);
                }
            }
        }
        progress.note(&format!(
            "failover {run}: killed {} (primary of {shard}); first write after {:.0} ms, new primary {}, {} refused",
            r.killed, r.kill_to_write_ms, r.new_primary, r.refused
        ));
        runs.push(r);
    }
    Ok(runs)
}

async fn primary_of(db: &Db, shard: &str) -> Option<String> {
    let status = db.status().await.ok()?;
    status["shards"].as_array()?.iter().find(|s| s["Shard_id"].as_str() == Some(shard))?["primary"]
        .as_str()
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

/// One failover run of `shard`; `acked_before` rows of it were acknowledged before.
#[allow(clippy::too_many_arguments)]
async fn one_failover(
    up: &UpChild,
    db: &Db,
    layout: &Layout,
    shard: &str,
    free: &mut VecDeque<i64>,
    writers: usize,
    run: usize,
    acked_before: usize,
) -> Result<(FailoverRun, Vec<Event>), String> {
    let killed = primary_of(db, shard).await.ok_or_else(|| format!("{shard} has no primary"))?;
    let pid = up
        .node_pid(&killed)
        .ok_or_else(|| format!("no live process for {killed} (primary of {shard})"))?;
    let queue = Arc::new(Mutex::new(std::mem::take(free)));
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let mut tasks = Vec::new();
    for _ in 0..writers.max(1) {
        let (db, queue, stop, acked, events) =
            (db.clone(), queue.clone(), stop.clone(), acked.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Some(id) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front() else {
                    break;
                };
                let sent = Instant::now();
                let outcome = write_one(&db, id).await;
                if matches!(outcome, WriteOutcome::Acked) {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                let e = Event { sent, done: Instant::now(), id, outcome };
                events.lock().unwrap_or_else(|e| e.into_inner()).push(e);
            }
        }));
    }
    let result = async {
        poll(FAILOVER_TIMEOUT, Duration::from_millis(2), || async {
            (acked.load(Ordering::Relaxed) >= FAILOVER_WARMUP_WRITES).then_some(())
        })
        .await
        .ok_or_else(|| {
            format!(
                "failover {run}: the writers got no {FAILOVER_WARMUP_WRITES} writes acknowledged"
            )
        })?;
        let killed_at = Instant::now();
        if !crate::procs::sigkill(pid) {
            return Err(format!("failover {run}: cannot SIGKILL {killed} (pid {pid})"));
        }
        // The first acknowledged write sent after the kill (writes in flight at the kill may
        // have committed before it, so they do not count).
        let first = poll(FAILOVER_TIMEOUT, Duration::from_millis(1), || async {
            let ev = events.lock().unwrap_or_else(|e| e.into_inner());
            ev.iter()
                .filter(|e| e.sent >= killed_at && matches!(e.outcome, WriteOutcome::Acked))
                .map(|e| e.done - killed_at)
                .min()
        })
        .await;
        Ok((killed_at, first))
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // Ids the writers did not take are free for the next run of this shard.
    *free = std::mem::take(&mut *queue.lock().unwrap_or_else(|e| e.into_inner()));
    let events = std::mem::take(&mut *events.lock().unwrap_or_else(|e| e.into_inner()));
    let (killed_at, first) = result?;
    let first = first.ok_or_else(|| {
        let refused: Vec<String> = events
            .iter()
            .filter_map(|e| match &e.outcome {
                WriteOutcome::Refused(m) | WriteOutcome::Unknown(m) => Some(m.clone()),
                WriteOutcome::Acked => None,
            })
            .take(3)
            .collect();
        format!(
            "failover {run}: no write to {shard} acknowledged within {FAILOVER_TIMEOUT:?} after \
             killing {killed} ({} ran out of ids: {}; errors: {refused:?})",
            shard,
            free.is_empty()
        )
    })?;
    let refused = events
        .iter()
        .filter(|e| e.done >= killed_at && !matches!(e.outcome, WriteOutcome::Acked))
        .count() as u64;
    let acked_n = events.iter().filter(|e| matches!(e.outcome, WriteOutcome::Acked)).count() as u64;
    // The new primary, then the killed server back (respawned, a live replica of every
    // shard again, and caught up: `/read/<server>` reads each of its shards on it at the
    // router's LSN floor, and must hold every row acknowledged so far) before the next run
    // may kill another replica.
    let new_primary = poll(Duration::from_secs(10), Duration::from_millis(20), || async {
        primary_of(db, shard).await.filter(|p| *p != killed)
    })
    .await
    .unwrap_or_else(|| "?".to_string());
    let must_have = acked_before + acked_n as usize;
    let back = poll(RECOVERY_TIMEOUT, Duration::from_millis(20), || async {
        let p = up.node_pid(&killed)?;
        if p == pid {
            return None;
        }
        let live = live_replicas(up.http).await.ok()?;
        let all_live =
            layout.shards.iter().all(|s| live.get(s).copied() == Some(layout.replicas as u64));
        if !all_live {
            return None;
        }
        let held = db.read_server(&killed).await.ok()?;
        (held.get(shard).map_or(0, Vec::len) >= must_have).then_some(())
    })
    .await;
    if back.is_none() {
        return Err(format!(
            "failover {run}: {killed} was not back with every shard whole within {RECOVERY_TIMEOUT:?}"
        ));
    }
    let run = FailoverRun {
        run,
        shard: shard.to_string(),
        killed,
        new_primary,
        kill_to_write_ms: first.as_secs_f64() * 1000.0,
        refused,
        acked: acked_n,
        recovered_ms: killed_at.elapsed().as_secs_f64() * 1000.0,
    };
    Ok((run, events))
}

/// The p50 of the failover runs' kill-to-write times (ms).
pub fn failover_p50(runs: &[FailoverRun]) -> f64 {
    let mut v: Vec<f64> = runs.iter().map(|r| r.kill_to_write_ms).collect();
    v.sort_by(f64::total_cmp);
    // Nearest rank, lower median for an even count.
    v.get((v.len().saturating_sub(1)) / 2).copied().unwrap_or(0.0)
}

/// The results as markdown (what `bench db` prints).
pub fn markdown(r: &DbReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## Database benchmark ({})\n", r.date);
    if !r.load.is_empty() {
        let _ = writeln!(
            s,
            "{} cores, load average {} when it started (the machine is shared).\n",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            r.load
        );
    }
    let _ = writeln!(
        s,
        "Per run: a fresh `shardgate up --servers 0` with the configuration by `POST /init`; {} \
         single-row `POST /write`s of distinct random Stud_ids over the whole range (seed {}), \
         then {} single-key `POST /read`s (`low == high`) of the acknowledged ids in another \
         random order, {}. Latencies are per request; rows/s = acknowledged rows / wall time.\n",
        r.rows,
        r.seed,
        r.rows,
        if r.door == "binary" {
            "through the router's binary door (`client::Db::connect_binary`: the same requests, \
             every one pipelined on a single connection; \"connections\" is the number of calls \
             in flight)"
        } else {
            "over keep-alive HTTP connections (`client::Db`)"
        }
    );
    let _ = writeln!(
        s,
        "| config | servers | shards | replicas/shard | connections | phase | rows | errors | wall s | rows/s | p50 ms | p99 ms |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|");
    for p in &r.phases {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} |",
            p.config,
            p.servers,
            p.shards,
            p.replicas,
            p.connections,
            p.phase,
            p.rows,
            p.errors,
            p.wall_s,
            p.rows_per_s,
            p.latency.p50_ms,
            p.latency.p99_ms
        );
    }
    if !r.failover.is_empty() {
        let _ = writeln!(
            s,
            "\n### Failover: SIGKILL of a shard's primary under {}concurrent writers\n",
            if r.failover_writers > 0 { format!("{} ", r.failover_writers) } else { String::new() }
        );
        let _ = writeln!(
            s,
            "| run | shard | killed | new primary | kill → first write ms | refused writes | acked writes | killed server back, caught up, after ms |"
        );
        let _ = writeln!(s, "|---:|---|---|---|---:|---:|---:|---:|");
        for f in &r.failover {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {:.0} | {} | {} | {:.0} |",
                f.run,
                f.shard,
                f.killed,
                f.new_primary,
                f.kill_to_write_ms,
                f.refused,
                f.acked,
                f.recovered_ms
            );
        }
        let mut t: Vec<f64> = r.failover.iter().map(|f| f.kill_to_write_ms).collect();
        t.sort_by(f64::total_cmp);
        let _ = writeln!(
            s,
            "\nkill → first acknowledged write sent after the kill: p50 {:.0} ms, min {:.0} ms, max {:.0} ms over {} run(s).",
            failover_p50(&r.failover),
            t.first().copied().unwrap_or(0.0),
            t.last().copied().unwrap_or(0.0),
            r.failover.len()
        );
    }
    let _ = writeln!(s, "\nVerification:");
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    if r.problems.is_empty() {
        let _ = writeln!(s, "- every acknowledged row was read back as written.");
    } else {
        for p in &r.problems {
            let _ = writeln!(s, "- PROBLEM: {p}");
        }
    }
    s
}

const PHASE_CSV_HEADER: &str =
    "config,servers,shards,replicas,connections,phase,rows,errors,wall_s,rows_per_s,p50_ms,p99_ms";
const FAILOVER_CSV_HEADER: &str =
    "run,shard,killed,new_primary,kill_to_write_ms,refused,acked,recovered_ms";

/// results.md, results.csv and (with failover runs) failover.csv in `dir`.
pub fn write_outputs(dir: &Path, r: &DbReport) -> Result<(), String> {
    crate::procs::ensure_dir(dir)?;
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    write("results.md", &markdown(r))?;
    let mut csv = format!("{PHASE_CSV_HEADER}\n");
    for p in &r.phases {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{},{:.4},{:.1},{:.3},{:.3}",
            p.config,
            p.servers,
            p.shards,
            p.replicas,
            p.connections,
            p.phase,
            p.rows,
            p.errors,
            p.wall_s,
            p.rows_per_s,
            p.latency.p50_ms,
            p.latency.p99_ms
        );
    }
    write("results.csv", &csv)?;
    if !r.failover.is_empty() {
        let mut csv = format!("{FAILOVER_CSV_HEADER}\n");
        for f in &r.failover {
            let _ = writeln!(
                csv,
                "{},{},{},{},{:.1},{},{},{:.1}",
                f.run,
                f.shard,
                f.killed,
                f.new_primary,
                f.kill_to_write_ms,
                f.refused,
                f.acked,
                f.recovered_ms
            );
        }
        write("failover.csv", &csv)?;
    }
    Ok(())
}

/// Reads results.csv (and failover.csv when present) back, as `write_outputs` wrote them.
pub fn read_csv(results: &Path) -> Result<DbReport, String> {
    let text = std::fs::read_to_string(results)
        .map_err(|e| format!("cannot read {}: {e}", results.display()))?;
    let bad = |n: usize, what: &str| format!("{}:{}: {what}", results.display(), n + 1);
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h.trim() == PHASE_CSV_HEADER => {}
        _ => return Err(bad(0, &format!("the header is not {PHASE_CSV_HEADER:?}"))),
    }
    let mut report = DbReport::default();
    for (n, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() != 12 {
            return Err(bad(n, "expected 12 fields"));
        }
        let u =
            |i: usize| f[i].parse::<usize>().map_err(|e| bad(n, &format!("field {}: {e}", i + 1)));
        let x =
            |i: usize| f[i].parse::<f64>().map_err(|e| bad(n, &format!("field {}: {e}", i + 1)));
        report.phases.push(PhaseRow {
            config: f[0].to_string(),
            servers: u(1)?,
            shards: u(2)?,
            replicas: u(3)?,
            connections: u(4)?,
            phase: f[5].to_string(),
            rows: u(6)? as u64,
            errors: u(7)? as u64,
            wall_s: x(8)?,
            rows_per_s: x(9)?,
            latency: Percentiles { p50_ms: x(10)?, p99_ms: x(11)? },
        });
    }
    report.rows = report.phases.first().map_or(0, |p| p.rows as usize);
    let fo = results.with_file_name("failover.csv");
    if let Ok(text) = std::fs::read_to_string(&fo) {
        for (n, line) in text.lines().enumerate().skip(1) {
            if line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let bad = |what: String| format!("{}:{}: {what}", fo.display(), n + 1);
            if f.len() != 8 {
                return Err(bad("expected 8 fields".into()));
            }
            let num =
                |i: usize| f[i].parse::<f64>().map_err(|e| bad(format!("field {}: {e}", i + 1)));
            report.failover.push(FailoverRun {
                run: num(0)? as usize,
                shard: f[1].to_string(),
                killed: f[2].to_string(),
                new_primary: f[3].to_string(),
                kill_to_write_ms: num(4)?,
                refused: num(5)? as u64,
                acked: num(6)? as u64,
                recovered_ms: num(7)?,
            });
        }
    }
    Ok(report)
}

/// The 1-minute load average from /proc/loadavg ("" when unreadable).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_default()
}

/// Now, as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_the_asked_replication() {
        for (name, servers, shards, replicas) in
            [(ConfigName::A1, 6, 4, 3), (ConfigName::A2, 7, 4, 7), (ConfigName::A3, 10, 6, 8)]
        {
            let l = Layout::of(name);
            assert_eq!(l.servers.len(), servers, "{name:?}");
            assert_eq!(l.shards.len(), shards, "{name:?}");
            for s in &l.shards {
                let holders = l.servers.values().filter(|v| v.contains(s)).count();
                assert_eq!(holders, replicas, "{name:?} {s}");
            }
            for v in l.servers.values() {
                let distinct: HashSet<&String> = v.iter().collect();
                assert_eq!(distinct.len(), v.len(), "{name:?}: a server holds a shard twice");
            }
        }
        let a3 = Layout::of(ConfigName::A3);
        let loads: Vec<usize> = a3.servers.values().map(Vec::len).collect();
        assert!(loads.iter().all(|&n| n == 4 || n == 5), "{loads:?}");
    }

    #[test]
    fn csv_round_trips() {
        let r = DbReport {
            phases: vec![PhaseRow {
                config: "A-1".into(),
                servers: 6,
                shards: 4,
                replicas: 3,
                connections: 64,
                phase: "write".into(),
                rows: 10,
                errors: 0,
                wall_s: 1.5,
                rows_per_s: 6.7,
                latency: Percentiles { p50_ms: 1.25, p99_ms: 3.5 },
            }],
            failover: vec![FailoverRun {
                run: 1,
                shard: "sh1".into(),
                killed: "Server0".into(),
                new_primary: "Server3".into(),
                kill_to_write_ms: 612.5,
                refused: 0,
                acked: 40,
                recovered_ms: 900.0,
            }],
            ..DbReport::default()
        };
        let dir = tempfile::tempdir().unwrap();
        write_outputs(dir.path(), &r).unwrap();
        let back = read_csv(&dir.path().join("results.csv")).unwrap();
        assert_eq!(back.phases, r.phases);
        assert_eq!(back.failover, r.failover);
    }

    #[test]
    fn rows_compare_by_value() {
        assert!(is_row(&row(4100), 4100));
        assert!(is_row(&json!({"Stud_id": "4100", "Stud_name": "S4100", "Stud_marks": "0"}), 4100));
        assert!(!is_row(&json!({"Stud_id": 4100, "Stud_name": "x", "Stud_marks": 0}), 4100));
    }

    #[test]
    fn lost_changed_and_phantom_rows_are_problems() {
        let mut expect = Expect::default();
        for id in [1, 2, 3, 4] {
            expect.sent.insert(id);
            expect.acked.insert(id);
        }
        expect.sent.insert(5);
        expect.maybe.insert(5);
        let seen: HashMap<i64, Json> = [
            (1, row(1)),
            (2, json!({"Stud_id": 2, "Stud_name": "S2", "Stud_marks": 3})),
            (4, row(4)),
            (5, row(5)),
            (9, row(9)),
        ]
        .into_iter()
        .collect();
        let v = compare(&seen, 0, &expect);
        assert_eq!((v.missing, v.wrong, v.unexpected), (vec![3], vec![2], vec![9]));
        assert_eq!(v.maybe_present, 1);
        let all_there: HashMap<i64, Json> = (1..=4).map(|i| (i, row(i))).collect();
        assert!(compare(&all_there, 0, &expect).problems().is_empty());
        assert_eq!(compare(&all_there, 1, &expect).problems().len(), 1);
    }

    #[test]
    fn dates_are_civil() {
        let d = utc_now();
        assert_eq!(d.len(), "2026-11-25 10:00 UTC".len(), "{d}");
    }
}
