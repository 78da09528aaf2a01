//! The Rust client library (`client::Db`) against a router in front of real in-process nodes
//! and a fake shard manager: every call, its typed errors, and many calls in flight at once.

#[path = "router_db/harness.rs"]
mod harness;

use client::{Db, DbError};
use harness::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reads_writes_updates_and_deletes() {
    let c = Cluster::start().await;
    let db = Db::connect(c.http).await.unwrap();
    assert_eq!(db.write(&[row(1), row(5000), row(9000)]).await.unwrap(), 3);
    assert_eq!(db.read(0, 12287).await.unwrap(), [row(1), row(5000), row(9000)]);
    assert_eq!(db.read_linearizable(4096, 8191).await.unwrap(), [row(5000)]);
    let new = json!({"Stud_id": 5000, "Stud_name": "X", "Stud_marks": "99"});
    db.update(5000, &new).await.unwrap();
    assert_eq!(db.read(5000, 5000).await.unwrap(), std::slice::from_ref(&new));
    db.delete(1).await.unwrap();
    assert!(db.read(0, 10).await.unwrap().is_empty());

    let server = db.read_server("S0").await.unwrap();
    assert_eq!(server.keys().collect::<Vec<_>>(), ["sh1", "sh2"]);
    assert_eq!(server["sh2"], [new]);

    // Typed errors carry the router's status and message.
    let e = db.delete(1).await.unwrap_err();
    assert!(e.is_not_found(), "{e}");
    assert!(e.message.starts_with("<Error> "), "{e}");
    let e = db.write(&[row(2), row(99_999)]).await.unwrap_err();
    assert!(e.is_bad_request(), "{e}");
    assert!(e.message.contains("99999"), "{e}");
    assert_eq!(db.read(10, 5).await.unwrap_err().status, 400);
    assert_eq!(
        db.read_server("Nope").await.unwrap_err(),
        DbError { status: 404, message: "<Error> server Nope does not exist".into() }
    );
    let e = db.update(9000, &json!({"Stud_id": 9001, "Stud_name": "x", "Stud_marks": 1})).await;
    assert!(e.unwrap_err().is_bad_request());

    // Admin calls reach the manager (the fake answers with the call's name).
    assert_eq!(db.status().await.unwrap(), json!({"op": "Status", "bytes": 0}));
    db.init(&json!({"N": 1})).await.unwrap();
    assert_eq!(db.add(&json!({"n": 1, "servers": {"S9": ["sh1"]}})).await.unwrap()["op"], "Add");
    let e = db.init(&json!({"fail": true})).await.unwrap_err();
    assert_eq!(e, DbError { status: 400, message: "<Error> refused by the fake".into() });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_on_one_client() {
    let c = Cluster::start().await;
    let db = Db::connect(c.http).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16i64 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20i64 {
                let id = t * 700 + i;
                assert_eq!(db.write(&[row(id)]).await.unwrap(), 1);
                assert_eq!(db.read(id, id).await.unwrap(), [row(id)]);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(db.read(0, 12287).await.unwrap().len(), 320);
}
