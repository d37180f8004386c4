//! Paths known to need no upload (in the cache, or served upstream), remembered for a while so
//! that the closure members every build shares (glibc, the compiler, ...) are not looked up
//! again for each build.
//!
//! # What an uploader may trust, and for how long
//!
//! The uploader's side of the protocol with retention GC (`narpush gc`); GC's side is stated
//! in [`crate::gc`].
//!
//! 1. **Trust starts only at evidence**: a lookup that found the path (its narinfo in the cache
//!    verified by one of our keys, and its NAR there; or an upstream cache's answer, see
//!    [`crate::upstream`]), or an upload that published its narinfo. Nothing else starts or
//!    renews it: a path reported done *because* it was known (pushed again, or a top already
//!    known) leaves its entry as it was.
//! 2. **Trust ends** [`trust_for`]`(refresh_after)` after that evidence, i.e. after
//!    [`KNOWN_FOR`], or `refresh_after` if that is shorter, whatever happens in between. The
//!    next use of the path looks it up again (and so rewrites a narinfo older than
//!    `refresh_after`, which keeps it a GC root).
//! 3. **GC cannot take what is trusted**: a narinfo found is at most `refresh_after` old (an
//!    older one is rewritten first), GC deletes only narinfos older than `older_than ≥
//!    refresh_after + grace`, and `grace ≥ gc::MIN_GRACE > KNOWN_FOR` (checked at compile time
//!    below). What remains is the time from the end of the trust to the narinfo that relies on
//!    it, which is why `grace` must exceed the longest upload.
//! 4. **A change of what trust rests on forgets everything**: another target, other signing
//!    keys (a narinfo trusted under the old key is not signed by the new one), other upstream
//!    caches or keys.
//!
//! Memory stays bounded: at most [`CAPACITY`] paths.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::format::store_path::StorePath;

/// How long a path is trusted to be in the cache without asking again, at most: the
/// protocol's `K`, stated (and checked against GC's grace, rule 3) in [`crate::coexist`].
pub use crate::coexist::KNOWN_FOR;
/// Paths remembered at most.
pub const CAPACITY: usize = 100_000;

/// How long evidence of a path's presence is trusted under `refresh_after` (rule 2).
pub fn trust_for(refresh_after: Duration) -> Duration {
    KNOWN_FOR.min(refresh_after)
}

#[derive(Debug, Default)]
pub struct KnownPresent {
    /// When each path's trust ends.
    until: HashMap<StorePath, Instant>,
}

impl KnownPresent {
    pub fn contains(&self, path: &StorePath) -> bool {
        self.until
            .get(path)
            .is_some_and(|until| Instant::now() < *until)
    }

    /// Records evidence, seen now, that `path` is present: it is trusted for `trust_for`.
    pub fn found(&mut self, path: StorePath, trust_for: Duration) {
        let now = Instant::now();
        if self.until.len() >= CAPACITY {
            self.until.retain(|_, until| now < *until);
            if self.until.len() >= CAPACITY {
                self.until.clear();
            }
        }
        self.until.insert(path, now + trust_for);
    }

    /// Forgets everything (what trust rested on changed).
    pub fn clear(&mut self) {
        self.until.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.until.len()
    }
}

#[cfg(test)]
#[path = "presence/tests.rs"]
mod tests;
