//! The shard manager: the one owner of membership and of the database metadata.
//!
//! Stage 1: it starts the replicas (`Server1..ServerN`), applies `/add` and `/rm` (rules in
//! [`crate::members`]), watches every replica with heartbeats and replaces a dead one under
//! the same name, id and data directory (`health`), and publishes each membership version to
//! routers over the control protocol (`server`).
//!
//! Stages 2 and 3 (the database):
//! - `catalog_log`: the manager's own log; every catalog change and membership change is
//!   durable there before anyone is told, and replayed at start;
//! - `db`: the catalog, the versioned view routers watch, the admin endpoints (`/init`,
//!   `/status`, `/add`, `/rm`, `/primary_elect`) with the contract's answers;
//! - `election`: where a shard's primary is chosen (every epoch change of a shard);
//! - `supervisor`: the loop that configures respawned nodes, runs failover elections and
//!   carries out replica-set changes one at a time;
//! - `nodes`: the manager's calls to nodes.
//!
//! Locks: admin operations of stage 1 and replacements run one at a time under the `admin`
//! lock; database operations and supervisor rounds under the database's `ops` lock, taken
//! before `admin` when both are needed (never the other way), so a slow respawn never
//! delays a failover. Readers (heartbeat loops, watches) take only short table locks.

mod catalog_log;
mod db;
mod election;
mod health;
mod nodes;
mod server;
mod supervisor;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protocol::ErrorBody;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::{Member, Membership};
use crate::members;
use crate::spawner::{Spawned, Spawner};

pub use catalog_log::log_dir;
pub use db::{ADD_CATCH_UP_WAIT, MAX_CATALOG_WAIT};
pub use election::decide;
pub use server::serve;

/// Default interval between two heartbeats to a replica.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(150);
/// Default time without an answered heartbeat after which a replica is dead.
pub const DEAD_AFTER: Duration = Duration::from_millis(500);
/// Default most replicas at once.
pub const MAX_REPLICAS: usize = 100;
/// Longest a watch request is held before it is answered unchanged.
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(30);
/// How long a restarted manager waits for its first round (re-electing every shard) before
/// it starts answering.
const RESUME_WAIT: Duration = Duration::from_secs(10);

/// How the manager runs.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Replicas to start with (`Server1..ServerN`).
    pub servers: usize,
    /// Interval between heartbeats.
    pub heartbeat: Duration,
    /// Time without an answered heartbeat after which a replica is replaced.
    pub dead_after: Duration,
    /// Most replicas at once (`/add` beyond it is refused).
    pub max_replicas: usize,
    /// Most connections at once on the control listener (routers); one more gets a
    /// handshake error.
    pub max_connections: usize,
    /// The cluster's admin token, if one is set: the control port then takes membership
    /// and admin changes only from sessions authenticated with the cluster secret (the one
    /// rule of every door, `protocol::authz`).
    pub admin_token: Option<protocol::auth::AdminToken>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            servers: 3,
            heartbeat: HEARTBEAT_INTERVAL,
            dead_after: DEAD_AFTER,
            max_replicas: MAX_REPLICAS,
            max_connections: protocol::limits::DEFAULT_MAX_CONNECTIONS,
            admin_token: None,
        }
    }
}

/// One replica and the token that stops its heartbeat loop.
struct Entry {
    member: Member,
    watch: CancellationToken,
}

/// The membership table: replicas in order of addition, and the version.
struct Table {
    entries: Vec<Entry>,
    version: u64,
}

/// The shard manager. Create with [`Manager::start`], serve routers with [`serve`], stop
/// with [`Manager::shutdown`].
pub struct Manager {
    cfg: ManagerConfig,
    spawner: Arc<dyn Spawner>,
    generation: u64,
    /// Serializes `/add`, `/rm`, replacements and shutdown.
    admin: tokio::sync::Mutex<()>,
    /// The database: catalog, its log, elections.
    db: db::Db,
    table: Mutex<Table>,
    published: watch::Sender<Arc<Membership>>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl Manager {
    /// Starts `cfg.servers` replicas named `Server1..ServerN` and their heartbeat loops,
    /// keeping the database metadata in memory only. If one cannot start, stops those that
    /// did and fails.
    pub async fn start(
        cfg: ManagerConfig,
        spawner: Arc<dyn Spawner>,
    ) -> Result<Arc<Manager>, ErrorBody> {
        Manager::start_with_log(cfg, spawner, None).await
    }

    /// Like [`Manager::start`], with the manager's log in `log_dir` (normally
    /// [`log_dir`]`(data_dir)`): the catalog and the membership are replayed from it, the
    /// replicas it recorded are started again under their names and ids (instead of
    /// `Server1..ServerN`, when it recorded any), and every shard gets a primary again.
    pub async fn start_with_log(
        cfg: ManagerConfig,
        spawner: Arc<dyn Spawner>,
        log_dir: Option<&Path>,
    ) -> Result<Arc<Manager>, ErrorBody> {
        let (log, recovered) = match log_dir {
            Some(dir) => {
                let (log, rec) = catalog_log::CatalogLog::open(dir).map_err(ErrorBody::internal)?;
                tracing::info!(
                    dir = %dir.display(),
                    records = rec.records,
                    initialized = rec.catalog.initialized(),
                    "shard manager log replayed"
                );
                (Some(log), rec)
            }
            None => (None, catalog_log::Recovered::default()),
        };
        let generation = rand::Rng::gen_range(&mut rand::thread_rng(), 1..u64::MAX);
        let (published, _) =
            watch::channel(Arc::new(Membership { generation, version: 0, members: Vec::new() }));
        let manager = Arc::new(Manager {
            spawner,
            generation,
            admin: tokio::sync::Mutex::new(()),
            db: db::Db::new(recovered.catalog, log),
            table: Mutex::new(Table { entries: Vec::new(), version: 0 }),
            published,
            cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            cfg,
        });
        let (names, ids) = match recovered.members {
            Some(members) => {
                let ids: HashMap<String, u64> = members.iter().cloned().collect();
                (members.into_iter().map(|(n, _)| n).collect(), ids)
            }
            None => (members::initial_names(manager.cfg.servers), HashMap::new()),
        };
        {
            let _admin = manager.admin.lock().await;
            manager.start_replicas(names, &ids).await?;
        }
        manager.publish_view();
        if manager.catalog().initialized() {
            // A restarted manager re-elects every shard before it answers anyone, so its
            // first `/status` shows the primaries where they were, not the election under
            // way. Bounded: a shard that cannot elect now is left to the supervisor.
            let mut rt = manager.db.ops.lock().await;
            if tokio::time::timeout(RESUME_WAIT, manager.round(&mut rt)).await.is_err() {
                tracing::warn!(wait = ?RESUME_WAIT, "first round after restart unfinished; the supervisor goes on");
            }
        }
        manager.tasks.spawn(supervisor::run(manager.clone()));
        Ok(manager)
    }

    /// The current membership.
    pub fn membership(&self) -> Arc<Membership> {
        self.published.borrow().clone()
    }

    /// The spawner (tests use it to find a replica's process).
    pub fn spawner(&self) -> &Arc<dyn Spawner> {
        &self.spawner
    }

    /// `/add`: starts `n` replicas, `hostnames` and random names for the rest; all or none.
    pub async fn add(
        self: &Arc<Self>,
        n: u64,
        hostnames: &[String],
    ) -> Result<Arc<Membership>, ErrorBody> {
        let _admin = self.admin.lock().await;
        self.refuse_when_stopping()?;
        let names = members::plan_add(
            &self.names(),
            n,
            hostnames,
            self.cfg.max_replicas,
            &mut rand::thread_rng(),
        )?;
        self.start_replicas(names, &HashMap::new()).await?;
        Ok(self.membership())
    }

    /// `/rm`: removes `n` replicas, `hostnames` and random others; all or none. Routers are
    /// told before the processes stop.
    pub async fn remove(&self, n: u64, hostnames: &[String]) -> Result<Arc<Membership>, ErrorBody> {
        let _admin = self.admin.lock().await;
        self.refuse_when_stopping()?;
        // Database servers leave only through the database's /rm, which hands their shards
        // over first.
        let cat = self.catalog();
        if let Some(h) = hostnames.iter().find(|h| cat.has_server(h)) {
            return Err(ErrorBody::bad_request(format!(
                "Hostname '{h}' holds database shards; remove it with the database form of /rm \
                 ({{\"n\": 1, \"servers\": [\"{h}\"]}})"
            )));
        }
        let free: Vec<String> = self.names().into_iter().filter(|n| !cat.has_server(n)).collect();
        let names = members::plan_remove(&free, n, hostnames, &mut rand::thread_rng())?;
        self.remove_locked(&names, "/rm").await?;
        Ok(self.membership())
    }

    /// Removes the replicas `names` for good (the database's `/rm`, once their shards were
    /// handed over).
    async fn remove_members(&self, names: &[String]) -> Result<(), ErrorBody> {
        let _admin = self.admin.lock().await;
        self.remove_locked(names, "database /rm").await
    }

    /// Removes `names` (the admin lock is held): durable first, then routers are told, then
    /// the processes stop and their data goes.
    async fn remove_locked(&self, names: &[String], reason: &str) -> Result<(), ErrorBody> {
        self.persist_member(catalog_log::MemberEvent::Removed { names: names.to_vec() }).await?;
        {
            let mut t = self.lock_table();
            t.entries.retain(|e| {
                let gone = names.contains(&e.member.name);
                if gone {
                    e.watch.cancel();
                }
                !gone
            });
            self.publish(&mut t);
        }
        for name in names {
            tracing::info!(replica = %name, reason, "replica removed");
        }
        futures::future::join_all(names.iter().map(|n| self.spawner.remove(n))).await;
        Ok(())
    }

    /// The membership as soon as it is newer than `(generation, version)`, or as it is
    /// after `wait` (capped at [`MAX_WATCH_WAIT`]) or once the manager stops.
    pub async fn watch(&self, generation: u64, version: u64, wait: Duration) -> Arc<Membership> {
        let mut rx = self.published.subscribe();
        let wait = wait.min(MAX_WATCH_WAIT);
        let changed = async {
            loop {
                if rx.borrow_and_update().is_newer_than(generation, version) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep(wait) => {}
            _ = self.cancel.cancelled() => {}
        }
        self.membership()
    }

    /// Stops the heartbeat loops, waits for a replacement in progress, then stops every
    /// replica. Watchers are answered at once.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        let _admin = self.admin.lock().await;
        self.spawner.stop_all().await;
        tracing::info!("shard manager stopped; every replica stopped");
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn refuse_when_stopping(&self) -> Result<(), ErrorBody> {
        if self.is_stopping() {
            return Err(ErrorBody::unavailable("the shard manager is shutting down"));
        }
        Ok(())
    }

    fn names(&self) -> Vec<String> {
        self.lock_table().entries.iter().map(|e| e.member.name.clone()).collect()
    }

    /// Starts `names` in parallel (the admin lock is held), with the ids of `ids` where
    /// given and fresh ones otherwise; adds them all (recorded in the manager's log first),
    /// or none and stops those that started.
    async fn start_replicas(
        self: &Arc<Self>,
        names: Vec<String>,
        ids: &HashMap<String, u64>,
    ) -> Result<(), ErrorBody> {
        if names.is_empty() {
            return Ok(());
        }
        let results = futures::future::join_all(names.iter().map(|n| self.spawner.spawn(n))).await;
        let failed = results.iter().find_map(|r| r.as_ref().err()).map(|e| e.to_string());
        let ids_given: HashSet<&String> = ids.keys().collect();
        let ids: Vec<u64> = {
            let t = self.lock_table();
            let mut used: HashSet<u64> = t.entries.iter().map(|e| e.member.id).collect();
            used.extend(ids.values().copied());
            names
                .iter()
                .map(|n| {
                    ids.get(n).copied().unwrap_or_else(|| {
                        let id = members::fresh_id(&used, &mut rand::thread_rng());
                        used.insert(id);
                        id
                    })
                })
                .collect()
        };
        let logged = match failed {
            Some(e) => Err(ErrorBody::internal(e)),
            None => {
                self.persist_member(catalog_log::MemberEvent::Added {
                    members: names.iter().cloned().zip(ids.iter().copied()).collect(),
                })
                .await
            }
        };
        if let Err(err) = logged {
            // Stop those that started; keep the data of replicas from an earlier life.
            let started = names.iter().zip(&results).filter(|(_, r)| r.is_ok());
            let ids_given = &ids_given;
            futures::future::join_all(started.map(|(n, _)| async move {
                if ids_given.contains(n) {
                    self.spawner.kill(n).await
                } else {
                    self.spawner.remove(n).await
                }
            }))
            .await;
            tracing::error!(error = %err.message, "replicas not added");
            return Err(err);
        }
        let mut t = self.lock_table();
        for ((name, spawned), id) in names.into_iter().zip(results).zip(ids) {
            let spawned = spawned.expect("checked above");
            let watch = self.cancel.child_token();
            tracing::info!(replica = %name, id, addr = %spawned.addr, http = %spawned.http, "replica added");
            t.entries
                .push(Entry { member: member(name.clone(), id, spawned, 0), watch: watch.clone() });
            self.tasks.spawn(health::watch_replica(self.clone(), name, spawned, watch));
        }
        self.publish(&mut t);
        Ok(())
    }

    /// Marks `name` dead (routers stop sending to it); false if it is no longer a member.
    fn mark_dead(&self, name: &str) -> bool {
        let mut t = self.lock_table();
        let Some(e) = t.entries.iter_mut().find(|e| e.member.name == name) else { return false };
        if e.member.alive {
            e.member.alive = false;
            self.publish(&mut t);
        }
        true
    }

    /// Records the replacement of `name`; false if it was removed meanwhile (or its loop
    /// was stopped), and then the new process must be stopped by the caller.
    fn replaced(&self, name: &str, spawned: Spawned, watch: &CancellationToken) -> bool {
        let mut t = self.lock_table();
        if watch.is_cancelled() {
            return false;
        }
        let Some(e) = t.entries.iter_mut().find(|e| e.member.name == name) else { return false };
        e.member.addr = spawned.addr.to_string();
        e.member.http = spawned.http.to_string();
        e.member.alive = true;
        e.member.restarts += 1;
        self.publish(&mut t);
        true
    }

    fn publish(&self, t: &mut Table) {
        t.version += 1;
        let snapshot = Membership {
            generation: self.generation,
            version: t.version,
            members: t.entries.iter().map(|e| e.member.clone()).collect(),
        };
        self.published.send_replace(Arc::new(snapshot));
    }

    fn lock_table(&self) -> MutexGuard<'_, Table> {
        // Every critical section leaves the table consistent, so a poisoned lock is usable.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn member(name: String, id: u64, s: Spawned, restarts: u64) -> Member {
    Member { name, id, addr: s.addr.to_string(), http: s.http.to_string(), alive: true, restarts }
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("generation", &self.generation)
            .field("membership", &self.membership())
            .finish()
    }
}
