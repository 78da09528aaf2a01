//! The primary's lease and linearizable reads.
//!
//! A read through one router is never older than what that router already returned or
//! acknowledged (the LSN floor). A read through another router, or by another client, may
//! need more: `Consistency::Linearizable` promises data no older than any write acknowledged
//! by anyone before the read began. Only the primary can give that, and only while it is
//! sure no other primary has been elected, which a deposed primary cut off from the others
//! cannot know by itself. The lease settles it:
//!
//! - Every answer a secondary gives to an `Append` of our epoch (records or an empty
//!   heartbeat) proves that, when we sent it, the secondary had not adopted a newer epoch.
//!   We keep, per voter, the send time of the latest such message.
//! - The primary holds the lease until `t + LEASE`, where `t` is the latest send time that a
//!   majority of the voters (the primary included) have answered.
//! - An election needs a majority to adopt the next epoch first, and that majority shares a
//!   voter with every majority behind our lease; that voter answered us for the last time
//!   before it adopted. So our lease ends at most `LEASE` after the election's adopt round,
//!   and the new primary, which is promoted after that round, waits `FENCE > LEASE` before it
//!   acknowledges a write or serves a linearizable read. No two primaries serve linearizable
//!   reads of different data at once, on one clock or on clocks that drift less than
//!   `FENCE / LEASE - 1` (a third) apart.
//! - When the lease has lapsed (an idle or slow peer), a linearizable read asks every peer at
//!   once and answers after a majority has answered a message sent after the read arrived
//!   (one round trip), or fails with a clear error.
//!
//! A linearizable read then returns the rows once everything committed when it arrived is
//! applied here, and never before the barrier of the primary's epoch is committed (before
//! that, records of the previous primary may be in the log but not yet applied).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use protocol::{Epoch, ErrorBody, Lsn, Role, Row};

use crate::shard::{Core, Shard, State};

/// How long after a send time that a majority answered the primary still considers itself the
/// only primary. Three heartbeats (50 ms each).
pub const LEASE: Duration = Duration::from_millis(150);
/// How long a new primary waits after its promotion before it acknowledges anything or
/// serves a linearizable read: longer than [`LEASE`], so any older primary's lease is over.
pub const FENCE: Duration = Duration::from_millis(200);
/// Limit on a linearizable read's wait for the fence, the lease and its data.
const READ_DEADLINE: Duration = Duration::from_secs(1);

/// What the primary knows of its lease (held in the shard's state).
#[derive(Debug, Default)]
pub(crate) struct Lease {
    /// Per voter: the send time of the latest message of our epoch it answered.
    acks: HashMap<String, Instant>,
    /// The epoch `acks` belong to.
    epoch: Epoch,
    /// Nothing is acknowledged and no linearizable read served before this (a new primary).
    fence_until: Option<Instant>,
}

impl Lease {
    /// A new role at `epoch`: earlier acknowledgements do not count; `fenced` when an older
    /// primary may still hold a lease.
    pub(crate) fn restart(&mut self, epoch: Epoch, fenced: bool) {
        self.acks.clear();
        self.epoch = epoch;
        self.fence_until = fenced.then(|| Instant::now() + FENCE);
    }

    /// `peer` answered a message of `epoch` sent at `sent_at`.
    pub(crate) fn acknowledged(&mut self, peer: &str, epoch: Epoch, sent_at: Instant) {
        if epoch != self.epoch {
            return;
        }
        let t = self.acks.entry(peer.to_string()).or_insert(sent_at);
        if sent_at > *t {
            *t = sent_at;
        }
    }

    /// When the fence of a new primary ends, if it has not yet.
    pub(crate) fn fence(&self) -> Option<Instant> {
        self.fence_until.filter(|&t| t > Instant::now())
    }

    /// The latest send time a majority of `voters` answered (the primary, `me`, answers
    /// itself at `now`); `None` while no majority has answered anything.
    fn majority_time(&self, me: &str, voters: &[String], now: Instant) -> Option<Instant> {
        if voters.is_empty() {
            return Some(now);
        }
        let mut times: Vec<Instant> = voters
            .iter()
            .filter_map(|v| if v == me { Some(now) } else { self.acks.get(v).copied() })
            .collect();
        let majority = voters.len() / 2 + 1;
        if times.len() < majority {
            return None;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        Some(times[majority - 1])
    }
}

/// Where a replica stands for a linearizable read.
enum Standing {
    /// Not the primary: the one it knows of, if any.
    NotPrimary(Option<String>),
    /// The primary (or standalone): its voters, the read index, the fence.
    Primary { voters: Vec<String>, read_index: Lsn, barrier: Lsn, fence: Option<Instant> },
}

fn standing(st: &State, me: &str) -> Standing {
    match &st.meta.role {
        Role::Standalone => Standing::Primary {
            voters: Vec::new(),
            read_index: st.commit_lsn,
            barrier: 0,
            fence: None,
        },
        Role::Primary { voters, .. } => Standing::Primary {
            voters: voters.iter().map(|r| r.name.clone()).collect(),
            read_index: st.commit_lsn,
            barrier: st.meta.barrier_lsn,
            fence: st.lease.fence(),
        },
        Role::Secondary { primary } => {
            Standing::NotPrimary(primary.clone().filter(|p| p.as_str() != me))
        }
    }
}

impl Shard {
    /// Rows with `low <= key <= high` as of a moment between the call and its answer, no
    /// older than any write acknowledged by any primary before the call (see the module
    /// notes); the applied LSN with them.
    pub async fn read_linearizable(
        &self,
        low: i64,
        high: i64,
    ) -> std::result::Result<(Vec<Row>, Lsn), ErrorBody> {
        let core = &self.core;
        let arrived = Instant::now();
        let deadline = tokio::time::Instant::now() + READ_DEADLINE;
        // 1. The fence of a new primary.
        let fence = match standing(&core.lock_state(), &core.node_name) {
            Standing::NotPrimary(p) => return Err(not_primary(core, p)),
            Standing::Primary { fence, .. } => fence,
        };
        if let Some(t) = fence {
            tokio::time::sleep_until(t.into()).await;
        }
        // 2. Still the primary, with a lease that covers the moment the read arrived (ask
        //    every peer at once when it does not).
        let mut lease_rx = core.lease_tick.subscribe();
        let mut nudged = false;
        let read_index = loop {
            let (voters, read_index, barrier) = {
                let st = core.lock_state();
                match standing(&st, &core.node_name) {
                    Standing::NotPrimary(p) => return Err(not_primary(core, p)),
                    Standing::Primary { voters, read_index, barrier, .. } => {
                        let now = Instant::now();
                        let covered = st
                            .lease
                            .majority_time(&core.node_name, &voters, now)
                            .is_some_and(|t| t + LEASE > now || t >= arrived);
                        if covered && read_index >= barrier {
                            break read_index;
                        }
                        (voters, read_index, barrier)
                    }
                }
            };
            if !nudged {
                // Send every peer something now rather than at the next heartbeat.
                core.tick.send_modify(|t| *t = t.wrapping_add(1));
                nudged = true;
            }
            let waited = tokio::time::timeout_at(deadline, lease_rx.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                return Err(ErrorBody::unavailable(format!(
                    "{} cannot confirm it is still the primary of shard {} ({} voters; commit {read_index}, barrier {barrier}); retry",
                    core.node_name,
                    core.id,
                    voters.len()
                )));
            }
        };
        // 3. Everything committed when the read arrived is applied.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.wait_visible(read_index, left.max(Duration::from_millis(1))).await?;
        Ok(self.read(low, high))
    }

    /// Waits until a new primary's fence is over, so that nothing it acknowledges can be
    /// missed by a linearizable read at an older primary whose lease is still running.
    pub async fn wait_fence(&self) {
        let fence = self.core.lock_state().lease.fence();
        if let Some(t) = fence {
            tokio::time::sleep_until(t.into()).await;
        }
    }
}

impl Core {
    /// A voter answered a message of `epoch` we sent at `sent_at`.
    pub(crate) fn lease_ack(&self, peer: &str, epoch: Epoch, sent_at: Instant) {
        self.lock_state().lease.acknowledged(peer, epoch, sent_at);
        self.lease_tick.send_modify(|t| *t = t.wrapping_add(1));
    }
}

fn not_primary(core: &Core, primary: Option<String>) -> ErrorBody {
    let known = match &primary {
        Some(p) => format!("; its primary is {p}"),
        None => String::new(),
    };
    ErrorBody::not_primary(
        primary,
        format!(
            "{} is not the primary of shard {}{known}; a linearizable read needs the primary",
            core.node_name, core.id
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_majority_of_answers_sets_the_lease() {
        let t0 = Instant::now();
        let mut l = Lease::default();
        l.restart(3, false);
        let voters = names(&["A", "B", "C"]);
        let now = t0 + Duration::from_millis(500);
        // Only the primary itself: no majority of three.
        assert_eq!(l.majority_time("A", &voters, now), None);
        l.acknowledged("B", 3, t0 + Duration::from_millis(10));
        assert_eq!(l.majority_time("A", &voters, now), Some(t0 + Duration::from_millis(10)));
        // A later answer from C moves the lease to the second-latest time of three.
        l.acknowledged("C", 3, t0 + Duration::from_millis(30));
        assert_eq!(l.majority_time("A", &voters, now), Some(t0 + Duration::from_millis(30)));
        // An older answer never moves it back; another epoch's answer does not count.
        l.acknowledged("C", 3, t0 + Duration::from_millis(20));
        l.acknowledged("B", 2, t0 + Duration::from_millis(90));
        assert_eq!(l.majority_time("A", &voters, now), Some(t0 + Duration::from_millis(30)));
    }

    #[test]
    fn five_voters_need_two_answers_besides_the_primary() {
        let t0 = Instant::now();
        let mut l = Lease::default();
        l.restart(1, false);
        let voters = names(&["A", "B", "C", "D", "E"]);
        let now = t0 + Duration::from_millis(100);
        l.acknowledged("B", 1, t0 + Duration::from_millis(40));
        assert_eq!(l.majority_time("A", &voters, now), None);
        l.acknowledged("C", 1, t0 + Duration::from_millis(20));
        assert_eq!(l.majority_time("A", &voters, now), Some(t0 + Duration::from_millis(20)));
    }

    #[test]
    fn a_new_role_forgets_answers_and_may_fence() {
        let mut l = Lease::default();
        l.restart(1, false);
        l.acknowledged("B", 1, Instant::now());
        l.restart(2, true);
        assert!(l.fence().is_some());
        assert_eq!(l.majority_time("A", &names(&["A", "B"]), Instant::now()), None);
        l.restart(3, false);
        assert!(l.fence().is_none());
    }
}
