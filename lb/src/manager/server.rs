//! The manager's door for routers: the control protocol ([`crate::control`]) over the binary
//! protocol's frames and handshake. Requests on one connection are handled concurrently (a
//! watch may be held for seconds) and answered in any order.
//!
//! With a cluster secret, the handshake admits only peers that prove it; what changes the
//! cluster (membership, the database admin operations) is then checked against the one
//! rule of every door (`protocol::authz`) as well, so a process without a secret but with an
//! admin token takes no such change from an unauthenticated session.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::limits::ConnectionLimit;
use protocol::server::Peer;
use protocol::ErrorBody;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Manager;
use crate::control::{ControlRequest, ControlRequestFrame, ControlResponse, ControlResponseFrame};

/// Answers queued for one connection's writer.
const RESPONSE_QUEUE: usize = 64;
/// The name the manager gives in handshakes.
pub const MANAGER_NAME: &str = "shardgate-manager";

/// Serves routers on `listener` until `cancel`; returns once every connection has ended.
/// At most `max_connections` (see [`super::ManagerConfig`]) authenticated connections at
/// once: one more is answered with a handshake error and closed. Connections in their
/// handshake are bounded apart (see [`protocol::server::accept_peers`]).
pub async fn serve(listener: TcpListener, manager: Arc<Manager>, cancel: CancellationToken) {
    let tracker = TaskTracker::new();
    let limit = ConnectionLimit::new("manager control", manager.cfg.max_connections);
    let (c, t) = (cancel.clone(), tracker.clone());
    protocol::server::accept_peers(listener, MANAGER_NAME, limit, cancel, tracker.clone(), {
        move |peer: Peer| {
            let (m, c, t) = (manager.clone(), c.clone(), t.clone());
            async move {
                let _permit = peer.permit;
                tracing::debug!(peer = %peer.hello.peer, "router connected");
                if let Err(e) = connection(peer.framed, m, c, t).await {
                    tracing::debug!(peer = %peer.addr, error = %e, "control connection ended");
                }
            }
        }
    })
    .await;
    tracker.close();
    tracker.wait().await;
}

async fn connection(
    framed: protocol::Framed<TcpStream>,
    manager: Arc<Manager>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) -> protocol::Result<()> {
    let (mut sink, mut frames) = framed.split();
    let (tx, mut rx) = mpsc::channel::<ControlResponseFrame>(RESPONSE_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            sink.send(protocol::wire::encode(&frame)?).await?;
        }
        Ok::<(), protocol::Error>(())
    });
    let result = loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            f = frames.next() => f,
        };
        let bytes = match frame {
            None => break Ok(()),
            Some(Ok(b)) => b,
            Some(Err(e)) => break Err(protocol::Error::from(e)),
        };
        let req: ControlRequestFrame = match protocol::wire::decode(&bytes) {
            Ok(r) => r,
            Err(e) => {
                let answer = ErrorBody::bad_request(format!("undecodable control request: {e}"));
                let _ = tx.send(ControlResponseFrame { id: 0, body: Err(answer) }).await;
                break Err(e);
            }
        };
        let (m, tx) = (manager.clone(), tx.clone());
        tracker.spawn(async move {
            let body = handle(&m, req.body).await;
            let _ = tx.send(ControlResponseFrame { id: req.id, body }).await;
        });
    };
    drop(tx);
    let _ = writer.await;
    result
}

/// Whether a control request changes the cluster (everything but the watches and
/// `/status`).
fn changes_cluster(req: &ControlRequest) -> Option<&'static str> {
    match req {
        ControlRequest::Watch { .. } | ControlRequest::WatchCatalog { .. } => None,
        ControlRequest::Add { .. } => Some("add"),
        ControlRequest::Remove { .. } => Some("rm"),
        ControlRequest::DbAdmin { op, .. } => {
            protocol::authz::admin_op_changes(*op).then(|| op.endpoint())
        }
    }
}

async fn handle(m: &Arc<Manager>, req: ControlRequest) -> Result<ControlResponse, ErrorBody> {
    if let Some(what) = changes_cluster(&req) {
        let caller = protocol::authz::Caller::Session;
        protocol::authz::authorize(caller, what, m.cfg.admin_token.as_ref())
            .map_err(|r| r.error)?;
    }
    let members = match req {
        ControlRequest::Watch { generation, version, wait_ms } => {
            m.watch(generation, version, Duration::from_millis(wait_ms)).await
        }
        ControlRequest::Add { n, hostnames } => m.add(n, &hostnames).await?,
        ControlRequest::Remove { n, hostnames } => m.remove(n, &hostnames).await?,
        ControlRequest::DbAdmin { op, body } => {
            let (status, body) = m.db_admin(op, &body).await;
            return Ok(ControlResponse::Json { status, body });
        }
        ControlRequest::WatchCatalog { version, wait_ms } => {
            let view = m.watch_catalog(version, Duration::from_millis(wait_ms)).await;
            return Ok(ControlResponse::Catalog((*view).clone()));
        }
    };
    Ok(ControlResponse::Members((*members).clone()))
}
