//! The Rust client library (`client::Db`) against a router in front of real in-process nodes
//! and a fake shard manager, through both of the router's doors (HTTP and the binary
//! protocol): every call, its typed errors, and many calls in flight at once. Both doors must
//! give the same answers.

#[path = "router_db/harness.rs"]
mod harness;

use client::{Db, DbError};
use harness::*;
use protocol::{Consistency, Request, Response, Row, Value};
use serde_json::json;

async fn both_doors(c: &Cluster) -> [(&'static str, Db); 2] {
    [
        ("http", Db::connect(c.http).await.unwrap()),
        ("binary", Db::connect_binary(c.binary).await.unwrap()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reads_writes_updates_and_deletes() {
    for door in ["http", "binary"] {
        let c = Cluster::start().await;
        let db = match door {
            "http" => Db::connect(c.http).await.unwrap(),
            _ => Db::connect_binary(c.binary).await.unwrap(),
        };
        assert_eq!(db.write(&[row(1), row(5000), row(9000)]).await.unwrap(), 3, "{door}");
        assert_eq!(db.read(0, 12287).await.unwrap(), [row(1), row(5000), row(9000)], "{door}");
        assert_eq!(db.read_linearizable(4096, 8191).await.unwrap(), [row(5000)], "{door}");
        let new = json!({"Stud_id": 5000, "Stud_name": "X", "Stud_marks": "99"});
        db.update(5000, &new).await.unwrap();
        assert_eq!(db.read(5000, 5000).await.unwrap(), std::slice::from_ref(&new), "{door}");
        db.delete(1).await.unwrap();
        assert!(db.read(0, 10).await.unwrap().is_empty(), "{door}");

        let server = db.read_server("S0").await.unwrap();
        assert_eq!(server.keys().collect::<Vec<_>>(), ["sh1", "sh2"], "{door}");
        assert_eq!(server["sh2"], [new], "{door}");

        // Typed errors carry the router's status and message.
        let e = db.delete(1).await.unwrap_err();
        assert!(e.is_not_found(), "{door}: {e}");
        assert!(e.message.starts_with("<Error> "), "{door}: {e}");
        let e = db.write(&[row(2), row(99_999)]).await.unwrap_err();
        assert!(e.is_bad_request(), "{door}: {e}");
        assert!(e.message.contains("99999"), "{door}: {e}");
        assert_eq!(db.read(10, 5).await.unwrap_err().status, 400, "{door}");
        assert_eq!(
            db.read_server("Nope").await.unwrap_err(),
            DbError { status: 404, message: "<Error> server Nope does not exist".into() },
            "{door}"
        );
        let e = db.update(9000, &json!({"Stud_id": 9001, "Stud_name": "x", "Stud_marks": 1})).await;
        assert!(e.unwrap_err().is_bad_request(), "{door}");
        // Nothing of the refused requests was written.
        assert_eq!(db.read(0, 12287).await.unwrap().len(), 2, "{door}");

        // Admin calls reach the manager (the fake answers with the call's name).
        assert_eq!(db.status().await.unwrap()["op"], "Status", "{door}");
        db.init(&json!({"N": 1})).await.unwrap();
        assert_eq!(
            db.add(&json!({"n": 1, "servers": {"S9": ["sh1"]}})).await.unwrap()["op"],
            "Add"
        );
        let e = db.init(&json!({"fail": true})).await.unwrap_err();
        assert_eq!(e, DbError { status: 400, message: "<Error> refused by the fake".into() });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_doors_give_the_same_answers() {
    let c = Cluster::start().await;
    let [(_, http), (_, bin)] = both_doors(&c).await;
    // Written through one door, read through the other, row for row.
    assert_eq!(http.write(&[row(10), row(4100)]).await.unwrap(), 2);
    assert_eq!(bin.write(&[row(11), row(8200)]).await.unwrap(), 2);
    let a = http.read(0, 20000).await.unwrap();
    let b = bin.read(0, 20000).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(a, [row(10), row(11), row(4100), row(8200)]);
    assert_eq!(http.read_server("S1").await.unwrap(), bin.read_server("S1").await.unwrap());
    // The same refusal, with the same status and message, through both.
    for (bad, what) in [
        (vec![row(12), row(12)], "a Stud_id given twice"),
        (vec![json!({"Stud_id": 13, "Stud_name": "x"})], "a missing column"),
        (vec![json!({"Stud_id": -5, "Stud_name": "x", "Stud_marks": 1})], "outside every shard"),
    ] {
        let e1 = http.write(&bad).await.unwrap_err();
        let e2 = bin.write(&bad).await.unwrap_err();
        assert_eq!(e1.status, 400, "{what}: {e1}");
        assert_eq!(e1, e2, "{what}");
    }
    assert_eq!(http.delete(777).await.unwrap_err(), bin.delete(777).await.unwrap_err());
    assert_eq!(bin.read(0, 20000).await.unwrap().len(), 4, "a refused write changed data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_rows_and_hostile_binary_requests() {
    let c = Cluster::start().await;
    let db = Db::connect_binary(c.binary).await.unwrap();
    let typed = Row {
        key: 42,
        values: vec![Value::Int(42), Value::Str("T".into()), Value::Str("7".into())],
    };
    assert_eq!(db.write_rows(vec![typed.clone()]).await.unwrap(), 1);
    assert_eq!(db.read_rows(42, 42, Consistency::Linearizable).await.unwrap(), [typed]);
    // Rows that do not fit the schema are refused by the router, naming the row.
    let short = Row { key: 43, values: vec![Value::Int(43)] };
    let e = db.write_rows(vec![short]).await.unwrap_err();
    assert!(e.is_bad_request() && e.message.contains("row 0"), "{e}");
    let lying = Row {
        key: 44,
        values: vec![Value::Int(45), Value::Str("x".into()), Value::Str("1".into())],
    };
    assert!(db.write_rows(vec![lying]).await.unwrap_err().is_bad_request());
    // A node's command sent to the router is refused, not executed.
    let conn = client::Connection::connect(c.binary, "test").await.unwrap();
    let req = Request::Adopt(protocol::AdoptReq { shard: "sh1".into(), epoch: 99 });
    match conn.call(req).await {
        Err(client::CallError::Remote(e)) => assert_eq!(e.kind, protocol::ErrorKind::BadRequest),
        other => panic!("{other:?}"),
    }
    assert!(matches!(conn.call(Request::Heartbeat).await, Ok(Response::Heartbeat)));
    assert_eq!(db.read(0, 20000).await.unwrap(), [row_with(42, "T", "7")]);
}

fn row_with(id: i64, name: &str, marks: &str) -> serde_json::Value {
    json!({"Stud_id": id, "Stud_name": name, "Stud_marks": marks})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_in_flight_on_one_client() {
    let c = Cluster::start().await;
    for (door, db) in both_doors(&c).await {
        let base = if door == "http" { 0 } else { 1 };
        let mut tasks = Vec::new();
        for t in 0..16i64 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20i64 {
                    let id = t * 700 + i * 2 + base;
                    assert_eq!(db.write(&[row(id)]).await.unwrap(), 1);
                    assert_eq!(db.read(id, id).await.unwrap(), [row(id)]);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
    let db = Db::connect_binary(c.binary).await.unwrap();
    assert_eq!(db.read(0, 12287).await.unwrap().len(), 640);
}
