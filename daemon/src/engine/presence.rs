//! Paths known to need no upload (in the cache, or served upstream), remembered for a while so
//! that the closure members every build shares (glibc, the compiler, ...) are not looked up
//! again for each build.
//!
//! A path is remembered when its narinfo was published by this engine, found by a lookup, or
//! found to be upstream's.
//! Memory stays bounded: at most [`CAPACITY`] paths, each forgotten after [`KNOWN_FOR`], so
//! that a path deleted from the cache by hand or by retention GC is looked up again soon.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::format::store_path::StorePath;

/// How long a path is trusted to be in the cache without asking again.
pub const KNOWN_FOR: Duration = Duration::from_secs(600);
/// Paths remembered at most.
pub const CAPACITY: usize = 100_000;

#[derive(Debug, Default)]
pub struct KnownPresent {
    since: HashMap<StorePath, Instant>,
}

impl KnownPresent {
    pub fn contains(&self, path: &StorePath) -> bool {
        self.since
            .get(path)
            .is_some_and(|since| since.elapsed() < KNOWN_FOR)
    }

    pub fn insert(&mut self, path: StorePath) {
        if self.since.len() >= CAPACITY {
            self.since.retain(|_, since| since.elapsed() < KNOWN_FOR);
            if self.since.len() >= CAPACITY {
                self.since.clear();
            }
        }
        self.since.insert(path, Instant::now());
    }

    /// Forgets everything (the cache changed).
    pub fn clear(&mut self) {
        self.since.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_paths_are_known_and_forgotten_on_clear() {
        let path = StorePath::from_basename("9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-dep").unwrap();
        let mut known = KnownPresent::default();
        assert!(!known.contains(&path));
        known.insert(path.clone());
        assert!(known.contains(&path));
        known.clear();
        assert!(!known.contains(&path));
    }
}
