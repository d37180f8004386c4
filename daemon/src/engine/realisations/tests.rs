use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::engine::graph::Report;
use crate::format::hash::Sha256;

fn path(name: &str) -> StorePath {
    StorePath::from_basename(&format!("{}-{name}", "0".repeat(32))).unwrap()
}

fn id(n: u8) -> DrvOutputId {
    DrvOutputId {
        drv_hash: Sha256([n; 32]),
        output: "out".to_owned(),
    }
}

fn realisation(n: u8, out: &str, deps: &[(u8, &str)]) -> Realisation {
    Realisation {
        id: id(n),
        out_path: path(out),
        signatures: BTreeSet::new(),
        dependent_realisations: deps
            .iter()
            .map(|(d, p)| (id(*d), path(p)))
            .collect::<BTreeMap<_, _>>(),
        drv: None,
    }
}

fn ids(release: &Release) -> Vec<DrvOutputId> {
    release.ordered.iter().map(|r| r.id.clone()).collect()
}

#[test]
fn nothing_is_released_before_its_output_is_in_the_cache() {
    let mut held = Realisations::default();
    held.add(vec![realisation(1, "a", &[])]);
    assert!(held.release(|_| false, |_| false).is_none());
    let release = held.release(|p| p == &path("a"), |_| false).unwrap();
    assert_eq!(ids(&release), vec![id(1)]);
    assert!(release.external.is_empty());
}

#[test]
fn dependencies_are_written_before_their_dependents() {
    let mut held = Realisations::default();
    // Handed over dependent first: the order comes from the dependencies, not the input.
    held.add(vec![
        realisation(2, "b", &[(1, "a")]),
        realisation(1, "a", &[]),
    ]);
    let release = held.release(|_| true, |_| false).unwrap();
    assert_eq!(ids(&release), vec![id(1), id(2)]);
    assert!(release.external.is_empty());
}

#[test]
fn a_dependent_waits_for_a_dependency_whose_output_is_being_uploaded() {
    let mut held = Realisations::default();
    held.add(vec![
        realisation(2, "b", &[(1, "a")]),
        realisation(1, "a", &[]),
    ]);
    assert!(held
        .release(|p| p == &path("b"), |p| p == &path("a"))
        .is_none());
}

#[test]
fn a_dependency_whose_output_nobody_uploads_is_looked_up_not_waited_for() {
    let mut held = Realisations::default();
    held.add(vec![
        realisation(3, "c", &[(2, "b")]),
        realisation(2, "b", &[(1, "a")]),
        realisation(1, "a", &[]),
        // Not a dependency of anything in the cache: left alone.
        realisation(4, "d", &[]),
    ]);
    let release = held.release(|p| p == &path("c"), |_| false).unwrap();
    assert_eq!(ids(&release), vec![id(1), id(2), id(3)]);
    assert_eq!(release.outputs, vec![path("a"), path("b")]);
    assert!(held.hold(&path("d")), "d's realisation still waits for d");
}

#[test]
fn a_dependency_written_by_an_earlier_release_is_waited_for_then_not_checked_again() {
    let mut held = Realisations::default();
    held.add(vec![realisation(1, "a", &[])]);
    let first = held.release(|_| true, |_| false).unwrap();
    held.add(vec![realisation(2, "b", &[(1, "a")])]);
    assert!(
        held.release(|_| true, |_| false).is_none(),
        "a is still being written"
    );
    assert!(held.finished(&ids(&first), false).is_empty());
    let second = held.release(|_| true, |_| false).unwrap();
    assert_eq!(ids(&second), vec![id(2)]);
    assert!(second.external.is_empty(), "a was published by this engine");
}

#[test]
fn an_unknown_dependency_is_left_for_the_task_to_find_in_the_cache() {
    let mut held = Realisations::default();
    held.add(vec![realisation(2, "b", &[(1, "a")])]);
    let release = held.release(|_| true, |_| false).unwrap();
    assert_eq!(release.external, vec![id(1)]);
}

#[test]
fn a_done_path_is_held_until_its_realisations_are_published_or_failed() {
    let mut held = Realisations::default();
    held.add(vec![realisation(1, "a", &[]), realisation(2, "b", &[])]);
    assert!(held.hold(&path("a")));
    assert!(!held.hold(&path("c")), "no realisation: reported at once");
    let release = held.release(|p| p == &path("a"), |_| false).unwrap();
    assert_eq!(
        held.finished(&ids(&release), false),
        vec![(path("a"), false)]
    );

    assert!(held.hold(&path("b")));
    let release = held.release(|_| true, |_| false).unwrap();
    assert_eq!(held.finished(&ids(&release), true), vec![(path("b"), true)]);
    assert!(!held.hold(&path("b")), "a failed realisation is forgotten");
}

/// `count` realisations of distinct ids from `first` on, each of `out` (or of its own path,
/// `queued-<n>`, when `out` is `None`).
fn numbered(first: u32, count: usize, out: Option<&str>) -> Vec<Realisation> {
    (first..)
        .take(count)
        .map(|n| {
            let mut hash = [0xff; 32];
            hash[..4].copy_from_slice(&n.to_be_bytes());
            Realisation {
                id: DrvOutputId {
                    drv_hash: Sha256(hash),
                    output: "out".to_owned(),
                },
                out_path: path(out.unwrap_or(&format!("queued-{n}"))),
                signatures: BTreeSet::new(),
                dependent_realisations: BTreeMap::new(),
                drv: None,
            }
        })
        .collect()
}

fn refused_for_the_bound(reports: &[Report], top: &str) -> bool {
    reports.iter().any(|report| {
        matches!(report, Report::TopFailed { top: t, failure }
            if t == &path(top) && failure.message.contains(&MAX_PENDING.to_string()))
    })
}

#[test]
fn at_the_bound_the_realisations_of_paths_not_held_go_first() {
    let mut held = Realisations::default();
    let refused = held.submitted(
        &[path("t")],
        vec![
            realisation(1, "t", &[(2, "dep")]),
            realisation(2, "dep", &[]),
        ],
    );
    assert!(refused.is_empty());
    assert!(held.add(numbered(0, MAX_PENDING + 1, None)).is_empty());
    assert!(held.pending.len() <= MAX_PENDING);
    assert!(held.pending.contains_key(&id(1)) && held.pending.contains_key(&id(2)));
    assert!(
        held.settle(Report::TopDone(path("t"))).is_empty(),
        "t is held"
    );
    let release = held.release(|_| true, |_| false).unwrap();
    assert_eq!(ids(&release), vec![id(2), id(1)]);
}

#[test]
fn realisations_submitted_with_their_top_push_out_those_of_paths_not_held() {
    let mut held = Realisations::default();
    assert!(held.add(numbered(0, MAX_PENDING, None)).is_empty());
    assert!(held
        .submitted(&[path("t")], vec![realisation(1, "t", &[])])
        .is_empty());
    assert_eq!(held.pending.len(), 1);
    assert!(
        held.settle(Report::TopDone(path("t"))).is_empty(),
        "t is held"
    );
}

#[test]
fn a_top_in_flight_whose_realisations_do_not_fit_fails_naming_the_bound_when_it_ends() {
    let mut held = Realisations::default();
    assert!(held
        .submitted(&[path("a")], vec![realisation(1, "a", &[])])
        .is_empty());
    // `big` brings more realisations than the bound leaves room for.
    assert!(held
        .submitted(&[path("big")], numbered(0, MAX_PENDING, Some("big")))
        .is_empty());
    assert!(held.pending.len() <= MAX_PENDING);
    let reports = held.settle(Report::TopDone(path("big")));
    assert!(refused_for_the_bound(&reports, "big"), "{reports:?}");
    assert!(!reports.iter().any(|r| matches!(r, Report::TopDone(_))));
    assert!(
        held.settle(Report::TopDone(path("a"))).is_empty(),
        "a is held"
    );
}

#[test]
fn a_held_top_whose_realisations_do_not_fit_fails_naming_the_bound_at_once() {
    let mut held = Realisations::default();
    assert!(held
        .submitted(&[path("h")], vec![realisation(1, "h", &[])])
        .is_empty());
    assert!(
        held.settle(Report::TopDone(path("h"))).is_empty(),
        "h is held"
    );
    // A request adds realisations of `h` while it waits, more than fit.
    let reports = held.add(numbered(0, MAX_PENDING, Some("h")));
    assert!(refused_for_the_bound(&reports, "h"), "{reports:?}");
    assert!(held.pending.len() <= MAX_PENDING);
    assert!(held.held.is_empty());
}

#[test]
fn a_realisation_handed_over_again_without_its_derivation_keeps_it() {
    let mut realisations = Realisations::default();
    let mut known = realisation(1, "a", &[]);
    known.drv = Some(path("a.drv"));
    realisations.add(vec![known]);
    realisations.add(vec![realisation(1, "a", &[])]);
    let release = realisations.release(|_| true, |_| false).unwrap();
    assert_eq!(release.ordered[0].drv, Some(path("a.drv")));
}

#[tokio::test]
async fn publishing_writes_the_build_trace_entry_signed_beside_the_realisation() {
    use crate::engine::compress::Compression;
    use crate::engine::stream::StreamSettings;
    use crate::format::build_trace::BuildTraceEntry;
    use crate::format::signing::SigningKey;
    use crate::sink::{Sink, TargetUrl};
    use std::sync::Arc;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let url = TargetUrl::parse(&format!("file://{}", dir.path().display())).unwrap();
    let sink = Sink::open(&url, Duration::from_secs(60)).await.unwrap();
    let key = SigningKey::generate("ours-1").unwrap();
    let config = EngineConfig::new(
        Arc::new(sink),
        url.to_string(),
        Arc::new(vec![key.clone()]),
        StreamSettings::new(Compression::None, 0),
        1,
        4,
        false,
    );
    let mut resolved = realisation(1, "a", &[]);
    resolved.drv = Some(path("a.drv"));
    let unresolved = realisation(2, "b", &[]);
    let release = Release {
        ordered: vec![resolved, unresolved],
        external: Vec::new(),
        outputs: Vec::new(),
    };
    let done = publish(&config, release).await;
    match done {
        Done::RealisationsPublished(_, result) => result.unwrap(),
        _ => panic!("not a publishing result"),
    }
    let object_key = format!("build-trace-v2/{}/out.doi", path("a.drv").basename());
    let body = std::fs::read(dir.path().join(&object_key)).unwrap();
    let entry = BuildTraceEntry::from_object(&object_key, &body).unwrap();
    assert_eq!(entry.out_path, path("a"));
    assert!(entry.verify_signature(&key.public_key()));
    assert_eq!(String::from_utf8(body).unwrap(), entry.object_body());
    assert!(dir.path().join(layout::realisation_key(&id(1))).exists());
    // Without its resolved derivation, only the Nix 2.8 realisation is written.
    assert!(dir.path().join(layout::realisation_key(&id(2))).exists());
    let entries: Vec<_> = walk(&dir.path().join("build-trace-v2"));
    assert_eq!(entries, [dir.path().join(&object_key)]);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}
