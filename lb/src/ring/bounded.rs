//! Consistent hashing with bounded loads (Mirrokni, Thorup & Zadimoghaddam, SODA 2018): on
//! the mixed ring, a key goes to the first server clockwise whose in-flight load is below
//! the cap `⌈c · (total + 1) / N⌉` (the `+ 1` counts the request being placed). With c ≥ 1
//! some server is always below the cap, and no server ever carries more than about c times
//! the average. With no load it is exactly the mixed ring.

use std::fmt;

use super::mixed::{MixedParams, MixedRing};
use super::{Balancer, LoadView, Result, RingError, RingKind, ServerId};

/// Parameters of the bounded-load ring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoundedParams {
    /// Load factor c ≥ 1 (1.25): a server may carry up to c × the average in-flight load.
    pub c: f64,
    /// Points per server of the underlying mixed ring (160).
    pub points_per_server: u32,
}

impl Default for BoundedParams {
    fn default() -> Self {
        BoundedParams { c: 1.25, points_per_server: MixedParams::default().points_per_server }
    }
}

impl BoundedParams {
    /// Checks the ranges (c must be finite and at least 1, or no server may be below the cap).
    pub fn validate(&self) -> Result<()> {
        if !(self.c.is_finite() && self.c >= 1.0) {
            return Err(RingError::InvalidParam {
                param: "c",
                detail: format!("{} is not a finite number >= 1", self.c),
            });
        }
        MixedParams { points_per_server: self.points_per_server }.validate()
    }
}

/// The load cap: `⌈c · (total_in_flight + 1) / servers⌉` (0 servers: 0).
pub fn bounded_cap(c: f64, total_in_flight: u64, servers: usize) -> u64 {
    if servers == 0 {
        return 0;
    }
    (c * (total_in_flight as f64 + 1.0) / servers as f64).ceil() as u64
}

/// The mixed ring with a load cap.
#[derive(Clone)]
pub struct BoundedRing {
    params: BoundedParams,
    ring: MixedRing,
}

impl BoundedRing {
    /// Builds the underlying mixed ring.
    pub fn new(params: BoundedParams, servers: &[ServerId]) -> Result<Self> {
        params.validate()?;
        let ring =
            MixedRing::new(MixedParams { points_per_server: params.points_per_server }, servers)?;
        Ok(BoundedRing { params, ring })
    }

    /// The parameters it was built with.
    pub fn params(&self) -> BoundedParams {
        self.params
    }
}

impl Balancer for BoundedRing {
    fn kind(&self) -> RingKind {
        RingKind::Bounded(self.params)
    }

    fn servers(&self) -> &[ServerId] {
        self.ring.servers()
    }

    /// The first server clockwise below the cap; if the view is inconsistent and none is
    /// (loads of servers outside the ring, or a racing update), the least loaded one, the
    /// earliest in ring order among equals.
    fn pick(&self, key: u64, load: &dyn LoadView) -> Option<ServerId> {
        let servers = self.ring.servers();
        let first = self.ring.first_index(key)?;
        let cap = bounded_cap(self.params.c, load.total_in_flight(servers), servers.len());
        let first_id = servers[first as usize];
        let first_load = load.in_flight(first_id);
        if first_load < cap {
            return Some(first_id);
        }
        let mut best = (first_load, first_id);
        for idx in super::distinct_indices(self.ring.walk(key), servers.len(), servers.len())
            .into_iter()
            .skip(1)
        {
            let id = servers[idx as usize];
            let l = load.in_flight(id);
            if l < cap {
                return Some(id);
            }
            if l < best.0 {
                best = (l, id);
            }
        }
        Some(best.1)
    }

    fn candidates(&self, key: u64, n: usize) -> Vec<ServerId> {
        self.ring.candidates(key, n)
    }
}

impl fmt::Debug for BoundedRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedRing")
            .field("params", &self.params)
            .field("servers", &self.ring.servers())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_counts_the_new_request_and_rounds_up() {
        assert_eq!(bounded_cap(1.25, 0, 10), 1);
        assert_eq!(bounded_cap(1.25, 99, 10), 13); // 1.25 · 100 / 10 = 12.5 → 13
        assert_eq!(bounded_cap(1.0, 9, 10), 1);
        assert_eq!(bounded_cap(2.0, 5, 0), 0);
    }

    #[test]
    fn c_below_one_is_rejected() {
        let p = BoundedParams { c: 0.9, ..Default::default() };
        assert!(BoundedRing::new(p, &[1, 2]).is_err());
        let p = BoundedParams { c: f64::NAN, ..Default::default() };
        assert!(p.validate().is_err());
    }
}
