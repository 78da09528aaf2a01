//! The database half of the shard manager: the catalog and its log, the versioned view
//! routers watch, and the admin endpoints routers forward (`/init`, `/status`, `/add`,
//! `/rm`, `/primary_elect`), each answered with the contract's JSON.
//!
//! Every change is a [`CatalogEvent`] made durable in the manager's log and applied to the
//! catalog ([`Manager::persist`]) before any node or router hears of it. Admin operations
//! and supervisor rounds (`supervisor`) run one at a time under the `ops` lock; the catalog
//! itself sits behind a short lock that readers (the view, `/status`) take briefly.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protocol::{ErrorBody, ShardId};
use rand::Rng;
use serde_json::{json, Value as Json};
use tokio::sync::{watch, Notify};

use super::catalog_log::{CatalogLog, MemberEvent};
use super::election::{live_addr, EpochChange, Previous, Promoted, Ties};
use super::nodes::Nodes;
use super::Manager;
use crate::catalog::{Catalog, CatalogEvent, Refusal};
use crate::control::{AdminOp, CatalogView, ServerView};
use crate::members::SIX_DIGITS;

/// Longest a catalog watch is held before it is answered unchanged.
pub const MAX_CATALOG_WAIT: Duration = Duration::from_secs(5);
/// How long `/add` waits for new servers of existing shards to catch up and become voters
/// before it answers (they keep catching up afterwards; routers read only from voters).
pub const ADD_CATCH_UP_WAIT: Duration = Duration::from_secs(30);
/// Most epoch changes `/rm` makes for one shard.
const MAX_HANDOVER_STEPS: usize = 32;

/// The database state of the manager.
pub(super) struct Db {
    state: Mutex<DbState>,
    /// The manager's log (`None` in memory only); written off the async workers, one
    /// write at a time under `writing`, so events apply in log order.
    log: Option<Arc<CatalogLog>>,
    writing: tokio::sync::Mutex<()>,
    /// Serializes admin operations and supervisor rounds; holds what they share.
    pub ops: tokio::sync::Mutex<Runtime>,
    view: watch::Sender<Arc<CatalogView>>,
    pub nodes: Nodes,
    /// Asks the supervisor for a round now.
    pub kick: Notify,
}

struct DbState {
    catalog: Catalog,
    version: u64,
}

/// What admin operations and supervisor rounds share (under the `ops` lock). In memory
/// only: after a restart every shard is elected again, which is always safe.
#[derive(Default)]
pub(super) struct Runtime {
    /// Each shard's primary as set up by this process.
    pub promoted: HashMap<ShardId, Promoted>,
    /// Servers configured by this process: name → the address of the process configured.
    pub joined: HashMap<String, String>,
    /// Servers an `/rm` is removing (not learners any more, never elected).
    pub removing: Vec<String>,
    /// The last failure reported per shard (each is logged once).
    pub failing: HashMap<ShardId, String>,
    /// Per shard, the learner being watched and the commit LSN it must reach.
    pub catch_up: HashMap<ShardId, (String, protocol::Lsn)>,
}

impl Db {
    pub fn new(catalog: Catalog, log: Option<CatalogLog>) -> Db {
        // Versions start from the clock, so a restarted manager's are above the last ones.
        let version = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let view = CatalogView { version, catalog: catalog.clone(), servers: Vec::new() };
        Db {
            state: Mutex::new(DbState { catalog, version }),
            log: log.map(Arc::new),
            writing: tokio::sync::Mutex::new(()),
            ops: tokio::sync::Mutex::new(Runtime::default()),
            view: watch::channel(Arc::new(view)).0,
            nodes: Nodes::new(),
            kick: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, DbState> {
        // Critical sections leave the state consistent (apply after a durable append).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs a log write (an fsync) on tokio's blocking threads, not on an async worker.
async fn off_worker(
    write: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), ErrorBody> {
    match tokio::task::spawn_blocking(write).await {
        Ok(r) => r.map_err(ErrorBody::internal),
        Err(e) => Err(ErrorBody::internal(format!("the manager's log write did not finish: {e}"))),
    }
}

fn refusal(r: Refusal) -> ErrorBody {
    ErrorBody::bad_request(r.0)
}

fn failure(e: &ErrorBody) -> (u16, String) {
    (e.http_status(), json!({"message": e.message, "status": "failure"}).to_string())
}

/// A request body as JSON: empty is `{}`.
fn parse_body(body: &str) -> Result<Json, ErrorBody> {
    if body.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(body)
        .map_err(|e| ErrorBody::bad_request(format!("the request body is not valid JSON; {e}")))
}

fn random_pick(n: usize, k: usize) -> Vec<usize> {
    rand::seq::index::sample(&mut rand::thread_rng(), n, k.min(n)).into_vec()
}

impl Manager {
    /// The catalog as it is now.
    pub fn catalog(&self) -> Catalog {
        self.db.lock().catalog.clone()
    }

    /// The latest catalog view (what routers watch).
    pub fn catalog_view(&self) -> Arc<CatalogView> {
        self.db.view.borrow().clone()
    }

    /// The catalog view as soon as its version differs from `version`, or as it is after
    /// `wait` (capped at [`MAX_CATALOG_WAIT`]) or once the manager stops.
    pub async fn watch_catalog(&self, version: u64, wait: Duration) -> Arc<CatalogView> {
        let mut rx = self.db.view.subscribe();
        let changed = async {
            loop {
                if rx.borrow_and_update().version != version {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep(wait.min(MAX_CATALOG_WAIT)) => {}
            _ = self.cancel.cancelled() => {}
        }
        self.catalog_view()
    }

    /// Makes `ev` durable in the manager's log, applies it, and publishes the new view.
    pub(super) async fn persist(&self, ev: CatalogEvent) -> Result<(), ErrorBody> {
        let _in_order = self.db.writing.lock().await;
        if let Some(log) = self.db.log.clone() {
            let logged = ev.clone();
            off_worker(move || log.append_catalog(&logged)).await?;
        }
        self.db.lock().catalog.apply(&ev);
        self.publish_view();
        Ok(())
    }

    /// Makes a membership change durable in the manager's log.
    pub(super) async fn persist_member(&self, ev: MemberEvent) -> Result<(), ErrorBody> {
        let _in_order = self.db.writing.lock().await;
        match self.db.log.clone() {
            Some(log) => off_worker(move || log.append_member(&ev)).await,
            None => Ok(()),
        }
    }

    /// Publishes a new view version if the catalog or a server's address or liveness changed.
    pub(super) fn publish_view(&self) {
        let ms = self.membership();
        let mut st = self.db.lock();
        let servers: Vec<ServerView> = st
            .catalog
            .servers
            .iter()
            .map(|(name, _)| match ms.members.iter().find(|m| &m.name == name) {
                Some(m) => ServerView {
                    name: name.clone(),
                    addr: m.addr.clone(),
                    http: m.http.clone(),
                    alive: m.alive,
                },
                None => ServerView {
                    name: name.clone(),
                    addr: String::new(),
                    http: String::new(),
                    alive: false,
                },
            })
            .collect();
        let current = self.db.view.borrow().clone();
        if current.catalog == st.catalog && current.servers == servers {
            return;
        }
        st.version += 1;
        let view = CatalogView { version: st.version, catalog: st.catalog.clone(), servers };
        self.db.view.send_replace(Arc::new(view));
    }

    /// A database admin endpoint: HTTP status and JSON body, as the router returns them.
    pub async fn db_admin(self: &Arc<Self>, op: AdminOp, body: &str) -> (u16, String) {
        if self.is_stopping() {
            return failure(&ErrorBody::unavailable("the shard manager is shutting down"));
        }
        let result = match op {
            AdminOp::Status => Ok(self.catalog().status_json()),
            _ => match parse_body(body) {
                Err(e) => Err(e),
                Ok(json) => match op {
                    AdminOp::Init => self.db_init(&json).await,
                    AdminOp::Add => self.db_add(&json).await,
                    AdminOp::Remove => self.db_remove(&json).await,
                    AdminOp::PrimaryElect => self.db_primary_elect(&json).await,
                    AdminOp::Status => unreachable!("answered above"),
                },
            },
        };
        match result {
            Ok(j) => (200, j.to_string()),
            Err(e) => {
                tracing::info!(?op, status = e.http_status(), error = %e.message, "database admin refused");
                failure(&e)
            }
        }
    }

    /// `/init`: the catalog, the servers it names, their shards, a primary per shard.
    async fn db_init(self: &Arc<Self>, body: &Json) -> Result<Json, ErrorBody> {
        let mut rt = self.db.ops.lock().await;
        let cat = self.catalog();
        let mut taken: HashSet<String> = self.membership().names().into_iter().collect();
        let ev = cat
            .init(
                body,
                &mut || loop {
                    let name = format!("Server{}", rand::thread_rng().gen_range(SIX_DIGITS));
                    if taken.insert(name.clone()) {
                        return name;
                    }
                },
                &mut random_pick,
            )
            .map_err(refusal)?;
        let CatalogEvent::Init { servers, .. } = &ev else { unreachable!("init makes Init") };
        let names: Vec<String> = servers.iter().map(|(n, _)| n.clone()).collect();
        self.ensure_members(&names).await?;
        self.persist(ev).await?;
        self.round(&mut rt).await;
        let cat = self.catalog();
        let missing: Vec<String> = cat
            .shards
            .iter()
            .filter(|s| !rt.promoted.contains_key(&s.id))
            .map(|s| match rt.failing.get(&s.id) {
                Some(why) => format!("{} ({why})", s.id),
                None => s.id.clone(),
            })
            .collect();
        if !missing.is_empty() {
            return Err(ErrorBody::unavailable(format!(
                "the database is configured, but these shards have no primary yet: {}; the \
                 shard manager keeps trying",
                missing.join(", ")
            )));
        }
        Ok(json!({"message": "Configured Database", "status": "success"}))
    }

    /// `/add`: new shards and new servers; a new server of an existing shard joins it as a
    /// learner and becomes a voter once caught up (waited for, within a bound).
    async fn db_add(self: &Arc<Self>, body: &Json) -> Result<Json, ErrorBody> {
        let mut rt = self.db.ops.lock().await;
        let cat = self.catalog();
        let taken: HashSet<String> = self.membership().names().into_iter().collect();
        let (ev, message) = cat
            .add(body, &mut || loop {
                let id = rand::thread_rng().gen_range(SIX_DIGITS) as u32;
                if !taken.contains(&format!("Server{id}")) {
                    return id;
                }
            })
            .map_err(refusal)?;
        let CatalogEvent::Add { servers, .. } = &ev else { unreachable!("add makes Add") };
        let added = servers.clone();
        let names: Vec<String> = added.iter().map(|(n, _)| n.clone()).collect();
        self.ensure_members(&names).await?;
        self.persist(ev).await?;
        self.round(&mut rt).await;
        drop(rt);
        self.wait_for_voters(&added, ADD_CATCH_UP_WAIT).await?;
        let n = self.catalog().servers.len();
        Ok(json!({"N": n, "message": message, "status": "successful"}))
    }

    /// Waits until every server of `added` is a voter of each of its shards, in an epoch
    /// that has its primary and is committed by a majority of its voters (so a voter change
    /// right after `/add` starts from a committed one; election.rs, "Voter changes"); fails
    /// after `limit` (the servers stay, as learners until they have caught up).
    async fn wait_for_voters(
        &self,
        added: &[(String, Vec<ShardId>)],
        limit: Duration,
    ) -> Result<(), ErrorBody> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut rx = self.db.view.subscribe();
        let shards: BTreeSet<ShardId> = added.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
        loop {
            let cat = self.catalog();
            let mut pending: Vec<String> = added
                .iter()
                .flat_map(|(n, shards)| {
                    let cat = &cat;
                    // A voter, and the epoch that made it one has its primary.
                    shards
                        .iter()
                        .filter(move |s| {
                            !cat.voters(s).contains(n) || !cat.primary.contains_key(*s)
                        })
                        .map(move |s| format!("{n}:{s}"))
                })
                .collect();
            if pending.is_empty() {
                let promoted: Vec<(ShardId, Option<Promoted>)> = {
                    let rt = self.db.ops.lock().await;
                    shards.iter().map(|s| (s.clone(), rt.promoted.get(s).cloned())).collect()
                };
                for (s, p) in promoted {
                    let committed = match &p {
                        Some(p) if p.epoch == cat.epoch_of(&s) => {
                            self.epoch_committed(&s, p).await.unwrap_or(false)
                        }
                        _ => false,
                    };
                    if !committed {
                        pending.push(format!("{s} (epoch {} not committed)", cat.epoch_of(&s)));
                    }
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            self.db.kick.notify_one();
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ErrorBody::unavailable(format!(
                        "the servers were added, but not every one is a voter of its shards yet \
                         after {limit:?}: {}; they keep catching up (see /status)",
                        pending.join(", ")
                    )));
                }
                _ = self.cancel.cancelled() => {
                    return Err(ErrorBody::unavailable("the shard manager is shutting down"));
                }
            }
        }
    }

    /// `/rm`: hands every removed server's roles over first (one change per epoch), then
    /// removes it from the catalog and stops its process.
    async fn db_remove(self: &Arc<Self>, body: &Json) -> Result<Json, ErrorBody> {
        let mut rt = self.db.ops.lock().await;
        let cat = self.catalog();
        let out = cat.remove(body, &mut random_pick).map_err(refusal)?;
        rt.removing = out.clone();
        let handed = self.hand_over(&mut rt, &out).await;
        if let Err(e) = handed {
            rt.removing.clear();
            return Err(e);
        }
        let persisted = self.persist(CatalogEvent::Remove { servers: out.clone() }).await;
        rt.removing.clear();
        persisted?;
        for n in &out {
            rt.joined.remove(n);
        }
        drop(rt);
        self.remove_members(&out).await?;
        let n = self.catalog().servers.len();
        Ok(json!({"message": {"N": n, "servers": out}, "status": "successful"}))
    }

    /// Before `out` leave: for every shard, drop them from the voters one per epoch, and move
    /// the primary off them (dropped from the voters while still leading, then, once that
    /// epoch commits, the remaining voters elect its successor).
    async fn hand_over(&self, rt: &mut Runtime, out: &[String]) -> Result<(), ErrorBody> {
        let cat = self.catalog();
        for s in &cat.shards {
            let shard = s.id.as_str();
            let mut steps = 0;
            loop {
                steps += 1;
                if steps > MAX_HANDOVER_STEPS {
                    return Err(ErrorBody::internal(format!(
                        "shard {shard}: the replicas of {} could not be handed over",
                        out.join(", ")
                    )));
                }
                let cat = self.catalog();
                let voters = cat.voters(shard).to_vec();
                if !self.is_healthy(shard, rt.promoted.get(shard), &cat) {
                    let involved = voters.iter().any(|v| out.contains(v))
                        || cat.primary.get(shard).is_some_and(|p| out.contains(p));
                    if !involved {
                        break;
                    }
                    let p = self.elect(shard, out, &rt.removing, rt.promoted.get(shard)).await?;
                    rt.promoted.insert(shard.to_string(), p);
                    continue;
                }
                let p = rt.promoted[shard].clone();
                // Each voter dropped in its own epoch, and each of those committed before the
                // next starts and before `/rm` answers (election.rs, "Voter changes").
                let dropped = voters
                    .iter()
                    .find(|v| out.contains(v) && **v != p.primary)
                    .or_else(|| voters.iter().find(|v| out.contains(v)));
                if let Some(x) = dropped {
                    let keep: Vec<String> = voters.iter().filter(|v| *v != x).cloned().collect();
                    let ties = Ties::Avoid(p.primary.clone());
                    let r = self.change_voters(shard, &p, keep, Previous::Wait, out, ties).await;
                    let r = r.and_then(|np| {
                        np.ok_or_else(|| ErrorBody::internal("a waiting voter change skipped"))
                    });
                    let np = self.record(rt, shard, r)?;
                    self.wait_committed(shard, &np).await?;
                    continue;
                }
                if !out.contains(&p.primary) {
                    break;
                }
                // The primary is no voter any more: the remaining voters elect its successor.
                let r = self
                    .change_epoch(EpochChange {
                        shard: shard.to_string(),
                        new_voters: None,
                        keep: None,
                        exclude: out.to_vec(),
                        removing: out.to_vec(),
                        ties: Ties::Avoid(p.primary.clone()),
                    })
                    .await;
                self.record(rt, shard, r)?;
            }
        }
        Ok(())
    }

    /// Stores the outcome of an epoch change: the new primary, or none (the next round
    /// elects).
    fn record(
        &self,
        rt: &mut Runtime,
        shard: &str,
        r: Result<Promoted, ErrorBody>,
    ) -> Result<Promoted, ErrorBody> {
        match r {
            Ok(p) => {
                rt.promoted.insert(shard.to_string(), p.clone());
                rt.failing.remove(shard);
                Ok(p)
            }
            Err(e) => {
                rt.promoted.remove(shard);
                Err(e)
            }
        }
    }

    /// Elects a primary for `shard` among its live voters not in `exclude`.
    /// `prev` is the primary this process set up last, if any: after a failure it wins
    /// only with a longer log; without one (a restarted manager) the catalog's primary wins
    /// ties.
    pub(super) async fn elect(
        &self,
        shard: &str,
        exclude: &[String],
        removing: &[String],
        prev: Option<&Promoted>,
    ) -> Result<Promoted, ErrorBody> {
        let cat = self.catalog();
        let replicas = cat.replicas(shard);
        let voters = cat.voters(shard);
        let ms = self.membership();
        let mut exclude: Vec<String> = exclude.to_vec();
        exclude.extend(voters.iter().filter(|v| !replicas.contains(v)).cloned());
        exclude.extend(removing.iter().cloned());
        let live =
            voters.iter().filter(|v| !exclude.contains(v) && live_addr(&ms, v).is_some()).count();
        // Hopeless without a majority alive; but a shard that still names a primary tries
        // once anyway: the new epoch fences the replicas that are alive against the old
        // primary (perhaps only cut off from us) and leaves the shard without a primary.
        if 2 * live <= voters.len() && !cat.primary.contains_key(shard) {
            return Err(ErrorBody::unavailable(format!(
                "no primary for shard {shard}: only {live} of its {} voters ({}) are alive; a \
                 majority is needed",
                voters.len(),
                voters.join(", ")
            )));
        }
        self.change_epoch(EpochChange {
            shard: shard.to_string(),
            new_voters: None,
            keep: None,
            exclude,
            removing: removing.to_vec(),
            ties: prev.map_or(Ties::KeepPrimary, |p| Ties::Avoid(p.primary.clone())),
        })
        .await
    }

    /// `/primary_elect`: elects where a shard's primary is not alive; the primary of each
    /// (or the named) shard.
    async fn db_primary_elect(self: &Arc<Self>, body: &Json) -> Result<Json, ErrorBody> {
        let mut rt = self.db.ops.lock().await;
        let cat = self.catalog();
        if !cat.initialized() {
            return Err(ErrorBody::bad_request(
                "the database is not initialized; call /init first",
            ));
        }
        let shards: Vec<ShardId> = match body.get("shard") {
            None | Some(Json::Null) => cat.shards.iter().map(|s| s.id.clone()).collect(),
            Some(Json::String(s)) => {
                if !cat.shards.iter().any(|x| &x.id == s) {
                    return Err(ErrorBody::bad_request(format!("shard {s} does not exist")));
                }
                vec![s.clone()]
            }
            Some(_) => return Err(ErrorBody::bad_request("field 'shard' must be a string")),
        };
        let mut errors = Vec::new();
        for s in &shards {
            if self.is_healthy(s, rt.promoted.get(s), &cat) {
                continue;
            }
            let removing = rt.removing.clone();
            let r = self.elect(s, &[], &removing, rt.promoted.get(s)).await;
            if let Err(e) = self.record(&mut rt, s, r) {
                errors.push(e.bare().to_string());
            }
        }
        if !errors.is_empty() {
            return Err(ErrorBody::unavailable(errors.join("; ")));
        }
        let cat = self.catalog();
        let mut out = serde_json::Map::new();
        for s in &shards {
            out.insert(s.clone(), json!(cat.primary.get(s)));
        }
        Ok(json!({"message": out, "status": "success"}))
    }

    /// Whether `shard`'s primary is the process this manager set up and is alive.
    pub(super) fn is_healthy(&self, shard: &str, p: Option<&Promoted>, cat: &Catalog) -> bool {
        let (Some(p), Some(name)) = (p, cat.primary.get(shard)) else { return false };
        if &p.primary != name {
            return false;
        }
        live_addr(&self.membership(), name).is_some_and(|a| a == p.primary_addr)
    }

    /// Starts the servers of `names` that do not run yet (all or none).
    pub(super) async fn ensure_members(
        self: &Arc<Self>,
        names: &[String],
    ) -> Result<(), ErrorBody> {
        let _admin = self.admin.lock().await;
        self.refuse_when_stopping()?;
        let existing = self.names();
        let missing: Vec<String> =
            names.iter().filter(|n| !existing.contains(n)).cloned().collect();
        if existing.len() + missing.len() > self.cfg.max_replicas {
            return Err(ErrorBody::bad_request(format!(
                "Cannot add {} servers; at most {} may run and {} do",
                missing.len(),
                self.cfg.max_replicas,
                existing.len()
            )));
        }
        self.start_replicas(missing, &HashMap::new()).await
    }
}
