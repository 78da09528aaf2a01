//! The nemesis that mixes what users do to a cluster, under the Jepsen-style workload of
//! `fault_kill` (six clients, multi-row writes and range reads, histories checked per group
//! of keys): each round one of
//!
//! - `kill -9` of one node (a shard's primary every other time);
//! - a **power cut** of one node's host: the node is stopped, everything its host wrote but
//!   did not sync is dropped (its data directory is a `PowerCutFs` FUSE mount, see
//!   `common/powercut.rs`), and it is killed; the manager restarts it on what survived;
//! - a double failure: a second `kill -9` inside the first victim's respawn window;
//! - a membership change: `/add` of Server4 to both shards, or `/rm` of it, half the time
//!   with a `kill -9` of a node while it runs.
//!
//! At the end the whole cluster loses power at once (every node and the shard manager, whose
//! catalog log is on a power-cut mount too), `up` starts again on what the disks kept, and
//! every acknowledged write must be there: the final state joins the history, which must be
//! linearizable, and every replica must hold what the router reads. Kill tests alone cannot
//! see a missing sync (a killed process leaves its writes in the page cache); this one can:
//! without the WAL's sync it fails.
//!
//! CI runs a few rounds; `SHARDGATE_SOAK_MIX=100 cargo test --release --test fault_mix --
//! --nocapture` is the soak. Needs root and FUSE (`fuse3`, which `.ci/run` installs);
//! without them the test says it was skipped, and fails under `CI=true`.

mod common;

#[path = "common/history.rs"]
mod history;
#[path = "common/powercut.rs"]
mod powercut;
#[path = "common/workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use client::Db;
use common::*;
use powercut::PowerCutFs;
use rand::{Rng, SeedableRng};
use workload::{config, Clients, Workload, KEYS};

const SERVERS: [&str; 3] = ["Server1", "Server2", "Server3"];
/// The server the membership rounds add and remove.
const EXTRA: &str = "Server4";
const CLIENTS: u64 = 6;
/// Rounds whose history is checked as one (a long history is slow to check).
const SEGMENT_ROUNDS: usize = 10;
/// Operations the clients complete between one recovery and the next fault.
const OPS_BETWEEN_FAULTS: usize = 60;
/// Longest a recovery may take before the test fails.
const RECOVERY: Duration = Duration::from_secs(60);

/// The hosts: one power-cut filesystem per node and one for the shard manager, reached from
/// `up`'s data directory through symbolic links (`manager`, `nodes/NAME`).
struct Hosts {
    root: tempfile::TempDir,
    disks: BTreeMap<String, PowerCutFs>,
}

impl Hosts {
    fn new(names: &[&str]) -> Hosts {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("data/nodes")).unwrap();
        let mut disks = BTreeMap::new();
        for name in names.iter().copied().chain(["manager"]) {
            let at = root.path().join("disks").join(name);
            std::fs::create_dir_all(&at).unwrap();
            disks.insert(name.to_string(), PowerCutFs::mount(&at).expect("mount a power-cut disk"));
        }
        let hosts = Hosts { root, disks };
        std::os::unix::fs::symlink(hosts.disk("manager"), hosts.data().join("manager")).unwrap();
        for name in names {
            hosts.link(name);
        }
        hosts
    }

    /// `up`'s data directory.
    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn disk(&self, name: &str) -> &Path {
        self.disks[name].path()
    }

    /// (Re)links `nodes/NAME` to its disk (`/rm` removes the link with the node's data).
    fn link(&self, name: &str) {
        let at = self.data().join("nodes").join(name);
        if std::fs::symlink_metadata(&at).is_err() {
            std::os::unix::fs::symlink(self.disk(name), &at).unwrap();
        }
    }

    /// Empties the disk of `name`.
    fn wipe(&self, name: &str) {
        for e in std::fs::read_dir(self.disk(name)).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }

    /// Everything host `name` wrote but did not sync is gone; returns the bytes dropped.
    fn cut(&self, name: &str) -> u64 {
        self.disks[name].cut().bytes_dropped
    }
}

/// Waits until `server` is a new process serving its shards, and every shard has all its
/// voters alive, through the router.
async fn back(up: &ClusterProc, db: &Db, server: &str, old_pid: u32) {
    let http = up.http();
    let ok = poll(RECOVERY, || async {
        let pid = node_pid(up.pid(), server)?;
        (pid != old_pid).then_some(())?;
        db.read_server(server).await.ok()?;
        let st = db.status().await.ok()?;
        let voters = |s: &str| {
            st["servers"].as_object().map_or(0, |m| {
                m.values()
                    .filter(|v| v.as_array().is_some_and(|a| a.iter().any(|x| x == s)))
                    .count()
            })
        };
        (live_replicas(http, "sh1").await? == voters("sh1")
            && live_replicas(http, "sh2").await? == voters("sh2"))
        .then_some(())
    })
    .await;
    assert!(ok.is_some(), "{server} did not come back within {RECOVERY:?}");
}

/// Stops `pid`, runs `cut` (the disk loses what was not synced), then kills it: what the
/// process had not synced when it stopped is gone, as after a power loss.
fn power_cut(pid: u32, cut: impl FnOnce() -> u64) -> u64 {
    signal(pid, "STOP");
    let dropped = cut();
    signal(pid, "KILL");
    dropped
}

fn up_on(hosts: &Hosts) -> ClusterProc {
    let data = hosts.data();
    ClusterProc::up(0, &data, &["--init", &config()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_power_cuts_double_failures_and_membership_changes_lose_nothing() {
    if powercut::require().is_none() {
        return;
    }
    let rounds: usize =
        std::env::var("SHARDGATE_SOAK_MIX").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let seed: u64 = std::env::var("SHARDGATE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let hosts = Hosts::new(&[SERVERS[0], SERVERS[1], SERVERS[2], EXTRA]);
    let up = up_on(&hosts);
    let db = workload::connect_with_probes(up.addr("binary")).await;
    let w = Workload::of_fault_tests();
    // Checked segment by segment (see workload.rs), each from the rows the last ended with.
    let mut clients = Clients::start(&db, &w, CLIENTS, 0, &[]);
    let (mut ops, mut unknown) = (0, 0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // After each failure that leaves a majority of every shard's voters alive: how long
    // until every shard took a write again.
    let mut again: Vec<Duration> = Vec::new();
    let mut extra_in = false;
    let mut dropped = 0u64;
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let started = Instant::now();
    for k in 0..rounds {
        let st = db.status().await.unwrap();
        let primary = st["shards"][k % 2]["primary"].as_str().map(str::to_string);
        let mut members: Vec<String> = SERVERS.iter().map(|s| s.to_string()).collect();
        if extra_in {
            members.push(EXTRA.to_string());
        }
        let victim = match primary.filter(|_| k % 2 == 0) {
            Some(p) => p,
            None => members[rng.gen_range(0..members.len())].clone(),
        };
        let kind = ["kill", "power cut", "double kill", "membership"][rng.gen_range(0..4)];
        *tally.entry(kind).or_default() += 1;
        match kind {
            "kill" => {
                let pid = node_pid(up.pid(), &victim).expect("the victim runs");
                signal(pid, "KILL");
                again.push(writes_again(&db, k).await);
                back(&up, &db, &victim, pid).await;
            }
            "power cut" => {
                let pid = node_pid(up.pid(), &victim).expect("the victim runs");
                dropped += power_cut(pid, || hosts.cut(&victim));
                again.push(writes_again(&db, k).await);
                back(&up, &db, &victim, pid).await;
            }
            "double kill" => {
                let pid = node_pid(up.pid(), &victim).expect("the victim runs");
                signal(pid, "KILL");
                let respawned =
                    poll(RECOVERY, || async { node_pid(up.pid(), &victim).filter(|p| *p != pid) })
                        .await;
                assert!(respawned.is_some(), "{victim} was not started again");
                tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
                let others: Vec<&String> = members.iter().filter(|m| **m != victim).collect();
                let second = others[rng.gen_range(0..others.len())].clone();
                let pid2 = node_pid(up.pid(), &second).expect("the second victim runs");
                signal(pid2, "KILL");
                // With four voters, two are down until one is back: no rule applies then.
                if !extra_in {
                    again.push(writes_again(&db, k).await);
                }
                back(&up, &db, &victim, pid).await;
                back(&up, &db, &second, pid2).await;
            }
            _ => {
                // `/add` or `/rm` of EXTRA, and half the time a `kill -9` of the victim while
                // it runs. An admin call that fails midway happens whole or not at all: the
                // catalog says which, and the call is made again until it is done.
                let pid = node_pid(up.pid(), &victim).expect("the victim runs");
                let kill = rng.gen_bool(0.5);
                let delay = Duration::from_millis(rng.gen_range(0..300));
                let deadline = Instant::now() + RECOVERY;
                loop {
                    let listed = |st: &serde_json::Value| st["servers"].get(EXTRA).is_some();
                    let call = async {
                        if extra_in {
                            db.rm(1, &[EXTRA]).await.map(drop)
                        } else {
                            let add = serde_json::json!({"n": 1, "new_shards": [],
                                "servers": {EXTRA: ["sh1", "sh2"]}});
                            db.add(&add).await.map(drop)
                        }
                    };
                    let nemesis = async {
                        if kill && node_pid(up.pid(), &victim) == Some(pid) {
                            tokio::time::sleep(delay).await;
                            signal(pid, "KILL");
                        }
                    };
                    let (r, ()) = tokio::join!(call, nemesis);
                    let st = poll(RECOVERY, || async { db.status().await.ok() }).await;
                    let st = st.expect("/status answers");
                    if listed(&st) != extra_in {
                        break;
                    }
                    assert!(Instant::now() < deadline, "/add or /rm of {EXTRA} never took: {r:?}");
                    eprintln!("fault_mix: round {k}: the admin call failed ({r:?}); again");
                }
                // A killed victim comes back, unless it was the server just removed.
                if kill && !(extra_in && victim == EXTRA) {
                    back(&up, &db, &victim, pid).await;
                }
                if extra_in {
                    // Its data went with it (`/rm` removed the link): a later `/add` starts
                    // it on an empty disk, as on a new machine.
                    hosts.wipe(EXTRA);
                    hosts.link(EXTRA);
                }
                extra_in = !extra_in;
            }
        }
        eprintln!("fault_mix: round {k}: {kind} ({victim}) done at {:?}", started.elapsed());
        let progressed = clients.progress(OPS_BETWEEN_FAULTS, RECOVERY).await;
        assert!(progressed, "the clients made no progress after round {k} ({kind})");
        if (k + 1) % SEGMENT_ROUNDS == 0 && k + 1 < rounds {
            let (o, u) = clients.history().counts();
            (ops, unknown) = (ops + o, unknown + u);
            let rows = clients.finish(&db, &members_of(extra_in), &KEYS, "fault_mix").await;
            clients = Clients::start(&db, &w, CLIENTS, (k + 1) as u64, &rows);
        }
    }
    clients.halt().await;

    // The whole cluster loses power: every node and the manager stop, every disk drops what
    // was not synced, then everything is killed and `up` starts again on what is left.
    let mut pids = node_pids(up.pid());
    pids.push(up.pid());
    for p in &pids {
        signal(*p, "STOP");
    }
    for name in hosts.disks.keys() {
        dropped += hosts.cut(name);
    }
    for p in &pids {
        signal(*p, "KILL");
    }
    drop(up);
    let up = up_on(&hosts);
    let db = workload::connect(up.addr("binary")).await;
    let ready = poll(RECOVERY, || async {
        let st = db.status().await.ok()?;
        let shards = st["shards"].as_array()?;
        shards.iter().all(|s| s["primary"].is_string()).then_some(())?;
        db.read(0, 1999).await.ok()
    })
    .await;
    assert!(
        ready.is_some(),
        "the cluster did not serve again within {RECOVERY:?} of the power cut"
    );
    let (o, u) = clients.history().counts();
    (ops, unknown) = (ops + o, unknown + u);
    let everything = clients.finish(&db, &members_of(extra_in), &KEYS, "fault_mix").await;
    eprintln!(
        "fault_mix: {rounds} rounds {tally:?}, {ops} operations ({unknown} with unknown outcome), \
         {} rows at the end; power cuts dropped {dropped} unsynced bytes",
        everything.len()
    );
    assert!(ops >= OPS_BETWEEN_FAULTS * rounds, "too few operations to mean anything: {ops}");
    again.sort();
    if let (Some(p50), Some(worst)) = (again.get(again.len() / 2), again.last()) {
        eprintln!("fault_mix: every shard wrote again after p50 {p50:?}, max {worst:?}");
        assert!(
            *worst <= workload::PRIMARY_AGAIN_WITHIN,
            "a shard took no write for {worst:?} with a majority of its voters alive (rule: {:?})",
            workload::PRIMARY_AGAIN_WITHIN
        );
    }
}

/// How long until every shard takes a write after a failure (fails the test after
/// [`RECOVERY`]).
async fn writes_again(db: &Db, round: usize) -> Duration {
    let took = workload::until_every_shard_writes(db, round, RECOVERY).await;
    took.unwrap_or_else(|| panic!("round {round}: a shard took no write within {RECOVERY:?}"))
}

/// The servers of the cluster, with or without [`EXTRA`].
fn members_of(extra_in: bool) -> Vec<&'static str> {
    let mut m = SERVERS.to_vec();
    if extra_in {
        m.push(EXTRA);
    }
    m
}
