//! The hook and the spool end to end: real Nix builds with `narpush-hook` as their
//! post-build-hook, with the daemon down, hung or running; the spool files the hook leaves and
//! how the daemon takes them.

use std::time::{Duration, Instant};

use narpush_e2e::daemon::{build_with_hook, spooled, Daemon};
use narpush_e2e::*;

#[test]
fn builds_succeed_while_the_daemon_is_down_and_spooled_requests_are_uploaded_later() {
    let s3 = S3Server::start();
    s3.bucket("cache");
    let mut daemon = Daemon::configure(&format!("target = \"{}\"", s3.url("cache")), s3.env());
    let run = unique("down");
    let mut outputs = Vec::new();
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let (paths, build) = build_with_hook(
            &fixture("single.nix"),
            &[("nonce", &format!("{run}-{i}"))],
            &daemon.hook_env(),
        );
        slowest = slowest.max(started.elapsed());
        assert!(build.status.success(), "build {i}: {}", stderr(&build));
        assert!(stderr(&build).contains("spooled to"), "{}", stderr(&build));
        outputs.push(paths[0].clone());
    }
    assert_eq!(daemon.spooled().len(), 20);
    // Each build (evaluation included) stays far from the hook's 3 s deadline.
    assert!(
        slowest < Duration::from_secs(3),
        "slowest build took {slowest:?}"
    );

    daemon.spawn();
    daemon.wait_ok(120);
    assert!(
        daemon.spooled().is_empty(),
        "spool not emptied: {:?}",
        daemon.spooled()
    );
    let bucket = s3.root.path().join("cache");
    for output in &outputs {
        let narinfo = bucket.join(format!("{}.narinfo", hash_part(output)));
        assert!(narinfo.exists(), "{output} not uploaded");
    }
}

#[test]
fn a_daemon_that_accepts_but_never_answers_does_not_hold_the_build() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("hung.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let holder = std::thread::spawn(move || {
        // Accept and keep every connection open without a word.
        let mut held = Vec::new();
        for stream in listener.incoming().take(1) {
            held.push(stream);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let spool = dir.path().join("spool");
    let started = Instant::now();
    let (paths, build) = build_with_hook(
        &fixture("single.nix"),
        &[("nonce", &unique("hung"))],
        &[
            ("NARPUSH_SOCKET", socket),
            ("NARPUSH_SPOOL_DIR", spool.clone()),
        ],
    );
    let took = started.elapsed();
    assert!(build.status.success(), "{}", stderr(&build));
    assert!(took < Duration::from_secs(10), "the build waited {took:?}");
    let files = spooled(&spool);
    assert_eq!(files.len(), 1, "{}", stderr(&build));
    let request = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        request.starts_with("narpush 1 enqueue\nsource hook\ndrv /nix/store/"),
        "{request}"
    );
    assert!(!paths.is_empty());
    drop(holder);
}

#[test]
fn the_hook_exits_zero_and_says_why_when_even_the_spool_fails() {
    let out = nix_build(&fixture("single.nix"), &[("nonce", "spool-fails")]).remove(0);
    let hook = |env: &[(&str, &str)]| {
        let mut command = command(bin("narpush-hook"));
        command.env_clear();
        for (name, value) in env {
            command.env(name, value);
        }
        run(&mut command)
    };
    let unspoolable = hook(&[
        ("OUT_PATHS", &out),
        ("NARPUSH_SOCKET", "/nonexistent/narpush.sock"),
        ("NARPUSH_SPOOL_DIR", "/proc/narpush-spool"),
    ]);
    assert!(unspoolable.status.success());
    let message = stderr(&unspoolable);
    assert!(
        message.contains("spooling to /proc/narpush-spool failed"),
        "{message}"
    );
    assert_eq!(
        message.lines().count(),
        1,
        "one line, not a backtrace: {message}"
    );

    let nothing = hook(&[]);
    assert!(nothing.status.success());
    assert!(
        stderr(&nothing).contains("neither DRV_PATH nor OUT_PATHS"),
        "{}",
        stderr(&nothing)
    );
}

#[test]
fn spool_files_written_while_the_daemon_runs_are_taken_and_bad_ones_set_aside() {
    let daemon = Daemon::start("", vec![]);
    let out = nix_build(&fixture("single.nix"), &[("nonce", &unique("live-spool"))]).remove(0);
    // Written as the hook writes: a hidden temporary file, renamed into place.
    let spool = |name: &str, bytes: &[u8]| {
        let temporary = daemon.spool.join(format!(".{name}.tmp"));
        std::fs::write(&temporary, bytes).unwrap();
        std::fs::rename(&temporary, daemon.spool.join(name)).unwrap();
    };
    spool(
        "1-1.request",
        format!("narpush 1 enqueue\nsource hook\nout {out}\nend\n").as_bytes(),
    );
    spool("2-2.request", b"narpush 1 enqueue\nout /etc/passwd\nend\n");
    spool("3-3.request", b"\x00garbage");

    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon.spooled().is_empty() {
        assert!(
            Instant::now() < deadline,
            "spool not taken: {:?}",
            daemon.spooled()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The good request is uploaded; `wait` fails on the two rejected ones, naming them.
    let cache = daemon.state.join("cache");
    let narinfo = cache.join(format!("{}.narinfo", hash_part(&out)));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !narinfo.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(narinfo.exists(), "{}", daemon.log());
    let waited = daemon.wait(60);
    assert_eq!(waited.status.code(), Some(1), "{}", stderr(&waited));
    assert!(
        stderr(&waited).contains("2-2.request") && stderr(&waited).contains("3-3.request"),
        "{}",
        stderr(&waited)
    );

    let rejected = daemon.spool.join("rejected");
    let reason =
        |name: &str| std::fs::read_to_string(rejected.join(format!("{name}.reason"))).unwrap();
    assert!(rejected.join("2-2.request").exists() && rejected.join("3-3.request").exists());
    assert!(
        reason("2-2.request").contains("'/etc/passwd' is not a store path"),
        "{}",
        reason("2-2.request")
    );
    assert!(
        reason("3-3.request").contains("malformed request"),
        "{}",
        reason("3-3.request")
    );
    assert_eq!(daemon.status_json()["counts"]["done"], 1);
}

#[test]
fn a_spooled_request_naming_a_vanished_path_queues_its_other_paths() {
    let daemon = Daemon::start("", vec![]);
    let out = nix_build(&fixture("single.nix"), &[("nonce", &unique("vanished"))]).remove(0);
    // A valid store path that is not in the store, as one a GC removed while the daemon was
    // away.
    let vanished = format!("/nix/store/{}-narpush-vanished", "1".repeat(32));
    let temporary = daemon.spool.join(".1-1.request.tmp");
    std::fs::write(
        &temporary,
        format!("narpush 1 enqueue\nsource hook\nout {vanished}\nout {out}\nend\n"),
    )
    .unwrap();
    std::fs::rename(&temporary, daemon.spool.join("1-1.request")).unwrap();

    let narinfo = daemon
        .state
        .join("cache")
        .join(format!("{}.narinfo", hash_part(&out)));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !narinfo.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(narinfo.exists(), "{}", daemon.log());
    daemon.wait_ok(60);
    assert!(daemon.spooled().is_empty(), "{:?}", daemon.spooled());
    assert!(!daemon.spool.join("rejected").join("1-1.request").exists());
    assert!(
        daemon.log().contains(&vanished) && daemon.log().contains("no longer in the store"),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_derivation_whose_drv_file_is_not_utf8_is_queued_and_uploaded() {
    let daemon = Daemon::start("", vec![]);
    let bytes = daemon.dir.path().join("latin1.bin");
    std::fs::write(&bytes, b"caf\xe9 \xff\xfe").unwrap();
    let (paths, build) = build_with_hook(
        &fixture("latin1.nix"),
        &[
            ("nonce", &unique("latin1")),
            ("bytesFile", &bytes.display().to_string()),
        ],
        &daemon.hook_env(),
    );
    assert!(build.status.success(), "{}", stderr(&build));
    assert!(!stderr(&build).contains("spooled"), "{}", stderr(&build));
    daemon.wait_ok(60);
    let narinfo = daemon
        .state
        .join("cache")
        .join(format!("{}.narinfo", hash_part(&paths[0])));
    assert!(narinfo.exists(), "{}", daemon.log());
}

#[test]
fn rejected_spool_files_are_listed_by_status_and_fail_wait() {
    let mut daemon = Daemon::configure("", vec![]);
    let (paths, build) = build_with_hook(
        &fixture("single.nix"),
        &[("nonce", &unique("rejected"))],
        &daemon.hook_env(),
    );
    assert!(stderr(&build).contains("spooled to"), "{}", stderr(&build));
    std::fs::write(daemon.spool.join("1-1.request"), "not a request\n").unwrap();
    std::os::unix::fs::symlink("/etc/hostname", daemon.spool.join("1-2.request")).unwrap();
    daemon.spawn();

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = daemon.status_json();
        if status["spool"]["rejected_total"] == 2 || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status["spool"]["rejected_total"], 2, "{status}");
    let reasons = status["spool"]["rejected"].to_string();
    assert!(reasons.contains("malformed request"), "{reasons}");
    assert!(reasons.contains("a symbolic link"), "{reasons}");

    let waited = daemon.wait(60);
    assert_eq!(waited.status.code(), Some(1), "{}", stderr(&waited));
    assert!(
        stderr(&waited).contains("1-1.request"),
        "{}",
        stderr(&waited)
    );
    let narinfo = daemon
        .state
        .join("cache")
        .join(format!("{}.narinfo", hash_part(&paths[0])));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !narinfo.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        narinfo.exists(),
        "the valid spooled request was not uploaded"
    );
    let shown = daemon.client(&["status"]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("REJECTED:"),
        "{}",
        String::from_utf8_lossy(&shown.stdout)
    );
}

#[test]
fn a_build_log_over_the_configured_limit_is_skipped_and_the_path_still_uploads() {
    let s3 = S3Server::start();
    s3.bucket("cache");
    // The build prints "built <nonce>", well over 16 bytes.
    let daemon = Daemon::start(
        &format!(
            "target = \"{}\"\nupload_build_logs = true\nmax_build_log_bytes = 16",
            s3.url("cache")
        ),
        s3.env(),
    );
    let (paths, build) = build_with_hook(
        &fixture("single.nix"),
        &[("nonce", &unique("biglog"))],
        &daemon.hook_env(),
    );
    assert!(build.status.success(), "{}", stderr(&build));
    daemon.wait_ok(120);
    let bucket = s3.root.path().join("cache");
    let narinfo = bucket.join(format!("{}.narinfo", hash_part(&paths[0])));
    assert!(narinfo.exists(), "{} not uploaded", paths[0]);
    // The log is handled after the path is done, so wait for the daemon to say it skipped it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon.log().contains("no build log uploaded") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = daemon.log();
    assert!(
        log.contains("no build log uploaded") && log.contains("larger than 16 bytes"),
        "no line about the skipped log:\n{log}"
    );
    assert!(
        !bucket.join("log").exists() || snapshot(&bucket.join("log")).is_empty(),
        "a log over the limit was uploaded"
    );
}

#[test]
fn the_hook_refuses_a_symlinked_spool_directory_writes_nothing_through_it_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let spool = dir.path().join("spool");
    std::os::unix::fs::symlink(&elsewhere, &spool).unwrap();
    let output = run(command(bin("narpush-hook"))
        .env("NARPUSH_SOCKET", dir.path().join("absent.sock"))
        .env("NARPUSH_SPOOL_DIR", &spool)
        .env(
            "OUT_PATHS",
            "/nix/store/9jm1vj6j3ixsz2x5s77jxchbljjfn6s6-hello",
        )
        .env_remove("DRV_PATH"));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("symbolic link"),
        "{}",
        stderr(&output)
    );
    let written: Vec<_> = std::fs::read_dir(&elsewhere).unwrap().collect();
    assert!(written.is_empty(), "written through the link: {written:?}");
}

#[test]
fn stale_temporary_files_vanish_when_the_daemon_starts_and_fresh_ones_stay() {
    let mut daemon = Daemon::configure("", vec![]);
    let nar_dir = daemon.state.join("cache").join("nar");
    std::fs::create_dir_all(&daemon.spool).unwrap();
    std::fs::create_dir_all(&nar_dir).unwrap();
    let stale = [
        daemon.spool.join(".1-2.request.tmp"),
        nar_dir.join(".narpush-stale.tmp"),
    ];
    let fresh = [
        daemon.spool.join(".3-4.request.tmp"),
        nar_dir.join(".narpush-fresh.tmp"),
    ];
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for file in stale.iter().chain(&fresh) {
        std::fs::write(file, "partial").unwrap();
    }
    for file in &stale {
        std::fs::File::options()
            .write(true)
            .open(file)
            .unwrap()
            .set_modified(two_hours_ago)
            .unwrap();
    }
    daemon.spawn();
    // The spool is scanned right after the start, the cache opened before it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stale.iter().any(|f| f.exists()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for file in &stale {
        assert!(!file.exists(), "{} is still there", file.display());
    }
    for file in &fresh {
        assert!(file.exists(), "{} was removed", file.display());
    }
}
