//! kill -9 of a real node process during concurrent multi-row writes from many clients:
//! after restart every acknowledged row is there and no write is half-applied.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use common::NodeProc;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};

const ROUNDS: u64 = 10;
const WRITERS: u64 = 16;
const ROWS_PER_WRITE: i64 = 3;

fn rows(base: i64) -> Json {
    Json::Array(
        (base..base + ROWS_PER_WRITE)
            .map(|id| json!({"Stud_id": id, "Stud_name": format!("N{id}"), "Stud_marks": id % 97}))
            .collect(),
    )
}

async fn copy_ids(http: std::net::SocketAddr) -> HashSet<i64> {
    let mut c = client::HttpClient::connect(http).await.unwrap();
    let (status, body) = c.json("GET", "/copy", Some(&json!({"shards": ["sh1"]}))).await.unwrap();
    assert_eq!(status, 200, "{body}");
    body["sh1"].as_array().unwrap().iter().map(|r| r["Stud_id"].as_i64().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_concurrent_writes_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xC0FFEE);
    let acked: Arc<Mutex<Vec<i64>>> = Arc::default();
    let mut attempted: Vec<i64> = Vec::new();
    for round in 0..ROUNDS {
        let mut node = NodeProc::start("Server0", dir.path());
        if round == 0 {
            let mut c = client::HttpClient::connect(node.http).await.unwrap();
            let cfg = json!({"schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]},
                             "shards": [{"Shard_id": "sh1", "Stud_id_low": 0, "Shard_size": 1_000_000_000}]});
            assert_eq!(c.json("POST", "/config", Some(&cfg)).await.unwrap().0, 200);
        }
        // Everything acknowledged in earlier rounds survived the earlier kills.
        let present = copy_ids(node.http).await;
        check(&present, &acked.lock().unwrap(), &attempted, round);

        let kill_after = rng.gen_range(20..300usize);
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let (acked, done_tx, http) = (acked.clone(), done_tx.clone(), node.http);
            let base = ((round * WRITERS + w) as i64) * 1_000_000;
            // Every base a writer may use, recorded before the kill so that the check knows
            // each write that might have happened.
            attempted.extend((0..2000).map(|i| base + i * ROWS_PER_WRITE));
            tasks.push(tokio::spawn(async move {
                let Ok(mut c) = client::HttpClient::connect(http).await else { return };
                for i in 0..2000i64 {
                    let b = base + i * ROWS_PER_WRITE;
                    match c
                        .json("POST", "/write", Some(&json!({"shard": "sh1", "data": rows(b)})))
                        .await
                    {
                        Ok((200, _)) => {
                            acked.lock().unwrap().push(b);
                            if done_tx.send(()).is_err() {
                                return;
                            }
                        }
                        Ok((status, body)) => panic!("write refused: {status} {body}"),
                        Err(_) => return, // the node died under us
                    }
                }
            }));
        }
        drop(done_tx);
        for _ in 0..kill_after {
            if done_rx.recv().await.is_none() {
                break;
            }
        }
        node.kill9();
        for t in tasks {
            t.await.unwrap();
        }
    }
    let node = NodeProc::start("Server0", dir.path());
    let present = copy_ids(node.http).await;
    check(&present, &acked.lock().unwrap(), &attempted, ROUNDS);
    assert!(acked.lock().unwrap().len() as u64 >= ROUNDS * 20, "too few writes acknowledged");
}

/// Every acknowledged write is whole; every other write is whole or absent.
fn check(present: &HashSet<i64>, acked: &[i64], attempted: &[i64], round: u64) {
    for &b in acked {
        for id in b..b + ROWS_PER_WRITE {
            assert!(present.contains(&id), "round {round}: acknowledged row {id} lost");
        }
    }
    for &b in attempted {
        let n = (b..b + ROWS_PER_WRITE).filter(|id| present.contains(id)).count() as i64;
        assert!(
            n == 0 || n == ROWS_PER_WRITE,
            "round {round}: write at {b} half applied ({n} rows)"
        );
    }
    let expected: usize = present.len();
    assert_eq!(expected as i64 % ROWS_PER_WRITE, 0);
}
