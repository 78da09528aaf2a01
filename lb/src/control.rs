//! The control protocol between routers and the shard manager: membership watch and the
//! stage-1 admin operations (`/add`, `/rm`).
//!
//! It rides on the binary protocol's frames, handshake and encoding (`protocol::framed`,
//! `protocol::client_handshake`, `protocol::wire`); only the message set is its own, because
//! only routers and the manager speak it (nodes never see these messages, so they live here
//! rather than in `protocol::Request`, whose every variant each node must answer).
//!
//! Format: after the handshake, every frame payload is a [`ControlRequestFrame`] (router →
//! manager) or a [`ControlResponseFrame`] (manager → router) encoded by `protocol::wire`
//! (bincode, enums by variant index: append variants, never reorder them). The manager
//! answers each request on the connection it came on, with the same `id`, in any order.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::ErrorBody;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Limit on opening a control connection (TCP connect and handshake, each).
pub const CONTROL_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One replica as the manager knows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its name, the contract's `[ID]` (`Server2`).
    pub name: String,
    /// Its integer id on the ring: random, 6 digits, fixed for the server's life (it keeps
    /// it across respawns).
    pub id: u64,
    /// `host:port` of its binary protocol.
    pub addr: String,
    /// `host:port` of its HTTP shim.
    pub http: String,
    /// Whether it answers heartbeats.
    pub alive: bool,
    /// How often it was replaced after missing heartbeats.
    pub restarts: u64,
}

/// The membership at one version: every replica in order of addition.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Membership {
    /// Random per manager start, so a router notices a restarted manager whose versions
    /// start again from 1.
    pub generation: u64,
    /// Raised by every change (add, remove, dead, replaced).
    pub version: u64,
    /// The replicas, in order of addition.
    pub members: Vec<Member>,
}

impl Membership {
    /// Names of the replicas that answer heartbeats, in order of addition.
    pub fn live_names(&self) -> Vec<String> {
        self.members.iter().filter(|m| m.alive).map(|m| m.name.clone()).collect()
    }

    /// Names of every replica, in order of addition.
    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    /// Whether `self` is newer than `(generation, version)`.
    pub fn is_newer_than(&self, generation: u64, version: u64) -> bool {
        self.generation != generation || self.version > version
    }
}

/// A router's request to the manager.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ControlRequest {
    /// The membership, as soon as it is newer than `(generation, version)` or after
    /// `wait_ms` (long poll; the manager caps the wait).
    Watch {
        /// The generation the caller knows (0: none).
        generation: u64,
        /// The version the caller knows.
        version: u64,
        /// How long to wait for a change, in milliseconds.
        wait_ms: u64,
    },
    /// `/add`: start `n` replicas, named by `hostnames` and randomly for the rest.
    Add {
        /// How many to add.
        n: u64,
        /// Names for some of them (at most `n`).
        hostnames: Vec<String>,
    },
    /// `/rm`: remove `n` replicas, those named and random ones for the rest.
    Remove {
        /// How many to remove.
        n: u64,
        /// Names of some of them (at most `n`).
        hostnames: Vec<String>,
    },
    /// A database admin endpoint forwarded by a router: the request's JSON body as text
    /// (JSON values do not go through the binary encoding). Answered with
    /// [`ControlResponse::Json`], which the router returns to its client as is.
    DbAdmin {
        /// Which endpoint.
        op: AdminOp,
        /// The HTTP request body (JSON text; may be empty).
        body: String,
    },
    /// The database metadata, answered once its version is above `version` or after
    /// `wait_ms` (a long poll): [`ControlResponse::Catalog`].
    WatchCatalog {
        /// The version the router has.
        version: u64,
        /// How long the manager may hold the answer.
        wait_ms: u64,
    },
}

/// The database admin endpoints the manager serves through routers: the same list clients
/// name on a router's binary door.
pub use protocol::AdminOp;

/// What a router needs to route data: the catalog and where each server is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct CatalogView {
    /// Bumped on every change the manager makes (catalog, addresses, liveness).
    pub version: u64,
    /// Schema, ShardT, MapT, primaries, epochs.
    pub catalog: crate::catalog::Catalog,
    /// Every server of the catalog with its addresses.
    pub servers: Vec<ServerView>,
}

/// One server as routers see it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ServerView {
    /// Its name.
    pub name: String,
    /// Its binary protocol address.
    pub addr: String,
    /// Its HTTP address.
    pub http: String,
    /// Whether it answers heartbeats.
    pub alive: bool,
}

/// The manager's answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ControlResponse {
    /// The membership (after the operation, for `Add` and `Remove`).
    Members(Membership),
    /// Answer to [`ControlRequest::DbAdmin`]: HTTP status and JSON body, returned as is.
    Json {
        /// HTTP status code.
        status: u16,
        /// JSON text.
        body: String,
    },
    /// Answer to [`ControlRequest::WatchCatalog`].
    Catalog(CatalogView),
}

/// A request and its id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ControlRequestFrame {
    /// Caller-chosen, echoed in the answer.
    pub id: u64,
    /// The request.
    pub body: ControlRequest,
}

/// The answer to the request with the same id.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ControlResponseFrame {
    /// The request's id.
    pub id: u64,
    /// Its result; errors carry the contract's message.
    pub body: Result<ControlResponse, ErrorBody>,
}

type Conn = protocol::Framed<TcpStream>;

/// A client of the manager's control protocol: one connection, one request at a time (admin
/// operations are rare and the manager serializes them anyway; a router uses a second client
/// for its long-polling watch). Reconnects on the next call after a failure.
pub struct ControlClient {
    addr: String,
    peer: String,
    conn: Mutex<Option<(Conn, u64)>>,
}

impl ControlClient {
    /// A client of the manager at `addr` (`host:port`) introducing itself as `peer`; connects
    /// on first use.
    pub fn new(addr: impl Into<String>, peer: impl Into<String>) -> ControlClient {
        ControlClient { addr: addr.into(), peer: peer.into(), conn: Mutex::new(None) }
    }

    /// The manager's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends `req` and waits up to `limit` for the answer. Transport failures are 503
    /// errors naming the manager. A request that fails on a reused connection before it was
    /// sent is retried once on a new connection.
    pub async fn call(
        &self,
        req: ControlRequest,
        limit: Duration,
    ) -> Result<ControlResponse, ErrorBody> {
        let mut slot = self.conn.lock().await;
        let reused = slot.is_some();
        let (conn, next_id) = match slot.as_mut() {
            Some(c) => c,
            None => slot.insert((self.connect().await?, 1)),
        };
        let id = *next_id;
        *next_id += 1;
        let frame = protocol::wire::encode(&ControlRequestFrame { id, body: req.clone() })
            .map_err(|e| ErrorBody::internal(format!("cannot encode a control request; {e}")))?;
        if let Err(e) = conn.send(frame.clone()).await {
            *slot = None;
            if !reused {
                return Err(self.unreachable(e));
            }
            let (conn, next_id) = slot.insert((self.connect().await?, 2));
            *next_id = id + 1;
            if let Err(e) = conn.send(frame).await {
                *slot = None;
                return Err(self.unreachable(e));
            }
        }
        let conn = &mut slot.as_mut().expect("connection just used").0;
        let read = async {
            loop {
                let bytes = match conn.next().await {
                    None => return Err(self.unreachable("connection closed")),
                    Some(Err(e)) => return Err(self.unreachable(e)),
                    Some(Ok(b)) => b,
                };
                match protocol::wire::decode::<ControlResponseFrame>(&bytes) {
                    Ok(f) if f.id == id => return Ok(f.body),
                    // The late answer to a call whose caller gave up: not ours, skip it.
                    Ok(f) if f.id < id => continue,
                    Ok(f) => {
                        return Err(ErrorBody::internal(format!(
                            "the shard manager answered request {} to request {id}",
                            f.id
                        )))
                    }
                    Err(e) => {
                        return Err(ErrorBody::internal(format!(
                            "undecodable answer from the shard manager; {e}"
                        )))
                    }
                }
            }
        };
        let answer = match tokio::time::timeout(limit, read).await {
            Err(_) => Err(ErrorBody::unavailable(format!(
                "the shard manager at {} did not answer within {limit:?}",
                self.addr
            ))),
            Ok(r) => r,
        };
        match answer {
            Ok(body) => body,
            Err(e) => {
                // The stream may hold a late answer now; start afresh next time.
                *slot = None;
                Err(e)
            }
        }
    }

    async fn connect(&self) -> Result<Conn, ErrorBody> {
        let stream =
            match tokio::time::timeout(CONTROL_CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(self.unreachable(e)),
                Err(_) => return Err(self.unreachable("connect timed out")),
            };
        let _ = stream.set_nodelay(true);
        let mut framed = protocol::framed(stream);
        match tokio::time::timeout(
            CONTROL_CONNECT_TIMEOUT,
            protocol::client_handshake(&mut framed, &self.peer),
        )
        .await
        {
            Ok(Ok(_name)) => Ok(framed),
            Ok(Err(e)) => Err(self.unreachable(e)),
            Err(_) => Err(self.unreachable("handshake timed out")),
        }
    }

    fn unreachable(&self, why: impl std::fmt::Display) -> ErrorBody {
        ErrorBody::unavailable(format!("the shard manager at {} is unreachable; {why}", self.addr))
    }
}

impl std::fmt::Debug for ControlClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlClient").field("addr", &self.addr).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_wire_encoding() {
        let req = ControlRequestFrame {
            id: 7,
            body: ControlRequest::Add { n: 2, hostnames: vec!["S5".into()] },
        };
        let bytes = protocol::wire::encode(&req).unwrap();
        assert_eq!(protocol::wire::decode::<ControlRequestFrame>(&bytes).unwrap(), req);
        let m = Membership {
            generation: 1,
            version: 2,
            members: vec![Member {
                name: "Server1".into(),
                id: 123456,
                addr: "127.0.0.1:1".into(),
                http: "127.0.0.1:2".into(),
                alive: true,
                restarts: 0,
            }],
        };
        let resp = ControlResponseFrame { id: 7, body: Ok(ControlResponse::Members(m)) };
        let bytes = protocol::wire::encode(&resp).unwrap();
        assert_eq!(protocol::wire::decode::<ControlResponseFrame>(&bytes).unwrap(), resp);
    }

    #[test]
    fn newer_means_another_generation_or_a_higher_version() {
        let m = Membership { generation: 5, version: 3, members: vec![] };
        assert!(m.is_newer_than(0, 0));
        assert!(m.is_newer_than(5, 2));
        assert!(!m.is_newer_than(5, 3));
        assert!(m.is_newer_than(4, 9));
    }
}
