//! Held paths (see the graph's module doc): a path found absent whose closure needs an
//! excluded path that is still looked up waits, its NAR not started, until that lookup
//! ends. Skipped, the excluded path takes the held path with it and no NAR was stored for
//! nothing; found in the cache or upstream, it lets the held path go on.
//!
//! Invariant: `held_for[x]` is exactly the set of nodes whose `waits_for` holds `x`, and every
//! `x` there is an excluded node still in the graph (its lookup runs). A node leaving the
//! graph leaves every set; an excluded node leaving it ends every wait for it, and a `Held`
//! node whose last wait ended is started once the result that ended it has spread its skips
//! ([`Graph::start_released`]). So a `Held` node always waits for a lookup that will end.
//! A node that waits for nothing is never held: paths with no excluded path in their closure
//! are not slowed down.

use std::collections::{HashMap, HashSet};

use super::{Action, Graph, Node, Stage};
use crate::format::store_path::StorePath;

impl Graph {
    /// Fills the `waits_for` of the nodes `new`, just linked to their blockers: the excluded
    /// blockers, and what every blocker waits for. References are placed before their
    /// referrers (`new` only references nodes placed before, or one another, without cycles).
    pub(super) fn place_holds(&mut self, new: &[StorePath]) {
        if !self.nodes.values().any(|node| node.excluded.is_some()) {
            return;
        }
        let fresh: HashSet<&StorePath> = new.iter().collect();
        let mut unplaced: HashMap<StorePath, usize> = new
            .iter()
            .map(|path| {
                let blockers = &self.nodes[path].blockers;
                (
                    path.clone(),
                    blockers.iter().filter(|b| fresh.contains(b)).count(),
                )
            })
            .collect();
        let mut ready: Vec<StorePath> = unplaced
            .iter()
            .filter(|(_, count)| **count == 0)
            .map(|(path, _)| path.clone())
            .collect();
        while let Some(path) = ready.pop() {
            let waits = self.waits_of_blockers(&path);
            for excluded in &waits {
                self.held_for
                    .entry(excluded.clone())
                    .or_default()
                    .insert(path.clone());
            }
            let Some(node) = self.nodes.get_mut(&path) else {
                continue;
            };
            node.waits_for = waits;
            for dependent in &node.dependents {
                if let Some(count) = unplaced.get_mut(dependent) {
                    *count -= 1;
                    if *count == 0 {
                        ready.push(dependent.clone());
                    }
                }
            }
        }
    }

    /// What a node linked to its blockers must wait for.
    fn waits_of_blockers(&self, path: &StorePath) -> HashSet<StorePath> {
        let mut waits = HashSet::new();
        let Some(node) = self.nodes.get(path) else {
            return waits;
        };
        for blocker in &node.blockers {
            let Some(reference) = self.nodes.get(blocker) else {
                continue;
            };
            if reference.excluded.is_some() {
                waits.insert(blocker.clone());
            }
            waits.extend(reference.waits_for.iter().cloned());
        }
        waits
    }

    /// `excluded`, already in the graph, turned out excluded: every node that needs it,
    /// directly or not, waits for its lookup from now on (one being stored is handed back if
    /// it is skipped, see [`Action::KeepNar`]; one stored already is dropped, its NAR left to
    /// gc as an orphan).
    pub(super) fn hold_referrers_of(&mut self, excluded: &StorePath) {
        let mut seen = HashSet::new();
        let mut next = self.nodes[excluded].dependents.clone();
        while let Some(path) = next.pop() {
            if !seen.insert(path.clone()) {
                continue;
            }
            let Some(node) = self.nodes.get_mut(&path) else {
                continue;
            };
            node.waits_for.insert(excluded.clone());
            next.extend(node.dependents.iter().cloned());
            self.held_for
                .entry(excluded.clone())
                .or_default()
                .insert(path);
        }
    }

    /// `path` (whose node was `node`) left the graph: it waits for nothing any more, and if
    /// it was an excluded path, nothing waits for it.
    pub(super) fn unhold(&mut self, path: &StorePath, node: &Node) {
        for excluded in &node.waits_for {
            if let Some(holders) = self.held_for.get_mut(excluded) {
                holders.remove(path);
                if holders.is_empty() {
                    self.held_for.remove(excluded);
                }
            }
        }
        for holder in self.held_for.remove(path).unwrap_or_default() {
            let Some(waiting) = self.nodes.get_mut(&holder) else {
                continue;
            };
            waiting.waits_for.remove(path);
            if waiting.waits_for.is_empty() && matches!(waiting.stage, Stage::Held) {
                self.released.push(holder);
            }
        }
    }

    /// Starts the NARs of the held nodes whose waits ended and that are still there (a skip
    /// that ended a wait may have taken the waiting node with it).
    pub(super) fn start_released(&mut self, actions: &mut Vec<Action>) {
        for path in std::mem::take(&mut self.released) {
            let info = match self.nodes.get(&path) {
                Some(node) if matches!(node.stage, Stage::Held) && node.waits_for.is_empty() => {
                    node.info.clone()
                }
                _ => continue,
            };
            if let Some(info) = info {
                actions.push(Action::StoreNar(info));
                self.set_stage(&path, Stage::Storing);
            }
        }
    }
}
