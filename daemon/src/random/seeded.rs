//! The simulation's randomness (feature `sim`): a seed installed on the thread that runs one
//! simulated world, and the mixing functions every seeded draw of the simulation goes through
//! (this module's draws, and the memory bucket's latencies and faults).
//!
//! Invariant: a draw depends only on the seed, its purpose, its context and its rank among the
//! draws of that purpose and context, never on what else was drawn before it.

use std::cell::RefCell;
use std::collections::BTreeMap;

struct Seeded {
    seed: u64,
    /// Draws made so far, per purpose and context.
    drawn: BTreeMap<(&'static str, Vec<u8>), u64>,
}

thread_local! {
    static SEEDED: RefCell<Option<Seeded>> = const { RefCell::new(None) };
}

/// Makes [`super::fill`] on this thread draw from `seed` (counting afresh); `None` returns to
/// the thread's own generator.
pub fn install(seed: Option<u64>) {
    SEEDED.with(|seeded| {
        *seeded.borrow_mut() = seed.map(|seed| Seeded {
            seed,
            drawn: BTreeMap::new(),
        });
    });
}

/// Fills `out` from the installed seed; false when none is installed on this thread.
pub(super) fn fill(purpose: &'static str, context: &[u8], out: &mut [u8]) -> bool {
    SEEDED.with(|seeded| {
        let mut seeded = seeded.borrow_mut();
        let Some(seeded) = seeded.as_mut() else {
            return false;
        };
        let n = seeded
            .drawn
            .entry((purpose, context.to_vec()))
            .and_modify(|n| *n += 1)
            .or_insert(1);
        let mut bits = Bits(mix(seeded.seed, purpose, context, *n));
        for chunk in out.chunks_mut(8) {
            let word = bits.word().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        true
    })
}

/// 64 bits that depend on every input (FNV-1a, then splitmix64's finaliser).
pub fn mix(seed: u64, operation: &str, key: &[u8], n: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for byte in operation
        .bytes()
        .chain([0])
        .chain(key.iter().copied())
        .chain(n.to_le_bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(hash)
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Successive draws from one draw's 64 bits.
pub struct Bits(pub u64);

impl Bits {
    pub fn word(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }

    /// In [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.word() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// In [0, 1,000,000).
    pub fn ppm(&mut self) -> u64 {
        self.word() % 1_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(purpose: &'static str, context: &[u8]) -> [u8; 10] {
        let mut out = [0; 10];
        assert!(fill(purpose, context, &mut out));
        out
    }

    #[test]
    fn draws_depend_on_the_seed_purpose_context_and_rank_not_on_other_draws() {
        install(Some(5));
        let a1 = draw("nonce", b"a");
        let a2 = draw("nonce", b"a");
        let b1 = draw("nonce", b"b");
        install(Some(5));
        // Other draws first, in another order: the same values.
        assert_eq!(draw("nonce", b"b"), b1);
        assert_eq!(draw("jitter", b"a").len(), 10);
        assert_eq!(draw("nonce", b"a"), a1);
        assert_eq!(draw("nonce", b"a"), a2);
        assert_ne!(a1, a2);
        install(Some(6));
        assert_ne!(draw("nonce", b"a"), a1);
        install(None);
        assert!(!fill("nonce", b"a", &mut [0; 4]));
    }
}
