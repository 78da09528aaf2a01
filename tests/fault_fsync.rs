//! A disk that fails an fsync, in a real cluster (`--features failpoints`; CI runs
//! `--all-features`): `shardgate up` with three nodes holding both shards, where Server1's
//! fail point `wal::sync` lets its first syncs pass and fails every later one
//! (`SHARDGATE_FAILPOINTS_Server1`, read by fault-injection builds only).
//!
//! After a failed fsync what is on disk is unknown, so the node's logs refuse every later
//! write, and its heartbeat fails with the reason: the shard manager replaces it as it
//! does a crashed node (a new primary among the others, the process restarted on its data,
//! its logs recovered from the disk), and the restarted node, which inherits the same fail
//! point, goes the same way a little later, and then waits (1 s) before its next start: it
//! is in a loop. Meanwhile a client writes one row at a time: the node is replaced (without
//! the heartbeat's refusal it would run on for ever with poisoned logs) and every
//! acknowledged row is there at the end.
#![cfg(feature = "failpoints")]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use client::{Db, DbOptions};
use common::{metric, poll, ClusterProc};
use serde_json::json;

/// Syncs Server1's process makes before every later one fails.
const SYNCS_BEFORE_THE_FAULT: u32 = 40;
/// Replacements of Server1 the test waits for.
const REPLACEMENTS: u64 = 2;
/// How long the manager holds back the start of a replica unhealthy again soon after its
/// restart, the first time (`SICK_HOLD` in lb/src/manager/health.rs).
const SICK_HOLD: Duration = Duration::from_secs(1);
/// Rows per shard (ids `0..SHARD` and `SHARD..2 * SHARD`).
const SHARD: i64 = 100_000;
/// Most rows written (and the longest the writing may take), whatever happens.
const MAX_ROWS: i64 = 2 * SHARD;
const MAX_WRITING: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_fsync_fails_is_replaced_and_no_acknowledged_write_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let fault = format!("wal::sync={SYNCS_BEFORE_THE_FAULT}*off->return");
    let up = ClusterProc::up_with_env(
        0,
        dir.path(),
        &["--init", &common::two_shards(SHARD)],
        &[("SHARDGATE_FAILPOINTS_Server1", &fault)],
    );
    let options = DbOptions { request_timeout: Duration::from_secs(10), ..Default::default() };
    let db = Db::connect_binary_with(up.addr("binary"), options).await.unwrap();
    let restarts = || metric(up.http(), "shardgate_replica_restarts_total{replica=\"Server1\"}");

    // One row at a time, alternating between the shards, until Server1 has been replaced
    // twice: each round of its fault fails a sync of whichever shard comes first.
    let (mut acked, mut refused) = (BTreeSet::new(), 0usize);
    let started = Instant::now();
    let mut replaced = 0;
    // When the first and the second replacement were seen.
    let mut seen = [None, None];
    for i in 0..MAX_ROWS {
        let key = if i % 2 == 0 { i / 2 } else { SHARD + i / 2 };
        let row = json!({"Stud_id": key, "Stud_name": format!("r{i}"), "Stud_marks": "1"});
        match db.write(&[row]).await {
            Ok(_) => {
                acked.insert(key);
            }
            // Refused, or ambiguous while a primary is replaced: not counted either way.
            Err(_) => refused += 1,
        }
        if i % 10 == 9 {
            replaced = restarts().await.unwrap_or(0);
            for (n, at) in seen.iter_mut().enumerate() {
                if replaced > n as u64 && at.is_none() {
                    *at = Some(Instant::now());
                }
            }
            if replaced >= REPLACEMENTS || started.elapsed() > MAX_WRITING {
                break;
            }
        }
    }
    eprintln!(
        "fault_fsync: {} rows acknowledged, {refused} refused, Server1 replaced {replaced} times in {:?}",
        acked.len(),
        started.elapsed()
    );
    assert!(
        replaced >= REPLACEMENTS,
        "Server1 was replaced {replaced} times in {:?}: a node with poisoned logs went unnoticed",
        started.elapsed()
    );
    assert!(!acked.is_empty(), "no write was acknowledged");
    // The second time came soon after the first restart: its start was held back.
    let (Some(first), Some(second)) = (seen[0], seen[1]) else { unreachable!("seen above") };
    let apart = second - first;
    assert!(apart >= SICK_HOLD * 4 / 5, "replaced again only {apart:?} after the first time");

    // Every acknowledged row, read through each shard's primary.
    let mut found = BTreeSet::new();
    for (low, high) in [(0, SHARD - 1), (SHARD, 2 * SHARD - 1)] {
        let rows =
            poll(Duration::from_secs(30), || async { db.read_linearizable(low, high).await.ok() })
                .await
                .unwrap_or_else(|| panic!("no linearizable read of {low}..{high} within 30 s"));
        found.extend(rows.iter().filter_map(|r| r["Stud_id"].as_i64()));
    }
    let lost: Vec<i64> = acked.difference(&found).copied().collect();
    assert!(lost.is_empty(), "{} acknowledged rows lost: {lost:?}", lost.len());
}
