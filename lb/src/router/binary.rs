//! The router's binary door: the database endpoints for the Rust client (`client::Cluster`)
//! over the binary protocol, many requests in flight on one connection. Each request is the
//! typed twin of an HTTP endpoint and runs the same code behind it (`db.rs`), so both doors
//! validate, route, retry and answer alike; only the encoding differs. Admin endpoints keep
//! the contract's JSON bodies, answered with the manager's status and JSON.

use std::sync::Arc;

use protocol::server::Handler;
use protocol::{
    Consistency, DbAdminReq, DbReadReq, DbUpdateReq, ErrorBody, Request, Response, Row,
};
use rand::Rng;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::db;
use super::Router;
use crate::members::SIX_DIGITS;

/// Answers binary-protocol requests with a router.
struct Door {
    router: Arc<Router>,
}

impl Handler for Door {
    fn name(&self) -> &str {
        "router"
    }

    async fn handle(&self, req: Request) -> Result<Response, ErrorBody> {
        let endpoint = endpoint(&req);
        let answer = answer(&self.router, req).await;
        if let Some(endpoint) = endpoint {
            let status = match &answer {
                Ok(Response::Json { status, .. }) => *status,
                Ok(_) => 200,
                Err(e) => e.http_status(),
            };
            self.router.metrics.db_request(endpoint, status);
        }
        answer
    }
}

/// The contract's name of the endpoint a request stands for (the metrics label).
fn endpoint(req: &Request) -> Option<&'static str> {
    Some(match req {
        Request::DbRead(_) => "read",
        Request::DbWrite(_) => "write",
        Request::DbUpdate(_) => "update",
        Request::DbDelete(_) => "del",
        Request::DbReadServer(_) => "read_server",
        Request::DbAdmin(a) => a.op.endpoint(),
        _ => return None,
    })
}

async fn answer(router: &Router, req: Request) -> Result<Response, ErrorBody> {
    match req {
        Request::Home => Ok(Response::Home { name: "router".into() }),
        Request::Heartbeat => Ok(Response::Heartbeat),
        Request::DbRead(DbReadReq { low, high, consistency }) => {
            if low > high {
                return Err(ErrorBody::bad_request(format!(
                    "low ({low}) is greater than high ({high})"
                )));
            }
            let t = router.db_ready().await?;
            let key = rand::thread_rng().gen_range(SIX_DIGITS);
            let linearizable = consistency == Consistency::Linearizable;
            let (shards_queried, rows) =
                db::read_rows(router, &t, low, high, key, linearizable).await?;
            Ok(Response::DbRows { shards_queried, rows })
        }
        Request::DbWrite(w) => {
            let t = router.db_ready().await?;
            check_rows(&t, &w.rows)?;
            let key = rand::thread_rng().gen_range(SIX_DIGITS);
            let count = db::write_rows(router, &t, w.rows, key).await?;
            Ok(Response::DbWritten { count })
        }
        Request::DbUpdate(DbUpdateReq { key, row }) => {
            let t = router.db_ready().await?;
            check_rows(&t, std::slice::from_ref(&row))?;
            let lsn = db::update_row(router, &t, key, row).await?;
            Ok(Response::Updated { key, lsn })
        }
        Request::DbDelete(d) => {
            let t = router.db_ready().await?;
            let lsn = db::delete_row(router, &t, d.key).await?;
            Ok(Response::Deleted { key: d.key, lsn })
        }
        Request::DbReadServer(r) => {
            let t = router.db_ready().await?;
            let shards = db::server_rows(router, &t, &r.server).await?;
            Ok(Response::Copy { shards })
        }
        Request::DbAdmin(DbAdminReq { op, body }) => {
            admin_allowed(router, op)?;
            let (status, body) = db::admin_call(router, op, body).await?;
            Ok(Response::Json { status, body })
        }
        other => Err(ErrorBody::bad_request(format!(
            "'{}' is a request for a storage server; a router takes the database requests \
             (read, write, update, delete, read_server, admin)",
            other.name()
        ))),
    }
}

/// Whether an admin request may be served on this door: the one rule of every door
/// (`protocol::authz`). The binary door's requests carry no token, only the session's
/// authentication with the cluster secret; so when the HTTP admin endpoints need a token
/// and the process has no secret, the admin operations that change something are refused
/// here instead of being the way around the token.
fn admin_allowed(router: &Router, op: protocol::AdminOp) -> Result<(), ErrorBody> {
    if !protocol::authz::admin_op_changes(op) {
        return Ok(());
    }
    let caller = protocol::authz::Caller::Session;
    protocol::authz::authorize(caller, op.endpoint(), router.cfg.admin_token.as_ref())
        .map_err(|r| r.error)
}

/// Every row fits the schema (what parsing JSON checks on the HTTP door), naming the first
/// one that does not.
fn check_rows(t: &super::db_table::DbTable, rows: &[Row]) -> Result<(), ErrorBody> {
    let schema = t.schema().ok_or_else(|| ErrorBody::bad_request("database not initialized"))?;
    for (i, row) in rows.iter().enumerate() {
        schema
            .check_row(row)
            .map_err(|e| ErrorBody::new(e.kind.clone(), format!("{} (row {i})", e.bare())))?;
    }
    Ok(())
}

/// Serves the binary door on `listener` until `cancel`, then waits for the requests in
/// progress. At most `--max-connections` connections at once: one beyond the cap is refused
/// in the handshake (`HelloReply::Err`) and closed.
pub async fn serve_binary(listener: TcpListener, router: Arc<Router>, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    let limit = router.binary_conns.clone();
    let door = Arc::new(Door { router });
    protocol::server::serve_with_limit(listener, door, cancel, tracker.clone(), limit).await;
    tracker.close();
    tracker.wait().await;
}
