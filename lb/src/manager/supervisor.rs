//! The supervisor: one loop that keeps every shard's replica set where the catalog says it
//! should be. A round runs on every membership change (a server dead, replaced, added,
//! removed), every heartbeat interval, and when an admin operation asks. Each round:
//!
//! 1. starts the catalog's servers that no process runs, and configures every server
//!    process not configured yet (a new one, or one respawned after a crash): `Config`
//!    with its shards, then `Adopt` + `Follow` of each shard's current primary, so a
//!    respawned node rejoins as a secondary and catches up by itself;
//! 2. for each shard, one step at most (DESIGN.md, "Failover" and "Membership changes"):
//!    - its primary is not alive, or is another process than the one promoted: elect
//!      (failover does not wait for the respawn; without a majority the shard stays
//!      primary-less and the next round tries again);
//!    - a voter left the catalog: drop it from the voters (a new epoch);
//!    - learners were added or removed: a new epoch that tells the primary;
//!    - a replica moved to a new address: tell the primary (same epoch);
//!    - a learner caught up with the primary's commit: make it a voter (a new epoch).
//!
//! A restarted manager knows no promoted primary, so its first round elects every shard at
//! a new epoch (always safe) and reconfigures every respawned node.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use protocol::{ErrorBody, FollowReq, Lsn, PromoteReq, Quorum, Replica, Role, ShardSpec};

use super::db::Runtime;
use super::election::{live_addr, replica, EpochChange, Previous, Promoted, Ties};
use super::Manager;
use crate::catalog::Catalog;

/// Runs rounds until the manager stops.
pub(super) async fn run(m: Arc<Manager>) {
    let mut members = m.published.subscribe();
    let mut tick = tokio::time::interval(m.cfg.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = m.cancel.cancelled() => return,
            r = members.changed() => {
                if r.is_err() {
                    return;
                }
                // Routers hear of a dead or moved server now, even while an admin
                // operation holds the round back.
                m.publish_view();
            }
            _ = tick.tick() => {}
            _ = m.db.kick.notified() => {}
        }
        let mut rt = tokio::select! {
            _ = m.cancel.cancelled() => return,
            rt = m.db.ops.lock() => rt,
        };
        m.round(&mut rt).await;
    }
}

/// What one shard's step left.
struct Step {
    promoted: Option<Promoted>,
    error: Option<ErrorBody>,
    /// The learner being watched and the commit LSN it must reach to become a voter.
    catch_up: Option<(String, Lsn)>,
}

impl Step {
    fn ok(p: Option<Promoted>) -> Step {
        Step { promoted: p, error: None, catch_up: None }
    }

    fn failed(p: Option<Promoted>, e: ErrorBody) -> Step {
        Step { promoted: p, error: Some(e), catch_up: None }
    }

    fn from(r: Result<Promoted, ErrorBody>) -> Step {
        match r {
            Ok(p) => Step::ok(Some(p)),
            Err(e) => Step::failed(None, e),
        }
    }
}

impl Manager {
    /// One supervisor round (see the module doc); the `ops` lock is held.
    pub(super) async fn round(self: &Arc<Self>, rt: &mut Runtime) {
        let cat = self.catalog();
        if cat.initialized() && !self.is_stopping() {
            let missing: Vec<String> = {
                let names = self.names();
                cat.servers.iter().map(|(n, _)| n.clone()).filter(|n| !names.contains(n)).collect()
            };
            if !missing.is_empty() {
                if let Err(e) = self.ensure_members(&missing).await {
                    tracing::warn!(servers = ?missing, error = %e.message, "cannot start catalog servers");
                }
            }
            // A shard this process has set up takes its step while new or respawned servers
            // are configured: a server that cannot be reached (cut off, dying) must not hold
            // a failover back. A shard without one (a new database, a restarted manager, a
            // failed step) waits for them: its election needs them configured.
            let step_of = |s: &crate::catalog::ShardRange| {
                let prev = rt.promoted.get(&s.id).cloned();
                let catch_up = rt.catch_up.get(&s.id).cloned();
                let removing = rt.removing.clone();
                let id = s.id.clone();
                async move {
                    let step = self.converge(&id, prev.clone(), catch_up, &removing);
                    // Only a step that starts with a live primary can lose it midway (a step
                    // that starts without one elects).
                    let ms = self.membership();
                    let watched = prev.filter(|p| {
                        live_addr(&ms, &p.primary).as_deref() == Some(p.primary_addr.as_str())
                    });
                    let step = match watched {
                        Some(p) => {
                            tokio::select! {
                                step = step => step,
                                () = self.primary_gone(&p) => {
                                    let why = format!(
                                        "primary {} ({}) died during the step",
                                        p.primary, p.primary_addr
                                    );
                                    Step::failed(Some(p), ErrorBody::unavailable(why))
                                }
                            }
                        }
                        None => step.await,
                    };
                    (id, step)
                }
            };
            let (set_up, new): (Vec<_>, Vec<_>) =
                cat.shards.iter().partition(|s| rt.promoted.contains_key(&s.id));
            let early =
                futures::future::join_all(set_up.into_iter().map(step_of).collect::<Vec<_>>());
            let late: Vec<_> = new.into_iter().map(step_of).collect();
            let ((), mut steps) = tokio::join!(self.join_servers(rt, &cat), early);
            steps.extend(futures::future::join_all(late).await);
            for (shard, step) in steps {
                match step.catch_up {
                    Some(c) => rt.catch_up.insert(shard.clone(), c),
                    None => rt.catch_up.remove(&shard),
                };
                match step.promoted {
                    Some(p) => {
                        rt.promoted.insert(shard.clone(), p);
                    }
                    None => {
                        rt.promoted.remove(&shard);
                    }
                }
                match step.error {
                    Some(e) => {
                        if rt.failing.get(&shard) != Some(&e.message) {
                            tracing::warn!(%shard, error = %e.message, "shard not converged; retrying");
                            rt.failing.insert(shard, e.message);
                        }
                    }
                    None => {
                        if rt.failing.remove(&shard).is_some() {
                            tracing::info!(%shard, "shard converged");
                        }
                    }
                }
            }
        }
        self.publish_view();
    }

    /// Completes once the process promoted in `p` is no longer the live server of its
    /// name (declared dead, replaced): a step waiting on it can stop, the next round elects.
    pub(super) async fn primary_gone(&self, p: &Promoted) {
        let mut members = self.published.subscribe();
        loop {
            let ms = members.borrow_and_update().clone();
            if live_addr(&ms, &p.primary).as_deref() != Some(p.primary_addr.as_str()) {
                return;
            }
            if members.changed().await.is_err() {
                // The manager is stopping: the step's own calls end it.
                return std::future::pending().await;
            }
        }
    }

    /// Configures every live server process not configured yet, and has it follow each of
    /// its shards' current primary.
    async fn join_servers(&self, rt: &mut Runtime, cat: &Catalog) {
        let ms = self.membership();
        let todo: Vec<(String, String)> = cat
            .servers
            .iter()
            .filter_map(|(n, _)| live_addr(&ms, n).map(|a| (n.clone(), a)))
            .filter(|(n, a)| rt.joined.get(n) != Some(a))
            .collect();
        if todo.is_empty() {
            return;
        }
        let promoted = &rt.promoted;
        let done = futures::future::join_all(todo.iter().map(|(name, addr)| async move {
            match self.join(cat, promoted, name, addr).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(server = %name, error = %e.message, "cannot configure server; retrying");
                    false
                }
            }
        }))
        .await;
        for ((name, addr), ok) in todo.into_iter().zip(done) {
            if ok {
                rt.joined.insert(name, addr);
            }
        }
    }

    async fn join(
        &self,
        cat: &Catalog,
        promoted: &HashMap<String, Promoted>,
        name: &str,
        addr: &str,
    ) -> Result<(), ErrorBody> {
        let shards = cat.shards_of(name).unwrap_or_default();
        let Some(schema) = cat.schema.clone() else { return Ok(()) };
        if shards.is_empty() {
            return Ok(());
        }
        let specs: Vec<ShardSpec> = shards
            .iter()
            .filter_map(|id| cat.shards.iter().find(|s| &s.id == id))
            .map(|s| ShardSpec::with_range(s.id.clone(), s.low, s.size))
            .collect();
        self.db.nodes.config(addr, protocol::ConfigReq { schema, shards: specs }).await?;
        tracing::info!(server = %name, %addr, shards = ?shards, "server configured");
        let ms = self.membership();
        for shard in shards {
            let Some(p) = promoted.get(shard) else { continue };
            if p.primary == name || live_addr(&ms, &p.primary).is_none() {
                continue;
            }
            // Best effort: the primary's own messages make it a follower too.
            let follow = async {
                self.db.nodes.adopt(addr, shard, p.epoch).await?;
                let req = FollowReq {
                    shard: shard.clone(),
                    epoch: p.epoch,
                    primary: replica(&ms, &p.primary),
                };
                self.db.nodes.follow(addr, req).await
            };
            if let Err(e) = follow.await {
                tracing::debug!(server = %name, %shard, error = %e.message, "rejoin did not follow");
            }
        }
        Ok(())
    }

    /// One step towards the catalog's replica set for `shard` (see the module doc).
    async fn converge(
        &self,
        shard: &str,
        prev: Option<Promoted>,
        catch_up: Option<(String, Lsn)>,
        removing: &[String],
    ) -> Step {
        let cat = self.catalog();
        let ms = self.membership();
        let voters = cat.voters(shard).to_vec();
        let replicas = cat.replicas(shard);
        if !self.is_healthy(shard, prev.as_ref(), &cat) {
            return Step::from(self.elect(shard, &[], removing, prev.as_ref()).await);
        }
        let p = prev.expect("healthy means promoted");
        // One voter added or dropped per epoch, once the current epoch is committed
        // (election.rs, "Voter changes"); until then the shard stays as it is.
        let current = &p;
        let change_voters = move |new_voters: Vec<String>| async move {
            let r = self
                .change_voters(
                    shard,
                    current,
                    new_voters,
                    Previous::Skip,
                    removing,
                    Ties::KeepPrimary,
                )
                .await;
            match r {
                Ok(Some(np)) => Step::ok(Some(np)),
                Ok(None) => Step::ok(Some(current.clone())),
                Err(e) => Step::failed(None, e),
            }
        };
        // A voter that left the catalog leaves the voters.
        if let Some(x) = voters.iter().find(|v| !replicas.contains(v)) {
            let keep: Vec<String> = voters.iter().filter(|v| *v != x).cloned().collect();
            return change_voters(keep).await;
        }
        let learners: Vec<String> =
            cat.learners(shard).into_iter().filter(|l| !removing.contains(l)).collect();
        let names = |rs: &[Replica]| rs.iter().map(|r| r.name.clone()).collect::<BTreeSet<_>>();
        let set = |v: &[String]| v.iter().cloned().collect::<BTreeSet<_>>();
        if names(&p.voters) != set(&voters) || names(&p.learners) != set(&learners) {
            let change = EpochChange {
                shard: shard.to_string(),
                new_voters: None,
                keep: Some(p.primary.clone()),
                exclude: Vec::new(),
                removing: removing.to_vec(),
                ties: Ties::KeepPrimary,
            };
            return Step::from(self.change_epoch(change).await);
        }
        // A replica at a new address (respawned): the primary's senders must know it.
        let want_voters: Vec<Replica> = voters.iter().map(|v| replica(&ms, v)).collect();
        let want_learners: Vec<Replica> = learners.iter().map(|l| replica(&ms, l)).collect();
        if want_voters != p.voters || want_learners != p.learners {
            let req = PromoteReq {
                shard: shard.to_string(),
                epoch: p.epoch,
                voters: want_voters.clone(),
                learners: want_learners.clone(),
                quorum: Quorum::Majority,
            };
            return match self.db.nodes.promote(&p.primary_addr, req).await {
                Ok(_) => {
                    tracing::info!(%shard, epoch = p.epoch, primary = %p.primary, "primary told of new replica addresses");
                    Step::ok(Some(Promoted { voters: want_voters, learners: want_learners, ..p }))
                }
                Err(e) => Step::failed(Some(p), e),
            };
        }
        // One learner at a time becomes a voter once it has applied what the primary had
        // committed when the manager started watching it (a fixed target, so a learner
        // under write load gets there).
        if let Some((l, addr)) =
            learners.iter().find_map(|l| live_addr(&ms, l).map(|a| (l.clone(), a)))
        {
            let target = match catch_up {
                Some((name, target)) if name == l => target,
                _ => match self.db.nodes.status(&p.primary_addr, shard).await {
                    Ok(pi) => pi.commit_lsn,
                    Err(e) => return Step::failed(Some(p), e),
                },
            };
            let li = match self.db.nodes.status(&addr, shard).await {
                Ok(li) => li,
                Err(e) => return Step { catch_up: Some((l, target)), ..Step::failed(Some(p), e) },
            };
            let follows =
                matches!(&li.role, Role::Secondary { primary: Some(x) } if *x == p.primary);
            if follows && li.epoch == p.epoch && li.applied_lsn >= target {
                let new_voters: Vec<String> =
                    replicas.iter().filter(|r| voters.contains(r) || **r == l).cloned().collect();
                tracing::info!(%shard, learner = %l, applied = li.applied_lsn, target, "learner caught up; making it a voter");
                return change_voters(new_voters).await;
            }
            return Step { catch_up: Some((l, target)), ..Step::ok(Some(p)) };
        }
        Step::ok(Some(p))
    }
}
