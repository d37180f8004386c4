//! Throttled writes of shared keys (`--throttling on`): the bucket keeps R2's limit on writes
//! to one key, and the scheduler makes writers meet on the same keys often, so that rule U7
//! (`narpush::sink::contended`: a throttled narinfo or `nix-cache-info` write is judged from a
//! GET of the key, then taken as published, written again or given up) runs under
//! interleavings and faults like the rest.
//!
//! Writers meet on a key in two ways, both drawn here from a generator of their own (so that a
//! seed runs as before with `--throttling off`):
//! - **bursts**: a build is pushed to several uploaders at once (a CI matrix whose jobs build
//!   the same thing and push it: every daemon, and up to 5 one-shot uploads), so that they
//!   publish the same narinfos at nearly the same instant;
//! - **disagreeing announcements**: some engines announce another `Priority` in
//!   `nix-cache-info` (a machine configured otherwise), so that writers of that key find there
//!   an announcement that is not theirs, and write it again, or give up.
//!
//! What the checker then asks of every judgement is in [`crate::checker`]: a key taken as
//! published holds, at that instant, a narinfo of ours that is whole.

use std::time::Duration;

use narpush::layout::{CacheInfo, DEFAULT_PRIORITY};

use crate::rng::Rng;

/// R2's limit: one write per second to one key.
pub const KEY_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// Percent of builds pushed by several uploaders at once.
const BURST_PERCENT: u64 = 35;
/// Percent of bursts with 3 to 5 one-shot uploads (else 0 to 2).
const MATRIX_PERCENT: u64 = 20;
/// Percent of engines that announce another priority.
const OTHER_PRIORITY_PERCENT: u64 = 30;

pub struct Contention {
    rng: Rng,
}

/// Who else pushes a build at once.
pub struct Burst {
    /// The other daemons push it too.
    pub daemons: bool,
    /// One-shot uploads of it that start at once.
    pub one_shots: u64,
}

impl Contention {
    /// The contention of `seed`, if throttling is on for it (`fixed`, else drawn for half the
    /// seeds).
    pub fn draw(seed: u64, fixed: Option<bool>) -> Option<Contention> {
        let mut rng = Rng::new(seed ^ 0x7468_726f_7474_6c65);
        let drawn = rng.chance(50);
        fixed.unwrap_or(drawn).then_some(Contention { rng })
    }

    /// After a build was pushed to one daemon: who else pushes it at once, if anyone.
    pub fn burst(&mut self) -> Option<Burst> {
        if !self.rng.chance(BURST_PERCENT) {
            return None;
        }
        let daemons = self.rng.chance(70);
        // Sometimes a wide matrix: several jobs upload it at once.
        let one_shots = match self.rng.chance(MATRIX_PERCENT) {
            true => self.rng.between(3, 5),
            false => self.rng.below(3),
        };
        (daemons || one_shots > 0).then_some(Burst { daemons, one_shots })
    }

    /// What a new engine announces in `nix-cache-info`.
    pub fn cache_info(&mut self) -> CacheInfo {
        let priority = match self.rng.chance(OTHER_PRIORITY_PERCENT) {
            true => *self.rng.pick(&[30, 50]),
            false => DEFAULT_PRIORITY,
        };
        CacheInfo {
            priority,
            want_mass_query: true,
        }
    }
}
