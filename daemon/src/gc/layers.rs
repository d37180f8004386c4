//! The order in which narinfos are deleted: a narinfo only after every narinfo that references
//! it, so that no narinfo in the cache ever names a reference that is gone, even for the moment
//! between two deletions.

use std::collections::{HashMap, HashSet};

use crate::sink::inventory::Object;

/// Splits `narinfos` (by hash part) into layers: the first holds those no other of them
/// references, each next one those referenced only from earlier layers. `references` maps a
/// hash part to the hash parts its narinfo names; a narinfo missing from it names none.
pub fn layers(
    narinfos: Vec<(String, Object)>,
    references: &HashMap<String, Vec<String>>,
) -> Vec<Vec<Object>> {
    let candidates: HashSet<&str> = narinfos.iter().map(|(h, _)| h.as_str()).collect();
    // How many candidates still reference each candidate.
    let mut referrers: HashMap<String, usize> = HashMap::new();
    for (hash, _) in &narinfos {
        for reference in references.get(hash).into_iter().flatten() {
            if reference != hash && candidates.contains(reference.as_str()) {
                *referrers.entry(reference.clone()).or_default() += 1;
            }
        }
    }
    let mut remaining = narinfos;
    let mut layers = Vec::new();
    while !remaining.is_empty() {
        let (layer, rest): (Vec<_>, Vec<_>) = remaining
            .into_iter()
            .partition(|(hash, _)| referrers.get(hash).copied().unwrap_or(0) == 0);
        if layer.is_empty() {
            // References between distinct store paths cannot form a cycle; narinfos that claim
            // one are deleted together.
            layers.push(rest.into_iter().map(|(_, o)| o).collect());
            break;
        }
        for (hash, _) in &layer {
            for reference in references.get(hash).into_iter().flatten() {
                if reference != hash {
                    if let Some(count) = referrers.get_mut(reference) {
                        *count = count.saturating_sub(1);
                    }
                }
            }
        }
        layers.push(layer.into_iter().map(|(_, o)| o).collect());
        remaining = rest;
    }
    layers
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn object(hash: &str) -> (String, Object) {
        (
            hash.to_owned(),
            Object {
                key: format!("{hash}.narinfo"),
                size: 1,
                modified: SystemTime::UNIX_EPOCH,
            },
        )
    }

    #[test]
    fn referrers_go_before_what_they_reference() {
        // top → mid → leaf, top → leaf, other alone; "kept" is not a candidate.
        let references: HashMap<String, Vec<String>> = [
            ("top", vec!["mid", "leaf", "top", "kept"]),
            ("mid", vec!["leaf"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
        .collect();
        let layers = layers(
            vec![
                object("leaf"),
                object("mid"),
                object("other"),
                object("top"),
            ],
            &references,
        );
        let keys: Vec<Vec<&str>> = layers
            .iter()
            .map(|l| {
                l.iter()
                    .map(|o| o.key.trim_end_matches(".narinfo"))
                    .collect()
            })
            .collect();
        assert_eq!(keys, vec![vec!["other", "top"], vec!["mid"], vec!["leaf"]]);
    }
}
