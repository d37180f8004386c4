//! `narpush status` for people: an upload in flight with its rate and ETA (the JSON fields and
//! the text), and `--watch`, which repeats until Ctrl-C and then exits 0.

use std::process::Stdio;
use std::time::{Duration, Instant};

use narpush_e2e::daemon::{build_with_hook, Daemon};
use narpush_e2e::*;

#[test]
fn status_during_an_upload_shows_its_rate_and_eta() {
    let s3 = S3Server::start();
    s3.bucket("status");
    let daemon = Daemon::start(
        &format!("target = \"{}\"\njobs = 1", s3.url("status")),
        s3.env(),
    );
    let (_, built) = build_with_hook(
        &fixture("closure.nix"),
        &[("nonce", &unique("status-rate")), ("bigMiB", "200")],
        &daemon.hook_env(),
    );
    assert!(built.status.success(), "nix-build: {}", stderr(&built));

    // Until both the document and the text were seen while the big NAR is half way.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut json_seen, mut text_seen) = (false, false);
    while !(json_seen && text_seen) {
        assert!(
            Instant::now() < deadline,
            "never saw the big upload in progress (json {json_seen}, text {text_seen})\n{}",
            daemon.log()
        );
        let status = daemon.status_json();
        assert_eq!(status["version"], 4);
        if let Some(upload) = status["uploads"].as_array().and_then(|u| u.first()) {
            let done = upload["nar_bytes_done"].as_f64().unwrap();
            let total = upload["nar_bytes_total"].as_f64().unwrap();
            let elapsed = upload["elapsed_secs"].as_f64().unwrap();
            if done > 0.0 && done < total && elapsed > 0.0 {
                let rate = upload["bytes_per_sec"].as_f64().expect("a rate");
                let eta = upload["eta_secs"].as_f64().expect("an ETA");
                // The daemon divides its own exact numbers; the document rounds elapsed_secs.
                let expected_rate = done / elapsed;
                assert!(
                    (rate - expected_rate).abs() <= expected_rate * 0.05,
                    "rate {rate}, done {done} in {elapsed}s: {upload}"
                );
                let expected_eta = (total - done) / rate;
                assert!(
                    (eta - expected_eta).abs() <= expected_eta * 0.01 + 0.01,
                    "eta {eta}, expected {expected_eta}: {upload}"
                );
                json_seen = true;
            }
        }
        let text = daemon.client(&["status"]);
        assert!(text.status.success(), "{}", stderr(&text));
        let text = String::from_utf8_lossy(&text.stdout).into_owned();
        if text
            .lines()
            .any(|l| l.starts_with("uploading:") && l.contains("/s, about ") && l.contains(" left"))
        {
            text_seen = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.wait_ok(180);
    let text = String::from_utf8_lossy(&daemon.client(&["status"]).stdout).into_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with("uploaded:") && l.contains("stored") && l.contains("ago")),
        "{text}"
    );
}

#[test]
fn status_watch_repeats_plainly_into_a_pipe_and_exits_0_on_ctrl_c() {
    let daemon = Daemon::start("", vec![]);
    let watcher = narpush()
        .env("NARPUSH_SOCKET", &daemon.socket)
        .env("NARPUSH_CONFIG", &daemon.config)
        .args(["status", "--watch", "--interval", "200ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start status --watch");
    std::thread::sleep(Duration::from_millis(1500));
    run_ok(std::process::Command::new("kill").args(["-INT", &watcher.id().to_string()]));
    let output = watcher.wait_with_output().expect("status --watch ends");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{:?}: {}",
        output.status,
        stderr(&output)
    );
    let frames = text.matches("queue:").count();
    assert!(frames >= 3, "{frames} refreshes in 1.5 s:\n{text}");
    assert!(
        !text.contains('\x1b'),
        "escape codes into a pipe:\n{text:?}"
    );
    assert!(
        text.starts_with("narpush status, every 200ms (Ctrl-C to stop)"),
        "{text}"
    );
}

#[test]
fn status_watch_refuses_json_and_a_too_short_interval() {
    for args in [
        vec!["status", "--watch", "--json"],
        vec!["status", "--watch", "--interval", "10ms"],
        vec!["status", "--interval", "1s"],
    ] {
        let output = run(narpush().args(&args));
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn status_watch_redraws_in_place_on_a_terminal() {
    let daemon = Daemon::start("", vec![]);
    // `script` gives the command a pseudo-terminal; `timeout` sends the Ctrl-C (SIGINT).
    let inner = format!(
        "timeout --preserve-status -s INT 1.5 {} status --watch --interval 200ms",
        bin("narpush").display()
    );
    let output = run(std::process::Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .env("NARPUSH_SOCKET", &daemon.socket)
        .env("NARPUSH_CONFIG", &daemon.config));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{:?}: {text:?}", output.status);
    assert_eq!(text.matches("\x1b[2J").count(), 1, "{text:?}");
    let frames = text.matches("\x1b[H").count();
    assert!(frames >= 3, "{frames} redraws in 1.5 s: {text:?}");
    assert!(
        text.contains("0 done\x1b[K"),
        "each line is cleared to its end: {text:?}"
    );
    assert_eq!(text.matches("\x1b[J").count(), frames, "{text:?}");
}
