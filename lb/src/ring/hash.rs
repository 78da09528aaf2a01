//! The well-mixed hashes (xxh3) behind every family except the contract's functions.
//! Seeds are fixed constants: the same ids give the same ring in every process and release.

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Seed of the mixed ring's (and bounded ring's) server points.
pub(crate) const POINT_SEED: u64 = 0x5348_4152_4450_4f49; // "SHARDPOI"
/// Seed of a Maglev server's permutation offset.
pub(crate) const MAGLEV_OFFSET_SEED: u64 = 0x4d41_474c_4f46_4653; // "MAGLOFFS"
/// Seed of a Maglev server's permutation skip.
pub(crate) const MAGLEV_SKIP_SEED: u64 = 0x4d41_474c_534b_4950; // "MAGLSKIP"
/// Seed of rendezvous scores.
pub(crate) const RENDEZVOUS_SEED: u64 = 0x5245_4e44_455a_564f; // "RENDEZVO"
/// Seed of the jump family's retry keys (second and later candidates).
pub(crate) const JUMP_RETRY_SEED: u64 = 0x4a55_4d50_5245_5452; // "JUMPRETR"
/// Seed of the assignment ring's optional xxh3 slot functions.
pub(crate) const SLOT_SEED: u64 = 0x534c_4f54_4655_4e43; // "SLOTFUNC"

/// The `u64` key of a byte string (a header value, a client address, a path): its xxh3.
pub fn key_of(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// A well-mixed 64-bit image of a key (request ids are small and clustered).
pub(crate) fn mix(key: u64) -> u64 {
    xxh3_64(&key.to_le_bytes())
}

/// A well-mixed 64-bit hash of the pair `(a, b)` under `seed`.
pub(crate) fn mix2(a: u64, b: u64, seed: u64) -> u64 {
    let mut buf = [0u8; 16];
    buf[..8].copy_from_slice(&a.to_le_bytes());
    buf[8..].copy_from_slice(&b.to_le_bytes());
    xxh3_64_with_seed(&buf, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxh3_matches_the_reference_vector() {
        // XXH3_64bits of the empty input, from the xxHash reference implementation.
        assert_eq!(key_of(b""), 0x2D06_8005_38D3_94C2);
    }

    #[test]
    fn pair_hash_depends_on_order_and_seed() {
        assert_ne!(mix2(1, 2, 0), mix2(2, 1, 0));
        assert_ne!(mix2(1, 2, 0), mix2(1, 2, 1));
        assert_ne!(mix(1), mix(2));
    }
}
