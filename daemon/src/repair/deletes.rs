//! `--delete-broken`: the deletes of a repair as a plan for GC's machinery
//! ([`crate::gc::carry_out`]), so that they follow the protocol's rules G4–G8 exactly as a
//! collection's do: doomed narinfos in layers, referrers first, each deleted only if a look
//! within the window shows it unchanged since the listing and no narinfo deleted before it
//! written back; then the NARs and listings that nothing left names.
//!
//! Invariant: an object goes only if it is older than the grace period (G3) and, when it is a
//! NAR or a listing, no narinfo that stays names it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use super::plan::Plan as Repairs;
use crate::gc::{layers::layers, Plan};
use crate::sink::inventory::Object;
use crate::verify::Scan;

/// The deletes of `repairs` (its doomed narinfos), and the NARs and listings no narinfo
/// that stays names, older than `grace` at `now`.
pub fn plan(
    scan: &Scan,
    repairs: &Repairs,
    pinned: &HashSet<String>,
    grace: Duration,
    now: SystemTime,
) -> Plan {
    let old = |o: &Object| crate::clock::age(now, o.modified) >= grace;
    let mut plan = Plan {
        pinned: pinned.clone(),
        ..Plan::default()
    };
    let doomed: Vec<(String, Object)> = repairs
        .doomed
        .iter()
        .filter_map(|hash| Some((hash.clone(), scan.narinfos.get(hash)?.clone())))
        .collect();
    let references: HashMap<String, Vec<String>> = doomed
        .iter()
        .filter_map(|(hash, _)| {
            let narinfo = scan.parsed.get(hash)?;
            let named = narinfo.references.iter().map(|r| r.hash_part().to_owned());
            Some((hash.clone(), named.collect()))
        })
        .collect();
    for (hash, named) in &references {
        for reference in named {
            if reference != hash && repairs.doomed.contains(reference) {
                plan.referred_by
                    .entry(format!("{reference}.narinfo"))
                    .or_default()
                    .push(format!("{hash}.narinfo"));
            }
        }
    }
    for layer in layers(doomed, &references) {
        plan.narinfo_layers.push(layer.len());
        plan.delete.extend(layer);
    }
    // The NARs named only by doomed narinfos (the URLs of unparseable narinfos are in
    // `named_nars` without their narinfo: such a NAR stays, for gc).
    let mut named_by: HashMap<&str, Vec<String>> = HashMap::new();
    for (hash, narinfo) in &scan.parsed {
        named_by
            .entry(narinfo.url.as_str())
            .or_default()
            .push(hash.clone());
    }
    let mut nars: Vec<&Object> = scan.nars.values().filter(|o| old(o)).collect();
    nars.sort_by(|a, b| a.key.cmp(&b.key));
    for nar in nars {
        let namers = named_by.get(nar.key.as_str());
        let unnamed = !scan.named_nars.contains(&nar.key);
        let only_doomed = namers.is_some_and(|n| n.iter().all(|h| repairs.doomed.contains(h)));
        if unnamed || only_doomed {
            let narinfos = namers.into_iter().flatten();
            plan.named_by.insert(
                nar.key.clone(),
                narinfos.map(|h| format!("{h}.narinfo")).collect(),
            );
            plan.delete.push(nar.clone());
        }
    }
    let mut listings: Vec<&(String, Object)> = scan.listings.iter().collect();
    listings.sort_by(|a, b| a.1.key.cmp(&b.1.key));
    for (hash, listing) in listings {
        let gone = !scan.narinfos.contains_key(hash) || repairs.doomed.contains(hash);
        if gone && old(listing) {
            plan.named_by
                .insert(listing.key.clone(), vec![format!("{hash}.narinfo")]);
            plan.delete.push(listing.clone());
        }
    }
    for object in &plan.delete {
        plan.summary.deleted.add(object);
        if let Some(tally) = plan.summary.deleted_by_kind.of(&object.key) {
            tally.add(object);
        }
    }
    plan
}
