//! Reading closures from the store for a batch of top paths, one `nix path-info` process per
//! batch, and telling a path that is gone (garbage-collected, deleted by hand) from a store
//! that cannot answer right now.
//!
//! Only the store's own word makes a path invalid: when `nix path-info` says `path '…' is not
//! valid` of a top path, that path is set aside and the rest asked again (Nix names one invalid
//! path per failure, so this takes one more process per gone path). Any other failure (no `nix`
//! on PATH, the nix-daemon restarting, "database is locked") fails the batch as transient.

use std::collections::{HashMap, HashSet};

use crate::filter::{PushFilter, SkipReason};
use crate::format::store_path::StorePath;
use crate::store::{self, PathInfo, StoreError};

/// What the store said about a batch of top paths.
#[derive(Debug, Default)]
pub struct Resolution {
    /// Every path of the closures of the valid tops (or only the tops, without closures).
    pub infos: Vec<PathInfo>,
    /// Tops the store no longer has, with its message.
    pub invalid: Vec<(StorePath, String)>,
    /// Paths the push filters exclude (filled by the engine, see [`exclusions`]).
    pub excluded: HashMap<StorePath, SkipReason>,
}

pub async fn resolve(tops: &[StorePath], closure: bool) -> Result<Resolution, StoreError> {
    #[cfg(feature = "sim")]
    if let Some(store) = store::simulated::installed() {
        let (infos, gone) = store.resolve(tops, closure);
        let invalid = gone
            .into_iter()
            .map(|p| (p, "the simulated store does not have it".to_owned()))
            .collect();
        return Ok(Resolution {
            infos,
            invalid,
            excluded: HashMap::new(),
        });
    }
    let mut remaining = tops.to_vec();
    let mut invalid = Vec::new();
    while !remaining.is_empty() {
        match store::query_path_infos(&remaining, closure).await {
            Ok(infos) => {
                return Ok(Resolution {
                    infos,
                    invalid,
                    excluded: HashMap::new(),
                })
            }
            Err(error) => {
                let Some(gone) = store::invalid_path_in(&error).filter(|p| remaining.contains(p))
                else {
                    return Err(error);
                };
                remaining.retain(|p| *p != gone);
                invalid.push((gone, "`nix path-info` says it is not valid".to_owned()));
            }
        }
    }
    Ok(Resolution {
        infos: Vec::new(),
        invalid,
        excluded: HashMap::new(),
    })
}

/// The paths the push filters exclude among `infos` and, without closures (`--no-closure`),
/// among the references of `infos` outside them: those are only looked up, and a referrer of
/// one that the cache lacks is skipped naming it and why, not failed (see `graph`). When the
/// store cannot describe those references, they are treated as not excluded (a warning says
/// so) and their referrers fail as usual if the cache lacks them.
pub async fn exclusions(
    filter: &PushFilter,
    infos: &[PathInfo],
    closure: bool,
) -> HashMap<StorePath, SkipReason> {
    if filter.is_off() {
        return HashMap::new();
    }
    let mut excluded = filter.excluded(infos).await;
    if closure {
        return excluded;
    }
    let named: HashSet<&StorePath> = infos.iter().map(|info| &info.path).collect();
    let outside: HashSet<&StorePath> = infos
        .iter()
        .flat_map(|info| &info.references)
        .filter(|reference| !named.contains(reference))
        .collect();
    if outside.is_empty() {
        return excluded;
    }
    let outside: Vec<StorePath> = outside.into_iter().cloned().collect();
    match store::query_path_infos(&outside, false).await {
        Ok(references) => excluded.extend(filter.excluded(&references).await),
        Err(e) => tracing::warn!(
            "cannot read the references of the paths uploaded without their closures ({e}): \
             the push filters are not applied to them"
        ),
    }
    excluded
}
