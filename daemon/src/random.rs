//! The randomness of the engine and the sinks: the random parts of NAR names and writer ids
//! ([`crate::layout`]), and the jitter before a throttled key is written again
//! ([`crate::sink::contended`]). It is read through this module so that the deterministic
//! simulation (feature `sim`) can draw it from its seed. (The daemon's retry backoff draws
//! its jitter from the thread's generator directly: the simulation runs no daemon pipeline.)
//!
//! Invariant: production draws from the thread's generator, seeded by the operating system,
//! as before this module existed; nothing here changes that. With a simulation's seed
//! installed on the thread ([`seeded::install`]), every draw is a function of the seed, what
//! it is for (`purpose`), what it is about (`context`: a NAR's hash and writer, a key) and how
//! many draws of that purpose and context came before on the thread, so a seed names its NARs
//! and writers alike in every run, whatever the order in which concurrent tasks draw.

use rand::Rng;

/// Fills `out` with random bytes, for `purpose`, about `context`.
pub fn fill(purpose: &'static str, context: &[u8], out: &mut [u8]) {
    #[cfg(feature = "sim")]
    if seeded::fill(purpose, context, out) {
        return;
    }
    let _ = (purpose, context);
    rand::thread_rng().fill(out);
}

/// A number in `0..n` (`n` > 0), for `purpose`, about `context`.
pub fn below(purpose: &'static str, context: &[u8], n: u64) -> u64 {
    let mut bytes = [0; 8];
    fill(purpose, context, &mut bytes);
    u64::from_le_bytes(bytes) % n
}

#[cfg(feature = "sim")]
#[path = "random/seeded.rs"]
pub mod seeded;
