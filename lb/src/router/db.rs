//! The database's data endpoints on the router (`/read`, `/write`, `/update`, `/del`,
//! `/read/<server>`) and the admin endpoints it forwards to the shard manager (`/init`,
//! `/status`, `/add` and `/rm` of stage 2, `/primary_elect`).
//!
//! Requests are validated completely against the catalog's schema and ShardT before any node
//! is called, so bad input changes nothing. Rows are written back with the schema
//! (`rows_to_json`), so values come back as they were written.
//!
//! # Writes across shards
//! `/write` groups its rows by shard and writes each group through its shard's primary,
//! different shards in parallel. A shard's write is all or nothing, but the groups are not
//! one transaction. The router narrows the gap: with more than one group it first checks on
//! each primary that none of the keys exists yet (the usual reason a node refuses a group),
//! and if a node still refuses its group with a 400 (a concurrent writer won the race) the
//! groups already written are deleted again before the 400 is answered: each row only if it
//! is still exactly as this request wrote it (`DeleteReq::only_if`; node/tests/binary.rs
//! `a_conditional_delete_...`), so a row another client updated meanwhile is left to that
//! client. What it cannot undo
//! is a node failing mid-way (no primary within the deadline): then the answer is an error
//! that names the groups that were written, those that were not, and those that may or may
//! not have been.

use std::collections::{BTreeMap, HashSet};

use hyper::StatusCode;
use protocol::json::{key_field, row_from_json, rows_from_json, rows_to_json};
use protocol::{
    DeleteReq, ErrorBody, ErrorKind, Lsn, ReadReq, Request, Response, Row, UpdateReq, WriteReq,
};
use serde_json::{json, Value as Json};

use super::db_table::DbTable;
use super::http::{json_response, HttpResponse};
use super::Router;
use crate::control::{AdminOp, ControlRequest, ControlResponse};

/// Limit on reading one shard for `/read/<server>` (whole shards, and the node may first wait
/// to catch up with the LSN floor).
const SERVER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a stage-1 `/add` or `/rm` body is rather the database form: `/add` with a
/// `servers` object, `/rm` with a `servers` field.
pub(super) fn is_db_form(op: AdminOp, body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Json>(body) else { return false };
    match (op, v.get("servers")) {
        (AdminOp::Add, Some(s)) => s.is_object(),
        (AdminOp::Remove, Some(_)) => true,
        _ => false,
    }
}

/// Forwards an admin endpoint to the manager and answers with its status and body as they
/// are. A successful change is fetched into the routing table before the answer, so the
/// client's next request already routes by it.
pub(super) async fn admin(
    router: &Router,
    op: AdminOp,
    body: &[u8],
) -> Result<HttpResponse, ErrorBody> {
    let body = String::from_utf8(body.to_vec())
        .map_err(|_| ErrorBody::bad_request("request body is not UTF-8 text"))?;
    let (status, body) = admin_call(router, op, body).await?;
    let status = StatusCode::from_u16(status).map_err(|_| {
        ErrorBody::internal(format!("the shard manager answered {op:?} with status {status}"))
    })?;
    Ok(super::http::raw_json_response(status, body.into_bytes()))
}

/// An admin endpoint at the manager: its HTTP status and JSON body. A successful change is
/// fetched into the routing table before this returns, so the caller's next request already
/// routes by it.
pub(super) async fn admin_call(
    router: &Router,
    op: AdminOp,
    body: String,
) -> Result<(u16, String), ErrorBody> {
    let answer = router
        .db_admin
        .call(ControlRequest::DbAdmin { op, body }, router.cfg.admin_timeout)
        .await?;
    let ControlResponse::Json { status, body } = answer else {
        return Err(ErrorBody::internal(format!(
            "the shard manager answered {op:?} with {answer:?}"
        )));
    };
    if (200..300).contains(&status) && op != AdminOp::Status {
        if let Err(e) = router.fetch_catalog().await {
            tracing::warn!(error = %e.message, ?op, "cannot fetch the catalog after an admin call; the watch will bring it");
        }
    }
    Ok((status, body))
}

/// `POST /read` (and `GET /read` with a body): rows of every shard meeting the range, in
/// Stud_id order.
pub(super) async fn read(
    router: &Router,
    body: &[u8],
    key: u64,
) -> Result<HttpResponse, ErrorBody> {
    let t = router.db_ready().await?;
    let schema = t.schema().expect("an initialized catalog has a schema");
    let body = protocol::json::object_body(body)?;
    let range = field(&body, "Stud_id")?;
    if !range.is_object() {
        return Err(ErrorBody::bad_request(
            "field 'Stud_id' must be an object {\"low\": ..., \"high\": ...}",
        ));
    }
    let low = key_field(range, "low")?;
    let high = key_field(range, "high")?;
    if low > high {
        return Err(ErrorBody::bad_request(format!("low ({low}) is greater than high ({high})")));
    }
    let linearizable = match body.get("consistency") {
        None | Some(Json::Null) => false,
        Some(Json::String(s)) if s == "linearizable" => true,
        Some(Json::String(s)) if s == "default" => false,
        Some(_) => {
            return Err(ErrorBody::bad_request(
                "field 'consistency' must be \"linearizable\" or \"default\"",
            ))
        }
    };
    let (queried, rows) = read_rows(router, &t, low, high, key, linearizable).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"shards_queried": queried, "data": rows_to_json(schema, &rows), "status": "success"}),
    ))
}

/// Rows of every shard meeting `[low, high]` (`low <= high`), in Stud_id order, and the
/// shards read; a 413 when they are more than `--max-read-rows` (a shard's own answer is
/// also refused by its node when it would not fit one frame, `protocol::MAX_FRAME_LEN`).
pub(super) async fn read_rows(
    router: &Router,
    t: &DbTable,
    low: i64,
    high: i64,
    key: u64,
    linearizable: bool,
) -> Result<(Vec<String>, Vec<Row>), ErrorBody> {
    let shards = t.catalog().shards_in(low, high);
    let reads = shards.iter().map(|s| {
        let last = (s.low as i128 + s.size as i128 - 1).min(i64::MAX as i128) as i64;
        router.read_shard(&s.id, low.max(s.low), high.min(last), key, linearizable)
    });
    let results = futures::future::join_all(reads).await;
    let mut rows: Vec<Row> = Vec::new();
    for r in results {
        rows.extend(r?);
    }
    router.cfg.limits.rows.check_read(rows.len())?;
    Ok((shards.iter().map(|s| s.id.clone()).collect(), rows))
}

/// `POST /write`: every row validated, then written by shard.
pub(super) async fn write(
    router: &Router,
    body: &[u8],
    key: u64,
) -> Result<HttpResponse, ErrorBody> {
    let t = router.db_ready().await?;
    let schema = t.schema().expect("an initialized catalog has a schema");
    let body = protocol::json::object_body(body)?;
    let rows = rows_from_json(schema, field(&body, "data")?)?;
    let total = write_rows(router, &t, rows, key).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"message": format!("{total} Data entries added"), "status": "success"}),
    ))
}

/// Writes rows that fit the schema: grouped by shard, each group through its primary,
/// groups in parallel; the number written. More rows than `--max-write-rows` are a 413 and
/// nothing is written.
pub(super) async fn write_rows(
    router: &Router,
    t: &DbTable,
    rows: Vec<Row>,
    key: u64,
) -> Result<u64, ErrorBody> {
    router.cfg.limits.rows.check_write(rows.len())?;
    let groups = group_by_shard(t, rows)?;
    let total: usize = groups.iter().map(|g| g.1.len()).sum();
    if groups.len() > 1 {
        precheck_absent(router, &groups, key).await?;
    }
    let results =
        futures::future::join_all(groups.iter().map(|(s, rows)| write_group(router, s, rows, key)))
            .await;
    if results.iter().all(|r| r.result.is_ok()) {
        return Ok(total as u64);
    }
    Err(partial_write_error(router, &groups, results).await)
}

/// `PUT /update`: one row replaced through its shard's primary.
pub(super) async fn update(router: &Router, body: &[u8]) -> Result<HttpResponse, ErrorBody> {
    let t = router.db_ready().await?;
    let schema = t.schema().expect("an initialized catalog has a schema");
    let body = protocol::json::object_body(body)?;
    let key = key_field(&body, "Stud_id")?;
    let row = row_from_json(schema, field(&body, "data")?)?;
    update_row(router, &t, key, row).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"message": format!("Data entry for Stud_id: {key} updated"), "status": "success"}),
    ))
}

/// Replaces the row `key` (a row that fits the schema) through its shard's primary.
pub(super) async fn update_row(
    router: &Router,
    t: &DbTable,
    key: i64,
    row: Row,
) -> Result<Lsn, ErrorBody> {
    if row.key != key {
        return Err(ErrorBody::bad_request(format!(
            "data.Stud_id ({}) differs from Stud_id ({key})",
            row.key
        )));
    }
    let shard = shard_of(t, key)?;
    let req = Request::Update(UpdateReq { shard: shard.clone(), key, row });
    match router.primary_call(&shard, req).await.result? {
        Response::Updated { lsn, .. } => Ok(lsn),
        other => Err(unexpected("an update", &other)),
    }
}

/// `DELETE /del`: one row removed through its shard's primary.
pub(super) async fn delete(router: &Router, body: &[u8]) -> Result<HttpResponse, ErrorBody> {
    let t = router.db_ready().await?;
    let body = protocol::json::object_body(body)?;
    let key = key_field(&body, "Stud_id")?;
    delete_row(router, &t, key).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({"message": format!("Data entry with Stud_id:{key} removed from all replicas"), "status": "success"}),
    ))
}

/// Removes the row `key` through its shard's primary.
pub(super) async fn delete_row(router: &Router, t: &DbTable, key: i64) -> Result<Lsn, ErrorBody> {
    let shard = shard_of(t, key)?;
    let req = Request::Delete(DeleteReq { shard: shard.clone(), key, only_if: None });
    match router.primary_call(&shard, req).await.result? {
        Response::Deleted { lsn, .. } => Ok(lsn),
        other => Err(unexpected("a delete", &other)),
    }
}

/// `GET /read/<server>`: every shard on that server, with all its rows as that server holds
/// them. Each shard is read with the router's LSN floor (a full-range read rather than a
/// `Copy`, which carries none), so the answer is never older than what this router already
/// acknowledged or returned; a server still behind that after the node's wait is a 503.
pub(super) async fn read_server(router: &Router, name: &str) -> Result<HttpResponse, ErrorBody> {
    let t = router.db_ready().await?;
    let shards = server_rows(router, &t, name).await?;
    let schema = t.schema().expect("an initialized catalog has a schema");
    let mut out = serde_json::Map::new();
    for (id, rows) in shards {
        out.insert(id, rows_to_json(schema, &rows));
    }
    out.insert("status".into(), json!("success"));
    Ok(json_response(StatusCode::OK, &Json::Object(out)))
}

/// Every shard of server `name` with all its rows as that server holds them (see
/// [`read_server`]); a 413 when they are more than `--max-read-rows` together.
pub(super) async fn server_rows(
    router: &Router,
    t: &DbTable,
    name: &str,
) -> Result<Vec<(String, Vec<Row>)>, ErrorBody> {
    let Some(shards) = t.catalog().shards_of(name) else {
        return Err(ErrorBody::not_found(format!("server {name} does not exist")));
    };
    let shards = shards.to_vec();
    if shards.is_empty() {
        return Ok(Vec::new());
    }
    let Some(addr) = t.addr(name) else {
        return Err(ErrorBody::unavailable(format!("server {name} has no usable address")));
    };
    let reads = shards.iter().map(|id| async move {
        router.ensure_floor(id).await?;
        let req = Request::Read(ReadReq {
            shard: id.clone(),
            low: i64::MIN,
            high: i64::MAX,
            min_lsn: router.shard_lsn(id),
            consistency: protocol::Consistency::Default,
        });
        match router.call_node(addr, req, SERVER_READ_TIMEOUT).await {
            Ok(Response::Read { rows, applied_lsn }) => {
                router.raise_lsn(id, applied_lsn);
                Ok(rows)
            }
            Ok(other) => Err(unexpected("a read", &other)),
            Err(e) => {
                let e = e.into_body(name);
                Err(ErrorBody::new(e.kind.clone(), format!("shard {id}: {}", e.bare())))
            }
        }
    });
    let results = futures::future::join_all(reads).await;
    let mut out = Vec::with_capacity(shards.len());
    for (id, rows) in shards.into_iter().zip(results) {
        out.push((id, rows?));
    }
    router.cfg.limits.rows.check_read(out.iter().map(|(_, rows)| rows.len()).sum())?;
    Ok(out)
}

impl Router {
    /// The table to serve a data request by: ready and initialized. The watch may be a moment
    /// behind an `/init` made through another router, so an uninitialized table is fetched
    /// again once before the request is refused.
    pub(crate) async fn db_ready(&self) -> Result<std::sync::Arc<DbTable>, ErrorBody> {
        let t = self.db_table();
        if t.ready && t.catalog().initialized() {
            return Ok(t);
        }
        let fetched = self.fetch_catalog().await;
        let t = self.db_table();
        if t.ready && t.catalog().initialized() {
            return Ok(t);
        }
        if !t.ready {
            let why = fetched.err().map_or_else(String::new, |e| format!("; {}", e.bare()));
            return Err(ErrorBody::unavailable(format!(
                "no database metadata from the shard manager yet{why}"
            )));
        }
        Err(ErrorBody::bad_request("database not initialized; call /init first"))
    }
}

/// The shard that holds `key`, or the 404 of a row that cannot exist.
fn shard_of(t: &DbTable, key: i64) -> Result<String, ErrorBody> {
    t.catalog().shard_for(key).map(|s| s.id.clone()).ok_or_else(|| {
        ErrorBody::not_found(format!(
            "no data entry with Stud_id:{key}; no shard holds that Stud_id"
        ))
    })
}

/// Rows grouped by shard, in key order of the shards; refuses a row outside every shard and
/// a Stud_id given twice, naming the row.
fn group_by_shard(t: &DbTable, rows: Vec<Row>) -> Result<Vec<(String, Vec<Row>)>, ErrorBody> {
    let mut seen = HashSet::with_capacity(rows.len());
    let mut groups: BTreeMap<(i64, String), Vec<Row>> = BTreeMap::new();
    for (i, row) in rows.into_iter().enumerate() {
        if !seen.insert(row.key) {
            return Err(ErrorBody::bad_request(format!(
                "Stud_id {} appears twice in the request (row {i})",
                row.key
            )));
        }
        let Some(s) = t.catalog().shard_for(row.key) else {
            return Err(ErrorBody::bad_request(format!(
                "Stud_id {} is outside every shard's range (row {i})",
                row.key
            )));
        };
        groups.entry((s.low, s.id.clone())).or_default().push(row);
    }
    Ok(groups.into_iter().map(|((_, id), rows)| (id, rows)).collect())
}

/// Refuses a multi-shard write whose keys already exist, before any group is written.
async fn precheck_absent(
    router: &Router,
    groups: &[(String, Vec<Row>)],
    key: u64,
) -> Result<(), ErrorBody> {
    let checks = groups.iter().map(|(shard, rows)| async move {
        let (lo, hi) = key_span(rows);
        let existing = router.read_shard(shard, lo, hi, key, true).await?;
        let have: HashSet<i64> = existing.iter().map(|r| r.key).collect();
        match rows.iter().find(|r| have.contains(&r.key)) {
            Some(r) => Err(ErrorBody::bad_request(format!(
                "Stud_id {} already exists in shard {shard}",
                r.key
            ))),
            None => Ok(()),
        }
    });
    for r in futures::future::join_all(checks).await {
        r?;
    }
    Ok(())
}

/// The smallest and largest key of a non-empty group.
fn key_span(rows: &[Row]) -> (i64, i64) {
    let lo = rows.iter().map(|r| r.key).min().unwrap_or(0);
    let hi = rows.iter().map(|r| r.key).max().unwrap_or(0);
    (lo, hi)
}

/// How one group's write ended.
struct GroupResult {
    result: Result<u64, ErrorBody>,
    /// The group may have been written although the result is an error.
    ambiguous: bool,
}

/// Writes one group through its shard's primary. After an attempt that broke off once sent,
/// "already exists" may be that attempt's own doing: if the shard holds exactly these rows,
/// the write succeeded.
async fn write_group(router: &Router, shard: &str, rows: &[Row], key: u64) -> GroupResult {
    let req =
        Request::Write(WriteReq { shard: shard.to_string(), curr_idx: None, rows: rows.to_vec() });
    let out = router.primary_call(shard, req).await;
    match out.result {
        Ok(Response::Written { count, .. }) => GroupResult { result: Ok(count), ambiguous: false },
        Ok(other) => GroupResult { result: Err(unexpected("a write", &other)), ambiguous: true },
        Err(e) if out.ambiguous && e.kind == ErrorKind::BadRequest => {
            let (lo, hi) = key_span(rows);
            match router.read_shard(shard, lo, hi, key, true).await {
                Ok(have) if rows.iter().all(|r| have.contains(r)) => {
                    GroupResult { result: Ok(rows.len() as u64), ambiguous: false }
                }
                _ => GroupResult { result: Err(e), ambiguous: true },
            }
        }
        Err(e) => GroupResult { result: Err(e), ambiguous: out.ambiguous },
    }
}

/// The answer to a write where some group failed. A group refused with a 400 makes the whole
/// request a 400, and the groups written meanwhile are deleted again; otherwise the error
/// names what was written and what was not.
async fn partial_write_error(
    router: &Router,
    groups: &[(String, Vec<Row>)],
    results: Vec<GroupResult>,
) -> ErrorBody {
    let written: Vec<usize> = (0..groups.len()).filter(|&i| results[i].result.is_ok()).collect();
    let first_err = results
        .iter()
        .position(|r| r.result.is_err())
        .expect("called with at least one failed group");
    let refused = results.iter().position(|r| {
        !r.ambiguous && matches!(&r.result, Err(e) if e.kind == ErrorKind::BadRequest)
    });
    if written.is_empty() && !results.iter().any(|r| r.ambiguous) {
        let i = refused.unwrap_or(first_err);
        return results[i].result.clone().expect_err("a failed group");
    }
    let any_ambiguous = results.iter().any(|r| r.ambiguous);
    if let Some(i) = refused.filter(|_| !any_ambiguous) {
        let e = results[i].result.clone().expect_err("a refused group");
        let undo = written.iter().flat_map(|&w| {
            let shard = &groups[w].0;
            groups[w].1.iter().map(move |r| async move {
                // Only the row as this request wrote it: one another client changed since
                // is theirs now, and stays (the node answers 404 and removes nothing).
                let req = Request::Delete(DeleteReq {
                    shard: shard.clone(),
                    key: r.key,
                    only_if: Some(r.clone()),
                });
                match router.primary_call(shard, req).await.result {
                    Err(d) if d.kind != ErrorKind::NotFound => {
                        Some(format!("Stud_id {} in {shard} ({})", r.key, d.bare()))
                    }
                    _ => None,
                }
            })
        });
        let left: Vec<String> =
            futures::future::join_all(undo).await.into_iter().flatten().collect();
        if left.is_empty() {
            return e;
        }
        return ErrorBody::bad_request(format!(
            "{}; rows written to other shards before the refusal could not all be removed: {}",
            e.bare(),
            left.join(", ")
        ));
    }
    let describe = |i: usize| format!("{} ({} rows)", groups[i].0, groups[i].1.len());
    let mut parts: Vec<String> = Vec::new();
    if !written.is_empty() {
        parts.push(format!(
            "written: {}",
            written.iter().map(|&i| describe(i)).collect::<Vec<_>>().join(", ")
        ));
    }
    let failed = |amb: bool| -> Vec<String> {
        (0..groups.len())
            .filter(|&i| results[i].ambiguous == amb)
            .filter_map(|i| {
                results[i].result.as_ref().err().map(|e| format!("{} [{}]", describe(i), e.bare()))
            })
            .collect()
    };
    let not_written = failed(false);
    if !not_written.is_empty() {
        parts.push(format!("not written: {}", not_written.join(", ")));
    }
    let unknown = failed(true);
    if !unknown.is_empty() {
        parts.push(format!("may or may not have been written: {}", unknown.join(", ")));
    }
    let kind = results[first_err].result.as_ref().expect_err("a failed group").kind.clone();
    let kind = if kind == ErrorKind::BadRequest { ErrorKind::Unavailable } else { kind };
    ErrorBody::new(kind, format!("the write was not completed; {}", parts.join("; ")))
}

fn unexpected(what: &str, answer: &Response) -> ErrorBody {
    ErrorBody::internal(format!("a node answered {what} with {answer:?}"))
}

fn field<'a>(body: &'a Json, name: &str) -> Result<&'a Json, ErrorBody> {
    match body.get(name) {
        None | Some(Json::Null) => Err(ErrorBody::bad_request(format!("missing field '{name}'"))),
        Some(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_forms_of_add_and_rm_are_told_apart() {
        assert!(is_db_form(AdminOp::Add, br#"{"n": 2, "servers": {"Server4": ["sh1"]}}"#));
        assert!(!is_db_form(AdminOp::Add, br#"{"n": 2, "hostnames": ["S5"]}"#));
        assert!(!is_db_form(AdminOp::Add, br#"{"n": 2, "servers": ["S5"]}"#));
        assert!(is_db_form(AdminOp::Remove, br#"{"n": 2, "servers": ["Server4"]}"#));
        assert!(is_db_form(AdminOp::Remove, br#"{"n": 1, "servers": []}"#));
        assert!(!is_db_form(AdminOp::Remove, br#"{"n": 2, "hostnames": ["S5"]}"#));
        assert!(!is_db_form(AdminOp::Remove, b"not json"));
    }

    #[test]
    fn bodies_must_be_objects_with_their_fields() {
        assert_eq!(
            protocol::json::object_body(b" ").unwrap_err().message,
            "<Error> request body must be a JSON object"
        );
        assert_eq!(
            protocol::json::object_body(b"[1]").unwrap_err().message,
            "<Error> request body must be a JSON object"
        );
        assert!(protocol::json::object_body(b"{")
            .unwrap_err()
            .message
            .starts_with("<Error> request body is not valid JSON"));
        let v = protocol::json::object_body(br#"{"data": null}"#).unwrap();
        assert_eq!(field(&v, "data").unwrap_err().message, "<Error> missing field 'data'");
    }
}
