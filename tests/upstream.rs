//! The upstream filter end to end: what an upstream cache serves, or what the store holds with
//! an upstream key's signature, is not uploaded, and stock Nix still substitutes the whole
//! closure from the target and the upstream together, with signatures required.

use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use narpush_e2e::*;

/// Builds a fresh small closure (top → mid, big, tricky; mid, big → leaf); returns it by name.
fn build(nonce: &str) -> Closure {
    let top = nix_build(
        &fixture("closure.nix"),
        &[("nonce", &unique(nonce)), ("bigMiB", "2")],
    )
    .remove(0);
    let paths = closure(std::slice::from_ref(&top));
    let named = |name: &str| {
        paths
            .iter()
            .find(|p| p.ends_with(&format!("-narpush-{name}")))
            .unwrap_or_else(|| panic!("no {name} in {paths:?}"))
            .clone()
    };
    Closure {
        leaf: named("leaf"),
        mid: named("mid"),
        top,
        paths,
    }
}

struct Closure {
    top: String,
    mid: String,
    leaf: String,
    paths: Vec<String>,
}

fn upload(target: &Path, secret: &Path, args: &[&str], path: &str) -> Output {
    run(narpush()
        .args(["upload", "--to", &format!("file://{}", target.display())])
        .arg("--key")
        .arg(secret)
        .args(args)
        .arg(path))
}

/// Uploads `top` into a fresh directory cache with `args`; the upload must succeed. Returns the
/// cache and the command's stderr.
fn upload_fresh(secret: &Path, args: &[&str], top: &str) -> (tempfile::TempDir, String) {
    let target = tempfile::tempdir().unwrap();
    let output = upload(target.path(), secret, args, top);
    assert!(output.status.success(), "{}", stderr(&output));
    (target, stderr(&output))
}

impl Closure {
    /// The hash parts of the closure without leaf and mid (the part served upstream).
    fn hashes_without_leaf_and_mid(&self) -> Vec<String> {
        hashes_of(
            self.paths
                .iter()
                .filter(|p| **p != self.leaf && **p != self.mid),
        )
    }
}

fn uploaded_hashes(cache: &Path) -> Vec<String> {
    let mut hashes: Vec<String> = narinfos(cache)
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    hashes.sort();
    hashes
}

fn hashes_of<'a>(paths: impl IntoIterator<Item = &'a String>) -> Vec<String> {
    let mut hashes: Vec<String> = paths.into_iter().map(|p| hash_part(p).to_owned()).collect();
    hashes.sort();
    hashes
}

#[test]
fn paths_the_store_holds_with_a_valid_upstream_signature_are_skipped_offline() {
    let closure = build("upstream-signed");
    let keys = tempfile::tempdir().unwrap();
    let (secret, _public) = keygen(keys.path(), "narpush-test-1");
    let (upstream_secret, upstream_public) = keygen(keys.path(), "upstream-test-1");
    // Same name, other key: a signature the filter must not believe.
    let (_, impostor_public) = {
        let other = tempfile::tempdir().unwrap();
        keygen(other.path(), "upstream-test-1")
    };
    run_ok(
        command("nix")
            .args(["store", "sign", "--key-file"])
            .arg(&upstream_secret)
            .args([&closure.leaf, &closure.mid]),
    );

    let (target, said) = upload_fresh(&secret, &["--upstream-key", &upstream_public], &closure.top);
    assert_eq!(
        uploaded_hashes(target.path()),
        closure.hashes_without_leaf_and_mid()
    );
    assert!(
        said.contains("; 2 (") && said.contains("served upstream"),
        "{said}"
    );

    for args in [
        &["--upstream-key", impostor_public.as_str()][..],
        &["--upstream-key", upstream_public.as_str(), "--no-upstream"][..],
    ] {
        let target = tempfile::tempdir().unwrap();
        let output = upload(target.path(), &secret, args, &closure.top);
        if args.contains(&"--no-upstream") {
            // The flags contradict each other: refused before anything is written.
            assert!(!output.status.success());
            assert!(narinfos(target.path()).is_empty());
            continue;
        }
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(
            uploaded_hashes(target.path()),
            hashes_of(&closure.paths),
            "with {args:?}"
        );
    }
    let (target, _) = upload_fresh(&secret, &["--no-upstream"], &closure.top);
    assert_eq!(uploaded_hashes(target.path()), hashes_of(&closure.paths));
}

#[test]
fn an_upstream_cache_serving_part_of_a_closure_gets_only_the_rest_uploaded() {
    let closure = build("upstream-asked");
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");
    let (upstream_secret, upstream_public) = keygen(keys.path(), "upstream-test-1");
    let (_, other_public) = keygen(keys.path(), "other-test-1");

    // The upstream: a public bucket over plain HTTP holding mid and leaf, signed with its key.
    let s3 = S3Server::start_anonymous();
    s3.bucket("upstream");
    let filled = run(narpush()
        .args(["upload", "--no-upstream", "--to"])
        .arg(format!("{}&anonymous=true", s3.url("upstream")))
        .arg("--key")
        .arg(&upstream_secret)
        .arg(&closure.mid)
        .envs(s3.env()));
    assert!(filled.status.success(), "{}", stderr(&filled));
    let upstream_url = format!("http://{}/upstream", s3.addr);

    let (target, _) = upload_fresh(
        &secret,
        &[
            "--upstream",
            &upstream_url,
            "--upstream-key",
            &upstream_public,
        ],
        &closure.top,
    );
    assert_eq!(
        uploaded_hashes(target.path()),
        closure.hashes_without_leaf_and_mid()
    );

    // Clients with both caches and both keys get everything, signatures required.
    let target_url = format!("file://{}", target.path().display());
    let (store, substituted) = substitute(
        &format!("{target_url} {upstream_url}"),
        &format!("{public} {upstream_public}"),
        std::slice::from_ref(&closure.top),
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));
    for path in &closure.paths {
        assert!(
            store.path().join(path.trim_start_matches('/')).exists(),
            "{path} was not substituted"
        );
    }

    // The same upstream, trusted under another key: its narinfos do not verify, nothing is
    // skipped.
    let (target, _) = upload_fresh(
        &secret,
        &["--upstream", &upstream_url, "--upstream-key", &other_public],
        &closure.top,
    );
    assert_eq!(uploaded_hashes(target.path()), hashes_of(&closure.paths));
}

/// Issue 18, defect 5: an upstream's signed narinfo counts only if the upstream also has the
/// NAR it names (a HEAD of it answers).
#[test]
fn an_upstream_narinfo_whose_nar_is_gone_does_not_count() {
    let closure = build("upstream-nar-gone");
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");
    let (upstream_secret, upstream_public) = keygen(keys.path(), "upstream-test-1");
    let s3 = S3Server::start_anonymous();
    let bucket = s3.bucket("upstream");
    let filled = run(narpush()
        .args(["upload", "--no-upstream", "--to"])
        .arg(format!("{}&anonymous=true", s3.url("upstream")))
        .arg("--key")
        .arg(&upstream_secret)
        .arg(&closure.mid)
        .envs(s3.env()));
    assert!(filled.status.success(), "{}", stderr(&filled));
    // The upstream loses mid's NAR; its narinfo, validly signed, stays.
    let narinfo =
        std::fs::read_to_string(bucket.join(format!("{}.narinfo", hash_part(&closure.mid))))
            .unwrap();
    let nar = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .expect("URL line");
    std::fs::remove_file(bucket.join(nar)).unwrap();
    let upstream_url = format!("http://{}/upstream", s3.addr);

    let (target, _) = upload_fresh(
        &secret,
        &[
            "--upstream",
            &upstream_url,
            "--upstream-key",
            &upstream_public,
        ],
        &closure.top,
    );
    // Only the leaf is still served upstream; mid is uploaded.
    let expected = hashes_of(closure.paths.iter().filter(|p| **p != closure.leaf));
    assert_eq!(uploaded_hashes(target.path()), expected);
    let target_url = format!("file://{}", target.path().display());
    let (_, substituted) = substitute(
        &format!("{target_url} {upstream_url}"),
        &format!("{public} {upstream_public}"),
        std::slice::from_ref(&closure.top),
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}

#[test]
fn an_upstream_that_never_answers_costs_one_timeout_not_one_per_path() {
    let closure = build("upstream-silent");
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    let (_, upstream_public) = keygen(keys.path(), "upstream-test-1");
    // Connections complete (the kernel accepts them into the backlog) but nothing answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_url = format!("http://{}", silent.local_addr().unwrap());

    let target = tempfile::tempdir().unwrap();
    let started = Instant::now();
    // One request at a time: a filter that waited out the timeout for every path would take
    // one timeout per path of the closure.
    let output = upload(
        target.path(),
        &secret,
        &[
            "--upstream",
            &upstream_url,
            "--upstream-key",
            &upstream_public,
            "--parallel-requests",
            "1",
        ],
        &closure.top,
    );
    let elapsed = started.elapsed();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(uploaded_hashes(target.path()), hashes_of(&closure.paths));
    assert!(closure.paths.len() >= 5);
    // narpush's request timeout is 5 s, and the NARs wait 5 s for the look of rule U6; one
    // timeout per path would take 25 s and more.
    assert!(
        elapsed < Duration::from_secs(15),
        "{} paths took {elapsed:?}",
        closure.paths.len()
    );
    let warnings = stderr(&output).matches("did not answer").count();
    assert_eq!(warnings, 1, "{}", stderr(&output));
    drop(silent);
}

#[test]
fn the_daemon_skips_upstream_signed_paths_and_status_counts_them() {
    let closure = build("upstream-daemon");
    let keys = tempfile::tempdir().unwrap();
    let (upstream_secret, upstream_public) = keygen(keys.path(), "upstream-test-1");
    run_ok(
        command("nix")
            .args(["store", "sign", "--key-file"])
            .arg(&upstream_secret)
            .arg(&closure.leaf),
    );
    let daemon = narpush_e2e::daemon::Daemon::start(
        &format!("upstream_public_keys = [\"{upstream_public}\"]"),
        vec![],
    );
    let pushed = daemon.client(&["push", "--wait", "--timeout", "60", &closure.top]);
    assert!(
        pushed.status.success(),
        "{}\n{}",
        stderr(&pushed),
        daemon.log()
    );

    let cache = daemon.state.join("cache");
    let rest = closure.paths.iter().filter(|p| **p != closure.leaf);
    assert_eq!(uploaded_hashes(&cache), hashes_of(rest));
    let status = daemon.status_json();
    assert_eq!(status["skipped_upstream"]["paths"], 1, "{status}");
    let leaf_size = run_ok(command("nix-store").args(["-q", "--size", &closure.leaf]));
    assert_eq!(
        status["skipped_upstream"]["nar_bytes"].as_u64(),
        leaf_size.trim().parse::<u64>().ok(),
        "{status}"
    );
    let text = daemon.client(&["status"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("upstream:    1 path(s)"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

#[test]
fn credentials_in_urls_never_reach_the_log_status_or_metrics() {
    let path = nix_build(
        &fixture("single.nix"),
        &[("nonce", &unique("upstream-secret"))],
    )
    .remove(0);
    let keys = tempfile::tempdir().unwrap();
    let (_, upstream_public) = keygen(keys.path(), "upstream-test-1");
    // Nothing listens there: the daemon warns that the cache did not answer, naming it.
    let closed = free_port();
    let metrics = free_port();
    let daemon = narpush_e2e::daemon::Daemon::start(
        &format!(
            "upstream_caches = [\"http://user:SECRETtoken@{closed}/\"]\n\
             upstream_public_keys = [\"{upstream_public}\"]\nmetrics_listen = \"{metrics}\""
        ),
        vec![],
    );
    let pushed = daemon.client(&["push", "--wait", "--timeout", "60", &path]);
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    let log = daemon.log();
    let status_text = daemon.client(&["status"]);
    for (what, text) in [
        ("log", log.clone()),
        ("status --json", daemon.status_json().to_string()),
        (
            "status",
            String::from_utf8_lossy(&status_text.stdout).into_owned(),
        ),
        (
            "metrics",
            narpush_e2e::metrics::get(metrics, "/metrics").body,
        ),
    ] {
        assert!(
            !text.contains("SECRETtoken"),
            "{what} shows the token: {text}"
        );
    }
    assert!(
        log.contains("user:***@"),
        "no warning naming the cache: {log}"
    );

    // A target with credentials in its endpoint does not start, and says so without them.
    let mut refused = narpush_e2e::daemon::Daemon::configure(
        &format!("target = \"s3://cache?endpoint=http://key:SECRETvalue@{closed}\""),
        vec![],
    );
    let why = refused.try_spawn(Duration::from_secs(20)).unwrap_err();
    assert!(why.contains("AWS_SECRET_ACCESS_KEY"), "{why}");
    assert!(!why.contains("SECRETvalue"), "{why}");
}
