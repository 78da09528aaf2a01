//! A database behind a router, all in process: real nodes on loopback (temp dirs) whose
//! shards are made primary and secondaries the way the manager does it (adopt, promote,
//! follow), a fake shard manager that serves a catalog view the test controls (and records
//! the admin calls it gets), and the router in front, serving HTTP on loopback.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::Connection;
use futures::{SinkExt, StreamExt};
use lb::catalog::{Catalog, ShardRange};
use lb::control::{
    AdminOp, CatalogView, ControlRequest, ControlRequestFrame, ControlResponse,
    ControlResponseFrame, Member, Membership, ServerView,
};
use lb::router::{Router, RouterConfig};
use node::{NodeConfig, NodeServer, ShardOptions};
use protocol::{
    AdoptReq, ConfigReq, CopyReq, FollowReq, PromoteReq, Quorum, Replica, Request, Response, Row,
    Schema, ShardSpec,
};
use serde_json::{json, Value as Json};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};

/// The shards: `(id, low, size)`.
pub const SHARDS: [(&str, i64, i64); 3] =
    [("sh1", 0, 4096), ("sh2", 4096, 4096), ("sh3", 8192, 4096)];

/// Where each shard lives (every shard on three servers) and its first primary.
pub const SERVERS: [(&str, &[&str]); 4] = [
    ("S0", &["sh1", "sh2"]),
    ("S1", &["sh2", "sh3"]),
    ("S2", &["sh1", "sh3"]),
    ("S3", &["sh1", "sh2", "sh3"]),
];

/// The first primary of each shard.
pub const PRIMARIES: [(&str, &str); 3] = [("sh1", "S0"), ("sh2", "S1"), ("sh3", "S2")];

/// A row like the contract's examples.
pub fn row(id: i64) -> Json {
    json!({"Stud_id": id, "Stud_name": format!("N{id}"), "Stud_marks": id % 100})
}

/// One node, stoppable.
pub struct TestNode {
    pub name: String,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    server: Option<NodeServer>,
}

impl TestNode {
    async fn start(name: &str) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let mut shard = ShardOptions::default();
        // Small preallocated segments: a dozen replicas start in a moment.
        shard.wal.segment_size = 256 * 1024;
        let cfg = NodeConfig {
            name: name.to_string(),
            listen: "127.0.0.1:0".parse().unwrap(),
            http: None,
            data_dir: dir.path().to_path_buf(),
            shard,
        };
        let server = NodeServer::start(cfg).await.unwrap();
        TestNode { name: name.into(), addr: server.binary_addr(), dir, server: Some(server) }
    }

    pub fn replica(&self) -> Replica {
        Replica { name: self.name.clone(), addr: self.addr.to_string() }
    }

    pub async fn call(&self, req: Request) -> Response {
        let c = Connection::connect(self.addr, "test").await.unwrap();
        c.call(req).await.unwrap_or_else(|e| panic!("{} answered {e}", self.name))
    }

    /// Every row this node holds of `shard`.
    pub async fn rows(&self, shard: &str) -> Vec<Row> {
        match self.call(Request::Copy(CopyReq { shards: vec![shard.into()] })).await {
            Response::Copy { mut shards } => shards.pop().unwrap().1,
            other => panic!("copy: {other:?}"),
        }
    }

    /// Stops the node (its address then refuses connections).
    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// The fake shard manager: serves the control protocol with a catalog view the test sets.
pub struct FakeManager {
    pub addr: SocketAddr,
    view: Arc<watch::Sender<CatalogView>>,
    /// Every database admin call: the endpoint and the body text.
    pub admin_log: Arc<Mutex<Vec<(AdminOp, String)>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The fake's answer to a database admin call: a refusal when the body asks for one,
/// otherwise a body that names the call, with unusual spacing (to see it passed on as is).
pub fn fake_admin_answer(op: AdminOp, body: &str) -> (u16, String) {
    if body.contains("\"fail\"") {
        return (400, r#"{"message": "<Error> refused by the fake", "status": "failure"}"#.into());
    }
    if op == AdminOp::Status {
        // With the schema, as the real /status has it (the binary client reads it there).
        return (
            200,
            format!("{{ \"op\" : \"Status\",  \"bytes\" : {}, {STATUS_SCHEMA} }}", body.len()),
        );
    }
    (200, format!("{{ \"op\" : \"{op:?}\",  \"bytes\" : {} }}", body.len()))
}

/// The schema part of the fake's `/status` answer.
pub const STATUS_SCHEMA: &str = r#""schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]}"#;

impl FakeManager {
    pub async fn start(view: CatalogView) -> FakeManager {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let view = Arc::new(watch::channel(view).0);
        let admin_log = Arc::new(Mutex::new(Vec::new()));
        let (v, log) = (view.clone(), admin_log.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_conn(stream, v.clone(), log.clone()));
            }
        });
        FakeManager { addr, view, admin_log, task }
    }

    /// Changes the view and raises its version; returns the new version.
    pub fn update(&self, f: impl FnOnce(&mut CatalogView)) -> u64 {
        let mut version = 0;
        self.view.send_modify(|v| {
            f(v);
            v.version += 1;
            version = v.version;
        });
        version
    }

    pub fn view(&self) -> CatalogView {
        self.view.borrow().clone()
    }
}

impl Drop for FakeManager {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_conn(
    stream: tokio::net::TcpStream,
    view: Arc<watch::Sender<CatalogView>>,
    log: Arc<Mutex<Vec<(AdminOp, String)>>>,
) {
    let mut framed = protocol::framed(stream);
    if protocol::server_handshake(&mut framed, "fake-manager").await.is_err() {
        return;
    }
    let (mut sink, mut frames) = framed.split();
    let (tx, mut rx) = mpsc::channel::<ControlResponseFrame>(64);
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if sink.send(protocol::wire::encode(&f).unwrap()).await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(bytes)) = frames.next().await {
        let req: ControlRequestFrame = protocol::wire::decode(&bytes).unwrap();
        let (view, log, tx) = (view.clone(), log.clone(), tx.clone());
        tokio::spawn(async move {
            let body = match req.body {
                ControlRequest::Watch { generation, wait_ms, .. } => {
                    if generation == 1 {
                        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                    }
                    Ok(ControlResponse::Members(Membership {
                        generation: 1,
                        version: 1,
                        members: vec![],
                    }))
                }
                ControlRequest::WatchCatalog { version, wait_ms } => {
                    let mut rx = view.subscribe();
                    let _ = tokio::time::timeout(
                        Duration::from_millis(wait_ms),
                        rx.wait_for(|v| v.version > version),
                    )
                    .await;
                    let current = view.borrow().clone();
                    Ok(ControlResponse::Catalog(current))
                }
                ControlRequest::DbAdmin { op, body } => {
                    let (status, answer) = fake_admin_answer(op, &body);
                    log.lock().unwrap().push((op, body));
                    Ok(ControlResponse::Json { status, body: answer })
                }
                ControlRequest::Add { n, hostnames } => {
                    let members = (0..n as usize)
                        .map(|i| Member {
                            name: hostnames.get(i).cloned().unwrap_or_else(|| format!("R{i}")),
                            id: 100_000 + i as u64,
                            addr: "127.0.0.1:1".into(),
                            http: "127.0.0.1:1".into(),
                            alive: true,
                            restarts: 0,
                        })
                        .collect();
                    Ok(ControlResponse::Members(Membership { generation: 1, version: 2, members }))
                }
                ControlRequest::Remove { .. } => {
                    Err(protocol::ErrorBody::bad_request("the fake removes nothing"))
                }
            };
            let _ = tx.send(ControlResponseFrame { id: req.id, body }).await;
        });
    }
}

/// Nodes, the fake manager and a router serving HTTP.
pub struct Cluster {
    pub nodes: Vec<TestNode>,
    pub fake: FakeManager,
    pub router: Arc<Router>,
    pub http: SocketAddr,
    /// The router's binary door (the Rust client's).
    pub binary: SocketAddr,
    stop_http: Option<oneshot::Sender<()>>,
}

/// The catalog of [`SHARDS`], [`SERVERS`] and [`PRIMARIES`] at epoch 1.
pub fn catalog() -> Catalog {
    let mut c = Catalog {
        schema: Some(Schema::student_default()),
        shards: SHARDS
            .iter()
            .map(|(id, low, size)| ShardRange { id: id.to_string(), low: *low, size: *size })
            .collect(),
        servers: SERVERS
            .iter()
            .map(|(n, sh)| (n.to_string(), sh.iter().map(|s| s.to_string()).collect()))
            .collect(),
        ..Catalog::default()
    };
    for (shard, primary) in PRIMARIES {
        c.primary.insert(shard.into(), primary.into());
        c.epoch.insert(shard.into(), 1);
    }
    c
}

/// The names of the servers holding `shard`.
pub fn replicas_of(shard: &str) -> Vec<&'static str> {
    SERVERS.iter().filter(|(_, sh)| sh.contains(&shard)).map(|(n, _)| *n).collect()
}

impl Cluster {
    /// The database of [`catalog`], initialized, behind a router.
    pub async fn start() -> Cluster {
        Cluster::start_with(true, |_| {}).await
    }

    /// Nodes configured and replicating; the fake serves the catalog when `initialized`
    /// (otherwise an empty one, as before `/init`); `tune` adjusts the router's config.
    pub async fn start_with(initialized: bool, tune: impl FnOnce(&mut RouterConfig)) -> Cluster {
        let mut nodes = Vec::new();
        for (name, shards) in SERVERS {
            let n = TestNode::start(name).await;
            let specs = shards
                .iter()
                .map(|s| {
                    let (_, low, size) = SHARDS.iter().find(|x| x.0 == *s).unwrap();
                    ShardSpec::with_range(*s, *low, *size)
                })
                .collect();
            n.call(Request::Config(ConfigReq { schema: Schema::student_default(), shards: specs }))
                .await;
            nodes.push(n);
        }
        let mut cluster_nodes = nodes;
        for (shard, primary) in PRIMARIES {
            elect(&cluster_nodes, shard, primary, 1, &replicas_of(shard)).await;
        }
        let servers = cluster_nodes
            .iter()
            .map(|n| ServerView {
                name: n.name.clone(),
                addr: n.addr.to_string(),
                http: String::new(),
                alive: true,
            })
            .collect();
        let view = CatalogView {
            version: 1,
            catalog: if initialized { catalog() } else { Catalog::default() },
            servers,
        };
        let fake = FakeManager::start(view).await;
        let (router, http, binary, stop_http) = start_router(&fake, tune).await;
        cluster_nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Cluster { nodes: cluster_nodes, fake, router, http, binary, stop_http: Some(stop_http) }
    }

    pub fn node(&self, name: &str) -> &TestNode {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    pub fn node_mut(&mut self, name: &str) -> &mut TestNode {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    pub async fn http(&self) -> Http {
        Http::connect(self.http).await
    }

    /// Changes the fake's view and waits until the router routes by it.
    pub async fn set_view(&self, f: impl FnOnce(&mut CatalogView)) {
        let v = self.fake.update(f);
        assert!(self.router.wait_catalog(v, Duration::from_secs(5)).await, "router missed v{v}");
    }

    /// Every row each node holds, by node and shard.
    pub async fn everything(&self) -> BTreeMap<(String, String), Vec<i64>> {
        let mut out = BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.server.is_some()) {
            for (name, shards) in SERVERS {
                if name != n.name {
                    continue;
                }
                for s in shards.iter() {
                    let keys = n.rows(s).await.iter().map(|r| r.key).collect();
                    out.insert((n.name.clone(), s.to_string()), keys);
                }
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.router.stop();
        if let Some(tx) = self.stop_http.take() {
            let _ = tx.send(());
        }
    }
}

/// Starts a router against `fake`, serving HTTP and its binary door; returns it, the two
/// addresses, and the stop switch of both.
pub async fn start_router(
    fake: &FakeManager,
    tune: impl FnOnce(&mut RouterConfig),
) -> (Arc<Router>, SocketAddr, SocketAddr, oneshot::Sender<()>) {
    let mut cfg = RouterConfig::new(fake.addr.to_string());
    tune(&mut cfg);
    let router = Router::start(cfg).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let binary_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let binary = binary_listener.local_addr().unwrap();
    let stop_binary = tokio_util::sync::CancellationToken::new();
    tokio::spawn(lb::router::serve_binary(binary_listener, router.clone(), stop_binary.clone()));
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(lb::router::serve(listener, router.clone(), async move {
        let _ = rx.await;
        stop_binary.cancel();
    }));
    let version = fake.view().version;
    assert!(router.wait_catalog(version, Duration::from_secs(5)).await, "no catalog");
    (router, http, binary, tx)
}

/// An election as the manager runs it: the `live` replicas of `shard` adopt `epoch`,
/// `primary` is promoted with every replica of the shard as a voter, the others follow it.
pub async fn elect(nodes: &[TestNode], shard: &str, primary: &str, epoch: u64, live: &[&str]) {
    let by_name: HashMap<&str, &TestNode> = nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    for name in live {
        match by_name[name].call(Request::Adopt(AdoptReq { shard: shard.into(), epoch })).await {
            Response::Adopted { .. } => {}
            other => panic!("adopt: {other:?}"),
        }
    }
    let voters = replicas_of(shard).iter().map(|n| by_name[n].replica()).collect();
    by_name[primary]
        .call(Request::Promote(PromoteReq {
            shard: shard.into(),
            epoch,
            voters,
            learners: vec![],
            quorum: Quorum::Majority,
        }))
        .await;
    for name in live.iter().filter(|n| **n != primary) {
        by_name[name]
            .call(Request::Follow(FollowReq {
                shard: shard.into(),
                epoch,
                primary: by_name[primary].replica(),
            }))
            .await;
    }
}

/// Makes every live replica of `shard` adopt `epoch`: no primary until the next promotion.
pub async fn depose(nodes: &[TestNode], shard: &str, epoch: u64, live: &[&str]) {
    for n in nodes.iter().filter(|n| live.contains(&n.name.as_str())) {
        n.call(Request::Adopt(AdoptReq { shard: shard.into(), epoch })).await;
    }
}

/// One keep-alive HTTP/1.1 connection that fails the test on transport errors.
pub struct Http(client::HttpClient);

impl Http {
    pub async fn connect(addr: SocketAddr) -> Http {
        Http(client::HttpClient::connect(addr).await.unwrap())
    }

    /// Sends raw body bytes; returns the status and the raw body.
    pub async fn raw(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let reply = self.0.request(method, path, body).await.unwrap();
        (reply.status, String::from_utf8(reply.body).unwrap())
    }

    pub async fn req(&mut self, method: &str, path: &str, body: Option<Json>) -> (u16, Json) {
        self.0.json(method, path, body.as_ref()).await.unwrap()
    }
}

/// Asserts a contract error: the code, `"status": "failure"`, and a message containing
/// `needle`.
pub fn assert_failure(got: &(u16, Json), code: u16, needle: &str) {
    assert_eq!(got.0, code, "{:?}", got.1);
    assert_eq!(got.1["status"], "failure", "{:?}", got.1);
    let msg = got.1["message"].as_str().expect("message");
    assert!(msg.starts_with("<Error> "), "{msg}");
    assert!(msg.contains(needle), "{msg:?} should contain {needle:?}");
    assert_eq!(got.1.as_object().unwrap().len(), 2, "{:?}", got.1);
}

/// The value of a counter in the router's `/metrics` (0 when absent).
pub async fn metric(http: SocketAddr, series: &str) -> u64 {
    let mut c = client::HttpClient::connect(http).await.unwrap();
    let text = String::from_utf8(c.request("GET", "/metrics", b"").await.unwrap().body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map_or(0, |v| v.trim().parse().unwrap())
}
