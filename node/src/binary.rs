//! The binary door: `protocol::server` (handshake, pipelined requests, batched answers)
//! with the node as its handler.
//!
//! A request that needs no storage work and is done at its first poll (`/home`, forwarded
//! stage-1 requests, heartbeats) is answered in the connection's own task, without a task of
//! its own: a router forwards those at a high rate, many per read.

use std::future::Future;
use std::sync::Arc;

use protocol::limits::ConnectionLimit;
use protocol::server::Handler;
use protocol::{ErrorBody, Request, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::node::Node;

impl Handler for Node {
    fn name(&self) -> &str {
        Node::name(self)
    }

    fn handle(&self, req: Request) -> impl Future<Output = Result<Response, ErrorBody>> + Send {
        Node::handle(self, req)
    }

    fn answers_in_place(&self, req: &Request) -> bool {
        matches!(req, Request::Home | Request::Heartbeat | Request::Forward(_))
    }
}

/// Accepts binary-protocol connections until `cancel`, at most `limit` at once.
pub(crate) async fn serve(
    listener: TcpListener,
    node: Arc<Node>,
    limit: Arc<ConnectionLimit>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    protocol::server::serve_with_limit(listener, node, cancel, tracker, limit).await
}
