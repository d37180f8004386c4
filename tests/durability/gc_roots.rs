//! GC roots outlive what can happen to them between the ack and the upload: a root lost (a
//! power loss before its directory reached the disk, or a hand) is made again when the daemon
//! starts, and keeps the path through a garbage collection during a target outage.

use std::path::Path;

use narpush_e2e::daemon::{build_with_hook, Daemon};
use narpush_e2e::{command, fixture, hash_part, nix_build, run, run_ok, stderr, unique, S3Server};

#[test]
fn a_lost_gc_root_of_a_queued_path_is_made_again_at_start_and_keeps_it_through_a_gc() {
    let mut s3 = S3Server::start();
    s3.bucket("cache");
    let mut daemon = Daemon::start(
        &format!(
            "target = \"{}\"\nretry_initial_delay_ms = 200\nretry_max_delay_ms = 500",
            s3.url("cache")
        ),
        s3.env(),
    );
    s3.stop();
    let (paths, build) = build_with_hook(
        &fixture("single.nix"),
        &[("nonce", &unique("lost-root"))],
        &daemon.hook_env(),
    );
    assert!(build.status.success(), "{}", stderr(&build));
    assert!(daemon.spooled().is_empty(), "the hook spooled");
    let path = paths[0].clone();
    let basename = &path["/nix/store/".len()..];
    let root = daemon.gc_roots.join(basename);
    assert!(root.is_symlink(), "no root at the ack");

    // The root is lost while the daemon is down; a root of a path nobody queued is left over.
    daemon.kill_9();
    std::fs::remove_file(&root).unwrap();
    let stray = nix_build(&fixture("single.nix"), &[("nonce", &unique("stray-root"))]);
    let stray_root = daemon.gc_roots.join(&stray[0]["/nix/store/".len()..]);
    std::os::unix::fs::symlink(&stray[0], &stray_root).unwrap();
    daemon.spawn();
    assert!(
        root.is_symlink(),
        "the root of a queued path was not made again at start\n{}",
        daemon.log()
    );
    assert!(
        !stray_root.is_symlink(),
        "the root of a path not queued was kept"
    );

    // A garbage collection during the outage cannot take the path.
    let roots = run_ok(command("nix-store").args(["--query", "--roots", &path]));
    assert!(
        roots.contains(&root.display().to_string()),
        "Nix does not see the root: {roots}"
    );
    let refused = run(command("nix-store").args(["--delete", &path]));
    assert!(!refused.status.success(), "a queued path was deleted");
    assert!(stderr(&refused).contains("alive"), "{}", stderr(&refused));

    s3.restart();
    daemon.wait_ok(120);
    let narinfo = s3
        .root
        .path()
        .join("cache")
        .join(format!("{}.narinfo", hash_part(&path)));
    assert!(narinfo.exists(), "{path} not uploaded\n{}", daemon.log());
    assert!(!root.is_symlink(), "the root outlived the upload");
    assert!(Path::new(&path).exists());
}
