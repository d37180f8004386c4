//! What one seed simulates: how many daemons, which faults, the GC's bounds, and which kinds
//! of activity run. Drawn from the seed; a command-line option fixes one choice for every
//! seed (to look for one kind of defect at a time).

use std::time::Duration;

use narpush::sink::memory::Faults;

use crate::rng::Rng;

/// Choices the command line may fix (`None`: drawn from the seed).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Daemons push a few tops of theirs again every few minutes.
    pub repush: Option<bool>,
    /// Some builds produce a file an earlier path has (one NAR object for two paths).
    pub shared_nars: Option<bool>,
    /// Some deletes take up to 20 s and land near their end.
    pub slow_deletes: Option<bool>,
    /// Daemons are killed and restarted.
    pub crashes: Option<bool>,
    /// Requests fail (5xx, 403, throttling, lost answers).
    pub faults: Option<bool>,
    /// Engines ask an upstream cache, which offers some base paths (see [`crate::upstream`]).
    pub upstream: Option<bool>,
    /// Damage to the bucket, and `verify --repair` runs (see [`crate::repair`]).
    pub repair: Option<bool>,
    /// Every engine applies push filters (see [`crate::filters`]).
    pub filters: Option<bool>,
    /// The bucket keeps R2's per-key write limit, and writers meet on keys (see
    /// [`crate::contention`]).
    pub throttling: Option<bool>,
    /// Scheduler steps (default 300).
    pub steps: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub daemons: usize,
    pub repush: bool,
    /// How often a daemon's favourites are pushed again.
    pub repush_every: Duration,
    pub shared_nars: bool,
    pub crashes: bool,
    pub faults: Faults,
    pub refresh_after: Duration,
    pub older_than: Duration,
    pub grace: Duration,
    pub steps: usize,
    pub upstream: bool,
    /// Drawn apart, from a generator of its own ([`crate::repair::Keeper::draw`]).
    pub repair: bool,
    pub filters: Option<crate::filters::FilterSet>,
    /// Drawn apart, from a generator of its own ([`crate::contention::Contention::draw`]).
    pub throttling: bool,
}

fn or_draw(fixed: Option<bool>, rng: &mut Rng, percent: u64) -> bool {
    let drawn = rng.chance(percent);
    fixed.unwrap_or(drawn)
}

impl Scenario {
    /// Draws from `rng`, and from `later` (the upstream) and `filtering` (the push filters)
    /// the choices added after seeds were recorded in docs/simulation.md (so that those seeds
    /// replay as they were with the new choices off).
    pub fn draw(
        rng: &mut Rng,
        later: &mut Rng,
        filtering: &mut Rng,
        options: &Options,
    ) -> Scenario {
        let daemons = rng.between(1, 3) as usize;
        let repush = or_draw(options.repush, rng, 50);
        let repush_every = Duration::from_secs(rng.between(120, 540));
        let shared_nars = or_draw(options.shared_nars, rng, 70);
        let slow_deletes = or_draw(options.slow_deletes, rng, 50);
        let crashes = or_draw(options.crashes, rng, 50);
        let faulty = or_draw(options.faults, rng, 60);
        let rate = |rng: &mut Rng, max: u64| if faulty { rng.below(max) as u32 } else { 0 };
        let faults = Faults {
            seed: rng.fork(),
            min_latency: Duration::from_millis(5),
            max_latency: Duration::from_millis(rng.between(20, 600)),
            server_error_ppm: rate(rng, 20_000),
            forbidden_ppm: rate(rng, 2_000),
            throttle_ppm: rate(rng, 20_000),
            lost_response_ppm: rate(rng, 20_000),
            slow_delete_ppm: if slow_deletes { 300_000 } else { 0 },
            slow_delete: Duration::from_secs(20),
            // Set when throttling is on for the seed (crate::contention).
            key_write_interval: None,
        };
        let refresh_after = Duration::from_secs(600);
        let grace = narpush::gc::MIN_GRACE;
        // The shortest age limit G1 allows, and up to 20 minutes more.
        let older_than = refresh_after
            + grace
            + narpush::coexist::CLOCK_SLACK
            + Duration::from_secs(rng.between(0, 1200));
        Scenario {
            daemons,
            repush,
            repush_every,
            shared_nars,
            crashes,
            faults,
            refresh_after,
            older_than,
            grace,
            steps: options.steps.unwrap_or(300),
            upstream: or_draw(options.upstream, later, 50),
            repair: false,
            filters: crate::filters::draw(options.filters, filtering),
            throttling: false,
        }
    }

    /// The same bucket without faults (the final drain); the per-key write limit stays.
    pub fn quiet(&self) -> Faults {
        Faults {
            seed: self.faults.seed,
            min_latency: self.faults.min_latency,
            max_latency: self.faults.max_latency,
            key_write_interval: self.faults.key_write_interval,
            ..Faults::default()
        }
    }
}
