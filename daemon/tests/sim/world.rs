//! The simulated Nix store the uploaders read: paths appear as "builds" of small DAGs, each
//! path with a precomputed NAR (one regular file) and references to earlier paths. Some
//! builds produce a file with the same contents as an earlier path, so two paths share one
//! NAR object (same bytes, same FileHash). With an upstream cache, the base paths may be offered
//! there too (see [`crate::upstream`]).

use std::sync::Arc;

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
