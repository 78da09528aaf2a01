//! [`Db`]: an async client of the sharded database behind a shardgate router.
//!
//! The router has no binary listener for clients yet, so this client speaks the router's
//! HTTP/1.1 JSON endpoints (the contract's `/read`, `/write`, `/update`, `/del`, `/status`,
//! `/init`, `/add`, `/rm`, `/primary_elect`, `/read/<server>`). It keeps a small pool of
//! keep-alive connections: each call borrows one (opening it if none is idle), so many calls
//! may be in flight at once, up to [`DbOptions::max_connections`].
//!
//! Every failure is a [`DbError`]: the router's status and message, or status 0 when no
//! answer came (the router could not be reached or the connection broke).
//!
//! ```no_run
//! # async fn demo() -> Result<(), client::DbError> {
//! use serde_json::json;
//!
//! let db = client::Db::connect("127.0.0.1:5000").await?;
//! let added = db
//!     .write(&[json!({"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 27})])
//!     .await?;
//! assert_eq!(added, 1);
//! let rows = db.read(2000, 3000).await?;
//! db.update(2255, &json!({"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 30})).await?;
//! db.delete(2255).await?;
//! match db.delete(2255).await {
//!     Err(e) if e.is_not_found() => {}
//!     other => panic!("{other:?}"),
//! }
//! # let _ = rows;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value as Json};
use tokio::net::ToSocketAddrs;
use tokio::sync::Semaphore;

use crate::http::HttpClient;

/// Default limit on connections to the router open at once (and so on calls in flight).
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default limit on one call, from borrowing a connection to the whole answer.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How a [`Db`] talks to the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbOptions {
    /// Connections open at once, at most; further calls wait for one to be free.
    pub max_connections: usize,
    /// Limit on one call.
    pub request_timeout: Duration,
}

impl Default for DbOptions {
    fn default() -> DbOptions {
        DbOptions {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// A failed call: the router's HTTP status and its message (`"<Error> ..."`), or status 0
/// when no answer came.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (status {status})")]
pub struct DbError {
    /// The HTTP status; 0 when the router did not answer (unreachable, connection broken,
    /// timed out: a change may or may not have been made).
    pub status: u16,
    /// The router's message, or what went wrong on the way.
    pub message: String,
}

impl DbError {
    fn transport(what: impl fmt::Display) -> DbError {
        DbError { status: 0, message: format!("no answer from the router; {what}") }
    }

    /// 400: the request was refused as invalid (nothing was changed).
    pub fn is_bad_request(&self) -> bool {
        self.status == 400
    }

    /// 404: no such row (or server).
    pub fn is_not_found(&self) -> bool {
        self.status == 404
    }

    /// 503 or no answer: trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        self.status == 0 || self.status == 503
    }
}

/// The result of a [`Db`] call.
pub type DbResult<T> = std::result::Result<T, DbError>;

/// A client of the database behind one router. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    options: DbOptions,
    idle: Mutex<Vec<HttpClient>>,
    slots: Semaphore,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db").field("addr", &self.inner.addr).finish()
    }
}

impl Db {
    /// A client of the router whose HTTP endpoint is `addr`, with the default options. One
    /// connection is opened now, so a wrong address fails here.
    pub async fn connect(addr: impl ToSocketAddrs) -> DbResult<Db> {
        Db::connect_with(addr, DbOptions::default()).await
    }

    /// A client of the router at `addr` with `options`.
    pub async fn connect_with(addr: impl ToSocketAddrs, options: DbOptions) -> DbResult<Db> {
        let addr = tokio::net::lookup_host(addr)
            .await
            .map_err(DbError::transport)?
            .next()
            .ok_or_else(|| DbError::transport("the address resolved to nothing"))?;
        let first = HttpClient::connect(addr).await.map_err(DbError::transport)?;
        Ok(Db {
            inner: Arc::new(Inner {
                addr,
                options,
                idle: Mutex::new(vec![first]),
                slots: Semaphore::new(options.max_connections.max(1)),
            }),
        })
    }

    /// The router's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `POST /write`: adds `rows` (JSON objects with every column of the schema); all are
    /// validated first. Returns how many were added.
    pub async fn write(&self, rows: &[Json]) -> DbResult<u64> {
        let answer = self.call("POST", "/write", Some(&json!({"data": rows}))).await?;
        // "<count> Data entries added"
        Ok(answer
            .get("message")
            .and_then(Json::as_str)
            .and_then(|m| m.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(rows.len() as u64))
    }

    /// `POST /read`: rows with `low <= Stud_id <= high`, in Stud_id order.
    pub async fn read(&self, low: i64, high: i64) -> DbResult<Vec<Json>> {
        self.read_body(json!({"Stud_id": {"low": low, "high": high}})).await
    }

    /// Like [`Db::read`], but linearizable even across several routers: each shard is read
    /// from its primary.
    pub async fn read_linearizable(&self, low: i64, high: i64) -> DbResult<Vec<Json>> {
        self.read_body(
            json!({"Stud_id": {"low": low, "high": high}, "consistency": "linearizable"}),
        )
        .await
    }

    async fn read_body(&self, body: Json) -> DbResult<Vec<Json>> {
        let mut answer = self.call("POST", "/read", Some(&body)).await?;
        match answer.get_mut("data").map(Json::take) {
            Some(Json::Array(rows)) => Ok(rows),
            _ => Err(unexpected("/read", &answer)),
        }
    }

    /// `PUT /update`: replaces the row with Stud_id `id` by `row` (whose Stud_id must be
    /// `id`).
    pub async fn update(&self, id: i64, row: &Json) -> DbResult<()> {
        self.call("PUT", "/update", Some(&json!({"Stud_id": id, "data": row}))).await.map(drop)
    }

    /// `DELETE /del`: removes the row with Stud_id `id` (404 if there is none).
    pub async fn delete(&self, id: i64) -> DbResult<()> {
        self.call("DELETE", "/del", Some(&json!({"Stud_id": id}))).await.map(drop)
    }

    /// `GET /read/<server>`: every shard that server holds, with its rows.
    pub async fn read_server(&self, server: &str) -> DbResult<BTreeMap<String, Vec<Json>>> {
        let answer = self.call("GET", &format!("/read/{server}"), None).await?;
        let Json::Object(map) = answer else { return Err(unexpected("/read/<server>", &answer)) };
        Ok(map
            .into_iter()
            .filter_map(|(k, v)| match v {
                Json::Array(rows) => Some((k, rows)),
                _ => None,
            })
            .collect())
    }

    /// `GET /status`: the configuration as it is now (the router's JSON answer).
    pub async fn status(&self) -> DbResult<Json> {
        self.call("GET", "/status", None).await
    }

    /// `POST /init` with the configuration object of the contract (`N`, `schema`, `shards`,
    /// `servers`).
    pub async fn init(&self, config: &Json) -> DbResult<()> {
        self.call("POST", "/init", Some(config)).await.map(drop)
    }

    /// `POST /add` with `{"n": ..., "new_shards": [...], "servers": {...}}`; returns the
    /// router's answer (`N` and the message naming the servers added).
    pub async fn add(&self, request: &Json) -> DbResult<Json> {
        self.call("POST", "/add", Some(request)).await
    }

    /// `DELETE /rm`: removes `n` servers, the named ones and random others; returns the
    /// names of the servers removed.
    pub async fn rm(&self, n: u64, servers: &[&str]) -> DbResult<Vec<String>> {
        let answer = self.call("DELETE", "/rm", Some(&json!({"n": n, "servers": servers}))).await?;
        let removed = answer.pointer("/message/servers").and_then(Json::as_array);
        removed
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .ok_or_else(|| unexpected("/rm", &answer))
    }

    /// `GET /primary_elect`: the primary of each shard (or of `shard` alone) after electing
    /// where the primary is not alive.
    pub async fn primary_elect(&self, shard: Option<&str>) -> DbResult<BTreeMap<String, String>> {
        let body = shard.map(|s| json!({"shard": s}));
        let answer = self.call("GET", "/primary_elect", body.as_ref()).await?;
        let Some(Json::Object(map)) = answer.get("message") else {
            return Err(unexpected("/primary_elect", &answer));
        };
        Ok(map.iter().filter_map(|(k, v)| v.as_str().map(|p| (k.clone(), p.to_string()))).collect())
    }

    /// One request on a pooled connection; a 2xx answer's JSON, or the error. A reused
    /// connection that the router had closed while idle is replaced once (the request had not
    /// been read by the router: it found the connection closed).
    async fn call(&self, method: &str, path: &str, body: Option<&Json>) -> DbResult<Json> {
        let inner = &*self.inner;
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| DbError::transport(e.to_string()))?,
            None => Vec::new(),
        };
        let exchange = async {
            let _slot = inner.slots.acquire().await.map_err(DbError::transport)?;
            let pooled = inner.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => HttpClient::connect(inner.addr).await.map_err(DbError::transport)?,
            };
            let reply = match conn.request(method, path, &bytes).await {
                Ok(r) => r,
                Err(e) if reused && closed_while_idle(&e) => {
                    conn = HttpClient::connect(inner.addr).await.map_err(DbError::transport)?;
                    conn.request(method, path, &bytes).await.map_err(DbError::transport)?
                }
                Err(e) => return Err(DbError::transport(e)),
            };
            let mut idle = inner.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < inner.options.max_connections {
                idle.push(conn);
            }
            Ok(reply)
        };
        let reply = tokio::time::timeout(inner.options.request_timeout, exchange).await.map_err(
            |_| DbError::transport(format!("timed out after {:?}", inner.options.request_timeout)),
        )??;
        let json = reply.json().map_err(|e| DbError {
            status: reply.status,
            message: format!("the router answered {path} with a body that is not JSON; {e}"),
        })?;
        if (200..300).contains(&reply.status) {
            return Ok(json);
        }
        let message = json
            .get("message")
            .and_then(Json::as_str)
            .map_or_else(|| json.to_string(), str::to_string);
        Err(DbError { status: reply.status, message })
    }
}

/// Whether an error on a reused connection means the router had closed it before our
/// request: nothing at all came back.
fn closed_while_idle(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted
    )
}

fn unexpected(path: &str, answer: &Json) -> DbError {
    DbError { status: 200, message: format!("unexpected answer to {path}: {answer}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that answers each request on a connection with the next canned answer, and
    /// records the requests.
    async fn canned(answers: Vec<(u16, &'static str)>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            let answers = Arc::new(Mutex::new(answers.into_iter()));
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let (answers, log) = (answers.clone(), log.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let n = s.read(&mut chunk).await.unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).to_string();
                        let Some(head_end) = text.find("\r\n\r\n") else { continue };
                        let len: usize = text[..head_end]
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() < head_end + 4 + len {
                            continue;
                        }
                        log.lock().unwrap().push(text[..head_end + 4 + len].to_string());
                        buf.drain(..head_end + 4 + len);
                        let next = answers.lock().unwrap().next();
                        let Some((status, body)) = next else { return };
                        let out = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        s.write_all(out.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn answers_become_values_and_typed_errors() {
        let (addr, seen) = canned(vec![
            (200, r#"{"message": "2 Data entries added", "status": "success"}"#),
            (200, r#"{"shards_queried": ["sh1"], "data": [{"Stud_id": 1}], "status": "success"}"#),
            (404, r#"{"message": "<Error> no row with Stud_id 9", "status": "failure"}"#),
            (200, r#"{"message": {"N": 4, "servers": ["Server1", "Server4"]}, "status": "successful"}"#),
            (200, r#"{"message": {"sh1": "Server3"}, "status": "success"}"#),
            (503, r#"{"message": "<Error> shard sh1 has no primary now", "status": "failure"}"#),
        ])
        .await;
        let db = Db::connect(addr).await.unwrap();
        assert_eq!(db.write(&[json!({"Stud_id": 1}), json!({"Stud_id": 2})]).await.unwrap(), 2);
        assert_eq!(db.read(0, 10).await.unwrap(), vec![json!({"Stud_id": 1})]);
        let e = db.delete(9).await.unwrap_err();
        assert_eq!(e, DbError { status: 404, message: "<Error> no row with Stud_id 9".into() });
        assert!(e.is_not_found() && !e.is_retryable());
        assert_eq!(db.rm(2, &["Server4"]).await.unwrap(), ["Server1", "Server4"]);
        let p = db.primary_elect(Some("sh1")).await.unwrap();
        assert_eq!(p["sh1"], "Server3");
        let e = db.update(1, &json!({"Stud_id": 1})).await.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        let seen = seen.lock().unwrap().clone();
        assert!(seen[0].starts_with("POST /write HTTP/1.1\r\n"), "{}", seen[0]);
        assert!(seen[0].ends_with(r#"{"data":[{"Stud_id":1},{"Stud_id":2}]}"#), "{}", seen[0]);
        assert!(seen[2].starts_with("DELETE /del "), "{}", seen[2]);
        assert!(seen[3].ends_with(r#"{"n":2,"servers":["Server4"]}"#), "{}", seen[3]);
        assert!(seen[4].starts_with("GET /primary_elect "), "{}", seen[4]);
    }

    #[tokio::test]
    async fn a_router_that_is_gone_is_a_transport_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = Db::connect(addr).await.unwrap_err();
        assert_eq!(e.status, 0);
        assert!(e.is_retryable());
        assert!(e.message.starts_with("no answer from the router; "), "{}", e.message);
    }
}
