//! Several writers of one cache with different compression levels: however their uploads
//! interleave, no NAR object a published narinfo names is ever replaced by other bytes (the
//! naming rule of docs/protocol.md, "Objects in the cache"); and writers of overlapping
//! closures under R2's limit of about one write per second to one key take a throttled
//! narinfo or `nix-cache-info` that the other published as done ("Writes of one key by several
//! writers" there). Real binaries, real Nix, s3s-fs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use narpush_e2e::cache_watch::{check_cache, CacheWatch};
use narpush_e2e::fault_proxy::FaultProxy;
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

/// Two `narpush upload`s of overlapping closures (zstd and xz, so their narinfos of the shared
/// paths differ), started together through a proxy that answers 429 with R2's body to a
/// second write of one key within a second. A throttled narinfo or `nix-cache-info` that the
/// other writer published is success: both exit 0 quickly, the 429s are few (at most one per
/// shared key: no retry storm), and the cache is whole for stock Nix and `narpush verify`.
#[test]
fn uploaders_of_overlapping_closures_take_a_throttled_key_the_other_published_as_done() {
    let tops = nix_build(
        &fixture("overlapping.nix"),
        &[("nonce", &unique("overlap"))],
    );
    let [a, b] = tops.as_slice() else {
        panic!("two tops, not {tops:?}");
    };
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let proxy = FaultProxy::start(s3.addr);
    proxy.limit_same_key_writes(Some(Duration::from_secs(1)));
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");

    let started = Instant::now();
    let writers: Vec<_> = [(a, "zstd"), (b, "xz")]
        .into_iter()
        .map(|(top, compression)| {
            narpush()
                .args(["upload", "--json", "--to", &proxy.url("cache")])
                .args(["--compression", compression, "--key"])
                .arg(&secret)
                .arg(top)
                .envs(s3.env())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start narpush upload")
        })
        .collect();
    let mut requests = Vec::new();
    for writer in writers {
        let output = writer.wait_with_output().expect("wait for upload");
        assert!(output.status.success(), "{}", stderr(&output));
        let summary: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("the --json summary");
        requests.push(summary["requests"].clone());
    }
    let took = started.elapsed();
    let reported = |field: &dyn Fn(&serde_json::Value) -> &serde_json::Value| -> u64 {
        requests
            .iter()
            .map(|r| field(r).as_u64().expect("a count"))
            .sum()
    };

    let in_a: BTreeSet<String> = closure(std::slice::from_ref(a)).into_iter().collect();
    let in_b: BTreeSet<String> = closure(std::slice::from_ref(b)).into_iter().collect();
    let mut shared_keys: BTreeSet<String> = in_a
        .intersection(&in_b)
        .map(|path| format!("{}.narinfo", hash_part(path)))
        .collect();
    shared_keys.insert("nix-cache-info".to_owned());
    let throttled = proxy.same_key_throttled();
    let total: u64 = throttled.values().sum();
    eprintln!(
        "{total} writes answered 429 over {} shared keys; both uploads done in {took:?}",
        shared_keys.len()
    );
    assert!(
        total >= 1,
        "the writers never met on one key: the test proves nothing"
    );
    for (key, times) in &throttled {
        assert!(shared_keys.contains(key), "{key} is no shared key");
        assert!(
            *times <= 2,
            "{key} answered 429 {times} times: a retry storm"
        );
    }
    assert!(
        total <= shared_keys.len() as u64,
        "{total} 429s over {} shared keys: {throttled:?}",
        shared_keys.len()
    );
    assert!(took < Duration::from_secs(30), "the uploads took {took:?}");
    // Each 429 ended one way or the other, as the writers report; and the extra GETs and
    // HEADs are counted: the writers report every request the server was sent.
    let taken = reported(&|r| &r["throttled_writes"]["taken_as_published"]);
    let again = reported(&|r| &r["throttled_writes"]["written_again"]);
    let given_up = reported(&|r| &r["throttled_writes"]["given_up"]);
    assert_eq!(taken + again + given_up, total, "{requests:?}");
    let seen: u64 = proxy.requests().values().sum();
    assert_eq!(reported(&|r| &r["total"]), seen, "{requests:?}");

    assert_closure_invariant(&bucket);
    assert_eq!(narinfos(&bucket).len(), in_a.union(&in_b).count());
    let cache_url = format!("file://{}", bucket.display());
    let (_, substituted) = substitute(&cache_url, &public, &tops);
    assert!(substituted.status.success(), "{}", stderr(&substituted));
    let verified = run(narpush()
        .args(["verify", "--to", &s3.url("cache"), "--trusted-key", &public])
        .envs(s3.env()));
    assert_eq!(
        verified.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        stderr(&verified)
    );
}
