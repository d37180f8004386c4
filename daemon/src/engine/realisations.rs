//! Publishing realisations (`realisations/<id>.doi`) once what they name is in the cache, each
//! with its Nix 2.35 build trace entry (`build-trace-v2/<drv>/<output>.doi`) right after it
//! when its resolved derivation is known.
//!
//! The owner hands realisations over before it submits their output paths. A realisation is
//! released for publishing only when its output path is known to be in the cache (its narinfo
//! was published or found) and each realisation it depends on is published, released with it,
//! or (checked by the publishing task) already in the cache: the closure invariant, extended
//! to realisations. Within one release, dependencies are written first.
//!
//! A dependency is waited for only while its output path is being uploaded by this engine
//! (it will be reported). One whose output the engine never looks up (a path outside the
//! submitted closures, as with `--no-closure`, or one whose lookup it already forgot) is
//! looked up instead: released with its dependent, its output path listed in
//! [`Release::outputs`], which the publishing task must find in the cache before it writes
//! anything. So a submitted path never waits for a report that will not come.
//!
//! A submitted path that has realisations waiting is reported done only once they are
//! published, so the owner never records as done a path whose realisation a crash could still
//! lose; if publishing fails, the path is reported failed with the reason. While held, such a
//! path counts as in the cache for its realisations, whatever the caller's trust in it (which
//! expires, and a reload clears): it was in the cache when it was reported done.
//!
//! Bounds: realisations whose output never arrives (its upload failed) are dropped with that
//! path's failure; at most [`MAX_PENDING`] wait at once and [`MAX_PUBLISHED`] ids are
//! remembered. At the bound, the realisations of the paths the engine holds (submitted and not
//! reported on, or held) are kept and those of others forgotten; a held path whose
//! realisations still do not fit is reported failed, never done without them ([`bound`]).
//! So the owner hands a path's realisations over with its submission, and those of a request
//! for a path it may already be uploading on their own.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;

use super::graph::Report;
use super::tasks::Done;
use super::{EngineConfig, UploadError};
use crate::format::build_trace::BuildTraceEntry;
use crate::format::realisation::{DrvOutputId, Realisation};
use crate::format::store_path::StorePath;
use crate::layout::{self, content_type};

/// Realisations waiting for their outputs, at most (see [`bound`]).
pub(super) const MAX_PENDING: usize = 10_000;
/// Published ids remembered, at most (a forgotten one is looked up in the cache instead).
const MAX_PUBLISHED: usize = 10_000;

/// The realisations the engine holds, and which submitted paths wait for them.
#[derive(Default)]
pub(super) struct Realisations {
    pending: HashMap<DrvOutputId, Realisation>,
    publishing: HashMap<DrvOutputId, StorePath>,
    published: HashSet<DrvOutputId>,
    /// Submitted paths not reported on yet: their realisations are kept over the bound.
    in_flight: HashSet<StorePath>,
    /// Submitted paths done but not yet reported, because their realisations are published.
    held: HashSet<StorePath>,
    /// Paths in flight whose realisations did not fit under the bound: reported failed when
    /// they end (see [`bound`]).
    refused: HashSet<StorePath>,
}

/// Realisations ready to be written, dependencies first, the dependencies outside them whose
/// presence in the cache the task must check first, and the output paths of released
/// dependencies that the engine did not see reach the cache (the task checks them too).
pub(super) struct Release {
    pub ordered: Vec<Realisation>,
    pub external: Vec<DrvOutputId>,
    pub outputs: Vec<StorePath>,
}

impl Realisations {
    /// `tops` were submitted, with `realisations` (theirs, and those they depend on): the
    /// engine holds them until it reports on them. Returns the reports of held tops failed
    /// for the bound.
    pub fn submitted(&mut self, tops: &[StorePath], realisations: Vec<Realisation>) -> Vec<Report> {
        self.in_flight.extend(tops.iter().cloned());
        self.add(realisations)
    }

    /// Takes `realisations` to publish once their outputs are in the cache. Beyond
    /// [`MAX_PENDING`], see [`bound`]; returns the reports of held tops failed for it.
    pub fn add(&mut self, realisations: Vec<Realisation>) -> Vec<Report> {
        let mut new = HashSet::new();
        for mut realisation in realisations {
            let id = realisation.id.clone();
            if let Some(previous) = self.pending.get(&id) {
                // One handed over without its resolved derivation does not forget it.
                realisation.drv = realisation.drv.or_else(|| previous.drv.clone());
            }
            if self.pending.insert(id.clone(), realisation).is_none() {
                new.insert(id);
            }
        }
        if self.pending.len() <= MAX_PENDING {
            return Vec::new();
        }
        self.keep_within_bound(&new)
    }

    /// What becomes of `report` for the owner: nothing while a top done waits for its
    /// realisations (it is reported once they are published), a failure for a top whose
    /// realisations were refused at the bound. A failed path's realisations are dropped.
    pub fn settle(&mut self, report: Report) -> Vec<Report> {
        match report {
            Report::TopDone(top) => {
                self.in_flight.remove(&top);
                if self.refused.remove(&top) {
                    self.drop_output(&top);
                    return bound::refused(top);
                }
                if self.hold(&top) {
                    return Vec::new();
                }
                vec![Report::TopDone(top)]
            }
            Report::TopFailed { top, failure } => {
                self.in_flight.remove(&top);
                self.refused.remove(&top);
                self.held.remove(&top);
                // Dependents of its realisations no longer wait for it, but look them up.
                self.drop_output(&top);
                vec![Report::TopFailed { top, failure }]
            }
            Report::Failed { path, error } => {
                self.drop_output(&path);
                vec![Report::Failed { path, error }]
            }
            Report::TopSkipped { top, reason } => {
                self.in_flight.remove(&top);
                self.refused.remove(&top);
                self.held.remove(&top);
                self.drop_output(&top);
                vec![Report::TopSkipped { top, reason }]
            }
            Report::Skipped { path, reason } => {
                self.drop_output(&path);
                vec![Report::Skipped { path, reason }]
            }
            other => vec![other],
        }
    }

    /// Whether `top`, done, must wait for its realisations; if so it is held.
    fn hold(&mut self, top: &StorePath) -> bool {
        let waits = self.has_unpublished(top);
        if waits {
            self.held.insert(top.clone());
        }
        waits
    }

    /// Forgets which ids were published (the signing keys changed): a dependency on one is
    /// checked in the cache again.
    pub fn forget_published(&mut self) {
        self.published.clear();
    }

    /// Forgets the realisations of a path that failed.
    fn drop_output(&mut self, path: &StorePath) {
        self.pending.retain(|_, r| &r.out_path != path);
    }

    fn has_unpublished(&self, path: &StorePath) -> bool {
        self.pending.values().any(|r| &r.out_path == path)
            || self.publishing.values().any(|p| p == path)
    }

    /// Dependencies (pending, transitively) of the realisations whose outputs are in the
    /// cache, whose own outputs are neither in the cache nor being uploaded: they are looked
    /// up rather than waited for.
    fn to_look_up(
        &self,
        in_cache: &impl Fn(&StorePath) -> bool,
        uploading: &impl Fn(&StorePath) -> bool,
    ) -> HashSet<DrvOutputId> {
        let mut needed = HashSet::new();
        let mut stack: Vec<&Realisation> = self
            .pending
            .values()
            .filter(|r| in_cache(&r.out_path))
            .collect();
        while let Some(realisation) = stack.pop() {
            for dep in realisation.dependent_realisations.keys() {
                let Some(dependency) = self.pending.get(dep) else {
                    continue;
                };
                if in_cache(&dependency.out_path)
                    || uploading(&dependency.out_path)
                    || !needed.insert(dep.clone())
                {
                    continue;
                }
                stack.push(dependency);
            }
        }
        needed
    }

    /// Takes the realisations that may be published now (see the module doc). `uploading`
    /// says which paths this engine is uploading, and so will report on.
    pub fn release(
        &mut self,
        in_cache: impl Fn(&StorePath) -> bool,
        uploading: impl Fn(&StorePath) -> bool,
    ) -> Option<Release> {
        // A held top was confirmed in the cache when it was reported done; it stays so for
        // its own realisations however long they wait (the caller's trust may run out).
        let held = std::mem::take(&mut self.held);
        let in_cache = |path: &StorePath| held.contains(path) || in_cache(path);
        let release = self.release_with(&in_cache, &uploading);
        self.held = held;
        release
    }

    fn release_with(
        &mut self,
        in_cache: &impl Fn(&StorePath) -> bool,
        uploading: &impl Fn(&StorePath) -> bool,
    ) -> Option<Release> {
        let look_up = self.to_look_up(in_cache, uploading);
        let mut ordered: Vec<Realisation> = Vec::new();
        let mut external = Vec::new();
        let mut outputs = Vec::new();
        loop {
            let taken: HashSet<DrvOutputId> = ordered.iter().map(|r| r.id.clone()).collect();
            let ready: Vec<DrvOutputId> = self
                .pending
                .values()
                .filter(|r| in_cache(&r.out_path) || look_up.contains(&r.id))
                .filter(|r| {
                    // A dependency still being written by an earlier release is waited for.
                    r.dependent_realisations.keys().all(|dep| {
                        taken.contains(dep)
                            || !(self.pending.contains_key(dep)
                                || self.publishing.contains_key(dep))
                    })
                })
                .map(|r| r.id.clone())
                .collect();
            if ready.is_empty() {
                break;
            }
            for id in ready {
                let realisation = self.pending.remove(&id).expect("listed from pending");
                if !in_cache(&realisation.out_path) && !outputs.contains(&realisation.out_path) {
                    outputs.push(realisation.out_path.clone());
                }
                for dep in realisation.dependent_realisations.keys() {
                    if !taken.contains(dep)
                        && !self.published.contains(dep)
                        && !external.contains(dep)
                    {
                        external.push(dep.clone());
                    }
                }
                self.publishing
                    .insert(id.clone(), realisation.out_path.clone());
                ordered.push(realisation);
            }
        }
        (!ordered.is_empty()).then_some(Release {
            ordered,
            external,
            outputs,
        })
    }

    /// Records how publishing `ids` ended; returns the held paths now free to be reported
    /// (with the error if theirs failed).
    pub fn finished(&mut self, ids: &[DrvOutputId], failed: bool) -> Vec<(StorePath, bool)> {
        let mut outputs = HashSet::new();
        for id in ids {
            if let Some(path) = self.publishing.remove(id) {
                outputs.insert(path);
            }
            if !failed {
                if self.published.len() >= MAX_PUBLISHED {
                    self.published.clear();
                }
                self.published.insert(id.clone());
            }
        }
        let mut free = Vec::new();
        for path in outputs {
            if failed {
                self.drop_output(&path);
            }
            if self.held.contains(&path) && (failed || !self.has_unpublished(&path)) {
                self.held.remove(&path);
                free.push((path, failed));
            }
        }
        free
    }
}

/// Checks that the dependencies outside the release are in the cache, then signs and writes
/// each realisation in order.
pub(super) async fn publish(config: &EngineConfig, release: Release) -> Done {
    let ids: Vec<DrvOutputId> = release.ordered.iter().map(|r| r.id.clone()).collect();
    let result = async {
        for output in &release.outputs {
            if !config.sink.exists(&layout::narinfo_key(output)).await? {
                let id = release
                    .ordered
                    .iter()
                    .find(|r| &r.out_path == output)
                    .map_or_else(String::new, |r| r.id.to_string());
                return Err(UploadError::RealisationOutputMissing {
                    id,
                    output: output.to_absolute(),
                });
            }
        }
        for dep in &release.external {
            if !config.sink.exists(&layout::realisation_key(dep)).await? {
                let dependent = release
                    .ordered
                    .iter()
                    .find(|r| r.dependent_realisations.contains_key(dep))
                    .map_or_else(String::new, |r| r.id.to_string());
                return Err(UploadError::RealisationDependencyMissing {
                    id: dependent,
                    dependency: dep.to_string(),
                });
            }
        }
        for realisation in &release.ordered {
            let mut signed = realisation.clone();
            for key in config.keys.iter() {
                signed.sign(key);
            }
            config
                .sink
                .put(
                    &layout::realisation_key(&signed.id),
                    Bytes::from(signed.to_json()),
                    content_type::REALISATION,
                )
                .await?;
            // Nix 2.35 reads the same fact keyed by the resolved derivation; it names no
            // dependencies, so its output's narinfo (checked above) is all it waits for.
            if let Some(mut entry) = BuildTraceEntry::of_realisation(realisation) {
                for key in config.keys.iter() {
                    entry.sign(key);
                }
                config
                    .sink
                    .put(
                        &layout::build_trace_key(&entry.key),
                        Bytes::from(entry.object_body()),
                        content_type::REALISATION,
                    )
                    .await?;
            }
        }
        Ok(())
    }
    .await;
    Done::RealisationsPublished(ids, result)
}

mod bound;

#[cfg(test)]
#[path = "realisations/tests.rs"]
mod tests;
