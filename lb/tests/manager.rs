//! The shard manager with an in-process spawner: replicas are tiny binary-protocol servers
//! that answer heartbeats, "crashed" by aborting their task. Covers replacement after missed
//! heartbeats, all-or-nothing `/add`, the membership watch, and a router following the
//! manager over the control protocol.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use lb::control::{ControlClient, ControlRequest, ControlResponse};
use lb::manager::{Manager, ManagerConfig};
use lb::router::{Router, RouterConfig};
use lb::spawner::{SpawnError, Spawned, Spawner};
use protocol::{RequestFrame, Response, ResponseFrame};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

/// Serves heartbeats (and `Home`) until aborted; aborting drops every connection with it.
async fn fake_node(listener: TcpListener, name: String) {
    let mut conns = JoinSet::new();
    while let Ok((stream, _)) = listener.accept().await {
        let name = name.clone();
        conns.spawn(async move {
            let mut framed = protocol::framed(stream);
            if protocol::server_handshake(&mut framed, &name).await.is_err() {
                return;
            }
            while let Some(Ok(bytes)) = framed.next().await {
                let Ok(req) = protocol::wire::decode::<RequestFrame>(&bytes) else { return };
                let answer = match req.body {
                    protocol::Request::Home => Response::Home { name: name.clone() },
                    _ => Response::Heartbeat,
                };
                let out = protocol::wire::encode(&ResponseFrame::ok(req.id, answer)).unwrap();
                if framed.send(out).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[derive(Debug, Default)]
struct FakeSpawner {
    running: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    spawns: Mutex<HashMap<String, u32>>,
    removed: Mutex<Vec<String>>,
    refuse: Mutex<HashSet<String>>,
}

impl FakeSpawner {
    /// Stops answering as `name`, without telling anyone (a crash).
    fn crash(&self, name: &str) {
        if let Some(h) = self.running.lock().unwrap().remove(name) {
            h.abort();
        }
    }

    fn spawns(&self, name: &str) -> u32 {
        self.spawns.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

impl Spawner for FakeSpawner {
    fn spawn<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Spawned, SpawnError>> {
        Box::pin(async move {
            if self.refuse.lock().unwrap().contains(name) {
                return Err(SpawnError { name: name.into(), detail: "refused by the test".into() });
            }
            self.crash(name);
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr: SocketAddr = l.local_addr().unwrap();
            let h = tokio::spawn(fake_node(l, name.to_string()));
            self.running.lock().unwrap().insert(name.to_string(), h);
            *self.spawns.lock().unwrap().entry(name.to_string()).or_default() += 1;
            Ok(Spawned { addr, http: addr })
        })
    }

    fn kill<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move { self.crash(name) })
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.crash(name);
            self.removed.lock().unwrap().push(name.to_string());
        })
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            for (_, h) in self.running.lock().unwrap().drain() {
                h.abort();
            }
        })
    }

    fn pid(&self, _name: &str) -> Option<u32> {
        None
    }
}

fn fast(servers: usize) -> ManagerConfig {
    ManagerConfig {
        servers,
        heartbeat: Duration::from_millis(20),
        dead_after: Duration::from_millis(150),
        ..ManagerConfig::default()
    }
}

async fn eventually<F: FnMut() -> bool>(within: Duration, mut f: F) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f()
}

#[tokio::test]
async fn starts_named_replicas_with_distinct_six_digit_ids() {
    let spawner = Arc::new(FakeSpawner::default());
    let m = Manager::start(fast(3), spawner.clone()).await.unwrap();
    let ms = m.membership();
    assert_eq!(ms.names(), ["Server1", "Server2", "Server3"]);
    let ids: HashSet<u64> = ms.members.iter().map(|x| x.id).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| (100_000..=999_999).contains(id)));
    assert!(ms.members.iter().all(|x| x.alive && x.restarts == 0));
    m.shutdown().await;
    assert!(spawner.running.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_silent_replica_is_replaced_under_its_name_and_id() {
    let spawner = Arc::new(FakeSpawner::default());
    let m = Manager::start(fast(3), spawner.clone()).await.unwrap();
    let before = m.membership().members[1].clone();
    spawner.crash("Server2");
    let replaced = eventually(Duration::from_secs(5), || {
        let x = &m.membership().members[1];
        x.alive && x.restarts == 1
    })
    .await;
    assert!(replaced, "{:?}", m.membership());
    let after = m.membership().members[1].clone();
    assert_eq!((after.name.as_str(), after.id), ("Server2", before.id));
    assert_ne!(after.addr, before.addr);
    assert_eq!(spawner.spawns("Server2"), 2);
    assert_eq!(spawner.spawns("Server1"), 1);
    m.shutdown().await;
}

#[tokio::test]
async fn add_is_all_or_nothing_and_rm_removes_its_replicas() {
    let spawner = Arc::new(FakeSpawner::default());
    spawner.refuse.lock().unwrap().insert("Bad".into());
    let m = Manager::start(fast(2), spawner.clone()).await.unwrap();
    let version = m.membership().version;
    let e = m.add(2, &["Good".into(), "Bad".into()]).await.unwrap_err();
    assert_eq!(e.http_status(), 500);
    assert!(e.message.contains("Bad"), "{}", e.message);
    assert_eq!(m.membership().names(), ["Server1", "Server2"]);
    assert_eq!(m.membership().version, version);
    assert_eq!(*spawner.removed.lock().unwrap(), ["Good"]);

    let ms = m.add(1, &["Good".into()]).await.unwrap();
    assert_eq!(ms.names(), ["Server1", "Server2", "Good"]);
    let ms = m.remove(1, &["Server1".into()]).await.unwrap();
    assert_eq!(ms.names(), ["Server2", "Good"]);
    assert!(!spawner.running.lock().unwrap().contains_key("Server1"));
    // A removed replica is not replaced.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(spawner.spawns("Server1"), 1);
    m.shutdown().await;
}

#[tokio::test]
async fn watch_answers_at_the_next_version() {
    let spawner = Arc::new(FakeSpawner::default());
    let m = Manager::start(fast(1), spawner).await.unwrap();
    let now = m.membership();
    // Up to date: held, then answered unchanged.
    let same = m.watch(now.generation, now.version, Duration::from_millis(50)).await;
    assert_eq!(same.version, now.version);
    // Another generation (a router that knew another manager): answered at once.
    let other = m.watch(now.generation ^ 1, now.version, Duration::from_secs(30)).await;
    assert_eq!(other.version, now.version);
    let waiter = {
        let (m, generation, version) = (m.clone(), now.generation, now.version);
        tokio::spawn(async move { m.watch(generation, version, Duration::from_secs(30)).await })
    };
    m.add(1, &[]).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert!(next.version > now.version);
    assert_eq!(next.members.len(), 2);
    m.shutdown().await;
}

#[tokio::test]
async fn a_router_follows_the_manager_over_the_control_protocol() {
    let spawner = Arc::new(FakeSpawner::default());
    let m = Manager::start(fast(2), spawner).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(lb::manager::serve(listener, m.clone(), cancel.clone()));

    let router = Router::start(RouterConfig::new(addr.to_string())).unwrap();
    assert!(router.wait_ready(Duration::from_secs(5)).await);
    assert_eq!(router.membership().names(), ["Server1", "Server2"]);

    m.add(1, &["S9".into()]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || router.membership().names().len() == 3).await,
        "{:?}",
        router.membership()
    );
    m.remove(1, &["Server1".into()]).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), || router.membership().names() == ["Server2", "S9"])
            .await
    );
    router.stop();
    cancel.cancel();
    m.shutdown().await;
    server.await.unwrap();
}

/// The connection type of the binary protocol.
type Framed = protocol::Framed<tokio::net::TcpStream>;

/// A handshake with the manager's control door as a router makes it: the error, if any.
async fn control_handshake(addr: SocketAddr) -> Result<Framed, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut framed = protocol::framed(stream);
    protocol::client_handshake(&mut framed, "test-router").await.map_err(|e| e.to_string())?;
    Ok(framed)
}

#[tokio::test]
async fn the_control_door_refuses_connections_beyond_its_cap_and_keeps_serving() {
    let spawner = Arc::new(FakeSpawner::default());
    let m = Manager::start(ManagerConfig { max_connections: 2, ..fast(1) }, spawner).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(lb::manager::serve(listener, m.clone(), cancel.clone()));
    let watch = |version| ControlRequest::Watch { generation: 0, version, wait_ms: 0 };

    // A control client (its call opens its connection) and one more fill the cap.
    let control = ControlClient::new(addr.to_string(), "test-router");
    let first = control.call(watch(0), Duration::from_secs(5)).await;
    assert!(matches!(first, Ok(ControlResponse::Members(_))), "{first:?}");
    let second = control_handshake(addr).await.expect("the second connection is within the cap");
    let third = control_handshake(addr).await;
    let Err(why) = third else { panic!("a third connection was accepted beyond a cap of 2") };
    assert!(why.contains("too many connections"), "{why}");
    // The connection already open is still served.
    let again = control.call(watch(0), Duration::from_secs(5)).await;
    assert!(matches!(again, Ok(ControlResponse::Members(_))), "{again:?}");
    // A place that frees up is taken again.
    drop(second);
    let reopened = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if control_handshake(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(reopened.is_ok(), "no connection was accepted after one closed");
    cancel.cancel();
    m.shutdown().await;
    server.await.unwrap();
}
