//! The repair plan on hand-made scans: what is uploaded, what cannot be made whole, and what
//! is deleted (closed under referrers, sparing pins and what is in flight).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime};

use super::plan::{paths_to_ask, plan};
use crate::format::hash::Sha256;
use crate::format::narinfo::NarInfo;
use crate::format::store_path::StorePath;
use crate::sink::inventory::Object;
use crate::store::PathInfo;
use crate::verify::report::{Kind, Report};
use crate::verify::Scan;

const HOUR: Duration = Duration::from_secs(3600);

fn path(letter: char, name: &str) -> StorePath {
    StorePath::from_absolute_path(&format!(
        "/nix/store/{}-{name}",
        letter.to_string().repeat(32)
    ))
    .unwrap()
}

fn nar_hash(seed: &str) -> Sha256 {
    Sha256::digest(seed)
}

/// A scan of narinfos (path, references), all a day old, with `damaged` problems.
fn scan(narinfos: &[(&StorePath, &[&StorePath])], damaged: &[(&StorePath, Kind)]) -> Scan {
    let mut report = Report::default();
    for (path, kind) in damaged {
        report.problem(
            *kind,
            false,
            &format!("{}.narinfo", path.hash_part()),
            String::new(),
        );
    }
    let now = SystemTime::now();
    let mut scan = Scan {
        report,
        narinfos: HashMap::new(),
        nars: HashMap::new(),
        listings: Vec::new(),
        parsed: HashMap::new(),
        named_nars: Default::default(),
    };
    for (path, references) in narinfos {
        let hash = path.hash_part().to_owned();
        let text = format!(
            "StorePath: {}\nURL: nar/{hash}.nar\nCompression: none\nNarHash: {}\nNarSize: 1\nReferences: {}\n",
            path.to_absolute(),
            nar_hash(&hash),
            references
                .iter()
                .map(|r| r.basename())
                .collect::<Vec<_>>()
                .join(" ")
        );
        scan.parsed
            .insert(hash.clone(), NarInfo::parse(&text).unwrap());
        scan.narinfos.insert(
            hash.clone(),
            Object {
                key: format!("{hash}.narinfo"),
                size: text.len() as u64,
                modified: now - 24 * HOUR,
            },
        );
    }
    scan
}

/// The local store holding `paths`, each with the NarHash the scan's narinfos state.
fn local(paths: &[&StorePath]) -> HashMap<String, PathInfo> {
    paths
        .iter()
        .map(|p| {
            let info = PathInfo {
                path: (*p).clone(),
                nar_hash: nar_hash(p.hash_part()),
                nar_size: 1,
                references: Vec::new(),
                deriver: None,
                ca: None,
                signatures: Vec::new(),
            };
            (p.hash_part().to_owned(), info)
        })
        .collect()
}

fn hashes(paths: &[&StorePath]) -> BTreeSet<String> {
    paths.iter().map(|p| p.hash_part().to_owned()).collect()
}

#[test]
fn what_the_local_store_holds_is_uploaded_forced_and_the_rest_doomed_with_its_referrers() {
    let (base, lib, tool, app, other) = (
        path('a', "base"),
        path('b', "lib"),
        path('c', "tool"),
        path('d', "app"),
        path('f', "other"),
    );
    let scan = scan(
        &[
            (&base, &[]),
            (&lib, &[&base]),
            (&tool, &[]),
            (&app, &[&lib, &tool, &app]),
            (&other, &[]),
        ],
        &[
            (&lib, Kind::NarSizeMismatches),
            (&tool, Kind::MissingNars),
            (&other, Kind::UnverifiedSignatures),
        ],
    );
    assert_eq!(
        paths_to_ask(&scan),
        vec![lib.clone(), tool.clone(), other.clone()]
    );
    let plan = plan(
        &scan,
        &local(&[&lib, &other, &base]),
        &[],
        HOUR,
        SystemTime::now(),
    );
    assert_eq!(
        plan.upload.keys().cloned().collect::<BTreeSet<_>>(),
        hashes(&[&lib, &other])
    );
    assert_eq!(plan.forced.len(), 2);
    // tool is not in the local store: tool and app, which refers to it, cannot be whole.
    assert_eq!(plan.doomed, hashes(&[&tool, &app]));
    assert!(plan.unfixable[&format!("{}.narinfo", tool.hash_part())]
        .contains("not valid in the local store"));
}

#[test]
fn another_nar_hash_locally_is_not_uploaded_over_the_narinfo() {
    let lib = path('b', "lib");
    let scan = scan(&[(&lib, &[])], &[(&lib, Kind::MissingNars)]);
    let mut local = local(&[&lib]);
    local.get_mut(lib.hash_part()).unwrap().nar_hash = nar_hash("other bytes");
    let plan = plan(&scan, &local, &[], HOUR, SystemTime::now());
    assert!(plan.upload.is_empty());
    assert_eq!(plan.doomed, hashes(&[&lib]));
    assert!(plan.unfixable[&format!("{}.narinfo", lib.hash_part())].contains("NarHash"));
}

#[test]
fn a_missing_reference_is_uploaded_when_valid_else_its_referrers_are_doomed() {
    let (gone, kept_gone, lib, app, other) = (
        path('a', "gone"),
        path('g', "gone-for-good"),
        path('b', "lib"),
        path('d', "app"),
        path('f', "other"),
    );
    let mut scan = scan(
        &[(&lib, &[&gone]), (&app, &[&lib]), (&other, &[&kept_gone])],
        &[],
    );
    scan.report
        .missing_paths
        .insert(gone.hash_part().to_owned(), gone.clone());
    scan.report
        .missing_paths
        .insert(kept_gone.hash_part().to_owned(), kept_gone.clone());
    let plan = plan(&scan, &local(&[&gone]), &[], HOUR, SystemTime::now());
    assert_eq!(
        plan.upload.keys().cloned().collect::<BTreeSet<_>>(),
        hashes(&[&gone])
    );
    assert!(plan.forced.contains(&gone));
    assert_eq!(plan.doomed, hashes(&[&other]));
}

#[test]
fn pins_and_narinfos_in_flight_spare_their_closures() {
    let (tool, app, top, pinned) = (
        path('c', "tool"),
        path('d', "app"),
        path('h', "top"),
        path('i', "pinned"),
    );
    let mut scan = scan(
        &[
            (&tool, &[]),
            (&app, &[&tool]),
            (&top, &[&app]),
            (&pinned, &[&tool]),
        ],
        &[(&tool, Kind::MissingNars)],
    );
    let now = SystemTime::now();
    let plan_at = |scan: &Scan, pins: &[StorePath]| plan(scan, &local(&[]), pins, HOUR, now);
    let all = plan_at(&scan, &[]);
    assert_eq!(all.doomed, hashes(&[&tool, &app, &top, &pinned]));
    // A pin on `pinned` keeps it and tool; app and top, which refer to tool, still go.
    let spared = plan_at(&scan, std::slice::from_ref(&pinned));
    assert_eq!(spared.doomed, hashes(&[&app, &top]));
    assert_eq!(spared.spared.len(), 2);
    // top written a minute ago: it, app and tool stay; pinned (which only refers) goes.
    scan.narinfos.get_mut(top.hash_part()).unwrap().modified = now - Duration::from_secs(60);
    let young = plan_at(&scan, &[]);
    assert_eq!(young.doomed, hashes(&[&pinned]));
}

#[test]
fn a_narinfo_signed_only_by_an_untrusted_key_is_never_deleted() {
    // Another writer's closure (signed by a key this run was not told to trust), absent from
    // the local store: it may be whole for that writer's clients, so nothing of it is doomed;
    // a narinfo with a broken NAR as well is another matter.
    let (theirs, their_app, broken) = (
        path('a', "theirs"),
        path('b', "their-app"),
        path('c', "broken"),
    );
    let scan = scan(
        &[(&theirs, &[]), (&their_app, &[&theirs]), (&broken, &[])],
        &[
            (&theirs, Kind::UnverifiedSignatures),
            (&their_app, Kind::UnverifiedSignatures),
            (&broken, Kind::UnverifiedSignatures),
            (&broken, Kind::MissingNars),
        ],
    );
    let plan = plan(&scan, &local(&[]), &[], HOUR, SystemTime::now());
    assert_eq!(plan.doomed, hashes(&[&broken]));
    assert!(plan.upload.is_empty());
    let why = &plan.unfixable[&format!("{}.narinfo", theirs.hash_part())];
    assert!(why.contains("--trusted-key"), "{why}");
    assert!(plan
        .unfixable
        .contains_key(&format!("{}.narinfo", their_app.hash_part())));
}

/// Under the simulation (feature `sim`), the local store repair asks is the simulated one,
/// as the engine's: what it holds is valid, with its metadata; what it lacks is not.
#[cfg(feature = "sim")]
#[tokio::test]
async fn the_local_store_is_the_simulated_one_when_one_is_installed() {
    use crate::store::simulated::{install, SimStore};
    let held = path('a', "held");
    let lacked = path('b', "lacked");
    let store = std::sync::Arc::new(SimStore::default());
    let info = PathInfo {
        path: held.clone(),
        nar_hash: nar_hash("held"),
        nar_size: 1,
        references: Vec::new(),
        deriver: None,
        ca: None,
        signatures: Vec::new(),
    };
    store.add(info.clone(), bytes::Bytes::from_static(b"x"));
    install(Some(store));
    let valid = super::valid_in_local_store(&[held.clone(), lacked]).await;
    install(None);
    let valid = valid.unwrap();
    assert_eq!(valid.len(), 1);
    assert_eq!(valid[held.hash_part()].nar_hash, info.nar_hash);
}
