//! The metrics endpoint of a real daemon (`metrics_listen`), read as Prometheus reads it and
//! parsed by the Python `prometheus_client` parser: after real hooked builds uploading to a
//! real S3 server, every counter equals what `narpush status --json` reports.

use std::net::TcpListener;
use std::time::Duration;

use narpush_e2e::daemon::{build_with_hook, Daemon};
use narpush_e2e::fault_proxy::{Fault, FaultProxy, Operation};
use narpush_e2e::metrics::{get, parse, value, Sample};
use narpush_e2e::*;

/// A daemon uploading to `target`, serving metrics on a free loopback port.
fn daemon_with_metrics(
    target: &str,
    extra: &str,
    env: Vec<(&'static str, String)>,
) -> (Daemon, std::net::SocketAddr) {
    let address = free_port();
    let daemon = Daemon::start(
        &format!("target = \"{target}\"\nmetrics_listen = \"{address}\"\n{extra}"),
        env,
    );
    (daemon, address)
}

/// Scrapes `/metrics` and checks the answer is the Prometheus text format.
fn scrape(address: std::net::SocketAddr) -> Vec<Sample> {
    let answer = get(address, "/metrics");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.content_type.starts_with("text/plain; version=0.0.4"),
        "Content-Type: {}",
        answer.content_type
    );
    parse(&answer.body)
}

/// The counters and gauges `status --json` also reports must be its numbers.
fn assert_matches_status(samples: &[Sample], status: &serde_json::Value) {
    let number = |pointer: &str| {
        status
            .pointer(pointer)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or_else(|| panic!("status has no {pointer}: {status}"))
    };
    for state in ["pending", "uploading", "done", "failed"] {
        assert_eq!(
            value(samples, "narpush_queue_entries", &[("state", state)]),
            number(&format!("/counts/{state}")),
            "queue state {state}"
        );
    }
    for (metric, labels, pointer) in [
        ("narpush_uploaded_paths_total", vec![], "/uploaded/paths"),
        (
            "narpush_uploaded_nar_bytes_total",
            vec![],
            "/uploaded/nar_bytes",
        ),
        (
            "narpush_uploaded_stored_bytes_total",
            vec![],
            "/uploaded/stored_bytes",
        ),
        (
            "narpush_skipped_paths_total",
            vec![("reason", "present")],
            "/skipped_present",
        ),
        (
            "narpush_skipped_paths_total",
            vec![("reason", "upstream")],
            "/skipped_upstream/paths",
        ),
        (
            "narpush_skipped_upstream_nar_bytes_total",
            vec![],
            "/skipped_upstream/nar_bytes",
        ),
        (
            "narpush_failures_total",
            vec![("class", "transient")],
            "/failures/transient/attempts",
        ),
        (
            "narpush_failures_total",
            vec![("class", "permanent")],
            "/failures/permanent/attempts",
        ),
        ("narpush_retries_total", vec![], "/retries"),
        (
            "narpush_requests_acknowledged_total",
            vec![],
            "/enqueue_requests/acknowledged",
        ),
        (
            "narpush_spool_ingested_total",
            vec![],
            "/enqueue_requests/spool_ingested",
        ),
        ("narpush_spool_waiting_files", vec![], "/spool/waiting"),
    ] {
        assert_eq!(
            value(samples, metric, &labels),
            number(pointer),
            "{metric} {labels:?} against status {pointer}"
        );
    }
    assert_eq!(
        value(samples, "narpush_uploads_in_flight", &[]),
        status["uploads"].as_array().map_or(0, Vec::len) as f64
    );
    // Every request series is the status document's count of that operation and object.
    let by_object = status["requests"]["by_object"].as_object().cloned();
    for (op, objects) in by_object.unwrap_or_default() {
        let class = match op.as_str() {
            "GetObject" | "HeadObject" => "B",
            "DeleteObjects" | "AbortMultipartUpload" => "free",
            _ => "A",
        };
        for (object, n) in objects.as_object().unwrap() {
            let labels = [
                ("class", class),
                ("op", op.as_str()),
                ("object", object.as_str()),
            ];
            assert_eq!(
                value(samples, "narpush_requests_total", &labels),
                n.as_f64().unwrap(),
                "narpush_requests_total {labels:?}"
            );
        }
    }
}

#[test]
fn metrics_after_hooked_builds_parse_and_equal_the_status_counters() {
    let s3 = S3Server::start();
    s3.bucket("metrics");
    // The cache's key, shared by every machine that writes to it.
    let keys = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(keys.path(), "metrics-cache-1");
    let (daemon, address) = daemon_with_metrics(
        &s3.url("metrics"),
        &format!("secret_key_files = [\"{}\"]\n", secret.display()),
        s3.env(),
    );
    // A path another machine already put in the cache: the daemon finds it there.
    let elsewhere = nix_build(&fixture("single.nix"), &[("nonce", &unique("present"))]).remove(0);
    run_ok(
        narpush()
            .args(["upload", "--to", &s3.url("metrics"), "--key"])
            .arg(&secret)
            .arg(&elsewhere)
            .envs(s3.env()),
    );
    // A fresh closure through the real hook.
    let (tops, built) = build_with_hook(
        &fixture("closure.nix"),
        &[("nonce", &unique("metrics")), ("bigMiB", "2")],
        &daemon.hook_env(),
    );
    assert!(built.status.success(), "nix-build: {}", stderr(&built));
    daemon.wait_ok(120);
    let pushed = daemon.client(&["push", &elsewhere]);
    assert!(pushed.status.success(), "push: {}", stderr(&pushed));
    daemon.wait_ok(60);

    let samples = scrape(address);
    let status = daemon.status_json();
    assert_matches_status(&samples, &status);

    let closure = closure(&tops);
    assert_eq!(
        value(&samples, "narpush_uploaded_paths_total", &[]),
        closure.len() as f64,
        "every path of the closure was uploaded once"
    );
    assert!(value(&samples, "narpush_uploaded_nar_bytes_total", &[]) > 2.0 * 1024.0 * 1024.0);
    assert!(value(&samples, "narpush_uploaded_stored_bytes_total", &[]) > 0.0);
    assert!(
        value(
            &samples,
            "narpush_skipped_paths_total",
            &[("reason", "present")]
        ) >= 1.0
    );
    assert!(value(&samples, "narpush_requests_acknowledged_total", &[]) >= 2.0);
    assert!(
        value(
            &samples,
            "narpush_requests_total",
            &[("class", "A"), ("op", "PutObject"), ("object", "narinfo")]
        ) >= closure.len() as f64,
        "a narinfo PUT per path of the closure at least"
    );
    assert!(value(&samples, "narpush_queue_entries", &[("state", "done")]) >= 1.0);
    assert_eq!(
        value(
            &samples,
            "narpush_failures_total",
            &[("class", "transient")]
        ),
        0.0
    );
    // Every NAR stored is in the histograms, and the last upload is recent.
    assert_eq!(
        value(&samples, "narpush_nar_upload_duration_seconds_count", &[]),
        closure.len() as f64
    );
    assert_eq!(
        value(&samples, "narpush_nar_upload_size_bytes_sum", &[]),
        value(&samples, "narpush_uploaded_nar_bytes_total", &[])
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let last = value(&samples, "narpush_last_upload_timestamp_seconds", &[]);
    assert!(
        now - last < 300.0 && now >= last - 1.0,
        "last upload at {last}, now {now}"
    );
    let version = samples
        .iter()
        .find(|s| s.name == "narpush_build_info")
        .expect("build info");
    assert_eq!(version.value, 1.0);
    assert!(version.labels.contains_key("version"));
    let counter = samples
        .iter()
        .find(|s| s.name == "narpush_retries_total")
        .unwrap();
    assert_eq!(counter.family_type, "counter");
    // Nothing names a store path or the target.
    let text = get(address, "/metrics").body;
    assert!(
        !text.contains("/nix/store") && !text.contains("metrics?endpoint"),
        "{text}"
    );

    assert_eq!(get(address, "/").status, 404);
    assert_eq!(get(address, "/metrics/extra").status, 404);
}

#[test]
fn failed_attempts_and_retries_are_counted_by_class() {
    let s3 = S3Server::start();
    s3.bucket("refusing");
    let proxy = FaultProxy::start(s3.addr);
    // Every object write fails with a 500: each attempt fails (transient), is retried once,
    // then the path fails for good.
    proxy.randomize(
        1,
        1000,
        &[Fault::ServerError],
        Some(&[Operation::PutObject]),
    );
    let (daemon, address) = daemon_with_metrics(
        &proxy.url("refusing"),
        "max_attempts = 2\nretry_initial_delay_ms = 100\nretry_max_delay_ms = 200",
        s3.env(),
    );
    let path = nix_build(
        &fixture("single.nix"),
        &[("nonce", &unique("metrics-fail"))],
    )
    .remove(0);
    let pushed = daemon.client(&["push", &path]);
    assert!(pushed.status.success(), "push: {}", stderr(&pushed));
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while daemon.status_json()["counts"]["failed"] != 1 {
        assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
        std::thread::sleep(Duration::from_millis(200));
    }

    let samples = scrape(address);
    let status = daemon.status_json();
    assert_matches_status(&samples, &status);
    assert_eq!(
        value(&samples, "narpush_queue_entries", &[("state", "failed")]),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "narpush_failures_total",
            &[("class", "transient")]
        ),
        2.0
    );
    assert_eq!(value(&samples, "narpush_retries_total", &[]), 1.0);
    assert_eq!(value(&samples, "narpush_uploaded_paths_total", &[]), 0.0);
    assert_eq!(
        value(&samples, "narpush_last_upload_timestamp_seconds", &[]),
        0.0
    );
    let text = String::from_utf8_lossy(&daemon.client(&["status"]).stdout).into_owned();
    assert!(
        text.contains("failures:    2 transient (1 retried), 0 permanent")
            && text.lines().any(|l| l.starts_with("last transient: ")),
        "{text}"
    );
    assert!(
        status["failures"]["transient"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("gave up") || e.contains("500") || e.contains("Internal")),
        "{status}"
    );
}

#[test]
fn a_metrics_address_in_use_stops_the_daemon_with_an_error_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let daemon = Daemon::configure(&format!("metrics_listen = \"{address}\""), vec![]);
    let output = run(narpush()
        .env("NARPUSH_CONFIG", &daemon.config)
        .env_remove("NARPUSH_SOCKET")
        .env_remove("NARPUSH_SPOOL_DIR")
        .arg("daemon"));
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains(&address.to_string()) && message.contains("metrics_listen"),
        "{message}"
    );
    drop(taken);
}

#[test]
fn spooled_requests_are_counted_and_a_connected_scraper_does_not_hold_up_shutdown() {
    let address = free_port();
    let mut daemon = Daemon::configure(&format!("metrics_listen = \"{address}\""), vec![]);
    // The daemon is not running: the hook spools the request, and the daemon reads it at start.
    let (paths, built) = build_with_hook(
        &fixture("single.nix"),
        &[("nonce", &unique("metrics-spool"))],
        &daemon.hook_env(),
    );
    assert!(built.status.success(), "nix-build: {}", stderr(&built));
    assert_eq!(daemon.spooled().len(), 1);
    daemon.spawn();
    daemon.wait_ok(60);

    let samples = scrape(address);
    assert_matches_status(&samples, &daemon.status_json());
    assert_eq!(value(&samples, "narpush_spool_ingested_total", &[]), 1.0);
    assert_eq!(
        value(&samples, "narpush_requests_acknowledged_total", &[]),
        0.0
    );
    assert_eq!(
        value(&samples, "narpush_uploaded_paths_total", &[]),
        paths.len() as f64
    );

    // A scraper that keeps its connection open, as Prometheus does between scrapes.
    let mut scraper = std::net::TcpStream::connect(address).unwrap();
    std::io::Write::write_all(
        &mut scraper,
        format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut first = [0u8; 12];
    std::io::Read::read_exact(&mut scraper, &mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let stopping = std::time::Instant::now();
    let stopped = daemon.terminate();
    assert!(stopped.success(), "{stopped}\n{}", daemon.log());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        stopping.elapsed()
    );
}
