//! Fault injection, scenario 1: random `kill -9` of nodes (never more than one replica of a
//! shard down at once) while clients insert (one row or several), update, delete and read
//! (one key or a range) through one router. The whole history is checked for
//! linearizability per group of keys (`workload::GROUP` adjacent keys of one shard, which multi-row
//! writes and range reads stay in) by `stateright`'s tester, every acknowledged change is on
//! every replica at the end, and the replicas are identical.
//!
//! CI runs a few kills; `SHARDGATE_SOAK_KILLS=60 cargo test --release --test fault_kill`
//! runs a soak. A history the checker rejects is written to the test's output folder.

mod common;

#[path = "common/history.rs"]
mod history;
#[path = "common/workload.rs"]
mod workload;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use client::Db;
use common::*;
use history::{History, Op, Outcome, Ret};
use rand::{Rng, SeedableRng};
use workload::{config, Clients, Workload, GROUP, KEYS};

const SERVERS: [&str; 3] = ["Server1", "Server2", "Server3"];
const CLIENTS: u64 = 6;
/// Rounds of a soak whose history is checked as one (a long history is slow to check).
const SEGMENT_ROUNDS: usize = 10;
/// Operations the clients complete, all replicas up, between one recovery and the next kill.
const OPS_BETWEEN_KILLS: usize = 80;

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
        (live_replicas(http, "sh1").await? == 3 && live_replicas(http, "sh2").await? == 3)
            .then_some(())
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
    let db = workload::connect(up.addr("binary")).await;
    let w = Workload::of_fault_tests();
    // Checked segment by segment (see workload.rs), each from the rows the last ended with.
    let mut clients = Clients::start(&db, &w, CLIENTS, 0, &[]);
    let mut ops = 0;
    let mut unknown = 0;

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
        let progressed = clients.progress(OPS_BETWEEN_KILLS, Duration::from_secs(30)).await;
        assert!(progressed, "the clients made no progress after a recovery");
        if (k + 1) % SEGMENT_ROUNDS == 0 && k + 1 < kills {
            let (o, u) = clients.history().counts();
            (ops, unknown) = (ops + o, unknown + u);
            let rows = clients.finish(&db, &SERVERS, &KEYS, "fault_kill").await;
            clients = Clients::start(&db, &w, CLIENTS, (k + 1) as u64, &rows);
        }
    }
    let (o, u) = clients.history().counts();
    (ops, unknown) = (ops + o, unknown + u);
    // Every replica holds the same rows, they are what the router reads, and the history
    // is linearizable.
    let everything = clients.finish(&db, &SERVERS, &KEYS, "fault_kill").await;
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
}

/// What users do: a second `kill -9` inside the respawn window of the first (the victim's
/// new process is up, perhaps not configured yet), of the shard's new primary or of another
/// replica. Two of three voters stay alive after the second kill, so every shard must take
/// writes again within [`workload::PRIMARY_AGAIN_WITHIN`]; histories stay linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_kill_inside_the_respawn_window_leaves_no_shard_without_a_primary() {
    let rounds: usize =
        std::env::var("SHARDGATE_SOAK_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let up = ClusterProc::up(0, dir.path(), &["--init", &config()]);
    let db = workload::connect_with_probes(up.addr("binary")).await;
    let w = Workload::of_fault_tests();
    // Checked segment by segment (see workload.rs), each from the rows the last ended with.
    let mut clients = Clients::start(&db, &w, CLIENTS, 0, &[]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut again = Vec::new();
    for k in 0..rounds {
        let st = db.status().await.unwrap();
        let first = st["shards"][k % 2]["primary"].as_str().unwrap_or(SERVERS[0]).to_string();
        let pid1 = node_pid(up.pid(), &first).expect("the first victim runs");
        signal(pid1, "KILL");
        // The respawn window: the first victim's new process exists.
        let respawned = poll(Duration::from_secs(10), || async {
            node_pid(up.pid(), &first).filter(|p| *p != pid1)
        })
        .await;
        assert!(respawned.is_some(), "{first} was not started again within 10 s");
        // Somewhere in the window: while it starts, is configured, or catches up (the wait
        // is the nemesis's timing, not a synchronization).
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..400))).await;
        // The second victim: the shard's primary as the router now sees it (if it moved
        // already), else another replica at random.
        let st = db.status().await.unwrap();
        let now = st["shards"][k % 2]["primary"].as_str().unwrap_or_default().to_string();
        let second = if !now.is_empty() && now != first && k % 2 == 0 {
            now
        } else {
            let others: Vec<&str> = SERVERS.iter().copied().filter(|s| *s != first).collect();
            others[rng.gen_range(0..others.len())].to_string()
        };
        let pid2 = node_pid(up.pid(), &second).expect("the second victim runs");
        signal(pid2, "KILL");
        let took = workload::until_every_shard_writes(&db, k, Duration::from_secs(60)).await;
        let took = took.unwrap_or_else(|| {
            panic!("round {k}: a shard had no primary for 60 s after killing {first} then {second}")
        });
        eprintln!("fault_kill: round {k}: killed {first}, then {second} in its respawn window; every shard writes after {took:?}");
        again.push(took);
        back(&up, &db, &first, pid1).await;
        back(&up, &db, &second, pid2).await;
        let progressed = clients.progress(OPS_BETWEEN_KILLS, Duration::from_secs(30)).await;
        assert!(progressed, "the clients made no progress after a recovery");
        if (k + 1) % SEGMENT_ROUNDS == 0 && k + 1 < rounds {
            let rows = clients.finish(&db, &SERVERS, &KEYS, "fault_kill_double").await;
            clients = Clients::start(&db, &w, CLIENTS, (k + 1) as u64, &rows);
        }
    }
    clients.finish(&db, &SERVERS, &KEYS, "fault_kill_double").await;
    again.sort();
    eprintln!(
        "fault_kill: {rounds} double kills; every shard took writes again after p50 {:?}, max {:?}",
        again[again.len() / 2],
        again[again.len() - 1]
    );
    let worst = again[again.len() - 1];
    assert!(
        worst <= workload::PRIMARY_AGAIN_WITHIN,
        "a shard was without a primary for {worst:?} (rule: {:?})",
        workload::PRIMARY_AGAIN_WITHIN
    );
}

/// The checker itself rejects what it must: a read that returns a value overwritten before
/// it began, a read of a row deleted before it began, and a range read that sees half of
/// a multi-row write.
#[test]
fn the_checker_rejects_stale_reads() {
    let row = |k: i64, v: &str| (k, v.to_string());
    let h = History::new();
    let w = h.invoke(1, Op::Insert(vec![row(7, "a")]));
    h.complete(w, Outcome::Ok(Ret::Done));
    let u = h.invoke(1, Op::Update(7, "b".into()));
    h.complete(u, Outcome::Ok(Ret::Done));
    let r = h.invoke(2, Op::Read(7, 7));
    h.complete(r, Outcome::Ok(Ret::Rows(vec![row(7, "a")])));
    assert_eq!(h.non_linearizable_groups().unwrap(), [7]);

    let h = History::new();
    let w = h.invoke(1, Op::Insert(vec![row(8, "a")]));
    h.complete(w, Outcome::Ok(Ret::Done));
    // An update whose outcome is unknown may explain a later read of its value...
    let maybe = h.invoke(2, Op::Update(8, "x".into()));
    h.complete(maybe, Outcome::Unknown("timeout".into()));
    let r = h.invoke(3, Op::Read(8, 8));
    h.complete(r, Outcome::Ok(Ret::Rows(vec![row(8, "x")])));
    assert!(h.non_linearizable_groups().unwrap().is_empty());
    // ...but nothing explains a deleted row coming back.
    let d = h.invoke(3, Op::Delete(8));
    h.complete(d, Outcome::Ok(Ret::Done));
    let r = h.invoke(4, Op::Read(8, 8));
    h.complete(r, Outcome::Ok(Ret::Rows(vec![row(8, "a")])));
    assert_eq!(h.non_linearizable_groups().unwrap(), [8]);

    // Groups of four keys: a write of rows 4 and 6 happens whole or not at all.
    let h = History::grouped(GROUP);
    let w = h.invoke(1, Op::Insert(vec![row(4, "a"), row(6, "a")]));
    h.complete(w, Outcome::Unknown("timeout".into()));
    let r = h.invoke(2, Op::Read(4, 7));
    h.complete(r, Outcome::Ok(Ret::Rows(vec![row(4, "a"), row(6, "a")])));
    assert!(h.non_linearizable_groups().unwrap().is_empty());
    let r = h.invoke(2, Op::Read(4, 7));
    h.complete(r, Outcome::Ok(Ret::Rows(vec![row(6, "a")])));
    assert_eq!(h.non_linearizable_groups().unwrap(), [1], "half a write seen after all of it");
    let h = History::grouped(GROUP);
    let w = h.invoke(1, Op::Insert(vec![row(4, "a"), row(6, "a")]));
    h.complete(w, Outcome::Ok(Ret::Done));
    let x = h.invoke(2, Op::Insert(vec![row(5, "b"), row(6, "b")]));
    h.complete(x, Outcome::Ok(Ret::Done));
    assert_eq!(h.non_linearizable_groups().unwrap(), [1], "a write over an existing row");
}

/// The memoized search and `stateright`'s exhaustive tester agree on random small histories
/// of three clients on one group (most made linearizable by answering each operation from
/// a model at its completion, some answers then changed, some outcomes unknown).
#[test]
fn the_search_agrees_with_stateright() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (mut yes, mut no) = (0, 0);
    for _ in 0..400 {
        let h = History::grouped(GROUP);
        let mut model = history::Group::default();
        let mut open: Vec<Option<(history::Pending, Op)>> = vec![None, None, None];
        let mut thread_of = [0u64, 1, 2];
        for step in 0..18 {
            let t = rng.gen_range(0..3);
            match open[t].take() {
                None => {
                    let k = rng.gen_range(4..7);
                    let name = format!("v{step}");
                    let op = match rng.gen_range(0..5) {
                        0 => Op::Insert(vec![(k, name)]),
                        1 => Op::Insert(vec![(4, name.clone()), (6, name)]),
                        2 => Op::Update(k, name),
                        3 => Op::Delete(k),
                        _ => Op::Read(4, 6),
                    };
                    open[t] = Some((h.invoke(thread_of[t], op.clone()), op));
                }
                Some((p, op)) => {
                    use stateright::semantics::SequentialSpec;
                    let ret = model.invoke(&op);
                    match rng.gen_range(0..10) {
                        0 => {
                            h.complete(p, Outcome::Unknown("lost".into()));
                            thread_of[t] += 10;
                        }
                        1 => h.complete(p, Outcome::Ok(Ret::Missing)),
                        2 => h.complete(p, Outcome::Ok(Ret::Rows(vec![]))),
                        _ => h.complete(p, Outcome::Ok(ret)),
                    }
                }
            }
        }
        let budget = Duration::from_secs(60);
        let ours = h.check(budget).unwrap();
        let theirs = h.cross_check(budget).unwrap();
        assert!(ours.undecided.is_empty() && theirs.undecided.is_empty());
        assert_eq!(ours.wrong, theirs.wrong, "the checkers disagree on:\n{}", h.render(&[]));
        if ours.wrong.is_empty() {
            yes += 1;
        } else {
            no += 1;
        }
    }
    // Both kinds of history were seen, so both answers were compared.
    assert!(yes > 40 && no > 40, "{yes} linearizable, {no} not");
}
