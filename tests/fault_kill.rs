//! Fault injection, scenario 1: random `kill -9` of nodes (never more than one replica of a
//! shard down at once) while clients insert, update, delete and read through one router.
//! The whole history is checked for linearizability per key by `stateright`'s tester, every
//! acknowledged change is on every replica at the end, and the replicas are identical.
//!
//! CI runs a few kills; `SHARDGATE_SOAK_KILLS=60 cargo test --release --test fault_kill`
//! runs a soak. A history the checker rejects is written to the test's output folder.

mod common;

#[path = "common/history.rs"]
mod history;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Db, DbError, DbOptions};
use common::*;
use history::{History, Op, Outcome, Ret};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};

const SERVERS: [&str; 3] = ["Server1", "Server2", "Server3"];
/// Keys the clients work on: a few per shard, so that operations on one key overlap.
const KEYS: [i64; 24] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008,
    1009, 1010, 1011,
];
const CLIENTS: u64 = 6;
/// Operations the clients complete, all replicas up, between one recovery and the next kill.
const OPS_BETWEEN_KILLS: usize = 80;
/// Most operations one client makes (the loop ends earlier when the kills are done).
const MAX_OPS_PER_CLIENT: usize = 2000;

fn config() -> String {
    json!({"N": 3,
        "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]},
        "shards": [{"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": 1000},
                   {"Stud_id_low": 1000, "Shard_id": "sh2", "Shard_size": 1000}],
        "servers": {"Server1": ["sh1", "sh2"], "Server2": ["sh1", "sh2"], "Server3": ["sh1", "sh2"]}})
    .to_string()
}

fn row(key: i64, name: &str) -> Json {
    json!({"Stud_id": key, "Stud_name": name, "Stud_marks": 1})
}

/// The history's view of a change's answer.
fn change_outcome(r: Result<(), DbError>, op: &Op) -> Result<Outcome, String> {
    match r {
        Ok(()) => Ok(Outcome::Ok(Ret::Done)),
        Err(e) if e.status == 400 && matches!(op, Op::Insert(_)) => {
            if e.message.contains("already exists") {
                Ok(Outcome::Ok(Ret::Exists))
            } else {
                Err(format!("an insert was refused for another reason: {e}"))
            }
        }
        Err(e) if e.status == 404 && matches!(op, Op::Update(_) | Op::Delete) => {
            Ok(Outcome::Ok(Ret::Missing))
        }
        Err(e) if e.status == 400 || e.status == 404 => Err(format!("{op:?} refused: {e}")),
        // No answer, a 5xx, a 409 after the deadline: it may or may not have happened.
        Err(e) => Ok(Outcome::Unknown(e.to_string())),
    }
}

/// One client: random operations on random keys until `stop` or its budget is spent.
async fn client_loop(
    c: u64,
    db: Db,
    h: Arc<History>,
    stop: Arc<AtomicBool>,
    bad: Arc<std::sync::Mutex<Vec<String>>>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(c);
    let mut thread = c * 1_000_000;
    for n in 0..MAX_OPS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = KEYS[rng.gen_range(0..KEYS.len())];
        let name = format!("c{c}n{n}");
        let op = match rng.gen_range(0..10) {
            0..=3 => Op::Read,
            4..=5 => Op::Insert(name.clone()),
            6..=7 => Op::Update(name.clone()),
            _ => Op::Delete,
        };
        let p = h.invoke(thread, key, op.clone());
        let outcome = match &op {
            Op::Read => match db.read(key, key).await {
                Ok(rows) => {
                    let v = rows.first().and_then(|r| r["Stud_name"].as_str().map(str::to_string));
                    Outcome::Ok(Ret::Value(v))
                }
                Err(e) => Outcome::Unknown(e.to_string()),
            },
            Op::Insert(v) => change_or_bad(db.write(&[row(key, v)]).await.map(drop), &op, &bad),
            Op::Update(v) => change_or_bad(db.update(key, &row(key, v)).await, &op, &bad),
            Op::Delete => change_or_bad(db.delete(key).await, &op, &bad),
        };
        let unknown = matches!(outcome, Outcome::Unknown(_));
        h.complete(p, outcome);
        if unknown {
            // Like a crashed Jepsen process: this thread's operation stays open forever.
            thread += 1;
        }
    }
}

fn change_or_bad(r: Result<(), DbError>, op: &Op, bad: &std::sync::Mutex<Vec<String>>) -> Outcome {
    match change_outcome(r, op) {
        Ok(o) => o,
        Err(why) => {
            bad.lock().unwrap().push(why.clone());
            Outcome::Unknown(why)
        }
    }
}

/// Waits until `server` is back (a new process) and serves its shards through the router.
async fn back(up: &ClusterProc, db: &Db, server: &str, old_pid: u32) -> Duration {
    let t = Instant::now();
    // Back means serving again as a voter of both shards: a second kill before that would
    // leave a shard with one live voter, which stalls (a liveness limit noted in the README).
    let http = up.http();
    let ok = poll(Duration::from_secs(60), || async {
        let pid = node_pid(up.pid(), server)?;
        (pid != old_pid).then_some(())?;
        db.read_server(server).await.ok()?;
        let mut c = client::HttpClient::connect(http).await.ok()?;
        let metrics = String::from_utf8(c.request("GET", "/metrics", b"").await.ok()?.body).ok()?;
        let voters = |shard: &str| {
            let prefix = format!("shardgate_db_shard_live_replicas{{shard=\"{shard}\"}} ");
            metrics.lines().find_map(|l| l.strip_prefix(&prefix)).map(str::trim) == Some("3")
        };
        (voters("sh1") && voters("sh2")).then_some(())
    })
    .await;
    assert!(ok.is_some(), "{server} did not come back within 60 s");
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_keeps_every_key_linearizable() {
    let kills: usize =
        std::env::var("SHARDGATE_SOAK_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config();
    let up = ClusterProc::up(0, dir.path(), &["--init", &cfg]);
    let options = DbOptions { request_timeout: Duration::from_secs(10), ..Default::default() };
    let db = Db::connect_binary_with(up.addr("binary"), options).await.unwrap();
    let h = Arc::new(History::new());
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        clients.push(tokio::spawn(client_loop(
            c,
            db.clone(),
            h.clone(),
            stop.clone(),
            bad.clone(),
        )));
    }

    // The nemesis: one node at a time, the next kill once the last victim is back.
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let killed = AtomicUsize::new(0);
    let mut recoveries = Vec::new();
    let mut primaries_killed = 0;
    for k in 0..kills {
        // Every other victim is a shard's primary (from /status); the rest are random.
        let primary = if k % 2 == 0 {
            let st = db.status().await.unwrap();
            let shard = &st["shards"][k / 2 % 2];
            shard["primary"].as_str().map(str::to_string)
        } else {
            None
        };
        let server = match primary.as_deref().and_then(|p| SERVERS.iter().find(|s| **s == p)) {
            Some(s) => {
                primaries_killed += 1;
                *s
            }
            None => SERVERS[rng.gen_range(0..SERVERS.len())],
        };
        let pid = node_pid(up.pid(), server).expect("the victim runs");
        signal(pid, "KILL");
        killed.fetch_add(1, Ordering::Relaxed);
        recoveries.push(back(&up, &db, server, pid).await);
        // Let the clients make progress with every replica up before the next kill.
        let before = h.counts().0;
        let progressed = poll(Duration::from_secs(30), || async {
            (h.counts().0 >= before + OPS_BETWEEN_KILLS).then_some(())
        })
        .await;
        assert!(progressed.is_some(), "the clients made no progress after a recovery");
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let bad = bad.lock().unwrap().clone();
    assert!(bad.is_empty(), "refusals that must not happen: {bad:?}");

    // Every replica holds the same rows, and they are what the router reads.
    let everything = db.read(0, 1999).await.unwrap();
    let converged = poll(Duration::from_secs(30), || async {
        let mut per_server = Vec::new();
        for s in SERVERS {
            let shards = db.read_server(s).await.ok()?;
            let mut rows: Vec<Json> = shards.into_values().flatten().collect();
            rows.sort_by_key(|r| r["Stud_id"].as_i64());
            per_server.push(rows);
        }
        per_server.iter().all(|r| r == &everything).then_some(())
    })
    .await;
    assert!(converged.is_some(), "replicas differ from each other or from the router's read");
    // The final state joins the history as reads that started after everything else ended.
    for key in KEYS {
        let v = everything
            .iter()
            .find(|r| r["Stud_id"].as_i64() == Some(key))
            .and_then(|r| r["Stud_name"].as_str().map(str::to_string));
        let p = h.invoke(u64::MAX - 1, key, Op::Read);
        h.complete(p, Outcome::Ok(Ret::Value(v)));
    }

    let (ops, unknown) = h.counts();
    recoveries.sort();
    eprintln!(
        "fault_kill: {} kills ({primaries_killed} of a primary), {ops} operations ({unknown} with unknown outcome), {} rows at the end; \
         victim back and serving after p50 {:?}, max {:?}",
        killed.load(Ordering::Relaxed),
        everything.len(),
        recoveries.get(recoveries.len() / 2),
        recoveries.last()
    );
    assert!(ops >= OPS_BETWEEN_KILLS * kills, "too few operations to mean anything: {ops}");
    let wrong = h.non_linearizable_keys().unwrap();
    if !wrong.is_empty() {
        let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault_kill-history.txt");
        let _ = std::fs::write(&out, h.render(&wrong));
        panic!("history not linearizable for keys {wrong:?}; written to {}", out.display());
    }
}

/// The checker itself rejects what it must: a read that returns a value overwritten before
/// it began, and a read of a row deleted before it began.
#[test]
fn the_checker_rejects_stale_reads() {
    let h = History::new();
    let w = h.invoke(1, 7, Op::Insert("a".into()));
    h.complete(w, Outcome::Ok(Ret::Done));
    let u = h.invoke(1, 7, Op::Update("b".into()));
    h.complete(u, Outcome::Ok(Ret::Done));
    let r = h.invoke(2, 7, Op::Read);
    h.complete(r, Outcome::Ok(Ret::Value(Some("a".into()))));
    assert_eq!(h.non_linearizable_keys().unwrap(), [7]);

    let h = History::new();
    let w = h.invoke(1, 8, Op::Insert("a".into()));
    h.complete(w, Outcome::Ok(Ret::Done));
    // An insert whose outcome is unknown may explain a later read of its value...
    let maybe = h.invoke(2, 8, Op::Update("x".into()));
    h.complete(maybe, Outcome::Unknown("timeout".into()));
    let r = h.invoke(3, 8, Op::Read);
    h.complete(r, Outcome::Ok(Ret::Value(Some("x".into()))));
    assert!(h.non_linearizable_keys().unwrap().is_empty());
    // ...but nothing explains a deleted row coming back.
    let d = h.invoke(3, 8, Op::Delete);
    h.complete(d, Outcome::Ok(Ret::Done));
    let r = h.invoke(4, 8, Op::Read);
    h.complete(r, Outcome::Ok(Ret::Value(Some("a".into()))));
    assert_eq!(h.non_linearizable_keys().unwrap(), [8]);
}
