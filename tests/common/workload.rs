//! The Jepsen-style client workload of the fault tests: each client makes random inserts
//! (one row or several), updates, deletes and reads (one key or a range) through a [`Db`]
//! and records every operation in a [`History`] (see `history.rs`; include both modules).
//! [`Clients`] runs a set of them for one segment of a test: a long soak is checked segment
//! by segment, each history starting from the rows the previous one ended with (checking
//! one long history is exponential in the worst case).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use client::{Db, DbError};
use protocol::Consistency;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};

use super::history::{History, Op, Outcome, Ret};

/// The `/init` body of the fault tests: Server1..3 each hold both shards, sh1 (ids 0-999)
/// and sh2 (1000-1999).
pub fn config() -> String {
    super::two_shards(1000)
}

/// The keys of the kill and power-cut tests: a few per shard of [`config`], so that
/// operations on one key overlap.
pub const KEYS: [i64; 24] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008,
    1009, 1010, 1011,
];
/// Keys per group of those tests' histories (four adjacent keys, one shard each).
pub const GROUP: i64 = 4;

/// Probe keys, one per shard of [`config`], outside [`KEYS`]: updated to tell when a shard
/// takes writes again (write them once first).
pub const PROBES: [(&str, i64); 2] = [("sh1", 900), ("sh2", 1900)];
/// The liveness rule (README "Guarantees"): once a majority of a shard's voters is alive, it
/// takes writes again within this.
pub const PRIMARY_AGAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);

/// A binary client of the router at `addr`, 10 s per request.
pub async fn connect(addr: std::net::SocketAddr) -> Db {
    let options = client::DbOptions {
        request_timeout: std::time::Duration::from_secs(10),
        ..Default::default()
    };
    Db::connect_binary_with(addr, options).await.expect("connect to the router")
}

/// [`connect`], and the [`PROBES`] rows written.
pub async fn connect_with_probes(addr: std::net::SocketAddr) -> Db {
    let db = connect(addr).await;
    for (_, key) in PROBES {
        db.write(&[row(key, "probe")]).await.expect("write a probe row");
    }
    db
}

/// How long until every shard takes an update of its probe key again (`None`: not within
/// `limit`). `round` names the update.
pub async fn until_every_shard_writes(
    db: &Db,
    round: usize,
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    let t = std::time::Instant::now();
    for (shard, key) in PROBES {
        let name = format!("probe{round}");
        let done = super::poll(limit.saturating_sub(t.elapsed()), || async {
            db.update(key, &row(key, &name)).await.ok()
        })
        .await;
        if done.is_none() {
            eprintln!("{shard} took no write within {limit:?}");
            return None;
        }
    }
    Some(t.elapsed())
}

/// A row of the default schema for `key` named `name`.
pub fn row(key: i64, name: &str) -> Json {
    json!({"Stud_id": key, "Stud_name": name, "Stud_marks": 1})
}

/// What one client does.
#[derive(Clone)]
pub struct Workload {
    /// Keys the clients work on: few, so that operations on one key overlap.
    pub keys: Vec<i64>,
    /// Most operations one client makes (it stops earlier when told).
    pub max_ops: usize,
    /// How reads are made.
    pub reads: Consistency,
    /// Keys per group (as the history's `History::grouped`): a multi-row write or a range
    /// read stays inside one group, which lies in one shard; 1 for single-key operations.
    pub group: i64,
}

/// The history's view of a change's answer; `Err` for a refusal that must not happen.
pub fn change_outcome(r: Result<(), DbError>, op: &Op) -> Result<Outcome, String> {
    match r {
        Ok(()) => Ok(Outcome::Ok(Ret::Done)),
        Err(e) if e.status == 400 && matches!(op, Op::Insert(_)) => {
            if e.message.contains("already exists") {
                Ok(Outcome::Ok(Ret::Exists))
            } else {
                Err(format!("an insert was refused for another reason: {e}"))
            }
        }
        Err(e) if e.status == 404 && matches!(op, Op::Update(..) | Op::Delete(_)) => {
            Ok(Outcome::Ok(Ret::Missing))
        }
        Err(e) if e.status == 400 || e.status == 404 => Err(format!("{op:?} refused: {e}")),
        // No answer, a 5xx, a 409 after the deadline: it may or may not have happened.
        Err(e) => Ok(Outcome::Unknown(e.to_string())),
    }
}

/// One client (`c` seeds its choices and names its history threads): random operations on
/// random keys until `stop` or its budget is spent. Refusals that must not happen go to
/// `bad`.
pub async fn client_loop(
    c: u64,
    db: Db,
    w: Workload,
    h: Arc<History>,
    stop: Arc<AtomicBool>,
    bad: Arc<Mutex<Vec<String>>>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(c);
    let mut thread = c * 1_000_000;
    let group = w.group.max(1);
    for n in 0..w.max_ops {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = w.keys[rng.gen_range(0..w.keys.len())];
        let mates: Vec<i64> = w
            .keys
            .iter()
            .copied()
            .filter(|k| k.div_euclid(group) == key.div_euclid(group))
            .collect();
        let name = format!("c{c}n{n}");
        let op = match rng.gen_range(0..20) {
            0..=5 => Op::Read(key, key),
            6..=7 => Op::Read(mates[0], mates[mates.len() - 1]),
            8..=10 => Op::Insert(vec![(key, name.clone())]),
            11..=12 => {
                // Several rows of the group in one write.
                let mut keys = mates.clone();
                keys.retain(|_| rng.gen_bool(0.6));
                if keys.is_empty() {
                    keys.push(key);
                }
                Op::Insert(keys.into_iter().map(|k| (k, name.clone())).collect())
            }
            13..=16 => Op::Update(key, name.clone()),
            _ => Op::Delete(key),
        };
        let p = h.invoke(thread, op.clone());
        let change = |r: Result<(), DbError>| match change_outcome(r, &op) {
            Ok(o) => o,
            Err(why) => {
                bad.lock().unwrap_or_else(|e| e.into_inner()).push(why.clone());
                Outcome::Unknown(why)
            }
        };
        let outcome = match &op {
            Op::Read(low, high) => {
                let rows = match w.reads {
                    Consistency::Linearizable => db.read_linearizable(*low, *high).await,
                    _ => db.read(*low, *high).await,
                };
                match rows {
                    Ok(rows) => Outcome::Ok(Ret::Rows(named(&rows))),
                    Err(e) => Outcome::Unknown(e.to_string()),
                }
            }
            Op::Insert(rows) => {
                let rows: Vec<Json> = rows.iter().map(|(k, v)| row(*k, v)).collect();
                change(db.write(&rows).await.map(drop))
            }
            Op::Update(k, v) => change(db.update(*k, &row(*k, v)).await),
            Op::Delete(k) => change(db.delete(*k).await),
        };
        let unknown = matches!(outcome, Outcome::Unknown(_));
        h.complete(p, outcome);
        if unknown {
            // Like a crashed Jepsen process: this thread's operation stays open forever.
            thread += 1;
        }
    }
}

/// Rows as the history sees them: (Stud_id, Stud_name), in key order.
fn named(rows: &[Json]) -> Vec<(i64, String)> {
    let mut out: Vec<(i64, String)> = rows
        .iter()
        .filter_map(|r| Some((r["Stud_id"].as_i64()?, r["Stud_name"].as_str()?.to_string())))
        .collect();
    out.sort();
    out
}

/// The end of a run: reads every row of the fault tests' two shards through `db`, waits (up
/// to 30 s) until each of `servers` holds exactly those rows, fails the test if one does
/// not, and adds the final state to the history as a read of each group of `keys` that
/// started after everything else ended. Returns the rows.
pub async fn final_state(db: &Db, servers: &[&str], h: &History, keys: &[i64]) -> Vec<Json> {
    let everything = db.read(0, 1999).await.expect("a final read of every row");
    if std::env::var_os("SHARDGATE_TEST_TRACE").is_some() {
        let keys: Vec<(i64, &str)> = everything
            .iter()
            .filter_map(|r| Some((r["Stud_id"].as_i64()?, r["Stud_name"].as_str()?)))
            .collect();
        eprintln!("final_state: the router read {} rows: {keys:?}", keys.len());
    }
    let converged = super::poll(std::time::Duration::from_secs(30), || async {
        for s in servers {
            let shards = db.read_server(s).await.ok()?;
            let mut rows: Vec<Json> = shards.into_values().flatten().collect();
            rows.sort_by_key(|r| r["Stud_id"].as_i64());
            (rows == everything).then_some(())?;
        }
        Some(())
    })
    .await;
    if converged.is_none() {
        let mut report = String::new();
        for s in servers {
            let held = match db.read_server(s).await {
                Ok(shards) => {
                    let mut rows: Vec<Json> = shards.into_values().flatten().collect();
                    rows.sort_by_key(|r| r["Stud_id"].as_i64());
                    let missing: Vec<&Json> =
                        everything.iter().filter(|r| !rows.contains(r)).collect();
                    let extra: Vec<&Json> =
                        rows.iter().filter(|r| !everything.contains(r)).collect();
                    format!("{} rows; missing {missing:?}; extra {extra:?}", rows.len())
                }
                Err(e) => format!("unreadable: {e}"),
            };
            report.push_str(&format!("\n  {s}: {held}"));
        }
        let status = db.status().await.map(|s| s.to_string()).unwrap_or_default();
        panic!(
            "replicas differ from the router's read ({} rows) after 30 s:{report}\n  /status {status}",
            everything.len()
        );
    }
    let mut groups: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for &key in keys {
        groups.entry(h.group_of(key)).or_default().push(key);
    }
    for members in groups.values() {
        let (low, high) = (members[0], members[members.len() - 1]);
        let rows: Vec<Json> = everything
            .iter()
            .filter(|r| r["Stud_id"].as_i64().is_some_and(|k| (low..=high).contains(&k)))
            .cloned()
            .collect();
        let p = h.invoke(u64::MAX - 1, Op::Read(low, high));
        h.complete(p, Outcome::Ok(Ret::Rows(named(&rows))));
    }
    everything
}

/// Fails the test when the checker rejects the history, or cannot decide it within
/// `SHARDGATE_CHECK_SECS` (default 300 s), after writing the history of those keys to
/// `<test output folder>/history.txt`.
pub fn assert_linearizable(h: &History, test: &str) {
    let secs = std::env::var("SHARDGATE_CHECK_SECS").ok().and_then(|v| v.parse().ok());
    let budget = std::time::Duration::from_secs(secs.unwrap_or(300));
    let v = h.check(budget).unwrap_or_else(|e| panic!("checker failed: {e}"));
    if v.wrong.is_empty() && v.undecided.is_empty() {
        return;
    }
    let groups: Vec<i64> = v.wrong.iter().chain(&v.undecided).copied().collect();
    let out = super::output_dir(test).join("history.txt");
    let _ = std::fs::write(&out, h.render(&groups));
    panic!(
        "history not linearizable for groups {:?}, undecided after {budget:?} for groups {:?}; \
         written to {}",
        v.wrong,
        v.undecided,
        out.display()
    );
}

/// Clients running one segment of a test's workload.
pub struct Clients {
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    bad: Arc<Mutex<Vec<String>>>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// The workload of the kill and power-cut tests: [`KEYS`] in groups of [`GROUP`], default
    /// reads, operations until the test stops the clients.
    pub fn of_fault_tests() -> Workload {
        Workload { keys: KEYS.to_vec(), max_ops: 20_000, reads: Consistency::Default, group: GROUP }
    }
}

impl Clients {
    /// Starts `count` clients of workload `w` through `db` (segment number `segment` seeds
    /// them), recording in a history that starts from the rows `initial`.
    pub fn start(db: &Db, w: &Workload, count: u64, segment: u64, initial: &[Json]) -> Clients {
        let rows: BTreeMap<i64, String> = named(initial).into_iter().collect();
        let history = Arc::new(History::grouped_from(w.group, rows));
        let stop = Arc::new(AtomicBool::new(false));
        let bad = Arc::new(Mutex::new(Vec::new()));
        let handles = (0..count)
            .map(|c| {
                let id = segment * 100 + c;
                let (h, s, b) = (history.clone(), stop.clone(), bad.clone());
                tokio::spawn(client_loop(id, db.clone(), w.clone(), h, s, b))
            })
            .collect();
        Clients { history, stop, bad, handles }
    }

    /// Stops the clients and waits for them (their last operations end).
    pub async fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.handles.drain(..) {
            c.await.expect("a client task");
        }
    }

    /// Whether the clients complete `n` more operations within `within` (polled).
    pub async fn progress(&self, n: usize, within: std::time::Duration) -> bool {
        let before = self.history.counts().0;
        let h = &self.history;
        super::poll(within, || async { (h.counts().0 >= before + n).then_some(()) }).await.is_some()
    }

    /// The history being recorded.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Stops the clients, fails the test on a refusal that must not happen, waits for every
    /// replica of `servers` to hold what the router reads, and checks the history (with that
    /// final state) for linearizability. Returns the rows.
    pub async fn finish(
        mut self,
        db: &Db,
        servers: &[&str],
        keys: &[i64],
        test: &str,
    ) -> Vec<Json> {
        self.halt().await;
        let bad = self.bad.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(bad.is_empty(), "refusals that must not happen: {bad:?}");
        let rows = final_state(db, servers, &self.history, keys).await;
        assert_linearizable(&self.history, test);
        rows
    }
}
