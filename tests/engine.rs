//! The upload engine as the daemon drives it: work that arrives while a big upload runs is not
//! held back by it, `status` shows every upload in flight, and stock Nix substitutes both.

use std::time::{Duration, Instant};

use narpush_e2e::daemon::Daemon;
use narpush_e2e::*;

#[test]
fn a_tiny_path_is_published_while_a_big_upload_is_still_running() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let daemon = Daemon::start(&format!("target = \"{}\"", s3.url("cache")), s3.env());
    let big = nix_build(
        &fixture("single.nix"),
        &[("nonce", &unique("big")), ("size", "307200")],
    )
    .remove(0);
    let tiny = nix_build(&fixture("single.nix"), &[("nonce", &unique("tiny"))]).remove(0);
    let narinfo = |path: &str| bucket.join(format!("{}.narinfo", hash_part(path)));

    let pushed = daemon.client(&["push", &big]);
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    // Wait until the big NAR is on its way, so the tiny path arrives behind it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = daemon.status_json();
        let uploads = status["uploads"].as_array().cloned().unwrap_or_default();
        if uploads
            .iter()
            .any(|u| u["path"] == big.as_str() && u["nar_bytes_done"].as_u64() > Some(0))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the big upload never showed in status: {status}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pushed = daemon.client(&["push", &tiny]);
    assert!(pushed.status.success(), "{}", stderr(&pushed));

    let deadline = Instant::now() + Duration::from_secs(60);
    while !narinfo(&tiny).exists() {
        assert!(
            Instant::now() < deadline,
            "the tiny path was never published:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let status = daemon.status_json();
    assert!(
        !narinfo(&big).exists(),
        "the big path was done before the tiny one was published; nothing was shown"
    );
    assert!(
        status["uploads"]
            .as_array()
            .is_some_and(|uploads| uploads.iter().any(|u| u["path"] == big.as_str())),
        "the big upload is not listed while it runs: {status}"
    );

    daemon.wait_ok(300);
    assert!(narinfo(&big).exists());
    assert_closure_invariant(&bucket);
    let (_, substituted) = substitute(
        &format!("file://{}", bucket.display()),
        &daemon.public_key(),
        &[big, tiny],
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}
