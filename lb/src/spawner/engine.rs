//! A minimal client of the Docker Engine API: HTTP/1.1 (hyper) over the engine's unix socket,
//! one connection per call, JSON in and out. Only what the `docker` spawner needs: containers
//! (create, start, stop, remove, inspect, list by label, logs) and volumes (create, remove).
//!
//! Paths are unversioned, so the engine answers at its own API version (1.41 on Docker 20.10;
//! every call used here exists unchanged since 1.25).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;
use tokio::net::UnixStream;

/// Limit on one engine call that does not wait for a container to stop.
pub const ENGINE_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest engine answer read (container lists and inspections are a few KiB).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// An engine answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body bytes.
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (`Null` when empty or not JSON).
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or(Json::Null)
    }

    /// The engine's error message (`{"message": ...}`), or the body as text.
    pub fn message(&self) -> String {
        match self.json().get("message").and_then(Json::as_str) {
            Some(m) => m.to_string(),
            None => String::from_utf8_lossy(&self.body).trim().to_string(),
        }
    }

    fn is(&self, codes: &[u16]) -> bool {
        codes.contains(&self.status.as_u16())
    }
}

/// The engine at a unix socket.
#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
}

impl Engine {
    /// The engine listening on `socket` (normally `/var/run/docker.sock`).
    pub fn new(socket: impl Into<PathBuf>) -> Engine {
        Engine { socket: socket.into() }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `method path` with an optional JSON body, bounded by `limit`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Json>,
        limit: Duration,
    ) -> Result<Answer, String> {
        let what = format!("{method} {path}");
        match tokio::time::timeout(limit, self.call_unbounded(method, path, body)).await {
            Ok(r) => r.map_err(|e| format!("docker engine {what}: {e}")),
            Err(_) => Err(format!("docker engine {what}: no answer within {limit:?}")),
        }
    }

    async fn call_unbounded(
        &self,
        method: Method,
        path: &str,
        body: Option<&Json>,
    ) -> Result<Answer, String> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.socket.display()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // The connection task ends when the answer is read and `sender` is dropped.
        let conn = tokio::spawn(conn);
        let bytes = match body {
            Some(b) => Bytes::from(serde_json::to_vec(b).map_err(|e| e.to_string())?),
            None => Bytes::new(),
        };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "docker")
            .body(Full::new(bytes))
            .map_err(|e| format!("bad request: {e}"))?;
        if body.is_some() {
            req.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
        }
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        drop(sender);
        conn.abort();
        Ok(Answer { status, body })
    }

    /// `call` that turns any status outside `ok` into an error with the engine's message.
    async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<&Json>,
        ok: &[u16],
        limit: Duration,
    ) -> Result<Answer, String> {
        let what = format!("{method} {path}");
        let a = self.call(method, path, body, limit).await?;
        if a.is(ok) {
            Ok(a)
        } else {
            Err(format!("docker engine {what}: {} {}", a.status.as_u16(), a.message()))
        }
    }

    /// Creates container `name` from `spec` (the engine's create body); returns its id.
    pub async fn create_container(&self, name: &str, spec: &Json) -> Result<String, String> {
        let path = format!("/containers/create?name={}", encode(name));
        let a = self.expect(Method::POST, &path, Some(spec), &[201], ENGINE_CALL_TIMEOUT).await?;
        a.json()
            .get("Id")
            .and_then(Json::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("docker engine created {name} but gave no id"))
    }

    /// Starts a created container (already running is fine).
    pub async fn start(&self, id: &str) -> Result<(), String> {
        let path = format!("/containers/{}/start", encode(id));
        self.expect(Method::POST, &path, None, &[204, 304], ENGINE_CALL_TIMEOUT).await.map(drop)
    }

    /// Stops a container: SIGTERM, SIGKILL after `grace`. Gone or already stopped is fine.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), String> {
        let path = format!("/containers/{}/stop?t={}", encode(id), grace.as_secs().max(1));
        let limit = grace + ENGINE_CALL_TIMEOUT;
        self.expect(Method::POST, &path, None, &[204, 304, 404], limit).await.map(drop)
    }

    /// Removes a container, killing it first if it runs (SIGKILL); returns once it is gone.
    /// Gone already is fine.
    pub async fn remove_container(&self, id: &str) -> Result<(), String> {
        let path = format!("/containers/{}?force=true", encode(id));
        let a = self.call(Method::DELETE, &path, None, ENGINE_CALL_TIMEOUT).await?;
        // 409: a removal of it is already in progress (another caller's).
        if a.is(&[204, 404]) || (a.is(&[409]) && a.message().contains("in progress")) {
            return Ok(());
        }
        Err(format!("docker engine DELETE {path}: {} {}", a.status.as_u16(), a.message()))
    }

    /// The engine's inspection of a container; `None` when there is none of that name or id.
    pub async fn inspect(&self, id: &str) -> Result<Option<Json>, String> {
        let path = format!("/containers/{}/json", encode(id));
        let a = self.expect(Method::GET, &path, None, &[200, 404], ENGINE_CALL_TIMEOUT).await?;
        Ok((a.status == StatusCode::OK).then(|| a.json()))
    }

    /// Ids and names (without the leading `/`) of every container, running or not, with
    /// label `label` (`key=value`).
    pub async fn containers_labeled(&self, label: &str) -> Result<Vec<(String, String)>, String> {
        let filters = serde_json::json!({ "label": [label] }).to_string();
        let path = format!("/containers/json?all=true&filters={}", encode(&filters));
        let a = self.expect(Method::GET, &path, None, &[200], ENGINE_CALL_TIMEOUT).await?;
        let list = a.json();
        let items = list.as_array().map(Vec::as_slice).unwrap_or_default();
        Ok(items
            .iter()
            .filter_map(|c| {
                let id = c.get("Id")?.as_str()?.to_string();
                let name = c
                    .get("Names")
                    .and_then(Json::as_array)
                    .and_then(|n| n.first())
                    .and_then(Json::as_str)
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default();
                Some((id, name))
            })
            .collect())
    }

    /// The last `lines` lines of a container's stdout and stderr.
    pub async fn logs_tail(&self, id: &str, lines: usize) -> Result<String, String> {
        let path = format!("/containers/{}/logs?stdout=true&stderr=true&tail={lines}", encode(id));
        let a = self.expect(Method::GET, &path, None, &[200], ENGINE_CALL_TIMEOUT).await?;
        Ok(demux_logs(&a.body))
    }

    /// Whether volume `name` exists.
    pub async fn volume_exists(&self, name: &str) -> Result<bool, String> {
        let path = format!("/volumes/{}", encode(name));
        let a = self.expect(Method::GET, &path, None, &[200, 404], ENGINE_CALL_TIMEOUT).await?;
        Ok(a.status == StatusCode::OK)
    }

    /// Creates volume `name` with `labels`; an existing one is kept as it is.
    pub async fn create_volume(&self, name: &str, labels: &Json) -> Result<(), String> {
        let body = serde_json::json!({ "Name": name, "Labels": labels });
        self.expect(Method::POST, "/volumes/create", Some(&body), &[200, 201], ENGINE_CALL_TIMEOUT)
            .await
            .map(drop)
    }

    /// Removes volume `name`; gone already is fine.
    pub async fn remove_volume(&self, name: &str) -> Result<(), String> {
        let path = format!("/volumes/{}", encode(name));
        self.expect(Method::DELETE, &path, None, &[204, 404], ENGINE_CALL_TIMEOUT).await.map(drop)
    }
}

/// The text of a non-TTY container's log stream: frames of `stream:u8 | 0 0 0 |
/// len:u32 (big-endian) | len bytes`, stdout and stderr interleaved. Bytes that do not parse
/// as frames are kept as they are.
pub fn demux_logs(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut rest = raw;
    while rest.len() >= 8 && rest[0] <= 2 && rest[1..4] == [0, 0, 0] {
        let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let end = (8 + len).min(rest.len());
        out.extend_from_slice(&rest[8..end]);
        rest = &rest[end..];
    }
    out.extend_from_slice(rest);
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for a path segment or a
/// query value).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_frames_are_joined_in_order() {
        let mut raw = vec![1, 0, 0, 0, 0, 0, 0, 6];
        raw.extend_from_slice(b"hello\n");
        raw.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 4]);
        raw.extend_from_slice(b"err\n");
        assert_eq!(demux_logs(&raw), "hello\nerr\n");
        // A truncated last frame keeps what arrived; plain text passes through.
        raw.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 9, b'x']);
        assert_eq!(demux_logs(&raw), "hello\nerr\nx");
        assert_eq!(demux_logs(b"plain text"), "plain text");
    }

    #[test]
    fn encoding_keeps_unreserved_characters_only() {
        assert_eq!(encode("Server-1_a.b~"), "Server-1_a.b~");
        assert_eq!(encode(r#"{"label":["a=b"]}"#), "%7B%22label%22%3A%5B%22a%3Db%22%5D%7D");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::new(dir.path().join("no.sock"));
        let err = engine.inspect("x").await.unwrap_err();
        assert!(err.contains("cannot connect to") && err.contains("no.sock"), "{err}");
    }
}
