//! A panic restarts the daemon while a batch uploads: only the path that causes it is charged
//! attempts and ends `failed`; the innocent paths of the batch are tried alone and uploaded.

use std::time::{Duration, Instant};

use narpush_e2e::daemon::Daemon;
use narpush_e2e::{hash_part, single_paths, stderr};

/// Restarts the daemon each time it exits by itself, as systemd's `Restart=on-failure` would,
/// until `settled` holds of a running daemon; returns how many times it was started, or `None`
/// after `max_starts` starts.
fn restart_until(
    daemon: &mut Daemon,
    max_starts: usize,
    settled: impl Fn(&Daemon) -> bool,
) -> Option<usize> {
    let mut starts = 1;
    loop {
        let deadline = Instant::now() + Duration::from_secs(60);
        while daemon.is_running() && !settled(daemon) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if daemon.is_running() {
            return settled(daemon).then_some(starts);
        }
        if starts == max_starts {
            return None;
        }
        // Reaps the exited process.
        daemon.kill_9();
        starts += 1;
        let _ = daemon.try_spawn(Duration::from_secs(20));
    }
}

#[test]
fn a_panic_during_a_batch_fails_only_the_path_that_causes_it() {
    let paths = single_paths("quarantine", 5);
    let poison = paths[2].clone();
    // Debug builds only: the engine panics whenever a submission holds the poison.
    let mut daemon = Daemon::start(
        "max_attempts = 3",
        vec![("NARPUSH_TEST_PANIC_ON", hash_part(&poison).to_owned())],
    );
    let mut args = vec!["push"];
    args.extend(paths.iter().map(String::as_str));
    let pushed = daemon.client(&args);
    assert!(pushed.status.success(), "{}", stderr(&pushed));

    let settled = |daemon: &Daemon| {
        let output = daemon.client(&["status", "--json"]);
        output.status.success()
            && serde_json::from_slice::<serde_json::Value>(&output.stdout).is_ok_and(|status| {
                status["counts"]["pending"] == 0
                    && status["counts"]["uploading"] == 0
                    && status["counts"]["failed"] == 1
            })
    };
    let starts = restart_until(&mut daemon, 8, settled);
    let status = daemon.status_json();
    assert!(
        starts.is_some(),
        "not settled after 8 starts: {status}\n{}",
        daemon.log()
    );
    // The batch panics once; then each path is tried alone, and only the poison panics, once
    // per attempt until its attempts are used up.
    assert_eq!(
        starts,
        Some(1 + 3 + 1),
        "one batch panic, three alone\n{}",
        daemon.log()
    );
    let failed = status["failed"].as_array().expect("failed list");
    assert_eq!(failed.len(), 1, "{status}");
    assert_eq!(failed[0]["path"], poison.as_str(), "{status}");
    let error = failed[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("gave up after 3 attempts")
            && error.contains("of this path alone, which likely caused it")
            && error.contains("the engine task panicked")
            && error.contains("NARPUSH_TEST_PANIC_ON"),
        "{error}"
    );
    let cache = daemon.state.join("cache");
    for path in paths.iter().filter(|p| **p != poison) {
        assert!(
            cache.join(format!("{}.narinfo", hash_part(path))).exists(),
            "{path} is innocent but was not uploaded: {status}\n{}",
            daemon.log()
        );
    }
}
