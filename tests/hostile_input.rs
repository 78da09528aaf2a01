//! Input an attacker (or a confused operator) sends to the edges of the system, each
//! reproduced first against the code before its fix (issue 19, findings 3, 6, 7 and 8, and
//! the epoch wrap of finding 1):
//!
//! - `/init` naming a shard id that cannot be a directory (`../../x/pwn`) is a 400 and
//!   stores nothing: a correct `/init` works right after (it used to store the catalog,
//!   answer 503, and leave the database unusable, re-electing forever);
//! - hostnames that could be read as flags or hidden paths (`-h`, `--data-dir`, `...`,
//!   `.hidden`) are refused by stage 1's and the database's `/add` alike, and nothing
//!   changes (`-h` used to reach a node's command line: exit 2, a 500);
//! - an `Adopt` of an epoch near `u64::MAX` is refused by the replica, so the shard manager
//!   never skips to it (the next epoch used to wrap to 0, and the shard had no primary
//!   again, ever);
//! - snapshot chunks are staged on disk, in key order inside the shard's range: 30 chunks of
//!   15 MiB leave a node's memory as it was (they used to grow it by their size);
//! - `/config` takes no more new shards than a node holds at most (each costs a 32 MiB
//!   zero-filled log segment and a thread).

mod common;

use std::time::Duration;

use client::Connection;
use common::*;
use protocol::{
    AdoptReq, ConfigReq, ErrorKind, Request, Response, Row, Schema, ShardSpec, SnapshotChunk, Value,
};
use serde_json::{json, Value as Json};

const RECOVERY: Duration = Duration::from_secs(30);

fn schema() -> Schema {
    Schema {
        columns: vec!["Stud_id".into(), "Stud_name".into(), "Stud_marks".into()],
        dtypes: vec![protocol::DType::Number, protocol::DType::String, protocol::DType::Number],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_with_an_unusable_shard_id_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let up = ClusterProc::up(0, dir.path(), &[]);
    let lb = up.http();
    // The default layout with shard sh2 renamed: every server names it.
    let body: Json =
        serde_json::from_str(&two_shards(64).replace("\"sh2\"", "\"../../x/pwn\"")).unwrap();
    let (status, answer) = http(lb, "POST", "/init", Some(body)).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["status"], "failure", "{answer}");
    assert!(answer["message"].as_str().unwrap_or("").contains("invalid shard id"), "{answer}");
    assert!(!dir.path().join("x").exists() && !dir.path().parent().unwrap().join("x").exists());

    // Nothing was stored: the real configuration is taken, and the database works.
    let good: Json = serde_json::from_str(&two_shards(64)).unwrap();
    let (status, answer) = http(lb, "POST", "/init", Some(good)).await;
    assert_eq!(status, 200, "{answer}");
    let row = json!({"data": [{"Stud_id": 70, "Stud_name": "Ada", "Stud_marks": 90}]});
    let (status, answer) = http(lb, "POST", "/write", Some(row)).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostnames_that_read_as_flags_or_hidden_paths_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let up = ClusterProc::up(2, dir.path(), &[]);
    let lb = up.http();
    let (_, rep_before) = http(lb, "GET", "/rep", None).await;
    for bad in ["-h", "--data-dir", "...", ".hidden", "..", "a/b"] {
        let (status, answer) =
            http(lb, "POST", "/add", Some(json!({"n": 1, "hostnames": [bad]}))).await;
        assert_eq!(status, 400, "stage-1 /add of {bad:?}: {answer}");
        assert_eq!(answer["status"], "failure");
    }
    let (_, rep_after) = http(lb, "GET", "/rep", None).await;
    assert_eq!(rep_before, rep_after, "a refused /add changed the replicas");

    let init: Json = serde_json::from_str(&two_shards(64)).unwrap();
    let (status, answer) = http(lb, "POST", "/init", Some(init)).await;
    assert_eq!(status, 200, "{answer}");
    let (_, status_before) = http(lb, "GET", "/status", None).await;
    for bad in ["-h", "--data-dir", "...", ".hidden"] {
        let body = json!({"n": 1, "servers": {bad: ["sh1"]}});
        let (status, answer) = http(lb, "POST", "/add", Some(body)).await;
        assert_eq!(status, 400, "database /add of {bad:?}: {answer}");
        assert!(answer["message"].as_str().unwrap_or("").contains("invalid server name"));
    }
    let (_, status_after) = http(lb, "GET", "/status", None).await;
    assert_eq!(status_before, status_after, "a refused /add changed the database");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("nodes"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.iter().all(|n| n.to_str().is_some_and(|n| n.starts_with("Server"))),
        "{leftovers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_near_the_end_of_its_range_never_becomes_the_shards() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = ClusterProc::up(3, dir.path(), &["--init", &two_shards(64)]);
    let lb = up.http();
    let (_, st) = http(lb, "GET", "/status", None).await;
    let primary = st["shards"][0]["primary"].as_str().expect("sh1 has a primary").to_string();
    let secondary = ["Server1", "Server2", "Server3"]
        .into_iter()
        .find(|s| *s != primary)
        .expect("three servers");
    let conn = Connection::connect(node_binary(up.pid(), secondary).await, "test").await.unwrap();
    let adopt = conn.call(Request::Adopt(AdoptReq { shard: "sh1".into(), epoch: u64::MAX })).await;
    match adopt {
        Err(client::CallError::Remote(e)) => {
            assert_eq!(e.kind, ErrorKind::BadRequest, "{e:?}");
            assert!(e.message.contains("past this replica's epoch"), "{}", e.message);
        }
        other => panic!("Adopt(u64::MAX) was not refused: {other:?}"),
    }
    drop(conn);

    // The shard elects as before when its primary dies: writes go on.
    signal(node_pid(up.pid(), &primary).expect("the primary runs"), "KILL");
    let mut key = 0;
    let wrote = poll(RECOVERY, || {
        key += 1;
        let row = json!({"data": [{"Stud_id": key % 64, "Stud_name": "Eve", "Stud_marks": 1}]});
        async move {
            let r = try_http(lb, "POST", "/write", Some(row)).await.ok()?;
            (r.0 == 200).then_some(())
        }
    })
    .await;
    assert!(wrote.is_some(), "sh1 took no write within {RECOVERY:?} of its primary's death");
    let (_, st) = http(lb, "GET", "/status", None).await;
    let epoch = st["shards"][0]["epoch"].as_u64().unwrap_or(0);
    assert!(epoch < 1000, "sh1's epoch jumped: {st}");
    up.kill9();
}

/// A standalone node holding shard sh1 (ids 0..4096), and a connection to its binary door.
async fn node_with_one_shard(dir: &std::path::Path) -> (NodeProc, Connection) {
    let node = NodeProc::start("Edge", dir);
    let conn = Connection::connect(node.binary, "test").await.unwrap();
    let cfg = ConfigReq { schema: schema(), shards: vec![ShardSpec::with_range("sh1", 0, 4096)] };
    let r = conn.call(Request::Config(cfg)).await;
    assert!(r.is_ok(), "{r:?}");
    (node, conn)
}

fn chunk(seq: u32, rows: Vec<Row>, done: bool) -> Request {
    Request::Snapshot(SnapshotChunk {
        shard: "sh1".into(),
        epoch: 1,
        primary: "Somebody".into(),
        lsn: 10,
        lsn_epoch: 1,
        seq,
        rows,
        done,
        ids: Vec::new(),
    })
}

fn row(key: i64, name: String) -> Row {
    Row { key, values: vec![Value::Int(key), Value::Str(name), Value::Int(1)] }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_chunks_do_not_pile_up_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (node, conn) = node_with_one_shard(dir.path()).await;
    let pid = node.pid();
    let before = rss_kib(pid);
    let fat = "x".repeat(15 << 20);
    for seq in 0..30 {
        let r = conn
            .call_with_timeout(
                chunk(seq, vec![row(seq as i64, fat.clone())], false),
                Some(RECOVERY),
            )
            .await;
        assert!(matches!(r, Ok(Response::SnapshotTaken { .. })), "chunk {seq}: {r:?}");
    }
    let grown_mib = rss_kib(pid).saturating_sub(before) / 1024;
    assert!(grown_mib < 120, "30 chunks of 15 MiB grew the node by {grown_mib} MiB");

    // Rows out of order, or outside the shard, void the snapshot.
    let r = conn.call(chunk(30, vec![row(3, "late".into())], false)).await;
    assert!(
        matches!(&r, Err(client::CallError::Remote(e)) if e.message.contains("is not after")),
        "{r:?}"
    );
    let r = conn.call(chunk(0, vec![row(5000, "outside".into())], true)).await;
    assert!(
        matches!(&r, Err(client::CallError::Remote(e)) if e.message.contains("outside the shard")),
        "{r:?}"
    );
    // A whole, well-formed one installs.
    let r = conn.call(chunk(0, vec![row(1, "one".into())], false)).await;
    assert!(matches!(r, Ok(Response::SnapshotTaken { .. })), "{r:?}");
    let r = conn.call(chunk(1, vec![row(2, "two".into())], true)).await;
    assert!(matches!(r, Ok(Response::SnapshotTaken { .. })), "{r:?}");
    let copy = conn.call(Request::Copy(protocol::CopyReq { shards: vec!["sh1".into()] })).await;
    let Ok(Response::Copy { shards }) = copy else { panic!("{copy:?}") };
    let keys: Vec<i64> = shards[0].1.iter().map(|r| r.key).collect();
    assert_eq!(keys, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_takes_no_more_shards_than_a_node_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (node, _conn) = node_with_one_shard(dir.path()).await;
    let most = node::DEFAULT_MAX_SHARDS;
    // One over the cap in one request: refused, nothing created.
    let ids: Vec<String> = (0..most).map(|i| format!("extra{i}")).collect();
    let body = json!({"schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"],
                                 "dtypes": ["Number", "String", "Number"]},
                      "shards": ids});
    let (status, answer) = http(node.http, "POST", "/config", Some(body)).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer["message"].as_str().unwrap_or("").contains("the most one node takes"));
    let created = std::fs::read_dir(dir.path().join("shards")).unwrap().count();
    assert_eq!(created, 1, "a refused /config created shards");
}

/// 40 clients each declare a 16 MB body, send half of it and stall: the router holds at
/// most its HTTP memory budget for them (it used to read every one into memory, 320 MiB
/// here), and the shard manager in the same process, on its own runtime, replaces nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_large_bodies_hold_the_budget_and_cost_no_node() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut up = ClusterProc::up(3, dir.path(), &["--init", &two_shards(64)]);
    let lb = up.http();
    let nodes_before = node_pids(up.pid());
    let (_, status_before) = http(lb, "GET", "/status", None).await;
    let before = rss_kib(up.pid());
    let half = vec![b'x'; 8 << 20];
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut s = tokio::net::TcpStream::connect(lb).await.unwrap();
        let head = "POST /write HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                    Content-Length: 16000000\r\n\r\n";
        s.write_all(head.as_bytes()).await.unwrap();
        // The router may stop reading (back-pressure): a bounded write, not a hang.
        let _ = tokio::time::timeout(Duration::from_millis(300), s.write_all(&half)).await;
        held.push(s);
    }
    // Let the router take in what it will.
    let settled = poll(Duration::from_secs(5), || async {
        let a = rss_kib(up.pid());
        tokio::time::sleep(Duration::from_millis(200)).await;
        (rss_kib(up.pid()) <= a + 1024).then_some(())
    })
    .await;
    assert!(settled.is_some(), "the router's memory kept growing");
    let grown_mib = rss_kib(up.pid()).saturating_sub(before) / 1024;
    assert!(grown_mib < 200, "40 stalled 16 MB bodies grew the router by {grown_mib} MiB");
    // Data requests are served meanwhile.
    let row = json!({"data": [{"Stud_id": 3, "Stud_name": "Bo", "Stud_marks": 5}]});
    assert_eq!(http(lb, "POST", "/write", Some(row)).await.0, 200);
    drop(held);
    let (_, status_after) = http(lb, "GET", "/status", None).await;
    assert_eq!(status_before, status_after, "a shard moved under load");
    assert_eq!(nodes_before, node_pids(up.pid()), "a node was replaced under load");
    up.kill9();
}
