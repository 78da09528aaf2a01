//! Where a shard's primary is chosen: every epoch change of a shard (an election after a
//! failure, the first election of a new shard, a replica added or dropped) runs the same
//! sequence, DESIGN.md "Failover":
//!
//! 1. persist the next epoch (with the new voter set, for a membership change);
//! 2. every live replica adopts it (persisted on the node before it answers), which fences
//!    the old primary: once a majority of the voters adopted, it can commit nothing more;
//! 3. choose: the current primary when the change keeps it and it adopted (it holds every
//!    committed write), else [`decide`]: the largest `(last_epoch, last_lsn)` among a
//!    majority of the voters;
//! 4. persist the primary, promote it, and have the others follow it.
//!
//! [`decide`] is pure and unit-tested; [`Manager::change_epoch`] does the IO around it.
//!
//! # Voter changes: one at a time, each on a committed epoch
//! A change of a shard's voters goes through [`Manager::change_voters`], which enforces
//! Raft's single-server rule (DESIGN.md "Membership changes of a shard"): it adds or drops
//! one voter, and starts only once the current epoch's barrier is committed, that is held by a
//! majority of that epoch's voters. Two changes without that wait are two voters changed at
//! once: {A,B,C,D,E} -> {A,C,D,E} -> {A,D,E} would let {D,E} elect without a write that only
//! A, B and C held. Callers that answer a client (`/add`, `/rm`) also wait until their own
//! last change is committed ([`Manager::wait_committed`]). Covered by
//! `tests/fault_membership.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use protocol::{Epoch, ErrorBody, ErrorKind, FollowReq, Lsn, PromoteReq, Quorum, Replica};

use super::nodes::LogEnd;
use super::Manager;
use crate::catalog::{choose_primary, CatalogEvent};
use crate::control::Membership;

/// How long an epoch change still waits for the other replicas' adoptions once enough
/// have adopted to choose.
const ADOPT_GRACE: Duration = Duration::from_millis(100);
/// How long an admin operation waits for an epoch to be committed by a majority of its
/// voters (before its next voter change, and before it answers).
pub(super) const COMMIT_WAIT: Duration = Duration::from_secs(10);
/// Poll interval while waiting for an epoch to commit.
const COMMIT_POLL: Duration = Duration::from_millis(10);

/// The primary to promote after replicas adopted a new epoch: the largest `(last_epoch,
/// last_lsn)` among the adopted voters not in `exclude`, in the order given (ties go to the
/// first). Refused unless the adopted voters are a majority of `voters` (else the old
/// primary may still commit) and so are the eligible ones (else the largest of them may miss
/// a committed write that only an excluded replica holds).
pub fn decide(
    voters: &[String],
    adopted: &[(String, Epoch, Lsn)],
    exclude: &[String],
) -> Result<String, String> {
    let adopted_voters: Vec<&(String, Epoch, Lsn)> =
        adopted.iter().filter(|a| voters.contains(&a.0)).collect();
    let eligible: Vec<(String, Epoch, Lsn)> =
        adopted_voters.iter().filter(|a| !exclude.contains(&a.0)).map(|a| (*a).clone()).collect();
    let n = voters.len();
    if n == 0 || 2 * adopted_voters.len() <= n || 2 * eligible.len() <= n {
        let names: Vec<&str> = eligible.iter().map(|a| a.0.as_str()).collect();
        return Err(format!(
            "only {} of its {n} voters ({}) could take part; a majority is needed",
            eligible.len(),
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        ));
    }
    Ok(choose_primary(&eligible).expect("a majority is not empty").to_string())
}

/// One epoch change of a shard (see the module doc).
#[derive(Clone, Debug)]
pub(super) struct EpochChange {
    /// The shard.
    pub shard: String,
    /// The voters from the new epoch on, when the change adds or drops one; `None` keeps
    /// the voters.
    pub new_voters: Option<Vec<String>>,
    /// The primary to keep if it adopts; `None` elects the largest log.
    pub keep: Option<String>,
    /// Servers never chosen (being removed).
    pub exclude: Vec<String>,
    /// Servers being removed: they adopt (fenced) but are no learners of the new primary.
    pub removing: Vec<String>,
    /// How ties between equal logs are broken.
    pub ties: Ties,
}

/// Which replica wins an election among equal logs (after that, the first in server order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Ties {
    /// The catalog's primary: a restarted manager keeps the primaries where they were.
    KeepPrimary,
    /// Anyone but this one: a primary that failed (its respawned process has applied less
    /// and just crashed) only wins with a longer log.
    Avoid(String),
}

/// A shard's primary as the manager last set it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Promoted {
    /// The primary's name.
    pub primary: String,
    /// Its binary address when promoted: another address means another process.
    pub primary_addr: String,
    /// The epoch.
    pub epoch: Epoch,
    /// Voters as the primary was told them.
    pub voters: Vec<Replica>,
    /// Learners as the primary was told them.
    pub learners: Vec<Replica>,
    /// LSN of the primary's barrier record of the epoch (its last LSN once promoted).
    pub barrier_lsn: Lsn,
}

/// `name` with its current binary address; a placeholder that refuses connections when the
/// manager does not know the server (it still counts in quorums).
pub(super) fn replica(ms: &Membership, name: &str) -> Replica {
    let addr = ms
        .members
        .iter()
        .find(|m| m.name == name)
        .map_or_else(|| "0.0.0.0:0".to_string(), |m| m.addr.clone());
    Replica { name: name.to_string(), addr }
}

/// The live member `name`'s address.
pub(super) fn live_addr(ms: &Membership, name: &str) -> Option<String> {
    ms.members.iter().find(|m| m.name == name && m.alive).map(|m| m.addr.clone())
}

/// What a voter change does when the current epoch is not committed yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Previous {
    /// Waits for it (at most [`COMMIT_WAIT`]; fails after that): admin operations.
    Wait,
    /// Changes nothing this time (`Ok(None)`): supervisor rounds, which come back soon.
    Skip,
}

impl Manager {
    /// Whether the epoch of `p` is committed: its primary's commit LSN reached the barrier of
    /// that epoch, which it counts only once a majority of the epoch's voters hold it.
    pub(super) async fn epoch_committed(
        &self,
        shard: &str,
        p: &Promoted,
    ) -> Result<bool, ErrorBody> {
        let info = self.db.nodes.status(&p.primary_addr, shard).await?;
        Ok(info.epoch == p.epoch && info.commit_lsn >= p.barrier_lsn)
    }

    /// Waits until the epoch of `p` is committed; fails after [`COMMIT_WAIT`], or at once
    /// when its primary dies (the next round elects).
    pub(super) async fn wait_committed(&self, shard: &str, p: &Promoted) -> Result<(), ErrorBody> {
        let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
        let poll = async {
            loop {
                let last = self.epoch_committed(shard, p).await;
                if let Ok(true) = last {
                    return Ok(());
                }
                if tokio::time::Instant::now() >= deadline {
                    let why = match last {
                        Err(e) => e.bare().to_string(),
                        Ok(_) => "its voters are too slow or down".to_string(),
                    };
                    return Err(ErrorBody::unavailable(format!(
                        "shard {shard}: epoch {} was not committed by a majority of its voters \
                         within {COMMIT_WAIT:?} ({why})",
                        p.epoch
                    )));
                }
                tokio::time::sleep(COMMIT_POLL).await;
            }
        };
        tokio::select! {
            r = poll => r,
            () = self.primary_gone(p) => Err(ErrorBody::unavailable(format!(
                "shard {shard}: primary {} died before epoch {} was committed",
                p.primary, p.epoch
            ))),
        }
    }

    /// Changes the voters of `shard` from those of `p` to `new_voters` (one added or dropped),
    /// keeping `p`'s primary, once `p`'s epoch is committed (see the module doc). `Ok(None)`:
    /// with [`Previous::Skip`], the epoch was not committed yet and nothing changed.
    pub(super) async fn change_voters(
        &self,
        shard: &str,
        p: &Promoted,
        new_voters: Vec<String>,
        previous: Previous,
        removing: &[String],
        ties: Ties,
    ) -> Result<Option<Promoted>, ErrorBody> {
        let cat = self.catalog();
        let old: BTreeSet<&String> = cat.voters(shard).iter().collect();
        let new: BTreeSet<&String> = new_voters.iter().collect();
        if old.symmetric_difference(&new).count() != 1 {
            return Err(ErrorBody::internal(format!(
                "shard {shard}: a voter change adds or drops exactly one voter ({old:?} -> {new:?})"
            )));
        }
        match previous {
            Previous::Wait => self.wait_committed(shard, p).await?,
            Previous::Skip => {
                // Not known to be committed (no answer either) is not committed.
                if !self.epoch_committed(shard, p).await.unwrap_or(false) {
                    tracing::debug!(
                        shard,
                        epoch = p.epoch,
                        "voter change waits for the epoch to commit"
                    );
                    return Ok(None);
                }
            }
        }
        let change = EpochChange {
            shard: shard.to_string(),
            new_voters: Some(new_voters),
            keep: Some(p.primary.clone()),
            exclude: removing.to_vec(),
            removing: removing.to_vec(),
            ties,
        };
        self.change_epoch(change).await.map(Some)
    }

    /// Runs one epoch change of a shard; returns the primary as set up. On error the shard
    /// may be left without a working primary (the next supervisor round elects again).
    pub(super) async fn change_epoch(&self, ch: EpochChange) -> Result<Promoted, ErrorBody> {
        let shard = ch.shard.as_str();
        let cat = self.catalog();
        let voters = cat.voters(shard).to_vec();
        let new_voters = ch.new_voters.clone().unwrap_or_else(|| voters.clone());
        let learners: Vec<String> = cat
            .learners(shard)
            .into_iter()
            .filter(|l| !new_voters.contains(l) && !ch.removing.contains(l))
            .collect();
        let Some(epoch) = cat.epoch_of(shard).checked_add(1) else {
            return Err(ErrorBody::internal(format!(
                "shard {shard}: no epoch is left after u64::MAX"
            )));
        };
        // 1. The epoch (and voter set) first, durable before any node hears of it.
        let ev = match &ch.new_voters {
            Some(v) => CatalogEvent::Voters { shard: shard.into(), epoch, voters: v.clone() },
            None => CatalogEvent::Epoch { shard: shard.into(), epoch },
        };
        self.persist(ev).await?;
        // 2. Every live replica adopts it.
        let ms = self.membership();
        let mut everyone: BTreeSet<String> = cat.replicas(shard).into_iter().collect();
        everyone.extend(voters.iter().cloned());
        everyone.extend(new_voters.iter().cloned());
        if let Some(p) = cat.primary.get(shard) {
            everyone.insert(p.clone());
        }
        // In server order, so ties in the choice go to the first listed.
        let mut order: Vec<String> = cat.servers.iter().map(|(n, _)| n.clone()).collect();
        order.retain(|n| everyone.contains(n));
        order.extend(everyone.iter().filter(|n| !cat.has_server(n)).cloned());
        match &ch.ties {
            Ties::KeepPrimary => {
                if let Some(i) =
                    cat.primary.get(shard).and_then(|p| order.iter().position(|n| n == p))
                {
                    let p = order.remove(i);
                    order.insert(0, p);
                }
            }
            Ties::Avoid(x) => {
                if let Some(i) = order.iter().position(|n| n == x) {
                    let p = order.remove(i);
                    order.push(p);
                }
            }
        }
        let targets: Vec<(String, String)> =
            order.iter().filter_map(|n| live_addr(&ms, n).map(|a| (n.clone(), a))).collect();
        // Once enough have answered, a replica that is slow (paused, overloaded) only gets a
        // short grace: it learns the epoch from the new primary later.
        let mut pending: FuturesUnordered<_> = targets
            .iter()
            .map(
                |(name, addr)| async move { (name, self.db.nodes.adopt(addr, shard, epoch).await) },
            )
            .collect();
        let mut adopted: Vec<(String, Epoch, Lsn)> = Vec::new();
        let mut newer: Option<Epoch> = None;
        let mut grace: Option<tokio::time::Instant> = None;
        loop {
            let next = match grace {
                None => pending.next().await,
                Some(until) => match tokio::time::timeout_at(until, pending.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some((name, answer)) = next else { break };
            match answer {
                Ok(LogEnd { last_epoch, last_lsn, .. }) => {
                    adopted.push((name.clone(), last_epoch, last_lsn))
                }
                Err(e) => {
                    if let ErrorKind::StaleEpoch { current } = e.kind {
                        newer = Some(newer.unwrap_or(0).max(current));
                    }
                    tracing::debug!(shard, epoch, replica = %name, error = %e.message, "did not adopt");
                }
            }
            let enough = match &ch.keep {
                Some(k) => adopted.iter().any(|a| &a.0 == k),
                None => decide(&voters, &adopted, &ch.exclude).is_ok(),
            };
            if enough && grace.is_none() {
                grace = Some(tokio::time::Instant::now() + ADOPT_GRACE);
            }
        }
        drop(pending);
        // Answers came in any order; the choice breaks ties by `order`.
        adopted.sort_by_key(|a| order.iter().position(|n| *n == a.0));
        if let Some(current) = newer.filter(|c| *c >= epoch) {
            if protocol::epoch_too_far(epoch, current) {
                // Not an epoch this manager could have made: skipping to it would bring the
                // shard's epochs near the end of their range. The replica stays out of this
                // election (it refused to adopt); the others decide.
                tracing::warn!(
                    shard,
                    epoch,
                    claimed = current,
                    "a replica claims an epoch far past the catalog's; ignoring it"
                );
            } else {
                // A node knows an epoch this log does not (only if the log was lost): skip past
                // it; the next attempt takes a fresh one.
                self.persist(CatalogEvent::Epoch { shard: shard.into(), epoch: current }).await?;
                return Err(ErrorBody::unavailable(format!(
                    "shard {shard}: a replica is at epoch {current}, past {epoch}; retrying"
                )));
            }
        }
        // 3. Choose.
        let primary = match &ch.keep {
            // A membership change keeps the primary; if it did not adopt, the change fails
            // and the next round elects (never a new primary and a new voter set at once).
            Some(k) if adopted.iter().any(|a| &a.0 == k) => k.clone(),
            Some(k) => {
                return Err(ErrorBody::unavailable(format!(
                    "shard {shard}: primary {k} did not adopt epoch {epoch}"
                )))
            }
            None => decide(&voters, &adopted, &ch.exclude).map_err(|why| {
                ErrorBody::unavailable(format!(
                    "no primary for shard {shard} at epoch {epoch}: {why}"
                ))
            })?,
        };
        // 4. Persist, promote, follow.
        self.persist(CatalogEvent::Primary {
            shard: shard.into(),
            epoch,
            primary: primary.clone(),
        })
        .await?;
        let primary_addr = live_addr(&ms, &primary).unwrap_or_default();
        let promote = PromoteReq {
            shard: shard.into(),
            epoch,
            voters: new_voters.iter().map(|v| replica(&ms, v)).collect(),
            learners: learners.iter().map(|l| replica(&ms, l)).collect(),
            quorum: Quorum::Majority,
        };
        let info = self.db.nodes.promote(&primary_addr, promote.clone()).await?;
        let follow = FollowReq { shard: shard.into(), epoch, primary: replica(&ms, &primary) };
        let followers: Vec<&(String, Epoch, Lsn)> =
            adopted.iter().filter(|a| a.0 != primary).collect();
        let results = futures::future::join_all(followers.iter().map(|a| {
            let addr = live_addr(&ms, &a.0).unwrap_or_default();
            let req = follow.clone();
            async move { self.db.nodes.follow(&addr, req).await }
        }))
        .await;
        for (a, r) in followers.iter().zip(results) {
            if let Err(e) = r {
                tracing::warn!(shard, epoch, replica = %a.0, error = %e.message, "did not follow");
            }
        }
        tracing::info!(
            shard,
            epoch,
            %primary,
            voters = ?new_voters,
            learners = ?learners,
            adopted = adopted.len(),
            "primary set up"
        );
        Ok(Promoted {
            primary,
            primary_addr,
            epoch,
            voters: promote.voters,
            learners: promote.learners,
            barrier_lsn: info.last_lsn,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn a(name: &str, e: Epoch, l: Lsn) -> (String, Epoch, Lsn) {
        (name.to_string(), e, l)
    }

    #[test]
    fn the_largest_log_of_a_majority_leads() {
        let v = names(&["A", "B", "C"]);
        assert_eq!(decide(&v, &[a("B", 2, 9), a("C", 3, 1)], &[]).unwrap(), "C");
        assert_eq!(decide(&v, &[a("A", 1, 5), a("B", 1, 5), a("C", 1, 5)], &[]).unwrap(), "A");
        let e = decide(&v, &[a("B", 2, 9)], &[]).unwrap_err();
        assert!(e.contains("only 1 of its 3 voters (B)"), "{e}");
    }

    #[test]
    fn learners_neither_count_nor_lead() {
        let v = names(&["A", "B", "C"]);
        let e = decide(&v, &[a("B", 2, 9), a("L", 9, 99)], &[]).unwrap_err();
        assert!(e.contains("a majority is needed"), "{e}");
        assert_eq!(decide(&v, &[a("B", 2, 9), a("C", 2, 3), a("L", 9, 99)], &[]).unwrap(), "B");
    }

    #[test]
    fn an_excluded_replica_fences_but_never_leads() {
        let v = names(&["A", "B", "C"]);
        // A (being removed) has the longest log; B and C are a majority without it.
        assert_eq!(
            decide(&v, &[a("A", 3, 9), a("B", 3, 7), a("C", 3, 8)], &names(&["A"])).unwrap(),
            "C"
        );
        // Without A, only B remains: B alone may miss a write committed on A and C.
        let e = decide(&v, &[a("A", 3, 9), a("B", 3, 7)], &names(&["A"])).unwrap_err();
        assert!(e.contains("only 1 of its 3 voters"), "{e}");
        assert!(decide(&[], &[a("A", 1, 1)], &[]).is_err());
    }
}
