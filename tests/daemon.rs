//! The hook and the daemon end to end: real Nix builds with `narpush-hook` as their
//! post-build-hook, a real `narpush daemon`, a real S3 server (s3s-fs, SigV4), and stock Nix
//! substituting the result with signatures required.

use std::path::Path;
use std::time::{Duration, Instant};

use narpush_e2e::daemon::{build_with_hook, Daemon};
use narpush_e2e::*;

/// A daemon uploading to an S3 server that is down, with fast retries, and one path built
/// through the hook and now waiting in its queue.
fn queued_while_s3_is_down(nonce: &str, extra: &str) -> (S3Server, Daemon, String) {
    let mut s3 = S3Server::start();
    let daemon = s3_daemon(&s3, "cache", extra);
    s3.stop();
    let (paths, build) = build_with_hook(
        &fixture("single.nix"),
        &[("nonce", &unique(nonce))],
        &daemon.hook_env(),
    );
    assert!(build.status.success(), "{}", stderr(&build));
    (s3, daemon, paths[0].clone())
}

/// After `narpush wait` succeeds, the path's narinfo is in the bucket.
fn assert_uploaded_after_wait(daemon: &Daemon, s3: &S3Server, path: &str) {
    daemon.wait_ok(120);
    let narinfo = format!("cache/{}.narinfo", hash_part(path));
    assert!(s3.root.path().join(narinfo).exists(), "{path} not uploaded");
}

fn s3_daemon(s3: &S3Server, bucket: &str, extra: &str) -> Daemon {
    s3.bucket(bucket);
    Daemon::start(
        &format!("target = \"{}\"\n{extra}", s3.url(bucket)),
        s3.env(),
    )
}

#[test]
fn hook_built_closure_reaches_s3_and_stock_nix_substitutes_it() {
    let s3 = S3Server::start();
    let daemon = s3_daemon(&s3, "cache", "upload_build_logs = true");
    let (paths, build) = build_with_hook(
        &fixture("closure.nix"),
        &[("nonce", &unique("hook")), ("bigMiB", "9")],
        &daemon.hook_env(),
    );
    assert!(build.status.success(), "build: {}", stderr(&build));
    daemon.wait_ok(120);
    assert!(
        daemon.spooled().is_empty(),
        "the hook spooled instead of using the socket"
    );

    let top = &paths[0];
    let closure = closure(std::slice::from_ref(top));
    let bucket = s3.root.path().join("cache");
    assert_eq!(narinfos(&bucket).len(), closure.len());
    assert_closure_invariant(&bucket);
    let cache_url = format!("file://{}", bucket.display());
    let (_, substituted) = substitute(&cache_url, &daemon.public_key(), std::slice::from_ref(top));
    assert!(substituted.status.success(), "{}", stderr(&substituted));
    // The build log went up too (asked for), where `nix log` looks for it.
    assert!(
        snapshot(&bucket.join("log"))
            .keys()
            .any(|k| k.to_string_lossy().ends_with("narpush-top.drv")),
        "no log/…-narpush-top.drv in the bucket"
    );
}

#[test]
fn kill_9_during_a_multipart_upload_loses_nothing_and_never_publishes_a_dangling_narinfo() {
    let s3 = S3Server::start();
    let mut daemon = s3_daemon(&s3, "cache", "jobs = 1\nsingle_put_max_bytes = 0");
    let bucket = s3.root.path().join("cache");
    let (paths, build) = build_with_hook(
        &fixture("closure.nix"),
        &[("nonce", &unique("kill")), ("bigMiB", "120")],
        &daemon.hook_env(),
    );
    assert!(build.status.success(), "{}", stderr(&build));

    // Watch the bucket the whole time: the closure invariant must hold at every moment.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let bucket = bucket.clone();
        std::thread::spawn(move || {
            let mut checks = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_closure_invariant(&bucket);
                checks += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            checks
        })
    };

    let deadline = Instant::now() + Duration::from_secs(60);
    let mut killed_at = None;
    while killed_at.is_none() && Instant::now() < deadline {
        let status = daemon.status_json();
        let done = status["uploads"]
            .as_array()
            .and_then(|uploads| uploads.first())
            .and_then(|largest| largest["nar_bytes_done"].as_u64())
            .unwrap_or(0);
        if done > 20 << 20 {
            daemon.kill_9();
            killed_at = Some(done);
        }
    }
    let killed_at = killed_at.expect("never saw the big upload in progress");
    assert!(
        narinfos(&bucket).len() < closure(&paths[..1]).len(),
        "all was done before the kill"
    );

    daemon.spawn();
    let waited = daemon.wait(180);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let checks = watcher
        .join()
        .expect("the closure invariant held throughout");
    assert!(
        waited.status.success(),
        "{}\n{}",
        stderr(&waited),
        daemon.log()
    );
    assert!(checks > 10, "the bucket was checked only {checks} times");
    assert_eq!(narinfos(&bucket).len(), closure(&paths[..1]).len());
    let (_, substituted) = substitute(
        &format!("file://{}", bucket.display()),
        &daemon.public_key(),
        &paths[..1],
    );
    assert!(
        substituted.status.success(),
        "after kill at {killed_at}: {}",
        stderr(&substituted)
    );
    let verified = run(command("nix")
        .args(["store", "verify", "--store"])
        .arg(format!("file://{}", bucket.display()))
        .args(["--trusted-public-keys", &daemon.public_key(), "-r"])
        .arg(&paths[0]));
    assert!(
        verified.status.success(),
        "nix store verify: {}",
        stderr(&verified)
    );
}

#[test]
fn an_s3_outage_is_retried_and_shown_in_status_until_the_server_returns() {
    let (mut s3, daemon, path) = queued_while_s3_is_down(
        "outage",
        "retry_initial_delay_ms = 200\nretry_max_delay_ms = 1000\nmax_attempts = 1000",
    );

    let deadline = Instant::now() + Duration::from_secs(60);
    let retrying = loop {
        let status = daemon.status_json();
        let retrying = status["retrying"].as_array().cloned().unwrap_or_default();
        if retrying.iter().any(|r| r["attempts"].as_u64() >= Some(2)) {
            break retrying;
        }
        assert!(Instant::now() < deadline, "no retries shown: {status}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        retrying[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("nix-cache-info"),
        "{retrying:?}"
    );
    // Between two retries the path is being attempted again (and is listed as uploading), so
    // the text is read until it shows the path waiting, as the JSON did.
    loop {
        let text = daemon.client(&["status"]);
        let text = String::from_utf8_lossy(&text.stdout).into_owned();
        if text.contains("retrying:") {
            break;
        }
        assert!(Instant::now() < deadline, "no retries shown: {text}");
        std::thread::sleep(Duration::from_millis(50));
    }

    s3.restart();
    assert_uploaded_after_wait(&daemon, &s3, &path);
}

#[test]
fn queued_paths_are_protected_from_garbage_collection_until_uploaded() {
    let (mut s3, daemon, path) = queued_while_s3_is_down(
        "gc",
        "retry_initial_delay_ms = 200\nretry_max_delay_ms = 500",
    );
    let refused = run(command("nix-store").args(["--delete", &path]));
    assert!(!refused.status.success(), "a queued path was deleted");
    assert!(stderr(&refused).contains("alive"), "{}", stderr(&refused));

    s3.restart();
    assert_uploaded_after_wait(&daemon, &s3, &path);
    let deleted = run(command("nix-store").args(["--delete", &path]));
    assert!(
        deleted.status.success(),
        "after upload: {}",
        stderr(&deleted)
    );
    assert!(!Path::new(&path).exists());
}

#[test]
fn sigterm_stops_cleanly_and_unfinished_work_resumes_after_restart() {
    let (mut s3, mut daemon, path) = queued_while_s3_is_down(
        "term",
        "retry_initial_delay_ms = 100\nretry_max_delay_ms = 200",
    );
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status}\n{}", daemon.log());
    assert!(!daemon.socket.exists(), "the socket file was left behind");

    s3.restart();
    daemon.spawn();
    assert_uploaded_after_wait(&daemon, &s3, &path);
}

#[test]
fn push_then_wait_uploads_into_the_embedded_default_cache() {
    let daemon = Daemon::start("", vec![]);
    let (paths, build) = build_with_hook(
        &fixture("single.nix"),
        &[("nonce", &unique("push"))],
        &no_daemon(),
    );
    assert!(build.status.success());
    let pushed = daemon.client(&["push", "--wait", "--timeout", "60", &paths[0]]);
    assert!(
        pushed.status.success(),
        "{}\n{}",
        stderr(&pushed),
        daemon.log()
    );
    // The embedded default: a directory cache and a generated 0600 key under state_dir.
    let cache = daemon.state.join("cache");
    assert!(cache
        .join(format!("{}.narinfo", hash_part(&paths[0])))
        .exists());
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(daemon.state.join("signing-key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);
    let (_, substituted) = substitute(
        &format!("file://{}", cache.display()),
        &daemon.public_key(),
        &paths[..1],
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}

#[test]
fn a_permanent_failure_is_reported_by_status_and_wait_and_retry_requeues_it() {
    let s3 = S3Server::start();
    s3.bucket("cache");
    let mut env = s3.env();
    env[1].1 = "not-the-secret".to_owned();
    let daemon = Daemon::start(&format!("target = \"{}\"", s3.url("cache")), env);
    let (paths, build) = build_with_hook(
        &fixture("single.nix"),
        &[("nonce", &unique("denied"))],
        &daemon.hook_env(),
    );
    assert!(build.status.success());
    let waited = daemon.wait(60);
    assert_eq!(waited.status.code(), Some(1), "{}", stderr(&waited));
    let message = stderr(&waited);
    assert!(
        message.contains(&paths[0]) && message.contains("rejected the credentials"),
        "{message}"
    );
    let status = daemon.status_json();
    assert_eq!(status["counts"]["failed"], 1, "{status}");
    assert_eq!(
        status["failed"][0]["attempts"], 1,
        "permanent errors are not retried: {status}"
    );

    let retried = daemon.client(&["retry", "--all"]);
    assert!(retried.status.success());
    assert!(
        stderr(&retried).contains("requeued 1"),
        "{}",
        stderr(&retried)
    );
}

fn no_daemon() -> Vec<(&'static str, std::path::PathBuf)> {
    vec![
        ("NARPUSH_SOCKET", "/nonexistent/narpush.sock".into()),
        ("NARPUSH_SPOOL_DIR", "/nonexistent/spool".into()),
    ]
}

#[test]
fn socket_activation_and_readiness_work_as_systemd_expects() {
    let daemon = Daemon::configure("", vec![]);
    // systemd-socket-activate binds the socket and starts the daemon with LISTEN_FDS/LISTEN_PID
    // set, as systemd does for narpush.socket; NOTIFY_SOCKET receives READY=1.
    let notify_path = daemon.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut activated = command("systemd-socket-activate");
    activated
        .env("NARPUSH_CONFIG", &daemon.config)
        .env("NOTIFY_SOCKET", &notify_path)
        .arg("--listen")
        .arg(&daemon.socket)
        .args([
            "-E",
            "NARPUSH_CONFIG",
            "-E",
            "NOTIFY_SOCKET",
            "-E",
            "NIX_CONFIG",
            "-E",
            "PATH",
        ])
        .arg(bin("narpush"))
        .arg("daemon")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = activated
        .spawn()
        .expect("systemd-socket-activate (from systemd)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon.socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the activator never bound the socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first connection starts the daemon, which serves it on the inherited socket.
    let status = daemon.client(&["status", "--json"]);
    let mut ready = [0u8; 256];
    let received = notify.recv(&mut ready);
    let _ = child.kill();
    let _ = child.wait();
    assert!(status.status.success(), "{}", stderr(&status));
    let n = received.expect("READY=1 within 20 s");
    assert!(String::from_utf8_lossy(&ready[..n]).contains("READY=1"));
}

#[test]
fn sighup_applies_a_valid_config_and_keeps_the_old_one_when_the_new_is_broken() {
    let daemon = Daemon::start("", vec![]);
    let original = std::fs::read_to_string(&daemon.config).unwrap();
    let hangup = || {
        run(std::process::Command::new("kill").args(["-HUP", &daemon.pid().to_string()]));
    };
    let target_after = |expected: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let target = daemon.status_json()["target"].as_str().unwrap().to_owned();
            if target == expected || Instant::now() > deadline {
                return target;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let default_target = format!("file://{}", daemon.state.join("cache").display());
    assert_eq!(target_after(&default_target), default_target);

    std::fs::write(&daemon.config, format!("{original}\njbos = 3\n")).unwrap();
    hangup();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        target_after(&default_target),
        default_target,
        "a broken config was applied"
    );
    assert!(
        daemon.log().contains("jbos"),
        "the reason was not logged:\n{}",
        daemon.log()
    );

    let elsewhere = daemon.dir.path().join("other-cache");
    std::fs::write(
        &daemon.config,
        format!("{original}\ntarget = \"file://{}\"\n", elsewhere.display()),
    )
    .unwrap();
    hangup();
    let wanted = format!("file://{}", elsewhere.display());
    assert_eq!(target_after(&wanted), wanted);
}

#[test]
fn a_store_that_cannot_answer_is_retried_not_failed() {
    // No `nix` on the daemon's PATH: `nix path-info` cannot run, which says nothing about the
    // path itself.
    let daemon = Daemon::start(
        "retry_initial_delay_ms = 100\nretry_max_delay_ms = 200",
        vec![("PATH", "/nonexistent".to_owned())],
    );
    let path = nix_build(&fixture("single.nix"), &[("nonce", &unique("nonix"))]).remove(0);
    let pushed = daemon.client(&["push", &path]);
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = daemon.status_json();
        let retried = status["retrying"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["attempts"].as_u64() >= Some(2)));
        if retried || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["counts"]["failed"], 0, "{status}");
    assert!(
        status["retrying"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("nix")),
        "{status}"
    );
}

#[test]
fn sigterm_lets_an_upload_in_flight_finish_before_the_daemon_exits() {
    let s3 = S3Server::start();
    let mut daemon = s3_daemon(&s3, "cache", "jobs = 1");
    let bucket = s3.root.path().join("cache");
    let (paths, build) = build_with_hook(
        &fixture("closure.nix"),
        &[("nonce", &unique("drain")), ("bigMiB", "120")],
        &daemon.hook_env(),
    );
    assert!(build.status.success(), "{}", stderr(&build));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut in_flight = None;
    while in_flight.is_none() && Instant::now() < deadline {
        let status = daemon.status_json();
        let largest = status["uploads"]
            .as_array()
            .and_then(|u| u.first())
            .cloned();
        if let Some(largest) = largest {
            let done = largest["nar_bytes_done"].as_u64().unwrap_or(0);
            if done > 5 << 20 && done < 60 << 20 {
                in_flight = largest["path"].as_str().map(str::to_owned);
            }
        }
    }
    let big = in_flight.expect("never saw the big upload in progress");
    let stopping = Instant::now();
    let stopped = daemon.terminate();
    let drained_for = stopping.elapsed();
    assert!(stopped.success(), "{stopped}\n{}", daemon.log());
    // The drain finished the upload instead of cutting it off.
    assert!(
        bucket.join(format!("{}.narinfo", hash_part(&big))).exists(),
        "the upload in flight was not finished during the drain ({drained_for:?})\n{}",
        daemon.log()
    );
    assert!(drained_for < Duration::from_secs(40), "{drained_for:?}");
    eprintln!("drain took {drained_for:?}");
    assert_closure_invariant(&bucket);

    daemon.spawn();
    daemon.wait_ok(120);
    assert_eq!(narinfos(&bucket).len(), closure(&paths[..1]).len());
    assert_closure_invariant(&bucket);
}
