//! The simulated Nix store the uploaders read: paths appear as "builds" of small DAGs, each
//! path with a precomputed NAR (one regular file) and references to earlier paths. Some
//! builds produce a file with the same contents as an earlier path, so two paths have the same
//! NAR (each written under a name of its own, as every NAR narpush writes). With an upstream cache, the base paths may be offered
//! there too (see [`crate::upstream`]). The local store's own GC may remove paths (with their
//! referrers, so the store stays closed, see [`World::remove_with_referrers`]); a build that
//! needs one brings it back (Nix builds or substitutes it again: the same path).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use narpush::format::hash::Sha256;
use narpush::format::store_path::StorePath;
use narpush::store::simulated::SimStore;
use narpush::store::PathInfo;

use crate::rng::Rng;

const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
/// Paths every build may depend upon (a compiler, a libc), made first.
const BASE_PATHS: usize = 4;
/// Builds depend on paths among this many of the latest.
const RECENT: usize = 24;

#[derive(Default)]
pub struct World {
    pub store: Arc<SimStore>,
    /// Every path, oldest first.
    pub paths: Vec<StorePath>,
    /// The file contents of each path, by index in `paths`.
    contents: Vec<Bytes>,
    /// The upstream cache, which may offer the base paths.
    pub upstream: Option<crate::upstream::UpstreamCache>,
    /// Paths the local store's GC removed, by hash part, with their metadata.
    removed: BTreeMap<String, PathInfo>,
    /// Hash parts of the removed paths brought back, in order (shared with repair's checks).
    pub revived: Arc<Mutex<Vec<String>>>,
    /// Names and derivations for the push filters (with `--filters on`).
    pub filtering: Option<crate::filters::Filtering>,
}

impl World {
    /// Adds one build: one to three new paths, the last of which (the top) refers to the
    /// others; returns the top.
    pub fn build(&mut self, rng: &mut Rng, share_nars: bool) -> StorePath {
        let count = if self.paths.len() < BASE_PATHS {
            1
        } else {
            rng.between(1, 3)
        };
        let first = self.paths.len();
        let plan = (self.filtering.as_mut()).map(|f| f.plan(first, count as usize));
        let mut made: Vec<StorePath> = Vec::new();
        for i in 0..count {
            let mut references: Vec<StorePath> = Vec::new();
            if self.paths.len() >= BASE_PATHS {
                for _ in 0..rng.between(0, 2) {
                    let j = if rng.chance(40) {
                        rng.below(BASE_PATHS as u64) as usize
                    } else {
                        let low = self.paths.len().saturating_sub(RECENT);
                        low + rng.below((self.paths.len() - low) as u64) as usize
                    };
                    references.push(self.paths[j].clone());
                }
            }
            if i + 1 == count {
                references.extend(made.iter().cloned());
            }
            references.sort();
            references.dedup();
            let contents = if share_nars && !self.contents.is_empty() && rng.chance(25) {
                rng.pick(&self.contents).clone()
            } else {
                let len = rng.between(16, 1500) as usize;
                let mut text = format!("path {} ", self.paths.len()).into_bytes();
                while text.len() < len {
                    text.push(b'a' + (rng.below(26) as u8));
                }
                Bytes::from(text)
            };
            let (name, deriver) = match &plan {
                Some(plan) => (plan.name(i as usize).to_owned(), plan.deriver()),
                None => (format!("p{}", self.paths.len()), None),
            };
            let path = self.add(rng, references, contents, &name, deriver);
            made.push(path);
        }
        if let (Some(filtering), Some(plan)) = (&mut self.filtering, plan) {
            let served = self.upstream.as_ref().map(|u| &u.served);
            filtering.built(plan, &made, &self.store, |p| {
                served.is_some_and(|s| s.contains(p.hash_part()))
            });
        }
        made.pop().expect("a build makes a path")
    }

    fn add(
        &mut self,
        rng: &mut Rng,
        references: Vec<StorePath>,
        contents: Bytes,
        name: &str,
        deriver: Option<StorePath>,
    ) -> StorePath {
        let hash: String = (0..32)
            .map(|_| NIX32[rng.below(32) as usize] as char)
            .collect();
        let path = StorePath::from_basename(&format!("{hash}-{name}")).expect("a valid store path");
        let nar = nar_of(&contents);
        let info = PathInfo {
            path: path.clone(),
            nar_hash: Sha256::digest(&nar),
            nar_size: nar.len() as u64,
            references,
            deriver,
            ca: None,
            signatures: Vec::new(),
        };
        for reference in &info.references {
            self.revive(reference);
        }
        if self.paths.len() < BASE_PATHS {
            if let Some(upstream) = &mut self.upstream {
                upstream.offer(&info, &nar);
            }
        }
        self.store.add(info, nar);
        self.paths.push(path.clone());
        self.contents.push(contents);
        path
    }
}

impl World {
    /// The local store's GC removes `doomed` and every path that refers to one of them
    /// (transitively: Nix never removes a path whose referrer stays); returns what it removed.
    pub fn remove_with_referrers(&mut self, doomed: &BTreeSet<String>) -> Vec<StorePath> {
        let mut gone: BTreeSet<String> = BTreeSet::new();
        let mut removed = Vec::new();
        // References point to older paths: one pass, oldest first, sees every referrer.
        for path in &self.paths {
            let Some(info) = self.store.info(path) else {
                continue;
            };
            let hash = path.hash_part().to_owned();
            let refers = info
                .references
                .iter()
                .any(|r| r != path && gone.contains(r.hash_part()));
            if doomed.contains(&hash) || refers {
                self.store.remove(path);
                gone.insert(hash.clone());
                self.removed.insert(hash, info);
                removed.push(path.clone());
            }
        }
        removed
    }

    /// Brings `path` back into the local store with what it references, if the store's GC
    /// removed it.
    pub fn revive(&mut self, path: &StorePath) {
        let Some(info) = self.removed.remove(path.hash_part()) else {
            return;
        };
        for reference in &info.references {
            if reference != path {
                self.revive(reference);
            }
        }
        let index = self
            .paths
            .iter()
            .position(|p| p == path)
            .expect("a removed path was made here");
        self.store.add(info, nar_of(&self.contents[index]));
        self.revived
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(path.hash_part().to_owned());
    }
}

/// The NAR of a store path that is one regular file with `contents`.
fn nar_of(contents: &[u8]) -> Bytes {
    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    let mut out = Vec::new();
    for token in [
        &b"nix-archive-1"[..],
        b"(",
        b"type",
        b"regular",
        b"contents",
        contents,
        b")",
    ] {
        string(&mut out, token);
    }
    Bytes::from(out)
}
