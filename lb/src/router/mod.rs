//! The router, stage-1 part: the data plane. It holds no membership of its own, only the
//! latest version it got from the shard manager (`watch`), turned into a routing table: the
//! ring over the replicas' integer ids and each replica's HTTP address. A membership change
//! builds the next table ([`crate::ring::Balancer::rebuild`]) and swaps it in whole, so a
//! request sees one consistent table and lookups never wait for a rebuild.
//!
//! - `http`: the HTTP front: `/rep`, `/add`, `/rm`, `/metrics`, and everything else forwarded.
//! - `proxy`: forwarding one request to one replica's HTTP shim over pooled keep-alive
//!   connections.
//! - `watch`: the long poll that keeps the table current.
//! - `metrics`: counters and the Prometheus text.

mod http;
mod metrics;
mod proxy;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::ErrorBody;
use tokio_util::sync::CancellationToken;

use crate::control::{ControlClient, ControlRequest, ControlResponse, Membership};
use crate::key::KeySource;
use crate::ring::{build, Balancer, RingError, RingKind, ServerId};

pub use http::{serve, MAX_HTTP_BODY_BYTES};

/// Default limit on one forwarded request (one attempt at one replica).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of replicas a request is tried on before the router gives up.
pub const FORWARD_ATTEMPTS: usize = 3;
/// Default limit on an `/add` or `/rm` at the manager (it starts or stops processes).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// Limit on `/add` and `/rm`.
    pub admin_timeout: Duration,
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
        }
    }
}

/// A replica as the router routes to it.
pub(crate) struct Replica {
    name: String,
    alive: bool,
    /// Requests being forwarded to it now (the `bounded` family's load).
    in_flight: AtomicU64,
    pool: proxy::ConnPool,
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
            cfg,
        });
        tokio::spawn(watch::run(router.clone(), router.cancel.clone()));
        Ok(router)
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
            let Ok(http) = x.http.parse::<SocketAddr>() else {
                tracing::warn!(replica = %x.name, http = %x.http, "unusable replica address");
                continue;
            };
            let kept = cur
                .by_id
                .get(&x.id)
                .filter(|r| r.name == x.name && r.alive == x.alive && r.pool.addr() == http);
            let replica = match kept {
                Some(r) => r.clone(),
                None => Arc::new(Replica {
                    name: x.name.clone(),
                    alive: x.alive,
                    in_flight: AtomicU64::new(0),
                    pool: proxy::ConnPool::new(http),
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
            r.in_flight.fetch_add(1, Ordering::Relaxed);
            let res = r.pool.send(out, self.cfg.forward_timeout).await;
            r.in_flight.fetch_sub(1, Ordering::Relaxed);
            match res {
                Ok(reply) => {
                    self.metrics.forwarded(&r.name);
                    return Ok(reply);
                }
                Err(e) => {
                    self.metrics.forward_failed(&r.name);
                    tracing::debug!(replica = %r.name, error = %e, "forwarding failed");
                    let retry = e.retryable(&out.method);
                    errors.push(format!("{}: {e}", r.name));
                    if !retry || attempts >= self.cfg.attempts {
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
