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
