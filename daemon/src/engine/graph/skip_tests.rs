//! The push filters' rules in the graph: an excluded path is looked up, never stored; found
//! in the cache or upstream it serves its referrers, absent it is skipped with its referrers.

use super::*;
use crate::filter::SkipReason;

fn doc_excluded() -> HashMap<StorePath, SkipReason> {
    [(
        path("doc"),
        SkipReason::ExcludedOutput {
            output: "doc".to_owned(),
        },
    )]
    .into_iter()
    .collect()
}

fn skipped(actions: &[Action]) -> Vec<(StorePath, SkipReason)> {
    picked(actions, |a| match a {
        Action::Report(Report::Skipped { path, reason }) => Some((path.clone(), reason.clone())),
        _ => None,
    })
}

fn tops_skipped(actions: &[Action]) -> Vec<StorePath> {
    picked(actions, |a| match a {
        Action::Report(Report::TopSkipped { top, .. }) => Some(top.clone()),
        _ => None,
    })
}

/// out ← doc ← viewer ← bundle, and `other` beside them; all submitted, as the hook does.
fn closure() -> (Graph, Vec<Action>) {
    let mut graph = Graph::default();
    let names = ["out", "doc", "viewer", "bundle", "other"];
    let actions = graph.add_filtered(
        vec![
            info("out", &[]),
            info("doc", &["out"]),
            info("viewer", &["doc"]),
            info("bundle", &["viewer", "out"]),
            info("other", &["out"]),
        ],
        &names.map(path),
        nothing_cached,
        &doc_excluded(),
    );
    (graph, actions)
}

#[test]
fn an_excluded_path_the_cache_lacks_is_never_stored_and_its_referrers_are_skipped() {
    let (mut graph, actions) = closure();
    assert_eq!(
        checks(&actions).len(),
        5,
        "an excluded path is looked up too"
    );
    let absent = graph.checked(&path("doc"), Ok(Lookup::Absent));
    assert!(
        stores(&absent).is_empty(),
        "never uploaded, even when submitted"
    );
    let skipped = skipped(&absent);
    let names: Vec<StorePath> = skipped.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(names, vec![path("doc"), path("viewer"), path("bundle")]);
    assert_eq!(skipped[0].1.kind(), "excluded_output");
    for (_, reason) in &skipped[1..] {
        assert!(
            matches!(reason, SkipReason::NeedsSkipped { reference, because }
                if *reference == path("doc") && because.kind() == "excluded_output"),
            "{reason:?}"
        );
    }
    assert_eq!(
        tops_skipped(&absent),
        vec![path("doc"), path("viewer"), path("bundle")]
    );
    assert!(top_failures(&absent).is_empty(), "skipped is not failed");
    // The rest is uploaded as usual; a late lookup of a skipped path asks for nothing.
    assert!(graph
        .checked(&path("viewer"), Ok(Lookup::Absent))
        .is_empty());
    assert_eq!(
        absent_and_stored(&mut graph, &["out", "other"]),
        vec![path("out")]
    );
    let out = graph.published(&path("out"), &narinfo("out"), Ok(()));
    assert_eq!(publishes(&out), vec![path("other")]);
    let other = graph.published(&path("other"), &narinfo("other"), Ok(()));
    assert_eq!(tops_done(&other), vec![path("other")]);
    assert!(graph.is_empty());
}

#[test]
fn an_excluded_path_found_in_the_cache_or_upstream_serves_its_referrers() {
    for found in [Lookup::Present, Lookup::Upstream { nar_size: 100 }] {
        let (mut graph, _) = closure();
        let actions = graph.checked(&path("doc"), Ok(found));
        assert!(skipped(&actions).is_empty(), "{found:?}");
        assert_eq!(tops_done(&actions), vec![path("doc")]);
        let published = absent_and_stored(&mut graph, &["out", "viewer"]);
        assert!(published.contains(&path("viewer")), "{found:?}");
    }
}

#[test]
fn an_excluded_path_is_not_skipped_while_an_upstream_that_may_serve_it_did_not_answer() {
    // Found by the simulation with push filters: an upstream outage made the engine skip,
    // for good, an excluded path the upstream serves, and its referrers with it.
    let (mut graph, _) = closure();
    let unanswered = graph.checked(&path("doc"), Ok(Lookup::Unanswered));
    assert!(skipped(&unanswered).is_empty(), "not skipped on no answer");
    assert!(stores(&unanswered).is_empty(), "and never uploaded");
    let failed = top_failures(&unanswered);
    assert_eq!(failed.len(), 3, "doc and its referrers fail: {failed:?}");
    assert!(failed
        .iter()
        .all(|(_, failure)| failure.class == crate::sink::ErrorClass::Transient));
    // A path the filters let through is uploaded as if absent.
    let out = graph.checked(&path("out"), Ok(Lookup::Unanswered));
    assert_eq!(stores(&out), vec![path("out")]);
}

#[test]
fn a_referrer_stored_before_its_reference_was_skipped_hands_its_nar_back_unpublished() {
    let (mut graph, _) = closure();
    graph.checked(&path("viewer"), Ok(Lookup::Absent));
    graph.checked(&path("doc"), Ok(Lookup::Absent));
    let late = graph.stored(&path("viewer"), Ok(narinfo("viewer")));
    assert!(matches!(&late[..], [Action::KeepNar(p, _)] if *p == path("viewer")));
}

#[test]
fn a_skipped_path_counts_for_no_stage() {
    let (mut graph, _) = closure();
    graph.checked(&path("doc"), Ok(Lookup::Absent));
    assert_eq!(
        graph.stages().checking,
        2,
        "out and other are still looked up"
    );
}
