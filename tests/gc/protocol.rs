//! `narpush gc` holding to the GC–uploader protocol (daemon/src/coexist.rs) when the store
//! misbehaves: reads it is refused, and answers or requests slowed past the time bound between
//! a check and its delete. Each run exits non-zero having deleted nothing.

use std::time::{Duration, Instant, SystemTime};

use narpush_e2e::fault_proxy::{Fault, FaultProxy, Operation};
use narpush_e2e::*;

use super::{age_everything, build, narinfo_of, DAY};

/// A bucket `cache` holding one closure, every object 60 days old but the top's narinfo;
/// returns the top.
fn old_closure_under_a_young_top(s3: &S3Server) -> String {
    let bucket = s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    let (top, _) = build(&unique("gc-proto-shared"), &unique("gc-proto-own"));
    let output = run(narpush()
        .args(["upload", "--no-upstream", "--to", &s3.url("cache"), "--key"])
        .arg(&secret)
        .arg(&top)
        .envs(s3.env()));
    assert!(output.status.success(), "{}", stderr(&output));
    age_everything(&bucket, 60 * DAY);
    std::fs::File::options()
        .write(true)
        .open(narinfo_of(&bucket, &top))
        .and_then(|f| f.set_modified(SystemTime::now()))
        .unwrap();
    top
}

/// `narpush gc --older-than 30d` on `cache` through `proxy`.
fn gc_through(proxy: &FaultProxy, s3: &S3Server) -> std::process::Output {
    run(narpush()
        .args([
            "gc",
            "--json",
            "--older-than",
            "30d",
            "--to",
            &proxy.url("cache"),
        ])
        .envs(s3.env()))
}

#[test]
fn a_collection_refused_a_read_stops_having_deleted_nothing() {
    let s3 = S3Server::start();
    let proxy = FaultProxy::start(s3.addr);
    old_closure_under_a_young_top(&s3);
    let bucket = s3.bucket("cache");
    let before = snapshot(&bucket);
    // Credentials that may list and delete, not read.
    proxy.randomize(
        1,
        1000,
        &[Fault::Forbidden],
        Some(&[Operation::Get, Operation::Head]),
    );
    let output = gc_through(&proxy, &s3);
    assert!(!output.status.success(), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("403"), "{message}");
    assert!(message.contains("s3:GetObject"), "{message}");
    assert!(message.contains("nothing was deleted"), "{message}");
    assert_eq!(
        snapshot(&bucket),
        before,
        "a refused collection deleted something"
    );
    assert!(proxy.injected()[&Fault::Forbidden] > 0);
}

#[test]
fn a_delete_is_not_sent_once_the_check_before_it_is_older_than_the_bound() {
    let s3 = S3Server::start();
    let proxy = FaultProxy::start(s3.addr);
    let bucket = s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    let (top, _) = build(&unique("gc-slow-shared"), &unique("gc-slow-own"));
    let output = run(narpush()
        .args(["upload", "--no-upstream", "--to", &s3.url("cache"), "--key"])
        .arg(&secret)
        .arg(&top)
        .envs(s3.env()));
    assert!(output.status.success(), "{}", stderr(&output));
    age_everything(&bucket, 60 * DAY);
    let before = snapshot(&bucket);
    // Every HEAD (the check before a delete) answers later than the bound allows.
    proxy.set_timeout_delay(Duration::from_millis(2500));
    proxy.randomize(1, 1000, &[Fault::SlowAnswer], Some(&[Operation::Head]));
    let output = gc_through(&proxy, &s3);
    assert!(!output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("bound"), "{}", stderr(&output));
    assert_eq!(proxy.requests().get(&Operation::DeleteObjects), None);
    assert_eq!(snapshot(&bucket), before);
}

#[test]
fn a_delete_that_cannot_land_within_the_bound_is_given_up() {
    let s3 = S3Server::start();
    let proxy = FaultProxy::start(s3.addr);
    let bucket = s3.bucket("cache");
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "narpush-test-1");
    let (top, _) = build(&unique("gc-held-shared"), &unique("gc-held-own"));
    let output = run(narpush()
        .args(["upload", "--no-upstream", "--to", &s3.url("cache"), "--key"])
        .arg(&secret)
        .arg(&top)
        .envs(s3.env()));
    assert!(output.status.success(), "{}", stderr(&output));
    age_everything(&bucket, 60 * DAY);
    let before = snapshot(&bucket);
    // The first DeleteObjects (of narinfos) would reach the server 6 s after it was sent.
    proxy.set_timeout_delay(Duration::from_secs(6));
    proxy.script(Operation::DeleteObjects, Fault::HeldRequest);
    let output = gc_through(&proxy, &s3);
    assert!(!output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("bound"), "{}", stderr(&output));
    // The proxy drops the held request once it sees the client gone.
    let deadline = Instant::now() + Duration::from_secs(30);
    while proxy.abandoned() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(proxy.abandoned(), 1, "the late delete reached the server");
    assert_eq!(snapshot(&bucket), before);
}
