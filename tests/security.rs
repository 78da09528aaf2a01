//! Cluster authentication on the binary protocol against a real node process started with
//! `SHARDGATE_SECRET_FILE`: a caller with the wrong secret, or none, is refused in the
//! handshake and can neither configure, promote, write nor read; with the right secret it
//! can. Secrets never travel: the handshake exchanges HMAC proofs of random nonces.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use futures::{SinkExt, StreamExt};
use protocol::{
    AdoptReq, ConfigReq, ReadReq, Request, RequestFrame, Response, ResponseFrame, Row, Schema,
    ShardSpec, Value, WriteReq,
};

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_node(dir: &std::path::Path, secret_file: &std::path::Path) -> (Node, SocketAddr) {
    let mut child = Command::new(common::BIN)
        .args(["node", "--name", "Guarded", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env("SHARDGATE_SECRET_FILE", secret_file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("binary="))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    (Node(child), addr)
}

/// One request on a fresh connection authenticated with `secret`; the handshake error, or
/// the answer.
async fn call(
    addr: SocketAddr,
    secret: Option<&[u8]>,
    req: Request,
) -> Result<Result<Response, protocol::ErrorBody>, String> {
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut framed = protocol::framed(stream);
    protocol::client_handshake_with(&mut framed, "test", secret)
        .await
        .map_err(|e| e.to_string())?;
    let frame = protocol::wire::encode(&RequestFrame { id: 1, body: req }).unwrap();
    framed.send(frame).await.map_err(|e| e.to_string())?;
    let reply = framed.next().await.ok_or("closed")?.map_err(|e| e.to_string())?;
    let reply: ResponseFrame = protocol::wire::decode(&reply).map_err(|e| e.to_string())?;
    Ok(reply.body)
}

fn config() -> Request {
    Request::Config(ConfigReq {
        schema: Schema::student_default(),
        shards: vec![ShardSpec::with_range("sh1", 0, 100)],
    })
}

fn write() -> Request {
    let row = Row { key: 1, values: vec![Value::Int(1), Value::Str("a".into()), Value::Int(2)] };
    Request::Write(WriteReq { shard: "sh1".into(), curr_idx: None, rows: vec![row] })
}

fn read() -> Request {
    Request::Read(ReadReq {
        shard: "sh1".into(),
        low: 0,
        high: 99,
        min_lsn: 0,
        consistency: Default::default(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_callers_that_know_the_cluster_secret_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("cluster.secret");
    std::fs::write(&secret_file, "correct horse battery staple\n").unwrap();
    let (_node, addr) = start_node(dir.path(), &secret_file);

    let adopt = Request::Adopt(AdoptReq { shard: "sh1".into(), epoch: 99 });
    for (who, secret) in [("no secret", None), ("a wrong secret", Some(&b"guess"[..]))] {
        for req in [config(), adopt.clone(), write(), read()] {
            let name = req.name();
            match call(addr, secret, req).await {
                Err(e) => assert!(
                    e.contains("cluster secret"),
                    "{who}, {name}: refused for another reason: {e}"
                ),
                Ok(answer) => panic!("{who}: {name} got past the handshake: {answer:?}"),
            }
        }
    }
    // The right secret (the file's contents without the line end): everything works.
    let right = Some(&b"correct horse battery staple"[..]);
    assert!(matches!(call(addr, right, config()).await, Ok(Ok(Response::Configured { .. }))));
    assert!(matches!(call(addr, right, write()).await, Ok(Ok(Response::Written { .. }))));
    match call(addr, right, read()).await {
        Ok(Ok(Response::Read { rows, .. })) => assert_eq!(rows.len(), 1),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// The admin token of the HTTP admin endpoints
// ---------------------------------------------------------------------------------------

/// One HTTP request on a fresh connection (`Connection: close`) with an optional
/// `Authorization` header: status, head and JSON body (`Null` when not JSON).
async fn http_with_auth(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &serde_json::Value,
    authorization: Option<&str>,
) -> (u16, String, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.to_string();
    let auth = authorization.map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        out
    };
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), work)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 60 s"));
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_string(), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

/// The value of header `name` in `head` (case-insensitive).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_the_admin_token_and_data_endpoints_stay_open() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "tok-3f9a\n").unwrap();
    let init = common::one_server_two_shards();
    let token_arg = token_file.to_str().unwrap();
    let up = common::ClusterProc::up(
        0,
        &dir.path().join("data"),
        // A loaded machine must not make the replicas look dead while they are configured.
        &["--init", &init, "--dead-after-ms", "5000", "--admin-token-file", token_arg],
    );
    let addr = up.http();
    let none = &json!({});

    // Data endpoints answer without credentials.
    let rows = json!({"data": [{"Stud_id": 1, "Stud_name": "a", "Stud_marks": 5},
                               {"Stud_id": 150, "Stud_name": "b", "Stud_marks": 6}]});
    let (s, _, r) = http_with_auth(addr, "POST", "/write", &rows, None).await;
    assert_eq!(s, 200, "{r}");
    let range = json!({"Stud_id": {"low": 0, "high": 199}});
    let (s, _, r) = http_with_auth(addr, "POST", "/read", &range, None).await;
    assert_eq!((s, r["data"].as_array().map(Vec::len)), (200, Some(2)), "{r}");
    let range_ref = &range;
    let state = || async move {
        let range = range_ref;
        let (s, _, status) = http_with_auth(addr, "GET", "/status", none, None).await;
        assert_eq!(s, 200, "{status}");
        let (s, _, rep) = http_with_auth(addr, "GET", "/rep", none, None).await;
        assert_eq!(s, 200, "{rep}");
        let (s, _, data) = http_with_auth(addr, "POST", "/read", range, None).await;
        assert_eq!(s, 200, "{data}");
        json!({"status": status, "rep": rep, "data": data})
    };
    let before = state().await;

    // Every admin endpoint, in every form, without the token and with a wrong one: 401 with
    // the contract's error shape and a Bearer challenge, and nothing changes.
    let schema = &before["status"]["schema"];
    let admin: Vec<(&str, &str, serde_json::Value)> = vec![
        ("POST", "/init", serde_json::from_str(&init).unwrap()),
        ("POST", "/add", json!({"n": 1, "servers": {"Server9": ["sh1"]}})),
        ("POST", "/add", json!({"n": 1, "hostnames": ["S9"]})),
        ("DELETE", "/rm", json!({"n": 1, "servers": ["Server0"]})),
        ("POST", "/rm", json!({"n": 1})),
        ("GET", "/primary_elect", json!({})),
        ("POST", "/primary_elect", json!({"shard": "sh1"})),
        ("POST", "/config", json!({"schema": schema, "shards": ["sh7"]})),
    ];
    for (method, path, body) in &admin {
        for auth in [None, Some("Bearer wrong-token"), Some("Basic tok-3f9a"), Some("Bearer")] {
            let (s, head, r) = http_with_auth(addr, method, path, body, auth).await;
            assert_eq!(s, 401, "{method} {path} with {auth:?}: {r}");
            assert_eq!(r["status"], "failure", "{r}");
            assert!(r["message"].as_str().is_some_and(|m| m.starts_with("<Error> ")), "{r}");
            let challenge = header(&head, "www-authenticate").unwrap_or_default();
            assert!(challenge.starts_with("Bearer"), "{method} {path}: {head}");
            if auth == Some("Bearer wrong-token") {
                assert!(challenge.contains("invalid_token"), "{challenge}");
            }
        }
    }
    assert_eq!(state().await, before, "a refused admin request changed something");

    // The binary door: a caller without the cluster secret does not get past the handshake;
    // one with it (a session authenticated like the router's own calls to the manager) may
    // make admin changes there, since the token guards HTTP only (`protocol::authz`).
    let binary = up.addr("binary");
    let secret = std::fs::read(common::secret_file()).unwrap();
    let secret = Some(secret.trim_ascii());
    let elect = Request::DbAdmin(protocol::DbAdminReq {
        op: protocol::AdminOp::PrimaryElect,
        body: "{}".into(),
    });
    match call(binary, None, elect.clone()).await {
        Err(e) => assert!(e.contains("cluster secret"), "{e}"),
        other => panic!("an admin request without the secret got {other:?}"),
    }
    assert!(matches!(
        call(binary, secret, elect).await,
        Ok(Ok(Response::Json { status: 200, .. }))
    ));
    let status =
        Request::DbAdmin(protocol::DbAdminReq { op: protocol::AdminOp::Status, body: "{}".into() });
    assert!(matches!(
        call(binary, secret, status).await,
        Ok(Ok(Response::Json { status: 200, .. }))
    ));
    let read =
        Request::DbRead(protocol::DbReadReq { low: 0, high: 199, consistency: Default::default() });
    match call(binary, secret, read).await {
        Ok(Ok(Response::DbRows { rows, .. })) => assert_eq!(rows.len(), 2),
        other => panic!("{other:?}"),
    }

    // With the token: the admin endpoints work.
    let bearer = Some("Bearer tok-3f9a");
    let (s, _, r) = http_with_auth(addr, "GET", "/primary_elect", none, bearer).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["message"]["sh1"], "Server0", "{r}");
    let add = json!({"n": 1, "servers": {"Server9": ["sh1"]}});
    let (s, _, r) = http_with_auth(addr, "POST", "/add", &add, Some("bearer  tok-3f9a ")).await;
    assert_eq!(s, 200, "{r}");
    let (_, _, status) = http_with_auth(addr, "GET", "/status", none, None).await;
    assert!(status["servers"].get("Server9").is_some(), "{status}");
    let rm = json!({"n": 1, "servers": ["Server9"]});
    let (s, _, r) = http_with_auth(addr, "DELETE", "/rm", &rm, bearer).await;
    assert_eq!(s, 200, "{r}");
    let (_, _, status) = http_with_auth(addr, "GET", "/status", none, None).await;
    assert!(status["servers"].get("Server9").is_none(), "{status}");
    // And the data are what they were.
    let (s, _, data) = http_with_auth(addr, "POST", "/read", &range, None).await;
    assert_eq!((s, &data), (200, &before["data"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_config_needs_the_admin_token_when_the_node_has_one() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let node =
        common::NodeProc::start_with("Tokened", dir.path(), None, &["--admin-token", "node-tok"]);
    let schema = json!({"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "Number"]});
    let config = json!({"schema": schema, "shards": [{"Shard_id": "sh1", "Stud_id_low": 0, "Shard_size": 10}]});
    for auth in [None, Some("Bearer not-it")] {
        let (s, head, r) = http_with_auth(node.http, "POST", "/config", &config, auth).await;
        assert_eq!(s, 401, "{auth:?}: {r}");
        assert!(header(&head, "www-authenticate").is_some_and(|c| c.starts_with("Bearer")));
    }
    // Nothing was configured: the node holds no shard.
    let (s, _, r) =
        http_with_auth(node.http, "GET", "/copy", &json!({"shards": ["sh1"]}), None).await;
    assert_eq!(s, 400, "{r}");
    let (s, _, r) = http_with_auth(node.http, "GET", "/home", &json!({}), None).await;
    assert_eq!(s, 200, "{r}");
    let (s, _, r) =
        http_with_auth(node.http, "POST", "/config", &config, Some("Bearer node-tok")).await;
    assert_eq!(s, 200, "{r}");
    // Data endpoints need no token.
    let write =
        json!({"shard": "sh1", "data": [{"Stud_id": 1, "Stud_name": "a", "Stud_marks": 1}]});
    let (s, _, r) = http_with_auth(node.http, "POST", "/write", &write, None).await;
    assert_eq!(s, 200, "{r}");
}
