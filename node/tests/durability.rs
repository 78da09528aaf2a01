//! Restarts: everything acknowledged is there after a clean stop and start, checkpoints keep
//! the log short, and a torn tail in a shard's log is cut at start while the node serves.

mod common;

use std::collections::BTreeMap;

use common::{config, row, schema, start, Http};
use node::{NodeServer, ShardOptions};
use serde_json::{json, Value as Json};

async fn configure(h: &mut Http) {
    let got = h
        .req("POST", "/config", Some(json!({"schema": schema(), "shards": [{"Shard_id": "sh1", "Stud_id_low": 0, "Shard_size": 100000}]})))
        .await;
    assert_eq!(got.0, 200, "{:?}", got.1);
}

async fn copy(h: &mut Http) -> Json {
    let got = h.req("GET", "/copy", Some(json!({"shards": ["sh1"]}))).await;
    assert_eq!(got.0, 200);
    got.1["sh1"].clone()
}

/// Writes, updates and deletes; returns the rows the shard must hold.
async fn churn(h: &mut Http, from: i64, n: i64) -> BTreeMap<i64, Json> {
    let mut model = BTreeMap::new();
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(25) {
        let rows: Vec<Json> = chunk.iter().map(|&i| row(i)).collect();
        let got = h.req("POST", "/write", Some(json!({"shard": "sh1", "data": rows}))).await;
        assert_eq!(got.0, 200, "{:?}", got.1);
        for &i in chunk {
            model.insert(i, row(i));
        }
    }
    for i in (from..from + n).step_by(7) {
        let new = json!({"Stud_id": i, "Stud_name": "updated", "Stud_marks": 99});
        let got = h
            .req("PUT", "/update", Some(json!({"shard": "sh1", "Stud_id": i, "data": new.clone()})))
            .await;
        assert_eq!(got.0, 200);
        model.insert(i, new);
    }
    for i in (from..from + n).step_by(11) {
        let got = h.req("DELETE", "/del", Some(json!({"shard": "sh1", "Stud_id": i}))).await;
        assert_eq!(got.0, 200);
        model.remove(&i);
    }
    model
}

#[tokio::test]
async fn everything_acknowledged_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = start("Server0", dir.path()).await;
    let mut h = Http::connect(server.http_addr().unwrap()).await;
    configure(&mut h).await;
    let model = churn(&mut h, 0, 300).await;
    server.shutdown().await;

    let server = start("Server0", dir.path()).await;
    let mut h = Http::connect(server.http_addr().unwrap()).await;
    assert_eq!(copy(&mut h).await, Json::Array(model.values().cloned().collect()));
    // The shard's range and schema came back too.
    let got = h.req("POST", "/write", Some(json!({"shard": "sh1", "data": [row(100000)]}))).await;
    assert_eq!(got.0, 400, "range lost across restart: {:?}", got.1);
    server.shutdown().await;
}

#[tokio::test]
async fn checkpoints_bound_the_log_and_restarts_replay_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let opts = ShardOptions {
        wal: wal::Options { segment_size: 4096, ..wal::Options::default() },
        checkpoint_segments: 3,
        ..ShardOptions::default()
    };
    let server = NodeServer::start(config("Server0", dir.path(), opts.clone())).await.unwrap();
    let mut h = Http::connect(server.http_addr().unwrap()).await;
    configure(&mut h).await;
    let mut model = churn(&mut h, 0, 600).await;
    let shard = server.node().shard("sh1").unwrap();
    assert!(shard.log_segments() <= 3, "log not purged: {} segments", shard.log_segments());
    assert!(dir.path().join("shards/sh1/snapshot").exists(), "no checkpoint written");
    drop(shard);
    server.shutdown().await;

    let server = NodeServer::start(config("Server0", dir.path(), opts.clone())).await.unwrap();
    let mut h = Http::connect(server.http_addr().unwrap()).await;
    assert_eq!(copy(&mut h).await, Json::Array(model.values().cloned().collect()));
    model.extend(churn(&mut h, 1000, 50).await);
    server.shutdown().await;
    let server = NodeServer::start(config("Server0", dir.path(), opts)).await.unwrap();
    let mut h = Http::connect(server.http_addr().unwrap()).await;
    let got = copy(&mut h).await;
    let want: Vec<Json> = model.values().cloned().collect();
    assert_eq!(got.as_array().unwrap().len(), want.len());
    server.shutdown().await;
}

#[tokio::test]
async fn a_torn_tail_in_a_shard_log_is_cut_and_the_node_serves() {
    let dir = tempfile::tempdir().unwrap();
    let server = start("Server0", dir.path()).await;
    let mut h = Http::connect(server.http_addr().unwrap()).await;
    configure(&mut h).await;
    let model = churn(&mut h, 0, 100).await;
    server.shutdown().await;

    // Garbage right after the last record, as a write torn by a crash leaves it.
    let wal_dir = dir.path().join("shards/sh1/wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let last = segs.pop().unwrap();
    let mut bytes = std::fs::read(&last).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    for (i, b) in bytes[end..end + 40].iter_mut().enumerate() {
        *b = 0x5A ^ i as u8;
    }
    std::fs::write(&last, &bytes).unwrap();

    let server = start("Server0", dir.path()).await;
    let mut h = Http::connect(server.http_addr().unwrap()).await;
    assert_eq!(copy(&mut h).await, Json::Array(model.values().cloned().collect()));
    let got = h.req("POST", "/write", Some(json!({"shard": "sh1", "data": [row(5000)]}))).await;
    assert_eq!(got.0, 200, "{:?}", got.1);
    server.shutdown().await;
    let server = start("Server0", dir.path()).await;
    let mut h = Http::connect(server.http_addr().unwrap()).await;
    assert_eq!(copy(&mut h).await.as_array().unwrap().len(), model.len() + 1);
    server.shutdown().await;
}
