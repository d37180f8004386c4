//! What one seed did, on one line (`--verbose`, or with a failure), and the figures the whole
//! run adds up (the throttled writes and how they were judged).

use std::collections::BTreeMap;

use narpush::sink::memory::Counts;

use crate::checker::Checker;
use crate::scenario::Scenario;
use crate::world::World;

/// Throttled writes of one seed, or of the whole run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Throttled {
    /// 429s of the per-key limit, before any effect.
    pub refused: u64,
    /// 429s to writes that landed (a lost answer, the SDK's retry throttled).
    pub landed: u64,
    /// The judge's outcomes (rule U7).
    pub taken_as_published: u64,
    pub written_again: u64,
    pub given_up: u64,
}

impl Throttled {
    pub fn of(counts: &Counts) -> Throttled {
        Throttled {
            refused: counts.key_throttled,
            landed: counts.throttled_landed,
            taken_as_published: counts.taken_as_published,
            written_again: counts.written_again,
            given_up: counts.given_up,
        }
    }

    pub fn add(&mut self, other: &Throttled) {
        self.refused += other.refused;
        self.landed += other.landed;
        self.taken_as_published += other.taken_as_published;
        self.written_again += other.written_again;
        self.given_up += other.given_up;
    }

    /// Whether anything was throttled.
    pub fn any(&self) -> bool {
        self.refused + self.landed + self.taken_as_published + self.written_again + self.given_up
            > 0
    }

    pub fn describe(&self) -> String {
        format!(
            "throttled writes: {} refused by the per-key limit, {} landed; judged: \
             taken_as_published {}, written_again {}, given_up {}",
            self.refused, self.landed, self.taken_as_published, self.written_again, self.given_up
        )
    }
}

/// The seed's figures: the scheduler's `steps`, the bucket's `counts`, the checker's.
pub fn line(
    steps: &BTreeMap<&'static str, u64>,
    counts: &Counts,
    checker: &Checker,
    world: &World,
    scenario: &Scenario,
) -> String {
    let mut summary: Vec<String> = steps
        .iter()
        .map(|(what, n)| format!("{what} {n}"))
        .collect();
    summary.push(format!("paths {}", world.paths.len()));
    summary.push(format!("bucket changes {}", checker.changes));
    summary.push(format!(
        "requests {} (5xx {}, 403 {}, throttled {}, lost answers {}, slow deletes {})",
        counts.requests,
        counts.server_errors,
        counts.forbidden,
        counts.throttled,
        counts.lost_responses,
        counts.slow_deletes
    ));
    if scenario.throttling {
        summary.push(Throttled::of(counts).describe());
    }
    if let Some(upstream) = &world.upstream {
        summary.push(format!(
            "upstream serves {} base paths, answered {} requests",
            upstream.served.len(),
            upstream.bucket.counts().requests
        ));
    }
    if !checker.repair_figures.is_empty() {
        let figures: Vec<String> = checker
            .repair_figures
            .iter()
            .map(|(what, n)| format!("{what} {n}"))
            .collect();
        summary.push(format!("repair: {}", figures.join(", ")));
    }
    if scenario.filters.is_some() {
        summary.push(crate::verdicts::lock(&checker.verdicts).summary());
    }
    summary.push(format!("virtual time {:.0}s", checker.seconds()));
    summary.join(", ")
}
