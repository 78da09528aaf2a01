//! How the shard manager talks to nodes: one pipelined connection per node address, every
//! call bounded by a timeout, every answer checked for the variant it must be.

use std::net::SocketAddr;
use std::time::Duration;

use client::{ConnectOptions, Pool};
use protocol::{
    AdoptReq, ConfigReq, Epoch, ErrorBody, FollowReq, Lsn, PromoteReq, ReplicaInfo,
    ReplicaStatusReq, Request, Response,
};

use super::server::MANAGER_NAME;

/// Limit on opening a connection to a node (TCP connect and handshake, each).
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Limit on one replication command (adopt, promote, follow, status).
pub(super) const NODE_CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Limit on `Config`, which may create shard logs on disk.
const NODE_CONFIG_TIMEOUT: Duration = Duration::from_secs(15);

/// Where a replica's log ends, as its answer to `Adopt` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LogEnd {
    /// Epoch of its last record.
    pub last_epoch: Epoch,
    /// LSN of its last record.
    pub last_lsn: Lsn,
    /// What it knows to be committed.
    pub commit_lsn: Lsn,
}

/// Connections to nodes.
pub(super) struct Nodes {
    pool: Pool,
}

impl Nodes {
    pub fn new() -> Nodes {
        let opts = ConnectOptions {
            connect_timeout: NODE_CONNECT_TIMEOUT,
            handshake_timeout: NODE_CONNECT_TIMEOUT,
            request_timeout: None,
        };
        Nodes { pool: Pool::with_options(MANAGER_NAME, opts) }
    }

    /// Sends `req` to the node at `addr` and waits up to `limit`.
    pub async fn call(
        &self,
        addr: &str,
        req: Request,
        limit: Duration,
    ) -> Result<Response, ErrorBody> {
        let sock: SocketAddr = addr.parse().map_err(|_| {
            ErrorBody::unavailable(format!("node address '{addr}' is not a socket address"))
        })?;
        let what = req.name();
        let conn = self.pool.get(sock).await.map_err(|e| {
            ErrorBody::unavailable(format!("cannot reach the node at {addr} for {what}; {e}"))
        })?;
        conn.call_with_timeout(req, Some(limit)).await.map_err(|e| {
            let mut body = e.into_error_body();
            body.message = format!("{} (node {addr}, {what})", body.message);
            body
        })
    }

    /// `Config`: the node holds these shards with this schema.
    pub async fn config(&self, addr: &str, req: ConfigReq) -> Result<(), ErrorBody> {
        match self.call(addr, Request::Config(req), NODE_CONFIG_TIMEOUT).await? {
            Response::Configured { .. } => Ok(()),
            other => Err(unexpected("config", &other)),
        }
    }

    /// `Adopt`: the replica takes `epoch` (refusing older ones from then on).
    pub async fn adopt(&self, addr: &str, shard: &str, epoch: Epoch) -> Result<LogEnd, ErrorBody> {
        let req = Request::Adopt(AdoptReq { shard: shard.to_string(), epoch });
        match self.call(addr, req, NODE_CALL_TIMEOUT).await? {
            Response::Adopted { last_epoch, last_lsn, commit_lsn } => {
                Ok(LogEnd { last_epoch, last_lsn, commit_lsn })
            }
            other => Err(unexpected("adopt", &other)),
        }
    }

    /// `Promote`: the replica leads its shard at the request's epoch.
    pub async fn promote(&self, addr: &str, req: PromoteReq) -> Result<ReplicaInfo, ErrorBody> {
        match self.call(addr, Request::Promote(req), NODE_CALL_TIMEOUT).await? {
            Response::Replica(info) => Ok(info),
            other => Err(unexpected("promote", &other)),
        }
    }

    /// `Follow`: the replica is a secondary of the request's primary.
    pub async fn follow(&self, addr: &str, req: FollowReq) -> Result<ReplicaInfo, ErrorBody> {
        match self.call(addr, Request::Follow(req), NODE_CALL_TIMEOUT).await? {
            Response::Replica(info) => Ok(info),
            other => Err(unexpected("follow", &other)),
        }
    }

    /// `ReplicaStatus` of one shard replica.
    pub async fn status(&self, addr: &str, shard: &str) -> Result<ReplicaInfo, ErrorBody> {
        let req = Request::ReplicaStatus(ReplicaStatusReq { shard: shard.to_string() });
        match self.call(addr, req, NODE_CALL_TIMEOUT).await? {
            Response::Replica(info) => Ok(info),
            other => Err(unexpected("replica status", &other)),
        }
    }
}

fn unexpected(what: &str, answer: &Response) -> ErrorBody {
    ErrorBody::internal(format!("unexpected answer to {what}: {answer:?}"))
}
