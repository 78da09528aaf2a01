//! Stage 1 failures: a replica killed with SIGKILL is replaced under its name while requests
//! keep being answered (by the next replica on the ring until then, so none fails); SIGTERM
//! (or SIGKILL) of `shardgate up` leaves no replica behind.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{http, node_pid, node_pids, pid_alive, poll, signal, ClusterProc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replica_is_replaced_under_its_name_while_requests_go_on() {
    let dir = tempfile::tempdir().unwrap();
    // A well-mixed ring, so Server2 surely gets a share of the load (the contract's ring
    // leaves one of 3 servers without traffic for about 1 in 80 sets of ids).
    let up = ClusterProc::up(3, dir.path(), &["--hash", "mixed"]);
    let lb = up.http();
    let old = node_pid(up.pid(), "Server2").expect("Server2 runs");

    // Steady load during the kill, counting what fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut c = client::HttpClient::connect(lb).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                match c.json("GET", "/home", None).await {
                    Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => failed.fetch_add(1, Ordering::Relaxed),
                    Err(_) => {
                        c = client::HttpClient::connect(lb).await.unwrap();
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    poll(Duration::from_secs(5), || async { (ok.load(Ordering::Relaxed) > 50).then_some(()) })
        .await
        .expect("load runs");

    signal(old, "KILL");
    let root = up.pid();
    let new =
        poll(
            Duration::from_secs(10),
            || async move { node_pid(root, "Server2").filter(|&p| p != old) },
        )
        .await
        .expect("Server2 replaced within 10 s");
    assert!(!pid_alive(old));
    // The replacement is listed again once it answers.
    let listed = poll(Duration::from_secs(10), || async {
        let (status, body) = http(lb, "GET", "/rep", None).await;
        (status == 200 && body["message"]["N"] == 3).then_some(body)
    })
    .await
    .expect("/rep lists 3 replicas again");
    assert_eq!(listed["message"]["replicas"], serde_json::json!(["Server1", "Server2", "Server3"]));
    // Requests reach the new Server2.
    poll(Duration::from_secs(10), || async {
        let (_, body) = http(lb, "GET", "/home", None).await;
        (body["message"] == "Hello from Server: Server2").then_some(())
    })
    .await
    .expect("the new Server2 answers through the balancer");

    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("during the kill: {ok} answered, {failed} failed; Server2 pid {old} -> {new}");
    // Requests to the dead replica go on to the next candidate on the ring.
    assert!(failed * 100 <= ok, "{failed} of {} requests failed", ok + failed);

    let mut c = client::HttpClient::connect(lb).await.unwrap();
    let metrics = String::from_utf8(c.request("GET", "/metrics", b"").await.unwrap().body).unwrap();
    assert!(
        metrics.contains("shardgate_replica_restarts_total{replica=\"Server2\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_run_is_skipped_for_the_next_on_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    // Keyed by the path, every /home goes to one replica: the one killed below.
    let up = ClusterProc::up(3, dir.path(), &["--key", "path"]);
    let lb = up.http();
    let (status, body) = http(lb, "GET", "/home", None).await;
    assert_eq!(status, 200, "{body}");
    let first = body["message"].as_str().unwrap().trim_start_matches("Hello from Server: ");
    let first = first.to_string();
    let old = node_pid(up.pid(), &first).expect("the replica runs");

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let answered: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, failed, answered) = (stop.clone(), failed.clone(), answered.clone());
        load.push(tokio::spawn(async move {
            let mut c = client::HttpClient::connect(lb).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                match c.json("GET", "/home", None).await {
                    Ok((200, body)) => {
                        let name = body["message"].as_str().unwrap_or_default();
                        let name = name.trim_start_matches("Hello from Server: ").to_string();
                        *answered.lock().unwrap().entry(name).or_default() += 1;
                    }
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                        if other.is_err() {
                            c = client::HttpClient::connect(lb).await.unwrap();
                        }
                    }
                }
            }
        }));
    }
    let others = || answered.lock().unwrap().iter().filter(|(n, _)| **n != first).count();
    poll(Duration::from_secs(5), || async {
        (answered.lock().unwrap().get(&first).copied().unwrap_or(0) > 50).then_some(())
    })
    .await
    .expect("load runs");
    assert_eq!(others(), 0, "{answered:?}");

    signal(old, "KILL");
    // Until the manager has replaced it, the next replica on the ring answers its requests.
    poll(Duration::from_secs(10), || async { (others() > 0).then_some(()) })
        .await
        .expect("another replica answers while the killed one is down");
    let root = up.pid();
    let first_again = first.clone();
    poll(Duration::from_secs(10), || {
        let first = first_again.clone();
        async move { node_pid(root, &first).filter(|&p| p != old) }
    })
    .await
    .expect("the killed replica is replaced");
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    eprintln!("answered {answered:?}");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{answered:?}");
    // Exactly one other replica stood in: the next one on the ring.
    assert_eq!(answered.len(), 2, "{answered:?}");
}

#[test]
fn sigterm_stops_up_and_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = ClusterProc::up(3, dir.path(), &[]);
    let nodes = node_pids(up.pid());
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    signal(up.pid(), "TERM");
    let status = up.wait_exit(Duration::from_secs(15)).expect("up exits within 15 s");
    assert!(status.success(), "{status}");
    let alive: Vec<u32> = nodes.into_iter().filter(|&p| pid_alive(p)).collect();
    assert!(alive.is_empty(), "replicas left running: {alive:?}");
}

#[test]
fn sigkill_of_up_takes_every_replica_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = ClusterProc::up(2, dir.path(), &[]);
    let nodes = node_pids(up.pid());
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    up.kill9();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while nodes.iter().any(|&p| pid_alive(p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let alive: Vec<u32> = nodes.into_iter().filter(|&p| pid_alive(p)).collect();
    assert!(alive.is_empty(), "replicas outlived a SIGKILLed up: {alive:?}");
}
