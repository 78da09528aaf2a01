//! The router's HTTP front (HTTP/1.1 by hyper, keep-alive, no framework): the balancer
//! endpoints of stage 1, the database endpoints of stages 2 and 3 (see `db`), and, for every
//! other path, the replica's own answer.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, StatusCode};
use protocol::ErrorBody;
use serde_json::{json, Value as Json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::db;
use super::fronts::Fronts;
use super::proxy::Outgoing;
use super::{ring_capacity, Router};
use crate::control::{AdminOp, ControlRequest, Membership};
use crate::key::RequestFacts;

/// Largest request (and forwarded answer) body accepted; a larger request gets 413.
pub const MAX_HTTP_BODY_BYTES: usize = 16 * 1024 * 1024;
/// How long shutdown waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A client must send a request's body within this time once its headers are in; one that
/// stops half way would otherwise hold its connection for ever.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) type HttpResponse = hyper::Response<protocol::budget::Answer>;

/// Prefix of `GET /read/<server_name>`.
const READ_SERVER_PREFIX: &str = "/read/";

/// Serves HTTP on `listener` until `shutdown` completes, then lets requests in progress
/// finish (up to a grace period).
///
/// At most `--max-connections` connections at once: one beyond the cap is answered 503 with
/// the contract's JSON error and closed, and the connections already open are served as
/// before. A request head must be complete within the idle timeout from the connection's
/// start or the end of the previous answer (hyper's header timeout: a slowloris client or an
/// idle keep-alive connection is closed), and an answer's write may stall that long.
pub async fn serve(listener: TcpListener, router: Arc<Router>, shutdown: impl Future<Output = ()>) {
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let limit = router.http_conns.clone();
    let refusal = protocol::limits::http_refusal(&limit);
    let idle = router.cfg.limits.idle_timeout;
    let mut fronts = match Fronts::start(router.cfg.front_threads, super::node_pool) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the router's front threads");
            return;
        }
    };
    tracing::debug!(threads = fronts.len(), "router fronts started");
    tokio::pin!(shutdown);
    loop {
        let (stream, peer, permit) = tokio::select! {
            _ = &mut shutdown => break,
            a = limit.accept(&listener, &refusal, &tracker) => a,
        };
        // Handed over to a front, where it joins that front's reactor.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, %peer, "cannot hand an http connection over");
                continue;
            }
        };
        let (router, cancel, tracker) = (router.clone(), cancel.clone(), tracker.clone());
        fronts.spawn(move |nodes| {
            tracker.track_future(async move {
                let _permit = permit;
                let stream = match TcpStream::from_std(stream) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, %peer, "cannot serve an http connection");
                        return;
                    }
                };
                serve_connection(stream, peer, router, nodes, idle, cancel).await
            })
        });
    }
    drop(listener);
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
        tracing::warn!("http requests did not finish within the grace period");
    }
    // Joining the front threads blocks (briefly: they only drop what is left on them).
    let _ = tokio::task::spawn_blocking(move || drop(fronts)).await;
}

/// Serves one client connection (on a front) until it closes, or `cancel` lets its request
/// in progress finish.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Arc<Router>,
    nodes: client::Pool,
    idle: Duration,
    cancel: CancellationToken,
) {
    let service = hyper::service::service_fn(move |req| {
        let (router, nodes) = (router.clone(), nodes.clone());
        async move { Ok::<_, Infallible>(handle(&router, &nodes, req, peer).await) }
    });
    protocol::limits::serve_http1(stream, idle, service, &cancel).await
}

async fn handle(
    router: &Router,
    nodes: &client::Pool,
    req: hyper::Request<Incoming>,
    peer: SocketAddr,
) -> HttpResponse {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    // Large bodies and answers hold the process's HTTP memory budget (protocol::budget).
    let mut endpoint = None;
    let serve = async {
        match read_body(body).await {
            Ok(b) => {
                let (resp, e) = route(router, nodes, &parts, path, b, peer).await;
                endpoint = e;
                resp
            }
            Err(resp) => resp,
        }
    };
    let resp =
        protocol::budget::within_budget(&parts.headers, MAX_HTTP_BODY_BYTES, serve, error_response)
            .await;
    let status = resp.status().as_u16();
    if let Some(endpoint) = endpoint {
        router.metrics.db_request(endpoint, status);
    }
    // Server names must not each become a label of their own.
    let label = if path.starts_with(READ_SERVER_PREFIX) { "/read/<server>" } else { path };
    router.metrics.observe(label, status, started.elapsed());
    resp
}

/// The request body, or the answer to give instead: 413 above [`MAX_HTTP_BODY_BYTES`], 408
/// when it does not arrive within [`BODY_READ_TIMEOUT`]. (A Content-Length over the limit is
/// not refused before the body is read: hyper would then close the connection while a
/// client that sends its whole body before reading still writes, and that client would
/// see a broken pipe instead of the 413.)
async fn read_body(body: Incoming) -> Result<Bytes, HttpResponse> {
    // Most requests (every GET of stage 1) have none: no timer, no collecting.
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let too_large = || {
        error_response(&ErrorBody::too_large(format!(
            "request body is larger than {MAX_HTTP_BODY_BYTES} bytes"
        )))
    };
    let collect = Limited::new(body, MAX_HTTP_BODY_BYTES).collect();
    match tokio::time::timeout(BODY_READ_TIMEOUT, collect).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(too_large())
        }
        Ok(Err(e)) => Err(error_response(&ErrorBody::bad_request(format!(
            "cannot read the request body: {e}"
        )))),
        Err(_) => Err(json_response(
            StatusCode::REQUEST_TIMEOUT,
            &json!({
                "message": format!("<Error> the request body did not arrive within {BODY_READ_TIMEOUT:?}"),
                "status": "failure"
            }),
        )),
    }
}

/// Which methods each endpoint of the router takes (the contract's, plus POST where original
/// clients send a body with GET or DELETE); `None` for paths forwarded to replicas.
fn allowed(path: &str) -> Option<&'static [Method]> {
    Some(match path {
        "/rep" | "/metrics" | "/status" => &[Method::GET],
        "/add" | "/init" => &[Method::POST],
        "/rm" => &[Method::DELETE, Method::POST],
        "/primary_elect" => &[Method::GET, Method::POST],
        "/read" => &[Method::GET, Method::POST],
        "/write" => &[Method::POST, Method::PUT],
        "/update" => &[Method::PUT, Method::POST],
        "/del" => &[Method::DELETE, Method::POST],
        p if p.starts_with(READ_SERVER_PREFIX) => &[Method::GET, Method::POST],
        _ => return None,
    })
}

/// Answers one request; the second value names the database endpoint it was, for metrics.
async fn route(
    router: &Router,
    nodes: &client::Pool,
    parts: &hyper::http::request::Parts,
    path: &str,
    body: Bytes,
    peer: SocketAddr,
) -> (HttpResponse, Option<&'static str>) {
    let method = &parts.method;
    // The balancer's admin endpoints, and a node's `/config` (which would otherwise be
    // forwarded to a replica), change the cluster: the one rule of every door.
    if protocol::authz::is_admin_path(path) {
        let authorization = parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes());
        let caller = protocol::authz::Caller::Http { authorization };
        if let Err(refusal) =
            protocol::authz::authorize(caller, path, router.cfg.admin_token.as_ref())
        {
            let mut resp = error_response(&refusal.error);
            resp.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(refusal.challenge));
            return (resp, None);
        }
    }
    if allowed(path).is_some_and(|a| !a.contains(method)) {
        let resp = json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({
                "message": format!("<Error> method {method} is not allowed on '{path}'"),
                "status": "failure"
            }),
        );
        return (resp, None);
    }
    // The ring key of a database read: the same source as stage-1 requests (by default a
    // random 6-digit id per request).
    let key = || {
        let header =
            router.cfg.key.header_name().and_then(|h| parts.headers.get(h)).map(|v| v.as_bytes());
        let facts = RequestFacts { header, client: peer.ip(), path };
        router.cfg.key.key(facts, &mut rand::thread_rng())
    };
    let body_ref = &body;
    let admin =
        |op: AdminOp| async move { (db::admin(router, op, body_ref).await, Some(op.endpoint())) };
    let (result, endpoint) = match path {
        "/rep" => (Ok(rep(router)), None),
        "/metrics" => (Ok(metrics(router)), None),
        "/add" if db::is_db_form(AdminOp::Add, &body) => admin(AdminOp::Add).await,
        "/rm" if db::is_db_form(AdminOp::Remove, &body) => admin(AdminOp::Remove).await,
        "/add" => (add(router, &body).await, None),
        "/rm" => (rm(router, &body).await, None),
        "/init" => admin(AdminOp::Init).await,
        "/status" => admin(AdminOp::Status).await,
        "/primary_elect" => admin(AdminOp::PrimaryElect).await,
        "/read" => (db::read(router, &body, key()).await, Some("read")),
        "/write" => (db::write(router, &body, key()).await, Some("write")),
        "/update" => (db::update(router, &body).await, Some("update")),
        "/del" => (db::delete(router, &body).await, Some("del")),
        p if p.starts_with(READ_SERVER_PREFIX) => {
            let name = &p[READ_SERVER_PREFIX.len()..];
            (db::read_server(router, name).await, Some("read_server"))
        }
        _ => (forward(router, nodes, parts, path, body, peer).await, None),
    };
    (result.unwrap_or_else(|e| error_response(&e)), endpoint)
}

fn rep(router: &Router) -> HttpResponse {
    let t = router.table();
    if !t.ready {
        return error_response(&ErrorBody::unavailable("no membership from the shard manager yet"));
    }
    let live = t.live_names();
    json_response(
        StatusCode::OK,
        &json!({"message": {"N": live.len(), "replicas": live}, "status": "successful"}),
    )
}

fn metrics(router: &Router) -> HttpResponse {
    let mut text = router.metrics.render(&router.table(), &router.cfg.hash);
    router.metrics.render_db(&mut text, &router.db_table(), &router.lsn_floors());
    super::metrics::render_connections(&mut text, &[&router.http_conns, &router.binary_conns]);
    let mut r = hyper::Response::new(protocol::budget::Answer::new(text));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

/// `/add` and `/rm` answer with the whole membership after the change.
fn members_response(m: &Membership) -> HttpResponse {
    let names = m.names();
    json_response(
        StatusCode::OK,
        &json!({"message": {"N": names.len(), "replicas": names}, "status": "successful"}),
    )
}

async fn add(router: &Router, body: &[u8]) -> Result<HttpResponse, ErrorBody> {
    let (n, hostnames) = n_and_hostnames(body)?;
    // The contract's length error comes first; the manager reports it.
    if hostnames.len() as u64 <= n {
        if let Some(cap) = ring_capacity(&router.cfg.hash) {
            let now = router.table().membership.members.len();
            if (now as u64).saturating_add(n) > cap as u64 {
                return Err(ErrorBody::bad_request(format!(
                    "Cannot add {n} replicas; the {} ring holds at most {cap} servers and {now} \
                     exist",
                    router.cfg.hash
                )));
            }
        }
    }
    let m = router.admin(ControlRequest::Add { n, hostnames }).await?;
    Ok(members_response(&m))
}

async fn rm(router: &Router, body: &[u8]) -> Result<HttpResponse, ErrorBody> {
    let (n, hostnames) = n_and_hostnames(body)?;
    let m = router.admin(ControlRequest::Remove { n, hostnames }).await?;
    Ok(members_response(&m))
}

async fn forward(
    router: &Router,
    nodes: &client::Pool,
    parts: &hyper::http::request::Parts,
    path: &str,
    body: Bytes,
    peer: SocketAddr,
) -> Result<HttpResponse, ErrorBody> {
    let header =
        router.cfg.key.header_name().and_then(|h| parts.headers.get(h)).map(|v| v.as_bytes());
    let facts = RequestFacts { header, client: peer.ip(), path };
    let key = router.cfg.key.key(facts, &mut rand::thread_rng());
    // The client's headers stay here: the node answers by method, path and body alone.
    let path_and_query = parts.uri.path_and_query().map_or(path, |p| p.as_str()).to_string();
    let out = Outgoing { method: parts.method.clone(), path_and_query, body };
    let reply = router.forward(nodes, &out, key).await?;
    if reply.status == StatusCode::NOT_FOUND && is_unknown_endpoint(&reply.body) {
        return Err(ErrorBody::bad_request(format!(
            "'{path}' endpoint does not exist in server replicas"
        )));
    }
    // As the node's HTTP shim sends it: JSON, or an empty body without a content type.
    let json = !reply.body.is_empty();
    let mut r = hyper::Response::new(protocol::budget::Answer::new(reply.body));
    *r.status_mut() = reply.status;
    if json {
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(r)
}

/// Whether a replica's 404 says the path is not one of its endpoints (rather than, say, a
/// row that does not exist).
fn is_unknown_endpoint(body: &[u8]) -> bool {
    serde_json::from_slice::<Json>(body)
        .ok()
        .and_then(|j| j.get("message").and_then(Json::as_str).map(str::to_string))
        .is_some_and(|m| m.contains("endpoint does not exist"))
}

/// `n` (required, a non-negative integer) and `hostnames` (optional, strings) of `/add` and
/// `/rm`.
fn n_and_hostnames(body: &[u8]) -> Result<(u64, Vec<String>), ErrorBody> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ErrorBody::bad_request("request body must be a JSON object"));
    }
    let v: Json = serde_json::from_slice(body)
        .map_err(|e| ErrorBody::bad_request(format!("request body is not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ErrorBody::bad_request("request body must be a JSON object"));
    }
    let n = match v.get("n") {
        None | Some(Json::Null) => return Err(ErrorBody::bad_request("missing field 'n'")),
        Some(n) => n
            .as_u64()
            .ok_or_else(|| ErrorBody::bad_request("field 'n' must be a non-negative integer"))?,
    };
    let wrong = || ErrorBody::bad_request("field 'hostnames' must be an array of strings");
    let hostnames = match v.get("hostnames") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(a)) => a
            .iter()
            .map(|h| h.as_str().map(str::to_string).ok_or_else(wrong))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(wrong()),
    };
    Ok((n, hostnames))
}

pub(super) fn error_response(e: &ErrorBody) -> HttpResponse {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &json!({"message": e.message, "status": "failure"}))
}

pub(super) fn json_response(status: StatusCode, body: &Json) -> HttpResponse {
    raw_json_response(status, serde_json::to_vec(body).unwrap_or_default())
}

/// A response whose body is JSON text already (the manager's answers, passed on as they are).
pub(super) fn raw_json_response(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    let mut r = hyper::Response::new(protocol::budget::Answer::new(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn n_and_hostnames_are_parsed_and_checked() {
        assert_eq!(
            n_and_hostnames(br#"{"n": 4, "hostnames": ["S5", "S4"]}"#).unwrap(),
            (4, vec!["S5".to_string(), "S4".to_string()])
        );
        assert_eq!(n_and_hostnames(br#"{"n": 2, "extra": 1}"#).unwrap(), (2, vec![]));
        assert_eq!(n_and_hostnames(br#"{"n": 0, "hostnames": null}"#).unwrap(), (0, vec![]));
        let msg = |b: &[u8]| n_and_hostnames(b).unwrap_err().message;
        assert_eq!(msg(br#"{"hostnames": []}"#), "<Error> missing field 'n'");
        assert_eq!(msg(br#"{"n": -1}"#), "<Error> field 'n' must be a non-negative integer");
        assert_eq!(msg(br#"{"n": "2"}"#), "<Error> field 'n' must be a non-negative integer");
        assert_eq!(
            msg(br#"{"n": 1, "hostnames": "S1"}"#),
            "<Error> field 'hostnames' must be an array of strings"
        );
        assert_eq!(
            msg(br#"{"n": 1, "hostnames": [1]}"#),
            "<Error> field 'hostnames' must be an array of strings"
        );
        assert_eq!(msg(b""), "<Error> request body must be a JSON object");
        assert_eq!(msg(b"[1]"), "<Error> request body must be a JSON object");
        assert!(msg(b"{").starts_with("<Error> request body is not valid JSON"));
    }

    #[test]
    fn only_the_nodes_unknown_path_answer_is_an_unknown_endpoint() {
        assert!(is_unknown_endpoint(
            br#"{"message": "<Error> '/other' endpoint does not exist in server", "status": "failure"}"#
        ));
        assert!(!is_unknown_endpoint(
            br#"{"message": "<Error> no row with Stud_id 5", "status": "failure"}"#
        ));
        assert!(!is_unknown_endpoint(b"not json"));
    }
}
