//! Maglev hashing (Eisenbud et al., NSDI 2016): a lookup table of prime size M; each server
//! has a permutation of the table positions, `(offset + j · skip) mod M` with offset and skip
//! from two hashes of its id; servers take turns claiming the next free position of their
//! permutation until the table is full. Every server gets M/N positions ± 1, and a lookup
//! is one table read. Removing a server moves its keys and, by design, a small share of
//! others (the paper's "minimal disruption" is approximate); the tests bound it.

use std::fmt;

use super::hash::{mix, mix2, MAGLEV_OFFSET_SEED, MAGLEV_SKIP_SEED};
use super::{check_distinct, Balancer, LoadView, Result, RingError, RingKind, ServerId};

/// The largest table accepted.
const MAX_TABLE: u64 = 1 << 24;
/// Marks a table entry not yet claimed while filling.
const EMPTY: u32 = u32::MAX;

/// Parameters of the Maglev table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevParams {
    /// Table size M, a prime well above the number of servers (65537).
    pub table_size: u64,
}

impl Default for MaglevParams {
    fn default() -> Self {
        MaglevParams { table_size: 65537 }
    }
}

impl MaglevParams {
    /// Checks that the table size is a prime in range.
    pub fn validate(&self) -> Result<()> {
        let m = self.table_size;
        if !(2..=MAX_TABLE).contains(&m) || !is_prime(m) {
            return Err(RingError::InvalidParam {
                param: "table",
                detail: format!("{m} is not a prime in 2..={MAX_TABLE}"),
            });
        }
        Ok(())
    }
}

/// Trial division: table sizes are at most 2^24.
fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The Maglev lookup table over a fixed set of servers.
#[derive(Clone)]
pub struct MaglevTable {
    params: MaglevParams,
    servers: Vec<ServerId>,
    /// Position → index of the server in `servers`.
    table: Vec<u32>,
}

impl MaglevTable {
    /// Fills the table. Servers take turns in id order (not list order), so the table
    /// depends only on the set of servers.
    pub fn new(params: MaglevParams, servers: &[ServerId]) -> Result<Self> {
        params.validate()?;
        check_distinct(servers)?;
        let m = params.table_size;
        if servers.len() as u64 > m {
            return Err(RingError::InvalidParam {
                param: "table",
                detail: format!("{m} entries for {} servers", servers.len()),
            });
        }
        let mut table = Vec::new();
        if !servers.is_empty() {
            let mut order: Vec<u32> = (0..servers.len() as u32).collect();
            order.sort_unstable_by_key(|&i| servers[i as usize]);
            let offset: Vec<u64> = order
                .iter()
                .map(|&i| mix2(servers[i as usize], 0, MAGLEV_OFFSET_SEED) % m)
                .collect();
            let skip: Vec<u64> = order
                .iter()
                .map(|&i| mix2(servers[i as usize], 0, MAGLEV_SKIP_SEED) % (m - 1) + 1)
                .collect();
            let mut next = vec![0u64; order.len()];
            table = vec![EMPTY; m as usize];
            let mut filled = 0u64;
            'fill: loop {
                for (t, &idx) in order.iter().enumerate() {
                    // M is prime and 0 < skip < M, so the permutation visits every position
                    // and a free one is always found while the table is not full.
                    let mut c = (offset[t] + next[t] * skip[t]) % m;
                    while table[c as usize] != EMPTY {
                        next[t] += 1;
                        c = (offset[t] + next[t] * skip[t]) % m;
                    }
                    table[c as usize] = idx;
                    next[t] += 1;
                    filled += 1;
                    if filled == m {
                        break 'fill;
                    }
                }
            }
        }
        Ok(MaglevTable { params, servers: servers.to_vec(), table })
    }

    /// The parameters it was built with.
    pub fn params(&self) -> MaglevParams {
        self.params
    }

    /// How many table entries each server holds, in `servers()` order.
    pub fn entries_per_server(&self) -> Vec<u64> {
        let mut counts = vec![0u64; self.servers.len()];
        for &i in &self.table {
            counts[i as usize] += 1;
        }
        counts
    }

    fn position(&self, key: u64) -> usize {
        (mix(key) % self.params.table_size) as usize
    }
}

impl Balancer for MaglevTable {
    fn kind(&self) -> RingKind {
        RingKind::Maglev(self.params)
    }

    fn servers(&self) -> &[ServerId] {
        &self.servers
    }

    fn pick(&self, key: u64, _load: &dyn LoadView) -> Option<ServerId> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.servers[self.table[self.position(key)] as usize])
    }

    /// The next distinct servers along the table from the key's position (positions are
    /// pseudo-random, so the fallbacks are spread evenly).
    fn candidates(&self, key: u64, n: usize) -> Vec<ServerId> {
        if self.table.is_empty() {
            return Vec::new();
        }
        let p = self.position(key);
        let walk = self.table[p..].iter().chain(&self.table[..p]).copied();
        super::distinct_indices(walk, self.servers.len(), n)
            .into_iter()
            .map(|i| self.servers[i as usize])
            .collect()
    }
}

impl fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaglevTable")
            .field("params", &self.params)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_size_must_be_prime() {
        assert!(MaglevParams { table_size: 65537 }.validate().is_ok());
        assert!(MaglevParams { table_size: 65536 }.validate().is_err());
        assert!(MaglevParams { table_size: 1 }.validate().is_err());
        assert!(is_prime(2) && is_prime(13) && !is_prime(15) && !is_prime(65535));
    }

    #[test]
    fn every_server_gets_its_share_of_entries() {
        let servers: Vec<u64> = (1..=7).map(|i| i * 104_729).collect();
        let t = MaglevTable::new(MaglevParams::default(), &servers).unwrap();
        let counts = t.entries_per_server();
        assert_eq!(counts.iter().sum::<u64>(), 65537);
        // Round-robin fill: shares differ by at most one entry.
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(max - min <= 1, "{counts:?}");
    }

    #[test]
    fn more_servers_than_entries_is_an_error() {
        let p = MaglevParams { table_size: 3 };
        assert!(MaglevTable::new(p, &[1, 2, 3]).is_ok());
        assert!(MaglevTable::new(p, &[1, 2, 3, 4]).is_err());
    }
}
