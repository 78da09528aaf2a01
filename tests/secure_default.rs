//! Secure by default (issue 19): `up` with its defaults closes every binary door (nodes,
//! router, the manager's control port) to callers without the cluster secret; with
//! `--admin-token` the manager's control port cannot be used around the token, and every
//! node's `/config` needs the token. `--insecure` is an explicit, loud choice; a router with
//! no secret refuses to start; the secret `up` generates is private and kept.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{http, http_auth, node_binary, node_http, ClusterProc, BIN};
use futures::{SinkExt, StreamExt};
use lb::control::{ControlRequest, ControlRequestFrame, ControlResponse, ControlResponseFrame};
use protocol::{
    AdminOp, AdoptReq, CopyReq, DbAdminReq, DbReadReq, DbWriteReq, ErrorBody, PromoteReq, Replica,
    Request, RequestFrame, Response, ResponseFrame, Row, Value, WriteReq,
};
use serde_json::{json, Value as Json};

/// The environment of a cluster started with its defaults: no secret given.
const NO_SECRET: &[(&str, &str)] = &[("SHARDGATE_SECRET_FILE", "")];

/// Sends `frame` on a fresh connection that completes the handshake without any secret,
/// and reads one answer: the handshake's error, or the answer's frame.
async fn unauthenticated(addr: SocketAddr, frame: Vec<u8>) -> Result<Vec<u8>, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut framed = protocol::framed(stream);
    let handshake = protocol::client_handshake_with(&mut framed, "intruder", None);
    match tokio::time::timeout(Duration::from_secs(20), handshake).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("handshake timed out".into()),
    }
    framed.send(tokio_util::bytes::Bytes::from(frame)).await.map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(Duration::from_secs(30), framed.next())
        .await
        .map_err(|_| "no answer".to_string())?
        .ok_or("closed")?
        .map_err(|e| e.to_string())?;
    Ok(reply.to_vec())
}

/// One request of the data protocol from a caller that proves no secret.
async fn raw_call(addr: SocketAddr, req: Request) -> Result<Result<Response, ErrorBody>, String> {
    let frame = protocol::wire::encode(&RequestFrame { id: 1, body: req }).unwrap();
    let reply = unauthenticated(addr, frame.to_vec()).await?;
    let reply: ResponseFrame = protocol::wire::decode(&reply).map_err(|e| e.to_string())?;
    Ok(reply.body)
}

/// One request of the control protocol (the manager's port) from a caller that proves no
/// secret.
async fn raw_control(
    addr: SocketAddr,
    req: ControlRequest,
) -> Result<Result<ControlResponse, ErrorBody>, String> {
    let frame = protocol::wire::encode(&ControlRequestFrame { id: 7, body: req }).unwrap();
    let reply = unauthenticated(addr, frame.to_vec()).await?;
    let reply: ControlResponseFrame = protocol::wire::decode(&reply).map_err(|e| e.to_string())?;
    Ok(reply.body)
}

/// The refusal of a request from a caller without the secret: the handshake's (the door
/// asks for the cluster secret) or a 401 answer; anything else fails the test.
fn assert_refused<T: std::fmt::Debug>(what: &str, got: Result<Result<T, ErrorBody>, String>) {
    match got {
        Err(e) => assert!(e.contains("cluster secret"), "{what}: refused for another reason: {e}"),
        Ok(Err(e)) if e.http_status() == 401 => {}
        Ok(answer) => panic!("{what}: a caller without the cluster secret got {answer:?}"),
    }
}

/// What the balancer says about itself: `/status`, `/rep` and every row.
async fn state(addr: SocketAddr) -> Json {
    let (s, status) = http(addr, "GET", "/status", None).await;
    assert_eq!(s, 200, "{status}");
    let (s, rep) = http(addr, "GET", "/rep", None).await;
    assert_eq!(s, 200, "{rep}");
    let range = json!({"Stud_id": {"low": 0, "high": 199}});
    let (s, data) = http(addr, "POST", "/read", Some(range)).await;
    assert_eq!(s, 200, "{data}");
    json!({"status": status, "rep": rep, "data": data})
}

fn row(key: i64) -> Row {
    Row { key, values: vec![Value::Int(key), Value::Str("forged".into()), Value::Int(0)] }
}

/// `up` with its defaults (no secret given: the harness gives one otherwise) and `extra`,
/// data under `dir`, holding sh1 and sh2 on Server0.
fn up_with_defaults(dir: &Path, extra: &[&str]) -> ClusterProc {
    let init = common::one_server_two_shards();
    // A loaded machine must not make the replica look dead while it is configured.
    let mut args = vec!["--init", &init, "--dead-after-ms", "5000"];
    args.extend_from_slice(extra);
    ClusterProc::up_with_env(0, &dir.join("data"), &args, NO_SECRET)
}

// Finding 1: with its defaults, no binary door of `up` serves a caller without the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_by_default_refuses_callers_without_the_cluster_secret_at_every_binary_door() {
    let dir = tempfile::tempdir().unwrap();
    let up = up_with_defaults(dir.path(), &[]);
    let addr = up.http();
    let rows = json!({"data": [{"Stud_id": 1, "Stud_name": "a", "Stud_marks": 5}]});
    let (s, r) = http(addr, "POST", "/write", Some(rows)).await;
    assert_eq!(s, 200, "{r}");
    let before = state(addr).await;

    let node = node_binary(up.pid(), "Server0").await;
    let node_requests = [
        Request::Copy(CopyReq { shards: vec!["sh1".into()] }),
        Request::Write(WriteReq { shard: "sh1".into(), curr_idx: None, rows: vec![row(2)] }),
        Request::Promote(PromoteReq {
            shard: "sh1".into(),
            epoch: 1_000,
            voters: vec![Replica { name: "Server0".into(), addr: node.to_string() }],
            learners: vec![],
            quorum: Default::default(),
        }),
        Request::Adopt(AdoptReq { shard: "sh1".into(), epoch: u64::MAX }),
    ];
    for req in node_requests {
        let name = req.name();
        assert_refused(&format!("node {name}"), raw_call(node, req).await);
    }
    let router = up.addr("binary");
    let router_requests = [
        Request::DbRead(DbReadReq { low: 0, high: 199, consistency: Default::default() }),
        Request::DbWrite(DbWriteReq { rows: vec![row(3)] }),
        Request::DbAdmin(DbAdminReq { op: AdminOp::PrimaryElect, body: "{}".into() }),
    ];
    for req in router_requests {
        let name = req.name();
        assert_refused(&format!("router {name}"), raw_call(router, req).await);
    }
    let manager = up.addr("manager");
    let control_requests = [
        ControlRequest::Watch { generation: 0, version: 0, wait_ms: 0 },
        ControlRequest::Add { n: 1, hostnames: vec!["Intruder".into()] },
        ControlRequest::DbAdmin { op: AdminOp::PrimaryElect, body: "{}".into() },
    ];
    for req in control_requests {
        assert_refused(&format!("manager {req:?}"), raw_control(manager, req).await);
    }
    assert_eq!(state(addr).await, before, "a refused caller changed something");
}

// Finding 2: with --admin-token, the manager's control port is no way around the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_the_managers_control_port_refuses_peers_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let up = up_with_defaults(dir.path(), &["--admin-token", "tok-manager"]);
    let addr = up.http();
    let before = state(addr).await;
    let manager = up.addr("manager");
    let add_server = json!({"n": 1, "servers": {"Stranger": ["sh1"]}}).to_string();
    let requests = [
        ControlRequest::Add { n: 1, hostnames: vec!["Stranger".into()] },
        ControlRequest::Remove { n: 1, hostnames: vec!["Server0".into()] },
        ControlRequest::DbAdmin { op: AdminOp::PrimaryElect, body: "{}".into() },
        ControlRequest::DbAdmin { op: AdminOp::Add, body: add_server },
    ];
    for req in requests {
        assert_refused(&format!("manager {req:?}"), raw_control(manager, req).await);
    }
    assert_eq!(state(addr).await, before, "a refused control request changed something");
    // The token still works where it belongs: the router's HTTP admin endpoints.
    let (s, r) = http_auth(addr, "GET", "/primary_elect", "{}", Some("Bearer tok-manager")).await;
    assert_eq!(s, 200, "{r}");
}

// Finding 3: `up --admin-token` hands the token to every node it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_every_nodes_config_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let up = ClusterProc::up_with_env(
        2,
        &dir.path().join("data"),
        &["--dead-after-ms", "5000", "--admin-token", "tok-nodes"],
        NO_SECRET,
    );
    let schema = json!({"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "Number"]});
    let config = json!({"schema": schema, "shards": [{"Shard_id": "sh9", "Stud_id_low": 0, "Shard_size": 10}]}).to_string();
    for name in ["Server1", "Server2"] {
        let node = node_http(up.pid(), name).await.unwrap_or_else(|| panic!("{name} runs"));
        for auth in [None, Some("Bearer wrong")] {
            let (s, r) = http_auth(node, "POST", "/config", &config, auth).await;
            assert_eq!(s, 401, "{name} /config with {auth:?}: {r}");
            assert_eq!(r["status"], "failure", "{r}");
        }
        // Nothing was configured.
        let (s, r) = http(node, "GET", "/copy", Some(json!({"shards": ["sh9"]}))).await;
        assert_eq!(s, 400, "{name}: {r}");
        let bearer = Some("Bearer tok-nodes");
        let (s, r) = http_auth(node, "POST", "/config", "{}", bearer).await;
        assert_eq!(s, 400, "{name}: a bad body with the token is still a 400: {r}");
        let (s, r) = http_auth(node, "POST", "/config", &config, bearer).await;
        assert_eq!(s, 200, "{name}: {r}");
    }
}

/// Runs `shardgate ARGS` in `cwd` without any secret in its environment, its stderr into
/// `log`; the child (the caller kills it).
fn bare(args: &[&str], cwd: &Path, log: &Path) -> std::process::Child {
    Command::new(BIN)
        .args(args)
        .current_dir(cwd)
        .env_remove("SHARDGATE_SECRET_FILE")
        .env_remove("SHARDGATE_ADMIN_TOKEN")
        .env_remove("SHARDGATE_ADMIN_TOKEN_FILE")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for `child` to exit; its status and the stderr it wrote to `log`.
fn exit_of(child: &mut std::process::Child, log: &Path) -> (std::process::ExitStatus, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, std::fs::read_to_string(log).unwrap_or_default());
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running after 30 s: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_router_without_a_secret_and_without_insecure_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let mut lb =
        bare(&["lb", "--manager", "127.0.0.1:9", "--http", "127.0.0.1:0"], dir.path(), &log);
    let (status, err) = exit_of(&mut lb, &log);
    assert!(!status.success());
    assert!(err.contains("--secret-file") && err.contains("--insecure"), "{err}");
    // --insecure with --admin-token: the binary doors could not tell who asks, so the token
    // could be bypassed; refused at start.
    let mut up = bare(
        &[
            "up",
            "--insecure",
            "--admin-token",
            "t",
            "--http",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--servers",
            "0",
        ],
        dir.path(),
        &log,
    );
    let (status, err) = exit_of(&mut up, &log);
    assert!(!status.success());
    assert!(err.contains("--insecure") && err.contains("--admin-token"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_starts_says_what_it_leaves_open_and_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = [("SHARDGATE_SECRET_FILE", ""), ("RUST_LOG", "warn")];
    let up = ClusterProc::up_with_env(1, &data, &["--insecure"], &env);
    // The warning was written before the "listening" line; its reader may lag behind.
    let warned = common::poll(Duration::from_secs(10), || async {
        let w = up.stderr();
        (w.contains("WARN") && w.contains("--insecure") && w.contains("anyone")).then_some(())
    })
    .await;
    assert!(warned.is_some(), "no warning about --insecure: {}", up.stderr());
    assert!(!data.join("cluster.secret").exists(), "--insecure wrote a secret");
    // What it leaves open: a caller without a secret is served.
    let node = node_binary(up.pid(), "Server1").await;
    assert!(matches!(raw_call(node, Request::Home).await, Ok(Ok(Response::Home { .. }))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_secret_is_private_and_kept_across_restarts() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = ClusterProc::up_with_env(1, &data, &[], NO_SECRET);
    let file = data.join("cluster.secret");
    let secret = std::fs::read_to_string(&file).unwrap();
    assert_eq!(secret.trim().len(), 64, "{secret:?}");
    assert!(secret.trim().bytes().all(|b| b.is_ascii_hexdigit()), "{secret:?}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let (s, r) = http(first.http(), "GET", "/home", None).await;
    assert_eq!(s, 200, "the nodes use the generated secret: {r}");
    drop(first);
    let second = ClusterProc::up_with_env(1, &data, &[], NO_SECRET);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), secret, "the secret changed on restart");
    let (s, r) = http(second.http(), "GET", "/home", None).await;
    assert_eq!(s, 200, "{r}");

    // A node run alone makes its own, in its data dir, and still serves HTTP.
    let node_dir = dir.path().join("alone");
    let log = dir.path().join("node.stderr");
    let mut node = bare(
        &[
            "node",
            "--name",
            "Alone",
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--data-dir",
            node_dir.to_str().unwrap(),
        ],
        dir.path(),
        &log,
    );
    let made = common::poll(Duration::from_secs(30), || async {
        node_dir.join("cluster.secret").exists().then_some(())
    })
    .await;
    let _ = node.kill();
    let _ = node.wait();
    assert!(made.is_some(), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    let mode = std::fs::metadata(node_dir.join("cluster.secret")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(&log).unwrap().contains("cluster.secret"));
}
