//! The NARs: each parsed narinfo's NAR must be listed, under this cache, of its `FileSize`;
//! with `--nar-hash` its bytes must give its FileHash, NarHash and NarSize. A listed NAR no
//! narinfo names is an orphan (counted with its bytes).
//!
//! Invariant: presence and sizes come from the listing alone (no request per NAR); a NAR named
//! by several narinfos (Nix names NARs by their FileHash) is streamed once.

use std::collections::{BTreeMap, HashSet};

use futures::stream::{self, StreamExt};

use super::nar_hash::{self, Outcome};
use super::narinfos::Read;
use super::report::{Kind, Report};
use super::{is_young, Inventory, Options, VerifyError, HASH_CONCURRENCY};
use crate::format::narinfo::NarInfo;
use crate::layout::is_nar_key;
use crate::sink::Sink;

/// (NAR key, compression) → the narinfos naming it that way: (narinfo key, narinfo, young).
type ToHash<'a> = BTreeMap<(&'a str, &'a str), Vec<(&'a str, &'a NarInfo, bool)>>;

/// Checks the NARs; returns the hash parts of the paths whose NAR is missing or damaged.
pub(super) async fn check(
    sink: &Sink,
    inventory: &Inventory,
    read: &Read,
    options: &Options,
    report: &mut Report,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<HashSet<String>, VerifyError> {
    let mut broken = HashSet::new();
    // (NAR key, compression) → the narinfos (key, young) whose size matched, for hashing: a
    // NAR two narinfos name with different compressions is decoded once for each.
    let mut to_hash: ToHash = BTreeMap::new();
    let mut hashes: Vec<&String> = read.parsed.keys().collect();
    hashes.sort_unstable();
    for hash in hashes {
        let narinfo = &read.parsed[hash];
        let key = &inventory.narinfos[hash].key;
        let young = is_young(&inventory.narinfos[hash], options);
        let url = &narinfo.url;
        let problem = if !is_nar_key(url) {
            Some((
                Kind::MissingNars,
                young,
                format!("its URL {url} is not a NAR of this cache"),
            ))
        } else if let Some(nar) = inventory.nars.get(url) {
            let expected = narinfo
                .file_size
                .or((narinfo.compression == "none").then_some(narinfo.nar_size));
            match expected {
                Some(size) if size != nar.size => Some((
                    Kind::NarSizeMismatches,
                    young || (!options.settled.contains(key) && is_young(nar, options)),
                    format!("its NAR {url} has {} bytes, FileSize says {size}", nar.size),
                )),
                _ => {
                    let compression = narinfo.compression.as_str();
                    to_hash
                        .entry((url.as_str(), compression))
                        .or_default()
                        .push((
                            key.as_str(),
                            narinfo,
                            young || (!options.settled.contains(key) && is_young(nar, options)),
                        ));
                    None
                }
            }
        } else {
            Some((
                Kind::MissingNars,
                young,
                format!("its NAR {url} is missing"),
            ))
        };
        if let Some((kind, young, detail)) = problem {
            broken.insert(hash.clone());
            report.problem(kind, young, key, detail);
        }
    }
    if options.nar_hash {
        progress(&format!("hashing {} NARs", to_hash.len()));
        hash_nars(sink, to_hash, report, &mut broken).await?;
    }
    orphans(inventory, read, options, report);
    Ok(broken)
}

/// Streams each NAR once and compares it with every narinfo naming it.
async fn hash_nars(
    sink: &Sink,
    to_hash: ToHash<'_>,
    report: &mut Report,
    broken: &mut HashSet<String>,
) -> Result<(), VerifyError> {
    let mut hashed = stream::iter(to_hash)
        .map(|((url, compression), namers)| async move {
            let max_nar_size = namers.iter().map(|(_, n, _)| n.nar_size).max();
            let outcome = nar_hash::hash(sink, url, compression, max_nar_size.unwrap_or(0)).await;
            (url, namers, outcome)
        })
        .buffer_unordered(HASH_CONCURRENCY);
    while let Some((url, namers, outcome)) = hashed.next().await {
        for (key, narinfo, young) in namers {
            let detail = match &outcome {
                Ok(Outcome::Hashed(found)) => mismatch(narinfo, found),
                Ok(Outcome::Gone) => {
                    report
                        .in_flight
                        .add(key, format!("its NAR {url} was deleted since the listing"));
                    None
                }
                Ok(Outcome::Undecodable(reason)) => Some(format!(
                    "its NAR {url} does not decompress as {}: {reason}",
                    narinfo.compression
                )),
                Err(_) => None,
            };
            if let Some(detail) = detail {
                broken.insert(narinfo.store_path.hash_part().to_owned());
                report.problem(Kind::NarHashMismatches, young, key, detail);
            }
        }
        outcome?;
    }
    Ok(())
}

/// What differs between `narinfo` and the NAR's bytes, if anything.
fn mismatch(narinfo: &NarInfo, found: &nar_hash::Hashed) -> Option<String> {
    let url = &narinfo.url;
    if narinfo.file_hash.is_some_and(|h| h != found.file_hash) {
        return Some(format!(
            "its NAR {url} hashes to FileHash {}, the narinfo says {}",
            found.file_hash,
            narinfo.file_hash.map(|h| h.to_string()).unwrap_or_default()
        ));
    }
    if narinfo.nar_hash != found.nar_hash || narinfo.nar_size != found.nar_size {
        return Some(format!(
            "its NAR {url} decompresses to NarHash {} ({} bytes), the narinfo says {} ({} bytes)",
            found.nar_hash, found.nar_size, narinfo.nar_hash, narinfo.nar_size
        ));
    }
    None
}

/// The NARs no narinfo names (in flight while young).
fn orphans(inventory: &Inventory, read: &Read, options: &Options, report: &mut Report) {
    let mut keys: Vec<&String> = inventory.nars.keys().collect();
    keys.sort_unstable();
    for key in keys {
        if read.named_nars.contains(key.as_str()) {
            continue;
        }
        let nar = &inventory.nars[key];
        let young = is_young(nar, options);
        if !young {
            report.orphan_nar_bytes += nar.size;
        }
        let detail = format!("{} bytes, named by no narinfo", nar.size);
        report.problem(Kind::OrphanNars, young, key, detail);
    }
}
