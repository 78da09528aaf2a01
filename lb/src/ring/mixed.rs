//! A well-mixed hash ring (ketama-style): each server owns `points` 64-bit points, xxh3 of
//! `(server id, replica index)`; a key goes to the first point at or after xxh3(key),
//! wrapping. Points depend only on the server's id, so the ring depends only on the set of
//! servers: removing one moves only its keys, adding one moves only keys onto it.

use std::fmt;

use super::hash::{mix, mix2, POINT_SEED};
use super::{check_distinct, Balancer, LoadView, Result, RingError, RingKind, ServerId};

/// The most points a ring may hold in all (servers × points per server).
const MAX_POINTS: u64 = 1 << 26;

/// Parameters of the mixed ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixedParams {
    /// Points per server (160, as ketama).
    pub points_per_server: u32,
}

impl Default for MixedParams {
    fn default() -> Self {
        MixedParams { points_per_server: 160 }
    }
}

impl MixedParams {
    /// Checks the ranges.
    pub fn validate(&self) -> Result<()> {
        if self.points_per_server == 0 {
            return Err(RingError::InvalidParam {
                param: "points",
                detail: "0 points per server".into(),
            });
        }
        Ok(())
    }
}

/// The xxh3 point ring over a fixed set of servers.
#[derive(Clone)]
pub struct MixedRing {
    params: MixedParams,
    servers: Vec<ServerId>,
    /// Sorted points; `owners[i]` is the index of the server owning `points[i]`.
    points: Vec<u64>,
    owners: Vec<u32>,
}

impl MixedRing {
    /// Hashes every server's points and sorts them.
    pub fn new(params: MixedParams, servers: &[ServerId]) -> Result<Self> {
        params.validate()?;
        check_distinct(servers)?;
        let total = servers.len() as u64 * u64::from(params.points_per_server);
        if total > MAX_POINTS {
            return Err(RingError::InvalidParam {
                param: "points",
                detail: format!("{total} points in all, more than {MAX_POINTS}"),
            });
        }
        let mut all: Vec<(u64, ServerId, u32)> = Vec::with_capacity(total as usize);
        for (idx, &id) in servers.iter().enumerate() {
            for r in 0..params.points_per_server {
                all.push((mix2(id, u64::from(r), POINT_SEED), id, idx as u32));
            }
        }
        // Equal points (astronomically rare) are ordered by id, never by list position, so
        // the ring stays a function of the set.
        all.sort_unstable_by_key(|&(p, id, _)| (p, id));
        let points = all.iter().map(|&(p, _, _)| p).collect();
        let owners = all.iter().map(|&(_, _, o)| o).collect();
        Ok(MixedRing { params, servers: servers.to_vec(), points, owners })
    }

    /// The parameters it was built with.
    pub fn params(&self) -> MixedParams {
        self.params
    }

    /// Index of the first point at or after `key`'s hash (wrapping); the ring is not empty.
    fn start(&self, key: u64) -> usize {
        let h = mix(key);
        let i = self.points.partition_point(|&p| p < h);
        if i == self.points.len() {
            0
        } else {
            i
        }
    }

    /// Server indices in ring order from `key`'s point, all the way round (with repeats).
    pub(crate) fn walk(&self, key: u64) -> impl Iterator<Item = u32> + '_ {
        let start = if self.points.is_empty() { 0 } else { self.start(key) };
        self.owners[start..].iter().chain(&self.owners[..start]).copied()
    }

    /// The index of the server owning `key`'s point.
    pub(crate) fn first_index(&self, key: u64) -> Option<u32> {
        if self.points.is_empty() {
            None
        } else {
            Some(self.owners[self.start(key)])
        }
    }
}

impl Balancer for MixedRing {
    fn kind(&self) -> RingKind {
        RingKind::Mixed(self.params)
    }

    fn servers(&self) -> &[ServerId] {
        &self.servers
    }

    fn pick(&self, key: u64, _load: &dyn LoadView) -> Option<ServerId> {
        self.first_index(key).map(|i| self.servers[i as usize])
    }

    fn candidates(&self, key: u64, n: usize) -> Vec<ServerId> {
        super::distinct_indices(self.walk(key), self.servers.len(), n)
            .into_iter()
            .map(|i| self.servers[i as usize])
            .collect()
    }
}

impl fmt::Debug for MixedRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MixedRing")
            .field("params", &self.params)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}
