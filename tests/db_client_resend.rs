//! `client::Db` against a router that dies after it applied a request but before it
//! answered (what `kill -9` of a router under load does, seen in
//! `db_e2e::restarting_the_manager_and_a_router_under_load_keeps_status_and_data`).
//!
//! The client must not send a write again on a new connection in that case: the first
//! attempt may have been applied, and the second then gets "already exists" (400), so the
//! caller is told "refused, nothing written" for rows that are in the database. It must
//! answer "no answer" (status 0: may or may not have been applied) instead. Resending is only
//! right when the router provably never read the request (it had closed the idle
//! connection before the request was sent).

use std::sync::{Arc, Mutex};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads one HTTP request (head and `Content-Length` body); `None` at EOF.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        let text = String::from_utf8_lossy(buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string)
                })
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                let req = text[..end + 4 + len].to_string();
                buf.drain(..end + 4 + len);
                return Some(req);
            }
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn answer(s: &mut TcpStream, status: u16, body: &str) {
    let out = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(out.as_bytes()).await.unwrap();
}

#[tokio::test]

async fn a_write_the_router_may_have_applied_is_not_sent_again() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        // First connection: answers the first write, then reads the second one completely
        // and dies without answering (it applied it).
        let (mut s, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        let first = read_request(&mut s, &mut buf).await.unwrap();
        log.lock().unwrap().push(first);
        answer(&mut s, 200, r#"{"message": "1 Data entries added", "status": "success"}"#).await;
        let second = read_request(&mut s, &mut buf).await.unwrap();
        log.lock().unwrap().push(second);
        drop(s);
        // The router restarted on the same address: the row is there now.
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = Vec::new();
            while let Some(req) = read_request(&mut s, &mut buf).await {
                log.lock().unwrap().push(req);
                let body = r#"{"message": "<Error> Stud_id 2 already exists in shard sh1", "status": "failure"}"#;
                answer(&mut s, 400, body).await;
            }
        }
    });
    let db = client::Db::connect(addr).await.unwrap();
    let row = |k: i64| json!({"Stud_id": k, "Stud_name": format!("N{k}"), "Stud_marks": 1});
    assert_eq!(db.write(&[row(1)]).await.unwrap(), 1);
    let second = db.write(&[row(2)]).await;
    let seen = seen.lock().unwrap().clone();
    let writes = seen.iter().filter(|r| r.contains(r#""Stud_id":2"#)).count();
    assert_eq!(writes, 1, "the write of Stud_id 2 was sent {writes} times; answer: {second:?}");
    let e = second.unwrap_err();
    assert_eq!(e.status, 0, "{e}");
}
