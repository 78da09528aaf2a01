//! The `shardgate node` command as a user runs it: it serves the contract's examples,
//! stops cleanly on SIGTERM, and keeps its data across the restart.

mod common;

use std::time::Duration;

use common::NodeProc;
use serde_json::json;

#[tokio::test]
async fn sigterm_stops_the_node_cleanly_and_the_data_stays() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = NodeProc::start("Server3", dir.path());
    let mut c = client::HttpClient::connect(node.http).await.unwrap();
    let (s, body) = c.json("GET", "/home", None).await.unwrap();
    assert_eq!(
        (s, body),
        (200, json!({"message": "Hello from Server: Server3", "status": "successful"}))
    );
    let cfg = json!({"schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]}, "shards": ["sh1"]});
    assert_eq!(c.json("POST", "/config", Some(&cfg)).await.unwrap().0, 200);
    let row = json!({"Stud_id": 7, "Stud_name": "A", "Stud_marks": 1});
    assert_eq!(
        c.json("POST", "/write", Some(&json!({"shard": "sh1", "data": [row.clone()]})))
            .await
            .unwrap()
            .0,
        200
    );
    // The binary door answers too.
    let conn = client::Connection::connect(node.binary, "test").await.unwrap();
    assert_eq!(conn.server_name(), "Server3");
    drop(conn);
    drop(c);
    assert!(node.terminate(Duration::from_secs(20)), "node did not exit cleanly on SIGTERM");

    let node = NodeProc::start("Server3", dir.path());
    let mut c = client::HttpClient::connect(node.http).await.unwrap();
    let (s, body) = c.json("GET", "/copy", Some(&json!({"shards": ["sh1"]}))).await.unwrap();
    assert_eq!((s, body), (200, json!({"sh1": [row], "status": "success"})));
}
