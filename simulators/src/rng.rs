//! Deterministic randomness.
//!
//! Sequences come from [`ChaCha8Rng`] seeded from the simulation seed, one stream per phase
//! of generation, so a phase's draws do not depend on how many draws another phase made.
//! Attributes derived per key (a person's phone, a citizen's answer to a case) come from a
//! keyed hash of the seed, so they need no memory and do not depend on the order of calls.
//! Neither depends on the platform: only integer arithmetic and ChaCha.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// The generation phases, each its own ChaCha stream.
#[derive(Debug, Clone, Copy)]
#[repr(u64)]
pub enum Stream {
    Persons = 1,
    Statuses = 2,
    Orgs = 3,
    Permits = 4,
    History = 5,
    Faults = 6,
}

/// The generator of one phase.
pub fn stream(seed: u64, s: Stream) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(s as u64);
    r
}

/// A generator seeded by hashing the seed with a key (a case id and attempt, ...).
pub fn keyed(seed: u64, key: &[u8]) -> ChaCha8Rng {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(key);
    ChaCha8Rng::from_seed(h.finalize().into())
}

/// SplitMix64 finalizer: a well-mixed 64-bit hash of a 64-bit value.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A hash of (seed, salt, key).
pub fn hash3(seed: u64, salt: u64, key: u64) -> u64 {
    mix(mix(seed ^ mix(salt)) ^ key)
}

/// True with probability `p`, from a hash (uses the low 32 bits).
pub fn hash_chance(h: u64, p: f64) -> bool {
    ((h & 0xFFFF_FFFF) as f64) < p * 4_294_967_296.0
}

/// True with probability `p`.
pub fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    // Compare on 32 bits: exact and identical on every platform.
    (rng.random::<u32>() as f64) < p * 4_294_967_296.0
}

/// Uniform in `lo..=hi` (`lo` when the range is empty).
pub fn between(rng: &mut ChaCha8Rng, lo: i64, hi: i64) -> i64 {
    if hi <= lo { lo } else { rng.random_range(lo..=hi) }
}

/// Uniform index below `n` (0 when `n` is 0).
pub fn index(rng: &mut ChaCha8Rng, n: usize) -> usize {
    if n == 0 { 0 } else { rng.random_range(0..n as u64) as usize }
}

/// A count for one day around a mean `n`: uniform between half and one and a half times
/// `n`, and at least 1 when `n` is not 0.
pub fn daily_count(rng: &mut ChaCha8Rng, n: u32) -> u32 {
    if n == 0 {
        return 0;
    }
    let lo = (n / 2).max(1);
    let hi = (n + n / 2).max(1);
    between(rng, lo as i64, hi as i64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_independent_and_reproducible() {
        let a: Vec<u32> = (0..4).map(|_| stream(1, Stream::Persons).random()).collect();
        let b: Vec<u32> = (0..4).map(|_| stream(1, Stream::Persons).random()).collect();
        assert_eq!(a, b);
        assert_ne!(stream(1, Stream::Persons).random::<u64>(), stream(1, Stream::Orgs).random::<u64>());
        assert_eq!(keyed(1, b"case-1/1").random::<u64>(), keyed(1, b"case-1/1").random::<u64>());
        assert_ne!(keyed(1, b"case-1/1").random::<u64>(), keyed(1, b"case-1/2").random::<u64>());
        // Pinned values: the same on every machine.
        assert_eq!(mix(0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn daily_counts_and_chances() {
        let mut r = stream(3, Stream::History);
        for _ in 0..200 {
            let c = daily_count(&mut r, 2);
            assert!((1..=3).contains(&c));
            assert_eq!(daily_count(&mut r, 1), 1);
        }
        assert_eq!(daily_count(&mut r, 0), 0);
        let hits = (0..10_000).filter(|i| hash_chance(hash3(9, 1, *i), 0.25)).count();
        assert!((2200..2800).contains(&hits), "{hits}");
        assert!(!chance(&mut r, 0.0));
        assert!(chance(&mut r, 1.0));
    }
}
