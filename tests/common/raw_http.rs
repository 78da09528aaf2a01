//! A raw HTTP/1.1 exchange over TCP, for requests a well-behaved client would not send
//! (broken framing, a stalled body, a connection over the cap): any bytes out, one answer
//! read back (Content-Length, chunked, or until the server closes).

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long [`json_call`] waits for its answer.
const JSON_CALL_WITHIN: Duration = Duration::from_secs(30);

/// A parsed response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// The status line and headers, as text.
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Json> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Reads one response from `s` (Content-Length, chunked, or until close).
pub async fn read_reply(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> std::io::Result<Reply> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed without a response (got {:?})", String::from_utf8_lossy(&buf)),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let mut rest = buf[head_end..].to_vec();
    let body = if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while rest.len() < len {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            if rest.windows(5).any(|w| w == b"0\r\n\r\n") {
                break;
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        dechunk(&rest)
    } else {
        // No length: the body ends with the connection (or there is none).
        let _ = tokio::time::timeout(Duration::from_millis(200), s.read_to_end(&mut rest)).await;
        rest
    };
    Ok(Reply { status, head, body })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..i]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[i + 2..(i + 2 + size).min(b.len())]);
        b = &b[(i + 4 + size).min(b.len())..];
    }
    out
}

/// Sends `raw` on a fresh connection and reads the answer, within `within`.
pub async fn exchange(addr: SocketAddr, raw: &[u8], within: Duration) -> Result<Reply, String> {
    let work = async {
        let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        // Written while the answer is read: a server may answer (413) and close before it
        // has read everything, and then the rest of the write fails, which is fine.
        let (mut rd, mut wr) = s.into_split();
        let raw = raw.to_vec();
        let writer = tokio::spawn(async move {
            let _ = wr.write_all(&raw).await;
            wr
        });
        let reply = read_reply(&mut rd).await.map_err(|e| e.to_string());
        writer.abort();
        reply
    };
    tokio::time::timeout(within, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {within:?}")))
}

/// A well-framed request with `body` (Content-Length).
pub fn request(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// `method path` with the JSON `body` on a fresh connection: the status and the body as
/// JSON (`Null` when it is not); panics on a transport error.
pub async fn json_call(addr: SocketAddr, method: &str, path: &str, body: Json) -> (u16, Json) {
    let raw = request(method, path, body.to_string().as_bytes());
    let r = exchange(addr, &raw, JSON_CALL_WITHIN)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    (r.status, r.json().unwrap_or(Json::Null))
}
