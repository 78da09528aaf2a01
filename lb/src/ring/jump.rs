//! Jump consistent hash (Lamping & Veach, 2014): no table at all, a key maps to a bucket in
//! `0..N` in O(log N), and growing N to N + 1 moves exactly the keys that land on the new
//! bucket. Buckets are positions in the server list, so it is consistent only for appending
//! a server or removing the last one; removing a server in the middle renumbers the ones
//! after it and moves many keys. Use it where membership only grows or shrinks at the end.

use super::hash::{mix, mix2, JUMP_RETRY_SEED};
use super::{check_distinct, Balancer, LoadView, Result, RingKind, ServerId};

/// The paper's function: the bucket in `0..buckets` of `key` (0 when `buckets` is 0).
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as u32
}

/// Jump hash over a list of servers (bucket i = `servers[i]`).
#[derive(Debug, Clone)]
pub struct JumpHash {
    servers: Vec<ServerId>,
}

impl JumpHash {
    /// A jump hash over `servers`, in this order.
    pub fn new(servers: &[ServerId]) -> Result<Self> {
        check_distinct(servers)?;
        Ok(JumpHash { servers: servers.to_vec() })
    }
}

impl Balancer for JumpHash {
    fn kind(&self) -> RingKind {
        RingKind::Jump
    }

    fn servers(&self) -> &[ServerId] {
        &self.servers
    }

    fn pick(&self, key: u64, _load: &dyn LoadView) -> Option<ServerId> {
        if self.servers.is_empty() {
            return None;
        }
        Some(self.servers[jump_hash(mix(key), self.servers.len() as u32) as usize])
    }

    /// The first is `pick`; each next one is a jump hash of a rehashed key over the servers
    /// not yet chosen (in list order), so the fallbacks are spread evenly too.
    fn candidates(&self, key: u64, n: usize) -> Vec<ServerId> {
        let n = n.min(self.servers.len());
        let mut rest = self.servers.clone();
        let mut out = Vec::with_capacity(n);
        for attempt in 0..n as u64 {
            let k = if attempt == 0 { mix(key) } else { mix2(key, attempt, JUMP_RETRY_SEED) };
            let i = jump_hash(k, rest.len() as u32) as usize;
            out.push(rest.remove(i));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_vectors() {
        // Values published with the paper's reference code (also ClickHouse's
        // jumpConsistentHash tests and the Rust/Go ports).
        assert_eq!(jump_hash(1, 1), 0);
        assert_eq!(jump_hash(42, 57), 43);
        assert_eq!(jump_hash(256, 1024), 520);
        assert_eq!(jump_hash(3_735_883_980, 1), 0);
        assert_eq!(jump_hash(3_735_883_980, 666), 361);
        assert_eq!(jump_hash(16_045_690_984_833_335_023, 255), 237);
        assert_eq!(jump_hash(0, 60), 0);
        assert_eq!(jump_hash(1, 60), 55);
        assert_eq!(jump_hash(2, 60), 46);
        assert_eq!(jump_hash(7, 0), 0);
    }
}
