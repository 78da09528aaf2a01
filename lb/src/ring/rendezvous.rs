//! Rendezvous (highest random weight) hashing (Thaler & Ravishankar, 1996): a key goes to the
//! server with the highest xxh3(key, server id). No structure to build, O(N) per lookup,
//! and exactly minimal disruption: removing a server moves only its keys, adding one moves
//! only the keys it now wins.

use super::hash::{mix2, RENDEZVOUS_SEED};
use super::{check_distinct, Balancer, LoadView, Result, RingKind, ServerId};

/// Rendezvous hashing over a set of servers.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    servers: Vec<ServerId>,
}

impl Rendezvous {
    /// Rendezvous hashing over `servers` (their order does not matter).
    pub fn new(servers: &[ServerId]) -> Result<Self> {
        check_distinct(servers)?;
        Ok(Rendezvous { servers: servers.to_vec() })
    }

    /// Score of `server` for `key`; ties (improbable) go to the larger id.
    fn score(key: u64, server: ServerId) -> (u64, ServerId) {
        (mix2(key, server, RENDEZVOUS_SEED), server)
    }
}

impl Balancer for Rendezvous {
    fn kind(&self) -> RingKind {
        RingKind::Rendezvous
    }

    fn servers(&self) -> &[ServerId] {
        &self.servers
    }

    fn pick(&self, key: u64, _load: &dyn LoadView) -> Option<ServerId> {
        self.servers.iter().copied().max_by_key(|&s| Self::score(key, s))
    }

    /// Servers in decreasing score: the ones the key would go to as better ones leave.
    fn candidates(&self, key: u64, n: usize) -> Vec<ServerId> {
        let mut scored: Vec<_> = self.servers.iter().map(|&s| Self::score(key, s)).collect();
        scored.sort_unstable_by(|a, b| b.cmp(a));
        scored.into_iter().take(n).map(|(_, s)| s).collect()
    }
}
