//! A router's `Request::Forward` (stage 1, over the binary door) gets exactly what the HTTP
//! shim answers to the same method, path and body: the same status and the same bytes.

mod common;

use client::Connection;
use common::{schema, start};
use protocol::{ForwardReq, Request, Response};
use serde_json::json;

/// The answer of each door to one request: (status, body bytes).
async fn both(
    http: &mut client::HttpClient,
    conn: &Connection,
    method: &str,
    path: &str,
    body: &[u8],
) -> ((u16, Vec<u8>), (u16, Vec<u8>)) {
    let reply = http.request(method, path, body).await.unwrap();
    let req = Request::Forward(ForwardReq {
        method: method.to_string(),
        path: path.to_string(),
        body: body.to_vec(),
    });
    let forwarded = match conn.call(req).await.unwrap() {
        Response::Forwarded { status, body } => (status, body),
        other => panic!("{method} {path}: a forward answered with {other:?}"),
    };
    ((reply.status, reply.body), forwarded)
}

#[tokio::test]
async fn forward_and_the_http_shim_answer_alike() {
    let dir = tempfile::tempdir().unwrap();
    let server = start("Server3", dir.path()).await;
    let mut http = client::HttpClient::connect(server.http_addr().unwrap()).await.unwrap();
    let conn = Connection::connect(server.binary_addr(), "test-router").await.unwrap();

    // The stage-1 endpoints, named in the issue.
    let (h, f) = both(&mut http, &conn, "GET", "/home", b"").await;
    assert_eq!(h, f);
    assert_eq!(h.0, 200);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&h.1).unwrap(),
        json!({"message": "Hello from Server: Server3", "status": "successful"})
    );
    let (h, f) = both(&mut http, &conn, "GET", "/heartbeat", b"").await;
    assert_eq!(h, f);
    assert_eq!(h, (200, Vec::new()));
    let (h, f) = both(&mut http, &conn, "GET", "/other", b"").await;
    assert_eq!(h, f);
    assert_eq!(h.0, 404);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&h.1).unwrap(),
        json!({"message": "<Error> '/other' endpoint does not exist in server", "status": "failure"})
    );

    // The rest goes through the same table: a query is not part of the path, a wrong method
    // is a 405, bad input names its field, and the data endpoints answer alike too.
    let config = serde_json::to_vec(&json!({"schema": schema(), "shards": ["sh1"]})).unwrap();
    let write = serde_json::to_vec(&json!({"shard": "sh1", "data": [
        {"Stud_id": 1, "Stud_name": "A", "Stud_marks": 5}]}))
    .unwrap();
    let read =
        serde_json::to_vec(&json!({"shard": "sh1", "Stud_id": {"low": 0, "high": 9}})).unwrap();
    for (method, path, body) in [
        ("GET", "/home?x=1", &b""[..]),
        ("POST", "/home", b""),
        ("GET", "/a/b?c=d", b""),
        ("POST", "/config", b"{"),
        ("POST", "/config", b"{}"),
        ("POST", "/config", &config),
        ("POST", "/read", &read),
        ("GET", "/copy", br#"{"shards": ["sh9"]}"#),
    ] {
        let (h, f) = both(&mut http, &conn, method, path, body).await;
        assert_eq!(h, f, "{method} {path}");
    }
    // A write changes the state: the row written through HTTP, the same row again through
    // each door is refused alike, and both doors read it back alike.
    let reply = http.request("POST", "/write", &write).await.unwrap();
    assert_eq!(reply.status, 200);
    let req = Request::Forward(ForwardReq {
        method: "POST".into(),
        path: "/write".into(),
        body: write.clone(),
    });
    let Response::Forwarded { status, body } = conn.call(req).await.unwrap() else {
        panic!("not a forward answer")
    };
    assert_eq!(status, 400);
    let again = http.request("POST", "/write", &write).await.unwrap();
    assert_eq!((again.status, again.body), (status, body));
    let (h, f) = both(&mut http, &conn, "POST", "/read", &read).await;
    assert_eq!(h, f);

    // An invalid method is the caller's mistake, answered like any bad input.
    let req =
        Request::Forward(ForwardReq { method: "G E T".into(), path: "/home".into(), body: vec![] });
    let Response::Forwarded { status, .. } = conn.call(req).await.unwrap() else {
        panic!("not a forward answer")
    };
    assert_eq!(status, 400);
    drop(conn);
    server.shutdown().await;
}
