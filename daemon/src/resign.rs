//! `narpush resign`: adds or replaces signatures on the narinfos and realisations (both forms:
//! `realisations/` and Nix 2.35's `build-trace-v2/`) already in a cache, for a key rotation,
//! without touching a NAR.
//!
//! Invariants:
//! - Only what is ours is signed: an object none of whose signatures verifies with one of our
//!   public keys (the signing keys', and the config's `own_public_keys`) is left alone and
//!   counted, never blessed with a new key.
//! - A rewrite is a refresh with new signatures, under rule U2 of [`crate::coexist`]: it is sent
//!   only within `W` of the start of the read it rewrites, with the time left as its timeout, so
//!   a collection that deleted the object meanwhile sees it back before it relies on its
//!   absence (G7). Like a refresh, it makes the object young again for `narpush gc`: objects
//!   older than `skip_older_than` are left alone, so a rotation neither keeps garbage alive
//!   nor rewrites what a collection is about to delete (which would make it plan again).
//! - Resumable: an object that already carries exactly the signatures wanted is not written,
//!   so a run that stopped is finished by running it again.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use serde::Serialize;

use crate::coexist::{Check, Reader, REFRESH_ROUNDS, REFRESH_SETTLE};
use crate::format::build_trace::{self, BuildTraceEntry, Signature};
use crate::format::narinfo::NarInfo;
use crate::format::realisation::Realisation;
use crate::format::signing::{SigningKey, VerifyingKey};
use crate::layout::{content_type, kind_of, ObjectKind};
use crate::sink::inventory::Object;
use crate::sink::{Sink, SinkError};

/// Objects read and rewritten at once.
const CONCURRENCY: usize = 32;

/// What to do.
pub struct Options {
    /// Each object ends with one signature by each of these (replacing an older one by the same
    /// key name).
    pub keys: Vec<SigningKey>,
    /// Signatures under these key names are removed.
    pub remove: Vec<String>,
    /// Public keys whose signatures make an object ours, besides the public halves of `keys`.
    pub own_public_keys: Vec<VerifyingKey>,
    /// Objects last written longer ago than this are left alone.
    pub skip_older_than: Option<Duration>,
    /// Count what would be rewritten, write nothing.
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ResignError {
    #[error("nothing to do: give --key to add signatures or --remove-signature to remove them")]
    NothingToDo,
    #[error(
        "refusing to remove the signatures of {name}, the key resign signs with: the objects \
         would end with no signature of it"
    )]
    RemovingOwnKey { name: String },
    #[error(
        "the --key named {name} is not the key of own_public_keys with that name: Nix keeps one \
         key per name, so the new signature would replace the old one at once; give the new \
         key a new name (e.g. ending in -2)"
    )]
    KeyNameReused { name: String },
    #[error("{key} changed between each of {rounds} reads and its rewrite; run resign again")]
    KeptChanging { key: String, rounds: u32 },
    #[error("{key} was read more than {rounds} times but never rewritten within the bound of its read; the store answers too slowly; run resign again")]
    TooSlow { key: String, rounds: u32 },
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Objects of one kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Read and ours.
    pub examined: u64,
    /// Written with the new signatures (with `dry_run`: would be).
    pub rewritten: u64,
    /// Already signed as wanted.
    pub unchanged: u64,
    /// Older than `skip_older_than`.
    pub skipped_old: u64,
    /// No signature of ours verifies: left alone.
    pub not_ours: u64,
    /// Cannot be parsed: left alone.
    pub unreadable: u64,
    /// Deleted since the listing.
    pub gone: u64,
    /// Could not be rewritten (an error, or never within the bound of its read): run resign
    /// again.
    pub failed: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    pub narinfos: Counts,
    pub realisations: Counts,
    /// Key names of the signatures found on the objects read, with how many carried each.
    pub key_names: std::collections::BTreeMap<String, u64>,
    /// Realisations this run wrote back after a collection deleted their output's narinfo,
    /// deleted again.
    pub realisations_withdrawn: u64,
    /// The first errors, with their keys.
    pub errors: Vec<String>,
}

/// Errors kept for the report.
const MAX_ERRORS: usize = 10;

/// What became of one object.
enum Fate {
    /// Written; for a realisation, the key of its output's narinfo.
    Rewritten(Option<String>),
    Unchanged,
    NotOurs,
    Unreadable,
    Gone,
}

/// Resigns every narinfo and realisation of `sink`.
pub async fn resign(
    sink: &Sink,
    options: &Options,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Summary, ResignError> {
    if options.keys.is_empty() && options.remove.is_empty() {
        return Err(ResignError::NothingToDo);
    }
    if let Some(key) = options
        .keys
        .iter()
        .find(|k| options.remove.iter().any(|r| r == k.name()))
    {
        return Err(ResignError::RemovingOwnKey {
            name: key.name().to_owned(),
        });
    }
    if let Some(key) = options.keys.iter().find(|k| {
        options
            .own_public_keys
            .iter()
            .any(|own| own.name() == k.name() && *own != k.public_key())
    }) {
        return Err(ResignError::KeyNameReused {
            name: key.name().to_owned(),
        });
    }
    progress("listing the cache");
    let now = crate::clock::now();
    let mut summary = Summary {
        dry_run: options.dry_run,
        ..Summary::default()
    };
    let mut todo = Vec::new();
    for object in sink.list().await? {
        let counts = match kind_of(&object.key) {
            ObjectKind::NarInfo { .. } => &mut summary.narinfos,
            ObjectKind::Realisation => &mut summary.realisations,
            ObjectKind::CacheInfo
            | ObjectKind::Listing { .. }
            | ObjectKind::Nar
            | ObjectKind::Log { .. }
            | ObjectKind::Pin { .. }
            | ObjectKind::Other => continue,
        };
        if is_older(&object, now, options.skip_older_than) {
            counts.skipped_old += 1;
        } else {
            todo.push(object.key);
        }
    }
    let total = todo.len();
    let mut done = 0usize;
    let mut results = stream::iter(todo)
        .map(|key| async move {
            let fate = resign_one(sink, &key, options).await;
            (key, fate)
        })
        .buffer_unordered(CONCURRENCY);
    let mut written_realisations = Vec::new();
    while let Some((key, fate)) = results.next().await {
        let counts = if matches!(kind_of(&key), ObjectKind::NarInfo { .. }) {
            &mut summary.narinfos
        } else {
            &mut summary.realisations
        };
        done += 1;
        if done.is_multiple_of(100) {
            progress(&format!("{done} of {total} objects"));
        }
        let (fate, names) = match fate {
            Ok(resigned) => resigned,
            Err(error) => {
                counts.failed += 1;
                if summary.errors.len() < MAX_ERRORS {
                    summary.errors.push(format!("{key}: {error}"));
                }
                continue;
            }
        };
        for name in names {
            *summary.key_names.entry(name).or_default() += 1;
        }
        match fate {
            Fate::Rewritten(output) => {
                counts.examined += 1;
                counts.rewritten += 1;
                if let Some(output) = output.filter(|_| !options.dry_run) {
                    written_realisations.push((key, output));
                }
            }
            Fate::Unchanged => {
                counts.examined += 1;
                counts.unchanged += 1;
            }
            Fate::NotOurs => counts.not_ours += 1,
            Fate::Unreadable => counts.unreadable += 1,
            Fate::Gone => counts.gone += 1,
        }
    }
    summary.realisations_withdrawn = withdraw_orphans(sink, written_realisations).await?;
    Ok(summary)
}

fn is_older(object: &Object, now: SystemTime, limit: Option<Duration>) -> bool {
    limit.is_some_and(|limit| crate::clock::age(now, object.modified) > limit)
}

/// Reads `key` and rewrites it with the wanted signatures, within the bound of the read
/// (U2); reads it again when the read took too long. Returns its fate and the key names of
/// the signatures it carried.
async fn resign_one(
    sink: &Sink,
    key: &str,
    options: &Options,
) -> Result<(Fate, Vec<String>), ResignError> {
    let mut last_error = None;
    for _ in 0..REFRESH_ROUNDS {
        let check = Check::begin();
        let Some(fetched) = sink.read(key).await?.for_reader(Reader::Gc)? else {
            return Ok((Fate::Gone, Vec::new()));
        };
        let (body, output, names) = match resigned(key, &fetched.body, options) {
            Resigned::Body {
                body,
                output,
                names,
            } => (body, output, names),
            Resigned::Same(names) => return Ok((Fate::Unchanged, names)),
            Resigned::NotOurs(names) => return Ok((Fate::NotOurs, names)),
            Resigned::Unreadable => return Ok((Fate::Unreadable, Vec::new())),
        };
        if options.dry_run {
            return Ok((Fate::Rewritten(output), names));
        }
        // Another writer replaced it since the read (an uploader publishing the path anew):
        // read it again rather than write the older text back.
        let now = sink.head(key).await?.for_reader(Reader::Gc)?;
        if now.is_none_or(|head| {
            head.size != fetched.body.len() as u64
                || crate::clock::whole_seconds(head.modified)
                    != crate::clock::whole_seconds(fetched.modified)
        }) {
            continue;
        }
        let content_type = if output.is_some() {
            content_type::REALISATION
        } else {
            content_type::NARINFO
        };
        match sink.put_within(key, body, content_type, &check).await {
            Ok(()) => return Ok((Fate::Rewritten(output), names)),
            Err(error) => last_error = Some(error),
        }
    }
    Err(match last_error {
        Some(error) => ResignError::Sink(error),
        None => ResignError::KeptChanging {
            key: key.to_owned(),
            rounds: REFRESH_ROUNDS,
        },
    })
}

/// The outcome of resigning one object's bytes.
enum Resigned {
    /// The new body, the narinfo key of a realisation's output, the key names found.
    Body {
        body: Bytes,
        output: Option<String>,
        names: Vec<String>,
    },
    Same(Vec<String>),
    NotOurs(Vec<String>),
    Unreadable,
}

fn key_name(signature: &str) -> &str {
    signature
        .split_once(':')
        .map_or(signature, |(name, _)| name)
}

/// `body` (the object at `key`) with the signatures `options` want.
fn resigned(key: &str, body: &[u8], options: &Options) -> Resigned {
    let ours = |key_verifies: &dyn Fn(&VerifyingKey) -> bool| {
        options
            .keys
            .iter()
            .map(SigningKey::public_key)
            .chain(options.own_public_keys.iter().cloned())
            .any(|key| key_verifies(&key))
    };
    let wanted = |signatures: &mut Vec<String>| {
        signatures.retain(|sig| {
            let name = key_name(sig);
            !options.remove.iter().any(|r| r == name)
                && !options.keys.iter().any(|k| k.name() == name)
        });
    };
    let names = |signatures: &[String]| -> Vec<String> {
        let set: BTreeSet<&str> = signatures.iter().map(|s| key_name(s)).collect();
        set.into_iter().map(str::to_owned).collect()
    };
    match kind_of(key) {
        ObjectKind::NarInfo { .. } => {
            let Some(mut narinfo) = std::str::from_utf8(body)
                .ok()
                .and_then(|text| NarInfo::parse(text).ok())
            else {
                return Resigned::Unreadable;
            };
            let found = names(&narinfo.signatures);
            if !ours(&|key| narinfo.verify_signature(key)) {
                return Resigned::NotOurs(found);
            }
            let before: BTreeSet<String> = narinfo.signatures.iter().cloned().collect();
            wanted(&mut narinfo.signatures);
            for key in &options.keys {
                if narinfo.add_signature(key).is_err() {
                    return Resigned::Unreadable;
                }
            }
            let after: BTreeSet<String> = narinfo.signatures.iter().cloned().collect();
            if before == after {
                Resigned::Same(found)
            } else {
                Resigned::Body {
                    body: Bytes::from(narinfo.to_string()),
                    output: None,
                    names: found,
                }
            }
        }
        _ if key.starts_with(build_trace::PREFIX) => {
            let Ok(mut entry) = BuildTraceEntry::from_object(key, body) else {
                return Resigned::Unreadable;
            };
            let mut signatures: Vec<String> =
                entry.signatures.iter().map(Signature::to_text).collect();
            let found = names(&signatures);
            if !ours(&|key| entry.verify_signature(key)) {
                return Resigned::NotOurs(found);
            }
            let before = entry.signatures.clone();
            wanted(&mut signatures);
            entry.signatures = signatures
                .iter()
                .filter_map(|s| Signature::parse_text(s).ok())
                .collect();
            for key in &options.keys {
                entry.sign(key);
            }
            if before == entry.signatures {
                Resigned::Same(found)
            } else {
                Resigned::Body {
                    body: Bytes::from(entry.object_body()),
                    output: Some(crate::layout::narinfo_key(&entry.out_path)),
                    names: found,
                }
            }
        }
        _ => {
            let Ok(mut realisation) = Realisation::from_json(body) else {
                return Resigned::Unreadable;
            };
            let mut signatures: Vec<String> = realisation.signatures.iter().cloned().collect();
            let found = names(&signatures);
            if !ours(&|key| realisation.verify_signature(key)) {
                return Resigned::NotOurs(found);
            }
            let before = realisation.signatures.clone();
            wanted(&mut signatures);
            realisation.signatures = signatures.into_iter().collect();
            for key in &options.keys {
                realisation.sign(key);
            }
            if before == realisation.signatures {
                Resigned::Same(found)
            } else {
                Resigned::Body {
                    body: Bytes::from(realisation.to_json()),
                    output: Some(crate::layout::narinfo_key(&realisation.out_path)),
                    names: found,
                }
            }
        }
    }
}

/// Deletes again the realisations this run wrote whose output's narinfo is gone
/// [`REFRESH_SETTLE`] after the last of those writes: a collection deleted the realisation
/// (after the narinfo) between its read and its rewrite. Realisations are the last objects a
/// collection deletes, with no look after them that would see one written back, so the run
/// looks itself. Returns how many it deleted.
async fn withdraw_orphans(sink: &Sink, written: Vec<(String, String)>) -> Result<u64, ResignError> {
    if written.is_empty() {
        return Ok(0);
    }
    tokio::time::sleep(REFRESH_SETTLE).await;
    let mut withdrawn = 0;
    for (realisation, narinfo) in written {
        if sink.head(&narinfo).await?.for_reader(Reader::Gc)?.is_none() {
            sink.delete(&[realisation]).await?;
            withdrawn += 1;
        }
    }
    Ok(withdrawn)
}

#[cfg(test)]
#[path = "resign/tests.rs"]
mod tests;
