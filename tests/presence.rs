//! What "already in the cache" means: a path counts as present only when its narinfo there
//! parses, is its own, is signed by one of narpush's keys, and its NAR exists. A cache changed
//! behind narpush's back (a NAR deleted, a narinfo written by another tool or key) gets the
//! path uploaded again, and stock Nix with `require-sigs`, trusting only narpush's key,
//! substitutes it afterwards. The real binaries, real Nix and a real S3 server (s3s-fs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use narpush_e2e::daemon::Daemon;
use narpush_e2e::fault_proxy::{FaultProxy, Operation};
use narpush_e2e::*;

/// `narpush upload --to TARGET --key SECRET PATH` with the server's credentials.
fn upload(s3: &S3Server, target: &str, secret: &Path, path: &str) -> Output {
    run(narpush()
        .args(["upload", "--no-upstream", "--to", target, "--key"])
        .arg(secret)
        .arg(path)
        .envs(s3.env()))
}

/// A fresh closure of `closure.nix` (1 MiB big output: every NAR goes up in one request).
fn build_closure(nonce: &str) -> (String, Vec<String>) {
    let top = nix_build(
        &fixture("closure.nix"),
        &[("nonce", &unique(nonce)), ("bigMiB", "1")],
    )
    .remove(0);
    let closure = closure(std::slice::from_ref(&top));
    (top, closure)
}

/// The `URL:` of the narinfo of `path` in `bucket`.
fn nar_of(bucket: &Path, path: &str) -> PathBuf {
    let narinfo = bucket.join(format!("{}.narinfo", hash_part(path)));
    let text = std::fs::read_to_string(&narinfo).expect("narinfo");
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .expect("URL line");
    bucket.join(url)
}

fn assert_substitutes(bucket: &Path, public: &str, top: &str) {
    let cache_url = format!("file://{}", bucket.display());
    let (_, substituted) = substitute(&cache_url, public, &[top.to_owned()]);
    assert!(
        substituted.status.success(),
        "substitution trusting only {public} failed: {}",
        stderr(&substituted)
    );
}

/// Lookups (HEAD and GET) the proxy saw between two snapshots of its counts.
fn lookups(before: &BTreeMap<Operation, u64>, after: &BTreeMap<Operation, u64>) -> (u64, u64) {
    let delta = |op| after.get(&op).unwrap_or(&0) - before.get(&op).unwrap_or(&0);
    (delta(Operation::Head), delta(Operation::Get))
}

#[test]
fn a_nar_deleted_behind_narpushs_back_is_uploaded_again() {
    let (top, closure) = build_closure("presence-nar-gone");
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let proxy = FaultProxy::start(s3.addr);
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");
    let target = proxy.url("cache");

    let first = upload(&s3, &target, &secret, &top);
    assert!(first.status.success(), "upload: {}", stderr(&first));

    // A reference deep in the closure (the leaf, referenced by two paths) and the top lose
    // their NARs; their narinfos stay and point at nothing.
    let leaf = closure
        .iter()
        .find(|p| p.ends_with("-narpush-leaf"))
        .expect("leaf in the closure")
        .clone();
    for path in [&leaf, &top] {
        std::fs::remove_file(nar_of(&bucket, path)).expect("delete NAR");
    }

    let repaired = upload(&s3, &target, &secret, &top);
    assert!(repaired.status.success(), "upload: {}", stderr(&repaired));
    for path in [&leaf, &top] {
        assert!(
            nar_of(&bucket, path).exists(),
            "the NAR of {path} was not uploaded again: {}",
            stderr(&repaired)
        );
    }
    assert_eq!(narinfos(&bucket).len(), closure.len());
    assert_closure_invariant(&bucket);
    assert_substitutes(&bucket, &public, &top);
}

#[test]
fn a_present_path_costs_the_get_of_its_narinfo_and_the_head_of_its_nar() {
    let (top, closure) = build_closure("presence-cost");
    let s3 = S3Server::start();
    let proxy = FaultProxy::start(s3.addr);
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    let first = upload(&s3, &proxy.url("cache"), &secret, &top);
    assert!(first.status.success(), "upload: {}", stderr(&first));

    // Just written: each narinfo younger than S + C gets the second look of rule U1.
    let before = proxy.requests();
    let again = upload(&s3, &proxy.url("cache"), &secret, &top);
    assert!(again.status.success(), "upload: {}", stderr(&again));
    let (heads, gets) = lookups(&before, &proxy.requests());
    let paths = closure.len() as u64;
    eprintln!("all {paths} paths just written: {heads} HEAD and {gets} GET requests");
    // One GET of each narinfo, one HEAD of each NAR, the GET of nix-cache-info, and 5 s later
    // a HEAD of each narinfo and of its NAR again.
    assert_eq!((heads, gets), (3 * paths, paths + 1));

    // Written long ago, as a cache mostly is: no second look.
    age_everything(&s3.bucket("cache"), Duration::from_secs(600));
    let before = proxy.requests();
    let again = upload(&s3, &proxy.url("cache"), &secret, &top);
    assert!(again.status.success(), "upload: {}", stderr(&again));
    let (heads, gets) = lookups(&before, &proxy.requests());
    eprintln!("all {paths} paths present: {heads} HEAD and {gets} GET requests");
    // One GET of each narinfo, one HEAD of each NAR, and the GET of nix-cache-info; nothing
    // written.
    assert_eq!((heads, gets), (paths, paths + 1));
    assert_eq!(
        before.get(&Operation::PutObject),
        proxy.requests().get(&Operation::PutObject),
        "a present closure was written again"
    );
}

#[test]
fn a_narinfo_signed_by_another_key_is_replaced_by_one_signed_by_ours() {
    let (top, closure) = build_closure("presence-other-key");
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (theirs, their_public) = keygen(keys.path(), "someone-else-1");
    let (ours, our_public) = keygen(keys.path(), "narpush-test-1");

    // Stock Nix fills the bucket first (s3s-fs keeps objects as plain files), signing with
    // another key: every path of the closure has a valid narinfo and NAR, not signed by us.
    let copied = run(command("nix")
        .args(["copy", "--to"])
        .arg(format!(
            "file://{}?secret-key={}",
            bucket.display(),
            theirs.display()
        ))
        .arg(&top));
    assert!(copied.status.success(), "nix copy: {}", stderr(&copied));
    assert_eq!(narinfos(&bucket).len(), closure.len());
    assert_substitutes(&bucket, &their_public, &top);

    let output = upload(&s3, &s3.url("cache"), &ours, &top);
    assert!(output.status.success(), "upload: {}", stderr(&output));
    for path in &closure {
        let narinfo = bucket.join(format!("{}.narinfo", hash_part(path)));
        let text = std::fs::read_to_string(&narinfo).unwrap();
        assert!(
            text.contains("Sig: narpush-test-1:"),
            "{path} is not signed by our key:\n{text}"
        );
    }
    assert_eq!(narinfos(&bucket).len(), closure.len());
    assert_closure_invariant(&bucket);
    assert_substitutes(&bucket, &our_public, &top);
    assert!(
        stderr(&output).contains("not ours to trust"),
        "the reason is not logged: {}",
        stderr(&output)
    );
}

/// Issue 17, defect 16: a reload with a new signing key forgets what the daemon trusted, so a
/// dependent is never published on a reference that only the old key signed.
#[test]
fn a_reload_with_a_new_key_uploads_again_what_only_the_old_key_signed() {
    let (top, closure) = build_closure("presence-rekey");
    let mid = closure
        .iter()
        .find(|p| p.ends_with("-narpush-mid"))
        .expect("mid in the closure")
        .clone();
    let keys = tempfile::tempdir().unwrap();
    let (old_secret, old_public) = keygen(keys.path(), "narpush-old-1");
    let (new_secret, new_public) = keygen(keys.path(), "narpush-new-1");
    let key_line = |secret: &Path| format!("secret_key_files = [\"{}\"]", secret.display());
    let daemon = Daemon::start(&key_line(&old_secret), vec![]);
    assert_eq!(daemon.public_key(), old_public);

    // mid and its reference go up under the old key.
    let pushed = daemon.client(&["push", &mid]);
    assert!(pushed.status.success(), "push: {}", stderr(&pushed));
    daemon.wait_ok(60);

    let config = std::fs::read_to_string(&daemon.config).unwrap();
    let rekeyed = config.replace(&key_line(&old_secret), &key_line(&new_secret));
    assert_ne!(config, rekeyed);
    std::fs::write(&daemon.config, rekeyed).unwrap();
    run(std::process::Command::new("kill").args(["-HUP", &daemon.pid().to_string()]));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while daemon.public_key() != new_public {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // The top, whose closure holds mid: clients that trust only the new key get all of it.
    let pushed = daemon.client(&["push", &top]);
    assert!(pushed.status.success(), "push: {}", stderr(&pushed));
    daemon.wait_ok(60);
    let cache = daemon.state.join("cache");
    assert_closure_invariant(&cache);
    assert_substitutes(&cache, &new_public, &top);
}
