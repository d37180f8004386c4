//! `narpush exec -- COMMAND` end to end: real Nix builds inside COMMAND with the hook that exec
//! registers through `NIX_CONFIG`, exec's own private daemon, real uploads (a directory cache
//! or s3s-fs), and stock Nix substituting the result with signatures required.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use narpush_e2e::*;

/// `narpush exec` with the embedded default state kept in `state` (no config file).
fn exec(state: &Path) -> Command {
    let mut command = narpush();
    command.env("NARPUSH_STATE_DIR", state).arg("exec");
    command
}

/// A shell command line that builds `fixture` with the suite's settings.
fn nix_build_line(fixture_name: &str, nonce: &str, extra: &str) -> String {
    format!(
        "nix-build '{}' --no-out-link --argstr nonce '{nonce}' {extra}",
        fixture(fixture_name).display()
    )
}

#[test]
fn every_built_path_is_uploaded_before_exec_returns_and_client_config_lines_substitute_it() {
    let state = tempfile::tempdir().unwrap();
    let nonce = unique("exec-default");
    let output = run(exec(state.path())
        .args(["--", "sh", "-c"])
        .arg(nix_build_line("closure.nix", &nonce, "--argstr bigMiB 3")));
    assert!(output.status.success(), "exec: {}", stderr(&output));
    let top = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let closure = closure(std::slice::from_ref(&top));

    // Nothing waited on after exec returned: the embedded default cache holds it all already.
    let cache = state.path().join("cache");
    assert_eq!(narinfos(&cache).len(), closure.len(), "{}", stderr(&output));
    assert_closure_invariant(&cache);
    assert!(!stderr(&output).contains("warning"), "{}", stderr(&output));

    let lines = run_ok(
        narpush()
            .env("NARPUSH_STATE_DIR", state.path())
            .arg("client-config"),
    );
    assert!(
        lines.starts_with(&format!(
            "extra-substituters = file://{}\n",
            cache.display()
        )),
        "{lines}"
    );
    let (store, substituted) = substitute_with_client_config(&lines, std::slice::from_ref(&top));
    assert!(substituted.status.success(), "{}", stderr(&substituted));
    for path in &closure {
        assert!(store.path().join(path.trim_start_matches('/')).exists());
    }
}

#[test]
fn command_status_is_passed_through_and_its_builds_are_uploaded_anyway() {
    let state = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let key = run(Command::new(bin("narpush")).args(["keygen", "exec-env-1"]));
    let public = String::from_utf8(key.stderr).unwrap().trim().to_owned();
    let nonce = unique("exec-status");
    let script = format!("{} > out; exit 7", nix_build_line("single.nix", &nonce, ""));
    let output = run(exec(state.path())
        .current_dir(cache.path())
        .env(
            "NARPUSH_SIGNING_KEY",
            String::from_utf8(key.stdout).unwrap(),
        )
        .arg("--to")
        .arg(format!("file://{}/cache", cache.path().display()))
        .args(["--", "sh", "-c", &script]));
    assert_eq!(output.status.code(), Some(7), "{}", stderr(&output));
    let path = std::fs::read_to_string(cache.path().join("out")).unwrap();
    let (_, substituted) = substitute(
        &format!("file://{}/cache", cache.path().display()),
        &public,
        &[path.trim().to_owned()],
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));
    assert!(
        !state.path().join("signing-key").exists(),
        "a default key was made although $NARPUSH_SIGNING_KEY was set"
    );

    let killed = run(exec(state.path()).args(["--", "sh", "-c", "kill -TERM $$"]));
    assert_eq!(killed.status.code(), Some(128 + 15), "{}", stderr(&killed));
}

#[test]
fn failed_uploads_make_exec_fail_unless_allowed() {
    let mut s3 = S3Server::start();
    s3.bucket("cache");
    let dir = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(dir.path(), "exec-fail-1");
    let config = dir.path().join("narpush.toml");
    std::fs::write(
        &config,
        format!(
            "target = \"{}\"\nsecret_key_files = [\"{}\"]\nmax_attempts = 2\nretry_initial_delay_ms = 100\n",
            s3.url("cache"),
            secret.display()
        ),
    )
    .unwrap();
    // COMMAND takes the S3 server down, then builds: the daemon started fine, uploads fail.
    let run_exec = |s3: &S3Server, allow: bool| {
        let script = format!(
            "kill -9 {}; {}",
            s3.pid(),
            nix_build_line("single.nix", &unique("exec-fail"), "")
        );
        let mut command = exec(dir.path());
        command.env("NARPUSH_CONFIG", &config).envs(s3.env());
        if allow {
            command.arg("--allow-upload-failures");
        }
        run(command.args(["--", "sh", "-c", &script]))
    };
    let started = Instant::now();
    let failed = run_exec(&s3, false);
    assert_eq!(failed.status.code(), Some(1), "{}", stderr(&failed));
    assert!(
        stderr(&failed).contains("FAILED /nix/store/"),
        "{}",
        stderr(&failed)
    );
    assert!(started.elapsed() < Duration::from_secs(60));

    s3.stop();
    s3.restart();
    let allowed = run_exec(&s3, true);
    assert_eq!(allowed.status.code(), Some(0), "{}", stderr(&allowed));
    assert!(
        stderr(&allowed).contains("FAILED /nix/store/"),
        "{}",
        stderr(&allowed)
    );
}

#[test]
fn sigterm_during_command_stops_it_and_what_it_built_is_still_uploaded() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let script = format!(
        "{} > out; touch built; exec sleep 60",
        nix_build_line("single.nix", &unique("exec-term"), "")
    );
    let child = exec(state.path())
        .current_dir(work.path())
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("narpush exec");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !work.path().join("built").exists() {
        assert!(Instant::now() < deadline, "COMMAND never built");
        std::thread::sleep(Duration::from_millis(50));
    }
    let signalled = Instant::now();
    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let output = child.wait_with_output().unwrap();
    assert!(
        signalled.elapsed() < Duration::from_secs(30),
        "exec did not stop COMMAND"
    );
    assert_eq!(output.status.code(), Some(128 + 15), "{}", stderr(&output));
    let path = std::fs::read_to_string(work.path().join("out")).unwrap();
    let narinfo = state
        .path()
        .join("cache")
        .join(format!("{}.narinfo", hash_part(path.trim())));
    assert!(narinfo.exists(), "{path} not uploaded: {}", stderr(&output));
}

#[test]
fn builds_that_never_reach_the_hook_are_warned_about() {
    let state = tempfile::tempdir().unwrap();
    let script = nix_build_line(
        "single.nix",
        &unique("exec-nohook"),
        "--option post-build-hook ''",
    );
    let output = run(exec(state.path()).args(["--", "sh", "-c", &script]));
    assert!(output.status.success(), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("did not run the post-build-hook"),
        "{message}"
    );
    assert!(message.contains("trusted-users"), "{message}");
}

#[test]
fn a_signal_while_waiting_for_uploads_stops_the_wait_and_reports_what_is_left() {
    let s3 = S3Server::start();
    s3.bucket("cache");
    let dir = tempfile::tempdir().unwrap();
    let (secret, _) = keygen(dir.path(), "exec-wait-1");
    let config = dir.path().join("narpush.toml");
    std::fs::write(
        &config,
        format!(
            "target = \"{}\"\nsecret_key_files = [\"{}\"]\nretry_initial_delay_ms = 60000\nretry_max_delay_ms = 60000\n",
            s3.url("cache"),
            secret.display()
        ),
    )
    .unwrap();
    // COMMAND takes the S3 server down and builds: the upload waits a minute for its retry.
    let script = format!(
        "kill -9 {}; {} > /dev/null; touch '{}/done'",
        s3.pid(),
        nix_build_line("single.nix", &unique("exec-wait"), ""),
        dir.path().display()
    );
    let child = exec(dir.path())
        .env("NARPUSH_CONFIG", &config)
        .envs(s3.env())
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("narpush exec");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.path().join("done").exists() {
        assert!(Instant::now() < deadline, "COMMAND never finished");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let output = child.wait_with_output().unwrap();
    assert!(
        signalled.elapsed() < Duration::from_secs(20),
        "exec kept waiting after the signal"
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("interrupted: 1 path(s) not uploaded"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn exec_ignores_metrics_listen_so_the_machines_daemon_keeps_its_port() {
    // The machine's daemon holds the metrics address of the shared config file.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("narpush.toml");
    std::fs::write(
        &config,
        format!("metrics_listen = \"{}\"\n", taken.local_addr().unwrap()),
    )
    .unwrap();
    let output = run(exec(dir.path())
        .env("NARPUSH_CONFIG", &config)
        .args(["--", "sh", "-c"])
        .arg(nix_build_line("single.nix", &unique("exec-metrics"), "")));
    assert!(output.status.success(), "exec: {}", stderr(&output));
    let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let cache = dir.path().join("cache");
    assert!(cache.join(format!("{}.narinfo", hash_part(&path))).exists());
}

/// Whether process `pid` still runs (a zombie waiting for its reaper does not).
fn running(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

#[test]
fn sigterm_reaches_the_processes_command_started_and_its_status_is_passed_through() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // COMMAND starts a grandchild in the background and waits for it, as a build tool's
    // worker would; signalled directly, only the shell would hear.
    // (Its output goes elsewhere: it must not hold exec's pipes open.)
    let script = "sleep 300 > /dev/null 2>&1 & echo $! > grandchild; wait";
    let child = exec(state.path())
        .current_dir(work.path())
        .args(["--", "sh", "-c", script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("narpush exec");
    let pid_file = work.path().join("grandchild");
    let deadline = Instant::now() + Duration::from_secs(30);
    let grandchild = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .filter(|p| p.ends_with('\n'))
        {
            break pid.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "COMMAND never started its child");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(running(&grandchild));

    let signalled = Instant::now();
    run_ok(Command::new("kill").args(["-TERM", &child.id().to_string()]));
    let output = child.wait_with_output().unwrap();
    assert!(
        signalled.elapsed() < Duration::from_secs(30),
        "exec kept running"
    );
    assert_eq!(output.status.code(), Some(128 + 15), "{}", stderr(&output));
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(&grandchild) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survived = running(&grandchild);
    if survived {
        let _ = Command::new("kill").args(["-KILL", &grandchild]).status();
    }
    assert!(
        !survived,
        "COMMAND's child {grandchild} outlived the SIGTERM"
    );
}

#[path = "exec/secrets.rs"]
mod secrets;
#[path = "exec/signals.rs"]
mod signals;
