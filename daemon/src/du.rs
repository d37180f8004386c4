//! What a cache holds (`narpush du`): objects and bytes by kind, the objects nothing names
//! (orphans), the largest closures and paths, and per pin its closure's bytes and the bytes
//! only it keeps alive. Read only: it lists the cache once and reads every narinfo, realisation
//! and pin, and writes nothing.
//!
//! The size of a path is its narinfo's bytes and its NAR's, as listed; a closure's bytes are
//! the sum over its paths present in the cache, each NAR counted once. Kinds are gc's
//! ([`crate::gc::ByKind`]), so the two commands never disagree on what an object is.
//!
//! Orphans: a NAR no readable narinfo names in its `URL`, a listing or a realisation whose
//! path has no narinfo, a log no narinfo names as its `Deriver`.

mod closures;

use std::collections::{HashMap, HashSet};

use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::coexist::Reader;
use crate::format::build_trace;
use crate::format::narinfo::NarInfo;
use crate::gc::{ByKind, Tally};
use crate::layout::{self, kind_of, ObjectKind};
use crate::pins::PinError;
use crate::sink::inventory::Object;
use crate::sink::{Sink, SinkError};
use closures::{Graph, PathNode, Walker};

/// narinfos and realisations read at once.
const READ_CONCURRENCY: usize = 64;

/// The `--top` default.
pub const DEFAULT_TOP: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum DuError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Pin(#[from] PinError),
}

/// What a cache holds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Usage {
    /// Every object listed.
    pub total: Tally,
    pub by_kind: ByKind,
    /// `nix-cache-info`, pins and keys narpush does not know.
    pub other: Tally,
    /// Objects nothing names (module docs); also counted in `by_kind`.
    pub orphans: Tally,
    /// The orphans by kind (`narinfos` is always zero).
    pub orphans_by_kind: ByKind,
    /// narinfos listed.
    pub paths: u64,
    /// narinfos that could not be parsed: they name no NAR, log or reference.
    pub unreadable_narinfos: u64,
    /// The largest closures of top-level paths (no other path of the cache references them),
    /// largest first.
    pub top_closures: Vec<ClosureUsage>,
    /// The largest paths (narinfo and NAR), largest first.
    pub top_paths: Vec<PathUsage>,
    /// Every pin, by name.
    pub pins: Vec<PinUsage>,
    pub requests: Requests,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClosureUsage {
    pub path: String,
    pub closure_paths: u64,
    pub closure_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PathUsage {
    pub path: String,
    pub bytes: u64,
    pub narinfo_bytes: u64,
    pub nar_bytes: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PinUsage {
    pub name: String,
    pub path: String,
    /// Whether the pinned path has a narinfo in the cache (else its closure is empty).
    pub present: bool,
    pub closure_paths: u64,
    pub closure_bytes: u64,
    /// Bytes of its closure in no other pin's closure: what removing the pin lets gc free,
    /// ages aside.
    pub exclusive_bytes: u64,
}

/// Requests made.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Requests {
    pub list: u64,
    pub get: u64,
}

/// The listing, indexed: ids for narinfos and NARs, and which other objects are named.
struct Index<'a> {
    narinfo_ids: HashMap<&'a str, u32>,
    nar_ids: HashMap<&'a str, u32>,
    nar_named: Vec<bool>,
    /// Log keys listed, and whether a narinfo names them.
    logs: HashMap<&'a str, bool>,
    graph: Graph,
}

/// Measures the cache behind `sink`, with the `top` largest closures and paths; `progress`
/// hears what it is doing.
pub async fn measure(
    sink: &Sink,
    top: usize,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Usage, DuError> {
    progress("listing the cache");
    let objects = sink.list().await?;
    let mut usage = Usage::default();
    usage.requests.list = sink.list_requests(objects.len());
    let mut index = index(&objects, &mut usage);
    read_narinfos(sink, &objects, &mut index, &mut usage, progress).await?;
    progress("reading realisations");
    let orphan_realisations = orphan_realisations(sink, &objects, &index, &mut usage).await?;
    for object in &objects {
        let orphan = match kind_of(&object.key) {
            ObjectKind::Nar => index
                .nar_ids
                .get(object.key.as_str())
                .is_some_and(|&id| !index.nar_named[id as usize]),
            ObjectKind::Listing { hash } => !index.narinfo_ids.contains_key(hash),
            ObjectKind::Log { .. } => index.logs.get(object.key.as_str()) == Some(&false),
            ObjectKind::Realisation => orphan_realisations.contains(object.key.as_str()),
            _ => false,
        };
        if orphan {
            usage.orphans.add(object);
            if let Some(tally) = usage.orphans_by_kind.of(&object.key) {
                tally.add(object);
            }
        }
    }
    progress("walking closures");
    let graph = &index.graph;
    usage.top_closures = top_closures(graph, top);
    usage.top_paths = top_paths(graph, top);
    usage.pins = pins(sink, &objects, &index, &mut usage.requests).await?;
    Ok(usage)
}

/// Tallies every object and gives narinfos and NARs their ids.
fn index<'a>(objects: &'a [Object], usage: &mut Usage) -> Index<'a> {
    let mut index = Index {
        narinfo_ids: HashMap::new(),
        nar_ids: HashMap::new(),
        nar_named: Vec::new(),
        logs: HashMap::new(),
        graph: Graph::default(),
    };
    for object in objects {
        usage.total.add(object);
        match usage.by_kind.of(&object.key) {
            Some(tally) => tally.add(object),
            None => usage.other.add(object),
        }
        match kind_of(&object.key) {
            ObjectKind::NarInfo { hash } => {
                index
                    .narinfo_ids
                    .insert(hash, index.graph.paths.len() as u32);
                index.graph.paths.push(PathNode {
                    basename: hash.into(),
                    narinfo_bytes: object.size,
                    nar: None,
                    references: Box::new([]),
                });
            }
            ObjectKind::Nar => {
                index
                    .nar_ids
                    .insert(&object.key, index.graph.nar_bytes.len() as u32);
                index.graph.nar_bytes.push(object.size);
                index.nar_named.push(false);
            }
            ObjectKind::Log { .. } => {
                index.logs.insert(&object.key, false);
            }
            _ => {}
        }
    }
    usage.paths = index.graph.paths.len() as u64;
    index
}

/// GET `object`: `None` if it is gone, or too big to be a narinfo or realisation (one is
/// not read whole into memory); a refused read is an error (du must not report a cache it
/// could not read as smaller than it is).
async fn get(sink: &Sink, object: &Object) -> Result<Option<bytes::Bytes>, SinkError> {
    if object.size > crate::verify::MAX_METADATA_BYTES {
        return Ok(None);
    }
    Ok(sink
        .read(&object.key)
        .await?
        .for_reader(Reader::Gc)?
        .map(|fetched| fetched.body))
}

/// Reads every narinfo into the graph: its name, NAR, references and deriver's log.
async fn read_narinfos(
    sink: &Sink,
    objects: &[Object],
    index: &mut Index<'_>,
    usage: &mut Usage,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), DuError> {
    let keys = objects.iter().filter_map(|o| match kind_of(&o.key) {
        ObjectKind::NarInfo { hash } => Some((hash, o)),
        _ => None,
    });
    let mut reads = stream::iter(keys)
        .map(|(hash, object)| async move {
            let too_big = object.size > crate::verify::MAX_METADATA_BYTES;
            (hash, too_big, get(sink, object).await)
        })
        .buffer_unordered(READ_CONCURRENCY);
    let mut done = 0u64;
    while let Some((hash, too_big, body)) = reads.next().await {
        if too_big {
            usage.unreadable_narinfos += 1;
            continue;
        }
        usage.requests.get += 1;
        done += 1;
        if done.is_multiple_of(1000) {
            progress(&format!("read {done} of {} narinfos", usage.paths));
        }
        // Gone since the listing: a path with no NAR and no references.
        let Some(body) = body? else { continue };
        let Some(narinfo) = std::str::from_utf8(&body)
            .ok()
            .and_then(|text| NarInfo::parse(text).ok())
        else {
            usage.unreadable_narinfos += 1;
            continue;
        };
        let id = index.narinfo_ids[hash];
        let nar = index.nar_ids.get(narinfo.url.as_str()).copied();
        if let Some(nar) = nar {
            index.nar_named[nar as usize] = true;
        }
        if let Some(deriver) = &narinfo.deriver {
            if let Some(named) = index
                .logs
                .get_mut(layout::log_key_of_basename(deriver).as_str())
            {
                *named = true;
            }
        }
        let references: Box<[u32]> = narinfo
            .references
            .iter()
            .filter_map(|r| index.narinfo_ids.get(r.hash_part()).copied())
            .filter(|&r| r != id)
            .collect();
        index.graph.paths[id as usize] = PathNode {
            basename: narinfo.store_path.basename().into(),
            narinfo_bytes: index.graph.paths[id as usize].narinfo_bytes,
            nar,
            references,
        };
    }
    Ok(())
}

/// The keys of the realisations whose output has no narinfo. One that cannot be parsed is
/// not counted as an orphan: what it names is unknown.
async fn orphan_realisations<'a>(
    sink: &Sink,
    objects: &'a [Object],
    index: &Index<'_>,
    usage: &mut Usage,
) -> Result<HashSet<&'a str>, DuError> {
    let keys = objects
        .iter()
        .filter(|o| kind_of(&o.key) == ObjectKind::Realisation);
    let mut reads = stream::iter(keys)
        .map(|object| async move { (object.key.as_str(), get(sink, object).await) })
        .buffer_unordered(READ_CONCURRENCY);
    let mut orphans = HashSet::new();
    while let Some((key, body)) = reads.next().await {
        usage.requests.get += 1;
        let Some(body) = body? else { continue };
        // Either form: Nix 2.8's `realisations/`, or Nix 2.35's build trace entry.
        if let Some(output) = build_trace::output_of_realisation_object(key, &body) {
            if !index.narinfo_ids.contains_key(output.hash_part()) {
                orphans.insert(key);
            }
        }
    }
    Ok(orphans)
}

fn store_path(graph: &Graph, id: u32) -> String {
    format!(
        "{}/{}",
        crate::format::store_path::STORE_DIR,
        graph.paths[id as usize].basename
    )
}

/// The `top` largest closures of top-level paths.
fn top_closures(graph: &Graph, top: usize) -> Vec<ClosureUsage> {
    let mut walker = Walker::new(graph);
    let mut closures: Vec<(u32, closures::Extent)> = graph
        .tops()
        .into_iter()
        .map(|id| (id, walker.extent(id)))
        .collect();
    closures.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then(a.0.cmp(&b.0)));
    closures.truncate(top);
    closures
        .into_iter()
        .map(|(id, extent)| ClosureUsage {
            path: store_path(graph, id),
            closure_paths: extent.paths,
            closure_bytes: extent.bytes,
        })
        .collect()
}

/// The `top` largest paths.
fn top_paths(graph: &Graph, top: usize) -> Vec<PathUsage> {
    let mut paths: Vec<(u32, u64)> = (0..graph.paths.len() as u32)
        .map(|id| {
            let (narinfo, nar) = graph.path_bytes(id);
            (id, narinfo + nar)
        })
        .collect();
    paths.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    paths.truncate(top);
    paths
        .into_iter()
        .map(|(id, bytes)| {
            let (narinfo_bytes, nar_bytes) = graph.path_bytes(id);
            PathUsage {
                path: store_path(graph, id),
                bytes,
                narinfo_bytes,
                nar_bytes,
            }
        })
        .collect()
}

/// Every pin with its closure and the bytes only it keeps.
async fn pins(
    sink: &Sink,
    objects: &[Object],
    index: &Index<'_>,
    requests: &mut Requests,
) -> Result<Vec<PinUsage>, DuError> {
    let pin_objects: Vec<Object> = objects
        .iter()
        .filter(|o| matches!(kind_of(&o.key), ObjectKind::Pin { .. }))
        .cloned()
        .collect();
    requests.get += pin_objects.len() as u64;
    let mut pins = crate::pins::read(sink, &pin_objects).await?;
    pins.sort_by(|a, b| a.name.cmp(&b.name));
    let present: Vec<(&crate::pins::Pin, Option<u32>)> = pins
        .iter()
        .map(|pin| {
            let id = index.narinfo_ids.get(pin.path.hash_part()).copied();
            (pin, id)
        })
        .collect();
    let roots: Vec<u32> = present.iter().filter_map(|(_, id)| *id).collect();
    let mut measured = closures::exclusive(&index.graph, &roots).into_iter();
    Ok(present
        .into_iter()
        .map(|(pin, id)| {
            let (extent, exclusive_bytes) = match id {
                Some(_) => measured.next().expect("one result per root"),
                None => Default::default(),
            };
            PinUsage {
                name: pin.name.as_str().to_owned(),
                path: pin.path.to_absolute(),
                present: id.is_some(),
                closure_paths: extent.paths,
                closure_bytes: extent.bytes,
                exclusive_bytes,
            }
        })
        .collect())
}
