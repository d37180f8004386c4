//! What `narpush verify --repair` does about a verify run's findings, decided without I/O:
//! which paths to upload again from the local store, which narinfos cannot be made whole,
//! and (with `--delete-broken`) which narinfos to delete, referrers before references.
//!
//! Invariants:
//! - **Only what the local store vouches for is uploaded.** A broken narinfo is repaired only
//!   when its path is valid in the local store with the NarHash the narinfo states (else the
//!   narinfo's referrers, signed over that NarHash's closure, would be served other bytes);
//!   a missing reference only when valid locally.
//! - **The set to delete is closed under referrers.** Every narinfo that (transitively)
//!   references a narinfo to delete is deleted too, so no narinfo left names one deleted;
//!   what a pin or an in-flight narinfo (younger than the grace period) needs is spared
//!   together with its whole closure, which keeps the set closed.
//! - **Nothing that can be made whole is deleted**, and nothing uploaded is deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::format::store_path::StorePath;
use crate::layout::{kind_of, ObjectKind};
use crate::store::PathInfo;
use crate::verify::report::Kind;
use crate::verify::Scan;

/// The kinds that make a narinfo itself broken (its NAR or its signature).
const NARINFO_FAULTS: [Kind; 5] = [
    Kind::UnparseableNarinfos,
    Kind::UnverifiedSignatures,
    Kind::MissingNars,
    Kind::NarSizeMismatches,
    Kind::NarHashMismatches,
];

/// What to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Paths whose closures are uploaded, by hash part.
    pub upload: BTreeMap<String, StorePath>,
    /// Of those, the paths uploaded whatever the cache holds (a broken narinfo is rewritten
    /// after a fresh NAR; a missing reference is uploaded even if an upstream key signed it).
    pub forced: HashSet<StorePath>,
    /// Keys (a narinfo's, or a missing reference's path) that cannot be made whole, and why.
    pub unfixable: BTreeMap<String, String>,
    /// The hash parts of the narinfos to delete (with `--delete-broken`).
    pub doomed: BTreeSet<String>,
    /// narinfos that would be deleted but are kept, and why (pinned, or in flight).
    pub spared: BTreeMap<String, String>,
}

/// The paths the local store is asked about: every broken narinfo's path and every reference
/// with no narinfo here (missing or unchecked).
pub fn paths_to_ask(scan: &Scan) -> Vec<StorePath> {
    let known = paths_by_hash(scan);
    let mut paths: BTreeSet<StorePath> = broken(scan)
        .keys()
        .filter_map(|hash| known.get(hash.as_str()).map(|p| (*p).clone()))
        .collect();
    paths.extend(scan.report.missing_paths.values().cloned());
    paths.extend(scan.report.unchecked_paths.values().cloned());
    paths.into_iter().collect()
}

/// The broken narinfos: hash part → what is wrong.
fn broken(scan: &Scan) -> BTreeMap<String, Vec<Kind>> {
    scan.report
        .damaged
        .iter()
        .filter_map(|(key, kinds)| {
            let ObjectKind::NarInfo { hash } = kind_of(key) else {
                return None;
            };
            let faults: Vec<Kind> = kinds
                .iter()
                .copied()
                .filter(|k| NARINFO_FAULTS.contains(k))
                .collect();
            (!faults.is_empty()).then(|| (hash.to_owned(), faults))
        })
        .collect()
}

/// Every store path the cache names (by its narinfos and their references), by hash part.
fn paths_by_hash(scan: &Scan) -> HashMap<&str, &StorePath> {
    let mut known = HashMap::new();
    for narinfo in scan.parsed.values() {
        for reference in &narinfo.references {
            known.insert(reference.hash_part(), reference);
        }
    }
    for narinfo in scan.parsed.values() {
        known.insert(narinfo.store_path.hash_part(), &narinfo.store_path);
    }
    known
}

/// Plans from `scan`; `local` holds the paths valid in the local store (by hash part),
/// `pinned` the paths pins name; narinfos younger than `grace` at `now` are in flight.
pub fn plan(
    scan: &Scan,
    local: &HashMap<String, PathInfo>,
    pinned: &[StorePath],
    grace: Duration,
    now: SystemTime,
) -> Plan {
    let known = paths_by_hash(scan);
    let mut plan = Plan::default();
    // Where doom starts: broken narinfos that cannot be made whole, and the narinfos
    // referring to a missing path that cannot be uploaded.
    let mut roots: BTreeSet<String> = BTreeSet::new();
    for (hash, faults) in broken(scan) {
        let key = format!("{hash}.narinfo");
        // A narinfo whose only fault is a signature by a key not trusted here may be whole
        // for the clients of another writer that shares the cache: it is never deleted.
        let signature_only = faults == [Kind::UnverifiedSignatures];
        let Some(path) = known.get(hash.as_str()) else {
            plan.unfixable.insert(
                key,
                "its store path is unknown: the narinfo does not parse and no narinfo here \
                 refers to it"
                    .to_owned(),
            );
            roots.insert(hash);
            continue;
        };
        match (local.get(&hash), scan.parsed.get(&hash)) {
            (None, _) if signature_only => {
                let why = format!(
                    "signed by no trusted key and {} is not valid in the local store to sign \
                     again; kept (pass --trusted-key NAME:KEY if another writer signs it)",
                    path.to_absolute()
                );
                plan.unfixable.insert(key, why);
            }
            (None, _) => {
                let why = format!("{} is not valid in the local store", path.to_absolute());
                plan.unfixable.insert(key, why);
                roots.insert(hash);
            }
            (Some(info), Some(narinfo)) if info.nar_hash != narinfo.nar_hash => {
                let why = format!(
                    "the local store's {} has NarHash {}, the narinfo says {}",
                    path.to_absolute(),
                    info.nar_hash,
                    narinfo.nar_hash
                );
                plan.unfixable.insert(key, why);
                if !signature_only {
                    roots.insert(hash);
                }
            }
            (Some(_), _) => {
                plan.upload.insert(hash, (*path).clone());
                plan.forced.insert((*path).clone());
            }
        }
    }
    let referrers = referrers(scan);
    for (hash, path) in &scan.report.missing_paths {
        if local.contains_key(hash) {
            plan.upload.insert(hash.clone(), path.clone());
            plan.forced.insert(path.clone());
        } else {
            let why = format!(
                "a missing reference, not valid in the local store (referred to by {} narinfo(s))",
                referrers.get(hash.as_str()).map_or(0, Vec::len)
            );
            plan.unfixable.insert(path.to_absolute(), why);
            roots.extend(
                referrers
                    .get(hash.as_str())
                    .into_iter()
                    .flatten()
                    .map(|h| (*h).to_owned()),
            );
        }
    }
    for (hash, path) in &scan.report.unchecked_paths {
        if local.contains_key(hash) {
            plan.upload.insert(hash.clone(), path.clone());
        }
    }
    plan.doomed = closed_under_referrers(roots, &referrers);
    // A path that references something that cannot be made whole cannot be made whole.
    plan.upload.retain(|hash, _| !plan.doomed.contains(hash));
    let upload = &plan.upload;
    plan.forced.retain(|p| upload.contains_key(p.hash_part()));
    spare(scan, &mut plan, pinned, grace, now);
    plan
}

/// hash part → the hash parts of the parsed narinfos referring to it.
fn referrers(scan: &Scan) -> HashMap<&str, Vec<&str>> {
    let mut referrers: HashMap<&str, Vec<&str>> = HashMap::new();
    for (hash, narinfo) in &scan.parsed {
        for reference in &narinfo.references {
            if reference.hash_part() != hash {
                referrers
                    .entry(reference.hash_part())
                    .or_default()
                    .push(hash.as_str());
            }
        }
    }
    referrers
}

/// `roots` and every narinfo that references one of them, transitively.
fn closed_under_referrers(
    roots: BTreeSet<String>,
    referrers: &HashMap<&str, Vec<&str>>,
) -> BTreeSet<String> {
    let mut doomed = roots.clone();
    let mut pending: Vec<String> = roots.into_iter().collect();
    while let Some(hash) = pending.pop() {
        for referrer in referrers.get(hash.as_str()).into_iter().flatten() {
            if doomed.insert((*referrer).to_owned()) {
                pending.push((*referrer).to_owned());
            }
        }
    }
    doomed
}

/// Takes out of `plan.doomed` what a pin or an in-flight narinfo needs: their closures.
fn spare(scan: &Scan, plan: &mut Plan, pinned: &[StorePath], grace: Duration, now: SystemTime) {
    let mut pending: Vec<(String, String)> = Vec::new();
    for path in pinned {
        let why = format!("in the closure of the pinned {}", path.to_absolute());
        pending.push((path.hash_part().to_owned(), why));
    }
    for hash in &plan.doomed {
        let young = scan
            .narinfos
            .get(hash)
            .is_some_and(|o| crate::clock::age(now, o.modified) < grace);
        if young {
            let why = "in the closure of a narinfo younger than --grace (in flight)".to_owned();
            pending.push((hash.clone(), why));
        }
    }
    let mut seen = HashSet::new();
    while let Some((hash, why)) = pending.pop() {
        if !seen.insert(hash.clone()) {
            continue;
        }
        if plan.doomed.remove(&hash) {
            plan.spared.insert(format!("{hash}.narinfo"), why.clone());
        }
        for reference in scan
            .parsed
            .get(&hash)
            .into_iter()
            .flat_map(|n| &n.references)
        {
            pending.push((reference.hash_part().to_owned(), why.clone()));
        }
    }
}
