//! Retention GC of a cache (`narpush gc`): deletes what no recent path needs, and keeps every
//! closure that remains whole.
//!
//! Roots are the narinfos younger than `older_than` and the narinfos of paths to keep. A root
//! keeps its references' narinfos (and theirs, recursively), and every narinfo kept keeps its
//! NAR, its `.ls` listing, its deriver's build log and the realisations that name it. All the
//! rest is deleted, narinfos first, so that at every moment each narinfo in the cache has its
//! NAR and its references: the closure invariant holds throughout.
//!
//! While uploaders write to the same cache, GC keeps to the protocol stated in
//! [`crate::coexist`]: the policy's bounds (G1), a look at every object just before its delete
//! (G5, in [`delete`]), deletes sent only within [`DELETE_WINDOW`] of that look (G6), and a
//! stop at any read the store refuses (a 403), before anything more is deleted.
//!
//! Objects narpush does not know (other keys) are never deleted. A narinfo that cannot be read
//! stops the run before anything is deleted, since its references are unknown.

use std::collections::HashMap;
use std::time::Duration;

use serde::Serialize;

use crate::coexist::{Bounds, UnsafeBounds};
use crate::format::store_path::StorePath;
use crate::sink::inventory::Object;
use crate::sink::requests::RequestCounts;
use crate::sink::{Read, Sink, SinkError};

pub use crate::coexist::{DELETE_WINDOW, MIN_GRACE};
pub use plan::plan;

/// Plans made at most when uploaders keep rewriting candidates.
const MAX_PLANS: usize = 3;

/// What to keep.
#[derive(Clone, Debug)]
pub struct Policy {
    /// narinfos younger than this are roots.
    pub older_than: Duration,
    /// Nothing younger than this is deleted.
    pub grace: Duration,
    /// Paths whose closures stay, whatever their age.
    pub keep: Vec<StorePath>,
}

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Policy(#[from] UnsafeBounds),
    #[error("cannot read {key}: {reason}; fix or delete it by hand (its references are unknown, so nothing was deleted)")]
    Unreadable { key: String, reason: String },
    #[error(
        "{permission} on {key} refused ({detail}): gc needs read access to every object it \
         may delete or keep; {}",
        stopped(*deleted)
    )]
    Refused {
        permission: &'static str,
        key: String,
        /// What the store answered.
        detail: String,
        /// Objects deleted before the refusal.
        deleted: u64,
    },
    #[error(
        "the check of {key} before its delete took {} ms, past the bound of {} ms that keeps \
         uploaders safe; the store answers too slowly; {}",
        took.as_millis(),
        DELETE_WINDOW.as_millis(),
        stopped(*deleted)
    )]
    TooSlow {
        key: String,
        took: Duration,
        deleted: u64,
    },
    #[error(
        "a delete within the bound of {} ms after its check failed ({error}); {}",
        DELETE_WINDOW.as_millis(),
        stopped(*deleted)
    )]
    Delete { error: SinkError, deleted: u64 },
    #[error("uploaders kept rewriting narinfos that were about to be deleted ({MAX_PLANS} plans in a row); nothing more was deleted, try again")]
    Busy,
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// How a run that stopped left the cache.
fn stopped(deleted: u64) -> String {
    match deleted {
        0 => "nothing was deleted".to_owned(),
        n => format!(
            "stopped after {n} object(s) were deleted, every closure left whole; the rest goes \
             in the next run"
        ),
    }
}

/// A read by GC: a refusal stops the run ([`crate::coexist::Reader::Gc`]).
pub(crate) fn gc_read<T>(
    sink: &Sink,
    key: &str,
    read: Result<Read<T>, SinkError>,
    deleted: u64,
) -> Result<Option<T>, GcError> {
    match read?.for_reader(crate::coexist::Reader::Gc) {
        Ok(found) => Ok(found),
        Err(error) => Err(GcError::Refused {
            permission: sink.read_permission(),
            key: key.to_owned(),
            detail: error.detail,
            deleted,
        }),
    }
}

/// Objects and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub objects: u64,
    pub bytes: u64,
}

impl Tally {
    pub(crate) fn add(&mut self, object: &Object) {
        self.objects += 1;
        self.bytes += object.size;
    }

    fn remove(&mut self, object: &Object) {
        self.objects = self.objects.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(object.size);
    }
}

/// Deleted objects by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ByKind {
    pub narinfos: Tally,
    pub nars: Tally,
    pub listings: Tally,
    pub logs: Tally,
    pub realisations: Tally,
}

impl ByKind {
    /// The tally of `key`'s kind; `None` for keys that are not a path's (nix-cache-info, pins,
    /// unknown keys).
    pub(crate) fn of(&mut self, key: &str) -> Option<&mut Tally> {
        use crate::layout::{kind_of, ObjectKind};
        match kind_of(key) {
            ObjectKind::CacheInfo | ObjectKind::Pin { .. } | ObjectKind::Other => None,
            ObjectKind::NarInfo { .. } => Some(&mut self.narinfos),
            ObjectKind::Listing { .. } => Some(&mut self.listings),
            ObjectKind::Nar => Some(&mut self.nars),
            ObjectKind::Log { .. } => Some(&mut self.logs),
            ObjectKind::Realisation => Some(&mut self.realisations),
        }
    }
}

/// What a run decided (and, unless dry, did).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    /// narinfos kept: roots and their closures.
    pub live_paths: u64,
    pub kept: Tally,
    pub deleted: Tally,
    pub deleted_by_kind: ByKind,
    /// The requests this run sent, counted as they went out ([`crate::sink::requests`];
    /// filled in by the command, whose process is this run). A directory target counts none.
    pub requests: RequestCounts,
}

/// A summary and the objects it deletes: narinfos first, in layers (see [`layers`]), then
/// the rest.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub summary: Summary,
    pub delete: Vec<Object>,
    /// How many of the first objects of `delete` each layer of narinfos holds.
    pub narinfo_layers: Vec<usize>,
    /// For an object after the narinfos (a NAR, listing, log or realisation): the keys of the
    /// narinfos it belongs to (for a realisation, its output's). It stays if one of them is
    /// there by the time it would go.
    pub named_by: HashMap<String, Vec<String>>,
    /// For a narinfo to delete: the keys of the narinfos to delete that reference it, deleted
    /// before it. It stays (the plan is made again) if one of them is back by then.
    pub referred_by: HashMap<String, Vec<String>>,
    /// The hash parts of the paths pins named when the plan was made: a pin read later that
    /// names another makes the plan again ([`crate::pins`], P1).
    pub pinned: std::collections::HashSet<String>,
}

impl Plan {
    /// Whether `key` is still to be deleted (not found in use again).
    pub fn deletes(&self, key: &str) -> bool {
        self.delete.iter().any(|o| o.key == key)
    }

    /// Moves `object` from the deleted to the kept (an uploader uses it again).
    fn keep_after_all(&mut self, object: &Object) {
        self.delete.retain(|o| o.key != object.key);
        self.summary.deleted.remove(object);
        self.summary.kept.add(object);
        if let Some(tally) = self.summary.deleted_by_kind.of(&object.key) {
            tally.remove(object);
        }
    }
}

/// Refuses an `older_than` or a `grace` that would let GC collect what uploaders rely on
/// ([`Bounds::check_policy`]).
pub fn check_policy(policy: &Policy, refresh_after: Duration) -> Result<(), GcError> {
    Bounds {
        refresh_after,
        grace: policy.grace,
        older_than: policy.older_than,
    }
    .check_policy()?;
    Ok(())
}

/// Plans and (unless `dry_run`) carries out a collection; `progress` hears what it is doing.
pub async fn collect(
    sink: &Sink,
    policy: &Policy,
    dry_run: bool,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Plan, GcError> {
    for _ in 0..MAX_PLANS {
        progress("listing the cache");
        let objects = sink.list().await?;
        let mut plan = plan(sink, policy, objects, crate::clock::now(), progress).await?;
        plan.summary.dry_run = dry_run;
        if dry_run || plan.delete.is_empty() {
            return Ok(plan);
        }
        progress("deleting");
        match delete::carry_out(sink, &mut plan, progress).await? {
            delete::Outcome::Done => return Ok(plan),
            // An uploader builds upon a narinfo about to go: plan anew.
            delete::Outcome::Rewritten => continue,
        }
    }
    Err(GcError::Busy)
}

mod delete;
pub mod layers;
mod plan;

/// Carries out a plan made elsewhere (`narpush verify --repair`) under the same rules as a
/// collection's (G4–G8: layers of narinfos referrers first, a look before each delete within
/// the window, write-backs let land, pins listed again); returns whether it ran through
/// (`false`: a narinfo about to go was rewritten, or a pin appeared that the plan did not take
/// as a root; nothing from there on was deleted). Its requests are counted with the
/// process's others ([`crate::sink::requests`]).
pub async fn carry_out(
    sink: &Sink,
    plan: &mut Plan,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<bool, GcError> {
    let outcome = delete::carry_out(sink, plan, progress).await?;
    Ok(matches!(outcome, delete::Outcome::Done))
}

#[cfg(test)]
#[path = "gc/tests.rs"]
mod tests;
