//! [`Db`]: an async client of the sharded database behind a shardgate router.
//!
//! A `Db` talks to one router in either of its two doors:
//! - [`Db::connect_binary`]: the router's binary protocol door (`--binary`, port 5002 by
//!   default). One pipelined connection carries every call at once (reopened if it
//!   breaks); rows travel typed, in schema column order, so nothing is parsed as JSON on the
//!   way. JSON rows given to [`Db::write`] are checked against the schema (fetched once from
//!   `/status`) before they are sent.
//! - [`Db::connect`]: the router's HTTP/1.1 JSON endpoints (the contract's `/read`,
//!   `/write`, `/update`, `/del`, `/status`, `/init`, `/add`, `/rm`, `/primary_elect`,
//!   `/read/<server>`), over a pool of keep-alive connections, up to
//!   [`DbOptions::max_connections`] calls in flight.
//!
//! Both give the same answers and the same errors. Every failure is a [`DbError`]: the
//! router's HTTP status (the binary door reports the status its HTTP twin would answer) and
//! message, or status 0 when no answer came (the router could not be reached or the
//! connection broke).
//!
//! ```no_run
//! # async fn demo() -> Result<(), client::DbError> {
//! use serde_json::json;
//!
//! let db = client::Db::connect_binary("127.0.0.1:5002").await?;
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
//! // The same calls over HTTP:
//! let http = client::Db::connect("127.0.0.1:5000").await?;
//! assert_eq!(http.read(2000, 3000).await?, db.read(2000, 3000).await?);
//! # let _ = rows;
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::json::{rows_from_json, rows_to_json, schema_from_json};
use protocol::{
    AdminOp, Consistency, DbAdminReq, DbDeleteReq, DbReadReq, DbReadServerReq, DbUpdateReq,
    DbWriteReq, ErrorBody, Request, Response, Row, Schema,
};
use serde_json::{json, Value as Json};
use tokio::net::ToSocketAddrs;
use tokio::sync::Semaphore;

use crate::http::HttpClient;
use crate::{CallError, Pool};

/// Default limit on connections to the router open at once (and so on calls in flight) over
/// HTTP.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
/// Default limit on one call, from borrowing a connection to the whole answer.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How a [`Db`] talks to the router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DbOptions {
    /// Over HTTP: connections open at once, at most; further calls wait for one to be free.
    /// (The binary door needs one connection for any number of calls.)
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

impl From<ErrorBody> for DbError {
    fn from(e: ErrorBody) -> DbError {
        DbError { status: e.http_status(), message: e.message }
    }
}

impl From<CallError> for DbError {
    fn from(e: CallError) -> DbError {
        match e {
            CallError::Remote(body) => body.into(),
            CallError::Protocol(p) => {
                DbError { status: 400, message: format!("<Error> request not sent; {p}") }
            }
            other => DbError::transport(other),
        }
    }
}

/// The result of a [`Db`] call.
pub type DbResult<T> = std::result::Result<T, DbError>;

/// A client of the database behind one router. Cheap to clone; clones share the
/// connections.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    options: DbOptions,
    door: Door,
}

/// Which of the router's doors a [`Db`] uses.
enum Door {
    Http { idle: Mutex<Vec<HttpClient>>, slots: Semaphore },
    Binary { pool: Pool, schema: Mutex<Option<Schema>> },
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let door = match self.inner.door {
            Door::Http { .. } => "http",
            Door::Binary { .. } => "binary",
        };
        f.debug_struct("Db").field("addr", &self.inner.addr).field("door", &door).finish()
    }
}

async fn resolve(addr: impl ToSocketAddrs) -> DbResult<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .map_err(DbError::transport)?
        .next()
        .ok_or_else(|| DbError::transport("the address resolved to nothing"))
}

impl Db {
    /// A client of the router whose HTTP endpoint is `addr`, with the default options. One
    /// connection is opened now, so a wrong address fails here.
    pub async fn connect(addr: impl ToSocketAddrs) -> DbResult<Db> {
        Db::connect_with(addr, DbOptions::default()).await
    }

    /// A client of the router's HTTP endpoint at `addr` with `options`.
    pub async fn connect_with(addr: impl ToSocketAddrs, options: DbOptions) -> DbResult<Db> {
        let addr = resolve(addr).await?;
        let first = HttpClient::connect(addr).await.map_err(DbError::transport)?;
        let door = Door::Http {
            idle: Mutex::new(vec![first]),
            slots: Semaphore::new(options.max_connections.max(1)),
        };
        Ok(Db { inner: Arc::new(Inner { addr, options, door }) })
    }

    /// A client of the router whose binary protocol door is `addr`, with the default
    /// options. The connection is opened (and the handshake made) now, so a wrong address
    /// fails here.
    pub async fn connect_binary(addr: impl ToSocketAddrs) -> DbResult<Db> {
        Db::connect_binary_with(addr, DbOptions::default()).await
    }

    /// A client of the router's binary door at `addr` with `options`.
    pub async fn connect_binary_with(addr: impl ToSocketAddrs, options: DbOptions) -> DbResult<Db> {
        let addr = resolve(addr).await?;
        let pool = Pool::new("shardgate-client");
        pool.get(addr).await.map_err(DbError::transport)?;
        let door = Door::Binary { pool, schema: Mutex::new(None) };
        Ok(Db { inner: Arc::new(Inner { addr, options, door }) })
    }

    /// The router's address (of the door in use).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// `POST /write`: adds `rows` (JSON objects with every column of the schema); all are
    /// validated first. Returns how many were added.
    pub async fn write(&self, rows: &[Json]) -> DbResult<u64> {
        if let Door::Binary { .. } = self.inner.door {
            let schema = self.schema(false).await?;
            let typed = match rows_from_json(&schema, &Json::Array(rows.to_vec())) {
                Ok(r) => r,
                // The table may have been configured again since the schema was fetched.
                Err(_) => rows_from_json(&self.schema(true).await?, &Json::Array(rows.to_vec()))
                    .map_err(ErrorBody::from)?,
            };
            return self.binary_write(typed).await;
        }
        self.http_write(rows).await
    }

    async fn http_write(&self, rows: &[Json]) -> DbResult<u64> {
        let answer = self.http("POST", "/write", Some(&json!({"data": rows}))).await?;
        // "<count> Data entries added"
        Ok(answer
            .get("message")
            .and_then(Json::as_str)
            .and_then(|m| m.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(rows.len() as u64))
    }

    /// Adds typed rows (values in schema column order); over HTTP they are sent as JSON.
    pub async fn write_rows(&self, rows: Vec<Row>) -> DbResult<u64> {
        match &self.inner.door {
            Door::Binary { .. } => self.binary_write(rows).await,
            Door::Http { .. } => {
                let schema = self.schema(false).await?;
                let Json::Array(rows) = rows_to_json(&schema, &rows) else {
                    return Err(DbError::transport("rows did not encode as a JSON array"));
                };
                self.http_write(&rows).await
            }
        }
    }

    async fn binary_write(&self, rows: Vec<Row>) -> DbResult<u64> {
        match self.binary(Request::DbWrite(DbWriteReq { rows })).await? {
            Response::DbWritten { count } => Ok(count),
            other => Err(unexpected_binary("write", &other)),
        }
    }

    /// `POST /read`: rows with `low <= Stud_id <= high`, in Stud_id order.
    pub async fn read(&self, low: i64, high: i64) -> DbResult<Vec<Json>> {
        self.read_json(low, high, Consistency::Default).await
    }

    /// Like [`Db::read`], but linearizable even across several routers: each shard is read
    /// from its primary while it holds its lease.
    pub async fn read_linearizable(&self, low: i64, high: i64) -> DbResult<Vec<Json>> {
        self.read_json(low, high, Consistency::Linearizable).await
    }

    async fn read_json(&self, low: i64, high: i64, c: Consistency) -> DbResult<Vec<Json>> {
        if let Door::Binary { .. } = self.inner.door {
            let rows = self.binary_read(low, high, c).await?;
            let schema = self.schema(false).await?;
            return match rows_to_json(&schema, &rows) {
                Json::Array(rows) => Ok(rows),
                other => Err(unexpected("/read", &other)),
            };
        }
        self.http_read(low, high, c).await
    }

    async fn http_read(&self, low: i64, high: i64, c: Consistency) -> DbResult<Vec<Json>> {
        let mut body = json!({"Stud_id": {"low": low, "high": high}});
        if c == Consistency::Linearizable {
            body["consistency"] = json!("linearizable");
        }
        let mut answer = self.http("POST", "/read", Some(&body)).await?;
        match answer.get_mut("data").map(Json::take) {
            Some(Json::Array(rows)) => Ok(rows),
            _ => Err(unexpected("/read", &answer)),
        }
    }

    /// Typed rows with `low <= Stud_id <= high`, in Stud_id order (over HTTP, parsed with the
    /// schema).
    pub async fn read_rows(&self, low: i64, high: i64, c: Consistency) -> DbResult<Vec<Row>> {
        match &self.inner.door {
            Door::Binary { .. } => self.binary_read(low, high, c).await,
            Door::Http { .. } => {
                let rows = self.http_read(low, high, c).await?;
                let schema = self.schema(false).await?;
                Ok(rows_from_json(&schema, &Json::Array(rows)).map_err(ErrorBody::from)?)
            }
        }
    }

    async fn binary_read(&self, low: i64, high: i64, c: Consistency) -> DbResult<Vec<Row>> {
        let req = Request::DbRead(DbReadReq { low, high, consistency: c });
        match self.binary(req).await? {
            Response::DbRows { rows, .. } => Ok(rows),
            other => Err(unexpected_binary("read", &other)),
        }
    }

    /// `PUT /update`: replaces the row with Stud_id `id` by `row` (whose Stud_id must be
    /// `id`).
    pub async fn update(&self, id: i64, row: &Json) -> DbResult<()> {
        if let Door::Binary { .. } = self.inner.door {
            let schema = self.schema(false).await?;
            let row = protocol::row_from_json(&schema, row).map_err(ErrorBody::from)?;
            return match self.binary(Request::DbUpdate(DbUpdateReq { key: id, row })).await? {
                Response::Updated { .. } => Ok(()),
                other => Err(unexpected_binary("update", &other)),
            };
        }
        self.http("PUT", "/update", Some(&json!({"Stud_id": id, "data": row}))).await.map(drop)
    }

    /// `DELETE /del`: removes the row with Stud_id `id` (404 if there is none).
    pub async fn delete(&self, id: i64) -> DbResult<()> {
        if let Door::Binary { .. } = self.inner.door {
            return match self.binary(Request::DbDelete(DbDeleteReq { key: id })).await? {
                Response::Deleted { .. } => Ok(()),
                other => Err(unexpected_binary("delete", &other)),
            };
        }
        self.http("DELETE", "/del", Some(&json!({"Stud_id": id}))).await.map(drop)
    }

    /// `GET /read/<server>`: every shard that server holds, with its rows.
    pub async fn read_server(&self, server: &str) -> DbResult<BTreeMap<String, Vec<Json>>> {
        if let Door::Binary { .. } = self.inner.door {
            let req = Request::DbReadServer(DbReadServerReq { server: server.to_string() });
            let Response::Copy { shards } = self.binary(req).await? else {
                return Err(DbError::transport("unexpected answer to read_server"));
            };
            let schema = self.schema(false).await?;
            return Ok(shards
                .into_iter()
                .map(|(id, rows)| match rows_to_json(&schema, &rows) {
                    Json::Array(rows) => (id, rows),
                    _ => (id, Vec::new()),
                })
                .collect());
        }
        let answer = self.http("GET", &format!("/read/{server}"), None).await?;
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
        self.admin(AdminOp::Status, "GET", "/status", None).await
    }

    /// `POST /init` with the configuration object of the contract (`N`, `schema`, `shards`,
    /// `servers`).
    pub async fn init(&self, config: &Json) -> DbResult<()> {
        self.admin(AdminOp::Init, "POST", "/init", Some(config)).await?;
        self.forget_schema();
        Ok(())
    }

    /// `POST /add` with `{"n": ..., "new_shards": [...], "servers": {...}}`; returns the
    /// router's answer (`N` and the message naming the servers added).
    pub async fn add(&self, request: &Json) -> DbResult<Json> {
        self.admin(AdminOp::Add, "POST", "/add", Some(request)).await
    }

    /// `DELETE /rm`: removes `n` servers, the named ones and random others; returns the
    /// names of the servers removed.
    pub async fn rm(&self, n: u64, servers: &[&str]) -> DbResult<Vec<String>> {
        let body = json!({"n": n, "servers": servers});
        let answer = self.admin(AdminOp::Remove, "DELETE", "/rm", Some(&body)).await?;
        let removed = answer.pointer("/message/servers").and_then(Json::as_array);
        removed
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
            .ok_or_else(|| unexpected("/rm", &answer))
    }

    /// `GET /primary_elect`: the primary of each shard (or of `shard` alone) after electing
    /// where the primary is not alive.
    pub async fn primary_elect(&self, shard: Option<&str>) -> DbResult<BTreeMap<String, String>> {
        let body = shard.map(|s| json!({"shard": s}));
        let answer =
            self.admin(AdminOp::PrimaryElect, "GET", "/primary_elect", body.as_ref()).await?;
        let Some(Json::Object(map)) = answer.get("message") else {
            return Err(unexpected("/primary_elect", &answer));
        };
        Ok(map.iter().filter_map(|(k, v)| v.as_str().map(|p| (k.clone(), p.to_string()))).collect())
    }

    /// The table's schema, from `/status` the first time (or again when `refresh`).
    async fn schema(&self, refresh: bool) -> DbResult<Schema> {
        let cached = match &self.inner.door {
            Door::Binary { schema, .. } => Some(schema),
            Door::Http { .. } => None,
        };
        if let Some(s) = cached.filter(|_| !refresh) {
            if let Some(s) = s.lock().unwrap_or_else(|e| e.into_inner()).clone() {
                return Ok(s);
            }
        }
        let status = self.status().await?;
        let schema = status
            .get("schema")
            .ok_or_else(|| unexpected("/status", &status))
            .and_then(|v| schema_from_json(v).map_err(|e| ErrorBody::from(e).into()))?;
        if let Some(s) = cached {
            *s.lock().unwrap_or_else(|e| e.into_inner()) = Some(schema.clone());
        }
        Ok(schema)
    }

    fn forget_schema(&self) {
        if let Door::Binary { schema, .. } = &self.inner.door {
            *schema.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// An admin endpoint through either door: its 2xx JSON answer, or the error.
    async fn admin(
        &self,
        op: AdminOp,
        method: &str,
        path: &str,
        body: Option<&Json>,
    ) -> DbResult<Json> {
        if let Door::Binary { .. } = self.inner.door {
            let body = body.map_or_else(|| "{}".to_string(), Json::to_string);
            let Response::Json { status, body } =
                self.binary(Request::DbAdmin(DbAdminReq { op, body })).await?
            else {
                return Err(DbError::transport(format!("unexpected answer to {path}")));
            };
            return json_answer(path, status, body.as_bytes());
        }
        self.http(method, path, body).await
    }

    /// One call on the binary door.
    async fn binary(&self, req: Request) -> DbResult<Response> {
        let Door::Binary { pool, .. } = &self.inner.door else {
            return Err(DbError::transport("not a binary-protocol client"));
        };
        let conn = pool.get(self.inner.addr).await.map_err(DbError::transport)?;
        Ok(conn.call_with_timeout(req, Some(self.inner.options.request_timeout)).await?)
    }

    /// One request on a pooled HTTP connection; a 2xx answer's JSON, or the error. A reused
    /// connection that the router had closed while idle is replaced once (the request had not
    /// been read by the router: it found the connection closed).
    async fn http(&self, method: &str, path: &str, body: Option<&Json>) -> DbResult<Json> {
        let inner = &*self.inner;
        let Door::Http { idle, slots } = &inner.door else {
            return Err(DbError::transport("not an HTTP client"));
        };
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| DbError::transport(e.to_string()))?,
            None => Vec::new(),
        };
        let exchange = async {
            let _slot = slots.acquire().await.map_err(DbError::transport)?;
            // An idle connection the router has closed meanwhile is dropped before use.
            let pooled = loop {
                let next = idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
                match next {
                    Some(c) if c.is_closed() => continue,
                    other => break other,
                }
            };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => HttpClient::connect(inner.addr).await.map_err(DbError::transport)?,
            };
            let reply = match conn.request(method, path, &bytes).await {
                Ok(r) => r,
                // The router may have closed the connection just as the request left. Only
                // a read is sent again: a change may have been applied before the router
                // went away, and a second try would be told "already exists" or "no such
                // row" about its own doing.
                Err(e) if reused && closed_while_idle(&e) && is_read(method, path) => {
                    conn = HttpClient::connect(inner.addr).await.map_err(DbError::transport)?;
                    conn.request(method, path, &bytes).await.map_err(DbError::transport)?
                }
                Err(e) if is_read(method, path) => return Err(DbError::transport(e)),
                Err(e) => {
                    return Err(DbError::transport(format!(
                        "{e}; the {method} {path} may or may not have been applied"
                    )))
                }
            };
            let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < inner.options.max_connections {
                idle.push(conn);
            }
            Ok(reply)
        };
        let reply = tokio::time::timeout(inner.options.request_timeout, exchange).await.map_err(
            |_| DbError::transport(format!("timed out after {:?}", inner.options.request_timeout)),
        )??;
        json_answer(path, reply.status, &reply.body)
    }
}

/// A JSON answer with its status: the JSON when 2xx, else the error with its message.
fn json_answer(path: &str, status: u16, body: &[u8]) -> DbResult<Json> {
    let json: Json = serde_json::from_slice(body).map_err(|e| DbError {
        status,
        message: format!("the router answered {path} with a body that is not JSON; {e}"),
    })?;
    if (200..300).contains(&status) {
        return Ok(json);
    }
    let message =
        json.get("message").and_then(Json::as_str).map_or_else(|| json.to_string(), str::to_string);
    Err(DbError { status, message })
}

/// Whether a request only reads, so that sending it again cannot change anything.
fn is_read(method: &str, path: &str) -> bool {
    method == "GET" || path == "/read"
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

fn unexpected_binary(what: &str, answer: &Response) -> DbError {
    DbError { status: 200, message: format!("unexpected answer to {what}: {answer:?}") }
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
