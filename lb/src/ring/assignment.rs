//! The assignment's ring: a fixed number of slots (512), K virtual servers per server (9) at
//! `Φ(i, j) = i² + j² + 2j + 25 mod slots`, requests at `H(i) = i² + 2i + 17 mod slots`,
//! collisions resolved by probing, a request served by the first server slot clockwise from
//! its own slot (its own slot included, wrapping past the end).
//!
//! [`AssignmentRing::new`] places servers in list order, each with its K virtual servers in
//! `j` order, so an earlier server wins a collision. The manager's list is in order of
//! addition, so appending a server never moves another server's slot. Removing a server is
//! different: a fresh ring without it lets servers it had displaced by probing fall back
//! into its slots, which moves keys that were not its own (measured with 20,000 keys: under
//! 1% on average up to 24 servers, but up to ~35% of them near a full ring of 56).
//! [`AssignmentRing::with_servers`] (what [`Balancer::rebuild`] does) avoids that, as the
//! original implementation did: remaining servers keep their slots and only new servers
//! probe, so a membership change moves only the keys of removed servers and keys onto new
//! ones; the price is that the ring depends on the history of changes, not on the list
//! alone.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::hash::{mix, mix2, SLOT_SEED};
use super::{check_distinct, Balancer, LoadView, Result, RingError, RingKind, ServerId};

/// The largest slot count accepted (the table is allocated in full).
pub(crate) const MAX_SLOTS: u64 = 1 << 24;

/// How a virtual server whose slot is taken finds another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Probing {
    /// `s, s+1, s+2, …` (mod slots): the contract's default.
    #[default]
    Linear,
    /// `s, s+1, s+4, s+9, …` (mod slots). These offsets reach only some slots (with 512 slots,
    /// about a sixth), so when none of them is free the search falls back to linear probing
    /// from `s`: every virtual server is placed whenever a slot is free.
    Quadratic,
}

/// The contract's request slot `H(i) = i² + 2i + 17 mod slots`, exact for any `i` (u128
/// arithmetic on `i mod slots`). `slots` must be at least 1.
pub fn contract_request_slot(i: u64, slots: u64) -> u64 {
    let m = u128::from(slots);
    let i = u128::from(i) % m;
    ((i * i + 2 * i + 17) % m) as u64
}

/// The contract's virtual-server slot `Φ(i, j) = i² + j² + 2j + 25 mod slots`, exact for any
/// `i`, `j`. `slots` must be at least 1.
pub fn contract_virtual_slot(i: u64, j: u64, slots: u64) -> u64 {
    let m = u128::from(slots);
    let i = u128::from(i) % m;
    let j = u128::from(j) % m;
    ((i * i % m + j * j % m + 2 * j + 25) % m) as u64
}

/// User-supplied slot functions (library use only; `--hash` cannot name them).
#[derive(Debug, Clone, Copy)]
pub struct CustomSlotFns {
    /// `(request id, slots) -> slot`; the result is taken mod slots again.
    pub request: fn(u64, u64) -> u64,
    /// `(server id, j, slots) -> slot`; the result is taken mod slots again.
    pub virtual_server: fn(u64, u64, u64) -> u64,
}

impl PartialEq for CustomSlotFns {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::fn_addr_eq(self.request, other.request)
            && std::ptr::fn_addr_eq(self.virtual_server, other.virtual_server)
    }
}

/// The pair of functions that place requests and virtual servers on the slots.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum SlotFns {
    /// `H(i) = i² + 2i + 17`, `Φ(i, j) = i² + j² + 2j + 25` (`fns=contract`).
    #[default]
    Contract,
    /// xxh3 of the request id and of `(server id, j)` (`fns=xxh3`): the same slots and
    /// probing with well-mixed functions, to separate the effect of the functions from the
    /// effect of 512 slots.
    Xxh3,
    /// Functions supplied by the caller.
    Custom(CustomSlotFns),
}

impl SlotFns {
    /// The slot of request id `i` on a ring of `slots` slots.
    pub fn request_slot(&self, i: u64, slots: u64) -> u64 {
        match self {
            SlotFns::Contract => contract_request_slot(i, slots),
            SlotFns::Xxh3 => mix(i ^ SLOT_SEED) % slots,
            SlotFns::Custom(f) => (f.request)(i, slots) % slots,
        }
    }

    /// The home slot (before probing) of virtual server `j` of server `i`.
    pub fn virtual_slot(&self, i: u64, j: u64, slots: u64) -> u64 {
        match self {
            SlotFns::Contract => contract_virtual_slot(i, j, slots),
            SlotFns::Xxh3 => mix2(i, j, SLOT_SEED) % slots,
            SlotFns::Custom(f) => (f.virtual_server)(i, j, slots) % slots,
        }
    }
}

/// Parameters of the assignment ring; `Default` is the contract's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AssignmentParams {
    /// Slots on the ring (512).
    pub slots: u64,
    /// Virtual servers per server, K (9 = log2 512).
    pub virtual_per_server: u64,
    /// Collision resolution (linear).
    pub probing: Probing,
    /// `H` and `Φ` (the contract's).
    pub fns: SlotFns,
}

impl Default for AssignmentParams {
    fn default() -> Self {
        AssignmentParams {
            slots: 512,
            virtual_per_server: 9,
            probing: Probing::Linear,
            fns: SlotFns::Contract,
        }
    }
}

impl AssignmentParams {
    /// Checks the ranges (a ring's size is checked against its servers when it is built).
    pub fn validate(&self) -> Result<()> {
        if self.slots == 0 || self.slots > MAX_SLOTS {
            return Err(RingError::InvalidParam {
                param: "slots",
                detail: format!("{} is not in 1..={MAX_SLOTS}", self.slots),
            });
        }
        if self.virtual_per_server == 0 {
            return Err(RingError::InvalidParam {
                param: "k",
                detail: "0 virtual servers per server".into(),
            });
        }
        Ok(())
    }
}

/// The assignment's slot ring over a fixed list of servers.
#[derive(Clone)]
pub struct AssignmentRing {
    params: AssignmentParams,
    servers: Vec<ServerId>,
    /// Slot of virtual server `j` of server `s` at `s * K + j`.
    placed: Vec<u64>,
    /// Occupied slots in increasing order, with the index of the server holding each.
    occupied: Vec<(u64, u32)>,
}

impl AssignmentRing {
    /// Places every server's virtual servers; fails when there are more virtual servers than
    /// slots, on a repeated id, or on invalid parameters.
    pub fn new(params: AssignmentParams, servers: &[ServerId]) -> Result<Self> {
        params.validate()?;
        let empty = AssignmentRing {
            params,
            servers: Vec::new(),
            placed: Vec::new(),
            occupied: Vec::new(),
        };
        empty.place(servers, false)
    }

    /// Places `servers` on a fresh table of `self.params`; with `keep`, servers of `self`
    /// first take the slots they hold in `self`.
    fn place(&self, servers: &[ServerId], keep: bool) -> Result<Self> {
        check_distinct(servers)?;
        let params = self.params;
        let m = params.slots;
        let k = params.virtual_per_server as usize;
        let needed = (servers.len() as u64).saturating_mul(k as u64);
        if needed > m {
            return Err(RingError::TooManyVirtualServers { needed, slots: m });
        }
        let mut table: Vec<Option<u32>> = vec![None; m as usize];
        let mut placed = vec![0u64; needed as usize];
        let mut fresh = vec![true; servers.len()];
        if keep {
            let old: HashMap<ServerId, usize> =
                self.servers.iter().enumerate().map(|(i, &s)| (s, i)).collect();
            for (idx, id) in servers.iter().enumerate() {
                if let Some(&o) = old.get(id) {
                    fresh[idx] = false;
                    for j in 0..k {
                        let slot = self.placed[o * k + j];
                        table[slot as usize] = Some(idx as u32);
                        placed[idx * k + j] = slot;
                    }
                }
            }
        }
        for (idx, &id) in servers.iter().enumerate().filter(|&(i, _)| fresh[i]) {
            for j in 0..k {
                let home = params.fns.virtual_slot(id, j as u64, m);
                let slot = probe(&table, home, params.probing)
                    .expect("a free slot exists: virtual servers <= slots was checked");
                table[slot as usize] = Some(idx as u32);
                placed[idx * k + j] = slot;
            }
        }
        let occupied = table
            .iter()
            .enumerate()
            .filter_map(|(slot, owner)| owner.map(|o| (slot as u64, o)))
            .collect();
        Ok(AssignmentRing { params, servers: servers.to_vec(), placed, occupied })
    }

    /// The ring for a new server list that keeps every server also in `self` on the slots
    /// it holds now, and places the new ones (in list order) by probing around them. Fails
    /// like [`AssignmentRing::new`].
    pub fn with_servers(&self, servers: &[ServerId]) -> Result<Self> {
        self.place(servers, true)
    }

    /// The parameters it was built with.
    pub fn params(&self) -> AssignmentParams {
        self.params
    }

    /// The request slot of `key`: `H(key) mod slots`.
    pub fn request_slot(&self, key: u64) -> u64 {
        self.params.fns.request_slot(key, self.params.slots)
    }

    /// The slots held by `server`'s virtual servers, in `j` order (empty if unknown).
    pub fn slots_of(&self, server: ServerId) -> Vec<u64> {
        let k = self.params.virtual_per_server as usize;
        match self.servers.iter().position(|&s| s == server) {
            Some(idx) => self.placed[idx * k..(idx + 1) * k].to_vec(),
            None => Vec::new(),
        }
    }

    /// The whole table: which server holds each slot.
    pub fn slot_table(&self) -> Vec<Option<ServerId>> {
        let mut table = vec![None; self.params.slots as usize];
        for &(slot, idx) in &self.occupied {
            table[slot as usize] = Some(self.servers[idx as usize]);
        }
        table
    }

    /// Position in `occupied` of the first server slot at or after `key`'s request slot.
    fn start(&self, key: u64) -> usize {
        let slot = self.request_slot(key);
        let i = self.occupied.partition_point(|&(s, _)| s < slot);
        if i == self.occupied.len() {
            0
        } else {
            i
        }
    }
}

/// The slot a virtual server with home slot `home` lands on, or `None` if all are taken.
fn probe(table: &[Option<u32>], home: u64, probing: Probing) -> Option<u64> {
    let m = table.len() as u64;
    let free = |s: u64| table[s as usize].is_none();
    if probing == Probing::Quadratic {
        // t² mod m repeats with period m, so t < m tries every reachable offset.
        for t in 0..m {
            let s = ((u128::from(home) + u128::from(t) * u128::from(t)) % u128::from(m)) as u64;
            if free(s) {
                return Some(s);
            }
        }
    }
    (0..m).map(|t| (home + t) % m).find(|&s| free(s))
}

impl Balancer for AssignmentRing {
    fn kind(&self) -> RingKind {
        RingKind::Assignment(self.params)
    }

    fn servers(&self) -> &[ServerId] {
        &self.servers
    }

    fn pick(&self, key: u64, _load: &dyn LoadView) -> Option<ServerId> {
        if self.occupied.is_empty() {
            return None;
        }
        let (_, idx) = self.occupied[self.start(key)];
        Some(self.servers[idx as usize])
    }

    fn rebuild(&self, servers: &[ServerId]) -> Result<Arc<dyn Balancer>> {
        Ok(Arc::new(self.with_servers(servers)?))
    }

    fn candidates(&self, key: u64, n: usize) -> Vec<ServerId> {
        if self.occupied.is_empty() {
            return Vec::new();
        }
        let start = self.start(key);
        let walk = self.occupied[start..].iter().chain(&self.occupied[..start]).map(|&(_, o)| o);
        super::distinct_indices(walk, self.servers.len(), n)
            .into_iter()
            .map(|i| self.servers[i as usize])
            .collect()
    }
}

impl fmt::Debug for AssignmentRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssignmentRing")
            .field("params", &self.params)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_functions_are_exact_for_huge_ids() {
        // i = 2^64 - 1 ≡ 511 (mod 512): 511² + 2·511 + 17 = 262161 ≡ 17 (mod 512).
        assert_eq!(contract_request_slot(u64::MAX, 512), (511 * 511 + 2 * 511 + 17) % 512);
        assert_eq!(contract_request_slot(0, 512), 17);
        assert_eq!(
            contract_virtual_slot(u64::MAX, u64::MAX, 512),
            (2 * 511 * 511 + 2 * 511 + 25) % 512
        );
        // A slot count that does not divide 2^64: reduction must be exact, not wrapping.
        let i: u64 = 10_000_000_019;
        let exact = (u128::from(i) * u128::from(i) + 2 * u128::from(i) + 17) % 1000;
        assert_eq!(u128::from(contract_request_slot(i, 1000)), exact);
    }

    #[test]
    fn quadratic_probing_falls_back_to_linear_when_offsets_are_exhausted() {
        // 8 slots, all taken but slot 2: from home 0 the offsets t² mod 8 are {0, 1, 4},
        // never 2, so only the linear fallback finds it.
        let mut table = vec![Some(0u32); 8];
        table[2] = None;
        assert_eq!(probe(&table, 0, Probing::Quadratic), Some(2));
        table[2] = Some(0);
        assert_eq!(probe(&table, 0, Probing::Linear), None);
    }

    #[test]
    fn zero_slots_or_zero_k_is_rejected() {
        let p = AssignmentParams { slots: 0, ..Default::default() };
        assert!(matches!(AssignmentRing::new(p, &[1]), Err(RingError::InvalidParam { .. })));
        let p = AssignmentParams { virtual_per_server: 0, ..Default::default() };
        assert!(matches!(AssignmentRing::new(p, &[1]), Err(RingError::InvalidParam { .. })));
    }
}
