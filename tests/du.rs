//! `narpush du` end to end: real Nix builds uploaded by `narpush upload` to s3s-fs and to a
//! file:// cache, pinned with `narpush pin`, then `du` must report exactly the numbers this
//! test computes on its own from the bucket's files (their sizes on disk, the narinfos' `URL`
//! and `References` lines): by kind, orphans, the largest closures and paths, and per pin.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Output;

use narpush_e2e::*;
use serde_json::{json, Value};

/// The bucket as files: key → size.
fn bucket_files(bucket: &Path) -> BTreeMap<String, u64> {
    snapshot(bucket)
        .into_iter()
        .map(|(path, (size, _))| {
            let key = path.strip_prefix(bucket).unwrap().to_str().unwrap();
            (key.to_owned(), size)
        })
        .collect()
}

/// A narinfo's `URL` and the hash parts of its `References`.
fn narinfo(bucket: &Path, hash: &str) -> Option<(String, Vec<String>)> {
    let text = std::fs::read_to_string(bucket.join(format!("{hash}.narinfo"))).ok()?;
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).unwrap();
    let references = field("References: ")
        .split(' ')
        .filter(|r| !r.is_empty())
        .map(|r| r[..32].to_owned())
        .collect();
    Some((field("URL: ").to_owned(), references))
}

/// The keys (narinfos and NARs) of the closure of `hash` in the bucket.
fn closure_keys(bucket: &Path, hash: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut pending = vec![hash.to_owned()];
    while let Some(next) = pending.pop() {
        let Some((url, references)) = narinfo(bucket, &next) else {
            continue;
        };
        if !keys.insert(format!("{next}.narinfo")) {
            continue;
        }
        if bucket.join(&url).exists() {
            keys.insert(url);
        }
        pending.extend(references);
    }
    keys
}

fn bytes_of<'a>(files: &BTreeMap<String, u64>, keys: impl IntoIterator<Item = &'a String>) -> u64 {
    keys.into_iter().map(|k| files[k]).sum()
}

/// Objects and bytes of the keys `select` picks.
fn tally(files: &BTreeMap<String, u64>, select: impl Fn(&str) -> bool) -> Value {
    let keys: Vec<&String> = files.keys().filter(|k| select(k)).collect();
    json!({"objects": keys.len(), "bytes": bytes_of(files, keys)})
}

fn is_narinfo(key: &str) -> bool {
    key.ends_with(".narinfo")
}

fn du(target: &str, env: &[(&'static str, String)], args: &[&str]) -> (Output, Value) {
    let output = run(narpush()
        .args(["du", "--json", "--to", target])
        .args(args)
        .envs(env.iter().cloned()));
    assert!(output.status.success(), "{}", stderr(&output));
    let report = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)));
    (output, report)
}

/// What du must say of `bucket` by kind and in total.
fn assert_kinds(report: &Value, bucket: &Path) {
    let files = bucket_files(bucket);
    assert_eq!(report["total"], tally(&files, |_| true));
    assert_eq!(report["by_kind"]["narinfos"], tally(&files, is_narinfo));
    assert_eq!(
        report["by_kind"]["nars"],
        tally(&files, |k| k.starts_with("nar/"))
    );
    assert_eq!(
        report["by_kind"]["logs"],
        tally(&files, |k| k.starts_with("log/"))
    );
    assert_eq!(
        report["by_kind"]["realisations"],
        tally(&files, |k| k.starts_with("realisations/"))
    );
    assert_eq!(
        report["by_kind"]["listings"],
        tally(&files, |k| k.ends_with(".ls"))
    );
    assert_eq!(
        report["other"],
        tally(&files, |k| k == "nix-cache-info" || k.starts_with("pins/"))
    );
    assert_eq!(
        report["paths"],
        files.keys().filter(|k| is_narinfo(k)).count()
    );
}

/// Builds gc.nix (closures sharing base and lib for equal `shared`) and uploads it.
fn uploaded(target: &str, env: &[(&'static str, String)], key: &Path, shared: &str) -> String {
    let top = nix_build(
        &fixture("gc.nix"),
        &[("shared", shared), ("own", &unique("du-own"))],
    )
    .remove(0);
    let output = run(narpush()
        .args(["upload", "--no-upstream", "--to", target, "--key"])
        .arg(key)
        .arg(&top)
        .envs(env.iter().cloned()));
    assert!(output.status.success(), "{}", stderr(&output));
    top
}

#[test]
fn du_reports_what_the_bucket_files_hold_with_pins_and_orphans() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let target = s3.url("cache");
    let env = s3.env();
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    let shared = unique("du-shared");
    let a = uploaded(&target, &env, &secret, &shared);
    let b = uploaded(&target, &env, &secret, &shared);
    for (name, path) in [("a", &a), ("b", &b)] {
        let pinned = run(narpush()
            .args(["pin", "--to", &target, name, path])
            .envs(env.iter().cloned()));
        assert!(pinned.status.success(), "{}", stderr(&pinned));
    }

    let (_, report) = du(&target, &env, &[]);
    assert_kinds(&report, &bucket);
    let files = bucket_files(&bucket);
    let (closure_a, closure_b) = (
        closure_keys(&bucket, hash_part(&a)),
        closure_keys(&bucket, hash_part(&b)),
    );
    // Both closures have 4 paths, 2 of them shared.
    assert_eq!(closure_a.iter().filter(|k| is_narinfo(k)).count(), 4);
    assert_eq!(
        closure_a
            .intersection(&closure_b)
            .filter(|k| is_narinfo(k))
            .count(),
        2
    );
    let mut expected_closures = [
        (bytes_of(&files, &closure_a), a.clone()),
        (bytes_of(&files, &closure_b), b.clone()),
    ];
    expected_closures.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
    let top_closures: Vec<(u64, String)> = report["top_closures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["closure_paths"], 4);
            (
                c["closure_bytes"].as_u64().unwrap(),
                c["path"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(top_closures.len(), 2);
    assert_eq!(
        top_closures.iter().map(|c| c.0).collect::<Vec<_>>(),
        expected_closures.iter().map(|c| c.0).collect::<Vec<_>>()
    );
    // Each pin: its closure, and what the other pin's closure does not hold.
    let pins = report["pins"].as_array().unwrap();
    assert_eq!(pins.len(), 2);
    for (pin, path, own, other) in [
        (&pins[0], &a, &closure_a, &closure_b),
        (&pins[1], &b, &closure_b, &closure_a),
    ] {
        assert_eq!(pin["path"], path.as_str());
        assert_eq!(pin["present"], true);
        assert_eq!(pin["closure_paths"], 4);
        assert_eq!(pin["closure_bytes"], bytes_of(&files, own));
        assert_eq!(
            pin["exclusive_bytes"],
            bytes_of(&files, own.difference(other))
        );
        assert!(pin["exclusive_bytes"].as_u64().unwrap() > 0);
    }
    assert_eq!(report["orphans"], json!({"objects": 0, "bytes": 0}));

    // Orphans: a's narinfo goes (its NAR is then named by none), plus a listing of it, a log
    // no narinfo names and a realisation of it.
    let (a_nar, _) = narinfo(&bucket, hash_part(&a)).unwrap();
    std::fs::remove_file(bucket.join(format!("{}.narinfo", hash_part(&a)))).unwrap();
    std::fs::write(bucket.join(format!("{}.ls", hash_part(&a))), b"{}").unwrap();
    std::fs::create_dir_all(bucket.join("log")).unwrap();
    std::fs::write(
        bucket.join("log/0000000000000000000000000000000a-gone.drv"),
        b"a build log\n",
    )
    .unwrap();
    // Realisations: one of a's top (gone, an orphan), one of b's top (not).
    std::fs::create_dir_all(bucket.join("realisations")).unwrap();
    for (digit, path) in [('a', &a), ('b', &b)] {
        let id = format!("sha256:{}!out", digit.to_string().repeat(64));
        std::fs::write(
            bucket.join(format!("realisations/{id}.doi")),
            json!({"id": id, "outPath": path, "signatures": [], "dependentRealisations": {}})
                .to_string(),
        )
        .unwrap();
    }
    let (_, report) = du(&target, &env, &["--top", "1"]);
    assert_kinds(&report, &bucket);
    let files = bucket_files(&bucket);
    let orphan_keys = [
        a_nar.clone(),
        format!("{}.ls", hash_part(&a)),
        "log/0000000000000000000000000000000a-gone.drv".to_owned(),
        format!("realisations/sha256:{}!out.doi", "a".repeat(64)),
    ];
    assert_eq!(
        report["orphans"],
        json!({"objects": 4, "bytes": bytes_of(&files, &orphan_keys)})
    );
    assert_eq!(report["orphans_by_kind"]["realisations"]["objects"], 1);
    assert_eq!(report["by_kind"]["realisations"]["objects"], 2);
    assert_eq!(report["orphans_by_kind"]["nars"]["bytes"], files[&a_nar]);
    assert_eq!(report["orphans_by_kind"]["listings"]["objects"], 1);
    assert_eq!(report["orphans_by_kind"]["logs"]["objects"], 1);
    // --top 1: the largest closure (b's, a's top is gone) and the largest path (lib's).
    assert_eq!(report["top_closures"].as_array().unwrap().len(), 1);
    assert_eq!(report["top_closures"][0]["path"], b.as_str());
    assert_eq!(
        report["top_closures"][0]["closure_bytes"],
        bytes_of(&files, &closure_keys(&bucket, hash_part(&b)))
    );
    let largest = files
        .keys()
        .filter(|k| is_narinfo(k))
        .map(|k| {
            let hash = k.trim_end_matches(".narinfo");
            let (url, _) = narinfo(&bucket, hash).unwrap();
            (files[k] + files[&url], hash.to_owned())
        })
        .max()
        .unwrap();
    let top_paths = report["top_paths"].as_array().unwrap();
    assert_eq!(top_paths.len(), 1);
    assert_eq!(top_paths[0]["bytes"], largest.0);
    assert!(top_paths[0]["path"]
        .as_str()
        .unwrap()
        .contains(&format!("{}-narpush-gc-lib", largest.1)));
    // a's pin names a path without a narinfo now: an empty closure, and b alone keeps the rest.
    assert_eq!(report["pins"][0]["name"], "a");
    assert_eq!(report["pins"][0]["present"], false);
    assert_eq!(report["pins"][0]["closure_bytes"], 0);
    assert_eq!(
        report["pins"][1]["exclusive_bytes"],
        report["pins"][1]["closure_bytes"]
    );
}

#[test]
fn du_on_a_file_cache_prints_text_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let target = format!("file://{}", cache.display());
    let (secret, _) = keygen(dir.path(), "narpush-test-1");
    let top = uploaded(&target, &[], &secret, &unique("du-file"));

    let (_, report) = du(&target, &[], &[]);
    assert_kinds(&report, &cache);
    let files = bucket_files(&cache);
    let closure = closure_keys(&cache, hash_part(&top));
    assert_eq!(report["top_closures"][0]["path"], top.as_str());
    assert_eq!(
        report["top_closures"][0]["closure_bytes"],
        bytes_of(&files, &closure)
    );
    assert_eq!(report["top_paths"].as_array().unwrap().len(), 4);
    assert_eq!(report["pins"], json!([]));

    let text = run_ok(narpush().args(["du", "--to", &target]));
    let total: u64 = files.values().sum();
    assert!(
        text.starts_with(&format!("{target}: {} object(s), ", files.len()))
            && text.contains(&format!("({total} bytes), 4 path(s)\n")),
        "{text}"
    );
    for line in [
        "  narinfos ",
        "  NARs ",
        "  orphans ",
        "largest closures",
        "largest paths:",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    assert!(text.contains(&top), "{text}");
}
