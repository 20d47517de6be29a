//! The one partitioner both logs use: Kafka's murmur2 (as the Java clients'
//! default partitioner computes it), so a key lands on the same partition
//! number in the embedded log, in Kafka, and in any Java tool reading along.

/// Kafka's `Utils.murmur2`, returning the signed 32-bit hash Java returns.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for chunk in chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    // Java's switch falls through from 3 to 1.
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions`, as Kafka's default partitioner
/// picks it for a keyed record: `toPositive(murmur2(key)) % partitions`.
pub fn partition_for(key: &[u8], partitions: u32) -> u32 {
    assert!(partitions > 0, "a topic has at least one partition");
    ((murmur2(key) & 0x7fff_ffff) as u32) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's own `UtilsTest.testMurmur2`.
    #[test]
    fn matches_kafkas_java_murmur2() {
        let cases: &[(&[u8], i32)] = &[
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input), *expected, "murmur2({:?})", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn partition_is_within_range_and_stable() {
        for n in 1..17 {
            let p = partition_for(b"0190d3c1-7c2e-7a55-9d5c-0a1b2c3d4e5f", n);
            assert!(p < n);
            assert_eq!(p, partition_for(b"0190d3c1-7c2e-7a55-9d5c-0a1b2c3d4e5f", n));
        }
    }
}

/// Which partitions one replica of a consumer owns: static ownership by
/// ordinal (a StatefulSet's `-0`, `-1`, …), partition `p` to the replica
/// `p mod replicas`. No group join (slow on some brokers, and a rebalance
/// mid-step is one more failure mode); a stale owner during a rollout is
/// fenced by its transactional id, which names its ordinal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ownership {
    pub ordinal: u32,
    pub replicas: u32,
}

impl Default for Ownership {
    fn default() -> Self {
        Ownership { ordinal: 0, replicas: 1 }
    }
}

impl Ownership {
    /// `ordinal` of `replicas`; an ordinal outside them is an error saying so.
    pub fn new(ordinal: u32, replicas: u32) -> Result<Ownership, String> {
        if replicas == 0 || ordinal >= replicas {
            return Err(format!("replica {ordinal} of {replicas}: the ordinal must be below the number of replicas"));
        }
        Ok(Ownership { ordinal, replicas })
    }

    pub fn owns(&self, partition: u32) -> bool {
        partition % self.replicas == self.ordinal
    }

    /// The positions among `from` this replica reads.
    pub fn mine(&self, from: Vec<crate::Position>) -> Vec<crate::Position> {
        from.into_iter().filter(|p| self.owns(p.partition)).collect()
    }
}

#[cfg(test)]
mod ownership_tests {
    use super::Ownership;

    #[test]
    fn every_partition_has_exactly_one_owner() {
        for replicas in 1..=5 {
            for partition in 0..16 {
                let owners = (0..replicas).filter(|&o| Ownership::new(o, replicas).unwrap().owns(partition)).count();
                assert_eq!(owners, 1, "partition {partition} of {replicas} replicas");
            }
        }
        assert!(Ownership::new(2, 2).unwrap_err().contains("below the number of replicas"));
        assert!(Ownership::new(0, 0).is_err());
    }
}
