//! Several writers of one cache with different compression levels: however their uploads
//! interleave, no NAR object a published narinfo names is ever replaced by other bytes (the
//! naming rule of docs/protocol.md, "Objects in the cache"). Real binaries, real Nix, s3s-fs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use narpush_e2e::cache_watch::{check_cache, CacheWatch};
use narpush_e2e::*;

fn upload_at_level(s3: &S3Server, secret: &Path, top: &str, level: &str) -> Command {
    let mut command = narpush();
    command
        .args([
            "upload",
            "--to",
            &s3.url("cache"),
            "--compression-level",
            level,
        ])
        .arg("--key")
        .arg(secret)
        .arg(top)
        .envs(s3.env());
    command
}

/// A fresh closure with a NAR streamed in parts (9 MiB) and small, compressible ones.
fn build_closure(nonce: &str) -> String {
    nix_build(
        &fixture("closure.nix"),
        &[("nonce", &unique(nonce)), ("bigMiB", "9")],
    )
    .remove(0)
}

fn narinfo_texts(bucket: &Path) -> BTreeMap<PathBuf, String> {
    narinfos(bucket)
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read narinfo");
            (p, text)
        })
        .collect()
}

fn url_of(narinfo: &str) -> &str {
    narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .expect("URL line")
}

#[test]
fn a_reupload_at_another_level_never_changes_the_nar_an_earlier_narinfo_names() {
    let top = build_closure("relevel");
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");

    let first = run(&mut upload_at_level(&s3, &secret, &top, "1"));
    assert!(first.status.success(), "{}", stderr(&first));
    let published = narinfo_texts(&bucket);
    // The second writer looked before the first published: it finds nothing and uploads all.
    for narinfo in published.keys() {
        std::fs::remove_file(narinfo).expect("remove narinfo");
    }
    let second = run(&mut upload_at_level(&s3, &secret, &top, "19"));
    assert!(second.status.success(), "{}", stderr(&second));
    let republished = narinfo_texts(&bucket);
    let renamed = published
        .iter()
        .filter(|(p, text)| url_of(text) != url_of(&republished[*p]))
        .count();
    assert!(
        renamed > 0,
        "no NAR came out different at level 19: the test proves nothing"
    );

    // The first writer's narinfos land last: each must still name its own bytes.
    for (narinfo, text) in &published {
        std::fs::write(narinfo, text).expect("restore narinfo");
    }
    if let Err(violation) = check_cache(&bucket, &mut Default::default()) {
        panic!("{violation}");
    }
    assert_closure_invariant(&bucket);
    let cache_url = format!("file://{}", bucket.display());
    let (_, substituted) = substitute(&cache_url, &public, std::slice::from_ref(&top));
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}

#[test]
fn concurrent_writers_at_different_levels_keep_every_narinfo_consistent() {
    let top = build_closure("concurrent-levels");
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");
    let watch = CacheWatch::start(bucket.clone());

    let writers: Vec<_> = ["1", "6", "12", "19"]
        .iter()
        .map(|level| {
            upload_at_level(&s3, &secret, &top, level)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start narpush upload")
        })
        .collect();
    for writer in writers {
        let output = writer.wait_with_output().expect("wait for upload");
        assert!(output.status.success(), "{}", stderr(&output));
    }
    let rounds = watch.finish();
    eprintln!("closure invariant checked {rounds} times while 4 writers uploaded");
    assert_eq!(
        narinfos(&bucket).len(),
        closure(std::slice::from_ref(&top)).len()
    );
    let cache_url = format!("file://{}", bucket.display());
    let (_, substituted) = substitute(&cache_url, &public, std::slice::from_ref(&top));
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}
