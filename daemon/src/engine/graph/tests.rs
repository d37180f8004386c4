//! The graph's rules, each driven by hand: what it asks for, in which order, and what it
//! reports.

use super::*;
use crate::format::hash::Sha256;
use crate::sink::{ErrorClass, SinkError};

fn path(name: &str) -> StorePath {
    // Distinct valid hash parts: the name's bytes fold into the alphabet.
    let alphabet = b"0123456789abcdfghijklmnpqrsvwxyz";
    let hash: String = (0..32)
        .map(|i| {
            let byte = name.as_bytes()[i % name.len()] as usize + i;
            alphabet[byte % 32] as char
        })
        .collect();
    StorePath::from_basename(&format!("{hash}-{name}")).unwrap()
}

fn info(name: &str, references: &[&str]) -> PathInfo {
    PathInfo {
        path: path(name),
        nar_hash: Sha256::digest(name),
        nar_size: 100,
        references: references.iter().map(|r| path(r)).collect(),
        deriver: None,
        ca: None,
        signatures: Vec::new(),
    }
}

fn narinfo(name: &str) -> Box<NarInfo> {
    let info = info(name, &[]);
    Box::new(NarInfo {
        store_path: info.path,
        url: format!("nar/{name}.nar.zst"),
        compression: "zstd".to_owned(),
        file_hash: Some(Sha256::digest(b"file")),
        file_size: Some(40),
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
        references: Vec::new(),
        deriver: None,
        system: None,
        signatures: Vec::new(),
        ca: None,
    })
}

fn nothing_cached(_: &StorePath) -> bool {
    false
}

/// The actions `pick` selects, as it maps them.
fn picked<T>(actions: &[Action], pick: impl Fn(&Action) -> Option<T>) -> Vec<T> {
    actions.iter().filter_map(pick).collect()
}

fn checks(actions: &[Action]) -> Vec<StorePath> {
    picked(actions, |a| match a {
        Action::Check(p) => Some(p.clone()),
        _ => None,
    })
}

fn stores(actions: &[Action]) -> Vec<StorePath> {
    picked(actions, |a| match a {
        Action::StoreNar(info) => Some(info.path.clone()),
        _ => None,
    })
}

fn publishes(actions: &[Action]) -> Vec<StorePath> {
    picked(actions, |a| match a {
        Action::Publish(p, _) => Some(p.clone()),
        _ => None,
    })
}

fn tops_done(actions: &[Action]) -> Vec<StorePath> {
    picked(actions, |a| match a {
        Action::Report(Report::TopDone(p)) => Some(p.clone()),
        _ => None,
    })
}

fn top_failures(actions: &[Action]) -> Vec<(StorePath, Failure)> {
    picked(actions, |a| match a {
        Action::Report(Report::TopFailed { top, failure }) => Some((top.clone(), failure.clone())),
        _ => None,
    })
}

/// Checks every path absent and stores every NAR; returns the graph and the publishes
/// requested so far.
fn absent_and_stored(graph: &mut Graph, names: &[&str]) -> Vec<StorePath> {
    let mut published = Vec::new();
    for name in names {
        let actions = graph.checked(&path(name), Ok(Lookup::Absent));
        assert_eq!(stores(&actions), vec![path(name)]);
    }
    for name in names {
        published.extend(publishes(&graph.stored(&path(name), Ok(narinfo(name)))));
    }
    published
}

#[test]
fn a_narinfo_is_published_only_after_its_references_are() {
    let mut graph = Graph::default();
    let actions = graph.add(
        vec![
            info("top", &["mid"]),
            info("mid", &["leaf"]),
            info("leaf", &[]),
        ],
        &[path("top")],
        nothing_cached,
    );
    assert_eq!(checks(&actions).len(), 3);
    // NARs are stored in any order; only the leaf may be published at once.
    assert_eq!(
        absent_and_stored(&mut graph, &["top", "mid", "leaf"]),
        vec![path("leaf")]
    );
    let after_leaf = graph.published(&path("leaf"), &narinfo("leaf"), Ok(()));
    assert_eq!(publishes(&after_leaf), vec![path("mid")]);
    assert!(tops_done(&after_leaf).is_empty());
    let after_mid = graph.published(&path("mid"), &narinfo("mid"), Ok(()));
    assert_eq!(publishes(&after_mid), vec![path("top")]);
    let after_top = graph.published(&path("top"), &narinfo("top"), Ok(()));
    assert_eq!(tops_done(&after_top), vec![path("top")]);
    assert!(graph.is_empty());
}

#[test]
fn a_reference_found_in_the_cache_unblocks_at_once_and_a_self_reference_never_blocks() {
    let mut graph = Graph::default();
    graph.add(
        vec![info("top", &["top", "dep"]), info("dep", &[])],
        &[path("top")],
        nothing_cached,
    );
    assert!(publishes(&graph.checked(&path("top"), Ok(Lookup::Absent))).is_empty());
    let present = graph.checked(&path("dep"), Ok(Lookup::Present));
    assert!(matches!(present[0], Action::Report(Report::Present(_))));
    let stored = graph.stored(&path("top"), Ok(narinfo("top")));
    assert_eq!(publishes(&stored), vec![path("top")]);
}

#[test]
fn paths_known_to_be_in_the_cache_are_neither_checked_nor_uploaded() {
    let mut graph = Graph::default();
    let cached = path("dep");
    let actions = graph.add(
        vec![info("top", &["dep"]), info("dep", &[])],
        &[path("top"), path("dep")],
        |p| *p == cached,
    );
    assert_eq!(checks(&actions), vec![path("top")]);
    assert_eq!(tops_done(&actions), vec![path("dep")]);
    graph.checked(&path("top"), Ok(Lookup::Absent));
    assert_eq!(
        publishes(&graph.stored(&path("top"), Ok(narinfo("top")))),
        vec![path("top")]
    );
}

#[test]
fn a_failure_spreads_upward_and_the_top_reports_the_bottom_of_the_chain() {
    let mut graph = Graph::default();
    graph.add(
        vec![
            info("top", &["mid"]),
            info("mid", &["leaf"]),
            info("leaf", &[]),
            info("side", &[]),
        ],
        &[path("top"), path("side")],
        nothing_cached,
    );
    absent_and_stored(&mut graph, &["top", "mid", "side"]);
    graph.checked(&path("leaf"), Ok(Lookup::Absent));
    let refused = SinkError {
        operation: "PUT",
        key: "nar/x".to_owned(),
        class: ErrorClass::Transient,
        detail: "HTTP 503 SlowDown".to_owned(),
        retry_after: Some(std::time::Duration::from_secs(7)),
    };
    let actions = graph.stored(&path("leaf"), Err(UploadError::Sink(refused)));
    let failures = top_failures(&actions);
    assert_eq!(failures.len(), 1);
    let (top, failure) = &failures[0];
    assert_eq!(*top, path("top"));
    assert!(
        failure.message.starts_with(&path("leaf").to_absolute()),
        "{}",
        failure.message
    );
    assert!(failure.message.contains("needed by"), "{}", failure.message);
    assert!(failure.message.contains("SlowDown"), "{}", failure.message);
    assert_eq!(failure.class, ErrorClass::Transient);
    assert_eq!(failure.retry_after, Some(std::time::Duration::from_secs(7)));
    assert!(
        publishes(&actions).is_empty(),
        "nothing above the failure is published"
    );
    // The unrelated path is untouched and still publishes.
    assert!(graph.contains(&path("side")));
    assert!(!graph.contains(&path("mid")));
}

#[test]
fn a_nar_stored_after_its_path_failed_is_kept_for_the_next_attempt() {
    let mut graph = Graph::default();
    graph.add(
        vec![info("top", &["dep"]), info("dep", &[])],
        &[path("top")],
        nothing_cached,
    );
    graph.checked(&path("top"), Ok(Lookup::Absent));
    graph.checked(&path("dep"), Ok(Lookup::Absent));
    let error = UploadError::Internal {
        path: path("dep").to_absolute(),
        detail: "broken".to_owned(),
    };
    graph.stored(&path("dep"), Err(error));
    let late = graph.stored(&path("top"), Ok(narinfo("top")));
    assert!(matches!(&late[..], [Action::KeepNar(p, _)] if *p == path("top")));
}

#[test]
fn an_external_reference_the_cache_lacks_fails_its_dependents() {
    let mut graph = Graph::default();
    // Without the closure: `dep` is referenced but not submitted.
    let actions = graph.add(vec![info("top", &["dep"])], &[path("top")], nothing_cached);
    assert_eq!(checks(&actions).len(), 2);
    graph.checked(&path("top"), Ok(Lookup::Absent));
    let actions = graph.checked(&path("dep"), Ok(Lookup::Absent));
    assert!(
        stores(&actions).is_empty(),
        "an external reference is never uploaded"
    );
    let failures = top_failures(&actions);
    assert!(
        failures[0]
            .1
            .message
            .contains("is neither in the cache nor upstream, and not part of this upload"),
        "{}",
        failures[0].1.message
    );
}

#[test]
fn an_external_reference_that_joins_a_closure_is_uploaded_instead() {
    let mut graph = Graph::default();
    graph.add(vec![info("top", &["dep"])], &[path("top")], nothing_cached);
    graph.add(vec![info("dep", &[])], &[path("dep")], nothing_cached);
    let actions = graph.checked(&path("dep"), Ok(Lookup::Absent));
    assert_eq!(stores(&actions), vec![path("dep")]);
}

#[test]
fn a_second_closure_sharing_a_path_in_flight_waits_for_it_instead_of_uploading_it_again() {
    let mut graph = Graph::default();
    graph.add(
        vec![info("a", &["shared"]), info("shared", &[])],
        &[path("a")],
        nothing_cached,
    );
    graph.checked(&path("shared"), Ok(Lookup::Absent));
    let second = graph.add(
        vec![info("b", &["shared"]), info("shared", &[])],
        &[path("b")],
        nothing_cached,
    );
    assert_eq!(checks(&second), vec![path("b")]);
    absent_and_stored(&mut graph, &["a", "b"]);
    graph.stored(&path("shared"), Ok(narinfo("shared")));
    let actions = graph.published(&path("shared"), &narinfo("shared"), Ok(()));
    let mut unblocked = publishes(&actions);
    unblocked.sort();
    let mut expected = vec![path("a"), path("b")];
    expected.sort();
    assert_eq!(unblocked, expected);
}

#[test]
fn stage_counts_follow_the_paths() {
    let mut graph = Graph::default();
    graph.add(
        vec![info("top", &["dep"]), info("dep", &[])],
        &[path("top")],
        nothing_cached,
    );
    assert_eq!(graph.stages().checking, 2);
    graph.checked(&path("top"), Ok(Lookup::Absent));
    graph.stored(&path("top"), Ok(narinfo("top")));
    graph.checked(&path("dep"), Ok(Lookup::Absent));
    let stages = graph.stages();
    assert_eq!((stages.storing, stages.waiting_for_references), (1, 1));
}

#[test]
fn a_reference_served_upstream_is_not_uploaded_and_unblocks_its_dependents() {
    let mut graph = Graph::default();
    graph.add(
        vec![info("top", &["dep"]), info("dep", &[])],
        &[path("top")],
        nothing_cached,
    );
    graph.checked(&path("top"), Ok(Lookup::Absent));
    let upstream = graph.checked(&path("dep"), Ok(Lookup::Upstream { nar_size: 7 }));
    // The store's NarSize wins over the upstream's word for a path of the closure.
    assert!(matches!(
        &upstream[..],
        [Action::Report(Report::Upstream { path: p, nar_size: 100 })] if *p == path("dep")
    ));
    let stored = graph.stored(&path("top"), Ok(narinfo("top")));
    assert_eq!(publishes(&stored), vec![path("top")]);
}

#[test]
fn an_external_reference_served_upstream_satisfies_a_no_closure_upload() {
    let mut graph = Graph::default();
    let actions = graph.add(vec![info("top", &["lib"])], &[path("top")], nothing_cached);
    assert_eq!(checks(&actions), vec![path("top"), path("lib")]);
    graph.checked(&path("top"), Ok(Lookup::Absent));
    let upstream = graph.checked(&path("lib"), Ok(Lookup::Upstream { nar_size: 7 }));
    assert!(matches!(
        &upstream[..],
        [Action::Report(Report::Upstream { nar_size: 7, .. })]
    ));
    let stored = graph.stored(&path("top"), Ok(narinfo("top")));
    assert_eq!(publishes(&stored), vec![path("top")]);
}

#[path = "skip_tests.rs"]
mod skips;
