//! `narpush verify --repair`: makes a cache whole without ever breaking the closure invariant
//! while it works. It reads the cache as `narpush verify` does, then:
//!
//! 1. **Uploads again** what the local store can vouch for ([`plan`]): the path of every
//!    narinfo whose NAR is missing or damaged or whose signature does not verify (valid
//!    locally with the narinfo's NarHash), and every reference with no narinfo here that is
//!    valid locally, each with its closure, through the one upload engine with all of the
//!    uploader's rules (U4 order, U6 settle, refreshes). Broken narinfos are *forced*
//!    ([`crate::engine::EngineConfig::forced`]): their NAR is written afresh, then the
//!    narinfo rewritten after it.
//! 2. With `--delete-broken`, reads the cache again and **deletes** the narinfos whose closure
//!    cannot be made whole, and every narinfo referring to them, referrers first, with GC's
//!    machinery and rules (G4–G8, [`deletes`]); then the NARs and listings nothing left names.
//!    What a pin or an in-flight narinfo needs is kept.
//! 3. **Verifies again**; the exit status is that run's.
//!
//! # Invariants
//!
//! - **Nothing whole is broken.** Only narinfos whose closure is not whole are deleted (a
//!   whole narinfo's closure is whole), each after its referrers; a narinfo an uploader wrote
//!   meanwhile is not deleted (G5). Uploads publish a narinfo only after its NAR and its
//!   references.
//! - **`--dry-run` changes nothing**: it reads, plans, and prints the plan.
//! - **Deletes respect the grace period**: `--delete-broken` refuses a `--grace` shorter than
//!   GC's minimum ([`crate::coexist::MIN_GRACE`]), and deletes nothing younger.

mod deletes;
pub mod plan;
#[cfg(test)]
#[path = "repair/tests.rs"]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::coexist::MIN_GRACE;
use crate::engine::{Engine, EngineConfig, Report as EngineReport};
use crate::format::store_path::StorePath;
use crate::gc::GcError;
use crate::sink::{Sink, SinkError};
use crate::store::{PathInfo, StoreError};
use crate::verify::{self, Report, Scan, VerifyError};

/// Plans of deletes made at most when uploaders keep rewriting narinfos about to go.
const DELETE_PLANS: usize = 3;

/// What to do besides uploading.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Delete the narinfos whose closure cannot be made whole (and their referrers).
    pub delete_broken: bool,
    /// Print the plan, change nothing.
    pub dry_run: bool,
}

/// Why a repair could not be carried out (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("cannot ask the local Nix store which paths it holds")]
    Store(#[from] StoreError),
    #[error("cannot read the pins")]
    Pins(#[source] crate::pins::PinError),
    #[error("cannot prepare the cache for uploads")]
    Sink(#[from] SinkError),
    #[error("the deletes of --delete-broken stopped")]
    Delete(#[from] GcError),
    #[error(
        "--delete-broken deletes only what is older than --grace, which must be at least {} \
         (gc's minimum: uploaders trust what they found in the cache for 10 minutes); \
         --grace is {}",
        humantime::format_duration(MIN_GRACE),
        humantime::format_duration(*grace)
    )]
    ShortGrace { grace: Duration },
    #[error("the upload engine failed: {0}")]
    Engine(String),
}

/// A path that could not be uploaded, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Failed {
    pub path: String,
    pub error: String,
}

/// What a repair did (or, with `--dry-run`, would do): the `repair` object of the JSON
/// document (docs/verify.md).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    pub delete_broken: bool,
    /// Problems found before the repair.
    pub problems_before: u64,
    /// Paths uploaded again to repair the cache (with --dry-run: to upload), with their
    /// closures.
    pub repaired: Vec<String>,
    /// Of those, the ones written afresh over a broken narinfo.
    pub forced: Vec<String>,
    /// Other paths of those closures the upload wrote.
    pub uploaded_with_them: Vec<String>,
    /// Paths whose upload failed.
    pub failed: Vec<Failed>,
    /// What cannot be made whole, and why: narinfo keys, or missing references' paths.
    pub unfixable: BTreeMap<String, String>,
    /// Keys deleted (with --dry-run: to delete), narinfos first.
    pub deleted: Vec<String>,
    /// narinfos whose closure cannot be made whole but that are kept, and why (pinned, in
    /// flight, rewritten by an uploader meanwhile, or no --delete-broken).
    pub kept: BTreeMap<String, String>,
}

/// The result: the report of the verify run after the repair (before it, with --dry-run),
/// and what was done.
pub struct Repaired {
    pub report: Report,
    pub summary: Summary,
}

/// Repairs the cache behind `sink` (see the module doc). `verify` says how it is read
/// (its `now` is renewed for each read); `engine` uploads (its forced set is repair's).
pub async fn repair(
    sink: &Arc<Sink>,
    target: &str,
    verify: &mut verify::Options,
    options: Options,
    engine: EngineConfig,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Repaired, RepairError> {
    if options.delete_broken && verify.grace < MIN_GRACE {
        return Err(RepairError::ShortGrace {
            grace: verify.grace,
        });
    }
    let before = scan(sink, target, verify, progress).await?;
    // Pins only spare what deletes would take: without --delete-broken a broken pin object
    // does not stop the uploads (plain `verify` reports it).
    let pinned = if options.delete_broken {
        pinned(sink).await?
    } else {
        Vec::new()
    };
    let repairs = plan_repairs(&before, &pinned, verify).await?;
    let mut summary = Summary {
        dry_run: options.dry_run,
        delete_broken: options.delete_broken,
        problems_before: before.report.problem_count,
        repaired: repairs
            .upload
            .values()
            .map(StorePath::to_absolute)
            .collect(),
        forced: sorted(repairs.forced.iter().map(StorePath::to_absolute)),
        unfixable: repairs.unfixable.clone(),
        ..Summary::default()
    };
    if options.dry_run {
        if options.delete_broken {
            let hashes: HashSet<String> = pinned.iter().map(|p| p.hash_part().to_owned()).collect();
            let deletes = deletes::plan(&before, &repairs, &hashes, verify.grace, verify.now);
            summary.deleted = deletes.delete.iter().map(|o| o.key.clone()).collect();
        }
        summary.kept = kept(&repairs, options, &[]);
        return Ok(Repaired {
            report: before.report,
            summary,
        });
    }
    if !repairs.upload.is_empty() {
        progress(&format!("uploading {} path(s) again", repairs.upload.len()));
        upload(&repairs, engine, &mut summary).await?;
    }
    let mut planned: Vec<String> = Vec::new();
    let mut middle_repairs = None;
    if options.delete_broken {
        if !repairs.forced.is_empty() {
            // A forced narinfo now names a new NAR, which leaves the one it named an orphan.
            // An uploader's refresh that read the old narinfo just before may still write it
            // back, naming that NAR again: it has landed `S` after our last write (G7's
            // argument), so the listing below sees it and keeps the NAR.
            progress("letting refreshes of the replaced narinfos land");
            tokio::time::sleep(crate::coexist::WRITE_BACK_SETTLE).await;
        }
        for _ in 0..DELETE_PLANS {
            progress("reading the cache again before deleting");
            let middle = scan(sink, target, verify, progress).await?;
            let pinned = self::pinned(sink).await?;
            let repairs = plan_repairs(&middle, &pinned, verify).await?;
            let hashes: HashSet<String> = pinned.iter().map(|p| p.hash_part().to_owned()).collect();
            let mut deletes = deletes::plan(&middle, &repairs, &hashes, verify.grace, verify.now);
            for object in &deletes.delete {
                if !planned.contains(&object.key) {
                    planned.push(object.key.clone());
                }
            }
            middle_repairs = Some(repairs);
            if deletes.delete.is_empty() {
                break;
            }
            // A narinfo rewritten meanwhile stops the deletes there (G5): plan anew from a
            // new listing; the final listing tells what went.
            let ran_through = crate::gc::carry_out(sink, &mut deletes, progress).await?;
            if ran_through {
                break;
            }
        }
    }
    progress("verifying again");
    // What this run wrote is not in flight: a break in it is this run's, and must show.
    verify.settled = summary
        .repaired
        .iter()
        .chain(&summary.uploaded_with_them)
        .filter_map(|path| StorePath::from_absolute_path(path).ok())
        .map(|path| format!("{}.narinfo", path.hash_part()))
        .collect();
    let after = scan(sink, target, verify, progress).await;
    verify.settled.clear();
    let after = after?;
    let listed = |key: &str| match crate::layout::kind_of(key) {
        crate::layout::ObjectKind::NarInfo { hash } => after.narinfos.contains_key(hash),
        crate::layout::ObjectKind::Nar => after.nars.contains_key(key),
        _ => after.listings.iter().any(|(_, o)| o.key == key),
    };
    let (deleted, stayed): (Vec<String>, Vec<String>) =
        planned.into_iter().partition(|key| !listed(key));
    summary.deleted = deleted;
    let repairs = middle_repairs.as_ref().unwrap_or(&repairs);
    let filtered: Vec<(String, String)> = summary
        .unfixable
        .iter()
        .filter(|(_, why)| why.starts_with(FILTERED))
        .map(|(key, why)| (key.clone(), why.clone()))
        .collect();
    summary.unfixable = repairs.unfixable.clone();
    summary.unfixable.extend(filtered);
    summary.kept = kept(repairs, options, &stayed);
    Ok(Repaired {
        report: after.report,
        summary,
    })
}

fn sorted(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut items: Vec<String> = items.collect();
    items.sort();
    items
}

/// The doomed narinfos that stay, and why.
fn kept(repairs: &plan::Plan, options: Options, rewritten: &[String]) -> BTreeMap<String, String> {
    let mut kept = repairs.spared.clone();
    if !options.delete_broken {
        for hash in &repairs.doomed {
            kept.insert(
                format!("{hash}.narinfo"),
                "its closure cannot be made whole (pass --delete-broken to delete it)".to_owned(),
            );
        }
    }
    for key in rewritten {
        kept.insert(
            key.clone(),
            "not deleted: in use again (written by an uploader meanwhile), or after one that was"
                .to_owned(),
        );
    }
    kept
}

async fn scan(
    sink: &Sink,
    target: &str,
    verify: &mut verify::Options,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Scan, RepairError> {
    verify.now = crate::clock::now();
    Ok(verify::scan(sink, target, verify, progress).await?)
}

/// The paths the cache's pins name.
async fn pinned(sink: &Sink) -> Result<Vec<StorePath>, RepairError> {
    let objects = crate::pins::list_objects(sink)
        .await
        .map_err(|e| RepairError::Pins(e.into()))?;
    let pins = crate::pins::read(sink, &objects)
        .await
        .map_err(RepairError::Pins)?;
    Ok(pins.into_iter().map(|pin| pin.path).collect())
}

async fn plan_repairs(
    scan: &Scan,
    pinned: &[StorePath],
    verify: &verify::Options,
) -> Result<plan::Plan, RepairError> {
    let local = valid_in_local_store(&plan::paths_to_ask(scan)).await?;
    Ok(plan::plan(scan, &local, pinned, verify.grace, verify.now))
}

/// The metadata of those of `paths` valid in the local store, by hash part (from the
/// simulated store when one is installed, as the engine reads it: feature `sim`).
async fn valid_in_local_store(
    paths: &[StorePath],
) -> Result<HashMap<String, PathInfo>, StoreError> {
    #[cfg(feature = "sim")]
    if let Some(store) = crate::store::simulated::installed() {
        return Ok(paths
            .iter()
            .filter_map(|path| store.info(path))
            .map(|info| (info.path.hash_part().to_owned(), info))
            .collect());
    }
    let mut invalid = HashSet::new();
    for batch in paths.chunks(1000) {
        let mut args = vec!["--check-validity".to_owned(), "--print-invalid".to_owned()];
        args.extend(batch.iter().map(StorePath::to_absolute));
        let stdout = crate::store::run_nix("nix-store", &args).await?;
        invalid.extend(stdout.lines().map(str::trim).map(str::to_owned));
    }
    let valid: Vec<StorePath> = paths
        .iter()
        .filter(|p| !invalid.contains(&p.to_absolute()))
        .cloned()
        .collect();
    if valid.is_empty() {
        return Ok(HashMap::new());
    }
    let infos = crate::store::query_path_infos(&valid, false).await?;
    Ok(infos
        .into_iter()
        .map(|info| (info.path.hash_part().to_owned(), info))
        .collect())
}

/// How the reason of a path the push filters kept from a repair's uploads begins (it is
/// listed as unfixable: what needs it stays broken).
const FILTERED: &str = "not uploaded by the push filters";

/// Uploads the closures of the planned paths through the engine, the forced ones written
/// afresh.
async fn upload(
    repairs: &plan::Plan,
    engine: EngineConfig,
    summary: &mut Summary,
) -> Result<(), RepairError> {
    let config = engine.with_forced(repairs.forced.clone());
    config.ensure_cache_info().await?;
    let (engine, mut reports, task) =
        Engine::start(Arc::new(config), CancellationToken::new(), Duration::ZERO);
    engine.submit(repairs.upload.values().cloned().collect());
    drop(engine);
    let tops: HashSet<String> = repairs
        .upload
        .values()
        .map(StorePath::to_absolute)
        .collect();
    let mut failed = BTreeMap::new();
    let mut skipped = BTreeMap::new();
    while let Some(report) = reports.recv().await {
        match report {
            EngineReport::Uploaded { path, .. } if !tops.contains(&path.to_absolute()) => {
                summary.uploaded_with_them.push(path.to_absolute());
            }
            EngineReport::Failed { path, error } => {
                failed.insert(path.to_absolute(), crate::error_chain(error.as_ref()));
            }
            EngineReport::TopFailed { top, failure } => {
                failed.entry(top.to_absolute()).or_insert(failure.message);
            }
            // Not uploaded, by the push filters: what needs it stays broken.
            EngineReport::TopSkipped { top, reason } => {
                skipped.insert(top.to_absolute(), reason.to_string());
            }
            _ => {}
        }
    }
    for (path, reason) in &skipped {
        summary
            .unfixable
            .insert(path.clone(), format!("{FILTERED}: {reason}"));
    }
    summary.repaired.retain(|p| !skipped.contains_key(p));
    task.await.map_err(|e| RepairError::Engine(e.to_string()))?;
    summary.uploaded_with_them.sort();
    summary.failed = failed
        .into_iter()
        .map(|(path, error)| Failed { path, error })
        .collect();
    let failed: HashSet<&str> = summary.failed.iter().map(|f| f.path.as_str()).collect();
    summary.repaired.retain(|p| !failed.contains(p.as_str()));
    Ok(())
}
