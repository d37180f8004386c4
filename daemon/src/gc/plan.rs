//! The plan of a collection: from a listing, the roots, their closures, and the objects
//! nothing kept uses, with the order in which the narinfos among them go ([`super::layers`])
//! and, for each other object, the doomed narinfos that name it (checked again before it goes,
//! see [`super::delete`]). Every read is GC's: a refused one stops the run.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use futures::stream::{self, StreamExt};

use super::{gc_read, layers, GcError, Plan, Policy};
use crate::format::build_trace;
use crate::format::narinfo::NarInfo;
use crate::format::store_path::StorePath;
use crate::layout::{self, kind_of, ObjectKind};
use crate::sink::inventory::Object;
use crate::sink::Sink;

/// narinfos and realisations read at once.
pub(super) const READ_CONCURRENCY: usize = 64;

/// GET `key` as GC: the body, `None` if it is gone, an error if the read was refused.
async fn get(sink: &Sink, key: &str) -> Result<Option<bytes::Bytes>, GcError> {
    let read = sink.read(key).await;
    Ok(gc_read(sink, key, read, 0)?.map(|fetched| fetched.body))
}

/// What a collection at `now` would delete from `objects`.
pub async fn plan(
    sink: &Sink,
    policy: &Policy,
    objects: Vec<Object>,
    now: SystemTime,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Plan, GcError> {
    let age = |o: &Object| crate::clock::age(now, o.modified);
    let narinfos: HashMap<&str, &Object> = objects
        .iter()
        .filter_map(|o| match kind_of(&o.key) {
            ObjectKind::NarInfo { hash } => Some((hash, o)),
            _ => None,
        })
        .collect();
    let pins = read_pins(sink, &objects).await?;
    let kept_paths: HashSet<&str> = policy
        .keep
        .iter()
        .chain(pins.iter().map(|pin| &pin.path))
        .map(StorePath::hash_part)
        .collect();
    let mut live: HashSet<String> = narinfos
        .iter()
        .filter(|(hash, o)| age(o) < policy.older_than || kept_paths.contains(*hash))
        .map(|(hash, _)| (*hash).to_owned())
        .collect();
    let mut frontier: Vec<String> = live.iter().cloned().collect();
    // Requests start in key order, not a hash set's (the simulation replays a seed).
    frontier.sort_unstable();
    let mut uses = Uses::default();
    while !frontier.is_empty() {
        progress(&format!(
            "reading narinfos: {} of {} live so far",
            live.len(),
            narinfos.len()
        ));
        let read: Vec<_> = stream::iter(std::mem::take(&mut frontier))
            .map(|hash| async move {
                let key = format!("{hash}.narinfo");
                let body = get(sink, &key).await;
                (key, body)
            })
            .buffer_unordered(READ_CONCURRENCY)
            .collect()
            .await;
        for (key, body) in read {
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
    let mut doomed: Vec<String> = narinfos
        .keys()
        .filter(|hash| !live.contains(**hash))
        .map(|hash| (*hash).to_owned())
        .collect();
    doomed.sort_unstable();
    progress(&format!("reading the {} narinfos to delete", doomed.len()));
    let doomed = read_doomed(sink, doomed).await?;

    let mut plan = Plan {
        pinned: pins.iter().map(|p| p.path.hash_part().to_owned()).collect(),
        ..Plan::default()
    };
    let (mut doomed_narinfos, mut rest) = (Vec::new(), Vec::new());
    for object in objects {
        let young = age(&object) < policy.grace;
        let (keep, tally) = match kind_of(&object.key) {
            ObjectKind::CacheInfo | ObjectKind::Pin { .. } | ObjectKind::Other => (true, None),
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
                young || !realisations.unused.contains_key(&object.key),
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
    plan.named_by = doomed.named_by;
    plan.referred_by = referred_by(&doomed.references);
    for (key, narinfo) in realisations.unused {
        plan.named_by.entry(key).or_default().push(narinfo);
    }
    for layer in layers::layers(doomed_narinfos, &doomed.references) {
        plan.narinfo_layers.push(layer.len());
        plan.delete.extend(layer);
    }
    plan.delete.append(&mut rest);
    plan.summary.live_paths = live.len() as u64;
    Ok(plan)
}

/// The pins among `objects` ([`crate::pins`]): roots. One that cannot be read stops the run
/// before anything is deleted, as an unreadable narinfo does.
async fn read_pins(sink: &Sink, objects: &[Object]) -> Result<Vec<crate::pins::Pin>, GcError> {
    crate::pins::read(sink, objects)
        .await
        .map_err(|error| pin_error(error, 0))
}

/// A pin GC could not read, as the error that stops the run.
pub(super) fn pin_error(error: crate::pins::PinError, deleted: u64) -> GcError {
    use crate::pins::PinError;
    match error {
        PinError::Sink(error) if error.class == crate::sink::ErrorClass::Permanent => {
            GcError::Refused {
                permission: "s3:GetObject",
                key: error.key.clone(),
                detail: error.detail,
                deleted,
            }
        }
        PinError::Sink(error) => GcError::Sink(error),
        PinError::Unreadable { name, reason } => GcError::Unreadable {
            key: format!("{}{name}", crate::pins::PIN_PREFIX),
            reason,
        },
        other => GcError::Unreadable {
            key: crate::pins::PIN_PREFIX.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// For each doomed narinfo (by key), the keys of the doomed narinfos that reference it: all
/// deleted before it (see [`layers`]), and checked again for a refresh that wrote one back.
fn referred_by(references: &HashMap<String, Vec<String>>) -> HashMap<String, Vec<String>> {
    let mut referred_by: HashMap<String, Vec<String>> = HashMap::new();
    for (hash, named) in references {
        for reference in named {
            if reference != hash {
                referred_by
                    .entry(format!("{reference}.narinfo"))
                    .or_default()
                    .push(format!("{hash}.narinfo"));
            }
        }
    }
    referred_by
}

/// What the doomed narinfos say.
struct Doomed {
    /// The references (hash parts) of each, by hash part.
    references: HashMap<String, Vec<String>>,
    /// The narinfo keys naming each NAR, listing and log.
    named_by: HashMap<String, Vec<String>>,
}

/// Reads the narinfos of `hashes`, to be deleted. One that is gone or cannot be parsed names
/// nothing: it is garbage either way.
async fn read_doomed(sink: &Sink, hashes: Vec<String>) -> Result<Doomed, GcError> {
    let read: Vec<_> = stream::iter(hashes)
        .map(|hash| async move {
            let body = get(sink, &format!("{hash}.narinfo")).await;
            (hash, body)
        })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await;
    let mut doomed = Doomed {
        references: HashMap::new(),
        named_by: HashMap::new(),
    };
    for (hash, body) in read {
        let Some(body) = body? else { continue };
        let Some(narinfo) = std::str::from_utf8(&body)
            .ok()
            .and_then(|text| NarInfo::parse(text).ok())
        else {
            continue;
        };
        let key = format!("{hash}.narinfo");
        let mut belongings = vec![narinfo.url.clone(), format!("{hash}.ls")];
        if let Some(deriver) = &narinfo.deriver {
            belongings.push(layout::log_key_of_basename(deriver));
        }
        for belonging in belongings {
            doomed
                .named_by
                .entry(belonging)
                .or_default()
                .push(key.clone());
        }
        let named = narinfo
            .references
            .iter()
            .map(|r| r.hash_part().to_owned())
            .collect();
        doomed.references.insert(hash, named);
    }
    Ok(doomed)
}

/// Objects that kept narinfos use.
#[derive(Default)]
struct Uses {
    nars: HashSet<String>,
    logs: HashSet<String>,
}

struct Realisations {
    /// Realisations older than the grace period whose output is not kept, with the key of
    /// their output's narinfo.
    unused: HashMap<String, String>,
}

/// Reads the realisations old enough to be deleted, and finds those whose output path is
/// not kept. One that cannot be read is kept, and so is one too big to be a realisation
/// (never read whole into memory).
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
        .filter(|o| o.size <= crate::upstream::MAX_NARINFO as u64)
        .collect();
    let read: Vec<_> = stream::iter(candidates)
        .map(|o| async move { (o.key.clone(), get(sink, &o.key).await) })
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await;
    let mut unused = HashMap::new();
    for (key, body) in read {
        let Some(body) = body? else { continue };
        // Its dependencies' outputs are in its output's closure: kept whenever it is.
        match build_trace::output_of_realisation_object(&key, &body) {
            Some(output) if !live.contains(output.hash_part()) => {
                unused.insert(key, layout::narinfo_key(&output));
            }
            _ => {}
        }
    }
    Ok(Realisations { unused })
}
