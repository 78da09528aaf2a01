//! The manager and routers as separate processes: two `shardgate lb` against one
//! `shardgate manager` both route, and each sees the membership changes made through the
//! other.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{http, poll, ClusterProc};
use serde_json::json;

async fn names(lb: SocketAddr) -> Vec<String> {
    let (status, body) = http(lb, "GET", "/rep", None).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body["message"]["replicas"].clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_share_one_manager() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let manager = ClusterProc::start(&[
        "manager",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data,
        "--servers",
        "2",
    ]);
    let control = manager.addr("control").to_string();
    let lb_a = ClusterProc::start(&["lb", "--manager", &control, "--http", "127.0.0.1:0"]);
    let lb_b = ClusterProc::start(&[
        "lb",
        "--manager",
        &control,
        "--http",
        "127.0.0.1:0",
        "--hash",
        "rendezvous",
    ]);
    let (a, b) = (lb_a.http(), lb_b.http());

    for lb in [a, b] {
        assert_eq!(names(lb).await, ["Server1", "Server2"]);
        let (status, body) = http(lb, "GET", "/home", None).await;
        assert_eq!(status, 200, "{body}");
        assert!(body["message"].as_str().unwrap().starts_with("Hello from Server: Server"));
    }

    // An /add through A shows in B.
    let (status, body) = http(a, "POST", "/add", Some(json!({"n": 1, "hostnames": ["X1"]}))).await;
    assert_eq!(status, 200, "{body}");
    poll(Duration::from_secs(10), || async {
        (names(b).await == ["Server1", "Server2", "X1"]).then_some(())
    })
    .await
    .expect("B sees the replica added through A");

    // An /rm through B shows in A.
    let (status, body) =
        http(b, "DELETE", "/rm", Some(json!({"n": 1, "hostnames": ["Server1"]}))).await;
    assert_eq!(status, 200, "{body}");
    poll(Duration::from_secs(10), || async { (names(a).await == ["Server2", "X1"]).then_some(()) })
        .await
        .expect("A sees the replica removed through B");

    // Both route to the remaining replicas only.
    for lb in [a, b] {
        for _ in 0..20 {
            let (status, body) = http(lb, "GET", "/home", None).await;
            assert_eq!(status, 200, "{body}");
            let m = body["message"].as_str().unwrap();
            assert!(m == "Hello from Server: Server2" || m == "Hello from Server: X1", "{m}");
        }
    }
    drop((lb_a, lb_b, manager));
}
