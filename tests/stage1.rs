//! Stage 1 end to end: every example and error of the contract's "Stage 1", answered by a real
//! `shardgate up` with its replicas as child processes.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use common::{http, node_pid, ClusterProc};
use serde_json::{json, Value as Json};

fn failure(message: &str) -> Json {
    json!({"message": message, "status": "failure"})
}

fn replicas(body: &Json) -> Vec<String> {
    body["message"]["replicas"]
        .as_array()
        .unwrap_or_else(|| panic!("no replicas in {body}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

async fn rep(addr: SocketAddr) -> Vec<String> {
    let (status, body) = http(addr, "GET", "/rep", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"]["N"].as_u64().unwrap() as usize, replicas(&body).len(), "{body}");
    replicas(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_examples_and_errors_answer_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let up = ClusterProc::up(3, dir.path(), &[]);
    let lb = up.http();

    let (status, body) = http(lb, "GET", "/rep", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"message": {"N": 3, "replicas": ["Server1", "Server2", "Server3"]}, "status": "successful"})
    );

    // /home through the balancer is a replica's own answer.
    let (status, body) = http(lb, "GET", "/home", None).await;
    assert_eq!(status, 200, "{body}");
    let name = body["message"].as_str().unwrap().strip_prefix("Hello from Server: ").unwrap();
    assert!(["Server1", "Server2", "Server3"].contains(&name), "{body}");
    assert_eq!(body["status"], "successful");

    let (status, body) =
        http(lb, "POST", "/add", Some(json!({"n": 4, "hostnames": ["S5", "S4", "S10", "S11"]})))
            .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"message": {"N": 7, "replicas": ["Server1", "Server2", "Server3", "S5", "S4", "S10", "S11"]}, "status": "successful"})
    );

    let (status, body) =
        http(lb, "POST", "/add", Some(json!({"n": 2, "hostnames": ["S6", "S7", "S8", "S9"]})))
            .await;
    assert_eq!(status, 400);
    assert_eq!(body, failure("<Error> Length of hostname list is more than newly added instances"));

    // A hostname in use: 400 naming it, nothing added (not even the other, new one).
    let (status, body) =
        http(lb, "POST", "/add", Some(json!({"n": 2, "hostnames": ["S12", "S5"]}))).await;
    assert_eq!((status, body), (400, failure("<Error> Hostname 'S5' is already in use")));
    assert_eq!(rep(lb).await.len(), 7);

    // Missing hostnames get random names.
    let (status, body) =
        http(lb, "POST", "/add", Some(json!({"n": 2, "hostnames": ["S12"]}))).await;
    assert_eq!(status, 200, "{body}");
    let names = replicas(&body);
    assert_eq!(body["message"]["N"], 9);
    assert_eq!(names[7], "S12");
    let random = &names[8];
    let digits = random.strip_prefix("Server").unwrap_or_else(|| panic!("{random}"));
    assert!(digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit()), "{random}");
    assert!(node_pid(up.pid(), random).is_some(), "no process for {random}");

    // DELETE /rm: the named ones and one at random.
    let before: HashSet<String> = rep(lb).await.into_iter().collect();
    let s5 = node_pid(up.pid(), "S5").expect("S5 runs");
    let (status, body) =
        http(lb, "DELETE", "/rm", Some(json!({"n": 3, "hostnames": ["S5", "S4"]}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"]["N"], 6);
    assert_eq!(body["status"], "successful");
    let after: HashSet<String> = replicas(&body).into_iter().collect();
    assert!(!after.contains("S5") && !after.contains("S4"), "{body}");
    assert!(after.is_subset(&before) && after.len() == 6, "{body}");
    assert_eq!(after, rep(lb).await.into_iter().collect());
    // A removed replica's process is stopped.
    assert!(!common::pid_alive(s5), "S5's process still runs");
    assert!(node_pid(up.pid(), "S5").is_none());

    // POST /rm is accepted too.
    let keep = rep(lb).await;
    let victim = keep.last().unwrap().clone();
    let (status, body) =
        http(lb, "POST", "/rm", Some(json!({"n": 1, "hostnames": [victim.clone()]}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"]["N"], 5);
    assert!(!replicas(&body).contains(&victim));

    let (status, body) =
        http(lb, "DELETE", "/rm", Some(json!({"n": 1, "hostnames": ["S10", "S11"]}))).await;
    assert_eq!(status, 400);
    assert_eq!(body, failure("<Error> Length of hostname list is more than removable instances"));

    // Unknown hostname, or more than there are: 400 naming it, nothing removed.
    let present = rep(lb).await;
    let (status, body) =
        http(lb, "DELETE", "/rm", Some(json!({"n": 2, "hostnames": [present[0].clone(), "S99"]})))
            .await;
    assert_eq!((status, body), (400, failure("<Error> Hostname 'S99' is not a replica")));
    let (status, body) = http(lb, "DELETE", "/rm", Some(json!({"n": 6}))).await;
    assert_eq!(
        (status, body),
        (400, failure("<Error> Cannot remove 6 replicas; there are only 5"))
    );
    assert_eq!(rep(lb).await, present);

    // Ill-formed admin requests name the field.
    let (status, body) = http(lb, "POST", "/add", Some(json!({"hostnames": []}))).await;
    assert_eq!((status, body), (400, failure("<Error> missing field 'n'")));
    let (status, body) = http(lb, "DELETE", "/rm", Some(json!({"n": "x"}))).await;
    assert_eq!((status, body), (400, failure("<Error> field 'n' must be a non-negative integer")));

    // A path no server serves, with the real path in the message.
    let (status, body) = http(lb, "GET", "/other", None).await;
    assert_eq!(status, 400);
    assert_eq!(body, failure("<Error> '/other' endpoint does not exist in server replicas"));
    let (status, body) = http(lb, "GET", "/a/b?c=d", None).await;
    assert_eq!(
        (status, body),
        (400, failure("<Error> '/a/b' endpoint does not exist in server replicas"))
    );
    // The replicas' own endpoints pass through as they answer (an empty 200 here).
    let (status, body) = http(lb, "GET", "/heartbeat", None).await;
    assert_eq!((status, body), (200, Json::Null));

    let reply = client::HttpClient::connect(lb)
        .await
        .unwrap()
        .request("GET", "/metrics", b"")
        .await
        .unwrap();
    let text = String::from_utf8(reply.body).unwrap();
    assert_eq!(reply.status, 200);
    assert!(
        text.contains("shardgate_ring_info{kind=\"assignment\",family=\"assignment\"} 1"),
        "{text}"
    );
    assert!(text.contains("shardgate_http_requests_total{path=\"/rep\",status=\"200\"}"), "{text}");
    assert!(text.contains("shardgate_forwarded_total{replica="), "{text}");
    assert!(text.contains("shardgate_replicas_alive 5"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    // Not with the contract's ring: its H(i) reaches only 87 of 512 slots, and for about 1
    // in 80 random sets of 3 server ids one server owns none of them and never gets a
    // request (see `shardgate analyze stage1`). A well-mixed ring always spreads them.
    let up = ClusterProc::up(3, dir.path(), &["--hash", "mixed"]);
    let lb = up.http();
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut c = client::HttpClient::connect(lb).await.unwrap();
    for _ in 0..3000 {
        let (status, body) = c.json("GET", "/home", None).await.unwrap();
        assert_eq!(status, 200, "{body}");
        let name = body["message"].as_str().unwrap().trim_start_matches("Hello from Server: ");
        *counts.entry(name.to_string()).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(counts.values().all(|&n| n > 0), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_replica_requests_get_503_until_one_is_added() {
    let dir = tempfile::tempdir().unwrap();
    let up = ClusterProc::up(0, dir.path(), &[]);
    let lb = up.http();
    let (status, body) = http(lb, "GET", "/rep", None).await;
    assert_eq!(
        (status, body),
        (200, json!({"message": {"N": 0, "replicas": []}, "status": "successful"}))
    );
    let (status, body) = http(lb, "GET", "/home", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, failure("<Error> no server replica is available"));

    let (status, body) = http(lb, "POST", "/add", Some(json!({"n": 1}))).await;
    assert_eq!(status, 200, "{body}");
    let name = replicas(&body)[0].clone();
    let (status, body) = http(lb, "GET", "/home", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"message": format!("Hello from Server: {name}"), "status": "successful"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_hash_families_and_key_sources_route_too() {
    let dir = tempfile::tempdir().unwrap();
    let up = ClusterProc::up(3, dir.path(), &["--hash", "maglev", "--key", "path"]);
    let lb = up.http();
    // Keyed by the path, every /home reaches the same replica.
    let mut seen = HashSet::new();
    let mut c = client::HttpClient::connect(lb).await.unwrap();
    for _ in 0..50 {
        let (status, body) = c.json("GET", "/home", None).await.unwrap();
        assert_eq!(status, 200, "{body}");
        seen.insert(body["message"].as_str().unwrap().to_string());
    }
    assert_eq!(seen.len(), 1, "{seen:?}");
    let reply = c.request("GET", "/metrics", b"").await.unwrap();
    let text = String::from_utf8(reply.body).unwrap();
    assert!(text.contains("family=\"maglev\""), "{text}");
}
