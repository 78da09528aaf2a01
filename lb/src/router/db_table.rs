//! The database metadata made routable: one immutable [`DbTable`] per catalog version, built
//! from the manager's [`CatalogView`] and swapped whole (like the stage-1 `RouteTable`), so a
//! request sees one consistent version and lookups never wait.
//!
//! Per shard it holds the primary (when alive) and a read ring over the shard's live
//! replicas that serve reads (voters, not learners still catching up), of the same family as
//! the request ring (`--hash`). Pure code: no IO.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use protocol::{Epoch, Schema, ShardId};

use crate::catalog::Catalog;
use crate::control::CatalogView;
use crate::members::SIX_DIGITS;
use crate::ring::{build, Balancer, MixedParams, RingKind, ServerId};

/// One catalog version, routable.
pub(crate) struct DbTable {
    /// False until the first view arrived from the manager.
    pub ready: bool,
    /// The view as the manager sent it.
    pub view: CatalogView,
    /// Every shard of ShardT.
    pub shards: HashMap<ShardId, ShardRoute>,
    /// Every server of the view.
    pub servers: HashMap<String, ServerRoute>,
}

/// Where a server is.
#[derive(Clone, Debug)]
pub(crate) struct ServerRoute {
    /// Its binary protocol address; `None` when it did not resolve.
    pub addr: Option<SocketAddr>,
    /// Whether the manager hears its heartbeats.
    pub alive: bool,
}

/// How one shard is reached.
pub(crate) struct ShardRoute {
    /// Its primary, when it has one that is alive and reachable.
    pub primary: Option<String>,
    /// Its epoch as the catalog knows it.
    pub epoch: Epoch,
    /// Its live replicas that serve reads (voters) with an address, in catalog order.
    pub live: Vec<String>,
    ring: Arc<dyn Balancer>,
    names: HashMap<ServerId, String>,
}

impl ShardRoute {
    /// The replicas to try for a read with ring key `key`, in order: the ring's first choice
    /// and its next candidates over the live replicas, then the primary if the ring did not
    /// already give it. A `linearizable` read goes to the primary only.
    pub fn read_order(&self, key: u64, linearizable: bool) -> Vec<String> {
        if linearizable {
            return self.primary.iter().cloned().collect();
        }
        let mut out: Vec<String> = self
            .ring
            .candidates(key, self.live.len())
            .into_iter()
            .filter_map(|id| self.names.get(&id).cloned())
            .collect();
        // A ring family that gives fewer candidates than servers still tries every replica.
        for r in &self.live {
            if !out.contains(r) {
                out.push(r.clone());
            }
        }
        if let Some(p) = self.primary.as_ref().filter(|p| !out.contains(p)) {
            out.push(p.clone());
        }
        out
    }
}

impl DbTable {
    /// The table before any view arrived.
    pub fn empty() -> DbTable {
        DbTable {
            ready: false,
            view: CatalogView::default(),
            shards: HashMap::new(),
            servers: HashMap::new(),
        }
    }

    /// The table of `view`: `addrs` holds the resolved binary address of each server whose
    /// address resolved; `kind` is the ring family of the read rings.
    pub fn build(
        view: CatalogView,
        kind: &RingKind,
        addrs: &HashMap<String, SocketAddr>,
    ) -> DbTable {
        let mut servers = HashMap::with_capacity(view.servers.len());
        for s in &view.servers {
            servers.insert(
                s.name.clone(),
                ServerRoute { addr: addrs.get(&s.name).copied(), alive: s.alive },
            );
        }
        let usable = |name: &str| servers.get(name).is_some_and(|s| s.alive && s.addr.is_some());
        let mut shards = HashMap::with_capacity(view.catalog.shards.len());
        for range in &view.catalog.shards {
            // Reads go to voters only: a learner still catching up may miss committed rows.
            // A catalog that names no voters for the shard serves from all its replicas.
            let mut serving = view.catalog.serving_replicas(&range.id);
            if serving.is_empty() {
                serving = view.catalog.replicas(&range.id);
            }
            let live: Vec<String> = serving.into_iter().filter(|r| usable(r)).collect();
            let (ids, names) = server_ids(&live);
            let ring = build(kind, &ids).unwrap_or_else(|e| {
                tracing::warn!(shard = %range.id, error = %e, "cannot build the shard's read ring of this family; using the mixed ring");
                build(&RingKind::Mixed(MixedParams::default()), &ids)
                    .expect("the mixed ring holds any number of distinct servers")
            });
            let primary =
                view.catalog.primary.get(&range.id).filter(|p| usable(p.as_str())).cloned();
            let epoch = view.catalog.epoch.get(&range.id).copied().unwrap_or(0);
            shards.insert(range.id.clone(), ShardRoute { primary, epoch, live, ring, names });
        }
        DbTable { ready: true, view, shards, servers }
    }

    /// The catalog version this table was built from (0 before any).
    pub fn version(&self) -> u64 {
        self.view.version
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.view.catalog
    }

    /// The table schema, once `/init` ran.
    pub fn schema(&self) -> Option<&Schema> {
        self.view.catalog.schema.as_ref()
    }

    /// The binary address of server `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.servers.get(name).and_then(|s| s.addr)
    }
}

/// Ring ids for server names: a 6-digit number derived from the name (so every router, and
/// every catalog version, puts a replica at the same place on its shard's ring), moved to
/// the next free number on a collision.
fn server_ids(names: &[String]) -> (Vec<ServerId>, HashMap<ServerId, String>) {
    let span = SIX_DIGITS.end() - SIX_DIGITS.start() + 1;
    let mut ids = Vec::with_capacity(names.len());
    let mut by_id = HashMap::with_capacity(names.len());
    for name in names {
        let mut id = SIX_DIGITS.start() + xxhash_rust::xxh3::xxh3_64(name.as_bytes()) % span;
        while by_id.contains_key(&id) {
            id = if id == *SIX_DIGITS.end() { *SIX_DIGITS.start() } else { id + 1 };
        }
        by_id.insert(id, name.clone());
        ids.push(id);
    }
    (ids, by_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogEvent;
    use crate::control::ServerView;
    use serde_json::json;

    fn view(alive: &[bool]) -> CatalogView {
        let config = json!({"N": 4,
            "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]},
            "shards": [{"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": 100},
                       {"Stud_id_low": 100, "Shard_id": "sh2", "Shard_size": 100}],
            "servers": {"S0": ["sh1", "sh2"], "S1": ["sh1"], "S2": ["sh1", "sh2"], "S3": ["sh2"]}});
        let e = Catalog::default()
            .init(&config, &mut || unreachable!(), &mut |_, _| unreachable!())
            .unwrap();
        let mut catalog = Catalog::replay([&e]);
        catalog.apply(&CatalogEvent::Primary {
            shard: "sh1".into(),
            epoch: 2,
            primary: "S1".into(),
        });
        let servers = (0..4)
            .map(|i| ServerView {
                name: format!("S{i}"),
                addr: format!("127.0.0.1:{}", 1000 + i),
                http: String::new(),
                alive: alive[i],
            })
            .collect();
        CatalogView { version: 7, catalog, servers }
    }

    fn addrs(v: &CatalogView) -> HashMap<String, SocketAddr> {
        v.servers.iter().map(|s| (s.name.clone(), s.addr.parse().unwrap())).collect()
    }

    #[test]
    fn shards_get_their_live_replicas_primary_and_epoch() {
        let v = view(&[true, true, false, true]);
        let t = DbTable::build(v.clone(), &RingKind::default(), &addrs(&v));
        assert!(t.ready);
        assert_eq!(t.version(), 7);
        let sh1 = &t.shards["sh1"];
        assert_eq!(sh1.live, ["S0", "S1"]);
        assert_eq!(sh1.primary.as_deref(), Some("S1"));
        assert_eq!(sh1.epoch, 2);
        let sh2 = &t.shards["sh2"];
        assert_eq!(sh2.live, ["S0", "S3"]);
        assert_eq!(sh2.primary, None);
        assert_eq!(t.addr("S3"), Some("127.0.0.1:1003".parse().unwrap()));
    }

    #[test]
    fn learners_serve_no_reads() {
        let mut v = view(&[true, true, true, true]);
        v.catalog.voters.insert("sh1".into(), vec!["S0".into(), "S1".into()]);
        let t = DbTable::build(v.clone(), &RingKind::default(), &addrs(&v));
        assert_eq!(t.shards["sh1"].live, ["S0", "S1"]);
        for key in 100_000..100_100u64 {
            assert!(!t.shards["sh1"].read_order(key, false).contains(&"S2".to_string()));
        }
        // No voters known for the shard: every replica serves.
        v.catalog.voters.clear();
        let t = DbTable::build(v.clone(), &RingKind::default(), &addrs(&v));
        assert_eq!(t.shards["sh1"].live, ["S0", "S1", "S2"]);
    }

    #[test]
    fn a_dead_primary_is_no_primary() {
        let v = view(&[true, false, true, true]);
        let t = DbTable::build(v.clone(), &RingKind::default(), &addrs(&v));
        assert_eq!(t.shards["sh1"].primary, None);
        assert_eq!(t.shards["sh1"].live, ["S0", "S2"]);
    }

    #[test]
    fn reads_spread_over_every_live_replica_and_end_at_the_primary() {
        let v = view(&[true, true, true, true]);
        for kind in RingKind::families() {
            let t = DbTable::build(v.clone(), &kind, &addrs(&v));
            let sh1 = &t.shards["sh1"];
            let mut firsts = std::collections::HashSet::new();
            for key in 100_000..100_400u64 {
                let order = sh1.read_order(key, false);
                let mut sorted = order.clone();
                sorted.sort();
                assert_eq!(sorted, ["S0", "S1", "S2"], "{kind}");
                firsts.insert(order[0].clone());
            }
            assert_eq!(firsts.len(), 3, "{kind}: reads must reach every replica");
            assert_eq!(sh1.read_order(5, true), ["S1"]);
        }
    }

    #[test]
    fn ids_are_stable_six_digit_and_distinct() {
        let names: Vec<String> = (0..500).map(|i| format!("Server{i}")).collect();
        let (ids, by_id) = server_ids(&names);
        assert_eq!(by_id.len(), 500);
        assert!(ids.iter().all(|id| SIX_DIGITS.contains(id)));
        assert_eq!(server_ids(&names).0, ids);
    }
}
