//! narpush under a faulty network: the real binaries upload through a fault-injecting proxy
//! (support/fault_proxy.rs) to a real S3 server (s3s-fs, SigV4), and stock Nix must substitute
//! the result with signatures required.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use narpush_e2e::cache_watch::{check_cache, CacheWatch};
use narpush_e2e::daemon::{build_with_hook, Daemon};
use narpush_e2e::fault_proxy::{Fault, FaultProxy, Operation};
use narpush_e2e::moto::MotoServer;
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
    // 9 MiB of random bytes: more than one 8 MiB part, so with `multipart-upload=true` the big
    // NAR is a multipart upload.
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

    let target = format!("{}&multipart-upload=true", proxy.url("cache"));
    let output = run(&mut upload(&s3, &target, &secret, &top));
    assert_eq!(proxy.injected().get(&Fault::DropAfterCompletion), Some(&1));
    assert!(output.status.success(), "upload: {}", stderr(&output));
    assert_eq!(narinfos(&bucket).len(), closure.len());
    assert_closure_invariant(&bucket);
    assert_substitutes(&bucket, &public, &top);
}

#[test]
fn a_multipart_upload_gone_at_its_completion_is_retried_not_failed() {
    // Under load a client can time out on CompleteMultipartUpload while the server is still
    // assembling the object: the retry then finds the upload gone (s3s-fs answers 403, AWS
    // NoSuchUpload) and the object not there yet. The credentials did start the upload and
    // write its parts, so the 403 says the upload is gone, not that a permission is missing:
    // the daemon tries again instead of failing the path for good.
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let proxy = FaultProxy::start(s3.addr);
    let daemon = Daemon::start(
        &format!(
            "target = \"{}\"\nretry_initial_delay_ms = 20\nretry_max_delay_ms = 200\n\
             single_put_max_bytes = 0\n",
            proxy.url("cache")
        ),
        s3.env(),
    );
    proxy.script(Operation::CompleteMultipartUpload, Fault::Forbidden);

    let (paths, build) = build_with_hook(
        &fixture("wide.nix"),
        &[("nonce", &unique("gone")), ("count", "1"), ("bigMiB", "9")],
        &daemon.hook_env(),
    );
    assert!(build.status.success(), "build: {}", stderr(&build));
    daemon.wait_ok(120);
    assert_eq!(proxy.injected().get(&Fault::Forbidden), Some(&1));
    let status = daemon.status_json();
    assert_eq!(status["counts"]["failed"], 0, "failed paths: {status}");
    assert_closure_invariant(&bucket);
    for path in &paths {
        assert_substitutes(&bucket, &daemon.public_key(), path);
    }
}

#[test]
fn a_bucket_that_answers_403_for_missing_keys_is_written_to() {
    let (top, closure) = build_closure("forbidden", "1");
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let proxy = FaultProxy::start(s3.addr);
    // AWS without s3:ListBucket: every missing key, nix-cache-info included, answers 403.
    proxy.forbid_missing(true);
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");

    let output = run(&mut upload(&s3, &proxy.url("cache"), &secret, &top));
    assert!(output.status.success(), "upload: {}", stderr(&output));
    assert!(proxy.forbidden() > 0, "no 404 was turned into 403");
    assert!(
        stderr(&output).contains("s3:ListBucket") && stderr(&output).contains("s3:GetObject"),
        "the missing permissions are not named: {}",
        stderr(&output)
    );
    assert!(bucket.join("nix-cache-info").exists());
    assert_eq!(narinfos(&bucket).len(), closure.len());
    assert_substitutes(&bucket, &public, &top);
}

#[test]
fn hundreds_of_injected_faults_lose_no_path_and_never_break_the_closure_invariant() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let proxy = FaultProxy::start(s3.addr);
    // Longer than request_timeout_ms: a held answer is a timeout for the client.
    proxy.set_timeout_delay(Duration::from_millis(1500));
    let daemon = Daemon::start(
        &format!(
            "target = \"{}\"\njobs = 4\nmax_attempts = 1000\nretry_initial_delay_ms = 20\n\
             retry_max_delay_ms = 200\nrequest_timeout_ms = 1000\nsingle_put_max_bytes = 0\n",
            proxy.url("cache")
        ),
        s3.env(),
    );
    let watch = CacheWatch::start(bucket.clone());
    // About one request in three fails, in every way the proxy knows, reproducibly seeded.
    proxy.randomize(0x5eed_0008, 350, &Fault::ALL, None);
    let started = Instant::now();

    // 100 leaves, a 20 MiB output streamed in three parts, and a top: 102 paths.
    let (paths, build) = build_with_hook(
        &fixture("wide.nix"),
        &[
            ("nonce", &unique("faults")),
            ("count", "100"),
            ("bigMiB", "20"),
        ],
        &daemon.hook_env(),
    );
    assert!(build.status.success(), "build: {}", stderr(&build));
    daemon.wait_ok(240);
    proxy.calm();
    let rounds = watch.finish();

    let injected = proxy.injected();
    let total = proxy.injected_total();
    eprintln!(
        "{total} faults injected in {:.1?} ({injected:?}); requests {:?}; closure invariant \
         checked {rounds} times",
        started.elapsed(),
        proxy.requests()
    );
    assert!(total >= 200, "only {total} faults injected: {injected:?}");
    for fault in Fault::ALL {
        assert!(injected.contains_key(&fault), "no {fault:?} injected");
    }
    let status = daemon.status_json();
    assert_eq!(status["counts"]["failed"], 0, "failed paths: {status}");
    let closure = closure(&paths);
    for path in &closure {
        let narinfo = bucket.join(format!("{}.narinfo", hash_part(path)));
        assert!(narinfo.exists(), "{path} was lost");
    }
    let multipart = snapshot(&bucket.join("nar"))
        .into_values()
        .any(|(size, _)| size > 8 << 20);
    assert!(multipart, "no NAR went up in several parts");
    assert_substitutes(&bucket, &daemon.public_key(), &paths[0]);
}

#[test]
fn a_daemon_aborts_only_its_own_unfinished_multipart_uploads_when_it_starts() {
    // s3s-fs has no ListMultipartUploads; moto has.
    let moto = MotoServer::start();
    moto.boto3("s3.create_bucket(Bucket='cache')\n");
    let config = format!("target = \"{}\"", moto.url("cache"));
    // Two daemons of one bucket; each keeps its writer id in its state directory.
    let mut first = Daemon::start(&config, moto.env());
    let second = Daemon::start(&config, moto.env());
    let writer_id = |daemon: &Daemon| {
        std::fs::read_to_string(daemon.state.join("writer-id"))
            .expect("writer-id")
            .trim()
            .to_owned()
    };
    let (own_id, other_id) = (writer_id(&first), writer_id(&second));
    assert_ne!(own_id, other_id);
    first.terminate();

    let hash = "1".repeat(52);
    let nonce = "2".repeat(16);
    let own = format!("nar/{hash}-{own_id}-{nonce}.nar.zst");
    // The second daemon's upload in progress, and one from before writer ids (owner unknown).
    let others = [
        format!("nar/{hash}-{other_id}-{nonce}.nar.zst"),
        format!("nar/{hash}-{nonce}.nar.zst"),
        "nar/someone-elses-upload.nar.zst".to_owned(),
    ];
    moto.boto3(&format!(
        "for key in {:?}:\n    s3.create_multipart_upload(Bucket='cache', Key=key)\n",
        [&own, &others[0], &others[1], &others[2]]
    ));
    let list = "print(sorted(u['Key'] for u in s3.list_multipart_uploads(Bucket='cache').get('Uploads', [])))";
    // moto's timestamps have a resolution of a second: start strictly after the uploads.
    std::thread::sleep(Duration::from_millis(1100));

    first.spawn();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !first
        .log()
        .contains("aborted 1 unfinished multipart upload")
    {
        assert!(
            Instant::now() < deadline,
            "nothing aborted:\n{}",
            first.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut left = others.to_vec();
    left.sort();
    assert_eq!(
        moto.boto3(list).trim(),
        format!("{left:?}").replace('"', "'")
    );
    drop(second);
}

#[test]
fn an_answer_held_past_request_timeout_ms_is_retried_without_waiting_for_it() {
    let (top, closure) = build_closure("held", "1");
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let proxy = FaultProxy::start(s3.addr);
    proxy.set_timeout_delay(Duration::from_secs(60));
    proxy.script(Operation::PutObject, Fault::Timeout);
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");
    let config = keys.path().join("narpush.toml");
    std::fs::write(&config, "request_timeout_ms = 1000\n").unwrap();

    let started = Instant::now();
    let output =
        run(upload(&s3, &proxy.url("cache"), &secret, &top).env("NARPUSH_CONFIG", &config));
    let elapsed = started.elapsed();
    assert!(output.status.success(), "upload: {}", stderr(&output));
    assert_eq!(proxy.injected().get(&Fault::Timeout), Some(&1));
    assert!(
        elapsed < Duration::from_secs(30),
        "the held answer was waited for: {elapsed:?}"
    );
    assert_eq!(narinfos(&bucket).len(), closure.len());
    assert_substitutes(&bucket, &public, &top);
}

#[test]
fn lost_put_object_answers_are_retried_into_the_same_objects() {
    let (top, closure) = build_closure("lost-put", "1");
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let proxy = FaultProxy::start(s3.addr);
    // The first PUT (nix-cache-info) is written twice and its answer lost both times; the
    // SDK's third attempt (of 3) gets through.
    for _ in 0..2 {
        proxy.script(Operation::PutObject, Fault::DropAfterCompletion);
    }
    let keys = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(keys.path(), "narpush-test-1");

    let output = run(&mut upload(&s3, &proxy.url("cache"), &secret, &top));
    assert!(output.status.success(), "upload: {}", stderr(&output));
    assert_eq!(proxy.injected().get(&Fault::DropAfterCompletion), Some(&2));
    assert_eq!(narinfos(&bucket).len(), closure.len());
    if let Err(violation) = check_cache(&bucket, &mut Default::default()) {
        panic!("{violation}");
    }
    assert_substitutes(&bucket, &public, &top);
}

#[test]
fn a_huge_retry_after_is_capped_at_retry_max_delay_ms() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let proxy = FaultProxy::start(s3.addr);
    let daemon = Daemon::start(
        &format!(
            "target = \"{}\"\nmax_attempts = 100\nretry_initial_delay_ms = 50\n\
             retry_max_delay_ms = 500\n",
            proxy.url("cache")
        ),
        s3.env(),
    );
    // Every write is throttled, with the server asking for a day's pause.
    proxy.set_retry_after("86400");
    proxy.randomize(1, 1000, &[Fault::SlowDown], Some(&[Operation::PutObject]));
    let (paths, build) = build_with_hook(
        &fixture("single.nix"),
        &[("nonce", &unique("retry-after"))],
        &daemon.hook_env(),
    );
    assert!(build.status.success(), "build: {}", stderr(&build));
    let deadline = Instant::now() + Duration::from_secs(30);
    while daemon.status_json()["retrying"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(
            Instant::now() < deadline,
            "never throttled:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    proxy.calm();

    // The next attempt comes within retry_max_delay_ms, not a day later.
    daemon.wait_ok(20);
    assert!(proxy.injected()[&Fault::SlowDown] >= 1);
    let narinfo = bucket.join(format!("{}.narinfo", hash_part(&paths[0])));
    assert!(narinfo.exists(), "not uploaded");
}
