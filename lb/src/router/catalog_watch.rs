//! The router's long poll of the database metadata (`WatchCatalog`): ask for anything newer
//! than the catalog version the router routes by, build the next [`DbTable`] and swap it in,
//! ask again. While the manager is unreachable the router keeps routing by the last version
//! and retries with backoff. [`Router::fetch_catalog`] asks once without waiting, for the
//! moments a request cannot wait for the watch (right after an admin call, or before
//! answering "database not initialized").

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::ErrorBody;
use tokio_util::sync::CancellationToken;

use super::db_table::DbTable;
use super::Router;
use crate::control::{CatalogView, ControlClient, ControlRequest, ControlResponse};

/// How long the manager may hold one catalog watch.
const WATCH_WAIT: Duration = Duration::from_secs(10);
/// Extra time allowed for the answer to a held watch.
const WATCH_SLACK: Duration = Duration::from_secs(5);
/// Limit on a one-off fetch of the catalog.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// First and longest wait before asking an unreachable manager again.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Limit on resolving a server's host name (addresses are normally IPs).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where an answer came from: the watch is sequential and may move the version backwards
/// (a restarted manager counts again from its own log); a fetch races the watch and only
/// ever moves it forwards.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Source {
    Watch,
    Fetch,
}

pub(super) async fn run(router: Arc<Router>, cancel: CancellationToken) {
    // A connection of its own: a held watch must not delay admin calls or fetches.
    let client = ControlClient::new(router.cfg.manager.clone(), "shardgate-router-catalog");
    let mut backoff = BACKOFF_MIN;
    let mut failing = false;
    loop {
        let version = {
            let t = router.db_table();
            if t.ready {
                t.version()
            } else {
                0
            }
        };
        let req = ControlRequest::WatchCatalog { version, wait_ms: WATCH_WAIT.as_millis() as u64 };
        let answer = tokio::select! {
            _ = cancel.cancelled() => return,
            a = client.call(req, WATCH_WAIT + WATCH_SLACK) => a,
        };
        match answer {
            Ok(ControlResponse::Catalog(view)) => {
                if failing {
                    tracing::info!(manager = %client.addr(), "catalog watch works again");
                }
                failing = false;
                backoff = BACKOFF_MIN;
                router.apply_catalog(view, Source::Watch).await;
            }
            other => {
                if !failing {
                    let why = match &other {
                        Err(e) => e.message.clone(),
                        Ok(a) => format!("unexpected answer {a:?}"),
                    };
                    tracing::warn!(
                        manager = %client.addr(),
                        error = %why,
                        "cannot watch the database catalog; routing by the last version"
                    );
                }
                failing = true;
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

impl Router {
    /// The database table the router routes by now.
    pub(crate) fn db_table(&self) -> Arc<DbTable> {
        self.db.borrow().clone()
    }

    /// Asks the manager for the catalog now (no long poll) and applies it if it is newer.
    pub(crate) async fn fetch_catalog(&self) -> Result<(), ErrorBody> {
        let req = ControlRequest::WatchCatalog { version: 0, wait_ms: 0 };
        match self.refresh.call(req, FETCH_TIMEOUT).await? {
            ControlResponse::Catalog(view) => {
                self.apply_catalog(view, Source::Fetch).await;
                Ok(())
            }
            other => Err(ErrorBody::internal(format!(
                "the shard manager answered a catalog fetch with {other:?}"
            ))),
        }
    }

    /// Makes `view` the database table (see [`Source`] for when an older one is taken).
    pub(super) async fn apply_catalog(&self, view: CatalogView, source: Source) {
        let addrs = resolve(&view).await;
        let _serial = self.apply_lock.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.db_table();
        if cur.ready {
            let accept = match source {
                Source::Fetch => view.version > cur.version(),
                Source::Watch => view.version != cur.version() || view != cur.view,
            };
            if !accept {
                return;
            }
            if view.version < cur.version() {
                tracing::warn!(
                    from = cur.version(),
                    to = view.version,
                    "catalog version went back; the shard manager restarted"
                );
            }
        }
        let primaries: Vec<(String, Option<String>)> = view
            .catalog
            .shards
            .iter()
            .map(|s| (s.id.clone(), view.catalog.primary.get(&s.id).cloned()))
            .collect();
        tracing::info!(
            version = view.version,
            initialized = view.catalog.initialized(),
            shards = view.catalog.shards.len(),
            servers = view.servers.len(),
            ?primaries,
            "database catalog changed"
        );
        let table = DbTable::build(view, &self.cfg.hash, &addrs);
        self.db.send_replace(Arc::new(table));
    }

    /// Waits until the catalog version differs from `seen` or `limit` passes; true if it
    /// changed.
    pub(crate) async fn catalog_changed(&self, seen: u64, limit: Duration) -> bool {
        let mut rx = self.db.subscribe();
        let moved = rx.wait_for(|t| t.ready && t.version() != seen);
        let changed = matches!(tokio::time::timeout(limit, moved).await, Ok(Ok(_)));
        changed
    }
}

/// Every server's binary address: parsed when it is an IP address and port, otherwise looked
/// up (host names, e.g. on a Docker network). Servers whose address does not resolve are
/// left out (the router then treats them as unreachable).
async fn resolve(view: &CatalogView) -> HashMap<String, SocketAddr> {
    let mut out = HashMap::with_capacity(view.servers.len());
    for s in &view.servers {
        if let Ok(a) = s.addr.parse::<SocketAddr>() {
            out.insert(s.name.clone(), a);
            continue;
        }
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(s.addr.as_str())).await
        {
            Ok(Ok(mut addrs)) => {
                if let Some(a) = addrs.next() {
                    out.insert(s.name.clone(), a);
                }
            }
            _ => {
                tracing::warn!(server = %s.name, addr = %s.addr, "server address does not resolve")
            }
        }
    }
    out
}
