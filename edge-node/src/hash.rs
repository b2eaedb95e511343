//! The one non-cryptographic hash of the node, for choices that must come out the same
//! everywhere: a server on the hash ring, a rate-limit key, an A/B variant.

/// A stable 64-bit hash (FNV-1a, then a murmur3 finalizer for avalanche): the same key
/// lands on the same server on every node of a fleet and across restarts.
pub fn stable_hash(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_pinned() {
        // Changing them would move every client to another server and variant on upgrade.
        assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(stable_hash(b"a"), 0x82a2_a958_a9be_ce5b);
        assert_eq!(stable_hash(b"user-42"), 0xa395_32c7_ab05_1e8d);
    }
}
