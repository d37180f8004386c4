//! What belongs to a path: its `.ls` listing (by hash part), its deriver's build log (a
//! narinfo's `Deriver`) and the realisations whose output it is. Each must have its path's
//! narinfo here; one without is left over (a problem unless young).
//!
//! Invariant: listings and logs are judged from the listing and the narinfos already read;
//! only realisations are read (their output is in their JSON).

use std::collections::HashSet;

use futures::stream::{self, StreamExt};

use super::narinfos::Read;
use super::report::{Kind, Report};
use super::{get, is_young, too_big, Inventory, Options, VerifyError, READ_CONCURRENCY};
use crate::format::build_trace::{self, BuildTraceEntry};
use crate::format::realisation::Realisation;
use crate::sink::Sink;

pub(super) async fn check(
    sink: &Sink,
    inventory: &Inventory,
    read: &Read,
    options: &Options,
    report: &mut Report,
) -> Result<(), VerifyError> {
    for (hash, object) in &inventory.listings {
        if !inventory.narinfos.contains_key(hash) {
            report.problem(
                Kind::ListingsWithoutPath,
                is_young(object, options),
                &object.key,
                format!("no {hash}.narinfo here"),
            );
        }
    }
    let derivers: HashSet<&str> = read
        .parsed
        .values()
        .filter_map(|narinfo| narinfo.deriver.as_deref())
        .collect();
    for (drv, object) in &inventory.logs {
        if !derivers.contains(drv.as_str()) {
            report.problem(
                Kind::LogsWithoutPath,
                is_young(object, options),
                &object.key,
                format!("no narinfo here names {drv} as its Deriver"),
            );
        }
    }
    let mut readable = Vec::new();
    for object in &inventory.realisations {
        match too_big(object) {
            Some(detail) => report.problem(
                Kind::RealisationsWithoutPath,
                is_young(object, options),
                &object.key,
                detail,
            ),
            None => readable.push(object),
        }
    }
    let mut bodies = stream::iter(readable)
        .map(|object| async move { (object, get(sink, &object.key).await) })
        .buffered(READ_CONCURRENCY);
    while let Some((object, body)) = bodies.next().await {
        let young = is_young(object, options);
        let Some(body) = body? else {
            report
                .in_flight
                .add(&object.key, "deleted since the listing".to_owned());
            continue;
        };
        // Either form: Nix 2.8's `realisations/`, or Nix 2.35's build trace entry.
        let output = if object.key.starts_with(build_trace::PREFIX) {
            BuildTraceEntry::from_object(&object.key, &body)
                .map(|entry| entry.out_path)
                .map_err(|e| crate::error_chain(&e))
        } else {
            Realisation::from_json(&body)
                .map(|realisation| realisation.out_path)
                .map_err(|e| crate::error_chain(&e))
        };
        let detail = match output {
            Ok(out) => {
                if inventory.narinfos.contains_key(out.hash_part()) {
                    continue;
                }
                format!("its output {} has no narinfo here", out.to_absolute())
            }
            Err(reason) => format!("it cannot be read: {reason}"),
        };
        report.problem(Kind::RealisationsWithoutPath, young, &object.key, detail);
    }
    Ok(())
}
