//! The push filters' rules in the graph: an excluded path is looked up, never stored; found
//! in the cache or upstream it serves its referrers, absent it is skipped with its referrers.

use super::*;
use crate::engine::error::UploadError;
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
fn a_referrer_found_absent_while_its_excluded_reference_is_looked_up_is_held_then_skipped() {
    let (mut graph, _) = closure();
    // viewer needs doc directly, bundle through viewer: neither NAR starts before doc's
    // lookup ends.
    for name in ["viewer", "bundle"] {
        let absent = graph.checked(&path(name), Ok(Lookup::Absent));
        assert!(stores(&absent).is_empty(), "{name}'s NAR waits for doc");
    }
    assert_eq!(graph.stages().waiting_for_references, 2);
    // other needs no excluded path: never held.
    let other = graph.checked(&path("other"), Ok(Lookup::Absent));
    assert_eq!(stores(&other), vec![path("other")]);
    let doc = graph.checked(&path("doc"), Ok(Lookup::Absent));
    assert!(stores(&doc).is_empty(), "no NAR for what is skipped");
    assert_eq!(
        tops_skipped(&doc),
        vec![path("doc"), path("viewer"), path("bundle")]
    );
    assert_eq!(graph.stages().waiting_for_references, 0);
}

#[test]
fn a_held_referrer_is_stored_once_its_excluded_reference_is_found() {
    for found in [Lookup::Present, Lookup::Upstream { nar_size: 100 }] {
        let (mut graph, _) = closure();
        graph.checked(&path("viewer"), Ok(Lookup::Absent));
        graph.checked(&path("bundle"), Ok(Lookup::Absent));
        let actions = graph.checked(&path("doc"), Ok(found));
        let mut started = stores(&actions);
        started.sort();
        let mut expected = vec![path("viewer"), path("bundle")];
        expected.sort();
        assert_eq!(started, expected, "{found:?}");
        assert_eq!(graph.stages().storing, 2);
    }
}

#[test]
fn a_held_referrer_whose_excluded_reference_fails_to_be_looked_up_fails_without_a_nar() {
    let (mut graph, _) = closure();
    graph.checked(&path("viewer"), Ok(Lookup::Absent));
    let error = UploadError::Internal {
        path: path("doc").to_absolute(),
        detail: "the lookup failed".to_owned(),
    };
    let failed = graph.checked(&path("doc"), Err(error));
    assert!(stores(&failed).is_empty());
    let names: Vec<StorePath> = top_failures(&failed).into_iter().map(|(p, _)| p).collect();
    assert!(names.contains(&path("viewer")), "{names:?}");
}

#[test]
fn a_held_referrer_whose_other_path_to_the_excluded_one_is_found_still_waits_for_it() {
    // bundle needs doc through viewer; viewer found in the cache does not end bundle's wait
    // (its lookup is what ends it), and doc's lookup, whatever it says, releases bundle.
    let (mut graph, _) = closure();
    assert!(stores(&graph.checked(&path("bundle"), Ok(Lookup::Absent))).is_empty());
    graph.checked(&path("viewer"), Ok(Lookup::Present));
    let doc = graph.checked(&path("doc"), Ok(Lookup::Absent));
    assert_eq!(
        stores(&doc),
        vec![path("bundle")],
        "bundle no longer needs doc from us: viewer, in the cache, has it"
    );
}

#[test]
fn an_excluded_external_reference_the_cache_lacks_skips_its_referrer_naming_it() {
    // `--no-closure viewer`: doc is only looked up, and the filters exclude it.
    let mut graph = Graph::default();
    graph.add_filtered(
        vec![info("viewer", &["doc"])],
        &[path("viewer")],
        nothing_cached,
        &doc_excluded(),
    );
    let held = graph.checked(&path("viewer"), Ok(Lookup::Absent));
    assert!(stores(&held).is_empty());
    let doc = graph.checked(&path("doc"), Ok(Lookup::Absent));
    assert!(top_failures(&doc).is_empty(), "skipped, not failed");
    let skipped = skipped(&doc);
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0].0, path("viewer"));
    let message = skipped[0].1.to_string();
    assert!(
        message.contains(&path("doc").to_absolute()) && message.contains("output 'doc'"),
        "{message}"
    );
    assert!(graph.is_empty());
}

#[test]
fn an_external_reference_found_excluded_later_holds_its_referrers() {
    let mut graph = Graph::default();
    // viewer's closure is not read: doc is an external reference, not excluded yet.
    graph.add(
        vec![info("viewer", &["doc"])],
        &[path("viewer")],
        nothing_cached,
    );
    graph.add_filtered(
        vec![info("doc", &[]), info("bundle", &["viewer"])],
        &[path("doc"), path("bundle")],
        nothing_cached,
        &doc_excluded(),
    );
    assert!(stores(&graph.checked(&path("viewer"), Ok(Lookup::Absent))).is_empty());
    assert!(stores(&graph.checked(&path("bundle"), Ok(Lookup::Absent))).is_empty());
    let doc = graph.checked(&path("doc"), Ok(Lookup::Absent));
    assert_eq!(tops_skipped(&doc).len(), 3);
    assert!(graph.is_empty());
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
fn an_excluded_external_reference_whose_upstream_did_not_answer_fails_its_referrer_for_now() {
    // `--no-closure viewer` while the upstream that may serve doc is down: not a skip (which
    // would be for good, and exit 0), a transient failure naming doc.
    let mut graph = Graph::default();
    graph.add_filtered(
        vec![info("viewer", &["doc"])],
        &[path("viewer")],
        nothing_cached,
        &doc_excluded(),
    );
    let held = graph.checked(&path("viewer"), Ok(Lookup::Absent));
    assert!(stores(&held).is_empty());
    let doc = graph.checked(&path("doc"), Ok(Lookup::Unanswered));
    assert!(skipped(&doc).is_empty(), "skipped on no answer: {doc:?}");
    assert!(stores(&doc).is_empty(), "a NAR for what may be skipped yet");
    let failed = top_failures(&doc);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].0, path("viewer"));
    assert_eq!(failed[0].1.class, crate::sink::ErrorClass::Transient);
    assert!(
        failed[0].1.message.contains(&path("doc").to_absolute())
            && failed[0].1.message.contains("did not answer"),
        "{}",
        failed[0].1.message
    );
    assert!(graph.is_empty());
}
