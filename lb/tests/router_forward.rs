//! Stage-1 forwarding over the binary protocol, against real in-process nodes: requests keyed
//! to one replica get that replica's own answer, and when it crashes mid-run the next replica
//! on the ring answers every request, before the manager has even noticed the crash.
//!
//! Each node runs on a runtime of its own, so a crash is the runtime dropped: every task and
//! socket of the node goes at once, in-flight requests included, as when a process dies.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use lb::key::KeySource;
use lb::manager::{Manager, ManagerConfig};
use lb::ring::{build, key_of, RingKind};
use lb::router::{Router, RouterConfig};
use lb::spawner::{SpawnError, Spawned, Spawner};
use node::{NodeConfig, NodeServer, ShardOptions};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A node and the runtime it runs on; dropping it is the node's crash.
struct Running {
    runtime: Option<tokio::runtime::Runtime>,
    _server: NodeServer,
}

impl Drop for Running {
    fn drop(&mut self) {
        // Without waiting: a runtime may not block while dropped inside another one.
        if let Some(r) = self.runtime.take() {
            r.shutdown_background();
        }
    }
}

/// Starts real nodes, each on its own one-thread runtime, data in a temp dir.
struct InProcess {
    dir: Option<tempfile::TempDir>,
    running: Mutex<HashMap<String, Running>>,
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InProcess")
    }
}

impl InProcess {
    fn new() -> InProcess {
        InProcess { dir: Some(tempfile::tempdir().unwrap()), running: Mutex::default() }
    }

    /// Every task and socket of node `name` is gone when this returns.
    fn crash(&self, name: &str) {
        let crashed = self.running.lock().unwrap().remove(name);
        drop(crashed);
    }
}

impl Spawner for InProcess {
    fn spawn<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Spawned, SpawnError>> {
        Box::pin(async move {
            self.crash(name);
            let failed = |detail: String| SpawnError { name: name.into(), detail };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| failed(e.to_string()))?;
            let cfg = NodeConfig {
                name: name.to_string(),
                listen: ([127, 0, 0, 1], 0).into(),
                http: Some(([127, 0, 0, 1], 0).into()),
                data_dir: self.dir.as_ref().map(|d| d.path().join(name)).unwrap_or_default(),
                shard: ShardOptions::default(),
            };
            let server = runtime
                .spawn(NodeServer::start(cfg))
                .await
                .map_err(|e| failed(e.to_string()))?
                .map_err(|e| failed(e.to_string()))?;
            let spawned = Spawned {
                addr: server.binary_addr(),
                http: server.http_addr().ok_or_else(|| failed("no http address".into()))?,
            };
            self.running
                .lock()
                .unwrap()
                .insert(name.to_string(), Running { runtime: Some(runtime), _server: server });
            Ok(spawned)
        })
    }

    fn kill<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.crash(name) })
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.crash(name) })
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let names: Vec<String> = self.running.lock().unwrap().keys().cloned().collect();
            for n in names {
                self.crash(&n);
            }
        })
    }

    fn pid(&self, _name: &str) -> Option<u32> {
        None
    }
}

/// A manager, its control listener, and a router serving HTTP; stopped on drop.
struct Cluster {
    spawner: Arc<InProcess>,
    manager: Arc<Manager>,
    router: Arc<Router>,
    http: SocketAddr,
    cancel: CancellationToken,
}

impl Cluster {
    /// `heartbeat` also bounds how soon the manager notices a crash (a refused heartbeat
    /// marks a replica dead at once).
    async fn start(servers: usize, heartbeat: Duration, key: KeySource) -> Cluster {
        let spawner = Arc::new(InProcess::new());
        let cfg = ManagerConfig {
            servers,
            heartbeat,
            dead_after: heartbeat * 3,
            ..ManagerConfig::default()
        };
        let manager = Manager::start(cfg, spawner.clone()).await.unwrap();
        let cancel = CancellationToken::new();
        let control = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let control_addr = control.local_addr().unwrap();
        tokio::spawn(lb::manager::serve(control, manager.clone(), cancel.clone()));
        let mut cfg = RouterConfig::new(control_addr.to_string());
        cfg.key = key;
        let router = Router::start(cfg).unwrap();
        assert!(router.wait_ready(Duration::from_secs(5)).await);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http = listener.local_addr().unwrap();
        let stop = cancel.clone();
        tokio::spawn(lb::router::serve(
            listener,
            router.clone(),
            async move { stop.cancelled().await },
        ));
        Cluster { spawner, manager, router, http, cancel }
    }

    async fn stop(self) {
        self.router.stop();
        self.cancel.cancel();
        self.manager.shutdown().await;
    }
}

/// The server name in a `/home` answer.
fn home_name(body: &serde_json::Value) -> String {
    body["message"]
        .as_str()
        .and_then(|m| m.strip_prefix("Hello from Server: "))
        .unwrap_or_else(|| panic!("not a /home answer: {body}"))
        .to_string()
}

async fn metric(http: SocketAddr, line_start: &str) -> Option<u64> {
    let mut c = client::HttpClient::connect(http).await.unwrap();
    let text = String::from_utf8(c.request("GET", "/metrics", b"").await.unwrap().body).unwrap();
    text.lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_pass_through_as_the_replica_gives_them() {
    let c = Cluster::start(2, Duration::from_millis(100), KeySource::Random).await;
    let mut h = client::HttpClient::connect(c.http).await.unwrap();
    let (status, body) = h.json("GET", "/home", None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(["Server1", "Server2"].contains(&home_name(&body).as_str()), "{body}");
    assert_eq!(body["status"], "successful");
    let reply = h.request("GET", "/heartbeat", b"").await.unwrap();
    assert_eq!((reply.status, reply.body), (200, Vec::new()));
    // The node's 405 is passed on; its "no such endpoint" becomes the contract's 400.
    let (status, body) = h.json("POST", "/home", None).await.unwrap();
    assert_eq!((status, &body["status"]), (405, &serde_json::json!("failure")), "{body}");
    let (status, body) = h.json("GET", "/nope?x=1", None).await.unwrap();
    assert_eq!(
        (status, body),
        (
            400,
            serde_json::json!({"message": "<Error> '/nope' endpoint does not exist in server replicas", "status": "failure"})
        )
    );
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_crashed_mid_run_is_skipped_for_the_next_on_the_ring() {
    // The manager sends no heartbeat for a minute, so it does not notice the crash:
    // everything below is the router's own doing. Keyed by the path, every /home goes to
    // one replica.
    let c = Cluster::start(3, Duration::from_secs(60), KeySource::Path).await;
    let members = c.router.membership().members;
    let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    let ring = build(&RingKind::default(), &ids).unwrap();
    let order = ring.candidates(key_of(b"/home"), 3);
    let name_of = |id: u64| members.iter().find(|m| m.id == id).unwrap().name.clone();
    let (first, second) = (name_of(order[0]), name_of(order[1]));

    let mut h = client::HttpClient::connect(c.http).await.unwrap();
    let (status, body) = h.json("GET", "/home", None).await.unwrap();
    assert_eq!((status, home_name(&body)), (200, first.clone()), "{body}");

    // Steady load from a few clients, recording who answered and anything that failed.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let answered: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut load = Vec::new();
    for _ in 0..4 {
        let (stop, failed, answered, lb) = (stop.clone(), failed.clone(), answered.clone(), c.http);
        load.push(tokio::spawn(async move {
            let mut h = client::HttpClient::connect(lb).await.unwrap();
            while !stop.load(Ordering::Relaxed) {
                match h.json("GET", "/home", None).await {
                    Ok((200, body)) => {
                        *answered.lock().unwrap().entry(home_name(&body)).or_default() += 1
                    }
                    other => {
                        eprintln!("failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let count = |name: &str| answered.lock().unwrap().get(name).copied().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&first) < 100 {
        assert!(Instant::now() < deadline, "the load does not run: {answered:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    c.spawner.crash(&first);
    let before = count(&second);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count(&second) < before + 200 {
        assert!(Instant::now() < deadline, "the next replica does not answer: {answered:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }

    // Every request was answered, by the next replica on the ring once the first was gone;
    // the third never saw one. The manager still lists the crashed one as alive.
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{answered:?}");
    let third = name_of(order[2]);
    assert_eq!(count(&third), 0, "{answered:?}");
    assert!(c.router.membership().members.iter().all(|m| m.alive));
    let (status, body) = h.json("GET", "/home", None).await.unwrap();
    assert_eq!((status, home_name(&body)), (200, second.clone()), "{body}");
    let failures =
        metric(c.http, &format!("shardgate_forward_failures_total{{replica=\"{first}\"}}")).await;
    assert!(failures.is_some_and(|n| n >= 1), "{failures:?}");
    c.stop().await;
}
