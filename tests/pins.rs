//! `narpush pin` end to end on a real S3 server: a pinned closure outlives `narpush gc` and
//! stock Nix substitutes it afterwards; a pin is refused, and nothing written, when the
//! closure is not whole; `--list` and `--remove` do what they say.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use narpush_e2e::*;

const DAY: Duration = Duration::from_secs(24 * 3600);

fn pin(s3: &S3Server, args: &[&str]) -> Output {
    run(narpush()
        .args(["pin", "--to", &s3.url("cache")])
        .args(args)
        .envs(s3.env()))
}

/// Builds and uploads gc.nix's closure; returns (top, closure).
fn uploaded(s3: &S3Server, secret: &Path, own: &str) -> (String, Vec<String>) {
    let top = nix_build(
        &fixture("gc.nix"),
        &[("shared", &unique("pin-shared")), ("own", &unique(own))],
    )
    .remove(0);
    let output = run(narpush()
        .args(["upload", "--no-upstream", "--to", &s3.url("cache"), "--key"])
        .arg(secret)
        .arg(&top)
        .envs(s3.env()));
    assert!(output.status.success(), "{}", stderr(&output));
    let paths = closure(std::slice::from_ref(&top));
    (top, paths)
}

fn narinfo_exists(bucket: &Path, path: &str) -> bool {
    bucket.join(format!("{}.narinfo", hash_part(path))).exists()
}

#[test]
fn a_pinned_closure_outlives_gc_until_the_pin_is_removed() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");
    let (release, release_closure) = uploaded(&s3, &secret, "pin-release");
    let (other, other_closure) = uploaded(&s3, &secret, "pin-other");

    let made = pin(&s3, &["release-1.0", &release]);
    assert!(made.status.success(), "{}", stderr(&made));
    assert_eq!(
        std::fs::read_to_string(bucket.join("pins/release-1.0")).unwrap(),
        format!("StorePath: {release}\n")
    );
    let listed = pin(&s3, &["--list"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout),
        format!("release-1.0\t{release}\n")
    );
    let json = pin(&s3, &["--list", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json[0]["name"], "release-1.0");
    assert_eq!(json[0]["path"], release.as_str());

    age_everything(&bucket, 90 * DAY);
    let collected = run(narpush()
        .args(["gc", "--older-than", "30d", "--to", &s3.url("cache")])
        .envs(s3.env()));
    assert!(collected.status.success(), "{}", stderr(&collected));
    for path in &release_closure {
        assert!(narinfo_exists(&bucket, path), "pinned {path} was deleted");
    }
    for path in other_closure
        .iter()
        .filter(|p| !release_closure.contains(p))
    {
        assert!(!narinfo_exists(&bucket, path), "unpinned {path} was kept");
    }
    assert!(bucket.join("pins/release-1.0").exists());
    assert_closure_invariant(&bucket);
    let cache_url = format!("file://{}", bucket.display());
    let (_store, substituted) = substitute(&cache_url, &public, std::slice::from_ref(&release));
    assert!(substituted.status.success(), "{}", stderr(&substituted));
    let (_store, gone) = substitute(&cache_url, &public, std::slice::from_ref(&other));
    assert!(!gone.status.success(), "the unpinned closure substituted");

    let removed = pin(&s3, &["--remove", "release-1.0"]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert!(!bucket.join("pins/release-1.0").exists());
    let again = pin(&s3, &["--remove", "release-1.0"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("no pin named 'release-1.0'"),
        "{}",
        stderr(&again)
    );
    let collected = run(narpush()
        .args(["gc", "--older-than", "30d", "--to", &s3.url("cache")])
        .envs(s3.env()));
    assert!(collected.status.success(), "{}", stderr(&collected));
    for path in &release_closure {
        assert!(!narinfo_exists(&bucket, path), "{path} outlived its pin");
    }
}

#[test]
fn a_pin_is_refused_with_the_gap_when_the_closure_is_not_whole() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (secret, _public) = keygen(keys.path(), "narpush-test-1");
    let (top, paths) = uploaded(&s3, &secret, "pin-gap");
    let base = paths
        .iter()
        .find(|p| p.ends_with("-narpush-gc-base"))
        .unwrap();
    std::fs::remove_file(bucket.join(format!("{}.narinfo", hash_part(base)))).unwrap();
    let refused = pin(&s3, &["v1", &top]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("is not whole") && message.contains(&format!("{base} has no narinfo")),
        "{message}"
    );
    assert!(!bucket.join("pins").join("v1").exists());

    let (top, paths) = uploaded(&s3, &secret, "pin-nar");
    let tool = paths
        .iter()
        .find(|p| p.ends_with("-narpush-gc-tool"))
        .unwrap();
    let narinfo =
        std::fs::read_to_string(bucket.join(format!("{}.narinfo", hash_part(tool)))).unwrap();
    let nar = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap();
    std::fs::remove_file(bucket.join(nar)).unwrap();
    let refused = pin(&s3, &["v1", &top]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains(&format!("{tool}'s NAR {nar} is missing")),
        "{}",
        stderr(&refused)
    );
    assert!(!bucket.join("pins").join("v1").exists());

    for bad in ["../x", ".hidden", "a b"] {
        let refused = pin(&s3, &[bad, &top]);
        assert!(!refused.status.success());
        assert!(
            stderr(&refused).contains(&format!("invalid pin name '{bad}'")),
            "{}",
            stderr(&refused)
        );
    }
}
