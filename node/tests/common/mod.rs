//! Helpers shared by the node's test targets: an in-process node on loopback with a temp
//! data dir, and a minimal HTTP/1.1 client (keep-alive, JSON bodies on any method).
#![allow(dead_code)]

use std::net::SocketAddr;

use node::{NodeConfig, NodeServer, ShardOptions};
use serde_json::{json, Value as Json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The contract's schema.
pub fn schema() -> Json {
    json!({"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]})
}

/// A row like the contract's examples.
pub fn row(id: i64) -> Json {
    json!({"Stud_id": id, "Stud_name": format!("N{id}"), "Stud_marks": id % 100})
}

/// Node configuration on loopback ports picked by the OS.
pub fn config(name: &str, dir: &std::path::Path, shard: ShardOptions) -> NodeConfig {
    NodeConfig {
        name: name.to_string(),
        listen: "127.0.0.1:0".parse().unwrap(),
        http: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: dir.to_path_buf(),
        shard,
    }
}

/// Starts a node named `name` on `dir`.
pub async fn start(name: &str, dir: &std::path::Path) -> NodeServer {
    NodeServer::start(config(name, dir, ShardOptions::default())).await.unwrap()
}

/// One keep-alive HTTP/1.1 connection.
pub struct Http {
    stream: BufReader<TcpStream>,
}

impl Http {
    pub async fn connect(addr: SocketAddr) -> Http {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Http { stream: BufReader::new(s) }
    }

    /// Sends raw body bytes; returns the status and the body parsed as JSON (Null if empty).
    pub async fn raw(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Json) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        // One write: a head and a body in two segments would wait out Nagle + delayed ACK.
        let mut msg = head.into_bytes();
        msg.extend_from_slice(body);
        self.stream.get_mut().write_all(&msg).await.unwrap();
        let mut status_line = String::new();
        self.stream.read_line(&mut status_line).await.unwrap();
        let status: u16 = status_line.split_whitespace().nth(1).expect("status").parse().unwrap();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
            }
        }
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).await.unwrap();
        let js = if buf.is_empty() { Json::Null } else { serde_json::from_slice(&buf).unwrap() };
        (status, js)
    }

    pub async fn req(&mut self, method: &str, path: &str, body: Option<Json>) -> (u16, Json) {
        let bytes = body.map(|b| serde_json::to_vec(&b).unwrap()).unwrap_or_default();
        self.raw(method, path, &bytes).await
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
