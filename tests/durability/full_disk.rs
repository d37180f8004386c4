//! A daemon that starts on a full state disk: it serves, refuses requests with the reason
//! (so the hook spools them), gives back what a failed creation took, and takes requests
//! again by itself once there is room.

use narpush_e2e::daemon::{build_with_hook, spooled, Daemon};
use narpush_e2e::{fixture, hash_part, keygen, stderr, unique};

use super::{eventually, SmallDisk};

#[test]
fn a_daemon_started_on_a_full_state_disk_refuses_with_the_reason_and_recovers_by_itself() {
    let outside = tempfile::tempdir().unwrap();
    let (key, _) = keygen(outside.path(), "full-start");
    let cache = outside.path().join("cache");
    let spool = outside.path().join("spool");
    let mut daemon = Daemon::configure(
        &format!(
            "target = \"file://{}\"\nspool_dir = \"{}\"\nsecret_key_files = [\"{}\"]",
            cache.display(),
            spool.display(),
            key.display()
        ),
        vec![],
    );
    let disk = SmallDisk::mount(&daemon.state, "24M");
    let filler = disk.fill();

    daemon.spawn_process();
    let refusing = eventually(30, || {
        stderr(&daemon.client(&["status"])).contains("requests are refused")
    });
    assert!(
        refusing && daemon.is_running(),
        "the daemon does not serve on a full disk\n{}",
        daemon.log()
    );

    let (paths, build) = build_with_hook(
        &fixture("single.nix"),
        &[("nonce", &unique("full-start"))],
        &[
            ("NARPUSH_SOCKET", daemon.socket.clone()),
            ("NARPUSH_SPOOL_DIR", spool.clone()),
        ],
    );
    assert!(build.status.success(), "{}", stderr(&build));
    assert!(
        stderr(&build).contains("spooled to"),
        "the request was not refused: {}\n{}",
        stderr(&build),
        daemon.log()
    );
    assert_eq!(spooled(&spool).len(), 1);
    let status = daemon.client(&["status"]);
    assert!(!status.status.success(), "status: {status:?}");
    let why = stderr(&status);
    assert!(
        why.contains("requests are refused") && why.contains("No space left on device"),
        "{why}"
    );

    std::fs::remove_file(filler).unwrap();
    let narinfo = cache.join(format!("{}.narinfo", hash_part(&paths[0])));
    let uploaded = eventually(120, || spooled(&spool).is_empty() && narinfo.exists());
    assert!(
        uploaded,
        "not uploaded after the disk had room\n{}",
        daemon.log()
    );
    daemon.wait_ok(60);
    // The files the full disk refused at the start are made by now, whole.
    let made = eventually(60, || {
        daemon.log().contains("the intake journal is open")
            && daemon.state.join("writer-id").exists()
    });
    assert!(made, "{}", daemon.log());
    assert_eq!(
        std::fs::metadata(daemon.state.join("intake.journal"))
            .unwrap()
            .len(),
        4 << 20,
        "the journal is whole"
    );
    assert_eq!(
        std::fs::read_to_string(daemon.state.join("writer-id"))
            .unwrap()
            .trim()
            .len(),
        8
    );
}

#[test]
fn an_unfinished_intake_journal_is_removed_at_start_and_its_space_serves_the_queue() {
    let outside = tempfile::tempdir().unwrap();
    let (key, _) = keygen(outside.path(), "unfinished-journal");
    let mut daemon = Daemon::configure(
        &format!(
            "target = \"file://{}\"\nspool_dir = \"{}\"\nsecret_key_files = [\"{}\"]",
            outside.path().join("cache").display(),
            outside.path().join("spool").display(),
            key.display()
        ),
        vec![],
    );
    let disk = SmallDisk::mount(&daemon.state, "24M");
    // What a journal creation cut short by a full disk left: a file shorter than a journal.
    let journal = daemon.state.join("intake.journal");
    std::fs::write(&journal, vec![0u8; 1 << 20]).unwrap();
    disk.fill();

    // The space it took is given back, and the queue can be made in it.
    daemon.spawn();
    assert!(!journal.exists(), "{}", daemon.log());
    assert!(
        daemon
            .log()
            .contains("removed an unfinished intake journal (1048576 bytes)"),
        "{}",
        daemon.log()
    );
}
