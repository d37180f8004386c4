//! A signing-key rotation end to end, on a real S3 server and stock Nix: writers on the new
//! key take the old key's narinfos as theirs (`own_public_keys`, nothing uploaded again),
//! `narpush resign` adds the new signature and later drops the old one, and at each step a
//! client substitutes with `require-sigs` exactly when it trusts a key the cache carries.

use std::path::Path;
use std::process::Output;

use narpush_e2e::*;

fn upload(s3: &S3Server, key: &Path, config: &Path, top: &str) {
    let output = run(narpush()
        .arg("--config")
        .arg(config)
        .args(["upload", "--no-upstream", "--to", &s3.url("cache"), "--key"])
        .arg(key)
        .arg(top)
        .envs(s3.env()));
    assert!(output.status.success(), "{}", stderr(&output));
}

fn resign(s3: &S3Server, config: &Path, args: &[&str]) -> Output {
    run(narpush()
        .arg("--config")
        .arg(config)
        .args(["resign", "--json", "--to", &s3.url("cache")])
        .args(args)
        .envs(s3.env()))
}

fn narinfo_texts(bucket: &Path) -> Vec<String> {
    narinfos(bucket)
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

#[test]
fn a_rotation_keeps_every_path_substitutable_and_uploads_nothing_again() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let dir = tempfile::tempdir().unwrap();
    let (old_secret, old_public) = keygen(dir.path(), "cache.example.org-1");
    let (new_secret, new_public) = keygen(dir.path(), "cache.example.org-2");
    let plain = dir.path().join("plain.toml");
    std::fs::write(&plain, "").unwrap();
    let rotating = dir.path().join("rotating.toml");
    std::fs::write(&rotating, format!("own_public_keys = [\"{old_public}\"]\n")).unwrap();
    let top = nix_build(
        &fixture("gc.nix"),
        &[
            ("shared", &unique("rot-shared")),
            ("own", &unique("rot-own")),
        ],
    )
    .remove(0);
    let paths = closure(std::slice::from_ref(&top));
    upload(&s3, &old_secret, &plain, &top);
    let cache_url = format!("file://{}", bucket.display());
    let substitutes = |public: &str| {
        let (_store, output) = substitute(&cache_url, public, std::slice::from_ref(&top));
        output.status.success()
    };
    assert!(substitutes(&old_public));
    assert!(!substitutes(&new_public));

    // Step 1: a writer switched to the new key finds the old key's narinfos its own.
    let before = snapshot(&bucket);
    upload(&s3, &new_secret, &rotating, &top);
    assert_eq!(
        snapshot(&bucket),
        before,
        "a writer with own_public_keys wrote again what the old key signed"
    );

    // Step 2: resign adds the new key's signature; both keys' clients substitute.
    let added = resign(&s3, &rotating, &["--key", new_secret.to_str().unwrap()]);
    assert!(added.status.success(), "{}", stderr(&added));
    let report: serde_json::Value = serde_json::from_slice(&added.stdout).unwrap();
    assert_eq!(report["narinfos"]["rewritten"], paths.len());
    assert_eq!(report["key_names"]["cache.example.org-1"], paths.len());
    assert!(substitutes(&old_public));
    assert!(substitutes(&new_public));
    let verified = run(command("nix")
        .args(["store", "verify", "--store", &cache_url])
        .args(["--trusted-public-keys", &new_public, "-r", &top]));
    assert!(verified.status.success(), "{}", stderr(&verified));
    let nars_before: Vec<_> = before
        .iter()
        .filter(|(path, _)| path.starts_with(bucket.join("nar")))
        .collect();
    let after = snapshot(&bucket);
    for (path, stat) in nars_before {
        assert_eq!(
            after.get(path),
            Some(stat),
            "resign touched {}",
            path.display()
        );
    }

    // Resumable: nothing is left to do.
    let again = resign(&s3, &rotating, &["--key", new_secret.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(report["narinfos"]["rewritten"], 0);
    assert_eq!(report["narinfos"]["unchanged"], paths.len());

    // Step 3: the old key is dropped; only the new key's clients substitute.
    let dropped = resign(
        &s3,
        &rotating,
        &[
            "--key",
            new_secret.to_str().unwrap(),
            "--remove-signature",
            "cache.example.org-1",
        ],
    );
    assert!(dropped.status.success(), "{}", stderr(&dropped));
    for text in narinfo_texts(&bucket) {
        assert!(!text.contains("Sig: cache.example.org-1:"), "{text}");
        assert!(text.contains("Sig: cache.example.org-2:"), "{text}");
    }
    assert!(substitutes(&new_public));
    assert!(!substitutes(&old_public));

    // Without own_public_keys and with a key it does not know, nothing is ours.
    let (stranger_secret, _) = keygen(dir.path(), "stranger-1");
    let refused = resign(&s3, &plain, &["--key", stranger_secret.to_str().unwrap()]);
    assert!(refused.status.success(), "{}", stderr(&refused));
    let report: serde_json::Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(report["narinfos"]["not_ours"], paths.len());
    assert_eq!(report["narinfos"]["rewritten"], 0);
}
