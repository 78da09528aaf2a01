//! What a balancer may know of the servers' current load.

use std::collections::{BTreeMap, HashMap};

use super::ServerId;

/// In-flight request counts per server, as the router sees them at the moment of a pick.
/// Only the `bounded` family reads it.
pub trait LoadView {
    /// Requests in flight on `server` (0 for a server it knows nothing of).
    fn in_flight(&self, server: ServerId) -> u64;

    /// Requests in flight on all of `servers`; override when a running total is at hand.
    fn total_in_flight(&self, servers: &[ServerId]) -> u64 {
        servers.iter().map(|&s| self.in_flight(s)).sum()
    }
}

/// No load information: every server is idle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoLoad;

impl LoadView for NoLoad {
    fn in_flight(&self, _server: ServerId) -> u64 {
        0
    }

    fn total_in_flight(&self, _servers: &[ServerId]) -> u64 {
        0
    }
}

impl<S: std::hash::BuildHasher> LoadView for HashMap<ServerId, u64, S> {
    fn in_flight(&self, server: ServerId) -> u64 {
        self.get(&server).copied().unwrap_or(0)
    }
}

impl LoadView for BTreeMap<ServerId, u64> {
    fn in_flight(&self, server: ServerId) -> u64 {
        self.get(&server).copied().unwrap_or(0)
    }
}

impl<F: Fn(ServerId) -> u64> LoadView for F {
    fn in_flight(&self, server: ServerId) -> u64 {
        self(server)
    }
}
