//! Retention GC of a cache (`narpush gc`): deletes what no recent path needs, and keeps every
//! closure that remains whole.
//!
//! Roots are the narinfos younger than `older_than` and the narinfos of paths to keep. A root
//! keeps its references' narinfos (and theirs, recursively), and every narinfo kept keeps its
//! NAR, its `.ls` listing, its deriver's build log and the realisations that name it. All the
//! rest is deleted, narinfos first, so that at every moment each narinfo in the cache has its
//! NAR and its references: the closure invariant holds throughout.
//!
//! Safety while uploaders write to the same cache:
//! - nothing younger than `grace` is deleted, so a NAR uploaded for a narinfo that is not
//!   published yet stays;
//! - uploaders rewrite ("refresh") the narinfo of a path they build upon once it is older than
//!   `refresh_after`, and `older_than` must be at least `refresh_after + grace`: a path an
//!   uploader relies on is therefore younger than `older_than`, a root;
//! - each narinfo is looked at (HEAD) just before it is deleted, at most [`DELETE_WINDOW`]
//!   before; if one was rewritten since the plan, the plan is made anew. An uploader that
//!   rewrites a narinfo looks for it again after longer than that, and uploads the path again
//!   if a collection deleted it in between;
//! - uploaders trust a lookup for less than [`MIN_GRACE`]; an upload that takes longer than
//!   `grace` minus that, from the lookup of its references to its narinfo, could see a
//!   reference collected under it (choose `grace` above the longest upload).
//!
//! Objects narpush does not know (other keys) are never deleted. A narinfo that cannot be read
//! stops the run before anything is deleted, since its references are unknown.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::format::narinfo::NarInfo;
use crate::format::realisation::Realisation;
use crate::format::store_path::StorePath;
use crate::layout::{self, kind_of, ObjectKind};
use crate::sink::inventory::Object;
use crate::sink::{Sink, SinkError};

/// narinfos and realisations read (or looked at) at once.
const READ_CONCURRENCY: usize = 64;
/// A narinfo is deleted no later than this after a look at it showed it unchanged since the
/// plan. Uploaders that rewrite a narinfo watch it for longer than that (see the engine).
pub const DELETE_WINDOW: Duration = Duration::from_secs(2);
/// The shortest `grace` accepted: longer than uploaders trust what they found in the cache
/// without looking again (the engine's known-present set) and than they keep a stored NAR for
/// reuse.
pub const MIN_GRACE: Duration = Duration::from_secs(15 * 60);
/// narinfos looked at and deleted together.
const NARINFO_BATCH: usize = 256;
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
    #[error(
        "--older-than {older_than} is shorter than refresh_after ({refresh_after}) + --grace \
         ({grace}): a path an uploader builds upon could be collected under it"
    )]
    UnsafeAge {
        older_than: String,
        refresh_after: String,
        grace: String,
    },
    #[error("--grace {grace} is shorter than the minimum of 15m: uploaders trust what they found in the cache for 10 minutes")]
    ShortGrace { grace: String },
    #[error("cannot read {key}: {reason}; fix or delete it by hand (its references are unknown, so nothing was deleted)")]
    Unreadable { key: String, reason: String },
    #[error("uploaders kept rewriting narinfos that were about to be deleted ({MAX_PLANS} plans in a row); nothing more was deleted, try again")]
    Busy,
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Objects and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub objects: u64,
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, object: &Object) {
        self.objects += 1;
        self.bytes += object.size;
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

/// Requests made, for people who pay per request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Requests {
    /// Listing requests (S3: pages of 1,000 keys; a directory: 1 per listing).
    pub list: u64,
    /// narinfos and realisations read.
    pub get: u64,
    /// narinfos looked at just before they are deleted.
    pub head: u64,
    /// Delete requests (S3: batches of up to 1,000 keys; a directory: 1 per file).
    pub delete: u64,
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
    pub requests: Requests,
}

/// A summary and the objects it deletes: narinfos first, in layers (see [`layers`]), then
/// the rest.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub summary: Summary,
    pub delete: Vec<Object>,
    /// How many of the first objects of `delete` each layer of narinfos holds.
    pub narinfo_layers: Vec<usize>,
}

/// Refuses an `older_than` that would let GC collect what uploaders rely on.
pub fn check_policy(policy: &Policy, refresh_after: Duration) -> Result<(), GcError> {
    if policy.grace < MIN_GRACE {
        return Err(GcError::ShortGrace {
            grace: humantime::format_duration(policy.grace).to_string(),
        });
    }
    if policy.older_than < refresh_after + policy.grace {
        return Err(GcError::UnsafeAge {
            older_than: humantime::format_duration(policy.older_than).to_string(),
            refresh_after: humantime::format_duration(refresh_after).to_string(),
            grace: humantime::format_duration(policy.grace).to_string(),
        });
    }
    Ok(())
}

/// Plans and (unless `dry_run`) carries out a collection; `progress` hears what it is doing.
pub async fn collect(
    sink: &Sink,
    policy: &Policy,
    dry_run: bool,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Plan, GcError> {
    let mut requests = Requests::default();
    'plans: for _ in 0..MAX_PLANS {
        progress("listing the cache");
        let objects = sink.list().await?;
        requests.list += sink.list_requests(objects.len());
        let mut plan = plan(sink, policy, objects, crate::clock::now(), progress).await?;
        requests.get += plan.summary.requests.get;
        plan.summary.dry_run = dry_run;
        if dry_run || plan.delete.is_empty() {
            plan.summary.requests = requests;
            return Ok(plan);
        }
        progress("deleting");
        let mut start = 0;
        for &size in &plan.narinfo_layers {
            let mut narinfos = &plan.delete[start..start + size];
            start += size;
            let mut batch_size = NARINFO_BATCH;
            while !narinfos.is_empty() {
                let batch = &narinfos[..batch_size.min(narinfos.len())];
                let looked = Instant::now();
                requests.head += batch.len() as u64;
                if rewritten(sink, batch).await? {
                    // An uploader builds upon one of them right now: plan anew.
                    continue 'plans;
                }
                if looked.elapsed() >= DELETE_WINDOW / 2 && batch_size > 1 {
                    // A slow link: look again at fewer at a time.
                    batch_size /= 2;
                    continue;
                }
                delete(sink, batch, &mut requests).await?;
                narinfos = &narinfos[batch.len()..];
            }
        }
        let split = start;
        delete(sink, &plan.delete[split..], &mut requests).await?;
        plan.summary.requests = requests;
        return Ok(plan);
    }
    Err(GcError::Busy)
}

async fn delete(sink: &Sink, objects: &[Object], requests: &mut Requests) -> Result<(), GcError> {
    let keys: Vec<String> = objects.iter().map(|o| o.key.clone()).collect();
    sink.delete(&keys).await?;
    requests.delete += sink.delete_requests(keys.len());
    Ok(())
}

/// Whether any of `narinfos` was written again since it was planned (one that is gone is not).
async fn rewritten(sink: &Sink, narinfos: &[Object]) -> Result<bool, GcError> {
    let looks: Vec<_> = stream::iter(narinfos)
        .map(|o| async move { (o, sink.modified(&o.key).await) })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await;
    for (object, modified) in looks {
        if modified?.is_some_and(|m| whole_seconds(m) != whole_seconds(object.modified)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// S3 lists modification times in milliseconds but HEAD gives them in whole seconds.
fn whole_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What a collection at `now` would delete from `objects`.
pub async fn plan(
    sink: &Sink,
    policy: &Policy,
    objects: Vec<Object>,
    now: SystemTime,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Plan, GcError> {
    let age = |o: &Object| now.duration_since(o.modified).unwrap_or_default();
    let narinfos: HashMap<&str, &Object> = objects
        .iter()
        .filter_map(|o| match kind_of(&o.key) {
            ObjectKind::NarInfo { hash } => Some((hash, o)),
            _ => None,
        })
        .collect();
    let kept_paths: HashSet<&str> = policy.keep.iter().map(StorePath::hash_part).collect();
    let mut live: HashSet<String> = narinfos
        .iter()
        .filter(|(hash, o)| age(o) < policy.older_than || kept_paths.contains(*hash))
        .map(|(hash, _)| (*hash).to_owned())
        .collect();
    let mut frontier: Vec<String> = live.iter().cloned().collect();
    // Requests start in key order, not a hash set's (the simulation replays a seed).
    frontier.sort_unstable();
    let mut uses = Uses::default();
    let mut gets = 0u64;
    while !frontier.is_empty() {
        progress(&format!(
            "reading narinfos: {} of {} live so far",
            live.len(),
            narinfos.len()
        ));
        let read: Vec<_> = stream::iter(std::mem::take(&mut frontier))
            .map(|hash| async move {
                let key = format!("{hash}.narinfo");
                let body = sink.get(&key).await;
                (key, body)
            })
            .buffer_unordered(READ_CONCURRENCY)
            .collect()
            .await;
        for (key, body) in read {
            gets += 1;
            // Gone since the listing (another collection): nothing of it to keep.
            let Some(body) = body? else { continue };
            let narinfo = std::str::from_utf8(&body)
                .map_err(|e| e.to_string())
                .and_then(|text| NarInfo::parse(text).map_err(|e| e.to_string()))
                .map_err(|reason| GcError::Unreadable {
                    key: key.clone(),
                    reason,
                })?;
            uses.nars.insert(narinfo.url.clone());
            if let Some(deriver) = &narinfo.deriver {
                uses.logs.insert(layout::log_key_of_basename(deriver));
            }
            for reference in &narinfo.references {
                let hash = reference.hash_part();
                if narinfos.contains_key(hash) && live.insert(hash.to_owned()) {
                    frontier.push(hash.to_owned());
                }
            }
        }
    }
    let realisations = read_realisations(sink, &objects, &live, policy.grace, age).await?;
    gets += realisations.gets;
    let mut doomed: Vec<String> = narinfos
        .keys()
        .filter(|hash| !live.contains(**hash))
        .map(|hash| (*hash).to_owned())
        .collect();
    doomed.sort_unstable();
    progress(&format!("reading the {} narinfos to delete", doomed.len()));
    gets += doomed.len() as u64;
    let references = read_references(sink, doomed).await?;

    let mut plan = Plan::default();
    let (mut doomed_narinfos, mut rest) = (Vec::new(), Vec::new());
    for object in objects {
        let young = age(&object) < policy.grace;
        let (keep, tally) = match kind_of(&object.key) {
            ObjectKind::CacheInfo | ObjectKind::Other => (true, None),
            ObjectKind::NarInfo { hash } => (
                live.contains(hash),
                Some(&mut plan.summary.deleted_by_kind.narinfos),
            ),
            ObjectKind::Listing { hash } => (
                young || live.contains(hash),
                Some(&mut plan.summary.deleted_by_kind.listings),
            ),
            ObjectKind::Nar => (
                young || uses.nars.contains(&object.key),
                Some(&mut plan.summary.deleted_by_kind.nars),
            ),
            ObjectKind::Log { .. } => (
                young || uses.logs.contains(&object.key),
                Some(&mut plan.summary.deleted_by_kind.logs),
            ),
            ObjectKind::Realisation => (
                young || !realisations.unused.contains(&object.key),
                Some(&mut plan.summary.deleted_by_kind.realisations),
            ),
        };
        if keep {
            plan.summary.kept.add(&object);
            continue;
        }
        plan.summary.deleted.add(&object);
        if let Some(tally) = tally {
            tally.add(&object);
        }
        match kind_of(&object.key) {
            ObjectKind::NarInfo { hash } => doomed_narinfos.push((hash.to_owned(), object)),
            _ => rest.push(object),
        }
    }
    for layer in layers::layers(doomed_narinfos, &references) {
        plan.narinfo_layers.push(layer.len());
        plan.delete.extend(layer);
    }
    plan.delete.append(&mut rest);
    plan.summary.live_paths = live.len() as u64;
    plan.summary.requests.get = gets;
    Ok(plan)
}

/// The references (hash parts) of the narinfos of `hashes`. One that is gone or cannot be read
/// names none: it is garbage either way.
async fn read_references(
    sink: &Sink,
    hashes: Vec<String>,
) -> Result<HashMap<String, Vec<String>>, GcError> {
    let read: Vec<_> = stream::iter(hashes)
        .map(|hash| async move {
            let body = sink.get(&format!("{hash}.narinfo")).await;
            (hash, body)
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await;
    let mut references = HashMap::new();
    for (hash, body) in read {
        let Some(body) = body? else { continue };
        let Some(narinfo) = std::str::from_utf8(&body)
            .ok()
            .and_then(|text| NarInfo::parse(text).ok())
        else {
            continue;
        };
        let named = narinfo
            .references
            .iter()
            .map(|r| r.hash_part().to_owned())
            .collect();
        references.insert(hash, named);
    }
    Ok(references)
}

/// Objects that kept narinfos use.
#[derive(Default)]
struct Uses {
    nars: HashSet<String>,
    logs: HashSet<String>,
}

struct Realisations {
    /// Realisations older than the grace period whose output is not kept.
    unused: HashSet<String>,
    gets: u64,
}

/// Reads the realisations old enough to be deleted, and finds those whose output path is
/// not kept. One that cannot be read is kept.
async fn read_realisations(
    sink: &Sink,
    objects: &[Object],
    live: &HashSet<String>,
    grace: Duration,
    age: impl Fn(&Object) -> Duration,
) -> Result<Realisations, GcError> {
    let candidates: Vec<&Object> = objects
        .iter()
        .filter(|o| kind_of(&o.key) == ObjectKind::Realisation && age(o) >= grace)
        .collect();
    let gets = candidates.len() as u64;
    let read: Vec<_> = stream::iter(candidates)
        .map(|o| async move { (o.key.clone(), sink.get(&o.key).await) })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await;
    let mut unused = HashSet::new();
    for (key, body) in read {
        let Some(body) = body? else { continue };
        // Its dependencies' outputs are in its output's closure: kept whenever it is.
        match Realisation::from_json(&body) {
            Ok(realisation) if !live.contains(realisation.out_path.hash_part()) => {
                unused.insert(key);
            }
            _ => {}
        }
    }
    Ok(Realisations { unused, gets })
}

mod layers;

#[cfg(test)]
#[path = "gc/tests.rs"]
mod tests;
