//! References and pins: every reference of a narinfo here must have a narinfo here, or be
//! served by an upstream cache (asked only when some are given; else it is *unchecked*); every
//! pin must parse and stand for a closure that is whole here (each path's narinfo, and its
//! NAR, in this cache, but for references served upstream or unchecked, as `narpush pin`
//! requires).
//!
//! Invariant: a missing path is counted once however many narinfos refer to it; it is in
//! flight when every narinfo referring to it is young.

use std::collections::{BTreeMap, HashSet};

use futures::stream::{self, StreamExt};

use super::narinfos::Read;
use super::report::{Kind, PinReport, Report};
use super::{get, is_young, Inventory, Options, VerifyError, UPSTREAM_CONCURRENCY};
use crate::format::store_path::StorePath;
use crate::sink::Sink;

/// A path referred to but without a narinfo here.
struct Missing<'a> {
    path: &'a StorePath,
    /// The key of the first (in key order) narinfo referring to it.
    referrer: &'a str,
    /// Whether every referrer is younger than the grace period.
    young: bool,
}

/// Checks the references; returns the hash parts of the paths missing here that are no
/// problem (served upstream, or unchecked when no upstream cache is given).
pub(super) async fn check(
    inventory: &Inventory,
    read: &Read,
    options: &Options,
    report: &mut Report,
) -> Result<HashSet<String>, VerifyError> {
    let mut elsewhere = HashSet::new();
    let mut missing: BTreeMap<&str, Missing<'_>> = BTreeMap::new();
    let mut hashes: Vec<&String> = read.parsed.keys().collect();
    hashes.sort_unstable();
    for hash in hashes {
        let object = &inventory.narinfos[hash];
        let young = is_young(object, options);
        for reference in &read.parsed[hash].references {
            if inventory.narinfos.contains_key(reference.hash_part()) {
                continue;
            }
            missing
                .entry(reference.hash_part())
                .and_modify(|m| m.young &= young)
                .or_insert(Missing {
                    path: reference,
                    referrer: &object.key,
                    young,
                });
        }
    }
    let Some(upstream) = &options.upstream else {
        for m in missing.values() {
            elsewhere.insert(m.path.hash_part().to_owned());
            report
                .unchecked_paths
                .insert(m.path.hash_part().to_owned(), m.path.clone());
            report.unchecked_references.add(
                m.referrer,
                format!("{} has no narinfo here", m.path.to_absolute()),
            );
        }
        return Ok(elsewhere);
    };
    let mut asked = stream::iter(missing.into_values())
        .map(|m| async move { (upstream.serves(m.path).await, m) })
        .buffered(UPSTREAM_CONCURRENCY);
    while let Some((served, m)) = asked.next().await {
        let path = m.path.to_absolute();
        match served {
            Some(_) => {
                elsewhere.insert(m.path.hash_part().to_owned());
                report
                    .upstream_references
                    .add(m.referrer, format!("{path} is served upstream"));
            }
            None => {
                if !m.young {
                    report
                        .missing_paths
                        .insert(m.path.hash_part().to_owned(), m.path.clone());
                }
                report.problem(
                    Kind::MissingReferences,
                    m.young,
                    m.referrer,
                    format!("{path} has no narinfo here and no upstream cache serves it"),
                )
            }
        }
    }
    // A cache that did not answer made its "not served" answers guesses: the run could not
    // read what it needed (exit 2), rather than find problems that may not be there.
    let down = upstream.caches_down();
    if !down.is_empty() && report.problems.of(Kind::MissingReferences).count > 0 {
        return Err(VerifyError::UpstreamUnreachable {
            caches: down.join(", "),
        });
    }
    Ok(elsewhere)
}

/// Reads the pins and walks their closures; `broken` are the paths whose NAR is missing or
/// damaged.
pub(super) async fn check_pins(
    sink: &Sink,
    inventory: &Inventory,
    read: &Read,
    broken: &HashSet<String>,
    elsewhere: &HashSet<String>,
    options: &Options,
    report: &mut Report,
) -> Result<(), VerifyError> {
    let mut pins: Vec<&(String, crate::sink::inventory::Object)> = inventory.pins.iter().collect();
    pins.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, object) in pins {
        let young = is_young(object, options);
        if object.size > crate::pins::MAX_PIN_BYTES {
            report.pins.push(PinReport {
                name: name.clone(),
                path: None,
                whole: false,
            });
            let detail = format!(
                "{} bytes, more than a pin's {}: not read",
                object.size,
                crate::pins::MAX_PIN_BYTES
            );
            report.problem(Kind::BrokenPins, young, &object.key, detail);
            continue;
        }
        let Some(body) = get(sink, &object.key).await? else {
            report
                .in_flight
                .add(&object.key, "deleted since the listing".to_owned());
            continue;
        };
        let pin = match crate::pins::parse(name, &body) {
            Ok(pin) => pin,
            Err(e) => {
                report.pins.push(PinReport {
                    name: name.clone(),
                    path: None,
                    whole: false,
                });
                report.problem(Kind::BrokenPins, young, &object.key, e.to_string());
                continue;
            }
        };
        let gap = closure_gap(&pin.path, read, broken, elsewhere);
        report.pins.push(PinReport {
            name: name.clone(),
            path: Some(pin.path.to_absolute()),
            whole: gap.is_none(),
        });
        if let Some(gap) = gap {
            let detail = format!(
                "the closure of {} is not whole: {gap}",
                pin.path.to_absolute()
            );
            report.problem(Kind::BrokenPins, young, &object.key, detail);
        }
    }
    Ok(())
}

/// The first path of `top`'s closure without a readable narinfo or a sound NAR here; a
/// reference in `elsewhere` (served upstream, or unchecked) may be missing, as `narpush pin`
/// allows.
fn closure_gap(
    top: &StorePath,
    read: &Read,
    broken: &HashSet<String>,
    elsewhere: &HashSet<String>,
) -> Option<String> {
    let mut seen: HashSet<&str> = HashSet::from([top.hash_part()]);
    let mut pending = vec![top];
    while let Some(path) = pending.pop() {
        let Some(narinfo) = read.parsed.get(path.hash_part()) else {
            if path != top && elsewhere.contains(path.hash_part()) {
                continue;
            }
            return Some(format!("{} has no readable narinfo", path.to_absolute()));
        };
        if broken.contains(path.hash_part()) {
            return Some(format!(
                "{}'s NAR {} is missing or damaged",
                path.to_absolute(),
                narinfo.url
            ));
        }
        for reference in &narinfo.references {
            if seen.insert(reference.hash_part()) {
                pending.push(reference);
            }
        }
    }
    None
}
