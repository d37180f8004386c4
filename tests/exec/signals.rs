//! Signals at every moment of a run, and job control on a terminal: the private daemon and its
//! GC roots never outlive exec, and Ctrl-Z stops exec with COMMAND.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use narpush_e2e::*;

use super::{exec, nix_build_line, running};

/// The children of `pid` whose command line matches `pattern`.
fn children(pid: u32, pattern: &str) -> Vec<String> {
    let output = run(Command::new("pgrep").args(["-P", &pid.to_string(), "-f", pattern]));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The GC root directory of the private daemon of the exec with process id `pid`.
fn roots_of(pid: u32) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/nix/var/nix/gcroots/narpush-exec-{pid}"))
}

/// Waits up to 10 s for process `pid` to end; kills it if it does not. Whether it ended.
fn ends(pid: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let survived = running(pid);
    if survived {
        let _ = Command::new("kill").args(["-KILL", pid]).status();
    }
    !survived
}

#[test]
fn a_signal_before_the_private_daemon_answers_stops_it_and_exec() {
    for (signal, number) in [("TERM", 15), ("INT", 2), ("HUP", 1)] {
        let state = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        // The daemon reads the credentials file while it starts, after it made its GC root
        // directory and before it answers; a FIFO nobody writes holds it there.
        let credentials = work.path().join("credentials");
        run_ok(Command::new("mkfifo").arg(&credentials));
        let child = exec(state.path())
            .current_dir(work.path())
            .env("AWS_SHARED_CREDENTIALS_FILE", &credentials)
            .args([
                "--to",
                "s3://cache?endpoint=http://127.0.0.1:1&region=us-east-1",
            ])
            .args(["--", "sh", "-c", "touch started"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("narpush exec");
        let exec_pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(30);
        let daemon = loop {
            if let Some(pid) = children(exec_pid, "narpush daemon").pop() {
                if roots_of(exec_pid).exists() {
                    break pid;
                }
            }
            assert!(Instant::now() < deadline, "no private daemon got that far");
            std::thread::sleep(Duration::from_millis(10));
        };
        run_ok(
            Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(exec_pid.to_string()),
        );
        let output = child.wait_with_output().unwrap();
        let daemon_ended = ends(&daemon);
        assert_eq!(
            output.status.code(),
            Some(128 + number),
            "SIG{signal}: {}",
            stderr(&output)
        );
        assert!(
            daemon_ended,
            "SIG{signal}: the private daemon outlived exec"
        );
        assert!(!roots_of(exec_pid).exists(), "SIG{signal}: roots left");
        assert!(
            !work.path().join("started").exists(),
            "SIG{signal}: COMMAND ran"
        );
    }
}

#[test]
fn a_hangup_while_command_runs_stops_it_then_the_daemon_and_removes_its_roots() {
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let script = format!(
        "{} > out; touch built; exec sleep 60",
        nix_build_line("single.nix", &unique("exec-hup"), "")
    );
    let child = exec(state.path())
        .current_dir(work.path())
        .args(["--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("narpush exec");
    let exec_pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !work.path().join("built").exists() {
        assert!(Instant::now() < deadline, "COMMAND never built");
        std::thread::sleep(Duration::from_millis(50));
    }
    let daemon = children(exec_pid, "narpush daemon")
        .pop()
        .expect("the private daemon runs");
    run_ok(Command::new("kill").args(["-HUP", &exec_pid.to_string()]));
    let output = child.wait_with_output().unwrap();
    let daemon_ended = ends(&daemon);
    assert_eq!(output.status.code(), Some(128 + 1), "{}", stderr(&output));
    assert!(daemon_ended, "the private daemon outlived exec");
    assert!(!roots_of(exec_pid).exists(), "roots left");
    let path = std::fs::read_to_string(work.path().join("out")).unwrap();
    let narinfo = state
        .path()
        .join("cache")
        .join(format!("{}.narinfo", hash_part(path.trim())));
    assert!(narinfo.exists(), "{path} not uploaded: {}", stderr(&output));
}

/// Drives an interactive bash on a pseudo-terminal: `narpush exec` with a COMMAND that reads
/// the terminal, Ctrl-Z, `fg`, a line for COMMAND, and exec's status.
const CTRL_Z_SCRIPT: &str = r#"
import os, pty, select, sys, time
narpush = sys.argv[1]
pid, fd = pty.fork()
if pid == 0:
    os.execvp("bash", ["bash", "--norc", "--noprofile", "-i"])
seen = b""
def expect(token, timeout=20):
    global seen
    end = time.time() + timeout
    while token.encode() not in seen:
        left = end - time.time()
        ready = select.select([fd], [], [], max(left, 0))[0] if left > 0 else []
        if not ready:
            sys.exit("no %r within %d s; the terminal showed:\n%s" % (token, timeout, seen.decode(errors="replace")))
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            sys.exit("the terminal closed before %r:\n%s" % (token, seen.decode(errors="replace")))
        seen += data
    seen = seen[seen.index(token.encode()) + len(token):]
def send(text):
    os.write(fd, text.encode())
send("PS1='PR''OMPT> '\n"); expect("PROMPT> ")
send(narpush + " exec -- sh -c 'echo REA''DY; read x; echo got-$x'\n"); expect("READY")
send("\x1a"); expect("Stopped"); expect("PROMPT> ")
send("fg\n"); time.sleep(1)
send("hello\n"); expect("got-hello"); expect("PROMPT> ")
send("echo STATUS=$?\n"); expect("STATUS=0")
send("exit\n")
"#;

#[test]
fn ctrl_z_on_a_terminal_stops_exec_with_command_and_fg_continues_both() {
    let state = tempfile::tempdir().unwrap();
    let output = run(Command::new("python3")
        .arg("-c")
        .arg(CTRL_Z_SCRIPT)
        .arg(bin("narpush"))
        .env("NARPUSH_STATE_DIR", state.path())
        .env("NARPUSH_CONFIG", "/dev/null")
        .env("NIX_CONFIG", NIX_CONFIG)
        .env_remove("NARPUSH_SIGNING_KEY"));
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        stderr(&output)
    );
}
