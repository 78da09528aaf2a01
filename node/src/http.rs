//! The HTTP shim: HTTP/1.1 (hyper's connection handling, no framework) translated to the
//! same [`Request`]s the binary door serves, and their answers to the contract's JSON.
//!
//! The endpoint table and the JSON translation ([`answer`]) know nothing of hyper's
//! connections: they take a method, a path and a body and give a status and a body. The
//! HTTP door wraps that in a response, and a router's [`Request::Forward`] (stage 1, over
//! the binary door) gets the very same answer ([`forwarded`]), so the two cannot differ.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, StatusCode};
use protocol::auth::AdminToken;
use protocol::json::{key_field, row_from_json, rows_from_json, rows_to_json};
use protocol::limits::ConnectionLimit;
use protocol::{
    ConfigReq, CopyReq, DeleteReq, ErrorBody, ForwardReq, ReadReq, Request, Response, UpdateReq,
    WriteReq,
};
use serde_json::{json, Value as Json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::node::Node;

/// Largest request body accepted; a larger one gets 413.
pub const MAX_HTTP_BODY_BYTES: usize = 16 * 1024 * 1024;
/// A client must send a request's body within this time once its headers are in; one that
/// stops half way would otherwise hold its connection for ever.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

type HttpResponse = hyper::Response<protocol::budget::Answer>;

/// What an endpoint answers, whichever door the request came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// JSON text; empty for `/heartbeat` (and then sent without a content type).
    pub body: Vec<u8>,
}

/// How the HTTP door guards itself.
pub(crate) struct HttpDoor {
    /// The cap on connections; one beyond it is answered 503 and closed.
    pub limit: Arc<ConnectionLimit>,
    /// A request head must be complete within this time from the connection's start or the
    /// end of the previous answer (hyper's header timeout: slowloris clients and idle
    /// keep-alive connections are closed), and an answer's write may stall this long.
    pub idle_timeout: Duration,
    /// When set, `/config` needs `Authorization: Bearer TOKEN`.
    pub admin_token: Option<AdminToken>,
}

/// Accepts HTTP connections until `cancel`; each connection finishes its current request.
pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    door: HttpDoor,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let refusal = protocol::limits::http_refusal(&door.limit);
    let admin_token = Arc::new(door.admin_token);
    loop {
        let (stream, _peer, permit) = tokio::select! {
            _ = cancel.cancelled() => return,
            a = door.limit.accept(&listener, &refusal, &tracker) => a,
        };
        let (node, token) = (node.clone(), admin_token.clone());
        let cancel = cancel.clone();
        let idle = door.idle_timeout;
        tracker.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let (node, token) = (node.clone(), token.clone());
                async move {
                    // Large bodies and answers hold the process's HTTP memory budget.
                    let headers = req.headers().clone();
                    let serve = handle(&node, req, token.as_ref().as_ref());
                    let refuse = |e: &ErrorBody| http_response(error_answer(e));
                    let resp = protocol::budget::within_budget(
                        &headers,
                        MAX_HTTP_BODY_BYTES,
                        serve,
                        refuse,
                    );
                    Ok::<_, Infallible>(resp.await)
                }
            });
            protocol::limits::serve_http1(stream, idle, service, &cancel).await
        });
    }
}

async fn handle(
    node: &Node,
    req: hyper::Request<Incoming>,
    admin_token: Option<&AdminToken>,
) -> HttpResponse {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // `/config` changes the cluster: the one rule of every door (`protocol::authz`).
    let authorized = if protocol::authz::is_admin_path(&path) {
        let authorization = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
        protocol::authz::authorize(
            protocol::authz::Caller::Http { authorization },
            &path,
            admin_token,
        )
    } else {
        Ok(())
    };
    let body = req.into_body();
    let too_large = || {
        http_response(error_answer(&ErrorBody::too_large(format!(
            "request body is larger than {MAX_HTTP_BODY_BYTES} bytes"
        ))))
    };
    // A Content-Length over the limit is not refused before the body is read: hyper would
    // then close the connection while a client that sends its whole body before reading
    // still writes, and that client would see a broken pipe instead of the 413. A body that
    // stops coming is cut off by the timeout instead.
    let collect = Limited::new(body, MAX_HTTP_BODY_BYTES).collect();
    let body = match tokio::time::timeout(BODY_READ_TIMEOUT, collect).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            return too_large();
        }
        Ok(Err(e)) => {
            let err = ErrorBody::bad_request(format!("cannot read the request body: {e}"));
            return http_response(error_answer(&err));
        }
        Err(_) => {
            return http_response(json_answer(
                StatusCode::REQUEST_TIMEOUT,
                &json!({
                    "message": format!("<Error> the request body did not arrive within {BODY_READ_TIMEOUT:?}"),
                    "status": "failure"
                }),
            ));
        }
    };
    // Refused after the body is read, like a 413: a client that sends its whole body
    // before reading would otherwise see a broken pipe instead of the 401.
    if let Err(refusal) = authorized {
        let mut r = http_response(error_answer(&refusal.error));
        r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static(refusal.challenge));
        return r;
    }
    http_response(answer(node, &method, &path, &body).await)
}

/// The answer to [`Request::Forward`]: what the HTTP door would answer to the same method,
/// path and body. Boxed because it calls [`Node::handle`], which calls it.
pub(crate) fn forwarded(node: &Node, req: ForwardReq) -> BoxFuture<'_, Response> {
    Box::pin(async move {
        let a = match Method::from_bytes(req.method.as_bytes()) {
            // The HTTP door routes by the path alone, without the query.
            Ok(method) => {
                let path = req.path.split_once('?').map_or(req.path.as_str(), |(p, _)| p);
                answer(node, &method, path, &req.body).await
            }
            Err(_) => error_answer(&ErrorBody::bad_request(format!(
                "invalid HTTP method {:?}",
                req.method
            ))),
        };
        Response::Forwarded { status: a.status.as_u16(), body: a.body }
    })
}

/// Answers `method path` (no query) with `body`: the one endpoint table of the node's HTTP
/// endpoints, for both doors.
pub(crate) async fn answer(node: &Node, method: &Method, path: &str, body: &[u8]) -> Answer {
    match route(node, method, path, body).await {
        Ok(a) => a,
        Err(e) => error_answer(&e),
    }
}

/// Which methods each endpoint takes: the contract's, plus POST where original clients
/// send a body with GET or DELETE.
fn allowed(path: &str) -> Option<&'static [Method]> {
    Some(match path {
        "/home" | "/heartbeat" => &[Method::GET],
        "/config" => &[Method::POST, Method::PUT],
        "/copy" | "/read" => &[Method::GET, Method::POST],
        "/write" => &[Method::POST, Method::PUT],
        "/update" => &[Method::PUT, Method::POST],
        "/del" => &[Method::DELETE, Method::POST],
        _ => return None,
    })
}

async fn route(node: &Node, method: &Method, path: &str, body: &[u8]) -> Result<Answer, ErrorBody> {
    let Some(methods) = allowed(path) else {
        return Err(ErrorBody::not_found(format!("'{path}' endpoint does not exist in server")));
    };
    if !methods.contains(method) {
        return Ok(json_answer(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({
                "message": format!("<Error> method {method} is not allowed on '{path}'"),
                "status": "failure"
            }),
        ));
    }
    if path == "/heartbeat" {
        node.health()?;
        return Ok(Answer { status: StatusCode::OK, body: Vec::new() });
    }
    if path == "/home" {
        let _ = node.handle(Request::Home).await?;
        return Ok(json_answer(
            StatusCode::OK,
            &json!({"message": format!("Hello from Server: {}", node.name()), "status": "successful"}),
        ));
    }
    let body = protocol::json::object_body(body)?;
    // The schema that rows of a read answer are written back with.
    let mut read_schema = None;
    let req = match path {
        "/config" => Request::Config(ConfigReq {
            schema: protocol::json::schema_from_json(field(&body, "schema")?)?,
            shards: protocol::json::shard_specs_from_json(field(&body, "shards")?)?,
        }),
        "/copy" => Request::Copy(CopyReq { shards: string_list(&body, "shards")? }),
        "/read" => {
            let range = field(&body, "Stud_id")?;
            if !range.is_object() {
                return Err(ErrorBody::bad_request(
                    "field 'Stud_id' must be an object {\"low\": ..., \"high\": ...}",
                ));
            }
            let shard = string_field(&body, "shard")?;
            read_schema = Some(node.schema_of(&shard)?);
            Request::Read(ReadReq {
                shard,
                low: key_field(range, "low")?,
                high: key_field(range, "high")?,
                min_lsn: 0,
                consistency: protocol::Consistency::Default,
            })
        }
        "/write" => {
            let shard = string_field(&body, "shard")?;
            let schema = node.schema_of(&shard)?;
            let curr_idx = match body.get("curr_idx") {
                None | Some(Json::Null) => None,
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    ErrorBody::bad_request("field 'curr_idx' must be a non-negative integer")
                })?),
            };
            // Every row is checked first: a bad row is named (400) whatever the count.
            let rows = rows_from_json(&schema, field(&body, "data")?)?;
            node.row_limits().check_write(rows.len())?;
            Request::Write(WriteReq { rows, shard, curr_idx })
        }
        "/update" => {
            let shard = string_field(&body, "shard")?;
            let schema = node.schema_of(&shard)?;
            let key = key_field(&body, "Stud_id")?;
            let row = row_from_json(&schema, field(&body, "data")?)?;
            Request::Update(UpdateReq { shard, key, row })
        }
        "/del" => Request::Delete(DeleteReq {
            shard: string_field(&body, "shard")?,
            key: key_field(&body, "Stud_id")?,
            only_if: None,
        }),
        _ => {
            return Err(ErrorBody::not_found(format!("'{path}' endpoint does not exist in server")))
        }
    };
    let reply = node.handle(req).await?;
    match &reply {
        Response::Read { rows, .. } => node.row_limits().check_read(rows.len())?,
        Response::Copy { shards } => {
            node.row_limits().check_read(shards.iter().map(|(_, rows)| rows.len()).sum())?
        }
        _ => {}
    }
    Ok(json_answer(StatusCode::OK, &answer_json(node, reply, read_schema.as_ref())?))
}

/// The contract's JSON for a successful answer.
fn answer_json(
    node: &Node,
    answer: Response,
    read_schema: Option<&protocol::Schema>,
) -> Result<Json, ErrorBody> {
    Ok(match answer {
        Response::Home { name } => {
            json!({"message": format!("Hello from Server: {name}"), "status": "successful"})
        }
        Response::Heartbeat => json!({"status": "success"}),
        Response::Configured { name, shards } => {
            let list: Vec<String> = shards.iter().map(|s| format!("{name}:{s}")).collect();
            json!({"message": format!("{} configured", list.join(", ")), "status": "success"})
        }
        Response::Copy { shards } => {
            let mut out = serde_json::Map::new();
            for (id, rows) in shards {
                let schema = node.schema_of(&id)?;
                out.insert(id, rows_to_json(&schema, &rows));
            }
            out.insert("status".into(), json!("success"));
            Json::Object(out)
        }
        Response::Read { rows, .. } => {
            let data = match read_schema {
                Some(schema) => rows_to_json(schema, &rows),
                None => return Err(ErrorBody::internal("read answer without its schema")),
            };
            json!({"data": data, "status": "success"})
        }
        Response::Written { current_idx, .. } => {
            json!({"message": "Data entries added", "current_idx": current_idx, "status": "success"})
        }
        Response::Updated { key, .. } => {
            json!({"message": format!("Data entry for Stud_id:{key} updated"), "status": "success"})
        }
        Response::Deleted { key, .. } => {
            json!({"message": format!("Data entry with Stud_id:{key} removed"), "status": "success"})
        }
        other => return Err(ErrorBody::internal(format!("no JSON form for the answer {other:?}"))),
    })
}

fn field<'a>(body: &'a Json, name: &str) -> Result<&'a Json, ErrorBody> {
    body.get(name).ok_or_else(|| ErrorBody::bad_request(format!("missing field '{name}'")))
}

fn string_field(body: &Json, name: &str) -> Result<String, ErrorBody> {
    match field(body, name)? {
        Json::String(s) => Ok(s.clone()),
        _ => Err(ErrorBody::bad_request(format!("field '{name}' must be a string"))),
    }
}

fn string_list(body: &Json, name: &str) -> Result<Vec<String>, ErrorBody> {
    let wrong = || ErrorBody::bad_request(format!("field '{name}' must be an array of strings"));
    field(body, name)?
        .as_array()
        .ok_or_else(wrong)?
        .iter()
        .map(|v| v.as_str().map(str::to_string).ok_or_else(wrong))
        .collect()
}

fn error_answer(e: &ErrorBody) -> Answer {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_answer(status, &json!({"message": e.message, "status": "failure"}))
}

fn json_answer(status: StatusCode, body: &Json) -> Answer {
    Answer { status, body: serde_json::to_vec(body).unwrap_or_default() }
}

/// The HTTP door's response: a JSON body with its content type, or an empty body.
fn http_response(a: Answer) -> HttpResponse {
    let json = !a.body.is_empty();
    let mut r = hyper::Response::new(protocol::budget::Answer::new(a.body));
    *r.status_mut() = a.status;
    if json {
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    r
}
