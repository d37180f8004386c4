//! The engine's bookkeeping of every path it works on, as a pure state machine: results come in
//! (a closure was resolved, a path was looked up in the cache, its NAR stored, its narinfo
//! published), [`Action`]s go out (look this path up, store that NAR, publish that narinfo,
//! report this). No I/O and no tokio here: the coordinator performs the actions and feeds the
//! results back, so every rule below is unit-tested on its own.
//!
//! # Stages of a path
//!
//! ```text
//! Checking ──present, or served upstream──▶ (done)
//!    │absent
//!    ├──an excluded reference still looked up──▶ Held ──its lookup ended──┐
//!    ▼                                                                     ▼
//! Storing ──NAR stored──▶ Stored ──no unpublished references──▶ Publishing ──▶ (done)
//! ```
//!
//! A reference that is not part of any submitted closure (only with `--no-closure`) is
//! *external*: it is looked up, and if the cache lacks it, the paths that need it fail.
//!
//! # The closure invariant
//!
//! A path's narinfo is published only once every reference other than itself is in the cache
//! or served upstream: found by a lookup, or published by this engine. References cannot form cycles between
//! distinct store paths, so every path ends published or failed.
//!
//! # Skipped paths (push filters)
//!
//! A path the push filters exclude ([`crate::filter`]) is looked up like any other: found in
//! the cache or served upstream, it counts as there, and its referrers are published as
//! usual. Absent, it is *skipped* instead of stored: never uploaded, even when submitted
//! itself. Its referrers, directly or not, are then skipped too without publishing their
//! narinfos (the closure invariant wins), each with [`SkipReason::NeedsSkipped`] naming the
//! excluded path. A skip spreads like a failure but is no failure: it is reported as
//! [`Report::Skipped`] and [`Report::TopSkipped`], and the next attempt would end the same.
//! An excluded external reference (`--no-closure`) the cache lacks skips its referrers too.
//! If an upstream did not answer ([`Lookup::Unanswered`]) it may serve it: fails, retried.
//!
//! A skipped path's NAR would be an orphan in the cache (no narinfo will ever name it), so a
//! path found absent is *held* (stage `Held`) while an excluded path its closure needs is
//! still looked up, and its NAR is started only once every such lookup has ended: skipped,
//! the held path is skipped too; found, it goes on (see `holds`). A path whose closure in
//! the graph has no excluded path still looked up is never held.
//!
//! # Failures
//!
//! A failure is contagious upward only: when a path fails, every path that references it,
//! directly or not, fails too without publishing its narinfo, and a top path that fails that
//! way reports the failure at the bottom of the chain. A NAR stored for a path that failed
//! meanwhile is handed back ([`Action::KeepNar`]) so the next attempt can reuse it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::error::{Failure, UploadError};
use super::progress::Stages;
use crate::filter::SkipReason;
use crate::format::narinfo::NarInfo;
use crate::format::store_path::StorePath;
use crate::store::PathInfo;

pub use actions::{Action, Lookup, Report};

#[derive(Debug)]
enum Stage {
    Checking,
    /// Absent, its NAR not started: it waits for the lookups of its `waits_for`.
    Held,
    Storing,
    Stored(Box<NarInfo>),
    Publishing,
}

#[derive(Debug)]
struct Node {
    /// `None` for an external reference, which is only looked up.
    info: Option<PathInfo>,
    stage: Stage,
    /// References not yet in the cache.
    blockers: HashSet<StorePath>,
    dependents: Vec<StorePath>,
    /// Submitted by the owner (and so reported as a top).
    top: bool,
    /// Why the push filters exclude it: skipped, not stored, if the cache lacks it.
    excluded: Option<SkipReason>,
    /// The excluded paths still looked up that it needs through its blockers: its NAR is
    /// not started while one is (see `holds`).
    waits_for: HashSet<StorePath>,
}

/// Why a path failed: its own error, and the failure at the bottom of the chain when it failed
/// because a reference did.
type Root = Option<(StorePath, Arc<UploadError>)>;

#[derive(Debug, Default)]
pub struct Graph {
    nodes: HashMap<StorePath, Node>,
    /// How many nodes are at each stage, kept as nodes move.
    stages: Stages,
    /// For each excluded path still looked up, the nodes whose `waits_for` holds it.
    held_for: HashMap<StorePath, HashSet<StorePath>>,
    /// Nodes whose last wait ended during the current result; their NARs are started once
    /// the result's skips have spread (see `holds`).
    released: Vec<StorePath>,
}

impl Graph {
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether `path` is being worked on.
    pub fn contains(&self, path: &StorePath) -> bool {
        self.nodes.contains_key(path)
    }

    /// Whether `path` is being uploaded (or looked up to be), so that it will be reported on;
    /// an external reference is only looked up, and not reported when found.
    pub fn uploading(&self, path: &StorePath) -> bool {
        self.nodes.get(path).is_some_and(|node| node.info.is_some())
    }

    /// How many paths are at each stage.
    pub fn stages(&self) -> Stages {
        self.stages
    }

    /// Adds resolved closures: `infos` holds every path of them, `tops` the submitted paths
    /// among them. `in_cache` says which paths are known to be in the cache already.
    pub fn add(
        &mut self,
        infos: Vec<PathInfo>,
        tops: &[StorePath],
        in_cache: impl Fn(&StorePath) -> bool,
    ) -> Vec<Action> {
        self.add_filtered(infos, tops, in_cache, &HashMap::new())
    }

    /// [`Graph::add`], where the paths in `excluded` are skipped, with their reason, unless
    /// the cache or upstream has them.
    pub fn add_filtered(
        &mut self,
        infos: Vec<PathInfo>,
        tops: &[StorePath],
        in_cache: impl Fn(&StorePath) -> bool,
        excluded: &HashMap<StorePath, SkipReason>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut new = Vec::new();
        let mut newly_excluded = Vec::new();
        for info in infos {
            if let Some(node) = self.nodes.get_mut(&info.path) {
                // Looked up as an external reference, and now part of a closure: if the cache
                // lacks it, it is uploaded instead of failing its dependents.
                if node.info.is_none() {
                    if node.excluded.is_none() {
                        node.excluded = excluded.get(&info.path).cloned();
                        if node.excluded.is_some() {
                            newly_excluded.push(info.path.clone());
                        }
                    }
                    node.info = Some(info);
                }
                continue;
            }
            if in_cache(&info.path) {
                continue;
            }
            actions.push(Action::Check(info.path.clone()));
            new.push(info.path.clone());
            let mut node = Node::new(Some(info));
            node.excluded = excluded.get(&new[new.len() - 1]).cloned();
            self.insert(node, &new[new.len() - 1]);
        }
        for path in &new {
            let references = self.nodes[path]
                .info
                .as_ref()
                .map(|info| info.references.clone())
                .unwrap_or_default();
            for reference in references.into_iter().filter(|r| r != path) {
                if !self.nodes.contains_key(&reference) {
                    if in_cache(&reference) {
                        continue;
                    }
                    actions.push(Action::Check(reference.clone()));
                    let mut external = Node::new(None);
                    external.excluded = excluded.get(&reference).cloned();
                    self.insert(external, &reference);
                }
                if let Some(node) = self.nodes.get_mut(&reference) {
                    node.dependents.push(path.clone());
                }
                if let Some(node) = self.nodes.get_mut(path) {
                    node.blockers.insert(reference);
                }
            }
        }
        for path in &newly_excluded {
            self.hold_referrers_of(path);
        }
        self.place_holds(&new);
        for top in tops {
            match self.nodes.get_mut(top) {
                Some(node) => node.top = true,
                None if in_cache(top) => actions.push(Action::Report(Report::TopDone(top.clone()))),
                None => {
                    let error = UploadError::Internal {
                        path: top.to_absolute(),
                        detail: "the store's answer did not include it".to_owned(),
                    };
                    actions.push(Action::Report(Report::TopFailed {
                        top: top.clone(),
                        failure: Failure::of(&error),
                    }));
                }
            }
        }
        actions
    }

    /// The lookup of `path` in the cache ended.
    pub fn checked(
        &mut self,
        path: &StorePath,
        result: Result<Lookup, UploadError>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(node) = self.nodes.get_mut(path) else {
            return actions;
        };
        match result {
            Ok(Lookup::Present) => {
                if node.info.is_some() {
                    actions.push(Action::Report(Report::Present(path.clone())));
                }
                self.in_cache(path, &mut actions);
            }
            Ok(Lookup::Upstream { nar_size }) => {
                actions.push(Action::Report(Report::Upstream {
                    path: path.clone(),
                    nar_size: node.info.as_ref().map_or(nar_size, |info| info.nar_size),
                }));
                self.in_cache(path, &mut actions);
            }
            Ok(Lookup::Unanswered) if node.excluded.is_some() && node.info.is_some() => {
                let error = UploadError::UpstreamUnanswered {
                    path: path.to_absolute(),
                };
                self.fail(path, Arc::new(error), None, &mut actions);
            }
            // Outside the upload (`--no-closure`), maybe served upstream: referrers fail.
            Ok(Lookup::Unanswered) if node.info.is_none() => {
                let why = if node.excluded.is_some() {
                    "is excluded by the push filters and not in the cache, and an upstream \
                     cache that may serve it did not answer"
                } else {
                    "is not in the cache, an upstream cache that may serve it did not answer, \
                     and it is not part of this upload"
                };
                let node = self.remove(path);
                for dependent in node.dependents {
                    let error = UploadError::ReferenceMissing {
                        path: dependent.to_absolute(),
                        reference: path.to_absolute(),
                        why,
                    };
                    self.fail(&dependent, Arc::new(error), None, &mut actions);
                }
            }
            Ok(Lookup::Absent | Lookup::Unanswered) => match node.info.clone() {
                Some(_) if node.excluded.is_some() => {
                    let reason = node.excluded.clone().expect("checked: excluded");
                    self.skip(path, reason, &mut actions);
                }
                Some(_) if !node.waits_for.is_empty() => {
                    self.set_stage(path, Stage::Held);
                }
                Some(info) => {
                    actions.push(Action::StoreNar(info));
                    self.set_stage(path, Stage::Storing);
                }
                None if node.excluded.is_some() => {
                    let reason = node.excluded.clone().expect("checked: excluded");
                    let node = self.remove(path);
                    for dependent in node.dependents {
                        self.skip(&dependent, reason.for_referrers_of(path), &mut actions);
                    }
                }
                None => {
                    let node = self.remove(path);
                    for dependent in node.dependents {
                        let error = UploadError::ReferenceMissing {
                            path: dependent.to_absolute(),
                            reference: path.to_absolute(),
                            why: "is neither in the cache nor upstream, and not part of this upload (upload its closure)",
                        };
                        self.fail(&dependent, Arc::new(error), None, &mut actions);
                    }
                }
            },
            Err(error) => self.fail(path, Arc::new(error), None, &mut actions),
        }
        self.start_released(&mut actions);
        actions
    }

    /// The NAR of `path` was stored (its narinfo, unsigned, says where), or failed to be.
    pub fn stored(
        &mut self,
        path: &StorePath,
        result: Result<Box<NarInfo>, UploadError>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        let storing = self
            .nodes
            .get(path)
            .is_some_and(|node| matches!(node.stage, Stage::Storing));
        match result {
            Ok(narinfo) if !storing => actions.push(Action::KeepNar(path.clone(), narinfo)),
            Ok(narinfo) => {
                self.set_stage(path, Stage::Stored(narinfo));
                self.publish_if_ready(path, &mut actions);
            }
            Err(_) if !storing => {}
            Err(error) => self.fail(path, Arc::new(error), None, &mut actions),
        }
        self.start_released(&mut actions);
        actions
    }

    /// The narinfo of `path` was written, or failed to be.
    pub fn published(
        &mut self,
        path: &StorePath,
        narinfo: &NarInfo,
        result: Result<(), UploadError>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        if !self.nodes.contains_key(path) {
            return actions;
        }
        match result {
            Ok(()) => {
                actions.push(Action::Report(Report::Uploaded {
                    path: path.clone(),
                    nar_size: narinfo.nar_size,
                    file_size: narinfo.file_size.unwrap_or(narinfo.nar_size),
                }));
                self.in_cache(path, &mut actions);
            }
            Err(error) => self.fail(path, Arc::new(error), None, &mut actions),
        }
        self.start_released(&mut actions);
        actions
    }

    /// `path` is in the cache: it is done, and no longer blocks its dependents.
    fn in_cache(&mut self, path: &StorePath, actions: &mut Vec<Action>) {
        let node = self.remove(path);
        if node.top {
            actions.push(Action::Report(Report::TopDone(path.clone())));
        }
        for dependent in node.dependents {
            if let Some(waiting) = self.nodes.get_mut(&dependent) {
                waiting.blockers.remove(path);
            }
            self.publish_if_ready(&dependent, actions);
        }
    }

    fn publish_if_ready(&mut self, path: &StorePath, actions: &mut Vec<Action>) {
        let ready = self
            .nodes
            .get(path)
            .is_some_and(|node| node.blockers.is_empty() && matches!(node.stage, Stage::Stored(_)));
        if !ready {
            return;
        }
        if let Some(Stage::Stored(narinfo)) = self.set_stage(path, Stage::Publishing) {
            actions.push(Action::Publish(path.clone(), narinfo));
        }
    }

    /// Fails `path` and, transitively, everything that references it.
    fn fail(
        &mut self,
        path: &StorePath,
        error: Arc<UploadError>,
        root: Root,
        actions: &mut Vec<Action>,
    ) {
        if !self.nodes.contains_key(path) {
            return;
        }
        let node = self.remove(path);
        if node.top {
            actions.push(Action::Report(Report::TopFailed {
                top: path.clone(),
                failure: Failure::of_top(path, &error, root.as_ref()),
            }));
        }
        actions.push(Action::Report(Report::Failed {
            path: path.clone(),
            error: error.clone(),
        }));
        let root = root.or_else(|| Some((path.clone(), error)));
        for dependent in node.dependents {
            let contagion = UploadError::ReferenceMissing {
                path: dependent.to_absolute(),
                reference: path.to_absolute(),
                why: "failed to upload",
            };
            self.fail(&dependent, Arc::new(contagion), root.clone(), actions);
        }
    }

    /// Skips `path` for `reason` and, transitively, everything that references it (they
    /// need it: see the module doc).
    fn skip(&mut self, path: &StorePath, reason: SkipReason, actions: &mut Vec<Action>) {
        if !self.nodes.contains_key(path) {
            return;
        }
        let node = self.remove(path);
        if node.top {
            actions.push(Action::Report(Report::TopSkipped {
                top: path.clone(),
                reason: reason.clone(),
            }));
        }
        let for_referrers = reason.for_referrers_of(path);
        actions.push(Action::Report(Report::Skipped {
            path: path.clone(),
            reason,
        }));
        for dependent in node.dependents {
            self.skip(&dependent, for_referrers.clone(), actions);
        }
    }

    fn insert(&mut self, node: Node, path: &StorePath) {
        *self.stages.count(&node.stage) += 1;
        self.nodes.insert(path.clone(), node);
    }

    fn remove(&mut self, path: &StorePath) -> Node {
        match self.nodes.remove(path) {
            Some(node) => {
                *self.stages.count(&node.stage) -= 1;
                self.unhold(path, &node);
                node
            }
            None => Node::new(None),
        }
    }

    /// Moves `path` to `stage`; returns the stage it left.
    fn set_stage(&mut self, path: &StorePath, stage: Stage) -> Option<Stage> {
        let node = self.nodes.get_mut(path)?;
        *self.stages.count(&stage) += 1;
        let old = std::mem::replace(&mut node.stage, stage);
        *self.stages.count(&old) -= 1;
        Some(old)
    }
}

impl Stages {
    fn count(&mut self, stage: &Stage) -> &mut u64 {
        match stage {
            Stage::Checking => &mut self.checking,
            // Its references decide whether it is stored, as they decide when it is published.
            Stage::Held => &mut self.waiting_for_references,
            Stage::Storing => &mut self.storing,
            Stage::Stored(_) => &mut self.waiting_for_references,
            Stage::Publishing => &mut self.publishing,
        }
    }
}

impl Node {
    fn new(info: Option<PathInfo>) -> Node {
        Node {
            info,
            stage: Stage::Checking,
            blockers: HashSet::new(),
            dependents: Vec::new(),
            top: false,
            excluded: None,
            waits_for: HashSet::new(),
        }
    }
}

#[path = "graph/actions.rs"]
mod actions;
#[path = "graph/holds.rs"]
mod holds;
#[cfg(test)]
#[path = "graph/tests.rs"]
mod tests;
