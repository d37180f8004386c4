//! The secrets exec is given stay out of COMMAND's reach: not in its environment, not in
//! `/proc/PID/environ` of exec or the private daemon, and those two are non-dumpable.

use std::path::Path;
use std::process::Command;

use narpush_e2e::*;

use super::{exec, nix_build_line};

/// Shell lines for COMMAND: the environment blocks of COMMAND, of every process above it and
/// of its parent's other children (exec's private daemon), one variable a line, into the file
/// `environments` of the current directory.
const DUMP_ENVIRONMENTS: &str =
    "{ env; p=$$; while [ \"$p\" -gt 1 ]; do tr '\\0' '\\n' < /proc/$p/environ; \
     p=$(ps -o ppid= -p \"$p\" | tr -d ' '); done; for c in $(pgrep -P $PPID); do \
     tr '\\0' '\\n' < /proc/$c/environ; done; } > environments";

#[test]
fn command_finds_neither_the_signing_key_nor_the_s3_secret_in_any_environment() {
    let s3 = S3Server::start();
    s3.bucket("cache");
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let key = run(Command::new(bin("narpush")).args(["keygen", "exec-secret-1"]));
    let secret = String::from_utf8(key.stdout).unwrap();
    let public = String::from_utf8(key.stderr).unwrap().trim().to_owned();
    let script = format!(
        "{DUMP_ENVIRONMENTS}; {} > out",
        nix_build_line("single.nix", &unique("exec-secret"), "")
    );
    let output = run(exec(state.path())
        .current_dir(work.path())
        .env("NARPUSH_SIGNING_KEY", &secret)
        .envs(s3.env())
        .arg("--to")
        .arg(s3.url("cache"))
        .args(["--", "sh", "-c", &script]));
    assert!(output.status.success(), "{}", stderr(&output));
    let seen = std::fs::read_to_string(work.path().join("environments")).unwrap();
    assert!(
        seen.contains("narpush-exec-"),
        "the private daemon's environment was not read: {seen}"
    );
    let key_text = secret.trim().split_once(':').unwrap().1;
    assert!(!seen.contains(key_text), "COMMAND can read the signing key");
    let (_, s3_secret) = s3.credentials.clone().unwrap();
    assert!(!seen.contains(&s3_secret), "COMMAND can read the S3 secret");

    // The daemon had them all the same: the build is uploaded and signed with the key.
    let path = std::fs::read_to_string(work.path().join("out")).unwrap();
    let (_, substituted) = substitute(
        &format!("file://{}", s3.root.path().join("cache").display()),
        &public,
        &[path.trim().to_owned()],
    );
    assert!(substituted.status.success(), "{}", stderr(&substituted));
}

#[test]
fn processes_of_the_same_user_cannot_read_the_environment_or_memory_of_exec_or_its_daemon() {
    // Root reads any process's /proc files: exec must run as another user for this check.
    if run_ok(Command::new("id").arg("-u")).trim() != "0" {
        eprintln!("not root: exec cannot be run as another user here; skipped");
        return;
    }
    const NOBODY: u32 = 65534;
    let home = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(home.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    // Where exec's daemon keeps its GC roots when it runs as that user.
    let roots = Path::new("/nix/var/nix/gcroots/per-user/nobody");
    std::fs::create_dir_all(roots).unwrap();
    std::os::unix::fs::chown(roots, Some(NOBODY), Some(NOBODY)).unwrap();
    // COMMAND runs as the same user as exec and its daemon.
    let script = "for p in $PPID $(pgrep -P $PPID); do [ \"$p\" = $$ ] && continue; \
                  if cat /proc/$p/environ > /dev/null 2>&1; then echo readable; else echo denied; fi; done";
    let output = run(Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "env",
            "-i",
        ])
        .arg("PATH=/usr/bin:/bin")
        .arg(format!("HOME={}", home.path().display()))
        .arg(format!("NARPUSH_STATE_DIR={}/state", home.path().display()))
        .arg("NARPUSH_CONFIG=/dev/null")
        .arg(bin("narpush"))
        .args(["exec", "--", "sh", "-c", script]));
    assert!(output.status.success(), "{}", stderr(&output));
    let answers = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        answers.lines().collect::<Vec<_>>(),
        ["denied", "denied"],
        "exec, then its daemon: {}",
        stderr(&output)
    );
}
