//! The shard manager's database half with real `shardgate node` processes started by the
//! process spawner: `/init`, `/status`, failover after `kill -9` of a primary, `/add`, `/rm`,
//! and a manager restart on the same data directory. The requests go through the control
//! protocol exactly as routers forward them.
//!
//! Needs the `shardgate` binary next to the test binaries (`cargo build --bin shardgate`;
//! `cargo test --workspace` builds it), or its path in `SHARDGATE_BIN`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::Connection;
use lb::control::{AdminOp, CatalogView, ControlClient, ControlRequest, ControlResponse};
use lb::manager::{Manager, ManagerConfig};
use lb::spawner::{NodeSecret, ProcessConfig, ProcessSpawner, Spawner};
use protocol::{
    CopyReq, ReplicaInfo, ReplicaStatusReq, Request, Response, Role, Row, Value, WriteReq,
};
use serde_json::{json, Value as Json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Longest any expected change may take before a test fails.
const DEADLINE: Duration = Duration::from_secs(30);

fn shardgate_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHARDGATE_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<this test> → target/<profile>/shardgate
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let target = profile_dir.parent().expect("target");
    for candidate in [profile_dir.join("shardgate"), target.join("release").join("shardgate")] {
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "the shardgate binary is not built; run `cargo build --bin shardgate` first (looked in {})",
        profile_dir.display()
    );
}

/// Nodes log warnings only (they inherit the environment); the manager logs what
/// `MANAGER_LOG` asks for (nothing by default).
fn quiet_nodes() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("RUST_LOG").is_none() {
            std::env::set_var("RUST_LOG", "warn");
        }
        if let Ok(filter) = std::env::var("MANAGER_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

/// The cluster secret of the nodes these tests start and of this process (the manager and
/// the test's own connections): `<target>/tmp/manager_db.secret`, made once, set as this
/// process's secret on first use.
fn cluster_secret() -> PathBuf {
    static FILE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("manager_db.secret");
        let fresh: String = rand::random::<[u8; 32]>().iter().map(|b| format!("{b:02x}")).collect();
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(fresh.as_bytes()));
        if let Err(e) = created {
            assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists, "{}: {e}", path.display());
        }
        let secret = std::fs::read_to_string(&path).expect("the tests' cluster secret");
        assert!(!secret.trim().is_empty(), "{} is empty", path.display());
        protocol::auth::set_cluster_secret(secret.trim().as_bytes());
        path
    })
    .clone()
}

fn default_config() -> Json {
    json!({"N": 6,
     "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]},
     "shards": [{"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": 4096},
                {"Stud_id_low": 4096, "Shard_id": "sh2", "Shard_size": 4096},
                {"Stud_id_low": 8192, "Shard_id": "sh3", "Shard_size": 4096},
                {"Stud_id_low": 12288, "Shard_id": "sh4", "Shard_size": 4096}],
     "servers": {"Server0": ["sh1", "sh2"], "Server1": ["sh3", "sh4"], "Server3": ["sh1", "sh3"],
                 "Server4": ["sh4", "sh2"], "Server5": ["sh1", "sh4"], "Server6": ["sh3", "sh2"]}})
}

fn row(k: i64) -> Row {
    Row { key: k, values: vec![Value::Int(k), Value::Str(format!("S{k}")), Value::Int(k % 100)] }
}

/// A manager with its control listener and node processes; everything stops on drop (the
/// spawner's children are killed with it).
struct Cluster {
    dir: Option<tempfile::TempDir>,
    manager: Arc<Manager>,
    spawner: Arc<ProcessSpawner>,
    control: ControlClient,
    cancel: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_in(tempfile::tempdir().unwrap()).await
    }

    /// A manager on `dir` (which may hold an earlier manager's log and nodes' data).
    async fn start_in(dir: tempfile::TempDir) -> Cluster {
        quiet_nodes();
        let spawner = Arc::new(ProcessSpawner::new(ProcessConfig {
            exe: shardgate_bin(),
            data_dir: dir.path().to_path_buf(),
            hosts: vec!["127.0.0.1".parse().unwrap()],
            secret: NodeSecret::File(cluster_secret()),
            admin_token: None,
        }));
        let cfg = ManagerConfig {
            servers: 0,
            // Failure detection with margin: on a loaded 2-core CI machine a node can go
            // unscheduled for a few hundred ms, and a false failover breaks the exact
            // epochs these tests check.
            heartbeat: Duration::from_millis(100),
            dead_after: Duration::from_millis(1000),
            ..ManagerConfig::default()
        };
        let log = lb::manager::log_dir(dir.path());
        let manager = Manager::start_with_log(cfg, spawner.clone(), Some(&log)).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(lb::manager::serve(listener, manager.clone(), cancel.clone()));
        let control = ControlClient::new(addr, "test-router");
        Cluster { dir: Some(dir), manager, spawner, control, cancel, server: Some(server) }
    }

    /// Stops the manager and its nodes (their data stays) and returns the data directory.
    async fn stop(mut self) -> tempfile::TempDir {
        self.cancel.cancel();
        self.manager.shutdown().await;
        if let Some(s) = self.server.take() {
            let _ = s.await;
        }
        self.dir.take().unwrap()
    }

    /// A database admin call as a router forwards it: status and JSON body.
    async fn admin(&self, op: AdminOp, body: Json) -> (u16, Json) {
        let (status, text) = self.admin_text(op, body).await;
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}")))
    }

    async fn admin_text(&self, op: AdminOp, body: Json) -> (u16, String) {
        let body = if body.is_null() { String::new() } else { body.to_string() };
        self.admin_raw(op, &body).await
    }

    async fn admin_raw(&self, op: AdminOp, body: &str) -> (u16, String) {
        let req = ControlRequest::DbAdmin { op, body: body.to_string() };
        match self.control.call(req, Duration::from_secs(120)).await.unwrap() {
            ControlResponse::Json { status, body } => (status, body),
            other => panic!("unexpected answer {other:?}"),
        }
    }

    async fn watch(&self, version: u64, wait_ms: u64) -> CatalogView {
        let req = ControlRequest::WatchCatalog { version, wait_ms };
        match self.control.call(req, Duration::from_secs(10)).await.unwrap() {
            ControlResponse::Catalog(v) => v,
            other => panic!("unexpected answer {other:?}"),
        }
    }

    async fn status(&self) -> Json {
        let (code, body) = self.admin(AdminOp::Status, Json::Null).await;
        assert_eq!(code, 200, "{body}");
        body
    }

    fn addr(&self, name: &str) -> String {
        let ms = self.manager.membership();
        ms.members.iter().find(|m| m.name == name).map(|m| m.addr.clone()).unwrap()
    }

    fn primary(&self, shard: &str) -> Option<String> {
        self.manager.catalog().primary.get(shard).cloned()
    }

    async fn conn(&self, name: &str) -> Connection {
        Connection::connect(self.addr(name).as_str(), "test").await.unwrap()
    }

    async fn call(&self, name: &str, req: Request) -> Result<Response, client::CallError> {
        let c = Connection::connect(self.addr(name).as_str(), "test")
            .await
            .map_err(|_| client::CallError::Disconnected)?;
        c.call(req).await
    }

    async fn info(&self, name: &str, shard: &str) -> Option<ReplicaInfo> {
        let req = Request::ReplicaStatus(ReplicaStatusReq { shard: shard.into() });
        match self.call(name, req).await {
            Ok(Response::Replica(i)) => Some(i),
            _ => None,
        }
    }

    async fn rows(&self, name: &str, shard: &str) -> Option<Vec<Row>> {
        let req = Request::Copy(CopyReq { shards: vec![shard.into()] });
        match self.call(name, req).await {
            Ok(Response::Copy { mut shards }) => shards.pop().map(|(_, rows)| rows),
            _ => None,
        }
    }

    /// Writes `keys` to `shard` through its primary, ten rows per request.
    async fn write(&self, shard: &str, keys: std::ops::Range<i64>) {
        let p = self.primary(shard).expect("a primary");
        let conn = self.conn(&p).await;
        let keys: Vec<i64> = keys.collect();
        for chunk in keys.chunks(10) {
            let req = Request::Write(WriteReq {
                shard: shard.into(),
                curr_idx: None,
                rows: chunk.iter().map(|&k| row(k)).collect(),
            });
            match conn.call(req).await {
                Ok(Response::Written { .. }) => {}
                other => panic!("write to {shard} on {p}: {other:?}"),
            }
        }
    }

    /// Polls until `name` holds exactly `want` in `shard` (a new primary applies the rows of
    /// earlier epochs once the first record of its own epoch commits).
    async fn holds(&self, name: &str, shard: &str, want: &[Row]) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let rows = self.rows(name, shard).await;
            if rows.as_deref() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} holds {} rows of {shard}, not {}",
                rows.map_or(0, |r| r.len()),
                want.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls until every replica of `shard` holds the same rows; returns them.
    async fn identical(&self, shard: &str) -> Vec<Row> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut seen = Vec::new();
            for r in self.manager.catalog().replicas(shard) {
                seen.push(self.rows(&r, shard).await);
            }
            if let Some(Some(first)) = seen.first() {
                if seen.iter().all(|s| s.as_ref() == Some(first)) {
                    return first.clone();
                }
            }
            assert!(Instant::now() < deadline, "replicas of {shard} did not converge");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until every replica of `shard` holds exactly `want` (in key order).
    async fn converged(&self, shard: &str, want: &[Row]) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut all = true;
            for r in self.manager.catalog().replicas(shard) {
                if self.rows(&r, shard).await.as_deref() != Some(want) {
                    all = false;
                }
            }
            if all {
                return;
            }
            assert!(Instant::now() < deadline, "replicas of {shard} did not converge");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until `shard` has a primary other than `not` that reports itself primary at an
    /// epoch above `above`; returns its name.
    async fn new_primary(&self, shard: &str, not: &str, above: u64) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(p) = self.primary(shard).filter(|p| p != not) {
                if let Some(i) = self.info(&p, shard).await {
                    if matches!(i.role, Role::Primary { .. }) && i.epoch > above {
                        return p;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no new primary for {shard}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Writes one fresh row at a time to `shard` through its current primary until `stop`,
/// counting acknowledgements in `count`; returns the keys acknowledged and how many writes
/// were refused (e.g. while the primary changed epoch).
async fn keep_writing(
    m: Arc<Manager>,
    shard: &'static str,
    first: i64,
    count: Arc<AtomicU64>,
    stop: CancellationToken,
) -> (Vec<i64>, u64) {
    let (mut acked, mut failed, mut key) = (Vec::new(), 0, first);
    while !stop.is_cancelled() {
        let addr = m.catalog().primary.get(shard).and_then(|p| {
            m.membership().members.iter().find(|x| &x.name == p).map(|x| x.addr.clone())
        });
        let Some(addr) = addr else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let req =
            Request::Write(WriteReq { shard: shard.into(), curr_idx: None, rows: vec![row(key)] });
        let ok = match Connection::connect(addr.as_str(), "test-writer").await {
            Ok(c) => matches!(c.call(req).await, Ok(Response::Written { .. })),
            Err(_) => false,
        };
        if ok {
            acked.push(key);
            count.fetch_add(1, Ordering::Relaxed);
        } else {
            failed += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A refused write may still commit later: never reuse its key.
        key += 1;
    }
    (acked, failed)
}

fn expected_status(primaries: [&str; 4]) -> Json {
    let cfg = default_config();
    let mut shards = cfg["shards"].as_array().unwrap().clone();
    for (s, p) in shards.iter_mut().zip(primaries) {
        s["primary"] = json!(p);
    }
    json!({"N": 6, "schema": cfg["schema"], "shards": shards, "servers": cfg["servers"],
           "status": "success"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_configures_every_node_and_elects_one_primary_per_shard() {
    let c = Cluster::start().await;
    // A router's catalog watch: an unknown version is answered at once; the current one is
    // held until the catalog changes.
    let v0 = c.watch(0, 5000).await;
    assert!(!v0.catalog.initialized());
    let held = {
        let control = ControlClient::new(c.control.addr().to_string(), "test-watcher");
        let version = v0.version;
        tokio::spawn(async move {
            let t = Instant::now();
            let req = ControlRequest::WatchCatalog { version, wait_ms: 5000 };
            match control.call(req, Duration::from_secs(10)).await.unwrap() {
                ControlResponse::Catalog(v) => (v, t.elapsed()),
                other => panic!("unexpected answer {other:?}"),
            }
        })
    };
    let t = Instant::now();
    let (code, text) = c.admin_text(AdminOp::Init, default_config()).await;
    println!("/init took {:?}", t.elapsed());
    let (v1, waited) = held.await.unwrap();
    assert!(v1.version > v0.version && waited < Duration::from_secs(5), "{waited:?}");
    assert!(v1.catalog.initialized());
    let v2 = c.watch(v1.version - 1, 5000).await;
    assert_eq!(v2.servers.len(), 6);
    assert!(v2.servers.iter().all(|s| s.alive && !s.addr.is_empty() && !s.http.is_empty()));
    assert_eq!(v2.catalog.primary.len(), 4);
    assert_eq!(code, 200);
    assert_eq!(text, r#"{"message":"Configured Database","status":"success"}"#);

    let status = c.status().await;
    assert_eq!(status, expected_status(["Server0", "Server0", "Server1", "Server1"]));
    let servers: Vec<String> = c.manager.membership().names();
    assert_eq!(servers, ["Server0", "Server1", "Server3", "Server4", "Server5", "Server6"]);

    // Every node holds exactly its shards, in the right role at epoch 1.
    let cfg = default_config();
    for (name, shards) in cfg["servers"].as_object().unwrap() {
        for shard in ["sh1", "sh2", "sh3", "sh4"] {
            let holds = shards.as_array().unwrap().iter().any(|s| s == shard);
            let info = c.info(name, shard).await;
            assert_eq!(info.is_some(), holds, "{name} {shard}");
            assert_eq!(c.rows(name, shard).await.is_some(), holds, "{name} {shard}");
            let Some(info) = info else { continue };
            assert_eq!(info.epoch, 1, "{name} {shard}");
            if Some(name) == c.primary(shard).as_ref() {
                let Role::Primary { voters, learners, .. } = &info.role else {
                    panic!("{name} is not the primary of {shard}: {:?}", info.role)
                };
                let names: Vec<&str> = voters.iter().map(|v| v.name.as_str()).collect();
                assert_eq!(names, c.manager.catalog().replicas(shard));
                assert!(learners.is_empty());
            } else {
                assert_eq!(
                    info.role,
                    Role::Secondary { primary: c.primary(shard) },
                    "{name} {shard}"
                );
            }
        }
    }

    // /init runs once; bad input changes nothing.
    let (code, body) = c.admin(AdminOp::Init, default_config()).await;
    assert_eq!(code, 400);
    assert_eq!(body["status"], "failure");
    assert!(body["message"].as_str().unwrap().starts_with("<Error> "), "{body}");
    let (code, body) = c.admin_text(AdminOp::Init, json!({})).await;
    assert_eq!(code, 400, "{body}");
    let (code, body) = c.admin_raw(AdminOp::Add, "{not json").await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("not valid JSON"), "{body}");
    assert_eq!(c.status().await, status);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_is_replaced_and_comes_back_as_a_secondary() {
    let c = Cluster::start().await;
    assert_eq!(c.admin(AdminOp::Init, default_config()).await.0, 200);
    c.write("sh1", 0..200).await;
    c.write("sh2", 4096..4196).await;
    assert_eq!(c.primary("sh1").as_deref(), Some("Server0"));
    let old_addr = c.addr("Server0");

    let pid = c.spawner.pid("Server0").expect("Server0 runs");
    let killed = Instant::now();
    // SAFETY: a plain syscall on the pid of a child the spawner has not reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
    let p1 = c.new_primary("sh1", "Server0", 1).await;
    let took = killed.elapsed();
    let p2 = c.new_primary("sh2", "Server0", 1).await;
    println!(
        "kill -9 of Server0 -> new primary of sh1 ({p1}) after {took:?}, sh2 ({p2}) after {:?}",
        killed.elapsed()
    );

    // Every acknowledged row is on the new primaries, and they take writes.
    let want1: Vec<Row> = (0..200).map(row).collect();
    c.holds(&p1, "sh1", &want1).await;
    let want2: Vec<Row> = (4096..4196).map(row).collect();
    c.holds(&p2, "sh2", &want2).await;
    c.write("sh1", 200..250).await;
    let status = c.status().await;
    assert_eq!(status["shards"][0]["primary"], json!(p1));
    assert_eq!(status["shards"][1]["primary"], json!(p2));
    assert_eq!(c.manager.catalog().epoch_of("sh1"), 2);
    let (code, body) = c.admin(AdminOp::PrimaryElect, json!({"shard": "sh1"})).await;
    assert_eq!((code, body), (200, json!({"message": {"sh1": p1}, "status": "success"})));
    let (code, body) = c.admin(AdminOp::PrimaryElect, Json::Null).await;
    assert_eq!(code, 200);
    assert_eq!(body["message"].as_object().unwrap().len(), 4);
    let (code, body) = c.admin(AdminOp::PrimaryElect, json!({"shard": "sh9"})).await;
    assert_eq!((code, body["status"].clone()), (400, json!("failure")));

    // The killed node is respawned under its name and catches up as a secondary.
    let deadline = Instant::now() + DEADLINE;
    while c.addr("Server0") == old_addr || !c.manager.membership().members[0].alive {
        assert!(Instant::now() < deadline, "Server0 was not respawned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let want1: Vec<Row> = (0..250).map(row).collect();
    c.converged("sh1", &want1).await;
    c.converged("sh2", &want2).await;
    let info = c.info("Server0", "sh1").await.unwrap();
    assert_eq!(info.role, Role::Secondary { primary: Some(p1.clone()) });
    println!("Server0 respawned and caught up {:?} after the kill", killed.elapsed());
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_starts_new_shards_and_a_new_replica_ends_with_identical_rows() {
    let c = Cluster::start().await;
    assert_eq!(c.admin(AdminOp::Init, default_config()).await.0, 200);
    c.write("sh2", 4096..4596).await;

    // sh3 is written to all along: its new replica joins under load.
    let (stop, count) = (CancellationToken::new(), Arc::new(AtomicU64::new(0)));
    let writer =
        tokio::spawn(keep_writing(c.manager.clone(), "sh3", 8192, count.clone(), stop.clone()));
    let body = json!({"n": 2,
        "new_shards": [{"Stud_id_low": 16384, "Shard_id": "sh5", "Shard_size": 4096}],
        "servers": {"Server7": ["sh3", "sh5"], "Server[5]": ["sh2", "sh5"]}});
    let t = Instant::now();
    let (code, answer) = c.admin(AdminOp::Add, body).await;
    println!("/add took {:?}: {answer}", t.elapsed());
    assert_eq!(code, 200, "{answer}");
    // And a little longer, with Server7 a voter of sh3.
    let after = count.load(Ordering::Relaxed) + 20;
    while count.load(Ordering::Relaxed) < after {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let (acked, failed) = writer.await.unwrap();
    println!(
        "sh3 under load during /add: {} rows acknowledged, {failed} writes refused",
        acked.len()
    );
    let rows = c.identical("sh3").await;
    let keys: std::collections::HashSet<i64> = rows.iter().map(|r| r.key).collect();
    assert!(acked.iter().all(|k| keys.contains(k)), "an acknowledged row is missing");
    assert_eq!(c.manager.catalog().replicas("sh3").len(), 4);
    let cat = c.manager.catalog();
    let fresh = cat.servers.last().unwrap().0.clone();
    let digits = fresh.strip_prefix("Server").unwrap();
    assert_eq!(digits.len(), 6, "{fresh}");
    assert_eq!(
        answer,
        json!({"N": 8, "message": format!("Add Server:7 and Server:{digits}"), "status": "successful"})
    );
    // The new server of sh2 joined as a learner (epoch 2), caught up and became a voter
    // (epoch 3): one change per epoch. sh5 has a primary.
    assert!(cat.voters("sh2").contains(&fresh), "{:?}", cat.voters("sh2"));
    assert_eq!(cat.epoch_of("sh2"), 3);
    let p2 = c.primary("sh2").unwrap();
    assert_eq!(p2, "Server0", "adding a replica keeps the primary");
    let info = c.info(&p2, "sh2").await.unwrap();
    assert_eq!(info.epoch, 3);
    let Role::Primary { voters, learners, .. } = info.role else { panic!("{p2} not primary") };
    let names: Vec<&str> = voters.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["Server0", "Server4", "Server6", fresh.as_str()]);
    assert!(learners.is_empty());
    assert!(cat.voters("sh3").contains(&"Server7".to_string()));
    let want: Vec<Row> = (4096..4596).map(row).collect();
    c.holds(&fresh, "sh2", &want).await;
    c.write("sh2", 4596..4600).await;
    let want: Vec<Row> = (4096..4600).map(row).collect();
    c.converged("sh2", &want).await;
    assert_eq!(c.primary("sh5").as_deref(), Some("Server7"));
    c.write("sh5", 16384..16400).await;
    c.converged("sh5", &(16384..16400).map(row).collect::<Vec<_>>()).await;
    let status = c.status().await;
    assert_eq!(status["N"], 8);
    assert_eq!(
        status["shards"][4],
        json!({"Stud_id_low": 16384, "Shard_id": "sh5", "Shard_size": 4096, "primary": "Server7"})
    );
    assert_eq!(status["servers"][&fresh], json!(["sh2", "sh5"]));

    // The contract's errors; nothing changes.
    let (code, body) =
        c.admin(AdminOp::Add, json!({"n": 3, "servers": {"A1": ["sh1"], "A2": ["sh2"]}})).await;
    assert_eq!(
        (code, &body["message"]),
        (400, &json!("<Error> Number of new servers (n) is greater than newly added instances"))
    );
    assert_eq!(body["status"], "failure");
    let overlap = json!({"n": 1, "new_shards": [{"Stud_id_low": 100, "Shard_id": "sh9", "Shard_size": 5}], "servers": {"A1": ["sh9"]}});
    let (code, body) = c.admin(AdminOp::Add, overlap).await;
    assert_eq!(code, 400);
    assert!(body["message"].as_str().unwrap().contains("overlaps"), "{body}");
    let (code, body) = c.admin(AdminOp::Add, json!({"n": 1, "servers": {"A1": ["sh42"]}})).await;
    assert_eq!(code, 400);
    assert!(body["message"].as_str().unwrap().contains("sh42"), "{body}");
    assert_eq!(c.status().await, status);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rm_of_a_primary_hands_its_shards_over_first() {
    let c = Cluster::start().await;
    assert_eq!(c.admin(AdminOp::Init, default_config()).await.0, 200);
    c.write("sh1", 0..300).await;
    c.write("sh2", 4096..4196).await;

    let (code, body) = c
        .admin(AdminOp::Remove, json!({"n": 2, "servers": ["Server1", "Server4", "Server3"]}))
        .await;
    assert_eq!(
        (code, body),
        (
            400,
            json!({"message": "<Error> Length of server list is more than removable instances", "status": "failure"})
        )
    );
    let (code, body) = c.admin(AdminOp::Remove, json!({"n": 1, "servers": ["Nope"]})).await;
    assert_eq!(code, 400);
    assert!(body["message"].as_str().unwrap().contains("Nope"), "{body}");
    let last = json!({"n": 3, "servers": ["Server0", "Server3", "Server5"]});
    let (code, body) = c.admin(AdminOp::Remove, last).await;
    assert_eq!(code, 400);
    assert!(body["message"].as_str().unwrap().contains("last replica of shard sh1"), "{body}");

    let t = Instant::now();
    let (code, body) = c.admin(AdminOp::Remove, json!({"n": 1, "servers": ["Server0"]})).await;
    println!("/rm of the primary of sh1 and sh2 took {:?}", t.elapsed());
    assert_eq!(
        (code, body),
        (200, json!({"message": {"N": 5, "servers": ["Server0"]}, "status": "successful"}))
    );
    assert!(!c.manager.membership().names().contains(&"Server0".to_string()));
    let cat = c.manager.catalog();
    assert_eq!(cat.voters("sh1"), ["Server3", "Server5"]);
    assert_eq!(cat.voters("sh2"), ["Server4", "Server6"]);
    let p1 = c.new_primary("sh1", "Server0", 1).await;
    let p2 = c.new_primary("sh2", "Server0", 1).await;
    c.holds(&p1, "sh1", &(0..300).map(row).collect::<Vec<_>>()).await;
    c.write("sh1", 300..310).await;
    c.converged("sh1", &(0..310).map(row).collect::<Vec<_>>()).await;
    c.converged("sh2", &(4096..4196).map(row).collect::<Vec<_>>()).await;
    let Role::Primary { voters, .. } = c.info(&p2, "sh2").await.unwrap().role else {
        panic!("{p2} is not primary")
    };
    let names: Vec<&str> = voters.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["Server4", "Server6"]);

    // A random second server goes with a named one.
    let (code, body) = c.admin(AdminOp::Remove, json!({"n": 2, "servers": ["Server1"]})).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["message"]["N"], 3);
    assert_eq!(body["message"]["servers"][0], "Server1");
    assert_eq!(body["message"]["servers"].as_array().unwrap().len(), 2);
    let status = c.status().await;
    assert_eq!(status["N"], 3);
    for s in status["shards"].as_array().unwrap() {
        let p = s["primary"].as_str().expect("every shard keeps a primary");
        assert!(status["servers"][p].as_array().unwrap().contains(&s["Shard_id"]), "{status}");
    }
    let p1 = c.primary("sh1").unwrap();
    c.holds(&p1, "sh1", &(0..310).map(row).collect::<Vec<_>>()).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_manager_resumes_where_it_was() {
    let c = Cluster::start().await;
    assert_eq!(c.admin(AdminOp::Init, default_config()).await.0, 200);
    c.write("sh1", 0..100).await;
    c.write("sh3", 8192..8292).await;
    let status = c.status().await;
    let epochs: BTreeMap<String, u64> = c.manager.catalog().epoch;
    let dir = c.stop().await;

    let t = Instant::now();
    let c = Cluster::start_in(dir).await;
    assert_eq!(c.status().await, status);
    let p1 = c.new_primary("sh1", "", epochs["sh1"]).await;
    let p3 = c.new_primary("sh3", "", epochs["sh3"]).await;
    println!("restarted manager: primaries back after {:?}", t.elapsed());
    // Equal logs: the primaries stay where they were.
    assert_eq!(c.status().await, status);
    c.holds(&p1, "sh1", &(0..100).map(row).collect::<Vec<_>>()).await;
    c.write("sh1", 100..120).await;
    c.write("sh3", 8292..8300).await;
    c.converged("sh1", &(0..120).map(row).collect::<Vec<_>>()).await;
    c.converged("sh3", &(8192..8300).map(row).collect::<Vec<_>>()).await;
    assert_eq!(
        c.manager.membership().names(),
        ["Server0", "Server1", "Server3", "Server4", "Server5", "Server6"]
    );
    let _ = p3;
    c.stop().await;
}

/// Keeps the node `name` (killed) from starting again until dropped: its description of
/// `shard` is swapped for garbage, so the node refuses to open its data; dropping puts the
/// real one back in one rename.
struct NoRespawn {
    meta: PathBuf,
    saved: PathBuf,
}

impl NoRespawn {
    fn new(data_dir: &std::path::Path, name: &str, shard: &str) -> NoRespawn {
        let dir = data_dir.join("nodes").join(name).join("shards").join(shard);
        let (meta, saved) = (dir.join("shard.json"), dir.join("shard.json.saved"));
        std::fs::rename(&meta, &saved).unwrap();
        std::fs::write(&meta, b"not json").unwrap();
        NoRespawn { meta, saved }
    }
}

impl Drop for NoRespawn {
    fn drop(&mut self) {
        let _ = std::fs::rename(&self.saved, &self.meta);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_without_a_majority_stays_primary_less_until_its_replicas_return() {
    let c = Cluster::start().await;
    assert_eq!(c.admin(AdminOp::Init, default_config()).await.0, 200);
    c.write("sh1", 0..100).await;
    let data = c.dir.as_ref().unwrap().path().to_path_buf();
    // sh1 lives on Server0 (primary), Server3 and Server5: two of three go and stay away.
    let mut blocked = Vec::new();
    for name in ["Server0", "Server3"] {
        let pid = c.spawner.pid(name).unwrap();
        // SAFETY: a plain syscall on the pid of a child the spawner has not reaped.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) }, 0);
        blocked.push(NoRespawn::new(&data, name, "sh1"));
    }
    // sh2 (Server0, Server4, Server6) fails over; sh3 (Server1, Server3, Server6) keeps its
    // primary: a secondary dying needs no election.
    let p2 = c.new_primary("sh2", "Server0", 1).await;
    assert_eq!(c.primary("sh3").as_deref(), Some("Server1"));
    c.write("sh3", 8192..8200).await;
    // sh1 has no majority: no primary, and asking for one says why.
    let (code, body) = c.admin(AdminOp::PrimaryElect, json!({"shard": "sh1"})).await;
    assert_eq!(code, 503, "{body}");
    let msg = body["message"].as_str().unwrap();
    assert!(msg.starts_with("<Error> ") && msg.contains("majority"), "{msg}");
    assert!(c.primary("sh1").is_none(), "{:?}", c.primary("sh1"));
    assert_eq!(c.status().await["shards"][0]["primary"], Json::Null);
    let info = c.info("Server5", "sh1").await.unwrap();
    assert!(matches!(info.role, Role::Secondary { .. }), "{:?}", info.role);

    // They come back: sh1 elects a primary holding every acknowledged row.
    drop(blocked);
    let back = Instant::now();
    let p1 = c.new_primary("sh1", "", 1).await;
    println!("sh1 got primary {p1} {:?} after its replicas could come back", back.elapsed());
    c.write("sh1", 100..110).await;
    c.converged("sh1", &(0..110).map(row).collect::<Vec<_>>()).await;
    let _ = p2;
    c.stop().await;
}
