//! narpush under a faulty network: the real binaries upload through a fault-injecting proxy
//! (support/fault_proxy.rs) to a real S3 server (s3s-fs, SigV4), and stock Nix must substitute
//! the result with signatures required.

use std::path::Path;
use std::process::Command;

use narpush_e2e::fault_proxy::{Fault, FaultProxy, Operation};
use narpush_e2e::*;

/// `narpush upload --to TARGET --key SECRET PATH` with the server's credentials.
fn upload(s3: &S3Server, target: &str, secret: &Path, path: &str) -> Command {
    let mut command = narpush();
    command
        .args(["upload", "--to", target, "--key"])
        .arg(secret)
        .arg(path)
        .envs(s3.env());
    command
}

/// A fresh closure of `closure.nix` whose big output is `big_mib` MiB of random bytes.
fn build_closure(nonce: &str, big_mib: &str) -> (String, Vec<String>) {
    let top = nix_build(
        &fixture("closure.nix"),
        &[("nonce", &unique(nonce)), ("bigMiB", big_mib)],
    )
    .remove(0);
    let closure = closure(std::slice::from_ref(&top));
    (top, closure)
}

/// Stock Nix substitutes `top` from the bucket's files with signatures required.
fn assert_substitutes(bucket: &Path, public: &str, top: &str) {
    let cache_url = format!("file://{}", bucket.display());
    let (_, substituted) = substitute(&cache_url, public, &[top.to_owned()]);
    assert!(
        substituted.status.success(),
        "substitution failed: {}",
        stderr(&substituted)
    );
}

#[test]
fn the_proxy_without_faults_forwards_signed_requests_unchanged() {
    let (top, closure) = build_closure("proxy-clean", "1");
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let proxy = FaultProxy::start(s3.addr);
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");

    let output = run(&mut upload(&s3, &proxy.url("cache"), &secret, &top));
    assert!(output.status.success(), "upload: {}", stderr(&output));
    assert_eq!(narinfos(&bucket).len(), closure.len());
    assert_eq!(proxy.injected_total(), 0);
    assert!(proxy.requests().contains_key(&Operation::PutObject));
    assert_substitutes(&bucket, &public, &top);
}

#[test]
fn a_lost_complete_multipart_upload_answer_is_not_a_failure() {
    // 9 MiB of random bytes: more than one 8 MiB part, so the big NAR is a multipart upload.
    let (top, closure) = build_closure("lost-complete", "9");
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let proxy = FaultProxy::start(s3.addr);
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");
    // The server completes the upload; its answer never arrives. The client's retry then
    // meets NoSuchUpload (the upload is gone because it completed).
    proxy.script(
        Operation::CompleteMultipartUpload,
        Fault::DropAfterCompletion,
    );

    let output = run(&mut upload(&s3, &proxy.url("cache"), &secret, &top));
    assert_eq!(proxy.injected().get(&Fault::DropAfterCompletion), Some(&1));
    assert!(output.status.success(), "upload: {}", stderr(&output));
    assert_eq!(narinfos(&bucket).len(), closure.len());
    assert_closure_invariant(&bucket);
    assert_substitutes(&bucket, &public, &top);
}
