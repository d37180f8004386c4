//! Requests that only the intake journal holds: the daemon acknowledged them and died before
//! moving them into its queue. `NARPUSH_TEST_HOLD_INTAKE=1` keeps the mover from moving, so
//! the kill always comes in that window.

use std::os::unix::fs::FileExt;

use narpush_e2e::daemon::{build_with_hook, Daemon};
use narpush_e2e::{
    assert_closure_invariant, fixture, hash_part, single_paths, stderr, substitute, unique,
};

const HOLD: &str = "NARPUSH_TEST_HOLD_INTAKE";

/// A daemon whose mover is held.
fn held_daemon() -> Daemon {
    Daemon::start("", vec![(HOLD, "1".to_owned())])
}

/// The queue's counts, which hold nothing the mover has not moved.
fn queued(daemon: &Daemon) -> u64 {
    let counts = &daemon.status_json()["counts"];
    ["pending", "uploading", "done", "failed"]
        .iter()
        .map(|state| counts[state].as_u64().unwrap_or(0))
        .sum()
}

/// Restarts `daemon` after SIGKILL with the mover free.
fn kill_and_restart(daemon: &mut Daemon) {
    daemon.kill_9();
    daemon.remove_env(HOLD);
    daemon.spawn();
}

fn narinfo_exists(daemon: &Daemon, path: &str) -> bool {
    daemon
        .state
        .join("cache")
        .join(format!("{}.narinfo", hash_part(path)))
        .exists()
}

#[test]
fn requests_acknowledged_into_the_journal_alone_are_uploaded_after_a_kill() {
    let mut daemon = held_daemon();
    let run_id = unique("journal-kill");
    let mut built = Vec::new();
    for n in 0..3 {
        let (paths, output) = build_with_hook(
            &fixture("single.nix"),
            &[("nonce", &format!("{run_id}-{n}"))],
            &daemon.hook_env(),
        );
        assert!(output.status.success(), "{}", stderr(&output));
        built.extend(paths);
    }
    assert!(
        daemon.spooled().is_empty(),
        "every request was acknowledged"
    );
    assert_eq!(queued(&daemon), 0, "the held mover moved something");

    kill_and_restart(&mut daemon);
    daemon.wait_ok(120);
    assert_eq!(queued(&daemon), 3, "{}", daemon.log());
    let cache = daemon.state.join("cache");
    assert_closure_invariant(&cache);
    let (_, substituted) = substitute(
        &format!("file://{}", cache.display()),
        &daemon.public_key(),
        &built,
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));
    let log = daemon.log();
    assert!(
        log.contains("the intake journal holds 3 acknowledged request(s) not yet in the queue"),
        "{log}"
    );

    // Moved once: another restart finds nothing left to move.
    kill_and_restart(&mut daemon);
    let log = daemon.log();
    assert_eq!(log.matches("the intake journal holds").count(), 1, "{log}");
}

/// Bytes before a journal record's payload: marker, header checksum, length (at 8), generation,
/// payload checksum.
const HEADER: usize = 24;

/// Offsets of the records in a journal file (four zero bytes end them).
fn record_offsets(journal: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while journal[at..at + 4] != [0; 4] {
        offsets.push(at);
        at += HEADER + u32::from_le_bytes(journal[at + 8..at + 12].try_into().unwrap()) as usize;
    }
    offsets
}

#[test]
fn a_damaged_journal_is_reported_with_file_and_offset_and_its_readable_records_are_kept() {
    let mut daemon = held_daemon();
    let paths = single_paths("journal-damage", 4);
    for path in &paths {
        let pushed = daemon.client(&["push", path]);
        assert!(pushed.status.success(), "{}", stderr(&pushed));
    }
    daemon.kill_9();

    // The second record's length rots on disk; the fourth was cut short by the crash.
    let file = daemon.state.join("intake.journal");
    let bytes = std::fs::read(&file).unwrap();
    let offsets = record_offsets(&bytes);
    assert_eq!(offsets.len(), 4, "one record per push");
    let journal = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    journal
        .write_all_at(&[bytes[offsets[1] + 8] ^ 0x40], (offsets[1] + 8) as u64)
        .unwrap();
    journal
        .write_all_at(&[0; 8], (offsets[3] + HEADER + 4) as u64)
        .unwrap();

    daemon.remove_env(HOLD);
    daemon.spawn();
    daemon.wait_ok(120);
    let log = daemon.log();
    let names_file_and_offset = |line: &str, offset: usize| {
        line.contains(&file.display().to_string()) && line.contains(&format!("offset={offset}"))
    };
    assert!(
        log.lines().any(|line| line.contains("ERROR")
            && line.contains("cannot be read")
            && names_file_and_offset(line, offsets[1])),
        "no error for the corrupt record at {}:\n{log}",
        offsets[1]
    );
    assert!(
        log.lines().any(|line| line.contains("WARN")
            && line.contains("last record")
            && names_file_and_offset(line, offsets[3])),
        "no warning for the torn record at {}:\n{log}",
        offsets[3]
    );
    assert!(
        log.contains("the intake journal holds 2 acknowledged request(s)"),
        "{log}"
    );
    for (n, path) in paths.iter().enumerate() {
        let readable = n == 0 || n == 2;
        assert_eq!(
            narinfo_exists(&daemon, path),
            readable,
            "record {n} ({path}); log:\n{log}"
        );
    }
}
