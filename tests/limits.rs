//! Limits against real processes on loopback: connection caps per listener, the HTTP idle
//! timeout (a client sending one byte a second, an idle connection, a client that stops
//! reading its answers), and the row caps of `/write` and `/read`. Each attack runs while a
//! normal client keeps making requests, and the test counts that they all succeeded.
//!
//! The caps are set low by flag (`--max-connections 8`, `--idle-timeout-ms 3000`,
//! `--max-write-rows 5 --max-read-rows 7`), so the tests are quick; their defaults are
//! 4096, 10 s, 10,000 and 100,000.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::raw_http::{exchange, json_call, request};
use common::{ClusterProc, NodeProc};
use futures::{SinkExt, StreamExt};
use protocol::{Request, RequestFrame, Response, ResponseFrame};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The idle timeout the slow-client tests start their servers with.
const IDLE: Duration = Duration::from_secs(3);
/// The cap the connection tests start their servers with.
const CAP: usize = 8;
/// How long one raw exchange may take to be answered.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// Raw HTTP and binary exchanges
// ---------------------------------------------------------------------------------------

/// Asserts the contract's error shape with `status` and a message containing `needle`.
fn assert_error(got: &(u16, Json), status: u16, needle: &str) {
    let (s, j) = got;
    assert_eq!(*s, status, "{j}");
    assert_eq!(j["status"], "failure", "{j}");
    let msg = j["message"].as_str().unwrap_or_default();
    assert!(msg.starts_with("<Error> ") && msg.contains(needle), "{j}");
}

/// A binary-protocol connection after its handshake (with the tests' cluster secret).
type Framed = protocol::Framed<TcpStream>;

/// Connects and shakes hands; the handshake's error as text.
async fn binary_connect(addr: SocketAddr) -> Result<Framed, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut framed = protocol::framed(stream);
    let secret = common::secret();
    let work = protocol::client_handshake_with(&mut framed, "limits-test", Some(&secret));
    match tokio::time::timeout(Duration::from_secs(10), work).await {
        Ok(Ok(_)) => Ok(framed),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// One request on an open binary connection.
async fn binary_call(
    framed: &mut Framed,
    id: u64,
    req: Request,
) -> Result<Response, protocol::ErrorBody> {
    let frame = protocol::wire::encode(&RequestFrame { id, body: req }).unwrap();
    framed.send(frame).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(30), framed.next())
        .await
        .expect("an answer within 30 s")
        .expect("an answer")
        .unwrap();
    let reply: ResponseFrame = protocol::wire::decode(&reply).unwrap();
    assert_eq!(reply.id, id);
    reply.body
}

// ---------------------------------------------------------------------------------------
// Connection caps
// ---------------------------------------------------------------------------------------

/// With a cap of [`CAP`] on the HTTP door at `addr`: a normal keep-alive client and
/// `CAP - 1` idle connections fill it; the next connection is answered 503 with the JSON
/// error and closed, while the normal client's requests (`probe`) still succeed; once the
/// idle connections close, new connections are served again.
async fn http_cap_holds(addr: SocketAddr, probe: &str) {
    let mut normal = client::HttpClient::connect(addr).await.unwrap();
    assert_eq!(normal.request("GET", probe, b"").await.unwrap().status, 200);
    let mut holders = Vec::new();
    for _ in 1..CAP {
        holders.push(TcpStream::connect(addr).await.unwrap());
    }
    // The listener accepts in order: the connections above are all in before these.
    for attempt in 0..3 {
        let t = Instant::now();
        let r = exchange(addr, &request("GET", probe, b""), ANSWER_WITHIN).await.unwrap();
        assert_error(&(r.status, r.json().unwrap_or(Json::Null)), 503, "too many connections");
        assert!(
            r.head.to_ascii_lowercase().contains("connection: close"),
            "refusal {attempt}: {}",
            r.head
        );
        assert!(t.elapsed() < Duration::from_secs(2), "a refusal took {:?}", t.elapsed());
        // Meanwhile the client already in keeps being served.
        for _ in 0..5 {
            assert_eq!(normal.request("GET", probe, b"").await.unwrap().status, 200);
        }
    }
    drop(holders);
    let back = common::poll(Duration::from_secs(10), || async {
        match exchange(addr, &request("GET", probe, b""), ANSWER_WITHIN).await {
            Ok(r) if r.status == 200 => Some(()),
            _ => None,
        }
    })
    .await;
    assert!(back.is_some(), "new connections were still refused after the others closed");
    assert_eq!(normal.request("GET", probe, b"").await.unwrap().status, 200);
}

/// The same for the binary door at `addr`: the connection beyond the cap fails its
/// handshake with the reason; the connections already in keep being answered.
async fn binary_cap_holds(addr: SocketAddr) {
    let mut normal = binary_connect(addr).await.unwrap();
    assert!(binary_call(&mut normal, 1, Request::Home).await.is_ok());
    let mut holders = Vec::new();
    for _ in 1..CAP {
        holders.push(binary_connect(addr).await.unwrap());
    }
    for i in 0..3u64 {
        match binary_connect(addr).await {
            Err(e) => {
                assert!(e.contains("too many connections"), "refused for another reason: {e}")
            }
            Ok(_) => {
                panic!("connection {} of a door capped at {CAP} was let in", CAP as u64 + i + 1)
            }
        }
        assert!(binary_call(&mut normal, 10 + i, Request::Home).await.is_ok());
        assert!(binary_call(&mut holders[0], 20 + i, Request::Heartbeat).await.is_ok());
    }
    drop(holders);
    let back =
        common::poll(Duration::from_secs(10), || async { binary_connect(addr).await.ok() }).await;
    let mut fresh =
        back.expect("new binary connections were still refused after the others closed");
    assert!(binary_call(&mut fresh, 1, Request::Home).await.is_ok());
    assert!(binary_call(&mut normal, 99, Request::Home).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_doors_refuse_connections_beyond_the_cap_and_keep_serving_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let cap = CAP.to_string();
    let node = NodeProc::start_with(
        "Capped",
        dir.path(),
        None,
        &["--max-connections", &cap, "--idle-timeout-ms", "60000"],
    );
    http_cap_holds(node.http, "/home").await;
    binary_cap_holds(node.binary).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancers_doors_refuse_connections_beyond_the_cap_and_keep_serving_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let cap = CAP.to_string();
    let up =
        ClusterProc::up(0, dir.path(), &["--max-connections", &cap, "--idle-timeout-ms", "60000"]);
    http_cap_holds(up.http(), "/rep").await;
    binary_cap_holds(up.addr("binary")).await;
    // The refusals are counted.
    let (s, _) = json_call(up.http(), "GET", "/rep", json!({})).await;
    assert_eq!(s, 200);
    let mut c = client::HttpClient::connect(up.http()).await.unwrap();
    let metrics = c.request("GET", "/metrics", b"").await.unwrap();
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    for listener in ["http", "binary"] {
        let line = format!("shardgate_connections_refused_total{{listener=\"{listener}\"}} ");
        let n: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line} in the metrics:\n{text}"));
        assert!(n >= 3, "{listener}: {n} refusals counted");
    }
}

// ---------------------------------------------------------------------------------------
// Slow clients
// ---------------------------------------------------------------------------------------

/// What the normal client saw while an attack went on.
#[derive(Debug, Default)]
struct Served {
    ok: usize,
    failed: Vec<String>,
}

/// Requests `GET probe` until `done` is set, on one keep-alive connection and on fresh ones
/// in turn, a few tens of milliseconds apart; every answer must be a quick 200.
async fn normal_client(
    addr: SocketAddr,
    probe: &'static str,
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Served {
    let mut served = Served::default();
    let mut kept = client::HttpClient::connect(addr).await.unwrap();
    let mut i = 0u64;
    while !done.load(std::sync::atomic::Ordering::Relaxed) {
        let t = Instant::now();
        let r = if i.is_multiple_of(2) {
            kept.request("GET", probe, b"").await.map(|r| r.status).map_err(|e| e.to_string())
        } else {
            exchange(addr, &request("GET", probe, b""), ANSWER_WITHIN).await.map(|r| r.status)
        };
        match r {
            // Not a speed check: a request queued behind the attacker would wait for its
            // cut-off (the idle timeout).
            Ok(200) if t.elapsed() < IDLE - Duration::from_millis(500) => served.ok += 1,
            Ok(200) => served.failed.push(format!("request {i} took {:?}", t.elapsed())),
            other => served.failed.push(format!("request {i}: {other:?}")),
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    served
}

/// Runs `attack` while a normal client makes requests; the attack's result and what the
/// normal client saw meanwhile.
async fn during<T>(
    addr: SocketAddr,
    probe: &'static str,
    attack: impl std::future::Future<Output = T>,
) -> (T, Served) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let normal = tokio::spawn(normal_client(addr, probe, done.clone()));
    let out = attack.await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    (out, normal.await.unwrap())
}

/// A request head sent one byte a second and never finished: how long until the server
/// let go (closed, or answered 408).
async fn one_byte_a_second(addr: SocketAddr) -> Duration {
    let head = b"GET /home HTTP/1.1\r\nHost: t\r\nX-Slow: ";
    common::slow_head(addr, head, Duration::from_secs(1), IDLE * 10).await
}

/// A connection that sends nothing: how long until the server closes it.
async fn silent(addr: SocketAddr) -> Duration {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(IDLE * 10, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => started.elapsed(),
        Ok(Ok(n)) => panic!("a silent connection got {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(_) => panic!("a silent connection was held for {:?}", IDLE * 10),
    }
}

/// Checks one slow-client attack: cut off after about the idle timeout, and the normal client
/// fully served meanwhile.
fn judge(what: &str, cut: Duration, served: &Served) {
    eprintln!("limits: {what}: cut off after {cut:?}; meanwhile {} requests served", served.ok);
    assert!(cut >= IDLE - Duration::from_millis(500), "{what}: cut off after only {cut:?}");
    assert!(cut <= IDLE + Duration::from_secs(5), "{what}: cut off only after {cut:?}");
    assert!(served.failed.is_empty(), "{what}: the normal client failed: {served:?}");
    // Dozens a second when the machine is idle; a loaded CI machine still manages a few.
    assert!(served.ok >= 5, "{what}: only {} requests served during the attack", served.ok);
}

async fn slow_clients_are_cut_off(addr: SocketAddr, probe: &'static str) {
    let (cut, served) = during(addr, probe, one_byte_a_second(addr)).await;
    judge("one byte a second", cut, &served);
    let (cut, served) = during(addr, probe, silent(addr)).await;
    judge("a silent connection", cut, &served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cuts_off_slow_clients_and_serves_the_others_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let idle = IDLE.as_millis().to_string();
    let node = NodeProc::start_with("Slow", dir.path(), None, &["--idle-timeout-ms", &idle]);
    slow_clients_are_cut_off(node.http, "/home").await;

    // A client that asks for large answers and never reads them: the answers' writes stall,
    // and the connection is closed after the idle timeout.
    let schema = json!({"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "Number"]});
    let (s, r) = json_call(
        node.http,
        "POST",
        "/config",
        json!({"schema": schema, "shards": [{"Shard_id": "sh1", "Stud_id_low": 0, "Shard_size": 10000}]}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let rows: Vec<Json> = (0..5000)
        .map(|k| json!({"Stud_id": k, "Stud_name": "n".repeat(200), "Stud_marks": k}))
        .collect();
    let (s, r) =
        json_call(node.http, "POST", "/write", json!({"shard": "sh1", "data": rows})).await;
    assert_eq!(s, 200, "{r}");
    let (cut, served) = during(node.http, "/home", stalled_reader(node.http)).await;
    judge("a client that does not read", cut, &served);
}

/// Pipelines requests for about 55 MB of answers (`/copy` of 5000 rows, 50 times) and reads
/// none: how long until the server closes the connection (seen as a failed write).
async fn stalled_reader(addr: SocketAddr) -> Duration {
    let s = TcpStream::connect(addr).await.unwrap();
    let (_rd, mut wr) = s.into_split();
    let body = json!({"shards": ["sh1"]}).to_string();
    let one = format!(
        "GET /copy HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    wr.write_all(one.repeat(50).as_bytes()).await.unwrap();
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < IDLE * 10,
            "a client that does not read was held {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Once the server has closed, a write fails (the first one may still be taken).
        match tokio::time::timeout(Duration::from_secs(1), wr.write_all(b"\r\n")).await {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(_)) => return started.elapsed(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_cuts_off_slow_clients_and_serves_the_others_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let idle = IDLE.as_millis().to_string();
    let up = ClusterProc::up(0, dir.path(), &["--idle-timeout-ms", &idle]);
    slow_clients_are_cut_off(up.http(), "/rep").await;
}

// ---------------------------------------------------------------------------------------
// Rows per write and per read
// ---------------------------------------------------------------------------------------

fn row(k: i64) -> Json {
    json!({"Stud_id": k, "Stud_name": format!("n{k}"), "Stud_marks": k})
}

fn rows(keys: impl IntoIterator<Item = i64>) -> Json {
    Json::Array(keys.into_iter().map(row).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_writes_and_reads_over_the_row_caps_with_a_413() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeProc::start_with(
        "Rows",
        dir.path(),
        None,
        &["--max-write-rows", "5", "--max-read-rows", "7"],
    );
    let addr = node.http;
    let schema = json!({"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "Number"]});
    let (s, r) = json_call(
        addr,
        "POST",
        "/config",
        json!({"schema": schema, "shards": [{"Shard_id": "sh1", "Stud_id_low": 0, "Shard_size": 1000}]}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    let copy = || async { json_call(addr, "GET", "/copy", json!({"shards": ["sh1"]})).await };
    let read = |low: i64, high: i64| async move {
        json_call(
            addr,
            "POST",
            "/read",
            json!({"shard": "sh1", "Stud_id": {"low": low, "high": high}}),
        )
        .await
    };

    let write = |keys: std::ops::Range<i64>| async move {
        json_call(addr, "POST", "/write", json!({"shard": "sh1", "data": rows(keys)})).await
    };
    assert_error(&write(0..6).await, 413, "too many rows in one write: 6");
    assert_eq!(copy().await.1["sh1"], json!([]), "a refused write wrote something");
    assert_eq!(write(0..5).await.0, 200);
    assert_eq!(write(5..7).await.0, 200);
    let (s, r) = read(0, 999).await;
    assert_eq!((s, r["data"].as_array().map(Vec::len)), (200, Some(7)), "{r}");
    assert_eq!(copy().await.0, 200);
    assert_eq!(write(7..8).await.0, 200);
    // Eight rows now: one answer may carry seven.
    assert_error(&read(0, 999).await, 413, "matches 8 rows");
    assert_error(&copy().await, 413, "matches 8 rows");
    let (s, r) = read(1, 7).await;
    assert_eq!((s, r["data"].as_array().map(Vec::len)), (200, Some(7)), "{r}");
    // A refused write changes nothing.
    assert_error(&write(100..106).await, 413, "too many rows");
    let (s, r) = read(100, 999).await;
    assert_eq!((s, r["data"].clone()), (200, json!([])), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balancer_refuses_writes_and_reads_over_the_row_caps_on_both_doors() {
    let dir = tempfile::tempdir().unwrap();
    let init = common::one_server_two_shards();
    let up = ClusterProc::up(
        0,
        dir.path(),
        // A loaded machine must not make the one replica look dead while it is configured.
        &[
            "--init",
            &init,
            "--dead-after-ms",
            "5000",
            "--max-write-rows",
            "5",
            "--max-read-rows",
            "7",
        ],
    );
    let addr = up.http();
    let read = |low: i64, high: i64| async move {
        json_call(addr, "POST", "/read", json!({"Stud_id": {"low": low, "high": high}})).await
    };
    let count = |r: &(u16, Json)| {
        assert_eq!(r.0, 200, "{}", r.1);
        r.1["data"].as_array().map_or(0, Vec::len)
    };
    // Over HTTP. Six rows over two shards: refused whole.
    let spread = [1, 2, 3, 101, 102, 103];
    let got = json_call(addr, "POST", "/write", json!({"data": rows(spread)})).await;
    assert_error(&got, 413, "too many rows in one write: 6");
    assert_eq!(count(&read(0, 199).await), 0, "a refused write wrote something");
    assert_eq!(
        json_call(addr, "POST", "/write", json!({"data": rows([1, 2, 3, 101, 102])})).await.0,
        200
    );
    assert_eq!(
        json_call(addr, "POST", "/write", json!({"data": rows([4, 103, 104])})).await.0,
        200
    );
    // Eight rows now: one answer may carry seven.
    assert_error(&read(0, 199).await, 413, "matches 8 rows");
    assert_error(&json_call(addr, "GET", "/read/Server0", json!({})).await, 413, "matches 8 rows");
    assert_eq!(count(&read(0, 99).await) + count(&read(100, 199).await), 8);

    // Over the binary door: the same cores, the same caps, typed.
    let mut b = binary_connect(up.addr("binary")).await.unwrap();
    let typed = |keys: &[i64]| -> Vec<protocol::Row> {
        keys.iter()
            .map(|&k| protocol::Row {
                key: k,
                values: vec![
                    protocol::Value::Int(k),
                    protocol::Value::Str(format!("n{k}")),
                    protocol::Value::Int(k),
                ],
            })
            .collect()
    };
    let write = |keys: &[i64]| Request::DbWrite(protocol::DbWriteReq { rows: typed(keys) });
    let db_read = |low, high| {
        Request::DbRead(protocol::DbReadReq { low, high, consistency: Default::default() })
    };
    match binary_call(&mut b, 1, write(&[10, 11, 12, 110, 111, 112])).await {
        Err(e) => {
            assert_eq!(e.kind, protocol::ErrorKind::TooLarge, "{e:?}");
            assert!(e.message.contains("too many rows"), "{}", e.message);
        }
        Ok(r) => panic!("a write of 6 rows was accepted: {r:?}"),
    }
    match binary_call(&mut b, 2, db_read(0, 199)).await {
        Err(e) => assert_eq!(e.kind, protocol::ErrorKind::TooLarge, "{e:?}"),
        Ok(r) => panic!("a read of 8 rows was answered: {r:?}"),
    }
    let server = Request::DbReadServer(protocol::DbReadServerReq { server: "Server0".into() });
    match binary_call(&mut b, 3, server).await {
        Err(e) => assert_eq!(e.kind, protocol::ErrorKind::TooLarge, "{e:?}"),
        Ok(r) => panic!("a server read of 8 rows was answered: {r:?}"),
    }
    match binary_call(&mut b, 4, db_read(0, 99)).await {
        Ok(Response::DbRows { rows, .. }) => assert_eq!(rows.len(), 4),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        binary_call(&mut b, 5, write(&[10, 110])).await,
        Ok(Response::DbWritten { count: 2 })
    ));
    // Nothing of the refused requests was written: the rows are exactly the accepted ones.
    let mut keys: Vec<i64> = Vec::new();
    for (low, high) in [(0, 99), (100, 199)] {
        let (s, r) = read(low, high).await;
        assert_eq!(s, 200, "{r}");
        keys.extend(r["data"].as_array().unwrap().iter().map(|x| x["Stud_id"].as_i64().unwrap()));
    }
    assert_eq!(keys, vec![1, 2, 3, 4, 10, 101, 102, 103, 104, 110]);
}
