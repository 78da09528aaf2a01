//! Fault injection, scenario 6 and flaky links: network faults around a shard's primary
//! while the routers still reach it, under a Jepsen-style workload.
//!
//! The whole system runs as real processes, each on its own loopback address so that
//! iptables can hit exactly the links wanted: the manager on 127.0.0.1 (it starts the three
//! nodes on 127.0.X.2-4 with `--node-host`), routers on 127.0.X.5 and .6, the test's
//! clients on 127.0.0.1 talking to the routers. Each round picks the current primary of one
//! shard, hurts its links until the clients have made progress, heals, and waits for the
//! replica set to be whole again.
//!
//! - Two routers, linearizable reads: the primary is cut off from the manager and its
//!   secondaries (both ways in even rounds, only its outgoing packets in odd ones) and a new
//!   one elected. The whole history is linearizable per group of keys (multi-row writes and
//!   range reads included): the old primary neither
//!   acknowledges a write nor answers a read once it may be stale.
//! - One router, default reads, the same cuts: linearizable too (the router's LSN floor).
//! - Two routers, linearizable reads: every link of the primary (routers included) loses
//!   20% of its packets (even rounds; TCP retransmissions make it a slow link), or has every
//!   connection reset (odd rounds).
//!
//! At the end every replica holds what the router reads. CI runs two rounds per test;
//! `SHARDGATE_SOAK_PARTITIONS=20 cargo test --release --test fault_routers` soaks. Needs root
//! and iptables (`.ci/run` installs it); without them each test says it was skipped (and
//! fails under `CI=true`).

mod common;

#[path = "common/history.rs"]
mod history;
#[path = "common/net.rs"]
mod net;
#[path = "common/workload.rs"]
mod workload;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use client::{Db, DbOptions};
use common::*;
use history::History;
use net::Firewall;
use protocol::Consistency;
use workload::{assert_linearizable, client_loop, config, final_state, Workload};

const SERVERS: [&str; 3] = ["Server1", "Server2", "Server3"];
const SHARDS: [&str; 2] = ["sh1", "sh2"];
/// A few keys per shard, so that operations on one key overlap.
const KEYS: [i64; 12] = [0, 1, 2, 3, 4, 5, 1000, 1001, 1002, 1003, 1004, 1005];
/// Keys per group: a multi-row write or a range read covers keys of one group (one shard).
const GROUP: i64 = 2;
/// Operations the clients complete in each phase of a round (cut, healed).
const OPS_PER_PHASE: usize = 60;

/// One cluster at a time: both tests cut links, and two clusters would share the CPU.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A manager with three nodes and `routers` routers, in the loopback block 127.0.`block`.x.
struct System {
    manager: ClusterProc,
    routers: Vec<ClusterProc>,
    _dir: tempfile::TempDir,
}

impl System {
    async fn start(block: u8, routers: u8) -> System {
        let dir = tempfile::tempdir().unwrap();
        let hosts: Vec<String> = (2..=4).map(|i| format!("127.0.{block}.{i}")).collect();
        let cfg = config();
        let manager = ClusterProc::start(&[
            "manager",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--node-host",
            &hosts.join(","),
            "--heartbeat-ms",
            "100",
            "--dead-after-ms",
            "500",
            "--init",
            &cfg,
        ]);
        let control = manager.addr("control").to_string();
        let routers = (0..routers)
            .map(|i| {
                let at = format!("127.0.{block}.{}:0", 5 + i);
                ClusterProc::start(&["lb", "--manager", &control, "--http", &at, "--binary", &at])
            })
            .collect();
        let s = System { manager, routers, _dir: dir };
        s.wait_whole(Duration::from_secs(60)).await;
        s
    }

    /// A client of router `i` over the binary protocol.
    async fn db(&self, i: usize) -> Db {
        let options = DbOptions { request_timeout: Duration::from_secs(10), ..Default::default() };
        Db::connect_binary_with(self.routers[i].addr("binary"), options).await.unwrap()
    }

    /// Waits until every router sees every shard with a primary and three live voters.
    async fn wait_whole(&self, within: Duration) {
        let whole = poll(within, || async {
            for r in &self.routers {
                for shard in SHARDS {
                    (live_replicas(r.http(), shard).await? == 3).then_some(())?;
                }
                let (code, st) = try_http(r.http(), "GET", "/status", None).await.ok()?;
                (code == 200).then_some(())?;
                let primaries = st["shards"].as_array()?.iter().all(|s| s["primary"].is_string());
                primaries.then_some(())?;
            }
            Some(())
        })
        .await;
        assert!(whole.is_some(), "the replica sets were not whole within {within:?}");
    }

    /// The primary of `shard` as router 0 shows it.
    async fn primary(&self, shard: &str) -> Option<String> {
        let (_, st) = try_http(self.routers[0].http(), "GET", "/status", None).await.ok()?;
        st["shards"]
            .as_array()?
            .iter()
            .find(|s| s["Shard_id"] == shard)
            .and_then(|s| s["primary"].as_str().map(str::to_string))
    }

    /// The loopback address node `name` listens on (waited for: the manager may be
    /// replacing the process right now).
    async fn node_ip(&self, name: &str) -> IpAddr {
        let ip = poll(Duration::from_secs(20), || async {
            let pid = node_pid(self.manager.pid(), name)?;
            listening_addrs(pid).first().map(SocketAddr::ip)
        })
        .await;
        ip.unwrap_or_else(|| panic!("{name} does not listen"))
    }
}

/// What each round does to the primary of one shard.
#[derive(Clone, Copy)]
enum Nemesis {
    /// Cut it off from the manager and the other nodes (both ways, then one way).
    Partitions,
    /// Make all of its links lossy, then reset all of its connections.
    FlakyLinks,
}

/// Share of packets a lossy link drops.
const LOSS: f64 = 0.2;

/// Runs the rounds of `nemesis` under six clients (client `c` on router `c % routers`) and
/// checks the history; see the module doc.
async fn under_faults(test: &str, block: u8, routers: u8, reads: Consistency, nemesis: Nemesis) {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(mut fw) = Firewall::new() else {
        common::cannot_run(&format!(
            "{test}: iptables is not usable here (needs root and the iptables package)"
        ));
        return;
    };
    let rounds: usize =
        std::env::var("SHARDGATE_SOAK_PARTITIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(2);
    let sys = System::start(block, routers).await;
    let mut dbs = Vec::new();
    for i in 0..routers as usize {
        dbs.push(sys.db(i).await);
    }
    let h = Arc::new(History::grouped(GROUP));
    let stop = Arc::new(AtomicBool::new(false));
    let bad = Arc::new(Mutex::new(Vec::new()));
    let w = Workload { keys: KEYS.to_vec(), max_ops: 5000, reads, group: GROUP };
    let clients: Vec<_> = (0..6u64)
        .map(|c| {
            let db = dbs[c as usize % dbs.len()].clone();
            tokio::spawn(client_loop(c, db, w.clone(), h.clone(), stop.clone(), bad.clone()))
        })
        .collect();
    let progress = |what: String| {
        let h = h.clone();
        async move {
            let before = h.counts().0;
            let went_on = poll(Duration::from_secs(30), || async {
                (h.counts().0 >= before + OPS_PER_PHASE).then_some(())
            })
            .await;
            assert!(went_on.is_some(), "the clients made no progress {what}");
        }
    };

    let mut elections = Vec::new();
    for round in 0..rounds {
        let shard = SHARDS[round % SHARDS.len()];
        let victim = sys.primary(shard).await.expect("a primary before the fault");
        let ip = sys.node_ip(&victim).await;
        // The manager (127.0.0.1) and the other nodes.
        let mut others = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
        for s in SERVERS.iter().filter(|s| **s != victim) {
            others.push(sys.node_ip(s).await);
        }
        let t = Instant::now();
        let what = match nemesis {
            Nemesis::Partitions => {
                // The routers still reach the victim.
                let one_way = round % 2 == 1;
                for peer in &others {
                    if one_way {
                        fw.cut_one_way(ip, *peer);
                    } else {
                        fw.cut(ip, *peer);
                    }
                }
                let elected = poll(Duration::from_secs(30), || async {
                    sys.primary(shard).await.filter(|p| *p != victim)
                })
                .await;
                let Some(new) = elected else {
                    panic!("round {round}: no new primary for {shard} within 30 s of cutting {victim} off")
                };
                elections.push(t.elapsed());
                format!(
                    "cut off {}, {new} primary of {shard} after {:?}",
                    if one_way { "one way" } else { "both ways" },
                    t.elapsed()
                )
            }
            Nemesis::FlakyLinks => {
                // Every link of the victim, the routers' included.
                let routers = sys.routers.iter().map(|r| r.http().ip());
                let peers: Vec<IpAddr> = others.iter().copied().chain(routers).collect();
                let lossy = round % 2 == 0;
                for peer in peers {
                    if lossy {
                        fw.lossy(ip, peer, LOSS);
                    } else {
                        fw.reset(ip, peer);
                    }
                }
                if lossy {
                    format!("lost {}% of its packets", LOSS * 100.0)
                } else {
                    "had every connection reset".to_string()
                }
            }
        };
        progress(format!("while {victim} {what} (round {round})")).await;
        eprintln!("{test}: round {round}: {victim} ({ip}) {what}; healed after {:?}", t.elapsed());
        fw.heal();
        sys.wait_whole(Duration::from_secs(60)).await;
        progress(format!("after the fault healed (round {round})")).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let bad = bad.lock().unwrap().clone();
    assert!(bad.is_empty(), "refusals that must not happen: {bad:?}");

    // Every replica holds the same rows, and they are what the router reads.
    let everything = final_state(&dbs[0], &SERVERS, &h, &KEYS).await;
    let (ops, unknown) = h.counts();
    elections.sort();
    eprintln!(
        "{test}: {rounds} faults, {ops} operations ({unknown} with unknown outcome) over \
         {routers} router(s), {} rows at the end; new primary after p50 {:?}, max {:?}",
        everything.len(),
        elections.get(elections.len() / 2),
        elections.last()
    );
    assert!(ops >= 2 * OPS_PER_PHASE * rounds, "too few operations to mean anything: {ops}");
    assert_linearizable(&h, test);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_linearizable_reads_across_a_partitioned_primary() {
    let (lin, parts) = (Consistency::Linearizable, Nemesis::Partitions);
    under_faults("two_routers_linearizable", 1, 2, lin, parts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_router_default_reads_across_a_partitioned_primary() {
    under_faults("one_router_default_reads", 2, 1, Consistency::Default, Nemesis::Partitions).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_and_reset_links_of_a_primary() {
    under_faults("flaky_links", 3, 2, Consistency::Linearizable, Nemesis::FlakyLinks).await;
}
