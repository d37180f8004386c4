//! The bound on realisations waiting for their outputs ([`MAX_PENDING`]), kept without losing
//! one a top depends on.
//!
//! Invariant: a top the engine holds (submitted and not reported on yet, or done and held for
//! its realisations) is never reported done without its realisations. When the bound is
//! passed, the realisations no held top needs go: those of paths only queued (handed over
//! with a request for a path not submitted yet; the owner hands them over again when it
//! submits it). If those the held tops need still do not fit, tops are refused until the rest
//! fits, those that brought new realisations first: their realisations are dropped and each is
//! reported failed with a reason naming the bound, instead of done (at once if it is done and
//! held, when it ends if it is in flight), so the owner retries it later. What stays is at
//! most what was there before, so the set never grows past the bound.

use std::collections::{HashMap, HashSet};

use super::{Realisations, MAX_PENDING};
use crate::engine::error::{Failure, UploadError};
use crate::engine::graph::Report;
use crate::format::realisation::DrvOutputId;
use crate::format::store_path::StorePath;

impl Realisations {
    /// Brings the pending realisations back under the bound; `new` are those just added.
    /// Returns the reports of held tops refused (those in flight are refused when they end).
    pub(super) fn keep_within_bound(&mut self, new: &HashSet<DrvOutputId>) -> Vec<Report> {
        let (kept, tops) = self.choose(new);
        let before = self.pending.len();
        self.pending.retain(|id, _| kept.contains(id));
        tracing::warn!(
            dropped = before - self.pending.len(),
            refused = tops.len(),
            "more than {MAX_PENDING} realisations wait for their outputs: those of paths not \
             being uploaded are handed over again with them; paths refused are retried"
        );
        let mut reports = Vec::new();
        for top in tops {
            self.held.remove(&top);
            if self.in_flight.contains(&top) {
                self.refused.insert(top);
            } else {
                reports.extend(refused(top));
            }
        }
        reports
    }

    /// The realisations to keep, and the tops refused.
    fn choose(&self, new: &HashSet<DrvOutputId>) -> (HashSet<DrvOutputId>, Vec<StorePath>) {
        let mut own: HashMap<&StorePath, Vec<&DrvOutputId>> = HashMap::new();
        for realisation in self.pending.values() {
            if self.in_flight.contains(&realisation.out_path)
                || self.held.contains(&realisation.out_path)
            {
                own.entry(&realisation.out_path)
                    .or_default()
                    .push(&realisation.id);
            }
        }
        let brought = self.depending_on(new);
        let mut tops: Vec<&StorePath> = own.keys().copied().collect();
        // Those that brought nothing new first (what was there before fitted), done ones
        // before those in flight (their upload is over), then by path, so the choice is the
        // same every time.
        tops.sort_by_key(|top| (brought.contains(*top), !self.held.contains(*top), *top));
        let mut kept = HashSet::new();
        let mut refused = Vec::new();
        for top in tops {
            let needed = self.needed(&own[top], &kept);
            if kept.len() + needed.len() <= MAX_PENDING {
                kept.extend(needed);
            } else {
                refused.push(top.clone());
            }
        }
        (kept, refused)
    }

    /// The output paths of the pending realisations that depend on one of `ids`, directly or
    /// not (or are one).
    fn depending_on(&self, ids: &HashSet<DrvOutputId>) -> HashSet<&StorePath> {
        let mut dependents: HashMap<&DrvOutputId, Vec<&DrvOutputId>> = HashMap::new();
        for realisation in self.pending.values() {
            for dep in realisation.dependent_realisations.keys() {
                dependents.entry(dep).or_default().push(&realisation.id);
            }
        }
        let mut seen: HashSet<&DrvOutputId> = ids.iter().collect();
        let mut stack: Vec<&DrvOutputId> = seen.iter().copied().collect();
        while let Some(id) = stack.pop() {
            for dependent in dependents.get(id).into_iter().flatten() {
                if seen.insert(dependent) {
                    stack.push(dependent);
                }
            }
        }
        seen.into_iter()
            .filter_map(|id| self.pending.get(id))
            .map(|r| &r.out_path)
            .collect()
    }

    /// `roots` and the pending realisations they depend on, directly or not, outside `kept`.
    fn needed(&self, roots: &[&DrvOutputId], kept: &HashSet<DrvOutputId>) -> HashSet<DrvOutputId> {
        let mut needed = HashSet::new();
        let mut stack: Vec<&DrvOutputId> = roots.to_vec();
        while let Some(id) = stack.pop() {
            let Some(realisation) = self.pending.get(id) else {
                continue;
            };
            if kept.contains(id) || !needed.insert(id.clone()) {
                continue;
            }
            stack.extend(realisation.dependent_realisations.keys());
        }
        needed
    }
}

/// What the owner hears of a top refused for the bound: it failed, and why.
pub(super) fn refused(top: StorePath) -> Vec<Report> {
    let error = UploadError::RealisationsOverflow {
        path: top.to_absolute(),
        bound: MAX_PENDING,
    };
    let failure = Failure::of(&error);
    vec![
        Report::Failed {
            path: top.clone(),
            error: std::sync::Arc::new(error),
        },
        Report::TopFailed { top, failure },
    ]
}
