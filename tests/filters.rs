//! Push filters end to end (`exclude`, `exclude_outputs`, `max_nar_bytes` and their flags):
//! real Nix builds of a two-output derivation and the paths that need its `doc`, uploaded by
//! `narpush upload`, by the daemon from the hook, and by `narpush exec`. What is excluded, and
//! every path whose closure needs it, ends skipped with its reason (never failed, the exit
//! status unchanged); the rest is uploaded and stock Nix substitutes it with signatures
//! required.

use std::path::Path;

use narpush_e2e::daemon::{build_with_hook, Daemon};
use narpush_e2e::metrics::{get, parse, value};
use narpush_e2e::*;

/// The paths of one build of `filters.nix`, by role.
struct Built {
    app: String,
    bundle: String,
    heavy_user: String,
    heavy: String,
    pkg: String,
    doc: String,
    notes_doc: String,
    viewer: String,
}

impl Built {
    fn from_closure(tops: &[String]) -> Built {
        let all = closure(tops);
        let named = |suffix: &str| {
            all.iter()
                .find(|p| p.ends_with(&format!("-{suffix}")))
                .unwrap_or_else(|| panic!("no {suffix} in {all:?}"))
                .clone()
        };
        Built {
            app: named("filters-app"),
            bundle: named("filters-bundle"),
            heavy_user: named("filters-heavy-user"),
            heavy: named("filters-heavy"),
            pkg: named("filters-pkg"),
            doc: named("filters-pkg-doc"),
            notes_doc: named("filters-notes-doc"),
            viewer: named("filters-viewer"),
        }
    }

    fn build(name: &str) -> Built {
        let tops = nix_build(&fixture("filters.nix"), &[("nonce", &unique(name))]);
        Built::from_closure(&tops)
    }

    fn tops(&self) -> [&str; 3] {
        [&self.app, &self.bundle, &self.heavy_user]
    }
}

fn has_narinfo(cache: &Path, path: &str) -> bool {
    cache.join(format!("{}.narinfo", hash_part(path))).exists()
}

fn assert_in_cache(cache: &Path, paths: &[&str], expected: bool, said: &str) {
    for path in paths {
        assert_eq!(
            has_narinfo(cache, path),
            expected,
            "{path} in the cache: expected {expected}\n{said}"
        );
    }
}

fn upload(cache: &Path, key: &Path, flags: &[&str], paths: &[&str]) -> std::process::Output {
    run(narpush()
        .arg("upload")
        .arg("--to")
        .arg(format!("file://{}", cache.display()))
        .arg("--key")
        .arg(key)
        .args(flags)
        .args(paths))
}

/// `upload --json`'s `skipped`: the counts by kind (every kind present) and each path with
/// its kind and reason, in the shape of `status --json`'s.
fn assert_skipped_listed(summary: &serde_json::Value, built: &Built) {
    let skipped = &summary["skipped"];
    let by_reason = &skipped["by_reason"];
    for (kind, count) in [
        ("excluded", 0),
        ("excluded_output", 1),
        ("too_big", 1),
        ("needs_skipped", 3),
    ] {
        assert_eq!(by_reason[kind], count, "{kind} in {summary}");
    }
    let paths = skipped["paths"].as_array().expect("skipped.paths");
    let kind_of = |path: &str| {
        let entry = paths
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("{path} not in {summary}"));
        assert!(entry["skipped_secs_ago"].as_f64().unwrap() >= 0.0);
        assert!(!entry["reason"].as_str().unwrap().is_empty());
        entry["kind"].as_str().unwrap().to_owned()
    };
    assert_eq!(paths.len(), 5, "{summary}");
    assert_eq!(kind_of(&built.doc), "excluded_output");
    assert_eq!(kind_of(&built.heavy), "too_big");
    for referrer in [&built.viewer, &built.bundle, &built.heavy_user] {
        assert_eq!(kind_of(referrer), "needs_skipped");
    }
    assert_eq!(summary["failed"], 0);
}

/// `narpush verify` finds the cache whole: in particular no NAR of a skipped path was left
/// without its narinfo.
fn assert_no_orphan(cache: &Path, public: &str) {
    let output = run(narpush()
        .args(["verify", "--json", "--grace", "0s", "--trusted-key", public])
        .arg("--to")
        .arg(format!("file://{}", cache.display())));
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
    assert_eq!(
        report["problems"]["orphan_nars"]["count"]
            .as_u64()
            .unwrap_or(0),
        0,
        "{report}"
    );
    assert_eq!(report["orphan_nar_bytes"], 0, "{report}");
    assert!(output.status.success(), "{}\n{report}", stderr(&output));
}

#[test]
fn upload_skips_an_excluded_output_and_its_referrers_and_stock_nix_substitutes_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "filters-upload");
    let cache = dir.path().join("cache");
    let built = Built::build("filters-upload");
    let mut named: Vec<&str> = built.tops().to_vec();
    // Named explicitly, as the hook names every output: still never uploaded.
    named.push(&built.doc);
    let output = upload(
        &cache,
        &key,
        &[
            "--exclude-output",
            "doc",
            "--max-nar-bytes",
            "200000",
            "--json",
        ],
        &named,
    );
    let said = stderr(&output);
    assert!(output.status.success(), "skipped is not failed: {said}");
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_skipped_listed(&summary, &built);
    assert_in_cache(
        &cache,
        &[&built.app, &built.pkg, &built.notes_doc],
        true,
        &said,
    );
    assert_in_cache(
        &cache,
        &[
            &built.doc,
            &built.viewer,
            &built.bundle,
            &built.heavy,
            &built.heavy_user,
        ],
        false,
        &said,
    );
    assert!(
        said.contains(&format!(
            "skipped {}: it is output 'doc' of its derivation",
            built.doc
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "skipped {}: it needs {}, which is skipped",
            built.bundle, built.doc
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!("skipped {}: its NAR is 300", built.heavy)),
        "{said}"
    );
    assert!(
        said.contains("5 skipped (1 excluded_output, 1 too_big, 3 needs_skipped); 0 failed"),
        "{said}"
    );
    assert_closure_invariant(&cache);
    assert_no_orphan(&cache, &public);
    let (_, substituted) = substitute(
        &format!("file://{}", cache.display()),
        &public,
        std::slice::from_ref(&built.app),
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));
    let (_, refused) = substitute(
        &format!("file://{}", cache.display()),
        &public,
        std::slice::from_ref(&built.bundle),
    );
    assert!(!refused.status.success(), "bundle was not published");
}

#[test]
fn upload_no_closure_names_the_excluded_reference_that_keeps_a_path_out_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "filters-no-closure");
    let cache = dir.path().join("cache");
    let built = Built::build("filters-no-closure");
    // Only viewer is named: its reference doc is looked up, not uploaded, and the filters
    // exclude it.
    let output = upload(
        &cache,
        &key,
        &["--no-closure", "--exclude-output", "doc"],
        &[&built.viewer],
    );
    let said = stderr(&output);
    assert!(output.status.success(), "skipped is not failed: {said}");
    assert!(
        said.contains(&format!(
            "skipped {}: it needs {}, which is skipped (it is output 'doc' of its derivation",
            built.viewer, built.doc
        )),
        "{said}"
    );
    assert!(
        said.contains("1 skipped (1 needs_skipped); 0 failed"),
        "{said}"
    );
    assert_in_cache(&cache, &[&built.viewer, &built.doc], false, &said);
    assert_no_orphan(&cache, &public);
}

#[test]
fn upload_exclude_matches_names_and_a_bad_pattern_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "filters-regex");
    let cache = dir.path().join("cache");
    let built = Built::build("filters-regex");

    let refused = upload(&cache, &key, &["--exclude", "viewer("], &built.tops());
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--exclude"),
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("'viewer('"),
        "{}",
        stderr(&refused)
    );
    assert!(
        !cache.exists(),
        "nothing written before the flags are checked"
    );

    let output = upload(&cache, &key, &["--exclude", "-viewer$"], &built.tops());
    let said = stderr(&output);
    assert!(output.status.success(), "{said}");
    assert_in_cache(&cache, &[&built.viewer, &built.bundle], false, &said);
    assert_in_cache(
        &cache,
        &[&built.doc, &built.app, &built.heavy_user, &built.heavy],
        true,
        &said,
    );
    assert!(
        said.contains("2 skipped (1 excluded, 1 needs_skipped)"),
        "{said}"
    );
    assert_closure_invariant(&cache);
}

#[test]
fn the_daemon_skips_hook_outputs_and_shows_why_in_status_json_metrics_and_after_a_restart() {
    let metrics = free_port();
    let mut daemon = Daemon::start(
        &format!("exclude_outputs = [\"doc\"]\nmetrics_listen = \"{metrics}\""),
        vec![],
    );
    let (tops, build) = build_with_hook(
        &fixture("filters.nix"),
        &[("nonce", &unique("filters-daemon"))],
        &daemon.hook_env(),
    );
    assert!(build.status.success(), "{}", stderr(&build));
    let built = Built::from_closure(&tops);
    // Skipped is not failed: wait succeeds.
    daemon.wait_ok(120);
    let cache = daemon.state.join("cache");
    assert_in_cache(
        &cache,
        &[&built.doc, &built.viewer, &built.bundle],
        false,
        "",
    );
    assert_in_cache(
        &cache,
        &[&built.app, &built.pkg, &built.notes_doc, &built.heavy_user],
        true,
        "",
    );
    assert_closure_invariant(&cache);

    let status = daemon.status_json();
    assert_eq!(status["counts"]["skipped"], 3, "{status:#}");
    assert_eq!(status["counts"]["failed"], 0, "{status:#}");
    // Counted each time a closure meets them: the hook hands `pkg` over with its outputs,
    // then `viewer` (whose closure holds `doc` again), then `bundle`.
    let by_reason = |kind: &str| status["skipped"]["by_reason"][kind].as_u64().unwrap();
    assert!(by_reason("excluded_output") >= 1, "{status:#}");
    assert!(by_reason("needs_skipped") >= 2, "{status:#}");
    assert_eq!(
        by_reason("too_big") + by_reason("excluded"),
        0,
        "{status:#}"
    );
    let reason_of = |status: &serde_json::Value, path: &str| {
        status["skipped"]["paths"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["path"] == path)
            .map(|p| {
                (
                    p["kind"].as_str().unwrap().to_owned(),
                    p["reason"].as_str().unwrap().to_owned(),
                )
            })
            .unwrap_or_else(|| panic!("{path} not listed as skipped: {status:#}"))
    };
    let (kind, reason) = reason_of(&status, &built.doc);
    assert_eq!(kind, "excluded_output");
    assert!(reason.contains("output 'doc'"), "{reason}");
    let (kind, reason) = reason_of(&status, &built.bundle);
    assert_eq!(kind, "needs_skipped");
    assert!(reason.contains(&built.doc), "{reason}");

    let text = get(metrics, "/metrics").body;
    let samples = parse(&text);
    let skipped = |reason: &str| {
        value(
            &samples,
            "narpush_skipped_paths_total",
            &[("reason", reason)],
        )
    };
    // The metrics read the same numbers as status.
    assert_eq!(
        skipped("excluded_output"),
        by_reason("excluded_output") as f64,
        "{text}"
    );
    assert_eq!(
        skipped("needs_skipped"),
        by_reason("needs_skipped") as f64,
        "{text}"
    );
    assert_eq!(skipped("too_big"), 0.0, "{text}");
    assert_eq!(
        value(&samples, "narpush_queue_entries", &[("state", "skipped")]),
        3.0,
        "{text}"
    );
    let human = daemon.client(&["status"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("3 skipped"), "{human}");
    assert!(
        human.contains(&format!("skipped:     {}", built.viewer)),
        "{human}"
    );

    // Finished with its reason, not pending: it survives a restart as it was.
    daemon.terminate();
    daemon.spawn();
    let after = daemon.status_json();
    assert_eq!(after["counts"]["skipped"], 3, "{after:#}");
    assert_eq!(after["counts"]["pending"], 0, "{after:#}");
    assert_eq!(
        reason_of(&after, &built.doc),
        reason_of(&status, &built.doc)
    );
}

#[test]
fn exec_passes_its_filters_to_its_daemon_and_lists_what_it_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "filters-exec");
    let cache = dir.path().join("cache");
    let line = format!(
        "nix-build '{}' --no-out-link --argstr nonce '{}'",
        fixture("filters.nix").display(),
        unique("filters-exec")
    );
    let output = run(narpush()
        .env("NARPUSH_STATE_DIR", dir.path().join("state"))
        .arg("exec")
        .arg("--to")
        .arg(format!("file://{}", cache.display()))
        .arg("--key")
        .arg(&key)
        .args(["--exclude-output", "doc", "--max-nar-bytes", "200000"])
        .args(["--", "sh", "-c", &line]));
    let said = stderr(&output);
    assert!(output.status.success(), "{said}");
    let tops: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    let built = Built::from_closure(&tops);
    assert_in_cache(
        &cache,
        &[
            &built.doc,
            &built.viewer,
            &built.bundle,
            &built.heavy,
            &built.heavy_user,
        ],
        false,
        &said,
    );
    assert_in_cache(
        &cache,
        &[&built.app, &built.pkg, &built.notes_doc],
        true,
        &said,
    );
    assert!(
        said.contains(&format!(
            "narpush: skipped {}: it is output 'doc'",
            built.doc
        )),
        "{said}"
    );
    assert!(said.contains("(0 failed, 5 skipped)"), "{said}");
    assert_closure_invariant(&cache);
    let (_, substituted) = substitute(
        &format!("file://{}", cache.display()),
        &public,
        std::slice::from_ref(&built.app),
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));

    let refused = run(narpush()
        .env("NARPUSH_STATE_DIR", dir.path().join("state"))
        .args(["exec", "--exclude", "(", "--", "true"]));
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("--exclude"),
        "{}",
        stderr(&refused)
    );
}

#[path = "filters/upstream.rs"]
mod upstream;
