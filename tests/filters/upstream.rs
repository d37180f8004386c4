//! Push filters with an upstream cache: what it serves is not needed here, and "not served"
//! must be an answer.

use super::*;

/// `narpush upload` of the bundle with output `doc` excluded, asking `upstream` (trusting
/// `upstream_public`) whether it serves what is excluded.
fn upload_bundle_without_doc(
    cache: &Path,
    key: &Path,
    upstream: &str,
    upstream_public: &str,
    built: &Built,
) -> std::process::Output {
    let flags = [
        "--exclude-output",
        "doc",
        "--upstream",
        upstream,
        "--upstream-key",
        upstream_public,
    ];
    upload(cache, key, &flags, &[&built.bundle])
}

#[test]
fn a_referrer_of_an_excluded_path_an_upstream_cache_serves_is_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let (upstream_key, upstream_public) = keygen(dir.path(), "filters-upstream");
    let (key, _) = keygen(dir.path(), "filters-target");
    let upstream = dir.path().join("upstream");
    let cache = dir.path().join("cache");
    let built = Built::build("filters-upstream");
    let filled = upload(&upstream, &upstream_key, &[], &[&built.doc]);
    assert!(filled.status.success(), "{}", stderr(&filled));

    let upstream_url = format!("file://{}", upstream.display());
    let output = upload_bundle_without_doc(&cache, &key, &upstream_url, &upstream_public, &built);
    let said = stderr(&output);
    assert!(output.status.success(), "{said}");
    assert_in_cache(&cache, &[&built.doc], false, &said);
    assert_in_cache(&cache, &[&built.viewer, &built.bundle], true, &said);
    assert!(said.contains("0 skipped"), "{said}");
}

#[test]
fn an_excluded_path_is_not_skipped_while_an_upstream_that_may_serve_it_does_not_answer() {
    // Found by the simulation with push filters: "did not answer" was taken for "not served",
    // and the excluded path skipped for good with its referrers.
    let dir = tempfile::tempdir().unwrap();
    let (_, upstream_public) = keygen(dir.path(), "filters-silent-upstream");
    let (key, _) = keygen(dir.path(), "filters-target");
    let cache = dir.path().join("cache");
    let built = Built::build("filters-silent");
    // Nothing listens there: the connection is refused.
    let silent = format!("http://{}", free_port());
    let output = upload_bundle_without_doc(&cache, &key, &silent, &upstream_public, &built);
    let said = stderr(&output);
    assert!(
        !output.status.success(),
        "failed, to be tried again: {said}"
    );
    assert!(said.contains("did not answer"), "{said}");
    assert!(!said.contains("skipped /nix/store"), "not skipped: {said}");
    assert_in_cache(
        &cache,
        &[&built.doc, &built.viewer, &built.bundle],
        false,
        &said,
    );
    assert_closure_invariant(&cache);
}
