//! Reading every listed narinfo (bounded concurrency): does it parse, is it the narinfo of the
//! path its key names, does one of its signatures verify with a trusted key; and which key
//! names sign the cache.
//!
//! Invariant: every listed narinfo ends in exactly one place: parsed (kept for the later
//! checks, even when no signature verifies: its NAR and references are checked all the same),
//! unparseable (a problem), or gone since the listing (in flight).

use std::collections::{HashMap, HashSet};

use futures::stream::{self, StreamExt};

use super::report::{Kind, Report};
use super::{get, is_young, Inventory, Options, VerifyError, READ_CONCURRENCY};
use crate::format::narinfo::NarInfo;
use crate::sink::Sink;

/// The narinfos read.
#[derive(Default)]
pub(super) struct Read {
    /// The narinfos that parse, by hash part.
    pub parsed: HashMap<String, NarInfo>,
    /// Every `URL` named by a narinfo here, parsed or not: their NARs are not orphans.
    pub named_nars: HashSet<String>,
}

pub(super) async fn read(
    sink: &Sink,
    inventory: &Inventory,
    options: &Options,
    report: &mut Report,
) -> Result<Read, VerifyError> {
    let mut hashes: Vec<&String> = inventory.narinfos.keys().collect();
    hashes.sort_unstable();
    let mut bodies = stream::iter(hashes)
        .map(|hash| async move {
            let key = &inventory.narinfos[hash].key;
            (hash, key, get(sink, key).await)
        })
        .buffer_unordered(READ_CONCURRENCY);
    let mut read = Read::default();
    while let Some((hash, key, body)) = bodies.next().await {
        let young = is_young(&inventory.narinfos[hash], options);
        let Some(body) = body? else {
            report
                .in_flight
                .add(key, "deleted since the listing".to_owned());
            continue;
        };
        let text = match std::str::from_utf8(&body) {
            Ok(text) => text,
            Err(e) => {
                let detail = format!("not UTF-8 text: {e}");
                report.problem(Kind::UnparseableNarinfos, young, key, detail);
                continue;
            }
        };
        if let Some(url) = text.lines().find_map(|l| l.strip_prefix("URL: ")) {
            read.named_nars.insert(url.to_owned());
        }
        let narinfo = match NarInfo::parse(text) {
            Ok(narinfo) => narinfo,
            Err(e) => {
                let detail = crate::error_chain(&e);
                report.problem(Kind::UnparseableNarinfos, young, key, detail);
                continue;
            }
        };
        if narinfo.store_path.hash_part() != hash.as_str() {
            let detail = format!("it is the narinfo of {}", narinfo.store_path.to_absolute());
            report.problem(Kind::UnparseableNarinfos, young, key, detail);
            continue;
        }
        check_signatures(&narinfo, key, young, options, report);
        read.parsed.insert(hash.clone(), narinfo);
    }
    Ok(read)
}

/// Counts the key names on `narinfo` and reports it if none of its signatures verifies.
fn check_signatures(
    narinfo: &NarInfo,
    key: &str,
    young: bool,
    options: &Options,
    report: &mut Report,
) {
    let mut names: Vec<&str> = narinfo
        .signatures
        .iter()
        .map(|sig| sig.split_once(':').map_or(sig.as_str(), |(name, _)| name))
        .collect();
    names.sort_unstable();
    names.dedup();
    for name in &names {
        *report.keys.seen.entry((*name).to_owned()).or_default() += 1;
    }
    if options
        .keys
        .iter()
        .any(|trusted| narinfo.verify_signature(trusted))
    {
        return;
    }
    let detail = if names.is_empty() {
        "it has no signature".to_owned()
    } else {
        format!(
            "signed by {}; none verifies with a trusted key",
            names.join(", ")
        )
    };
    report.problem(Kind::UnverifiedSignatures, young, key, detail);
}
