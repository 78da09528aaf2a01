//! The assignment's analyses computed on the ring alone (no IO): how
//! 10,000 requests spread over N servers, for each hash family. `shardgate analyze stage1`
//! prints and charts these; its `--live` mode measures the same through a running balancer.

use std::collections::{BTreeMap, HashSet};

use rand::Rng;

use crate::members::SIX_DIGITS;
use crate::ring::{build, Result, RingKind, ServerId};

/// Requests per server after sending a batch through one ring.
#[derive(Debug, Clone, PartialEq)]
pub struct Distribution {
    /// The family and parameters.
    pub kind: RingKind,
    /// The servers, in the order given to the ring.
    pub servers: Vec<ServerId>,
    /// Requests each server got, in the order of `servers`.
    pub counts: Vec<u64>,
}

/// Summary of a distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadStats {
    /// Servers.
    pub n: usize,
    /// Mean requests per server.
    pub mean: f64,
    /// Population standard deviation of the requests per server.
    pub stddev: f64,
    /// Fewest requests on one server.
    pub min: u64,
    /// Most requests on one server.
    pub max: u64,
}

impl LoadStats {
    /// Of a list of per-server counts (all zero for an empty list).
    pub fn of(counts: &[u64]) -> LoadStats {
        let n = counts.len();
        if n == 0 {
            return LoadStats { n, mean: 0.0, stddev: 0.0, min: 0, max: 0 };
        }
        let mean = counts.iter().sum::<u64>() as f64 / n as f64;
        let var = counts.iter().map(|&c| (c as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        LoadStats {
            n,
            mean,
            stddev: var.sqrt(),
            min: *counts.iter().min().unwrap_or(&0),
            max: *counts.iter().max().unwrap_or(&0),
        }
    }

    /// The busiest server's load over the mean (1.0 is perfect balance).
    pub fn max_over_mean(&self) -> f64 {
        if self.mean == 0.0 {
            return 0.0;
        }
        self.max as f64 / self.mean
    }

    /// Standard deviation over mean (coefficient of variation).
    pub fn cv(&self) -> f64 {
        if self.mean == 0.0 {
            return 0.0;
        }
        self.stddev / self.mean
    }
}

impl Distribution {
    /// The summary.
    pub fn stats(&self) -> LoadStats {
        LoadStats::of(&self.counts)
    }
}

/// `count` distinct random 6-digit ids (server ids); `count` must be at most 900,000.
pub fn random_server_ids(count: usize, rng: &mut impl Rng) -> Vec<ServerId> {
    let mut seen = HashSet::with_capacity(count);
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let id = rng.gen_range(SIX_DIGITS);
        if seen.insert(id) {
            out.push(id);
        }
    }
    out
}

/// `count` random 6-digit request ids (repeats allowed, as with real clients).
pub fn random_request_ids(count: usize, rng: &mut impl Rng) -> Vec<u64> {
    (0..count).map(|_| rng.gen_range(SIX_DIGITS)).collect()
}

/// Sends `requests` through a ring of `kind` over `servers`. Every request is taken to be in
/// flight at once (the assignment sends them asynchronously), so the `bounded` family sees
/// the load of the requests placed before it; the other families ignore load.
pub fn distribute(kind: &RingKind, servers: &[ServerId], requests: &[u64]) -> Result<Distribution> {
    let ring = build(kind, servers)?;
    let mut load: BTreeMap<ServerId, u64> = servers.iter().map(|&s| (s, 0)).collect();
    for &r in requests {
        if let Some(s) = ring.pick(r, &load) {
            *load.entry(s).or_insert(0) += 1;
        }
    }
    let counts = servers.iter().map(|s| load[s]).collect();
    Ok(Distribution { kind: *kind, servers: servers.to_vec(), counts })
}

/// for each N in `ns`, the stats of `requests` over N random servers (`trials` server
/// sets per N, stats averaged over them so one lucky set of ids does not decide).
pub fn scaling(
    kind: &RingKind,
    ns: impl IntoIterator<Item = usize>,
    requests: &[u64],
    trials: usize,
    rng: &mut impl Rng,
) -> Result<Vec<LoadStats>> {
    let trials = trials.max(1);
    let mut out = Vec::new();
    for n in ns {
        let mut acc = LoadStats { n, mean: 0.0, stddev: 0.0, min: 0, max: 0 };
        let (mut min, mut max) = (0.0, 0.0);
        for _ in 0..trials {
            let servers = random_server_ids(n, rng);
            let s = distribute(kind, &servers, requests)?.stats();
            acc.mean += s.mean;
            acc.stddev += s.stddev;
            min += s.min as f64;
            max += s.max as f64;
        }
        let t = trials as f64;
        acc.mean /= t;
        acc.stddev /= t;
        acc.min = (min / t).round() as u64;
        acc.max = (max / t).round() as u64;
        out.push(acc);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn stats_of_counts() {
        let s = LoadStats::of(&[2, 4, 6]);
        assert_eq!((s.n, s.min, s.max), (3, 2, 6));
        assert!((s.mean - 4.0).abs() < 1e-9);
        assert!((s.stddev - (8.0f64 / 3.0).sqrt()).abs() < 1e-9);
        assert!((s.max_over_mean() - 1.5).abs() < 1e-9);
        assert_eq!(LoadStats::of(&[]).max_over_mean(), 0.0);
    }

    #[test]
    fn every_family_places_every_request() {
        let mut rng = StdRng::seed_from_u64(3);
        let servers = random_server_ids(3, &mut rng);
        let reqs = random_request_ids(10_000, &mut rng);
        for kind in RingKind::families() {
            let d = distribute(&kind, &servers, &reqs).unwrap();
            assert_eq!(d.counts.iter().sum::<u64>(), 10_000, "{kind}");
        }
    }

    #[test]
    fn bounded_loads_stay_under_the_cap() {
        let mut rng = StdRng::seed_from_u64(4);
        let servers = random_server_ids(5, &mut rng);
        let reqs = random_request_ids(10_000, &mut rng);
        let kind: RingKind = "bounded:c=1.25".parse().unwrap();
        let s = distribute(&kind, &servers, &reqs).unwrap().stats();
        assert!(s.max_over_mean() <= 1.26, "{s:?}");
    }

    #[test]
    fn scaling_reports_each_n() {
        let mut rng = StdRng::seed_from_u64(5);
        let reqs = random_request_ids(2_000, &mut rng);
        let rows = scaling(&RingKind::Jump, 2..=6, &reqs, 2, &mut rng).unwrap();
        assert_eq!(rows.iter().map(|r| r.n).collect::<Vec<_>>(), vec![2, 3, 4, 5, 6]);
        for r in rows {
            assert!((r.mean - 2_000.0 / r.n as f64).abs() < 1e-6);
        }
    }
}
