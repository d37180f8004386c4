//! Request accounting, end to end: the requests narpush reports (`upload --json`, the
//! daemon's `status --json`, `gc --json`, `verify --json`) are the requests the server saw,
//! by operation and in total, retries included. Every request goes through the counting
//! proxy in front of s3s-fs; each command is one process, so its report covers exactly the
//! requests the proxy saw while it ran.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use narpush_e2e::daemon::Daemon;
use narpush_e2e::fault_proxy::{Fault, FaultProxy, Operation};
use narpush_e2e::*;
use serde_json::Value;

/// The S3 API name of a proxy operation, as narpush reports it.
fn api_name(operation: Operation) -> &'static str {
    match operation {
        Operation::Head => "HeadObject",
        Operation::Get => "GetObject",
        Operation::List => "ListObjectsV2",
        Operation::PutObject => "PutObject",
        Operation::CreateMultipartUpload => "CreateMultipartUpload",
        Operation::UploadPart => "UploadPart",
        Operation::CompleteMultipartUpload => "CompleteMultipartUpload",
        Operation::AbortMultipartUpload => "AbortMultipartUpload",
        Operation::ListMultipartUploads => "ListMultipartUploads",
        Operation::DeleteObjects => "DeleteObjects",
        Operation::Other => "Other",
    }
}

/// The requests the proxy saw since `before`, by S3 API name.
fn seen_since(
    before: &BTreeMap<Operation, u64>,
    now: &BTreeMap<Operation, u64>,
) -> BTreeMap<String, u64> {
    now.iter()
        .map(|(op, n)| (api_name(*op).to_owned(), n - before.get(op).unwrap_or(&0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The `by_op` of a reported `requests` object.
fn reported(requests: &Value) -> BTreeMap<String, u64> {
    requests["by_op"]
        .as_object()
        .unwrap_or_else(|| panic!("no by_op in {requests}"))
        .iter()
        .map(|(op, n)| (op.clone(), n.as_u64().unwrap()))
        .collect()
}

/// Checks `requests` (as reported) against what the proxy saw, by operation and in total,
/// and that the classes add up; returns the total.
fn assert_counted(what: &str, requests: &Value, seen: &BTreeMap<String, u64>) -> u64 {
    assert_eq!(&reported(requests), seen, "{what}: reported against seen");
    let total = requests["total"].as_u64().unwrap();
    assert_eq!(total, seen.values().sum::<u64>(), "{what}: total");
    let classes: u64 = ["class_a", "class_b", "free"]
        .iter()
        .map(|class| requests[class].as_u64().unwrap())
        .sum();
    assert_eq!(classes, total, "{what}: classes add up to the total");
    assert!(
        requests["estimated_cost_usd"].as_f64().unwrap() > 0.0,
        "{what}"
    );
    total
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn the_requests_narpush_reports_are_the_requests_the_server_saw() {
    let s3 = S3Server::start();
    let bucket = s3.bucket("cache");
    let proxy = FaultProxy::start(s3.addr);
    // Every NAR in parts, so the multipart operations are counted too.
    let target = format!("{}&multipart-upload=true", proxy.url("cache"));
    let dir = tempfile::tempdir().unwrap();
    let (secret, public) = keygen(dir.path(), "narpush-accounting-1");

    // upload, a closure with a multipart NAR; two requests fail and are retried by the SDK.
    let paths = nix_build(
        &fixture("closure.nix"),
        &[("nonce", &unique("accounting")), ("bigMiB", "12")],
    );
    proxy.script(Operation::PutObject, Fault::ServerError);
    proxy.script(Operation::UploadPart, Fault::ServerError);
    let before = proxy.requests();
    let upload = run_ok(
        narpush()
            .args([
                "upload",
                "--json",
                "--no-upstream",
                "--to",
                &target,
                "--key",
            ])
            .arg(&secret)
            .args(&paths)
            .envs(s3.env()),
    );
    assert_eq!(proxy.injected_total(), 2, "both faults were met");
    let upload = json(&upload);
    let seen = seen_since(&before, &proxy.requests());
    assert_counted("upload", &upload["requests"], &seen);
    for op in ["PutObject", "CreateMultipartUpload", "UploadPart"] {
        assert!(seen.contains_key(op), "upload sent no {op}: {seen:?}");
    }
    assert_eq!(
        upload["requests"]["by_object"]["UploadPart"]["nar"],
        seen["UploadPart"]
    );
    let new_paths = upload["uploaded"].as_u64().unwrap();
    assert_eq!(new_paths as usize, closure(&paths).len());

    // upload again: every path is present.
    let before = proxy.requests();
    let again = json(&run_ok(
        narpush()
            .args([
                "upload",
                "--json",
                "--no-upstream",
                "--to",
                &target,
                "--key",
            ])
            .arg(&secret)
            .args(&paths)
            .envs(s3.env()),
    ));
    let seen = seen_since(&before, &proxy.requests());
    let present_total = assert_counted("upload of present paths", &again["requests"], &seen);
    assert_eq!(
        again["requests"]["class_a"], 0,
        "nothing is written: {again}"
    );
    eprintln!(
        "requests per new path: {:.1}; per present path: {:.1}",
        upload["requests"]["total"].as_u64().unwrap() as f64 / new_paths as f64,
        present_total as f64 / new_paths as f64
    );

    // The daemon: `requests` in status is every request it sent since it started.
    let before = proxy.requests();
    let daemon = Daemon::start(&format!("target = \"{target}\"\n"), s3.env());
    let pushed = single_paths("accounting-push", 2);
    proxy.script(Operation::PutObject, Fault::ServerError);
    let mut push = vec!["push", "--wait", "--timeout", "60"];
    push.extend(pushed.iter().map(String::as_str));
    let output = daemon.client(&push);
    assert!(output.status.success(), "push: {}", stderr(&output));
    daemon.wait_ok(60);
    // Settled when two reads a moment apart agree with the proxy (the daemon is idle).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = daemon.status_json();
        let seen = seen_since(&before, &proxy.requests());
        if reported(&status["requests"]) == seen || Instant::now() > deadline {
            assert_counted("the daemon", &status["requests"], &seen);
            assert!(status["enqueue_requests"]["acknowledged"].as_u64().unwrap() >= 1);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let daemon_key = daemon.public_key();
    drop(daemon);

    // verify reads the whole cache.
    let before = proxy.requests();
    let verify = run(narpush()
        .args(["verify", "--json", "--grace", "0s", "--to", &target])
        .args(["--trusted-key", &public, "--trusted-key", &daemon_key])
        .envs(s3.env()));
    assert_eq!(verify.status.code(), Some(0), "{}", stderr(&verify));
    let verify = json(&String::from_utf8_lossy(&verify.stdout));
    let seen = seen_since(&before, &proxy.requests());
    assert_counted("verify", &verify["requests"], &seen);
    assert!(seen.contains_key("ListObjectsV2"), "{seen:?}");

    // gc deletes everything (all older than 0 s after aging); its counts replace the estimate.
    age_everything(&bucket, Duration::from_secs(60 * 86400));
    let before = proxy.requests();
    let gc = json(&run_ok(
        narpush()
            .args(["gc", "--json", "--older-than", "30d", "--to", &target])
            .envs(s3.env()),
    ));
    let seen = seen_since(&before, &proxy.requests());
    assert_counted("gc", &gc["requests"], &seen);
    assert!(
        seen.contains_key("DeleteObjects"),
        "gc deleted nothing: {seen:?}"
    );
    assert!(gc["requests"]["free"].as_u64().unwrap() >= 1);
}
