//! `narpush verify`: is a cache whole? It lists the cache once, reads every narinfo, and
//! reports per kind of problem (with counts and examples) what a client of the cache could
//! trip over: narinfos that do not parse or whose signatures do not verify, NARs missing or
//! of another size (with `--nar-hash`, of another FileHash/NarHash), references with no
//! narinfo here, `.ls` listings, build logs and realisations without their path, orphan NARs,
//! and pins that cannot be read or whose closure is not whole.
//!
//! # Invariants
//!
//! - **It only reads.** The cache is opened with [`Sink::open_for_reading`]; no request
//!   writes or deletes. A read the store refuses is an error ([`Reader::Verify`]): the run
//!   cannot vouch for what it did not read, and says so with exit status 2.
//! - **In flight is not a problem.** Uploaders and `narpush gc` may be at work: a problem that
//!   involves an object younger than the grace period (its LastModified), or an object gone
//!   since the listing, is counted as in flight instead.
//! - **References are asked, not guessed.** A reference with no narinfo here is a problem only
//!   if upstream caches were asked and none serves it (as [`crate::upstream`] decides);
//!   without upstream caches it is *unchecked*, which does not make the cache not whole.
//! - **Memory is bounded by the number of objects, not their size.** NARs are never read
//!   whole: `--nar-hash` streams them ([`nar_hash`]).
//!
//! The steps, each in its own module: [`narinfos`] (read, parse, signatures), [`nars`]
//! (presence, sizes, hashes, orphans), [`references`] (references and pins), [`belongings`]
//! (listings, logs, realisations); [`report`] shapes the result.

mod belongings;
mod nar_hash;
mod narinfos;
mod nars;
mod references;
pub mod report;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::coexist::Reader;
use crate::format::signing::VerifyingKey;
use crate::layout::{kind_of, ObjectKind};
use crate::sink::inventory::Object;
use crate::sink::{Sink, SinkError};
use crate::upstream::Upstream;
pub use report::Report;

/// Narinfos, realisations and pins read at once.
pub const READ_CONCURRENCY: usize = 32;
/// NARs streamed and hashed at once (`--nar-hash`).
pub const HASH_CONCURRENCY: usize = 4;
/// Upstream lookups at once.
pub const UPSTREAM_CONCURRENCY: usize = 8;

/// What to check, and with what.
pub struct Options {
    /// The keys a narinfo's signature must verify with (one of them).
    pub keys: Vec<VerifyingKey>,
    /// Objects younger than this are in flight.
    pub grace: Duration,
    /// Stream every NAR and compare its FileHash, NarHash and NarSize.
    pub nar_hash: bool,
    /// Where references with no narinfo here are asked; `None`: they are unchecked.
    pub upstream: Option<Upstream>,
    /// The time ages are measured from.
    pub now: SystemTime,
    /// narinfo keys that are never in flight, nor are their NARs, whatever their age: what
    /// `verify --repair` just wrote, so that its last look sees a break it caused.
    pub settled: HashSet<String>,
}

/// Why a run could not read the cache (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read the cache")]
    Sink(#[from] SinkError),
    #[error("a task reading the cache failed: {0}")]
    Task(String),
    #[error(
        "upstream cache(s) {caches} did not answer: the references asked of them are neither \
         served nor missing; run verify again when they answer, or without --upstream (they \
         are then unchecked)"
    )]
    UpstreamUnreachable { caches: String },
}

/// The cache's objects, by what they are.
#[derive(Default)]
struct Inventory {
    /// By hash part.
    narinfos: HashMap<String, Object>,
    /// By key.
    nars: HashMap<String, Object>,
    listings: Vec<(String, Object)>,
    logs: Vec<(String, Object)>,
    realisations: Vec<Object>,
    pins: Vec<(String, Object)>,
    cache_info: Option<Object>,
}

impl Inventory {
    fn of(objects: Vec<Object>) -> Inventory {
        let mut inventory = Inventory::default();
        for object in objects {
            match kind_of(&object.key) {
                ObjectKind::CacheInfo => inventory.cache_info = Some(object),
                ObjectKind::Other => {}
                ObjectKind::NarInfo { hash } => {
                    inventory.narinfos.insert(hash.to_owned(), object);
                }
                ObjectKind::Listing { hash } => {
                    inventory.listings.push((hash.to_owned(), object));
                }
                ObjectKind::Nar => {
                    inventory.nars.insert(object.key.clone(), object);
                }
                ObjectKind::Log { drv } => inventory.logs.push((drv.to_owned(), object)),
                ObjectKind::Realisation => inventory.realisations.push(object),
                ObjectKind::Pin { name } => inventory.pins.push((name.to_owned(), object)),
            }
        }
        inventory
    }
}

/// The largest narinfo or realisation read (real ones are a few hundred bytes; one with
/// thousands of references a few hundred KiB): a bigger object is a problem, not read.
pub const MAX_METADATA_BYTES: u64 = crate::upstream::MAX_NARINFO as u64;

/// Why `object` is not read, when it is too big to be what its key says.
fn too_big(object: &Object) -> Option<String> {
    (object.size > MAX_METADATA_BYTES).then(|| {
        format!(
            "{} bytes, more than the {MAX_METADATA_BYTES} a narinfo or realisation may have: not read",
            object.size
        )
    })
}

/// `nix-cache-info` must be there and name `/nix/store` as the store: without it, Nix's HTTP
/// clients cannot use the cache; with another `StoreDir`, they refuse it. Never in flight: a
/// writer writes it before anything else.
async fn check_cache_info(
    sink: &Sink,
    inventory: &Inventory,
    report: &mut Report,
) -> Result<(), VerifyError> {
    let key = crate::layout::NIX_CACHE_INFO;
    let body = match &inventory.cache_info {
        Some(object) if object.size > MAX_METADATA_BYTES => None,
        Some(_) => get(sink, key).await?,
        None => None,
    };
    let store_dir = body.as_deref().and_then(|body| {
        std::str::from_utf8(body).ok()?.lines().find_map(|line| {
            let (field, value) = line.split_once(':')?;
            (field.trim() == "StoreDir").then(|| value.trim().to_owned())
        })
    });
    let detail = match store_dir.as_deref() {
        Some(crate::format::store_path::STORE_DIR) => return Ok(()),
        Some(other) => format!(
            "StoreDir is {other}, not {}",
            crate::format::store_path::STORE_DIR
        ),
        None if body.is_some() => "no StoreDir line (or too big to be one)".to_owned(),
        None => "missing: Nix's HTTP clients cannot use the cache".to_owned(),
    };
    report.problem(report::Kind::CacheInfo, false, key, detail);
    Ok(())
}

/// Whether `object` is younger than `grace` at `now`.
fn is_young(object: &Object, options: &Options) -> bool {
    !options.settled.contains(&object.key)
        && crate::clock::age(options.now, object.modified) < options.grace
}

/// What one run read: the report, and what `narpush verify --repair` plans from.
pub struct Scan {
    pub report: Report,
    /// The listed narinfos, by hash part.
    pub narinfos: HashMap<String, Object>,
    /// The listed NARs, by key.
    pub nars: HashMap<String, Object>,
    /// The listed `.ls` listings, with the hash part of their path.
    pub listings: Vec<(String, Object)>,
    /// The narinfos that parse, by hash part.
    pub parsed: HashMap<String, crate::format::narinfo::NarInfo>,
    /// Every `URL` a narinfo here names, parsed or not.
    pub named_nars: std::collections::HashSet<String>,
}

/// Verifies the cache behind `sink`; `target` names it in the report.
pub async fn verify(
    sink: &Sink,
    target: &str,
    options: &Options,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Report, VerifyError> {
    Ok(scan(sink, target, options, progress).await?.report)
}

/// Verifies the cache behind `sink`, and keeps what was read.
pub async fn scan(
    sink: &Sink,
    target: &str,
    options: &Options,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Scan, VerifyError> {
    progress("listing the cache");
    let objects = sink.list().await?;
    let mut report = Report {
        target: target.to_owned(),
        grace_secs: options.grace.as_secs(),
        nar_hash_checked: options.nar_hash,
        objects: objects.len() as u64,
        whole: true,
        ..Report::default()
    };
    report.keys.trusted = options.keys.iter().map(|k| k.name().to_owned()).collect();
    let inventory = Inventory::of(objects);
    report.narinfos = inventory.narinfos.len() as u64;
    report.nars = inventory.nars.len() as u64;
    report.nar_bytes = inventory.nars.values().map(|o| o.size).sum();

    check_cache_info(sink, &inventory, &mut report).await?;
    progress(&format!("reading {} narinfos", inventory.narinfos.len()));
    let read = narinfos::read(sink, &inventory, options, &mut report).await?;
    progress("checking NARs");
    let broken = nars::check(sink, &inventory, &read, options, &mut report, progress).await?;
    progress("checking references");
    let elsewhere = references::check(&inventory, &read, options, &mut report).await?;
    belongings::check(sink, &inventory, &read, options, &mut report).await?;
    references::check_pins(
        sink,
        &inventory,
        &read,
        &broken,
        &elsewhere,
        options,
        &mut report,
    )
    .await?;
    Ok(Scan {
        report,
        narinfos: inventory.narinfos,
        nars: inventory.nars,
        listings: inventory.listings,
        parsed: read.parsed,
        named_nars: read.named_nars,
    })
}

/// Reads `key` whole as `narpush verify` does: `None` if it is gone since the listing.
async fn get(sink: &Sink, key: &str) -> Result<Option<bytes::Bytes>, SinkError> {
    Ok(sink
        .read(key)
        .await?
        .for_reader(Reader::Verify)?
        .map(|fetched| fetched.body))
}
