//! The router, stage-1 part: the data plane. It holds no membership of its own, only the
//! latest version it got from the shard manager (`watch`), turned into a routing table: the
//! ring over the replicas' integer ids and each replica's binary-protocol address. A
//! membership change builds the next table ([`crate::ring::Balancer::rebuild`]) and swaps it
//! in whole, so a request sees one consistent table and lookups never wait for a rebuild.
//!
//! The database part (stages 2 and 3) works the same way: the latest catalog version from the
//! manager (`catalog_watch`) becomes a [`db_table::DbTable`] with a read ring per shard,
//! swapped whole; data requests are routed by shard to nodes over the binary protocol.
//!
//! - `http`: the HTTP front: `/rep`, `/add`, `/rm`, `/metrics`, the database endpoints, and
//!   everything else forwarded.
//! - `proxy`: forwarding one request to one replica over the binary protocol (a
//!   `Request::Forward` on the pipelined connection to that node).
//! - `watch`: the long poll that keeps the table current.
//! - `metrics`: counters and the Prometheus text.
//! - `db`: the database endpoints: validation, grouping by shard, the contract's JSON, and
//!   the admin endpoints forwarded to the manager.
//! - `db_calls`: calls to the nodes: reads over a shard's ring, changes through its primary
//!   with refresh and retry, the per-shard LSN floor that keeps reads from going back.
//! - `db_table`: the catalog made routable (pure code).
//! - `catalog_watch`: the long poll that keeps the database table current.

mod binary;
mod catalog_watch;
mod db;
mod db_calls;
mod db_table;
mod fronts;
mod http;
mod metrics;
mod proxy;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use protocol::auth::AdminToken;
use protocol::limits::{ConnectionLimit, DoorLimits};
use protocol::ErrorBody;
use tokio_util::sync::CancellationToken;

use crate::control::{ControlClient, ControlRequest, ControlResponse, Membership};
use crate::key::KeySource;
use crate::ring::{build, Balancer, RingError, RingKind, ServerId};

pub use binary::serve_binary;
pub use http::{serve, BODY_READ_TIMEOUT, MAX_HTTP_BODY_BYTES};

/// Default limit on one forwarded request (one attempt at one replica).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of replicas a request is tried on before the router gives up.
pub const FORWARD_ATTEMPTS: usize = 3;
/// Default limit on an `/add` or `/rm` at the manager (it starts or stops processes).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time a database request keeps retrying (a new primary, a replica behind) before
/// the router gives up and answers an error.
pub const DB_RETRY_DEADLINE: Duration = Duration::from_secs(3);
/// Limits on opening a connection to a node (TCP connect, then handshake).
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// How a router runs.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The shard manager's control address (`host:port`).
    pub manager: String,
    /// The request → replica mapping.
    pub hash: RingKind,
    /// Where a request's key comes from.
    pub key: KeySource,
    /// Limit on one forwarding attempt.
    pub forward_timeout: Duration,
    /// Replicas tried per request.
    pub attempts: usize,
    /// Limit on `/add` and `/rm` (and the database admin endpoints).
    pub admin_timeout: Duration,
    /// How long a database request keeps retrying before it fails.
    pub db_deadline: Duration,
    /// Connection caps (HTTP and binary door, each), the HTTP idle timeout, row caps of
    /// `/write` and `/read` on both doors.
    pub limits: DoorLimits,
    /// When set, the admin endpoints over HTTP (`/init`, `/add`, `/rm`, `/primary_elect`,
    /// and `/config` forwarded to a node) need `Authorization: Bearer TOKEN`; on the binary
    /// door, admin requests then need the cluster secret.
    pub admin_token: Option<AdminToken>,
    /// Threads that serve the HTTP connections, each with its own connections to the nodes
    /// (see `fronts`); default one per core.
    pub front_threads: usize,
}

impl RouterConfig {
    /// The defaults, with the manager at `manager`.
    pub fn new(manager: impl Into<String>) -> RouterConfig {
        RouterConfig {
            manager: manager.into(),
            hash: RingKind::default(),
            key: KeySource::default(),
            forward_timeout: FORWARD_TIMEOUT,
            attempts: FORWARD_ATTEMPTS,
            admin_timeout: ADMIN_TIMEOUT,
            db_deadline: DB_RETRY_DEADLINE,
            limits: DoorLimits::default(),
            admin_token: None,
            front_threads: default_front_threads(),
        }
    }
}

/// One front thread per core the process may use.
fn default_front_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// A replica as the router routes to it.
pub(crate) struct Replica {
    name: String,
    alive: bool,
    /// Its binary protocol address, where requests are forwarded.
    addr: SocketAddr,
    /// Requests being forwarded to it now (the `bounded` family's load).
    in_flight: AtomicU64,
    /// Its counters in the metrics (kept across table rebuilds).
    counters: Arc<metrics::ReplicaCounters>,
}

/// One request counted in a replica's in-flight load until dropped, even when the request
/// is abandoned mid-way (its client went away).
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicU64) -> InFlight<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One membership version made routable. Immutable; replaced whole.
pub(crate) struct RouteTable {
    /// False until the first membership arrived.
    ready: bool,
    balancer: Arc<dyn Balancer>,
    by_id: HashMap<ServerId, Arc<Replica>>,
    membership: Membership,
}

impl RouteTable {
    fn live_names(&self) -> Vec<String> {
        self.membership.live_names()
    }
}

/// The router. Create with [`Router::start`], serve HTTP with [`serve`].
pub struct Router {
    cfg: RouterConfig,
    table: tokio::sync::watch::Sender<Arc<RouteTable>>,
    /// Serializes table rebuilds (the watch and admin answers both apply memberships).
    apply_lock: Mutex<()>,
    admin: ControlClient,
    metrics: metrics::Metrics,
    cancel: CancellationToken,
    /// The database table routed by; replaced whole on every catalog version.
    db: tokio::sync::watch::Sender<Arc<db_table::DbTable>>,
    /// Pipelined binary connections to the nodes, one per node (stage-1 forwards and
    /// database calls alike).
    nodes: client::Pool,
    /// Per shard, the highest LSN seen in an answer (see `db_calls`).
    lsns: RwLock<HashMap<protocol::ShardId, Arc<AtomicU64>>>,
    /// The database admin endpoints' own connection to the manager (an `/init` can take long;
    /// it must not hold up stage-1 `/add`).
    db_admin: ControlClient,
    /// One-off catalog fetches, apart from the long-polling watch.
    refresh: ControlClient,
    /// The cap on connections of the HTTP door.
    http_conns: Arc<ConnectionLimit>,
    /// The cap on connections of the binary door.
    binary_conns: Arc<ConnectionLimit>,
}

impl Router {
    /// A router for `cfg`, watching the manager from now on (until [`Router::stop`]).
    pub fn start(cfg: RouterConfig) -> Result<Arc<Router>, RingError> {
        let balancer = build(&cfg.hash, &[])?;
        let empty = RouteTable {
            ready: false,
            balancer,
            by_id: HashMap::new(),
            membership: Membership::default(),
        };
        let router = Arc::new(Router {
            admin: ControlClient::new(cfg.manager.clone(), "shardgate-router"),
            table: tokio::sync::watch::channel(Arc::new(empty)).0,
            apply_lock: Mutex::new(()),
            metrics: metrics::Metrics::default(),
            cancel: CancellationToken::new(),
            db: tokio::sync::watch::channel(Arc::new(db_table::DbTable::empty())).0,
            nodes: node_pool(),
            lsns: RwLock::new(HashMap::new()),
            db_admin: ControlClient::new(cfg.manager.clone(), "shardgate-router-db"),
            refresh: ControlClient::new(cfg.manager.clone(), "shardgate-router-refresh"),
            http_conns: ConnectionLimit::new("http", cfg.limits.max_connections),
            binary_conns: ConnectionLimit::new("binary", cfg.limits.max_connections),
            cfg,
        });
        tokio::spawn(watch::run(router.clone(), router.cancel.clone()));
        tokio::spawn(catalog_watch::run(router.clone(), router.cancel.clone()));
        Ok(router)
    }

    /// Waits until the router routes data by a catalog of at least `version`; false if it
    /// did not within `limit`.
    pub async fn wait_catalog(&self, version: u64, limit: Duration) -> bool {
        let mut rx = self.db.subscribe();
        let reached = rx.wait_for(|t| t.ready && t.version() >= version);
        let ok = matches!(tokio::time::timeout(limit, reached).await, Ok(Ok(_)));
        ok
    }

    /// The catalog version data is routed by (`None` before the first one arrived).
    pub fn catalog_version(&self) -> Option<u64> {
        let t = self.db_table();
        t.ready.then(|| t.version())
    }

    /// Waits until the first membership arrived; false if it did not within `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let mut rx = self.table.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|t| t.ready)).await.is_ok_and(|r| r.is_ok())
    }

    /// The membership the router routes by now.
    pub fn membership(&self) -> Membership {
        self.table().membership.clone()
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Stops watching the manager.
    pub fn stop(&self) {
        self.cancel.cancel();
    }

    fn table(&self) -> Arc<RouteTable> {
        self.table.borrow().clone()
    }

    /// Makes `m` the routing table if it is newer than the current one.
    pub(crate) fn apply(&self, m: Membership) {
        let _serial = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.table();
        if cur.ready && !m.is_newer_than(cur.membership.generation, cur.membership.version) {
            return;
        }
        let ids: Vec<ServerId> = m.members.iter().map(|x| x.id).collect();
        let same_manager = cur.ready && cur.membership.generation == m.generation;
        let built =
            if same_manager { cur.balancer.rebuild(&ids) } else { build(&self.cfg.hash, &ids) };
        let balancer = match built {
            Ok(b) => b,
            Err(e) => {
                // Keep routing on the old ring: its ids that left are skipped as unknown.
                tracing::error!(error = %e, "cannot build the ring for the new membership; keeping the old one");
                cur.balancer.clone()
            }
        };
        let mut by_id = HashMap::with_capacity(m.members.len());
        for x in &m.members {
            let Ok(addr) = x.addr.parse::<SocketAddr>() else {
                tracing::warn!(replica = %x.name, addr = %x.addr, "unusable replica address");
                continue;
            };
            let kept = cur
                .by_id
                .get(&x.id)
                .filter(|r| r.name == x.name && r.alive == x.alive && r.addr == addr);
            let replica = match kept {
                Some(r) => r.clone(),
                None => Arc::new(Replica {
                    name: x.name.clone(),
                    alive: x.alive,
                    addr,
                    in_flight: AtomicU64::new(0),
                    counters: self.metrics.replica(&x.name),
                }),
            };
            by_id.insert(x.id, replica);
        }
        log_change(&cur.membership, &m);
        self.table.send_replace(Arc::new(RouteTable {
            ready: true,
            balancer,
            by_id,
            membership: m,
        }));
    }

    /// `/add` or `/rm` at the manager; the answer's membership is applied at once, so the
    /// next request already routes by it.
    pub(crate) async fn admin(&self, req: ControlRequest) -> Result<Membership, ErrorBody> {
        match self.admin.call(req, self.cfg.admin_timeout).await? {
            ControlResponse::Members(m) => {
                self.apply(m.clone());
                Ok(m)
            }
            other => Err(ErrorBody::internal(format!(
                "the shard manager answered a membership change with {other:?}"
            ))),
        }
    }

    /// Forwards `out` to the replica the ring picks for `key`, then to the next candidates
    /// while attempts fail (retryable failures only).
    pub(crate) async fn forward(
        &self,
        nodes: &client::Pool,
        out: &proxy::Outgoing,
        key: u64,
    ) -> Result<proxy::Reply, ErrorBody> {
        let t = self.table();
        if !t.ready {
            return Err(ErrorBody::unavailable("no membership from the shard manager yet"));
        }
        if !t.by_id.values().any(|r| r.alive) {
            return Err(ErrorBody::unavailable("no server replica is available"));
        }
        let load =
            |id: ServerId| t.by_id.get(&id).map_or(0, |r| r.in_flight.load(Ordering::Relaxed));
        let first = t.balancer.pick(key, &load);
        let mut order: Vec<ServerId> = first.into_iter().collect();
        let mut errors: Vec<String> = Vec::new();
        let mut attempts = 0;
        let mut i = 0;
        let mut expanded = false;
        loop {
            if i == order.len() {
                if expanded {
                    break;
                }
                expanded = true;
                for id in t.balancer.candidates(key, t.by_id.len().max(1)) {
                    if !order.contains(&id) {
                        order.push(id);
                    }
                }
                continue;
            }
            let id = order[i];
            i += 1;
            let Some(r) = t.by_id.get(&id).filter(|r| r.alive) else { continue };
            attempts += 1;
            let res = {
                let _counted = InFlight::enter(&r.in_flight);
                proxy::send(nodes, r.addr, out, self.cfg.forward_timeout).await
            };
            match res {
                Ok(reply) => {
                    r.counters.forwarded();
                    return Ok(reply);
                }
                Err(e) => {
                    r.counters.failed();
                    tracing::debug!(replica = %r.name, error = %e, "forwarding failed");
                    let retry = e.retryable(&out.method);
                    errors.push(format!("{}: {e}", r.name));
                    if !retry {
                        if let Some(answer) = e.into_answer() {
                            return Err(answer);
                        }
                        break;
                    }
                    if attempts >= self.cfg.attempts {
                        break;
                    }
                }
            }
        }
        if errors.is_empty() {
            return Err(ErrorBody::unavailable("no server replica is available"));
        }
        Err(ErrorBody::unavailable(format!("no replica answered; {}", errors.join("; "))))
    }
}

/// Pipelined connections to the nodes, opened on first use (the router's own, and one pool
/// per front thread).
pub(crate) fn node_pool() -> client::Pool {
    let options = client::ConnectOptions {
        connect_timeout: NODE_CONNECT_TIMEOUT,
        handshake_timeout: NODE_CONNECT_TIMEOUT,
        request_timeout: None,
    };
    client::Pool::with_options("shardgate-router", options)
}

/// One log line per membership change, saying what changed.
fn log_change(old: &Membership, new: &Membership) {
    let added: Vec<&str> = new
        .members
        .iter()
        .filter(|m| !old.members.iter().any(|o| o.name == m.name))
        .map(|m| m.name.as_str())
        .collect();
    let removed: Vec<&str> = old
        .members
        .iter()
        .filter(|o| !new.members.iter().any(|m| m.name == o.name))
        .map(|o| o.name.as_str())
        .collect();
    let dead: Vec<&str> =
        new.members.iter().filter(|m| !m.alive).map(|m| m.name.as_str()).collect();
    tracing::info!(
        version = new.version,
        live = new.members.iter().filter(|m| m.alive).count(),
        total = new.members.len(),
        ?added,
        ?removed,
        ?dead,
        "membership changed"
    );
}

/// How many servers a ring of `kind` can hold (`None`: no limit). The assignment ring has
/// `slots / k` room: each server needs k slots.
pub fn ring_capacity(kind: &RingKind) -> Option<usize> {
    match kind {
        RingKind::Assignment(p) => Some((p.slots / p.virtual_per_server) as usize),
        _ => None,
    }
}
