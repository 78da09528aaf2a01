//! Request → server mappers: pure code, no IO, no async.
//!
//! Every family implements [`Balancer`] and is built immutably from a list of server ids by
//! [`build`]; a membership change makes a new balancer ([`Balancer::rebuild`] of the current
//! one) and swaps the `Arc`, so lookups never wait and never see a half-updated ring.
//!
//! | family (`--hash`) | structure | removing a server moves | adding one moves |
//! | --- | --- | --- | --- |
//! | `assignment` (default) | the contract's 512 slots, K = 9, `H`, `Φ`, probing | only its keys with [`Balancer::rebuild`]; with a fresh `build`, also keys of servers it had displaced by probing (none if it was the last in the list) | only keys onto it |
//! | `mixed` (`xxh3`) | xxh3 points, binary search | only its keys | ~1/N, only onto it |
//! | `maglev` | prime lookup table | its keys plus a little (a few %) | ~1/N |
//! | `jump` | Lamping & Veach over the list | only its keys, if it is the last in the list | ~1/N, only onto it (appended) |
//! | `rendezvous` (`hrw`) | highest xxh3(key, server) | only its keys | ~1/N, only onto it |
//! | `bounded` | the mixed ring, skipping servers at the load cap | only its keys (no load) | ~1/N (no load) |
//!
//! Keys are `u64`: a request id as is (the assignment's `H(i)` uses it directly, the other
//! families hash it with xxh3 first), or [`key_of`] bytes (a header, the client address, the
//! path).

mod assignment;
mod bounded;
mod hash;
mod jump;
mod kind;
mod load;
mod maglev;
mod mixed;
mod rendezvous;

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

pub use assignment::{
    contract_request_slot, contract_virtual_slot, AssignmentParams, AssignmentRing, CustomSlotFns,
    Probing, SlotFns,
};
pub use bounded::{bounded_cap, BoundedParams, BoundedRing};
pub use hash::key_of;
pub use jump::{jump_hash, JumpHash};
pub use kind::{RingKind, HASH_HELP};
pub use load::{LoadView, NoLoad};
pub use maglev::{MaglevParams, MaglevTable};
pub use mixed::{MixedParams, MixedRing};
pub use rendezvous::Rendezvous;

/// A server's integer id (the contract uses random 6-digit ids, fixed for a server's life).
pub type ServerId = u64;

/// Why a ring could not be built or a `--hash` value not parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RingError {
    /// More virtual servers than slots: probing could never place them all.
    #[error("too many virtual servers; {needed} needed but the ring has {slots} slots")]
    TooManyVirtualServers {
        /// Servers × virtual servers per server.
        needed: u64,
        /// Slots of the ring.
        slots: u64,
    },
    /// The same server id appears twice in the list.
    #[error("duplicate server id; {0} appears more than once")]
    DuplicateServer(ServerId),
    /// A parameter is out of range.
    #[error("invalid ring parameter; {param}: {detail}")]
    InvalidParam {
        /// The parameter's name as in `--hash` (`slots`, `k`, `points`, `table`, `c`, ...).
        param: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A `--hash` value that names no family or has a malformed parameter list.
    #[error("unknown hash family; {0}")]
    Unknown(String),
}

/// Result of ring construction and parsing.
pub type Result<T> = std::result::Result<T, RingError>;

/// A request → server mapper, immutable once built. Object-safe: routers hold an
/// `Arc<dyn Balancer>` and swap it on membership changes.
pub trait Balancer: Send + Sync + fmt::Debug {
    /// The family and parameters this balancer was built with.
    fn kind(&self) -> RingKind;

    /// The servers it was built from, in the order given.
    fn servers(&self) -> &[ServerId];

    /// The server for `key` given the servers' in-flight loads (only `bounded` looks at
    /// them); `None` only when there is no server.
    fn pick(&self, key: u64, load: &dyn LoadView) -> Option<ServerId>;

    /// Up to `n` distinct servers to try for `key`, in order (for failover when one is
    /// dead); the first is `pick(key, &NoLoad)`. Loads are not considered.
    fn candidates(&self, key: u64, n: usize) -> Vec<ServerId>;

    /// `pick` with no load information.
    fn lookup(&self, key: u64) -> Option<ServerId> {
        self.pick(key, &NoLoad)
    }

    /// The balancer of the same kind for the next server list, after a membership change.
    /// Every family but `assignment` is a function of the list, so this is [`build`]; the
    /// assignment ring instead keeps each remaining server's slots where they were (as the
    /// original implementation did) and probes only for new servers, so removing any
    /// server moves only its keys. A fresh `build` of the same list can differ from it.
    fn rebuild(&self, servers: &[ServerId]) -> Result<Arc<dyn Balancer>> {
        build(&self.kind(), servers)
    }
}

/// Builds the balancer of `kind` over `servers` (order matters for `assignment`, where
/// earlier servers win slot collisions, and for `jump`, whose buckets are list positions).
/// An empty list gives a balancer that picks nothing.
pub fn build(kind: &RingKind, servers: &[ServerId]) -> Result<Arc<dyn Balancer>> {
    kind.validate()?;
    Ok(match *kind {
        RingKind::Assignment(p) => Arc::new(AssignmentRing::new(p, servers)?),
        RingKind::Mixed(p) => Arc::new(MixedRing::new(p, servers)?),
        RingKind::Maglev(p) => Arc::new(MaglevTable::new(p, servers)?),
        RingKind::Jump => Arc::new(JumpHash::new(servers)?),
        RingKind::Rendezvous => Arc::new(Rendezvous::new(servers)?),
        RingKind::Bounded(p) => Arc::new(BoundedRing::new(p, servers)?),
    })
}

/// Rejects a list with a repeated id: every family assumes distinct servers.
fn check_distinct(servers: &[ServerId]) -> Result<()> {
    let mut seen = HashSet::with_capacity(servers.len());
    for &id in servers {
        if !seen.insert(id) {
            return Err(RingError::DuplicateServer(id));
        }
    }
    Ok(())
}

/// Collects up to `want` distinct server indices from `owners` (a walk in ring order), for
/// `servers` servers in all; stops early once every server has been seen.
fn distinct_indices(owners: impl Iterator<Item = u32>, servers: usize, want: usize) -> Vec<u32> {
    let want = want.min(servers);
    let mut out = Vec::with_capacity(want);
    if want == 0 {
        return out;
    }
    let mut seen = vec![false; servers];
    for idx in owners {
        let s = &mut seen[idx as usize];
        if !*s {
            *s = true;
            out.push(idx);
            if out.len() == want {
                break;
            }
        }
    }
    out
}
