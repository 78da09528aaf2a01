//! The sharded database (stages 2 and 3) end to end: real `shardgate up`, `manager`, `lb`
//! and `node` processes on loopback, temp data dirs, every process killed on drop.
//!
//! - the default configuration under 10,000 rows, updates and deletes, checked against a
//!   model through range reads and through `/read/<server>` of every server;
//! - the contract's examples of stages 2 and 3 (router and server endpoints, errors
//!   included) that `conformance/contract_smoke.py` does not check;
//! - kill -9 of a shard's primary under load (three rounds): a new primary, writes resume,
//!   nothing acknowledged is lost, the killed node comes back and catches up;
//! - SIGTERM and restart of the shard manager, kill -9 and restart of a router, under load;
//! - `/add` of a server holding existing shards, and `/rm` of a primary, under load;
//! - two routers on one manager: a write acknowledged by one is read through the other;
//! - `/init` placing a shard no server lists; a lone node's `/config` with and without
//!   ranges.
//!
//! Under load, readers check the contract's "a read never returns data older than a write
//! the balancer already acknowledged" all along (faults included); afterwards every
//! acknowledged row must be readable and every replica of a shard must hold the same rows.
//! The tests take about 20 to 40 s together on 2 cores (the debug binary).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{Db, DbError};
use common::{
    http, node_http, node_pid, node_pids, pid_alive, poll, signal, try_http, ClusterProc,
};
use futures::StreamExt;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};

// ---------------------------------------------------------------------------------------
// Configurations, rows, answers
// ---------------------------------------------------------------------------------------

/// The contract's default configuration, as API.md writes it.
fn default_config() -> Json {
    json!({"N": 6,
     "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]},
     "shards": [{"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": 4096},
                {"Stud_id_low": 4096, "Shard_id": "sh2", "Shard_size": 4096},
                {"Stud_id_low": 8192, "Shard_id": "sh3", "Shard_size": 4096},
                {"Stud_id_low": 12288, "Shard_id": "sh4", "Shard_size": 4096}],
     "servers": {"Server0": ["sh1", "sh2"], "Server1": ["sh3", "sh4"], "Server3": ["sh1", "sh3"],
                 "Server4": ["sh4", "sh2"], "Server5": ["sh1", "sh4"], "Server6": ["sh3", "sh2"]}})
}

/// Width of a shard of [`wide_config`].
const WIDE: i64 = 1 << 20;

/// The default configuration with shards of [`WIDE`] ids, so that tests under continuous
/// load never run out of fresh Stud_ids.
fn wide_config() -> Json {
    let mut c = default_config();
    for (i, s) in c["shards"].as_array_mut().unwrap().iter_mut().enumerate() {
        s["Stud_id_low"] = json!(i as i64 * WIDE);
        s["Shard_size"] = json!(WIDE);
    }
    c
}

fn row(id: i64) -> Json {
    json!({"Stud_id": id, "Stud_name": format!("N{id}"), "Stud_marks": id % 100})
}

fn id_of(r: &Json) -> i64 {
    let v = &r["Stud_id"];
    v.as_i64().or_else(|| v.as_str()?.parse().ok()).unwrap_or_else(|| panic!("no Stud_id: {r}"))
}

fn ids(rows: &[Json]) -> Vec<i64> {
    rows.iter().map(id_of).collect()
}

/// Asserts a contract error: the status, `"status": "failure"`, a message that starts with
/// `<Error>` and contains `needle`.
#[track_caller]
fn assert_failure(got: &(u16, Json), status: u16, needle: &str) {
    let (s, body) = got;
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(
        *s == status
            && body["status"] == "failure"
            && msg.starts_with("<Error>")
            && msg.contains(needle),
        "expected {status} failure containing {needle:?}, got {s} {body}"
    );
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "extra fields in {body}");
}

// ---------------------------------------------------------------------------------------
// /status
// ---------------------------------------------------------------------------------------

async fn status(addr: SocketAddr) -> Json {
    let (s, body) = http(addr, "GET", "/status", None).await;
    assert_eq!(s, 200, "{body}");
    body
}

/// Shard → primary, of a `/status` answer (shards without one left out).
fn primaries(st: &Json) -> BTreeMap<String, String> {
    st["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["Shard_id"].as_str()?.into(), s["primary"].as_str()?.into())))
        .collect()
}

/// Server → its shards, of a `/status` answer.
fn placement(st: &Json) -> BTreeMap<String, Vec<String>> {
    st["servers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| {
            let shards = v.as_array().unwrap().iter().map(|s| s.as_str().unwrap().into());
            (k.clone(), shards.collect())
        })
        .collect()
}

/// The servers holding `shard`.
fn holders(st: &Json, shard: &str) -> Vec<String> {
    placement(st)
        .into_iter()
        .filter(|(_, s)| s.iter().any(|x| x == shard))
        .map(|(n, _)| n)
        .collect()
}

/// Shard → `(low, high)` inclusive, of a `/status` answer.
fn ranges(st: &Json) -> BTreeMap<String, (i64, i64)> {
    st["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let low = s["Stud_id_low"].as_i64().unwrap();
            let size = s["Shard_size"].as_i64().unwrap();
            (s["Shard_id"].as_str().unwrap().to_string(), (low, low + size - 1))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------------------

/// `shardgate up --servers 0` after a successful `/init`. Fields drop in order: the
/// processes before their data dir.
struct Up {
    proc: ClusterProc,
    addr: SocketAddr,
    db: Db,
    _dir: tempfile::TempDir,
}

async fn up_with(config: &Json) -> Up {
    let dir = tempfile::tempdir().unwrap();
    let proc = ClusterProc::up(0, dir.path(), &[]);
    let addr = proc.http();
    let got = http(addr, "POST", "/init", Some(config.clone())).await;
    assert_eq!(got, (200, json!({"message": "Configured Database", "status": "success"})));
    let db = Db::connect(addr).await.unwrap();
    Up { proc, addr, db, _dir: dir }
}

/// A `shardgate manager` and `routers` `shardgate lb` processes against it, the database
/// initialized with `config` through the first router.
struct Split {
    routers: Vec<ClusterProc>,
    manager: ClusterProc,
    control: String,
    data: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Split {
    async fn start(routers: usize, config: &Json) -> Split {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let manager = Split::start_manager(&data, "127.0.0.1:0");
        let control = manager.addr("control").to_string();
        let routers: Vec<ClusterProc> =
            (0..routers).map(|_| Split::start_router(&control, "127.0.0.1:0")).collect();
        let got = http(routers[0].http(), "POST", "/init", Some(config.clone())).await;
        assert_eq!(got, (200, json!({"message": "Configured Database", "status": "success"})));
        Split { routers, manager, control, data, _dir: dir }
    }

    fn start_manager(data: &std::path::Path, listen: &str) -> ClusterProc {
        let data = data.to_str().unwrap();
        ClusterProc::start(&["manager", "--listen", listen, "--data-dir", data, "--servers", "0"])
    }

    fn start_router(control: &str, http: &str) -> ClusterProc {
        ClusterProc::start(&["lb", "--manager", control, "--http", http])
    }

    fn http(&self, i: usize) -> SocketAddr {
        self.routers[i].http()
    }
}

// ---------------------------------------------------------------------------------------
// Continuous writers
// ---------------------------------------------------------------------------------------

/// A shard the writers write to: its next fresh Stud_id.
struct LoadShard {
    next: AtomicI64,
}

fn load_shards(st: &Json, which: &[&str]) -> Arc<Vec<LoadShard>> {
    let r = ranges(st);
    Arc::new(which.iter().map(|s| LoadShard { next: AtomicI64::new(r[*s].0) }).collect())
}

/// One acknowledged write (of a row of `shard`).
struct Ack {
    shard: usize,
    router: usize,
    started: Instant,
    ended: Instant,
}

/// What the writers and readers did.
#[derive(Default)]
struct LoadLog {
    attempted: BTreeSet<i64>,
    acked: BTreeSet<i64>,
    /// Acknowledged keys in order, with the router that acknowledged them.
    acked_list: Vec<(i64, usize)>,
    /// Failed without a refusal (no answer, 5xx, 409): may or may not have been written.
    unsure: BTreeSet<i64>,
    /// Refused as bad input or missing: never right for fresh Stud_ids. With the router
    /// and when the request was sent and answered.
    refused: Vec<(Vec<i64>, DbError, usize, Instant, Instant)>,
    acks: Vec<Ack>,
    /// When the first load started: times in reports are from here.
    origin: Option<Instant>,
    /// Reads answered, and reads that failed (during a fault they may).
    reads: usize,
    read_errors: usize,
    /// Reads that missed a row the same router had acknowledged before the read was sent,
    /// or returned a row that is not as written.
    stale: Vec<String>,
}

impl LoadLog {
    fn acks_on(&self, shard: usize) -> usize {
        self.acks.iter().filter(|a| a.shard == shard).count()
    }

    fn acks_via(&self, router: usize) -> usize {
        self.acks.iter().filter(|a| a.router == router).count()
    }

    /// Time from `t` to the end of the first acknowledged write to `shard` sent after `t`.
    fn first_ack_after(&self, shard: usize, t: Instant) -> Option<Duration> {
        self.acks.iter().filter(|a| a.shard == shard && a.started >= t).map(|a| a.ended - t).min()
    }

    fn summary(&self) -> String {
        format!(
            "{} acknowledged, {} failed without an answer, {} refused; {} reads checked, {} \
             failed, {} stale",
            self.acked.len(),
            self.unsure.len(),
            self.refused.len(),
            self.reads,
            self.read_errors,
            self.stale.len()
        )
    }
}

/// A reader of the load: reads through `db` (router `router`), with the default or the
/// linearizable consistency.
#[derive(Clone)]
struct Reader {
    db: Db,
    router: usize,
    linearizable: bool,
}

/// Writers that each write fresh rows in a loop through router `w % dbs.len()`: one row at
/// a time, round robin over the shards, except every fourth writer, which writes one row
/// in each shard per request. Readers read small ranges around acknowledged rows and
/// check that none of the rows their router acknowledged before the read is missing.
struct Load {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<LoadLog>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(
        dbs: &[Db],
        writers: usize,
        shards: &Arc<Vec<LoadShard>>,
        log: &Arc<Mutex<LoadLog>>,
    ) -> Load {
        let readers: Vec<Reader> =
            vec![Reader { db: dbs[0].clone(), router: 0, linearizable: false }; 2];
        Load::start_with(dbs, writers, shards, log, &readers)
    }

    fn start_with(
        dbs: &[Db],
        writers: usize,
        shards: &Arc<Vec<LoadShard>>,
        log: &Arc<Mutex<LoadLog>>,
        readers: &[Reader],
    ) -> Load {
        log.lock().unwrap().origin.get_or_insert_with(Instant::now);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks: Vec<tokio::task::JoinHandle<()>> = (0..writers)
            .map(|w| {
                let (stop, log, shards) = (stop.clone(), log.clone(), shards.clone());
                let router = w % dbs.len();
                let db = dbs[router].clone();
                let batches = w % 4 == 3 && shards.len() > 1;
                tokio::spawn(async move {
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed) {
                        let touched: Vec<usize> = if batches {
                            (0..shards.len()).collect()
                        } else {
                            i += 1;
                            vec![i % shards.len()]
                        };
                        let keys: Vec<i64> = touched
                            .iter()
                            .map(|&s| shards[s].next.fetch_add(1, Ordering::Relaxed))
                            .collect();
                        let rows: Vec<Json> = keys.iter().map(|&k| row(k)).collect();
                        let started = Instant::now();
                        let r = db.write(&rows).await;
                        let ended = Instant::now();
                        let failed = {
                            let mut log = log.lock().unwrap();
                            log.attempted.extend(&keys);
                            match r {
                                Ok(n) => {
                                    assert_eq!(n, keys.len() as u64);
                                    for (&k, &s) in keys.iter().zip(&touched) {
                                        log.acked.insert(k);
                                        log.acked_list.push((k, router));
                                        log.acks.push(Ack { shard: s, router, started, ended });
                                    }
                                    false
                                }
                                Err(e) if e.status == 400 || e.status == 404 => {
                                    log.refused.push((keys, e, router, started, ended));
                                    true
                                }
                                Err(_) => {
                                    log.unsure.extend(&keys);
                                    true
                                }
                            }
                        };
                        if failed {
                            // A router that is down refuses at once: do not spin.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
            })
            .collect();
        for (n, reader) in readers.iter().enumerate() {
            let (stop, log, reader) = (stop.clone(), log.clone(), reader.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(n as u64);
                while !stop.load(Ordering::Relaxed) {
                    // A range around a row this router acknowledged, and what it must hold.
                    let want: Option<(i64, i64, Vec<i64>)> = {
                        let l = log.lock().unwrap();
                        let mine: Vec<i64> = l
                            .acked_list
                            .iter()
                            .rev()
                            .take(2000)
                            .filter(|(_, r)| *r == reader.router)
                            .map(|(k, _)| *k)
                            .collect();
                        mine.choose(&mut rng).map(|&k| {
                            let (lo, hi) = (k - 20, k + 20);
                            let ks = l
                                .acked_list
                                .iter()
                                .filter(|(x, r)| *r == reader.router && (lo..=hi).contains(x))
                                .map(|(x, _)| *x)
                                .collect();
                            (lo, hi, ks)
                        })
                    };
                    let Some((lo, hi, want)) = want else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let got = if reader.linearizable {
                        reader.db.read_linearizable(lo, hi).await
                    } else {
                        reader.db.read(lo, hi).await
                    };
                    let failed = {
                        let mut l = log.lock().unwrap();
                        match got {
                            Ok(rows) => {
                                l.reads += 1;
                                let have: BTreeSet<i64> = ids(&rows).into_iter().collect();
                                let missing: Vec<&i64> =
                                    want.iter().filter(|k| !have.contains(k)).collect();
                                if !missing.is_empty() {
                                    let msg = format!(
                                        "read {lo}..={hi} through router {} missed acknowledged \
                                         {missing:?}",
                                        reader.router
                                    );
                                    l.stale.push(msg);
                                }
                                if let Some(r) = rows.iter().find(|r| **r != row(id_of(r))) {
                                    l.stale.push(format!("read {lo}..={hi} returned {r}"));
                                }
                                false
                            }
                            Err(_) => {
                                l.read_errors += 1;
                                true
                            }
                        }
                    };
                    if failed {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
        Load { stop, log: log.clone(), tasks }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a writer or reader panicked");
        }
    }

    /// Waits (up to `within`) until `pred` holds on the log.
    async fn wait(&self, within: Duration, what: &str, pred: impl Fn(&LoadLog) -> bool) {
        let log = &self.log;
        let pred = &pred;
        poll(within, || async move { pred(&log.lock().unwrap()).then_some(()) })
            .await
            .unwrap_or_else(|| {
                let l = self.log.lock().unwrap();
                panic!(
                    "{what} within {within:?}: {} acknowledged, {} unsure, refused {:?}",
                    l.acked.len(),
                    l.unsure.len(),
                    l.refused.first()
                )
            });
    }
}

/// After the writers stopped: every acknowledged row is readable (linearizable, through
/// `db`) exactly as written, nothing was written that was never sent, and no fresh row was
/// refused. Returns every row read.
async fn check_acknowledged(db: &Db, log: &Mutex<LoadLog>, low: i64, high: i64) -> Vec<Json> {
    let rows = db.read_linearizable(low, high).await.unwrap();
    let have: BTreeSet<i64> = ids(&rows).into_iter().collect();
    let l = log.lock().unwrap();
    if let Some(t0) = l.refused.first().and(l.origin) {
        let report: Vec<String> = l
            .refused
            .iter()
            .map(|(keys, e, router, started, ended)| {
                let present: Vec<bool> = keys.iter().map(|k| have.contains(k)).collect();
                format!(
                    "{keys:?} through router {router}, sent at {:?}, answered at {:?} (from the \
                     start of the load): {e}; present now: {present:?}",
                    *started - t0,
                    *ended - t0
                )
            })
            .collect();
        panic!("fresh rows refused:\n{}", report.join("\n"));
    }
    assert!(l.stale.is_empty(), "stale reads: {:?}", &l.stale[..l.stale.len().min(5)]);
    let lost: Vec<&i64> = l.acked.difference(&have).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged rows lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    let phantom: Vec<&i64> = have.difference(&l.attempted).collect();
    assert!(phantom.is_empty(), "rows never written: {phantom:?}");
    for r in &rows {
        assert_eq!(r, &row(id_of(r)));
    }
    rows
}

/// Whether every replica of each of `shards` holds the same rows (by `/read/<server>`),
/// all of `must` among them; else what differs.
async fn replicas_agree(
    db: &Db,
    st: &Json,
    shards: &[String],
    must: &BTreeSet<i64>,
) -> Result<(), String> {
    let r = ranges(st);
    for shard in shards {
        let (lo, hi) = r[shard];
        let mut first: Option<(String, Vec<Json>)> = None;
        for server in holders(st, shard) {
            let rows = match db.read_server(&server).await {
                Ok(mut m) => m.remove(shard).ok_or_else(|| format!("{server} lacks {shard}"))?,
                Err(e) => return Err(format!("/read/{server}: {e}")),
            };
            let keys: BTreeSet<i64> = ids(&rows).into_iter().collect();
            if let Some(k) = must.range(lo..=hi).find(|k| !keys.contains(k)) {
                return Err(format!("{server}:{shard} lacks acknowledged row {k}"));
            }
            match &first {
                None => first = Some((server, rows)),
                Some((other, want)) if *want != rows => {
                    return Err(format!(
                        "{server}:{shard} has {} rows, {other}:{shard} {}",
                        rows.len(),
                        want.len()
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

async fn wait_replicas_agree(
    db: &Db,
    st: &Json,
    shards: &[String],
    must: &BTreeSet<i64>,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        match replicas_agree(db, st, shards, must).await {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("replicas differ after {within:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. The default configuration against a model
// ---------------------------------------------------------------------------------------

/// Compares the whole table, the same linearizable, and random ranges with the model.
async fn check_reads(db: &Db, model: &BTreeMap<i64, Json>, rng: &mut impl Rng) {
    let all: Vec<Json> = model.values().cloned().collect();
    let got = db.read(0, 16383).await.unwrap();
    assert_eq!(got.len(), all.len());
    assert!(got == all, "the full read differs from the model");
    assert!(db.read_linearizable(-5, 20000).await.unwrap() == all, "linearizable read differs");
    for _ in 0..40 {
        let low = rng.gen_range(-100..16500);
        let high = low + rng.gen_range(0..6000);
        let want: Vec<Json> = model.range(low..=high).map(|(_, r)| r.clone()).collect();
        let got = db.read(low, high).await.unwrap();
        assert!(got == want, "read {low}..={high}: {} rows, model {}", got.len(), want.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_updates_and_deletes_match_a_model_on_every_replica() {
    let c = up_with(&default_config()).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
    let mut keys: Vec<i64> = (0..16384).collect();
    keys.shuffle(&mut rng);
    keys.truncate(10_000);

    // Half in batches of 1..=40 rows (spanning shards), half one row per request.
    let mut requests: Vec<Vec<Json>> = keys[5000..].iter().map(|&k| vec![row(k)]).collect();
    let mut rest = &keys[..5000];
    while !rest.is_empty() {
        let n = rng.gen_range(1..=40).min(rest.len());
        requests.push(rest[..n].iter().map(|&k| row(k)).collect());
        rest = &rest[n..];
    }
    requests.shuffle(&mut rng);
    let t = Instant::now();
    let db = &c.db;
    let results: Vec<(usize, Result<u64, DbError>)> = futures::stream::iter(&requests)
        .map(|rows| async move { (rows.len(), db.write(rows).await) })
        .buffer_unordered(32)
        .collect()
        .await;
    for (n, r) in results {
        assert_eq!(r.unwrap_or_else(|e| panic!("write: {e}")), n as u64);
    }
    eprintln!("10,000 rows in {} requests: {:?}", requests.len(), t.elapsed());
    let mut model: BTreeMap<i64, Json> = keys.iter().map(|&k| (k, row(k))).collect();
    check_reads(db, &model, &mut rng).await;

    // 500 updates and then 500 deletes, 32 at a time.
    let t = Instant::now();
    keys.shuffle(&mut rng);
    let updates: Vec<(i64, Json)> = keys[..500]
        .iter()
        .map(|&k| (k, json!({"Stud_id": k, "Stud_name": format!("U{k}"), "Stud_marks": format!("{}", k % 7)})))
        .collect();
    let results: Vec<_> = futures::stream::iter(&updates)
        .map(|(k, r)| async move { db.update(*k, r).await })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().for_each(|r| r.unwrap());
    model.extend(updates.iter().cloned());
    let deletes: Vec<i64> = keys[250..750].to_vec();
    let results: Vec<_> = futures::stream::iter(&deletes)
        .map(|k| async move { db.delete(*k).await })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().for_each(|r| r.unwrap());
    for k in &deletes {
        model.remove(k);
    }
    eprintln!("500 updates and 500 deletes: {:?}", t.elapsed());
    // A deleted row is gone: deleting or updating it again is a 404.
    assert!(db.delete(deletes[0]).await.unwrap_err().is_not_found());
    assert!(db.update(deletes[1], &row(deletes[1])).await.unwrap_err().is_not_found());
    assert_eq!(model.len(), 9500);
    check_reads(db, &model, &mut rng).await;

    // Every server holds exactly its shards, each equal to the model restricted to it: at
    // once, since the router never answers older than what it acknowledged.
    let st = status(c.addr).await;
    let r = ranges(&st);
    let place = placement(&st);
    assert_eq!(place.len(), 6);
    for (server, shards) in &place {
        let got = db.read_server(server).await.unwrap();
        let want_shards: BTreeSet<&String> = shards.iter().collect();
        assert_eq!(got.keys().collect::<BTreeSet<_>>(), want_shards, "{server}");
        for shard in shards {
            let (lo, hi) = r[shard];
            let want: Vec<Json> = model.range(lo..=hi).map(|(_, r)| r.clone()).collect();
            assert!(
                got[shard] == want,
                "{server}:{shard}: {} rows, model {}",
                got[shard].len(),
                want.len()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1b. The contract's examples
// ---------------------------------------------------------------------------------------

/// One request to a node's HTTP endpoint: status and raw body.
async fn raw(addr: SocketAddr, method: &str, path: &str, body: Option<Json>) -> (u16, Vec<u8>) {
    let mut c = client::HttpClient::connect(addr).await.unwrap();
    let bytes = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
    let reply = c.request(method, path, &bytes).await.unwrap();
    (reply.status, reply.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_examples_of_stages_2_and_3() {
    let c = up_with(&default_config()).await;
    let lb = c.addr;

    // A second /init is refused, and changes nothing.
    assert_failure(&http(lb, "POST", "/init", Some(default_config())).await, 400, "");
    let st = status(lb).await;
    let mut expected = default_config();
    expected["status"] = json!("success");
    let p = primaries(&st);
    for s in expected["shards"].as_array_mut().unwrap() {
        let id = s["Shard_id"].as_str().unwrap().to_string();
        assert!(holders(&st, &id).contains(&p[&id]), "primary {} of {id} does not hold it", p[&id]);
        s["primary"] = json!(p[&id]);
    }
    assert_eq!(st, expected);

    // /primary_elect: every primary is alive, so nothing changes.
    let want: Json = json!({"message": p, "status": "success"});
    assert_eq!(http(lb, "GET", "/primary_elect", None).await, (200, want));
    let one = http(lb, "GET", "/primary_elect", Some(json!({"shard": "sh1"}))).await;
    assert_eq!(one, (200, json!({"message": {"sh1": p["sh1"]}, "status": "success"})));

    // Writes: a Number as a string of digits, a String column given numbers; values come
    // back as written.
    let r2255 = json!({"Stud_id": "2255", "Stud_name": "GHI", "Stud_marks": 27});
    let rows = json!([row(1000), r2255, row(2535), row(5000), row(8889), row(12000)]);
    let got = http(lb, "POST", "/write", Some(json!({"data": rows}))).await;
    assert_eq!(got, (200, json!({"message": "6 Data entries added", "status": "success"})));
    let range = json!({"Stud_id": {"low": 1000, "high": 8889}});
    let want = json!({"shards_queried": ["sh1", "sh2", "sh3"],
                      "data": [row(1000), r2255, row(2535), row(5000), row(8889)],
                      "status": "success"});
    assert_eq!(http(lb, "POST", "/read", Some(range.clone())).await, (200, want.clone()));
    // The original clients send GET /read with a body.
    assert_eq!(http(lb, "GET", "/read", Some(range)).await, (200, want.clone()));
    let lin = json!({"Stud_id": {"low": 1000, "high": 8889}, "consistency": "linearizable"});
    assert_eq!(http(lb, "POST", "/read", Some(lin)).await, (200, want));
    let inverted = json!({"Stud_id": {"low": 8889, "high": 1000}});
    assert_failure(&http(lb, "POST", "/read", Some(inverted)).await, 400, "");
    assert_failure(&http(lb, "POST", "/read", Some(json!({"low": 1}))).await, 400, "Stud_id");

    // Bad writes are refused, naming the culprit, and write nothing (not even the good rows
    // of the same request, on other shards).
    let everything = || async {
        http(
            lb,
            "POST",
            "/read",
            Some(json!({"Stud_id": {"low": -10, "high": 30000}, "consistency": "linearizable"})),
        )
        .await
    };
    let before = everything().await;
    let bad = [
        (json!([row(3), row(9000), row(20000)]), "20000"),
        (json!([row(4), row(9001), row(1000)]), "1000"),
        (json!([row(5), row(9002), row(5)]), "5"),
        (json!([row(6), {"Stud_id": 9003, "Stud_marks": 1}]), "Stud_name"),
        (json!([row(7), {"Stud_id": "x9", "Stud_name": "a", "Stud_marks": 1}]), "Stud_id"),
    ];
    for (data, needle) in bad {
        assert_failure(&http(lb, "POST", "/write", Some(json!({"data": data}))).await, 400, needle);
    }
    assert_failure(&http(lb, "POST", "/write", Some(json!({"rows": []}))).await, 400, "data");
    assert_eq!(everything().await, before);

    // Update and delete, as the contract's examples.
    let upd =
        json!({"Stud_id": "2255", "data": {"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 30}});
    let got = http(lb, "PUT", "/update", Some(upd)).await;
    assert_eq!(
        got,
        (200, json!({"message": "Data entry for Stud_id: 2255 updated", "status": "success"}))
    );
    let got =
        http(lb, "POST", "/read", Some(json!({"Stud_id": {"low": 2255, "high": 2255}}))).await;
    assert_eq!(got.1["data"], json!([{"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 30}]));
    let missing =
        json!({"Stud_id": 3000, "data": {"Stud_id": 3000, "Stud_name": "x", "Stud_marks": 1}});
    assert_failure(&http(lb, "PUT", "/update", Some(missing)).await, 404, "3000");
    let differs =
        json!({"Stud_id": 2255, "data": {"Stud_id": 2256, "Stud_name": "x", "Stud_marks": 1}});
    assert_failure(&http(lb, "PUT", "/update", Some(differs)).await, 400, "");
    let got = http(lb, "DELETE", "/del", Some(json!({"Stud_id": 2255}))).await;
    let removed = json!({"message": "Data entry with Stud_id:2255 removed from all replicas", "status": "success"});
    assert_eq!(got, (200, removed));
    assert_failure(&http(lb, "DELETE", "/del", Some(json!({"Stud_id": 2255}))).await, 404, "2255");

    // /read/<server>: every shard of the server, rows in order; an unknown server is a 404.
    let got = http(lb, "GET", "/read/Server0", None).await;
    let want = json!({"sh1": [row(1000), row(2535)], "sh2": [row(5000)], "status": "success"});
    assert_eq!(got, (200, want));
    assert_failure(&http(lb, "GET", "/read/Server2", None).await, 404, "Server2");

    // /metrics is Prometheus text.
    let (s, body) = raw(lb, "GET", "/metrics", None).await;
    let text = String::from_utf8(body).unwrap();
    assert!(s == 200 && text.contains("# TYPE ") && text.contains("shardgate_"), "{s} {text}");

    server_endpoints_of_managed_nodes(&c, &p).await;

    // /add refusals change nothing.
    let st = status(lb).await;
    let add = |b: Json| http(lb, "POST", "/add", Some(b));
    let got =
        add(json!({"n": 3, "new_shards": [], "servers": {"Server7": ["sh1"], "Server8": ["sh2"]}}))
            .await;
    assert_eq!(
        got,
        (
            400,
            json!({"message": "<Error> Number of new servers (n) is greater than newly added instances", "status": "failure"})
        )
    );
    let overlap = json!({"n": 1, "new_shards": [{"Stud_id_low": 16000, "Shard_id": "sh5", "Shard_size": 4096}], "servers": {"Server7": ["sh5"]}});
    assert_failure(&add(overlap).await, 400, "");
    assert_failure(&add(json!({"n": 1, "servers": {"Server7": ["sh9"]}})).await, 400, "sh9");
    assert_eq!(status(lb).await, st);

    // /rm refusals change nothing.
    let rm = |b: Json| http(lb, "DELETE", "/rm", Some(b));
    let got = rm(json!({"n": 1, "servers": ["Server0", "Server1"]})).await;
    assert_eq!(
        got,
        (
            400,
            json!({"message": "<Error> Length of server list is more than removable instances", "status": "failure"})
        )
    );
    assert_failure(
        &rm(json!({"n": 3, "servers": ["Server0", "Server3", "Server5"]})).await,
        400,
        "sh1",
    );
    assert_failure(&rm(json!({"n": 1, "servers": ["Server2"]})).await, 400, "Server2");
    assert_failure(&rm(json!({"n": 7})).await, 400, "");
    assert_eq!(status(lb).await, st);

    // The contract's /rm example: Server4 and one more picked at random; a primary among
    // them is replaced first; no row is lost.
    let before = everything().await;
    let (s, body) = rm(json!({"n": 2, "servers": ["Server4"]})).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["status"], "successful");
    assert_eq!(body["message"]["N"], 4);
    let gone: Vec<String> = body["message"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().into())
        .collect();
    assert_eq!((gone.len(), gone[0].as_str()), (2, "Server4"), "{body}");
    let st = status(lb).await;
    assert_eq!(st["N"], 4);
    for g in &gone {
        assert!(!placement(&st).contains_key(g), "{g} still listed: {st}");
        assert_failure(&http(lb, "GET", &format!("/read/{g}"), None).await, 404, g);
    }
    for (shard, primary) in primaries(&st) {
        assert!(!gone.contains(&primary), "{shard} still led by removed {primary}");
    }
    assert_eq!(primaries(&st).len(), 4, "a shard lost its primary: {st}");
    let root = c.proc.pid();
    for g in &gone {
        poll(Duration::from_secs(15), || async move { node_pid(root, g).is_none().then_some(()) })
            .await
            .unwrap_or_else(|| panic!("the process of removed {g} still runs"));
    }
    assert_eq!(everything().await, before);

    // The contract's /add example, verbatim: Server4 (removed above) comes back with sh3
    // and the new sh5, and a server with a random 6-digit id gets sh2 and sh5.
    let got = add(json!({"n": 2, "new_shards": [{"Stud_id_low": 16384, "Shard_id": "sh5", "Shard_size": 4096}], "servers": {"Server4": ["sh3", "sh5"], "Server[5]": ["sh2", "sh5"]}})).await;
    let (s, body) = got;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
    assert_eq!((body["N"].clone(), body["status"].clone()), (json!(6), json!("successful")));
    let msg = body["message"].as_str().unwrap();
    let id = msg.strip_prefix("Add Server:4 and Server:").unwrap_or_else(|| panic!("{msg}"));
    assert!(id.len() == 6 && id.bytes().all(|b| b.is_ascii_digit()), "{msg}");
    let fresh = format!("Server{id}");
    let st = status(lb).await;
    let place = placement(&st);
    assert_eq!(place["Server4"], ["sh3", "sh5"]);
    assert_eq!(place[&fresh], ["sh2", "sh5"]);
    assert_eq!(st["N"], 6);
    assert!(st["shards"].as_array().unwrap().iter().any(|s| s == &json!({"Stud_id_low": 16384, "Shard_id": "sh5", "Shard_size": 4096, "primary": primaries(&st)["sh5"]})), "{st}");
    // The new shard takes writes; the new servers hold the rows of the old shards.
    let got = http(lb, "POST", "/write", Some(json!({"data": [row(16384), row(20479)]}))).await;
    assert_eq!(got, (200, json!({"message": "2 Data entries added", "status": "success"})));
    let (_, b) = http(lb, "GET", "/read/Server4", None).await;
    assert_eq!(b["sh3"], json!([row(8889), row(12000)]));
    assert_eq!(b["sh5"], json!([row(16384), row(20479)]));
    let (_, b) = http(lb, "GET", &format!("/read/{fresh}"), None).await;
    let (_, all) = everything().await;
    let sh2: Vec<Json> = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| (4096..8192).contains(&id_of(r)))
        .cloned()
        .collect();
    assert_eq!(b["sh2"], json!(sh2));
    assert_eq!(b["sh5"], json!([row(16384), row(20479)]));
}

/// The server endpoints of nodes the manager runs: the primary takes writes (the contract's
/// `curr_idx` example), a secondary answers 409 naming the primary, errors name their
/// cause, and what a node's primary wrote is read through the router.
async fn server_endpoints_of_managed_nodes(c: &Up, p: &BTreeMap<String, String>) {
    let root = c.proc.pid();
    let lb = c.addr;
    // sh2 holds 5000; 506 more make the 507 rows of the contract's example.
    let more: Vec<Json> = (4096..4096 + 506).map(row).collect();
    assert_eq!(c.db.write(&more).await.unwrap(), 506);
    let st = status(lb).await;
    let primary = &p["sh2"];
    let secondary = holders(&st, "sh2").into_iter().find(|h| h != primary).unwrap();
    let ph = node_http(root, primary).await.unwrap_or_else(|| panic!("no HTTP port of {primary}"));
    let sh = node_http(root, &secondary).await.unwrap();

    let (s, body) = raw(ph, "GET", "/heartbeat", None).await;
    assert_eq!((s, body.len()), (200, 0));
    let home = http(ph, "GET", "/home", None).await;
    assert_eq!(
        home,
        (200, json!({"message": format!("Hello from Server: {primary}"), "status": "successful"}))
    );

    let five: Vec<Json> = (6000..6005).map(row).collect();
    let w = json!({"shard": "sh2", "curr_idx": 507, "data": five});
    // A secondary refuses changes, naming the primary.
    assert_failure(&http(sh, "POST", "/write", Some(w.clone())).await, 409, primary);
    let u = json!({"shard": "sh2", "Stud_id": 5000, "data": {"Stud_id": 5000, "Stud_name": "GHI", "Stud_marks": 28}});
    assert_failure(&http(sh, "PUT", "/update", Some(u)).await, 409, primary);
    let d = json!({"shard": "sh2", "Stud_id": 5000});
    assert_failure(&http(sh, "DELETE", "/del", Some(d)).await, 409, primary);
    let got = http(ph, "POST", "/write", Some(w)).await;
    assert_eq!(
        got,
        (200, json!({"message": "Data entries added", "current_idx": 512, "status": "success"}))
    );
    // An existing Stud_id, or one outside the shard's range: refused, nothing written.
    let dup = json!({"shard": "sh2", "data": [row(6100), row(6000)]});
    assert_failure(&http(ph, "POST", "/write", Some(dup)).await, 400, "6000");
    let outside = json!({"shard": "sh2", "data": [row(6101), row(100)]});
    assert_failure(&http(ph, "POST", "/write", Some(outside)).await, 400, "100");

    let read = json!({"shard": "sh2", "Stud_id": {"low": 2235, "high": 2555}});
    assert_eq!(
        http(ph, "POST", "/read", Some(read)).await,
        (200, json!({"data": [], "status": "success"}))
    );
    let read = json!({"shard": "sh2", "Stud_id": {"low": 5999, "high": 6101}});
    let want = json!({"data": (6000..6005).map(row).collect::<Vec<_>>(), "status": "success"});
    assert_eq!(http(ph, "POST", "/read", Some(read)).await, (200, want));

    let u = json!({"shard": "sh2", "Stud_id": 6000, "data": {"Stud_id": 6000, "Stud_name": "GHI", "Stud_marks": 28}});
    let got = http(ph, "PUT", "/update", Some(u)).await;
    assert_eq!(
        got,
        (200, json!({"message": "Data entry for Stud_id:6000 updated", "status": "success"}))
    );
    let u = json!({"shard": "sh2", "Stud_id": 6010, "data": {"Stud_id": 6010, "Stud_name": "GHI", "Stud_marks": 28}});
    assert_failure(&http(ph, "PUT", "/update", Some(u)).await, 404, "6010");
    let u = json!({"shard": "sh2", "Stud_id": 6001, "data": {"Stud_id": 6002, "Stud_name": "GHI", "Stud_marks": 28}});
    assert_failure(&http(ph, "PUT", "/update", Some(u)).await, 400, "");
    let got = http(ph, "DELETE", "/del", Some(json!({"shard": "sh2", "Stud_id": 6004}))).await;
    assert_eq!(
        got,
        (200, json!({"message": "Data entry with Stud_id:6004 removed", "status": "success"}))
    );
    let again = http(ph, "DELETE", "/del", Some(json!({"shard": "sh2", "Stud_id": 6004}))).await;
    assert_failure(&again, 404, "6004");

    // /copy of Server0 (every shard it holds), and of a shard it does not hold.
    let s0 = node_http(root, "Server0").await.unwrap();
    let want_sh2: Vec<Json> = (4096..4096 + 506)
        .chain([5000, 6000, 6001, 6002, 6003])
        .map(|k| {
            if k == 6000 {
                json!({"Stud_id": 6000, "Stud_name": "GHI", "Stud_marks": 28})
            } else {
                row(k)
            }
        })
        .collect();
    let copy = json!({"shards": ["sh1", "sh2"]});
    let want = json!({"sh1": [row(1000), row(2535)], "sh2": want_sh2, "status": "success"});
    let s0r = &s0;
    let copied = poll(Duration::from_secs(10), || {
        let (copy, want) = (copy.clone(), want.clone());
        async move { (http(*s0r, "GET", "/copy", Some(copy)).await == (200, want)).then_some(()) }
    })
    .await;
    assert!(copied.is_some(), "{:?}", http(s0, "GET", "/copy", Some(copy.clone())).await);
    assert_failure(&http(s0, "GET", "/copy", Some(json!({"shards": ["sh3"]}))).await, 400, "sh3");

    // What the primary's HTTP shim wrote is in the database.
    let lin = json!({"Stud_id": {"low": 4096, "high": 8191}, "consistency": "linearizable"});
    let (_, got) = http(lb, "POST", "/read", Some(lin)).await;
    assert_eq!(got["data"], want["sh2"]);
    // Leave sh2 as it was for the rest of the test.
    let mut keys: Vec<i64> = (4096..4096 + 506).chain(6000..6004).collect();
    keys.shuffle(&mut rand::thread_rng());
    let db = &c.db;
    let results: Vec<_> = futures::stream::iter(keys)
        .map(|k| async move { db.delete(k).await })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().for_each(|r| r.unwrap());
}

// ---------------------------------------------------------------------------------------
// 2. Failover of a killed primary under load
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_primary_under_load_elects_another_and_loses_nothing() {
    let c = up_with(&wide_config()).await;
    let root = c.proc.pid();
    let st = status(c.addr).await;
    let names = ["sh1", "sh2", "sh3", "sh4"];
    let shards = load_shards(&st, &names);
    let log: Arc<Mutex<LoadLog>> = Arc::default();
    let mut rng = rand::rngs::StdRng::from_entropy();
    for (round, shard) in ["sh1", "sh2", "sh3"].into_iter().enumerate() {
        let s = names.iter().position(|n| *n == shard).unwrap();
        let load = Load::start(std::slice::from_ref(&c.db), 8, &shards, &log);
        // The kill lands at a random point of a steady load.
        let warm = log.lock().unwrap().acks_on(s) + rng.gen_range(100..400);
        load.wait(Duration::from_secs(30), "writes before the kill", |l| l.acks_on(s) >= warm)
            .await;

        let st = status(c.addr).await;
        let victim = primaries(&st)[shard].clone();
        let pid = node_pid(root, &victim).unwrap_or_else(|| panic!("no process for {victim}"));
        let killed = Instant::now();
        signal(pid, "KILL");

        let addr = c.addr;
        let victim_ref = &victim;
        let new_primary = poll(Duration::from_secs(20), || async move {
            let st = status(addr).await;
            primaries(&st).get(shard).filter(|p| *p != victim_ref).cloned()
        })
        .await
        .unwrap_or_else(|| panic!("round {round}: no new primary of {shard} within 20 s"));
        let elected = killed.elapsed();
        let logr = &log;
        let first_write = poll(Duration::from_secs(20), || async move {
            logr.lock().unwrap().first_ack_after(s, killed)
        })
        .await
        .unwrap_or_else(|| panic!("round {round}: no write to {shard} within 20 s of the kill"));
        let respawned = poll(Duration::from_secs(30), || async move {
            node_pid(root, victim_ref).filter(|&p| p != pid)
        })
        .await
        .unwrap_or_else(|| panic!("round {round}: {victim} not respawned"));
        assert!(!pid_alive(pid));
        eprintln!(
            "round {round}: killed {victim} (primary of {shard}); {new_primary} primary in /status \
             after {elected:?}; first write to {shard} acknowledged {first_write:?} after the kill; \
             respawned as pid {respawned}"
        );
        let more = log.lock().unwrap().acks_on(s) + 200;
        load.wait(Duration::from_secs(30), "writes after the failover", |l| l.acks_on(s) >= more)
            .await;
        load.stop().await;

        // The killed node caught up: each of its shards is the same on every replica.
        let st = status(c.addr).await;
        assert_eq!(primaries(&st)[shard], new_primary);
        let acked = log.lock().unwrap().acked.clone();
        let its = placement(&st)[&victim].clone();
        wait_replicas_agree(&c.db, &st, &its, &acked, Duration::from_secs(30)).await;
        let rows = check_acknowledged(&c.db, &log, 0, 4 * WIDE).await;
        eprintln!("round {round}: {} rows readable; {}", rows.len(), log.lock().unwrap().summary());
        // The next kill comes once the killed node is a voter of all its shards again (the
        // router reads from voters only): a second failure before then leaves a shard of
        // three replicas with one voter alive, and it stalls (see the note in README,
        // "Guarantees and how they are tested").
        let every_voter = poll(Duration::from_secs(60), || async {
            let voters = serving_replicas(c.addr).await?;
            names.iter().all(|s| voters.get(*s) == Some(&3)).then_some(())
        })
        .await;
        assert!(every_voter.is_some(), "round {round}: {victim} did not become a voter again");
    }
    // And every shard everywhere.
    let st = status(c.addr).await;
    let acked = log.lock().unwrap().acked.clone();
    let all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    wait_replicas_agree(&c.db, &st, &all, &acked, Duration::from_secs(30)).await;
}

/// `shardgate_db_shard_live_replicas` per shard from the router's `/metrics`: the replicas
/// reads are spread over, the live voters.
async fn serving_replicas(addr: SocketAddr) -> Option<std::collections::HashMap<String, u64>> {
    let mut c = client::HttpClient::connect(addr).await.ok()?;
    let reply = c.request("GET", "/metrics", b"").await.ok()?;
    let text = String::from_utf8(reply.body).ok()?;
    let mut out = std::collections::HashMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("shardgate_db_shard_live_replicas{shard=\"") else {
            continue;
        };
        let (shard, value) = rest.split_once("\"} ")?;
        out.insert(shard.to_string(), value.trim().parse().ok()?);
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------
// 3. Restarts of the manager and of a router
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_manager_and_a_router_under_load_keeps_status_and_data() {
    let mut c = Split::start(2, &wide_config()).await;
    let (a, b) = (c.http(0), c.http(1));
    let dbs = [Db::connect(a).await.unwrap(), Db::connect(b).await.unwrap()];
    let st = status(a).await;
    assert_eq!(status(b).await, st);
    let names = ["sh1", "sh2", "sh3", "sh4"];
    let shards = load_shards(&st, &names);
    let log: Arc<Mutex<LoadLog>> = Arc::default();
    let load = Load::start(&dbs, 8, &shards, &log);
    load.wait(Duration::from_secs(30), "writes through both routers", |l| {
        l.acks_via(0) >= 100 && l.acks_via(1) >= 100
    })
    .await;

    // SIGTERM: the manager stops its nodes and exits.
    let before = status(a).await;
    let nodes = node_pids(c.manager.pid());
    assert_eq!(nodes.len(), 6, "{nodes:?}");
    let origin = log.lock().unwrap().origin.unwrap();
    eprintln!("restarts: SIGTERM to the manager at {:?}", origin.elapsed());
    signal(c.manager.pid(), "TERM");
    let exit = c.manager.wait_exit(Duration::from_secs(30)).expect("the manager exits on SIGTERM");
    assert!(exit.success(), "{exit}");
    let stopped_at = Instant::now();
    for &p in &nodes {
        let gone =
            poll(Duration::from_secs(10), || async move { (!pid_alive(p)).then_some(()) }).await;
        assert!(gone.is_some(), "node {p} outlived its manager");
    }
    // The routers go on without a manager (and without nodes): writes fail now.
    let unsure = log.lock().unwrap().unsure.len();
    load.wait(Duration::from_secs(20), "writes failing while the manager is away", |l| {
        l.unsure.len() > unsure
    })
    .await;
    let acked_before = log.lock().unwrap().acked.clone();
    let acks_at_stop = log.lock().unwrap().acks.len();

    // Back on the same address and data dir: the same servers, with their data.
    eprintln!("restarts: manager and nodes gone, writes failing, at {:?}", origin.elapsed());
    c.manager = Split::start_manager(&c.data, &c.control);
    eprintln!("restarts: manager listening again at {:?}", origin.elapsed());
    let root = c.manager.pid();
    let respawned = poll(Duration::from_secs(30), || async move {
        let p = node_pids(root);
        (p.len() == 6).then_some(p)
    })
    .await
    .expect("the restarted manager runs 6 nodes again");
    assert!(respawned.iter().all(|p| !nodes.contains(p)));
    let last = Arc::new(Mutex::new(Json::Null));
    let (beforer, lastr) = (&before, &last);
    let same = poll(Duration::from_secs(30), || async move {
        let (s, st) = try_http(a, "GET", "/status", None).await.ok()?;
        *lastr.lock().unwrap() = st.clone();
        (s == 200 && st == *beforer).then_some(())
    })
    .await;
    assert!(
        same.is_some(),
        "/status changed across the restart:\nbefore {before}\nafter  {}",
        last.lock().unwrap()
    );
    load.wait(Duration::from_secs(30), "writes after the manager restart", |l| {
        l.acks[acks_at_stop..].iter().filter(|a| a.router == 0).count() >= 50
            && l.acks[acks_at_stop..].iter().filter(|a| a.router == 1).count() >= 50
    })
    .await;
    eprintln!(
        "writes through both routers again {:?} after the manager stopped",
        stopped_at.elapsed()
    );

    // kill -9 of router B, restarted on its address.
    eprintln!("restarts: kill -9 of router B at {:?}", origin.elapsed());
    c.routers[1].kill9();
    let killed_at = Instant::now();
    let acks_at_kill = log.lock().unwrap().acks.len();
    c.routers[1] = Split::start_router(&c.control, &b.to_string());
    eprintln!("restarts: router B listening again at {:?}", origin.elapsed());
    load.wait(Duration::from_secs(30), "writes through the restarted router", |l| {
        l.acks[acks_at_kill..].iter().filter(|a| a.router == 1).count() >= 50
    })
    .await;
    eprintln!("writes through router B again {:?} after its kill -9", killed_at.elapsed());
    load.stop().await;

    assert_eq!(status(a).await, before);
    assert_eq!(status(b).await, before);
    // Nothing acknowledged is lost (before the stop included), through either router, and
    // every replica holds the same rows.
    for db in &dbs {
        check_acknowledged(db, &log, 0, 4 * WIDE).await;
    }
    let rows = dbs[1].read(0, 4 * WIDE).await.unwrap();
    let have: BTreeSet<i64> = ids(&rows).into_iter().collect();
    assert!(acked_before.is_subset(&have));
    let acked = log.lock().unwrap().acked.clone();
    let all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    wait_replicas_agree(&dbs[0], &before, &all, &acked, Duration::from_secs(30)).await;
    let l = log.lock().unwrap();
    eprintln!("restarts: {} rows readable; {}", rows.len(), l.summary());
}

// ---------------------------------------------------------------------------------------
// 4. /add of a server holding existing shards, under load
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_of_a_server_of_existing_shards_under_load_copies_them_exactly() {
    let c = up_with(&wide_config()).await;
    let st = status(c.addr).await;
    let shards = load_shards(&st, &["sh1", "sh2"]);
    let log: Arc<Mutex<LoadLog>> = Arc::default();
    let load = Load::start(std::slice::from_ref(&c.db), 8, &shards, &log);
    load.wait(Duration::from_secs(30), "writes before /add", |l| l.acked.len() >= 200).await;

    let t = Instant::now();
    let got =
        http(c.addr, "POST", "/add", Some(json!({"n": 1, "servers": {"Server9": ["sh1", "sh2"]}})))
            .await;
    assert_eq!(got, (200, json!({"N": 7, "message": "Add Server:9", "status": "successful"})));
    eprintln!("/add answered in {:?}", t.elapsed());
    let n = log.lock().unwrap().acked.len() + 200;
    load.wait(Duration::from_secs(30), "writes after /add", |l| l.acked.len() >= n).await;
    load.stop().await;

    let st = status(c.addr).await;
    assert_eq!(st["N"], 7);
    assert_eq!(placement(&st)["Server9"], ["sh1", "sh2"]);
    let p = primaries(&st);
    let acked = log.lock().unwrap().acked.clone();
    check_acknowledged(&c.db, &log, 0, 4 * WIDE).await;
    let db = &c.db;
    let pr = &p;
    let last = Arc::new(Mutex::new(String::new()));
    let lastr = &last;
    let same = poll(Duration::from_secs(30), || async move {
        let mine = db.read_server("Server9").await.ok()?;
        for shard in ["sh1", "sh2"] {
            let theirs = db.read_server(&pr[shard]).await.ok()?;
            if mine[shard] != theirs[shard] {
                *lastr.lock().unwrap() = format!(
                    "{shard}: Server9 {} rows, {} {}",
                    mine[shard].len(),
                    pr[shard],
                    theirs[shard].len()
                );
                return None;
            }
        }
        Some(mine)
    })
    .await;
    let mine = same
        .unwrap_or_else(|| panic!("Server9 differs from the primaries: {}", last.lock().unwrap()));
    let keys: BTreeSet<i64> = mine.values().flat_map(|rows| ids(rows)).collect();
    assert!(acked.is_subset(&keys), "Server9 lacks acknowledged rows");
    assert_eq!(mine.keys().collect::<Vec<_>>(), ["sh1", "sh2"]);
    eprintln!("/add under load: {}", log.lock().unwrap().summary());
    // The other replicas agree too.
    wait_replicas_agree(db, &st, &["sh1".into(), "sh2".into()], &acked, Duration::from_secs(30))
        .await;
}

// ---------------------------------------------------------------------------------------
// 5. Two routers on one manager
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_acknowledged_by_one_router_is_read_through_another() {
    let c = Split::start(2, &wide_config()).await;
    let (a, b) = (Db::connect(c.http(0)).await.unwrap(), Db::connect(c.http(1)).await.unwrap());
    let (a, b) = (&a, &b);
    // 8 clients, each: write through A, then read through B, linearizable: it is there at
    // once; a default read through B sees it after a while.
    let t = Instant::now();
    let waits: Vec<Duration> = futures::stream::iter(0..200i64)
        .map(|i| async move {
            let k = (i % 4) * WIDE + i;
            assert_eq!(a.write(&[row(k)]).await.unwrap(), 1);
            assert_eq!(
                b.read_linearizable(k, k).await.unwrap(),
                [row(k)],
                "{k} not visible through B"
            );
            let seen = Instant::now();
            poll(Duration::from_secs(10), || async move {
                (b.read(k, k).await.ok()? == [row(k)]).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("a default read through B never saw {k}"));
            seen.elapsed()
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let worst = waits.iter().max().unwrap();
    eprintln!(
        "200 writes through A read through B in {:?}; default reads caught up within {worst:?}",
        t.elapsed()
    );

    // Updates and deletes too.
    for i in 0..20i64 {
        let k = (i % 4) * WIDE + i;
        let new = json!({"Stud_id": k, "Stud_name": "changed", "Stud_marks": "99"});
        a.update(k, &new).await.unwrap();
        assert_eq!(b.read_linearizable(k, k).await.unwrap(), [new]);
        b.delete(k).await.unwrap();
        assert_eq!(a.read_linearizable(k, k).await.unwrap(), Vec::<Json>::new());
    }
    assert_eq!(a.read_linearizable(0, 4 * WIDE).await.unwrap().len(), 180);
    assert_eq!(b.read_linearizable(0, 4 * WIDE).await.unwrap().len(), 180);
}

// ---------------------------------------------------------------------------------------
// More of stage 2 and 3 end to end
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_of_a_primary_under_load_hands_its_shards_over_and_loses_nothing() {
    let c = up_with(&wide_config()).await;
    let st = status(c.addr).await;
    let names = ["sh1", "sh2", "sh3", "sh4"];
    let shards = load_shards(&st, &names);
    let log: Arc<Mutex<LoadLog>> = Arc::default();
    let load = Load::start(std::slice::from_ref(&c.db), 8, &shards, &log);
    load.wait(Duration::from_secs(30), "writes before /rm", |l| l.acked.len() >= 300).await;

    let victim = primaries(&st)["sh1"].clone();
    let led: Vec<String> =
        primaries(&st).into_iter().filter(|(_, p)| *p == victim).map(|(s, _)| s).collect();
    let t = Instant::now();
    let got = http(c.addr, "DELETE", "/rm", Some(json!({"n": 1, "servers": [victim]}))).await;
    let want = json!({"message": {"N": 5, "servers": [victim]}, "status": "successful"});
    assert_eq!(got, (200, want));
    eprintln!("/rm of {victim} (primary of {led:?}) answered in {:?}", t.elapsed());
    let n = log.lock().unwrap().acked.len() + 300;
    load.wait(Duration::from_secs(30), "writes after /rm", |l| l.acked.len() >= n).await;
    load.stop().await;

    let st = status(c.addr).await;
    assert_eq!(st["N"], 5);
    assert!(!placement(&st).contains_key(&victim), "{st}");
    let p = primaries(&st);
    assert_eq!(p.len(), 4, "{st}");
    for (shard, primary) in &p {
        assert_ne!(primary, &victim, "{shard}");
        assert!(holders(&st, shard).contains(primary), "{st}");
    }
    let root = c.proc.pid();
    let vr = &victim;
    poll(Duration::from_secs(15), || async move { node_pid(root, vr).is_none().then_some(()) })
        .await
        .expect("the removed server's process stops");
    check_acknowledged(&c.db, &log, 0, 4 * WIDE).await;
    let acked = log.lock().unwrap().acked.clone();
    let all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    wait_replicas_agree(&c.db, &st, &all, &acked, Duration::from_secs(30)).await;
    let l = log.lock().unwrap();
    eprintln!("/rm under load: {}", l.summary());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_places_a_shard_no_server_lists_and_names_missing_servers() {
    // N = 3 with one server listed: two more get random names; sh2 is on no server's list.
    let config = json!({"N": 3,
        "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]},
        "shards": [{"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": 4096},
                   {"Stud_id_low": 4096, "Shard_id": "sh2", "Shard_size": 4096}],
        "servers": {"Server0": ["sh1"]}});
    let c = up_with(&config).await;
    let st = status(c.addr).await;
    assert_eq!(st["N"], 3);
    let place = placement(&st);
    assert_eq!(place.len(), 3, "{st}");
    assert!(place["Server0"].contains(&"sh1".to_string()));
    for name in place.keys().filter(|n| *n != "Server0") {
        let id = name.strip_prefix("Server").unwrap_or_else(|| panic!("{name}"));
        assert!(id.len() == 6 && id.bytes().all(|b| b.is_ascii_digit()), "{name}");
        let root = c.proc.pid();
        assert!(node_pid(root, name).is_some(), "{name} is not running");
    }
    let sh2 = holders(&st, "sh2");
    assert!(!sh2.is_empty(), "sh2 was not placed: {st}");
    assert_eq!(primaries(&st).len(), 2, "{st}");
    let got = c.db.write(&[row(1), row(4096), row(8191)]).await.unwrap();
    assert_eq!(got, 3);
    assert_eq!(c.db.read(0, 9000).await.unwrap(), [row(1), row(4096), row(8191)]);
    for server in sh2 {
        let got = c.db.read_server(&server).await.unwrap();
        assert_eq!(got["sh2"], [row(4096), row(8191)], "{server}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_takes_shards_with_and_without_their_range() {
    let dir = tempfile::tempdir().unwrap();
    let node = common::NodeProc::start("Server0", dir.path());
    let h = node.http;
    let schema = default_config()["schema"].clone();
    let cfg = json!({"schema": schema,
                     "shards": [{"Shard_id": "sh1", "Stud_id_low": 0, "Shard_size": 4096}, "sh2"]});
    let got = http(h, "POST", "/config", Some(cfg)).await;
    assert_eq!(
        got,
        (200, json!({"message": "Server0:sh1, Server0:sh2 configured", "status": "success"}))
    );
    // sh1's range is known: 5000 is outside it. sh2's is not: anything goes.
    let w = json!({"shard": "sh1", "data": [row(1), row(5000)]});
    assert_failure(&http(h, "POST", "/write", Some(w)).await, 400, "5000");
    let w = json!({"shard": "sh1", "curr_idx": 0, "data": [row(1), row(4095)]});
    let got = http(h, "POST", "/write", Some(w)).await;
    assert_eq!(
        got,
        (200, json!({"message": "Data entries added", "current_idx": 2, "status": "success"}))
    );
    let w = json!({"shard": "sh2", "data": [row(5000), row(1)]});
    let got = http(h, "POST", "/write", Some(w)).await;
    assert_eq!(
        got,
        (200, json!({"message": "Data entries added", "current_idx": 2, "status": "success"}))
    );
    let w = json!({"shard": "sh2", "data": [row(7), row(5000)]});
    assert_failure(&http(h, "POST", "/write", Some(w)).await, 400, "5000");
    let got = http(h, "GET", "/copy", Some(json!({"shards": ["sh1", "sh2"]}))).await;
    let want = json!({"sh1": [row(1), row(4095)], "sh2": [row(1), row(5000)], "status": "success"});
    assert_eq!(got, (200, want));
    assert_failure(
        &http(h, "GET", "/copy", Some(json!({"shards": ["sh1", "sh3"]}))).await,
        400,
        "sh3",
    );
    let r = json!({"shard": "sh3", "Stud_id": {"low": 0, "high": 10}});
    assert_eq!(http(h, "POST", "/read", Some(r)).await.0 / 100, 4);
    let r = json!({"shard": "sh1", "Stud_id": {"low": 10, "high": 0}});
    assert_failure(&http(h, "POST", "/read", Some(r)).await, 400, "");
}
