//! The Jepsen-style client workload of the fault tests: each client makes random inserts,
//! updates, deletes and reads of single keys through a [`Db`] and records every operation
//! in a [`History`] (see `history.rs`; include both modules).

#![allow(dead_code)]

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
        Err(e) if e.status == 404 && matches!(op, Op::Update(_) | Op::Delete) => {
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
    for n in 0..w.max_ops {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let key = w.keys[rng.gen_range(0..w.keys.len())];
        let name = format!("c{c}n{n}");
        let op = match rng.gen_range(0..10) {
            0..=3 => Op::Read,
            4..=5 => Op::Insert(name.clone()),
            6..=7 => Op::Update(name.clone()),
            _ => Op::Delete,
        };
        let p = h.invoke(thread, key, op.clone());
        let change = |r: Result<(), DbError>| match change_outcome(r, &op) {
            Ok(o) => o,
            Err(why) => {
                bad.lock().unwrap_or_else(|e| e.into_inner()).push(why.clone());
                Outcome::Unknown(why)
            }
        };
        let outcome = match &op {
            Op::Read => {
                let rows = match w.reads {
                    Consistency::Linearizable => db.read_linearizable(key, key).await,
                    _ => db.read(key, key).await,
                };
                match rows {
                    Ok(rows) => {
                        let v =
                            rows.first().and_then(|r| r["Stud_name"].as_str().map(str::to_string));
                        Outcome::Ok(Ret::Value(v))
                    }
                    Err(e) => Outcome::Unknown(e.to_string()),
                }
            }
            Op::Insert(v) => change(db.write(&[row(key, v)]).await.map(drop)),
            Op::Update(v) => change(db.update(key, &row(key, v)).await),
            Op::Delete => change(db.delete(key).await),
        };
        let unknown = matches!(outcome, Outcome::Unknown(_));
        h.complete(p, outcome);
        if unknown {
            // Like a crashed Jepsen process: this thread's operation stays open forever.
            thread += 1;
        }
    }
}

/// The end of a run: reads every row of the fault tests' two shards through `db`, waits (up
/// to 30 s) until each of `servers` holds exactly those rows, fails the test if one does
/// not, and adds the final state to the history as reads of every key of `keys` that
/// started after everything else ended. Returns the rows.
pub async fn final_state(db: &Db, servers: &[&str], h: &History, keys: &[i64]) -> Vec<Json> {
    let everything = db.read(0, 1999).await.expect("a final read of every row");
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
    assert!(converged.is_some(), "replicas differ from each other or from the router's read");
    for &key in keys {
        let v = everything
            .iter()
            .find(|r| r["Stud_id"].as_i64() == Some(key))
            .and_then(|r| r["Stud_name"].as_str().map(str::to_string));
        let p = h.invoke(u64::MAX - 1, key, Op::Read);
        h.complete(p, Outcome::Ok(Ret::Value(v)));
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
    let keys: Vec<i64> = v.wrong.iter().chain(&v.undecided).copied().collect();
    let out = super::output_dir(test).join("history.txt");
    let _ = std::fs::write(&out, h.render(&keys));
    panic!(
        "history not linearizable for keys {:?}, undecided after {budget:?} for keys {:?}; \
         written to {}",
        v.wrong,
        v.undecided,
        out.display()
    );
}
