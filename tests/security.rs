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
    start_node_with(dir, secret_file, &[])
}

fn start_node_with(
    dir: &std::path::Path,
    secret_file: &std::path::Path,
    extra: &[&str],
) -> (Node, SocketAddr) {
    let mut child = Command::new(common::BIN)
        .args(["node", "--name", "Guarded", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(extra)
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

// ---------------------------------------------------------------------------------------
// On-path attackers: a relay between a caller that knows the secret and a node
// ---------------------------------------------------------------------------------------

/// The student name the relay tests write; the observing relay must never see it.
const SECRET_NAME: &str = "Zanzibar-Quillfeather";

/// What a relay does to the frames it forwards from the caller to the node.
#[derive(Clone, Copy)]
enum Relay {
    /// Forwards every byte unchanged (and records them).
    Observe,
    /// Flips one byte of the caller's frame number `n` (0: the hello), then forwards it.
    Alter(usize),
}

/// A TCP relay on loopback between one caller and `upstream`: it forwards a real handshake
/// and whatever follows, frame by frame, doing `mode` to the caller's frames; every byte it
/// carried (both ways) is in the returned buffer once the tasks end.
async fn relay(
    upstream: SocketAddr,
    mode: Relay,
) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let Ok((caller, _)) = listener.accept().await else { return };
        let Ok(node) = tokio::net::TcpStream::connect(upstream).await else { return };
        let (mut caller_r, mut caller_w) = caller.into_split();
        let (mut node_r, mut node_w) = node.into_split();
        let up_log = log.clone();
        // Caller -> node, frame by frame (at most a few frames in these tests).
        let up = async move {
            for n in 0..64usize {
                let mut head = [0u8; 4];
                if caller_r.read_exact(&mut head).await.is_err() {
                    break;
                }
                let mut payload = vec![0u8; u32::from_be_bytes(head) as usize];
                if caller_r.read_exact(&mut payload).await.is_err() {
                    break;
                }
                if let Relay::Alter(which) = mode {
                    if n == which && !payload.is_empty() {
                        // A byte of the name when it can be seen, so that the change would
                        // make a valid request of another row; else one in the middle.
                        let at = find(&payload, SECRET_NAME.as_bytes())
                            .map_or(payload.len() / 2, |i| i + 1);
                        payload[at] ^= 0x01;
                    }
                }
                up_log.lock().unwrap().extend_from_slice(&head);
                up_log.lock().unwrap().extend_from_slice(&payload);
                if node_w.write_all(&head).await.is_err()
                    || node_w.write_all(&payload).await.is_err()
                {
                    break;
                }
            }
            let _ = node_w.shutdown().await;
        };
        // Node -> caller, unchanged.
        let down = async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match node_r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        log.lock().unwrap().extend_from_slice(&buf[..n]);
                        if caller_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = caller_w.shutdown().await;
        };
        tokio::join!(up, down);
    });
    (addr, seen)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn named_write(key: i64) -> Request {
    let row =
        Row { key, values: vec![Value::Int(key), Value::Str(SECRET_NAME.into()), Value::Int(77)] };
    Request::Write(WriteReq { shard: "sh1".into(), curr_idx: None, rows: vec![row] })
}

/// The rows of shard sh1, read on an honest connection.
async fn rows_of_sh1(addr: SocketAddr, secret: Option<&[u8]>) -> Vec<Row> {
    match call(addr, secret, read()).await {
        Ok(Ok(Response::Read { rows, .. })) => rows,
        other => panic!("an honest read failed: {other:?}"),
    }
}

/// The secret of the relay tests' node.
const RELAY_SECRET: &[u8] = b"relay-test-secret";

/// A node with [`RELAY_SECRET`] and shard sh1: its directory, its guard, its binary address.
async fn configured_node() -> (tempfile::TempDir, Node, SocketAddr) {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("cluster.secret");
    std::fs::write(&secret_file, [RELAY_SECRET, b"\n"].concat()).unwrap();
    let (guard, node) = start_node(dir.path(), &secret_file);
    let configured = call(node, Some(RELAY_SECRET), config()).await;
    assert!(matches!(configured, Ok(Ok(Response::Configured { .. }))), "{configured:?}");
    (dir, guard, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_alters_a_frame_gets_the_connection_closed_and_nothing_applied() {
    let (_dir, _node, node) = configured_node().await;
    let secret = Some(RELAY_SECRET);

    // Frames of the caller: 0 the hello, 1 the proof, 2 the write.
    let (relayed, _) = relay(node, Relay::Alter(2)).await;
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        call(relayed, secret, named_write(5)),
    )
    .await
    .expect("the node neither answered nor closed within 30 s");
    assert!(answer.is_err(), "the altered request was answered: {answer:?}");
    assert!(rows_of_sh1(node, secret).await.is_empty(), "the altered write was applied");

    // The same write through an honest relay is applied: the handshake and the relay work.
    let (honest, _) = relay(node, Relay::Observe).await;
    assert!(matches!(call(honest, secret, named_write(5)).await, Ok(Ok(Response::Written { .. }))));
    assert_eq!(rows_of_sh1(node, secret).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_only_reads_sees_no_row() {
    let (_dir, _node, node) = configured_node().await;
    let secret = Some(RELAY_SECRET);

    let (relayed, seen) = relay(node, Relay::Observe).await;
    let stream = tokio::net::TcpStream::connect(relayed).await.unwrap();
    let mut framed = protocol::framed(stream);
    protocol::client_handshake_with(&mut framed, "test", secret).await.unwrap();
    for (id, req) in [(1, named_write(9)), (2, read())] {
        let frame = protocol::wire::encode(&RequestFrame { id, body: req }).unwrap();
        framed.send(frame).await.unwrap();
        let reply = framed.next().await.expect("an answer").unwrap();
        let reply: ResponseFrame = protocol::wire::decode(&reply).unwrap();
        assert_eq!(reply.id, id);
        match reply.body {
            Ok(Response::Written { .. }) => {}
            Ok(Response::Read { rows, .. }) => {
                assert_eq!(rows[0].values[1], Value::Str(SECRET_NAME.into()))
            }
            other => panic!("{other:?}"),
        }
    }
    drop(framed);
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() > 100, "the relay carried only {} bytes", seen.len());
    assert!(
        find(&seen, SECRET_NAME.as_bytes()).is_none(),
        "the relay read the row's name in the traffic it carried"
    );
}

// ---------------------------------------------------------------------------------------
// Bounded before trust: what a caller that has not authenticated can cost a door
// ---------------------------------------------------------------------------------------

/// Raises this process's soft limit on open files to at least `want`; false when the hard
/// limit does not allow it.
fn raise_open_files(want: u64) -> bool {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return false;
        }
        if lim.rlim_cur >= want {
            return true;
        }
        if lim.rlim_max < want {
            return false;
        }
        lim.rlim_cur = want;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0
    }
}

/// Whether the peer closed `stream` within `within` (end of stream or a reset).
async fn closed_within(stream: &mut tokio::net::TcpStream, within: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 4096];
    let drained = async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, drained).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_frames_that_claim_16_mib_cost_a_door_little_and_are_closed() {
    use tokio::io::AsyncWriteExt;
    const CONNECTIONS: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("cluster.secret");
    std::fs::write(&secret_file, "bounded\n").unwrap();
    let (node, addr) = start_node(dir.path(), &secret_file);
    let pid = node.0.id();
    let before = common::rss_kib(pid);

    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut frame = (protocol::MAX_FRAME_LEN as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&[0x5a; 4096]);
        // The door may close as soon as it has read the length: a failed write is fine.
        let _ = s.write_all(&frame).await;
        held.push(s);
    }
    // The worst resident size over the next second, while the connections are held.
    let mut worst = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        worst = worst.max(common::rss_kib(pid));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let grown_mib = worst.saturating_sub(before) / 1024;
    assert!(grown_mib < 50, "{CONNECTIONS} claims of 16 MiB grew the node by {grown_mib} MiB");
    for (i, s) in held.iter_mut().enumerate() {
        assert!(
            closed_within(s, std::time::Duration::from_secs(2)).await,
            "connection {i} with an oversized first frame is still open"
        );
    }
    // And the door still serves a peer that knows the secret.
    let right = Some(&b"bounded"[..]);
    assert!(matches!(call(addr, right, Request::Home).await, Ok(Ok(Response::Home { .. }))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bare_connects_does_not_keep_a_peer_with_the_secret_out() {
    const BARE: usize = 4_200;
    if !raise_open_files(2 * BARE as u64 + 1_000) {
        common::cannot_run("the open-file limit is too low to hold 4,200 connections");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("cluster.secret");
    std::fs::write(&secret_file, "flood\n").unwrap();
    // A cap below the flood's size, as the default 4,096 is for 4,200 connects: a debug
    // build accepts more slowly than the release one the finding used, and with the cap at
    // 4,096 the handshake timeout would free places about as fast as the flood takes them.
    let (_node, addr) = start_node_with(dir.path(), &secret_file, &["--max-connections", "1000"]);
    let right = Some(&b"flood"[..]);

    use std::sync::atomic::Ordering::Relaxed;
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let flood_opened = opened.clone();
    let flood = tokio::spawn(async move {
        let mut held = Vec::with_capacity(BARE);
        for _ in 0..BARE {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(s) => held.push(s),
                Err(e) => panic!("bare connect {} failed: {e}", held.len()),
            }
            flood_opened.fetch_add(1, Relaxed);
        }
        held
    });
    // Attempts while the flood goes on, then 20 more while its connections are held.
    let mut attempts = Vec::new();
    let mut after = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    for i in 0.. {
        if opened.load(Relaxed) == BARE {
            after += 1;
            if after > 20 {
                break;
            }
        }
        if std::time::Instant::now() > deadline {
            break;
        }
        let t = std::time::Instant::now();
        let r = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            call(addr, right, Request::Home),
        )
        .await;
        let ok = matches!(r, Ok(Ok(Ok(Response::Home { .. }))));
        attempts.push((i, opened.load(Relaxed), ok, t.elapsed(), format!("{r:?}")));
    }
    let held = flood.await.unwrap();
    assert_eq!(held.len(), BARE);
    assert!(after > 20, "the flood did not finish within 120 s");
    assert!(attempts.iter().any(|a| a.1 < BARE), "no attempt ran during the flood");
    let failed: Vec<_> = attempts.iter().filter(|a| !a.2).collect();
    assert!(
        failed.is_empty(),
        "{} of {} attempts of a peer with the secret failed during a flood of {BARE} bare \
         connects; first (attempt, connects open, ok, time, outcome): {:?}",
        failed.len(),
        attempts.len(),
        failed.first()
    );
    drop(held);
}
