//! Helpers shared by the node's test targets: an in-process node on loopback with a temp
//! data dir, and a minimal HTTP/1.1 client (keep-alive, JSON bodies on any method).
#![allow(dead_code)]

use std::net::SocketAddr;

use node::{NodeConfig, NodeServer, ShardOptions};
use serde_json::{json, Value as Json};

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

/// One keep-alive HTTP/1.1 connection that fails the test on transport errors.
pub struct Http(client::HttpClient);

impl Http {
    pub async fn connect(addr: SocketAddr) -> Http {
        Http(client::HttpClient::connect(addr).await.unwrap())
    }

    /// Sends raw body bytes; returns the status and the body parsed as JSON (Null if empty).
    pub async fn raw(&mut self, method: &str, path: &str, body: &[u8]) -> (u16, Json) {
        let reply = self.0.request(method, path, body).await.unwrap();
        (reply.status, reply.json().unwrap())
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
