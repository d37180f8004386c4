//! `narpush gc` end to end, on a real S3 server: old closures go, new ones stay whole and
//! substitutable by stock Nix, and several daemons writing to the bucket while collections run
//! never see (or make) a narinfo whose NAR or references are missing.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use narpush_e2e::daemon::Daemon;
use narpush_e2e::*;

#[path = "gc/protocol.rs"]
mod protocol;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Builds gc.nix; returns (top, closure).
fn build(shared: &str, own: &str) -> (String, Vec<String>) {
    let top = nix_build(&fixture("gc.nix"), &[("shared", shared), ("own", own)]).remove(0);
    let paths = closure(std::slice::from_ref(&top));
    (top, paths)
}

fn gc(s3: &S3Server, bucket: &str, args: &[&str]) -> Output {
    run(narpush()
        .args(["gc", "--json", "--to", &s3.url(bucket)])
        .args(args)
        .envs(s3.env()))
}

fn deleted_keys(output: &Output) -> Vec<String> {
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    let mut keys: Vec<String> = report["deleted_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

fn narinfo_of(bucket: &Path, path: &str) -> PathBuf {
    bucket.join(format!("{}.narinfo", hash_part(path)))
}

#[test]
fn old_closures_are_collected_and_new_ones_stay_whole() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");
    let shared = unique("gc-shared");
    let (old_top, old_closure) = build(&shared, &unique("gc-old"));
    let upload = |top: &str| {
        let output = run(narpush()
            .args(["upload", "--no-upstream", "--to", &s3.url("cache"), "--key"])
            .arg(&secret)
            .arg(top)
            .envs(s3.env()));
        assert!(output.status.success(), "{}", stderr(&output));
    };
    upload(&old_top);
    age_everything(&bucket, 60 * DAY);

    // The new closure shares base and lib: they are found in the cache, 60 days old, and
    // their narinfos are refreshed.
    let (new_top, new_closure) = build(&shared, &unique("gc-new"));
    upload(&new_top);
    let shared_paths: Vec<&String> = new_closure
        .iter()
        .filter(|p| old_closure.contains(p))
        .collect();
    assert_eq!(shared_paths.len(), 2, "{new_closure:?}");
    for path in &shared_paths {
        let modified = std::fs::metadata(narinfo_of(&bucket, path))
            .unwrap()
            .modified()
            .unwrap();
        assert!(
            modified.elapsed().unwrap_or_default() < DAY,
            "{path} was not refreshed"
        );
    }
    let old_only: Vec<&String> = old_closure
        .iter()
        .filter(|p| !new_closure.contains(p))
        .collect();
    assert_eq!(old_only.len(), 2);

    let before = snapshot(&bucket);
    let dry = gc(&s3, "cache", &["--older-than", "30d", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert_eq!(
        snapshot(&bucket),
        before,
        "--dry-run wrote or deleted something"
    );
    let planned = deleted_keys(&dry);

    let done = gc(&s3, "cache", &["--older-than", "30d"]);
    assert!(done.status.success(), "{}", stderr(&done));
    assert_eq!(
        deleted_keys(&done),
        planned,
        "the dry run printed another plan"
    );
    // The old closure's own narinfos and NARs (and nothing of the new one) are gone.
    for path in &old_only {
        assert!(!narinfo_of(&bucket, path).exists(), "{path} is still there");
        assert!(planned.contains(&format!("{}.narinfo", hash_part(path))));
    }
    assert_eq!(
        planned.iter().filter(|k| k.starts_with("nar/")).count(),
        2,
        "{planned:?}"
    );
    for path in &new_closure {
        assert!(narinfo_of(&bucket, path).exists(), "{path} was deleted");
    }
    assert_eq!(narinfos(&bucket).len(), new_closure.len());
    assert_closure_invariant(&bucket);

    let cache_url = format!("file://{}", bucket.display());
    let (store, substituted) = substitute(&cache_url, &public, std::slice::from_ref(&new_top));
    assert!(substituted.status.success(), "{}", stderr(&substituted));
    assert!(store.path().join(new_top.trim_start_matches('/')).exists());
    let verified = run(command("nix")
        .args(["store", "verify", "--store", &cache_url])
        .args(["--trusted-public-keys", &public, "-r", &new_top]));
    assert!(verified.status.success(), "{}", stderr(&verified));

    // A second run finds nothing more to delete.
    let again = gc(&s3, "cache", &["--older-than", "30d"]);
    assert!(again.status.success());
    assert!(deleted_keys(&again).is_empty());
}

#[test]
fn unsafe_ages_are_refused_before_anything_is_listed() {
    let s3 = S3Server::start();
    s3.bucket("cache");
    for (args, expected) in [
        (&["--older-than", "1d"][..], "refresh_after"),
        (&["--older-than", "30d", "--grace", "1m"][..], "--grace"),
        (&["--older-than", "soon"][..], "soon"),
    ] {
        let output = gc(&s3, "cache", args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(stderr(&output).contains(expected), "{}", stderr(&output));
    }
}

/// Checks the closure invariant of `bucket` over and over until `stop`; returns the number of
/// passes and the violations seen. A narinfo whose NAR or reference is missing counts only if
/// the narinfo itself is still there afterwards (collections delete narinfos first).
fn watch_invariant(bucket: PathBuf, stop: Arc<AtomicBool>) -> (u64, Vec<String>) {
    let mut passes = 0;
    let mut violations = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        passes += 1;
        for narinfo in narinfos(&bucket) {
            let Ok(text) = std::fs::read_to_string(&narinfo) else {
                continue;
            };
            let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name));
            let (Some(url), Some(size), Some(_)) =
                (field("URL: "), field("FileSize: "), field("Sig: "))
            else {
                // Being rewritten right now (a refresh): read again next pass.
                continue;
            };
            let mut problems = Vec::new();
            match std::fs::metadata(bucket.join(url)) {
                Ok(meta) if meta.len().to_string() == size => {}
                Ok(meta) => {
                    problems.push(format!("NAR {url} has {} bytes, not {size}", meta.len()))
                }
                Err(_) => problems.push(format!("NAR {url} is missing")),
            }
            for reference in field("References: ").unwrap_or("").split_whitespace() {
                if reference.len() < 32 {
                    continue;
                }
                if !bucket
                    .join(format!("{}.narinfo", &reference[..32]))
                    .exists()
                {
                    problems.push(format!("reference {reference} is missing"));
                }
            }
            if !problems.is_empty() && narinfo.exists() {
                violations.push(format!(
                    "{} ({}): {}",
                    narinfo.display(),
                    field("StorePath: ").unwrap_or("?"),
                    problems.join("; ")
                ));
            }
        }
    }
    (passes, violations)
}

#[test]
fn three_daemons_and_collections_in_a_loop_keep_the_closure_invariant() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("fleet");
    let keys = tempfile::tempdir().unwrap();
    let (secret, old_public) = keygen(keys.path(), "narpush-old-1");
    // An old closure whose bottom the builders share: collections would delete all of it,
    // unless the builders' lookups refresh what they build upon.
    let shared = unique("fleet-shared");
    let (old_top, old_closure) = build(&shared, &unique("fleet-old"));
    let filled = run(narpush()
        .args(["upload", "--no-upstream", "--to", &s3.url("fleet"), "--key"])
        .arg(&secret)
        .arg(&old_top)
        .envs(s3.env()));
    assert!(filled.status.success(), "{}", stderr(&filled));
    age_everything(&bucket, 60 * DAY);

    // Each builder signs with its own key, under its own name (clients trust one key per name).
    let builder_keys: Vec<(PathBuf, String)> = (0..3)
        .map(|i| keygen(keys.path(), &format!("builder-{i}-1")))
        .collect();
    let daemons: Vec<Daemon> = builder_keys
        .iter()
        .map(|(secret, _)| {
            Daemon::start(
                &format!(
                    "target = \"{}\"\nsecret_key_files = [\"{}\"]\nupstream_public_keys = []",
                    s3.url("fleet"),
                    secret.display()
                ),
                s3.env(),
            )
        })
        .collect();
    let builders: Vec<_> = daemons
        .iter()
        .enumerate()
        .map(|(i, builder)| {
            let (shared, env) = (shared.clone(), builder.hook_env());
            std::thread::spawn(move || {
                (0..3)
                    .map(|j| {
                        let own = unique(&format!("fleet-{i}-{j}"));
                        let (paths, build) = daemon::build_with_hook(
                            &fixture("gc.nix"),
                            &[("shared", &shared), ("own", &own)],
                            &env,
                        );
                        assert!(build.status.success(), "{}", stderr(&build));
                        paths[0].clone()
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();

    // Collections start while the first builds are evaluated: whether a collection deletes
    // the old shared paths before a builder looks them up, or a builder refreshes them first,
    // varies from run to run; either way nothing may break.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (bucket, stop) = (bucket.clone(), stop.clone());
        std::thread::spawn(move || watch_invariant(bucket, stop))
    };
    let collections = Arc::new(AtomicU64::new(0));
    let collector = {
        let (stop, collections) = (stop.clone(), collections.clone());
        let (url, env) = (s3.url("fleet"), s3.env());
        std::thread::spawn(move || {
            let mut deleted = 0;
            while !stop.load(Ordering::Relaxed) {
                let output = run(narpush()
                    .args(["gc", "--json", "--older-than", "2d", "--to", &url])
                    .envs(env.clone()));
                assert!(output.status.success(), "{}", stderr(&output));
                deleted += deleted_keys(&output).len();
                collections.fetch_add(1, Ordering::Relaxed);
            }
            deleted
        })
    };
    let tops: Vec<String> = builders
        .into_iter()
        .flat_map(|b| b.join().unwrap())
        .collect();
    for daemon in &daemons {
        daemon.wait_ok(120);
    }
    // Let a few more collections run against the finished bucket.
    let seen = collections.load(Ordering::Relaxed);
    while collections.load(Ordering::Relaxed) < seen + 2 {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.store(true, Ordering::Relaxed);
    let deleted = collector.join().unwrap();
    let (passes, mut violations) = watcher.join().unwrap();
    eprintln!(
        "{} collections deleted {deleted} objects; {passes} invariant passes",
        collections.load(Ordering::Relaxed)
    );
    violations.dedup();
    assert!(
        violations.is_empty(),
        "old closure {old_closure:?}: {violations:#?}"
    );
    assert!(passes > 10, "the invariant was checked only {passes} times");
    assert!(collections.load(Ordering::Relaxed) >= 3);

    // The old closure's own paths were collected; every new closure is whole.
    let old_only = old_closure
        .iter()
        .filter(|p| !p.contains("-narpush-gc-base") && !p.contains("-narpush-gc-lib"));
    for path in old_only {
        assert!(
            !narinfo_of(&bucket, path).exists(),
            "{path} was not collected"
        );
    }
    assert_closure_invariant(&bucket);
    let mut keys: Vec<String> = builder_keys.into_iter().map(|(_, public)| public).collect();
    keys.push(old_public);
    let cache_url = format!("file://{}", bucket.display());
    let (store, substituted) = substitute(&cache_url, &keys.join(" "), &tops);
    assert!(substituted.status.success(), "{}", stderr(&substituted));
    for top in &tops {
        for path in closure(std::slice::from_ref(top)) {
            assert!(
                store.path().join(path.trim_start_matches('/')).exists(),
                "{path} was not substituted"
            );
        }
    }
}
