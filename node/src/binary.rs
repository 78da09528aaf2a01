//! The binary door: `protocol::server` (handshake, pipelined requests, batched answers)
//! in front of the node, with the one authorization rule of every door
//! (`protocol::authz`): what changes the cluster (configuration, replication commands) needs
//! a session authenticated with the cluster secret, or no admin token set.
//!
//! A request that needs no storage work and is done at its first poll (`/home`, forwarded
//! stage-1 requests, heartbeats) is answered in the connection's own task, without a task of
//! its own: a router forwards those at a high rate, many per read.

use std::sync::Arc;

use protocol::auth::AdminToken;
use protocol::limits::ConnectionLimit;
use protocol::server::Handler;
use protocol::{ErrorBody, Request, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::node::Node;

/// The node behind its binary door.
struct Door {
    node: Arc<Node>,
    /// The admin token of the node's HTTP door, if any: the rule refuses cluster changes
    /// from unauthenticated sessions while one is set.
    admin_token: Option<AdminToken>,
}

impl Handler for Door {
    fn name(&self) -> &str {
        self.node.name()
    }

    async fn handle(&self, req: Request) -> Result<Response, ErrorBody> {
        protocol::authz::authorize_request(&req, self.admin_token.as_ref())?;
        self.node.handle(req).await
    }

    fn answers_in_place(&self, req: &Request) -> bool {
        matches!(req, Request::Home | Request::Heartbeat | Request::Forward(_))
    }
}

/// Accepts binary-protocol connections until `cancel`, at most `limit` at once.
pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    admin_token: Option<AdminToken>,
    limit: Arc<ConnectionLimit>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let door = Arc::new(Door { node, admin_token });
    protocol::server::serve_with_limit(listener, door, cancel, tracker, limit).await
}
