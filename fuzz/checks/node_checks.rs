//! What the node-level fuzz targets check, shared with their regression replay in
//! `tests/bad_input.rs` (which sees the node and lb crates; the protocol crate's tests do
//! not).
#![allow(dead_code)]

use node::Node;
use protocol::{ForwardReq, Request, Response};

/// Methods the first input byte picks from.
pub const METHODS: [&str; 8] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "BREW"];
/// Paths the second input byte picks from; past the list, the path is the body's first line.
pub const PATHS: [&str; 10] =
    ["/config", "/copy", "/read", "/write", "/update", "/del", "/home", "/heartbeat", "/nope", ""];

/// `/config` of the shard the inputs work on.
pub const CONFIG: &[u8] = br#"{"schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]}, "shards": [{"Shard_id": "sh1", "Stud_id_low": 0, "Shard_size": 1000}]}"#;
/// Rows written after it.
pub const ROWS: &[u8] = br#"{"shard": "sh1", "data": [{"Stud_id": 1, "Stud_name": "a", "Stud_marks": 1}, {"Stud_id": 2, "Stud_name": "b", "Stud_marks": "2"}]}"#;

/// One request through the node's HTTP request path as a function: the status and body the
/// HTTP door would answer.
pub fn call(
    rt: &tokio::runtime::Runtime,
    node: &Node,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let req = Request::Forward(ForwardReq {
        method: method.to_string(),
        path: path.to_string(),
        body: body.to_vec(),
    });
    match rt.block_on(node.handle(req)) {
        Ok(Response::Forwarded { status, body }) => (status, body),
        other => panic!("a forwarded request was answered {other:?}"),
    }
}

/// Configures sh1 with two rows on a fresh node.
pub fn prepare(rt: &tokio::runtime::Runtime, node: &Node) {
    assert_eq!(call(rt, node, "POST", "/config", CONFIG).0, 200);
    assert_eq!(call(rt, node, "POST", "/write", ROWS).0, 200);
}

/// The node's HTTP request path on one input (byte 0: method, byte 1: path, the rest: the
/// body): never a 5xx, every answer JSON (but an empty `/heartbeat`), every error in the
/// contract's shape.
pub fn node_http(rt: &tokio::runtime::Runtime, node: &Node, data: &[u8]) {
    let (m, p, body) = match data {
        [m, p, rest @ ..] => (*m as usize, *p as usize, rest),
        _ => return,
    };
    let method = METHODS[m % METHODS.len()];
    let (path, body) = if p < PATHS.len() {
        (PATHS[p].to_string(), body)
    } else {
        let cut = body.iter().position(|&b| b == b'\n').unwrap_or(body.len());
        (String::from_utf8_lossy(&body[..cut]).to_string(), &body[(cut + 1).min(body.len())..])
    };
    let (status, answer) = call(rt, node, method, &path, body);
    let text = String::from_utf8_lossy(&answer[..answer.len().min(300)]).to_string();
    assert!(status < 500, "{method} {path:?} answered {status}: {text}");
    if answer.is_empty() && status == 200 {
        return;
    }
    let json: serde_json::Value = serde_json::from_slice(&answer)
        .unwrap_or_else(|e| panic!("{method} {path:?}: the answer is not JSON ({e}): {text}"));
    if status >= 400 {
        let ok = json.as_object().is_some_and(|o| o.len() == 2)
            && json["status"] == "failure"
            && json["message"].as_str().is_some_and(|m| m.starts_with("<Error> "));
        assert!(ok, "{method} {path:?} answered {status} without the contract's shape: {json}");
    }
}

/// A value decoded from any bytes re-encodes to bytes that decode to the same value. (A
/// macro, not a generic function: the root package that replays these has no serde.)
macro_rules! round_trips {
    ($t:ty, $data:expr) => {
        if let Ok(v) = protocol::wire::decode::<$t>($data) {
            let once = protocol::wire::encode(&v).expect("a decoded value encodes");
            let again: $t = protocol::wire::decode(&once).expect("its encoding decodes");
            assert_eq!(protocol::wire::encode(&again).unwrap(), once, "a round trip changed it");
        }
    };
}

/// What is read back from disk and from the manager's control protocol: a node's WAL record,
/// the manager's log events, control frames.
pub fn stored_records(data: &[u8]) {
    round_trips!(node::Change, data);
    round_trips!(lb::catalog::CatalogEvent, data);
    round_trips!(lb::control::ControlRequestFrame, data);
    round_trips!(lb::control::ControlResponseFrame, data);
}
