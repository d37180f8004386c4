//! The store as the deterministic simulation sees it (feature `sim`): paths with their
//! metadata and precomputed NARs, instead of `nix path-info` and the filesystem.
//!
//! While a simulated store is installed on a thread, the engine on that thread resolves
//! closures from it (`engine::resolve`), serializes NARs from it (`engine::stream`) and runs
//! its NAR producers on the calling thread (`engine::producer`), and the push filters read
//! derivers' `.drv` files from it (`filter`), so that nothing happens on other threads at times
//! the simulation does not choose. Without one, nothing changes.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::PathInfo;
use crate::format::store_path::StorePath;

/// Paths a simulated store holds, by absolute path.
#[derive(Default)]
pub struct SimStore {
    paths: Mutex<BTreeMap<String, (PathInfo, Bytes)>>,
    /// The text of the `.drv` files it holds, by absolute path (what `/nix/store/<x>.drv`
    /// would contain).
    derivations: Mutex<BTreeMap<String, String>>,
}

thread_local! {
    static INSTALLED: RefCell<Option<Arc<SimStore>>> = const { RefCell::new(None) };
}

impl SimStore {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, (PathInfo, Bytes)>> {
        crate::sync::lock(&self.paths)
    }

    /// Adds a path (a build); `nar` must hash to `info.nar_hash` for an upload to succeed.
    pub fn add(&self, info: PathInfo, nar: Bytes) {
        self.lock().insert(info.path.to_absolute(), (info, nar));
    }

    /// Adds a derivation's `.drv` file, whose text is `text` (ATerm, as Nix writes it).
    pub fn add_derivation(&self, drv: &StorePath, text: String) {
        crate::sync::lock(&self.derivations).insert(drv.to_absolute(), text);
    }

    /// Removes a path (the local store's own GC).
    pub fn remove(&self, path: &StorePath) {
        self.lock().remove(&path.to_absolute());
    }

    pub fn info(&self, path: &StorePath) -> Option<PathInfo> {
        self.lock()
            .get(&path.to_absolute())
            .map(|(info, _)| info.clone())
    }

    /// The closures of `tops` (or only `tops`), each path once, and the tops it lacks.
    pub fn resolve(&self, tops: &[StorePath], closure: bool) -> (Vec<PathInfo>, Vec<StorePath>) {
        let paths = self.lock();
        let mut seen = BTreeSet::new();
        let mut infos = Vec::new();
        let mut invalid = Vec::new();
        let mut stack: Vec<StorePath> = Vec::new();
        for top in tops {
            if paths.contains_key(&top.to_absolute()) {
                stack.push(top.clone());
            } else {
                invalid.push(top.clone());
            }
        }
        while let Some(path) = stack.pop() {
            let absolute = path.to_absolute();
            if !seen.insert(absolute.clone()) {
                continue;
            }
            let Some((info, _)) = paths.get(&absolute) else {
                continue;
            };
            if closure {
                stack.extend(info.references.iter().cloned());
            }
            infos.push(info.clone());
        }
        (infos, invalid)
    }
}

/// Makes `store` the store of the engine on this thread (`None`: the real store again).
pub fn install(store: Option<Arc<SimStore>>) {
    INSTALLED.with(|installed| *installed.borrow_mut() = store);
}

/// The store installed on this thread, if any.
pub fn installed() -> Option<Arc<SimStore>> {
    INSTALLED.with(|installed| installed.borrow().clone())
}

/// The text of the `.drv` file at `absolute`, when a simulated store is installed; `Some(None)`
/// if it lacks the file.
pub fn derivation(absolute: &str) -> Option<Option<String>> {
    installed().map(|store| crate::sync::lock(&store.derivations).get(absolute).cloned())
}

/// The NAR of the path at `absolute`, when a simulated store is installed; `Some(None)` if it
/// lacks the path.
pub fn nar(absolute: &str) -> Option<Option<Bytes>> {
    installed().map(|store| store.lock().get(absolute).map(|(_, nar)| nar.clone()))
}
